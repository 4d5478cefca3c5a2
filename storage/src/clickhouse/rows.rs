//! Rows of the ClickHouse tables, and their making from bus payloads.
//!
//! Spans, log records and events become the same columns as the embedded store's row tables
//! (`embedded/rows.rs`): nested OTLP data (attributes of every type, span events and links)
//! as JSON text, lossless for every attribute type (bytes as base64, non-finite floats as
//! strings). Times are Int64 nanoseconds (spans, logs) or milliseconds (events).

use model::{AnyValue, LogBatch, PlatformEvent, SpanBatch, SpanKind, StatusCode};
use serde::{Deserialize, Serialize};

use crate::otel_json::{
    attributes_json, json_value, service_name, span_events_json, span_links_json,
};

use crate::BusPosition;

#[derive(Clone, Debug, clickhouse::Row, Serialize, Deserialize)]
pub(super) struct SeriesRow {
    pub tenant: String,
    pub metric_name: String,
    pub fingerprint: u64,
    pub label_names: Vec<String>,
    pub label_values: Vec<String>,
}

/// A sample in the buffer; the tenant is the buffer's key.
#[derive(Clone, Copy, Debug)]
pub(super) struct BufferedSample {
    pub fingerprint: u64,
    pub timestamp_ms: i64,
    pub value: f64,
    pub version: u64,
}

#[derive(Debug, clickhouse::Row, Serialize)]
pub(super) struct SampleRow<'a> {
    pub tenant: &'a str,
    pub fingerprint: u64,
    pub timestamp_ms: i64,
    pub value: f64,
    pub version: u64,
}

#[derive(Clone, Debug, clickhouse::Row, Serialize, Deserialize)]
pub(super) struct SpanRow {
    pub tenant: String,
    pub trace_id: String,
    pub span_id: String,
    pub parent_span_id: Option<String>,
    pub service_name: String,
    pub name: String,
    pub kind: String,
    pub start_time_ns: i64,
    pub end_time_ns: i64,
    pub duration_ns: i64,
    pub status_code: String,
    pub status_message: String,
    pub attributes: String,
    pub resource_attributes: String,
    pub scope_name: String,
    pub scope_version: String,
    pub events: String,
    pub links: String,
    pub trace_state: String,
    pub flags: u32,
    pub version: u64,
}

#[derive(Clone, Debug, clickhouse::Row, Serialize, Deserialize)]
pub(super) struct LogRow {
    pub tenant: String,
    pub timestamp_ns: i64,
    pub observed_timestamp_ns: i64,
    pub service_name: String,
    pub severity_number: i32,
    pub severity_text: String,
    pub body: String,
    pub attributes: String,
    pub resource_attributes: String,
    pub scope_name: String,
    pub trace_id: Option<String>,
    pub span_id: Option<String>,
    pub event_name: String,
    pub flags: u32,
    pub bus_partition: u32,
    pub bus_offset: u64,
    pub bus_index: u32,
    pub version: u64,
}

#[derive(Clone, Debug, clickhouse::Row, Serialize, Deserialize)]
pub(super) struct EventRow {
    pub tenant: String,
    pub timestamp_ms: i64,
    pub kind: String,
    pub source: String,
    pub details: String,
    pub attributes: String,
    pub bus_partition: u32,
    pub bus_offset: u64,
    pub bus_index: u32,
    pub version: u64,
}

/// A row of `exemplars`: the embedded store's columns (see `embedded/rows.rs`).
#[derive(Clone, Debug, clickhouse::Row, Serialize, Deserialize)]
pub(super) struct ExemplarRow {
    pub tenant: String,
    pub timestamp_ms: i64,
    pub metric_name: String,
    pub series_labels: String,
    pub value: f64,
    pub labels: String,
    pub trace_id: Option<String>,
    pub version: u64,
}

