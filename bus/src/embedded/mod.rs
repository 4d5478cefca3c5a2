//! The embedded bus: a durable, segmented, append-only log per partition on local disk.
//!
//! Layout under the bus directory:
//!
//! ```text
//! topics/<topic>/topic.json                    partition count
//! topics/<topic>/<partition>/<offset>.log      record batches (see `format`)
//! topics/<topic>/<partition>/<offset>.idx      sparse index of a sealed segment
//! groups/<group>.json                          committed offsets of a consumer group
//! ```
//!
//! Guarantees: `produce` returns after the records are fsync'd; after a crash at any
//! instant, every acknowledged record is read back in order and a torn tail is cut away;
//! a damaged batch is reported as an error and never returned as records. Memory is bounded
//! by the write queues (`write_queue_depth` requests of at most `max_batch_bytes` per
//! partition), one sparse index entry per `index_interval_bytes` of log, and the
//! `max_bytes` of each read.

mod format;
mod group;
mod metrics;
mod partition;
mod segment;

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use prometheus_client::registry::Registry;
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

use self::group::Group;
use self::metrics::{BusMetrics, GroupPartitionLabels};
use self::partition::{Partition, PartitionLog, batch_len};
use self::segment::sync_dir;
use crate::{
    Bus, BusError, ConsumedRecord, Consumer, ProduceRecord, RecordPosition, Result, TopicPartition,
    Watermarks, partition_for_key, validate_name,
};

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;
const GIB: u64 = 1024 * MIB;

/// Tuning of the embedded log. Every field has a default that suits a laptop and a small
/// server alike; sizes are per partition.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EmbeddedBusConfig {
    /// A segment is sealed and a new one started when an append would grow it past this.
    /// Retention removes whole segments, so this is also its granularity.
    pub segment_bytes: u64,
    /// Oldest segments are removed while a partition holds more than this. `null`: no limit.
    pub retention_bytes: Option<u64>,
    /// Segments whose newest record is older than this are removed. `null`: no limit.
    pub retention_seconds: Option<u64>,
    /// Largest record batch (one produce request to one partition is split to fit).
    pub max_batch_bytes: u64,
    /// One group commit (one fsync) stops taking waiting requests at this many bytes.
    pub group_commit_max_bytes: u64,
    /// Produce requests that may wait per partition before `produce` itself waits.
    pub write_queue_depth: usize,
    /// Distance between sparse index entries: smaller reads less to find an offset, larger
    /// keeps less in memory.
    pub index_interval_bytes: u64,
    /// How often retention runs.
    pub retention_check_interval_seconds: u64,
}

impl Default for EmbeddedBusConfig {
    fn default() -> Self {
        Self {
            segment_bytes: 128 * MIB,
            retention_bytes: Some(GIB),
            retention_seconds: Some(24 * 3600),
            max_batch_bytes: 16 * MIB,
            group_commit_max_bytes: 8 * MIB,
            write_queue_depth: 256,
            index_interval_bytes: 64 * KIB,
            retention_check_interval_seconds: 60,
        }
    }
}

impl EmbeddedBusConfig {
    /// Checks the relations between fields; the message names the field and the fix.
    pub fn validate(&self) -> Result<()> {
        let fail = |message: String| Err(BusError::Config(message));
        if self.segment_bytes < 4 * KIB {
            return fail(format!(
                "segment_bytes is {}; it must be at least 4096",
                self.segment_bytes
            ));
        }
        if self.max_batch_bytes < KIB || self.max_batch_bytes > u64::from(u32::MAX) {
            return fail(format!(
                "max_batch_bytes is {}; it must be between 1024 and {}",
                self.max_batch_bytes,
                u32::MAX
            ));
        }
        if self.max_batch_bytes > self.segment_bytes {
            return fail(format!(
                "max_batch_bytes ({}) must not exceed segment_bytes ({})",
                self.max_batch_bytes, self.segment_bytes
            ));
        }
        if self.write_queue_depth == 0 {
            return fail("write_queue_depth must be at least 1".to_owned());
        }
        if self.index_interval_bytes == 0 {
            return fail("index_interval_bytes must be at least 1".to_owned());
        }
        if self.retention_check_interval_seconds == 0 {
            return fail("retention_check_interval_seconds must be at least 1".to_owned());
        }
        if self.retention_bytes.is_some_and(|b| b < self.segment_bytes) {
            return fail(format!(
                "retention_bytes ({}) must be at least segment_bytes ({}): retention removes whole segments",
                self.retention_bytes.unwrap_or_default(),
                self.segment_bytes
            ));
        }
        Ok(())
    }
}

