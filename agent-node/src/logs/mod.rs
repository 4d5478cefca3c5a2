//! Container log tailing: every file under `<root>/var/log/pods` followed through rotation
//! and truncation, lines parsed (CRI and Docker JSON, split lines reassembled) and shipped
//! to the gateway as OTLP logs, with a checkpoint so a restart neither loses nor repeats a
//! line.
//!
//! The log files on disk are the buffer. A checkpoint entry moves only once the gateway
//! acknowledged the batch holding the lines, and while it does not, the reader stops after
//! `max_inflight_bytes` of unacknowledged lines; nothing is dropped for lack of room (the
//! kubelet's rotation is the only bound, as for every log agent). A batch the gateway refuses
//! as malformed (a 4xx other than 429) is dropped and counted, so one poison batch cannot
//! stop a node's logs.
//!
//! Change events come from inotify (`notify`), with a scan every `poll_interval` because
//! inotify loses events (queue overflow, directories created before their watch).

mod checkpoint;
mod discover;
mod parse;
mod ship;
mod tail;

#[cfg(test)]
mod tests;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, mpsc, watch};

pub use discover::PodLogRef;
pub use parse::Stream;

use checkpoint::Checkpoints;
use ship::{Outcome, Sender};
use tail::{FileChunk, Op, Reader};

/// Attributes to add to a container's logs, looked up by the pod the file belongs to (pod
/// discovery supplies it: labels, workload, Erda's classification).
pub type PodAttributes = Arc<dyn Fn(&PodLogRef) -> Vec<(String, String)> + Send + Sync>;

/// How to tail and where to ship.
#[derive(Clone)]
pub struct LogTailOptions {
    /// The host's root as this process sees it (`/`, or where the host is mounted).
    pub root: PathBuf,
    /// Where the checkpoint file lives (it must outlive the agent's container).
    pub checkpoint_dir: PathBuf,
    /// The gateway's OTLP/HTTP logs endpoint, e.g. `http://gateway:4318/v1/logs`.
    pub url: String,
    /// Extra headers on every request (the tenant token).
    pub headers: Vec<(String, String)>,
    pub pod_attributes: Option<PodAttributes>,
    /// Full scan for new and vanished files even without change events.
    pub poll_interval: Duration,
    /// How long lines wait for company before a partial batch is sent.
    pub flush_interval: Duration,
    pub max_batch_lines: usize,
    pub max_batch_bytes: usize,
    /// Longer (reassembled) lines are shipped in pieces of this size, marked truncated.
    pub max_line_bytes: usize,
    /// Lines read but not acknowledged at most (approximately); reading waits beyond it.
    pub max_inflight_bytes: usize,
    /// A rotated file is closed once it has not grown for this long.
    pub rotated_idle: Duration,
    pub request_timeout: Duration,
    /// First retry delay; doubles per failed attempt up to `max_backoff`.
    pub min_backoff: Duration,
    pub max_backoff: Duration,
    /// On stop, how long batches already read may still be sent; what is not sent is read
    /// again after the restart.
    pub drain_timeout: Duration,
}

impl std::fmt::Debug for LogTailOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogTailOptions")
            .field("root", &self.root)
            .field("checkpoint_dir", &self.checkpoint_dir)
            .field("url", &self.url)
            .field("headers", &self.headers.len())
            .field("pod_attributes", &self.pod_attributes.is_some())
            .finish_non_exhaustive()
    }
}

