//! Native histogram samples in the embedded store: the `histograms` row table.
//!
//! A histogram sample is a row (series, time, schema, zero bucket, count, sum, counter-reset
//! hint, and each side's buckets as a list of indexes with a list of counts), so it is
//! flushed per day, compacted, dropped by retention and queried with SQL as the other row
//! tables are (see `rows`). Unlike theirs, its rows are also read by series for PromQL:
//! flushes and compactions write parts sorted by series and time, and a read filters on
//! those two columns before it decodes any bucket.
//!
//! Counts are floats (`FloatHistogram`, what PromQL computes with): integer counts stay
//! exact below 2^53.

use std::collections::HashMap;
use std::fs::File;
use std::path::Path;
use std::sync::Arc;

use datafusion::arrow::array::{
    ArrayRef, AsArray, BooleanArray, Float64Array, Float64Builder, Int32Array, Int32Builder,
    Int64Array, ListArray, ListBuilder, RecordBatch, StringArray, UInt32Array,
};
use datafusion::arrow::compute::{SortColumn, lexsort_to_indices, take_record_batch};
use datafusion::arrow::datatypes::{DataType, Field, Float64Type, Int32Type};
use datafusion::parquet::arrow::ProjectionMask;
use datafusion::parquet::arrow::arrow_reader::{
    ArrowPredicateFn, ParquetRecordBatchReaderBuilder, RowFilter,
};
use model::{FloatHistogram, ResetHint};
use roaring::RoaringBitmap;

use super::parts::day_of;
use super::rows::{DayRows, RowKind};
use crate::{HistogramSample, Result, StorageError};

/// The table's columns.
pub(crate) fn fields() -> Vec<Field> {
    let list = |name: &str, item: DataType| {
        Field::new(name, DataType::List(Arc::new(item_field(item))), false)
    };
    vec![
        Field::new("series_id", DataType::UInt32, false),
        Field::new("timestamp_ms", DataType::Int64, false),
        Field::new("schema", DataType::Int32, false),
        Field::new("zero_threshold", DataType::Float64, false),
        Field::new("zero_count", DataType::Float64, false),
        Field::new("count", DataType::Float64, false),
        Field::new("sum", DataType::Float64, false),
        Field::new("counter_reset", DataType::Utf8, false),
        list("positive_indexes", DataType::Int32),
        list("positive_counts", DataType::Float64),
        list("negative_indexes", DataType::Int32),
        list("negative_counts", DataType::Float64),
    ]
}

/// The element of a bucket list column.
pub(crate) fn item_field(item: DataType) -> Field {
    Field::new("item", item, false)
}

/// One histogram sample of one series.
#[derive(Clone, Debug)]
pub(crate) struct HistogramRow {
    pub series_id: u32,
    pub timestamp_ms: i64,
    pub histogram: FloatHistogram,
}

/// Rows as one batch per day.
pub(crate) fn day_rows(rows: Vec<HistogramRow>) -> Result<Vec<DayRows>> {
    let mut days: std::collections::BTreeMap<i64, Vec<HistogramRow>> = Default::default();
    for row in rows {
        days.entry(day_of(row.timestamp_ms)).or_default().push(row);
    }
    days.into_iter()
        .map(|(day, rows)| {
            Ok(DayRows {
                day,
                batch: batch(&rows)?,
            })
        })
        .collect()
}

fn batch(rows: &[HistogramRow]) -> Result<RecordBatch> {
    let floats = |f: fn(&FloatHistogram) -> f64| -> ArrayRef {
        Arc::new(Float64Array::from_iter_values(
            rows.iter().map(|r| f(&r.histogram)),
        ))
    };
    let indexes = |side: fn(&FloatHistogram) -> &Vec<(i32, f64)>| -> ArrayRef {
        let mut builder =
            ListBuilder::new(Int32Builder::new()).with_field(item_field(DataType::Int32));
        for row in rows {
            builder.append_value(side(&row.histogram).iter().map(|(i, _)| Some(*i)));
        }
        Arc::new(builder.finish())
    };
    let counts = |side: fn(&FloatHistogram) -> &Vec<(i32, f64)>| -> ArrayRef {
        let mut builder =
            ListBuilder::new(Float64Builder::new()).with_field(item_field(DataType::Float64));
        for row in rows {
            builder.append_value(side(&row.histogram).iter().map(|(_, c)| Some(*c)));
        }
        Arc::new(builder.finish())
    };
    let columns: Vec<ArrayRef> = vec![
        Arc::new(UInt32Array::from_iter_values(
            rows.iter().map(|r| r.series_id),
        )),
        Arc::new(Int64Array::from_iter_values(
            rows.iter().map(|r| r.timestamp_ms),
        )),
        Arc::new(Int32Array::from_iter_values(
            rows.iter().map(|r| r.histogram.schema),
        )),
        floats(|h| h.zero_threshold),
        floats(|h| h.zero_count),
        floats(|h| h.count),
        floats(|h| h.sum),
        Arc::new(StringArray::from_iter_values(
            rows.iter().map(|r| r.histogram.counter_reset.name()),
        )),
        indexes(|h| &h.positive),
        counts(|h| &h.positive),
        indexes(|h| &h.negative),
        counts(|h| &h.negative),
    ];
    Ok(RecordBatch::try_new(RowKind::Histograms.schema(), columns)?)
}