/// The embedded bus engine. Cheap to share as `Arc<dyn Bus>`.
#[derive(Debug)]
pub struct EmbeddedBus {
    inner: Arc<Inner>,
    retention: Mutex<Option<(std::sync::mpsc::Sender<()>, JoinHandle<()>)>>,
}

#[derive(Debug)]
struct Inner {
    /// Held (and locked) for the bus's lifetime: two processes appending to one log would
    /// overwrite each other's acknowledged records.
    _lock: fs::File,
    root: PathBuf,
    config: Arc<EmbeddedBusConfig>,
    topics: RwLock<HashMap<String, Arc<Topic>>>,
    /// Serialises topic creation (which does I/O) without blocking readers of `topics`.
    topic_creation: Mutex<()>,
    groups: Mutex<HashMap<String, Arc<Group>>>,
    /// Woken after every durable append, so idle consumers need not spin.
    notify: Arc<Notify>,
    metrics: BusMetrics,
    closed: AtomicBool,
    round_robin: AtomicU64,
}

#[derive(Debug)]
struct Topic {
    partitions: Vec<Partition>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct TopicMeta {
    partitions: u32,
}

/// Takes the exclusive lock on `<dir>/LOCK`, or says who is in the way.
fn lock_directory(dir: &Path) -> Result<fs::File> {
    let path = dir.join("LOCK");
    let file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| BusError::io("opening lock file", &path, e))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(fs::TryLockError::WouldBlock) => Err(BusError::Locked { path }),
        Err(fs::TryLockError::Error(e)) => Err(BusError::io("locking", &path, e)),
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

impl EmbeddedBus {
    /// Opens the bus in `dir` (creating it if needed), recovering every partition found
    /// there: torn tails are cut, indexes loaded, writers started. Blocking; call it from a
    /// blocking context at start-up.
    pub fn open(dir: impl AsRef<Path>, config: EmbeddedBusConfig) -> Result<Self> {
        config.validate()?;
        let root = dir.as_ref().to_path_buf();
        let existed = root.is_dir();
        for sub in ["topics", "groups"] {
            let path = root.join(sub);
            fs::create_dir_all(&path)
                .map_err(|e| BusError::io("creating bus directory", &path, e))?;
        }
        sync_dir(&root)?;
        if !existed && let Some(parent) = root.parent().filter(|p| !p.as_os_str().is_empty()) {
            sync_dir(parent)?;
        }
        let lock = lock_directory(&root)?;
        let inner = Arc::new(Inner {
            _lock: lock,
            root,
            config: Arc::new(config),
            topics: RwLock::new(HashMap::new()),
            topic_creation: Mutex::new(()),
            groups: Mutex::new(HashMap::new()),
            notify: Arc::new(Notify::new()),
            metrics: BusMetrics::default(),
            closed: AtomicBool::new(false),
            round_robin: AtomicU64::new(0),
        });
        inner.open_existing_topics()?;
        let retention = start_retention_thread(&inner)?;
        Ok(Self {
            inner,
            retention: Mutex::new(Some(retention)),
        })
    }

    /// Adds the bus's metrics to `registry`.
    pub fn register_metrics(&self, registry: &mut Registry) {
        self.inner.metrics.register(registry);
    }

