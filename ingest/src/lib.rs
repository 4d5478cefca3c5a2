//! Moves telemetry from the bus into storage.
//!
//! An ingest worker is a member of the `ingest` consumer group on every telemetry topic. It
//! writes each record's data to storage as it arrives (so it is visible to queries at
//! once), and every `flush_interval_seconds` (or `flush_max_records`) asks storage to make
//! it durable — writing on meanwhile — and commits to the bus exactly the offsets storage
//! reports as durable. After a crash the group resumes at those offsets and replays what
//! storage had not yet made durable; storage writes are idempotent (series + timestamp
//! keys), so nothing is counted twice. A record that cannot be decoded is counted and
//! skipped, never allowed to stop ingest.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bus::{Bus, Consumer, TopicPartition, topics};
use model::Envelope;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};
use serde::{Deserialize, Serialize};
use storage::{BusPosition, DurableOffsets, Storage};
use thiserror::Error;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// The consumer group of ingest workers.
pub const INGEST_GROUP: &str = "ingest";

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IngestConfig {
    /// How often written data is made durable and its bus offsets committed. The bus keeps
    /// everything after the last flush, so this bounds what a restart replays.
    pub flush_interval_seconds: u64,
    /// Flush early once this many records were written since the last flush.
    pub flush_max_records: u64,
    /// Most records taken from the bus per poll.
    pub poll_max_records: usize,
}

impl Default for IngestConfig {
    fn default() -> Self {
        Self {
            flush_interval_seconds: 60,
            flush_max_records: 200_000,
            poll_max_records: 1_000,
        }
    }
}

