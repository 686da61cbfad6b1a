"""Who is calling: a client key, the internal token, a managed key, or nobody (when auth is off).

The core half of authentication: it takes the key the request presented (app/api/admission.py reads
it from the headers) and answers with a typed `Caller`, or raises an `AuthenticationFailed`.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from enum import Enum

from pydantic import SecretStr

from app.errors import InvalidApiKey, MissingApiKey
from app.keys.model import DEFAULT_POLICY, SECRET_PREFIX, KeyPolicy
from app.keys.service import ManagedKeys


class CallerKind(Enum):
    ANONYMOUS = "anonymous"
    CLIENT = "client"
    INTERNAL = "internal"
    MANAGED = "managed"  # a key from the key store, with its own policy


@dataclass(frozen=True, slots=True)
class Caller:
    kind: CallerKind
    key_id: str | None  # a short hash that identifies the key in logs and usage, never the key
    # What this caller may do: static keys, the internal token and anonymous callers have the
    # default policy (every model, no per-key limit, no budget); a managed key its record.
    policy: KeyPolicy = DEFAULT_POLICY

    @property
    def is_internal(self) -> bool:
        return self.kind is CallerKind.INTERNAL


ANONYMOUS_CALLER = Caller(CallerKind.ANONYMOUS, None)


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8")).digest()


def key_id(key: str) -> str:
    return "key_" + hashlib.sha256(key.encode("utf-8")).hexdigest()[:12]


class Authenticator:
    def __init__(
        self,
        api_keys: list[SecretStr],
        internal_token: SecretStr | None,
        managed: ManagedKeys | None = None,
        *,
        enabled: bool,
    ) -> None:
        # `enabled` is Settings.auth_enabled: static keys or an admin token turn auth on.
        self.enabled = enabled
        self.managed = managed
        self._client_digests = [_digest(k.get_secret_value()) for k in api_keys]
        self._internal_digest = (
            _digest(internal_token.get_secret_value()) if internal_token else None
        )

    async def identify(self, key: str | None, *, required: bool) -> Caller:
        """`authenticate`, with managed keys: an `egw-` key is looked up in the key store
        (through its cache) first; anything else is checked as before."""
        if self.managed is not None and key is not None and key.startswith(SECRET_PREFIX):
            record = await self.managed.lookup(key)
            if record is not None:
                return Caller(CallerKind.MANAGED, record.id, record)
        return self.authenticate(key, required=required)

    def is_internal_token(self, key: str | None) -> bool:
        """Is this the internal token? Cheap and constant-time: safe to ask before the per-IP
        limit, which internal callers are exempt from."""
        if self._internal_digest is None or key is None:
            return False
        return hmac.compare_digest(_digest(key), self._internal_digest)

    def authenticate(self, key: str | None, *, required: bool) -> Caller:
        """Identify the caller. `required=False` lets a keyless call through, never a bad key."""
        if key is None:
            if self.enabled and required:
                raise MissingApiKey()
            return ANONYMOUS_CALLER
        digest = _digest(key)
        # Compare against every key, without stopping early, so timing reveals nothing.
        internal = self._internal_digest is not None and hmac.compare_digest(
            digest, self._internal_digest
        )
        client = False
        for candidate in self._client_digests:
            client |= hmac.compare_digest(digest, candidate)
        if internal:
            return Caller(CallerKind.INTERNAL, key_id(key))
        if client:
            return Caller(CallerKind.CLIENT, key_id(key))
        if not self.enabled:
            # Auth is off: SDKs always send some key, so any key is accepted.
            return ANONYMOUS_CALLER
        raise InvalidApiKey()
