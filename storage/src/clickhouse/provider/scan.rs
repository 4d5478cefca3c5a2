//! One scan: one ClickHouse query over HTTP, its `RowBinary` response decoded into record
//! batches as it streams in.

use std::sync::{Arc, Mutex};

use clickhouse::Client;
use datafusion::arrow::array::{
    Float64Array, Int64Array, RecordBatch, RecordBatchOptions, UInt64Array,
};
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::error::ArrowError;
use datafusion::error::DataFusionError;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_plan::stream::RecordBatchReceiverStreamBuilder;
use datafusion::physical_plan::streaming::PartitionStream;
use tokio::sync::mpsc::Sender;

use super::decode::{Decoder, Values};
use super::tables::Wire;
use crate::StorageError;
use crate::clickhouse::{ch_error, lock};

/// What a scan asked of ClickHouse and what came back: for tests and diagnostics (18.16
/// keeps no query log by default).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Scan {
    /// The SQL sent (the format, `RowBinary`, goes as the `default_format` parameter).
    pub sql: String,
    /// Rows ClickHouse sent, before the store collapsed sample versions.
    pub rows_received: u64,
}

/// Where a table keeps its last scan.
pub(super) type ScanLog = Arc<Mutex<Option<Scan>>>;

/// What the response holds and how it becomes batches.
#[derive(Clone, Debug)]
pub(super) enum Shape {
    /// The projected columns, as they are.
    Rows(Vec<Wire>),
    /// `fingerprint, timestamp_ms, value, version` sorted by those; the last version of each
    /// (series, timestamp) is kept, then the projection (indices into `samples`) applies.
    Samples { projection: Vec<usize> },
    /// One `count()`: as many rows of no columns.
    Count,
}

/// A scan ready to run: `StreamingTableExec` runs it once per execution.
#[derive(Clone, Debug)]
pub(super) struct Query {
    pub client: Client,
    pub sql: String,
    pub shape: Shape,
    /// The schema of the batches (the projected one).
    pub schema: SchemaRef,
    /// The full `samples` schema, for [`Shape::Samples`].
    pub samples_schema: SchemaRef,
    pub limit: Option<usize>,
    pub log: ScanLog,
}

impl PartitionStream for Query {
    fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    fn execute(&self, context: Arc<TaskContext>) -> SendableRecordBatchStream {
        let mut builder = RecordBatchReceiverStreamBuilder::new(self.schema.clone(), 2);
        let run = Run {
            query: self.clone(),
            batch_size: context.session_config().batch_size().max(1),
            tx: builder.tx(),
        };
        builder.spawn(async move {
            run.run()
                .await
                .map_err(|error| DataFusionError::External(Box::new(error)))
        });
        builder.build()
    }
}

/// Why a scan ended early.
enum Failure {
    /// The receiving end went away (the query was cancelled or had enough): not an error.
    Stopped,
    Error(StorageError),
}

impl From<StorageError> for Failure {
    fn from(error: StorageError) -> Self {
        Self::Error(error)
    }
}

impl From<ArrowError> for Failure {
    fn from(error: ArrowError) -> Self {
        Self::Error(StorageError::Decode(error.to_string()))
    }
}

/// One execution of a [`Query`].
struct Run {
    query: Query,
    batch_size: usize,
    tx: Sender<datafusion::error::Result<RecordBatch>>,
}

impl Run {
    async fn run(self) -> crate::Result<()> {
        *lock(&self.query.log) = Some(Scan {
            sql: self.query.sql.clone(),
            rows_received: 0,
        });
        match self.stream().await {
            Ok(()) | Err(Failure::Stopped) => Ok(()),
            Err(Failure::Error(error)) => Err(error),
        }
    }

    async fn send(&self, batch: RecordBatch) -> Result<(), Failure> {
        self.tx.send(Ok(batch)).await.map_err(|_| Failure::Stopped)
    }

    fn received(&self, rows: usize) {
        if let Some(scan) = lock(&self.query.log).as_mut() {
            scan.rows_received += rows as u64;
        }
    }

