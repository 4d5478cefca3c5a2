//! A member of a Kafka consumer group.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer as _};
use rdkafka::error::KafkaError;
use rdkafka::{Offset, TopicPartitionList};

use super::{BusContext, KafkaBusConfig, blocking, kafka_error, to_consumed};
use crate::{BusError, ConsumedRecord, Consumer, Result, TopicPartition};

/// One member of a consumer group on Kafka: one librdkafka consumer, subscribed to the
/// group's topics. Dropping it leaves the group (the others take over its partitions at
/// once instead of after the session timeout); that waits for the broker's answer, up to
/// the request timeout.
pub struct KafkaConsumer {
    /// `None` only while dropping.
    consumer: Option<Arc<BaseConsumer<BusContext>>>,
    group: String,
    topics: Arc<[Arc<str>]>,
    closed: Arc<AtomicBool>,
    timeout: Duration,
}

impl fmt::Debug for KafkaConsumer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KafkaConsumer")
            .field("group", &self.group)
            .field("topics", &self.topics)
            .finish_non_exhaustive()
    }
}

impl KafkaConsumer {
    pub(crate) fn subscribe(
        config: &KafkaBusConfig,
        group: &str,
        topics: &[&str],
        closed: Arc<AtomicBool>,
    ) -> Result<Self> {
        let consumer: BaseConsumer<BusContext> = config
            .group_member(group)
            .create_with_context(BusContext)
            .map_err(|e| BusError::Config(format!("creating a kafka consumer: {e}")))?;
        consumer
            .subscribe(topics)
            .map_err(|e| kafka_error("subscribing", &e))?;
        Ok(Self {
            consumer: Some(Arc::new(consumer)),
            group: group.to_owned(),
            topics: topics.iter().map(|t| Arc::<str>::from(*t)).collect(),
            closed,
            timeout: config.request_timeout(),
        })
    }

    fn client(&self) -> Result<&Arc<BaseConsumer<BusContext>>> {
        self.consumer.as_ref().ok_or(BusError::Closed)
    }

    fn check_assigned(&self, partition: &TopicPartition) -> Result<()> {
        if self.assignment().contains(partition) {
            return Ok(());
        }
        Err(BusError::NotAssigned {
            group: self.group.clone(),
            topic: partition.topic.to_string(),
            partition: partition.partition,
        })
    }

    fn check_open(&self) -> Result<()> {
        if self.closed.load(Ordering::Acquire) {
            return Err(BusError::Closed);
        }
        Ok(())
    }
}

/// Waits up to `timeout` for a first record, then takes what is already there, up to
/// `max_records`. Rebalances are served here (librdkafka runs them in the polling thread).
fn poll_records(
    consumer: &BaseConsumer<BusContext>,
    group: &str,
    topics: &[Arc<str>],
    max_records: usize,
    timeout: Duration,
) -> Result<Vec<ConsumedRecord>> {
    let deadline = Instant::now() + timeout;
    let mut out = Vec::new();
    loop {
        let wait = if out.is_empty() {
            deadline.saturating_duration_since(Instant::now())
        } else {
            Duration::ZERO
        };
        match consumer.poll(wait) {
            Some(Ok(message)) => {
                let topic = topics
                    .iter()
                    .find(|t| t.as_ref() == rdkafka::Message::topic(&message))
                    .cloned()
                    .unwrap_or_else(|| Arc::from(rdkafka::Message::topic(&message)));
                out.push(to_consumed(&topic, &message));
                if out.len() >= max_records {
                    break;
                }
            }
            Some(Err(error @ KafkaError::MessageConsumptionFatal(_))) => {
                return Err(kafka_error("polling", &error));
            }
            // Like Kafka's own consumers, polling rides out a broker going away: librdkafka
            // reconnects and resumes by itself, and the caller sees no records meanwhile.
            Some(Err(error)) => tracing::warn!(group, %error, "kafka consumer error"),
            // A timeout, or an event served (a rebalance) with time left.
            None => {
                if !out.is_empty() || Instant::now() >= deadline {
                    break;
                }
            }
        }
    }
    Ok(out)
}

