//! Getting an agent's telemetry to the gateway: remote-write requests built from batches of
//! series, snappy-compressed, sent one at a time in order, retried with exponential backoff
//! while the gateway is unreachable or overloaded, and held in a bounded buffer meanwhile.
//!
//! An agent must never be knocked over by its gateway: memory is bounded by
//! `buffer_bytes` (the oldest requests are dropped and counted beyond it), a slow or absent
//! gateway only makes the buffer fill, and a request the gateway refuses as malformed (a 4xx
//! other than 429) is dropped and counted rather than retried forever. Retryable answers
//! (5xx, 429, connection errors, timeouts) keep the request at the head of the queue, so
//! order is kept.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::sync::Notify;

pub use prompb;

mod encode;
pub mod heartbeat;
mod spool;
pub mod stale;
pub mod tls;
pub use encode::{ExemplarRef, SeriesBuffer};
use spool::{Spool, Spooled};

/// Where and how to send.
#[derive(Clone, Debug)]
pub struct RemoteWriteConfig {
    /// The remote-write endpoint, e.g. `http://gateway:9797/api/v1/write`.
    pub url: String,
    /// Extra headers on every request (`Authorization`, a tenant header).
    pub headers: Vec<(String, String)>,
    /// How long one request may take before it counts as failed (and is retried).
    pub timeout: Duration,
    /// Samples per request at most.
    pub max_samples_per_request: usize,
    /// How long series wait for company before a partial batch is sent.
    pub flush_interval: Duration,
    /// Compressed requests held while the gateway does not take them; beyond this the
    /// oldest are dropped (and counted).
    pub buffer_bytes: usize,
    /// First retry delay; doubles per failed attempt up to `max_backoff`.
    pub min_backoff: Duration,
    pub max_backoff: Duration,
    /// Where requests wait on disk once more than `spill_after_requests` are queued (and
    /// all of them when delivery closes with some unsent), so a restart sends them. `None`:
    /// memory only.
    pub spool_dir: Option<PathBuf>,
    pub spill_after_requests: usize,
    /// TLS settings for an https `url` (a remote_write `tls_config`); `None`: the system's
    /// roots.
    pub tls: Option<Arc<rustls::ClientConfig>>,
}

impl RemoteWriteConfig {
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            headers: Vec::new(),
            timeout: Duration::from_secs(30),
            max_samples_per_request: 2_000,
            flush_interval: Duration::from_secs(1),
            buffer_bytes: 64 << 20,
            min_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(30),
            spool_dir: None,
            spill_after_requests: 4,
            tls: None,
        }
    }
}

/// A configuration that cannot work.
#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    #[error("invalid remote-write URL {url:?}: {reason}")]
    InvalidUrl { url: String, reason: String },
    #[error("cannot use the delivery buffer directory {dir}: {source}")]
    Spool { dir: String, source: std::io::Error },
}

/// What delivery has done so far (exported as the agent's self-metrics).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DeliveryStats {
    /// Samples the gateway acknowledged.
    pub sent_samples: u64,
    pub sent_requests: u64,
    /// Samples dropped because the buffer was full (oldest first).
    pub dropped_samples: u64,
    /// Samples the gateway refused as malformed (4xx other than 429).
    pub rejected_samples: u64,
    /// Failed attempts that were retried.
    pub retries: u64,
    /// Compressed bytes waiting now.
    pub buffered_bytes: u64,
    /// Samples waiting now (batched or buffered).
    pub pending_samples: u64,
}

/// One compressed request and how many samples it carries.
struct Request {
    body: Body,
    samples: u64,
    /// Compressed bytes (what counts against the buffer bound).
    len: usize,
    /// Its place in the spool's order (0 without a spool).
    seq: u64,
}

enum Body {
    Memory(Bytes),
    Disk(Spooled),
}

impl Request {
    /// Forgets the request (its file too).
    fn discard(self) {
        if let Body::Disk(spooled) = &self.body {
            Spool::remove(spooled);
        }
    }
}

#[derive(Default)]
struct Queue {
    /// Series not yet in a request, encoded.
    batch: SeriesBuffer,
    /// Metadata to send with the next request.
    metadata: Vec<prompb::MetricMetadata>,
    requests: VecDeque<Request>,
    buffered_bytes: usize,
    closed: bool,
    /// The front request is being sent: it is never the one dropped to make room.
    sending: bool,
    spool: Option<Spool>,
}

