//! One partition of the embedded log: its segments, its writer thread, reads and retention.
//!
//! Each partition has one writer thread. Producers hand it requests over a bounded channel
//! (that bound is the back-pressure: a slow disk makes `produce` wait instead of memory
//! grow); the thread takes every request already waiting, writes them as one run of batches,
//! fsyncs once, and only then answers them all. That is group commit: under load one fsync
//! covers many requests, so durability costs little throughput, while a lone request still
//! gets its own fsync right away.

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::Instant;

use tokio::sync::{Notify, mpsc, oneshot};

use super::EmbeddedBusConfig;
use super::format::{BATCH_HEADER_LEN, RECORD_OVERHEAD, StoredRecord, encode_batch, record_len};
use super::metrics::{BusMetrics, PartitionLabels, TopicLabels};
use super::segment::{IndexEntry, Segment, parse_log_file_name, sync_dir};
use crate::{BusError, ProduceRecord, Result, Watermarks};

/// The state of a partition that readers, the writer thread and retention share.
#[derive(Debug)]
pub(crate) struct PartitionLog {
    pub topic: Arc<str>,
    pub id: u32,
    dir: PathBuf,
    config: Arc<EmbeddedBusConfig>,
    /// Ascending by base offset; the last one is the segment being written.
    segments: RwLock<Vec<Arc<Segment>>>,
    high_watermark: AtomicU64,
    log_start: AtomicU64,
    notify: Arc<Notify>,
    metrics: BusMetrics,
    labels: PartitionLabels,
}

/// One batch of a produce request for one partition, answered with its first offset.
struct AppendRequest {
    /// Records with their timestamps resolved.
    records: Vec<(i64, ProduceRecord)>,
    encoded_len: u64,
    reply: oneshot::Sender<Result<u64>>,
    /// Shared by the batches of one produce call: set when one of them fails, so the later
    /// ones are not written after it (that would break the call's record order on retry).
    aborted: Arc<AtomicBool>,
}

/// A partition as its owner sees it: the shared log plus the way in to its writer.
#[derive(Debug)]
pub(crate) struct Partition {
    pub log: Arc<PartitionLog>,
    sender: Mutex<Option<mpsc::Sender<AppendRequest>>>,
    writer: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for AppendRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppendRequest")
            .field("records", &self.records.len())
            .field("encoded_len", &self.encoded_len)
            .finish()
    }
}

/// The encoded size of a batch of `records`.
pub(crate) fn batch_len<'a>(records: impl IntoIterator<Item = &'a ProduceRecord>) -> u64 {
    BATCH_HEADER_LEN as u64 + records.into_iter().map(record_len).sum::<u64>()
}

impl Partition {
    /// Opens (recovering) or creates the partition in `dir` and starts its writer thread.
    pub fn open(
        dir: PathBuf,
        topic: Arc<str>,
        id: u32,
        config: Arc<EmbeddedBusConfig>,
        notify: Arc<Notify>,
        metrics: BusMetrics,
    ) -> Result<Self> {
        fs::create_dir_all(&dir)
            .map_err(|e| BusError::io("creating partition directory", &dir, e))?;
        if let Some(parent) = dir.parent() {
            sync_dir(parent)?;
        }
        let segments = recover_segments(&dir, &topic, &config, &metrics)?;
        let labels = PartitionLabels::new(&topic, id);
        let active = segments.last().cloned().ok_or_else(|| BusError::Corrupt {
            path: dir.clone(),
            position: 0,
            reason: "partition has no segment after recovery".to_owned(),
        })?;
        let next_offset = active.next_offset();
        let log_start = segments.first().map_or(0, |s| s.base_offset);
        let log = Arc::new(PartitionLog {
            topic,
            id,
            dir,
            config: config.clone(),
            segments: RwLock::new(segments),
            high_watermark: AtomicU64::new(next_offset),
            log_start: AtomicU64::new(log_start),
            notify,
            metrics,
            labels,
        });
        log.update_gauges();

        let file = OpenOptions::new()
            .write(true)
            .open(&active.log_path)
            .map_err(|e| BusError::io("opening segment for writing", &active.log_path, e))?;
        let (sender, receiver) = mpsc::channel(config.write_queue_depth);
        let writer = Writer {
            len: active.len(),
            last_indexed: active.state().index.last().map(|e| e.position),
            next_offset,
            active,
            file,
            log: log.clone(),
            buffer: Vec::new(),
            failed: None,
        };
        let thread = std::thread::Builder::new()
            .name(format!("bus-{}-{}", log.topic, id))
            .spawn(move || writer.run(receiver))
            .map_err(|e| BusError::io("starting writer thread for", &log.dir, e))?;
        Ok(Self {
            log,
            sender: Mutex::new(Some(sender)),
            writer: Mutex::new(Some(thread)),
        })
    }

