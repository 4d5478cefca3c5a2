//! Alerting end to end, beside Prometheus 2.42: the same rule file over the same data (a
//! local exporter Prometheus scrapes every second and remote-writes to `meerkat serve`),
//! both notifying one real Alertmanager 0.25. The alerts Alertmanager holds from each must
//! match — labels, annotations, startsAt within the evaluation slack — and both must be
//! resolved when the condition clears. Also: `/api/v1/rules` and `/api/v1/alerts` in
//! Prometheus's shape, `ALERTS` and recording rules written back, alert transitions as
//! platform events, webhooks, and reloads that keep the loaded rules when a file breaks.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Prometheus, Server, free_port, get, post, query_vector, sql_rows, wait_until};
use serde_json::Value;

/// A real Alertmanager on a free port, stopped by its PID when dropped.
struct Alertmanager {
    child: Child,
    addr: SocketAddr,
}

impl Alertmanager {
    fn start(dir: &Path) -> Self {
        let config = dir.join("alertmanager.yml");
        std::fs::write(
            &config,
            "route:\n  receiver: none\n  group_wait: 1s\n  group_interval: 1s\nreceivers:\n  - name: none\n",
        )
        .unwrap();
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let child = Command::new("prometheus-alertmanager")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.path={}", dir.join("am").display()))
            .arg(format!("--web.listen-address={addr}"))
            // No cluster: one instance, no gossip port.
            .arg("--cluster.listen-address=")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start prometheus-alertmanager ({e}); ./scripts/test installs it")
            });
        let am = Self { child, addr };
        let deadline = Instant::now() + Duration::from_secs(30);
        while get(addr, "/-/ready").map(|r| r.status) != Some(200) {
            assert!(Instant::now() < deadline, "alertmanager never became ready");
            std::thread::sleep(Duration::from_millis(100));
        }
        am
    }

    /// The alerts it holds now for `alertname`, active ones only (resolved ones leave).
    fn alerts(&self, alertname: &str) -> Vec<Value> {
        let response = get(self.addr, "/api/v2/alerts").unwrap();
        assert_eq!(response.status, 200, "{}", response.body);
        let body =
            &response.body[response.body.find('[').unwrap()..=response.body.rfind(']').unwrap()];
        let all: Vec<Value> = serde_json::from_str(body).unwrap();
        all.into_iter()
            .filter(|a| a["labels"]["alertname"] == alertname)
            .filter(|a| a["status"]["state"] == "active")
            .collect()
    }
}

impl Drop for Alertmanager {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An exporter whose one gauge the test sets.
fn exporter(value: Arc<AtomicU64>) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut buf = [0u8; 4096];
            let _ = stream.read(&mut buf);
            let body = format!(
                "# TYPE probe_success gauge\nprobe_success{{target=\"db\"}} {}\n",
                value.load(Ordering::SeqCst)
            );
            let _ = write!(
                stream,
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    port
}

/// A webhook receiver that keeps every JSON body posted to it.
fn webhook(received: Arc<Mutex<Vec<Value>>>) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut raw = Vec::new();
            let mut buf = [0u8; 65536];
            // Read the head, then as much body as Content-Length says.
            loop {
                let n = stream.read(&mut buf).unwrap_or(0);
                if n == 0 {
                    break;
                }
                raw.extend_from_slice(&buf[..n]);
                let text = String::from_utf8_lossy(&raw).into_owned();
                if let Some((head, body)) = text.split_once("\r\n\r\n") {
                    let length: usize = head
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length:")
                                .map(|v| v.trim().parse().unwrap_or(0))
                        })
                        .unwrap_or(0);
                    if body.len() >= length {
                        if let Ok(json) = serde_json::from_str(body) {
                            received.lock().unwrap().push(json);
                        }
                        break;
                    }
                }
            }
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        }
    });
    port
}

const RULES: &str = r#"
groups:
  - name: probes
    rules:
      - alert: ProbeDown
        expr: probe_success == 0
        for: 3s
        labels:
          severity: page
          team: '{{ $labels.target }}-team'
        annotations:
          summary: '{{ $labels.target }} on {{ $labels.instance }} is down'
          value: '{{ $value }} ({{ $value | humanizePercentage }})'
      - record: job:probe_success:sum
        expr: sum by (job) (probe_success)
"#;

fn now() -> chrono::DateTime<chrono::Utc> {
    std::time::SystemTime::now().into()
}

fn parse_time(text: &str) -> chrono::DateTime<chrono::FixedOffset> {
    chrono::DateTime::parse_from_rfc3339(text).unwrap()
}

