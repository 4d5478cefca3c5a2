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
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use datafusion::arrow::array::AsArray;
use datafusion::arrow::array::{
    Array, BinaryArray, Float64Array, Float64Builder, Int64Array, Int64Builder, RecordBatch,
    UInt8Array, UInt8Builder, UInt32Array,
};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::arrow::datatypes::{Int64Type, UInt32Type};
use datafusion::parquet::arrow::ArrowWriter;
use datafusion::parquet::arrow::ProjectionMask;
use datafusion::parquet::arrow::arrow_reader::{
    ArrowReaderMetadata, ArrowReaderOptions, ParquetRecordBatchReaderBuilder, RowSelection,
    RowSelector,
};
use datafusion::parquet::basic::{Compression, Encoding, ZstdLevel};
use datafusion::parquet::errors::Result as ParquetResult;
use datafusion::parquet::file::metadata::PageIndexPolicy;
use datafusion::parquet::file::properties::{EnabledStatistics, WriterProperties};
use datafusion::parquet::file::reader::{ChunkReader, Length};
use datafusion::parquet::file::statistics::Statistics;
use datafusion::parquet::schema::types::ColumnPath;
use model::{Labels, Sample};
use roaring::RoaringBitmap;
use serde::{Deserialize, Serialize};

use super::blocks::{Block, BlockKey, DecodedBlocks};
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
        .set_data_page_row_count_limit(PAGE_ROWS)
        .set_statistics_enabled(EnabledStatistics::Page)
        .build()
}

/// Rows per data page. A read decompresses and decodes every page that holds a row it
/// wants, and a day of one series at 15 s is 5,760 rows: at Parquet's default of 20,000
/// a selection of a few series scattered through a part decodes about six times the rows
/// it keeps; at this size about twice, for a few more page headers.
const PAGE_ROWS: usize = 4096;

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

/// A sample part opened for reading: its footer (with the page index), where each series'
/// rows begin, and every [`CHECKPOINT_ROWS`]th timestamp of each. Parts never change once
/// written, so the store opens each once and keeps it ([`SamplePartCache`]); a read then
/// goes straight to the rows of the series it selects, within a checkpoint of its time
/// range, decoding neither the `series_id` column nor the pages of other series.
#[derive(Debug)]
pub(crate) struct SamplePart {
    /// Unique among the parts opened by this process: the part's key in the decoded
    /// block cache.
    id: u64,
    path: PathBuf,
    /// Kept open: a read that raced a compaction still reads the part it was given.
    file: PartFile,
    metadata: ArrowReaderMetadata,
    /// `None` if the part is not sorted by series and time (no writer makes such a part,
    /// but one found is read row by row rather than refused).
    index: Option<SeriesIndex>,
    rows: u64,
}

/// Rows between two kept timestamps of a series: 8 bytes kept per this many rows.
const CHECKPOINT_ROWS: u64 = 256;

/// Where each series' rows are in a part sorted by series then time.
#[derive(Debug, Default)]
struct SeriesIndex {
    /// Per series, ascending: its id, its first row, and where its checkpoints start in
    /// `checkpoints`.
    runs: Vec<(u32, u64, usize)>,
    /// Per series, the timestamps of its rows `first`, `first + CHECKPOINT_ROWS`, ...
    checkpoints: Vec<i64>,
}

/// An open part file read with positional reads (`pread`). Parquet's own `File` reader
/// seeks a duplicated descriptor, whose offset every duplicate shares, so two threads
/// reading one part would read each other's bytes.
#[derive(Clone, Debug)]
struct PartFile(Arc<File>);

impl Length for PartFile {
    fn len(&self) -> u64 {
        self.0.metadata().map_or(0, |m| m.len())
    }
}

impl ChunkReader for PartFile {
    // Buffered as Parquet buffers its own: page headers are read a few bytes at a time.
    type T = std::io::BufReader<PositionedReader>;

    fn get_read(&self, start: u64) -> ParquetResult<Self::T> {
        Ok(std::io::BufReader::new(PositionedReader {
            file: self.0.clone(),
            position: start,
        }))
    }

    fn get_bytes(&self, start: u64, length: usize) -> ParquetResult<bytes::Bytes> {
        let mut buffer = vec![0; length];
        self.0.read_exact_at(&mut buffer, start)?;
        Ok(buffer.into())
    }
}

/// A reader of a part file from a position of its own.
struct PositionedReader {
    file: Arc<File>,
    position: u64,
}

impl std::io::Read for PositionedReader {
    fn read(&mut self, buffer: &mut [u8]) -> std::io::Result<usize> {
        let read = self.file.read_at(buffer, self.position)?;
        self.position += read as u64;
        Ok(read)
    }
}

/// What a read takes from one row group: which rows, and whose they are.
struct GroupRead {
    index: usize,
    selectors: Vec<RowSelector>,
    /// Series and row count of each selected range, in order.
    order: Vec<(u32, u64)>,
    /// Whether the group has rows whose value is in the float column.
    floats: bool,
}