    /// Appends each of `batches` as one record batch, in order, and returns the first
    /// offset of each once all are durable. The batches are queued before any answer is
    /// awaited, so the writer can make them durable with one fsync.
    pub async fn append(&self, batches: Vec<Vec<(i64, ProduceRecord)>>) -> Result<Vec<u64>> {
        let sender = self
            .sender
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .ok_or(BusError::Closed)?;
        let mut answers = Vec::with_capacity(batches.len());
        let aborted = Arc::new(AtomicBool::new(false));
        for records in batches {
            let encoded_len = batch_len(records.iter().map(|(_, r)| r));
            let (reply, answer) = oneshot::channel();
            sender
                .send(AppendRequest {
                    records,
                    encoded_len,
                    reply,
                    aborted: aborted.clone(),
                })
                .await
                .map_err(|_| BusError::Closed)?;
            answers.push(answer);
        }
        let mut bases = Vec::with_capacity(answers.len());
        for answer in answers {
            bases.push(answer.await.map_err(|_| BusError::Closed)??);
        }
        Ok(bases)
    }

    /// Stops accepting appends, lets the writer finish what it accepted, and waits for it.
    pub fn close(&self) {
        drop(self.sender.lock().unwrap_or_else(|e| e.into_inner()).take());
        if let Some(thread) = self.writer.lock().unwrap_or_else(|e| e.into_inner()).take()
            && thread.join().is_err()
        {
            tracing::error!(topic = %self.log.topic, partition = self.log.id, "bus writer thread panicked");
        }
    }
}

impl Drop for Partition {
    fn drop(&mut self) {
        self.close();
    }
}

/// Opens every segment of a partition directory, repairing the newest one.
fn recover_segments(
    dir: &Path,
    topic: &str,
    config: &EmbeddedBusConfig,
    metrics: &BusMetrics,
) -> Result<Vec<Arc<Segment>>> {
    let mut bases = Vec::new();
    let entries = fs::read_dir(dir).map_err(|e| BusError::io("listing partition", dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| BusError::io("listing partition", dir, e))?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if let Some(base) = parse_log_file_name(&name) {
            bases.push(base);
        } else if name.ends_with(".tmp") {
            // A half-written index from a crash; it is rebuilt on demand.
            let _ = fs::remove_file(entry.path());
        }
    }
    bases.sort_unstable();
    if bases.is_empty() {
        return Ok(vec![Arc::new(Segment::create(dir, 0)?)]);
    }
    // A crash can only tear the bytes of the last group commit.
    let tail_window = config.group_commit_max_bytes + config.max_batch_bytes;
    let mut segments: Vec<Arc<Segment>> = Vec::with_capacity(bases.len() + 1);
    let last = bases.len() - 1;
    for (i, base) in bases.into_iter().enumerate() {
        let path = dir.join(super::segment::log_file_name(base));
        let (segment, recovery) = Segment::recover(
            path,
            base,
            i < last,
            tail_window,
            config.index_interval_bytes,
        )?;
        if let Some(previous) = segments.last() {
            let expected = previous.next_offset();
            if base < expected {
                return Err(BusError::Corrupt {
                    path: segment.log_path.clone(),
                    position: 0,
                    reason: format!(
                        "segment starts at offset {base} but the previous one ends at {expected}; \
                         move the later segment file aside to start"
                    ),
                });
            }
            if base > expected {
                tracing::warn!(
                    topic, path = %segment.log_path.display(), missing_from = expected, missing_to = base,
                    "offsets missing between segments (lost to earlier damage); readers skip the gap"
                );
            }
        }
        let damaged = recovery.damaged;
        if recovery.truncated_bytes > 0 {
            let reason = recovery.reason.as_deref().unwrap_or("unknown");
            if damaged {
                let saved = recovery
                    .saved_to
                    .as_ref()
                    .map(|p| p.display().to_string())
                    .unwrap_or_default();
                tracing::error!(topic, path = %segment.log_path.display(), bytes = recovery.truncated_bytes, reason, saved_to = saved, "acknowledged records lost to damage on disk: segment cut back to its last valid batch");
            } else {
                tracing::warn!(topic, path = %segment.log_path.display(), bytes = recovery.truncated_bytes, reason, "torn tail cut back to the last whole batch (writes never acknowledged)");
            }
            metrics
                .recovery_truncated_bytes
                .get_or_create(&TopicLabels::new(topic))
                .inc_by(recovery.truncated_bytes);
        }
        let lost_bytes = recovery.truncated_bytes;
        segments.push(Arc::new(segment));
        if damaged && i == last {
            // Offsets of the lost records may already be known to consumers: never hand them
            // out again. Continue in a new segment past any offset the lost bytes could have
            // held (each record takes at least RECORD_OVERHEAD bytes).
            let sealed = segments.last().cloned().ok_or_else(|| BusError::Corrupt {
                path: dir.to_path_buf(),
                position: 0,
                reason: "no segment to continue after damage".to_owned(),
            })?;
            sealed.write_index_file()?;
            let resume_at = sealed.next_offset() + lost_bytes.div_ceil(RECORD_OVERHEAD as u64);
            tracing::warn!(
                topic,
                resume_at,
                "writing resumes in a new segment past the damaged offsets"
            );
            segments.push(Arc::new(Segment::create(dir, resume_at)?));
        }
    }
    Ok(segments)
}

