//! `meerkat agent node` and `meerkat serve`'s in-process host metrics, end to end: the
//! numbers this machine's kernel reports come back from PromQL with node_exporter's names,
//! `job="node"` and the node's name as `instance`, and a stopped agent's series go stale.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{BINARY, Server, free_port, query_vector, serve_fixed, sql_rows, wait_until};

fn sql(meerkat: &Server, statement: &str) -> Vec<serde_json::Value> {
    sql_rows(meerkat.addr, statement)
}

/// `MemTotal` in bytes and the number of CPUs, read from the kernel directly.
fn this_machine() -> (f64, usize) {
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap();
    let kib: f64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let stat = std::fs::read_to_string("/proc/stat").unwrap();
    let cpus = stat
        .lines()
        .filter(|l| l.starts_with("cpu") && !l.starts_with("cpu "))
        .count();
    (kib * 1024.0, cpus)
}

#[test]
fn serve_collects_this_machines_metrics_by_default() {
    let dir = tempfile::tempdir().unwrap();
    let meerkat = Server::start(
        dir.path(),
        &["--http-listen", "127.0.0.1:0"],
        &[
            ("MEERKAT_HOST_METRICS__ENABLED", "true"),
            ("MEERKAT_HOST_METRICS__INTERVAL_SECONDS", "1"),
        ],
    );
    let (mem_total, cpus) = this_machine();
    wait_until("host metrics in serve", || {
        !query_vector(meerkat.addr, "node_memory_MemTotal_bytes").is_empty()
    });
    let memory = query_vector(meerkat.addr, "node_memory_MemTotal_bytes");
    let (labels, value) = memory.iter().next().unwrap();
    assert_eq!(*value, mem_total);
    assert_eq!(labels["job"], "node");
    assert_eq!(labels["instance"], agent_node::agent::hostname());
    let per_mode = query_vector(meerkat.addr, "count by (mode) (node_cpu_seconds_total)");
    assert_eq!(per_mode.len(), 8, "{per_mode:?}");
    assert!(per_mode.values().all(|n| *n == cpus as f64), "{per_mode:?}");
    // A rate over the collected counters works as on node_exporter's series.
    wait_until("two collections for a rate", || {
        let busy = query_vector(
            meerkat.addr,
            "sum(rate(node_cpu_seconds_total{mode!=\"idle\"}[5s]))",
        );
        busy.values().next().is_some_and(|v| *v >= 0.0)
    });
}

#[test]
fn serve_without_host_metrics_writes_none() {
    let dir = tempfile::tempdir().unwrap();
    let mut meerkat = Server::start(
        dir.path(),
        &["--http-listen", "127.0.0.1:0", "--no-host-metrics"],
        &[
            ("MEERKAT_HOST_METRICS__ENABLED", "true"),
            ("MEERKAT_HOST_METRICS__INTERVAL_SECONDS", "1"),
        ],
    );
    std::thread::sleep(Duration::from_secs(3));
    assert!(query_vector(meerkat.addr, "{job=\"node\"}").is_empty());
    assert!(
        !meerkat
            .log_lines()
            .iter()
            .any(|l| l.contains("collecting this machine's metrics"))
    );
}

struct NodeAgent(std::process::Child);