/// A contiguous range of one series' rows.
#[derive(Clone, Copy, Debug)]
struct Run {
    id: u32,
    first: u64,
    len: u64,
}

/// The blocks `low..high` of one series' rows `first..end` in a part; block `k` is its
/// rows from `first + k · CHECKPOINT_ROWS`, [`CHECKPOINT_ROWS`] of them (fewer at the end).
#[derive(Clone, Copy, Debug)]
struct SeriesBlocks {
    id: u32,
    first: u64,
    end: u64,
    low: u32,
    high: u32,
}

impl SeriesBlocks {
    /// The rows of blocks `from..to`.
    fn run(&self, from: u32, to: u32) -> Run {
        let begin = (self.first + u64::from(from) * CHECKPOINT_ROWS).min(self.end);
        let stop = (self.first + u64::from(to) * CHECKPOINT_ROWS).min(self.end);
        Run {
            id: self.id,
            first: begin,
            len: stop.saturating_sub(begin),
        }
    }
}

impl SeriesIndex {
    /// Adds the row `row` of series `id` at `timestamp_ms`; false if it breaks the order.
    fn add(&mut self, id: u32, row: u64, timestamp_ms: i64, previous_ts: &mut i64) -> bool {
        match self.runs.last() {
            Some((last, first, _)) if *last == id => {
                if timestamp_ms < *previous_ts {
                    return false;
                }
                if (row - first).is_multiple_of(CHECKPOINT_ROWS) {
                    self.checkpoints.push(timestamp_ms);
                }
            }
            Some((last, _, _)) if *last > id => return false,
            _ => {
                self.runs.push((id, row, self.checkpoints.len()));
                self.checkpoints.push(timestamp_ms);
            }
        }
        *previous_ts = timestamp_ms;
        true
    }

    /// The blocks (rows between checkpoints) of the run at `index` (of a part of `rows`
    /// rows) that can hold samples in `[start, end]`: a superset by less than a
    /// checkpoint at each end.
    fn blocks_within(&self, index: usize, rows: u64, start: i64, end: i64) -> SeriesBlocks {
        let (id, first, from) = self.runs[index];
        let (next, to) = self
            .runs
            .get(index + 1)
            .map_or((rows, self.checkpoints.len()), |(_, row, at)| (*row, *at));
        let kept = &self.checkpoints[from..to];
        // The last checkpoint before `start` may precede rows in range; every row from the
        // first checkpoint after `end` on is past it.
        let low = kept.partition_point(|t| *t < start).saturating_sub(1);
        let high = kept.partition_point(|t| *t <= end);
        SeriesBlocks {
            id,
            first,
            end: next,
            low: u32::try_from(low).unwrap_or(u32::MAX),
            high: u32::try_from(high.max(low)).unwrap_or(u32::MAX),
        }
    }

    /// The rows of the run at `index` that can hold samples in `[start, end]`.
    fn run_within(&self, index: usize, rows: u64, start: i64, end: i64) -> Run {
        let blocks = self.blocks_within(index, rows, start, end);
        blocks.run(blocks.low, blocks.high)
    }

    fn find(&self, id: u32) -> Option<usize> {
        self.runs.binary_search_by_key(&id, |(r, _, _)| *r).ok()
    }
}

