//! Parquet files of the embedded store: sample parts and series catalogs.
//!
//! A sample part holds the samples of one tenant and one day, sorted by series then time,
//! so row-group statistics prune by both. Timestamps and series ids are delta-encoded and
//! everything is zstd-compressed.
//!
//! Values are stored the way they are usually born: most scraped values are integers
//! (counts, bytes) or short decimals (CPU seconds at 10 ms), whose float64 bits look random
//! to a compressor but whose decimal mantissas move by small steps. So each series' run in
//! a part picks the smallest decimal scale at which its values survive
//! `mantissa / 10^scale` bit for bit and stores them as delta-encoded integer mantissas
//! (`value_int`, `value_scale`); values no scale holds (NaN, staleness markers, -0,
//! binary fractions) are float rows: float64 in `value`, scale [`FLOAT_SCALE`]. Reading computes
//! `mantissa / 10^scale`, the same operation the writer checked, so every value comes back
//! with its exact bits. Every column is non-null (the unused one of a row holds zero, which
//! costs next to nothing in a run), so SQL's `value` stays non-null.

use std::fs::{self, File};
use std::path::Path;
use std::sync::Arc;

use datafusion::arrow::array::AsArray;
use datafusion::arrow::array::{
    Array, BinaryArray, Float64Array, Float64Builder, Int64Array, Int64Builder, RecordBatch,
    UInt8Array, UInt8Builder, UInt32Array,
};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::arrow::datatypes::{Int64Type, UInt32Type};
use datafusion::arrow::error::ArrowError;
use datafusion::parquet::arrow::ArrowWriter;
use datafusion::parquet::arrow::ProjectionMask;
use datafusion::parquet::arrow::arrow_reader::{
    ArrowPredicateFn, ArrowReaderOptions, ParquetRecordBatchReaderBuilder, RowFilter, RowSelection,
    RowSelector,
};
use datafusion::parquet::basic::{Compression, Encoding, ZstdLevel};
use datafusion::parquet::file::metadata::PageIndexPolicy;
use datafusion::parquet::file::metadata::ParquetMetaData;
use datafusion::parquet::file::page_index::column_index::ColumnIndexMetaData;
use datafusion::parquet::file::properties::{EnabledStatistics, WriterProperties};
use datafusion::parquet::file::statistics::Statistics;
use datafusion::parquet::schema::types::ColumnPath;
use model::{Labels, Sample};
use roaring::RoaringBitmap;
use serde::{Deserialize, Serialize};

use crate::{Result, StorageError};

/// What the manifest records about a sample part.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct PartMeta {
    /// Path relative to the tenant's directory.
    pub file: String,
    /// Days since the Unix epoch of every sample in the part.
    pub day: i64,
    pub min_ts: i64,
    pub max_ts: i64,
    pub rows: u64,
    pub bytes: u64,
}

pub(crate) const DAY_MS: i64 = 86_400_000;

pub(crate) fn day_of(timestamp_ms: i64) -> i64 {
    timestamp_ms.div_euclid(DAY_MS)
}

/// Samples as queries see them: one float64 value per row.
pub(crate) fn samples_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("series_id", DataType::UInt32, false),
        Field::new("timestamp_ms", DataType::Int64, false),
        Field::new("value", DataType::Float64, false),
    ]))
}

/// Samples as a part stores them. Parts written before integer mantissas (store manifest
/// version 1) have only the first three columns; opening the store rewrites them.
pub(crate) fn sample_part_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("series_id", DataType::UInt32, false),
        Field::new("timestamp_ms", DataType::Int64, false),
        Field::new("value", DataType::Float64, false),
        Field::new("value_int", DataType::Int64, false),
        Field::new("value_scale", DataType::UInt8, false),
    ]))
}

/// The `value_scale` of a row whose value is in the float64 column.
const FLOAT_SCALE: u8 = u8::MAX;

/// Largest decimal scale whose values are stored as integer mantissas.
const MAX_SCALE: u8 = 12;

