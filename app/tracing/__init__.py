"""OpenTelemetry traces, configured only by the standard `OTEL_*` variables, and free when off.

Tracing is on in a process once `start()` found an OTLP endpoint (`OTEL_EXPORTER_OTLP_ENDPOINT`
or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) and nothing turning it off (`OTEL_SDK_DISABLED=true`,
`OTEL_TRACES_EXPORTER=none`). Until then this module imports nothing from `opentelemetry`, and
every instrumentation point costs one check of the module attribute `active`:

    t = tracing.active
    if t is not None:
        ...  # app/tracing/otel.py: spans, links, propagation

These variables are the process environment's, read by the SDK itself (docs/tracing.md lists
them); they are not Settings (app/config/settings.py) because the gateway does not own them:
this module reads only the few that decide whether to load the SDK at all, and checks the ones
the SDK would silently replace by a costlier default.

`start()` runs in each worker's lifespan start-up and `shutdown()` in its shutdown: uvicorn
ends a worker by re-raising the signal, so an atexit hook would never flush what is queued.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from opentelemetry.context import Context
    from opentelemetry.trace import Span, SpanContext

    from app.tracing.otel import Tracing

log = logging.getLogger("app.tracing")

SERVICE_NAME = "embeddings-gateway"
# How long a worker's shutdown waits for the last export. Past it the spans still queued are
# lost rather than the worker killed mid-flush: the supervisor allows the whole lifespan
# shutdown 5 s (app/server/supervisor.py, FLUSH_MARGIN_SECONDS), and the SDK's own bound is 30.
FLUSH_SECONDS = 3.0

# The one thing hot paths look at: None unless tracing is on in this process.
active: Tracing | None = None

_SAMPLERS = {
    "always_on",
    "always_off",
    "traceidratio",
    "parentbased_always_on",
    "parentbased_always_off",
    "parentbased_traceidratio",
}
_PROTOCOLS = {"http/protobuf", "grpc"}


@dataclass(slots=True, eq=False)
class Queued:
    """A chunk's place in its request's trace while it waits in a batcher's queue
    (app/core/routing/batching.py)."""

    context: Context | None  # sampled: the context it queued in, where its call may go
    span: Span | None  # sampled: its wait's span
    headers: dict[str, str] | None  # unsampled: its request's context, for its call's headers


@dataclass(slots=True, eq=False)
class CallOrigin:
    """Where an upstream call made for several requests belongs (app/core/routing/batching.py):
    the context its span is a child of (None: no request it carries is sampled; `headers` then
    carries the first one's context upstream), and the spans of the requests it carries, which
    its span links. Dispatch fills in `client`, the call's own span, for those to link back."""

    parent: Context | None
    headers: dict[str, str] | None = None
    links: list[SpanContext] = field(default_factory=list)
    requests: int = 1  # how many requests' chunks it carries
    client: SpanContext | None = None


class TracingConfigError(ValueError):
    """An `OTEL_*` value the gateway refuses to run traced with."""


def requested(environ: Mapping[str, str]) -> bool:
    """Whether the environment asks for traces: an OTLP endpoint, and nothing turning them off."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":  # the SDK's own test
        return False
    if environ.get("OTEL_TRACES_EXPORTER", "").strip().lower() == "none":
        return False
    return bool(
        environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "").strip()
        or environ.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").strip()
    )


def protocol(environ: Mapping[str, str]) -> str:
    """The OTLP transport: `http/protobuf` unless `grpc` is asked for. The SDK's exporters do
    not read this variable themselves (only its auto-configuration does), so it is read here."""
    chosen = (
        environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "").strip()
        or environ.get("OTEL_EXPORTER_OTLP_PROTOCOL", "").strip()
        or "http/protobuf"
    )
    if chosen not in _PROTOCOLS:
        raise TracingConfigError(
            f"OTEL_EXPORTER_OTLP_PROTOCOL={chosen!r}: the gateway exports http/protobuf or grpc"
        )
    return chosen


def check(environ: Mapping[str, str]) -> None:
    """Refuse what the SDK would quietly turn into something else: an unknown sampler becomes
    `parentbased_always_on` and a bad ratio 1.0 there, i.e. every request traced; an exporter
    other than OTLP is not built at all; an endpoint that is no URL fails every export."""
    exporter = environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if exporter not in ("", "otlp"):
        raise TracingConfigError(f"OTEL_TRACES_EXPORTER={exporter!r}: the gateway exports OTLP")
    sampler = environ.get("OTEL_TRACES_SAMPLER", "").strip().lower()
    if sampler and sampler not in _SAMPLERS:
        raise TracingConfigError(f"OTEL_TRACES_SAMPLER={sampler!r}: one of {sorted(_SAMPLERS)}")
    if sampler.endswith("traceidratio") and "OTEL_TRACES_SAMPLER_ARG" in environ:
        text = environ["OTEL_TRACES_SAMPLER_ARG"].strip()
        try:
            ratio = float(text)
        except ValueError:
            ratio = -1.0
        if not 0.0 <= ratio <= 1.0:
            raise TracingConfigError(f"OTEL_TRACES_SAMPLER_ARG={text!r}: a ratio from 0 to 1")
    transport = protocol(environ)
    for name in ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT"):
        url = environ.get(name, "").strip()
        if not url:
            continue
        parts = urlsplit(url)
        is_url = parts.scheme in ("http", "https") and bool(parts.netloc)
        if transport == "http/protobuf" and not is_url:
            raise TracingConfigError(f"{name}={url!r}: an http:// or https:// URL")
        break  # the per-signal variable wins; the generic one is not used then


def start(environ: Mapping[str, str] | None = None) -> bool:
    """Turn tracing on in this process if the environment asks for it; whether it is on.

    Never raises: a value the SDK or `check` refuses is logged and the gateway runs untraced.
    """
    global active
    if active is not None:
        return True
    environ = os.environ if environ is None else environ
    if not requested(environ):
        return False
    try:
        check(environ)
        from app.tracing.otel import Tracing

        active = Tracing.from_environment(protocol(environ), SERVICE_NAME)
    except Exception as exc:  # a bad OTEL_* value must not stop the gateway
        log.error("tracing is off: %s", exc)
        return False
    log.info("tracing on: OTLP over %s", protocol(environ))
    return True


def shutdown() -> None:
    """Export what is queued and stop (blocking: up to the exporter's timeout). Idempotent."""
    global active
    tracing, active = active, None
    if tracing is not None:
        tracing.shutdown()


async def flush(seconds: float = FLUSH_SECONDS) -> None:
    """`shutdown()` for the lifespan: off the event loop, and waited for at most `seconds`. A
    daemon thread, not the loop's executor, whose threads the interpreter would wait for."""
    if active is None:
        return
    loop = asyncio.get_running_loop()
    done = asyncio.Event()

    def run() -> None:
        try:
            shutdown()
        finally:
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits
                loop.call_soon_threadsafe(done.set)

    threading.Thread(target=run, name="tracing-flush", daemon=True).start()
    try:
        await asyncio.wait_for(done.wait(), seconds)
    except TimeoutError:
        log.warning("tracing: spans still queued after %gs are dropped", seconds)
