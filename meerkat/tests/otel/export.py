"""Exports traces, metrics and logs with the real OpenTelemetry Python SDK.

Usage: export.py grpc|http ENDPOINT TENANT
Prints one line per signal, "exported <signal> <result>", and exits non-zero if any export
failed. What it sends is fixed, so the Rust test knows what to look for on the bus.
"""
import logging
import sys

from opentelemetry import metrics, trace
from opentelemetry._logs import set_logger_provider
from opentelemetry.sdk._logs import LoggerProvider, LoggingHandler
from opentelemetry.sdk._logs import export as logs_export
from opentelemetry.sdk._logs.export import SimpleLogRecordProcessor

# The SDK renamed these while logs are unstable; take whichever this version has.
InMemoryLogExporter = getattr(logs_export, "InMemoryLogRecordExporter", None) or logs_export.InMemoryLogExporter
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.view import ExponentialBucketHistogramAggregation, View
from opentelemetry.sdk.metrics.export import InMemoryMetricReader, MetricExportResult
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

transport, endpoint, tenant = sys.argv[1], sys.argv[2], sys.argv[3]
headers = {"x-scope-orgid": tenant}

if transport == "grpc":
    from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter
    from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    from grpc import Compression

    kwargs = dict(endpoint=endpoint, insecure=True, headers=headers, compression=Compression.Gzip)
    span_exporter = OTLPSpanExporter(**kwargs)
    metric_exporter = OTLPMetricExporter(**kwargs)
    log_exporter = OTLPLogExporter(**kwargs)
else:
    from opentelemetry.exporter.otlp.proto.http import Compression
    from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    span_exporter = OTLPSpanExporter(endpoint=f"{endpoint}/v1/traces", headers=headers, compression=Compression.Gzip)
    metric_exporter = OTLPMetricExporter(endpoint=f"{endpoint}/v1/metrics", headers=headers)
    log_exporter = OTLPLogExporter(endpoint=f"{endpoint}/v1/logs", headers=headers)

resource = Resource.create(
    {
        "service.name": "checkout",
        "service.namespace": "shop",
        "service.instance.id": f"checkout-{transport}",
        "deployment.environment": "test",
    }
)

failures = 0

# Traces: a server span with a child, attributes of every type, an event and an error.
# Spans are collected in memory and exported in one call, so the result can be checked.
finished = InMemorySpanExporter()
provider = TracerProvider(resource=resource)
provider.add_span_processor(SimpleSpanProcessor(finished))
tracer = provider.get_tracer("meerkat.test", "1.0")
with tracer.start_as_current_span("POST /checkout", kind=trace.SpanKind.SERVER) as parent:
    parent.set_attribute("http.request.method", "POST")
    parent.set_attribute("http.response.status_code", 500)
    parent.set_attribute("retry", True)
    parent.set_attribute("ratio", 0.25)
    parent.set_attribute("items", ["book", "pen"])
    with tracer.start_as_current_span("charge card", kind=trace.SpanKind.CLIENT) as child:
        child.add_event("card declined", {"attempt": 2})
        child.set_status(trace.Status(trace.StatusCode.ERROR, "declined"))
    trace_id = format(parent.get_span_context().trace_id, "032x")
spans = finished.get_finished_spans()
result = span_exporter.export(spans)
ok = result == SpanExportResult.SUCCESS and len(spans) == 2
failures += not ok
print(f"exported traces {'ok' if ok else result} {trace_id}")

# Metrics: a counter, an up-down counter, a gauge, a histogram and an exponential histogram
# (a native histogram in Prometheus's terms), cumulative temporality.
reader = InMemoryMetricReader()
exponential = View(instrument_name="rpc.duration", aggregation=ExponentialBucketHistogramAggregation())
meter_provider = MeterProvider(resource=resource, metric_readers=[reader], views=[exponential])
meter = meter_provider.get_meter("meerkat.test", "1.0")
orders = meter.create_counter("orders.processed", unit="{order}", description="Orders processed.")
orders.add(3, {"payment.method": "card"})
orders.add(2, {"payment.method": "cash"})
queue = meter.create_up_down_counter("queue.depth", unit="{item}")
queue.add(7)
meter.create_observable_gauge(
    "cpu.utilization", callbacks=[lambda options: [metrics.Observation(0.5, {"cpu": "0"})]], unit="1"
)
latency = meter.create_histogram("http.server.request.duration", unit="s", description="Request latency.")
for value in (0.004, 0.02, 0.3, 1.5):
    latency.record(value, {"http.route": "/checkout"})
rpc = meter.create_histogram("rpc.duration", unit="s", description="RPC latency.")
for value in (0.001, 0.002, 0.004, 0.25, 3.0):
    rpc.record(value, {"rpc.method": "Pay"})
data = reader.get_metrics_data()
result = metric_exporter.export(data)
ok = result == MetricExportResult.SUCCESS
failures += not ok
print(f"exported metrics {'ok' if ok else result}")

# Logs: through the standard logging module, inside a span so they carry trace context.
logger_provider = LoggerProvider(resource=resource)
finished_logs = InMemoryLogExporter()
logger_provider.add_log_record_processor(SimpleLogRecordProcessor(finished_logs))
set_logger_provider(logger_provider)
log = logging.getLogger("checkout")
log.propagate = False
log.addHandler(LoggingHandler(level=logging.INFO, logger_provider=logger_provider))
log.setLevel(logging.INFO)
with tracer.start_as_current_span("log scope"):
    log.warning("payment declined for order %s", "A-17", extra={"order.id": "A-17"})
records = finished_logs.get_finished_logs()
result = log_exporter.export(records)
ok = len(records) == 1 and getattr(result, "name", "") == "SUCCESS"
failures += not ok
print(f"exported logs {'ok' if ok else result}")

span_exporter.shutdown()
metric_exporter.shutdown()
log_exporter.shutdown()
sys.exit(1 if failures else 0)