impl SamplePart {
    /// Reads the footer and the `series_id` and `timestamp_ms` columns (once: the index
    /// is kept).
    pub fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).map_err(|e| StorageError::io("opening part", path, e))?;
        let metadata = ArrowReaderMetadata::load(
            &file,
            ArrowReaderOptions::new().with_page_index_policy(PageIndexPolicy::Optional),
        )?;
        let rows = metadata
            .metadata()
            .row_groups()
            .iter()
            .map(|g| u64::try_from(g.num_rows()).unwrap_or(0))
            .sum();
        let series_leaf = leaf(&metadata, path, "series_id")?;
        let time_leaf = leaf(&metadata, path, "timestamp_ms")?;
        let file = PartFile(Arc::new(file));
        let reader =
            ParquetRecordBatchReaderBuilder::new_with_metadata(file.clone(), metadata.clone())
                .with_projection(ProjectionMask::leaves(
                    metadata.parquet_schema(),
                    [series_leaf, time_leaf],
                ))
                .with_batch_size(64 * 1024)
                .build()?;
        let mut index = SeriesIndex::default();
        let mut ordered = true;
        let (mut row, mut previous_ts) = (0u64, i64::MIN);
        'batches: for batch in reader {
            let batch = batch?;
            let (Some(ids), Some(times)) = (
                batch
                    .column_by_name("series_id")
                    .and_then(|c| c.as_primitive_opt::<UInt32Type>()),
                batch
                    .column_by_name("timestamp_ms")
                    .and_then(|c| c.as_primitive_opt::<Int64Type>()),
            ) else {
                return Err(corrupt_columns(path));
            };
            for (id, timestamp_ms) in ids.values().iter().zip(times.values()) {
                if !index.add(*id, row, *timestamp_ms, &mut previous_ts) {
                    ordered = false;
                    break 'batches;
                }
                row += 1;
            }
        }
        static OPENED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        Ok(Self {
            id: OPENED.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            path: path.to_path_buf(),
            file,
            metadata,
            index: ordered.then_some(index),
            rows,
        })
    }

    /// The blocks that can hold samples of each series in `ids` within `[start, end]`, in
    /// id order (series without any left out).
    fn series_blocks(
        &self,
        ids: &RoaringBitmap,
        start: i64,
        end: i64,
    ) -> Option<Vec<SeriesBlocks>> {
        let index = self.index.as_ref()?;
        let blocks = |i: usize| index.blocks_within(i, self.rows, start, end);
        let all: Vec<SeriesBlocks> = if ids.len() < index.runs.len() as u64 {
            ids.iter()
                .filter_map(|id| index.find(id))
                .map(blocks)
                .collect()
        } else {
            (0..index.runs.len())
                .filter(|i| ids.contains(index.runs[*i].0))
                .map(blocks)
                .collect()
        };
        Some(
            all.into_iter()
                .filter(|b| b.run(b.low, b.high).len > 0)
                .collect(),
        )
    }

    /// About how many rows of series `id` fall in `[start, end]` (at most a checkpoint
    /// more at each end).
    pub fn rows_within(&self, id: u32, start: i64, end: i64) -> u64 {
        self.index
            .as_ref()
            .and_then(|index| Some(index.run_within(index.find(id)?, self.rows, start, end).len))
            .unwrap_or(0)
    }

    /// Calls `sink` with the samples of the series in `ids` within `[start, end]`, each
    /// series' in time order, a run of one series' samples at a time (a series may come
    /// in several runs, one after the other).
    ///
    /// With `cache`, blocks found there are not decoded, and the blocks decoded are kept
    /// in it.
    pub fn read(
        &self,
        ids: &RoaringBitmap,
        start: i64,
        end: i64,
        cache: Option<&DecodedBlocks>,
        mut sink: impl FnMut(u32, &[Sample]),
    ) -> Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        let Some(series) = self.series_blocks(ids, start, end) else {
            return self.read_unsorted(ids, start, end, sink);
        };
        match cache.filter(|c| c.is_enabled()) {
            Some(cache) => self.read_through(&series, start, end, cache, sink),
            None => {
                let runs: Vec<Run> = series.iter().map(|b| b.run(b.low, b.high)).collect();
                self.read_runs(&runs, start, end, &mut sink)
            }
        }
    }

    /// [`Self::read`] through the block cache: the kept blocks of each series, and the
    /// others decoded (whole, unfiltered by time, so that they can be kept).
    fn read_through(
        &self,
        series: &[SeriesBlocks],
        start: i64,
        end: i64,
        cache: &DecodedBlocks,
        mut sink: impl FnMut(u32, &[Sample]),
    ) -> Result<()> {
        let mut found: Vec<Vec<Option<Block>>> = Vec::with_capacity(series.len());
        // The missing blocks as ranges `(series, from, to)`, in file order.
        let mut missing: Vec<(usize, u32, u32)> = Vec::new();
        let mut kept = Vec::new();
        for (i, s) in series.iter().enumerate() {
            cache.get(self.id, s.id, s.low..s.high, &mut kept);
            let mut block = s.low;
            for chunk in kept.chunk_by(|a, b| a.is_some() == b.is_some()) {
                let next = block + chunk.len() as u32;
                if chunk[0].is_none() {
                    missing.push((i, block, next));
                }
                block = next;
            }
            found.push(std::mem::take(&mut kept));
        }
        if !missing.is_empty() {
            let runs: Vec<Run> = missing
                .iter()
                .map(|(i, from, to)| series[*i].run(*from, *to))
                .collect();
            // The decoded rows go straight into their blocks, in file order.
            let mut expected = missing
                .iter()
                .flat_map(|&(i, from, to)| (from..to).map(move |block| (i, block)));
            let mut filling: Option<(usize, u32, Vec<Sample>, usize)> = None;
            let mut fresh = Vec::new();
            let mut finish = |(i, block, samples, _): (usize, u32, Vec<Sample>, usize)| {
                let samples = Arc::new(samples);
                let s = &series[i];
                found[i][(block - s.low) as usize] = Some(samples.clone());
                let key = BlockKey {
                    part: self.id,
                    series: s.id,
                    block,
                };
                fresh.push((key, samples));
            };
            let mut overflow = false;
            self.read_runs(&runs, i64::MIN, i64::MAX, &mut |_, mut samples| {
                while !samples.is_empty() {
                    let current = match &mut filling {
                        Some(current) => current,
                        None => {
                            let Some((i, block)) = expected.next() else {
                                overflow = true;
                                return;
                            };
                            let rows = series[i].run(block, block + 1).len as usize;
                            filling.insert((i, block, Vec::with_capacity(rows), rows))
                        }
                    };
                    let take = samples.len().min(current.3 - current.2.len());
                    current.2.extend_from_slice(&samples[..take]);
                    samples = &samples[take..];
                    if current.2.len() == current.3
                        && let Some(done) = filling.take()
                    {
                        finish(done);
                    }
                }
            })?;
            if overflow || filling.is_some() || expected.next().is_some() {
                return Err(StorageError::Corrupt {
                    path: self.path.clone(),
                    reason: "the rows read do not fill the blocks selected".to_owned(),
                });
            }
            cache.insert(fresh);
        }
        for (s, blocks) in series.iter().zip(found) {
            for samples in blocks.iter().flatten() {
                let from = samples.partition_point(|x| x.timestamp_ms < start);
                let to = samples.partition_point(|x| x.timestamp_ms <= end);
                if from < to {
                    sink(s.id, &samples[from..to]);
                }
            }
        }
        Ok(())
    }

    /// Reads the rows of `runs` (in file order) and hands out those within `[start, end]`.
    fn read_runs(
        &self,
        runs: &[Run],
        start: i64,
        end: i64,
        sink: &mut impl FnMut(u32, &[Sample]),
    ) -> Result<()> {
        // Each row group that holds a wanted row and overlaps the time range, and the
        // wanted rows' ranges within it, in file order; rows come out in that order.
        let mut plan: Vec<GroupRead> = Vec::new();
        let mut next_run = 0;
        let mut group_first = 0u64;
        let scale_leaf = leaf(&self.metadata, &self.path, "value_scale").ok();
        for (index, group) in self.metadata.metadata().row_groups().iter().enumerate() {
            let group_rows = u64::try_from(group.num_rows()).unwrap_or(0);
            let group_end = group_first + group_rows;
            let time_overlap = match group.column(1).statistics() {
                Some(Statistics::Int64(s)) => s
                    .min_opt()
                    .zip(s.max_opt())
                    .is_none_or(|(min, max)| *min <= end && *max >= start),
                _ => true,
            };
            while next_run < runs.len() && runs[next_run].first + runs[next_run].len <= group_first
            {
                next_run += 1;
            }
            let mut cursor = group_first;
            let mut selectors = Vec::new();
            let mut order = Vec::new();
            for run in runs[next_run..].iter().take_while(|r| r.first < group_end) {
                let first = run.first.max(group_first);
                let last = (run.first + run.len).min(group_end);
                if first > cursor {
                    selectors.push(RowSelector::skip((first - cursor) as usize));
                }
                selectors.push(RowSelector::select((last - first) as usize));
                order.push((run.id, last - first));
                cursor = last;
            }
            if time_overlap && !order.is_empty() {
                if group_end > cursor {
                    selectors.push(RowSelector::skip((group_end - cursor) as usize));
                }
                // Most groups hold integer mantissas only: their float column (8 zero bytes
                // a row once decompressed) is not read at all.
                let floats = match scale_leaf.map(|leaf| group.column(leaf).statistics()) {
                    Some(Some(Statistics::Int32(s))) => {
                        s.max_opt().is_none_or(|max| *max == i32::from(FLOAT_SCALE))
                    }
                    _ => true,
                };
                plan.push(GroupRead {
                    index,
                    selectors,
                    order,
                    floats,
                });
            }
            group_first = group_end;
        }
        for reads in plan.chunk_by(|a, b| a.floats == b.floats) {
            self.read_groups(reads, start, end, sink)?;
        }
        Ok(())
    }

    /// Reads the planned rows of consecutive row groups that all have, or all lack, float
    /// rows.
    fn read_groups(
        &self,
        reads: &[GroupRead],
        start: i64,
        end: i64,
        sink: &mut impl FnMut(u32, &[Sample]),
    ) -> Result<()> {
        let Some(first) = reads.first() else {
            return Ok(());
        };
        let names: &[&str] = if first.floats {
            &["timestamp_ms", "value", "value_int", "value_scale"]
        } else {
            &["timestamp_ms", "value_int", "value_scale"]
        };
        let leaves: Vec<usize> = names
            .iter()
            .filter_map(|name| leaf(&self.metadata, &self.path, name).ok())
            .collect();
        let selectors: Vec<RowSelector> = reads
            .iter()
            .flat_map(|r| r.selectors.iter().copied())
            .collect();
        let reader = ParquetRecordBatchReaderBuilder::new_with_metadata(
            self.file.clone(),
            self.metadata.clone(),
        )
        .with_projection(ProjectionMask::leaves(
            self.metadata.parquet_schema(),
            leaves,
        ))
        .with_row_groups(reads.iter().map(|r| r.index).collect())
        .with_row_selection(RowSelection::from(selectors))
        .with_batch_size(64 * 1024)
        .build()?;
        // Which series the next rows belong to: the ranges in order, consumed as rows come.
        let mut order = reads.iter().flat_map(|r| r.order.iter().copied());
        let (mut id, mut left) = (0u32, 0u64);
        let mut samples: Vec<Sample> = Vec::new();
        for batch in reader {
            let batch = batch?;
            SampleColumns::of(&batch, &self.path)?.samples(&self.path, &mut samples)?;
            let mut rest = samples.as_slice();
            while !rest.is_empty() {
                while left == 0 {
                    (id, left) = order.next().ok_or_else(|| StorageError::Corrupt {
                        path: self.path.clone(),
                        reason: "more rows than selected".to_owned(),
                    })?;
                }
                let take = rest.len().min(usize::try_from(left).unwrap_or(usize::MAX));
                let (run, after) = rest.split_at(take);
                left -= take as u64;
                rest = after;
                // A run covers whole checkpoints: its ends may be outside the range.
                let from = run.partition_point(|s| s.timestamp_ms < start);
                let to = run.partition_point(|s| s.timestamp_ms <= end);
                if from < to {
                    sink(id, &run[from..to]);
                }
            }
        }
        Ok(())
    }

    /// [`Self::read`] for a part not sorted by series: every row, filtered by id.
    fn read_unsorted(
        &self,
        ids: &RoaringBitmap,
        start: i64,
        end: i64,
        mut sink: impl FnMut(u32, &[Sample]),
    ) -> Result<()> {
        let file = self.file.clone();
        let reader =
            ParquetRecordBatchReaderBuilder::new_with_metadata(file, self.metadata.clone())
                .with_batch_size(64 * 1024)
                .build()?;
        for batch in reader {
            let batch = batch?;
            let columns = SampleColumns::of(&batch, &self.path)?;
            let series = batch
                .column_by_name("series_id")
                .and_then(|c| c.as_primitive_opt::<UInt32Type>())
                .ok_or_else(|| corrupt_columns(&self.path))?;
            for row in 0..batch.num_rows() {
                let (id, timestamp_ms) = (series.value(row), columns.timestamps.value(row));
                if ids.contains(id) && timestamp_ms >= start && timestamp_ms <= end {
                    sink(id, &[columns.sample(row, &self.path)?]);
                }
            }
        }
        Ok(())
    }
}

