//! The cluster's Kubernetes events (core/v1 `Event`, all namespaces) to the gateway as
//! platform events (`POST <gateway>/api/v1/events`, a JSON array of
//! `model::PlatformEvent`), so "what changed?" can be asked beside "what broke?".
//!
//! Each new or updated event (a new resourceVersion of an `Event` object: the kubelet bumps
//! `count` and `lastTimestamp` on a repeat) is sent once. Batches are posted in order with
//! retries and exponential backoff while the gateway is unreachable or overloaded (5xx,
//! 429); a batch it refuses as malformed (another 4xx) is dropped and counted.
//!
//! Restarts: the watcher's initial list returns every event the API server still keeps
//! (an hour by default), which must not be sent again each time the agent starts. What was
//! sent (event uid and resourceVersion) is kept in `<buffer dir>/kube-events-sent.json`
//! and written after each acknowledged batch, so a restart sends only what is new or
//! changed. Without a buffer directory, or on the first start, the initial list sends only
//! events whose last timestamp is newer than the start (or the last save) minus
//! [`LIST_WINDOW`]. A crash between the gateway's answer and the save can send a batch
//! twice (at least once, never lost).

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures_util::StreamExt;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use k8s_openapi::api::core::v1::Event;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use model::{AnyValue, KeyValue, PlatformEvent};
use model::{EventKind, KubernetesEvent, KubernetesEventType};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use crate::AgentError;

/// How far before the start an event of the initial list may be and still be sent, when
/// there is no record of what was sent: events the agent may have missed while it was
/// being restarted.
pub const LIST_WINDOW: Duration = Duration::from_secs(5 * 60);

/// The file, in the buffer directory, of what was sent.
pub const SENT_FILE: &str = "kube-events-sent.json";

/// Events waiting at most; beyond this the oldest are dropped (and counted).
const MAX_PENDING: usize = 10_000;
const MAX_BATCH: usize = 500;

/// Where and how events are sent.
#[derive(Clone, Debug)]
pub struct EventsConfig {
    /// `<gateway>/api/v1/events`.
    pub url: String,
    /// The remote-write headers (tenant), so events land beside the cluster's metrics.
    pub headers: Vec<(String, String)>,
    pub cluster: String,
    /// Where the record of sent events is kept; `None`: memory only.
    pub state_dir: Option<PathBuf>,
    /// How long events wait for company before a batch is posted.
    pub flush_interval: Duration,
    pub timeout: Duration,
    pub min_backoff: Duration,
    pub max_backoff: Duration,
}

impl EventsConfig {
    pub fn new(gateway: &str, cluster: &str, state_dir: Option<PathBuf>) -> Self {
        Self {
            url: format!("{}/api/v1/events", gateway.trim_end_matches('/')),
            headers: Vec::new(),
            cluster: cluster.to_owned(),
            state_dir,
            flush_interval: Duration::from_millis(500),
            timeout: Duration::from_secs(30),
            min_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(30),
        }
    }
}

/// What the sender has done so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EventsStats {
    pub sent: u64,
    /// Refused by the gateway as malformed (4xx other than 429).
    pub rejected: u64,
    /// Dropped because too many waited.
    pub dropped: u64,
    pub retries: u64,
}

#[derive(Default)]
struct Counters {
    sent: AtomicU64,
    rejected: AtomicU64,
    dropped: AtomicU64,
    retries: AtomicU64,
}

/// One event to send: its identity and version, and what goes on the wire.
struct Pending {
    uid: String,
    resource_version: String,
    event: PlatformEvent,
}

/// The record of what was sent: event uid → resourceVersion, and when it was saved.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
struct Sent {
    saved_at_ms: i64,
    events: HashMap<String, String>,
}

#[derive(Default)]
struct State {
    sent: Sent,
    /// Whether `sent` was read from disk (a restart) rather than begun empty.
    restored: bool,
    queue: VecDeque<Pending>,
    /// The front events being posted: never the ones dropped to make room.
    in_flight: usize,
    closed: bool,
}

struct Shared {
    config: EventsConfig,
    state: Mutex<State>,
    wake: Notify,
    counters: Counters,
}

fn lock(shared: &Shared) -> MutexGuard<'_, State> {
    shared.state.lock().unwrap_or_else(PoisonError::into_inner)
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

impl Shared {
    fn sent_path(&self) -> Option<PathBuf> {
        self.config
            .state_dir
            .as_ref()
            .map(|dir| dir.join(SENT_FILE))
    }

