"""The request's sampling decision, made before the SDK is asked (imported once tracing is on).

Asking the SDK for a request's SERVER span costs ~10-20 µs even when the answer is "not
sampled" (a trace ID, the sampler's objects, a span context, a non-recording span), and with a
ratio of 0.1 nine requests in ten get that answer. So `server_start` (server.py) decides first,
from the caller's `traceparent` and a trace ID it draws itself, and asks the SDK for a span only
when the request is sampled: an unsampled one makes no SDK object at all.

The decision is the SDK's, not a copy of its configuration: `HeadSampler.of` reads the bounds
out of the sampler the SDK built from `OTEL_TRACES_SAMPLER` / `_ARG` (the six it names: always_on,
always_off, traceidratio, parentbased_*), and compares as `TraceIdRatioBased.should_sample` does
(the trace ID's 64 low bits against `bound`). Any other sampler (a subclass, one passed in code,
a parent-based one with other delegates) gives None, and the SDK decides every request.
tests/tracing/test_tracing_sampling.py checks the decisions against the SDK's own for a sweep of
trace IDs and parent flags.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from opentelemetry.sdk.trace import sampling as sdk
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

_LOW_BITS = sdk.TraceIdRatioBased.TRACE_ID_LIMIT  # the bits a ratio sampler looks at
_EVERY = _LOW_BITS + 1  # a bound every trace ID is under: always sampled
# The SDK's own reading of a traceparent (tracecontext.py), so that a header it would refuse is
# refused here too. Private to the SDK: if a version lacks either, `READABLE` is False and the
# SDK decides every request (server.py).
_TRACEPARENT: re.Pattern[str] | None = getattr(
    TraceContextTextMapPropagator, "_TRACEPARENT_HEADER_FORMAT_RE", None
)
TRACEPARENT_MAX: int = getattr(TraceContextTextMapPropagator, "_TRACEPARENT_MAXIMUM_LENGTH", 0)
READABLE = isinstance(_TRACEPARENT, re.Pattern) and isinstance(TRACEPARENT_MAX, int)
_ZERO_TRACE, _ZERO_SPAN = "0" * 32, "0" * 16


@dataclass(frozen=True, slots=True)
class HeadSampler:
    """Bounds on a trace ID's low 64 bits under which a SERVER span is sampled: for a request
    without a caller's context, and for one whose caller's context is sampled or not."""

    root: int
    sampled_parent: int
    unsampled_parent: int

    @classmethod
    def of(cls, sampler: sdk.Sampler) -> HeadSampler | None:
        """The SDK sampler's decisions as bounds, or None for a sampler this cannot mirror."""
        if isinstance(sampler, sdk.ParentBased) and _exact(sampler, sdk.ParentBased):
            # A SERVER span's parent, if any, is the caller's: remote. The local delegates
            # never decide for it.
            delegates = (
                getattr(sampler, "_root", None),
                getattr(sampler, "_remote_parent_sampled", None),
                getattr(sampler, "_remote_parent_not_sampled", None),
            )
            bounds = [_bound(delegate) for delegate in delegates]
            if None in bounds:
                return None
            root, sampled, unsampled = bounds
            assert root is not None and sampled is not None and unsampled is not None
            return cls(root, sampled, unsampled)
        bound = _bound(sampler)
        return None if bound is None else cls(bound, bound, bound)

    def sampled(self, trace_id: int, parent_flags: int | None) -> bool:
        """Whether a SERVER span in trace `trace_id` is sampled; `parent_flags`: the caller's
        trace flags (None: no caller's context)."""
        if parent_flags is None:
            bound = self.root
        elif parent_flags & 1:
            bound = self.sampled_parent
        else:
            bound = self.unsampled_parent
        return trace_id & _LOW_BITS < bound


def _exact(sampler: sdk.Sampler, kind: type[sdk.Sampler]) -> bool:
    """`sampler` decides as `kind` does (a subclass may decide otherwise)."""
    return type(sampler).should_sample is kind.should_sample


def _bound(sampler: object) -> int | None:
    if isinstance(sampler, sdk.TraceIdRatioBased) and _exact(sampler, sdk.TraceIdRatioBased):
        return sampler.bound
    if isinstance(sampler, sdk.StaticSampler) and _exact(sampler, sdk.StaticSampler):
        # The same decision for every span; asked, not read from its private field.
        decision = sampler.should_sample(None, 1, "").decision
        if decision is sdk.Decision.RECORD_AND_SAMPLE:
            return _EVERY
        if decision is sdk.Decision.DROP:
            return 0
    return None  # RECORD_ONLY, or a sampler of its own


def parse_traceparent(value: bytes) -> tuple[int, int, int] | None:
    """A caller's `traceparent` as the SDK's propagator reads it: (trace ID, span ID, flags),
    or None where the SDK would ignore it (the request then starts a trace). The caller checks
    the length first (`TRACEPARENT_MAX`): the SDK logs a longer one, so it reads those itself."""
    assert _TRACEPARENT is not None  # READABLE
    match = _TRACEPARENT.search(value.decode("latin-1"))
    if match is None:
        return None
    version, trace_id, span_id, flags, rest = match.groups()
    if trace_id == _ZERO_TRACE or span_id == _ZERO_SPAN:
        return None
    if (version == "00" and rest) or version == "ff":
        return None
    return int(trace_id, 16), int(span_id, 16), int(flags, 16)


class TraceIds(RandomIdGenerator):
    """The SDK's random IDs (`random.getrandbits`, as `RandomIdGenerator`), except that a trace
    ID drawn ahead for a sampling decision (`server_start`) is the next root span's: the SDK
    then decides on the same ID, and agrees. Set and taken within one synchronous call on the
    event loop's thread, so no other span can take it."""

    drawn = 0

    def generate_trace_id(self) -> int:
        drawn, self.drawn = self.drawn, 0
        return drawn or super().generate_trace_id()
