//! Spans, log records and platform events as Arrow rows, for the embedded store's row
//! tables (`spans`, `logs`, `events`).
//!
//! Nested OTLP data (attributes of every type, span events and links) is kept as JSON text
//! columns: lossless for every attribute type (bytes as base64, non-finite floats as
//! strings) and queryable with SQL's JSON and string functions.

use std::sync::Arc;

use datafusion::arrow::array::{
    ArrayRef, Float64Array, Int32Array, Int64Array, RecordBatch, StringArray,
    TimestampMillisecondArray, TimestampNanosecondArray, UInt32Array, UInt64Array,
};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use model::{AnyValue, LogBatch, PlatformEvent, SpanBatch, SpanKind, StatusCode};

use crate::otel_json::{
    attributes_json, json_value, service_name, span_events_json, span_links_json,
};

use super::parts::day_of;
use crate::{BusPosition, Result};

/// The row tables.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum RowKind {
    Spans,
    Logs,
    Events,
    Exemplars,
    /// Native histogram samples (see `histograms`).
    Histograms,
}

impl RowKind {
    pub const ALL: [RowKind; 5] = [
        RowKind::Spans,
        RowKind::Logs,
        RowKind::Events,
        RowKind::Exemplars,
        RowKind::Histograms,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Self::Spans => "spans",
            Self::Logs => "logs",
            Self::Events => "events",
            Self::Exemplars => "exemplars",
            Self::Histograms => "histograms",
        }
    }

    pub fn schema(self) -> SchemaRef {
        let utf8 = |name: &str| Field::new(name, DataType::Utf8, false);
        let nullable_utf8 = |name: &str| Field::new(name, DataType::Utf8, true);
        let bus = || {
            vec![
                Field::new("bus_partition", DataType::UInt32, false),
                Field::new("bus_offset", DataType::UInt64, false),
                Field::new("bus_index", DataType::UInt32, false),
            ]
        };
        let ns = DataType::Timestamp(TimeUnit::Nanosecond, Some("UTC".into()));
        let fields = match self {
            Self::Spans => vec![
                utf8("trace_id"),
                utf8("span_id"),
                nullable_utf8("parent_span_id"),
                utf8("service_name"),
                utf8("name"),
                utf8("kind"),
                Field::new("start_time", ns.clone(), false),
                Field::new("end_time", ns, false),
                Field::new("duration_ns", DataType::Int64, false),
                utf8("status_code"),
                utf8("status_message"),
                utf8("attributes"),
                utf8("resource_attributes"),
                utf8("scope_name"),
                utf8("scope_version"),
                utf8("events"),
                utf8("links"),
                utf8("trace_state"),
                Field::new("flags", DataType::UInt32, false),
            ],
            Self::Logs => {
                let mut fields = vec![
                    Field::new("timestamp", ns.clone(), false),
                    Field::new("observed_timestamp", ns, false),
                    utf8("service_name"),
                    Field::new("severity_number", DataType::Int32, false),
                    utf8("severity_text"),
                    utf8("body"),
                    utf8("attributes"),
                    utf8("resource_attributes"),
                    utf8("scope_name"),
                    nullable_utf8("trace_id"),
                    nullable_utf8("span_id"),
                    utf8("event_name"),
                    Field::new("flags", DataType::UInt32, false),
                ];
                fields.extend(bus());
                fields
            }
            Self::Events => {
                let mut fields = vec![
                    Field::new(
                        "timestamp",
                        DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
                        false,
                    ),
                    utf8("kind"),
                    utf8("source"),
                    utf8("details"),
                    utf8("attributes"),
                ];
                fields.extend(bus());
                fields
            }
            // One exemplar per series and timestamp, as Prometheus keeps them.
            Self::Exemplars => vec![
                Field::new(
                    "timestamp",
                    DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
                    false,
                ),
                utf8("metric_name"),
                utf8("series_labels"),
                Field::new("value", DataType::Float64, false),
                utf8("labels"),
                nullable_utf8("trace_id"),
            ],
            Self::Histograms => super::histograms::fields(),
        };
        Arc::new(Schema::new(fields))
    }
}

fn string_column(values: Vec<String>) -> ArrayRef {
    Arc::new(StringArray::from(values))
}

/// Rows of one table for one day.
#[derive(Debug)]
pub(crate) struct DayRows {
    pub day: i64,
    pub batch: RecordBatch,
}

