//! Spans and log records, shaped like OTLP so that every field an OpenTelemetry SDK sends
//! survives the trip through Meerkat (attributes of every type, events, links, scopes,
//! resources, dropped counts).

use std::fmt;

use serde::{Deserialize, Serialize};

/// An attribute value: OTLP's `AnyValue`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub enum AnyValue {
    #[default]
    Empty,
    String(String),
    Bool(bool),
    Int(i64),
    Double(f64),
    Bytes(#[serde(with = "serde_bytes")] Vec<u8>),
    Array(Vec<AnyValue>),
    KeyValueList(Vec<KeyValue>),
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct KeyValue {
    pub key: String,
    pub value: AnyValue,
}

impl KeyValue {
    pub fn new(key: impl Into<String>, value: AnyValue) -> Self {
        Self {
            key: key.into(),
            value,
        }
    }

    pub fn string(key: impl Into<String>, value: impl Into<String>) -> Self {
        Self::new(key, AnyValue::String(value.into()))
    }
}

/// Finds an attribute by key (attribute lists are small; a linear scan is fastest).
pub fn attribute<'a>(attributes: &'a [KeyValue], key: &str) -> Option<&'a AnyValue> {
    attributes
        .iter()
        .find(|kv| kv.key == key)
        .map(|kv| &kv.value)
}

/// The entity that produced telemetry (service, host, pod…).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Resource {
    pub attributes: Vec<KeyValue>,
    pub dropped_attributes_count: u32,
}

/// The instrumentation library that produced telemetry.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct InstrumentationScope {
    pub name: String,
    pub version: String,
    pub attributes: Vec<KeyValue>,
    pub dropped_attributes_count: u32,
}

/// A 16-byte trace id; displayed as 32 lowercase hex digits, as every tracing UI shows it.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
pub struct TraceId(pub [u8; 16]);

/// An 8-byte span id; displayed as 16 lowercase hex digits.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
pub struct SpanId(pub [u8; 8]);

fn write_hex(f: &mut fmt::Formatter<'_>, bytes: &[u8]) -> fmt::Result {
    bytes.iter().try_for_each(|b| write!(f, "{b:02x}"))
}

impl fmt::Display for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_hex(f, &self.0)
    }
}

impl fmt::Display for SpanId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_hex(f, &self.0)
    }
}

impl TraceId {
    /// OTLP treats an all-zero id as "no trace".
    pub fn is_valid(&self) -> bool {
        self.0 != [0; 16]
    }
}

impl SpanId {
    pub fn is_valid(&self) -> bool {
        self.0 != [0; 8]
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum SpanKind {
    #[default]
    Unspecified,
    Internal,
    Server,
    Client,
    Producer,
    Consumer,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum StatusCode {
    #[default]
    Unset,
    Ok,
    Error,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpanStatus {
    pub code: StatusCode,
    pub message: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SpanEvent {
    pub time_unix_nano: u64,
    pub name: String,
    pub attributes: Vec<KeyValue>,
    pub dropped_attributes_count: u32,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SpanLink {
    pub trace_id: TraceId,
    pub span_id: SpanId,
    pub trace_state: String,
    pub attributes: Vec<KeyValue>,
    pub dropped_attributes_count: u32,
    pub flags: u32,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Span {
    pub trace_id: TraceId,
    pub span_id: SpanId,
    pub trace_state: String,
    /// `None` for a root span.
    pub parent_span_id: Option<SpanId>,
    pub flags: u32,
    pub name: String,
    pub kind: SpanKind,
    pub start_time_unix_nano: u64,
    pub end_time_unix_nano: u64,
    pub attributes: Vec<KeyValue>,
    pub dropped_attributes_count: u32,
    pub events: Vec<SpanEvent>,
    pub dropped_events_count: u32,
    pub links: Vec<SpanLink>,
    pub dropped_links_count: u32,
    pub status: SpanStatus,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ScopeSpans {
    pub scope: InstrumentationScope,
    pub schema_url: String,
    pub spans: Vec<Span>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ResourceSpans {
    pub resource: Resource,
    pub schema_url: String,
    pub scope_spans: Vec<ScopeSpans>,
}

/// Spans grouped by resource and scope, as OTLP sends them: the grouping avoids repeating
/// resource attributes on every span.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SpanBatch {
    pub resource_spans: Vec<ResourceSpans>,
}

impl SpanBatch {
    pub fn span_count(&self) -> usize {
        self.resource_spans
            .iter()
            .flat_map(|r| &r.scope_spans)
            .map(|s| s.spans.len())
            .sum()
    }
}

/// OTLP's severity numbers (1–24, in four steps per level); 0 is unspecified.
pub type SeverityNumber = i32;

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LogRecord {
    pub time_unix_nano: u64,
    pub observed_time_unix_nano: u64,
    pub severity_number: SeverityNumber,
    pub severity_text: String,
    pub body: AnyValue,
    pub attributes: Vec<KeyValue>,
    pub dropped_attributes_count: u32,
    pub flags: u32,
    pub trace_id: Option<TraceId>,
    pub span_id: Option<SpanId>,
    pub event_name: String,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ScopeLogs {
    pub scope: InstrumentationScope,
    pub schema_url: String,
    pub log_records: Vec<LogRecord>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ResourceLogs {
    pub resource: Resource,
    pub schema_url: String,
    pub scope_logs: Vec<ScopeLogs>,
}

/// Log records grouped by resource and scope, as OTLP sends them.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LogBatch {
    pub resource_logs: Vec<ResourceLogs>,
}

impl LogBatch {
    pub fn record_count(&self) -> usize {
        self.resource_logs
            .iter()
            .flat_map(|r| &r.scope_logs)
            .map(|s| s.log_records.len())
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_display_as_lowercase_hex_and_zero_is_invalid() {
        let trace = TraceId([
            0x4b, 0xf9, 0x2f, 0x35, 0x77, 0xb3, 0x4d, 0xa6, 0xa3, 0xce, 0x92, 0x9d, 0x0e, 0x0e,
            0x47, 0x36,
        ]);
        assert_eq!(trace.to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert!(trace.is_valid());
        assert!(!TraceId::default().is_valid());
        let span = SpanId([0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7]);
        assert_eq!(span.to_string(), "00f067aa0ba902b7");
        assert!(!SpanId::default().is_valid());
    }

    #[test]
    fn attribute_lookup_finds_by_key() {
        let attributes = vec![
            KeyValue::string("service.name", "checkout"),
            KeyValue::new("http.status_code", AnyValue::Int(503)),
        ];
        assert_eq!(
            attribute(&attributes, "http.status_code"),
            Some(&AnyValue::Int(503))
        );
        assert_eq!(attribute(&attributes, "missing"), None);
    }
}
