"""What the Batch API's workers run with: the gateway they embed through (a Protocol the runtime's
`Services` satisfies, so this layer never imports it) and how an error becomes a line's status
and body (the HTTP layer's one table, handed down by the wiring)."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from app.batches.policy import BatchPolicy
from app.batches.service import Batches
from app.config.settings import Settings
from app.core.serving import Serving

# An exception a line ended with, as the synchronous endpoint would have answered it:
# (status, OpenAI-shaped error body).
RenderError = Callable[[BaseException], tuple[int, bytes]]


class Gateway(Protocol):
    """The running gateway as a batch worker needs it: its current serving snapshot, read at
    each use, so a reload's new registry and routes apply to the lines that start after it."""

    @property
    def serving(self) -> Serving: ...


@dataclass(slots=True)
class Work:
    batches: Batches
    gateway: Gateway
    render: RenderError
    policy: BatchPolicy
    # This process's name as a claimant: a lease it holds is its until it stops renewing.
    worker: str = field(default_factory=lambda: "w-" + uuid.uuid4().hex[:16])

    @property
    def settings(self) -> Settings:
        return self.batches.settings