fn corrupt_columns(path: &Path) -> StorageError {
    StorageError::Corrupt {
        path: path.to_path_buf(),
        reason: "unexpected columns in a sample part".to_owned(),
    }
}

/// The index of the leaf column `name` of a part.
fn leaf(metadata: &ArrowReaderMetadata, path: &Path, name: &str) -> Result<usize> {
    metadata
        .parquet_schema()
        .columns()
        .iter()
        .position(|c| c.name() == name)
        .ok_or_else(|| StorageError::Corrupt {
            path: path.to_path_buf(),
            reason: format!("a sample part without {name}"),
        })
}

/// A batch's time and value columns.
struct SampleColumns<'a> {
    timestamps: &'a Int64Array,
    /// Not read from row groups without float rows.
    floats: Option<&'a Float64Array>,
    /// Absent from parts written before integer mantissas.
    mantissas: Option<(&'a Int64Array, &'a UInt8Array)>,
}

impl<'a> SampleColumns<'a> {
    fn of(batch: &'a RecordBatch, path: &Path) -> Result<Self> {
        let column = |name: &str| batch.column_by_name(name).map(|c| c.as_any());
        let Some(timestamps) = column("timestamp_ms").and_then(|c| c.downcast_ref::<Int64Array>())
        else {
            return Err(corrupt_columns(path));
        };
        let floats = match column("value") {
            Some(c) => Some(
                c.downcast_ref::<Float64Array>()
                    .ok_or_else(|| corrupt_columns(path))?,
            ),
            None => None,
        };
        let mantissas = match (column("value_int"), column("value_scale")) {
            (Some(m), Some(s)) => Some(
                m.downcast_ref::<Int64Array>()
                    .zip(s.downcast_ref::<UInt8Array>())
                    .ok_or_else(|| corrupt_columns(path))?,
            ),
            (None, None) => None,
            _ => return Err(corrupt_columns(path)),
        };
        Ok(Self {
            timestamps,
            floats,
            mantissas,
        })
    }

