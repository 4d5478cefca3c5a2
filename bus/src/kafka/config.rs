//! Configuration of the Kafka engine, and the librdkafka properties built from it.

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::config::RDKafkaLogLevel;
use serde::{Deserialize, Serialize};

use crate::{BusError, Result};

/// How Meerkat reaches Kafka. Every field has a default that suits one local broker;
/// `extra` passes anything else (TLS, SASL, compression, tuning) to librdkafka as is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KafkaBusConfig {
    /// Bootstrap brokers, `host:port`, comma-separated. The rest of the cluster is found
    /// through them.
    pub brokers: String,
    /// Sent with every request; brokers name clients by it in their logs and quotas.
    pub client_id: String,
    /// Copies of each partition when the bus creates a topic. At most the number of brokers;
    /// production clusters want 3 (with the topic's `min.insync.replicas` at 2, `acks=all`
    /// then survives the loss of one broker). Existing topics are left as they are.
    pub replication_factor: u16,
    /// Largest record (key plus value) `produce` accepts. librdkafka's `message.max.bytes`
    /// is this plus the most framing one record can take on the wire. The broker's and
    /// topic's own limits apply too (Kafka's default is about 1 MB per record batch).
    pub message_max_bytes: u32,
    /// Timeout of one request to a broker, and of the bus's own metadata, admin, commit and
    /// replay calls.
    pub request_timeout_seconds: u64,
    /// How long `produce` keeps retrying a record (broker away, leader moving) before it
    /// fails the request (librdkafka's `message.timeout.ms`, Kafka's `delivery.timeout.ms`).
    pub delivery_timeout_seconds: u64,
    /// Raw librdkafka properties given to every client the bus makes, for example
    /// `security.protocol`, `sasl.*`, `ssl.*`, `compression.type` (`lz4` or `snappy`: this
    /// build has no zlib or zstd) or `partition.assignment.strategy`. Properties the bus
    /// sets itself to keep its guarantees are refused here, naming the field to use.
    pub extra: BTreeMap<String, String>,
}

impl Default for KafkaBusConfig {
    fn default() -> Self {
        Self {
            brokers: "127.0.0.1:9092".to_owned(),
            client_id: "meerkat".to_owned(),
            replication_factor: 1,
            message_max_bytes: 1_000_000,
            request_timeout_seconds: 30,
            delivery_timeout_seconds: 120,
            extra: BTreeMap::new(),
        }
    }
}

/// librdkafka properties the bus owns: the bus's guarantees depend on their values, or a
/// field of [`KafkaBusConfig`] sets them.
const RESERVED: &[(&str, &str)] = &[
    ("bootstrap.servers", "use `brokers`"),
    ("metadata.broker.list", "use `brokers`"),
    ("client.id", "use `client_id`"),
    ("message.max.bytes", "use `message_max_bytes`"),
    ("request.timeout.ms", "use `request_timeout_seconds`"),
    ("message.timeout.ms", "use `delivery_timeout_seconds`"),
    ("delivery.timeout.ms", "use `delivery_timeout_seconds`"),
    (
        "acks",
        "produce acknowledges only what all in-sync replicas hold (acks=all)",
    ),
    (
        "request.required.acks",
        "produce acknowledges only what all in-sync replicas hold (acks=all)",
    ),
    (
        "enable.idempotence",
        "the idempotent producer keeps order and avoids duplicates on retry",
    ),
    ("transactional.id", "the bus does not use transactions"),
    ("group.id", "the group is the argument of `subscribe`"),
    (
        "enable.auto.commit",
        "consumers commit only what they processed (`Consumer::commit`)",
    ),
    (
        "enable.auto.offset.store",
        "consumers commit only what they processed (`Consumer::commit`)",
    ),
    (
        "auto.offset.reset",
        "a new group starts at the oldest record; replay reports removed offsets",
    ),
    (
        "enable.partition.eof",
        "the bus decides where it needs end-of-partition events",
    ),
    (
        "allow.auto.create.topics",
        "topics are created by `ensure_topic` with the partition count asked for",
    ),
];

