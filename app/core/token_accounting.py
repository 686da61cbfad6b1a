"""Token accounting: what a call's tokens count for, per item and per request, and whether an
upstream's count can be believed. It reaches the client's usage and the bill.

- **Shares.** An upstream reports one `prompt_tokens` for a call. When that call carried
  several requests' inputs (micro-batching), or is cached item by item, each part gets its
  share: proportional to the gateway's own count for it, rounded by largest remainder so the
  shares sum to the total exactly (no token lost or invented, so spend per key stays exact in
  sum). `ItemTokens` splits a job's calls into per-item shares only when first asked for: a
  request that needs none (no cache, no repeated items, nothing coalesced) tokenises nothing;
  the cache keeps one share per item, so that a hit reports what its miss did.
- **Plausibility.** An upstream's count for a call is believed only if it is a non-negative
  integer, at most a generous factor above the gateway's own cl100k count for the same items
  (tokenisers differ, so 4x plus a few special tokens per input), and within the model's
  `max_tokens` for each input. Otherwise the gateway's own count is used and a warning names
  the provider. A count below the gateway's is believed: upstreams truncate (the local model
  stops at 256 word pieces), and it is what they bill.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import replace

from app.core.job import EmbeddingJob
from app.providers import UpstreamResult

# The logger keeps its old name: log lines and alerts filter on it.
log = logging.getLogger("app.usage_check")

FACTOR = 4
SLACK_PER_INPUT = 8  # special tokens ([CLS], [SEP], BOS/EOS) another tokeniser may count


def split_proportionally(total: int, weights: Sequence[int]) -> list[int]:
    """`total` as len(weights) non-negative integers summing to `total`, each in proportion to
    its weight; equal parts when every weight is 0."""
    if not weights:
        return []
    if len(weights) == 1:
        return [total]
    basis = [max(0, w) for w in weights]
    whole = sum(basis)
    if whole == 0:
        basis, whole = [1] * len(weights), len(weights)
    shares = [total * w // whole for w in basis]
    left = total - sum(shares)
    if left:
        remainders = [total * w % whole for w in basis]
        # The largest remainders, the first of equal ones first (a reversed sort is stable).
        order = sorted(range(len(basis)), key=remainders.__getitem__, reverse=True)
        for i in order[:left]:
            shares[i] += 1
    return shares


class ItemTokens:
    __slots__ = ("_calls", "_job", "_shares")

    def __init__(self, job: EmbeddingJob, calls: list[tuple[list[int], int]]) -> None:
        """`calls`: each call's items (indices into `job`) and the tokens it reported."""
        self._job = job
        self._calls = calls
        self._shares: list[int] | None = None

    def __getitem__(self, index: int) -> int:
        shares = self._shares if self._shares is not None else self._split()
        return shares[index]

    def as_list(self) -> list[int]:
        """Every item's share (a copy)."""
        shares = self._shares if self._shares is not None else self._split()
        return list(shares)

    def _split(self) -> list[int]:
        shares = [0] * len(self._job)
        for chunk, total in self._calls:
            if len(chunk) == 1:
                shares[chunk[0]] = total  # no need to count anything
                continue
            counts = self._job.token_counts()
            weights = [counts[i] for i in chunk]
            for index, share in zip(chunk, split_proportionally(total, weights), strict=True):
                shares[index] = share
        self._shares = shares
        return shares


def plausible_tokens(reported: object, own: int, inputs: int, max_tokens: int) -> bool:
    if type(reported) is not int or reported < 0:
        return False
    slack = SLACK_PER_INPUT * inputs
    if reported > FACTOR * own + slack:
        return False
    return reported <= max_tokens * inputs + slack


def checked_usage(
    outcome: UpstreamResult, job: EmbeddingJob, chunk: list[int], provider: str
) -> UpstreamResult:
    """The call's result, with an implausible upstream count replaced by the gateway's own."""
    reported, inputs = outcome.prompt_tokens, len(chunk)
    if reported is None:
        return outcome
    # Every input is at least one token, so a count within FACTOR + SLACK_PER_INPUT per input
    # passes the check whatever the exact count: no tokenising for the common answer.
    if plausible_tokens(reported, inputs, inputs, job.model.config.max_tokens):
        return outcome
    own = job.tokens_of(chunk)
    if plausible_tokens(reported, own, inputs, job.model.config.max_tokens):
        return outcome
    log.warning(
        "upstream usage is implausible; using the gateway's own count",
        extra={"provider": provider, "reported_tokens": reported, "own": own},
    )
    return replace(outcome, prompt_tokens=own)
