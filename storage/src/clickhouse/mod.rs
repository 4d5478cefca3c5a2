//! The ClickHouse engine: distributed mode's storage, over ClickHouse's HTTP interface.
//!
//! **Schema**: versioned migrations ([`schema`]) applied at open, written for ClickHouse
//! 18.16 and using `LowCardinality` and column codecs only when `SELECT version()` says the
//! server has them. Tables: `series` (labels as parallel name/value arrays, keyed by
//! fingerprint), `samples`, `spans`, `logs`, `events` (partitioned by UTC day, so retention
//! drops whole partitions), `bus_offsets` (what is durable) and `schema_migrations`. The
//! tenant leads every sorting key and every query filters on it.
//!
//! **Writes** are buffered in memory and inserted in batches (one `INSERT ... FORMAT
//! RowBinary` per table, through the `clickhouse` crate with schema validation off, which
//! 18.16 needs): by [`Storage::flush`], or by a write that fills the buffer to
//! [`ClickHouseConfig::insert_batch_rows`]. ClickHouse answers an insert once its data is
//! written, so after a flush's inserts succeed the store records the bus offsets they
//! cover in `bus_offsets` and returns them. Rows only in the buffer are not yet visible to
//! reads (in distributed mode the query role is another process anyway), and a crash loses
//! them: ingest replays from the durable offsets.
//!
//! **Idempotence**: every table is a `ReplacingMergeTree` whose sorting key is the record's
//! identity: (tenant, series, timestamp) for samples, (tenant, trace id, span id) for spans,
//! the bus position for log records and events. Rows carry a `version` (a clock reading, so
//! the latest write wins, as in the embedded store). Background merges collapse duplicates
//! eventually; until then reads collapse them themselves: samples are read sorted by
//! (series, timestamp, version) and the store keeps the last of each (series, timestamp);
//! row counts use `FINAL`; series are deduplicated by fingerprint in the store.
//!
//! That sample read was chosen by measurement on 18.16 (2,000 series x 2,000 samples,
//! every sample inserted twice and not merged; best of five, 2 cores): for 100 series over
//! all time `FINAL` took 0.88 s, `argMax(value, version) ... GROUP BY` 0.47 s, the sorted
//! read 0.22 s; for all series over one hour 0.31 s, 0.65 s and 0.38 s. Once merged: 0.26,
//! 0.27 and 0.10 s; 0.45, 0.65 and 0.28 s. The sorted read sends unmerged duplicates and
//! 8 bytes of version per sample over the wire, and needs no hash table on the server.
//!
//! **Reads**: [`Storage::select`] asks `series` for the matching series (matchers pushed
//! down where ClickHouse evaluates them exactly, see `pushdown`), checks each against the
//! matchers with Prometheus's semantics, then reads their samples by fingerprint.
//! [`ClickHouseStore::session`] gives a DataFusion session over a tenant's tables, each a
//! [`ClickHouseTable`] that pushes filters, projections, limits and `count(*)` into one
//! ClickHouse query per scan (see `provider`).
//!
//! Not done here: the out-of-order window of the embedded store (ClickHouse takes samples
//! in any order), and fingerprint collisions (two label sets with the same 64-bit hash in
//! one tenant would share samples).

mod provider;
mod pushdown;
mod rows;
pub mod schema;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use clickhouse::Client;
use datafusion::prelude::SessionContext;
use model::{Labels, MetricMetadata, MetricType, Payload, Sample, TenantId};
use serde::{Deserialize, Serialize};

pub use self::provider::{ClickHouseTable, Scan};
use self::rows::{
    BufferedSample, EventRow, ExemplarRow, HistogramRow, LogRow, MetadataRow, OffsetRow, SampleRow,
    SeriesRow, SpanRow, event_rows, exemplar_rows, log_rows, span_rows,
};
pub use self::schema::{Features, ServerVersion};
use crate::{
    BusPosition, DurableOffsets, Matcher, Result, SeriesSamples, Storage, StorageError,
    WriteSummary,
};

const DAY_MS: i64 = 86_400_000;

/// Fingerprints per sample query (keeps the query text well under ClickHouse's 256 KiB).
const FINGERPRINTS_PER_QUERY: usize = 2000;

/// Where and how to reach ClickHouse.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClickHouseConfig {
    /// The HTTP interface (`http://host:8123`).
    pub url: String,
    /// Created if missing; letters, digits and `_`.
    pub database: String,
    pub user: String,
    pub password: String,
    /// Rows buffered by writes before they are inserted without waiting for a flush.
    pub insert_batch_rows: usize,
    /// Data older than this is removed, a whole day (partition) at a time.
    pub retention_seconds: u64,
    /// ClickHouse stops an SQL session's query that runs longer (`max_execution_time`).
    /// A query the caller gave up on may otherwise run on: 18.16 does not notice a closed
    /// connection before it has a result to send. Keep it at or below `query.timeout_seconds`.
    pub max_query_seconds: u64,
}

