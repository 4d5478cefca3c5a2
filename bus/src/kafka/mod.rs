//! The Kafka engine: the bus contract on a Kafka cluster (or any broker that speaks Kafka's
//! protocol, such as Tansu, which the tests run against), through librdkafka (the `rdkafka`
//! crate, built with its bundled librdkafka).
//!
//! # What each operation does on Kafka
//!
//! - **`ensure_topic`** reads the topic's metadata; an existing topic must have the partition
//!   count asked for ([`BusError::PartitionCountMismatch`] otherwise, as in the embedded
//!   engine), a missing one is created with the admin API (`replication_factor` copies) and
//!   the call returns once the metadata shows it. Clients never auto-create topics
//!   (`allow.auto.create.topics=false`): a typo is [`BusError::UnknownTopic`], not a new topic
//!   with the broker's default partition count.
//! - **`produce`** uses one idempotent producer (`enable.idempotence=true`, `acks=all`): a
//!   record counts as written only once every in-sync replica has it, and librdkafka's
//!   retries can neither duplicate nor reorder records within a partition. Every record of
//!   the request is queued in input order, then `produce` waits for the delivery report of
//!   each and returns the offsets the broker assigned. Records waiting longer than
//!   `delivery_timeout_seconds` fail the request (retryable).
//! - **Partitioning is the bus's, not librdkafka's**: the bus picks every record's partition
//!   itself and hands it to librdkafka explicitly. An explicit `partition` wins; a keyed
//!   record goes to [`crate::partition_for_key`] (murmur2, Kafka's Java default partitioner,
//!   which the embedded engine uses too; librdkafka's own default is CRC32-based and would
//!   put keys elsewhere); keyless records of one request go together to the next partition
//!   in turn (round-robin per request, as the embedded engine does). Partition counts are
//!   cached for [`METADATA_MAX_AGE`]; an unknown explicit partition refreshes the cache once
//!   before it is refused.
//! - **`fetch`** (replay) uses consumers that never join a group nor commit (librdkafka
//!   still wants a `group.id` for `assign`: `<client_id>.replay`), kept in a small pool:
//!   each call reads the watermarks, assigns the one partition at the offset asked for,
//!   reads up to `max_bytes` or the high watermark seen at the start, and unassigns. An
//!   offset before the log start is [`BusError::OffsetOutOfRange`] (and the consumer runs
//!   with `auto.offset.reset=error`), never a silent jump.
//! - **`subscribe`** makes one librdkafka consumer per member of the group (`group.id`), with
//!   manual commits (`enable.auto.commit=false`: a group commits only what
//!   [`Consumer::commit`] is given, after processing) and `auto.offset.reset=earliest` (a
//!   new group reads from the oldest retained record, like the embedded engine's).
//!   Rebalancing is Kafka's: it happens in the background between `poll` calls, a member
//!   learns of its new share while polling, and it must keep polling (within
//!   `max.poll.interval.ms`, 5 minutes) to stay in the group. The assignment strategy is
//!   `cooperative-sticky` (KIP-429): partitions a member keeps are not stopped during a
//!   rebalance and keep their read position, and only moved partitions restart at the
//!   group's committed offset. `commit` is synchronous and refuses partitions the member
//!   does not own now ([`BusError::NotAssigned`], retryable: poll, then commit what is
//!   still owned).
//! - **`close`** stops new writes and flushes the producer.
//!
//! Errors from Kafka that no specific [`BusError`] variant describes become
//! [`BusError::Kafka`], retryable when Kafka's error code says the cluster may accept the
//! same request later (broker away, leader moving, timeouts, rebalances), not when the
//! request itself is wrong (authorization, invalid configuration). A producer whose
//! idempotence state is broken beyond repair (librdkafka's fatal error) is replaced by a
//! new one on the next `produce`.
//!
//! librdkafka's logs go to `tracing` (target `bus::kafka`), at the level `tracing` records
//! when a client is made. This build of librdkafka has lz4 and snappy compression, not gzip
//! or zstd (the crate's `libz`/`zstd` features are off).
//!
//! The tests (`bus/tests/kafka.rs`) run the shared conformance suite and Kafka-specific
//! checks against a real broker, Tansu, started per test.