/// `10^scale` for every scale up to [`MAX_SCALE`]: all exact in float64.
const POWERS_OF_TEN: [f64; MAX_SCALE as usize + 1] = [
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12,
];

/// The value a stored mantissa stands for.
fn from_mantissa(mantissa: i64, scale: u8) -> f64 {
    mantissa as f64 / POWERS_OF_TEN[usize::from(scale.min(MAX_SCALE))]
}

/// The mantissa of `value` at `scale`, if it gives `value` back bit for bit.
fn mantissa(value: f64, scale: u8) -> Option<i64> {
    let scaled = (value * POWERS_OF_TEN[usize::from(scale)]).round();
    // Within i64 with room to spare; NaN and the infinities fail here.
    if scaled.is_nan() || scaled.abs() >= 9.0e18 {
        return None;
    }
    let mantissa = scaled as i64;
    (from_mantissa(mantissa, scale).to_bits() == value.to_bits()).then_some(mantissa)
}

/// The SQL expression turning a part's columns back into the value (what
/// [`from_mantissa`] computes, with the same float64 operations).
pub(crate) fn value_sql() -> String {
    let scales: String = POWERS_OF_TEN
        .iter()
        .enumerate()
        .map(|(scale, power)| {
            format!(" WHEN {scale} THEN CAST(value_int AS DOUBLE) / CAST({power:.1} AS DOUBLE)")
        })
        .collect();
    format!("CASE value_scale{scales} ELSE value END")
}

/// The scale of a series' run: the smallest at which every value that has a mantissa at
/// some scale up to [`MAX_SCALE`] is stored exactly; `None` if no value has one. (A value
/// can hold at a small scale and overflow at a larger one: such a value in a run whose
/// other values need the larger scale becomes a float row.)
fn run_scale(run: &[(u32, Sample)]) -> Option<u8> {
    let mut scale: Option<u8> = None;
    for (_, sample) in run {
        let from = scale.unwrap_or(0);
        if let Some(at) = (from..=MAX_SCALE).find(|at| mantissa(sample.value, *at).is_some()) {
            scale = Some(at);
        }
    }
    scale
}

fn series_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("series_id", DataType::UInt32, false),
        Field::new("labels", DataType::Binary, false),
    ]))
}

/// How hard zstd works on a part: a flush's parts live until the next compaction, a
/// compaction's for the retention period.
#[derive(Clone, Copy, Debug)]
pub(crate) enum PartKind {
    Flushed,
    Compacted,
}

fn writer_properties(kind: PartKind) -> WriterProperties {
    let level = match kind {
        PartKind::Flushed => 3,
        PartKind::Compacted => 9,
    };
    WriterProperties::builder()
        .set_compression(Compression::ZSTD(
            ZstdLevel::try_new(level).unwrap_or_default(),
        ))
        .set_dictionary_enabled(false)
        .set_column_encoding(ColumnPath::from("series_id"), Encoding::DELTA_BINARY_PACKED)
        .set_column_encoding(
            ColumnPath::from("timestamp_ms"),
            Encoding::DELTA_BINARY_PACKED,
        )
        .set_column_encoding(ColumnPath::from("value"), Encoding::BYTE_STREAM_SPLIT)
        .set_column_encoding(ColumnPath::from("value_int"), Encoding::DELTA_BINARY_PACKED)
        .set_column_encoding(
            ColumnPath::from("value_scale"),
            Encoding::DELTA_BINARY_PACKED,
        )
        .set_max_row_group_row_count(Some(1 << 20))
        .set_statistics_enabled(EnabledStatistics::Page)
        .build()
}

/// Writes `batch` to `path` durably (see [`PartWriter::finish`]).
fn write_durably(path: &Path, batch: &RecordBatch, properties: WriterProperties) -> Result<u64> {
    let mut writer = PartWriter::open(path, batch.schema(), properties)?;
    writer.writer.write(batch)?;
    writer.finish()
}

/// Writes sorted `(series, timestamp, value)` rows as a part.
pub(crate) fn write_samples(path: &Path, rows: &[(u32, Sample)]) -> Result<u64> {
    let mut writer = PartWriter::create(path, PartKind::Flushed)?;
    writer.write(rows)?;
    writer.finish()
}