struct Shared {
    config: RemoteWriteConfig,
    queue: Mutex<Queue>,
    wake: Notify,
    /// Signalled only by `close`, so batches filling up do not cut a retry's backoff short.
    closing: Notify,
    sent_samples: AtomicU64,
    sent_requests: AtomicU64,
    dropped_samples: AtomicU64,
    rejected_samples: AtomicU64,
    retries: AtomicU64,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Turns the current batch into a compressed request at the back of the queue, dropping
    /// the oldest requests while the buffer is over its bound.
    fn seal(&self, queue: &mut Queue) {
        if queue.batch.is_empty() && queue.metadata.is_empty() {
            return;
        }
        let encoded = queue.batch.request(&queue.metadata);
        let samples = queue.batch.samples() as u64;
        queue.batch = SeriesBuffer::new();
        queue.metadata.clear();
        let body = match snap::raw::Encoder::new().compress_vec(&encoded) {
            Ok(body) => Bytes::from(body),
            Err(error) => {
                // Only an input over snappy's 4 GiB limit fails; a batch never is one.
                tracing::error!(%error, "cannot compress a remote-write request; dropped");
                self.dropped_samples.fetch_add(samples, Ordering::Relaxed);
                return;
            }
        };
        let len = body.len();
        let backlog = queue.requests.len() >= self.config.spill_after_requests;
        let seq = queue.spool.as_mut().map_or(0, Spool::reserve);
        let body = match (&mut queue.spool, backlog) {
            (Some(spool), true) => match spool.write(seq, &body, samples) {
                Ok(spooled) => Body::Disk(spooled),
                Err(error) => {
                    tracing::warn!(%error, "cannot buffer a request on disk; kept in memory");
                    Body::Memory(body)
                }
            },
            _ => Body::Memory(body),
        };
        queue.buffered_bytes += len;
        queue.requests.push_back(Request {
            body,
            samples,
            len,
            seq,
        });
        let first_droppable = usize::from(queue.sending);
        while queue.buffered_bytes > self.config.buffer_bytes
            && queue.requests.len() > first_droppable + 1
        {
            if let Some(oldest) = queue.requests.remove(first_droppable) {
                queue.buffered_bytes -= oldest.len;
                self.dropped_samples
                    .fetch_add(oldest.samples, Ordering::Relaxed);
                oldest.discard();
            }
        }
    }

    /// Moves the requests still in memory to disk (delivery is closing with some unsent).
    fn spill_all(&self) {
        let mut queue = self.lock();
        let Queue {
            requests, spool, ..
        } = &mut *queue;
        let Some(spool) = spool else {
            return;
        };
        let mut spilled = 0;
        for request in requests.iter_mut() {
            if let Body::Memory(body) = &request.body {
                match spool.write(request.seq, body, request.samples) {
                    Ok(spooled) => {
                        request.body = Body::Disk(spooled);
                        spilled += 1;
                    }
                    Err(error) => {
                        tracing::error!(%error, "cannot buffer a request on disk; it is lost");
                    }
                }
            }
        }
        if spilled > 0 {
            tracing::info!(
                requests = spilled,
                "unsent requests kept on disk for the next start"
            );
        }
    }
}

/// The sending side an agent holds; cheap to clone.
#[derive(Clone)]
pub struct Delivery {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Delivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Delivery")
            .field("url", &self.shared.config.url)
            .field("stats", &self.stats())
            .finish()
    }
}

/// How a send attempt ended.
enum Outcome {
    Acknowledged,
    /// The gateway says the request is wrong: retrying cannot help.
    Refused(String),
    Retry(String),
}

