"""An OTLP/HTTP trace receiver on 127.0.0.1: what an OpenTelemetry Collector's `otlp` receiver
accepts over HTTP, decoded with the protocol's own messages (opentelemetry-proto).

Per opentelemetry-proto's docs/specification.md: traces are POSTed to `/v1/traces` as a binary
protobuf `ExportTraceServiceRequest` (`Content-Type: application/x-protobuf`, optionally
`Content-Encoding: gzip`); success is a 200 with an `ExportTraceServiceResponse` body.

    with OTLPReceiver() as receiver:           # in-process, for tests
        env["OTEL_EXPORTER_OTLP_ENDPOINT"] = receiver.endpoint
        ...
        spans = receiver.wait_for(lambda spans: ..., timeout=10)

    python -m tests.otlp_receiver               # a sink in its own process (the benchmark):
                                                # prints `listening on URL`; GET /stats counts
"""

from __future__ import annotations

import argparse
import gzip
import json
import signal
import sys
import threading
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

MAX_BODY = 64 * 1024 * 1024  # the specification's recommended limit (413 past it)
KINDS = {
    Span.SPAN_KIND_INTERNAL: "INTERNAL",
    Span.SPAN_KIND_SERVER: "SERVER",
    Span.SPAN_KIND_CLIENT: "CLIENT",
    Span.SPAN_KIND_PRODUCER: "PRODUCER",
    Span.SPAN_KIND_CONSUMER: "CONSUMER",
}