#[async_trait]
impl Consumer for KafkaConsumer {
    fn assignment(&self) -> Vec<TopicPartition> {
        let Ok(client) = self.client() else {
            return Vec::new();
        };
        match client.assignment() {
            Ok(list) => list
                .elements()
                .iter()
                .map(|e| TopicPartition::new(e.topic(), e.partition() as u32))
                .collect(),
            Err(error) => {
                tracing::warn!(group = %self.group, %error, "reading the kafka assignment");
                Vec::new()
            }
        }
    }

    async fn poll(&mut self, max_records: usize, timeout: Duration) -> Result<Vec<ConsumedRecord>> {
        self.check_open()?;
        let consumer = self.client()?.clone();
        let group = self.group.clone();
        let topics = self.topics.clone();
        let max_records = max_records.max(1);
        blocking(move || poll_records(&consumer, &group, &topics, max_records, timeout)).await
    }

    async fn commit(&mut self, offsets: &[(TopicPartition, u64)]) -> Result<()> {
        if offsets.is_empty() {
            return Ok(());
        }
        for (partition, _) in offsets {
            self.check_assigned(partition)?;
        }
        let mut list = TopicPartitionList::new();
        for (tp, offset) in offsets {
            list.add_partition_offset(
                &tp.topic,
                tp.partition as i32,
                Offset::Offset(*offset as i64),
            )
            .map_err(|e| kafka_error("committing offsets", &e))?;
        }
        let consumer = self.client()?.clone();
        // librdkafka's synchronous commit waits for the group coordinator without end
        // (while no broker answers, for ever); the caller gets an answer within the request
        // timeout instead. The commit itself may still land later, which is harmless: an
        // offset commit only ever covers data storage already holds.
        // A thread of its own, not the runtime's blocking pool: a runtime shutting down
        // waits for its blocking tasks, and this one may not end while the cluster is away.
        let (answer, answered) = tokio::sync::oneshot::channel();
        std::thread::Builder::new()
            .name("kafka-commit".to_owned())
            .spawn(move || {
                let _ = answer.send(
                    consumer
                        .commit(&list, CommitMode::Sync)
                        .map_err(|e| kafka_error("committing offsets", &e)),
                );
            })
            .map_err(|e| BusError::Kafka {
                action: "committing offsets",
                reason: format!("cannot start a thread: {e}"),
                retryable: true,
            })?;
        match tokio::time::timeout(self.timeout, answered).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) | Err(_) => Err(BusError::Kafka {
                action: "committing offsets",
                reason: format!(
                    "no answer from the group coordinator within {} s",
                    self.timeout.as_secs_f64()
                ),
                retryable: true,
            }),
        }
    }

    fn seek(&mut self, partition: &TopicPartition, offset: u64) -> Result<()> {
        self.check_assigned(partition)?;
        self.client()?
            .seek(
                &partition.topic,
                partition.partition as i32,
                Offset::Offset(offset as i64),
                self.timeout,
            )
            .map_err(|e| kafka_error("seeking", &e))
    }
}

impl Drop for KafkaConsumer {
    /// librdkafka's close (leave the group, give back the partitions) waits for the group
    /// coordinator, up to the session timeout when no broker answers; it runs on a thread
    /// of its own and this waits for it only up to the request timeout, so that stopping
    /// never hangs on an unreachable cluster.
    fn drop(&mut self) {
        let Some(consumer) = self.consumer.take() else {
            return;
        };
        let (closed, done) = std::sync::mpsc::channel::<()>();
        let spawned = std::thread::Builder::new()
            .name("kafka-consumer-close".to_owned())
            .spawn(move || {
                drop(consumer);
                let _ = closed.send(());
            });
        if spawned.is_ok() && done.recv_timeout(self.timeout).is_err() {
            tracing::warn!(group = %self.group, "the kafka consumer did not leave its group within the request timeout; it keeps trying in the background");
        }
    }
}
