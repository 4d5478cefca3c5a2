//! The node agent's lifecycle: start delivery, run each collector on its interval, and on
//! stop mark what it sent stale and flush (spilling to the buffer directory when the
//! gateway is too slow to wait for).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use delivery::heartbeat::{AgentKind, Heartbeat, HeartbeatConfig, stable_agent_id};
use delivery::{Delivery, RemoteWriteConfig};

use std::net::{IpAddr, SocketAddr};

use crate::host::{HostCollector, HostOptions};
use crate::logs::{LogTailOptions, LogTailer};
use crate::metrics::Families;
use crate::otlp_proxy::{OtlpProxy, OtlpProxyOptions, PodResolver};
use crate::pods::{DiscoveryConfig, PodDiscovery, PodStore};
use crate::push::Pusher;

/// How the node agent is started.
#[derive(Clone, Debug)]
pub struct NodeAgentOptions {
    /// The gateway's base URL (`http://…:9797`); remote-write goes to `/api/v1/write`.
    pub gateway: String,
    /// Headers sent with every request (a tenant token, say).
    pub headers: Vec<(String, String)>,
    /// The host's root as this process sees it (`/host` in the DaemonSet).
    pub root: PathBuf,
    /// This node's name (`spec.nodeName`); the `instance` label of host series.
    pub node_name: String,
    /// The `job` label of host series.
    pub job: String,
    /// How often host metrics are collected.
    pub interval: Duration,
    /// Remote-write requests held while the gateway does not take them.
    pub buffer_bytes: usize,
    /// Where they wait on disk; `None`: memory only.
    pub buffer_dir: Option<PathBuf>,
    /// Pod discovery: the kubelet, classification rules (root and node name come from
    /// the fields above).
    pub pods: DiscoveryConfig,
    /// Container metrics from the kubepods cgroups (cAdvisor names, `job="cadvisor"`).
    pub containers: bool,
    /// Container log tailing; its checkpoint directory. `None` turns it off.
    pub log_checkpoint_dir: Option<PathBuf>,
    /// The local OTLP receiver (gRPC, HTTP); `None` turns it off.
    pub otlp_listen: Option<(SocketAddr, SocketAddr)>,
    /// Watch this node's pods on the Kubernetes API (in-cluster credentials, or
    /// `kube_api_url`), a pod source beside the filesystem and the kubelet.
    pub watch_pods: bool,
    pub kube_api_url: Option<String>,
    /// Where the agent's own `/metrics` and `/health` listen; `None`: nowhere.
    pub metrics_listen: Option<SocketAddr>,
    /// The cluster this node belongs to, announced in the heartbeat.
    pub cluster_name: String,
    pub heartbeat_interval: Duration,
}

impl NodeAgentOptions {
    /// Defaults for `gateway`: this host at `/`, named by its hostname, every 15 s.
    pub fn new(gateway: impl Into<String>) -> Self {
        Self {
            gateway: gateway.into(),
            headers: Vec::new(),
            root: PathBuf::from("/"),
            node_name: hostname(),
            job: "node".to_owned(),
            interval: Duration::from_secs(15),
            buffer_bytes: 64 << 20,
            buffer_dir: None,
            pods: DiscoveryConfig::default(),
            containers: true,
            log_checkpoint_dir: None,
            otlp_listen: None,
            watch_pods: false,
            metrics_listen: None,
            kube_api_url: None,
            cluster_name: "default".to_owned(),
            heartbeat_interval: delivery::heartbeat::DEFAULT_INTERVAL,
        }
    }
}

/// This machine's hostname (`uname -n`), the node name when none is given.
pub fn hostname() -> String {
    rustix::system::uname()
        .nodename()
        .to_string_lossy()
        .into_owned()
}

