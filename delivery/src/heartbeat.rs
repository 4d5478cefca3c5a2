//! An agent's heartbeat to the gateway (`POST <gateway>/api/v1/agents/heartbeat`), so the
//! gateway keeps a live list of agents: who they are (kind, cluster, node, version), since
//! when they run, and that they are still there.
//!
//! It is sent with the remote-write headers, so the gateway puts the agent in the same
//! tenant as its data. Failures are retried quietly (a warning when the gateway stops
//! answering, one line when it answers again): the gateway only marks an agent stale after
//! three missed intervals, and a heartbeat must never disturb the agent's real work.
//!
//! The agent id must survive restarts, or every restart would list a new agent and leave the
//! old one to go stale: [`stable_agent_id`] keeps it in a file in the agent's state directory
//! (the delivery buffer directory, which deployments already keep on a volume).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::sync::Notify;

use crate::DeliveryError;

/// The path of the heartbeat route under the gateway's base URL.
pub const HEARTBEAT_PATH: &str = "/api/v1/agents/heartbeat";

/// The default interval: the gateway marks an agent stale after 3 of them (90 s).
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(30);

/// The file in the state directory that keeps the agent id.
pub const AGENT_ID_FILE: &str = "agent-id";

/// Which agent is beating.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AgentKind {
    Cluster,
    Node,
}

impl AgentKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Cluster => "cluster",
            Self::Node => "node",
        }
    }
}

/// What the heartbeat says and where it goes.
#[derive(Clone, Debug)]
pub struct HeartbeatConfig {
    /// The full heartbeat URL, e.g. `http://gateway:9797/api/v1/agents/heartbeat`.
    pub url: String,
    /// The remote-write headers (`Authorization`, a tenant header).
    pub headers: Vec<(String, String)>,
    pub interval: Duration,
    /// How long one heartbeat may take.
    pub timeout: Duration,
    pub agent_id: String,
    pub kind: AgentKind,
    pub cluster: String,
    /// The node, for node agents.
    pub node: Option<String>,
    pub version: String,
    pub labels: BTreeMap<String, String>,
    /// TLS settings for an https `url` (the remote-write ones); `None`: the system's roots.
    pub tls: Option<std::sync::Arc<rustls::ClientConfig>>,
}

impl HeartbeatConfig {
    /// A heartbeat to the gateway at `gateway` (its base URL) every [`DEFAULT_INTERVAL`].
    pub fn new(
        gateway: &str,
        agent_id: impl Into<String>,
        kind: AgentKind,
        cluster: impl Into<String>,
        version: impl Into<String>,
    ) -> Self {
        Self {
            url: format!("{}{HEARTBEAT_PATH}", gateway.trim_end_matches('/')),
            headers: Vec::new(),
            interval: DEFAULT_INTERVAL,
            timeout: Duration::from_secs(10),
            agent_id: agent_id.into(),
            kind,
            cluster: cluster.into(),
            node: None,
            version: version.into(),
            labels: BTreeMap::new(),
            tls: None,
        }
    }
}

/// Heartbeats so far (for the agent's self-metrics and tests).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HeartbeatStats {
    /// Heartbeats the gateway acknowledged.
    pub sent: u64,
    /// Attempts that failed (network errors, timeouts, non-2xx answers).
    pub failed: u64,
}

#[derive(Debug, Default)]
struct Counters {
    sent: AtomicU64,
    failed: AtomicU64,
}

/// The running heartbeat task; [`Heartbeat::stop`] ends it.
#[derive(Debug)]
pub struct Heartbeat {
    stop: Arc<Notify>,
    counters: Arc<Counters>,
    task: tokio::task::JoinHandle<()>,
}

