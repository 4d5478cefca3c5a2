//! Components shared by the roles.

use std::sync::Arc;

use anyhow::Context;
use async_trait::async_trait;
use bus::Bus;
use bus::embedded::EmbeddedBus;

use crate::config::Config;
use crate::http::SharedRegistry;
use crate::lifecycle::Component;

/// The embedded bus, opened (recovering its log) and with Meerkat's topics in place.
#[derive(Debug)]
pub struct EmbeddedBusComponent {
    pub bus: Arc<EmbeddedBus>,
}

impl EmbeddedBusComponent {
    pub async fn start(config: &Config, registry: &SharedRegistry) -> anyhow::Result<Self> {
        let dir = config.bus_dir();
        let bus_config = config.bus.embedded.clone();
        let opened_in = dir.clone();
        // Opening recovers every partition: file I/O that must not stall the reactor.
        let bus = tokio::task::spawn_blocking(move || EmbeddedBus::open(&opened_in, bus_config))
            .await
            .context("bus start-up task failed")?
            .with_context(|| format!("cannot open the embedded bus in {}", dir.display()))?;
        bus.register_metrics(&mut registry.write().unwrap_or_else(|e| e.into_inner()));
        for topic in bus::topics::ALL {
            bus.ensure_topic(topic, config.bus.partitions)
                .await
                .with_context(|| format!("cannot set up bus topic {topic}"))?;
        }
        tracing::info!(dir = %dir.display(), "embedded bus ready");
        Ok(Self { bus: Arc::new(bus) })
    }
}

#[async_trait]
impl Component for EmbeddedBusComponent {
    fn name(&self) -> &'static str {
        "embedded bus"
    }

    async fn stop(self: Box<Self>) -> anyhow::Result<()> {
        self.bus
            .close()
            .await
            .context("cannot close the embedded bus")
    }
}

/// The gateway: decoders and limits in front of the bus. Its main-port routes are served
/// by the role's HTTP server (which drains them on stop); the OTLP listeners are its own.
#[derive(Debug)]
pub struct GatewayComponent {
    pub gateway: gateway::Gateway,
    otlp: gateway::OtlpServers,
    grace: std::time::Duration,
}

impl GatewayComponent {
    pub async fn start(
        config: &Config,
        bus: Arc<dyn Bus>,
        registry: &SharedRegistry,
    ) -> anyhow::Result<Self> {
        let metrics = gateway::metrics::GatewayMetrics::new(
            &mut registry.write().unwrap_or_else(|e| e.into_inner()),
        );
        let gateway = gateway::Gateway::new(&config.gateway, bus, metrics)
            .await
            .context("cannot start the gateway")?;
        let otlp =
            gateway::OtlpServers::start(&gateway, config.otlp_grpc_listen, config.otlp_http_listen)
                .await
                .context("cannot start the OTLP receivers")?;
        Ok(Self {
            gateway,
            otlp,
            grace: std::time::Duration::from_secs(config.shutdown.grace_period_seconds),
        })
    }
}

#[async_trait]
impl Component for GatewayComponent {
    fn name(&self) -> &'static str {
        "gateway"
    }

    async fn stop(self: Box<Self>) -> anyhow::Result<()> {
        self.otlp.stop(self.grace).await;
        Ok(())
    }
}

/// The embedded store, opened (index rebuilt from disk), with retention and compaction
/// running every ten minutes.
#[derive(Debug)]
pub struct EmbeddedStoreComponent {
    pub store: Arc<storage::embedded::EmbeddedStore>,
    retention: tokio::task::JoinHandle<()>,
}

impl EmbeddedStoreComponent {
    pub async fn start(config: &Config) -> anyhow::Result<Self> {
        let dir = config.store_dir();
        let store_config = config.storage.embedded.clone();
        let opened_in = dir.clone();
        let store = tokio::task::spawn_blocking(move || {
            storage::embedded::EmbeddedStore::open(&opened_in, store_config)
        })
        .await
        .context("store start-up task failed")?
        .with_context(|| format!("cannot open the embedded store in {}", dir.display()))?;
        let store = Arc::new(store);
        let retention = tokio::spawn({
            let store = store.clone();
            async move {
                let mut tick = tokio::time::interval(std::time::Duration::from_secs(3600));
                loop {
                    tick.tick().await;
                    let now = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |d| d.as_millis() as i64);
                    if let Err(error) =
                        storage::Storage::enforce_retention(store.as_ref(), now).await
                    {
                        tracing::error!(%error, "store retention failed");
                    }
                }
            }
        });
        tracing::info!(dir = %dir.display(), "embedded store ready");
        Ok(Self { store, retention })
    }
}

#[async_trait]
impl Component for EmbeddedStoreComponent {
    fn name(&self) -> &'static str {
        "embedded store"
    }

    async fn stop(self: Box<Self>) -> anyhow::Result<()> {
        self.retention.abort();
        storage::Storage::close(self.store.as_ref())
            .await
            .context("cannot close the embedded store")
    }
}

/// The ingest worker: bus → storage.
#[derive(Debug)]
pub struct IngestComponent {
    worker: ingest::IngestWorker,
}

impl IngestComponent {
    pub async fn start(
        config: &Config,
        bus: Arc<dyn Bus>,
        store: Arc<dyn storage::Storage>,
        registry: &SharedRegistry,
    ) -> anyhow::Result<Self> {
        let metrics =
            ingest::IngestMetrics::new(&mut registry.write().unwrap_or_else(|e| e.into_inner()));
        let worker = ingest::IngestWorker::start(bus, store, config.ingest.clone(), metrics)
            .await
            .context("cannot start ingest")?;
        Ok(Self { worker })
    }
}

#[async_trait]
impl Component for IngestComponent {
    fn name(&self) -> &'static str {
        "ingest"
    }

    async fn stop(self: Box<Self>) -> anyhow::Result<()> {
        self.worker
            .stop()
            .await
            .context("ingest did not stop cleanly")
    }
}