/// Why the agent cannot start.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Delivery(#[from] delivery::DeliveryError),
    #[error(transparent)]
    Pods(#[from] crate::pods::Error),
    #[error(transparent)]
    Logs(#[from] crate::logs::LogsError),
    #[error(transparent)]
    Proxy(#[from] crate::otlp_proxy::ProxyError),
    #[error("cannot listen on {addr} for the agent's metrics: {source}")]
    MetricsListen {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default()
}

/// Collects host metrics every `interval` and hands them to `delivery` until `shutdown`
/// resolves, then marks them stale. Used by the node agent and, in-process, by
/// `meerkat serve`.
pub async fn run_host_metrics(
    collector: HostCollector,
    delivery: Delivery,
    labels: Vec<(String, String)>,
    interval: Duration,
    shutdown: impl std::future::Future<Output = ()>,
) {
    run_collector(
        "host",
        move |families| collector.collect(families),
        delivery,
        labels,
        interval,
        shutdown,
    )
    .await;
}

/// Runs `collect` every `interval` on a blocking thread (collectors read files), pushes
/// what it found with `labels` added, and marks it all stale when `shutdown` resolves.
pub async fn run_collector(
    name: &'static str,
    collect: impl Fn(&mut Families) + Send + Sync + 'static,
    delivery: Delivery,
    labels: Vec<(String, String)>,
    interval: Duration,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let collect = Arc::new(collect);
    let mut pusher = Pusher::new();
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            _ = ticks.tick() => {}
        }
        let timestamp_ms = now_ms();
        let collecting = collect.clone();
        let collection = tokio::task::spawn_blocking(move || {
            let mut families = Families::new();
            collecting(&mut families);
            families
        });
        // A collection stuck in the kernel must not hold the agent's stop.
        let families = tokio::select! {
            () = &mut shutdown => break,
            families = collection => families,
        };
        match families {
            Ok(families) => {
                let samples = pusher.push(&delivery, &families, &labels, timestamp_ms);
                tracing::debug!(collector = name, samples, "collected");
            }
            Err(error) => tracing::error!(collector = name, %error, "collection failed"),
        }
    }
    pusher.stop(&delivery, now_ms());
}

impl PodResolver for PodStore {
    fn resource_attributes(&self, ip: IpAddr) -> Vec<(String, String)> {
        self.by_ip(&ip.to_string())
            .map(|pod| pod.attributes.otlp.clone())
            .unwrap_or_default()
    }
}

/// Closes `delivery` and waits up to 10 s for the gateway to take what is queued; what it
/// has not taken by then goes to the buffer directory.
pub async fn finish_delivery(delivery: &Delivery, task: tokio::task::JoinHandle<()>) {
    delivery.finish(task, Duration::from_secs(10)).await;
}

/// The node agent's self-metrics: delivery, heartbeat, log tailing and pod discovery.
fn self_metrics(
    delivery: &Delivery,
    heartbeat: &Arc<Heartbeat>,
    logs: Option<&Arc<LogTailer>>,
    store: &PodStore,
) -> scrape::status::Render {
    let (delivery, heartbeat, logs, store) = (
        delivery.clone(),
        heartbeat.clone(),
        logs.cloned(),
        store.clone(),
    );
    Arc::new(move |out: &mut Families| {
        scrape::status::delivery_families("node", &delivery.stats(), out);
        scrape::status::heartbeat_families(&heartbeat.stats(), out);
        out.gauge(
            "meerkat_agent_pods",
            "Pods known on this node.",
            &[],
            store.len() as f64,
        );
        if let Some(logs) = &logs {
            let stats = logs.stats();
            out.gauge(
                "meerkat_agent_log_files",
                "Container log files open for reading.",
                &[],
                stats.files as f64,
            );
            out.counter(
                "meerkat_agent_log_lines_read_total",
                "Log lines read.",
                &[],
                stats.lines_read as f64,
            );
            out.counter(
                "meerkat_agent_log_lines_shipped_total",
                "Log lines the gateway acknowledged.",
                &[],
                stats.lines_shipped as f64,
            );
            out.counter(
                "meerkat_agent_log_lines_dropped_total",
                "Log lines in batches the gateway refused.",
                &[],
                stats.lines_dropped as f64,
            );
            out.counter(
                "meerkat_agent_log_batches_retried_total",
                "Log batch attempts that will be retried.",
                &[],
                stats.batches_retried as f64,
            );
            out.gauge(
                "meerkat_agent_log_bytes_behind",
                "Log bytes not yet read or not yet acknowledged.",
                &[],
                stats.bytes_behind as f64,
            );
        }
    })
}

/// Runs the node agent until `shutdown` resolves: host metrics, pod discovery, container
/// metrics, log tailing and the OTLP proxy, each stopped in turn at the end (what they sent
/// marked stale, logs checkpointed, delivery flushed).
pub async fn run(
    options: NodeAgentOptions,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), AgentError> {
    let gateway = options.gateway.trim_end_matches('/').to_owned();
    let mut remote = RemoteWriteConfig::new(format!("{gateway}/api/v1/write"));
    remote.headers = options.headers.clone();
    remote.buffer_bytes = options.buffer_bytes;
    remote.spool_dir = options.buffer_dir.clone();
    let mut pods_config = options.pods.clone();
    pods_config.root = options.root.clone();
    pods_config.node_name = options.node_name.clone();
    let discovery = PodDiscovery::new(pods_config)?;
    let store = discovery.store().clone();
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let until_stopped = || {
        let mut stopped = stopped.clone();
        async move {
            let _ = stopped.wait_for(|stop| *stop).await;
        }
    };
    let proxy = match options.otlp_listen {
        Some((grpc_listen, http_listen)) => {
            let mut proxy_options = OtlpProxyOptions::new(&gateway, &options.node_name);
            proxy_options.grpc_listen = grpc_listen;
            proxy_options.http_listen = http_listen;
            proxy_options.headers = options.headers.clone();
            Some(OtlpProxy::start(proxy_options, Arc::new(store.clone())).await?)
        }
        None => None,
    };
    let logs = match &options.log_checkpoint_dir {
        Some(dir) => {
            let mut log_options = LogTailOptions::new(&gateway, dir);
            log_options.root = options.root.clone();
            log_options.headers = options.headers.clone();
            let lookup = store.clone();
            log_options.pod_attributes = Some(Arc::new(move |pod: &crate::logs::PodLogRef| {
                lookup
                    .by_uid(&pod.uid)
                    .map(|entry| entry.attributes.otlp.clone())
                    .unwrap_or_default()
            }));
            Some(LogTailer::start(log_options)?)
        }
        None => None,
    };
    let (delivery, delivery_task) = Delivery::start(remote)?;
    let mut heartbeat = HeartbeatConfig::new(
        &gateway,
        stable_agent_id(options.buffer_dir.as_deref(), AgentKind::Node),
        AgentKind::Node,
        &options.cluster_name,
        env!("CARGO_PKG_VERSION"),
    );
    heartbeat.node = Some(options.node_name.clone());
    heartbeat.headers = options.headers.clone();
    heartbeat.interval = options.heartbeat_interval;
    let heartbeat = Arc::new(Heartbeat::start(heartbeat)?);
    let logs = logs.map(Arc::new);
    let status = match options.metrics_listen {
        Some(addr) => Some(
            scrape::status::StatusServer::start(
                addr,
                self_metrics(&delivery, &heartbeat, logs.as_ref(), &store),
            )
            .await
            .map_err(|source| AgentError::MetricsListen { addr, source })?,
        ),
        None => None,
    };
    tracing::info!(
        gateway = %options.gateway,
        node = %options.node_name,
        root = %options.root.display(),
        containers = options.containers,
        logs = logs.is_some(),
        otlp_proxy = proxy.as_ref().map(|p| p.http_addr.to_string()),
        "node agent starting"
    );
    let mut tasks = Vec::new();
    tasks.push(tokio::spawn(discovery.run(until_stopped())));
    if options.watch_pods {
        tasks.push(tokio::spawn(crate::pods::api_watch::run(
            store.clone(),
            options.kube_api_url.clone(),
            options.node_name.clone(),
            until_stopped(),
        )));
    }
    let host_labels = vec![
        ("instance".to_owned(), options.node_name.clone()),
        ("job".to_owned(), options.job.clone()),
    ];
    let host = HostCollector::new(HostOptions::new(&options.root));
    tasks.push(tokio::spawn(run_host_metrics(
        host,
        delivery.clone(),
        host_labels,
        options.interval,
        until_stopped(),
    )));
    if options.containers {
        let root = options.root.clone();
        let container_store = store.clone();
        tasks.push(tokio::spawn(run_collector(
            "containers",
            move |families| crate::containers::collect(&container_store, &root, families),
            delivery.clone(),
            vec![
                ("instance".to_owned(), options.node_name.clone()),
                ("job".to_owned(), "cadvisor".to_owned()),
            ],
            options.interval,
            until_stopped(),
        )));
    }
    tasks.push(tokio::spawn(crate::pod_scrape::run(
        store.clone(),
        delivery.clone(),
        options.node_name.clone(),
        options.interval,
        until_stopped(),
    )));
    shutdown.await;
    tracing::info!("node agent stopping: marking series stale, checkpointing logs, flushing");
    let _ = stop.send(true);
    if let Some(status) = status {
        status.stop().await;
    }
    if let Some(proxy) = proxy {
        proxy.stop().await;
    }
    for task in tasks {
        let _ = task.await;
    }
    // The metrics endpoint (the only other holder) has stopped.
    let logs = logs.and_then(|logs| {
        Arc::try_unwrap(logs)
            .inspect_err(|_| tracing::error!("log tailer still shared at stop; not checkpointed"))
            .ok()
    });
    if let Some(logs) = logs {
        match logs.stop().await {
            Ok(stats) => tracing::info!(lines = stats.lines_shipped, "logs checkpointed"),
            Err(error) => tracing::error!(%error, "log tailing stopped with an error"),
        }
    }
    match Arc::try_unwrap(heartbeat) {
        Ok(heartbeat) => heartbeat.stop().await,
        Err(_) => tracing::error!("heartbeat still shared at stop; left to end with the process"),
    }
    finish_delivery(&delivery, delivery_task).await;
    Ok(())
}