#[derive(Debug, Error)]
pub enum IngestError {
    #[error("bus: {0}")]
    Bus(#[from] bus::BusError),
    #[error("storage: {0}")]
    Storage(#[from] storage::StorageError),
    #[error("the ingest task failed: {0}")]
    Task(String),
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TopicLabels {
    topic: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PartitionLabels {
    topic: String,
    partition: String,
}

/// How long acknowledged data waits before ingest has written it to storage (where queries
/// see it). While a record is being written it is that record's age, growing in real time
/// (a write stuck behind a slow flush, or a worker that has died, shows as an ever larger
/// delay); between records it is the age the last one had when written, and zero once a
/// poll finds nothing new. In standalone mode the gateway holds writes while this is too
/// large (`gateway.max_backlog_seconds`).
#[derive(Clone, Debug)]
pub struct IngestDelay {
    inner: Arc<DelayState>,
}

#[derive(Debug)]
struct DelayState {
    /// Append time of the record being written (or of the moment the worker stopped);
    /// `NOT_WRITING` otherwise.
    writing_since_ms: AtomicI64,
    /// The delay of the record written last.
    last_ms: AtomicU64,
}

const NOT_WRITING: i64 = i64::MIN;

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Time since `since_ms` (Unix milliseconds), zero if that is in the future.
fn age(since_ms: i64) -> Duration {
    Duration::from_millis(now_ms().saturating_sub(since_ms).max(0) as u64)
}

impl Default for IngestDelay {
    fn default() -> Self {
        Self {
            inner: Arc::new(DelayState {
                writing_since_ms: AtomicI64::new(NOT_WRITING),
                last_ms: AtomicU64::new(0),
            }),
        }
    }
}

impl IngestDelay {
    pub fn get(&self) -> Duration {
        let since = self.inner.writing_since_ms.load(Ordering::Relaxed);
        if since == NOT_WRITING {
            return Duration::from_millis(self.inner.last_ms.load(Ordering::Relaxed));
        }
        age(since)
    }

    /// A record appended at `appended_ms` is being written.
    fn writing(&self, appended_ms: i64) {
        self.inner
            .writing_since_ms
            .store(appended_ms, Ordering::Relaxed);
    }

    /// The record being written is written (`None`: a poll found nothing waiting).
    fn written(&self, appended_ms: Option<i64>) -> Duration {
        let delay = appended_ms.map_or(Duration::ZERO, age);
        let millis = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
        self.inner.last_ms.store(millis, Ordering::Relaxed);
        self.inner
            .writing_since_ms
            .store(NOT_WRITING, Ordering::Relaxed);
        delay
    }

    /// The worker has stopped: from now on nothing is written, and the delay grows.
    fn stopped(&self) {
        let _ = self.inner.writing_since_ms.compare_exchange(
            NOT_WRITING,
            now_ms(),
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
    }
}

/// Ingest's own metrics.
#[derive(Clone, Debug)]
pub struct IngestMetrics {
    delay: Gauge<f64, AtomicU64>,
    records: Family<TopicLabels, Counter>,
    items: Family<TopicLabels, Counter>,
    too_old: Family<TopicLabels, Counter>,
    undecodable: Family<TopicLabels, Counter>,
    lag: Family<PartitionLabels, Gauge>,
    batch_records: Histogram,
    flush_seconds: Histogram,
}

impl IngestMetrics {
    pub fn new(registry: &mut Registry) -> Self {
        let metrics = Self {
            delay: Gauge::default(),
            records: Family::default(),
            items: Family::default(),
            too_old: Family::default(),
            undecodable: Family::default(),
            lag: Family::default(),
            batch_records: Histogram::new(exponential_buckets(1.0, 2.0, 14)),
            flush_seconds: Histogram::new(exponential_buckets(0.001, 2.0, 16)),
        };
        let registry = registry.sub_registry_with_prefix("meerkat_ingest");
        registry.register_with_unit(
            "delay",
            "Age of the bus record written last (zero when caught up): how long acknowledged data waits to become queryable",
            Unit::Seconds,
            metrics.delay.clone(),
        );
        registry.register(
            "records",
            "Bus records written to storage",
            metrics.records.clone(),
        );
        registry.register(
            "items",
            "Samples, spans, log records and events written to storage",
            metrics.items.clone(),
        );
        registry.register(
            "too_old",
            "Samples refused by storage as too far behind their series",
            metrics.too_old.clone(),
        );
        registry.register(
            "undecodable_records",
            "Bus records that could not be decoded and were skipped",
            metrics.undecodable.clone(),
        );
        registry.register(
            "lag_records",
            "Records on the bus not yet written to storage, per partition",
            metrics.lag.clone(),
        );
        registry.register(
            "batch_records",
            "Records per poll",
            metrics.batch_records.clone(),
        );
        registry.register_with_unit(
            "flush_duration",
            "Time to make written data durable",
            Unit::Seconds,
            metrics.flush_seconds.clone(),
        );
        metrics
    }
}

/// A running ingest worker.
#[derive(Debug)]
pub struct IngestWorker {
    stop: watch::Sender<bool>,
    task: JoinHandle<Result<(), IngestError>>,
    delay: IngestDelay,
}

struct Loop {
    delay: IngestDelay,
    bus: Arc<dyn Bus>,
    storage: Arc<dyn Storage>,
    consumer: Box<dyn Consumer>,
    config: IngestConfig,
    metrics: IngestMetrics,
    written_since_flush: u64,
    last_flush: Instant,
    /// The flush under way: ingest goes on writing while storage makes the data before it
    /// durable, so a slow flush does not hold back what queries see.
    flushing: Option<JoinHandle<Result<DurableOffsets, storage::StorageError>>>,
}

impl IngestWorker {
    /// Joins the ingest group and starts consuming.
    pub async fn start(
        bus: Arc<dyn Bus>,
        storage: Arc<dyn Storage>,
        config: IngestConfig,
        metrics: IngestMetrics,
    ) -> Result<Self, IngestError> {
        let consumer = bus.subscribe(INGEST_GROUP, &topics::ALL).await?;
        let (stop, stopped) = watch::channel(false);
        let delay = IngestDelay::default();
        let mut work = Loop {
            delay: delay.clone(),
            bus,
            storage,
            consumer,
            config,
            metrics,
            written_since_flush: 0,
            last_flush: Instant::now(),
            flushing: None,
        };
        let task = tokio::spawn(async move {
            let result = work.run(stopped).await;
            // Stopped or failed, nothing more will be written: a gateway still waiting on
            // this worker sees the delay grow and refuses writes, with the reason.
            work.delay.stopped();
            if let Err(error) = &result {
                tracing::error!(%error, "ingest stopped");
            }
            result
        });
        Ok(Self { stop, task, delay })
    }

    /// How far behind the bus this worker's writes are, kept current as it works.
    pub fn delay(&self) -> IngestDelay {
        self.delay.clone()
    }

    /// Stops consuming, makes everything written durable, commits, and returns.
    pub async fn stop(self) -> Result<(), IngestError> {
        let _ = self.stop.send(true);
        self.task
            .await
            .map_err(|e| IngestError::Task(e.to_string()))?
    }
}

impl Loop {
    async fn run(&mut self, mut stopped: watch::Receiver<bool>) -> Result<(), IngestError> {
        let interval = Duration::from_secs(self.config.flush_interval_seconds.max(1));
        loop {
            let poll_timeout = interval
                .saturating_sub(self.last_flush.elapsed())
                .min(Duration::from_millis(500));
            let records = tokio::select! {
                _ = stopped.wait_for(|stop| *stop) => break,
                records = self.consumer.poll(self.config.poll_max_records, poll_timeout) => records,
            };
            match records {
                Ok(records) => {
                    if records.is_empty() {
                        self.record_delay(None);
                    } else {
                        self.metrics.batch_records.observe(records.len() as f64);
                    }
                    for record in records {
                        // Per record, not per poll: a poll's worth of records can take
                        // seconds to write, and the gateway must see the delay grow. A
                        // record without an append time (0) says nothing about delay.
                        let appended_ms = Some(record.timestamp_ms).filter(|t| *t > 0);
                        if let Some(appended) = appended_ms {
                            self.delay.writing(appended);
                        }
                        self.write(record).await?;
                        if appended_ms.is_some() {
                            self.record_delay(appended_ms);
                        }
                    }
                }
                Err(error) if error.is_retryable() => {
                    tracing::warn!(%error, "bus poll failed; retrying");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(error) => return Err(error.into()),
            }
            if self.flushing.as_ref().is_some_and(JoinHandle::is_finished) {
                self.finish_flush(true).await?;
            }
            if self.flushing.is_none()
                && (self.last_flush.elapsed() >= interval
                    || self.written_since_flush >= self.config.flush_max_records)
            {
                self.start_flush();
            }
        }
        // Stopping: the lag gauge is not worth a round of metadata calls to a cluster that
        // may be going away too.
        self.finish_flush(false).await?;
        self.start_flush();
        self.finish_flush(false).await
    }

    /// Starts making everything written so far durable.
    fn start_flush(&mut self) {
        let storage = self.storage.clone();
        let seconds = self.metrics.flush_seconds.clone();
        self.flushing = Some(tokio::spawn(async move {
            let started = Instant::now();
            let durable = storage.flush().await;
            seconds.observe(started.elapsed().as_secs_f64());
            durable
        }));
        self.written_since_flush = 0;
        self.last_flush = Instant::now();
    }

    /// Waits for the flush under way, if any, and commits the offsets it made durable.
    async fn finish_flush(&mut self, update_lag: bool) -> Result<(), IngestError> {
        let Some(flushing) = self.flushing.take() else {
            return Ok(());
        };
        let durable = flushing
            .await
            .map_err(|e| IngestError::Task(e.to_string()))??;
        self.commit(durable, update_lag).await
    }

    /// Notes how old the record just written was (`None`: a poll found nothing waiting).
    fn record_delay(&self, appended_ms: Option<i64>) {
        let delay = self.delay.written(appended_ms);
        self.metrics.delay.set(delay.as_secs_f64());
    }

    async fn write(&mut self, record: bus::ConsumedRecord) -> Result<(), IngestError> {
        let topic = TopicLabels {
            topic: record.topic.to_string(),
        };
        let position = BusPosition {
            topic: record.topic.to_string(),
            partition: record.partition,
            offset: record.offset,
        };
        let envelope = match Envelope::decode(&record.value) {
            Ok(envelope) => envelope,
            Err(error) => {
                tracing::error!(topic = %record.topic, partition = record.partition, offset = record.offset, %error, "skipping a bus record that cannot be decoded");
                self.metrics.undecodable.get_or_create(&topic).inc();
                return Ok(());
            }
        };
        match self
            .storage
            .write(&envelope.tenant, envelope.payload, &position)
            .await
        {
            Ok(summary) => {
                self.metrics
                    .items
                    .get_or_create(&topic)
                    .inc_by(summary.accepted);
                self.metrics
                    .too_old
                    .get_or_create(&topic)
                    .inc_by(summary.too_old);
            }
            Err(storage::StorageError::Decode(reason)) => {
                tracing::error!(topic = %record.topic, partition = record.partition, offset = record.offset, %reason, "skipping a bus record whose payload cannot be decoded");
                self.metrics.undecodable.get_or_create(&topic).inc();
            }
            Err(error) => return Err(error.into()),
        }
        self.metrics.records.get_or_create(&topic).inc();
        self.written_since_flush += 1;
        Ok(())
    }

    /// Commits to the bus what storage made durable (and, with `update_lag`, refreshes the
    /// lag gauges).
    async fn commit(
        &mut self,
        durable: DurableOffsets,
        update_lag: bool,
    ) -> Result<(), IngestError> {
        let assigned = self.consumer.assignment();
        let commits: Vec<(TopicPartition, u64)> = durable
            .iter()
            .map(|((topic, partition), offset)| (TopicPartition::new(topic, *partition), *offset))
            .filter(|(tp, _)| assigned.contains(tp))
            .collect();
        if !commits.is_empty() {
            match self.consumer.commit(&commits).await {
                Ok(()) => {}
                // Lost in a rebalance: the new owner resumes from the last commit and replays.
                Err(error) if error.is_retryable() => {
                    tracing::warn!(%error, "offset commit refused; the data stays durable")
                }
                Err(error) => return Err(error.into()),
            }
        }
        for tp in assigned.iter().filter(|_| update_lag) {
            let watermarks = match self.bus.watermarks(&tp.topic, tp.partition).await {
                Ok(watermarks) => watermarks,
                // The bus is away: the gauges keep their last values until it is back.
                Err(error) => {
                    tracing::debug!(%error, "cannot read the bus watermarks for the lag gauge");
                    break;
                }
            };
            let done = durable
                .get(&(tp.topic.to_string(), tp.partition))
                .copied()
                .unwrap_or(watermarks.log_start);
            self.metrics
                .lag
                .get_or_create(&PartitionLabels {
                    topic: tp.topic.to_string(),
                    partition: tp.partition.to_string(),
                })
                .set(watermarks.high_watermark.saturating_sub(done) as i64);
        }
        Ok(())
    }
}