    /// Applies retention to every partition as if the time were `now_ms`; returns how many
    /// segments were removed. Runs on its own every `retention_check_interval_seconds`.
    pub fn enforce_retention(&self, now_ms: i64) -> usize {
        self.inner.enforce_retention(now_ms)
    }

    /// Bytes on disk held by one partition's segments.
    pub fn partition_size_bytes(&self, topic: &str, partition: u32) -> Result<u64> {
        Ok(self.inner.partition(topic, partition)?.size_bytes())
    }

    /// Segment files of one partition.
    pub fn segment_count(&self, topic: &str, partition: u32) -> Result<usize> {
        Ok(self.inner.partition(topic, partition)?.segment_count())
    }

    /// The directory of one partition (tests damage files in it on purpose).
    pub fn partition_dir(&self, topic: &str, partition: u32) -> PathBuf {
        self.inner.partition_dir(topic, partition)
    }

    fn stop_retention(&self) {
        let taken = self
            .retention
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some((stop, thread)) = taken {
            drop(stop);
            let _ = thread.join();
        }
    }
}

impl Drop for EmbeddedBus {
    fn drop(&mut self) {
        self.stop_retention();
    }
}

fn start_retention_thread(
    inner: &Arc<Inner>,
) -> Result<(std::sync::mpsc::Sender<()>, JoinHandle<()>)> {
    let (stop, stopped) = std::sync::mpsc::channel::<()>();
    let interval = Duration::from_secs(inner.config.retention_check_interval_seconds);
    let weak = Arc::downgrade(inner);
    let thread = std::thread::Builder::new()
        .name("bus-retention".to_owned())
        .spawn(move || {
            // Dropping the sender (close or drop of the bus) ends the wait at once.
            while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
                stopped.recv_timeout(interval)
            {
                let Some(inner) = weak.upgrade() else { return };
                inner.enforce_retention(now_ms());
            }
        })
        .map_err(|e| BusError::io("starting retention thread for", &inner.root, e))?;
    Ok((stop, thread))
}

impl Inner {
    fn topic_dir(&self, topic: &str) -> PathBuf {
        self.root.join("topics").join(topic)
    }

    fn partition_dir(&self, topic: &str, partition: u32) -> PathBuf {
        self.topic_dir(topic).join(partition.to_string())
    }