impl Delivery {
    /// Starts the sender task on the current tokio runtime.
    pub fn start(
        config: RemoteWriteConfig,
    ) -> Result<(Self, tokio::task::JoinHandle<()>), DeliveryError> {
        let uri: hyper::Uri = config
            .url
            .parse()
            .map_err(
                |e: hyper::http::uri::InvalidUri| DeliveryError::InvalidUrl {
                    url: config.url.clone(),
                    reason: e.to_string(),
                },
            )?;
        tls::check_scheme(&config.url, &uri)?;
        let connector = tls::connector(&config.url, &uri, config.tls.as_ref())?;
        let mut queue = Queue::default();
        if let Some(dir) = &config.spool_dir {
            let (spool, found) = Spool::open(dir).map_err(|source| DeliveryError::Spool {
                dir: dir.display().to_string(),
                source,
            })?;
            if !found.is_empty() {
                tracing::info!(requests = found.len(), dir = %dir.display(), "sending requests buffered before the last stop");
            }
            for spooled in found {
                queue.buffered_bytes += spooled.len;
                queue.requests.push_back(Request {
                    samples: spooled.samples,
                    len: spooled.len,
                    seq: spooled.seq,
                    body: Body::Disk(spooled),
                });
            }
            queue.spool = Some(spool);
        }
        let shared = Arc::new(Shared {
            config,
            queue: Mutex::new(queue),
            wake: Notify::new(),
            closing: Notify::new(),
            sent_samples: AtomicU64::new(0),
            sent_requests: AtomicU64::new(0),
            dropped_samples: AtomicU64::new(0),
            rejected_samples: AtomicU64::new(0),
            retries: AtomicU64::new(0),
        });
        let task = tokio::spawn(run(shared.clone(), uri, connector));
        Ok((Self { shared }, task))
    }

    /// Queues series; they go out within `flush_interval`, or at once when a request is full.
    pub fn push(&self, series: Vec<prompb::TimeSeries>) {
        let mut buffer = SeriesBuffer::new();
        for one in &series {
            buffer.push_message(one);
        }
        self.push_encoded(buffer);
    }

    /// Queues already-encoded series (the agents' path: no `prompb` structs per sample).
    pub fn push_encoded(&self, series: SeriesBuffer) {
        if series.is_empty() {
            return;
        }
        let mut queue = self.shared.lock();
        let limit = self.shared.config.max_samples_per_request.max(1);
        queue.batch.bytes.extend_from_slice(&series.bytes);
        queue.batch.samples += series.samples;
        let sealed = queue.batch.samples >= limit;
        if sealed {
            self.shared.seal(&mut queue);
        }
        drop(queue);
        if sealed {
            self.shared.wake.notify_one();
        }
    }

    /// Queues metadata for the next request.
    pub fn push_metadata(&self, metadata: Vec<prompb::MetricMetadata>) {
        self.shared.lock().metadata.extend(metadata);
    }

    pub fn stats(&self) -> DeliveryStats {
        let queue = self.shared.lock();
        let buffered: u64 = queue.requests.iter().map(|r| r.samples).sum();
        DeliveryStats {
            sent_samples: self.shared.sent_samples.load(Ordering::Relaxed),
            sent_requests: self.shared.sent_requests.load(Ordering::Relaxed),
            dropped_samples: self.shared.dropped_samples.load(Ordering::Relaxed),
            rejected_samples: self.shared.rejected_samples.load(Ordering::Relaxed),
            retries: self.shared.retries.load(Ordering::Relaxed),
            buffered_bytes: queue.buffered_bytes as u64,
            pending_samples: buffered + queue.batch.samples() as u64,
        }
    }

    /// Writes every request still in memory to the disk buffer (when there is one): for a
    /// stop that cannot wait for the gateway any longer, after the task was aborted.
    pub fn spill(&self) {
        self.shared.lock().sending = false;
        self.shared.spill_all();
    }

    /// Sends what is queued and stops the task once the queue is empty (or at once when
    /// the gateway does not take it).
    pub fn close(&self) {
        let mut queue = self.shared.lock();
        queue.closed = true;
        self.shared.seal(&mut queue);
        drop(queue);
        self.shared.wake.notify_one();
        self.shared.closing.notify_one();
    }

    /// An agent's last step: closes, waits up to `patience` for the gateway to take what
    /// is queued (`task` is the one [`Delivery::start`] returned), and spills what it has
    /// not taken by then to the buffer directory, so a restart sends it.
    pub async fn finish(&self, task: tokio::task::JoinHandle<()>, patience: Duration) {
        self.close();
        let mut task = task;
        if tokio::time::timeout(patience, &mut task).await.is_err() {
            task.abort();
            let _ = task.await;
            self.spill();
            tracing::warn!(
                pending = self.stats().pending_samples,
                "stopped before the gateway took everything; the rest is in the buffer directory"
            );
        }
    }
}

/// The client to the gateway, http or https.
type GatewayClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