impl Default for ClickHouseConfig {
    fn default() -> Self {
        Self {
            url: "http://127.0.0.1:8123".to_owned(),
            database: "meerkat".to_owned(),
            user: "default".to_owned(),
            password: String::new(),
            insert_batch_rows: 100_000,
            retention_seconds: 15 * 24 * 3600,
            max_query_seconds: 120,
        }
    }
}

impl fmt::Debug for ClickHouseConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClickHouseConfig")
            .field("url", &self.url)
            .field("database", &self.database)
            .field("user", &self.user)
            .field(
                "password",
                &if self.password.is_empty() { "" } else { "***" },
            )
            .field("insert_batch_rows", &self.insert_batch_rows)
            .field("retention_seconds", &self.retention_seconds)
            .field("max_query_seconds", &self.max_query_seconds)
            .finish()
    }
}

impl ClickHouseConfig {
    pub fn validate(&self) -> Result<()> {
        if !self.url.starts_with("http://") {
            return Err(StorageError::Config(format!(
                "url is {:?}; it must start with http:// (ClickHouse's HTTP interface; TLS is not built in)",
                self.url
            )));
        }
        let valid_name = self
            .database
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && self
                .database
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid_name {
            return Err(StorageError::Config(format!(
                "database is {:?}; use letters, digits and _ (not starting with a digit)",
                self.database
            )));
        }
        if self.max_query_seconds == 0 {
            return Err(StorageError::Config(
                "max_query_seconds must be at least 1".to_owned(),
            ));
        }
        if self.insert_batch_rows == 0 {
            return Err(StorageError::Config(
                "insert_batch_rows must be at least 1".to_owned(),
            ));
        }
        if self.retention_seconds < 86_400 {
            return Err(StorageError::Config(format!(
                "retention_seconds is {}; it must be at least 86400 (retention removes whole days)",
                self.retention_seconds
            )));
        }
        Ok(())
    }
}

/// A ClickHouse error as a storage error: network trouble and the server's transient
/// refusals (too many parts or queries, memory) are retryable I/O errors.
pub(crate) fn ch_error(action: &'static str, error: clickhouse::error::Error) -> StorageError {
    use clickhouse::error::Error as E;
    const TRANSIENT_CODES: [&str; 7] = [
        "Code: 202,", // TOO_MANY_SIMULTANEOUS_QUERIES
        "Code: 209,", // SOCKET_TIMEOUT
        "Code: 210,", // NETWORK_ERROR
        "Code: 241,", // MEMORY_LIMIT_EXCEEDED
        "Code: 252,", // TOO_MANY_PARTS
        "Code: 159,", // TIMEOUT_EXCEEDED
        "Code: 319,", // UNKNOWN_STATUS_OF_INSERT
    ];
    let transient = match &error {
        E::Network(_) | E::TimedOut => true,
        E::BadResponse(text) => TRANSIENT_CODES.iter().any(|code| text.contains(code)),
        _ => false,
    };
    if transient {
        StorageError::io(
            action,
            PathBuf::from("ClickHouse"),
            std::io::Error::other(error),
        )
    } else {
        StorageError::Query(format!("{action} ClickHouse: {error}"))
    }
}

/// Written but not yet inserted.
#[derive(Debug, Default)]
struct Buffer {
    series: Vec<SeriesRow>,
    series_keys: HashMap<TenantId, HashSet<u64>>,
    samples: HashMap<TenantId, Vec<BufferedSample>>,
    histograms: Vec<HistogramRow>,
    spans: Vec<SpanRow>,
    logs: Vec<LogRow>,
    events: Vec<EventRow>,
    exemplars: Vec<ExemplarRow>,
    rows: usize,
}

/// Metric writes into the buffer, under the state lock.
struct MetricsBuffer<'a> {
    tenant: &'a TenantId,
    known: Option<&'a HashSet<u64>>,
    series_rows: &'a mut Vec<SeriesRow>,
    keys: &'a mut HashSet<u64>,
    samples: &'a mut Vec<BufferedSample>,
    histograms: &'a mut Vec<HistogramRow>,
    rows: &'a mut usize,
    /// Reserves each series' versions: the count is known only once its samples are read.
    store: &'a ClickHouseStore,
    summary: WriteSummary,
}

impl<'a> MetricsBuffer<'a> {
    /// Starts buffering `tenant`'s samples, versioned by `store`.
    fn new(state: &'a mut State, tenant: &'a TenantId, store: &'a ClickHouseStore) -> Self {
        let State {
            buffer,
            known_series,
            ..
        } = state;
        Self {
            tenant,
            known: known_series.get(tenant),
            series_rows: &mut buffer.series,
            keys: buffer.series_keys.entry(tenant.clone()).or_default(),
            samples: buffer.samples.entry(tenant.clone()).or_default(),
            histograms: &mut buffer.histograms,
            rows: &mut buffer.rows,
            store,
            summary: WriteSummary::default(),
        }
    }

