//! Samples of one tenant not yet in a part: Arrow columns in arrival order.
//!
//! Rows are `(series_id, timestamp_ms, value)`, the `samples` table's own schema, kept in
//! chunks of [`CHUNK_ROWS`]: a full chunk is an Arrow `RecordBatch` that SQL reads as it is
//! (no copy), and the chunk being filled is three vectors that become Arrow buffers without
//! a copy when it is full. Appending a sample is three pushes onto the end of vectors, in
//! arrival order, which is what ingest's speed needs.
//!
//! Reads by series (`Storage::select`, the PromQL engine's path) must not scan the head:
//! each row also records the previous row of its series, and the head keeps each series'
//! last row, so a series' samples are a walk back along its chain.

use std::collections::HashMap;
use std::sync::Arc;

use datafusion::arrow::array::{Float64Array, Int64Array, RecordBatch, UInt32Array};
use model::Sample;

use super::parts::samples_schema;
use crate::Result;

/// Rows per chunk: a full chunk is one record batch.
pub(super) const CHUNK_ROWS: usize = 64 * 1024;

/// No row: the end of a series' chain.
const NO_ROW: u32 = u32::MAX;

/// A full chunk: the columns of a record batch (cloning one shares its buffers).
#[derive(Debug)]
struct Chunk {
    ids: UInt32Array,
    timestamps: Int64Array,
    values: Float64Array,
    /// Per row, the previous row of the same series in the head, or [`NO_ROW`].
    previous: Vec<u32>,
}

impl Chunk {
    fn batch(&self) -> Result<RecordBatch> {
        Ok(RecordBatch::try_new(
            samples_schema(),
            vec![
                Arc::new(self.ids.clone()),
                Arc::new(self.timestamps.clone()),
                Arc::new(self.values.clone()),
            ],
        )?)
    }
}

/// The chunk being filled.
#[derive(Debug, Default)]
struct Filling {
    ids: Vec<u32>,
    timestamps: Vec<i64>,
    values: Vec<f64>,
    previous: Vec<u32>,
}

impl Filling {
    /// A chunk with room for [`CHUNK_ROWS`]: filling it never reallocates.
    fn new() -> Self {
        Self {
            ids: Vec::with_capacity(CHUNK_ROWS),
            timestamps: Vec::with_capacity(CHUNK_ROWS),
            values: Vec::with_capacity(CHUNK_ROWS),
            previous: Vec::with_capacity(CHUNK_ROWS),
        }
    }
}

impl From<Filling> for Chunk {
    /// The vectors become the arrays' buffers, uncopied.
    fn from(filling: Filling) -> Self {
        Self {
            ids: UInt32Array::from(filling.ids),
            timestamps: Int64Array::from(filling.timestamps),
            values: Float64Array::from(filling.values),
            previous: filling.previous,
        }
    }
}

/// See the module doc. Row numbers are global across chunks (`u32`: a head is flushed long
/// before four billion samples).
#[derive(Debug, Default)]
pub(super) struct SampleHead {
    full: Vec<Chunk>,
    filling: Filling,
    /// Per series: its last row in this head.
    last_row: HashMap<u32, u32>,
}

impl SampleHead {
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Samples held.
    pub fn len(&self) -> usize {
        self.full.len() * CHUNK_ROWS + self.filling.ids.len()
    }

    /// Appends `samples` of the series `id`, in order.
    pub fn extend(&mut self, id: u32, samples: impl IntoIterator<Item = Sample>) {
        let Self {
            full,
            filling,
            last_row,
        } = self;
        let last = last_row.entry(id).or_insert(NO_ROW);
        let first_row = (full.len() * CHUNK_ROWS + filling.ids.len()) as u32;
        for (row, sample) in (first_row..).zip(samples) {
            if filling.ids.len() == CHUNK_ROWS {
                full.push(Chunk::from(std::mem::replace(filling, Filling::new())));
            }
            filling.ids.push(id);
            filling.timestamps.push(sample.timestamp_ms);
            filling.values.push(sample.value);
            filling.previous.push(*last);
            *last = row;
        }
    }

    /// The sample at `row` and the previous row of its series.
    fn row(&self, row: u32) -> (Sample, u32) {
        let (chunk, offset) = (row as usize / CHUNK_ROWS, row as usize % CHUNK_ROWS);
        match self.full.get(chunk) {
            Some(chunk) => {
                let sample = Sample {
                    timestamp_ms: chunk.timestamps.value(offset),
                    value: chunk.values.value(offset),
                };
                (sample, chunk.previous[offset])
            }
            None => {
                let filling = &self.filling;
                let sample = Sample {
                    timestamp_ms: filling.timestamps[offset],
                    value: filling.values[offset],
                };
                (sample, filling.previous[offset])
            }
        }
    }

