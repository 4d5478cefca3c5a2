//! Pod discovery against a kubelet replaying a recorded `/pods` answer and a node
//! filesystem built in a temporary directory.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use agent_node::pods::{DiscoveryConfig, Error, PodClass, PodDiscovery, PodSource};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;

const PODS_JSON: &str = include_str!("../testdata/kubelet/pods.json");
const WEB_UID: &str = "5f0c3b8e-2a1d-4c6b-9e7f-0a1b2c3d4e5f";
const MYSQL_UID: &str = "a7c1e3f5-9b2d-4f6a-8c0e-1d3f5a7b9c2e";

#[derive(Default)]
struct Kubelet {
    /// 0 answers the recorded list; anything else is answered with that status.
    status: AtomicU16,
    body: Mutex<String>,
    requests: AtomicUsize,
    authorization: Mutex<Option<String>>,
}

async fn pods(State(kubelet): State<Arc<Kubelet>>, headers: HeaderMap) -> impl IntoResponse {
    kubelet.requests.fetch_add(1, Ordering::SeqCst);
    *kubelet.authorization.lock().expect("lock") = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = kubelet.body.lock().expect("lock").clone();
    match kubelet.status.load(Ordering::SeqCst) {
        0 => (StatusCode::OK, body),
        status => (
            StatusCode::from_u16(status).expect("status"),
            "kubelet is restarting".to_owned(),
        ),
    }
}

async fn serve_kubelet() -> (Arc<Kubelet>, String) {
    let kubelet = Arc::new(Kubelet::default());
    *kubelet.body.lock().expect("lock") = PODS_JSON.to_owned();
    let app = axum::Router::new()
        .route("/pods", axum::routing::get(pods))
        .with_state(kubelet.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await });
    (kubelet, format!("http://{addr}/pods"))
}

fn mkdir(path: &Path) {
    std::fs::create_dir_all(path).expect("mkdir");
}

fn log_dir(root: &Path, namespace: &str, pod: &str, uid: &str) -> PathBuf {
    let dir = root.join(format!("var/log/pods/{namespace}_{pod}_{uid}/app"));
    mkdir(&dir);
    dir
}

fn config(root: &Path, kubelet_url: Option<String>) -> DiscoveryConfig {
    DiscoveryConfig {
        root: root.to_path_buf(),
        node_name: "node-a".to_owned(),
        kubelet_url,
        ..DiscoveryConfig::default()
    }
}

fn label<'a>(labels: &'a [(String, String)], name: &str) -> Option<&'a str> {
    labels
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