async fn run(shared: Arc<Shared>, uri: hyper::Uri, connector: HttpsConnector<HttpConnector>) {
    let client: GatewayClient = Client::builder(TokioExecutor::new()).build(connector);
    let mut backoff = shared.config.min_backoff;
    loop {
        let next = {
            let mut queue = shared.lock();
            if queue.requests.is_empty() {
                shared.seal(&mut queue);
            }
            queue.sending = !queue.requests.is_empty();
            match queue.requests.front() {
                Some(request) => Some((
                    match &request.body {
                        Body::Memory(body) => Some(body.clone()),
                        Body::Disk(spooled) => Spool::read(spooled),
                    },
                    request.samples,
                )),
                None if queue.closed => return,
                None => None,
            }
        };
        let Some((body, samples)) = next else {
            // Nothing to send: wait for a full batch or the flush interval.
            let _ =
                tokio::time::timeout(shared.config.flush_interval, shared.wake.notified()).await;
            continue;
        };
        let Some(body) = body else {
            let mut queue = shared.lock();
            if let Some(damaged) = queue.requests.pop_front() {
                queue.buffered_bytes -= damaged.len;
                damaged.discard();
            }
            queue.sending = false;
            shared.dropped_samples.fetch_add(samples, Ordering::Relaxed);
            tracing::warn!(samples, "a buffered request on disk is damaged; dropped");
            continue;
        };
        let outcome = send(&client, &shared.config, &uri, body).await;
        let done = |shared: &Shared| {
            let mut queue = shared.lock();
            if let Some(sent) = queue.requests.pop_front() {
                queue.buffered_bytes -= sent.len;
                sent.discard();
            }
            queue.sending = false;
        };
        match outcome {
            Outcome::Acknowledged => {
                done(&shared);
                shared.sent_samples.fetch_add(samples, Ordering::Relaxed);
                shared.sent_requests.fetch_add(1, Ordering::Relaxed);
                backoff = shared.config.min_backoff;
            }
            Outcome::Refused(reason) => {
                done(&shared);
                shared
                    .rejected_samples
                    .fetch_add(samples, Ordering::Relaxed);
                tracing::warn!(url = %shared.config.url, %reason, samples, "the gateway refused a remote-write request; dropped");
            }
            Outcome::Retry(reason) => {
                shared.retries.fetch_add(1, Ordering::Relaxed);
                let closed = {
                    let mut queue = shared.lock();
                    queue.sending = false;
                    queue.closed
                };
                if closed {
                    tracing::warn!(url = %shared.config.url, %reason, "closing with requests the gateway did not take");
                    shared.spill_all();
                    return;
                }
                tracing::debug!(url = %shared.config.url, %reason, ?backoff, "remote-write failed; retrying");
                // A close cuts the wait short: one last attempt, then the buffer goes to disk.
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {}
                    () = shared.closing.notified() => {}
                }
                backoff = (backoff * 2).min(shared.config.max_backoff);
            }
        }
    }
}

