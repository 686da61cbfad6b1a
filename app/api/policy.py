"""The caller's policy on one embeddings request, as HTTP sees it: the work is
`app.keys.policy` (limits, budget reservation, settle); this starts it beside the cache lookup
and puts the key's x-ratelimit-* figures on the response. Static keys and the internal token
have the default policy, which costs nothing here."""

from __future__ import annotations

import asyncio

from starlette.types import Scope

from app.api.admission import ratelimit_headers
from app.api.middleware import extra_headers
from app.auth.callers import Caller, CallerKind
from app.core.embedder import Embedded
from app.core.job import EmbeddingJob
from app.keys.errors import KeyRateLimited
from app.keys.model import ApiKeyRecord
from app.keys.policy import Charge, KeyPolicies
from app.runtime.services import Services


class PolicyCheck:
    """The caller's policy on one request: started before the cache lookup so that its Redis
    round trip and the lookup's go at once (`Embedder.embed(admitted=...)`)."""

    def __init__(self, scope: Scope, services: Services, caller: Caller, job: EmbeddingJob):
        """Start the check, if the caller's policy needs one."""
        self.charge: Charge | None = None  # what was reserved, once `check` has passed
        self.check: asyncio.Task[Charge] | None = None  # None: nothing to ask the store
        self._policies = policies = services.key_policies
        record = caller.policy
        if caller.kind is not CallerKind.MANAGED or policies is None:
            return
        assert isinstance(record, ApiKeyRecord)
        if not policies.needs_check(record):
            self.charge = policies.unchecked(record).charge  # spend is recorded all the same
            return
        self.check = asyncio.ensure_future(_apply(scope, policies, record, job))

    async def outcome(self) -> Charge | None:
        """What was reserved, whatever became of the request (nothing if the check refused)."""
        if self.check is not None:
            try:
                self.charge = await self.check
            except (Exception, asyncio.CancelledError):  # refused, store down, or shut down
                self.charge = None
            self.check = None
        return self.charge

    async def settle(self, job: EmbeddingJob, result: Embedded) -> None:
        """Charge what was really sent upstream: cached items cost nothing."""
        charge = await self.outcome()
        if charge is not None and self._policies is not None:
            price = job.model.config.pricing.per_million_tokens
            await self._policies.settle(charge, result.upstream_tokens, price)

    async def release(self) -> None:
        """The request failed: release what it reserved."""
        charge = await self.outcome()
        if charge is not None and self._policies is not None:
            await self._policies.release(charge)


async def _apply(
    scope: Scope, policies: KeyPolicies, record: ApiKeyRecord, job: EmbeddingJob
) -> Charge:
    """The key's own limits replace the per-IP figures: they are the ones this client can use."""
    try:
        admission = await policies.admit(record, job)
    except KeyRateLimited as refused:
        extra_headers(scope).update(ratelimit_headers(refused.requests, refused.tokens))
        raise
    if (verdict := admission.verdict) is not None:
        extra_headers(scope).update(ratelimit_headers(verdict.requests, verdict.tokens))
    return admission.charge