impl Drop for NodeAgent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn node_agent_delivers_host_metrics_and_marks_them_stale_on_stop() {
    let dir = tempfile::tempdir().unwrap();
    let meerkat = Server::start(dir.path(), &["--http-listen", "127.0.0.1:0"], &[]);
    let log = dir.path().join("agent.log");
    let mut agent = NodeAgent(
        Command::new(BINARY)
            .args(["agent", "node", "--interval-seconds", "1"])
            .args(["--gateway", &format!("http://{}", meerkat.addr)])
            .args(["--node-name", "test-node-7"])
            .arg("--buffer-dir")
            .arg(dir.path().join("buffer"))
            .current_dir(dir.path())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    let agent_log = || std::fs::read_to_string(&log).unwrap_or_default();
    let (mem_total, cpus) = this_machine();
    wait_until("the node agent's first collection", || {
        !query_vector(meerkat.addr, "node_uname_info{instance=\"test-node-7\"}").is_empty()
    });
    let memory = query_vector(
        meerkat.addr,
        "node_memory_MemTotal_bytes{job=\"node\",instance=\"test-node-7\"}",
    );
    assert_eq!(
        memory.values().copied().collect::<Vec<_>>(),
        [mem_total],
        "{}",
        agent_log()
    );
    let cpu = query_vector(
        meerkat.addr,
        "count(node_cpu_seconds_total{instance=\"test-node-7\"})",
    );
    assert_eq!(cpu.values().next().copied(), Some((8 * cpus) as f64));
    let filesystems = query_vector(
        meerkat.addr,
        "node_filesystem_size_bytes{instance=\"test-node-7\",mountpoint=\"/\"}",
    );
    assert_eq!(filesystems.len(), 1, "{filesystems:?}");
    // It announced itself: the gateway lists it as a live node agent.
    wait_until("the node agent's heartbeat", || {
        let listed = common::get(meerkat.addr, "/api/v1/agents").unwrap();
        let body: serde_json::Value = serde_json::from_str(&listed.body).unwrap();
        body["data"].as_array().unwrap().iter().any(|agent| {
            agent["kind"] == "node" && agent["node"] == "test-node-7" && agent["status"] == "up"
        })
    });

    // SIGTERM: the agent marks its series stale and flushes before exiting.
    Command::new("kill")
        .args(["-TERM", &agent.0.id().to_string()])
        .status()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = agent.0.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "the agent did not stop: {}",
            agent_log()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{}", agent_log());
    wait_until("stale markers", || {
        query_vector(meerkat.addr, "node_uname_info{instance=\"test-node-7\"}").is_empty()
    });
}

/// The test's pod: `checkout` of namespace `shop` on `test-node-9`, IP 127.0.0.1 (so spans
/// sent from this test process come from it), its exporter on `exporter_port`.
fn checkout_pod(uid: &str, exporter_port: u16) -> serde_json::Value {
    serde_json::json!({
        "metadata": {
            "name": "checkout-7d9f8b6c5-x2x4q",
            "namespace": "shop",
            "uid": uid,
            "labels": {"app": "checkout", "pod-template-hash": "7d9f8b6c5"},
            "annotations": {
                "msp.erda.cloud/service_name": "checkout-svc",
                "msp.erda.cloud/project_name": "mall",
                "prometheus.io/scrape": "true",
                "prometheus.io/port": exporter_port.to_string(),
                "prometheus.io/path": "/custom-metrics"
            },
            "ownerReferences": [{
                "apiVersion": "apps/v1", "kind": "ReplicaSet",
                "name": "checkout-7d9f8b6c5", "uid": "rs-1", "controller": true
            }]
        },
        "spec": {"nodeName": "test-node-9", "containers": [{"name": "app", "image": "shop/checkout:1.2"}]},
        "status": {
            "phase": "Running",
            "podIP": "127.0.0.1",
            "podIPs": [{"ip": "127.0.0.1"}],
            "containerStatuses": [{
                "name": "app", "image": "shop/checkout:1.2", "imageID": "",
                "containerID": "containerd://abc123", "ready": true, "restartCount": 0,
                "state": {"running": {}}
            }]
        }
    })
}

/// A kubelet's `/pods` on a free port, listing the test's pod; returns the port.
fn serve_kubelet(uid: &str, exporter_port: u16) -> u16 {
    let body = serde_json::json!({
        "kind": "PodList",
        "apiVersion": "v1",
        "metadata": {},
        "items": [checkout_pod(uid, exporter_port)]
    })
    .to_string();
    serve_fixed(body.into_bytes(), "application/json")
}

/// `meerkat agent node` delivering to `meerkat`, its pods from `pod_source` (kubelet or
/// API flags), its host root, checkpoints and buffer under `dir`.
fn start_node_agent(
    dir: &std::path::Path,
    meerkat: &Server,
    pod_source: &[String],
    otlp: (u16, u16, u16),
    log: &std::path::Path,
) -> NodeAgent {
    NodeAgent(
        Command::new(BINARY)
            .args(["agent", "node", "--interval-seconds", "1"])
            .args(["--gateway", &format!("http://{}", meerkat.addr)])
            .args(["--node-name", "test-node-9"])
            .arg("--root")
            .arg(dir.join("host"))
            .args(pod_source)
            .arg("--checkpoint-dir")
            .arg(dir.join("checkpoints"))
            .arg("--buffer-dir")
            .arg(dir.join("buffer"))
            .args(["--otlp-grpc-listen", &format!("127.0.0.1:{}", otlp.0)])
            .args(["--otlp-http-listen", &format!("127.0.0.1:{}", otlp.1)])
            .args(["--metrics-listen", &format!("127.0.0.1:{}", otlp.2)])
            .current_dir(dir)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log).unwrap())
            .spawn()
            .unwrap(),
    )
}

