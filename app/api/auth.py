"""Who is calling: a client key, the internal token, or nobody (when auth is off)."""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from enum import Enum

from pydantic import SecretStr
from starlette.datastructures import Headers

from app.errors import AUTHENTICATION, GatewayError
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


ANONYMOUS = Caller(CallerKind.ANONYMOUS, None)


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8")).digest()


def key_id(key: str) -> str:
    return "key_" + hashlib.sha256(key.encode("utf-8")).hexdigest()[:12]


def presented_key(headers: Headers) -> str | None:
    authorization = headers.get("authorization")
    if authorization:
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
    api_key = headers.get("x-api-key")
    return api_key.strip() if api_key and api_key.strip() else None


class Authenticator:
    def __init__(
        self,
        api_keys: list[SecretStr],
        internal_token: SecretStr | None,
        managed: ManagedKeys | None = None,
        *,
        admin_enabled: bool = False,
    ) -> None:
        # Managed keys (an admin token) turn auth on just as static keys do.
        self.enabled = bool(api_keys) or admin_enabled
        self.managed = managed
        self._client_digests = [_digest(k.get_secret_value()) for k in api_keys]
        self._internal_digest = (
            _digest(internal_token.get_secret_value()) if internal_token else None
        )

    async def identify(self, headers: Headers, *, required: bool) -> Caller:
        """`authenticate`, with managed keys: an `egw-` key is looked up in the key store
        (through its cache) first; anything else is checked as before."""
        if self.managed is None:
            return self.authenticate(headers, required=required)
        key = presented_key(headers)
        if key is not None and key.startswith(SECRET_PREFIX):
            record = await self.managed.lookup(key)
            if record is not None:
                return Caller(CallerKind.MANAGED, record.id, record)
        return self.authenticate(headers, required=required)

    def presents_internal_token(self, headers: Headers) -> bool:
        """Does the request carry the internal token? Cheap and constant-time: safe to ask
        before the per-IP limit, which internal callers are exempt from."""
        if self._internal_digest is None:
            return False
        key = presented_key(headers)
        return key is not None and hmac.compare_digest(_digest(key), self._internal_digest)

    def authenticate(self, headers: Headers, *, required: bool) -> Caller:
        """Identify the caller. `required=False` lets a keyless call through, never a bad key."""
        key = presented_key(headers)
        if key is None:
            if self.enabled and required:
                raise GatewayError(
                    401,
                    "You didn't provide an API key. Send it as 'Authorization: Bearer <key>' "
                    "or 'x-api-key: <key>'.",
                    type=AUTHENTICATION,
                    code="missing_api_key",
                )
            return ANONYMOUS
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
            return ANONYMOUS  # auth is off: SDKs always send some key, so any key is accepted
        raise GatewayError(
            401, "Incorrect API key provided.", type=AUTHENTICATION, code="invalid_api_key"
        )
