//! The cluster agent's Kubernetes event sender against the Kubernetes API stand-in and a
//! local stand-in for the gateway's `/api/v1/events`: converted fields, retries through a
//! 503, a 400 dropped and counted, old events of the first list skipped, and a restart
//! with the same buffer directory sending nothing twice.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use agent_cluster::kube_events::{EventsConfig, KubeEvents, SENT_FILE};
use axum::body::Bytes;
use axum::http::StatusCode;
use model::{EventKind, KubernetesEventType, PlatformEvent};
use serde_json::{Value, json};
use test_peers::kube_api::{KubeApiServer, Resource};

type Received = Arc<Mutex<Vec<PlatformEvent>>>;

/// A gateway stand-in answering `status(n)` to its n-th request, keeping accepted events.
async fn gateway(
    status: impl Fn(usize) -> StatusCode + Send + Sync + 'static,
) -> (String, Received) {
    let received: Received = Arc::default();
    let store = received.clone();
    let attempts = Arc::new(AtomicUsize::new(0));
    let status = Arc::new(status);
    let app = axum::Router::new().route(
        "/api/v1/events",
        axum::routing::post(move |body: Bytes| {
            let (store, attempts, status) = (store.clone(), attempts.clone(), status.clone());
            async move {
                let code = status(attempts.fetch_add(1, Ordering::SeqCst));
                if code.is_success() {
                    let events: Vec<PlatformEvent> = serde_json::from_slice(&body).unwrap();
                    store.lock().unwrap().extend(events);
                }
                code
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, received)
}

fn event(name: &str, uid: &str, reason: &str, last: &str) -> Value {
    json!({
        "metadata": {"name": name, "namespace": "shop", "uid": uid, "creationTimestamp": last},
        "involvedObject": {"kind": "Pod", "namespace": "shop", "name": "web-1", "uid": "pod-uid-1"},
        "reason": reason,
        "message": format!("{reason} happened"),
        "source": {"component": "kubelet", "host": "node-a"},
        "firstTimestamp": "2026-01-01T00:00:00Z",
        "lastTimestamp": last,
        "count": 2,
        "type": "Warning"
    })
}

fn now() -> String {
    k8s_openapi::jiff::Timestamp::now().to_string()
}

fn config(url: &str, dir: &std::path::Path) -> EventsConfig {
    let mut config = EventsConfig::new(url, "test", Some(dir.to_path_buf()));
    config.flush_interval = Duration::from_millis(20);
    config.min_backoff = Duration::from_millis(20);
    config.max_backoff = Duration::from_millis(100);
    config
}

async fn until(what: &str, done: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !done() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn reasons(received: &Received) -> Vec<String> {
    let mut out: Vec<String> = received
        .lock()
        .unwrap()
        .iter()
        .map(|e| match &e.kind {
            EventKind::Kubernetes(k) => k.reason.clone(),
            other => panic!("not a Kubernetes event: {other:?}"),
        })
        .collect();
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_are_sent_once_through_failures_and_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let kube = KubeApiServer::start();
    kube.apply(
        Resource::Events,
        event("old", "ev-old", "Scheduled", "2026-01-01T00:00:00Z"),
    );
    kube.apply(Resource::Events, event("new", "ev-new", "BackOff", &now()));
    // The first answer is a 503 (retried), then 2xx.
    let (url, received) = gateway(|n| {
        if n == 0 {
            StatusCode::SERVICE_UNAVAILABLE
        } else {
            StatusCode::OK
        }
    })
    .await;
    let client = kube_discovery::client(Some(&kube.url())).await.unwrap();
    let events = KubeEvents::start(client.clone(), config(&url, dir.path())).unwrap();
    until("the new event", || !received.lock().unwrap().is_empty()).await;
    // The old one (from before the start, minus the window) is not sent.
    assert_eq!(reasons(&received), ["BackOff"]);
    let sent = received.lock().unwrap()[0].clone();
    assert_eq!(sent.source, "agent-cluster/test");
    let EventKind::Kubernetes(k) = &sent.kind else {
        panic!("not a Kubernetes event")
    };
    assert_eq!(
        (
            k.cluster.as_str(),
            k.namespace.as_str(),
            k.involved_kind.as_str(),
            k.involved_name.as_str(),
            k.involved_uid.as_str(),
            k.message.as_str(),
            k.event_type,
            k.count,
            k.first_timestamp_ms,
            k.reporting_component.as_str(),
            k.reporting_host.as_str(),
        ),
        (
            "test",
            "shop",
            "Pod",
            "web-1",
            "pod-uid-1",
            "BackOff happened",
            KubernetesEventType::Warning,
            2,
            1_767_225_600_000,
            "kubelet",
            "node-a",
        )
    );
    assert_eq!(sent.timestamp_ms, k.last_timestamp_ms);
    let stats = events.stats();
    assert_eq!((stats.sent, stats.retries), (1, 1));

    // An update (the kubelet bumps count and lastTimestamp) is sent again, once.
    let mut repeated = event("new", "ev-new", "BackOff", &now());
    repeated["count"] = 3.into();
    kube.apply(Resource::Events, repeated);
    until("the updated event", || received.lock().unwrap().len() == 2).await;
    // A 410 Gone makes the watcher list again: the listed events were sent, so none is
    // sent again (the stand-in's list requests show the re-list happened).
    let lists = kube.lists(Resource::Events).len();
    kube.expire();
    until("the re-list", || kube.lists(Resource::Events).len() > lists).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(received.lock().unwrap().len(), 2);
    events.stop().await;
    assert!(dir.path().join(SENT_FILE).exists());

    // A restart lists both events again: nothing is re-sent; a new one is.
    let events = KubeEvents::start(client.clone(), config(&url, dir.path())).unwrap();
    kube.apply(Resource::Events, event("third", "ev-3", "Pulled", &now()));
    until("the third event", || received.lock().unwrap().len() == 3).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(reasons(&received), ["BackOff", "BackOff", "Pulled"]);
    events.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_batch_is_dropped_and_counted_not_retried() {
    let dir = tempfile::tempdir().unwrap();
    let kube = KubeApiServer::start();
    kube.apply(Resource::Events, event("a", "ev-a", "Failed", &now()));
    let (url, received) = gateway(|n| {
        if n == 0 {
            StatusCode::BAD_REQUEST
        } else {
            StatusCode::OK
        }
    })
    .await;
    let client = kube_discovery::client(Some(&kube.url())).await.unwrap();
    let events = KubeEvents::start(client, config(&url, dir.path())).unwrap();
    until("the refusal", || events.stats().rejected == 1).await;
    kube.apply(Resource::Events, event("b", "ev-b", "Killing", &now()));
    until("the next event", || !received.lock().unwrap().is_empty()).await;
    assert_eq!(reasons(&received), ["Killing"]);
    assert_eq!(events.stats().retries, 0);
    events.stop().await;
}