    fn load(&self) {
        let Some(path) = self.sent_path() else { return };
        let Ok(text) = std::fs::read_to_string(&path) else {
            return;
        };
        match serde_json::from_str::<Sent>(&text) {
            Ok(sent) => {
                let mut state = lock(self);
                state.sent = sent;
                state.restored = true;
            }
            Err(error) => tracing::warn!(
                path = %path.display(),
                %error,
                "the record of sent Kubernetes events is unreadable; starting afresh"
            ),
        }
    }

    /// Writes the record (a temporary file renamed over the old one, so a crash leaves
    /// one or the other).
    fn save(&self) {
        let Some(path) = self.sent_path() else { return };
        let text = {
            let mut state = lock(self);
            state.sent.saved_at_ms = now_ms();
            serde_json::to_string(&state.sent)
        };
        let Ok(text) = text else { return };
        let temporary = path.with_extension("json.tmp");
        let written = std::fs::create_dir_all(path.parent().unwrap_or(&path))
            .and_then(|()| std::fs::write(&temporary, text))
            .and_then(|()| std::fs::rename(&temporary, &path));
        if let Err(error) = written {
            tracing::warn!(path = %path.display(), %error, "cannot save the record of sent Kubernetes events");
        }
    }
}

fn timestamp_ms(time: &k8s_openapi::jiff::Timestamp) -> i64 {
    time.as_millisecond()
}

/// A core/v1 `Event` as a platform event; `None` without a uid (not from an API server).
pub fn platform_event(event: &Event, cluster: &str) -> Option<(String, String, PlatformEvent)> {
    let uid = event.metadata.uid.clone().filter(|uid| !uid.is_empty())?;
    let resource_version = event.metadata.resource_version.clone().unwrap_or_default();
    let created = event
        .metadata
        .creation_timestamp
        .as_ref()
        .map(|t| timestamp_ms(&t.0));
    let event_time = event.event_time.as_ref().map(|t| timestamp_ms(&t.0));
    let first = event
        .first_timestamp
        .as_ref()
        .map(|t| timestamp_ms(&t.0))
        .or(event_time)
        .or(created)
        .unwrap_or_else(now_ms);
    let last = event
        .last_timestamp
        .as_ref()
        .map(|t| timestamp_ms(&t.0))
        .or_else(|| {
            event
                .series
                .as_ref()
                .and_then(|s| s.last_observed_time.as_ref())
                .map(|t| timestamp_ms(&t.0))
        })
        .or(event_time)
        .unwrap_or(first);
    let involved = &event.involved_object;
    let source = event.source.as_ref();
    let count = event
        .count
        .or_else(|| event.series.as_ref().and_then(|s| s.count))
        .unwrap_or(1);
    let kubernetes = KubernetesEvent {
        cluster: cluster.to_owned(),
        namespace: involved
            .namespace
            .clone()
            .or_else(|| event.metadata.namespace.clone())
            .unwrap_or_default(),
        involved_kind: involved.kind.clone().unwrap_or_default(),
        involved_name: involved.name.clone().unwrap_or_default(),
        involved_uid: involved.uid.clone().unwrap_or_default(),
        reason: event.reason.clone().unwrap_or_default(),
        message: event.message.clone().unwrap_or_default(),
        event_type: if event.type_.as_deref() == Some("Warning") {
            KubernetesEventType::Warning
        } else {
            KubernetesEventType::Normal
        },
        count: u32::try_from(count.max(0)).unwrap_or(0),
        first_timestamp_ms: first,
        last_timestamp_ms: last,
        reporting_component: event
            .reporting_component
            .clone()
            .filter(|c| !c.is_empty())
            .or_else(|| source.and_then(|s| s.component.clone()))
            .unwrap_or_default(),
        reporting_host: event
            .reporting_instance
            .clone()
            .filter(|c| !c.is_empty())
            .or_else(|| source.and_then(|s| s.host.clone()))
            .unwrap_or_default(),
    };
    let mut attributes = vec![KeyValue::new(
        "k8s.event.uid",
        AnyValue::String(uid.clone()),
    )];
    if let Some(name) = &event.metadata.name {
        attributes.push(KeyValue::new(
            "k8s.event.name",
            AnyValue::String(name.clone()),
        ));
    }
    let platform = PlatformEvent {
        timestamp_ms: last,
        source: format!("agent-cluster/{cluster}"),
        attributes,
        kind: EventKind::Kubernetes(kubernetes),
    };
    Some((uid, resource_version, platform))
}