fn without(labels: &Value, name: &str) -> Value {
    let mut labels = labels.clone();
    labels.as_object_mut().unwrap().remove(name);
    labels
}

fn meerkat_api(addr: SocketAddr, path: &str) -> Value {
    let response = get(addr, path).unwrap();
    assert_eq!(response.status, 200, "{path}: {}", response.body);
    serde_json::from_str(&response.body).unwrap()
}

#[test]
fn alerts_match_prometheus_in_a_real_alertmanager() {
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("rules.yml");
    std::fs::write(&rules, RULES).unwrap();
    let am = Alertmanager::start(dir.path());
    let received = Arc::new(Mutex::new(Vec::new()));
    let hook = webhook(received.clone());
    let value = Arc::new(AtomicU64::new(1));
    let target = exporter(value.clone());

    let serve_dir = dir.path().join("meerkat");
    std::fs::create_dir(&serve_dir).unwrap();
    std::fs::write(
        serve_dir.join("meerkat.yaml"),
        format!(
            "alerting:\n  evaluation_interval_seconds: 1\n  external_labels:\n    engine: meerkat\n  webhook_urls: ['http://127.0.0.1:{hook}/hook']\n"
        ),
    )
    .unwrap();
    let meerkat = Server::start(
        &serve_dir,
        &[
            "--http-listen",
            "127.0.0.1:0",
            "--rule-files",
            rules.to_str().unwrap(),
            "--alertmanager-url",
            &format!("http://{}", am.addr),
        ],
        &[],
    );
    let prom_dir = dir.path().join("prometheus");
    std::fs::create_dir(&prom_dir).unwrap();
    let prometheus = Prometheus::start(
        &prom_dir,
        &format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
             rule_files: ['{rules}']\n\
             scrape_configs:\n  - job_name: probe\n    static_configs:\n      - targets: ['127.0.0.1:{target}']\n\
             alerting:\n  alert_relabel_configs:\n    - target_label: engine\n      replacement: prometheus\n  \
             alertmanagers:\n    - static_configs:\n        - targets: ['{am}']\n\
             remote_write:\n  - url: http://{meerkat}/api/v1/write\n    queue_config:\n      batch_send_deadline: 200ms\n",
            rules = rules.display(),
            am = am.addr,
            meerkat = meerkat.addr,
        ),
    );
    wait_until("meerkat has the probe series", || {
        !query_vector(meerkat.addr, "probe_success").is_empty()
    });
    // Recording rules are written back as series, on both sides.
    wait_until("the recording rule's series in meerkat", || {
        !query_vector(meerkat.addr, "job:probe_success:sum").is_empty()
    });

    let went_down = now();
    value.store(0, Ordering::SeqCst);
    let deadline = Instant::now() + Duration::from_secs(60);
    let (from_prometheus, from_meerkat) = loop {
        let alerts = am.alerts("ProbeDown");
        let by = |engine: &str| {
            alerts
                .iter()
                .find(|a| a["labels"]["engine"] == engine)
                .cloned()
        };
        if let (Some(p), Some(m)) = (by("prometheus"), by("meerkat")) {
            break (p, m);
        }
        assert!(
            Instant::now() < deadline,
            "both engines' alerts never reached alertmanager: {alerts:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(
        without(&from_meerkat["labels"], "engine"),
        without(&from_prometheus["labels"], "engine"),
        "labels"
    );
    assert_eq!(from_meerkat["labels"]["team"], "db-team");
    assert_eq!(
        from_meerkat["annotations"], from_prometheus["annotations"],
        "annotations"
    );
    assert_eq!(from_meerkat["annotations"]["value"], "0 (0%)");
    let (meerkat_start, prometheus_start) = (
        parse_time(from_meerkat["startsAt"].as_str().unwrap()),
        parse_time(from_prometheus["startsAt"].as_str().unwrap()),
    );
    // Each fires at its first evaluation 3 s (`for`) after it first saw the value: the two
    // differ by their evaluation slots (1 s) and the remote-write delay.
    let apart = (meerkat_start - prometheus_start).num_milliseconds().abs();
    eprintln!(
        "startsAt: meerkat {meerkat_start}, prometheus {prometheus_start} ({apart} ms apart)"
    );
    assert!(
        apart <= 4_000,
        "startsAt {meerkat_start} vs {prometheus_start}"
    );
    assert!(
        meerkat_start >= went_down + chrono::Duration::seconds(2),
        "meerkat fired at {meerkat_start}, before `for` could pass after {went_down}"
    );

    // The APIs Grafana reads, in Prometheus's shape.
    let ours = meerkat_api(meerkat.addr, "/api/v1/alerts");
    let theirs = prometheus.api("/api/v1/alerts");
    let firing = |v: &Value| -> Vec<Value> {
        v["data"]["alerts"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|a| a["state"] == "firing")
            .cloned()
            .collect()
    };
    let (ours_firing, theirs_firing) = (firing(&ours), firing(&theirs));
    assert_eq!(ours_firing.len(), 1, "{ours}");
    assert_eq!(theirs_firing.len(), 1, "{theirs}");
    assert_eq!(ours_firing[0]["labels"], theirs_firing[0]["labels"]);
    assert_eq!(
        ours_firing[0]["annotations"],
        theirs_firing[0]["annotations"]
    );
    assert_eq!(ours_firing[0]["value"], theirs_firing[0]["value"]);
    let keys = |v: &Value| -> Vec<String> {
        let mut k: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
        k.sort();
        k
    };
    assert!(
        keys(&theirs_firing[0])
            .iter()
            .all(|k| keys(&ours_firing[0]).contains(k) || k == "keepFiringSince")
    );
    let ours = meerkat_api(meerkat.addr, "/api/v1/rules");
    let theirs = prometheus.api("/api/v1/rules");
    let (our_group, their_group) = (&ours["data"]["groups"][0], &theirs["data"]["groups"][0]);
    assert_eq!(our_group["name"], their_group["name"]);
    assert_eq!(our_group["interval"], their_group["interval"]);
    for i in 0..2 {
        let (a, b) = (&our_group["rules"][i], &their_group["rules"][i]);
        for field in [
            "name",
            "query",
            "type",
            "health",
            "labels",
            "annotations",
            "duration",
            "state",
        ] {
            assert_eq!(a[field], b[field], "rule {i} {field}: {a} vs {b}");
        }
        for key in keys(b) {
            assert!(keys(a).contains(&key), "rule {i} lacks {key}: {a}");
        }
    }
    let alert_only = meerkat_api(meerkat.addr, "/api/v1/rules?type=alert");
    assert_eq!(
        alert_only["data"]["groups"][0]["rules"]
            .as_array()
            .unwrap()
            .len(),
        1
    );

    // ALERTS is written back.
    let alerts_series = query_vector(
        meerkat.addr,
        "ALERTS{alertname=\"ProbeDown\",alertstate=\"firing\"}",
    );
    assert_eq!(alerts_series.len(), 1, "{alerts_series:?}");

    // Back up: both resolve, and alertmanager lets go of both.
    value.store(1, Ordering::SeqCst);
    let came_back = now();
    wait_until("both alerts are resolved in alertmanager", || {
        am.alerts("ProbeDown").is_empty()
    });
    // The webhook heard of the resolution, with endsAt at the evaluation that saw it.
    wait_until("the webhook hears of the resolution", || {
        received.lock().unwrap().iter().any(|body| {
            body["alerts"].as_array().is_some_and(|alerts| {
                alerts.iter().any(|a| {
                    a["status"] == "resolved"
                        && a["labels"]["engine"] == "meerkat"
                        && parse_time(a["endsAt"].as_str().unwrap()) >= came_back
                })
            })
        })
    });
    assert!(
        received
            .lock()
            .unwrap()
            .iter()
            .any(|body| body["version"] == "4" && body["status"] == "firing")
    );

    // Pending, firing and resolved are platform events.
    wait_until("alert transitions are events", || {
        let rows = sql_rows(
            meerkat.addr,
            "SELECT details FROM events WHERE kind = 'alert'",
        );
        let text = format!("{rows:?}");
        text.contains("Pending") && text.contains("Firing") && text.contains("Resolved")
    });
    drop(prometheus);
}