    /// Buffers a series' float and histogram samples, and its series row the first time
    /// this process sees it (only then are its labels asked for).
    fn push(
        &mut self,
        fingerprint: u64,
        labels: impl FnOnce() -> Result<Labels>,
        samples: &[Sample],
        histograms: &[model::NativeHistogram],
    ) -> Result<()> {
        if samples.is_empty() && histograms.is_empty() {
            return Ok(());
        }
        if !self.known.is_some_and(|k| k.contains(&fingerprint))
            && !self.keys.contains(&fingerprint)
        {
            let labels = labels()?;
            let (label_names, label_values) = labels
                .iter()
                .map(|l| (l.name.to_owned(), l.value.to_owned()))
                .unzip();
            self.series_rows.push(SeriesRow {
                tenant: self.tenant.as_str().to_owned(),
                metric_name: labels.metric_name().unwrap_or_default().to_owned(),
                fingerprint,
                label_names,
                label_values,
            });
            self.keys.insert(fingerprint);
            *self.rows += 1;
        }
        let first_version = self.store.reserve_versions(samples.len() as u64);
        for (version, sample) in (first_version..).zip(samples) {
            self.samples.push(BufferedSample {
                fingerprint,
                timestamp_ms: sample.timestamp_ms,
                value: sample.value,
                version,
            });
        }
        if !histograms.is_empty() {
            let first_version = self.store.reserve_versions(histograms.len() as u64);
            self.histograms
                .extend((first_version..).zip(histograms).map(|(version, h)| {
                    HistogramRow::new(self.tenant.as_str(), fingerprint, h, version)
                }));
        }
        *self.rows += samples.len() + histograms.len();
        self.summary.accepted += (samples.len() + histograms.len()) as u64;
        Ok(())
    }
}

impl Buffer {
    /// Adds rows taken out earlier (an insert that failed). Versions order the writes, so
    /// where they go in the buffer does not matter.
    fn absorb(&mut self, other: Buffer) {
        // A series row twice is harmless: the table collapses it.
        self.series.extend(other.series);
        for (tenant, fingerprints) in other.series_keys {
            self.series_keys
                .entry(tenant)
                .or_default()
                .extend(fingerprints);
        }
        for (tenant, samples) in other.samples {
            self.samples.entry(tenant).or_default().extend(samples);
        }
        self.histograms.extend(other.histograms);
        self.spans.extend(other.spans);
        self.logs.extend(other.logs);
        self.events.extend(other.events);
        self.exemplars.extend(other.exemplars);
        self.rows += other.rows;
    }
}

#[derive(Debug, Default)]
struct State {
    buffer: Buffer,
    /// Next offsets of everything written, inserted or not.
    pending: DurableOffsets,
    /// Series this process has inserted (no need to insert them again).
    known_series: HashMap<TenantId, HashSet<u64>>,
}

/// The ClickHouse store. Share it as `Arc<dyn Storage>`.
pub struct ClickHouseStore {
    config: ClickHouseConfig,
    client: Client,
    version: ServerVersion,
    features: Features,
    state: Arc<Mutex<State>>,
    /// Offsets recorded in `bus_offsets` by this process.
    durable: Mutex<DurableOffsets>,
    /// One insert of the buffer at a time, so a flush covers every insert before it.
    insert_lock: Arc<tokio::sync::Mutex<()>>,
    /// Why the last background insert failed, for the next write to report.
    background_error: Arc<Mutex<Option<StorageError>>>,
    last_version: AtomicU64,
    closed: AtomicBool,
    /// Metadata rows this process has inserted: remote-write resends every family's
    /// metadata each minute, and only new entries need an insert.
    metadata_inserted: Mutex<HashSet<MetadataRow>>,
}

impl fmt::Debug for ClickHouseStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClickHouseStore")
            .field("config", &self.config)
            .field("version", &self.version)
            .field("features", &self.features)
            .finish_non_exhaustive()
    }
}

/// Rows taken out of the buffer for an insert: put back unless the insert succeeded, even
/// when the task inserting them panics or is cancelled, so offsets are never recorded for
/// rows that were dropped.
struct Unsaved {
    buffer: Option<Buffer>,
    state: Arc<Mutex<State>>,
}

impl Drop for Unsaved {
    fn drop(&mut self) {
        if let Some(buffer) = self.buffer.take() {
            lock(&self.state).buffer.absorb(buffer);
        }
    }
}

/// Inserts `buffer`; then its series are known to be stored, or, if the insert failed (or
/// was abandoned), its rows go back into the buffer. The caller holds the insert lock.
async fn insert_or_keep(client: &Client, state: &Arc<Mutex<State>>, buffer: Buffer) -> Result<()> {
    let mut unsaved = Unsaved {
        buffer: Some(buffer),
        state: state.clone(),
    };
    if let Some(buffer) = &unsaved.buffer {
        insert(client, buffer).await?;
    }
    let Some(buffer) = unsaved.buffer.take() else {
        return Ok(());
    };
    let mut state = lock(state);
    for (tenant, fingerprints) in buffer.series_keys {
        state
            .known_series
            .entry(tenant)
            .or_default()
            .extend(fingerprints);
    }
    Ok(())
}