fn samples_batch(rows: &[(u32, Sample)]) -> Result<RecordBatch> {
    let series = UInt32Array::from_iter_values(rows.iter().map(|(id, _)| *id));
    let timestamps = Int64Array::from_iter_values(rows.iter().map(|(_, s)| s.timestamp_ms));
    let mut floats = Float64Builder::with_capacity(rows.len());
    let mut mantissas = Int64Builder::with_capacity(rows.len());
    let mut scales = UInt8Builder::with_capacity(rows.len());
    for run in rows.chunk_by(|a, b| a.0 == b.0) {
        let scale = run_scale(run);
        // A float row repeats the mantissa before it, so the deltas stay zero: a staleness
        // marker or a NaN costs its series nothing but that row.
        let mut previous = 0;
        for (_, sample) in run {
            match scale.and_then(|scale| Some((scale, mantissa(sample.value, scale)?))) {
                Some((scale, exact)) => {
                    floats.append_value(0.0);
                    mantissas.append_value(exact);
                    scales.append_value(scale);
                    previous = exact;
                }
                None => {
                    floats.append_value(sample.value);
                    mantissas.append_value(previous);
                    scales.append_value(FLOAT_SCALE);
                }
            }
        }
    }
    Ok(RecordBatch::try_new(
        sample_part_schema(),
        vec![
            Arc::new(series),
            Arc::new(timestamps),
            Arc::new(floats.finish()),
            Arc::new(mantissas.finish()),
            Arc::new(scales.finish()),
        ],
    )?)
}

/// A Parquet file written to a temporary name and made durable at `finish`. Sample parts
/// are written in pieces (compaction streams through a day series range by series range).
pub(crate) struct PartWriter {
    path: std::path::PathBuf,
    temp: std::path::PathBuf,
    writer: ArrowWriter<File>,
}

impl PartWriter {
    /// A sample part.
    pub fn create(path: &Path, kind: PartKind) -> Result<Self> {
        Self::open(path, sample_part_schema(), writer_properties(kind))
    }

    fn open(path: &Path, schema: SchemaRef, properties: WriterProperties) -> Result<Self> {
        let temp = path.with_extension("parquet.tmp");
        let file = File::create(&temp).map_err(|e| StorageError::io("creating", &temp, e))?;
        let writer = ArrowWriter::try_new(file, schema, Some(properties))?;
        Ok(Self {
            path: path.to_path_buf(),
            temp,
            writer,
        })
    }

    /// Appends rows, which must continue the order of the rows before them.
    pub fn write(&mut self, rows: &[(u32, Sample)]) -> Result<()> {
        if !rows.is_empty() {
            self.writer.write(&samples_batch(rows)?)?;
        }
        Ok(())
    }

    /// Closes the file, fsyncs it, renames it into place, fsyncs the directory; returns
    /// its size.
    pub fn finish(self) -> Result<u64> {
        let file = self.writer.into_inner()?;
        file.sync_all()
            .map_err(|e| StorageError::io("syncing", &self.temp, e))?;
        let bytes = file
            .metadata()
            .map_err(|e| StorageError::io("reading size of", &self.temp, e))?
            .len();
        fs::rename(&self.temp, &self.path)
            .map_err(|e| StorageError::io("renaming into", &self.path, e))?;
        if let Some(dir) = self.path.parent() {
            super::sync_dir(dir)?;
        }
        Ok(bytes)
    }
}

