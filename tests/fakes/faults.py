"""Injected misbehaviour: what a fault is, which request gets one, and how it bends a body."""

from __future__ import annotations

import random
import threading
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass

import orjson

from tests.fakes.vectors import (
    Item,
    array_fragment,
    cached_vector,
    nan_fragment,
    vector_fragment,
)

FAULT_KINDS: frozenset[str] = frozenset(
    {
        "status",  # answer HTTP `status` (with `headers`) and the protocol's error body
        "hang",  # wait `seconds` (or until clear()/stop()) before answering
        "non_json",  # a 200 with an HTML body
        "fewer_vectors",  # one vector short
        "wrong_dims",  # every vector one value short
        "nan",  # the first vector's first value is NaN
        "shuffled",  # the data array in reverse order (indices kept)
        "drop",  # close the connection without a response
        "truncated",  # send half of the body, then close
    }
)


@dataclass(frozen=True)
class Fault:
    """One injected misbehaviour; see FAULT_KINDS."""

    kind: str
    status: int = 500
    headers: Mapping[str, str] | None = None
    seconds: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {self.kind!r}; expected one of {FAULT_KINDS}")

    @classmethod
    def http_status(cls, status: int = 500, headers: Mapping[str, str] | None = None) -> Fault:
        return cls("status", status=status, headers=headers)

    @classmethod
    def rate_limited(cls, retry_after: str | None = "1") -> Fault:
        return cls.http_status(429, {"Retry-After": retry_after} if retry_after else None)

    @classmethod
    def hang(cls, seconds: float) -> Fault:
        return cls("hang", seconds=seconds)

    @classmethod
    def non_json(cls) -> Fault:
        return cls("non_json")

    @classmethod
    def fewer_vectors(cls) -> Fault:
        return cls("fewer_vectors")

    @classmethod
    def wrong_dims(cls) -> Fault:
        return cls("wrong_dims")

    @classmethod
    def nan(cls) -> Fault:
        return cls("nan")

    @classmethod
    def shuffled(cls) -> Fault:
        return cls("shuffled")

    @classmethod
    def drop(cls) -> Fault:
        return cls("drop")

    @classmethod
    def truncated(cls) -> Fault:
        return cls("truncated")


@dataclass
class _Queued:
    fault: Fault
    remaining: int | None  # None: until clear()


class FaultPlan:
    """Which embedding request gets which fault: a FIFO queue first, then a deterministic rate."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._queue: deque[_Queued] = deque()
        self._rate_fault: Fault | None = None
        self._rate = 0.0
        self._rng = random.Random(0)

    def add(self, fault: Fault | str, times: int | None = 1) -> None:
        if isinstance(fault, str):
            fault = Fault(fault)
        if times is not None and times < 1:
            raise ValueError("times must be >= 1 or None")
        with self._lock:
            self._queue.append(_Queued(fault, times))

    def set_rate(self, fault: Fault | str | None, rate: float, seed: int = 0) -> None:
        if isinstance(fault, str):
            fault = Fault(fault)
        if not 0.0 <= rate <= 1.0:
            raise ValueError("rate must be within [0, 1]")
        with self._lock:
            self._rate_fault = fault if rate > 0 else None
            self._rate = rate if fault is not None else 0.0
            self._rng = random.Random(seed)

    def clear(self) -> None:
        with self._lock:
            self._queue.clear()
            self._rate_fault = None
            self._rate = 0.0

    def next(self) -> Fault | None:
        """The fault for the next embedding request, if any."""
        with self._lock:
            # The RNG advances on every request, queued fault or not, so which requests fail
            # depends only on their arrival order.
            rate_hit = self._rate > 0 and self._rng.random() < self._rate
            if self._queue:
                head = self._queue[0]
                if head.remaining is not None:
                    head.remaining -= 1
                    if head.remaining <= 0:
                        self._queue.popleft()
                return head.fault
            return self._rate_fault if rate_hit else None


def embedding_entries(
    model: str,
    items: list[Item],
    native_dims: int,
    requested_dims: int | None,
    b64: bool,
    fault: Fault | None,
) -> list[tuple[int, orjson.Fragment]]:
    """The (index, serialised vector) pairs of a response's data array, bent by ``fault``."""
    kind = fault.kind if fault is not None else None
    if kind == "wrong_dims":
        vectors = [
            array_fragment(cached_vector(model, key, native_dims, requested_dims)[:-1], b64)
            for key in items
        ]
    else:
        vectors = [vector_fragment(model, key, native_dims, requested_dims, b64) for key in items]
    if kind == "nan":
        vectors[0] = nan_fragment(cached_vector(model, items[0], native_dims, requested_dims), b64)
    entries = list(enumerate(vectors))
    if kind == "fewer_vectors":
        return entries[:-1]
    if kind == "shuffled":
        return entries[::-1]
    return entries