fn stop_agent(agent: &mut NodeAgent, log: &std::path::Path) {
    Command::new("kill")
        .args(["-TERM", &agent.0.id().to_string()])
        .status()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = agent.0.try_wait().unwrap() {
            assert!(
                status.success(),
                "{}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
            return;
        }
        assert!(Instant::now() < deadline, "the agent did not stop");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn export(transport: &str, endpoint: &str) {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/otel/export.py");
    let out = Command::new("python3")
        .args([script, transport, endpoint, "default"])
        .output()
        .expect("python3 runs; ./scripts/test installs the OpenTelemetry SDK");
    assert!(
        out.status.success(),
        "the SDK's {transport} export through the node agent failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The pod's attributes as the spans and log lines carry them.
fn assert_pod_attributes(resource: &str) {
    let attributes: serde_json::Value = serde_json::from_str(resource).unwrap();
    let get = |key: &str| attributes[key].as_str().map(str::to_owned);
    assert_eq!(
        get("k8s.pod.name").as_deref(),
        Some("checkout-7d9f8b6c5-x2x4q"),
        "{resource}"
    );
    assert_eq!(
        get("k8s.namespace.name").as_deref(),
        Some("shop"),
        "{resource}"
    );
    assert_eq!(
        get("k8s.node.name").as_deref(),
        Some("test-node-9"),
        "{resource}"
    );
    assert_eq!(
        get("k8s.deployment.name").as_deref(),
        Some("checkout"),
        "{resource}"
    );
    assert_eq!(
        get("erda.project_name").as_deref(),
        Some("mall"),
        "{resource}"
    );
}

/// Applications export through the node agent's OTLP proxy (the real Python SDK, over HTTP
/// and gRPC), container logs are tailed from the kubelet's layout, and both arrive at the
/// gateway carrying the pod's identity from the kubelet; a restarted agent continues the
/// logs where it stopped, sending no line twice and losing none.
#[test]
fn spans_and_logs_through_the_node_agent_carry_their_pods_identity() {
    let dir = tempfile::tempdir().unwrap();
    let meerkat = Server::start(dir.path(), &["--http-listen", "127.0.0.1:0"], &[]);
    let uid = "6f2f0e2a-9a59-4f7b-8d51-2d7c9b1c7e11";
    let exporter = serve_fixed(
        b"# TYPE checkout_orders_total counter\ncheckout_orders_total{result=\"ok\"} 42\n".to_vec(),
        "text/plain; version=0.0.4",
    );
    let kubelet = serve_kubelet(uid, exporter);
    let container_dir = dir.path().join(format!(
        "host/var/log/pods/shop_checkout-7d9f8b6c5-x2x4q_{uid}/app"
    ));
    std::fs::create_dir_all(&container_dir).unwrap();
    let log_file = container_dir.join("0.log");
    let cri = |n: usize| {
        format!(
            "2026-12-02T07:00:{:02}.000000001Z stdout F checkout line {n}\n",
            n % 60
        )
    };
    std::fs::write(&log_file, (0..5).map(cri).collect::<String>()).unwrap();

    let otlp = (free_port(), free_port(), free_port());
    let log = dir.path().join("agent.log");
    let agent_log = || std::fs::read_to_string(&log).unwrap_or_default();
    let kubelet = [
        "--kubelet-url".to_owned(),
        format!("http://127.0.0.1:{kubelet}/pods"),
    ];
    let mut agent = start_node_agent(dir.path(), &meerkat, &kubelet, otlp, &log);
    // The proxy answers once it listens; the pod is known after the first kubelet read.
    wait_until("the OTLP proxy", || {
        std::net::TcpStream::connect(("127.0.0.1", otlp.1)).is_ok()
    });
    std::thread::sleep(Duration::from_secs(2));
    export("http", &format!("http://127.0.0.1:{}", otlp.1));
    export("grpc", &format!("http://127.0.0.1:{}", otlp.0));

    wait_until("spans from both transports", || {
        sql(&meerkat, "SELECT DISTINCT resource_attributes FROM spans").len() >= 2
    });
    for row in sql(&meerkat, "SELECT DISTINCT resource_attributes FROM spans") {
        // Rows are arrays of column values, in the SELECT's order.
        assert_pod_attributes(row[0].as_str().unwrap_or_else(|| panic!("{row}")));
    }
    let count_lines = || {
        sql(
            &meerkat,
            "SELECT body, count(*) AS n FROM logs WHERE body LIKE 'checkout line %' GROUP BY body",
        )
    };
    wait_until("the first five log lines", || count_lines().len() == 5);
    let rows = sql(
        &meerkat,
        "SELECT resource_attributes FROM logs WHERE body = 'checkout line 3'",
    );
    assert_pod_attributes(rows[0][0].as_str().unwrap());

    // The pod's exporter, annotated for scraping, is scraped with the pod's identity.
    wait_until("the pod's exporter scraped", || {
        !query_vector(meerkat.addr, "checkout_orders_total").is_empty()
    });
    let orders = query_vector(meerkat.addr, "checkout_orders_total");
    let (labels, value) = orders.iter().next().unwrap();
    assert_eq!(*value, 42.0);
    assert_eq!(labels["job"], "kubernetes-pods", "{labels:?}");
    assert_eq!(labels["namespace"], "shop", "{labels:?}");
    assert_eq!(labels["pod"], "checkout-7d9f8b6c5-x2x4q", "{labels:?}");
    assert_eq!(labels["instance"], format!("127.0.0.1:{exporter}"));
    assert_eq!(labels["result"], "ok");
    let up = query_vector(meerkat.addr, "up{job=\"kubernetes-pods\"}");
    assert_eq!(up.values().copied().collect::<Vec<_>>(), [1.0]);

    // The agent's own metrics say what it did.
    let metric = |name: &str| common::agent_metric(otlp.2, name);
    assert_eq!(metric("meerkat_agent_log_lines_shipped_total"), 5.0);
    assert_eq!(metric("meerkat_agent_pods"), 1.0);
    assert!(metric("meerkat_agent_delivery_sent_samples_total") > 0.0);

    // Stop, write more while the agent is away, start again: every line exactly once.
    stop_agent(&mut agent, &log);
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(&log_file)
        .unwrap();
    std::io::Write::write_all(&mut file, (5..12).map(cri).collect::<String>().as_bytes()).unwrap();
    drop(file);
    let log2 = dir.path().join("agent2.log");
    let mut agent = start_node_agent(dir.path(), &meerkat, &kubelet, otlp, &log2);
    wait_until("the lines written while the agent was away", || {
        count_lines().len() == 12
    });
    std::thread::sleep(Duration::from_secs(2));
    let counts = count_lines();
    assert_eq!(counts.len(), 12, "{counts:?}\n{}", agent_log());
    assert!(
        counts.iter().all(|row| row[1].as_u64() == Some(1)),
        "a line arrived twice: {counts:?}"
    );
    stop_agent(&mut agent, &log2);
}

/// Without a kubelet, the API server's watch of this node's pods (and only this node's:
/// the field selector goes to the API) gives proxied spans their pod's identity, and a
/// pod updated on the API is seen without a restart.
#[test]
fn pods_watched_on_the_api_server_give_spans_their_identity() {
    use test_peers::kube_api::{KubeApiServer, Resource};
    let dir = tempfile::tempdir().unwrap();
    let meerkat = Server::start(dir.path(), &["--http-listen", "127.0.0.1:0"], &[]);
    let api = KubeApiServer::start();
    let uid = "0d9c3c0e-6a8e-4d7e-9d43-1f5f9a8e2b10";
    api.apply(Resource::Pods, checkout_pod(uid, 1));
    let mut elsewhere = checkout_pod("77777777-0000-4000-8000-000000000000", 1);
    elsewhere["metadata"]["name"] = "on-another-node".into();
    elsewhere["spec"]["nodeName"] = "test-node-1".into();
    api.apply(Resource::Pods, elsewhere);
    let otlp = (free_port(), free_port(), free_port());
    let log = dir.path().join("agent.log");
    let source = [
        "--watch-pods".to_owned(),
        "--kube-api-url".to_owned(),
        api.url(),
    ];
    let mut agent = start_node_agent(dir.path(), &meerkat, &source, otlp, &log);
    wait_until("the pod list from the API", || {
        !api.lists(Resource::Pods).is_empty()
    });
    let listed = api.lists(Resource::Pods);
    assert!(
        listed
            .iter()
            .all(|request| request.contains("fieldSelector=spec.nodeName%3Dtest-node-9")),
        "{listed:?}"
    );
    wait_until("the OTLP proxy", || {
        std::net::TcpStream::connect(("127.0.0.1", otlp.1)).is_ok()
    });
    std::thread::sleep(Duration::from_secs(1));
    export("http", &format!("http://127.0.0.1:{}", otlp.1));
    wait_until("spans", || {
        !sql(&meerkat, "SELECT DISTINCT resource_attributes FROM spans").is_empty()
    });
    for row in sql(&meerkat, "SELECT DISTINCT resource_attributes FROM spans") {
        assert_pod_attributes(row[0].as_str().unwrap());
    }

    // The pod moves to another project: the next spans say so.
    let mut moved = checkout_pod(uid, 1);
    moved["metadata"]["annotations"]["msp.erda.cloud/project_name"] = "outlet".into();
    api.apply(Resource::Pods, moved);
    let project = |row: &serde_json::Value| -> String {
        let attributes: serde_json::Value = serde_json::from_str(row[0].as_str().unwrap()).unwrap();
        attributes["erda.project_name"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    };
    wait_until("spans from the moved pod", || {
        export("http", &format!("http://127.0.0.1:{}", otlp.1));
        sql(&meerkat, "SELECT DISTINCT resource_attributes FROM spans")
            .iter()
            .any(|row| project(row) == "outlet")
    });
    stop_agent(&mut agent, &log);
}

/// With the gateway's auth on, the node agent sends everything with its `--token-file`
/// token, so its data lands in that token's tenant and nowhere else; spans proxied from an
/// application without a token of its own go as the agent.
#[test]
fn with_auth_on_the_agent_writes_into_its_tokens_tenant() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("meerkat.yaml");
    std::fs::write(
        &config,
        "gateway:\n  auth:\n    tokens:\n      node-secret: team-nodes\n      other-secret: team-other\n",
    )
    .unwrap();
    let meerkat = Server::start(
        dir.path(),
        &[
            "--http-listen",
            "127.0.0.1:0",
            "--config",
            config.to_str().unwrap(),
        ],
        &[],
    );
    let token = dir.path().join("token");
    std::fs::write(&token, "node-secret\n").unwrap();
    let otlp = (free_port(), free_port(), free_port());
    let log = dir.path().join("agent.log");
    let source = ["--token-file".to_owned(), token.display().to_string()];
    let mut agent = start_node_agent(dir.path(), &meerkat, &source, otlp, &log);
    let query = |secret: &str, promql: &str| {
        let response = common::get_with(
            meerkat.addr,
            &format!("/api/v1/query?query={}", common::url_encode(promql)),
            &[("Authorization", &format!("Bearer {secret}"))],
        )
        .unwrap();
        assert_eq!(response.status, 200, "{}", response.body);
        common::parse_vector(&response.body)
    };
    wait_until("host metrics in the agent's tenant", || {
        !query("node-secret", "node_uname_info{instance=\"test-node-9\"}").is_empty()
    });
    assert!(query("other-secret", "node_uname_info").is_empty());
    wait_until("the OTLP proxy", || {
        std::net::TcpStream::connect(("127.0.0.1", otlp.1)).is_ok()
    });
    export("http", &format!("http://127.0.0.1:{}", otlp.1));
    let spans = |secret: &str| {
        let body = format!("query={}", common::url_encode("SELECT count(*) FROM spans"));
        let answer = common::post(
            meerkat.addr,
            "/api/v1/sql",
            &[
                ("Content-Type", "application/x-www-form-urlencoded"),
                ("Authorization", &format!("Bearer {secret}")),
            ],
            body.as_bytes(),
        )
        .unwrap();
        assert_eq!(answer.status, 200, "{}", answer.body);
        let body: serde_json::Value = serde_json::from_str(&answer.body).unwrap();
        body["data"]["rows"][0][0].as_u64().unwrap_or(0)
    };
    wait_until("proxied spans in the agent's tenant", || {
        spans("node-secret") > 0
    });
    assert_eq!(spans("other-secret"), 0);
    stop_agent(&mut agent, &log);
}