/// Reads the samples of the series in `ids` within `[start, end]` from a part, skipping
/// row groups whose statistics rule them out.
pub(crate) fn read_samples(
    path: &Path,
    ids: &RoaringBitmap,
    start: i64,
    end: i64,
    mut sink: impl FnMut(u32, Sample),
) -> Result<()> {
    let file = File::open(path).map_err(|e| StorageError::io("opening part", path, e))?;
    let builder = ParquetRecordBatchReaderBuilder::try_new_with_options(
        file,
        ArrowReaderOptions::new().with_page_index_policy(PageIndexPolicy::Optional),
    )?;
    let (first_id, last_id) = match (ids.min(), ids.max()) {
        (Some(a), Some(b)) => (a, b),
        _ => return Ok(()),
    };
    let mut groups = Vec::new();
    for (index, group) in builder.metadata().row_groups().iter().enumerate() {
        let range_i64 = |column: usize| match group.column(column).statistics() {
            Some(Statistics::Int64(s)) => s.min_opt().zip(s.max_opt()).map(|(a, b)| (*a, *b)),
            Some(Statistics::Int32(s)) => s
                .min_opt()
                .zip(s.max_opt())
                .map(|(a, b)| (i64::from(*a), i64::from(*b))),
            _ => None,
        };
        let series_overlap = range_i64(0).is_none_or(|(min, max)| {
            let (min, max) = (min as u32, max as u32);
            min <= last_id && max >= first_id && ids.range_cardinality(min..=max) > 0
        });
        let time_overlap = range_i64(1).is_none_or(|(min, max)| min <= end && max >= start);
        if series_overlap && time_overlap {
            groups.push(index);
        }
    }
    if groups.is_empty() {
        return Ok(());
    }
    // Late materialization: the series and time columns are decoded first, and the value
    // columns only for the rows they select (whole pages skipped through the page index).
    let leaf = |name: &str| {
        builder
            .parquet_schema()
            .columns()
            .iter()
            .position(|c| c.name() == name)
    };
    let (Some(series_leaf), Some(time_leaf)) = (leaf("series_id"), leaf("timestamp_ms")) else {
        return Err(StorageError::Corrupt {
            path: path.to_path_buf(),
            reason: "a sample part without series_id or timestamp_ms".to_owned(),
        });
    };
    let wanted = ids.clone();
    let in_series = ArrowPredicateFn::new(
        ProjectionMask::leaves(builder.parquet_schema(), [series_leaf]),
        move |batch: RecordBatch| {
            let series = batch
                .column(0)
                .as_primitive_opt::<UInt32Type>()
                .ok_or_else(|| ArrowError::SchemaError("series_id is not UInt32".into()))?;
            // Parts are sorted by series: each run of one id is looked up once.
            let mut last: Option<(u32, bool)> = None;
            Ok(series
                .values()
                .iter()
                .map(|id| match last {
                    Some((last_id, answer)) if last_id == *id => Some(answer),
                    _ => {
                        let answer = wanted.contains(*id);
                        last = Some((*id, answer));
                        Some(answer)
                    }
                })
                .collect())
        },
    );
    let in_time = ArrowPredicateFn::new(
        ProjectionMask::leaves(builder.parquet_schema(), [time_leaf]),
        move |batch: RecordBatch| {
            let times = batch
                .column(0)
                .as_primitive_opt::<Int64Type>()
                .ok_or_else(|| ArrowError::SchemaError("timestamp_ms is not Int64".into()))?;
            Ok(times
                .values()
                .iter()
                .map(|t| Some(*t >= start && *t <= end))
                .collect())
        },
    );
    let pages = selected_pages(builder.metadata(), &groups, series_leaf, ids);
    let reader = builder
        .with_row_groups(groups)
        .with_row_selection(pages)
        .with_row_filter(RowFilter::new(vec![Box::new(in_series), Box::new(in_time)]))
        .with_batch_size(64 * 1024)
        .build()?;
    for batch in reader {
        let batch = batch?;
        let column = |name: &str| batch.column_by_name(name).map(|c| c.as_any());
        let corrupt = || StorageError::Corrupt {
            path: path.to_path_buf(),
            reason: "unexpected columns in a sample part".to_owned(),
        };
        let (Some(series), Some(timestamps), Some(floats)) = (
            column("series_id").and_then(|c| c.downcast_ref::<UInt32Array>()),
            column("timestamp_ms").and_then(|c| c.downcast_ref::<Int64Array>()),
            column("value").and_then(|c| c.downcast_ref::<Float64Array>()),
        ) else {
            return Err(corrupt());
        };
        // Absent from parts written before integer mantissas.
        let mantissas = match (column("value_int"), column("value_scale")) {
            (Some(m), Some(s)) => Some(
                m.downcast_ref::<Int64Array>()
                    .zip(s.downcast_ref::<UInt8Array>())
                    .ok_or_else(corrupt)?,
            ),
            (None, None) => None,
            _ => return Err(corrupt()),
        };
        for row in 0..batch.num_rows() {
            let id = series.value(row);
            let timestamp_ms = timestamps.value(row);
            let value = match mantissas {
                Some((m, s)) if s.value(row) != FLOAT_SCALE => {
                    if s.value(row) > MAX_SCALE {
                        return Err(StorageError::Corrupt {
                            path: path.to_path_buf(),
                            reason: format!("unknown value scale {}", s.value(row)),
                        });
                    }
                    from_mantissa(m.value(row), s.value(row))
                }
                _ => floats.value(row),
            };
            sink(
                id,
                Sample {
                    timestamp_ms,
                    value,
                },
            );
        }
    }
    Ok(())
}

