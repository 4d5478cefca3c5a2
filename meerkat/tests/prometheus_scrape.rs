//! A real Prometheus 2.42 scrapes `meerkat serve`'s `/metrics`: the format Meerkat
//! exports about itself must be one the ecosystem reads without complaint.
//!
//! Needs the `prometheus` binary, which `./scripts/test` installs (Debian package).

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use common::{Prometheus, Server, sample_value};

#[test]
fn prometheus_scrapes_meerkats_own_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let mut meerkat = Server::start(dir.path(), &["--http-listen", "127.0.0.1:0"], &[]);
    let prometheus = Prometheus::start(
        dir.path(),
        &format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n  - job_name: meerkat\n    static_configs:\n      - targets: ['{}']\n",
            meerkat.addr
        ),
    );

    prometheus.wait_for("up{job=\"meerkat\"}", |up| up == 1.0);
    // The series Meerkat exports arrive with their labels intact.
    let partitions = prometheus.query("count(meerkat_bus_segments{job=\"meerkat\"})");
    assert_eq!(
        partitions.first().map(sample_value),
        Some(16.0),
        "4 topics x 4 partitions: {partitions:?}"
    );
    let build = prometheus.query("meerkat_build_info");
    assert_eq!(build.len(), 1, "{build:?}");
    assert_eq!(build[0]["metric"]["version"], env!("CARGO_PKG_VERSION"));
    let rss = prometheus.query("process_resident_memory_bytes{job=\"meerkat\"}");
    assert!(
        rss.first().map(sample_value).is_some_and(|v| v > 1e6),
        "{rss:?}"
    );
    // Counters arrive as counters: rate() over Meerkat's own request counter (one scrape a
    // second) comes out near 1 per second.
    let rate = prometheus.wait_for(
        "sum(rate(meerkat_http_requests_total{handler=\"/metrics\"}[5s]))",
        |rate| rate > 0.0,
    );
    assert!((0.3..3.0).contains(&rate), "scrape rate {rate}/s");
    let samples_scraped = prometheus.query("scrape_samples_scraped{job=\"meerkat\"}");
    assert!(
        samples_scraped
            .first()
            .map(sample_value)
            .is_some_and(|v| v > 100.0),
        "{samples_scraped:?}"
    );

    meerkat.signal("TERM");
    assert_eq!(meerkat.wait().code(), Some(0));
}
