//! Running a server role: `meerkat serve` (standalone mode, every server role in one
//! process), `meerkat gateway`, `meerkat ingest` and `meerkat query`.
//!
//! Today `serve` is the HTTP server (`/health`, `/metrics`), the bus, the store, ingest,
//! the query API, alerting and the gateway, started in that order and stopped in reverse (so
//! the gateway stops accepting first, rule evaluation stops, ingest flushes, then the store
//! and the bus close). `gateway` is the bus and the gateway alone; `ingest` the bus, the
//! store and ingest; `query` the store and the query API; `alerting` the store (read), the
//! bus (rule results and alert events go onto it) and the rules. The bus and the store are
//! the configured engines: embedded by default, Kafka and ClickHouse in distributed mode (a
//! lone gateway on the embedded bus is a gateway with a durable buffer on local disk that
//! nothing reads). A lone `query` or `alerting` needs ClickHouse: the embedded store belongs to the one
//! process that writes it.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use prometheus_client::registry::Registry;

use crate::components::{
    AlertingComponent, BusComponent, GatewayComponent, HostMetricsComponent, IngestComponent,
    StoreComponent,
};
use anyhow::Context;

use crate::config::{Config, Sources, StorageEngine};
use crate::http::{HttpServer, Readiness, SharedRegistry};
use crate::lifecycle::{Component, ShutdownSignals, stop_all};
use crate::telemetry::register_process_metrics;

/// The server roles this build can run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Serve,
    Gateway,
    Ingest,
    Query,
    Alerting,
}

impl Role {
    fn name(self) -> &'static str {
        match self {
            Self::Serve => "serve",
            Self::Gateway => "gateway",
            Self::Ingest => "ingest",
            Self::Query => "query",
            Self::Alerting => "alerting",
        }
    }
}

pub async fn run(role: Role, config: Config, sources: Sources) -> anyhow::Result<()> {
    if matches!(role, Role::Query | Role::Alerting)
        && config.storage.engine == StorageEngine::Embedded
    {
        anyhow::bail!(
            "meerkat {} reads ClickHouse (storage.engine: clickhouse); the embedded store \
             is read by the process that writes it: run `meerkat serve`",
            role.name()
        );
    }
    let mut signals = ShutdownSignals::install()?;
    let role_name = role.name();
    tracing::info!(version = crate::VERSION_LINE, config = %sources, data_dir = %config.data_dir.display(), "meerkat {role_name} starting");
    let registry: SharedRegistry = Arc::new(RwLock::new(Registry::default()));
    register_process_metrics(&mut registry.write().unwrap_or_else(|e| e.into_inner()));
    let readiness = Readiness::default();
    let grace = Duration::from_secs(config.shutdown.grace_period_seconds);

    // The HTTP server comes up first so `/health` can answer 503 while the rest starts.
    let http = HttpServer::start(config.http_listen, registry.clone(), readiness.clone()).await?;

    let mut components: Vec<Box<dyn Component>> = Vec::new();
    let started: anyhow::Result<()> = async {
        let mut routes = axum::Router::new();
        let bus = if role == Role::Query {
            None
        } else {
            let bus = BusComponent::start(&config, &registry).await?;
            let shared: Arc<dyn bus::Bus> = bus.bus.clone();
            components.push(Box::new(bus));
            Some(shared)
        };
        let mut backlog = None;
        if matches!(
            role,
            Role::Serve | Role::Ingest | Role::Query | Role::Alerting
        ) {
            // Retention and compaction are the writer's: lone query and alerting roles only
            // read.
            let maintain = matches!(role, Role::Serve | Role::Ingest);
            let store = StoreComponent::start(&config, maintain).await?;
            let shared_store: Arc<dyn storage::Storage> = store.store.clone();
            components.push(Box::new(store));
            if let Some(bus) = &bus
                && matches!(role, Role::Serve | Role::Ingest)
            {
                let ingest =
                    IngestComponent::start(&config, bus.clone(), shared_store.clone(), &registry)
                        .await?;
                backlog = Some(ingest.backlog());
                components.push(Box::new(ingest));
            }
            if matches!(role, Role::Serve | Role::Query) {
                if role == Role::Query && config.gateway.auth.tokens.is_empty() {
                    tracing::warn!(
                        "auth is off (gateway.auth.tokens is empty): any caller may read any \
                         tenant by naming it in X-Scope-OrgID; give this role the gateway's tokens"
                    );
                }
                let service = query::QueryService::new(
                    shared_store.clone(),
                    &config.gateway.auth,
                    config.query.clone(),
                )
                .context("cannot start the query API")?
                .with_storage_retention(format!("{}s", config.storage.retention_seconds()));
                routes = routes.merge(service.http_routes());
            }
            if let Some(bus) = &bus
                && matches!(role, Role::Serve | Role::Alerting)
            {
                let alerting = AlertingComponent::start(
                    &config,
                    bus.clone(),
                    shared_store.clone(),
                    http.local_addr,
                )
                .await?;
                let tenants = model::auth::TenantResolver::new(&config.gateway.auth)
                    .context("cannot start the alerting API")?;
                routes = routes.merge(alerting::api::routes(alerting.manager.clone(), tenants));
                components.push(Box::new(alerting));
            }
        }
        if let Some(bus) = bus
            && matches!(role, Role::Serve | Role::Gateway)
        {
            let gateway = GatewayComponent::start(&config, bus, &registry).await?;
            if let Some(backlog) = backlog.take() {
                gateway.gateway.set_backlog(backlog);
            }
            routes = routes.merge(gateway.gateway.http_routes());
            components.push(Box::new(gateway));
        }
        http.set_routes(routes);
        Ok(())
    }
    .await;
    if let Err(error) = started {
        let _ = http.stop(grace).await;
        let _ = stop_all(components, &mut signals).await;
        return Err(error);
    }

    readiness.set(true);
    tracing::info!(http = %http.local_addr, "meerkat {role_name} ready");
    let host_metrics = if role == Role::Serve && config.host_metrics.enabled {
        // Optional: a failure to start it is said, and everything else keeps serving.
        HostMetricsComponent::start(&config, http.local_addr)
            .inspect_err(|error| tracing::error!(%error, "host metrics are off"))
            .ok()
    } else {
        None
    };

    let signal = signals.recv().await;
    tracing::info!(signal, "shutting down: draining requests, then flushing");
    if let Some(host_metrics) = host_metrics {
        host_metrics.stop().await;
    }
    readiness.set(false);
    let http_stopped = http.stop(grace).await;
    stop_all(components, &mut signals).await?;
    http_stopped?;
    tracing::info!("stopped cleanly");
    Ok(())
}
