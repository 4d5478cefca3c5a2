//! Staleness for series an agent generates itself (host metrics, cluster state): each cycle
//! sends the series it has, and a stale marker for every series the previous cycle sent and
//! this one lacks (a deleted pod, an unmounted disk).
//!
//! Without a marker a vanished series keeps answering instant queries for the five-minute
//! lookback, as in Prometheus.

use std::collections::HashSet;

use crate::{Delivery, SeriesBuffer};

/// Series handed to delivery at a time, so a large cycle still makes usual-size requests.
const SAMPLES_PER_PUSH: usize = 2_000;

/// One label set, `__name__` included, sorted by name.
pub type Labels = Vec<(String, String)>;

/// Remembers the series of one source's last cycle.
#[derive(Debug, Default)]
pub struct StaleTracker {
    previous: HashSet<Labels>,
}

impl StaleTracker {
    pub fn new() -> Self {
        Self::default()
    }

    /// Sends one cycle's `series` (labels sorted here), all stamped `timestamp_ms`, and
    /// stale markers for the previous cycle's series missing from it; returns the number
    /// of samples sent (markers not counted).
    pub fn push(
        &mut self,
        delivery: &Delivery,
        series: impl IntoIterator<Item = (Labels, f64)>,
        timestamp_ms: i64,
    ) -> usize {
        let mut current = HashSet::with_capacity(self.previous.len());
        let mut buffer = SeriesBuffer::new();
        let mut sent = 0;
        for (mut labels, value) in series {
            labels.sort();
            buffer.push(
                labels.iter().map(|(n, v)| (n.as_str(), v.as_str())),
                value,
                timestamp_ms,
                None,
            );
            sent += 1;
            current.insert(labels);
            if buffer.samples() >= SAMPLES_PER_PUSH {
                delivery.push_encoded(std::mem::take(&mut buffer));
            }
        }
        for gone in self.previous.difference(&current) {
            buffer.push(
                gone.iter().map(|(n, v)| (n.as_str(), v.as_str())),
                stale_nan(),
                timestamp_ms,
                None,
            );
        }
        delivery.push_encoded(buffer);
        self.previous = current;
        sent
    }

    /// Marks every series of the last cycle stale (the source is stopping).
    pub fn stop(&mut self, delivery: &Delivery, timestamp_ms: i64) {
        let mut buffer = SeriesBuffer::new();
        for gone in self.previous.drain() {
            buffer.push(
                gone.iter().map(|(n, v)| (n.as_str(), v.as_str())),
                stale_nan(),
                timestamp_ms,
                None,
            );
        }
        delivery.push_encoded(buffer);
    }

    /// How many series the last cycle sent.
    pub fn len(&self) -> usize {
        self.previous.len()
    }

    pub fn is_empty(&self) -> bool {
        self.previous.is_empty()
    }
}

/// Prometheus's stale marker, a NaN with a payload Prometheus recognises (delivery does
/// not depend on `model`, so the bits are spelled here).
fn stale_nan() -> f64 {
    f64::from_bits(0x7ff0_0000_0000_0002)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::RemoteWriteConfig;
    use axum::body::Bytes;
    use prost::Message;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    type Received = Arc<Mutex<Vec<(Labels, u64)>>>;

    async fn receiver() -> (String, Received) {
        let received: Received = Arc::default();
        let store = received.clone();
        let app = axum::Router::new().route(
            "/api/v1/write",
            axum::routing::post(move |body: Bytes| {
                let store = store.clone();
                async move {
                    let raw = snap::raw::Decoder::new()
                        .decompress_vec(&body)
                        .expect("snappy");
                    let request = prompb::WriteRequest::decode(&raw[..]).expect("protobuf");
                    let mut store = store.lock().expect("lock");
                    for series in request.timeseries {
                        let labels: Labels = series
                            .labels
                            .iter()
                            .map(|l| {
                                (
                                    String::from_utf8_lossy(&l.name).into_owned(),
                                    String::from_utf8_lossy(&l.value).into_owned(),
                                )
                            })
                            .collect();
                        for sample in series.samples {
                            store.push((labels.clone(), sample.value.to_bits()));
                        }
                    }
                    axum::http::StatusCode::NO_CONTENT
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!(
            "http://{}/api/v1/write",
            listener.local_addr().expect("addr")
        );
        tokio::spawn(async move { axum::serve(listener, app).await });
        (url, received)
    }

    fn series(name: &str, pod: &str) -> Labels {
        // Deliberately unsorted: the tracker sorts.
        vec![
            ("pod".to_owned(), pod.to_owned()),
            ("__name__".to_owned(), name.to_owned()),
        ]
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn vanished_series_get_one_stale_marker_and_stop_marks_the_rest() {
        let (url, received) = receiver().await;
        let mut config = RemoteWriteConfig::new(url);
        config.flush_interval = Duration::from_millis(20);
        let (delivery, task) = Delivery::start(config).expect("delivery");
        let mut tracker = StaleTracker::new();
        let sent = tracker.push(
            &delivery,
            [(series("up", "a"), 1.0), (series("up", "b"), 2.0)],
            1_000,
        );
        assert_eq!(sent, 2);
        assert_eq!(
            tracker.push(&delivery, [(series("up", "a"), 3.0)], 2_000),
            1
        );
        assert_eq!(tracker.len(), 1);
        tracker.stop(&delivery, 3_000);
        assert!(tracker.is_empty());
        delivery.close();
        tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .expect("delivery drains")
            .expect("delivery task");
        let received = received.lock().expect("lock").clone();
        let sorted = |pod: &str| {
            vec![
                ("__name__".to_owned(), "up".to_owned()),
                ("pod".to_owned(), pod.to_owned()),
            ]
        };
        let stale = stale_nan().to_bits();
        let of = |pod: &str| -> Vec<u64> {
            received
                .iter()
                .filter(|(l, _)| *l == sorted(pod))
                .map(|(_, v)| *v)
                .collect()
        };
        assert_eq!(of("a"), [1.0f64.to_bits(), 3.0f64.to_bits(), stale]);
        assert_eq!(of("b"), [2.0f64.to_bits(), stale]);
    }
}