/// The most framing librdkafka counts around one record's key and value (length,
/// attributes, timestamp and offset deltas, key and value lengths, header count, all at
/// their largest varint sizes: `RD_KAFKAP_MESSAGE_V2_MAX_OVERHEAD`). librdkafka refuses a
/// record whose key, value and this framing exceed its `message.max.bytes`.
pub(crate) const RECORD_FRAMING_BYTES: u32 = 36;

/// librdkafka's bounds of `message.max.bytes`, capped at its default `fetch.max.bytes`
/// (50 MiB) so every accepted record can be read back with the default consumer settings.
const MESSAGE_MAX_BYTES_RANGE: std::ops::RangeInclusive<u32> = 1_000..=52_428_800;

/// librdkafka formats and sends only the logs at or above its level: the level `tracing`
/// will record for this module when the client is made.
fn log_level() -> RDKafkaLogLevel {
    if tracing::enabled!(tracing::Level::DEBUG) {
        RDKafkaLogLevel::Debug
    } else if tracing::enabled!(tracing::Level::INFO) {
        RDKafkaLogLevel::Info
    } else if tracing::enabled!(tracing::Level::WARN) {
        RDKafkaLogLevel::Warning
    } else {
        RDKafkaLogLevel::Error
    }
}

impl KafkaBusConfig {
    /// Checks the configuration; the message names the field and the fix.
    pub fn validate(&self) -> Result<()> {
        let fail = |message: String| Err(BusError::Config(message));
        if self.brokers.trim().is_empty() {
            return fail("kafka brokers is empty; give at least one host:port".to_owned());
        }
        if self.client_id.is_empty() {
            return fail("kafka client_id is empty".to_owned());
        }
        if self.replication_factor == 0 {
            return fail("kafka replication_factor must be at least 1".to_owned());
        }
        if !MESSAGE_MAX_BYTES_RANGE.contains(&self.message_max_bytes) {
            return fail(format!(
                "kafka message_max_bytes is {}; it must be between {} and {}",
                self.message_max_bytes,
                MESSAGE_MAX_BYTES_RANGE.start(),
                MESSAGE_MAX_BYTES_RANGE.end()
            ));
        }
        if self.request_timeout_seconds == 0 || self.request_timeout_seconds > 900 {
            return fail(format!(
                "kafka request_timeout_seconds is {}; it must be between 1 and 900",
                self.request_timeout_seconds
            ));
        }
        if self.delivery_timeout_seconds == 0 || self.delivery_timeout_seconds > 86_400 {
            return fail(format!(
                "kafka delivery_timeout_seconds is {}; it must be between 1 and 86400",
                self.delivery_timeout_seconds
            ));
        }
        for key in self.extra.keys() {
            if let Some((_, why)) = RESERVED.iter().find(|(reserved, _)| reserved == key) {
                return fail(format!(
                    "kafka extra sets {key:?}, which the bus sets itself: {why}"
                ));
            }
        }
        Ok(())
    }

    pub(crate) fn request_timeout(&self) -> Duration {
        Duration::from_secs(self.request_timeout_seconds)
    }

    pub(crate) fn delivery_timeout(&self) -> Duration {
        Duration::from_secs(self.delivery_timeout_seconds)
    }

    /// Properties every client shares: defaults first, then `extra`, then what the bus
    /// owns (which `validate` keeps out of `extra`).
    fn common(&self, defaults: &[(&str, &str)]) -> ClientConfig {
        let mut config = ClientConfig::new();
        for (key, value) in defaults {
            config.set(*key, *value);
        }
        for (key, value) in &self.extra {
            config.set(key, value);
        }
        config
            .set("bootstrap.servers", &self.brokers)
            .set("client.id", &self.client_id)
            .set("allow.auto.create.topics", "false")
            .set_log_level(log_level());
        config
    }