impl PartitionLog {
    pub fn watermarks(&self) -> Watermarks {
        Watermarks {
            log_start: self.log_start.load(Ordering::Acquire),
            high_watermark: self.high_watermark.load(Ordering::Acquire),
        }
    }

    /// Reads durable records from `from` on, up to about `max_bytes` (at least one batch).
    pub fn read(&self, from: u64, max_bytes: usize) -> Result<Vec<StoredRecord>> {
        let high_watermark = self.high_watermark.load(Ordering::Acquire);
        let snapshot: Vec<Arc<Segment>> = self
            .segments
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let log_start = snapshot.first().map_or(0, |s| s.base_offset);
        if from < log_start {
            return Err(BusError::OffsetOutOfRange {
                topic: self.topic.to_string(),
                partition: self.id,
                requested: from,
                log_start,
            });
        }
        let mut out = Vec::new();
        if from >= high_watermark {
            return Ok(out);
        }
        let first = snapshot
            .partition_point(|s| s.base_offset <= from)
            .saturating_sub(1);
        let mut budget = max_bytes.max(1);
        for segment in &snapshot[first..] {
            let progress = segment.read(from, high_watermark, budget, &mut out)?;
            budget = budget.saturating_sub(progress.bytes);
            if !progress.exhausted || (budget == 0 && !out.is_empty()) {
                break;
            }
        }
        Ok(out)
    }

    /// Drops the oldest sealed segments while the partition is over its size limit or they
    /// are older than the age limit. The segment being written is never dropped.
    pub fn enforce_retention(&self, now_ms: i64) -> usize {
        let retention_bytes = self.config.retention_bytes;
        // A limit too large to subtract (say u64::MAX for "forever") is no limit.
        let cutoff_ms = self
            .config
            .retention_seconds
            .and_then(|seconds| i64::try_from(seconds).ok()?.checked_mul(1000))
            .and_then(|age_ms| now_ms.checked_sub(age_ms));
        let removed: Vec<Arc<Segment>> = {
            let mut segments = self.segments.write().unwrap_or_else(|e| e.into_inner());
            let mut total: u64 = segments.iter().map(|s| s.len()).sum();
            let mut count = 0;
            while count + 1 < segments.len() {
                let oldest = &segments[count];
                let too_big = retention_bytes.is_some_and(|limit| total > limit);
                let too_old = cutoff_ms.is_some_and(|cutoff| oldest.max_timestamp_ms() < cutoff);
                if !(too_big || too_old) {
                    break;
                }
                total -= oldest.len();
                count += 1;
            }
            let removed: Vec<_> = segments.drain(..count).collect();
            if let Some(first) = segments.first() {
                self.log_start.store(first.base_offset, Ordering::Release);
            }
            removed
        };
        for segment in &removed {
            // The segment is already out of the log; a file left behind is only disk space
            // (the next start finds it again and retention retries), so one failure must not stop the rest.
            if let Err(error) = segment.delete_files() {
                tracing::error!(topic = %self.topic, partition = self.id, %error, "cannot delete a segment removed by retention");
            }
            tracing::debug!(topic = %self.topic, partition = self.id, base_offset = segment.base_offset, "retention removed segment");
        }
        if !removed.is_empty() {
            self.metrics
                .retention_deleted_segments
                .get_or_create(&TopicLabels::new(&self.topic))
                .inc_by(removed.len() as u64);
            self.update_gauges();
        }
        removed.len()
    }