#[tokio::test]
async fn kubelet_pod_list_fills_the_store_with_classified_attributes() {
    let (kubelet, url) = serve_kubelet().await;
    let root = tempfile::tempdir().expect("tempdir");
    log_dir(root.path(), "project-1-dev", "web-7d4b9c8f6-x2x9k", WEB_UID);
    let token = root.path().join("token");
    std::fs::write(&token, "s3cret-token\n").expect("token");
    let mut discovery = PodDiscovery::new(DiscoveryConfig {
        kubelet_token_file: Some(token),
        ..config(root.path(), Some(url))
    })
    .expect("discovery");
    assert_eq!(discovery.scan_filesystem(), [WEB_UID]);
    assert_eq!(
        discovery.store().by_uid(WEB_UID).map(|e| e.source),
        Some(PodSource::Filesystem)
    );
    assert_eq!(
        discovery.refresh_kubelet().await.expect("kubelet answers"),
        5
    );
    assert_eq!(
        kubelet.authorization.lock().expect("lock").as_deref(),
        Some("Bearer s3cret-token")
    );
    let store = discovery.store();
    assert_eq!(store.len(), 5);

    let web = store.by_uid(WEB_UID).expect("web");
    assert_eq!(
        web.source,
        PodSource::Kubelet,
        "the kubelet's richer view wins"
    );
    let expected_labels: Vec<(String, String)> = [
        ("namespace", "project-1-dev"),
        ("pod", "web-7d4b9c8f6-x2x9k"),
        ("pod_uid", WEB_UID),
        ("node", "node-a"),
        ("pod_class", "service"),
        ("service_name", "storefront-web"),
        ("org_name", "erda"),
        ("project_name", "shop"),
        ("application_name", "storefront"),
        ("workspace_name", "DEV"),
        ("runtime_name", "feature/checkout"),
        ("workload_kind", "Deployment"),
        ("workload_name", "web"),
    ]
    .iter()
    .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
    .collect();
    assert_eq!(web.attributes.labels, expected_labels);
    let expected_otlp: Vec<(String, String)> = [
        ("k8s.namespace.name", "project-1-dev"),
        ("k8s.pod.name", "web-7d4b9c8f6-x2x9k"),
        ("k8s.pod.uid", WEB_UID),
        ("k8s.node.name", "node-a"),
        ("erda.pod_class", "service"),
        ("service.name", "storefront-web"),
        ("erda.org_name", "erda"),
        ("erda.project_name", "shop"),
        ("erda.application_name", "storefront"),
        ("erda.workspace_name", "DEV"),
        ("erda.runtime_name", "feature/checkout"),
        ("k8s.deployment.name", "web"),
        ("k8s.replicaset.name", "web-7d4b9c8f6"),
    ]
    .iter()
    .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
    .collect();
    assert_eq!(web.attributes.otlp, expected_otlp);

    // Lookups the log tailer and the OTLP proxy make.
    for ip in ["10.244.1.17", "fd00:10:244:1::11"] {
        assert_eq!(
            store.by_ip(ip).map(|e| e.info.uid.clone()).as_deref(),
            Some(WEB_UID)
        );
    }
    assert!(
        store.by_ip("192.168.10.21").is_none(),
        "a host-network pod's IP is the node's and names no pod"
    );
    let by_container = store
        .by_container_id(
            "containerd://4a6f0c2e8b1d3f5a7c9e0b2d4f6a8c1e3b5d7f9a0c2e4b6d8f1a3c5e7b9d0f2a",
        )
        .expect("web's container");
    assert_eq!(by_container.info.uid, WEB_UID);
    let web_container = by_container
        .info
        .containers
        .iter()
        .find(|c| c.name == "web")
        .expect("web container");
    assert_eq!(web_container.image, "registry.example.com/shop/web:1.4.2");

    let mysql = store.by_uid(MYSQL_UID).expect("mysql");
    assert_eq!(mysql.attributes.class, PodClass::Addon);
    assert_eq!(mysql.attributes.service_name, "mysql");
    assert_eq!(
        label(&mysql.attributes.labels, "workload_kind"),
        Some("StatefulSet")
    );
    assert_eq!(label(&mysql.attributes.labels, "org_name"), None);
    assert_eq!(
        label(&mysql.attributes.labels, "project_name"),
        Some("shop")
    );

    let by_name = |name: &str| {
        store
            .pods()
            .into_iter()
            .find(|e| e.info.name == name)
            .unwrap_or_else(|| panic!("{name} stored"))
    };
    let job = by_name("pipeline-4711-build-kq8zt");
    assert_eq!(job.attributes.class, PodClass::Job);
    assert_eq!(
        job.attributes
            .workload
            .as_ref()
            .map(|w| (w.kind.as_str(), w.name.as_str())),
        Some(("Job", "pipeline-4711-build"))
    );
    assert!(job.info.ips.is_empty(), "a pending pod has no IP yet");
    assert!(
        job.attributes
            .otlp
            .contains(&("k8s.job.name".to_owned(), "pipeline-4711-build".to_owned()))
    );
    let component = by_name("erda-server-5c9f8d7b6-m4n7p");
    assert_eq!(component.attributes.class, PodClass::Component);
    assert_eq!(component.attributes.service_name, "erda-server");
    let exporter = by_name("node-exporter-7gq2m");
    assert_eq!(exporter.attributes.class, PodClass::Service);
    assert_eq!(
        label(&exporter.attributes.labels, "workload_kind"),
        Some("DaemonSet")
    );
    assert!(
        exporter
            .attributes
            .otlp
            .contains(&("k8s.daemonset.name".to_owned(), "node-exporter".to_owned()))
    );
}