    async fn stream(&self) -> Result<(), Failure> {
        let mut cursor = self
            .query
            .client
            .query_raw(&self.query.sql)
            .fetch_bytes("RowBinary")
            .map_err(|e| ch_error("querying", e))?;
        let wires = match &self.query.shape {
            Shape::Rows(wires) => wires.clone(),
            Shape::Samples { .. } => vec![Wire::UInt64, Wire::Int64, Wire::Float64, Wire::UInt64],
            Shape::Count => {
                let bytes = cursor
                    .collect()
                    .await
                    .map_err(|e| ch_error("reading from", e))?;
                let count: [u8; 8] = bytes.as_ref().try_into().map_err(|_| {
                    StorageError::Decode(format!(
                        "ClickHouse answered a count with {} bytes",
                        bytes.len()
                    ))
                })?;
                self.received(1);
                return self.empty_rows(u64::from_le_bytes(count)).await;
            }
        };
        let mut decoder = Decoder::new(wires);
        let mut collapse = Collapse::default();
        let mut sent = 0usize;
        let mut pending: Vec<u8> = Vec::new();
        let mut finished = false;
        while !finished {
            match cursor
                .next()
                .await
                .map_err(|e| ch_error("reading from", e))?
            {
                Some(chunk) => pending.extend_from_slice(&chunk),
                None => finished = true,
            }
            loop {
                let room = self.batch_size - decoder.rows();
                let used = decoder.decode(&pending, room)?;
                pending.drain(..used);
                let full = decoder.rows() == self.batch_size;
                if !full && !finished {
                    break; // wait for more bytes
                }
                let last = finished && !full;
                self.received(decoder.rows());
                let room = self.query.limit.map_or(usize::MAX, |limit| limit - sent);
                let columns = decoder.take();
                sent += match &self.query.shape {
                    Shape::Samples { projection } => {
                        self.emit_samples(columns, projection, &mut collapse, last, room)
                            .await?
                    }
                    Shape::Rows(_) | Shape::Count => self.emit_rows(columns).await?,
                };
                if self.query.limit.is_some_and(|limit| sent >= limit) {
                    return Ok(()); // dropping the cursor ends the response
                }
                if last {
                    break;
                }
            }
        }
        if !pending.is_empty() {
            return Err(StorageError::Decode(format!(
                "ClickHouse's response ended inside a row ({} bytes left over)",
                pending.len()
            ))
            .into());
        }
        Ok(())
    }

    /// `count` rows of no columns (at most the limit): what a scan projecting nothing, as
    /// `count(*)` does, needs.
    async fn empty_rows(&self, count: u64) -> Result<(), Failure> {
        let mut left = usize::try_from(count)
            .unwrap_or(usize::MAX)
            .min(self.query.limit.unwrap_or(usize::MAX));
        while left > 0 {
            let n = left.min(self.batch_size);
            let options = RecordBatchOptions::new().with_row_count(Some(n));
            let batch =
                RecordBatch::try_new_with_options(self.query.schema.clone(), vec![], &options)?;
            self.send(batch).await?;
            left -= n;
        }
        Ok(())
    }

    /// Sends decoded rows as a batch; returns how many.
    async fn emit_rows(&self, columns: Vec<Values>) -> Result<usize, Failure> {
        let arrays = columns
            .into_iter()
            .zip(self.query.schema.fields().iter())
            .map(|(values, field)| values.into_array(field))
            .collect::<crate::Result<Vec<_>>>()?;
        let rows = arrays.first().map_or(0, |a| a.len());
        if rows > 0 {
            self.send(RecordBatch::try_new(self.query.schema.clone(), arrays)?)
                .await?;
        }
        Ok(rows)
    }

    /// Collapses decoded sample versions and sends what is complete (all of it when `last`
    /// says no more rows follow), at most `room` samples, projected; returns how many.
    async fn emit_samples(
        &self,
        columns: Vec<Values>,
        projection: &[usize],
        collapse: &mut Collapse,
        last: bool,
        room: usize,
    ) -> Result<usize, Failure> {
        let mut columns = columns.into_iter();
        let (
            Some(Values::UInt64(series)),
            Some(Values::Int64(times)),
            Some(Values::Float64(values)),
        ) = (columns.next(), columns.next(), columns.next())
        else {
            return Err(StorageError::Decode("samples arrived in another shape".into()).into());
        };
        for ((series, time), value) in series.into_iter().zip(times).zip(values) {
            collapse.push(series, time, value);
        }
        if last {
            collapse.finish();
        }
        let mut out = collapse.take();
        out.truncate(room);
        let rows = out.len();
        if rows == 0 {
            return Ok(0);
        }
        let mut series = Vec::with_capacity(rows);
        let mut times = Vec::with_capacity(rows);
        let mut values = Vec::with_capacity(rows);
        for (s, t, v) in out {
            series.push(s);
            times.push(t);
            values.push(v);
        }
        let all = RecordBatch::try_new(
            self.query.samples_schema.clone(),
            vec![
                Arc::new(UInt64Array::from(series)),
                Arc::new(Int64Array::from(times)),
                Arc::new(Float64Array::from(values)),
            ],
        )?;
        self.send(all.project(projection)?).await?;
        Ok(rows)
    }
}

/// Keeps the last of each run of samples with the same (series, timestamp): rows arrive
/// sorted by (series, timestamp, version), so that is the latest write.
#[derive(Debug, Default)]
struct Collapse {
    current: Option<(u64, i64, f64)>,
    done: Vec<(u64, i64, f64)>,
}

impl Collapse {
    fn push(&mut self, series: u64, time: i64, value: f64) {
        match &mut self.current {
            Some((s, t, v)) if *s == series && *t == time => *v = value,
            current => {
                if let Some(previous) = current.replace((series, time, value)) {
                    self.done.push(previous);
                }
            }
        }
    }

    fn finish(&mut self) {
        if let Some(last) = self.current.take() {
            self.done.push(last);
        }
    }

    fn take(&mut self) -> Vec<(u64, i64, f64)> {
        std::mem::take(&mut self.done)
    }
}
