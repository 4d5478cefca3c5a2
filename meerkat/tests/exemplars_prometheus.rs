//! Exemplars end to end with a real Prometheus 2.42: it scrapes an OpenMetrics histogram
//! whose buckets carry trace exemplars (exemplar storage on), remote-writes them to
//! `meerkat serve` (`send_exemplars`), and `/api/v1/query_exemplars` answers the same on
//! both for the same query and time range.
//!
//! Needs `prometheus`, which `./scripts/test` installs.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{Prometheus, Server, get, url_encode};
use serde_json::Value;

/// Serves an OpenMetrics histogram on a free port; each scrape observes one more request,
/// with a new trace id as the exemplar of the bucket it fell in.
fn exporter(stop: Arc<AtomicBool>) -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    listener.set_nonblocking(true).unwrap();
    std::thread::spawn(move || {
        let scrapes = AtomicU64::new(0);
        while !stop.load(Ordering::Relaxed) {
            let Ok((mut stream, _)) = listener.accept() else {
                std::thread::sleep(Duration::from_millis(20));
                continue;
            };
            stream.set_nonblocking(false).unwrap();
            let mut request = [0u8; 4096];
            let _ = stream.read(&mut request);
            let n = scrapes.fetch_add(1, Ordering::Relaxed) + 1;
            let body = format!(
                "# TYPE app_latency_seconds histogram\n\
                 # HELP app_latency_seconds Request latency.\n\
                 app_latency_seconds_bucket{{le=\"0.1\"}} {n} # {{trace_id=\"fast{n:04}\"}} 0.0{n}\n\
                 app_latency_seconds_bucket{{le=\"+Inf\"}} {twice} # {{trace_id=\"slow{n:04}\"}} {n}.5\n\
                 app_latency_seconds_sum {sum}\n\
                 app_latency_seconds_count {twice}\n\
                 # EOF\n",
                twice = 2 * n,
                sum = 3 * n,
            );
            let _ = write!(
                stream,
                "HTTP/1.1 200 OK\r\nContent-Type: application/openmetrics-text; version=1.0.0; \
                 charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    addr
}

/// Series → exemplars (labels, value, timestamp) of a `query_exemplars` answer.
fn exemplars(body: &Value) -> BTreeMap<String, Vec<String>> {
    body["data"]
        .as_array()
        .unwrap_or_else(|| panic!("{body}"))
        .iter()
        .map(|series| {
            let mut list: Vec<String> = series["exemplars"]
                .as_array()
                .unwrap()
                .iter()
                .map(Value::to_string)
                .collect();
            list.sort();
            (series["seriesLabels"].to_string(), list)
        })
        .collect()
}

fn json(addr: std::net::SocketAddr, path: &str) -> Value {
    let answer = get(addr, path).unwrap();
    assert_eq!(answer.status, 200, "{path}: {}", answer.body);
    let body = &answer.body[answer.body.find('{').unwrap()..=answer.body.rfind('}').unwrap()];
    serde_json::from_str(body).unwrap()
}

#[test]
fn exemplars_prometheus_remote_writes_answer_as_prometheus_does() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let meerkat = Server::start(
        dir.path(),
        &[
            "--http-listen",
            "127.0.0.1:0",
            "--data-dir",
            data.to_str().unwrap(),
        ],
        &[],
    );
    let stop = Arc::new(AtomicBool::new(false));
    let target = exporter(stop.clone());
    let prometheus_dir = dir.path().join("prometheus");
    std::fs::create_dir_all(&prometheus_dir).unwrap();
    let prometheus = Prometheus::start_with(
        &prometheus_dir,
        &format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n\
             scrape_configs:\n  - job_name: app\n    static_configs:\n      - targets: ['{target}']\n\
             remote_write:\n  - url: http://{meerkat}/api/v1/write\n    send_exemplars: true\n    queue_config:\n      batch_send_deadline: 1s\n",
            meerkat = meerkat.addr,
        ),
        &["--enable-feature=exemplar-storage"],
    );

    let started = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    // Several scrapes with exemplars in Prometheus.
    let query =
        url_encode(r#"histogram_quantile(0.9, rate(app_latency_seconds_bucket{job="app"}[1m]))"#);
    let deadline = Instant::now() + Duration::from_secs(60);
    let (want, path) = loop {
        let end = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs()
            - 1;
        let path = format!(
            "/api/v1/query_exemplars?query={query}&start={}&end={end}",
            started - 60
        );
        let want = exemplars(&json(prometheus.addr, &path));
        if want.len() == 2 && want.values().all(|list| list.len() >= 4) {
            break (want, path);
        }
        assert!(
            Instant::now() < deadline,
            "Prometheus has too few exemplars: {want:?}"
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    // The same window on Meerkat, once remote-write has delivered it.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let got = exemplars(&json(meerkat.addr, &path));
        if got == want {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "Meerkat {got:#?}\nPrometheus {want:#?}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    stop.store(true, Ordering::Relaxed);
}
