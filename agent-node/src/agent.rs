//! The node agent's lifecycle: start delivery, run each collector on its interval, and on
//! stop mark what it sent stale and flush (spilling to the buffer directory when the
//! gateway is too slow to wait for).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use delivery::{Delivery, RemoteWriteConfig};

use crate::host::{HostCollector, HostOptions};
use crate::metrics::Families;
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
    let collector = Arc::new(collector);
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
        let collecting = collector.clone();
        // File reads and statfs calls block: keep them off the reactor.
        let families = tokio::task::spawn_blocking(move || {
            let mut families = Families::new();
            collecting.collect(&mut families);
            families
        })
        .await;
        match families {
            Ok(families) => {
                let samples = pusher.push(&delivery, &families, &labels, timestamp_ms);
                tracing::debug!(samples, "host metrics collected");
            }
            Err(error) => tracing::error!(%error, "host collection failed"),
        }
    }
    pusher.stop(&delivery, now_ms());
}

/// Closes `delivery` and waits up to 10 s for the gateway to take what is queued; what it
/// has not taken by then goes to the buffer directory.
pub async fn finish_delivery(delivery: &Delivery, task: tokio::task::JoinHandle<()>) {
    delivery.close();
    let mut task = task;
    if tokio::time::timeout(Duration::from_secs(10), &mut task)
        .await
        .is_err()
    {
        task.abort();
        let _ = task.await;
        delivery.spill();
        tracing::warn!(
            pending = delivery.stats().pending_samples,
            "stopped before the gateway took everything; the rest is in the buffer directory"
        );
    }
}

/// Runs the node agent until `shutdown` resolves.
pub async fn run(
    options: NodeAgentOptions,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), AgentError> {
    let mut remote = RemoteWriteConfig::new(format!(
        "{}/api/v1/write",
        options.gateway.trim_end_matches('/')
    ));
    remote.headers = options.headers.clone();
    remote.buffer_bytes = options.buffer_bytes;
    remote.spool_dir = options.buffer_dir.clone();
    let (delivery, delivery_task) = Delivery::start(remote)?;
    tracing::info!(gateway = %options.gateway, node = %options.node_name, root = %options.root.display(), "node agent starting");
    let labels = vec![
        ("instance".to_owned(), options.node_name.clone()),
        ("job".to_owned(), options.job.clone()),
    ];
    let host = HostCollector::new(HostOptions::new(&options.root));
    run_host_metrics(host, delivery.clone(), labels, options.interval, shutdown).await;
    tracing::info!("node agent stopping: marking series stale and flushing");
    finish_delivery(&delivery, delivery_task).await;
    Ok(())
}