    fn open_existing_topics(&self) -> Result<()> {
        let dir = self.root.join("topics");
        let entries = fs::read_dir(&dir).map_err(|e| BusError::io("listing topics", &dir, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| BusError::io("listing topics", &dir, e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if validate_name("topic", &name).is_err() {
                tracing::warn!(path = %entry.path().display(), "ignoring a directory that is not a topic");
                continue;
            }
            let meta_path = entry.path().join("topic.json");
            let meta: TopicMeta = match fs::read(&meta_path) {
                Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| BusError::Corrupt {
                    path: meta_path.clone(),
                    position: 0,
                    reason: format!("unreadable topic metadata: {e}"),
                })?,
                // Created but never finished (crash during creation): nothing was acknowledged.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(BusError::io("reading topic metadata", &meta_path, e)),
            };
            let topic = self.open_topic(&name, meta.partitions)?;
            self.topics
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .insert(name, Arc::new(topic));
        }
        Ok(())
    }

    fn open_topic(&self, name: &str, partitions: u32) -> Result<Topic> {
        let topic: Arc<str> = Arc::from(name);
        let partitions = (0..partitions)
            .map(|p| {
                Partition::open(
                    self.partition_dir(name, p),
                    topic.clone(),
                    p,
                    self.config.clone(),
                    self.notify.clone(),
                    self.metrics.clone(),
                )
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Topic { partitions })
    }

    fn topic(&self, name: &str) -> Result<Arc<Topic>> {
        self.topics
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .cloned()
            .ok_or_else(|| BusError::UnknownTopic {
                topic: name.to_owned(),
            })
    }

    fn partition(&self, topic: &str, partition: u32) -> Result<Arc<PartitionLog>> {
        let found = self.topic(topic)?;
        found
            .partitions
            .get(partition as usize)
            .map(|p| p.log.clone())
            .ok_or(BusError::UnknownPartition {
                topic: topic.to_owned(),
                partition,
                partitions: found.partitions.len() as u32,
            })
    }

    fn ensure_topic(&self, name: &str, partitions: u32) -> Result<()> {
        validate_name("topic", name)?;
        if partitions == 0 {
            return Err(BusError::Config(format!(
                "topic {name:?} needs at least one partition"
            )));
        }
        let _creating = self
            .topic_creation
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Ok(existing) = self.topic(name) {
            let existing = existing.partitions.len() as u32;
            if existing != partitions {
                return Err(BusError::PartitionCountMismatch {
                    topic: name.to_owned(),
                    existing,
                    requested: partitions,
                });
            }
            return Ok(());
        }
        let dir = self.topic_dir(name);
        fs::create_dir_all(&dir).map_err(|e| BusError::io("creating topic", &dir, e))?;
        let topic = self.open_topic(name, partitions)?;
        // The metadata file is written last: a topic without it is an unfinished creation.
        let meta_path = dir.join("topic.json");
        let temp = dir.join("topic.json.tmp");
        let bytes = serde_json::to_vec(&TopicMeta { partitions })
            .map_err(|e| BusError::Config(e.to_string()))?;
        fs::write(&temp, bytes)
            .and_then(|()| fs::File::open(&temp)?.sync_all())
            .and_then(|()| fs::rename(&temp, &meta_path))
            .map_err(|e| BusError::io("writing topic metadata", &meta_path, e))?;
        sync_dir(&dir)?;
        sync_dir(&self.root.join("topics"))?;
        self.topics
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(name.to_owned(), Arc::new(topic));
        tracing::info!(topic = name, partitions, "created topic");
        Ok(())
    }

    fn group(&self, name: &str) -> Result<Arc<Group>> {
        validate_name("consumer group", name)?;
        let mut groups = self.groups.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(group) = groups.get(name) {
            return Ok(group.clone());
        }
        let group = Arc::new(Group::load(&self.root.join("groups"), name)?);
        groups.insert(name.to_owned(), group.clone());
        Ok(group)
    }

    /// The open topics, without holding the map's lock while working on them.
    fn all_topics(&self) -> Vec<Arc<Topic>> {
        self.topics
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect()
    }

    fn enforce_retention(&self, now_ms: i64) -> usize {
        let mut removed = 0;
        for topic in self.all_topics() {
            for partition in &topic.partitions {
                removed += partition.log.enforce_retention(now_ms);
            }
        }
        removed
    }

    fn check_open(&self) -> Result<()> {
        if self.closed.load(Ordering::Acquire) {
            return Err(BusError::Closed);
        }
        Ok(())
    }
}

fn to_consumed(topic: &Arc<str>, partition: u32, record: format::StoredRecord) -> ConsumedRecord {
    ConsumedRecord {
        topic: topic.clone(),
        partition,
        offset: record.offset,
        timestamp_ms: record.timestamp_ms,
        key: record.key,
        value: record.value,
    }
}

/// Runs blocking file work off the async reactor.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(work).await.map_err(|e| {
        BusError::io(
            "running blocking bus task",
            PathBuf::new(),
            std::io::Error::other(e),
        )
    })?
}

#[async_trait]
impl Bus for EmbeddedBus {
    async fn ensure_topic(&self, topic: &str, partitions: u32) -> Result<()> {
        self.inner.check_open()?;
        let inner = self.inner.clone();
        let topic = topic.to_owned();
        blocking(move || inner.ensure_topic(&topic, partitions)).await
    }

