//! The cluster agent, one Deployment per Kubernetes cluster.
//!
//! It runs a Prometheus configuration file's `scrape_configs` as they are (the scrape engine
//! is the `scrape` crate, shared with the node agent) and delivers what it scrapes to the
//! gateway by remote-write (`delivery`). It never links the server: the gateway is an HTTP
//! address. The configuration is re-read when the file changes or on SIGHUP; a broken new
//! file is logged and the running one kept, as Prometheus does. On stop every series is
//! marked stale and the buffer flushed.
//!
//! It announces itself to the gateway with a heartbeat (cluster name, version, start time;
//! `delivery::heartbeat`), which keeps the live list of agents.
//!
//! `kubernetes_sd_configs` (roles pod, service, endpoints, node) are discovered by kube
//! watchers (`kube-discovery`, see [`kubernetes`]) whose groups are re-applied, debounced,
//! when they change.
//!
//! Cluster state metrics with kube-state-metrics v2's names ([`cluster_state`]) and the
//! cluster's Kubernetes events as platform events ([`kube_events`], posted to the gateway's
//! `/api/v1/events`) run when the agent can reach the API server: `--kube-api-url`, or in a
//! pod (`KUBERNETES_SERVICE_HOST`).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

pub mod cluster_state;
pub mod kube_events;
mod kubernetes;

use delivery::heartbeat::{AgentKind, Heartbeat, HeartbeatConfig, stable_agent_id};
use delivery::{Delivery, RemoteWriteConfig};
use scrape::config::PrometheusConfig;
use scrape::remote_write::RemoteWriteSink;
use scrape::scraper::{ScrapeManager, http_client};

/// How the agent is started.
#[derive(Clone, Debug)]
pub struct ClusterAgentOptions {
    /// The Prometheus configuration file (`scrape_configs`, optionally `remote_write`).
    pub scrape_config: PathBuf,
    /// The gateway's base URL; remote-write goes to `<gateway>/api/v1/write` unless the
    /// configuration file names a `remote_write` URL.
    pub gateway: String,
    /// Headers sent with every remote-write request (a tenant token, say).
    pub headers: Vec<(String, String)>,
    /// Remote-write requests held while the gateway does not take them.
    pub buffer_bytes: usize,
    /// Where they wait on disk (a restart sends them); `None`: memory only.
    pub buffer_dir: Option<PathBuf>,
    /// The cluster this agent announces in its heartbeat; empty: the configuration's
    /// external label `cluster`, else `default`.
    pub cluster_name: String,
    /// How often the agent tells the gateway it is alive.
    pub heartbeat_interval: Duration,
    /// The Kubernetes API server for `kubernetes_sd_configs` (`http(s)://host:port`);
    /// `None`: the pod's service account (in a cluster) or the kubeconfig.
    pub kube_api_url: Option<String>,
    /// Cluster state metrics (kube-state-metrics names), when the API server is reachable.
    pub cluster_state: bool,
    /// How often they are sent; `None`: the configuration's global `scrape_interval`
    /// (Prometheus's default, 1 m, without one), as a scrape of kube-state-metrics would.
    pub cluster_state_interval: Option<Duration>,
    /// The cluster's Kubernetes events to the gateway, when the API server is reachable.
    pub kube_events: bool,
    /// Where the agent's own `/metrics` and `/health` listen; `None`: nowhere.
    pub metrics_listen: Option<std::net::SocketAddr>,
}

