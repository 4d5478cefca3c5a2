//! Components shared by the roles.

use std::sync::Arc;

use anyhow::Context;
use async_trait::async_trait;
use bus::Bus;
use bus::embedded::EmbeddedBus;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use storage::Storage;
use storage::clickhouse::ClickHouseStore;
use storage::embedded::EmbeddedStore;

use crate::config::{BusEngine, Config, StorageEngine};
use crate::http::SharedRegistry;
use crate::lifecycle::Component;

/// The bus the configuration names (`bus.engine`), with Meerkat's topics in place.
#[derive(Debug)]
pub struct BusComponent {
    pub bus: Arc<dyn Bus>,
}

impl BusComponent {
    pub async fn start(config: &Config, registry: &SharedRegistry) -> anyhow::Result<Self> {
        let bus: Arc<dyn Bus> = match config.bus.engine {
            BusEngine::Embedded => open_embedded_bus(config, registry).await?,
            BusEngine::Kafka => {
                let kafka = bus::kafka::KafkaBus::new(config.bus.kafka.clone())
                    .context("cannot set up the Kafka bus")?;
                tracing::info!(brokers = %config.bus.kafka.brokers, "Kafka bus");
                Arc::new(kafka)
            }
        };
        for topic in bus::topics::ALL {
            bus.ensure_topic(topic, config.bus.partitions)
                .await
                .with_context(|| format!("cannot set up bus topic {topic}"))?;
        }
        Ok(Self { bus })
    }
}

/// Opens the embedded bus, recovering its log.
async fn open_embedded_bus(
    config: &Config,
    registry: &SharedRegistry,
) -> anyhow::Result<Arc<dyn Bus>> {
    let dir = config.bus_dir();
    let bus_config = config.bus.embedded.clone();
    let opened_in = dir.clone();
    // Opening recovers every partition: file I/O that must not stall the reactor.
    let bus = tokio::task::spawn_blocking(move || EmbeddedBus::open(&opened_in, bus_config))
        .await
        .context("bus start-up task failed")?
        .with_context(|| format!("cannot open the embedded bus in {}", dir.display()))?;
    bus.register_metrics(&mut registry.write().unwrap_or_else(|e| e.into_inner()));
    tracing::info!(dir = %dir.display(), "embedded bus ready");
    Ok(Arc::new(bus))
}

