"""A request's trace as the hot paths need it, kept in a context variable of ours (imported once
tracing is on): whether it is sampled, its IDs for log lines, and, unsampled, the headers that
carry its context upstream, all worked out once per request rather than asked of the SDK's
context at each use (~2-4 µs a question, measured)."""

from __future__ import annotations

from contextvars import ContextVar, Token
from dataclasses import dataclass
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry.context import Context
from opentelemetry.propagators.textmap import Getter
from opentelemetry.trace import Span, SpanContext

Headers = list[tuple[bytes, bytes]] | tuple[tuple[bytes, bytes], ...]


@dataclass(slots=True)  # not frozen: a frozen dataclass's __init__ is ~3x as slow
class RequestTrace:
    """The trace of the request (or root work) this task serves."""

    sampled: bool
    context: Context | None  # sampled: its span's, which what runs under it finds current
    log: dict[str, Any]  # trace_id, span_id, trace_sampled: for every log line
    # Unsampled: its context as headers for every upstream call it makes (shared by them all,
    # never changed); sampled ones send each call's own span instead.
    headers: dict[str, str] | None = None


CURRENT: ContextVar[RequestTrace | None] = ContextVar("gateway_trace_request", default=None)


@dataclass(slots=True)
class Opened:
    """A span made current in this task until it is released (`Tracing.close`, `detach`,
    `server_end`); a request's own span (or a root's) with its `CURRENT` token. An unsampled
    request's span is `opentelemetry.trace.INVALID_SPAN`: no span was made for it."""

    span: Span
    token: object | None
    request: Token[RequestTrace | None] | None = None


def release(opened: Opened) -> None:
    if opened.token is not None:
        otel_context.detach(opened.token)  # type: ignore[arg-type]
    if opened.request is not None:
        CURRENT.reset(opened.request)


def sampled() -> bool:
    """Whether this task's request is sampled (False outside any)."""
    request = CURRENT.get()
    return request is not None and request.sampled


def log_ids(context: SpanContext, sampled: bool) -> dict[str, Any]:
    return {
        "trace_id": format(context.trace_id, "032x"),
        "span_id": format(context.span_id, "016x"),
        "trace_sampled": sampled,
    }


def traceparent(trace_id: str, span_id: str, flags: int) -> str:
    """W3C `traceparent`, as the SDK's TraceContextTextMapPropagator writes it."""
    return f"00-{trace_id}-{span_id}-{flags:02x}"


class ASGIHeaders(Getter[Headers]):
    """Reads propagation headers straight from ASGI's `scope["headers"]` (lower-case names)."""

    def get(self, carrier: Headers, key: str) -> list[str] | None:
        name = key.lower().encode("latin-1")
        found = [value.decode("latin-1") for header, value in carrier if header == name]
        return found or None

    def keys(self, carrier: Headers) -> list[str]:
        return [header.decode("latin-1") for header, _ in carrier]
