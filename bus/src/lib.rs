//! Meerkat's event bus: the seam between the roles that accept telemetry and the roles that
//! act on it.
//!
//! The contract is Kafka's, reduced to what Meerkat needs: named topics split into
//! partitions, records appended with an offset, produce that returns only once the append is
//! durable, consumer groups whose committed offsets survive restarts, and replay from any
//! retained offset. Two engines implement it:
//!
//! - [`embedded::EmbeddedBus`], a segmented append-only log on local disk. In standalone
//!   mode it is the write-ahead log of the whole system: nothing else keeps a second one.
//! - [`kafka::KafkaBus`], on a Kafka cluster (or any broker speaking Kafka's protocol), for
//!   distributed mode.
//!
//! Records are opaque bytes here; what they mean (`model::Envelope`) is for the producer and
//! the consumer to agree on.

pub mod embedded;
mod error;
pub mod kafka;
mod partitioner;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

pub(crate) use error::validate_name;
pub use error::{BusError, Result};
pub use partitioner::{murmur2, partition_for_key};

/// The topics Meerkat's roles exchange telemetry on.
pub mod topics {
    /// Samples, histograms, exemplars and metadata (`model::Payload::Metrics`).
    pub const METRICS: &str = "metrics";
    /// Trace spans (`model::Payload::Spans`).
    pub const SPANS: &str = "spans";
    /// Log records (`model::Payload::Logs`).
    pub const LOGS: &str = "logs";
    /// Platform events (`model::Payload::Events`).
    pub const EVENTS: &str = "events";
    /// Every topic above, for setting them all up at start.
    pub const ALL: [&str; 4] = [METRICS, SPANS, LOGS, EVENTS];
}

/// A record to append.
#[derive(Clone, Debug, Default)]
pub struct ProduceRecord {
    /// Chooses the partition (same key, same partition, so per-key order holds) unless
    /// `partition` is given. Keyless records are spread round-robin.
    pub key: Option<Bytes>,
    pub value: Bytes,
    /// Unix milliseconds; the append time when `None`. Retention by age uses it.
    pub timestamp_ms: Option<i64>,
    /// An explicit partition, overriding the key.
    pub partition: Option<u32>,
}

impl ProduceRecord {
    pub fn new(value: impl Into<Bytes>) -> Self {
        Self {
            value: value.into(),
            ..Self::default()
        }
    }

    pub fn with_key(mut self, key: impl Into<Bytes>) -> Self {
        self.key = Some(key.into());
        self
    }

    pub fn with_partition(mut self, partition: u32) -> Self {
        self.partition = Some(partition);
        self
    }

    pub fn with_timestamp_ms(mut self, timestamp_ms: i64) -> Self {
        self.timestamp_ms = Some(timestamp_ms);
        self
    }
}

/// Where an appended record landed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RecordPosition {
    pub partition: u32,
    pub offset: u64,
}

/// A topic and one of its partitions.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TopicPartition {
    pub topic: Arc<str>,
    pub partition: u32,
}

impl TopicPartition {
    pub fn new(topic: &str, partition: u32) -> Self {
        Self {
            topic: Arc::from(topic),
            partition,
        }
    }
}

impl fmt::Display for TopicPartition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.topic, self.partition)
    }
}

/// A record read back from the bus.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConsumedRecord {
    pub topic: Arc<str>,
    pub partition: u32,
    pub offset: u64,
    pub timestamp_ms: i64,
    pub key: Option<Bytes>,
    pub value: Bytes,
}

impl ConsumedRecord {
    pub fn topic_partition(&self) -> TopicPartition {
        TopicPartition {
            topic: self.topic.clone(),
            partition: self.partition,
        }
    }
}

/// The readable range of a partition: `[log_start, high_watermark)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Watermarks {
    /// The oldest offset still retained.
    pub log_start: u64,
    /// One past the last durable offset: the next offset a produce will get.
    pub high_watermark: u64,
}

/// An event bus engine. Every role holds one as `Arc<dyn Bus>`, so standalone and
/// distributed mode differ only in which engine is built at start.
#[async_trait]
pub trait Bus: Send + Sync + fmt::Debug {
    /// Creates `topic` with `partitions` partitions, or checks that it already has that many.
    async fn ensure_topic(&self, topic: &str, partitions: u32) -> Result<()>;

    /// The number of partitions of an existing topic.
    async fn partition_count(&self, topic: &str) -> Result<u32>;

    /// Appends records and returns their positions, in input order, once every one of them
    /// is durable (fsync'd, or acknowledged by all in-sync replicas). Records with the same
    /// partition keep their input order. An error means the request as a whole was not
    /// acknowledged; some of its records may still have been appended, so a retry may
    /// duplicate them (consumers are idempotent for exactly this reason).
    async fn produce(
        &self,
        topic: &str,
        records: Vec<ProduceRecord>,
    ) -> Result<Vec<RecordPosition>>;

    /// Reads durable records of one partition from `offset` on, up to about `max_bytes` (at
    /// least one record when any is available): replay, independent of consumer groups.
    async fn fetch(
        &self,
        topic: &str,
        partition: u32,
        offset: u64,
        max_bytes: usize,
    ) -> Result<Vec<ConsumedRecord>>;

    /// The readable offset range of a partition.
    async fn watermarks(&self, topic: &str, partition: u32) -> Result<Watermarks>;

    /// Joins consumer group `group` for `topics`. The group's partitions are shared among
    /// its live members; each starts where the group last committed.
    async fn subscribe(&self, group: &str, topics: &[&str]) -> Result<Box<dyn Consumer>>;

    /// The offset group `group` committed for a partition (the next offset it will read).
    async fn committed_offset(
        &self,
        group: &str,
        topic: &str,
        partition: u32,
    ) -> Result<Option<u64>>;

    /// Finishes every accepted write, makes it durable, and stops accepting new ones.
    async fn close(&self) -> Result<()>;
}

/// One member of a consumer group.
#[async_trait]
pub trait Consumer: Send + fmt::Debug {
    /// The partitions this member reads now; changes when members join or leave.
    fn assignment(&self) -> Vec<TopicPartition>;

    /// Waits up to `timeout` for records on the assigned partitions and returns up to
    /// `max_records` of them (empty on timeout), advancing this member's positions.
    async fn poll(&mut self, max_records: usize, timeout: Duration) -> Result<Vec<ConsumedRecord>>;

    /// Durably records, for the whole group, that everything before `offset` has been
    /// processed in each partition given (`offset` is the next record to read, as in Kafka).
    async fn commit(&mut self, offsets: &[(TopicPartition, u64)]) -> Result<()>;

    /// Moves this member's position in an assigned partition: the next poll reads from
    /// `offset`. Used to replay.
    fn seek(&mut self, partition: &TopicPartition, offset: u64) -> Result<()>;
}

/// A convenience for the common case: the offsets to commit after processing `records`.
pub fn next_offsets(records: &[ConsumedRecord]) -> Vec<(TopicPartition, u64)> {
    let mut next: Vec<(TopicPartition, u64)> = Vec::new();
    for record in records {
        let tp = record.topic_partition();
        match next.iter_mut().find(|(existing, _)| *existing == tp) {
            Some((_, offset)) => *offset = (*offset).max(record.offset + 1),
            None => next.push((tp, record.offset + 1)),
        }
    }
    next
}

/// How long [`Consumer::poll`] callers typically wait; exported so roles agree.
pub const DEFAULT_POLL_TIMEOUT: Duration = Duration::from_millis(500);