#[test]
fn a_broken_rule_file_is_refused_and_the_loaded_rules_keep_running() {
    let dir = tempfile::tempdir().unwrap();
    let rules_dir = dir.path().join("rules");
    std::fs::create_dir(&rules_dir).unwrap();
    let file = rules_dir.join("a.yml");
    std::fs::write(
        &file,
        "groups:\n  - name: g\n    rules:\n      - record: one\n        expr: vector(1)\n",
    )
    .unwrap();
    let meerkat = serve_rules(dir.path(), &rules_dir);
    wait_until("the recording rule runs", || {
        !query_vector(meerkat.addr, "one").is_empty()
    });

    // Broken: reload refuses it, naming file, line and reason.
    std::fs::write(
        &file,
        "groups:\n  - name: g\n    rules:\n      - record: one\n        expr: vector(1) +\n",
    )
    .unwrap();
    let response = post(meerkat.addr, "/-/reload", &[], b"").unwrap();
    assert_eq!(response.status, 500, "{}", response.body);
    assert!(
        response.body.contains(&format!("{}: 5:", file.display())),
        "{}",
        response.body
    );
    assert!(
        response.body.contains("could not parse expression"),
        "{}",
        response.body
    );
    let rules = meerkat_api(meerkat.addr, "/api/v1/rules");
    assert_eq!(
        rules["data"]["groups"][0]["rules"][0]["name"], "one",
        "{rules}"
    );
    assert_eq!(
        rules["data"]["groups"][0]["rules"][0]["health"], "ok",
        "{rules}"
    );

    // Fixed, with a second rule: the file watch picks it up without a reload request.
    std::fs::write(
        &file,
        "groups:\n  - name: g\n    rules:\n      - record: one\n        expr: vector(1)\n      - record: two\n        expr: vector(2)\n",
    )
    .unwrap();
    wait_until("the watched file reloads", || {
        let rules = meerkat_api(meerkat.addr, "/api/v1/rules");
        rules["data"]["groups"][0]["rules"]
            .as_array()
            .is_some_and(|r| r.len() == 2)
    });
    wait_until("the new rule runs", || {
        !query_vector(meerkat.addr, "two").is_empty()
    });
    let response = post(meerkat.addr, "/-/reload", &[], b"").unwrap();
    assert_eq!(response.status, 200, "{}", response.body);
}