/// The running event watch and sender; [`KubeEvents::stop`] ends both.
pub struct KubeEvents {
    shared: Arc<Shared>,
    watch: JoinHandle<()>,
    sender: JoinHandle<()>,
}

impl std::fmt::Debug for KubeEvents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeEvents")
            .field("url", &self.shared.config.url)
            .field("stats", &self.stats())
            .finish()
    }
}

impl KubeEvents {
    /// Starts watching events with `client` and posting them to `config.url`.
    pub fn start(client: Client, config: EventsConfig) -> Result<Self, AgentError> {
        let uri: hyper::Uri = config
            .url
            .parse()
            .map_err(|e: hyper::http::uri::InvalidUri| AgentError::EventsUrl {
                url: config.url.clone(),
                reason: e.to_string(),
            })?;
        if uri.scheme_str() != Some("http") {
            return Err(AgentError::EventsUrl {
                url: config.url.clone(),
                reason: "only http:// is supported".to_owned(),
            });
        }
        let shared = Arc::new(Shared {
            config,
            state: Mutex::new(State::default()),
            wake: Notify::new(),
            counters: Counters::default(),
        });
        shared.load();
        let watch = tokio::spawn(watch(client, shared.clone()));
        let sender = tokio::spawn(send_loop(shared.clone(), uri));
        Ok(Self {
            shared,
            watch,
            sender,
        })
    }

    pub fn stats(&self) -> EventsStats {
        let c = &self.shared.counters;
        EventsStats {
            sent: c.sent.load(Ordering::Relaxed),
            rejected: c.rejected.load(Ordering::Relaxed),
            dropped: c.dropped.load(Ordering::Relaxed),
            retries: c.retries.load(Ordering::Relaxed),
        }
    }

    /// Stops watching and gives the sender a few seconds to post what is queued (what it
    /// cannot is sent again after a restart: the record only holds acknowledged events).
    pub async fn stop(self) {
        self.watch.abort();
        let _ = self.watch.await;
        lock(&self.shared).closed = true;
        self.shared.wake.notify_one();
        let mut sender = self.sender;
        if tokio::time::timeout(Duration::from_secs(5), &mut sender)
            .await
            .is_err()
        {
            sender.abort();
        }
    }
}

/// Queues `event` unless this version was sent already (or, from a list without a
/// record of it, it is older than the window).
fn offer(shared: &Shared, event: &Event, listed: bool, cutoff_ms: i64) {
    let Some((uid, resource_version, platform)) = platform_event(event, &shared.config.cluster)
    else {
        return;
    };
    let mut state = lock(shared);
    if state.sent.events.get(&uid) == Some(&resource_version) {
        return;
    }
    let known = state.sent.events.contains_key(&uid);
    if listed && !known && platform.timestamp_ms < cutoff_ms {
        // Old news from before this agent's time: remembered, not sent.
        state.sent.events.insert(uid, resource_version);
        return;
    }
    if state.queue.len() >= MAX_PENDING {
        // The oldest not being posted goes (or, if all are, the new one).
        let oldest = state.in_flight;
        shared.counters.dropped.fetch_add(1, Ordering::Relaxed);
        if state.queue.remove(oldest).is_none() {
            return;
        }
    }
    state.queue.push_back(Pending {
        uid,
        resource_version,
        event: platform,
    });
    drop(state);
    shared.wake.notify_one();
}

async fn watch(client: Client, shared: Arc<Shared>) {
    let cutoff_ms = {
        let state = lock(&shared);
        let since = if state.restored {
            state.sent.saved_at_ms
        } else {
            now_ms()
        };
        since.saturating_sub(i64::try_from(LIST_WINDOW.as_millis()).unwrap_or(0))
    };
    let api: Api<Event> = Api::all(client);
    let stream = watcher(api, watcher::Config::default()).default_backoff();
    let mut stream = std::pin::pin!(stream);
    // The uids of a list in progress: what the record keeps once it completes.
    let mut listing: Option<HashSet<String>> = None;
    while let Some(event) = stream.next().await {
        match event {
            Ok(watcher::Event::Init) => listing = Some(HashSet::new()),
            Ok(watcher::Event::InitApply(event)) => {
                if let (Some(listing), Some(uid)) = (&mut listing, &event.metadata.uid) {
                    listing.insert(uid.clone());
                }
                offer(&shared, &event, true, cutoff_ms);
            }
            Ok(watcher::Event::InitDone) => {
                if let Some(listed) = listing.take() {
                    // Forget events the API server no longer has, so the record stays
                    // the size of the cluster's event retention.
                    let mut state = lock(&shared);
                    let queued: HashSet<String> =
                        state.queue.iter().map(|p| p.uid.clone()).collect();
                    state
                        .sent
                        .events
                        .retain(|uid, _| listed.contains(uid) || queued.contains(uid));
                }
                shared.save();
            }
            Ok(watcher::Event::Apply(event)) => offer(&shared, &event, false, cutoff_ms),
            Ok(watcher::Event::Delete(event)) => {
                if let Some(uid) = &event.metadata.uid {
                    lock(&shared).sent.events.remove(uid);
                }
            }
            Err(error) => tracing::warn!(%error, "Kubernetes event watch failed; retrying"),
        }
    }
}