    /// Every row of the batch as a sample, into `out` (cleared first). One pass over the
    /// columns rather than a row at a time: scales are checked for the whole batch first,
    /// so the conversion itself has no error path.
    fn samples(&self, path: &Path, out: &mut Vec<Sample>) -> Result<()> {
        out.clear();
        let times = self.timestamps.values();
        let Some((mantissas, scales)) = self.mantissas else {
            let floats = self.floats.ok_or_else(|| corrupt_columns(path))?;
            out.extend(times.iter().zip(floats.values()).map(|(t, v)| Sample {
                timestamp_ms: *t,
                value: *v,
            }));
            return Ok(());
        };
        let scales = scales.values();
        if let Some(bad) = scales
            .iter()
            .find(|s| **s > MAX_SCALE && **s != FLOAT_SCALE)
        {
            return Err(StorageError::Corrupt {
                path: path.to_path_buf(),
                reason: format!("unknown value scale {bad}"),
            });
        }
        match self.floats {
            Some(floats) => out.extend(
                times
                    .iter()
                    .zip(mantissas.values().iter().zip(scales))
                    .zip(floats.values())
                    .map(|((t, (m, s)), v)| Sample {
                        timestamp_ms: *t,
                        value: if *s == FLOAT_SCALE {
                            *v
                        } else {
                            from_mantissa(*m, *s)
                        },
                    }),
            ),
            None => {
                if scales.contains(&FLOAT_SCALE) {
                    return Err(StorageError::Corrupt {
                        path: path.to_path_buf(),
                        reason: "a float row in a row group whose statistics say it has none"
                            .to_owned(),
                    });
                }
                out.extend(times.iter().zip(mantissas.values().iter().zip(scales)).map(
                    |(t, (m, s))| Sample {
                        timestamp_ms: *t,
                        value: from_mantissa(*m, *s),
                    },
                ));
            }
        }
        Ok(())
    }