/// The rows of `groups` on pages whose `series_id` bounds (from the page index) hold a
/// wanted id: a selection of a few series skips the other pages without decoding them.
/// Without a page index, every row.
fn selected_pages(
    metadata: &ParquetMetaData,
    groups: &[usize],
    series_leaf: usize,
    ids: &RoaringBitmap,
) -> RowSelection {
    let mut selectors = Vec::new();
    for &group in groups {
        let rows = usize::try_from(metadata.row_group(group).num_rows()).unwrap_or(0);
        let column_index = metadata
            .column_index()
            .and_then(|c| c.get(group))
            .and_then(|c| c.get(series_leaf));
        let offset_index = metadata
            .offset_index()
            .and_then(|o| o.get(group))
            .and_then(|o| o.get(series_leaf));
        let (Some(ColumnIndexMetaData::INT32(bounds)), Some(offsets)) =
            (column_index, offset_index)
        else {
            selectors.push(RowSelector::select(rows));
            continue;
        };
        let locations = offsets.page_locations();
        for (page, location) in locations.iter().enumerate() {
            let first = usize::try_from(location.first_row_index).unwrap_or(0);
            let next = locations
                .get(page + 1)
                .map_or(rows, |n| usize::try_from(n.first_row_index).unwrap_or(rows));
            // series_id is UInt32, stored as INT32 bits.
            let wanted = match (bounds.min_value(page), bounds.max_value(page)) {
                (Some(min), Some(max)) => {
                    let (min, max) = (*min as u32, *max as u32);
                    min <= max && ids.range_cardinality(min..=max) > 0
                }
                _ => true,
            };
            let count = next.saturating_sub(first);
            selectors.push(if wanted {
                RowSelector::select(count)
            } else {
                RowSelector::skip(count)
            });
        }
    }
    RowSelection::from(selectors)
}

/// Writes a row-table part.
pub(crate) fn write_rows(path: &Path, batch: &RecordBatch) -> Result<u64> {
    let properties = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::try_new(3).unwrap_or_default()))
        .set_statistics_enabled(EnabledStatistics::Page)
        .build();
    write_durably(path, batch, properties)
}

/// Reads a whole row-table part.
pub(crate) fn read_rows(path: &Path) -> Result<Vec<RecordBatch>> {
    let file = File::open(path).map_err(|e| StorageError::io("opening part", path, e))?;
    let reader = ParquetRecordBatchReaderBuilder::try_new(file)?.build()?;
    Ok(reader.collect::<std::result::Result<Vec<_>, _>>()?)
}

