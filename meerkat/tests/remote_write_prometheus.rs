//! A real Prometheus 2.42 scrapes a real node_exporter 1.5 and remote-writes to
//! `meerkat serve`; afterwards every series and every sample Prometheus holds must be on
//! Meerkat's bus, value for value, with the metric metadata; readable through
//! `/api/v1/sql`; PromQL queries on both give the same answers, and `/api/v1/metadata`
//! the same metadata.
//!
//! Needs `prometheus` and `prometheus-node-exporter`, which `./scripts/test` installs.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use bus::Bus;
use bus::embedded::{EmbeddedBus, EmbeddedBusConfig};
use common::{NodeExporter, Prometheus, Server, get, sample_value, url_encode};
use model::{Envelope, MetricType};

type LabelMap = BTreeMap<String, String>;

/// Everything on the bus's metrics topic: samples by series, and metadata types by family.
async fn bus_contents(
    dir: &std::path::Path,
) -> (
    HashMap<LabelMap, HashMap<i64, f64>>,
    HashMap<String, MetricType>,
) {
    let bus = EmbeddedBus::open(dir, EmbeddedBusConfig::default()).unwrap();
    let mut series: HashMap<LabelMap, HashMap<i64, f64>> = HashMap::new();
    let mut metadata = HashMap::new();
    for partition in 0..bus.partition_count(bus::topics::METRICS).await.unwrap() {
        let end = bus
            .watermarks(bus::topics::METRICS, partition)
            .await
            .unwrap()
            .high_watermark;
        let mut next = 0;
        while next < end {
            let records = bus
                .fetch(bus::topics::METRICS, partition, next, 1 << 20)
                .await
                .unwrap();
            next = records.last().unwrap().offset + 1;
            for record in records {
                let envelope = Envelope::decode(&record.value).unwrap();
                assert_eq!(envelope.tenant.as_str(), "default");
                let Some(batch) = envelope.payload.into_metric_batch().unwrap() else {
                    panic!("a non-metrics payload on the metrics topic")
                };
                for s in batch.series {
                    let labels: LabelMap = s
                        .labels
                        .iter()
                        .map(|l| (l.name.to_owned(), l.value.to_owned()))
                        .collect();
                    let samples = series.entry(labels).or_default();
                    for sample in s.samples {
                        samples.insert(sample.timestamp_ms, sample.value);
                    }
                }
                for m in batch.metadata {
                    metadata.insert(m.metric_family_name, m.metric_type);
                }
            }
        }
    }
    (series, metadata)
}

