"""The SDK's tracer provider, built from the environment: it reads every OTEL_* variable itself,
so nothing is passed but the exporter class the protocol names and a default service name."""

from __future__ import annotations

from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter

from app.tracing.sampling import TraceIds


def build_provider(protocol: str, service_name: str) -> TracerProvider:
    """A provider exporting OTLP over `protocol` (http/protobuf or grpc) in batches
    (OTEL_BSP_*), with the sampler and span limits of the environment (OTEL_TRACES_SAMPLER,
    OTEL_SPAN_*); raises ValueError for what cannot be built."""
    exporter: SpanExporter
    if protocol == "grpc":
        try:
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
                OTLPSpanExporter as GRPCExporter,
            )
        except ImportError:
            raise ValueError(
                "OTLP over gRPC needs the package opentelemetry-exporter-otlp-proto-grpc "
                "(pip install 'embeddings-gateway[otlp-grpc]')"
            ) from None
        exporter = GRPCExporter()
    else:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        exporter = OTLPSpanExporter()  # OTEL_EXPORTER_OTLP_[TRACES_]{ENDPOINT,HEADERS,...}
    resource = Resource.create()  # OTEL_RESOURCE_ATTRIBUTES, OTEL_SERVICE_NAME
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        # Only when the environment named none: create({...}) would override it.
        resource = resource.merge(Resource({SERVICE_NAME: service_name}))
    provider = TracerProvider(
        resource=_Resource(resource.attributes, resource.schema_url),
        shutdown_on_exit=False,  # flushed by the lifespan; atexit never runs in workers
        id_generator=TraceIds(),  # the SDK's random IDs; see sampling.py
    )  # the sampler, span limits and OTEL_SDK_DISABLED come from the environment
    provider.add_span_processor(BatchSpanProcessor(exporter))
    return provider


class _Resource(Resource):
    """A Resource whose hash is computed once. The OTLP encoder hashes the resource of every span
    it exports, and Resource's hash is a JSON dump of its attributes: ~4 µs a span (measured)."""

    _hash: int | None = None

    def __hash__(self) -> int:
        if self._hash is None:
            self._hash = super().__hash__()
        return self._hash