async fn send_loop(shared: Arc<Shared>, uri: hyper::Uri) {
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(Duration::from_secs(5)));
    let client: HttpClient<HttpConnector, Full<Bytes>> =
        HttpClient::builder(TokioExecutor::new()).build(connector);
    let config = &shared.config;
    let mut backoff = config.min_backoff;
    let mut failing = false;
    loop {
        let (batch, closed) = {
            let mut state = lock(&shared);
            let n = state.queue.len().min(MAX_BATCH);
            state.in_flight = n;
            let batch: Vec<PlatformEvent> = state
                .queue
                .iter()
                .take(n)
                .map(|p| p.event.clone())
                .collect();
            (batch, state.closed)
        };
        if batch.is_empty() {
            if closed {
                return;
            }
            shared.wake.notified().await;
            // Let a burst (a re-list) gather into one batch.
            tokio::time::sleep(config.flush_interval).await;
            continue;
        }
        let Ok(body) = serde_json::to_vec(&batch) else {
            // A PlatformEvent always renders; if not, the batch could never be sent.
            take_front(&shared, batch.len());
            continue;
        };
        match post(&client, config, &uri, Bytes::from(body)).await {
            Ok(()) => {
                shared
                    .counters
                    .sent
                    .fetch_add(batch.len() as u64, Ordering::Relaxed);
                take_front(&shared, batch.len());
                shared.save();
                backoff = config.min_backoff;
                failing = false;
            }
            Err(Failure::Refused(message)) => {
                tracing::warn!(events = batch.len(), %message, "the gateway refused Kubernetes events; dropped");
                shared
                    .counters
                    .rejected
                    .fetch_add(batch.len() as u64, Ordering::Relaxed);
                take_front(&shared, batch.len());
                shared.save();
            }
            Err(Failure::Retry(message)) => {
                shared.counters.retries.fetch_add(1, Ordering::Relaxed);
                if failing {
                    tracing::debug!(%message, ?backoff, "Kubernetes events not delivered; retrying");
                } else {
                    tracing::warn!(%message, "Kubernetes events not delivered; retrying quietly");
                }
                failing = true;
                if closed {
                    return;
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(config.max_backoff);
            }
        }
    }
}

/// Removes the first `n` queued events (the batch just answered) and records them sent.
fn take_front(shared: &Shared, n: usize) {
    let mut state = lock(shared);
    state.in_flight = 0;
    for _ in 0..n {
        if let Some(pending) = state.queue.pop_front() {
            state
                .sent
                .events
                .insert(pending.uid, pending.resource_version);
        }
    }
}

enum Failure {
    Refused(String),
    Retry(String),
}

async fn post(
    client: &HttpClient<HttpConnector, Full<Bytes>>,
    config: &EventsConfig,
    uri: &hyper::Uri,
    body: Bytes,
) -> Result<(), Failure> {
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
        .map_err(|e| Failure::Refused(format!("cannot build the request: {e}")))?;
    let exchange = async {
        let response = client
            .request(request)
            .await
            .map_err(|e| Failure::Retry(format!("cannot reach the gateway: {e}")))?;
        let status = response.status();
        let text = response
            .into_body()
            .collect()
            .await
            .map(|b| String::from_utf8_lossy(&b.to_bytes()).trim().to_owned())
            .unwrap_or_default();
        if status.is_success() {
            Ok(())
        } else if status.is_client_error() && status.as_u16() != 429 {
            Err(Failure::Refused(format!("{status}: {text}")))
        } else {
            Err(Failure::Retry(format!("{status}: {text}")))
        }
    };
    match tokio::time::timeout(config.timeout, exchange).await {
        Ok(result) => result,
        Err(_) => Err(Failure::Retry(format!(
            "no answer within {:?}",
            config.timeout
        ))),
    }
}