impl Heartbeat {
    /// Starts beating at once and then every `config.interval`, on the current runtime.
    pub fn start(config: HeartbeatConfig) -> Result<Self, DeliveryError> {
        let uri: hyper::Uri = config
            .url
            .parse()
            .map_err(
                |e: hyper::http::uri::InvalidUri| DeliveryError::InvalidUrl {
                    url: config.url.clone(),
                    reason: e.to_string(),
                },
            )?;
        crate::tls::check_scheme(&config.url, &uri)?;
        let connector = crate::tls::connector(&config.url, &uri, config.tls.as_ref())?;
        let started_at = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(1, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
        // A JSON value's text cannot fail to render (a derived Serialize could, in principle).
        let mut body = serde_json::json!({
            "agent_id": config.agent_id,
            "kind": config.kind.as_str(),
            "cluster": config.cluster,
            "version": config.version,
            "started_at": started_at,
            "interval_seconds": config.interval.as_secs_f64(),
            "labels": config.labels,
        });
        if let Some(node) = &config.node {
            body["node"] = node.as_str().into();
        }
        let body = Bytes::from(body.to_string());
        let stop = Arc::new(Notify::new());
        let counters = Arc::new(Counters::default());
        let task = tokio::spawn(run(
            config,
            uri,
            connector,
            body,
            stop.clone(),
            counters.clone(),
        ));
        Ok(Self {
            stop,
            counters,
            task,
        })
    }

    pub fn stats(&self) -> HeartbeatStats {
        HeartbeatStats {
            sent: self.counters.sent.load(Ordering::Relaxed),
            failed: self.counters.failed.load(Ordering::Relaxed),
        }
    }

    /// Stops beating (a heartbeat in flight is abandoned) and waits for the task to end.
    pub async fn stop(self) {
        self.stop.notify_one();
        let _ = self.task.await;
    }
}

async fn run(
    config: HeartbeatConfig,
    uri: hyper::Uri,
    connector: HttpsConnector<HttpConnector>,
    body: Bytes,
    stop: Arc<Notify>,
    counters: Arc<Counters>,
) {
    let client: Client<HttpsConnector<HttpConnector>, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build(connector);
    // A failed beat is retried sooner than the interval (1 s, doubling), so a gateway that
    // restarts sees the agent again at once rather than up to an interval later.
    let mut retry = Duration::from_secs(1);
    let mut failing = false;
    loop {
        let wait = tokio::select! {
            () = stop.notified() => return,
            result = send(&client, &config, &uri, body.clone()) => match result {
                Ok(()) => {
                    counters.sent.fetch_add(1, Ordering::Relaxed);
                    if failing {
                        tracing::info!(url = %config.url, "heartbeats reach the gateway again");
                    }
                    failing = false;
                    retry = Duration::from_secs(1);
                    config.interval
                }
                Err(error) => {
                    counters.failed.fetch_add(1, Ordering::Relaxed);
                    if failing {
                        tracing::debug!(url = %config.url, %error, "heartbeat failed");
                    } else {
                        tracing::warn!(url = %config.url, %error, "heartbeat failed; retrying quietly");
                    }
                    failing = true;
                    let wait = retry.min(config.interval);
                    retry = (retry * 2).min(config.interval);
                    wait
                }
            },
        };
        tokio::select! {
            () = stop.notified() => return,
            () = tokio::time::sleep(wait) => {}
        }
    }
}

async fn send(
    client: &Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    config: &HeartbeatConfig,
    uri: &hyper::Uri,
    body: Bytes,
) -> Result<(), String> {
    let mut request = hyper::Request::post(uri.clone())
        .header("content-type", "application/json")
        .header(
            "user-agent",
            concat!("meerkat-agent/", env!("CARGO_PKG_VERSION")),
        );
    for (name, value) in &config.headers {
        request = request.header(name.as_str(), value.as_str());
    }
    let request = request
        .body(Full::new(body))
        .map_err(|e| format!("cannot build the request: {e}"))?;
    let exchange = async {
        let response = client
            .request(request)
            .await
            .map_err(|e| format!("cannot reach the gateway: {e}"))?;
        let status = response.status();
        let text = response
            .into_body()
            .collect()
            .await
            .map(|b| String::from_utf8_lossy(&b.to_bytes()).trim().to_owned())
            .unwrap_or_default();
        if status.is_success() {
            Ok(())
        } else {
            Err(format!("the gateway answered {status}: {text}"))
        }
    };
    match tokio::time::timeout(config.timeout, exchange).await {
        Ok(result) => result,
        Err(_) => Err(format!("no answer within {:?}", config.timeout)),
    }
}

/// This machine's host name (the pod name in Kubernetes), or `unknown`.
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|name| name.trim().to_owned())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "unknown".to_owned())
}