    /// The producer (also used for metadata and watermarks) and the admin client.
    pub(crate) fn producer(&self) -> ClientConfig {
        let mut config = self.common(&[]);
        config
            .set("acks", "all")
            .set("enable.idempotence", "true")
            .set(
                "message.max.bytes",
                (self.message_max_bytes + RECORD_FRAMING_BYTES).to_string(),
            )
            .set(
                "request.timeout.ms",
                (self.request_timeout_seconds * 1000).to_string(),
            )
            .set(
                "message.timeout.ms",
                (self.delivery_timeout_seconds * 1000).to_string(),
            );
        config
    }

    /// A member of consumer group `group` (`subscribe`).
    pub(crate) fn group_member(&self, group: &str) -> ClientConfig {
        let mut config = self.common(&[("partition.assignment.strategy", "cooperative-sticky")]);
        config
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("enable.partition.eof", "false");
        config
    }

    /// A consumer outside any group, for replay (`fetch`): assigned one partition at a time,
    /// and told to report a removed offset instead of silently jumping. librdkafka wants a
    /// `group.id` for `assign` even though this consumer never joins the group nor commits.
    pub(crate) fn replayer(&self) -> ClientConfig {
        let mut config = self.common(&[]);
        config
            .set("group.id", format!("{}.replay", self.client_id))
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "error")
            .set("enable.partition.eof", "true");
        config
    }

    /// A client that only reads group `group`'s committed offsets (`committed_offset`).
    pub(crate) fn offset_reader(&self, group: &str) -> ClientConfig {
        let mut config = self.common(&[]);
        config
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("enable.partition.eof", "false");
        config
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_unknown_keys_refused() {
        KafkaBusConfig::default()
            .validate()
            .unwrap_or_else(|e| panic!("{e}"));
        let parsed: std::result::Result<KafkaBusConfig, _> =
            serde_json::from_str(r#"{"brokers": "a:1", "replication": 3}"#);
        assert!(parsed.is_err(), "an unknown key must be refused");
        let parsed: KafkaBusConfig =
            serde_json::from_str(r#"{"brokers": "a:1,b:2", "extra": {"linger.ms": "20"}}"#)
                .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(parsed.brokers, "a:1,b:2");
        assert_eq!(parsed.replication_factor, 1);
        parsed.validate().unwrap_or_else(|e| panic!("{e}"));
    }

    #[test]
    fn extra_may_not_undo_the_guarantees() {
        let mut config = KafkaBusConfig::default();
        config.extra.insert("acks".to_owned(), "1".to_owned());
        let err = config
            .validate()
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("acks") && err.contains("acks=all"), "{err}");
        let mut config = KafkaBusConfig::default();
        config
            .extra
            .insert("bootstrap.servers".to_owned(), "x:1".to_owned());
        let err = config
            .validate()
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("use `brokers`"), "{err}");
    }

    #[test]
    fn bounds_are_checked() {
        for config in [
            KafkaBusConfig {
                brokers: " ".to_owned(),
                ..KafkaBusConfig::default()
            },
            KafkaBusConfig {
                replication_factor: 0,
                ..KafkaBusConfig::default()
            },
            KafkaBusConfig {
                message_max_bytes: 10,
                ..KafkaBusConfig::default()
            },
            KafkaBusConfig {
                request_timeout_seconds: 0,
                ..KafkaBusConfig::default()
            },
        ] {
            assert!(
                matches!(config.validate(), Err(BusError::Config(_))),
                "{config:?}"
            );
        }
    }

    #[test]
    fn producer_properties_carry_the_guarantees() {
        let config = KafkaBusConfig::default().producer();
        assert_eq!(config.get("acks"), Some("all"));
        assert_eq!(config.get("enable.idempotence"), Some("true"));
        assert_eq!(config.get("message.timeout.ms"), Some("120000"));
        let member = KafkaBusConfig::default().group_member("ingest");
        assert_eq!(member.get("enable.auto.commit"), Some("false"));
        assert_eq!(member.get("auto.offset.reset"), Some("earliest"));
        assert_eq!(member.get("group.id"), Some("ingest"));
    }
}