    fn sample(&self, row: usize, path: &Path) -> Result<Sample> {
        Ok(Sample {
            timestamp_ms: self.timestamps.value(row),
            value: self.value(row, path)?,
        })
    }

    fn value(&self, row: usize, path: &Path) -> Result<f64> {
        Ok(match self.mantissas {
            Some((m, s)) if s.value(row) != FLOAT_SCALE => {
                if s.value(row) > MAX_SCALE {
                    return Err(StorageError::Corrupt {
                        path: path.to_path_buf(),
                        reason: format!("unknown value scale {}", s.value(row)),
                    });
                }
                from_mantissa(m.value(row), s.value(row))
            }
            _ => self
                .floats
                .ok_or_else(|| StorageError::Corrupt {
                    path: path.to_path_buf(),
                    reason: "a float row in a row group whose statistics say it has none"
                        .to_owned(),
                })?
                .value(row),
        })
    }
}

/// The open sample parts, by path: each part is opened once, not per read. Entries go
/// when their part is removed, and the least recently read go beyond [`OPEN_PARTS`] (each
/// holds a file descriptor).
#[derive(Debug, Default)]
pub(crate) struct SamplePartCache {
    parts: std::sync::Mutex<CachedParts>,
}

#[derive(Debug, Default)]
struct CachedParts {
    /// Each part with the tick of its last read.
    parts: std::collections::HashMap<PathBuf, (Arc<SamplePart>, u64)>,
    tick: u64,
}

/// Most parts kept open: well under the usual 1,024 descriptors per process.
const OPEN_PARTS: usize = 256;

impl SamplePartCache {
    pub fn get(&self, path: &Path) -> Result<Arc<SamplePart>> {
        {
            let mut cached = self.lock();
            cached.tick += 1;
            let tick = cached.tick;
            if let Some((part, used)) = cached.parts.get_mut(path) {
                *used = tick;
                return Ok(part.clone());
            }
        }
        // Opened outside the lock: two readers may both open it, and one copy is kept.
        let part = Arc::new(SamplePart::open(path)?);
        let mut cached = self.lock();
        let tick = cached.tick;
        let kept = cached
            .parts
            .entry(path.to_path_buf())
            .or_insert((part, tick))
            .0
            .clone();
        // A compaction may have removed the file while it was being opened, after its
        // `forget`: such a part is read this once and not kept.
        if kept.file.0.metadata().is_ok_and(|m| {
            use std::os::unix::fs::MetadataExt;
            m.nlink() == 0
        }) {
            cached.parts.remove(path);
        }
        while cached.parts.len() > OPEN_PARTS {
            let oldest = cached
                .parts
                .iter()
                .min_by_key(|(_, (_, used))| *used)
                .map(|(path, _)| path.clone());
            match oldest {
                Some(oldest) => cached.parts.remove(&oldest),
                None => break,
            };
        }
        Ok(kept)
    }

    pub fn forget(&self, path: &Path) {
        self.lock().parts.remove(path);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, CachedParts> {
        self.parts.lock().unwrap_or_else(|e| e.into_inner())
    }
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

    /// Series 0..40 with 0 to 96 samples each (series 3 has none), every 1 s; series 36
    /// onwards hold thirds, which only the float column keeps.
    fn many_series() -> Vec<(u32, Sample)> {
        let mut rows = Vec::new();
        for id in (0..40u32).filter(|id| *id != 3) {
            for i in 0..(id * 37 % 97) {
                rows.push((
                    id,
                    Sample {
                        timestamp_ms: i64::from(i) * 1000,
                        value: f64::from(id) + f64::from(i) / if id < 36 { 4.0 } else { 3.0 },
                    },
                ));
            }
        }
        rows
    }

    /// Writes `rows` as a part with small row groups and pages, so that runs cross both.
    fn write_small_part(path: &Path, rows: &[(u32, Sample)]) {
        let properties = WriterProperties::builder()
            .set_max_row_group_row_count(Some(300))
            .set_data_page_row_count_limit(64)
            .set_write_batch_size(64)
            .set_statistics_enabled(EnabledStatistics::Page)
            .build();
        write_durably(path, &samples_batch(rows).unwrap(), properties).unwrap();
    }

    /// `rows` written as a small part in a temporary directory (kept while the part is
    /// read), and the part opened.
    fn small_part(rows: &[(u32, Sample)]) -> (tempfile::TempDir, SamplePart) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("part.parquet");
        write_small_part(&path, rows);
        let part = SamplePart::open(&path).unwrap();
        (dir, part)
    }