    async fn partition_count(&self, topic: &str) -> Result<u32> {
        Ok(self.inner.topic(topic)?.partitions.len() as u32)
    }

    async fn produce(
        &self,
        topic: &str,
        records: Vec<ProduceRecord>,
    ) -> Result<Vec<RecordPosition>> {
        self.inner.check_open()?;
        let found = self.inner.topic(topic)?;
        let partitions = found.partitions.len() as u32;
        let max_batch = self.inner.config.max_batch_bytes;
        let now = now_ms();
        let round_robin = self.inner.round_robin.fetch_add(1, Ordering::Relaxed);

        // Route each record, remembering its input index to answer in input order.
        let mut routed: Vec<Vec<(usize, i64, ProduceRecord)>> =
            vec![Vec::new(); partitions as usize];
        for (index, record) in records.into_iter().enumerate() {
            let size = batch_len([&record]);
            if size > max_batch {
                return Err(BusError::RecordTooLarge {
                    size,
                    limit: max_batch,
                });
            }
            let partition = match (record.partition, &record.key) {
                (Some(p), _) if p < partitions => p,
                (Some(p), _) => {
                    return Err(BusError::UnknownPartition {
                        topic: topic.to_owned(),
                        partition: p,
                        partitions,
                    });
                }
                (None, Some(key)) => partition_for_key(key, partitions),
                (None, None) => (round_robin % u64::from(partitions)) as u32,
            };
            let timestamp = record.timestamp_ms.unwrap_or(now);
            routed[partition as usize].push((index, timestamp, record));
        }

        // Split each partition's share into batches that fit. Each partition's batches are
        // queued in order by one task; partitions are written in parallel.
        let mut appends = Vec::new();
        let mut total = 0;
        for (partition, share) in routed.into_iter().enumerate() {
            if share.is_empty() {
                continue;
            }
            total += share.len();
            let mut batches: Vec<Vec<(i64, ProduceRecord)>> = Vec::new();
            let mut indexes = Vec::new();
            let mut batch: Vec<(i64, ProduceRecord)> = Vec::new();
            let mut size = format::BATCH_HEADER_LEN as u64;
            for (index, timestamp, record) in share {
                let record_size = format::record_len(&record);
                if !batch.is_empty() && size + record_size > max_batch {
                    batches.push(std::mem::take(&mut batch));
                    size = format::BATCH_HEADER_LEN as u64;
                }
                size += record_size;
                indexes.push(index);
                batch.push((timestamp, record));
            }
            batches.push(batch);
            let lengths: Vec<usize> = batches.iter().map(Vec::len).collect();
            let found = found.clone();
            let handle =
                tokio::spawn(async move { found.partitions[partition].append(batches).await });
            appends.push((partition as u32, indexes, lengths, handle));
        }
        let mut positions = vec![
            RecordPosition {
                partition: 0,
                offset: 0
            };
            total
        ];
        let mut first_error = None;
        for (partition, indexes, lengths, handle) in appends {
            let result = handle
                .await
                .map_err(|e| {
                    BusError::io("awaiting append", PathBuf::new(), std::io::Error::other(e))
                })
                .and_then(|r| r);
            match result {
                Ok(bases) => {
                    let offsets = bases
                        .iter()
                        .zip(&lengths)
                        .flat_map(|(base, len)| (0..*len as u64).map(move |i| base + i));
                    for (index, offset) in indexes.iter().zip(offsets) {
                        positions[*index] = RecordPosition { partition, offset };
                    }
                }
                Err(error) => {
                    first_error.get_or_insert(error);
                }
            }
        }
        match first_error {
            Some(error) => Err(error),
            None => Ok(positions),
        }
    }

    async fn fetch(
        &self,
        topic: &str,
        partition: u32,
        offset: u64,
        max_bytes: usize,
    ) -> Result<Vec<ConsumedRecord>> {
        let log = self.inner.partition(topic, partition)?;
        let topic: Arc<str> = log.topic.clone();
        let records = blocking(move || log.read(offset, max_bytes)).await?;
        Ok(records
            .into_iter()
            .map(|r| to_consumed(&topic, partition, r))
            .collect())
    }

