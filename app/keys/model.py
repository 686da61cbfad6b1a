"""A managed key's record and policy, and how secrets are made and stored (as SHA-256 only)."""

from __future__ import annotations

import hashlib
import secrets
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

SECRET_PREFIX = "egw-"
BudgetPeriod = Literal["day", "month", "total"]
Priority = Literal["interactive", "bulk"]
Text = Annotated[str, Field(max_length=200)]

# Upper bounds far above any real use, well inside what every store, script and JSON encoder
# takes (an int past 64 bits cannot even be written as a response). A value past one is a 400
# naming the field, at create and at PATCH.
MAX_RATE_LIMIT_PER_SECOND = 1_000_000
MAX_TOKENS_PER_MINUTE = 10**12
MAX_BUDGET_USD = 1e9
POLICY_BOUNDS: dict[str, int | float] = {
    "rate_limit_per_second": MAX_RATE_LIMIT_PER_SECOND,
    "tokens_per_minute": MAX_TOKENS_PER_MINUTE,
    "budget_usd": MAX_BUDGET_USD,
}


def new_secret() -> str:
    """`egw-` + 32 random bytes, url-safe base64 (43 characters)."""
    return SECRET_PREFIX + secrets.token_urlsafe(32)


def new_key_id() -> str:
    # Random, not derived from the secret: the id outlives rotations and names the key in usage.
    return "key_" + secrets.token_hex(8)


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def utcnow() -> datetime:
    return datetime.now(UTC)


class KeyPolicy(BaseModel):
    """What a key may do. Every field is also a field of the admin API and the CLI."""

    # Frozen: a caller carries its policy for a whole request, and the cache shares it.
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: Text | None = None
    team: Text | None = None
    metadata: dict[Text, Text] = Field(default_factory=dict, max_length=50)
    models: list[Text] | None = None  # None: every model
    rate_limit_per_second: int | None = Field(default=None, ge=1, le=MAX_RATE_LIMIT_PER_SECOND)
    tokens_per_minute: int | None = Field(default=None, ge=1, le=MAX_TOKENS_PER_MINUTE)
    budget_usd: float | None = Field(default=None, ge=0, le=MAX_BUDGET_USD, allow_inf_nan=False)
    budget_period: BudgetPeriod = "total"
    expires_at: datetime | None = None
    disabled: bool = False
    # `bulk`: this key's synchronous requests take the bulk lane, behind interactive traffic
    # (app/core/routing/), as Batch API work does: for teams that run their own loops.
    priority: Priority = "interactive"

    @field_validator("expires_at")
    @classmethod
    def _aware(cls, value: datetime | None) -> datetime | None:
        # A naive time would mean something different on every machine: read it as UTC.
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value

    def allows(self, model_id: str) -> bool:
        return self.models is None or model_id in self.models

    @property
    def limited(self) -> bool:
        """Whether a request needs per-key work beyond the allow-list."""
        return self.rate_limit_per_second is not None or self.tokens_per_minute is not None


DEFAULT_POLICY = KeyPolicy()


class KeyUpdate(KeyPolicy):
    """A PATCH: only the fields that were sent change (`model_fields_set`)."""

    budget_period: BudgetPeriod | None = None  # type: ignore[assignment]
    disabled: bool | None = None  # type: ignore[assignment]


class ApiKeyRecord(KeyPolicy):
    """What a store keeps for a key. Never the secret: its SHA-256 only."""

    model_config = ConfigDict(extra="ignore")  # records written by a newer gateway still load

    @model_validator(mode="before")
    @classmethod
    def _within_bounds(cls, data: Any) -> Any:
        """A record stored before the bounds existed may hold an absurd figure: it loads with
        the bound instead (which is what it meant), so it cannot break every listing."""
        if not isinstance(data, dict):
            return data
        clamped = dict(data)
        for name, bound in POLICY_BOUNDS.items():
            value = clamped.get(name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                continue
            if not value <= bound:  # NaN too
                clamped[name] = bound
        return clamped

    id: str
    secret_hash: str
    created_at: datetime
    updated_at: datetime
    revoked_at: datetime | None = None
    # Rotation with grace: the previous secret keeps working until `previous_valid_until`.
    previous_hash: str | None = None
    previous_valid_until: datetime | None = None

    def hashes(self) -> list[str]:
        return [h for h in (self.secret_hash, self.previous_hash) if h]

    def matches(self, digest: str, now: datetime) -> bool:
        if digest == self.secret_hash:
            return True
        return (
            digest == self.previous_hash
            and self.previous_valid_until is not None
            and now < self.previous_valid_until
        )

    def public(self) -> dict[str, Any]:
        """The record as the admin API and CLI show it: no hashes."""
        shown = self.model_dump(mode="json", exclude={"id", "secret_hash", "previous_hash"})
        return {"id": self.id, **shown}

    def updated(self, change: KeyUpdate, now: datetime) -> ApiKeyRecord:
        fields = {name: getattr(change, name) for name in change.model_fields_set}
        if fields.get("budget_period") is None:
            fields.pop("budget_period", None)
        if fields.get("disabled") is None:
            fields.pop("disabled", None)
        return self.model_copy(update={**fields, "updated_at": now})


def create_record(policy: KeyPolicy, now: datetime | None = None) -> tuple[ApiKeyRecord, str]:
    """A new record and its secret, which only the caller ever sees."""
    now = now or utcnow()
    secret = new_secret()
    record = ApiKeyRecord(
        **policy.model_dump(),
        id=new_key_id(),
        secret_hash=hash_secret(secret),
        created_at=now,
        updated_at=now,
    )
    return record, secret