fn gateway_received_samples(meerkat: &Server) -> f64 {
    let metrics = get(meerkat.addr, "/metrics").unwrap().body;
    metrics
        .lines()
        .filter(|l| {
            l.starts_with("meerkat_gateway_received_total{")
                && l.contains("protocol=\"remote_write\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[test]
fn every_series_and_sample_prometheus_remote_writes_is_on_the_bus() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut meerkat = Server::start(
        dir.path(),
        &[
            "--http-listen",
            "127.0.0.1:0",
            "--data-dir",
            data.to_str().unwrap(),
        ],
        &[],
    );
    let exporter = NodeExporter::start();
    let prometheus_dir = dir.path().join("prometheus");
    std::fs::create_dir_all(&prometheus_dir).unwrap();
    let prometheus = Prometheus::start(
        &prometheus_dir,
        &format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n\
             scrape_configs:\n  - job_name: node\n    static_configs:\n      - targets: ['{exporter}']\n\
             remote_write:\n  - url: http://{meerkat}/api/v1/write\n    queue_config:\n      batch_send_deadline: 1s\n      max_samples_per_send: 500\n    metadata_config:\n      send_interval: 1s\n",
            exporter = exporter.addr,
            meerkat = meerkat.addr,
        ),
    );

    // Several scrapes, and remote-write under way.
    prometheus.wait_for("count_over_time(up{job=\"node\"}[1m])", |n| n >= 4.0);
    let deadline = Instant::now() + Duration::from_secs(60);
    while gateway_received_samples(&meerkat) < 1000.0 {
        assert!(
            Instant::now() < deadline,
            "Meerkat received too few samples"
        );
        std::thread::sleep(Duration::from_millis(250));
    }

    // What Prometheus holds now: every node series with its raw samples.
    let raw = prometheus.query("{job=\"node\"}[10m]");
    assert!(
        raw.len() > 200,
        "node_exporter exposes hundreds of series, got {}",
        raw.len()
    );
    let mut expected: HashMap<LabelMap, Vec<(i64, String)>> = HashMap::new();
    for series in &raw {
        let labels: LabelMap = serde_json::from_value(series["metric"].clone()).unwrap();
        let samples = series["values"]
            .as_array()
            .unwrap()
            .iter()
            .map(|pair| {
                let ts = (pair[0].as_f64().unwrap() * 1000.0).round() as i64;
                (ts, pair[1].as_str().unwrap().to_owned())
            })
            .collect();
        expected.insert(labels, samples);
    }
    let names = prometheus.api(&format!(
        "/api/v1/label/__name__/values?match[]={}",
        url_encode("{job=\"node\"}")
    ));
    assert!(names["data"].as_array().unwrap().len() > 50);

    // `serve` answers SQL over what it stored: every node series Prometheus holds, with
    // samples, once ingest has caught up.
    let sql = format!(
        "/api/v1/sql?query={}",
        url_encode(
            "SELECT count(DISTINCT x.series_id) FROM samples x JOIN series s USING (series_id) \
             WHERE s.labels LIKE '%\"job\":\"node\"%'"
        )
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let answer = get(meerkat.addr, &sql).unwrap();
        assert_eq!(answer.status, 200, "{}", answer.body);
        let body: serde_json::Value = serde_json::from_str(&answer.body).unwrap();
        let stored = body["data"]["rows"][0][0].as_u64().unwrap() as usize;
        if stored >= raw.len() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "SQL finds {stored} node series, Prometheus has {}",
            raw.len()
        );
        std::thread::sleep(Duration::from_millis(250));
    }

    // PromQL on `serve` answers as Prometheus does over the same data: a few queries at a
    // time both hold every sample of (2 s before the newest one Prometheus returned).
    let newest_ms = expected
        .values()
        .flat_map(|samples| samples.iter().map(|(ts, _)| *ts))
        .max()
        .unwrap();
    let at = format!("{:.3}", (newest_ms - 2_000) as f64 / 1000.0);
    let queries = [
        "count({job=\"node\"})",
        "sum by (mode) (node_cpu_seconds_total)",
        "rate(node_cpu_seconds_total{mode=\"idle\"}[30s])",
        "max_over_time(node_load1[1m]) > bool 0",
    ];
    for promql in queries {
        let path = format!("/api/v1/query?query={}&time={at}", url_encode(promql));
        let want = prometheus.api(&path)["data"]["result"].clone();
        let values = |result: &serde_json::Value| -> BTreeMap<String, f64> {
            result
                .as_array()
                .unwrap()
                .iter()
                .map(|r| (r["metric"].to_string(), sample_value(r)))
                .collect()
        };
        let expected_values = values(&want);
        assert!(
            !expected_values.is_empty(),
            "{promql}: Prometheus has no result"
        );
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let answer = get(meerkat.addr, &path).unwrap();
            assert_eq!(answer.status, 200, "{promql}: {}", answer.body);
            let body: serde_json::Value = serde_json::from_str(&answer.body).unwrap();
            let got = values(&body["data"]["result"]);
            let same = got.len() == expected_values.len()
                && got
                    .iter()
                    .zip(&expected_values)
                    .all(|((gk, gv), (ek, ev))| {
                        gk == ek && ((gv - ev).abs() <= 1e-9 * ev.abs().max(1.0))
                    });
            if same {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{promql} at {at}: Meerkat {got:?}, Prometheus {expected_values:?}"
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    // `/api/v1/metadata` on `serve` gives what Prometheus gives: the scraped families'
    // type, help and unit, which Prometheus remote-writes every second here.
    let entries = |body: &serde_json::Value| -> BTreeMap<String, String> {
        body["data"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(family, list)| {
                let mut list: Vec<String> = list
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|m| m.to_string())
                    .collect();
                list.sort();
                (family.clone(), list.join(","))
            })
            .collect()
    };
    let want = entries(&prometheus.api("/api/v1/metadata"));
    assert!(want.len() > 50, "node_exporter has many families: {want:?}");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let answer = get(meerkat.addr, "/api/v1/metadata").unwrap();
        assert_eq!(answer.status, 200, "{}", answer.body);
        let got = entries(&serde_json::from_str(&answer.body).unwrap());
        if got == want {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "metadata differs: only in Meerkat {:?}, only in Prometheus {:?}",
            got.iter()
                .filter(|e| !want.contains_key(e.0))
                .take(5)
                .collect::<Vec<_>>(),
            want.iter()
                .filter(|e| got.get(e.0) != Some(e.1))
                .take(5)
                .collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(500));
    }

    // Stopping Prometheus flushes its remote-write queue; then Meerkat stops cleanly.
    prometheus.stop();
    meerkat.signal("TERM");
    assert_eq!(meerkat.wait().code(), Some(0), "{:?}", meerkat.seen);

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (on_bus, metadata) = runtime.block_on(bus_contents(&data.join("bus")));
    let mut checked_samples = 0;
    for (labels, samples) in &expected {
        let stored = on_bus.get(labels).unwrap_or_else(|| {
            panic!("series {labels:?} is in Prometheus but not on Meerkat's bus")
        });
        for (ts, text) in samples {
            let value = stored
                .get(ts)
                .unwrap_or_else(|| panic!("sample at {ts} of {labels:?} is missing"));
            let expected_value: f64 = text.parse().unwrap();
            assert!(
                value.to_bits() == expected_value.to_bits()
                    || (value.is_nan() && expected_value.is_nan()),
                "{labels:?} at {ts}: Meerkat has {value}, Prometheus {text}"
            );
            checked_samples += 1;
        }
    }
    assert!(
        checked_samples > 1000,
        "only {checked_samples} samples compared"
    );
    assert_eq!(
        metadata.get("node_cpu_seconds_total"),
        Some(&MetricType::Counter),
        "{metadata:?}"
    );
    assert_eq!(metadata.get("node_load1"), Some(&MetricType::Gauge));
}