#[test]
fn each_tenants_rules_read_and_write_only_that_tenants_data() {
    let dir = tempfile::tempdir().unwrap();
    let team = dir.path().join("team-a.yml");
    std::fs::write(
        &team,
        "groups:\n  - name: team\n    rules:\n      - record: team_copy\n        expr: source_metric * 2\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("meerkat.yaml"),
        format!(
            "alerting:\n  evaluation_interval_seconds: 1\n  tenant_rule_files:\n    team-a: ['{}']\n",
            team.display()
        ),
    )
    .unwrap();
    let meerkat = Server::start(dir.path(), &["--http-listen", "127.0.0.1:0"], &[]);
    // The same metric in two tenants, with different values.
    for (tenant, value) in [("team-a", "21"), ("default", "5")] {
        // Influx line protocol: measurement `source`, field `metric` → `source_metric`.
        let body = format!("source metric={value}\n");
        let response = post(
            meerkat.addr,
            "/write?db=test",
            &[("X-Scope-OrgID", tenant)],
            body.as_bytes(),
        )
        .unwrap();
        assert!(
            response.status < 300,
            "{}: {}",
            response.status,
            response.body
        );
    }
    let team_query = |promql: &str| {
        let response = common::get_with(
            meerkat.addr,
            &format!("/api/v1/query?query={}", common::url_encode(promql)),
            &[("X-Scope-OrgID", "team-a")],
        )
        .unwrap();
        common::parse_vector(&response.body)
    };
    wait_until("team-a's rule runs over team-a's data", || {
        team_query("team_copy").iter().any(|(_, v)| *v == 42.0)
    });
    assert!(
        query_vector(meerkat.addr, "team_copy").is_empty(),
        "the default tenant got team-a's series"
    );
    let response = common::get_with(
        meerkat.addr,
        "/api/v1/rules",
        &[("X-Scope-OrgID", "team-a")],
    )
    .unwrap();
    let rules: Value = serde_json::from_str(&response.body).unwrap();
    assert_eq!(rules["data"]["groups"][0]["name"], "team", "{rules}");
    let default_rules = meerkat_api(meerkat.addr, "/api/v1/rules");
    assert_eq!(
        default_rules["data"]["groups"].as_array().unwrap().len(),
        0,
        "{default_rules}"
    );
}