async fn send(
    client: &GatewayClient,
    config: &RemoteWriteConfig,
    uri: &hyper::Uri,
    body: Bytes,
) -> Outcome {
    let mut request = hyper::Request::post(uri.clone())
        .header("content-type", "application/x-protobuf")
        .header("content-encoding", "snappy")
        .header("x-prometheus-remote-write-version", "0.1.0")
        .header(
            "user-agent",
            concat!("meerkat-agent/", env!("CARGO_PKG_VERSION")),
        );
    for (name, value) in &config.headers {
        request = request.header(name.as_str(), value.as_str());
    }
    let request = match request.body(Full::new(body)) {
        Ok(request) => request,
        Err(error) => return Outcome::Refused(format!("cannot build the request: {error}")),
    };
    let response = match tokio::time::timeout(config.timeout, client.request(request)).await {
        Err(_) => return Outcome::Retry(format!("no answer within {:?}", config.timeout)),
        Ok(Err(error)) => return Outcome::Retry(error.to_string()),
        Ok(Ok(response)) => response,
    };
    let status = response.status();
    // Read the body so the connection can be reused (and to log why on failure).
    let text = match tokio::time::timeout(config.timeout, response.into_body().collect()).await {
        Ok(Ok(collected)) => String::from_utf8_lossy(&collected.to_bytes()).into_owned(),
        _ => String::new(),
    };
    if status.is_success() {
        Outcome::Acknowledged
    } else if status.as_u16() == 429 || status.is_server_error() {
        Outcome::Retry(format!("{status}: {}", text.trim()))
    } else {
        Outcome::Refused(format!("{status}: {}", text.trim()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    use prost::Message;

    use axum::Router;
    use axum::http::StatusCode;
    use axum::routing::post;

    fn series(name: &str, samples: usize) -> prompb::TimeSeries {
        prompb::TimeSeries {
            labels: vec![prompb::Label {
                name: Bytes::from_static(b"__name__"),
                value: Bytes::copy_from_slice(name.as_bytes()),
            }],
            samples: (0..samples)
                .map(|i| prompb::Sample {
                    value: i as f64,
                    timestamp: i as i64,
                })
                .collect(),
            ..Default::default()
        }
    }

    /// A receiver answering with `status(n)` to its n-th request, recording decoded bodies.
    async fn receiver(
        status: impl Fn(usize) -> StatusCode + Send + Sync + 'static,
    ) -> (
        String,
        Arc<Mutex<Vec<prompb::WriteRequest>>>,
        Arc<AtomicUsize>,
    ) {
        slow_receiver(Duration::ZERO, status).await
    }

    /// Like [`receiver`], taking `delay` to answer each request.
    async fn slow_receiver(
        delay: Duration,
        status: impl Fn(usize) -> StatusCode + Send + Sync + 'static,
    ) -> (
        String,
        Arc<Mutex<Vec<prompb::WriteRequest>>>,
        Arc<AtomicUsize>,
    ) {
        let received = Arc::new(Mutex::new(Vec::new()));
        let attempts = Arc::new(AtomicUsize::new(0));
        let status = Arc::new(status);
        let (r, a) = (received.clone(), attempts.clone());
        let app = Router::new().route(
            "/api/v1/write",
            post(move |body: Bytes| {
                let (r, a, status) = (r.clone(), a.clone(), status.clone());
                async move {
                    tokio::time::sleep(delay).await;
                    let n = a.fetch_add(1, Ordering::SeqCst);
                    let code = status(n);
                    if code.is_success() {
                        let raw = snap::raw::Decoder::new().decompress_vec(&body).unwrap();
                        r.lock()
                            .unwrap()
                            .push(prompb::WriteRequest::decode(&raw[..]).unwrap());
                    }
                    code
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/api/v1/write", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        (url, received, attempts)
    }

    fn fast(url: &str) -> RemoteWriteConfig {
        RemoteWriteConfig {
            flush_interval: Duration::from_millis(20),
            min_backoff: Duration::from_millis(5),
            max_backoff: Duration::from_millis(20),
            max_samples_per_request: 10,
            ..RemoteWriteConfig::new(url)
        }
    }

    async fn until(what: &str, done: impl Fn() -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !done() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for {what}"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn batches_arrive_in_order_and_failures_are_retried() {
        // The 2nd and 3rd attempts fail with 503 and 429: retried, nothing lost or reordered.
        let (url, received, _) = receiver(|n| match n {
            1 => StatusCode::SERVICE_UNAVAILABLE,
            2 => StatusCode::TOO_MANY_REQUESTS,
            _ => StatusCode::NO_CONTENT,
        })
        .await;
        let (delivery, task) = Delivery::start(fast(&url)).unwrap();
        for i in 0..5 {
            delivery.push(vec![series(&format!("m{i}"), 10)]);
        }
        delivery.push(vec![series("tail", 3)]);
        until("all samples", || delivery.stats().sent_samples == 53).await;
        let stats = delivery.stats();
        assert_eq!(
            (stats.retries, stats.dropped_samples, stats.pending_samples),
            (2, 0, 0)
        );
        let names: Vec<String> = received
            .lock()
            .unwrap()
            .iter()
            .flat_map(|r| {
                r.timeseries
                    .iter()
                    .map(|s| String::from_utf8_lossy(&s.labels[0].value).into_owned())
            })
            .collect();
        assert_eq!(names, ["m0", "m1", "m2", "m3", "m4", "tail"]);
        delivery.close();
        task.await.unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_refused_request_is_dropped_and_counted() {
        let (url, received, _) = receiver(|n| {
            if n == 0 {
                StatusCode::BAD_REQUEST
            } else {
                StatusCode::OK
            }
        })
        .await;
        let (delivery, _task) = Delivery::start(fast(&url)).unwrap();
        delivery.push(vec![series("bad", 10)]);
        delivery.push(vec![series("good", 10)]);
        until("the good request", || delivery.stats().sent_samples == 10).await;
        assert_eq!(delivery.stats().rejected_samples, 10);
        assert_eq!(received.lock().unwrap().len(), 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_unreachable_gateway_fills_a_bounded_buffer_dropping_the_oldest() {
        // Nothing listens on this port.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let config = RemoteWriteConfig {
            buffer_bytes: 4_000,
            ..fast(&format!("http://127.0.0.1:{port}/api/v1/write"))
        };
        let (delivery, _task) = Delivery::start(config).unwrap();
        for i in 0..200 {
            delivery.push(vec![series(&format!("series_{i}"), 10)]);
        }
        let stats = delivery.stats();
        assert!(stats.buffered_bytes <= 4_000 + 1_000, "{stats:?}");
        assert!(stats.dropped_samples > 0, "{stats:?}");
        assert_eq!(
            stats.dropped_samples + stats.pending_samples,
            2_000,
            "every sample is sent, buffered or counted"
        );
        until("a retry", || delivery.stats().retries > 0).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn unsent_requests_survive_a_restart_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        // First life: the gateway is down; 20 requests pile up, most on disk.
        let config = RemoteWriteConfig {
            spool_dir: Some(dir.path().to_path_buf()),
            ..fast(&format!("http://127.0.0.1:{port}/api/v1/write"))
        };
        let (delivery, task) = Delivery::start(config).unwrap();
        for i in 0..20 {
            delivery.push(vec![series(&format!("s{i}"), 10)]);
        }
        until("a retry", || delivery.stats().retries > 0).await;
        delivery.close();
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .unwrap()
            .unwrap();
        let files = std::fs::read_dir(dir.path()).unwrap().count();
        assert_eq!(files, 20, "every unsent request is on disk");
        // A damaged file is dropped and counted, never sent.
        let mut damaged: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        damaged.sort();
        let mut bytes = std::fs::read(&damaged[5]).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        std::fs::write(&damaged[5], bytes).unwrap();
        std::fs::write(dir.path().join("00000000000000000099.tmp"), b"torn").unwrap();

        // Second life: the gateway is up; the buffered requests go first, in order.
        let (url, received, _) = receiver(|_| StatusCode::NO_CONTENT).await;
        let config = RemoteWriteConfig {
            spool_dir: Some(dir.path().to_path_buf()),
            ..fast(&url)
        };
        let (delivery, task) = Delivery::start(config).unwrap();
        delivery.push(vec![series("after_restart", 10)]);
        until("everything", || delivery.stats().sent_samples == 200).await;
        assert_eq!(delivery.stats().dropped_samples, 10, "the damaged request");
        let names: Vec<String> = received
            .lock()
            .unwrap()
            .iter()
            .flat_map(|r| {
                r.timeseries
                    .iter()
                    .map(|s| String::from_utf8_lossy(&s.labels[0].value).into_owned())
            })
            .collect();
        let mut expected: Vec<String> = (0..20)
            .filter(|i| *i != 5)
            .map(|i| format!("s{i}"))
            .collect();
        expected.push("after_restart".to_owned());
        assert_eq!(names, expected);
        delivery.close();
        task.await.unwrap();
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            0,
            "sent requests are removed"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_request_in_flight_is_never_the_one_dropped() {
        // A gateway that takes 200 ms per request while pushes overflow a small buffer:
        // every sample is sent or counted as dropped, none vanishes.
        let (url, received, _) =
            slow_receiver(Duration::from_millis(200), |_| StatusCode::NO_CONTENT).await;
        let config = RemoteWriteConfig {
            buffer_bytes: 600,
            ..fast(&url)
        };
        let (delivery, _task) = Delivery::start(config).unwrap();
        for i in 0..40 {
            delivery.push(vec![series(&format!("s{i}"), 10)]);
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        until("the queue to drain", || {
            delivery.stats().pending_samples == 0
        })
        .await;
        let stats = delivery.stats();
        assert!(stats.dropped_samples > 0, "{stats:?}");
        let arrived: usize = received
            .lock()
            .unwrap()
            .iter()
            .flat_map(|r| r.timeseries.iter().map(|s| s.samples.len()))
            .sum();
        assert_eq!(stats.sent_samples as usize, arrived, "{stats:?}");
        assert_eq!(stats.sent_samples + stats.dropped_samples, 400, "{stats:?}");
    }

    #[test]
    fn only_http_and_https_urls_are_taken() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let error = Delivery::start(RemoteWriteConfig::new("ftp://x/")).unwrap_err();
            assert!(error.to_string().contains("http:// or https://"), "{error}");
            let error = Delivery::start(RemoteWriteConfig::new("not a url")).unwrap_err();
            assert!(
                error.to_string().contains("invalid remote-write URL"),
                "{error}"
            );
        });
    }
}
