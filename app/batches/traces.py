"""The Batch API in traces (app/tracing; nothing at all when tracing is off).

A batch gets a span when it is created, `batch`, in the trace of the request that created it
(under its `POST /v1/batches` span, so in the caller's trace when it sent `traceparent`). Its
IDs are kept with the batch's record (`BatchRecord.trace`): a chunk may run hours later, in
any worker of any replica, and the store is what they all share. Each piece of the batch's
work, validating it and running each chunk, is then a trace of its own (a root span: one trace
per chunk, not one trace of a million lines) linked to the batch's span, with the work's spans
under it: the cache lookups, the queue waits, the upstream calls.

Kept rather than derived from the batch's id: a derived span context would be linked to from
every chunk, but no span with those IDs would ever be exported (the SDK makes its own IDs), so
every link would lead nowhere; the kept one is a real span, in the creating request's trace.
A batch created while tracing was off (or its request not sampled) has none: its chunks' traces
link to nothing.

Spans carry counts and IDs only: never a line's input, vector or custom_id.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from app import tracing

if TYPE_CHECKING:
    from app.tracing.otel import Attributes
    from app.tracing.requests import Opened


def batch_span(batch_id: str) -> list[str] | None:
    """A `batch` span under the current request's, ended at once: its (trace ID, span ID) to
    keep with the batch; None when tracing is off or the request is not sampled."""
    traced = tracing.active
    if traced is None:
        return None
    opened = traced.open("batch", {"gateway.batch.id": batch_id})
    if opened is None:
        return None
    try:
        ids = traced.ids()
    finally:
        traced.close(opened)
    return list(ids) if ids is not None else None


class WorkSpan:
    """A root span for some of a batch's work, linked to the batch's span, current in this task
    (and the tasks it starts) until `end`."""

    __slots__ = ("_opened",)

    def __init__(self, name: str, linked: list[str] | None, attributes: Attributes) -> None:
        self._opened: Opened | None = None
        traced = tracing.active
        if traced is not None:
            links = [(linked[0], linked[1])] if linked and len(linked) == 2 else []
            self._opened = traced.root(name, links, attributes)

    def end(self, error_type: str | None = None, attributes: Attributes | None = None) -> None:
        opened, self._opened = self._opened, None
        traced = tracing.active
        if opened is not None and traced is not None:
            traced.close(opened, error_type, attributes)
