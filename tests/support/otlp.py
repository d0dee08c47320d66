"""A real OTLP/HTTP trace receiver on loopback: what a collector sees of the gateway's traces. Each POST to
/v1/traces is decoded with the OpenTelemetry protobuf definitions (ExportTraceServiceRequest) and answered as a
collector answers; the raw bodies are kept too, to search them for what must never be exported."""

import gzip
import threading
import time
import zlib
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

KINDS = {0: "UNSPECIFIED", 1: "INTERNAL", 2: "SERVER", 3: "CLIENT", 4: "PRODUCER", 5: "CONSUMER"}
STATUS = {0: "UNSET", 1: "OK", 2: "ERROR"}


def any_value(value):
    """An OTLP AnyValue as Python: str, bool, int, float, or a tuple for an array."""
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return tuple(any_value(item) for item in value.array_value.values)
    if kind == "kvlist_value":
        return {item.key: any_value(item.value) for item in value.kvlist_value.values}
    return getattr(value, kind) if kind else None


@dataclass
class ReceivedSpan:
    name: str
    kind: str
    trace_id: str
    span_id: str
    parent_span_id: str
    attributes: dict
    status: str
    status_message: str
    start_ns: int
    end_ns: int
    resource: dict
    scope: str

    @property
    def seconds(self) -> float:
        return (self.end_ns - self.start_ns) / 1e9


class OtlpReceiver:
    """A threaded HTTP server on 127.0.0.1 collecting trace exports; `endpoint` is its base URL (what
    OTEL_EXPORTER_OTLP_ENDPOINT takes)."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []
        self.exports: list[ExportTraceServiceRequest] = []
        self.content_types: list[str] = []
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                raw = self.rfile.read(int(self.headers.get("content-length", 0)))
                encoding = (self.headers.get("content-encoding") or "").lower()
                if encoding == "gzip":
                    raw = gzip.decompress(raw)
                elif encoding == "deflate":
                    raw = zlib.decompress(raw)
                if self.path != "/v1/traces":
                    self.send_response(404)
                    self.end_headers()
                    return
                export = ExportTraceServiceRequest()
                export.ParseFromString(raw)
                with receiver._lock:
                    receiver.bodies.append(raw)
                    receiver.exports.append(export)
                    receiver.content_types.append(self.headers.get("content-type", ""))
                answer = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.endpoint = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, name="otlp-receiver", daemon=True)

    def start(self) -> "OtlpReceiver":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)

    def clear(self) -> None:
        with self._lock:
            self.bodies.clear()
            self.exports.clear()
            self.content_types.clear()

    def spans(self) -> list[ReceivedSpan]:
        """Every span received so far, in the order received."""
        with self._lock:
            exports = list(self.exports)
        spans = []
        for export in exports:
            for resource_spans in export.resource_spans:
                resource = {item.key: any_value(item.value) for item in resource_spans.resource.attributes}
                for scope_spans in resource_spans.scope_spans:
                    for span in scope_spans.spans:
                        spans.append(
                            ReceivedSpan(
                                name=span.name,
                                kind=KINDS[span.kind],
                                trace_id=span.trace_id.hex(),
                                span_id=span.span_id.hex(),
                                parent_span_id=span.parent_span_id.hex(),
                                attributes={item.key: any_value(item.value) for item in span.attributes},
                                status=STATUS[span.status.code],
                                status_message=span.status.message,
                                start_ns=span.start_time_unix_nano,
                                end_ns=span.end_time_unix_nano,
                                resource=resource,
                                scope=scope_spans.scope.name,
                            )
                        )
        return spans

    def trace(self, trace_id: str) -> list[ReceivedSpan]:
        return [span for span in self.spans() if span.trace_id == trace_id]

    def wait_trace(self, trace_id: str, count: int, *, timeout: float = 10.0) -> list[ReceivedSpan]:
        """The spans of `trace_id` once `count` of them arrived; fails the test after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            spans = self.trace(trace_id)
            if len(spans) >= count:
                return spans
            if time.monotonic() > deadline:
                raise AssertionError(f"{len(spans)} of {count} spans of trace {trace_id} arrived: {spans}")
            time.sleep(0.02)

    def wait_spans(self, predicate, *, timeout: float = 10.0) -> list[ReceivedSpan]:
        """Every span received once `predicate(spans)` holds; fails the test after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            spans = self.spans()
            if predicate(spans):
                return spans
            if time.monotonic() > deadline:
                raise AssertionError(f"received spans did not match within {timeout}s: {spans}")
            time.sleep(0.02)
