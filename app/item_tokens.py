"""Each item's share of the usage the upstream reported for the call that carried it.

An upstream reports one figure per call; the cache keeps one per item, so that a hit reports
what its miss did. An item's share is in proportion to the gateway's own count for the items
of its call, by largest remainder (app/usage_split.py), so a call's shares add up to exactly
what it reported. They are split only when first asked for: a request that needs none (no
cache, no repeated items, nothing coalesced) tokenises nothing.
"""

from __future__ import annotations

from app.jobs import EmbeddingJob
from app.usage_split import split_proportionally


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