#[async_trait]
impl Component for BusComponent {
    fn name(&self) -> &'static str {
        "bus"
    }

    async fn stop(self: Box<Self>) -> anyhow::Result<()> {
        self.bus.close().await.context("cannot close the bus")
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

/// The store the configuration names (`storage.engine`), with its maintenance: retention
/// (and, for the embedded store, compaction) every [`MAINTENANCE_INTERVAL`].
#[derive(Debug)]
pub struct StoreComponent {
    pub store: Arc<dyn Storage>,
    maintenance: Option<tokio::task::JoinHandle<()>>,
}

/// How often retention (and compaction) runs.
const MAINTENANCE_INTERVAL: Duration = Duration::from_secs(600);

impl StoreComponent {
    /// Opens the store; with `with_maintenance`, runs its retention and compaction too
    /// (the writer's job: a read-only role leaves it to the role that ingests).
    pub async fn start(config: &Config, with_maintenance: bool) -> anyhow::Result<Self> {
        let (store, compacted): (Arc<dyn Storage>, _) = match config.storage.engine {
            StorageEngine::Embedded => {
                let dir = config.store_dir();
                let store_config = config.storage.embedded.clone();
                let opened_in = dir.clone();
                let store = tokio::task::spawn_blocking(move || {
                    EmbeddedStore::open(&opened_in, store_config)
                })
                .await
                .context("store start-up task failed")?
                .with_context(|| format!("cannot open the embedded store in {}", dir.display()))?;
                let store = Arc::new(store);
                tracing::info!(dir = %dir.display(), "embedded store ready");
                (store.clone(), Some(store))
            }
            StorageEngine::Clickhouse => {
                let clickhouse = &config.storage.clickhouse;
                let store = ClickHouseStore::open(clickhouse.clone())
                    .await
                    .with_context(|| {
                        format!(
                            "cannot open ClickHouse database {} at {}",
                            clickhouse.database, clickhouse.url
                        )
                    })?;
                tracing::info!(url = %clickhouse.url, database = %clickhouse.database,
                    version = %store.server_version(), "ClickHouse store ready");
                (Arc::new(store), None)
            }
        };
        let maintenance = with_maintenance.then(|| maintain(store.clone(), compacted));
        Ok(Self { store, maintenance })
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Runs retention, then compaction of the embedded store when there is one, every
/// [`MAINTENANCE_INTERVAL`], logging failures: a failed pass is retried at the next one.
fn maintain(
    store: Arc<dyn Storage>,
    compacted: Option<Arc<EmbeddedStore>>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(MAINTENANCE_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let now = now_ms();
            if let Err(error) = store.enforce_retention(now).await {
                tracing::error!(%error, "store retention failed");
            }
            if let Some(embedded) = &compacted
                && let Err(error) = embedded.compact(now).await
            {
                tracing::error!(%error, "store compaction failed");
            }
        }
    })
}

#[async_trait]
impl Component for StoreComponent {
    fn name(&self) -> &'static str {
        "store"
    }

    async fn stop(self: Box<Self>) -> anyhow::Result<()> {
        if let Some(maintenance) = self.maintenance {
            maintenance.abort();
        }
        self.store.close().await.context("cannot close the store")
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

    /// Ingest's delay, as the gateway's [`gateway::Backlog`] in standalone mode.
    pub fn backlog(&self) -> Arc<dyn gateway::Backlog> {
        let delay = self.worker.delay();
        Arc::new(move || delay.get())
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

/// `serve`'s own host metrics: the node agent's host collector in-process, writing through
/// this process's gateway over loopback, so they take the same path (auth, limits, durable
/// append) as any agent's. Stopped before the HTTP server so its stale markers get in.
#[derive(Debug)]
pub struct HostMetricsComponent {
    delivery: delivery::Delivery,
    delivery_task: tokio::task::JoinHandle<()>,
    stop: tokio::sync::oneshot::Sender<()>,
    collecting: tokio::task::JoinHandle<()>,
}

impl HostMetricsComponent {
    pub fn start(config: &Config, http: std::net::SocketAddr) -> anyhow::Result<Self> {
        let target = if http.ip().is_unspecified() {
            std::net::SocketAddr::from(([127, 0, 0, 1], http.port()))
        } else {
            http
        };
        let mut remote = delivery::RemoteWriteConfig::new(format!("http://{target}/api/v1/write"));
        match config.host_metrics_token()? {
            Some(token) => remote
                .headers
                .push(("authorization".to_owned(), format!("Bearer {token}"))),
            // Auth is off: the tenant is named by the header.
            None => remote.headers.push((
                "x-scope-orgid".to_owned(),
                config.host_metrics.tenant.clone(),
            )),
        }
        let (delivery, delivery_task) =
            delivery::Delivery::start(remote).context("cannot start host metrics delivery")?;
        let labels = vec![
            ("instance".to_owned(), agent_node::agent::hostname()),
            ("job".to_owned(), "node".to_owned()),
        ];
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let collector =
            agent_node::host::HostCollector::new(agent_node::host::HostOptions::new("/"));
        let collecting = tokio::spawn(agent_node::agent::run_host_metrics(
            collector,
            delivery.clone(),
            labels,
            std::time::Duration::from_secs(config.host_metrics.interval_seconds),
            async move {
                let _ = stopped.await;
            },
        ));
        tracing::info!(
            interval_seconds = config.host_metrics.interval_seconds,
            "collecting this machine's metrics (job=\"node\"); --no-host-metrics turns it off"
        );
        Ok(Self {
            delivery,
            delivery_task,
            stop,
            collecting,
        })
    }

    /// Marks the host series stale and flushes them into the gateway.
    pub async fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.collecting.await;
        agent_node::agent::finish_delivery(&self.delivery, self.delivery_task).await;
    }
}

/// Rule results and alert events onto the bus, as the gateway puts everything else: ingest
/// stores them, so recorded series and alert history are queryable like any data.
#[derive(Debug)]
struct BusRuleSink(gateway::Sink);

#[async_trait]
impl alerting::manager::RuleSink for BusRuleSink {
    async fn write(&self, tenant: &model::TenantId, payload: model::Payload) -> Result<(), String> {
        self.0
            .write(tenant, payload)
            .await
            .map_err(|e| e.to_string())
    }
}

/// The alerting role: every tenant's rule groups, evaluated on their intervals, notifying
/// Alertmanager and webhooks, reloaded when their files change.
#[derive(Debug)]
pub struct AlertingComponent {
    pub manager: alerting::manager::RuleManager,
    notifier_task: tokio::task::JoinHandle<()>,
    _watcher: Option<alerting::manager::RuleWatcher>,
}

impl AlertingComponent {
    pub async fn start(
        config: &Config,
        bus: Arc<dyn Bus>,
        store: Arc<dyn Storage>,
        http_addr: std::net::SocketAddr,
    ) -> anyhow::Result<Self> {
        let alerting_config = &config.alerting;
        let external_url = if alerting_config.external_url.is_empty() {
            format!("http://{http_addr}")
        } else {
            alerting_config.external_url.clone()
        };
        let mut rule_files = vec![(
            model::TenantId::default_tenant(),
            alerting_config.rule_files.clone(),
        )];
        for (tenant, patterns) in &alerting_config.tenant_rule_files {
            rule_files.push((model::TenantId::new(tenant)?, patterns.clone()));
        }
        let settings = alerting::rules::EvalSettings {
            external_labels: alerting_config.external_labels.clone(),
            external_url: external_url.clone(),
            resend_delay_ms: alerting_config.resend_delay_seconds as i64 * 1000,
        };
        let (notifier, notifier_task) =
            alerting::notifier::Notifier::start(alerting::notifier::NotifierConfig {
                alertmanager_urls: alerting_config.alertmanager_urls.clone(),
                webhook_urls: alerting_config.webhook_urls.clone(),
                external_labels: alerting_config.external_labels.clone(),
                external_url,
                ..Default::default()
            })
            .map_err(|e| anyhow::anyhow!("alerting: {e}"))?;
        let sink = BusRuleSink(
            gateway::Sink::new(bus, gateway::DEFAULT_MAX_RECORD_BYTES)
                .await
                .context("alerting cannot write to the bus")?,
        );
        let limits = query::promql::Limits {
            max_series: config.query.max_series,
            max_samples: config.query.max_samples,
        };
        let manager = alerting::manager::RuleManager::start(
            alerting::manager::ManagerConfig {
                rule_files,
                evaluation_interval_ms: alerting_config.evaluation_interval_seconds as i64 * 1000,
                settings,
            },
            store,
            limits,
            Arc::new(sink),
            notifier,
        )
        .await
        .map_err(|errors| {
            let text: Vec<String> = errors.iter().map(ToString::to_string).collect();
            anyhow::anyhow!("cannot load the rule files:\n  {}", text.join("\n  "))
        })?;
        let watcher = manager
            .watch()
            .inspect_err(
                |error| tracing::warn!(%error, "rule files will reload only on POST /-/reload"),
            )
            .ok();
        Ok(Self {
            manager,
            notifier_task,
            _watcher: watcher,
        })
    }
}

#[async_trait]
impl Component for AlertingComponent {
    fn name(&self) -> &'static str {
        "alerting"
    }

    async fn stop(self: Box<Self>) -> anyhow::Result<()> {
        self.manager.stop().await;
        // Queued notifications get a moment to go out.
        let _ = tokio::time::timeout(Duration::from_secs(5), self.notifier_task).await;
        Ok(())
    }
}