mod config;
mod consumer;

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, Consumer as _, ConsumerContext, Rebalance};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer as _};
use rdkafka::{ClientContext, Message as _, Offset, TopicPartitionList};

pub use self::config::KafkaBusConfig;
pub use self::consumer::KafkaConsumer;
use crate::{
    Bus, BusError, ConsumedRecord, Consumer, ProduceRecord, RecordPosition, Result, Watermarks,
    partition_for_key, validate_name,
};

/// How long a topic's partition count is trusted before `produce` reads it again (Kafka
/// topics can gain partitions, never lose them).
pub const METADATA_MAX_AGE: Duration = Duration::from_secs(60);

/// Replay consumers kept for reuse between `fetch` calls.
const REPLAYERS_KEPT: usize = 4;

/// Routes librdkafka's logs and client errors to `tracing`, and logs rebalances.
#[derive(Clone, Debug, Default)]
pub(crate) struct BusContext;

impl ClientContext for BusContext {
    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        match level {
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error => tracing::error!(facility, "librdkafka: {message}"),
            RDKafkaLogLevel::Warning => tracing::warn!(facility, "librdkafka: {message}"),
            RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
                tracing::info!(facility, "librdkafka: {message}");
            }
            RDKafkaLogLevel::Debug => tracing::debug!(facility, "librdkafka: {message}"),
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        tracing::warn!(%error, reason, "kafka client error");
    }
}

impl ConsumerContext for BusContext {
    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(partitions) => {
                tracing::debug!(partitions = ?partition_names(partitions), "kafka consumer assigned partitions");
            }
            Rebalance::Revoke(partitions) => {
                tracing::debug!(partitions = ?partition_names(partitions), "kafka consumer revoked partitions");
            }
            Rebalance::Error(error) => tracing::warn!(%error, "kafka consumer rebalance failed"),
        }
    }
}

fn partition_names(list: &TopicPartitionList) -> Vec<String> {
    list.elements()
        .iter()
        .map(|e| format!("{}/{}", e.topic(), e.partition()))
        .collect()
}

/// Whether Kafka may accept the same request later: the cluster is away, busy or moving
/// things, as opposed to the request being wrong.
fn code_is_retryable(code: RDKafkaErrorCode) -> bool {
    use RDKafkaErrorCode as C;
    matches!(
        code,
        C::BrokerTransportFailure
            | C::Resolve
            | C::MessageTimedOut
            | C::AllBrokersDown
            | C::OperationTimedOut
            | C::QueueFull
            | C::ISRInsufficient
            | C::WaitingForCoordinator
            | C::InProgress
            | C::PreviousInProgress
            | C::TimedOutQueue
            | C::WaitCache
            | C::Retry
            | C::PurgeQueue
            | C::PurgeInflight
            | C::Fatal
            | C::AssignmentLost
            | C::DestroyBroker
            | C::LeaderNotAvailable
            | C::NotLeaderForPartition
            | C::RequestTimedOut
            | C::BrokerNotAvailable
            | C::ReplicaNotAvailable
            | C::NetworkException
            | C::CoordinatorLoadInProgress
            | C::CoordinatorNotAvailable
            | C::NotCoordinator
            | C::NotEnoughReplicas
            | C::NotEnoughReplicasAfterAppend
            | C::IllegalGeneration
            | C::UnknownMemberId
            | C::RebalanceInProgress
            | C::NotController
            | C::KafkaStorageError
            | C::ThrottlingQuotaExceeded
            | C::FencedLeaderEpoch
            | C::UnknownLeaderEpoch
            | C::OffsetNotAvailable
            | C::PreferredLeaderNotAvailable
            | C::EligibleLeadersNotAvailable
            | C::UnstableOffsetCommit
            | C::FencedMemberEpoch
            | C::StaleMemberEpoch
            | C::RebootstrapRequired
    )
}

/// A Kafka failure as a [`BusError::Kafka`], retryable as its code says.
pub(crate) fn kafka_error(action: &'static str, error: &KafkaError) -> BusError {
    let retryable = match error {
        KafkaError::Canceled => true,
        other => other.rdkafka_error_code().is_some_and(code_is_retryable),
    };
    BusError::Kafka {
        action,
        reason: error.to_string(),
        retryable,
    }
}