/// Why the agent cannot start.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Config { path: String, message: String },
    #[error(transparent)]
    Delivery(#[from] delivery::DeliveryError),
    #[error("cannot install the SIGHUP handler: {0}")]
    Signal(std::io::Error),
    #[error("Kubernetes events: invalid gateway URL {url:?}: {reason}")]
    EventsUrl { url: String, reason: String },
    #[error("cannot listen on {addr} for the agent's metrics: {source}")]
    MetricsListen {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
}

fn load(path: &PathBuf) -> Result<PrometheusConfig, AgentError> {
    let text = std::fs::read_to_string(path).map_err(|source| AgentError::Read {
        path: path.display().to_string(),
        source,
    })?;
    let config = PrometheusConfig::parse(&text).map_err(|e| AgentError::Config {
        path: path.display().to_string(),
        message: e.0,
    })?;
    kubernetes::validate(&config).map_err(|message| AgentError::Config {
        path: path.display().to_string(),
        message,
    })?;
    Ok(config)
}

/// How long discovered Kubernetes groups settle before targets are re-applied: a rollout
/// changes many pods at once (Prometheus's discovery manager sends updates every 5 s).
const KUBERNETES_DEBOUNCE: Duration = Duration::from_secs(1);

/// The shortest file discovery refresh of a configuration (Prometheus's default: 5 m).
fn refresh_interval(config: &PrometheusConfig) -> Duration {
    config
        .jobs
        .iter()
        .flat_map(|job| job.file_sd.iter())
        .map(|sd| sd.refresh_interval.map_or(300_000, |d| d.0))
        .min()
        .map_or(Duration::from_secs(300), |ms| {
            Duration::from_millis(ms.max(1_000))
        })
}

fn modified(path: &PathBuf) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// The heartbeat announcing this agent to the gateway at `options.gateway`, with the
/// remote-write `headers` so it lands in the same tenant as the agent's data; its labels
/// are the configuration's external labels at start.
fn heartbeat_config(
    options: &ClusterAgentOptions,
    config: &PrometheusConfig,
    headers: Vec<(String, String)>,
) -> HeartbeatConfig {
    let cluster = Some(options.cluster_name.trim())
        .filter(|name| !name.is_empty())
        .or_else(|| config.external_labels.get("cluster"))
        .unwrap_or("default");
    let agent_id = stable_agent_id(options.buffer_dir.as_deref(), AgentKind::Cluster);
    let mut heartbeat = HeartbeatConfig::new(
        &options.gateway,
        agent_id,
        AgentKind::Cluster,
        cluster,
        env!("CARGO_PKG_VERSION"),
    );
    heartbeat.headers = headers;
    heartbeat.interval = options.heartbeat_interval;
    heartbeat.labels = config
        .external_labels
        .iter()
        .map(|(name, value)| (name.to_owned(), value.to_owned()))
        .collect();
    heartbeat
}

/// The cluster agent's self-metrics: delivery, heartbeat, scrape targets.
fn self_metrics(
    delivery: &Delivery,
    heartbeat: &Arc<Heartbeat>,
    targets: &Arc<std::sync::atomic::AtomicUsize>,
) -> scrape::status::Render {
    let (delivery, heartbeat, targets) = (delivery.clone(), heartbeat.clone(), targets.clone());
    Arc::new(move |out: &mut scrape::families::Families| {
        scrape::status::delivery_families("cluster", &delivery.stats(), out);
        scrape::status::heartbeat_families(&heartbeat.stats(), out);
        out.gauge(
            "meerkat_agent_scrape_targets",
            "Targets the scrape manager runs.",
            &[],
            targets.load(std::sync::atomic::Ordering::Relaxed) as f64,
        );
    })
}

/// Runs the agent until `shutdown` resolves.
pub async fn run(
    options: ClusterAgentOptions,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), AgentError> {
    let mut config = load(&options.scrape_config)?;
    let mut remote = match config.remote_write.first() {
        Some(remote) => {
            let mut remote_config = RemoteWriteConfig::new(remote.url.clone());
            remote_config.headers = remote.headers.clone().into_iter().collect();
            let auth = remote.auth().map_err(|e| AgentError::Config {
                path: options.scrape_config.display().to_string(),
                message: e.0,
            })?;
            if let Some(auth) = auth {
                let value = auth.header_value().map_err(|message| AgentError::Config {
                    path: options.scrape_config.display().to_string(),
                    message: format!("remote_write: {message}"),
                })?;
                remote_config
                    .headers
                    .push(("authorization".to_owned(), value));
            }
            if let Some(timeout) = remote.remote_timeout {
                remote_config.timeout = Duration::from_millis(timeout.0.max(1));
            }
            if let Some(tls) = &remote.tls_config {
                let tls = scrape::tls::client_config(tls).map_err(|e| AgentError::Config {
                    path: options.scrape_config.display().to_string(),
                    message: format!("remote_write tls_config: {e}"),
                })?;
                remote_config.tls = Some(Arc::new(tls));
            }
            remote_config
        }
        None => RemoteWriteConfig::new(format!(
            "{}/api/v1/write",
            options.gateway.trim_end_matches('/')
        )),
    };
    remote.headers.extend(options.headers.iter().cloned());
    remote.buffer_bytes = options.buffer_bytes;
    remote.spool_dir = options.buffer_dir.clone();
    tracing::info!(url = %remote.url, jobs = config.jobs.len(), "cluster agent starting");
    let heartbeat_headers = remote.headers.clone();
    let (delivery, delivery_task) = Delivery::start(remote)?;
    let heartbeat_config = heartbeat_config(&options, &config, heartbeat_headers.clone());
    let kube = cluster_state::KubeFeatures::start(
        &options,
        &heartbeat_config.cluster,
        &config.external_labels,
        &delivery,
        heartbeat_headers,
    )
    .await?;
    let heartbeat = Arc::new(Heartbeat::start(heartbeat_config)?);
    let targets = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    // Prometheus sends exemplars only when asked; without a remote_write entry (the
    // gateway) they go, since Meerkat stores them.
    let send_exemplars = config
        .remote_write
        .first()
        .is_none_or(|remote| remote.send_exemplars.unwrap_or(false));
    let sink = Arc::new(RemoteWriteSink::new(
        delivery.clone(),
        send_exemplars,
        config.external_labels.clone(),
    ));
    let mut manager = ScrapeManager::new(http_client(), sink.clone());
    let mut kubernetes = kubernetes::KubernetesSd::new(options.kube_api_url.clone());
    kubernetes.sync(&config).await;
    for error in manager.apply_with(&config, &kubernetes.groups()) {
        tracing::warn!(%error, "target discovery");
    }
    targets.store(
        manager.targets().len(),
        std::sync::atomic::Ordering::Relaxed,
    );
    let status = match options.metrics_listen {
        Some(addr) => Some(
            scrape::status::StatusServer::start(
                addr,
                self_metrics(&delivery, &heartbeat, &targets),
            )
            .await
            .map_err(|source| AgentError::MetricsListen { addr, source })?,
        ),
        None => None,
    };
    // When Kubernetes groups last changed, while not yet applied.
    let mut kubernetes_changed: Option<Instant> = None;
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .map_err(AgentError::Signal)?;
    let mut seen = modified(&options.scrape_config);
    let mut last_refresh = Instant::now();
    let mut check = tokio::time::interval(Duration::from_secs(1));
    tokio::pin!(shutdown);
    loop {
        let reload = tokio::select! {
            () = &mut shutdown => break,
            _ = hangup.recv() => true,
            () = kubernetes.changed() => {
                kubernetes_changed.get_or_insert_with(Instant::now);
                continue;
            }
            _ = check.tick() => {
                let now_modified = modified(&options.scrape_config);
                let changed = now_modified != seen;
                seen = now_modified;
                changed
            }
        };
        if reload {
            match load(&options.scrape_config) {
                Ok(new) => {
                    tracing::info!(jobs = new.jobs.len(), "configuration reloaded");
                    sink.set_external_labels(new.external_labels.clone());
                    kube.set_external_labels(&new.external_labels);
                    config = new;
                }
                Err(error) => {
                    tracing::error!(%error, "the new configuration is refused; the running one is kept");
                    continue;
                }
            }
        } else if kubernetes_changed.is_some_and(|at| at.elapsed() >= KUBERNETES_DEBOUNCE) {
            // Discovered groups changed and settled: re-apply below.
        } else if last_refresh.elapsed() < refresh_interval(&config) {
            continue;
        }
        if reload {
            kubernetes.sync(&config).await;
        }
        kubernetes_changed = None;
        last_refresh = Instant::now();
        for error in manager.apply_with(&config, &kubernetes.groups()) {
            tracing::warn!(%error, "target discovery");
        }
        targets.store(
            manager.targets().len(),
            std::sync::atomic::Ordering::Relaxed,
        );
    }
    tracing::info!("cluster agent stopping: marking series stale and flushing");
    if let Some(status) = status {
        status.stop().await;
    }
    // The metrics endpoint (the only other holder) has stopped.
    match Arc::try_unwrap(heartbeat) {
        Ok(heartbeat) => heartbeat.stop().await,
        Err(_) => tracing::error!("heartbeat still shared at stop; left to end with the process"),
    }
    kube.stop().await;
    manager.stop().await;
    delivery
        .finish(delivery_task, Duration::from_secs(10))
        .await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refresh_follows_the_shortest_file_discovery_interval() {
        let config = PrometheusConfig::parse(
            "scrape_configs:\n  - job_name: a\n    file_sd_configs:\n      - files: [a.json]\n        refresh_interval: 30s\n  - job_name: b\n    file_sd_configs:\n      - files: [b.json]\n",
        )
        .unwrap();
        assert_eq!(refresh_interval(&config), Duration::from_secs(30));
        assert_eq!(
            refresh_interval(&PrometheusConfig::parse("").unwrap()),
            Duration::from_secs(300)
        );
    }

    #[test]
    fn the_heartbeat_names_the_cluster_from_the_flag_or_the_external_label() {
        let mut options = ClusterAgentOptions {
            scrape_config: PathBuf::from("prometheus.yml"),
            gateway: "http://gw:9797/".to_owned(),
            headers: Vec::new(),
            buffer_bytes: 1 << 20,
            buffer_dir: None,
            cluster_name: String::new(),
            heartbeat_interval: Duration::from_secs(5),
            kube_api_url: None,
            cluster_state: true,
            cluster_state_interval: None,
            kube_events: true,
            metrics_listen: None,
        };
        let labelled =
            PrometheusConfig::parse("global:\n  external_labels:\n    cluster: from-config\n")
                .unwrap();
        let headers = vec![("x-scope-orgid".to_owned(), "team-a".to_owned())];
        let beat = heartbeat_config(&options, &labelled, headers.clone());
        assert_eq!(beat.cluster, "from-config");
        assert_eq!(beat.url, "http://gw:9797/api/v1/agents/heartbeat");
        assert_eq!(beat.headers, headers);
        assert_eq!(beat.interval, Duration::from_secs(5));
        assert_eq!(beat.labels["cluster"], "from-config");
        let plain = PrometheusConfig::parse("").unwrap();
        assert_eq!(
            heartbeat_config(&options, &plain, Vec::new()).cluster,
            "default"
        );
        options.cluster_name = "prod-eu".to_owned();
        assert_eq!(
            heartbeat_config(&options, &labelled, Vec::new()).cluster,
            "prod-eu"
        );
    }
}
