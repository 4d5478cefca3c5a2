//! `meerkat agent cluster` against the real thing: the same Prometheus configuration file
//! run by the agent (delivering to `meerkat serve`) and by Prometheus 2.42, scraping the
//! same node_exporter and exposition page; both stores then hold the same series.
//!
//! Needs `prometheus` and `prometheus-node-exporter`, which `./scripts/test` installs.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{
    BINARY, NodeExporter, Prometheus, Server, Vector, free_port, get, parse_vector, url_encode,
    wait_until,
};

fn meerkat_query(meerkat: &Server, promql: &str) -> Vector {
    common::query_vector(meerkat.addr, promql)
}

/// Serves Prometheus's own exposition test page (constant values) on a free port.
fn serve_page() -> u16 {
    let page = std::fs::read(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../shared/peer-tests/prometheus-2.42-textparse/promtestdata.txt"),
    )
    .unwrap();
    common::serve_fixed(page, "text/plain; version=0.0.4")
}

fn prometheus_query(prometheus: &Prometheus, promql: &str) -> Vector {
    let response = get(
        prometheus.addr,
        &format!("/api/v1/query?query={}", url_encode(promql)),
    )
    .unwrap();
    assert_eq!(response.status, 200, "{}", response.body);
    parse_vector(&response.body)
}

/// Same label sets, same values (NaN equal to NaN); the differences are printed, not the
/// whole vectors.
fn assert_same_vectors(ours: &Vector, theirs: &Vector) {
    let only_ours: Vec<_> = ours.keys().filter(|k| !theirs.contains_key(*k)).collect();
    let only_theirs: Vec<_> = theirs.keys().filter(|k| !ours.contains_key(*k)).collect();
    let differing: Vec<_> = ours
        .iter()
        .filter_map(|(k, v)| {
            let theirs = theirs.get(k)?;
            let same = v == theirs || (v.is_nan() && theirs.is_nan());
            (!same).then_some((k, v, theirs))
        })
        .collect();
    assert!(
        only_ours.is_empty() && only_theirs.is_empty() && differing.is_empty(),
        "only in Meerkat: {only_ours:?}\nonly in Prometheus: {only_theirs:?}\ndiffering: {differing:?}"
    );
}

/// The agent process, killed by its PID if the test ends early.
/// A running cluster agent and the port of its own `/metrics`.
struct Agent(std::process::Child, u16);

