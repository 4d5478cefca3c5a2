//! The cluster agent with `kubernetes_sd_configs` against the Kubernetes API stand-in: a
//! pod whose `prometheus.io/scrape` and `prometheus.io/port` annotations the usual
//! `relabel_configs` turn into a target pointing at a local exposition page is scraped,
//! and the series reach a local remote-write receiver with the relabeled pod labels; when
//! the pod is deleted (a watch DELETED event) the target goes away and its series are
//! marked stale.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use prost::Message;
use serde_json::json;
use test_peers::kube_api::{KubeApiServer, Resource};

const STALE_NAN_BITS: u64 = 0x7ff0_0000_0000_0002;

type Received = Arc<Mutex<Vec<(BTreeMap<String, String>, f64)>>>;

/// A remote-write receiver at `<url>/api/v1/write` keeping every sample, and answering
/// heartbeats.
async fn receiver() -> (String, Received) {
    let received: Received = Arc::default();
    let store = received.clone();
    let app = axum::Router::new()
        .route(
            "/api/v1/write",
            axum::routing::post(move |body: Bytes| {
                let store = store.clone();
                async move {
                    let raw = snap::raw::Decoder::new().decompress_vec(&body).unwrap();
                    let request = prompb::WriteRequest::decode(&raw[..]).unwrap();
                    let mut store = store.lock().unwrap();
                    for series in request.timeseries {
                        let labels: BTreeMap<String, String> = series
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
                            store.push((labels.clone(), sample.value));
                        }
                    }
                    axum::http::StatusCode::NO_CONTENT
                }
            }),
        )
        .fallback(|| async { axum::http::StatusCode::NO_CONTENT });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, received)
}

/// An exposition page on a free port.
async fn page() -> u16 {
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(|| async {
            (
                [("content-type", "text/plain; version=0.0.4")],
                "# TYPE shop_orders_total counter\nshop_orders_total{kind=\"book\"} 42\n",
            )
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, app).await });
    port
}

fn pod(name: &str, annotations: serde_json::Value) -> serde_json::Value {
    json!({
        "metadata": {
            "name": name, "namespace": "shop", "uid": format!("uid-{name}"),
            "labels": {"app": "shop", "app.kubernetes.io/version": "1.2"},
            "annotations": annotations
        },
        "spec": {
            "nodeName": "node-1",
            "containers": [{"name": "web", "image": "shop:1.2",
                            "ports": [{"name": "http", "containerPort": 8080, "protocol": "TCP"}]}]
        },
        "status": {"phase": "Running", "podIP": "127.0.0.1", "hostIP": "10.0.0.1",
                   "conditions": [{"type": "Ready", "status": "True"}]}
    })
}

const CONFIG: &str = r#"
global:
  scrape_interval: 1s
  scrape_timeout: 500ms
scrape_configs:
  - job_name: kubernetes-pods
    kubernetes_sd_configs:
      - role: pod
    relabel_configs:
      - source_labels: [__meta_kubernetes_pod_annotation_prometheus_io_scrape]
        action: keep
        regex: true
      - source_labels: [__address__, __meta_kubernetes_pod_annotation_prometheus_io_port]
        action: replace
        regex: ([^:]+)(?::\d+)?;(\d+)
        replacement: $1:$2
        target_label: __address__
      - action: labelmap
        regex: __meta_kubernetes_pod_label_(.+)
      - source_labels: [__meta_kubernetes_namespace]
        target_label: namespace
      - source_labels: [__meta_kubernetes_pod_name]
        target_label: pod
"#;

async fn until(
    what: &str,
    received: &Received,
    done: impl Fn(&[(BTreeMap<String, String>, f64)]) -> bool,
) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        if done(&received.lock().unwrap()) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}; received: {:?}",
            received
                .lock()
                .unwrap()
                .iter()
                .rev()
                .take(10)
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn annotated_pods_are_scraped_and_go_stale_when_deleted() {
    let port = page().await;
    let (gateway, received) = receiver().await;
    let kube = KubeApiServer::start();
    kube.apply(
        Resource::Pods,
        pod(
            "shop-1",
            json!({"prometheus.io/scrape": "true", "prometheus.io/port": port.to_string()}),
        ),
    );
    // Not annotated: never scraped.
    kube.apply(
        Resource::Pods,
        pod("shop-2", json!({"prometheus.io/port": port.to_string()})),
    );
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("prometheus.yml");
    std::fs::write(&config, CONFIG).unwrap();
    let options = agent_cluster::ClusterAgentOptions {
        scrape_config: config,
        gateway,
        headers: Vec::new(),
        buffer_bytes: 1 << 20,
        buffer_dir: None,
        cluster_name: "test".to_owned(),
        heartbeat_interval: Duration::from_secs(30),
        kube_api_url: Some(kube.url()),
        // This test is about discovery; cluster state has its own.
        cluster_state: false,
        cluster_state_interval: None,
        kube_events: false,
        metrics_listen: None,
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let agent = tokio::spawn(agent_cluster::run(options, async move {
        let _ = stopped.await;
    }));

    let expected: BTreeMap<String, String> = [
        ("__name__", "shop_orders_total"),
        ("kind", "book"),
        ("job", "kubernetes-pods"),
        ("instance", &format!("127.0.0.1:{port}")),
        ("namespace", "shop"),
        ("pod", "shop-1"),
        ("app", "shop"),
        ("app_kubernetes_io_version", "1.2"),
    ]
    .iter()
    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
    .collect();
    until("the pod's series", &received, |samples| {
        samples
            .iter()
            .any(|(labels, value)| *labels == expected && *value == 42.0)
    })
    .await;
    {
        let samples = received.lock().unwrap();
        assert!(
            !samples
                .iter()
                .any(|(labels, _)| labels.get("pod").map(String::as_str) == Some("shop-2")),
            "the pod without prometheus.io/scrape was scraped"
        );
        let up: Vec<_> = samples
            .iter()
            .filter(|(labels, _)| labels.get("__name__").map(String::as_str) == Some("up"))
            .collect();
        assert!(
            !up.is_empty()
                && up
                    .iter()
                    .all(|(labels, v)| *v == 1.0 && labels["pod"] == "shop-1"),
            "{up:?}"
        );
    }

    // The pod goes away: a DELETED event, the target stops, its series are marked stale.
    assert!(kube.delete(Resource::Pods, "shop", "shop-1"));
    until("staleness markers", &received, |samples| {
        samples
            .iter()
            .any(|(labels, value)| *labels == expected && value.to_bits() == STALE_NAN_BITS)
    })
    .await;
    let stale_count = received.lock().unwrap().len();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    {
        let samples = received.lock().unwrap();
        let after: Vec<_> = samples[stale_count..]
            .iter()
            .filter(|(labels, _)| labels.get("pod").map(String::as_str) == Some("shop-1"))
            .collect();
        assert!(
            after.is_empty(),
            "the deleted pod is still scraped: {after:?}"
        );
    }
    let requests = kube.requests();
    assert!(
        requests
            .iter()
            .any(|r| r.starts_with("/api/v1/pods?") && r.contains("watch=true")),
        "{requests:?}"
    );
    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(20), agent)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}
