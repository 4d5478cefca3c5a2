//! Ingest's delay: how old the data it writes is, which the gateway waits on in standalone
//! mode.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bus::embedded::{EmbeddedBus, EmbeddedBusConfig};
use bus::{Bus, ProduceRecord, topics};
use ingest::{IngestConfig, IngestMetrics, IngestWorker};
use model::{Envelope, Labels, MetricBatch, Payload, Sample, Series, TenantId};
use storage::Storage;
use storage::embedded::{EmbeddedStore, EmbeddedStoreConfig};

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// One sample of `up{seq=…}`, as a bus record stamped `appended_ms`.
fn record(seq: u32, appended_ms: i64) -> ProduceRecord {
    let envelope = Envelope {
        tenant: TenantId::new("default").unwrap(),
        payload: Payload::Metrics(MetricBatch {
            series: vec![Series::with_samples(
                Labels::new([("__name__", "up"), ("seq", &seq.to_string())]).unwrap(),
                vec![Sample {
                    timestamp_ms: now_ms(),
                    value: 1.0,
                }],
            )],
            metadata: vec![],
        }),
    };
    ProduceRecord::new(envelope.encode().unwrap())
        .with_partition(0)
        .with_timestamp_ms(appended_ms)
}

async fn wait_for(what: &str, mut done: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// An embedded bus in `dir` with one partition per topic, and an ingest worker from it
/// into `store`; the registry holds the worker's metrics.
async fn start(
    dir: &std::path::Path,
    store: Arc<dyn Storage>,
) -> (
    Arc<dyn Bus>,
    IngestWorker,
    prometheus_client::registry::Registry,
) {
    let bus: Arc<dyn Bus> =
        Arc::new(EmbeddedBus::open(dir.join("bus"), EmbeddedBusConfig::default()).unwrap());
    for topic in topics::ALL {
        bus.ensure_topic(topic, 1).await.unwrap();
    }
    let mut registry = prometheus_client::registry::Registry::default();
    let worker = IngestWorker::start(
        bus.clone(),
        store,
        IngestConfig::default(),
        IngestMetrics::new(&mut registry),
    )
    .await
    .unwrap();
    (bus, worker, registry)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_delay_is_the_age_of_the_newest_record_written_and_zero_when_caught_up() {
    let dir = tempfile::TempDir::new().unwrap();
    let store = Arc::new(
        EmbeddedStore::open(dir.path().join("store"), EmbeddedStoreConfig::default()).unwrap(),
    );
    let (bus, worker, registry) = start(dir.path(), store.clone()).await;
    let delay = worker.delay();
    assert_eq!(delay.get(), Duration::ZERO);

    // Records appended 30 s ago, as if ingest had been stopped that long.
    let long_ago = now_ms() - 30_000;
    bus.produce(
        topics::METRICS,
        (0..3)
            .map(|seq| record(seq, long_ago + i64::from(seq)))
            .collect(),
    )
    .await
    .unwrap();
    let tenant = TenantId::new("default").unwrap();
    let stored = async || {
        store
            .select(&tenant, &[], i64::MIN, i64::MAX)
            .await
            .unwrap()
            .len()
    };
    let mut seen = Duration::ZERO;
    wait_for("the old records to be written", async || {
        seen = seen.max(delay.get());
        stored().await == 3 && seen > Duration::ZERO
    })
    .await;
    assert!(
        (Duration::from_secs(29)..Duration::from_secs(40)).contains(&seen),
        "{seen:?}"
    );
    // Once a poll finds nothing more, ingest is caught up.
    wait_for("the delay to fall to zero", async || {
        delay.get() == Duration::ZERO
    })
    .await;

    bus.produce(topics::METRICS, vec![record(3, now_ms())])
        .await
        .unwrap();
    wait_for("the fresh record to be written", async || {
        stored().await == 4
    })
    .await;
    assert!(delay.get() < Duration::from_secs(5), "{:?}", delay.get());

    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    assert!(text.contains("meerkat_ingest_delay_seconds"), "{text}");
    worker.stop().await.unwrap();
}

/// The embedded store, with writes that can be made to stall or fail.
#[derive(Debug)]
struct Faulty {
    inner: Arc<EmbeddedStore>,
    stall: std::sync::Mutex<Duration>,
    fail: std::sync::atomic::AtomicBool,
}

#[async_trait::async_trait]
impl Storage for Faulty {
    async fn write(
        &self,
        tenant: &TenantId,
        payload: Payload,
        position: &storage::BusPosition,
    ) -> storage::Result<storage::WriteSummary> {
        if self.fail.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(storage::StorageError::Closed);
        }
        let stall = *self.stall.lock().unwrap();
        tokio::time::sleep(stall).await;
        self.inner.write(tenant, payload, position).await
    }
    async fn flush(&self) -> storage::Result<storage::DurableOffsets> {
        self.inner.flush().await
    }
    async fn durable_offsets(&self) -> storage::Result<storage::DurableOffsets> {
        self.inner.durable_offsets().await
    }
    async fn select(
        &self,
        tenant: &TenantId,
        matchers: &[storage::Matcher],
        start_ms: i64,
        end_ms: i64,
    ) -> storage::Result<Vec<storage::SeriesSamples>> {
        self.inner.select(tenant, matchers, start_ms, end_ms).await
    }
    async fn label_names(
        &self,
        tenant: &TenantId,
        matchers: &[storage::Matcher],
    ) -> storage::Result<Vec<String>> {
        self.inner.label_names(tenant, matchers).await
    }
    async fn label_values(
        &self,
        tenant: &TenantId,
        name: &str,
        matchers: &[storage::Matcher],
    ) -> storage::Result<Vec<String>> {
        self.inner.label_values(tenant, name, matchers).await
    }
    async fn series(
        &self,
        tenant: &TenantId,
        matchers: &[storage::Matcher],
        range: Option<(i64, i64)>,
    ) -> storage::Result<Vec<model::Labels>> {
        self.inner.series(tenant, matchers, range).await
    }
    async fn metadata(&self, tenant: &TenantId) -> storage::Result<Vec<model::MetricMetadata>> {
        self.inner.metadata(tenant).await
    }
    async fn session(
        &self,
        tenant: &TenantId,
    ) -> storage::Result<datafusion::prelude::SessionContext> {
        self.inner.session(tenant).await
    }
    async fn enforce_retention(&self, now_ms: i64) -> storage::Result<()> {
        self.inner.enforce_retention(now_ms).await
    }
    async fn close(&self) -> storage::Result<()> {
        self.inner.close().await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_write_and_a_dead_worker_show_as_a_growing_delay() {
    let dir = tempfile::TempDir::new().unwrap();
    let store = Arc::new(Faulty {
        inner: Arc::new(
            EmbeddedStore::open(dir.path().join("store"), EmbeddedStoreConfig::default()).unwrap(),
        ),
        stall: std::sync::Mutex::new(Duration::from_secs(3)),
        fail: std::sync::atomic::AtomicBool::new(false),
    });
    let (bus, worker, _registry) = start(dir.path(), store.clone()).await;
    let delay = worker.delay();

    // A fresh record whose write takes 3 s: the delay grows while it is stuck, not only
    // once it is written.
    let started = Instant::now();
    bus.produce(topics::METRICS, vec![record(0, now_ms())])
        .await
        .unwrap();
    wait_for("the delay of the stuck write to pass 1 s", async || {
        delay.get() > Duration::from_secs(1)
    })
    .await;
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "seen before the write ended"
    );

    wait_for(
        "the stuck write to end and ingest to catch up",
        async || delay.get() == Duration::ZERO,
    )
    .await;

    // A worker that fails stops writing for good: its delay keeps growing.
    *store.stall.lock().unwrap() = Duration::ZERO;
    store.fail.store(true, std::sync::atomic::Ordering::Relaxed);
    bus.produce(topics::METRICS, vec![record(1, now_ms())])
        .await
        .unwrap();
    let first = Instant::now();
    wait_for(
        "the worker to stop and its delay to grow past 2 s",
        async || delay.get() > Duration::from_secs(2),
    )
    .await;
    assert!(first.elapsed() >= Duration::from_millis(1500));
    assert!(worker.stop().await.is_err(), "the worker failed");
}