/// The agent's id: read from `<state_dir>/agent-id`, or made (kind, host name and the
/// current time, so two agents starting on one host differ) and written there on first
/// start. Without a state directory, or when it cannot be written, `<kind>-<hostname>`:
/// stable as long as the host name is (a DaemonSet's pod name is not, its node name is).
pub fn stable_agent_id(state_dir: Option<&Path>, kind: AgentKind) -> String {
    let fallback = format!("{}-{}", kind.as_str(), hostname());
    let Some(dir) = state_dir else {
        return fallback;
    };
    let path = dir.join(AGENT_ID_FILE);
    if let Ok(text) = std::fs::read_to_string(&path) {
        let id = text.trim();
        if !id.is_empty() {
            return id.to_owned();
        }
    }
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let id = format!("{fallback}-{nanos:x}");
    let tmp = dir.join(format!("{AGENT_ID_FILE}.tmp"));
    let written = std::fs::create_dir_all(dir)
        .and_then(|()| std::fs::write(&tmp, format!("{id}\n")))
        .and_then(|()| std::fs::rename(&tmp, &path));
    match written {
        Ok(()) => id,
        Err(error) => {
            tracing::warn!(path = %path.display(), %error, "cannot keep the agent id; using the host name");
            fallback
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use std::sync::atomic::AtomicUsize;

    use axum::Router;
    use axum::http::{HeaderMap, StatusCode};
    use axum::routing::post;

    type Received = Arc<Mutex<Vec<(HeaderMap, serde_json::Value)>>>;

    /// A gateway stand-in answering `status(n)` to its n-th heartbeat, recording them.
    async fn receiver(
        status: impl Fn(usize) -> StatusCode + Send + Sync + 'static,
    ) -> (String, Received) {
        let received: Received = Arc::default();
        let attempts = Arc::new(AtomicUsize::new(0));
        let status = Arc::new(status);
        let r = received.clone();
        let app = Router::new().route(
            HEARTBEAT_PATH,
            post(move |headers: HeaderMap, body: Bytes| {
                let (r, attempts, status) = (r.clone(), attempts.clone(), status.clone());
                async move {
                    let code = status(attempts.fetch_add(1, Ordering::SeqCst));
                    let json = serde_json::from_slice(&body).expect("JSON heartbeat");
                    r.lock().expect("lock").push((headers, json));
                    code
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move { axum::serve(listener, app).await });
        (format!("http://{addr}"), received)
    }

    async fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !done() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for {what}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn beats_every_interval_with_the_remote_write_headers_until_stopped() {
        let (gateway, received) = receiver(|_| StatusCode::OK).await;
        let mut config = HeartbeatConfig::new(
            &format!("{gateway}/"),
            "cluster-a",
            AgentKind::Cluster,
            "prod-eu",
            "1.2.3",
        );
        config.interval = Duration::from_millis(100);
        config.headers = vec![("X-Scope-OrgID".to_owned(), "team-a".to_owned())];
        config.labels.insert("region".to_owned(), "eu".to_owned());
        let heartbeat = Heartbeat::start(config).expect("starts");
        wait_for("three heartbeats", || {
            received.lock().expect("lock").len() >= 3
        })
        .await;
        heartbeat.stop().await;
        let count = received.lock().expect("lock").len();
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(
            received.lock().expect("lock").len(),
            count,
            "no beats after stop"
        );
        let beats = received.lock().expect("lock");
        let (headers, body) = &beats[0];
        assert_eq!(headers["x-scope-orgid"], "team-a");
        assert_eq!(headers["content-type"], "application/json");
        assert_eq!(body["agent_id"], "cluster-a");
        assert_eq!(body["kind"], "cluster");
        assert_eq!(body["cluster"], "prod-eu");
        assert_eq!(body["version"], "1.2.3");
        assert_eq!(body["interval_seconds"], 0.1);
        assert_eq!(body["labels"]["region"], "eu");
        assert!(body.get("node").is_none(), "{body}");
        let started = body["started_at"].as_i64().expect("ms");
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("after 1970")
            .as_millis() as i64;
        assert!(
            now - started < 60_000 && started <= now,
            "{started} vs {now}"
        );
        // Every beat says the same start: it is the agent's start, not the beat's.
        assert!(
            beats
                .iter()
                .all(|(_, b)| b["started_at"] == body["started_at"])
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn failures_are_retried_and_counted() {
        let (gateway, received) = receiver(|n| {
            if n < 2 {
                StatusCode::SERVICE_UNAVAILABLE
            } else {
                StatusCode::OK
            }
        })
        .await;
        let mut config = HeartbeatConfig::new(&gateway, "n-1", AgentKind::Node, "prod-eu", "1.2.3");
        config.node = Some("worker-1".to_owned());
        // Retries come after 1 s, then 2 s (capped by the interval): a short interval
        // keeps the test quick.
        config.interval = Duration::from_millis(200);
        let heartbeat = Heartbeat::start(config).expect("starts");
        wait_for("a heartbeat through", || heartbeat.stats().sent >= 1).await;
        let stats = heartbeat.stats();
        assert_eq!(stats.failed, 2, "{stats:?}");
        assert_eq!(received.lock().expect("lock")[2].1["node"], "worker-1");
        heartbeat.stop().await;
    }

    #[tokio::test]
    async fn an_absent_gateway_only_counts_failures() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .expect("bind")
            .local_addr()
            .expect("addr")
            .port();
        let mut config = HeartbeatConfig::new(
            &format!("http://127.0.0.1:{port}"),
            "a",
            AgentKind::Cluster,
            "c",
            "1",
        );
        config.interval = Duration::from_millis(50);
        let heartbeat = Heartbeat::start(config).expect("starts");
        wait_for("failures", || heartbeat.stats().failed >= 2).await;
        assert_eq!(heartbeat.stats().sent, 0);
        heartbeat.stop().await;
        let ftp = HeartbeatConfig::new("ftp://gw", "a", AgentKind::Cluster, "c", "1");
        assert!(matches!(
            Heartbeat::start(ftp),
            Err(DeliveryError::InvalidUrl { .. })
        ));
    }

    #[test]
    fn the_agent_id_survives_restarts() {
        let dir = tempfile::tempdir().expect("tempdir");
        let state = dir.path().join("buffer");
        let first = stable_agent_id(Some(&state), AgentKind::Cluster);
        assert!(first.starts_with("cluster-"), "{first}");
        assert_eq!(stable_agent_id(Some(&state), AgentKind::Cluster), first);
        assert!(state.join(AGENT_ID_FILE).exists());
        let other = dir.path().join("other");
        assert_ne!(stable_agent_id(Some(&other), AgentKind::Cluster), first);
        // A state path that cannot be a directory falls back to the host name.
        let file = dir.path().join("a-file");
        std::fs::write(&file, "x").expect("write");
        assert_eq!(
            stable_agent_id(Some(&file.join("sub")), AgentKind::Node),
            format!("node-{}", hostname())
        );
        assert_eq!(
            stable_agent_id(None, AgentKind::Node),
            format!("node-{}", hostname())
        );
    }
}
