//! The embedded bus's own metrics, exported on every role's `/metrics`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct TopicLabels {
    pub topic: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct PartitionLabels {
    pub topic: String,
    pub partition: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct GroupPartitionLabels {
    pub group: String,
    pub topic: String,
    pub partition: String,
}

/// Handles to every bus metric; cloning shares the underlying values.
#[derive(Clone, Debug)]
pub(crate) struct BusMetrics {
    pub produced_records: Family<TopicLabels, Counter>,
    pub produced_bytes: Family<TopicLabels, Counter>,
    pub fsync_seconds: Histogram,
    pub requests_per_fsync: Histogram,
    pub log_bytes: Family<PartitionLabels, Gauge>,
    pub segments: Family<PartitionLabels, Gauge>,
    pub high_watermark: Family<PartitionLabels, Gauge>,
    pub log_start: Family<PartitionLabels, Gauge>,
    pub retention_deleted_segments: Family<TopicLabels, Counter>,
    pub recovery_truncated_bytes: Family<TopicLabels, Counter>,
    pub committed_offset: Family<GroupPartitionLabels, Gauge>,
    pub consumer_offset_resets: Family<GroupPartitionLabels, Counter>,
}

impl Default for BusMetrics {
    fn default() -> Self {
        Self {
            produced_records: Family::default(),
            produced_bytes: Family::default(),
            fsync_seconds: Histogram::new(exponential_buckets(0.000_05, 2.0, 16)),
            requests_per_fsync: Histogram::new(exponential_buckets(1.0, 2.0, 12)),
            log_bytes: Family::default(),
            segments: Family::default(),
            high_watermark: Family::default(),
            log_start: Family::default(),
            retention_deleted_segments: Family::default(),
            recovery_truncated_bytes: Family::default(),
            committed_offset: Family::default(),
            consumer_offset_resets: Family::default(),
        }
    }
}

impl BusMetrics {
    pub fn register(&self, registry: &mut Registry) {
        let registry = registry.sub_registry_with_prefix("meerkat_bus");
        registry.register(
            "produced_records",
            "Records appended durably",
            self.produced_records.clone(),
        );
        registry.register_with_unit(
            "produced",
            "Bytes of record batches appended durably",
            Unit::Bytes,
            self.produced_bytes.clone(),
        );
        registry.register_with_unit(
            "fsync_duration",
            "Time to make one group commit durable",
            Unit::Seconds,
            self.fsync_seconds.clone(),
        );
        registry.register(
            "requests_per_fsync",
            "Produce requests made durable by one fsync (group commit)",
            self.requests_per_fsync.clone(),
        );
        registry.register_with_unit(
            "log",
            "Bytes held by a partition's segments",
            Unit::Bytes,
            self.log_bytes.clone(),
        );
        registry.register(
            "segments",
            "Segment files of a partition",
            self.segments.clone(),
        );
        registry.register(
            "high_watermark",
            "Next offset to be written in a partition",
            self.high_watermark.clone(),
        );
        registry.register(
            "log_start_offset",
            "Oldest offset retained in a partition",
            self.log_start.clone(),
        );
        registry.register(
            "retention_deleted_segments",
            "Segments removed by size or age retention",
            self.retention_deleted_segments.clone(),
        );
        registry.register_with_unit(
            "recovery_truncated",
            "Bytes cut from torn segment tails at start-up",
            Unit::Bytes,
            self.recovery_truncated_bytes.clone(),
        );
        registry.register(
            "committed_offset",
            "Offset a consumer group committed in a partition",
            self.committed_offset.clone(),
        );
        registry.register(
            "consumer_offset_resets",
            "Times a consumer's position had been removed by retention and was moved to the log start",
            self.consumer_offset_resets.clone(),
        );
    }
}

impl PartitionLabels {
    pub fn new(topic: &str, partition: u32) -> Self {
        Self {
            topic: topic.to_owned(),
            partition: partition.to_string(),
        }
    }
}

impl TopicLabels {
    pub fn new(topic: &str) -> Self {
        Self {
            topic: topic.to_owned(),
        }
    }
}