    /// The on-disk size of the partition's segments.
    pub fn size_bytes(&self) -> u64 {
        self.segments
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|s| s.len())
            .sum()
    }

    /// Number of segment files (for tests and metrics).
    pub fn segment_count(&self) -> usize {
        self.segments
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .len()
    }

    fn update_gauges(&self) {
        let segments = self.segments.read().unwrap_or_else(|e| e.into_inner());
        let bytes: u64 = segments.iter().map(|s| s.len()).sum();
        self.metrics
            .log_bytes
            .get_or_create(&self.labels)
            .set(bytes as i64);
        self.metrics
            .segments
            .get_or_create(&self.labels)
            .set(segments.len() as i64);
        let watermarks = self.watermarks();
        self.metrics
            .high_watermark
            .get_or_create(&self.labels)
            .set(watermarks.high_watermark as i64);
        self.metrics
            .log_start
            .get_or_create(&self.labels)
            .set(watermarks.log_start as i64);
    }
}

/// A request accepted into the current group commit, not yet durable.
struct Pending {
    reply: oneshot::Sender<Result<u64>>,
    aborted: Arc<AtomicBool>,
    base_offset: u64,
    next_offset: u64,
    position: u64,
    max_timestamp_ms: i64,
}

/// The writer thread's state: the only code that writes to the partition's files.
struct Writer {
    log: Arc<PartitionLog>,
    active: Arc<Segment>,
    file: File,
    /// Durable bytes of the active segment.
    len: u64,
    /// Offset the next record gets.
    next_offset: u64,
    /// Position of the newest index entry in the active segment.
    last_indexed: Option<u64>,
    buffer: Vec<u8>,
    /// Set after an I/O failure that left the segment in an unknown state.
    failed: Option<String>,
}

/// Most requests one fsync covers, so one slow group commit cannot hold a huge backlog.
const MAX_REQUESTS_PER_COMMIT: usize = 4096;

impl Writer {
    fn run(mut self, mut requests: mpsc::Receiver<AppendRequest>) {
        while let Some(first) = requests.blocking_recv() {
            let mut bytes = first.encoded_len;
            let mut group = vec![first];
            while bytes < self.log.config.group_commit_max_bytes
                && group.len() < MAX_REQUESTS_PER_COMMIT
            {
                match requests.try_recv() {
                    Ok(request) => {
                        bytes += request.encoded_len;
                        group.push(request);
                    }
                    Err(_) => break,
                }
            }
            self.commit(group);
        }
    }

    fn partition_failed(&self, reason: &str) -> BusError {
        BusError::PartitionFailed {
            topic: self.log.topic.to_string(),
            partition: self.log.id,
            reason: reason.to_owned(),
        }
    }

    /// Answers requests that will not be written, and stops the rest of their produce calls.
    fn fail_all(&self, requests: impl IntoIterator<Item = AppendRequest>, reason: &str) {
        for request in requests {
            request.aborted.store(true, Ordering::Release);
            let _ = request.reply.send(Err(self.partition_failed(reason)));
        }
    }

    /// Writes a group of requests, fsyncs, and answers them.
    fn commit(&mut self, group: Vec<AppendRequest>) {
        if let Some(reason) = self.failed.clone() {
            self.fail_all(group, &reason);
            return;
        }
        let segment_bytes = self.log.config.segment_bytes;
        let mut pending: Vec<Pending> = Vec::with_capacity(group.len());
        let mut next_offset = self.next_offset;
        self.buffer.clear();
        let mut group = group.into_iter();
        while let Some(request) = group.next() {
            if request.aborted.load(Ordering::Acquire) {
                let _ = request.reply.send(Err(self.partition_failed(
                    "an earlier batch of the same produce request could not be written",
                )));
                continue;
            }
            let unwritten = self.len + self.buffer.len() as u64;
            if unwritten + request.encoded_len > segment_bytes && unwritten > 0 {
                if let Err(reason) = self.flush(&mut pending) {
                    // Whatever follows in this group would land after a failed write.
                    self.fail_all(std::iter::once(request).chain(group), &reason);
                    return;
                }
                if let Err(error) = self.roll() {
                    let reason = format!("cannot start a new segment: {error}");
                    tracing::error!(topic = %self.log.topic, partition = self.log.id, %error, "bus partition stops accepting writes");
                    self.failed = Some(reason.clone());
                    self.fail_all(std::iter::once(request).chain(group), &reason);
                    return;
                }
                next_offset = self.next_offset;
            }
            let position = self.len + self.buffer.len() as u64;
            let stamped: Vec<(i64, &ProduceRecord)> = request
                .records
                .iter()
                .map(|(ts, record)| (*ts, record))
                .collect();
            encode_batch(next_offset, &stamped, &mut self.buffer);
            let count = request.records.len() as u64;
            pending.push(Pending {
                reply: request.reply,
                aborted: request.aborted,
                base_offset: next_offset,
                next_offset: next_offset + count,
                position,
                max_timestamp_ms: stamped.iter().map(|(ts, _)| *ts).max().unwrap_or(i64::MIN),
            });
            next_offset += count;
        }
        // A failure has been answered inside; nothing else is left in this group.
        let _ = self.flush(&mut pending);
    }