    async fn watermarks(&self, topic: &str, partition: u32) -> Result<Watermarks> {
        Ok(self.inner.partition(topic, partition)?.watermarks())
    }

    async fn subscribe(&self, group: &str, topics: &[&str]) -> Result<Box<dyn Consumer>> {
        self.inner.check_open()?;
        let mut partition_counts = HashMap::new();
        for topic in topics {
            let found = self.inner.topic(topic)?;
            partition_counts.insert(Arc::<str>::from(*topic), found.partitions.len() as u32);
        }
        let inner = self.inner.clone();
        let group_name = group.to_owned();
        let group = blocking(move || inner.group(&group_name)).await?;
        let member = group.join(partition_counts.keys().cloned().collect());
        Ok(Box::new(EmbeddedConsumer {
            inner: self.inner.clone(),
            group,
            member,
            partition_counts,
            generation: None,
            assignment: Vec::new(),
            positions: HashMap::new(),
            cursor: 0,
        }))
    }

    async fn committed_offset(
        &self,
        group: &str,
        topic: &str,
        partition: u32,
    ) -> Result<Option<u64>> {
        let inner = self.inner.clone();
        let group = group.to_owned();
        let found = blocking(move || inner.group(&group)).await?;
        Ok(found.committed(&TopicPartition::new(topic, partition)))
    }

    async fn close(&self) -> Result<()> {
        if self.inner.closed.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        self.stop_retention();
        let inner = self.inner.clone();
        blocking(move || {
            for topic in inner.all_topics() {
                for partition in &topic.partitions {
                    partition.close();
                }
            }
            inner.notify.notify_waiters();
            Ok(())
        })
        .await
    }
}

/// Largest amount one partition contributes to one poll.
const POLL_MAX_BYTES_PER_PARTITION: usize = 4 << 20;

/// A member of a consumer group of the embedded bus.
#[derive(Debug)]
pub struct EmbeddedConsumer {
    inner: Arc<Inner>,
    group: Arc<Group>,
    member: u64,
    partition_counts: HashMap<Arc<str>, u32>,
    generation: Option<u64>,
    assignment: Vec<(TopicPartition, Arc<PartitionLog>)>,
    positions: HashMap<TopicPartition, u64>,
    /// Where the next poll starts, so no partition starves the others.
    cursor: usize,
}

impl EmbeddedConsumer {
    /// Picks up a changed group membership: drops partitions given away, and starts new ones
    /// at the group's committed offset (or the log start).
    fn refresh_assignment(&mut self) -> Result<()> {
        if self.generation == Some(self.group.generation()) {
            return Ok(());
        }
        let (generation, assigned) = self.group.assignment(self.member, &self.partition_counts);
        let mut logs = Vec::with_capacity(assigned.len());
        for tp in assigned {
            let log = self.inner.partition(&tp.topic, tp.partition)?;
            if !self.positions.contains_key(&tp) {
                let start = self
                    .group
                    .committed(&tp)
                    .unwrap_or_else(|| log.watermarks().log_start);
                self.positions.insert(tp.clone(), start);
            }
            logs.push((tp, log));
        }
        self.positions
            .retain(|tp, _| logs.iter().any(|(assigned, _)| assigned == tp));
        tracing::debug!(group = %self.group.name, member = self.member, generation, partitions = logs.len(), "consumer assignment");
        self.assignment = logs;
        self.generation = Some(generation);
        Ok(())
    }

    /// Commits and seeks are only for partitions this member owns (as in Kafka, where a
    /// member that lost a partition in a rebalance may not commit it).
    fn check_assigned(&self, partition: &TopicPartition) -> Result<()> {
        if self
            .assignment
            .iter()
            .any(|(assigned, _)| assigned == partition)
        {
            return Ok(());
        }
        Err(BusError::NotAssigned {
            group: self.group.name.clone(),
            topic: partition.topic.to_string(),
            partition: partition.partition,
        })
    }