#[test]
fn a_rule_sees_what_an_earlier_rule_of_its_group_recorded_at_the_same_evaluation() {
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("rules.yml");
    std::fs::write(
        &rules,
        "groups:\n  - name: chain\n    rules:\n      - record: chain:one\n        expr: vector(1)\n      \
         - alert: ChainSeen\n        expr: chain:one > 0\n",
    )
    .unwrap();
    let meerkat = serve_rules(dir.path(), &rules);
    let mut active_at = None;
    wait_until("the chained alert fires", || {
        let alerts = meerkat_api(meerkat.addr, "/api/v1/alerts");
        active_at = alerts["data"]["alerts"]
            .as_array()
            .and_then(|a| a.first())
            .map(|a| parse_time(a["activeAt"].as_str().unwrap()).timestamp_millis());
        active_at.is_some()
    });
    // As in Prometheus, it fired at the group's first evaluation, the one that first
    // recorded `chain:one` (through the bus it would be seen one evaluation later).
    let mut first_recorded = None;
    wait_until("the first recorded sample is stored", || {
        let rows = sql_rows(
            meerkat.addr,
            "SELECT min(x.timestamp_ms) FROM samples x JOIN series s USING (series_id) \
             WHERE s.metric_name = 'chain:one'",
        );
        first_recorded = rows.first().and_then(|r| r[0].as_i64());
        first_recorded.is_some()
    });
    assert_eq!(active_at, first_recorded);
}

/// `meerkat serve` in `dir` evaluating `rules` (a file or directory) every second.
fn serve_rules(dir: &Path, rules: &Path) -> Server {
    Server::start(
        dir,
        &[
            "--http-listen",
            "127.0.0.1:0",
            "--rule-files",
            rules.to_str().unwrap(),
        ],
        &[("MEERKAT_ALERTING__EVALUATION_INTERVAL_SECONDS", "1")],
    )
}

/// The pending alert of `rule` on `meerkat`, with its `activeAt`.
fn pending_since(meerkat: &Server) -> Option<chrono::DateTime<chrono::FixedOffset>> {
    let alerts = meerkat_api(meerkat.addr, "/api/v1/alerts");
    alerts["data"]["alerts"]
        .as_array()?
        .iter()
        .find(|a| a["state"] == "pending")
        .map(|a| parse_time(a["activeAt"].as_str().unwrap()))
}

#[test]
fn a_restart_keeps_the_for_clock_of_long_for_rules() {
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("rules.yml");
    std::fs::write(
        &rules,
        "groups:\n  - name: slow\n    rules:\n      - alert: LongDown\n        expr: probe_value == 0\n        for: 30m\n",
    )
    .unwrap();
    let args = [
        "--http-listen",
        "127.0.0.1:0",
        "--rule-files",
        rules.to_str().unwrap(),
    ];
    let env = [("MEERKAT_ALERTING__EVALUATION_INTERVAL_SECONDS", "1")];
    let mut first = Server::start(dir.path(), &args, &env);
    let response = post(first.addr, "/write?db=test", &[], b"probe value=0\n").unwrap();
    assert!(response.status < 300, "{}", response.body);
    let mut since = None;
    wait_until("the alert is pending", || {
        since = pending_since(&first);
        since.is_some()
    });
    let since = since.unwrap();
    // Pending for a few evaluations (each writes ALERTS_FOR_STATE), then a clean stop.
    std::thread::sleep(Duration::from_secs(4));
    first.signal("TERM");
    assert!(first.wait().success());
    std::thread::sleep(Duration::from_secs(2));
    let restarted_at = now();
    let second = Server::start(dir.path(), &args, &env);
    let mut restored = None;
    wait_until("the alert is pending again", || {
        restored = pending_since(&second);
        restored.is_some()
    });
    let restored = restored.unwrap();
    // Prometheus's rule: the clock goes on from where it was, shifted by the downtime —
    // so it began about 4 s before the restart, not at it.
    assert!(
        restored > since,
        "restored {restored}, first pending {since}"
    );
    assert!(
        restored <= restarted_at - chrono::Duration::seconds(2),
        "activeAt {restored} was not restored (restart at {restarted_at}, first pending {since})"
    );
}

#[test]
fn a_broken_rule_file_stops_the_start_with_file_line_and_reason() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.yml");
    std::fs::write(
        &file,
        "groups:\n  - name: g\n    rules:\n      - alert: A\n        expr: up ==\n",
    )
    .unwrap();
    let (code, _, stderr) = common::run(
        &[
            "serve",
            "--http-listen",
            "127.0.0.1:0",
            "--rule-files",
            file.to_str().unwrap(),
        ],
        dir.path(),
        &[
            ("MEERKAT_HOST_METRICS__ENABLED", "false"),
            ("MEERKAT_OTLP_GRPC_LISTEN", "127.0.0.1:0"),
            ("MEERKAT_OTLP_HTTP_LISTEN", "127.0.0.1:0"),
        ],
    );
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains(&format!("{}: 5:", file.display())),
        "{stderr}"
    );
}