/// Inserts a buffer's rows, table by table.
async fn insert(client: &Client, buffer: &Buffer) -> Result<()> {
    // Series first: a reader finds samples through their series.
    insert_rows::<SeriesRow>(client, "series", &buffer.series).await?;
    if buffer.samples.values().any(|s| !s.is_empty()) {
        let mut insert = client
            .insert::<SampleRow<'_>>("samples")
            .await
            .map_err(|e| ch_error("inserting samples into", e))?;
        for (tenant, samples) in &buffer.samples {
            for sample in samples {
                insert
                    .write(&SampleRow {
                        tenant: tenant.as_str(),
                        fingerprint: sample.fingerprint,
                        timestamp_ms: sample.timestamp_ms,
                        value: sample.value,
                        version: sample.version,
                    })
                    .await
                    .map_err(|e| ch_error("inserting samples into", e))?;
            }
        }
        insert
            .end()
            .await
            .map_err(|e| ch_error("inserting samples into", e))?;
    }
    insert_rows::<HistogramRow>(client, "histograms", &buffer.histograms).await?;
    insert_rows::<SpanRow>(client, "spans", &buffer.spans).await?;
    insert_rows::<LogRow>(client, "logs", &buffer.logs).await?;
    insert_rows::<EventRow>(client, "events", &buffer.events).await?;
    insert_rows::<ExemplarRow>(client, "exemplars", &buffer.exemplars).await?;
    Ok(())
}