impl Agent {
    /// `meerkat agent cluster` on `config`, delivering to `meerkat`, logging to `log`.
    fn start(config: &std::path::Path, meerkat: &Server, log: &std::path::Path) -> Self {
        let metrics = free_port();
        Self(
            Command::new(BINARY)
                .args(["agent", "cluster", "--scrape-config"])
                .arg(config)
                .args(["--gateway", &format!("http://{}", meerkat.addr)])
                .args(["--metrics-listen", &format!("127.0.0.1:{metrics}")])
                .current_dir(config.parent().unwrap())
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(log).unwrap())
                .spawn()
                .unwrap(),
            metrics,
        )
    }

    /// The value of `name` (a series without labels) on the agent's own `/metrics`.
    fn own_metric(&self, name: &str) -> f64 {
        common::agent_metric(self.1, name)
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn the_agent_scrapes_what_prometheus_scrapes() {
    let dir = tempfile::tempdir().unwrap();
    let meerkat = Server::start(dir.path(), &["--http-listen", "127.0.0.1:0"], &[]);
    let exporter = NodeExporter::start();
    let page_port = serve_page();
    let closed_port = free_port();
    let config = format!(
        r#"global:
  scrape_interval: 1s
  scrape_timeout: 1s
  external_labels: {{cluster: test}}
scrape_configs:
  - job_name: node
    static_configs:
      - targets: ['{exporter}']
    metric_relabel_configs:
      - source_labels: [__name__]
        regex: 'node_(cpu_seconds_total|uname_info|filesystem_size_bytes|network_receive_bytes_total)'
        action: keep
  - job_name: page
    static_configs:
      - targets: ['127.0.0.1:{page_port}']
        labels: {{env: e2e}}
    relabel_configs:
      - source_labels: [__address__]
        regex: '([^:]+):.*'
        target_label: host
    metric_relabel_configs:
      - source_labels: [__name__]
        regex: 'go_gc_.*'
        action: drop
  - job_name: down
    static_configs:
      - targets: ['127.0.0.1:{closed_port}']
"#,
        exporter = exporter.addr
    );
    let config_path = dir.path().join("scrape.yml");
    std::fs::write(&config_path, &config).unwrap();
    let agent_log = dir.path().join("agent.log");
    let mut agent = Agent::start(&config_path, &meerkat, &agent_log);
    let prometheus_dir = dir.path().join("prometheus");
    std::fs::create_dir_all(&prometheus_dir).unwrap();
    let prometheus = Prometheus::start(&prometheus_dir, &config);
    let log = || std::fs::read_to_string(&agent_log).unwrap_or_default();

    // Both scrape: `up` is 1 for the live targets and 0 for the closed port.
    wait_until("the agent's first scrapes", || {
        let up = meerkat_query(&meerkat, "up");
        up.len() == 3 && up.values().filter(|v| **v == 1.0).count() == 2
    });
    wait_until("Prometheus's first scrapes", || {
        prometheus_query(&prometheus, "count_over_time(up[1m]) >= 2").len() == 3
    });
    let up = meerkat_query(&meerkat, "up");
    let down = up.iter().find(|(l, _)| l["job"] == "down").unwrap();
    assert_eq!(*down.1, 0.0, "{up:?}\n{}", log());
    assert_eq!(down.0["cluster"], "test", "external labels are added");
    assert_eq!(agent.own_metric("meerkat_agent_scrape_targets"), 3.0);
    assert!(agent.own_metric("meerkat_agent_delivery_sent_samples_total") > 0.0);

    // The exposition page: every series, label and value as Prometheus stored them
    // (target labels, relabeling, metric relabeling, exported labels).
    let ours = meerkat_query(&meerkat, r#"{job="page", __name__!~"up|scrape_.*"}"#);
    let theirs = prometheus_query(&prometheus, r#"{job="page", __name__!~"up|scrape_.*"}"#);
    // Prometheus's own storage has no external labels (it adds them only when sending).
    let ours_without_cluster: Vector = ours
        .iter()
        .map(|(labels, value)| {
            let mut labels = labels.clone();
            assert_eq!(labels.remove("cluster").as_deref(), Some("test"));
            (labels, *value)
        })
        .collect();
    assert_eq!(
        ours_without_cluster.len(),
        410 - 7,
        "go_gc_* dropped: {}",
        log()
    );
    assert_same_vectors(&ours_without_cluster, &theirs);
    for report in [
        "scrape_samples_scraped",
        "scrape_samples_post_metric_relabeling",
    ] {
        let ours = meerkat_query(&meerkat, &format!(r#"{report}{{job="page"}}"#));
        let theirs = prometheus_query(&prometheus, &format!(r#"{report}{{job="page"}}"#));
        assert_eq!(
            ours.values().collect::<Vec<_>>(),
            theirs.values().collect::<Vec<_>>(),
            "{report}"
        );
    }

    // node_exporter: the same series (label sets) of the kept families; values move.
    let names = |v: &Vector| -> BTreeSet<BTreeMap<String, String>> {
        v.keys()
            .map(|labels| {
                let mut labels = labels.clone();
                labels.remove("cluster");
                labels
            })
            .collect()
    };
    let query = r#"{job="node", __name__=~"node_.*"}"#;
    let ours = names(&meerkat_query(&meerkat, query));
    let theirs = names(&prometheus_query(&prometheus, query));
    assert!(ours.len() > 4, "{ours:?}");
    assert_eq!(ours, theirs);

    // A graceful stop marks every series stale: nothing is current afterwards.
    Command::new("kill")
        .args(["-TERM", &agent.0.id().to_string()])
        .status()
        .unwrap();
    let status = agent.0.wait().unwrap();
    assert!(status.success(), "{status}: {}", log());
    wait_until("staleness markers", || {
        meerkat_query(&meerkat, r#"up{job="page"}"#).is_empty()
    });
    assert!(
        meerkat_query(&meerkat, r#"{job="page"}"#).is_empty(),
        "every series is stale"
    );
}

#[test]
fn a_broken_scrape_config_is_refused_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("scrape.yml");
    std::fs::write(
        &path,
        "scrape_configs:\n  - job_name: a\n    scrape_interval: 5s\n    scrape_timeout: 10s\n",
    )
    .unwrap();
    let output = Command::new(BINARY)
        .args(["agent", "cluster", "--scrape-config"])
        .arg(&path)
        .current_dir(dir.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("scrape timeout greater than scrape interval"),
        "{stderr}"
    );
    assert!(stderr.contains("scrape.yml"), "{stderr}");
}

#[test]
fn the_agent_follows_its_config_file_and_keeps_the_last_good_one() {
    let dir = tempfile::tempdir().unwrap();
    let meerkat = Server::start(dir.path(), &["--http-listen", "127.0.0.1:0"], &[]);
    let page_port = serve_page();
    let job = |name: &str| {
        format!(
            "  - job_name: {name}\n    static_configs:\n      - targets: ['127.0.0.1:{page_port}']\n"
        )
    };
    let head = "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n";
    let config_path = dir.path().join("scrape.yml");
    std::fs::write(&config_path, format!("{head}{}", job("a"))).unwrap();
    let agent_log = dir.path().join("agent.log");
    let agent = Agent::start(&config_path, &meerkat, &agent_log);
    let log = || std::fs::read_to_string(&agent_log).unwrap_or_default();
    let up = |job: &str| meerkat_query(&meerkat, &format!(r#"up{{job="{job}"}}"#));
    wait_until("job a", || up("a").values().any(|v| *v == 1.0));

    // A new job appears when the file changes.
    std::fs::write(&config_path, format!("{head}{}{}", job("a"), job("b"))).unwrap();
    wait_until("job b after the change", || {
        up("b").values().any(|v| *v == 1.0)
    });

    // A broken file is refused; both jobs keep running.
    std::fs::write(
        &config_path,
        format!("{head}  - job_name: c\n    scrape_interval: nonsense\n"),
    )
    .unwrap();
    wait_until("the refusal in the log", || {
        log().contains("the running one is kept")
    });
    assert!(log().contains("not a valid duration"), "{}", log());
    let before = meerkat_query(&meerkat, r#"count_over_time(up{job="b"}[1m])"#);
    std::thread::sleep(Duration::from_secs(3));
    let after = meerkat_query(&meerkat, r#"count_over_time(up{job="b"}[1m])"#);
    assert!(
        after.values().next() > before.values().next(),
        "job b is still scraped: {before:?} then {after:?}"
    );

    // SIGHUP re-reads it too; job a removed goes stale, job b stays.
    std::fs::write(&config_path, format!("{head}{}", job("b"))).unwrap();
    Command::new("kill")
        .args(["-HUP", &agent.0.id().to_string()])
        .status()
        .unwrap();
    wait_until("job a stale", || up("a").is_empty());
    assert_eq!(up("b").values().next(), Some(&1.0), "{}", log());
}
