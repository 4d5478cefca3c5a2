//! `meerkat agent cluster --kube-api-url <stand-in>` delivering to `meerkat serve`: the
//! cluster state of the Kubernetes API stand-in's fixture objects answers PromQL with
//! kube-state-metrics' names and the fixtures' values, a MODIFIED object changes a value, a
//! DELETED pod's series go stale, and the Kubernetes events put into the events watch come
//! back from `/api/v1/sql` once each, also after the agent restarts.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{BINARY, Server, query_vector, wait_until};
use serde_json::{Value, json};
use test_peers::kube_api::{KubeApiServer, Resource};

fn fixture(name: &str) -> Value {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../agent-cluster/tests/fixtures/cluster_state")
        .join(name);
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// The agent process, killed if the test ends early.
struct Agent(Child);

impl Agent {
    fn start(dir: &std::path::Path, meerkat: &Server, kube: &KubeApiServer, log: &str) -> Self {
        Self(
            Command::new(BINARY)
                .args(["agent", "cluster", "--scrape-config"])
                .arg(dir.join("prometheus.yml"))
                .args(["--gateway", &format!("http://{}", meerkat.addr)])
                .args(["--kube-api-url", &kube.url()])
                .args(["--cluster-name", "e2e"])
                .arg("--buffer-dir")
                .arg(dir.join("buffer"))
                .current_dir(dir)
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(dir.join(log)).unwrap())
                .spawn()
                .unwrap(),
        )
    }

    /// SIGTERM, and wait for the agent to finish (stale markers, flush).
    fn stop(mut self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.0.try_wait().unwrap().is_none() {
            assert!(Instant::now() < deadline, "the agent did not stop");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The single value of an instant query, if it has exactly one series.
fn value(meerkat: &Server, promql: &str) -> Option<f64> {
    let vector = query_vector(meerkat.addr, promql);
    (vector.len() == 1).then(|| *vector.values().next().unwrap())
}

fn sql(meerkat: &Server, statement: &str) -> Vec<Value> {
    common::sql_rows(meerkat.addr, statement)
}

/// A core/v1 Event as the kubelet writes it, last seen now.
fn event(name: &str, uid: &str, reason: &str, message: &str, pod: &str) -> Value {
    let now = k8s_openapi::jiff::Timestamp::now().to_string();
    json!({
        "metadata": {"name": name, "namespace": "shop", "uid": uid, "creationTimestamp": now},
        "involvedObject": {"kind": "Pod", "namespace": "shop", "name": pod,
                           "uid": "5f0c3f0e-8a3b-4c3e-9d7e-2a1b3c4d5e6f", "apiVersion": "v1",
                           "fieldPath": "spec.containers{sidecar}"},
        "reason": reason,
        "message": message,
        "source": {"component": "kubelet", "host": "node-a"},
        "firstTimestamp": now,
        "lastTimestamp": now,
        "count": 1,
        "type": "Warning",
        "reportingComponent": "kubelet",
        "reportingInstance": "node-a"
    })
}

/// The Kubernetes events stored, as (reason, message, involved object) per row.
fn stored_events(meerkat: &Server) -> Vec<(String, String, String)> {
    let mut out: Vec<(String, String, String)> = sql(
        meerkat,
        "SELECT details FROM events WHERE source = 'agent-cluster/e2e' AND kind = 'kubernetes'",
    )
    .iter()
    .map(|row| {
        let details = row
            .get("details")
            .or_else(|| row.get(0))
            .and_then(Value::as_str)
            .unwrap_or_else(|| panic!("no details column in {row}"));
        let details: Value = serde_json::from_str(details).unwrap();
        let k = &details["Kubernetes"];
        (
            k["reason"].as_str().unwrap().to_owned(),
            k["message"].as_str().unwrap().to_owned(),
            format!(
                "{}/{}",
                k["involved_kind"].as_str().unwrap(),
                k["involved_name"].as_str().unwrap()
            ),
        )
    })
    .collect();
    out.sort();
    out
}

#[test]
fn cluster_state_and_events_reach_serve() {
    let dir = tempfile::tempdir().unwrap();
    let kube = KubeApiServer::start();
    for (resource, name) in [
        (Resource::Pods, "pod-web.json"),
        (Resource::Pods, "pod-batch.json"),
        (Resource::Deployments, "deployment.json"),
        (Resource::StatefulSets, "statefulset.json"),
        (Resource::DaemonSets, "daemonset.json"),
        (Resource::Nodes, "node.json"),
    ] {
        kube.apply(resource, fixture(name));
    }
    std::fs::write(
        dir.path().join("prometheus.yml"),
        "global:\n  scrape_interval: 1s\n  external_labels: {cluster: e2e}\nscrape_configs: []\n",
    )
    .unwrap();
    let meerkat = Server::start(dir.path(), &["--http-listen", "127.0.0.1:0"], &[]);
    let agent = Agent::start(dir.path(), &meerkat, &kube, "agent.log");
    let agent_log = || std::fs::read_to_string(dir.path().join("agent.log")).unwrap_or_default();

    wait_until("kube_pod_status_phase in serve", || {
        !query_vector(meerkat.addr, r#"kube_pod_status_phase{phase="Running"}"#).is_empty()
    });
    let running = query_vector(meerkat.addr, r#"kube_pod_status_phase{phase="Running"}"#);
    let by_pod: BTreeMap<String, f64> = running
        .iter()
        .map(|(labels, v)| (labels["pod"].clone(), *v))
        .collect();
    assert_eq!(
        by_pod,
        BTreeMap::from([
            ("migrate".to_owned(), 0.0),
            ("web-7d4b9c8f6-x2k9p".to_owned(), 1.0)
        ]),
        "{running:?}\n{}",
        agent_log()
    );
    let (labels, _) = running.iter().find(|(l, _)| l["pod"] == "migrate").unwrap();
    let expected: BTreeMap<String, String> = [
        ("__name__", "kube_pod_status_phase"),
        ("cluster", "e2e"),
        ("job", "kube-state-metrics"),
        ("namespace", "shop"),
        ("phase", "Running"),
        ("pod", "migrate"),
        ("uid", "9e8d7c6b-1111-4222-8333-444455556666"),
    ]
    .iter()
    .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
    .collect();
    // Compared with the name whether or not the answer carries `__name__`.
    let mut got = labels.clone();
    got.insert("__name__".to_owned(), "kube_pod_status_phase".to_owned());
    assert_eq!(got, expected);

    for (promql, want) in [
        (
            r#"kube_deployment_status_replicas_available{deployment="web"}"#,
            2.0,
        ),
        (
            r#"kube_deployment_status_replicas_unavailable{deployment="web"}"#,
            1.0,
        ),
        (r#"kube_deployment_spec_replicas{deployment="web"}"#, 3.0),
        (
            r#"kube_statefulset_status_replicas_updated{statefulset="db"}"#,
            2.0,
        ),
        (
            r#"kube_daemonset_status_number_misscheduled{daemonset="meerkat-node"}"#,
            1.0,
        ),
        (
            r#"kube_pod_container_status_restarts_total{container="sidecar"}"#,
            5.0,
        ),
        (
            r#"kube_pod_container_status_waiting_reason{reason="CrashLoopBackOff"}"#,
            1.0,
        ),
        (
            r#"kube_node_status_capacity{node="node-a",resource="cpu",unit="core"}"#,
            4.0,
        ),
        (
            r#"kube_node_status_allocatable{node="node-a",resource="memory",unit="byte"}"#,
            15_588_974_592.0,
        ),
        (
            r#"kube_node_status_condition{condition="Ready",status="true"}"#,
            1.0,
        ),
        (r#"kube_node_spec_unschedulable{node="node-a"}"#, 1.0),
    ] {
        assert_eq!(value(&meerkat, promql), Some(want), "{promql}");
    }

    // Families carry kube-state-metrics' types (remote-write metadata).
    wait_until("the families' metadata", || {
        let answer = common::get(meerkat.addr, "/api/v1/metadata").unwrap();
        let body: Value = serde_json::from_str(&answer.body).unwrap();
        body["data"]["kube_pod_container_status_restarts_total"][0]["type"] == "counter"
            && body["data"]["kube_deployment_spec_replicas"][0]["type"] == "gauge"
    });

    // MODIFIED: the rollout finishes.
    let mut deployment = fixture("deployment.json");
    deployment["status"]["availableReplicas"] = 3.into();
    deployment["status"]["unavailableReplicas"] = 0.into();
    kube.apply(Resource::Deployments, deployment.clone());
    wait_until("the modified deployment", || {
        value(
            &meerkat,
            r#"kube_deployment_status_replicas_available{deployment="web"}"#,
        ) == Some(3.0)
    });
    assert_eq!(
        value(
            &meerkat,
            r#"kube_deployment_status_replicas_unavailable{deployment="web"}"#
        ),
        Some(0.0)
    );

    // DELETED: the pod's series are marked stale, so they stop answering at once rather
    // than after the five-minute lookback.
    assert_eq!(
        value(&meerkat, r#"kube_pod_info{pod="migrate"}"#),
        Some(1.0)
    );
    assert!(kube.delete(Resource::Pods, "shop", "migrate"));
    wait_until("the deleted pod's series to go stale", || {
        query_vector(meerkat.addr, r#"{pod="migrate",job="kube-state-metrics"}"#).is_empty()
    });
    assert_eq!(
        value(&meerkat, r#"kube_pod_info{pod="web-7d4b9c8f6-x2k9p"}"#),
        Some(1.0)
    );

    // Two Kubernetes events into the events watch.
    kube.apply(
        Resource::Events,
        event(
            "web-7d4b9c8f6-x2k9p.17f0a1",
            "ev-1",
            "BackOff",
            "Back-off restarting failed container sidecar",
            "web-7d4b9c8f6-x2k9p",
        ),
    );
    kube.apply(
        Resource::Events,
        event(
            "web-7d4b9c8f6-x2k9p.17f0a2",
            "ev-2",
            "Unhealthy",
            "Readiness probe failed: HTTP probe failed with statuscode: 503",
            "web-7d4b9c8f6-x2k9p",
        ),
    );
    let two = vec![
        (
            "BackOff".to_owned(),
            "Back-off restarting failed container sidecar".to_owned(),
            "Pod/web-7d4b9c8f6-x2k9p".to_owned(),
        ),
        (
            "Unhealthy".to_owned(),
            "Readiness probe failed: HTTP probe failed with statuscode: 503".to_owned(),
            "Pod/web-7d4b9c8f6-x2k9p".to_owned(),
        ),
    ];
    wait_until("the two events in the events table", || {
        stored_events(&meerkat).len() >= 2
    });
    assert_eq!(stored_events(&meerkat), two, "{}", agent_log());

    // Restart: the initial list holds both events again; neither is sent twice. A third
    // event after the restart shows the new agent watches (and has listed) by the time
    // the table is read.
    agent.stop();
    let agent = Agent::start(dir.path(), &meerkat, &kube, "agent-2.log");
    kube.apply(
        Resource::Events,
        event(
            "web-7d4b9c8f6-x2k9p.17f0a3",
            "ev-3",
            "Pulled",
            "Container image \"envoyproxy/envoy:v1.30\" already present on machine",
            "web-7d4b9c8f6-x2k9p",
        ),
    );
    wait_until("the third event", || stored_events(&meerkat).len() >= 3);
    // Give a late duplicate the time to arrive, then count.
    std::thread::sleep(Duration::from_secs(3));
    let mut three = two.clone();
    three.push((
        "Pulled".to_owned(),
        "Container image \"envoyproxy/envoy:v1.30\" already present on machine".to_owned(),
        "Pod/web-7d4b9c8f6-x2k9p".to_owned(),
    ));
    three.sort();
    assert_eq!(
        stored_events(&meerkat),
        three,
        "{}",
        std::fs::read_to_string(dir.path().join("agent-2.log")).unwrap_or_default()
    );
    // The restarted agent sends state again.
    wait_until("state after the restart", || {
        value(
            &meerkat,
            r#"kube_deployment_status_replicas_available{deployment="web"}"#,
        ) == Some(3.0)
    });
    agent.stop();
}