    /// What a read must give: `rows` of `ids` within `[start, end]`, in order.
    fn expected(
        rows: &[(u32, Sample)],
        ids: &RoaringBitmap,
        start: i64,
        end: i64,
    ) -> Vec<(u32, Sample)> {
        rows.iter()
            .filter(|(id, s)| ids.contains(*id) && s.timestamp_ms >= start && s.timestamp_ms <= end)
            .copied()
            .collect()
    }

    fn read_all(
        part: &SamplePart,
        ids: &RoaringBitmap,
        start: i64,
        end: i64,
    ) -> Vec<(u32, Sample)> {
        let mut out = Vec::new();
        part.read(ids, start, end, None, |id, run| {
            out.extend(run.iter().map(|s| (id, *s)));
        })
        .unwrap();
        out
    }

    /// Selections to try: everything, sparse, one series at either end, a series with no
    /// rows, ids beyond the part, and runs that cross row groups.
    fn selections() -> Vec<RoaringBitmap> {
        let mut every_seventh = RoaringBitmap::new();
        every_seventh.extend((0..40).step_by(7));
        vec![
            (0..40).collect(),
            every_seventh,
            [0].into_iter().collect(),
            [39].into_iter().collect(),
            [3].into_iter().collect(),
            [3, 500, 501].into_iter().collect(),
            (10..14).collect(),
            RoaringBitmap::new(),
        ]
    }

    #[test]
    fn a_part_read_gives_exactly_the_selected_series_rows_in_range() {
        let rows = many_series();
        let (_dir, part) = small_part(&rows);
        assert!(part.index.is_some(), "a sorted part is indexed by series");
        let groups = part.metadata.metadata().row_groups();
        let with_floats = groups
            .iter()
            .filter(|g| {
                matches!(g.column(4).statistics(), Some(Statistics::Int32(s))
                    if s.max_opt() == Some(&i32::from(FLOAT_SCALE)))
            })
            .count();
        assert!(
            with_floats > 0 && with_floats < groups.len() - 1,
            "{with_floats} of {} row groups have float rows",
            groups.len()
        );
        assert_eq!(part.rows_within(5, i64::MIN, i64::MAX), 5 * 37 % 97);
        assert_eq!(part.rows_within(3, i64::MIN, i64::MAX), 0);
        for ids in selections() {
            for (start, end) in [
                (i64::MIN, i64::MAX),
                (10_000, 20_000),
                (0, 0),
                (95_000, 99_000),
                (200_000, 300_000),
            ] {
                assert_eq!(
                    read_all(&part, &ids, start, end),
                    expected(&rows, &ids, start, end),
                    "ids {ids:?}, range {start}..={end}"
                );
            }
        }
    }

    #[test]
    fn a_part_not_sorted_by_series_is_read_row_by_row() {
        let mut rows = many_series();
        // Series 20 onwards first: the part is no longer sorted by series.
        let split = rows.iter().position(|(id, _)| *id == 20).unwrap();
        rows.rotate_left(split);
        let (_dir, part) = small_part(&rows);
        assert!(part.index.is_none());
        for ids in selections() {
            assert_eq!(
                read_all(&part, &ids, 10_000, 50_000),
                expected(&rows, &ids, 10_000, 50_000),
                "ids {ids:?}"
            );
        }
    }

    #[test]
    fn a_time_range_reads_only_the_checkpoints_around_it() {
        // Three series of 3,000 samples 15 s apart, one with a gap in the middle.
        let mut rows = Vec::new();
        for id in [1u32, 2, 4] {
            for i in (0..3000i64).filter(|i| id != 2 || !(1000..2000).contains(i)) {
                rows.push((
                    id,
                    Sample {
                        timestamp_ms: i * 15_000,
                        value: i as f64,
                    },
                ));
            }
        }
        let (_dir, part) = small_part(&rows);
        let ids: RoaringBitmap = [1, 2, 4].into_iter().collect();
        let t = |i: i64| i * 15_000;
        for (start, end) in [
            (t(0), t(0)),
            (t(255), t(256)),
            (t(1000), t(1099)),
            (t(1200), t(1800)),
            (t(2999), t(2999)),
            (t(1000) + 1, t(1001) - 1),
            (t(-5), t(3)),
            (t(2990), t(4000)),
        ] {
            assert_eq!(
                read_all(&part, &ids, start, end),
                expected(&rows, &ids, start, end),
                "range {start}..={end}"
            );
            for id in [1, 2, 4] {
                let exact = rows
                    .iter()
                    .filter(|(i, s)| *i == id && s.timestamp_ms >= start && s.timestamp_ms <= end)
                    .count() as u64;
                let within = part.rows_within(id, start, end);
                assert!(
                    within >= exact && within <= exact + 2 * CHECKPOINT_ROWS,
                    "series {id}, range {start}..={end}: {within} rows for {exact}"
                );
            }
        }
        // An hour of a series is read from a checkpoint or two, not from all its rows.
        assert!(part.rows_within(1, t(1200), t(1440)) <= 241 + 2 * CHECKPOINT_ROWS);
        assert!(part.rows_within(2, t(1200), t(1800)) <= CHECKPOINT_ROWS);
    }

