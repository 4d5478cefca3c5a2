//! Parquet files of the embedded store: sample parts and series catalogs.
//!
//! A sample part holds `(series_id, timestamp_ms, value)` rows of one tenant and one day,
//! sorted by series then time, so row-group statistics prune by both. Timestamps and series
//! ids are delta-encoded, values byte-stream-split, everything zstd-compressed: regular
//! scrape data then costs a few bytes per sample.

use std::fs::{self, File};
use std::path::Path;
use std::sync::Arc;

use datafusion::arrow::array::{
    Array, BinaryArray, Float64Array, Int64Array, RecordBatch, UInt32Array,
};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::parquet::arrow::ArrowWriter;
use datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use datafusion::parquet::basic::{Compression, Encoding, ZstdLevel};
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

pub(crate) fn samples_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("series_id", DataType::UInt32, false),
        Field::new("timestamp_ms", DataType::Int64, false),
        Field::new("value", DataType::Float64, false),
    ]))
}

fn series_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("series_id", DataType::UInt32, false),
        Field::new("labels", DataType::Binary, false),
    ]))
}

fn writer_properties() -> WriterProperties {
    WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::try_new(3).unwrap_or_default()))
        .set_dictionary_enabled(false)
        .set_column_encoding(ColumnPath::from("series_id"), Encoding::DELTA_BINARY_PACKED)
        .set_column_encoding(
            ColumnPath::from("timestamp_ms"),
            Encoding::DELTA_BINARY_PACKED,
        )
        .set_column_encoding(ColumnPath::from("value"), Encoding::BYTE_STREAM_SPLIT)
        .set_max_row_group_row_count(Some(1 << 20))
        .set_statistics_enabled(EnabledStatistics::Page)
        .build()
}

/// Writes `batch` to `path` durably: a temporary file, fsync, rename, fsync of the directory.
fn write_durably(path: &Path, batch: &RecordBatch, properties: WriterProperties) -> Result<u64> {
    let temp = path.with_extension("parquet.tmp");
    let file = File::create(&temp).map_err(|e| StorageError::io("creating", &temp, e))?;
    let mut writer = ArrowWriter::try_new(file, batch.schema(), Some(properties))?;
    writer.write(batch)?;
    let file = writer.into_inner()?;
    file.sync_all()
        .map_err(|e| StorageError::io("syncing", &temp, e))?;
    let bytes = file
        .metadata()
        .map_err(|e| StorageError::io("reading size of", &temp, e))?
        .len();
    fs::rename(&temp, path).map_err(|e| StorageError::io("renaming into", path, e))?;
    if let Some(dir) = path.parent() {
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| StorageError::io("syncing directory", dir, e))?;
    }
    Ok(bytes)
}

/// Writes sorted `(series, timestamp, value)` rows as a part.
pub(crate) fn write_samples(path: &Path, rows: &[(u32, Sample)]) -> Result<u64> {
    let mut writer = PartWriter::create(path)?;
    writer.write(rows)?;
    writer.finish()
}

fn samples_batch(rows: &[(u32, Sample)]) -> Result<RecordBatch> {
    let series = UInt32Array::from_iter_values(rows.iter().map(|(id, _)| *id));
    let timestamps = Int64Array::from_iter_values(rows.iter().map(|(_, s)| s.timestamp_ms));
    let values = Float64Array::from_iter_values(rows.iter().map(|(_, s)| s.value));
    Ok(RecordBatch::try_new(
        samples_schema(),
        vec![Arc::new(series), Arc::new(timestamps), Arc::new(values)],
    )?)
}

/// A sample part written in pieces (compaction streams through a day series range by
/// series range), made durable at `finish`.
pub(crate) struct PartWriter {
    path: std::path::PathBuf,
    temp: std::path::PathBuf,
    writer: ArrowWriter<File>,
}

impl PartWriter {
    pub fn create(path: &Path) -> Result<Self> {
        let temp = path.with_extension("parquet.tmp");
        let file = File::create(&temp).map_err(|e| StorageError::io("creating", &temp, e))?;
        let writer = ArrowWriter::try_new(file, samples_schema(), Some(writer_properties()))?;
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
            File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(|e| StorageError::io("syncing directory", dir, e))?;
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
    let builder = ParquetRecordBatchReaderBuilder::try_new(file)?;
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
    let reader = builder
        .with_row_groups(groups)
        .with_batch_size(64 * 1024)
        .build()?;
    for batch in reader {
        let batch = batch?;
        let (Some(series), Some(timestamps), Some(values)) = (
            batch.column(0).as_any().downcast_ref::<UInt32Array>(),
            batch.column(1).as_any().downcast_ref::<Int64Array>(),
            batch.column(2).as_any().downcast_ref::<Float64Array>(),
        ) else {
            return Err(StorageError::Corrupt {
                path: path.to_path_buf(),
                reason: "unexpected column types".to_owned(),
            });
        };
        for row in 0..batch.num_rows() {
            let id = series.value(row);
            let timestamp_ms = timestamps.value(row);
            if timestamp_ms >= start && timestamp_ms <= end && ids.contains(id) {
                sink(
                    id,
                    Sample {
                        timestamp_ms,
                        value: values.value(row),
                    },
                );
            }
        }
    }
    Ok(())
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
