//! Meerkat's telemetry data model.
//!
//! Every stage (gateway, bus, ingest, storage, query, agents) speaks these types, so each
//! protocol is translated once, at the edge, and nothing downstream needs to know whether a
//! sample came from remote-write, OTLP or a scrape. Metrics follow Prometheus's data model;
//! spans and log records follow OTLP's; platform events are Meerkat's own.

pub mod auth;
pub mod duration;
mod envelope;
mod error;
mod events;
pub mod histogram;
mod labels;
mod metrics;
mod otel;
pub mod remote_write;

pub use envelope::{
    DEFAULT_TENANT, ENVELOPE_FORMAT_VERSION, Envelope, MAX_TENANT_ID_BYTES, Payload,
    RemoteWriteBody, TenantId,
};
pub use error::ModelError;
pub use events::{
    AlertEvent, AlertState, DeployEvent, DeployPhase, EventKind, KubernetesEvent,
    KubernetesEventType, PipelineEvent, PipelinePhase, PlatformEvent,
};
pub use histogram::FloatHistogram;
pub use labels::{
    Label, Labels, METRIC_NAME_LABEL, fingerprint_of, is_valid_label_name, is_valid_metric_name,
};
pub use metrics::{
    BucketSpan, ClassicBucket, ClassicHistogram, Exemplar, HistogramCounts, MetricBatch,
    MetricMetadata, MetricType, NATIVE_HISTOGRAM_SCHEMAS, NativeHistogram, ResetHint,
    STALE_NAN_BITS, Sample, Series, format_api_value, format_go_f, format_prometheus_float,
    is_stale_nan, stale_nan,
};
pub use otel::{
    AnyValue, InstrumentationScope, KeyValue, LogBatch, LogRecord, Resource, ResourceLogs,
    ResourceSpans, ScopeLogs, ScopeSpans, SeverityNumber, Span, SpanBatch, SpanEvent, SpanId,
    SpanKind, SpanLink, SpanStatus, StatusCode, TraceId, attribute,
};