    /// Makes the buffered batches durable and visible, then answers their requests. On
    /// failure every pending request is answered with the error, which is also returned.
    fn flush(&mut self, pending: &mut Vec<Pending>) -> Result<(), String> {
        if pending.is_empty() {
            return Ok(());
        }
        let started = Instant::now();
        let written = self
            .file
            .write_all_at(&self.buffer, self.len)
            .and_then(|()| self.file.sync_data());
        if let Err(error) = written {
            // Undo the partial write, durably, so the next batch does not follow garbage; if
            // even that fails the segment's tail is unknown and the partition must stop.
            let reason = format!("writing {}: {error}", self.active.log_path.display());
            let undone = self
                .file
                .set_len(self.len)
                .and_then(|()| self.file.sync_all());
            if let Err(undo_error) = undone {
                self.failed = Some(format!("{reason}; then undoing it: {undo_error}"));
            }
            tracing::error!(topic = %self.log.topic, partition = self.log.id, %error, "bus append failed");
            self.buffer.clear();
            for request in pending.drain(..) {
                request.aborted.store(true, Ordering::Release);
                let _ = request.reply.send(Err(BusError::Io {
                    action: "appending to",
                    path: self.active.log_path.clone(),
                    source: std::io::Error::new(error.kind(), error.to_string()),
                }));
            }
            return Err(self.failed.clone().unwrap_or(reason));
        }
        let metrics = &self.log.metrics;
        metrics
            .fsync_seconds
            .observe(started.elapsed().as_secs_f64());
        metrics.requests_per_fsync.observe(pending.len() as f64);

        let interval = self.log.config.index_interval_bytes;
        let mut entries = Vec::new();
        for request in pending.iter() {
            if self
                .last_indexed
                .is_none_or(|at| request.position - at >= interval)
            {
                entries.push(IndexEntry {
                    offset: request.base_offset,
                    position: request.position,
                });
                self.last_indexed = Some(request.position);
            }
        }
        let records: u64 = pending.iter().map(|p| p.next_offset - p.base_offset).sum();
        let max_timestamp = pending
            .iter()
            .map(|p| p.max_timestamp_ms)
            .max()
            .unwrap_or(i64::MIN);
        let next_offset = pending.last().map_or(self.next_offset, |p| p.next_offset);
        self.len += self.buffer.len() as u64;
        self.next_offset = next_offset;
        self.active
            .publish(self.len, next_offset, max_timestamp, &entries);
        self.log
            .high_watermark
            .store(next_offset, Ordering::Release);
        let topic = TopicLabels::new(&self.log.topic);
        metrics
            .produced_records
            .get_or_create(&topic)
            .inc_by(records);
        metrics
            .produced_bytes
            .get_or_create(&topic)
            .inc_by(self.buffer.len() as u64);
        self.log.update_gauges();
        self.buffer.clear();
        for request in pending.drain(..) {
            let _ = request.reply.send(Ok(request.base_offset));
        }
        self.log.notify.notify_waiters();
        Ok(())
    }

    /// Seals the active segment and starts a new one at the next offset.
    fn roll(&mut self) -> Result<()> {
        self.active.write_index_file()?;
        let segment = Arc::new(Segment::create(&self.log.dir, self.next_offset)?);
        let file = OpenOptions::new()
            .write(true)
            .open(&segment.log_path)
            .map_err(|e| BusError::io("opening segment for writing", &segment.log_path, e))?;
        self.log
            .segments
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .push(segment.clone());
        self.active = segment;
        self.file = file;
        self.len = 0;
        self.last_indexed = None;
        self.log.update_gauges();
        Ok(())
    }
}
