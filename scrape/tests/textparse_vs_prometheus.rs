//! The exposition pages of Prometheus 2.42's own parser tests, scraped by a live Prometheus
//! 2.42 and read by Meerkat's scrape engine: the same series, labels and values come out.
//!
//! A local HTTP server serves each page (as the text format, and once more as OpenMetrics);
//! Prometheus scrapes them every second; then every series Prometheus stored for a job is
//! compared with what `read_page` makes of the same bytes with the same target labels.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use scrape::LabelSet;
use scrape::exposition::Format;
use scrape::page::{PageOptions, read_page};
use test_peers::PrometheusServer;

fn peer_page(name: &str) -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/peer-tests/prometheus-2.42-textparse")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The pages, by path: body and Content-Type.
fn pages() -> BTreeMap<&'static str, (Vec<u8>, &'static str)> {
    const TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";
    const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
    BTreeMap::from([
        ("/full", (peer_page("promtestdata.txt"), TEXT)),
        ("/nometa", (peer_page("promtestdata.nometa.txt"), TEXT)),
        ("/openmetrics", (peer_page("promtestdata.txt"), OPENMETRICS)),
        ("/edge", (edge_text_page(), TEXT)),
        ("/edge_openmetrics", (edge_openmetrics_page(), OPENMETRICS)),
        ("/broken", (b"good 1\nbad{ 2\nalso_good 3\n".to_vec(), TEXT)),
    ])
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// Corners of the text format Prometheus's pages do not reach: escapes, a clashing `job`,
/// empty values, blanks and tabs, a trailing comma, ±Inf/NaN, an explicit timestamp.
fn edge_text_page() -> Vec<u8> {
    let at = now_ms() - 1000;
    format!(
        "# HELP edge_total A counter with \"quotes\" and \\\\ a backslash.\n\
         # TYPE edge_total counter\n\
         edge_total{{job=\"exported\",path=\"/a\\\"b\\\\c\\nd\\te\",empty=\"\"}} 1.5e3\n\
         edge_total  {{  path = \"/x\" , }} +Inf\n\
         # a comment\n\
         \n\
         edge_nan NaN\n\
         edge_neg -0.0000001\n\
         edge_ts{{at=\"given\"}} 42 {at}\n\
         edge_tabs\t{{a=\"1\"}}\t7\t\n\
         edge_exported{{exported_instance=\"x\",instance=\"y\"}} 1\n\
         edge_last 1"
    )
    .into_bytes()
}

/// OpenMetrics with second timestamps, exemplars and units.
fn edge_openmetrics_page() -> Vec<u8> {
    let seconds = now_ms() / 1000 - 1;
    format!(
        "# TYPE om_requests counter\n\
         # UNIT om_requests_seconds seconds\n\
         om_requests_total{{code=\"200\"}} 3 {seconds}.25 # {{trace_id=\"abc\"}} 1 {seconds}\n\
         om_requests_created{{code=\"200\"}} {seconds}\n\
         # TYPE om_latency histogram\n\
         om_latency_bucket{{le=\"0.5\"}} 2 # {{trace_id=\"def\"}} 0.25\n\
         om_latency_bucket{{le=\"+Inf\"}} 5\n\
         om_latency_count 5\n\
         om_latency_sum 4.5\n\
         # EOF\n"
    )
    .into_bytes()
}

/// Serves `pages` on a free port from a background thread, one request per connection.
fn serve(pages: BTreeMap<&'static str, (Vec<u8>, &'static str)>) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut request_line = String::new();
            if reader.read_line(&mut request_line).is_err() {
                continue;
            }
            let mut header = String::new();
            while reader.read_line(&mut header).is_ok_and(|n| n > 2) {
                header.clear();
            }
            let path = request_line.split(' ').nth(1).unwrap_or("/");
            let response = match pages.get(path) {
                Some((body, content_type)) => {
                    let mut response = format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                        body.len()
                    )
                    .into_bytes();
                    response.extend_from_slice(body);
                    response
                }
                None => b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                    .to_vec(),
            };
            let _ = stream.write_all(&response);
        }
    });
    port
}

/// An instant query's result: label set → value.
fn query(prometheus: &PrometheusServer, promql: &str) -> BTreeMap<Vec<(String, String)>, f64> {
    let encoded: String = promql
        .bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect();
    let (status, body) = prometheus
        .get(&format!("/api/v1/query?query={encoded}"))
        .expect("prometheus answers");
    assert_eq!(status, 200, "{body}");
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    json["data"]["result"]
        .as_array()
        .unwrap()
        .iter()
        .map(|sample| {
            let labels = sample["metric"]
                .as_object()
                .unwrap()
                .iter()
                .map(|(n, v)| (n.clone(), v.as_str().unwrap().to_owned()))
                .collect::<BTreeMap<_, _>>()
                .into_iter()
                .collect();
            let value: f64 = sample["value"][1].as_str().unwrap().parse().unwrap();
            (labels, value)
        })
        .collect()
}

const REPORT_SERIES: [&str; 5] = [
    "up",
    "scrape_duration_seconds",
    "scrape_samples_scraped",
    "scrape_samples_post_metric_relabeling",
    "scrape_series_added",
];

