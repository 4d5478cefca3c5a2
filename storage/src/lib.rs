//! Where telemetry comes to rest.
//!
//! The [`Storage`] trait is the one contract between the ingest role (which writes what it
//! consumes from the bus) and the query role (which reads it), with two engines behind it:
//!
//! - [`embedded::EmbeddedStore`], the default of standalone mode: a series index in memory
//!   (label postings for matcher lookups, regexes included), recent samples and rows in
//!   memory, and Parquet parts on disk partitioned by day and sorted by series then time.
//!   Its durability comes from the bus: every flush records the bus offsets it covers, and
//!   after a restart ingest replays from there. It keeps no write-ahead log of its own.
//! - [`clickhouse::ClickHouseStore`], for distributed mode: the same tables in ClickHouse
//!   (18.16 and later), written in batches, read with SQL pushed down into ClickHouse.
//!
//! Reads come two ways: [`Storage::select`] hands series with their samples to the PromQL
//! engine, and [`Storage::session`] gives a DataFusion session with the tenant's tables
//! (`samples`, `histograms`, `series`, `spans`, `logs`, `events`, `exemplars`) for SQL.

pub mod clickhouse;
pub mod embedded;
mod error;
mod matcher;
mod otel_json;
pub mod overlay;
mod remote_write;

use std::collections::BTreeMap;
use std::fmt;

use async_trait::async_trait;
use model::{FloatHistogram, Labels, MetricMetadata, Payload, Sample, TenantId};

pub use error::StorageError;
pub use matcher::{MatchOp, Matcher};

pub type Result<T, E = StorageError> = std::result::Result<T, E>;

/// Where a record came from on the bus.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BusPosition {
    pub topic: String,
    pub partition: u32,
    pub offset: u64,
}

/// For each bus partition, the next offset that storage does not yet hold durably: where
/// ingest resumes after a restart.
pub type DurableOffsets = BTreeMap<(String, u32), u64>;

/// What one write did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WriteSummary {
    /// Samples, spans, log records or events stored.
    pub accepted: u64,
    /// Samples too far behind their series (out-of-order window) or older than retention.
    pub too_old: u64,
}

/// One series with its samples in a time range, as the query engine wants them.
#[derive(Clone, Debug, PartialEq)]
pub struct SeriesSamples {
    pub labels: Labels,
    /// Float samples, sorted by timestamp, one sample per timestamp.
    pub samples: Vec<Sample>,
    /// Native histogram samples, sorted by timestamp, one per timestamp. A series may have
    /// both kinds (it changed type), at different timestamps.
    pub histograms: Vec<HistogramSample>,
}

/// One native histogram sample. Storage keeps the counts as floats, as PromQL reads them
/// (integer counts are exact below 2^53).
#[derive(Clone, Debug, PartialEq)]
pub struct HistogramSample {
    pub timestamp_ms: i64,
    pub histogram: FloatHistogram,
}

/// A storage engine.
#[async_trait]
pub trait Storage: Send + Sync + fmt::Debug {
    /// Takes the data of one bus record for `tenant`. Idempotent: writing the same record
    /// again (a replay after a crash) changes nothing — samples are keyed by series and
    /// timestamp, spans by trace and span id, log records and events by their bus position.
    /// Not durable until [`Storage::flush`] says so.
    async fn write(
        &self,
        tenant: &TenantId,
        payload: Payload,
        position: &BusPosition,
    ) -> Result<WriteSummary>;

    /// Makes everything written so far durable and returns the offsets it now covers.
    async fn flush(&self) -> Result<DurableOffsets>;

    /// The offsets covered by durable data: where to resume consuming after a restart.
    async fn durable_offsets(&self) -> Result<DurableOffsets>;

    /// Series of `tenant` matching every matcher, with their float and histogram samples
    /// in `[start_ms, end_ms]`. Series without samples in the range are left out.
    async fn select(
        &self,
        tenant: &TenantId,
        matchers: &[Matcher],
        start_ms: i64,
        end_ms: i64,
    ) -> Result<Vec<SeriesSamples>>;

    /// Label sets of the series matching every matcher, sorted. With `range` (`[start_ms,
    /// end_ms]`), only series with samples in it; without, every series the tenant has.
    async fn series(
        &self,
        tenant: &TenantId,
        matchers: &[Matcher],
        range: Option<(i64, i64)>,
    ) -> Result<Vec<Labels>>;

    /// How many series match every matcher, whether or not they have samples now: what a
    /// query's series limit checks before any sample is read. Engines with an index in
    /// memory answer without building the label sets.
    async fn series_count(&self, tenant: &TenantId, matchers: &[Matcher]) -> Result<u64> {
        Ok(self.series(tenant, matchers, None).await?.len() as u64)
    }

    /// Label names of the series matching `matchers` (all series when empty), sorted.
    async fn label_names(&self, tenant: &TenantId, matchers: &[Matcher]) -> Result<Vec<String>>;

    /// Values of label `name` among the series matching `matchers`, sorted.
    async fn label_values(
        &self,
        tenant: &TenantId,
        name: &str,
        matchers: &[Matcher],
    ) -> Result<Vec<String>>;

    /// The metric metadata (type, help, unit) stored for `tenant`, each distinct entry
    /// once, sorted by metric family name. Remote-write sends it apart from samples, so a
    /// family may have metadata and no series, or the reverse.
    async fn metadata(&self, tenant: &TenantId) -> Result<Vec<MetricMetadata>>;

    /// A DataFusion session over `tenant`'s tables `samples(series_id, timestamp_ms,
    /// value)`, `series(series_id, metric_name, labels)` (labels as a JSON object), `spans`,
    /// `logs`, `events` and `exemplars`, with the same columns on every engine except the type of
    /// `series_id`, an opaque key joining `samples` to `series` (`UInt32` in the embedded
    /// store, the series fingerprint as `UInt64` in ClickHouse). Native histogram samples
    /// are the `histograms` table (`series_id`, `timestamp_ms`, `schema`, `zero_threshold`,
    /// `zero_count`, `count`, `sum`, `counter_reset`, and the buckets as lists of indexes
    /// and counts per side). Another tenant's data is never visible in it.
    async fn session(&self, tenant: &TenantId) -> Result<datafusion::prelude::SessionContext>;

    /// Removes data older than the retention period.
    async fn enforce_retention(&self, now_ms: i64) -> Result<()>;

    /// Flushes and releases resources.
    async fn close(&self) -> Result<()>;
}