    /// The samples of the series `id`, in the order they were written.
    pub fn samples_of(&self, id: u32) -> Vec<Sample> {
        let mut samples = Vec::new();
        let mut row = self.last_row.get(&id).copied().unwrap_or(NO_ROW);
        while row != NO_ROW {
            let (sample, previous) = self.row(row);
            samples.push(sample);
            row = previous;
        }
        samples.reverse();
        samples
    }

    /// Every row, in the order written.
    pub fn for_each(&self, mut visit: impl FnMut(u32, Sample)) {
        for chunk in &self.full {
            for ((id, timestamp_ms), value) in chunk
                .ids
                .values()
                .iter()
                .zip(chunk.timestamps.values())
                .zip(chunk.values.values())
            {
                visit(
                    *id,
                    Sample {
                        timestamp_ms: *timestamp_ms,
                        value: *value,
                    },
                );
            }
        }
        let filling = &self.filling;
        for ((id, timestamp_ms), value) in filling
            .ids
            .iter()
            .zip(&filling.timestamps)
            .zip(&filling.values)
        {
            visit(
                *id,
                Sample {
                    timestamp_ms: *timestamp_ms,
                    value: *value,
                },
            );
        }
    }

    /// The head as record batches of the `samples` schema: the full chunks as they are,
    /// and a copy of the one being filled.
    pub fn batches(&self) -> Result<Vec<RecordBatch>> {
        let mut batches = self
            .full
            .iter()
            .map(Chunk::batch)
            .collect::<Result<Vec<_>>>()?;
        let filling = &self.filling;
        if !filling.ids.is_empty() {
            batches.push(RecordBatch::try_new(
                samples_schema(),
                vec![
                    Arc::new(UInt32Array::from(filling.ids.clone())),
                    Arc::new(Int64Array::from(filling.timestamps.clone())),
                    Arc::new(Float64Array::from(filling.values.clone())),
                ],
            )?);
        }
        Ok(batches)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn sample(timestamp_ms: i64, value: f64) -> Sample {
        Sample {
            timestamp_ms,
            value,
        }
    }

    #[test]
    fn series_chains_cross_chunks_and_batches_hold_every_row_in_order() {
        let mut head = SampleHead::default();
        // Three series interleaved over two and a half chunks.
        let rows = CHUNK_ROWS * 5 / 2;
        for i in 0..rows {
            let id = (i % 3) as u32 + 7;
            head.extend(id, [sample(i as i64, i as f64 / 2.0)]);
        }
        head.extend(9, [sample(-1, f64::NAN), sample(-2, -0.0)]);
        assert_eq!(head.len(), rows + 2);

        let of_8 = head.samples_of(8);
        let expected: Vec<i64> = (0..rows).filter(|i| i % 3 == 1).map(|i| i as i64).collect();
        assert_eq!(
            of_8.iter().map(|s| s.timestamp_ms).collect::<Vec<_>>(),
            expected
        );
        assert!(of_8.iter().all(|s| s.value == s.timestamp_ms as f64 / 2.0));
        let of_9 = head.samples_of(9);
        let tail: Vec<i64> = of_9[of_9.len() - 2..]
            .iter()
            .map(|s| s.timestamp_ms)
            .collect();
        assert_eq!(tail, [-1, -2], "arrival order, not time order");
        assert!(of_9[of_9.len() - 2].value.is_nan());
        assert!(head.samples_of(1).is_empty());

        let batches = head.batches().unwrap();
        assert_eq!(batches.len(), 3);
        assert_eq!(batches[0].num_rows(), CHUNK_ROWS);
        assert_eq!(
            batches.iter().map(|b| b.num_rows()).sum::<usize>(),
            rows + 2
        );
        let mut seen = Vec::new();
        head.for_each(|id, s| seen.push((id, s.timestamp_ms)));
        assert_eq!(seen.len(), rows + 2);
        assert_eq!(
            seen[CHUNK_ROWS],
            ((CHUNK_ROWS % 3) as u32 + 7, CHUNK_ROWS as i64)
        );
        assert_eq!(seen.last(), Some(&(9, -2)));
    }
}