/// Groups rows by day and builds one batch per day.
fn by_day<R>(
    rows: Vec<(i64, R)>,
    build: impl Fn(Vec<R>) -> Result<RecordBatch>,
) -> Result<Vec<DayRows>> {
    let mut days: std::collections::BTreeMap<i64, Vec<R>> = std::collections::BTreeMap::new();
    for (day, row) in rows {
        days.entry(day).or_default().push(row);
    }
    days.into_iter()
        .map(|(day, rows)| {
            Ok(DayRows {
                day,
                batch: build(rows)?,
            })
        })
        .collect()
}

struct SpanRow {
    trace_id: String,
    span_id: String,
    parent_span_id: Option<String>,
    service_name: String,
    name: String,
    kind: &'static str,
    start: i64,
    end: i64,
    status_code: &'static str,
    status_message: String,
    attributes: String,
    resource_attributes: String,
    scope_name: String,
    scope_version: String,
    events: String,
    links: String,
    trace_state: String,
    flags: u32,
}

pub(crate) fn span_rows(batch: SpanBatch) -> Result<Vec<DayRows>> {
    let mut rows = Vec::new();
    for resource_spans in batch.resource_spans {
        let service = service_name(&resource_spans.resource);
        let resource_attributes = attributes_json(&resource_spans.resource.attributes);
        for scope_spans in resource_spans.scope_spans {
            for span in scope_spans.spans {
                let start = i64::try_from(span.start_time_unix_nano).unwrap_or(i64::MAX);
                let end = i64::try_from(span.end_time_unix_nano).unwrap_or(i64::MAX);
                let (events, links) = (span_events_json(&span), span_links_json(&span));
                rows.push((
                    day_of(start / 1_000_000),
                    SpanRow {
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
                        },
                        start,
                        end,
                        status_code: match span.status.code {
                            StatusCode::Unset => "unset",
                            StatusCode::Ok => "ok",
                            StatusCode::Error => "error",
                        },
                        status_message: span.status.message,
                        attributes: attributes_json(&span.attributes),
                        resource_attributes: resource_attributes.clone(),
                        scope_name: scope_spans.scope.name.clone(),
                        scope_version: scope_spans.scope.version.clone(),
                        events,
                        links,
                        trace_state: span.trace_state,
                        flags: span.flags,
                    },
                ));
            }
        }
    }
    by_day(rows, |rows| {
        let columns: Vec<ArrayRef> = vec![
            string_column(rows.iter().map(|r| r.trace_id.clone()).collect()),
            string_column(rows.iter().map(|r| r.span_id.clone()).collect()),
            Arc::new(StringArray::from(
                rows.iter()
                    .map(|r| r.parent_span_id.clone())
                    .collect::<Vec<_>>(),
            )),
            string_column(rows.iter().map(|r| r.service_name.clone()).collect()),
            string_column(rows.iter().map(|r| r.name.clone()).collect()),
            string_column(rows.iter().map(|r| r.kind.to_owned()).collect()),
            Arc::new(
                TimestampNanosecondArray::from(rows.iter().map(|r| r.start).collect::<Vec<_>>())
                    .with_timezone("UTC"),
            ),
            Arc::new(
                TimestampNanosecondArray::from(rows.iter().map(|r| r.end).collect::<Vec<_>>())
                    .with_timezone("UTC"),
            ),
            Arc::new(Int64Array::from(
                rows.iter()
                    .map(|r| r.end.saturating_sub(r.start))
                    .collect::<Vec<_>>(),
            )),
            string_column(rows.iter().map(|r| r.status_code.to_owned()).collect()),
            string_column(rows.iter().map(|r| r.status_message.clone()).collect()),
            string_column(rows.iter().map(|r| r.attributes.clone()).collect()),
            string_column(rows.iter().map(|r| r.resource_attributes.clone()).collect()),
            string_column(rows.iter().map(|r| r.scope_name.clone()).collect()),
            string_column(rows.iter().map(|r| r.scope_version.clone()).collect()),
            string_column(rows.iter().map(|r| r.events.clone()).collect()),
            string_column(rows.iter().map(|r| r.links.clone()).collect()),
            string_column(rows.iter().map(|r| r.trace_state.clone()).collect()),
            Arc::new(UInt32Array::from(
                rows.iter().map(|r| r.flags).collect::<Vec<_>>(),
            )),
        ];
        Ok(RecordBatch::try_new(RowKind::Spans.schema(), columns)?)
    })
}

struct LogRow {
    time: i64,
    observed: i64,
    service_name: String,
    severity_number: i32,
    severity_text: String,
    body: String,
    attributes: String,
    resource_attributes: String,
    scope_name: String,
    trace_id: Option<String>,
    span_id: Option<String>,
    event_name: String,
    flags: u32,
    index: u32,
}