/// `batch` sorted by series, then time (stable: of equal keys the later row stays later).
pub(crate) fn sorted(batch: RecordBatch) -> Result<RecordBatch> {
    let indices = lexsort_to_indices(
        &[
            SortColumn {
                values: batch.column(0).clone(),
                options: None,
            },
            SortColumn {
                values: batch.column(1).clone(),
                options: None,
            },
        ],
        None,
    )?;
    Ok(take_record_batch(&batch, &indices)?)
}

/// The dedup key of row `row`: its series and time.
pub(crate) fn key(batch: &RecordBatch, row: usize) -> (u32, i64) {
    let series = batch
        .column(0)
        .as_primitive_opt::<datafusion::arrow::datatypes::UInt32Type>();
    let time = batch
        .column(1)
        .as_primitive_opt::<datafusion::arrow::datatypes::Int64Type>();
    (
        series.map_or(0, |a| a.value(row)),
        time.map_or(0, |a| a.value(row)),
    )
}

fn corrupt(what: &str) -> StorageError {
    StorageError::Decode(format!(
        "histograms: column {what} does not have the type this build writes"
    ))
}

/// Calls `out` with each row of `batch` whose series is in `ids` and whose time is in
/// `[start_ms, end_ms]`, in row order.
pub(crate) fn decode(
    batch: &RecordBatch,
    ids: &RoaringBitmap,
    start_ms: i64,
    end_ms: i64,
    out: &mut impl FnMut(u32, HistogramSample),
) -> Result<()> {
    let primitive = |i: usize| batch.column(i);
    let series = primitive(0)
        .as_primitive_opt::<datafusion::arrow::datatypes::UInt32Type>()
        .ok_or_else(|| corrupt("series_id"))?;
    let times = primitive(1)
        .as_primitive_opt::<datafusion::arrow::datatypes::Int64Type>()
        .ok_or_else(|| corrupt("timestamp_ms"))?;
    let schemas = primitive(2)
        .as_primitive_opt::<Int32Type>()
        .ok_or_else(|| corrupt("schema"))?;
    let float = |i: usize, name: &str| {
        primitive(i)
            .as_primitive_opt::<Float64Type>()
            .ok_or_else(|| corrupt(name))
    };
    let (zero_thresholds, zero_counts, counts, sums) = (
        float(3, "zero_threshold")?,
        float(4, "zero_count")?,
        float(5, "count")?,
        float(6, "sum")?,
    );
    let hints = primitive(7)
        .as_string_opt::<i32>()
        .ok_or_else(|| corrupt("counter_reset"))?;
    let list = |i: usize, name: &str| -> Result<&ListArray> {
        primitive(i)
            .as_list_opt::<i32>()
            .ok_or_else(|| corrupt(name))
    };
    let sides = [
        (list(8, "positive_indexes")?, list(9, "positive_counts")?),
        (list(10, "negative_indexes")?, list(11, "negative_counts")?),
    ];
    for row in 0..batch.num_rows() {
        let (id, time) = (series.value(row), times.value(row));
        if time < start_ms || time > end_ms || !ids.contains(id) {
            continue;
        }
        let mut buckets = [Vec::new(), Vec::new()];
        for ((indexes, counts), side) in sides.iter().zip(buckets.iter_mut()) {
            let index_values = indexes.value(row);
            let count_values = counts.value(row);
            let index_values = index_values
                .as_primitive_opt::<Int32Type>()
                .ok_or_else(|| corrupt("bucket indexes"))?;
            let count_values = count_values
                .as_primitive_opt::<Float64Type>()
                .ok_or_else(|| corrupt("bucket counts"))?;
            if index_values.len() != count_values.len() {
                return Err(StorageError::Decode(format!(
                    "histograms: series {id} at {time} has {} bucket indexes and {} counts",
                    index_values.len(),
                    count_values.len()
                )));
            }
            *side = index_values
                .values()
                .iter()
                .copied()
                .zip(count_values.values().iter().copied())
                .collect();
        }
        let [positive, negative] = buckets;
        out(
            id,
            HistogramSample {
                timestamp_ms: time,
                histogram: FloatHistogram {
                    counter_reset: ResetHint::from_name(hints.value(row)),
                    schema: schemas.value(row),
                    zero_threshold: zero_thresholds.value(row),
                    zero_count: zero_counts.value(row),
                    count: counts.value(row),
                    sum: sums.value(row),
                    positive,
                    negative,
                },
            },
        );
    }
    Ok(())
}