#[tokio::test]
async fn a_failing_kubelet_keeps_the_last_list_and_says_why() {
    let (kubelet, url) = serve_kubelet().await;
    let root = tempfile::tempdir().expect("tempdir");
    let discovery = PodDiscovery::new(config(root.path(), Some(url.clone()))).expect("discovery");
    discovery.refresh_kubelet().await.expect("first answer");

    kubelet.status.store(503, Ordering::SeqCst);
    match discovery.refresh_kubelet().await {
        Err(Error::KubeletStatus { status, body, .. }) => {
            assert_eq!(status, 503);
            assert_eq!(body, "kubelet is restarting");
        }
        other => panic!("expected a status error, got {other:?}"),
    }
    assert_eq!(discovery.store().len(), 5, "the last list is kept");

    kubelet.status.store(0, Ordering::SeqCst);
    *kubelet.body.lock().expect("lock") = "{\"kind\":\"PodList\",\"items\":[{".to_owned();
    let error = discovery
        .refresh_kubelet()
        .await
        .expect_err("truncated body");
    assert!(matches!(error, Error::KubeletBody { .. }), "{error}");
    assert!(error.to_string().contains(&url), "{error}");
    assert_eq!(discovery.store().len(), 5);

    // A pod that is gone from the kubelet's list is gone from the store.
    let mut list: serde_json::Value = serde_json::from_str(PODS_JSON).expect("json");
    list["items"]
        .as_array_mut()
        .expect("items")
        .retain(|pod| pod["metadata"]["uid"] != MYSQL_UID);
    *kubelet.body.lock().expect("lock") = list.to_string();
    assert_eq!(discovery.refresh_kubelet().await.expect("answer"), 4);
    assert!(discovery.store().by_uid(MYSQL_UID).is_none());
    assert!(discovery.store().by_ip("10.244.1.9").is_none());
}

#[tokio::test]
async fn the_kubelet_address_must_be_plain_http_for_now() {
    let root = tempfile::tempdir().expect("tempdir");
    let error = PodDiscovery::new(config(
        root.path(),
        Some("https://192.168.10.21:10250/pods".to_owned()),
    ))
    .expect_err("https refused");
    let message = error.to_string();
    assert!(message.contains("https is not supported yet"), "{message}");
    assert!(message.contains("192.168.10.21:10250"), "{message}");

    let (_kubelet, url) = serve_kubelet().await;
    let discovery = PodDiscovery::new(DiscoveryConfig {
        kubelet_token_file: Some(root.path().join("no-such-token")),
        ..config(root.path(), Some(url))
    })
    .expect("discovery");
    let error = discovery
        .refresh_kubelet()
        .await
        .expect_err("token missing");
    assert!(matches!(error, Error::TokenFile { .. }), "{error}");
    assert!(error.to_string().contains("no-such-token"), "{error}");
}

#[tokio::test]
async fn pods_only_on_disk_are_known_without_a_kubelet() {
    let root = tempfile::tempdir().expect("tempdir");
    let dir = log_dir(root.path(), "addon-redis", "redis-0", "1234-abcd");
    let mut discovery = PodDiscovery::new(config(root.path(), None)).expect("discovery");
    discovery.scan_filesystem();
    let entry = discovery
        .store()
        .by_uid("1234-abcd")
        .expect("pod from disk");
    assert_eq!(entry.info.namespace, "addon-redis");
    assert_eq!(entry.attributes.class, PodClass::Addon);
    assert_eq!(entry.attributes.service_name, "redis-0");
    assert_eq!(label(&entry.attributes.labels, "node"), Some("node-a"));
    assert_eq!(
        discovery
            .refresh_kubelet()
            .await
            .expect("no kubelet: no-op"),
        0
    );

    std::fs::remove_dir_all(dir.parent().expect("pod dir")).expect("remove");
    assert!(discovery.scan_filesystem().is_empty());
    assert!(discovery.store().is_empty());
}

#[tokio::test]
async fn a_new_pod_directory_asks_the_kubelet_at_once() {
    let (kubelet, url) = serve_kubelet().await;
    let root = tempfile::tempdir().expect("tempdir");
    let discovery = PodDiscovery::new(DiscoveryConfig {
        kubelet_refresh_seconds: 3600.0,
        scan_interval_seconds: 0.05,
        ..config(root.path(), Some(url))
    })
    .expect("discovery");
    let store = discovery.store().clone();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(discovery.run(async move {
        let _ = stopped.await;
    }));

    let wait_for = |want: usize| {
        let kubelet = kubelet.clone();
        async move {
            let deadline = Instant::now() + Duration::from_secs(5);
            while kubelet.requests.load(Ordering::SeqCst) < want {
                assert!(
                    Instant::now() < deadline,
                    "kubelet asked fewer than {want} times"
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    };
    wait_for(1).await;
    while store.len() < 5 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Without a new directory the hour-long refresh interval holds.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(kubelet.requests.load(Ordering::SeqCst), 1);

    log_dir(root.path(), "project-1-dev", "web-7d4b9c8f6-x2x9k", WEB_UID);
    wait_for(2).await;
    let _ = stop.send(());
    task.await.expect("discovery loop stops");
}
