//! Scrapes to remote-write: what both agents do with what they scrape.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use delivery::{Delivery, ExemplarRef, SeriesBuffer};

use crate::LabelSet;
use crate::scraper::{ScrapeOutput, ScrapeSink};

/// Turns scrapes into remote-write series: external labels added where a series lacks them,
/// metadata sent once a minute per family (as Prometheus's metadata sender does).
pub struct RemoteWriteSink {
    send_exemplars: bool,
    delivery: Delivery,
    external_labels: Mutex<LabelSet>,
    metadata_sent: Mutex<HashMap<String, Instant>>,
}

const METADATA_INTERVAL: Duration = Duration::from_secs(60);

/// Series handed to delivery at a time, so a large target still makes requests of the
/// usual size.
const MAX_SAMPLES_PER_PUSH: usize = 2_000;

/// A series' labels with the external labels it lacks, still sorted by name.
fn merge_sorted<'a>(
    labels: &'a LabelSet,
    external: &'a LabelSet,
    out: &mut Vec<(&'a str, &'a str)>,
) {
    let mut own = labels.iter().peekable();
    let mut extra = external.iter().peekable();
    loop {
        match (own.peek(), extra.peek()) {
            (Some(a), Some(b)) if a.0 == b.0 => {
                out.push(*a);
                own.next();
                extra.next();
            }
            (Some(a), Some(b)) if a.0 < b.0 => {
                out.push(*a);
                own.next();
            }
            (Some(_), Some(b)) | (None, Some(b)) => {
                out.push(*b);
                extra.next();
            }
            (Some(a), None) => {
                out.push(*a);
                own.next();
            }
            (None, None) => break,
        }
    }
}

impl ScrapeSink for RemoteWriteSink {
    fn accept(&self, output: ScrapeOutput) {
        let external = self
            .external_labels
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let mut buffer = SeriesBuffer::new();
        let mut merged: Vec<(&str, &str)> = Vec::new();
        let mut exemplar_labels: Vec<(&str, &str)> = Vec::new();
        for sample in &output.samples {
            merged.clear();
            merge_sorted(&sample.labels, &external, &mut merged);
            let exemplar = sample
                .exemplar
                .as_ref()
                .filter(|_| self.send_exemplars)
                .map(|e| {
                    exemplar_labels.clear();
                    exemplar_labels.extend(e.labels.iter());
                    ExemplarRef {
                        labels: &exemplar_labels,
                        value: e.value,
                        timestamp_ms: e.timestamp_ms.unwrap_or(sample.timestamp_ms),
                    }
                });
            buffer.push(
                merged.iter().copied(),
                sample.value,
                sample.timestamp_ms,
                exemplar,
            );
            if buffer.samples() >= MAX_SAMPLES_PER_PUSH {
                self.delivery.push_encoded(std::mem::take(&mut buffer));
            }
        }
        self.delivery.push_encoded(buffer);
        let now = Instant::now();
        let mut sent = self
            .metadata_sent
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let mut metadata = Vec::new();
        for (family, meta) in output.metadata {
            let due = sent
                .get(&family)
                .is_none_or(|at| now.duration_since(*at) >= METADATA_INTERVAL);
            if !due {
                continue;
            }
            sent.insert(family.clone(), now);
            metadata.push(delivery::prompb::MetricMetadata {
                r#type: model::remote_write::metric_type_number(meta.kind.unwrap_or_default())
                    as i32,
                metric_family_name: family,
                help: meta.help.unwrap_or_default(),
                unit: meta.unit.unwrap_or_default(),
            });
        }
        drop(sent);
        if !metadata.is_empty() {
            self.delivery.push_metadata(metadata);
        }
    }
}

impl RemoteWriteSink {
    /// A sink into `delivery`; exemplars go only when `send_exemplars` (Prometheus sends
    /// them only when asked), `external_labels` fill in what a series lacks.
    pub fn new(delivery: Delivery, send_exemplars: bool, external_labels: LabelSet) -> Self {
        Self {
            send_exemplars,
            delivery,
            external_labels: Mutex::new(external_labels),
            metadata_sent: Mutex::new(HashMap::new()),
        }
    }

    /// Replaces the external labels (a reloaded configuration).
    pub fn set_external_labels(&self, labels: LabelSet) {
        *self
            .external_labels
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = labels;
    }
}

impl std::fmt::Debug for RemoteWriteSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteWriteSink")
            .field("send_exemplars", &self.send_exemplars)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn external_labels_fill_in_without_overriding() {
        let own = LabelSet::from_pairs([
            ("__name__".to_owned(), "up".to_owned()),
            ("cluster".to_owned(), "mine".to_owned()),
            ("job".to_owned(), "j".to_owned()),
        ]);
        let external = LabelSet::from_pairs([
            ("aaa".to_owned(), "1".to_owned()),
            ("cluster".to_owned(), "prod".to_owned()),
            ("zone".to_owned(), "z".to_owned()),
        ]);
        let mut out = Vec::new();
        merge_sorted(&own, &external, &mut out);
        assert_eq!(
            out,
            [
                ("__name__", "up"),
                ("aaa", "1"),
                ("cluster", "mine"),
                ("job", "j"),
                ("zone", "z")
            ]
        );
    }
}
