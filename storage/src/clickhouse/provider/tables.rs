//! The SQL tables of a session and where each of their columns lives in ClickHouse.
//!
//! The Arrow schemas are the embedded store's (`spans`, `logs`, `events` take theirs from
//! it, so the two cannot drift apart), with one documented difference: `series_id` is the
//! series' fingerprint, a `UInt64`, where the embedded store numbers series with a `UInt32`
//! of its own. Both are opaque keys that join `samples` to `series`; SQL that uses them
//! only for that (`JOIN series USING (series_id)`) reads the same on both engines.

use std::sync::Arc;

use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};

use crate::embedded::RowKind;
use crate::{Result, StorageError};

/// How a column travels in `RowBinary`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Wire {
    Int32,
    UInt32,
    Int64,
    UInt64,
    Float64,
    String,
    NullableString,
    /// `label_names, label_values`: two `Array(String)`, turned into the JSON object the
    /// embedded store shows (18.16 cannot write JSON itself).
    Labels,
    /// `Array(Int32)`, a list of Int32.
    Int32List,
    /// `Array(Float64)`, a list of Float64.
    Float64List,
}

/// How versions of one record not yet merged by `ReplacingMergeTree` are collapsed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Dedup {
    /// `FROM t FINAL`: ClickHouse collapses before `WHERE` applies (18.16 does not move a
    /// `WHERE` of a `FINAL` query to `PREWHERE`; checked), so any column may be filtered.
    Final,
    /// Read sorted by (series, timestamp, version) and keep the last of each (series,
    /// timestamp) in the store, as `select` does (measured faster than `FINAL`, see the
    /// module doc of `clickhouse`). Only key columns may be filtered in ClickHouse: they
    /// keep or drop all versions of a sample together, where a filter on `value` could
    /// drop the latest version and let an older one through.
    LatestSample,
}

/// One column: its ClickHouse source and whether filters on it may go to ClickHouse.
#[derive(Clone, Debug)]
pub(super) struct Column {
    /// The ClickHouse expression(s) selected for it.
    pub source: String,
    pub wire: Wire,
    pub filterable: bool,
}

/// A table as a session sees it.
#[derive(Clone, Debug)]
pub(crate) struct TableDef {
    pub name: &'static str,
    pub schema: SchemaRef,
    /// Parallel to the schema's fields.
    pub(super) columns: Vec<Column>,
    pub(super) dedup: Dedup,
}

impl TableDef {
    /// The column named `name`, with its Arrow field.
    pub(super) fn column(&self, name: &str) -> Option<(&Field, &Column)> {
        let index = self.schema.index_of(name).ok()?;
        Some((self.schema.field(index), self.columns.get(index)?))
    }
}

/// Every table of a session.
pub(crate) fn all() -> Result<Vec<TableDef>> {
    let mut tables = vec![samples(), series()];
    for kind in RowKind::ALL {
        tables.push(match kind {
            RowKind::Histograms => histograms(),
            _ => row_table(kind)?,
        });
    }
    Ok(tables)
}

/// `histograms`: the embedded store's columns, with the fingerprint as `series_id` (as in
/// `samples`). The bucket arrays are not filtered in ClickHouse.
fn histograms() -> TableDef {
    let schema = RowKind::Histograms.schema();
    let columns = schema
        .fields()
        .iter()
        .map(|field| match (field.name().as_str(), field.data_type()) {
            ("series_id", _) => column("fingerprint", Wire::UInt64, true),
            (name, DataType::List(item)) if item.data_type() == &DataType::Int32 => {
                column(name, Wire::Int32List, false)
            }
            (name, DataType::List(_)) => column(name, Wire::Float64List, false),
            (name, DataType::Int32) => column(name, Wire::Int32, true),
            (name, DataType::Int64) => column(name, Wire::Int64, true),
            (name, DataType::Float64) => column(name, Wire::Float64, true),
            (name, _) => column(name, Wire::String, true),
        })
        .collect();
    let fields: Vec<Field> = schema
        .fields()
        .iter()
        .map(|field| match field.name().as_str() {
            "series_id" => Field::new("series_id", DataType::UInt64, false),
            _ => field.as_ref().clone(),
        })
        .collect();
    TableDef {
        name: "histograms",
        schema: Arc::new(Schema::new(fields)),
        columns,
        dedup: Dedup::Final,
    }
}

fn samples() -> TableDef {
    TableDef {
        name: "samples",
        schema: Arc::new(Schema::new(vec![
            Field::new("series_id", DataType::UInt64, false),
            Field::new("timestamp_ms", DataType::Int64, false),
            Field::new("value", DataType::Float64, false),
        ])),
        columns: vec![
            column("fingerprint", Wire::UInt64, true),
            column("timestamp_ms", Wire::Int64, true),
            column("value", Wire::Float64, false),
        ],
        dedup: Dedup::LatestSample,
    }
}

fn series() -> TableDef {
    TableDef {
        name: "series",
        schema: Arc::new(Schema::new(vec![
            Field::new("series_id", DataType::UInt64, false),
            Field::new("metric_name", DataType::Utf8, false),
            Field::new("labels", DataType::Utf8, false),
        ])),
        columns: vec![
            column("fingerprint", Wire::UInt64, true),
            column("metric_name", Wire::String, true),
            // JSON made in the store: ClickHouse has no such column to filter.
            column("label_names, label_values", Wire::Labels, false),
        ],
        // Duplicates of a series row are identical; FINAL shows each once.
        dedup: Dedup::Final,
    }
}

/// `spans`, `logs` or `events`: the embedded store's schema over the ClickHouse columns of
/// the same names, times being `Int64` columns with their unit in the name.
fn row_table(kind: RowKind) -> Result<TableDef> {
    let schema = kind.schema();
    let columns = schema
        .fields()
        .iter()
        .map(|field| {
            let source = match (kind, field.name().as_str()) {
                (RowKind::Spans, "start_time") => "start_time_ns",
                (RowKind::Spans, "end_time") => "end_time_ns",
                (RowKind::Logs, "timestamp") => "timestamp_ns",
                (RowKind::Logs, "observed_timestamp") => "observed_timestamp_ns",
                (RowKind::Events | RowKind::Exemplars, "timestamp") => "timestamp_ms",
                (_, name) => name,
            };
            Ok(column(source, wire_of(kind, field)?, true))
        })
        .collect::<Result<_>>()?;
    Ok(TableDef {
        name: kind.name(),
        schema,
        columns,
        dedup: Dedup::Final,
    })
}

fn column(source: &str, wire: Wire, filterable: bool) -> Column {
    Column {
        source: source.to_owned(),
        wire,
        filterable,
    }
}

/// The wire type of a row table's column, from its Arrow type (the ClickHouse schema in
/// `schema.rs` uses the matching types).
fn wire_of(kind: RowKind, field: &Field) -> Result<Wire> {
    Ok(match field.data_type() {
        DataType::Int32 => Wire::Int32,
        DataType::UInt32 => Wire::UInt32,
        DataType::UInt64 => Wire::UInt64,
        DataType::Int64 | DataType::Timestamp(_, _) => Wire::Int64,
        DataType::Float64 => Wire::Float64,
        DataType::Utf8 if field.is_nullable() => Wire::NullableString,
        DataType::Utf8 => Wire::String,
        other => {
            return Err(StorageError::Query(format!(
                "column {} of {} has type {other}, which the ClickHouse tables do not map",
                field.name(),
                kind.name()
            )));
        }
    })
}