    async fn read_available(&mut self, max_records: usize) -> Result<Vec<ConsumedRecord>> {
        let mut out = Vec::new();
        let count = self.assignment.len();
        for step in 0..count {
            if out.len() >= max_records {
                break;
            }
            let (tp, log) = self.assignment[(self.cursor + step) % count].clone();
            let mut position = self.positions.get(&tp).copied().unwrap_or(0);
            let watermarks = log.watermarks();
            if position < watermarks.log_start {
                tracing::warn!(group = %self.group.name, partition = %tp, position, log_start = watermarks.log_start, "consumer position was removed by retention; continuing at the log start");
                self.inner
                    .metrics
                    .consumer_offset_resets
                    .get_or_create(&GroupPartitionLabels {
                        group: self.group.name.clone(),
                        topic: tp.topic.to_string(),
                        partition: tp.partition.to_string(),
                    })
                    .inc();
                position = watermarks.log_start;
                self.positions.insert(tp.clone(), position);
            }
            if position >= watermarks.high_watermark {
                continue;
            }
            let reader = log.clone();
            let read = blocking(move || reader.read(position, POLL_MAX_BYTES_PER_PARTITION)).await;
            let records = match read {
                // Retention ran between the check and the read: try again next poll.
                Err(BusError::OffsetOutOfRange { .. }) => continue,
                other => other?,
            };
            let room = max_records - out.len();
            for record in records.into_iter().take(room) {
                self.positions.insert(tp.clone(), record.offset + 1);
                out.push(to_consumed(&tp.topic, tp.partition, record));
            }
        }
        if count > 0 {
            self.cursor = (self.cursor + 1) % count;
        }
        Ok(out)
    }
}

impl Drop for EmbeddedConsumer {
    fn drop(&mut self) {
        self.group.leave(self.member);
    }
}

#[async_trait]
impl Consumer for EmbeddedConsumer {
    fn assignment(&self) -> Vec<TopicPartition> {
        let (_, assigned) = self.group.assignment(self.member, &self.partition_counts);
        assigned
    }

    async fn poll(&mut self, max_records: usize, timeout: Duration) -> Result<Vec<ConsumedRecord>> {
        let deadline = tokio::time::Instant::now() + timeout;
        let max_records = max_records.max(1);
        let notify = self.inner.notify.clone();
        loop {
            // Register for wake-ups before looking, so an append between the look and the
            // wait is not missed.
            let notified = notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            self.inner.check_open()?;
            self.refresh_assignment()?;
            let records = self.read_available(max_records).await?;
            if !records.is_empty() {
                return Ok(records);
            }
            tokio::select! {
                () = &mut notified => {}
                () = tokio::time::sleep_until(deadline) => return Ok(Vec::new()),
            }
        }
    }

    async fn commit(&mut self, offsets: &[(TopicPartition, u64)]) -> Result<()> {
        self.refresh_assignment()?;
        for (tp, _) in offsets {
            self.check_assigned(tp)?;
        }
        let group = self.group.clone();
        let to_commit = offsets.to_vec();
        blocking(move || group.commit(&to_commit)).await?;
        for (tp, offset) in offsets {
            self.inner
                .metrics
                .committed_offset
                .get_or_create(&GroupPartitionLabels {
                    group: self.group.name.clone(),
                    topic: tp.topic.to_string(),
                    partition: tp.partition.to_string(),
                })
                .set(*offset as i64);
        }
        Ok(())
    }

    fn seek(&mut self, partition: &TopicPartition, offset: u64) -> Result<()> {
        self.refresh_assignment()?;
        self.check_assigned(partition)?;
        self.positions.insert(partition.clone(), offset);
        Ok(())
    }
}