/// Reads the rows of a part whose series is in `ids` and time in `[start_ms, end_ms]`:
/// the series and time columns are read for every row, the rest only for those kept.
pub(crate) fn read_part(
    path: &Path,
    ids: &RoaringBitmap,
    start_ms: i64,
    end_ms: i64,
    out: &mut impl FnMut(u32, HistogramSample),
) -> Result<()> {
    let file = File::open(path).map_err(|e| StorageError::io("opening part", path, e))?;
    let builder = ParquetRecordBatchReaderBuilder::try_new(file)?;
    let key_columns = ProjectionMask::roots(builder.parquet_schema(), [0, 1]);
    let wanted = ids.clone();
    let predicate = ArrowPredicateFn::new(key_columns, move |batch: RecordBatch| {
        let series = batch
            .column(0)
            .as_primitive_opt::<datafusion::arrow::datatypes::UInt32Type>();
        let times = batch
            .column(1)
            .as_primitive_opt::<datafusion::arrow::datatypes::Int64Type>();
        let keep: BooleanArray = match (series, times) {
            (Some(series), Some(times)) => series
                .values()
                .iter()
                .zip(times.values())
                .map(|(id, t)| Some(*t >= start_ms && *t <= end_ms && wanted.contains(*id)))
                .collect(),
            // Not this build's layout: keep every row, and let decoding say what is wrong.
            _ => std::iter::repeat_n(Some(true), batch.num_rows()).collect(),
        };
        Ok(keep)
    });
    let reader = builder
        .with_row_filter(RowFilter::new(vec![Box::new(predicate)]))
        .build()?;
    for batch in reader {
        decode(&batch?, ids, start_ms, end_ms, out)?;
    }
    Ok(())
}

/// Samples gathered per series from sources oldest first, sorted by time with the last
/// written of equal times kept.
pub(crate) fn settle(
    mut by_series: HashMap<u32, Vec<HistogramSample>>,
) -> HashMap<u32, Vec<HistogramSample>> {
    for samples in by_series.values_mut() {
        samples.sort_by_key(|s| s.timestamp_ms); // stable: later writes stay later
        let mut kept: Vec<HistogramSample> = Vec::with_capacity(samples.len());
        for sample in samples.drain(..) {
            match kept.last_mut() {
                Some(last) if last.timestamp_ms == sample.timestamp_ms => *last = sample,
                _ => kept.push(sample),
            }
        }
        *samples = kept;
    }
    by_series
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn sample(id: u32, t: i64, count: f64) -> HistogramRow {
        HistogramRow {
            series_id: id,
            timestamp_ms: t,
            histogram: FloatHistogram {
                counter_reset: ResetHint::Gauge,
                schema: -2,
                zero_threshold: 0.25,
                zero_count: 1.0,
                count,
                sum: f64::from_bits(model::STALE_NAN_BITS),
                positive: vec![(-3, 0.0), (4, count - 1.0)],
                negative: if id.is_multiple_of(2) {
                    vec![(1, 0.5)]
                } else {
                    vec![]
                },
            },
        }
    }

    #[test]
    fn rows_survive_a_part_and_a_read_filters_by_series_and_time() {
        let rows: Vec<HistogramRow> = (0..50)
            .flat_map(|id| (0..20).map(move |i| sample(id, 1_000 * i, i as f64 + 1.0)))
            .collect();
        let batch = sorted(batch(&rows).unwrap()).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("h.parquet");
        super::super::parts::write_rows(&path, &batch).unwrap();

        let ids: RoaringBitmap = [3u32, 4, 49].into_iter().collect();
        let mut got: Vec<(u32, HistogramSample)> = Vec::new();
        read_part(&path, &ids, 5_000, 7_000, &mut |id, s| got.push((id, s))).unwrap();
        let keys: Vec<(u32, i64)> = got.iter().map(|(id, s)| (*id, s.timestamp_ms)).collect();
        let want: Vec<(u32, i64)> = [3, 4, 49]
            .into_iter()
            .flat_map(|id| [(id, 5_000), (id, 6_000), (id, 7_000)])
            .collect();
        assert_eq!(keys, want);
        // Every field comes back as written, the stale sum bit for bit.
        let (id, first) = &got[3];
        let expected = sample(*id, first.timestamp_ms, 6.0).histogram;
        assert_eq!(first.histogram.positive, expected.positive);
        assert_eq!(first.histogram.negative, expected.negative);
        assert_eq!(first.histogram.counter_reset, ResetHint::Gauge);
        assert_eq!(first.histogram.sum.to_bits(), model::STALE_NAN_BITS);
        assert_eq!(
            (
                first.histogram.schema,
                first.histogram.zero_threshold,
                first.histogram.count
            ),
            (-2, 0.25, 6.0)
        );
    }

    #[test]
    fn settling_sorts_by_time_and_keeps_the_last_write() {
        let s = |t: i64, count: f64| HistogramSample {
            timestamp_ms: t,
            histogram: FloatHistogram {
                count,
                ..FloatHistogram::default()
            },
        };
        let settled = settle(HashMap::from([(7, vec![s(2, 1.0), s(1, 1.0), s(2, 9.0)])]));
        let got: Vec<(i64, f64)> = settled[&7]
            .iter()
            .map(|s| (s.timestamp_ms, s.histogram.count))
            .collect();
        assert_eq!(got, vec![(1, 1.0), (2, 9.0)]);
    }
}
