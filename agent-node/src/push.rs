//! Collected families to remote-write: a cycle's samples, stale markers for the series the
//! previous cycle had and this one lacks (a container that stopped, an unmounted disk), and
//! the families' metadata once a minute.
//!
//! Staleness matters for the same reason as in Prometheus: without a marker, a series that
//! vanished keeps answering instant queries for the five-minute lookback.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use delivery::Delivery;
use delivery::stale::StaleTracker;

use crate::metrics::Families;

const METADATA_INTERVAL: Duration = Duration::from_secs(60);

/// Pushes cycles of one source (host, containers): the samples and stale markers through
/// delivery's [`StaleTracker`], the families' metadata once a minute.
#[derive(Debug, Default)]
pub struct Pusher {
    tracker: StaleTracker,
    metadata_sent: HashMap<String, Instant>,
}

impl Pusher {
    pub fn new() -> Self {
        Self::default()
    }

    /// Sends `families` with `extra` labels (`job`, `instance`) added where a sample lacks
    /// them, all stamped `timestamp_ms`; returns the number of samples sent.
    pub fn push(
        &mut self,
        delivery: &Delivery,
        families: &Families,
        extra: &[(String, String)],
        timestamp_ms: i64,
    ) -> usize {
        let series = families.iter().flat_map(|family| {
            family.samples.iter().map(move |(labels, value)| {
                let mut series: Vec<(String, String)> = Vec::with_capacity(labels.len() + 3);
                series.push((model::METRIC_NAME_LABEL.to_owned(), family.name.clone()));
                series.extend(labels.iter().map(|(n, v)| (n.to_owned(), v.to_owned())));
                for (name, extra_value) in extra {
                    if !labels.contains(name) {
                        series.push((name.clone(), extra_value.clone()));
                    }
                }
                (series, *value)
            })
        });
        let sent = self.tracker.push(delivery, series, timestamp_ms);
        self.push_metadata(delivery, families);
        sent
    }

    /// Marks every series of the last cycle stale (the agent is stopping).
    pub fn stop(&mut self, delivery: &Delivery, timestamp_ms: i64) {
        self.tracker.stop(delivery, timestamp_ms);
    }

    fn push_metadata(&mut self, delivery: &Delivery, families: &Families) {
        let now = Instant::now();
        let mut metadata = Vec::new();
        for family in families.iter() {
            let due = self
                .metadata_sent
                .get(&family.name)
                .is_none_or(|at| now.duration_since(*at) >= METADATA_INTERVAL);
            if !due {
                continue;
            }
            self.metadata_sent.insert(family.name.clone(), now);
            metadata.push(delivery::prompb::MetricMetadata {
                r#type: model::remote_write::metric_type_number(family.kind) as i32,
                metric_family_name: family.name.clone(),
                help: family.help.clone(),
                unit: String::new(),
            });
        }
        if !metadata.is_empty() {
            delivery.push_metadata(metadata);
        }
    }
}