/// Writes series created since the last flush.
pub(crate) fn write_series(path: &Path, series: &[(u32, Labels)]) -> Result<u64> {
    let ids = UInt32Array::from_iter_values(series.iter().map(|(id, _)| *id));
    let encoded: Vec<Vec<u8>> = series
        .iter()
        .map(|(_, labels)| {
            postcard::to_stdvec(labels).map_err(|e| StorageError::Decode(e.to_string()))
        })
        .collect::<Result<_>>()?;
    let labels = BinaryArray::from_iter_values(encoded.iter());
    let batch = RecordBatch::try_new(series_schema(), vec![Arc::new(ids), Arc::new(labels)])?;
    let properties = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::try_new(3).unwrap_or_default()))
        .build();
    write_durably(path, &batch, properties)
}

/// Reads a series catalog file.
pub(crate) fn read_series(path: &Path) -> Result<Vec<(u32, Labels)>> {
    let file = File::open(path).map_err(|e| StorageError::io("opening series file", path, e))?;
    let reader = ParquetRecordBatchReaderBuilder::try_new(file)?.build()?;
    let mut out = Vec::new();
    for batch in reader {
        let batch = batch?;
        let (Some(ids), Some(labels)) = (
            batch.column(0).as_any().downcast_ref::<UInt32Array>(),
            batch.column(1).as_any().downcast_ref::<BinaryArray>(),
        ) else {
            return Err(StorageError::Corrupt {
                path: path.to_path_buf(),
                reason: "unexpected column types".to_owned(),
            });
        };
        for row in 0..batch.num_rows() {
            let decoded: Labels =
                postcard::from_bytes(labels.value(row)).map_err(|e| StorageError::Corrupt {
                    path: path.to_path_buf(),
                    reason: format!("series {}: {e}", ids.value(row)),
                })?;
            out.push((ids.value(row), decoded));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn run(id: u32, values: &[f64]) -> Vec<(u32, Sample)> {
        values
            .iter()
            .enumerate()
            .map(|(i, value)| {
                (
                    id,
                    Sample {
                        timestamp_ms: i as i64,
                        value: *value,
                    },
                )
            })
            .collect()
    }

    /// The scale of each row.
    fn encodings(rows: &[(u32, Sample)]) -> Vec<u8> {
        let batch = samples_batch(rows).unwrap();
        let scales = batch
            .column(4)
            .as_any()
            .downcast_ref::<UInt8Array>()
            .unwrap();
        scales.values().to_vec()
    }

    #[test]
    fn each_series_takes_the_smallest_exact_scale_and_odd_values_are_float_rows() {
        let mut rows = run(0, &[3.0, 1_000_000.0]);
        rows.extend(run(1, &[0.25, 12.5, 7.0]));
        rows.extend(run(2, &[1.0, f64::NAN, 2.5]));
        rows.extend(run(3, &[1.0 / 3.0]));
        rows.extend(run(4, &[-0.0]));
        let float = FLOAT_SCALE;
        assert_eq!(encodings(&rows), [0, 0, 2, 2, 2, 1, float, 1, float, float]);
        // The float row repeats the mantissa before it (delta zero).
        let batch = samples_batch(&rows).unwrap();
        let mantissas = batch
            .column(3)
            .as_any()
            .downcast_ref::<Int64Array>()
            .unwrap();
        assert_eq!(&mantissas.values()[5..8], &[10, 10, 25]);
    }

    #[test]
    fn large_integers_keep_scale_zero() {
        // 10^12 times these overflows an i64: they must not be mistaken for float rows.
        let rows = run(0, &[8.0e9, 8.5e9, 1.0e15]);
        assert_eq!(encodings(&rows), [0, 0, 0]);
    }

    #[test]
    fn mantissas_give_the_value_back_exactly_or_are_refused() {
        assert_eq!(mantissa(0.3, 1), Some(3));
        assert_eq!(
            mantissa(0.1 + 0.2, 12),
            None,
            "0.30000000000000004 needs 17 digits"
        );
        assert_eq!(mantissa(1e300, 0), None);
        assert_eq!(mantissa(f64::INFINITY, 0), None);
        assert_eq!(mantissa(123.456, 2), None);
        assert_eq!(mantissa(123.456, 3), Some(123_456));
        assert_eq!(from_mantissa(123_456, 3), 123.456);
    }
}