impl LogTailOptions {
    /// Defaults for shipping to the OTLP/HTTP endpoint at `gateway` (a base URL such as
    /// `http://127.0.0.1:4318`; `/v1/logs` is appended).
    pub fn new(gateway: &str, checkpoint_dir: impl Into<PathBuf>) -> Self {
        Self {
            root: PathBuf::from("/"),
            checkpoint_dir: checkpoint_dir.into(),
            url: format!("{}/v1/logs", gateway.trim_end_matches('/')),
            headers: Vec::new(),
            pod_attributes: None,
            poll_interval: Duration::from_secs(1),
            flush_interval: Duration::from_secs(1),
            max_batch_lines: 2_000,
            max_batch_bytes: 1 << 20,
            max_line_bytes: 256 << 10,
            max_inflight_bytes: 8 << 20,
            rotated_idle: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
            min_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(30),
            drain_timeout: Duration::from_secs(5),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LogsError {
    #[error("invalid logs endpoint {url:?}: {reason}")]
    InvalidUrl { url: String, reason: String },
    #[error("log checkpoint in {path}: {source}")]
    Checkpoint {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "log checkpoint {path} is damaged ({reason}); move it away to start over (logs still on disk are then sent again)"
    )]
    CheckpointDamaged { path: PathBuf, reason: String },
    #[error("log tailing task failed: {0}")]
    Task(String),
}

/// What the tailer has done so far (the agent exports these as self-metrics).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LogTailStats {
    /// Files open for reading now.
    pub files: u64,
    pub lines_read: u64,
    /// Lines the gateway acknowledged.
    pub lines_shipped: u64,
    /// Lines in batches the gateway refused (4xx) or rejected in a partial success.
    pub lines_dropped: u64,
    pub batches_shipped: u64,
    /// Failed attempts that were retried.
    pub batches_retried: u64,
    pub batches_dropped: u64,
    /// Bytes on disk not yet read plus lines read but not acknowledged.
    pub bytes_behind: u64,
    pub checkpoint_errors: u64,
}

#[derive(Default)]
struct Counters {
    files: AtomicU64,
    lines_read: AtomicU64,
    lines_shipped: AtomicU64,
    lines_dropped: AtomicU64,
    batches_shipped: AtomicU64,
    batches_retried: AtomicU64,
    batches_dropped: AtomicU64,
    disk_behind: AtomicU64,
    /// Cost (body bytes plus a per-line overhead) of lines read and not acknowledged.
    inflight: AtomicU64,
    checkpoint_errors: AtomicU64,
}

/// Per-line bookkeeping counted against the in-flight bound besides the text itself.
const LINE_OVERHEAD: u64 = 64;
/// Steps are at least this far apart, so a chatty container's events are coalesced.
const MIN_STEP: Duration = Duration::from_millis(20);

struct Shared {
    counters: Counters,
    /// Change events, acknowledgements freeing room: time to look again.
    wake: Notify,
    /// An event said files or directories came or went.
    rescan: AtomicBool,
}

/// A running tailer.
pub struct LogTailer {
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<Result<(), LogsError>>,
}

impl std::fmt::Debug for LogTailer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogTailer")
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

/// Tails until `shutdown` resolves, then stops (see [`LogTailer::stop`]).
pub async fn run(
    options: LogTailOptions,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<LogTailStats, LogsError> {
    let tailer = LogTailer::start(options)?;
    shutdown.await;
    tailer.stop().await
}

impl LogTailer {
    /// Loads the checkpoint and starts tailing on the current tokio runtime.
    pub fn start(options: LogTailOptions) -> Result<Self, LogsError> {
        let uri: hyper::Uri = options
            .url
            .parse()
            .map_err(|e: hyper::http::uri::InvalidUri| LogsError::InvalidUrl {
                url: options.url.clone(),
                reason: e.to_string(),
            })?;
        if uri.scheme_str() != Some("http") {
            return Err(LogsError::InvalidUrl {
                url: options.url.clone(),
                reason: "only http:// is supported".to_owned(),
            });
        }
        let checkpoints = Checkpoints::load(&options.checkpoint_dir)?;
        let shared = Arc::new(Shared {
            counters: Counters::default(),
            wake: Notify::new(),
            rescan: AtomicBool::new(true),
        });
        let (stop, stopped) = watch::channel(false);
        let sender = Sender::new(uri, options.headers.clone(), options.request_timeout);
        let task = tokio::spawn(tail(options, checkpoints, sender, shared.clone(), stopped));
        Ok(Self { shared, stop, task })
    }

    pub fn stats(&self) -> LogTailStats {
        let c = &self.shared.counters;
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        LogTailStats {
            files: load(&c.files),
            lines_read: load(&c.lines_read),
            lines_shipped: load(&c.lines_shipped),
            lines_dropped: load(&c.lines_dropped),
            batches_shipped: load(&c.batches_shipped),
            batches_retried: load(&c.batches_retried),
            batches_dropped: load(&c.batches_dropped),
            bytes_behind: load(&c.disk_behind) + load(&c.inflight),
            checkpoint_errors: load(&c.checkpoint_errors),
        }
    }

    /// Stops reading, sends what was read (for up to `drain_timeout`, without retrying), and
    /// waits for the checkpoint to be written. Lines not acknowledged by then are read again
    /// after the restart.
    pub async fn stop(mut self) -> Result<LogTailStats, LogsError> {
        let _ = self.stop.send(true);
        let result = (&mut self.task)
            .await
            .map_err(|e| LogsError::Task(e.to_string()))?;
        let stats = self.stats();
        result.map(|()| stats)
    }
}

/// Lines read and not yet handed to the shipper.
struct Batch {
    ops: Vec<Op>,
    lines: usize,
    bytes: usize,
    cost: u64,
    opened: Instant,
}

impl Batch {
    fn new() -> Self {
        Self {
            ops: Vec::new(),
            lines: 0,
            bytes: 0,
            cost: 0,
            opened: Instant::now(),
        }
    }

    fn push(&mut self, op: Op) {
        let Op::Chunk(mut chunk) = op else {
            self.ops.push(op);
            return;
        };
        let bytes: usize = chunk.records.iter().map(|r| r.body.len()).sum();
        if self.lines == 0 && self.ops.iter().all(|o| matches!(o, Op::Forget(_))) {
            self.opened = Instant::now();
        }
        self.lines += chunk.records.len();
        self.bytes += bytes;
        self.cost += bytes as u64 + LINE_OVERHEAD * chunk.records.len() as u64;
        // Same file as an earlier chunk (and not forgotten since): one resource, not two.
        let id = chunk.mark.id;
        for earlier in self.ops.iter_mut().rev() {
            match earlier {
                Op::Forget(forgotten) if *forgotten == id => break,
                Op::Chunk(earlier) if earlier.mark.id == id => {
                    earlier.records.append(&mut chunk.records);
                    earlier.mark = chunk.mark;
                    earlier.file = chunk.file;
                    return;
                }
                _ => {}
            }
        }
        self.ops.push(Op::Chunk(chunk));
    }
}

/// The reading side: scan, read, batch, hand batches to the shipper.
async fn tail(
    options: LogTailOptions,
    checkpoints: Checkpoints,
    sender: Sender,
    shared: Arc<Shared>,
    mut stopped: watch::Receiver<bool>,
) -> Result<(), LogsError> {
    let pods_dir = options.root.join("var/log/pods");
    let mut reader = Some(Reader::new(
        pods_dir.clone(),
        checkpoints.entries.clone(),
        checkpoints.existed,
        options.max_line_bytes,
        options.rotated_idle,
    ));
    let (batches, queue) = mpsc::unbounded_channel();
    let shipper = tokio::spawn(ship_batches(
        options.clone(),
        checkpoints,
        sender,
        shared.clone(),
        queue,
        stopped.clone(),
    ));
    let mut watcher = None;
    let mut batch = Batch::new();
    let mut last_scan: Option<Instant> = None;
    let mut last_step = Instant::now() - MIN_STEP;
    let mut more = false;
    let counters = &shared.counters;
    loop {
        if is_stopped(&stopped) {
            break;
        }
        if !more {
            let next_scan = last_scan.map_or(Instant::now(), |at| at + options.poll_interval);
            let next = if batch.lines > 0 {
                next_scan.min(batch.opened + options.flush_interval)
            } else {
                next_scan
            };
            tokio::select! {
                _ = stopped.changed() => break,
                () = shared.wake.notified() => {}
                () = tokio::time::sleep_until(next.into()) => {}
            }
        }
        let since = last_step.elapsed();
        if since < MIN_STEP {
            tokio::time::sleep(MIN_STEP - since).await;
        }
        last_step = Instant::now();
        let rescan = shared.rescan.swap(false, Ordering::Relaxed)
            || last_scan.is_none_or(|at| at.elapsed() >= options.poll_interval);
        if rescan {
            last_scan = Some(Instant::now());
            if watcher.is_none() {
                watcher = watch_dir(&pods_dir, &shared);
            }
        }
        let inflight = counters.inflight.load(Ordering::Relaxed);
        let budget = (options.max_inflight_bytes as u64).saturating_sub(inflight) as usize;
        let Some(mut taken) = reader.take() else {
            break;
        };
        let (back, step) = tokio::task::spawn_blocking(move || {
            let step = taken.step(rescan, budget);
            (taken, step)
        })
        .await
        .map_err(|e| LogsError::Task(e.to_string()))?;
        reader = Some(back);
        more = step.more && budget > 0;
        counters.lines_read.fetch_add(step.lines, Ordering::Relaxed);
        counters.files.store(step.files, Ordering::Relaxed);
        counters.disk_behind.store(step.behind, Ordering::Relaxed);
        let before = batch.cost;
        for op in step.ops {
            batch.push(op);
        }
        counters
            .inflight
            .fetch_add(batch.cost - before, Ordering::Relaxed);
        let full = batch.lines >= options.max_batch_lines || batch.bytes >= options.max_batch_bytes;
        let due = batch.opened.elapsed() >= options.flush_interval;
        let only_forgets = batch.lines == 0 && !batch.ops.is_empty();
        if full || ((due || only_forgets) && !batch.ops.is_empty()) {
            let _ = batches.send(std::mem::replace(&mut batch, Batch::new()));
        }
        if more && counters.inflight.load(Ordering::Relaxed) >= options.max_inflight_bytes as u64 {
            more = false;
        }
    }
    if !batch.ops.is_empty() {
        let _ = batches.send(batch);
    }
    drop(batches);
    drop(watcher);
    shipper.await.map_err(|e| LogsError::Task(e.to_string()))
}

/// Watches the pods directory (recursively) once it exists; events only wake the reader.
fn watch_dir(dir: &std::path::Path, shared: &Arc<Shared>) -> Option<notify::RecommendedWatcher> {
    use notify::{EventKind, Watcher, event::ModifyKind};
    if !dir.is_dir() {
        return None;
    }
    let events = shared.clone();
    let handler = move |event: notify::Result<notify::Event>| {
        let rescan = match &event {
            Ok(event) => {
                event.need_rescan()
                    || matches!(
                        event.kind,
                        EventKind::Create(_)
                            | EventKind::Remove(_)
                            | EventKind::Modify(ModifyKind::Name(_))
                    )
            }
            Err(_) => true,
        };
        if rescan {
            events.rescan.store(true, Ordering::Relaxed);
        }
        events.wake.notify_one();
    };
    match notify::recommended_watcher(handler)
        .and_then(|mut w| w.watch(dir, notify::RecursiveMode::Recursive).map(|()| w))
    {
        Ok(watcher) => Some(watcher),
        Err(error) => {
            tracing::warn!(dir = %dir.display(), %error, "cannot watch the pod log directory; polling only");
            None
        }
    }
}

/// Asked to stop, or the tailer's handle is gone (no one can ask any more).
fn is_stopped(stopped: &watch::Receiver<bool>) -> bool {
    *stopped.borrow() || stopped.has_changed().is_err()
}

fn now_unix_nano() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// The sending side: batches in order, each retried until the gateway takes or refuses it,
/// then its checkpoint marks applied and written.
async fn ship_batches(
    options: LogTailOptions,
    mut checkpoints: Checkpoints,
    sender: Sender,
    shared: Arc<Shared>,
    mut queue: mpsc::UnboundedReceiver<Batch>,
    mut stopped: watch::Receiver<bool>,
) {
    let counters = &shared.counters;
    let mut deadline: Option<tokio::time::Instant> = None;
    let mut backoff = options.min_backoff;
    'batches: while let Some(batch) = queue.recv().await {
        let chunks: Vec<&FileChunk> = batch
            .ops
            .iter()
            .filter_map(|op| match op {
                Op::Chunk(chunk) => Some(chunk),
                Op::Forget(_) => None,
            })
            .collect();
        if batch.lines > 0 {
            let request = ship::encode(&chunks, options.pod_attributes.as_ref(), now_unix_nano());
            let body = match Sender::body(&request) {
                Ok(body) => body,
                Err(error) => {
                    tracing::error!(%error, "cannot compress a logs request; dropped");
                    counters.batches_dropped.fetch_add(1, Ordering::Relaxed);
                    counters
                        .lines_dropped
                        .fetch_add(batch.lines as u64, Ordering::Relaxed);
                    continue;
                }
            };
            loop {
                if is_stopped(&stopped) && deadline.is_none() {
                    deadline = Some(tokio::time::Instant::now() + options.drain_timeout);
                }
                if deadline.is_some_and(|d| tokio::time::Instant::now() >= d) {
                    tracing::info!(
                        "stopping with log lines not sent; they are read again at the next start"
                    );
                    break 'batches;
                }
                match sender.send(body.clone()).await {
                    Outcome::Delivered { rejected } => {
                        let lines = batch.lines as u64;
                        counters.batches_shipped.fetch_add(1, Ordering::Relaxed);
                        counters
                            .lines_shipped
                            .fetch_add(lines.saturating_sub(rejected), Ordering::Relaxed);
                        if rejected > 0 {
                            tracing::warn!(rejected, "the gateway rejected some log lines");
                            counters
                                .lines_dropped
                                .fetch_add(rejected, Ordering::Relaxed);
                        }
                        backoff = options.min_backoff;
                        break;
                    }
                    Outcome::Refused(reason) => {
                        tracing::warn!(url = %options.url, %reason, lines = batch.lines, "the gateway refused a logs batch; dropped");
                        counters.batches_dropped.fetch_add(1, Ordering::Relaxed);
                        counters
                            .lines_dropped
                            .fetch_add(batch.lines as u64, Ordering::Relaxed);
                        break;
                    }
                    Outcome::Retry { reason, after } => {
                        counters.batches_retried.fetch_add(1, Ordering::Relaxed);
                        if is_stopped(&stopped) {
                            tracing::info!(%reason, "stopping with log lines the gateway did not take; they are read again at the next start");
                            break 'batches;
                        }
                        let wait = after
                            .map_or(backoff, |a| a.max(backoff))
                            .min(options.max_backoff);
                        tracing::debug!(url = %options.url, %reason, ?wait, "logs batch failed; retrying");
                        tokio::select! {
                            () = tokio::time::sleep(wait) => {}
                            _ = stopped.changed() => {}
                        }
                        backoff = (backoff * 2).min(options.max_backoff);
                    }
                }
            }
        }
        // Delivered or dropped for good: the checkpoint moves past these lines.
        for op in batch.ops {
            match op {
                Op::Chunk(chunk) => {
                    checkpoints.entries.insert(chunk.mark.id, chunk.mark);
                }
                Op::Forget(id) => {
                    checkpoints.entries.remove(&id);
                }
            }
        }
        let bytes = checkpoints.encode();
        let dir = checkpoints.dir().to_path_buf();
        let written = tokio::task::spawn_blocking(move || checkpoint::write(&dir, &bytes)).await;
        match written {
            Ok(Ok(())) => {}
            Ok(Err(error)) => {
                counters.checkpoint_errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(%error, "cannot write the log checkpoint");
            }
            Err(error) => {
                counters.checkpoint_errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(%error, "log checkpoint task failed");
            }
        }
        counters.inflight.fetch_sub(
            batch.cost.min(counters.inflight.load(Ordering::Relaxed)),
            Ordering::Relaxed,
        );
        shared.wake.notify_one();
    }
}
