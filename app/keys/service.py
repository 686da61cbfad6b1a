"""Managed keys as one service: lookups through the cache, admin changes with audit lines,
and budget reservations. The admin API and the CLI both go through here.

Every change is one atomic step in the store (`KeyStore.change`): a compare-and-set or one
transaction, retried on a conflict. Revocation is terminal: a revoked key cannot be changed or
rotated, so no PATCH, rotation or race brings it back; a disable is never lost to a change that
read the record before it."""

from __future__ import annotations

import builtins
import logging
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any, TypeVar

from app.errors import BudgetSpent, InvalidKeyChange, KeyStoreUnavailable, ManagedKeyRefused
from app.keys.cache import LookupCache
from app.keys.model import (
    ApiKeyRecord,
    BudgetPeriod,
    KeyPolicy,
    KeyUpdate,
    create_record,
    hash_secret,
    new_secret,
    utcnow,
)
from app.keys.store import KeyChange, KeyStore, KeyStoreError, Reserved, Transform

T = TypeVar("T")

log = logging.getLogger("app.keys")
audit_log = logging.getLogger("app.audit")


class UnknownKey(LookupError):
    pass


class ManagedKeys:
    def __init__(
        self,
        store: KeyStore,
        *,
        cache_seconds: float,
        model_exists: Callable[[str], bool],
        backend: str,
    ) -> None:
        self.store = store
        self.backend = backend  # "redis" or "sqlite: <path>", for the start-up line
        self._cache = LookupCache(cache_seconds)
        self._model_exists = model_exists

    # -- the request path ------------------------------------------------------------------

    async def lookup(self, secret: str) -> ApiKeyRecord | None:
        """The record a presented secret belongs to; None if it belongs to none (any more).
        A revoked, disabled or expired key raises ManagedKeyRefused, which says which."""
        digest = hash_secret(secret)
        found, record = self._cache.get(digest)
        if not found:
            record = await self._guarded(self.store.find(digest))
            self._cache.put(digest, record)
        now = utcnow()
        if record is None or not record.matches(digest, now):
            return None
        if record.revoked_at is not None:
            raise ManagedKeyRefused("revoked", record.id)
        if record.disabled:
            raise ManagedKeyRefused("disabled", record.id)
        if record.expires_at is not None and now >= record.expires_at:
            raise ManagedKeyRefused("expired", record.id)
        return record

    async def reserve(
        self, record: ApiKeyRecord, member: str, amount: float, hold_seconds: float
    ) -> Reserved:
        """Hold `amount` against the key's budget, atomically in the store, so concurrent
        requests on every replica see each other's reservations (`store.budget_rule`)."""
        assert record.budget_usd is not None
        return await self._guarded(
            self.store.reserve(
                record.id, member, amount, record.budget_period, record.budget_usd, hold_seconds
            )
        )

    @staticmethod
    def budget_spent(record: ApiKeyRecord, spent_usd: float) -> BudgetSpent:
        assert record.budget_usd is not None
        return BudgetSpent(_period_name(record.budget_period), record.budget_usd, spent_usd)

    # -- administration --------------------------------------------------------------------

    async def create(self, policy: KeyPolicy, actor: str) -> tuple[ApiKeyRecord, str]:
        self._check_models(policy.models)
        record, secret = create_record(policy)
        await self._guarded(self.store.create(record))
        audit(actor, "create", record.id, sorted(policy.model_fields_set))
        return record, secret

    async def get(self, key_id: str) -> ApiKeyRecord:
        record = await self._guarded(self.store.get(key_id))
        if record is None:
            raise UnknownKey(key_id)
        return record

    async def list(
        self, *, team: str | None = None, name: str | None = None
    ) -> builtins.list[ApiKeyRecord]:
        records = sorted(await self._guarded(self.store.all()), key=lambda r: r.created_at)
        return [
            r
            for r in records
            if (team is None or r.team == team) and (name is None or r.name == name)
        ]

    async def spend(self, key_id: str) -> dict[BudgetPeriod, float]:
        return await self._guarded(self.store.spend(key_id, utcnow()))

    async def describe(self, record: ApiKeyRecord) -> dict[str, Any]:
        """A key as `show` returns it: its policy, and what it has spent in each period."""
        spend = await self.spend(record.id)
        remaining = None
        if record.budget_usd is not None:
            remaining = max(0.0, record.budget_usd - spend[record.budget_period])
        return {**record.public(), "spend_usd": spend, "budget_remaining_usd": remaining}

    async def update(self, key_id: str, change: KeyUpdate, actor: str) -> ApiKeyRecord:
        if "models" in change.model_fields_set:
            self._check_models(change.models)

        def updated(record: ApiKeyRecord) -> KeyChange:
            _not_revoked(record, "changed")
            return KeyChange(record.updated(change, utcnow()))

        record = await self._change(key_id, updated)
        audit(actor, "update", key_id, sorted(change.model_fields_set))
        return record

    async def rotate(
        self, key_id: str, grace_seconds: float, actor: str
    ) -> tuple[ApiKeyRecord, str]:
        secret = new_secret()
        grace = grace_seconds > 0

        def rotated(record: ApiKeyRecord) -> KeyChange:
            _not_revoked(record, "rotated")
            now = utcnow()
            dropped = [h for h in (record.previous_hash,) if h]
            if not grace:
                dropped.append(record.secret_hash)
            new = record.model_copy(
                update={
                    "secret_hash": hash_secret(secret),
                    "previous_hash": record.secret_hash if grace else None,
                    "previous_valid_until": (
                        now + timedelta(seconds=grace_seconds) if grace else None
                    ),
                    "updated_at": now,
                }
            )
            return KeyChange(new, dropped)

        record = await self._change(key_id, rotated)
        audit(actor, "rotate", key_id, [], grace_seconds=grace_seconds)
        return record, secret

    async def revoke(self, key_id: str, actor: str) -> ApiKeyRecord:
        def revoked(record: ApiKeyRecord) -> KeyChange:
            if record.revoked_at is not None:
                return KeyChange(record)  # revoked already: nothing changes, not even the time
            now = utcnow()
            return KeyChange(record.model_copy(update={"revoked_at": now, "updated_at": now}))

        record = await self._change(key_id, revoked)
        audit(actor, "revoke", key_id, [])
        return record

    async def _change(self, key_id: str, transform: Transform) -> ApiKeyRecord:
        seen: list[str] = []

        def remembered(record: ApiKeyRecord) -> KeyChange:
            seen.extend(record.hashes())  # every try's: each may be in some worker's cache
            return transform(record)

        record = await self._guarded(self.store.change(key_id, remembered))
        if record is None:
            raise UnknownKey(key_id)
        self._cache.forget([*seen, *record.hashes()])
        return record

    async def aclose(self) -> None:
        await self.store.aclose()

    def _check_models(self, models: builtins.list[str] | None) -> None:
        for index, model in enumerate(models or []):
            if not self._model_exists(model):
                raise InvalidKeyChange(
                    f"models[{index}]: the model '{model}' is not in the registry.",
                    field="models",
                )

    async def _guarded(self, call: Awaitable[T]) -> T:
        try:
            return await call
        except KeyStoreError as exc:
            log.warning("key store unavailable (%s)", exc)
            raise KeyStoreUnavailable() from None


def _not_revoked(record: ApiKeyRecord, what: str) -> None:
    if record.revoked_at is not None:
        raise InvalidKeyChange(f"A revoked key cannot be {what}: revocation is final.", field="id")


def _period_name(period: BudgetPeriod) -> str:
    return {"day": "daily (UTC)", "month": "monthly (UTC)", "total": "lifetime"}[period]


def audit(actor: str, action: str, key_id: str, fields: list[str], **details: object) -> None:
    audit_log.info(
        "admin %s %s",
        action,
        key_id,
        extra={"audit": True, "actor": actor, "action": action, "key_id": key_id,
               "fields": fields, **details},
    )  # fmt: skip