/// The exemplars of a metric batch; `versions` gives each row its version.
pub(super) fn exemplar_rows(
    tenant: &str,
    batch: &model::MetricBatch,
    mut versions: impl FnMut() -> u64,
) -> Vec<ExemplarRow> {
    crate::embedded::exemplars_of(batch)
        .into_iter()
        .map(|row| ExemplarRow {
            tenant: tenant.to_owned(),
            timestamp_ms: row.timestamp_ms,
            metric_name: row.metric_name,
            series_labels: row.series_labels,
            value: row.value,
            labels: row.labels,
            trace_id: row.trace_id,
            version: versions(),
        })
        .collect()
}

/// A row of `histograms`: one native histogram sample (see the table in `schema.rs`).
#[derive(Clone, Debug, clickhouse::Row, Serialize, Deserialize)]
pub(super) struct HistogramRow {
    pub tenant: String,
    pub fingerprint: u64,
    pub timestamp_ms: i64,
    pub schema: i32,
    pub zero_threshold: f64,
    pub zero_count: f64,
    pub count: f64,
    pub sum: f64,
    pub counter_reset: String,
    pub positive_indexes: Vec<i32>,
    pub positive_counts: Vec<f64>,
    pub negative_indexes: Vec<i32>,
    pub negative_counts: Vec<f64>,
    pub version: u64,
}

impl HistogramRow {
    pub fn new(tenant: &str, fingerprint: u64, h: &model::NativeHistogram, version: u64) -> Self {
        let float = model::FloatHistogram::from_native(h);
        let (positive_indexes, positive_counts) = float.positive.iter().copied().unzip();
        let (negative_indexes, negative_counts) = float.negative.iter().copied().unzip();
        Self {
            tenant: tenant.to_owned(),
            fingerprint,
            timestamp_ms: h.timestamp_ms,
            schema: float.schema,
            zero_threshold: float.zero_threshold,
            zero_count: float.zero_count,
            count: float.count,
            sum: float.sum,
            counter_reset: float.counter_reset.name().to_owned(),
            positive_indexes,
            positive_counts,
            negative_indexes,
            negative_counts,
            version,
        }
    }

    /// The sample this row holds; `None` when its bucket arrays do not pair up.
    pub fn sample(self) -> Option<crate::HistogramSample> {
        if self.positive_indexes.len() != self.positive_counts.len()
            || self.negative_indexes.len() != self.negative_counts.len()
        {
            return None;
        }
        Some(crate::HistogramSample {
            timestamp_ms: self.timestamp_ms,
            histogram: model::FloatHistogram {
                counter_reset: model::ResetHint::from_name(&self.counter_reset),
                schema: self.schema,
                zero_threshold: self.zero_threshold,
                zero_count: self.zero_count,
                count: self.count,
                sum: self.sum,
                positive: self
                    .positive_indexes
                    .into_iter()
                    .zip(self.positive_counts)
                    .collect(),
                negative: self
                    .negative_indexes
                    .into_iter()
                    .zip(self.negative_counts)
                    .collect(),
            },
        })
    }
}

/// A row of `metric_metadata`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, clickhouse::Row, Serialize, Deserialize)]
pub(super) struct MetadataRow {
    pub tenant: String,
    pub metric_family_name: String,
    pub metric_type: String,
    pub help: String,
    pub unit: String,
}

#[derive(Clone, Debug, clickhouse::Row, Serialize, Deserialize)]
pub(super) struct OffsetRow {
    pub topic: String,
    pub partition: u32,
    pub next_offset: u64,
}

