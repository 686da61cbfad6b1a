"""What reaching the upstreams cost one request: a value the core hands back, for the request
log and metrics."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(slots=True)
class UpstreamCost:
    providers: list[str] = field(default_factory=list)  # each route's provider, in call order
    seconds: float = 0.0  # summed over every upstream call, hedges included

    def add(self, other: UpstreamCost) -> None:
        self.providers.extend(other.providers)
        self.seconds += other.seconds
