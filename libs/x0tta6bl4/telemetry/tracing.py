"""OpenTelemetry setup and W3C trace-context propagation.

Spans go to an OTLP endpoint when one is configured. By default they are kept
locally, one JSON line per span in ``<data_dir>/spans/<service>-<pid>.jsonl``,
so ``meshctl trace <cycle-id>`` can print a cycle as a tree without a collector.
"""
from __future__ import annotations

import json
import os
import pathlib
import threading
from collections.abc import Mapping, MutableMapping, Sequence

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.propagate import extract, inject
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

CYCLE_ATTR = "x0.cycle_id"


class JsonlSpanExporter(SpanExporter):
    """Append finished spans as JSON lines to one file per process."""

    def __init__(self, path: pathlib.Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self._path = path
        self._lock = threading.Lock()
        self._fh = open(path, "a", buffering=1, encoding="utf-8")  # noqa: SIM115 - closed in shutdown()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        lines = []
        for s in spans:
            ctx = s.get_span_context()
            assert ctx is not None, "an ended SDK span has a context"
            lines.append(json.dumps({
                "trace_id": f"{ctx.trace_id:032x}",
                "span_id": f"{ctx.span_id:016x}",
                "parent_id": f"{s.parent.span_id:016x}" if s.parent else None,
                "name": s.name,
                "service": s.resource.attributes.get("service.name"),
                "start_ns": s.start_time,
                "end_ns": s.end_time,
                "status": s.status.status_code.name,
                "attributes": {k: v if isinstance(v, (str, int, float, bool)) else str(v)
                               for k, v in (s.attributes or {}).items()},
            }))
        with self._lock:
            if self._fh.closed:
                return SpanExportResult.FAILURE
            self._fh.write("\n".join(lines) + "\n")
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        with self._lock:
            self._fh.close()


_provider: TracerProvider | None = None


def setup_tracing(service: str, data_dir: pathlib.Path | None, otlp_endpoint: str | None = None) -> TracerProvider:
    """Install a tracer provider for this process (idempotent)."""
    global _provider
    if _provider is not None:
        return _provider
    provider = TracerProvider(resource=Resource.create({"service.name": service,
                                                        "service.instance.id": str(os.getpid())}))
    if data_dir is not None:
        exporter = JsonlSpanExporter(pathlib.Path(data_dir) / "spans" / f"{service}-{os.getpid()}.jsonl")
        provider.add_span_processor(BatchSpanProcessor(exporter, schedule_delay_millis=200))
    if otlp_endpoint:
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=otlp_endpoint, insecure=True)))
    trace.set_tracer_provider(provider)
    _provider = provider
    return provider


def shutdown_tracing() -> None:
    global _provider
    if _provider is not None:
        _provider.shutdown()
        _provider = None


def tracer(name: str = "x0tta6bl4") -> trace.Tracer:
    return trace.get_tracer(name)


def inject_headers(headers: MutableMapping[str, str] | None = None) -> dict[str, str]:
    """Current trace context as W3C headers (traceparent, tracestate)."""
    out: dict[str, str] = dict(headers or {})
    inject(out)
    return out


def extract_context(headers: Mapping[str, str] | None) -> otel_context.Context:
    return extract(dict(headers or {}))


def current_trace_id() -> str:
    ctx = trace.get_current_span().get_span_context()
    return f"{ctx.trace_id:032x}" if ctx.is_valid else ""


# ---- reading local spans ------------------------------------------------------

def load_spans(data_dir: pathlib.Path) -> list[dict]:
    spans = []
    for f in sorted((pathlib.Path(data_dir) / "spans").glob("*.jsonl")):
        for line in f.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                spans.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a line cut by a crash
    return spans


def spans_for(spans: list[dict], key: str) -> list[dict]:
    """Spans of the trace identified by a cycle id or a trace id."""
    trace_ids = {s["trace_id"] for s in spans
                 if s["trace_id"] == key or s["attributes"].get(CYCLE_ATTR) == key}
    return sorted((s for s in spans if s["trace_id"] in trace_ids), key=lambda s: s["start_ns"])