    #[test]
    fn reads_through_the_block_cache_give_what_reads_without_it_give() {
        // Three series of 3,000 samples, one with a gap; a budget of a few blocks, so
        // that reads find some blocks kept, decode others, and evict.
        let mut rows = Vec::new();
        for id in [1u32, 2, 4] {
            for i in (0..3000i64).filter(|i| id != 2 || !(1000..2000).contains(i)) {
                let value = if i % 500 == 7 {
                    f64::NAN
                } else {
                    i as f64 / 4.0
                };
                rows.push((
                    id,
                    Sample {
                        timestamp_ms: i * 15_000,
                        value,
                    },
                ));
            }
        }
        let (_dir, part) = small_part(&rows);
        let block_bytes = (CHECKPOINT_ROWS as usize * std::mem::size_of::<Sample>() + 64) as u64;
        let cache = DecodedBlocks::new(6 * block_bytes);
        let t = |i: i64| i * 15_000;
        let ranges = [
            (t(2700), t(2999)),
            (t(2500), t(2999)),
            (t(2700), t(2999)),
            (t(0), t(2999)),
            (t(1000) + 1, t(1001) - 1),
            (t(255), t(256)),
            (t(2990), t(4000)),
            (t(-5), t(3)),
        ];
        let same = |a: &[(u32, Sample)], b: &[(u32, Sample)]| {
            a.len() == b.len()
                && a.iter().zip(b).all(|(x, y)| {
                    x.0 == y.0
                        && x.1.timestamp_ms == y.1.timestamp_ms
                        && x.1.value.to_bits() == y.1.value.to_bits()
                })
        };
        for ids in selections()
            .into_iter()
            .chain([[1u32, 2, 4].into_iter().collect()])
        {
            for (start, end) in ranges {
                let mut through = Vec::new();
                part.read(&ids, start, end, Some(&cache), |id, run| {
                    through.extend(run.iter().map(|s| (id, *s)));
                })
                .unwrap();
                assert!(
                    same(&through, &read_all(&part, &ids, start, end)),
                    "{ids:?} {start}..={end}"
                );
                assert!(cache.bytes() <= 6 * block_bytes);
            }
        }
        // A repeated read is served from the cache: what it holds does not change.
        let ids: RoaringBitmap = [1].into_iter().collect();
        let mut first = Vec::new();
        part.read(&ids, t(2900), t(2999), Some(&cache), |_, run| {
            first.extend_from_slice(run)
        })
        .unwrap();
        let held = cache.bytes();
        let mut again = Vec::new();
        part.read(&ids, t(2900), t(2999), Some(&cache), |_, run| {
            again.extend_from_slice(run)
        })
        .unwrap();
        assert_eq!(first.len(), 100);
        assert_eq!(first, again);
        assert_eq!(cache.bytes(), held);
    }

    #[test]
    fn a_series_out_of_time_order_is_read_row_by_row() {
        let mut rows = many_series();
        let at = rows.iter().position(|(id, _)| *id == 9).unwrap();
        rows.swap(at, at + 1);
        let (_dir, part) = small_part(&rows);
        assert!(part.index.is_none());
        let ids: RoaringBitmap = (5..12).collect();
        assert_eq!(
            read_all(&part, &ids, 0, 30_000),
            expected(&rows, &ids, 0, 30_000)
        );
    }

    #[test]
    fn threads_reading_one_part_each_get_their_own_rows() {
        let rows = many_series();
        let (_dir, part) = small_part(&rows);
        let halves: [RoaringBitmap; 2] = [(0..20).collect(), (20..40).collect()];
        std::thread::scope(|scope| {
            for ids in &halves {
                let (part, rows) = (&part, &rows);
                scope.spawn(move || {
                    for _ in 0..50 {
                        assert_eq!(
                            read_all(part, ids, i64::MIN, i64::MAX),
                            expected(rows, ids, i64::MIN, i64::MAX)
                        );
                    }
                });
            }
        });
    }

    #[test]
    fn the_part_cache_keeps_at_most_its_limit_dropping_the_least_recently_read() {
        let dir = tempfile::tempdir().unwrap();
        let first = dir.path().join("part-0.parquet");
        write_small_part(&first, &many_series());
        let paths: Vec<PathBuf> = (0..=OPEN_PARTS)
            .map(|i| {
                let path = dir.path().join(format!("part-{i}.parquet"));
                if i > 0 {
                    fs::copy(&first, &path).unwrap();
                }
                path
            })
            .collect();
        let cache = SamplePartCache::default();
        cache.get(&paths[0]).unwrap();
        cache.get(&paths[1]).unwrap();
        cache.get(&paths[0]).unwrap(); // part 1 is now the least recently read
        for path in &paths[2..] {
            cache.get(path).unwrap();
        }
        let cached = cache.lock();
        assert_eq!(cached.parts.len(), OPEN_PARTS);
        assert!(cached.parts.contains_key(&paths[0]));
        assert!(!cached.parts.contains_key(&paths[1]));
    }
}