async fn insert_rows<R>(client: &Client, table: &'static str, rows: &[R]) -> Result<()>
where
    R: clickhouse::RowOwned + clickhouse::RowWrite,
{
    if rows.is_empty() {
        return Ok(());
    }
    let mut insert = client
        .insert::<R>(table)
        .await
        .map_err(|e| ch_error("inserting into", e))?;
    for row in rows {
        insert
            .write(row)
            .await
            .map_err(|e| ch_error("inserting into", e))?;
    }
    insert
        .end()
        .await
        .map_err(|e| ch_error("inserting into", e))
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

#[derive(Debug, clickhouse::Row, Deserialize)]
struct SeriesLabels {
    fingerprint: u64,
    label_names: Vec<String>,
    label_values: Vec<String>,
}

/// SQL text with `?` placeholders and the strings bound to them.
#[derive(Debug, Default)]
struct Sql {
    text: String,
    binds: Vec<String>,
}

impl Sql {
    fn new(text: &str, binds: &[&str]) -> Self {
        Self {
            text: text.to_owned(),
            binds: binds.iter().map(|b| (*b).to_owned()).collect(),
        }
    }

    fn and(&mut self, condition: pushdown::Condition) {
        self.text.push_str(" AND ");
        self.text.push_str(&condition.sql);
        self.binds.extend(condition.binds);
    }

    fn query(&self, client: &Client) -> clickhouse::query::Query {
        self.binds
            .iter()
            .fold(client.query(&self.text), |q, b| q.bind(b.as_str()))
    }
}

impl ClickHouseStore {
    /// Connects, creates the database if needed and applies the schema migrations it
    /// lacks.
    pub async fn open(config: ClickHouseConfig) -> Result<Self> {
        config.validate()?;
        let mut base = Client::default()
            .with_url(&config.url)
            .with_user(&config.user)
            .with_validation(false);
        if !config.password.is_empty() {
            base = base.with_password(&config.password);
        }
        let version_text: String = base
            .query("SELECT version()")
            .fetch_one()
            .await
            .map_err(|e| ch_error("asking the version of", e))?;
        let version = ServerVersion::parse(&version_text).ok_or_else(|| {
            StorageError::Config(format!(
                "ClickHouse reports version {version_text:?}, which Meerkat cannot read"
            ))
        })?;
        let features = Features::of(version);
        base.query(&format!(
            "CREATE DATABASE IF NOT EXISTS {}",
            config.database
        ))
        .execute()
        .await
        .map_err(|e| ch_error("creating the database in", e))?;
        let client = base.with_database(&config.database);
        schema::migrate(&client, features).await?;
        let durable = read_offsets(&client).await?;
        tracing::info!(url = %config.url, database = %config.database, %version, ?features, "ClickHouse store opened");
        Ok(Self {
            config,
            client,
            version,
            features,
            state: Arc::new(Mutex::new(State {
                pending: durable.clone(),
                ..State::default()
            })),
            durable: Mutex::new(durable),
            insert_lock: Arc::new(tokio::sync::Mutex::new(())),
            background_error: Arc::default(),
            last_version: AtomicU64::new(0),
            closed: AtomicBool::new(false),
            metadata_inserted: Mutex::new(HashSet::new()),
        })
    }

    /// The server's version, as `SELECT version()` reported it at open.
    pub fn server_version(&self) -> ServerVersion {
        self.version
    }

    /// The schema features used for that version.
    pub fn features(&self) -> Features {
        self.features
    }

    /// The HTTP client, set to the store's database (for SQL over the tables).
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// A DataFusion session over `tenant`'s tables (`samples`, `histograms`, `series`,
    /// `spans`, `logs`, `events`, `exemplars`, with the embedded store's columns), read from ClickHouse when a query
    /// runs: rows inserted so far are visible, buffered ones are not. Another tenant's rows
    /// are never read.
    pub async fn session(&self, tenant: &TenantId) -> Result<SessionContext> {
        let client = self.client.clone().with_setting(
            "max_execution_time",
            self.config.max_query_seconds.to_string(),
        );
        provider::session(&client, tenant)
    }

    /// Rows of `tenant` in `table` (`series`, `samples`, `histograms`, `spans`, `logs`,
    /// `events`, `exemplars`), each record once however often it was written.
    pub async fn row_count(&self, tenant: &TenantId, table: &str) -> Result<u64> {
        let tables = [
            "series",
            "samples",
            "histograms",
            "spans",
            "logs",
            "events",
            "exemplars",
        ];
        if !tables.contains(&table) {
            return Err(StorageError::Config(format!("no table {table:?}")));
        }
        self.client
            .query(&format!(
                "SELECT count() FROM {table} FINAL WHERE tenant = ?"
            ))
            .bind(tenant.as_str())
            .fetch_one()
            .await
            .map_err(|e| ch_error("counting rows in", e))
    }

    /// `count` distinct row versions, each later than any handed out before.
    /// Versions for `count` rows, handed out in order.
    fn versions(&self, count: usize) -> impl FnMut() -> u64 + use<> {
        let mut next = self.reserve_versions(count as u64);
        move || {
            next += 1;
            next - 1
        }
    }

    /// Buffers the rows of a row table (`table` picks its buffer); returns how many.
    fn buffer_rows<R>(&self, rows: Vec<R>, table: impl FnOnce(&mut Buffer) -> &mut Vec<R>) -> u64 {
        let count = rows.len();
        let mut state = lock(&self.state);
        state.buffer.rows += count;
        table(&mut state.buffer).extend(rows);
        count as u64
    }

    fn reserve_versions(&self, count: u64) -> u64 {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
        let mut base = 0;
        let _ = self
            .last_version
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |last| {
                base = now.max(last.saturating_add(1));
                Some(base.saturating_add(count.saturating_sub(1)))
            });
        base
    }

    fn write_metrics(&self, tenant: &TenantId, batch: model::MetricBatch) -> WriteSummary {
        let mut state = lock(&self.state);
        let mut buffer = MetricsBuffer::new(&mut state, tenant, self);
        for series in batch.series {
            let labels = series.labels;
            // Cannot fail: the labels are at hand.
            let _ = buffer.push(
                labels.fingerprint(),
                move || Ok(labels),
                &series.samples,
                &series.histograms,
            );
        }
        buffer.summary
    }

    /// Buffers a remote-write body as the gateway accepted it, read in place: a series this
    /// process has seen is known by the fingerprint of its raw labels, with no `Labels`.
    fn write_remote_write(
        &self,
        tenant: &TenantId,
        body: &model::RemoteWriteBody,
    ) -> Result<(WriteSummary, Vec<MetricMetadata>)> {
        let body = crate::remote_write::decompress(body)?;
        let metadata = model::remote_write::WriteRequestReader::new(&body)
            .metadata()
            .map_err(|e| StorageError::Decode(format!("remote-write metadata: {e}")))?;
        let mut state = lock(&self.state);
        let mut buffer = MetricsBuffer::new(&mut state, tenant, self);
        crate::remote_write::for_each_series(&body, |raw, fingerprint, samples| {
            // Bodies kept as received carry float samples only (the gateway's rule).
            buffer.push(
                fingerprint,
                || crate::remote_write::labels(raw),
                samples,
                &[],
            )
        })?;
        Ok((buffer.summary, metadata))
    }

    /// Inserts the entries of `metadata` this process has not inserted yet. Synchronous
    /// (and rare), so the metadata is stored before the bus offset that carried it is.
    async fn store_metadata(&self, tenant: &TenantId, metadata: Vec<MetricMetadata>) -> Result<()> {
        let fresh: Vec<MetadataRow> = {
            let inserted = lock(&self.metadata_inserted);
            let distinct: HashSet<MetadataRow> = metadata
                .into_iter()
                .map(|m| MetadataRow {
                    tenant: tenant.as_str().to_owned(),
                    metric_family_name: m.metric_family_name,
                    metric_type: m.metric_type.prometheus_name().to_owned(),
                    help: m.help,
                    unit: m.unit,
                })
                .filter(|row| !inserted.contains(row))
                .collect();
            distinct.into_iter().collect()
        };
        if fresh.is_empty() {
            return Ok(());
        }
        insert_rows::<MetadataRow>(&self.client, "metric_metadata", &fresh).await?;
        lock(&self.metadata_inserted).extend(fresh);
        Ok(())
    }

    /// Inserts the (full) buffer on a task of its own, so ingest goes on decoding the next
    /// batch meanwhile. One insert at a time: the next full buffer, and a flush, wait for
    /// this one. A failed insert puts its rows back, and the next write reports the error
    /// (as an insert made by the write itself would).
    async fn insert_in_background(&self) {
        let inserting = self.insert_lock.clone().lock_owned().await;
        let buffer = std::mem::take(&mut lock(&self.state).buffer);
        let (client, state, failure) = (
            self.client.clone(),
            self.state.clone(),
            self.background_error.clone(),
        );
        tokio::spawn(async move {
            if let Err(error) = insert_or_keep(&client, &state, buffer).await {
                tracing::warn!(%error, "a batch insert into ClickHouse failed; its rows wait for the next insert");
                *lock(&failure) = Some(error);
            }
            drop(inserting);
        });
    }

    /// Inserts what is buffered (after any insert still running), then records the offsets
    /// that the inserts made durable and returns them.
    async fn insert_buffered(&self) -> Result<DurableOffsets> {
        let _inserting = self.insert_lock.lock().await;
        let (buffer, offsets) = {
            let mut state = lock(&self.state);
            (std::mem::take(&mut state.buffer), state.pending.clone())
        };
        insert_or_keep(&self.client, &self.state, buffer).await?;
        let durable = lock(&self.durable).clone();
        let advanced: Vec<OffsetRow> = offsets
            .iter()
            .filter(|(key, next)| durable.get(*key).is_none_or(|d| d < *next))
            .map(|((topic, partition), next)| OffsetRow {
                topic: topic.clone(),
                partition: *partition,
                next_offset: *next,
            })
            .collect();
        if !advanced.is_empty() {
            insert_rows::<OffsetRow>(&self.client, "bus_offsets", &advanced).await?;
        }
        let mut durable = lock(&self.durable);
        for (key, next) in offsets {
            let entry = durable.entry(key).or_insert(0);
            *entry = (*entry).max(next);
        }
        Ok(durable.clone())
    }

    /// The series of `tenant` matching every matcher, by fingerprint.
    async fn matching_series(
        &self,
        tenant: &TenantId,
        matchers: &[Matcher],
    ) -> Result<BTreeMap<u64, Labels>> {
        let mut sql = Sql::new(
            "SELECT fingerprint, label_names, label_values FROM series WHERE tenant = ?",
            &[tenant.as_str()],
        );
        for condition in matchers.iter().filter_map(pushdown::condition) {
            sql.and(condition);
        }
        let rows: Vec<SeriesLabels> = sql
            .query(&self.client)
            .fetch_all()
            .await
            .map_err(|e| ch_error("reading series from", e))?;
        let mut out = BTreeMap::new();
        for row in rows {
            if out.contains_key(&row.fingerprint) {
                continue; // a duplicate not merged yet
            }
            let labels =
                Labels::new(row.label_names.into_iter().zip(row.label_values)).map_err(|e| {
                    StorageError::Decode(format!(
                        "series {} of tenant {tenant} in ClickHouse: {e}",
                        row.fingerprint
                    ))
                })?;
            if matchers
                .iter()
                .all(|m| m.matches(labels.get(&m.name).unwrap_or("")))
            {
                out.insert(row.fingerprint, labels);
            }
        }
        Ok(out)
    }
}

async fn read_offsets(client: &Client) -> Result<DurableOffsets> {
    let rows: Vec<(String, u32, u64)> = client
        .query(
            "SELECT topic, partition, max(next_offset) FROM bus_offsets GROUP BY topic, partition",
        )
        .fetch_all()
        .await
        .map_err(|e| ch_error("reading bus offsets from", e))?;
    Ok(rows
        .into_iter()
        .map(|(topic, partition, next)| ((topic, partition), next))
        .collect())
}

#[async_trait]
impl Storage for ClickHouseStore {
    async fn write(
        &self,
        tenant: &TenantId,
        payload: Payload,
        position: &BusPosition,
    ) -> Result<WriteSummary> {
        if self.closed.load(Ordering::Acquire) {
            return Err(StorageError::Closed);
        }
        if let Some(error) = lock(&self.background_error).take() {
            return Err(error);
        }
        let mut summary = WriteSummary::default();
        let mut metadata = Vec::new();
        match payload {
            Payload::Spans(batch) => {
                let versions = self.versions(batch.span_count());
                let rows = span_rows(tenant.as_str(), batch, versions);
                summary.accepted = self.buffer_rows(rows, |buffer| &mut buffer.spans);
            }
            Payload::Logs(batch) => {
                let versions = self.versions(batch.record_count());
                let rows = log_rows(tenant.as_str(), batch, position, versions);
                summary.accepted = self.buffer_rows(rows, |buffer| &mut buffer.logs);
            }
            Payload::Events(events) => {
                let versions = self.versions(events.len());
                let rows = event_rows(tenant.as_str(), events, position, versions);
                summary.accepted = self.buffer_rows(rows, |buffer| &mut buffer.events);
            }
            Payload::RemoteWrite(body) => {
                (summary, metadata) = self.write_remote_write(tenant, &body)?;
            }
            metrics => {
                let mut batch = metrics
                    .into_metric_batch()
                    .map_err(|e| StorageError::Decode(e.to_string()))?
                    .unwrap_or_default();
                metadata = std::mem::take(&mut batch.metadata);
                let exemplars = exemplar_rows(
                    tenant.as_str(),
                    &batch,
                    self.versions(batch.exemplar_count()),
                );
                summary = self.write_metrics(tenant, batch);
                self.buffer_rows(exemplars, |buffer| &mut buffer.exemplars);
            }
        }
        self.store_metadata(tenant, metadata).await?;
        let full = {
            let mut state = lock(&self.state);
            let next = state
                .pending
                .entry((position.topic.clone(), position.partition))
                .or_insert(0);
            *next = (*next).max(position.offset + 1);
            state.buffer.rows >= self.config.insert_batch_rows
        };
        if full {
            self.insert_in_background().await;
        }
        Ok(summary)
    }

    async fn flush(&self) -> Result<DurableOffsets> {
        self.insert_buffered().await
    }

    async fn durable_offsets(&self) -> Result<DurableOffsets> {
        let stored = read_offsets(&self.client).await?;
        let mut durable = lock(&self.durable);
        for (key, next) in stored {
            let entry = durable.entry(key).or_insert(0);
            *entry = (*entry).max(next);
        }
        Ok(durable.clone())
    }

    async fn select(
        &self,
        tenant: &TenantId,
        matchers: &[Matcher],
        start_ms: i64,
        end_ms: i64,
    ) -> Result<Vec<SeriesSamples>> {
        let series = self.matching_series(tenant, matchers).await?;
        let fingerprints: Vec<u64> = series.keys().copied().collect();
        let mut samples: HashMap<u64, Vec<Sample>> = HashMap::new();
        let mut histograms: HashMap<u64, Vec<crate::HistogramSample>> = HashMap::new();
        for chunk in fingerprints.chunks(FINGERPRINTS_PER_QUERY) {
            let list = chunk
                .iter()
                .map(u64::to_string)
                .collect::<Vec<_>>()
                .join(",");
            // Histograms are read beside the samples, and collapsed the same way.
            let histogram_rows = self
                .client
                .query(&format!(
                    "SELECT ?fields FROM histograms \
                     WHERE tenant = ? AND fingerprint IN ({list}) \
                     AND timestamp_ms >= ? AND timestamp_ms <= ? \
                     ORDER BY fingerprint, timestamp_ms, version"
                ))
                .bind(tenant.as_str())
                .bind(start_ms)
                .bind(end_ms)
                .fetch_all::<HistogramRow>();
            // Duplicates not merged yet come sorted by version, and the last one of each
            // (series, timestamp) is kept: the latest write. Measured on 18.16 against
            // `FINAL` and `argMax(value, version) ... GROUP BY` (see the module doc).
            let sample_rows = self
                .client
                .query(&format!(
                    "SELECT fingerprint, timestamp_ms, value, version FROM samples \
                     WHERE tenant = ? AND fingerprint IN ({list}) \
                     AND timestamp_ms >= ? AND timestamp_ms <= ? \
                     ORDER BY fingerprint, timestamp_ms, version"
                ))
                .bind(tenant.as_str())
                .bind(start_ms)
                .bind(end_ms)
                .fetch_all::<(u64, i64, f64, u64)>();
            let (rows, histogram_rows) = tokio::join!(sample_rows, histogram_rows);
            let rows = rows.map_err(|e| ch_error("reading samples from", e))?;
            for row in histogram_rows.map_err(|e| ch_error("reading histograms from", e))? {
                let fingerprint = row.fingerprint;
                let sample = row.sample().ok_or_else(|| {
                    StorageError::Decode(format!(
                        "histograms of series {fingerprint} in ClickHouse: bucket indexes and counts do not pair up"
                    ))
                })?;
                let series = histograms.entry(fingerprint).or_default();
                match series.last_mut() {
                    Some(last) if last.timestamp_ms == sample.timestamp_ms => *last = sample,
                    _ => series.push(sample),
                }
            }
            for (fingerprint, timestamp_ms, value, _) in rows {
                let series = samples.entry(fingerprint).or_default();
                match series.last_mut() {
                    Some(last) if last.timestamp_ms == timestamp_ms => last.value = value,
                    _ => series.push(Sample {
                        timestamp_ms,
                        value,
                    }),
                }
            }
        }
        let mut out: Vec<SeriesSamples> = series
            .into_iter()
            .filter_map(|(fingerprint, labels)| {
                let samples = samples.remove(&fingerprint).unwrap_or_default();
                let histograms = histograms.remove(&fingerprint).unwrap_or_default();
                (!samples.is_empty() || !histograms.is_empty()).then_some(SeriesSamples {
                    labels,
                    samples,
                    histograms,
                })
            })
            .collect();
        out.sort_by(|a, b| a.labels.cmp(&b.labels));
        Ok(out)
    }

    async fn series(
        &self,
        tenant: &TenantId,
        matchers: &[Matcher],
        range: Option<(i64, i64)>,
    ) -> Result<Vec<Labels>> {
        if let Some((start_ms, end_ms)) = range {
            let selected = self.select(tenant, matchers, start_ms, end_ms).await?;
            return Ok(selected.into_iter().map(|s| s.labels).collect());
        }
        let mut out: Vec<Labels> = self
            .matching_series(tenant, matchers)
            .await?
            .into_values()
            .collect();
        out.sort();
        Ok(out)
    }

    async fn label_names(&self, tenant: &TenantId, matchers: &[Matcher]) -> Result<Vec<String>> {
        let conditions: Option<Vec<_>> = matchers.iter().map(pushdown::condition).collect();
        let Some(conditions) = conditions else {
            // Some matcher is checked in Rust only.
            let series = self.matching_series(tenant, matchers).await?;
            let names: BTreeSet<String> = series
                .values()
                .flat_map(|labels| labels.iter().map(|l| l.name.to_owned()))
                .collect();
            return Ok(names.into_iter().collect());
        };
        let mut sql = Sql::new(
            "SELECT DISTINCT arrayJoin(label_names) FROM series WHERE tenant = ?",
            &[tenant.as_str()],
        );
        for condition in conditions {
            sql.and(condition);
        }
        let mut names: Vec<String> = sql
            .query(&self.client)
            .fetch_all()
            .await
            .map_err(|e| ch_error("reading label names from", e))?;
        names.sort_unstable();
        Ok(names)
    }

    async fn label_values(
        &self,
        tenant: &TenantId,
        name: &str,
        matchers: &[Matcher],
    ) -> Result<Vec<String>> {
        let conditions: Option<Vec<_>> = matchers.iter().map(pushdown::condition).collect();
        let Some(conditions) = conditions else {
            let series = self.matching_series(tenant, matchers).await?;
            let values: BTreeSet<String> = series
                .values()
                .filter_map(|labels| labels.get(name).map(str::to_owned))
                .collect();
            return Ok(values.into_iter().collect());
        };
        let mut sql = Sql::new(
            "SELECT DISTINCT label_values[indexOf(label_names, ?)] FROM series \
             WHERE tenant = ? AND has(label_names, ?)",
            &[name, tenant.as_str(), name],
        );
        for condition in conditions {
            sql.and(condition);
        }
        let mut values: Vec<String> = sql
            .query(&self.client)
            .fetch_all()
            .await
            .map_err(|e| ch_error("reading label values from", e))?;
        values.sort_unstable();
        Ok(values)
    }

    async fn metadata(&self, tenant: &TenantId) -> Result<Vec<MetricMetadata>> {
        let rows: Vec<MetadataRow> = Sql::new(
            "SELECT DISTINCT tenant, metric_family_name, metric_type, help, unit \
             FROM metric_metadata WHERE tenant = ? \
             ORDER BY metric_family_name, metric_type, help, unit",
            &[tenant.as_str()],
        )
        .query(&self.client)
        .fetch_all()
        .await
        .map_err(|e| ch_error("reading metric metadata from", e))?;
        Ok(rows
            .into_iter()
            .map(|row| MetricMetadata {
                metric_family_name: row.metric_family_name,
                metric_type: MetricType::from_prometheus_name(&row.metric_type),
                help: row.help,
                unit: row.unit,
            })
            .collect())
    }

    async fn session(&self, tenant: &TenantId) -> Result<SessionContext> {
        ClickHouseStore::session(self, tenant).await
    }

    async fn enforce_retention(&self, now_ms: i64) -> Result<()> {
        let retention_ms = i64::try_from(self.config.retention_seconds)
            .unwrap_or(i64::MAX)
            .saturating_mul(1000);
        let cutoff_day = now_ms.saturating_sub(retention_ms).div_euclid(DAY_MS);
        for table in schema::DAY_PARTITIONED {
            let partitions: Vec<String> = self
                .client
                .query(
                    "SELECT DISTINCT partition FROM system.parts \
                     WHERE database = ? AND table = ? AND active",
                )
                .bind(self.config.database.as_str())
                .bind(table)
                .fetch_all()
                .await
                .map_err(|e| ch_error("listing partitions in", e))?;
            for partition in partitions {
                let Ok(day) = partition.trim_matches('\'').parse::<i64>() else {
                    tracing::warn!(table, partition, "a partition that is not a day number");
                    continue;
                };
                if day >= cutoff_day {
                    continue;
                }
                self.client
                    .query(&format!("ALTER TABLE {table} DROP PARTITION {day}"))
                    .execute()
                    .await
                    .map_err(|e| ch_error("dropping a partition in", e))?;
                tracing::info!(table, day, "retention dropped a day");
            }
        }
        Ok(())
    }

    async fn close(&self) -> Result<()> {
        self.flush().await?;
        self.closed.store(true, Ordering::Release);
        Ok(())
    }
}