fn code_error(action: &'static str, code: RDKafkaErrorCode) -> BusError {
    BusError::Kafka {
        action,
        reason: code.to_string(),
        retryable: code_is_retryable(code),
    }
}

/// Runs a blocking librdkafka call off the async reactor.
pub(crate) async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| BusError::Kafka {
            action: "running a blocking kafka call",
            reason: e.to_string(),
            retryable: true,
        })?
}

#[derive(Clone, Copy, Debug)]
struct CachedTopic {
    partitions: u32,
    read_at: Instant,
}

type Producer = FutureProducer<BusContext>;

/// The Kafka engine. Cheap to share as `Arc<dyn Bus>`; clients connect lazily, so building
/// one needs no broker (the first call that needs one waits up to the request timeout).
pub struct KafkaBus {
    config: Arc<KafkaBusConfig>,
    producer: RwLock<Producer>,
    admin: AdminClient<BusContext>,
    topics: Mutex<HashMap<String, CachedTopic>>,
    replayers: Arc<Mutex<Vec<BaseConsumer<BusContext>>>>,
    closed: Arc<AtomicBool>,
    round_robin: AtomicU64,
}

impl fmt::Debug for KafkaBus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KafkaBus")
            .field("brokers", &self.config.brokers)
            .field("client_id", &self.config.client_id)
            .field("closed", &self.closed.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl KafkaBus {
    /// Checks the configuration and builds the producer and admin clients.
    pub fn new(config: KafkaBusConfig) -> Result<Self> {
        config.validate()?;
        let producer = config
            .producer()
            .create_with_context(BusContext)
            .map_err(|e| kafka_client_error("creating the kafka producer", &e))?;
        let admin = config
            .producer()
            .create_with_context(BusContext)
            .map_err(|e| kafka_client_error("creating the kafka admin client", &e))?;
        Ok(Self {
            config: Arc::new(config),
            producer: RwLock::new(producer),
            admin,
            topics: Mutex::new(HashMap::new()),
            replayers: Arc::new(Mutex::new(Vec::new())),
            closed: Arc::new(AtomicBool::new(false)),
            round_robin: AtomicU64::new(0),
        })
    }

    pub fn config(&self) -> &KafkaBusConfig {
        &self.config
    }

    fn check_open(&self) -> Result<()> {
        if self.closed.load(Ordering::Acquire) {
            return Err(BusError::Closed);
        }
        Ok(())
    }

    /// The producer, replaced first if librdkafka declared it unusable (a fatal error of the
    /// idempotent producer: every later send would fail).
    fn producer(&self) -> Result<Producer> {
        let current = self
            .producer
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let Some((code, reason)) = current.client().fatal_error() else {
            return Ok(current);
        };
        let mut slot = self.producer.write().unwrap_or_else(|e| e.into_inner());
        if slot.client().fatal_error().is_some() {
            tracing::error!(%code, reason, "kafka producer failed fatally; replacing it");
            *slot = self
                .config
                .producer()
                .create_with_context(BusContext)
                .map_err(|e| kafka_client_error("creating the kafka producer", &e))?;
        }
        Ok(slot.clone())
    }

    /// Reads a topic's partition count from the cluster, and caches it.
    async fn read_partition_count(&self, topic: &str) -> Result<u32> {
        let producer = self.producer()?;
        let timeout = self.config.request_timeout();
        let name = topic.to_owned();
        let read = blocking(move || {
            let metadata = producer
                .client()
                .fetch_metadata(Some(&name), timeout)
                .map_err(|e| kafka_error("reading topic metadata", &e))?;
            let unknown = || BusError::UnknownTopic {
                topic: name.clone(),
            };
            let found = metadata
                .topics()
                .iter()
                .find(|t| t.name() == name)
                .ok_or_else(unknown)?;
            if let Some(error) = found.error() {
                let code = RDKafkaErrorCode::from(error);
                if matches!(
                    code,
                    RDKafkaErrorCode::UnknownTopicOrPartition | RDKafkaErrorCode::UnknownTopic
                ) {
                    return Err(unknown());
                }
                if found.partitions().is_empty() {
                    return Err(code_error("reading topic metadata", code));
                }
            }
            if found.partitions().is_empty() {
                return Err(unknown());
            }
            Ok(found.partitions().len() as u32)
        })
        .await;
        let mut topics = self.topics.lock().unwrap_or_else(|e| e.into_inner());
        match read {
            Ok(partitions) => {
                topics.insert(
                    topic.to_owned(),
                    CachedTopic {
                        partitions,
                        read_at: Instant::now(),
                    },
                );
                Ok(partitions)
            }
            Err(error) => {
                if matches!(error, BusError::UnknownTopic { .. }) {
                    topics.remove(topic);
                }
                Err(error)
            }
        }
    }

    /// The partition count, from the cache while it is fresh.
    async fn cached_partition_count(&self, topic: &str) -> Result<u32> {
        let cached = self
            .topics
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(topic)
            .copied();
        match cached {
            Some(cached) if cached.read_at.elapsed() < METADATA_MAX_AGE => Ok(cached.partitions),
            _ => self.read_partition_count(topic).await,
        }
    }

    /// Checks that `partition` exists, reading the metadata again before refusing it.
    async fn check_partition(&self, topic: &str, partition: u32) -> Result<u32> {
        let mut partitions = self.cached_partition_count(topic).await?;
        if partition >= partitions {
            partitions = self.read_partition_count(topic).await?;
        }
        if partition >= partitions {
            return Err(BusError::UnknownPartition {
                topic: topic.to_owned(),
                partition,
                partitions,
            });
        }
        Ok(partitions)
    }

    async fn create_topic(&self, topic: &str, partitions: u32) -> Result<()> {
        let timeout = self.config.request_timeout();
        let replication = i32::from(self.config.replication_factor);
        let new_topic = NewTopic::new(
            topic,
            partitions as i32,
            TopicReplication::Fixed(replication),
        );
        let options = AdminOptions::new()
            .operation_timeout(Some(timeout))
            .request_timeout(Some(timeout));
        let results = self
            .admin
            .create_topics([&new_topic], &options)
            .await
            .map_err(|e| kafka_error("creating topic", &e))?;
        for result in results {
            match result {
                Ok(_) => tracing::info!(topic, partitions, replication, "created kafka topic"),
                // Created meanwhile by another process: checked below like any existing topic.
                Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((_, RDKafkaErrorCode::InvalidReplicationFactor)) => {
                    return Err(BusError::Config(format!(
                        "creating topic {topic:?}: replication_factor {replication} is more than the cluster can hold (at most one copy per broker)"
                    )));
                }
                Err((_, RDKafkaErrorCode::InvalidTopic)) => {
                    return Err(BusError::InvalidName {
                        what: "topic",
                        name: topic.to_owned(),
                        reason: "refused by the broker",
                    });
                }
                Err((_, code)) => return Err(code_error("creating topic", code)),
            }
        }
        // Metadata reaches every broker shortly after creation; wait until it shows.
        let deadline = Instant::now() + timeout;
        loop {
            let error = match self.read_partition_count(topic).await {
                Ok(existing) if existing == partitions => return Ok(()),
                Ok(existing) => BusError::PartitionCountMismatch {
                    topic: topic.to_owned(),
                    existing,
                    requested: partitions,
                },
                Err(error @ BusError::UnknownTopic { .. }) => error,
                Err(error) => return Err(error),
            };
            if Instant::now() >= deadline {
                return Err(error);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A replay consumer from the pool, or a new one.
    fn take_replayer(&self) -> Result<BaseConsumer<BusContext>> {
        if let Some(consumer) = self
            .replayers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pop()
        {
            return Ok(consumer);
        }
        self.config
            .replayer()
            .create_with_context(BusContext)
            .map_err(|e| kafka_client_error("creating a kafka replay consumer", &e))
    }
}

/// Client creation fails on configuration (a bad `extra` property): not retryable.
fn kafka_client_error(action: &'static str, error: &KafkaError) -> BusError {
    match error {
        KafkaError::ClientConfig(..) | KafkaError::ClientCreation(_) => {
            BusError::Config(format!("{action}: {error}"))
        }
        other => kafka_error(action, other),
    }
}

/// Reads one partition from `offset` until `max_bytes`, the high watermark `high` or the end
/// of the partition, with a replay consumer. Leaves the consumer unassigned.
fn replay(
    consumer: &BaseConsumer<BusContext>,
    topic: &Arc<str>,
    partition: u32,
    offset: u64,
    high: u64,
    max_bytes: usize,
    timeout: Duration,
) -> Result<Vec<ConsumedRecord>> {
    let mut list = TopicPartitionList::new();
    list.add_partition_offset(topic, partition as i32, Offset::Offset(offset as i64))
        .map_err(|e| kafka_error("assigning a partition to replay", &e))?;
    consumer
        .assign(&list)
        .map_err(|e| kafka_error("assigning a partition to replay", &e))?;
    let result = replay_assigned(consumer, topic, partition, offset, high, max_bytes, timeout);
    if let Err(error) = consumer.unassign() {
        tracing::warn!(%error, "unassigning a kafka replay consumer");
    }
    result
}

fn replay_assigned(
    consumer: &BaseConsumer<BusContext>,
    topic: &Arc<str>,
    partition: u32,
    offset: u64,
    high: u64,
    max_bytes: usize,
    timeout: Duration,
) -> Result<Vec<ConsumedRecord>> {
    let deadline = Instant::now() + timeout;
    let mut out: Vec<ConsumedRecord> = Vec::new();
    let mut next = offset;
    let mut bytes = 0usize;
    while next < high && (out.is_empty() || bytes < max_bytes) {
        let wait = deadline.saturating_duration_since(Instant::now());
        match consumer.poll(wait) {
            Some(Ok(message)) => {
                // Only this assignment's records, from where it started (an earlier
                // assignment of the same consumer can never leak in).
                if message.topic() != topic.as_ref()
                    || message.partition() != partition as i32
                    || message.offset() < next as i64
                {
                    continue;
                }
                let record = to_consumed(topic, &message);
                next = record.offset + 1;
                bytes += record.value.len() + record.key.as_ref().map_or(0, |k| k.len());
                out.push(record);
            }
            // The end of the partition: what was durable when the fetch started is all read.
            Some(Err(KafkaError::PartitionEOF(p))) if p == partition as i32 && !out.is_empty() => {
                break;
            }
            Some(Err(KafkaError::PartitionEOF(_))) => {}
            Some(Err(KafkaError::MessageConsumption(
                RDKafkaErrorCode::OffsetOutOfRange | RDKafkaErrorCode::AutoOffsetReset,
            ))) => {
                return Err(BusError::OffsetOutOfRange {
                    topic: topic.to_string(),
                    partition,
                    requested: offset,
                    log_start: 0,
                });
            }
            Some(Err(error @ KafkaError::MessageConsumptionFatal(_))) => {
                return Err(kafka_error("replaying a partition", &error));
            }
            // Transient (a broker connection dropped): librdkafka retries by itself.
            Some(Err(error)) => tracing::debug!(%error, "kafka replay consumer error"),
            None => {
                if Instant::now() >= deadline {
                    if out.is_empty() {
                        return Err(BusError::Kafka {
                            action: "replaying a partition",
                            reason: format!(
                                "no record of {topic}/{partition} from offset {offset} arrived within {timeout:?}, below the high watermark {high}"
                            ),
                            retryable: true,
                        });
                    }
                    break;
                }
            }
        }
    }
    Ok(out)
}

/// A record as the bus hands it out.
pub(crate) fn to_consumed(topic: &Arc<str>, message: &impl rdkafka::Message) -> ConsumedRecord {
    ConsumedRecord {
        topic: topic.clone(),
        partition: message.partition() as u32,
        offset: message.offset() as u64,
        timestamp_ms: message.timestamp().to_millis().unwrap_or(0),
        key: message.key().map(bytes::Bytes::copy_from_slice),
        value: message
            .payload()
            .map(bytes::Bytes::copy_from_slice)
            .unwrap_or_default(),
    }
}

#[async_trait]
impl Bus for KafkaBus {
    async fn ensure_topic(&self, topic: &str, partitions: u32) -> Result<()> {
        validate_name("topic", topic)?;
        if partitions == 0 || partitions > i32::MAX as u32 {
            return Err(BusError::Config(format!(
                "topic {topic:?} needs between 1 and {} partitions",
                i32::MAX
            )));
        }
        self.check_open()?;
        match self.read_partition_count(topic).await {
            Ok(existing) if existing == partitions => Ok(()),
            Ok(existing) => Err(BusError::PartitionCountMismatch {
                topic: topic.to_owned(),
                existing,
                requested: partitions,
            }),
            Err(BusError::UnknownTopic { .. }) => self.create_topic(topic, partitions).await,
            Err(error) => Err(error),
        }
    }

    async fn partition_count(&self, topic: &str) -> Result<u32> {
        validate_name("topic", topic)?;
        self.read_partition_count(topic).await
    }

    async fn produce(
        &self,
        topic: &str,
        records: Vec<ProduceRecord>,
    ) -> Result<Vec<RecordPosition>> {
        self.check_open()?;
        validate_name("topic", topic)?;
        let mut partitions = self.cached_partition_count(topic).await?;
        if records.is_empty() {
            return Ok(Vec::new());
        }
        let limit = u64::from(self.config.message_max_bytes);
        let mut targets = Vec::with_capacity(records.len());
        let round_robin = self.round_robin.fetch_add(1, Ordering::Relaxed);
        for record in &records {
            let size = (record.value.len() + record.key.as_ref().map_or(0, |k| k.len())) as u64;
            if size > limit {
                return Err(BusError::RecordTooLarge { size, limit });
            }
            if let Some(partition) = record.partition
                && partition >= partitions
            {
                partitions = self.check_partition(topic, partition).await?;
            }
        }
        for record in &records {
            targets.push(match (record.partition, &record.key) {
                (Some(partition), _) => partition,
                (None, Some(key)) => partition_for_key(key, partitions),
                (None, None) => (round_robin % u64::from(partitions)) as u32,
            });
        }

        // Queue every record in input order (librdkafka keeps that order per partition),
        // then wait for each delivery report.
        let producer = self.producer()?;
        let mut deliveries = Vec::with_capacity(records.len());
        for (record, partition) in records.iter().zip(&targets) {
            let mut message: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(topic)
                .payload(record.value.as_ref())
                .partition(*partition as i32);
            if let Some(key) = &record.key {
                message = message.key(key.as_ref());
            }
            if let Some(timestamp) = record.timestamp_ms {
                message = message.timestamp(timestamp);
            }
            let delivery = loop {
                match producer.send_result(message) {
                    Ok(delivery) => break delivery,
                    // The local queue is full: wait for deliveries to make room.
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                        message = back;
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    Err((error, _)) => {
                        return Err(self.produce_error(topic, *partition, record, &error));
                    }
                }
            };
            deliveries.push(delivery);
        }
        let mut positions = Vec::with_capacity(deliveries.len());
        for ((delivery, partition), record) in deliveries.into_iter().zip(&targets).zip(&records) {
            match delivery.await {
                Ok(Ok(delivered)) => positions.push(RecordPosition {
                    partition: delivered.partition as u32,
                    offset: delivered.offset as u64,
                }),
                Ok(Err((error, _))) => {
                    return Err(self.produce_error(topic, *partition, record, &error));
                }
                Err(_canceled) => {
                    return Err(BusError::Kafka {
                        action: "producing",
                        reason: "the producer was dropped before the record's delivery report"
                            .to_owned(),
                        retryable: true,
                    });
                }
            }
        }
        Ok(positions)
    }

    async fn fetch(
        &self,
        topic: &str,
        partition: u32,
        offset: u64,
        max_bytes: usize,
    ) -> Result<Vec<ConsumedRecord>> {
        let watermarks = self.watermarks(topic, partition).await?;
        if offset < watermarks.log_start {
            return Err(BusError::OffsetOutOfRange {
                topic: topic.to_owned(),
                partition,
                requested: offset,
                log_start: watermarks.log_start,
            });
        }
        if offset >= watermarks.high_watermark {
            return Ok(Vec::new());
        }
        let consumer = self.take_replayer()?;
        let pool = self.replayers.clone();
        let topic: Arc<str> = Arc::from(topic);
        let high = watermarks.high_watermark;
        let log_start = watermarks.log_start;
        let timeout = self.config.request_timeout();
        blocking(move || {
            let result = replay(
                &consumer, &topic, partition, offset, high, max_bytes, timeout,
            );
            let mut pool = pool.lock().unwrap_or_else(|e| e.into_inner());
            if pool.len() < REPLAYERS_KEPT {
                pool.push(consumer);
            }
            result.map_err(|error| match error {
                BusError::OffsetOutOfRange {
                    topic,
                    partition,
                    requested,
                    ..
                } => BusError::OffsetOutOfRange {
                    topic,
                    partition,
                    requested,
                    log_start,
                },
                other => other,
            })
        })
        .await
    }

    async fn watermarks(&self, topic: &str, partition: u32) -> Result<Watermarks> {
        validate_name("topic", topic)?;
        self.check_partition(topic, partition).await?;
        let producer = self.producer()?;
        let timeout = self.config.request_timeout();
        let name = topic.to_owned();
        let (low, high) = blocking(move || {
            producer
                .client()
                .fetch_watermarks(&name, partition as i32, timeout)
                .map_err(|e| kafka_error("reading watermarks", &e))
        })
        .await?;
        Ok(Watermarks {
            log_start: low.max(0) as u64,
            high_watermark: high.max(0) as u64,
        })
    }

    async fn subscribe(&self, group: &str, topics: &[&str]) -> Result<Box<dyn Consumer>> {
        self.check_open()?;
        validate_name("consumer group", group)?;
        for topic in topics {
            validate_name("topic", topic)?;
            self.cached_partition_count(topic).await?;
        }
        let consumer = KafkaConsumer::subscribe(&self.config, group, topics, self.closed.clone())?;
        Ok(Box::new(consumer))
    }

    async fn committed_offset(
        &self,
        group: &str,
        topic: &str,
        partition: u32,
    ) -> Result<Option<u64>> {
        validate_name("consumer group", group)?;
        validate_name("topic", topic)?;
        let reader: BaseConsumer<BusContext> = self
            .config
            .offset_reader(group)
            .create_with_context(BusContext)
            .map_err(|e| kafka_client_error("creating a kafka offset reader", &e))?;
        let timeout = self.config.request_timeout();
        let topic = topic.to_owned();
        blocking(move || {
            let mut list = TopicPartitionList::new();
            list.add_partition(&topic, partition as i32);
            let committed = reader
                .committed_offsets(list, timeout)
                .map_err(|e| kafka_error("reading committed offsets", &e))?;
            let offset = committed
                .find_partition(&topic, partition as i32)
                .map(|element| element.offset());
            Ok(match offset {
                Some(Offset::Offset(offset)) if offset >= 0 => Some(offset as u64),
                _ => None,
            })
        })
        .await
    }

    async fn close(&self) -> Result<()> {
        if self.closed.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        let producer = self.producer()?;
        let timeout = self.config.delivery_timeout();
        blocking(move || {
            producer
                .flush(timeout)
                .map_err(|e| kafka_error("flushing the producer", &e))
        })
        .await
    }
}

impl KafkaBus {
    /// A failed produce as the most specific [`BusError`] there is.
    fn produce_error(
        &self,
        topic: &str,
        partition: u32,
        record: &ProduceRecord,
        error: &KafkaError,
    ) -> BusError {
        match error.rdkafka_error_code() {
            // Beyond the broker's or the topic's limit, which may be below ours.
            Some(RDKafkaErrorCode::MessageSizeTooLarge | RDKafkaErrorCode::InvalidMessageSize) => {
                BusError::RecordTooLarge {
                    size: (record.value.len() + record.key.as_ref().map_or(0, |k| k.len())) as u64,
                    limit: u64::from(self.config.message_max_bytes),
                }
            }
            Some(RDKafkaErrorCode::UnknownTopic | RDKafkaErrorCode::UnknownTopicOrPartition) => {
                self.topics
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(topic);
                BusError::UnknownTopic {
                    topic: topic.to_owned(),
                }
            }
            Some(RDKafkaErrorCode::UnknownPartition) => {
                let partitions = self
                    .topics
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(topic)
                    .map_or(0, |cached| cached.partitions);
                BusError::UnknownPartition {
                    topic: topic.to_owned(),
                    partition,
                    partitions,
                }
            }
            _ => kafka_error("producing", error),
        }
    }
}