pub(crate) fn log_rows(batch: LogBatch, position: &BusPosition) -> Result<Vec<DayRows>> {
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
                rows.push((
                    day_of(time / 1_000_000),
                    LogRow {
                        time,
                        observed,
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
                        index,
                    },
                ));
                index += 1;
            }
        }
    }
    by_day(rows, |rows| {
        let n = rows.len();
        let columns: Vec<ArrayRef> = vec![
            Arc::new(
                TimestampNanosecondArray::from(rows.iter().map(|r| r.time).collect::<Vec<_>>())
                    .with_timezone("UTC"),
            ),
            Arc::new(
                TimestampNanosecondArray::from(rows.iter().map(|r| r.observed).collect::<Vec<_>>())
                    .with_timezone("UTC"),
            ),
            string_column(rows.iter().map(|r| r.service_name.clone()).collect()),
            Arc::new(Int32Array::from(
                rows.iter().map(|r| r.severity_number).collect::<Vec<_>>(),
            )),
            string_column(rows.iter().map(|r| r.severity_text.clone()).collect()),
            string_column(rows.iter().map(|r| r.body.clone()).collect()),
            string_column(rows.iter().map(|r| r.attributes.clone()).collect()),
            string_column(rows.iter().map(|r| r.resource_attributes.clone()).collect()),
            string_column(rows.iter().map(|r| r.scope_name.clone()).collect()),
            Arc::new(StringArray::from(
                rows.iter().map(|r| r.trace_id.clone()).collect::<Vec<_>>(),
            )),
            Arc::new(StringArray::from(
                rows.iter().map(|r| r.span_id.clone()).collect::<Vec<_>>(),
            )),
            string_column(rows.iter().map(|r| r.event_name.clone()).collect()),
            Arc::new(UInt32Array::from(
                rows.iter().map(|r| r.flags).collect::<Vec<_>>(),
            )),
            Arc::new(UInt32Array::from(vec![position.partition; n])),
            Arc::new(UInt64Array::from(vec![position.offset; n])),
            Arc::new(UInt32Array::from(
                rows.iter().map(|r| r.index).collect::<Vec<_>>(),
            )),
        ];
        Ok(RecordBatch::try_new(RowKind::Logs.schema(), columns)?)
    })
}

pub(crate) fn event_rows(
    events: Vec<PlatformEvent>,
    position: &BusPosition,
) -> Result<Vec<DayRows>> {
    let rows: Vec<(i64, (u32, PlatformEvent))> = events
        .into_iter()
        .enumerate()
        .map(|(i, e)| (day_of(e.timestamp_ms), (i as u32, e)))
        .collect();
    by_day(rows, |rows| {
        let n = rows.len();
        let details: Vec<String> = rows
            .iter()
            .map(|(_, e)| {
                serde_json::to_value(&e.kind)
                    .map(|v| v.to_string())
                    .unwrap_or_default()
            })
            .collect();
        let columns: Vec<ArrayRef> = vec![
            Arc::new(
                TimestampMillisecondArray::from(
                    rows.iter().map(|(_, e)| e.timestamp_ms).collect::<Vec<_>>(),
                )
                .with_timezone("UTC"),
            ),
            string_column(rows.iter().map(|(_, e)| e.kind.name().to_owned()).collect()),
            string_column(rows.iter().map(|(_, e)| e.source.clone()).collect()),
            string_column(details),
            string_column(
                rows.iter()
                    .map(|(_, e)| attributes_json(&e.attributes))
                    .collect(),
            ),
            Arc::new(UInt32Array::from(vec![position.partition; n])),
            Arc::new(UInt64Array::from(vec![position.offset; n])),
            Arc::new(UInt32Array::from(
                rows.iter().map(|(i, _)| *i).collect::<Vec<_>>(),
            )),
        ];
        Ok(RecordBatch::try_new(RowKind::Events.schema(), columns)?)
    })
}

/// The exemplars of a metric batch as rows, in both engines' columns.
pub(crate) fn exemplars_of(batch: &model::MetricBatch) -> Vec<ExemplarRow> {
    let mut rows = Vec::with_capacity(batch.exemplar_count());
    for series in batch.series.iter().filter(|s| !s.exemplars.is_empty()) {
        let series_labels = crate::otel_json::labels_json(&series.labels);
        let metric_name = series.labels.metric_name().unwrap_or_default();
        for e in &series.exemplars {
            rows.push(ExemplarRow {
                timestamp_ms: e.timestamp_ms,
                metric_name: metric_name.to_owned(),
                series_labels: series_labels.clone(),
                value: e.value,
                labels: crate::otel_json::labels_json(&e.labels),
                trace_id: exemplar_trace_id(&e.labels),
            });
        }
    }
    rows
}