/// The rows of a span batch; `versions` gives each row its version.
pub(super) fn span_rows(
    tenant: &str,
    batch: SpanBatch,
    mut versions: impl FnMut() -> u64,
) -> Vec<SpanRow> {
    let mut rows = Vec::new();
    for resource_spans in batch.resource_spans {
        let service = service_name(&resource_spans.resource);
        let resource_attributes = attributes_json(&resource_spans.resource.attributes);
        for scope_spans in resource_spans.scope_spans {
            for span in scope_spans.spans {
                let start = i64::try_from(span.start_time_unix_nano).unwrap_or(i64::MAX);
                let end = i64::try_from(span.end_time_unix_nano).unwrap_or(i64::MAX);
                let (events, links) = (span_events_json(&span), span_links_json(&span));
                rows.push(SpanRow {
                    tenant: tenant.to_owned(),
                    trace_id: span.trace_id.to_string(),
                    span_id: span.span_id.to_string(),
                    parent_span_id: span.parent_span_id.map(|p| p.to_string()),
                    service_name: service.clone(),
                    name: span.name,
                    kind: match span.kind {
                        SpanKind::Unspecified => "unspecified",
                        SpanKind::Internal => "internal",
                        SpanKind::Server => "server",
                        SpanKind::Client => "client",
                        SpanKind::Producer => "producer",
                        SpanKind::Consumer => "consumer",
                    }
                    .to_owned(),
                    start_time_ns: start,
                    end_time_ns: end,
                    duration_ns: end.saturating_sub(start),
                    status_code: match span.status.code {
                        StatusCode::Unset => "unset",
                        StatusCode::Ok => "ok",
                        StatusCode::Error => "error",
                    }
                    .to_owned(),
                    status_message: span.status.message,
                    attributes: attributes_json(&span.attributes),
                    resource_attributes: resource_attributes.clone(),
                    scope_name: scope_spans.scope.name.clone(),
                    scope_version: scope_spans.scope.version.clone(),
                    events,
                    links,
                    trace_state: span.trace_state,
                    flags: span.flags,
                    version: versions(),
                });
            }
        }
    }
    rows
}

/// The rows of a log batch, keyed by `position` and their index in the batch.
pub(super) fn log_rows(
    tenant: &str,
    batch: LogBatch,
    position: &BusPosition,
    mut versions: impl FnMut() -> u64,
) -> Vec<LogRow> {
    let mut rows = Vec::new();
    let mut index = 0u32;
    for resource_logs in batch.resource_logs {
        let service = service_name(&resource_logs.resource);
        let resource_attributes = attributes_json(&resource_logs.resource.attributes);
        for scope_logs in resource_logs.scope_logs {
            for record in scope_logs.log_records {
                let observed = i64::try_from(record.observed_time_unix_nano).unwrap_or(i64::MAX);
                // OTLP: a record without a time is placed at its observed time.
                let time = match record.time_unix_nano {
                    0 => observed,
                    t => i64::try_from(t).unwrap_or(i64::MAX),
                };
                let body = match &record.body {
                    AnyValue::String(text) => text.clone(),
                    other => json_value(other).to_string(),
                };
                rows.push(LogRow {
                    tenant: tenant.to_owned(),
                    timestamp_ns: time,
                    observed_timestamp_ns: observed,
                    service_name: service.clone(),
                    severity_number: record.severity_number,
                    severity_text: record.severity_text,
                    body,
                    attributes: attributes_json(&record.attributes),
                    resource_attributes: resource_attributes.clone(),
                    scope_name: scope_logs.scope.name.clone(),
                    trace_id: record.trace_id.map(|t| t.to_string()),
                    span_id: record.span_id.map(|s| s.to_string()),
                    event_name: record.event_name,
                    flags: record.flags,
                    bus_partition: position.partition,
                    bus_offset: position.offset,
                    bus_index: index,
                    version: versions(),
                });
                index += 1;
            }
        }
    }
    rows
}

/// The rows of a batch of platform events, keyed by `position` and their index.
pub(super) fn event_rows(
    tenant: &str,
    events: Vec<PlatformEvent>,
    position: &BusPosition,
    mut versions: impl FnMut() -> u64,
) -> Vec<EventRow> {
    events
        .into_iter()
        .enumerate()
        .map(|(index, event)| EventRow {
            tenant: tenant.to_owned(),
            timestamp_ms: event.timestamp_ms,
            kind: event.kind.name().to_owned(),
            source: event.source.clone(),
            details: serde_json::to_value(&event.kind)
                .map(|v| v.to_string())
                .unwrap_or_default(),
            attributes: attributes_json(&event.attributes),
            bus_partition: position.partition,
            bus_offset: position.offset,
            bus_index: u32::try_from(index).unwrap_or(u32::MAX),
            version: versions(),
        })
        .collect()
}