#[test]
fn prometheus_exposition_pages_parse_to_what_prometheus_scrapes() {
    let pages = pages();
    let port = serve(pages.clone());
    let jobs: Vec<(&str, &str)> = vec![
        ("full", "/full"),
        ("nometa", "/nometa"),
        ("openmetrics", "/openmetrics"),
        ("edge", "/edge"),
        ("edge_openmetrics", "/edge_openmetrics"),
        ("broken", "/broken"),
    ];
    let mut config =
        String::from("global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n");
    for (job, path) in &jobs {
        config.push_str(&format!(
            "  - job_name: {job}\n    metrics_path: {path}\n    static_configs:\n      - targets: ['127.0.0.1:{port}']\n"
        ));
    }
    let prometheus = PrometheusServer::start(&config, &[]);

    // Wait for two scrapes of every job, so the first one's series are all in the head.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let scraped = query(&prometheus, "count_over_time(up[1m]) >= 2");
        if scraped.len() == jobs.len() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "prometheus scraped only {scraped:?}:\n{}",
            prometheus.output()
        );
        std::thread::sleep(Duration::from_millis(250));
    }

    let instance = format!("127.0.0.1:{port}");
    let mut compared = 0;
    for (job, path) in &jobs {
        let (body, content_type) = &pages[path];
        let target = LabelSet::from_pairs([
            ("instance".to_owned(), instance.clone()),
            ("job".to_owned(), (*job).to_owned()),
        ]);
        let options = PageOptions {
            honor_timestamps: true,
            ..PageOptions::default()
        };
        let ours = read_page(
            body,
            Format::from_content_type(Some(content_type)),
            &target,
            &options,
            0,
        );
        let up = query(&prometheus, &format!("up{{job=\"{job}\"}}"));
        let prometheus_up = up.values().next().copied().expect("an up series");
        let mut theirs = query(&prometheus, &format!("{{job=\"{job}\"}}"));
        theirs.retain(|labels, _| {
            let name = labels
                .iter()
                .find(|(n, _)| n == "__name__")
                .map(|(_, v)| v.as_str());
            !REPORT_SERIES.contains(&name.unwrap_or_default())
        });
        match ours {
            Ok(page) => {
                assert_eq!(
                    prometheus_up, 1.0,
                    "{job}: Prometheus refused a page Meerkat reads"
                );
                let ours: BTreeMap<Vec<(String, String)>, f64> = page
                    .samples
                    .iter()
                    .map(|s| (s.labels.clone().into_pairs(), s.value))
                    .collect();
                assert_eq!(ours.len(), page.samples.len(), "{job}: no series twice");
                let only_ours: Vec<_> = ours.keys().filter(|k| !theirs.contains_key(*k)).collect();
                let only_theirs: Vec<_> =
                    theirs.keys().filter(|k| !ours.contains_key(*k)).collect();
                assert!(
                    only_ours.is_empty() && only_theirs.is_empty(),
                    "{job}: series only Meerkat has: {only_ours:?}\nonly Prometheus has: {only_theirs:?}"
                );
                for (labels, value) in &ours {
                    let expected = theirs[labels];
                    assert!(
                        value.to_bits() == expected.to_bits()
                            || (value.is_nan() && expected.is_nan()),
                        "{job}: {labels:?} is {value} in Meerkat, {expected} in Prometheus"
                    );
                }
                assert_eq!(page.scraped, ours.len());
                compared += ours.len();
                println!("{job}: {} series agree", ours.len());
            }
            Err(error) => {
                assert_eq!(
                    prometheus_up, 0.0,
                    "{job}: Meerkat refused a page Prometheus reads: {error}"
                );
                assert!(
                    theirs.is_empty(),
                    "{job}: Prometheus kept series of a refused page"
                );
                println!("{job}: both refuse the page ({error})");
            }
        }
    }
    assert_eq!(
        compared,
        3 * 410 + 8 + 6,
        "every page but the broken one compared"
    );

    // Timestamps the pages give are kept, milliseconds in the text format and fractional
    // seconds in OpenMetrics, as Prometheus keeps them.
    for (job, path, metric) in [
        ("edge", "/edge", "edge_ts"),
        ("edge_openmetrics", "/edge_openmetrics", "om_requests_total"),
    ] {
        let (body, content_type) = &pages[path];
        let target = LabelSet::from_pairs([
            ("instance".to_owned(), instance.clone()),
            ("job".to_owned(), job.to_owned()),
        ]);
        let options = PageOptions {
            honor_timestamps: true,
            ..PageOptions::default()
        };
        let page = read_page(
            body,
            Format::from_content_type(Some(content_type)),
            &target,
            &options,
            0,
        )
        .unwrap();
        let ours = page
            .samples
            .iter()
            .find(|s| s.labels.get("__name__") == Some(metric))
            .unwrap()
            .timestamp_ms;
        let theirs = query(
            &prometheus,
            &format!("timestamp({metric}{{job=\"{job}\"}})"),
        );
        let theirs = theirs.values().next().copied().unwrap();
        assert_eq!(ours as f64 / 1000.0, theirs, "{metric}");
    }
}