/// The exemplars of a metric batch, one row each, by day.
pub(crate) fn exemplar_rows(batch: &model::MetricBatch) -> Result<Vec<DayRows>> {
    let rows: Vec<(i64, ExemplarRow)> = exemplars_of(batch)
        .into_iter()
        .map(|row| (day_of(row.timestamp_ms), row))
        .collect();
    by_day(rows, |rows| {
        let columns: Vec<ArrayRef> = vec![
            Arc::new(
                TimestampMillisecondArray::from(
                    rows.iter().map(|r| r.timestamp_ms).collect::<Vec<_>>(),
                )
                .with_timezone("UTC"),
            ),
            string_column(rows.iter().map(|r| r.metric_name.clone()).collect()),
            string_column(rows.iter().map(|r| r.series_labels.clone()).collect()),
            Arc::new(Float64Array::from(
                rows.iter().map(|r| r.value).collect::<Vec<_>>(),
            )),
            string_column(rows.iter().map(|r| r.labels.clone()).collect()),
            Arc::new(StringArray::from(
                rows.iter().map(|r| r.trace_id.clone()).collect::<Vec<_>>(),
            )),
        ];
        Ok(RecordBatch::try_new(RowKind::Exemplars.schema(), columns)?)
    })
}

/// An exemplar as both engines store it.
#[derive(Clone, Debug)]
pub(crate) struct ExemplarRow {
    pub timestamp_ms: i64,
    pub metric_name: String,
    pub series_labels: String,
    pub value: f64,
    pub labels: String,
    pub trace_id: Option<String>,
}

/// The trace an exemplar points at: OpenTelemetry's `trace_id`, or `traceID` as some
/// Prometheus client libraries name it.
pub(crate) fn exemplar_trace_id(labels: &model::Labels) -> Option<String> {
    labels
        .get("trace_id")
        .or_else(|| labels.get("traceID"))
        .map(str::to_owned)
}

/// Concatenates a table's batches and keeps, for each row key, only the last row written
/// (spans by trace and span id; log records and events by their bus position; histogram
/// samples by series and time, and those sorted by them), so that a record delivered twice
/// is stored once.
pub(crate) fn dedup(kind: RowKind, batches: &[RecordBatch]) -> Result<RecordBatch> {
    use datafusion::arrow::array::{Array, UInt32Array as U32, UInt64Array as U64, UInt64Builder};
    use datafusion::arrow::compute::{concat_batches, take_record_batch};
    let schema = kind.schema();
    let batch = concat_batches(&schema, batches)?;
    let rows = batch.num_rows();
    let key = |row: usize| -> String {
        match kind {
            RowKind::Spans => {
                let column = |i: usize| {
                    batch
                        .column(i)
                        .as_any()
                        .downcast_ref::<StringArray>()
                        .map(|a| a.value(row).to_owned())
                };
                format!(
                    "{}/{}",
                    column(0).unwrap_or_default(),
                    column(1).unwrap_or_default()
                )
            }
            RowKind::Exemplars => {
                let text = |i: usize| {
                    batch
                        .column(i)
                        .as_any()
                        .downcast_ref::<StringArray>()
                        .map(|a| a.value(row).to_owned())
                };
                let time = batch
                    .column(0)
                    .as_any()
                    .downcast_ref::<TimestampMillisecondArray>()
                    .map(|a| a.value(row));
                format!("{}/{time:?}", text(2).unwrap_or_default())
            }
            RowKind::Histograms => format!("{:?}", super::histograms::key(&batch, row)),
            RowKind::Logs | RowKind::Events => {
                let n = batch.num_columns();
                let partition = batch
                    .column(n - 3)
                    .as_any()
                    .downcast_ref::<U32>()
                    .map(|a| a.value(row));
                let offset = batch
                    .column(n - 2)
                    .as_any()
                    .downcast_ref::<U64>()
                    .map(|a| a.value(row));
                let index = batch
                    .column(n - 1)
                    .as_any()
                    .downcast_ref::<U32>()
                    .map(|a| a.value(row));
                format!("{partition:?}/{offset:?}/{index:?}")
            }
        }
    };
    let mut seen = std::collections::HashSet::with_capacity(rows);
    let mut keep = Vec::with_capacity(rows);
    for row in (0..rows).rev() {
        if seen.insert(key(row)) {
            keep.push(row as u64);
        }
    }
    let batch = if keep.len() == rows {
        batch
    } else {
        keep.reverse();
        let mut indices = UInt64Builder::with_capacity(keep.len());
        indices.append_slice(&keep);
        take_record_batch(&batch, &indices.finish())?
    };
    match kind {
        RowKind::Histograms => super::histograms::sorted(batch),
        _ => Ok(batch),
    }
}
