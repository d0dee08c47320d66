"""OpenTelemetry traces of a gateway process, set up from the standard OTEL_* environment variables; off by default.

Tracing is on when OTEL_EXPORTER_OTLP_ENDPOINT (or OTEL_EXPORTER_OTLP_TRACES_ENDPOINT) is set, unless
OTEL_SDK_DISABLED is "true" or OTEL_TRACES_EXPORTER is "none". Spans are then exported in batches over
OTLP/HTTP (protobuf) by the SDK's BatchSpanProcessor, from a thread of its own: a request only appends its
ended spans to a queue. Everything else the SDK reads from the environment is its own (OTEL_SERVICE_NAME,
OTEL_RESOURCE_ATTRIBUTES, OTEL_TRACES_SAMPLER, OTEL_BSP_*, OTEL_EXPORTER_OTLP_HEADERS, ...).

Off, the SDK is not even imported and `tracer` stays None: that one check is all a request pays
(streaming.tracing makes the spans).
"""

import logging
import os
from collections.abc import Mapping
from urllib.parse import urlsplit

logger = logging.getLogger(__name__)

DEFAULT_SERVICE_NAME = "ai-gateway"
# The one protocol the gateway exports with (the SDK's HTTP exporter).
PROTOCOL = "http/protobuf"

# The gateway's tracer once tracing_setup turned tracing on; None means off.
tracer = None
_provider = None


def tracing_endpoint(environ: Mapping[str, str]) -> str:
    """The OTLP endpoint traces go to ("" when none is set): the traces-only variable wins."""
    return (
        environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "").strip()
        or environ.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").strip()
    )


def tracing_requested(environ: Mapping[str, str]) -> bool:
    """Whether the environment asks for traces: an OTLP endpoint, the SDK not disabled, the exporter not "none"."""
    if not tracing_endpoint(environ):
        return False
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporters = {name.strip().lower() for name in environ.get("OTEL_TRACES_EXPORTER", "otlp").split(",")}
    return exporters != {"none"}


def tracing_unsupported(environ: Mapping[str, str]) -> str | None:
    """Why traces asked for cannot be exported as asked (None: they can). Only OTLP over HTTP with protobuf
    is built in; anything else would send every batch where nothing understands it."""
    exporters = {name.strip().lower() for name in environ.get("OTEL_TRACES_EXPORTER", "otlp").split(",")}
    if "otlp" not in exporters:
        return f"OTEL_TRACES_EXPORTER={environ['OTEL_TRACES_EXPORTER']!r}: only 'otlp' is supported"
    for name in ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"):
        protocol = environ.get(name, "").strip()
        if protocol:
            if protocol != PROTOCOL:
                return f"{name}={protocol!r}: only '{PROTOCOL}' is supported"
            break
    return None


def tracing_resource_attributes(environ: Mapping[str, str]) -> dict[str, str]:
    """Resource attributes the gateway adds to what the SDK reads from the environment: its service name,
    unless OTEL_SERVICE_NAME or OTEL_RESOURCE_ATTRIBUTES names one."""
    if environ.get("OTEL_SERVICE_NAME", "").strip():
        return {}
    declared = environ.get("OTEL_RESOURCE_ATTRIBUTES", "")
    if any(pair.split("=", 1)[0].strip() == "service.name" for pair in declared.split(",")):
        return {}
    return {"service.name": DEFAULT_SERVICE_NAME}


def _where(endpoint: str) -> str:
    """The endpoint as logged: scheme, host and port only (a URL may carry credentials)."""
    parts = urlsplit(endpoint)
    host = parts.hostname or "?"
    return f"{parts.scheme}://{host}" + (f":{parts.port}" if parts.port else "")


def tracing_setup(environ: Mapping[str, str] | None = None):
    """Turn tracing on in this process if the environment asks for it (once; later calls change nothing).
    Returns the tracer, or None when tracing stays off."""
    global tracer, _provider
    environ = os.environ if environ is None else environ
    if _provider is not None or not tracing_requested(environ):
        return tracer
    problem = tracing_unsupported(environ)
    if problem:
        logger.warning("OpenTelemetry tracing stays off: %s", problem)
        return None
    from opentelemetry import trace
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    # The SDK reads the rest: the sampler from OTEL_TRACES_SAMPLER (default: parent-based, always on), the
    # batching from OTEL_BSP_*, the exporter's headers, timeout, compression and certificates from OTEL_EXPORTER_OTLP_*.
    _provider = TracerProvider(resource=Resource.create(tracing_resource_attributes(environ)))
    _provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(_provider)
    tracer = _provider.get_tracer("aigateway")
    logger.info("OpenTelemetry traces exported over OTLP/HTTP to %s", _where(tracing_endpoint(environ)))
    return tracer


def tracing_flush(timeout_seconds: float = 5.0) -> None:
    """Export the spans still queued (a stopping process; the SDK also does it at exit); never raises."""
    if _provider is None:
        return
    try:
        _provider.force_flush(int(timeout_seconds * 1000))
    except Exception as exc:
        logger.warning("exporting the last spans failed: %s", type(exc).__name__)
