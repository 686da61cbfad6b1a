"""The typed request the HTTP layer hands down to routing: validated, normalised, ready to send."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from enum import Enum

from app.config.registry import Model
from app.core.tokens import count_tokens, count_tokens_off_loop, decode_tokens


class Lane(Enum):
    """Which traffic a job is. Bulk work (Batch API lines, keys with `priority: bulk`) uses only
    the call slots and pacing slots that interactive requests leave (app/core/routing/)."""

    INTERACTIVE = "interactive"
    BULK = "bulk"


@dataclass(slots=True)
class EmbeddingJob:
    model: Model
    # Exactly one of these holds the client's items, in input order.
    texts: list[str] | None
    token_ids: list[list[int]] | None
    dimensions: int | None
    user: str | None
    want_base64: bool
    request_id: str
    # "query" or "document" as the client said; None lets each route's default apply.
    input_type: str | None = None
    lane: Lane = Lane.INTERACTIVE
    _token_counts: list[int] | None = field(default=None, repr=False)
    _decoded: list[str] | None = field(default=None, repr=False)

    def __len__(self) -> int:
        items = self.texts if self.texts is not None else self.token_ids
        return len(items) if items is not None else 0

    @property
    def expected_dims(self) -> int:
        return self.dimensions or self.model.config.dimensions

    def token_counts(self) -> list[int]:
        """cl100k_base tokens per item, counted once and only when something needs them."""
        if self._token_counts is None:
            if self.texts is not None:
                self._token_counts = count_tokens(self.texts)
            else:
                self._token_counts = [len(ids) for ids in self.token_ids or []]
        return self._token_counts

    async def count_tokens_in_steps(self, step: int) -> None:
        """Count now, `step` items at a time with a turn of the event loop between: for bulk
        work (Batch API lines) whose counting must not hold up interactive requests."""
        if self._token_counts is None and self.texts is not None:
            counts: list[int] = []
            for start in range(0, len(self.texts), step):
                counts += count_tokens(self.texts[start : start + step])
                await asyncio.sleep(0)
            self._token_counts = counts

    async def count_tokens_in_thread(self) -> None:
        """Count now, off the event loop (tiktoken releases the GIL while it encodes)."""
        if self._token_counts is None and self.texts is not None:
            self._token_counts = await count_tokens_off_loop(self.texts)

    def prompt_tokens(self) -> int:
        return sum(self.token_counts())

    def tokens_of(self, indices: list[int]) -> int:
        """Our count (cl100k_base) for some of the items."""
        counts = self.token_counts()
        return sum(counts[i] for i in indices)

    def billed_tokens(self, reported: int | None, indices: list[int] | None = None) -> int:
        """What a call is counted at: the upstream's own count when it reported one, else ours
        for the items it carried (all of them when `indices` is None)."""
        if reported is not None:
            return reported
        return self.prompt_tokens() if indices is None else self.tokens_of(indices)

    def subset(self, indices: list[int]) -> EmbeddingJob:
        """The same request for some of its items only."""
        counts = self._token_counts
        return EmbeddingJob(
            model=self.model,
            texts=[self.texts[i] for i in indices] if self.texts is not None else None,
            token_ids=[self.token_ids[i] for i in indices] if self.token_ids is not None else None,
            dimensions=self.dimensions,
            user=self.user,
            want_base64=self.want_base64,
            request_id=self.request_id,
            input_type=self.input_type,
            lane=self.lane,
            _token_counts=[counts[i] for i in indices] if counts is not None else None,
        )

    def item(self, index: int) -> str | list[int]:
        if self.texts is not None:
            return self.texts[index]
        assert self.token_ids is not None
        return self.token_ids[index]

    def as_text(self) -> list[str]:
        """The items as strings, decoding token IDs for routes that take strings only."""
        if self.texts is not None:
            return self.texts
        if self._decoded is None:
            self._decoded = decode_tokens(self.token_ids or [])
        return self._decoded