def any_value(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    if kind is None:
        return None
    if kind == "array_value":
        return [any_value(item) for item in value.array_value.values]
    if kind == "kvlist_value":
        return attributes(value.kvlist_value.values)
    return getattr(value, kind)


def attributes(pairs: Any) -> dict[str, Any]:
    return {pair.key: any_value(pair.value) for pair in pairs}


@dataclass(frozen=True)
class Link:
    trace_id: str
    span_id: str
    attributes: dict[str, Any]


@dataclass(frozen=True)
class ReceivedSpan:
    """One exported span, IDs in the hex the W3C headers and the gateway's logs use."""

    name: str
    kind: str
    trace_id: str
    span_id: str
    parent_span_id: str  # "" for a root
    start_ns: int
    end_ns: int
    attributes: dict[str, Any]
    links: list[Link]
    error: bool  # status ERROR
    trace_state: str
    resource: dict[str, Any] = field(repr=False)
    scope: str = ""

    @property
    def ms(self) -> float:
        return (self.end_ns - self.start_ns) / 1e6

    def strings(self) -> Iterator[str]:
        """Every string this span exports (names, attribute keys and values, resource)."""
        yield self.name
        yield self.trace_state
        for mapping in (self.attributes, self.resource, *(link.attributes for link in self.links)):
            for key, value in mapping.items():
                yield key
                yield from (str(v) for v in (value if isinstance(value, list) else [value]))


def _link(link: Span.Link) -> Link:
    return Link(link.trace_id.hex(), link.span_id.hex(), attributes(link.attributes))


def decoded(request: ExportTraceServiceRequest) -> list[ReceivedSpan]:
    found = []
    for resource_spans in request.resource_spans:
        resource = attributes(resource_spans.resource.attributes)
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                found.append(
                    ReceivedSpan(
                        name=span.name,
                        kind=KINDS.get(span.kind, str(span.kind)),
                        trace_id=span.trace_id.hex(),
                        span_id=span.span_id.hex(),
                        parent_span_id=span.parent_span_id.hex(),
                        start_ns=span.start_time_unix_nano,
                        end_ns=span.end_time_unix_nano,
                        attributes=attributes(span.attributes),
                        links=[_link(link) for link in span.links],
                        error=span.status.code == Status.STATUS_CODE_ERROR,
                        trace_state=span.trace_state,
                        resource=resource,
                        scope=scope_spans.scope.name,
                    )
                )
    return found


class OTLPReceiver:
    """Serves OTLP/HTTP traces from a background thread; keeps every span it decoded."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, keep: bool = True) -> None:
        """`keep`: hold every span decoded (tests); False only counts them (a long benchmark)."""
        self._spans: list[ReceivedSpan] = []
        self.exports = 0  # export requests accepted
        self.counted = 0  # spans received
        self.headers: list[dict[str, str]] = []  # of each accepted request, names lower-case
        self._changed = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as the exporter's session expects

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                if self.path != "/stats":
                    self._reply(404, b"", "text/plain")
                    return
                stats = {"exports": receiver.exports, "spans": receiver.counted}
                self._reply(200, json.dumps(stats).encode(), "application/json")

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if self.path != "/v1/traces":
                    self._reply(404, b"", "text/plain")
                    return
                content_type = self.headers.get("Content-Type", "").split(";")[0].strip()
                if content_type != "application/x-protobuf":
                    self._reply(415, b"", "text/plain")
                    return
                encoding = (self.headers.get("Content-Encoding") or "").lower()
                try:
                    if encoding == "gzip":
                        body = gzip.decompress(body)
                    elif encoding == "deflate":
                        body = zlib.decompress(body)
                    if len(body) > MAX_BODY:
                        self._reply(413, b"", "text/plain")
                        return
                    request = ExportTraceServiceRequest()
                    request.ParseFromString(body)
                    spans = decoded(request) if keep else []
                except Exception:
                    self._reply(400, b"", "text/plain")
                    return
                count = sum(len(s.spans) for r in request.resource_spans for s in r.scope_spans)
                with receiver._changed:
                    receiver._spans.extend(spans)
                    receiver.counted += count
                    receiver.exports += 1
                    receiver.headers.append({k.lower(): v for k, v in self.headers.items()})
                    receiver._changed.notify_all()
                self._reply(200, ExportTraceServiceResponse().SerializeToString())

            def _reply(
                self, status: int, body: bytes, content_type: str = "application/x-protobuf"
            ) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self._server = ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True
        self.endpoint = f"http://{host}:{self._server.server_address[1]}"
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="otlp-receiver", daemon=True
        )

    def __enter__(self) -> OTLPReceiver:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def spans(self) -> list[ReceivedSpan]:
        with self._changed:
            return list(self._spans)

    def clear(self) -> None:
        with self._changed:
            self._spans.clear()

    def wait_for(
        self, done: Callable[[list[ReceivedSpan]], bool], timeout: float = 15.0
    ) -> list[ReceivedSpan]:
        """The spans received, once `done(spans)` holds; AssertionError after `timeout` s."""
        with self._changed:
            if not self._changed.wait_for(lambda: done(list(self._spans)), timeout):
                names = sorted({s.name for s in self._spans})
                raise AssertionError(f"{len(self._spans)} spans after {timeout} s: {names}")
            return list(self._spans)


def trace_tree(spans: list[ReceivedSpan], trace_id: str) -> str:
    """One trace as text, children under parents in start order, with each span's kind, time
    and links: what a tracing UI shows of it. Spans whose parent is another trace's (a call
    serving several requests is a child in one of them) are shown where they are."""
    mine = [s for s in spans if s.trace_id == trace_id]
    ids = {s.span_id for s in mine}
    children: dict[str, list[ReceivedSpan]] = {}
    for span in mine:
        parent = span.parent_span_id if span.parent_span_id in ids else ""
        children.setdefault(parent, []).append(span)
    lines: list[str] = []

    def show(span: ReceivedSpan, prefix: str, last: bool, top: bool) -> None:
        branch = "" if top else ("└─ " if last else "├─ ")
        extra = f"  links: {len(span.links)}" if span.links else ""
        flag = "  ERROR" if span.error else ""
        lines.append(f"{prefix}{branch}{span.name} [{span.kind}] {span.ms:.2f} ms{extra}{flag}")
        below = sorted(children.get(span.span_id, []), key=lambda s: s.start_ns)
        inner = prefix if top else prefix + ("   " if last else "│  ")
        for index, child in enumerate(below):
            show(child, inner, index == len(below) - 1, False)

    for root in sorted(children.get("", []), key=lambda s: s.start_ns):
        show(root, "", True, True)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="An OTLP/HTTP trace sink on 127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    with OTLPReceiver(port=args.port, keep=False) as receiver:
        print(f"listening on {receiver.endpoint}", flush=True)
        stop.wait()
        print(f"received {receiver.exports} exports, {receiver.counted} spans", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
