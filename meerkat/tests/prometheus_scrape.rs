//! A real Prometheus 2.42 scrapes `meerkat serve`'s `/metrics`: the format Meerkat
//! exports about itself must be one the ecosystem reads without complaint.
//!
//! Needs the `prometheus` binary, which `./scripts/test` installs (Debian package).

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::net::{SocketAddr, TcpListener};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Server, get};

/// A Prometheus server started by this test, stopped by its PID when dropped.
struct Prometheus {
    child: Child,
    addr: SocketAddr,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn start_prometheus(dir: &std::path::Path, target: SocketAddr) -> Prometheus {
    let config = dir.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n  - job_name: meerkat\n    static_configs:\n      - targets: ['{target}']\n"
        ),
    )
    .unwrap();
    let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let child = Command::new("prometheus")
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("tsdb").display()
        ))
        .arg(format!("--web.listen-address={addr}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start prometheus ({e}); ./scripts/test installs it"));
    let prometheus = Prometheus { child, addr };
    let deadline = Instant::now() + Duration::from_secs(30);
    while get(addr, "/-/ready").map(|r| r.status) != Some(200) {
        assert!(Instant::now() < deadline, "prometheus never became ready");
        std::thread::sleep(Duration::from_millis(100));
    }
    prometheus
}

/// Runs an instant query and returns the result vector.
fn query(prometheus: &Prometheus, promql: &str) -> Vec<serde_json::Value> {
    let encoded: String = promql
        .bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' | b'.' | b'-' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect();
    let response = get(prometheus.addr, &format!("/api/v1/query?query={encoded}")).unwrap();
    assert_eq!(response.status, 200, "{}", response.body);
    // The body may be chunked; the JSON object is between the first '{' and the last '}'.
    let body = &response.body[response.body.find('{').unwrap()..=response.body.rfind('}').unwrap()];
    let json: serde_json::Value = serde_json::from_str(body).unwrap();
    json["data"]["result"].as_array().unwrap().clone()
}

/// Polls `promql` until its first result satisfies `accept` (scrapes arrive once a second).
fn wait_for(prometheus: &Prometheus, promql: &str, accept: impl Fn(f64) -> bool) -> f64 {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let result = query(prometheus, promql);
        if let Some(v) = result.first().map(value).filter(|v| accept(*v)) {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "{promql} never matched: {result:?}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn value(sample: &serde_json::Value) -> f64 {
    sample["value"][1].as_str().unwrap().parse().unwrap()
}

#[test]
fn prometheus_scrapes_meerkats_own_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let mut meerkat = Server::start(dir.path(), &["--http-listen", "127.0.0.1:0"], &[]);
    let prometheus = start_prometheus(dir.path(), meerkat.addr);

    wait_for(&prometheus, "up{job=\"meerkat\"}", |up| up == 1.0);
    // The series Meerkat exports arrive with their labels intact.
    let partitions = query(&prometheus, "count(meerkat_bus_segments{job=\"meerkat\"})");
    assert_eq!(
        partitions.first().map(value),
        Some(16.0),
        "4 topics x 4 partitions: {partitions:?}"
    );
    let build = query(&prometheus, "meerkat_build_info");
    assert_eq!(build.len(), 1, "{build:?}");
    assert_eq!(build[0]["metric"]["version"], env!("CARGO_PKG_VERSION"));
    let rss = query(
        &prometheus,
        "process_resident_memory_bytes{job=\"meerkat\"}",
    );
    assert!(rss.first().map(value).is_some_and(|v| v > 1e6), "{rss:?}");
    // Counters arrive as counters: rate() over Meerkat's own request counter (one scrape a
    // second) comes out near 1 per second.
    let rate = wait_for(
        &prometheus,
        "sum(rate(meerkat_http_requests_total{handler=\"/metrics\"}[5s]))",
        |rate| rate > 0.0,
    );
    assert!((0.3..3.0).contains(&rate), "scrape rate {rate}/s");
    let samples_scraped = query(&prometheus, "scrape_samples_scraped{job=\"meerkat\"}");
    assert!(
        samples_scraped
            .first()
            .map(value)
            .is_some_and(|v| v > 100.0),
        "{samples_scraped:?}"
    );

    meerkat.signal("TERM");
    assert_eq!(meerkat.wait().code(), Some(0));
}
