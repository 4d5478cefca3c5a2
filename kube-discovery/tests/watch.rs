//! Discovery kept current by watches against the Kubernetes API stand-in: ADDED, MODIFIED
//! and DELETED events change the targets, a closed watch is resumed from the last
//! resourceVersion (no new list), a 410 Gone leads to a new list after which the targets
//! are exactly the objects that exist; and the node agent's pod watch asks only for its
//! node's pods.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

mod fixtures;

use std::collections::BTreeSet;
use std::time::Duration;

use futures_util::StreamExt;
use kube_discovery::{KubernetesDiscovery, Plan, PodEvent};
use scrape::config::{KubernetesSdConfigYaml, TargetGroup};
use serde_json::{Value, json};
use test_peers::kube_api::{KubeApiServer, Resource, query_pairs};

fn pod(name: &str, ip: &str, node: &str) -> Value {
    let mut pod = fixtures::multi_port_pod();
    pod["metadata"]["name"] = json!(name);
    pod["status"]["podIP"] = json!(ip);
    pod["spec"]["nodeName"] = json!(node);
    pod
}

/// Addresses and pod names of the groups, with how often each occurs.
fn addresses(groups: &[TargetGroup]) -> Vec<String> {
    let mut out: Vec<String> = groups
        .iter()
        .flat_map(|g| {
            g.targets.iter().map(|t| {
                format!(
                    "{}/{t}",
                    g.labels
                        .get("__meta_kubernetes_pod_name")
                        .map_or("", String::as_str)
                )
            })
        })
        .collect();
    out.sort();
    out
}

fn pod_targets(names: &[(&str, &str)]) -> Vec<String> {
    let mut out: Vec<String> = names
        .iter()
        .flat_map(|(name, ip)| {
            [
                format!("{name}/{ip}:9000"),
                format!("{name}/{ip}:9001"),
                format!("{name}/{ip}"),
            ]
        })
        .collect();
    out.sort();
    out
}

async fn until(
    discovery: &KubernetesDiscovery,
    what: &str,
    done: impl Fn(&[TargetGroup]) -> bool,
) -> Vec<TargetGroup> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let groups = discovery.groups();
        if done(&groups) {
            return groups;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}; targets now: {:?}",
            addresses(&groups)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn wait_for(what: &str, done: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !done() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_events_restarts_and_410_keep_targets_exact() {
    let server = KubeApiServer::start();
    server.apply(Resource::Pods, pod("a", "10.0.0.1", "n1"));
    let client = kube_discovery::client(Some(&server.url())).await.unwrap();
    let config: KubernetesSdConfigYaml = serde_saphyr::from_str("role: pod\n").unwrap();
    let discovery = KubernetesDiscovery::start(client, Plan::new(&config, "/x").unwrap());
    until(&discovery, "the listed pod", |g| {
        addresses(g) == pod_targets(&[("a", "10.0.0.1")])
    })
    .await;
    wait_for("a watch", || server.open_watches() == 1).await;
    assert_eq!(server.lists(Resource::Pods).len(), 1);

    // ADDED, MODIFIED, DELETED.
    server.apply(Resource::Pods, pod("b", "10.0.0.2", "n1"));
    until(&discovery, "pod b added", |g| {
        addresses(g) == pod_targets(&[("a", "10.0.0.1"), ("b", "10.0.0.2")])
    })
    .await;
    let mut relabeled = pod("a", "10.0.0.1", "n1");
    relabeled["metadata"]["labels"] = json!({"test/label": "changed"});
    server.apply(Resource::Pods, relabeled);
    until(&discovery, "pod a modified", |g| {
        g.iter().any(|g| {
            g.labels.get("__meta_kubernetes_pod_label_test_label") == Some(&"changed".to_owned())
        })
    })
    .await;
    assert!(server.delete(Resource::Pods, "default", "b"));
    until(&discovery, "pod b deleted", |g| {
        addresses(g) == pod_targets(&[("a", "10.0.0.1")])
    })
    .await;

    // A watch restart: the client watches again from the last resourceVersion it saw, and
    // gets what changed meanwhile, without listing again.
    let last_seen = server.resource_version();
    let watches_before = server.watches(Resource::Pods).len();
    server.close_watches();
    server.apply(Resource::Pods, pod("c", "10.0.0.3", "n1"));
    until(&discovery, "pod c after the restart", |g| {
        addresses(g) == pod_targets(&[("a", "10.0.0.1"), ("c", "10.0.0.3")])
    })
    .await;
    let watches = server.watches(Resource::Pods);
    assert!(watches.len() > watches_before);
    assert_eq!(
        query_pairs(&watches[watches_before])["resourceVersion"],
        last_seen.to_string(),
        "{watches:?}"
    );
    assert_eq!(
        server.lists(Resource::Pods).len(),
        1,
        "no re-list on a restart"
    );

    // A bookmark moves the resourceVersion on without a pod changing (a service did):
    // the next watch starts from it, so the API server need not replay what it skipped.
    wait_for("the resumed watch", || server.open_watches() == 1).await;
    server.apply(Resource::Services, fixtures::multi_port_service());
    server.bookmark(Resource::Pods);
    let bookmarked = server.resource_version();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let watches_before = server.watches(Resource::Pods).len();
    server.close_watches();
    wait_for("a watch after the bookmark", || {
        server.watches(Resource::Pods).len() > watches_before
    })
    .await;
    let watch = &server.watches(Resource::Pods)[watches_before];
    assert_eq!(
        query_pairs(watch)["resourceVersion"],
        bookmarked.to_string(),
        "{watch}"
    );
    assert_eq!(query_pairs(watch)["allowWatchBookmarks"], "true", "{watch}");

    // 410 Gone: the history is forgotten; the client must list again. Changes made around
    // it are all reflected, nothing lost and nothing twice.
    wait_for("the resumed watch", || server.open_watches() == 1).await;
    server.expire();
    assert!(server.delete(Resource::Pods, "default", "a"));
    server.apply(Resource::Pods, pod("d", "10.0.0.4", "n1"));
    until(&discovery, "the state after 410", |g| {
        addresses(g) == pod_targets(&[("c", "10.0.0.3"), ("d", "10.0.0.4")])
    })
    .await;
    wait_for("a re-list", || server.lists(Resource::Pods).len() >= 2).await;
    // And it keeps watching from the new list.
    server.apply(Resource::Pods, pod("e", "10.0.0.5", "n1"));
    let groups = until(&discovery, "pod e after the re-list", |g| {
        addresses(g).iter().any(|a| a.starts_with("e/"))
    })
    .await;
    assert_eq!(
        addresses(&groups),
        pod_targets(&[("c", "10.0.0.3"), ("d", "10.0.0.4"), ("e", "10.0.0.5")])
    );
    let sources: BTreeSet<&str> = groups.iter().map(|g| g.source.as_str()).collect();
    assert_eq!(sources.len(), groups.len(), "each target once");
}

async fn next(events: &mut (impl futures_util::Stream<Item = PodEvent> + Unpin)) -> PodEvent {
    tokio::time::timeout(Duration::from_secs(20), events.next())
        .await
        .expect("a pod event in time")
        .expect("the stream goes on")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_pod_watch_asks_for_its_node_only() {
    let server = KubeApiServer::start();
    server.apply(Resource::Pods, pod("mine", "10.0.0.1", "n1"));
    server.apply(Resource::Pods, pod("theirs", "10.0.0.2", "n2"));
    let client = kube_discovery::client(Some(&server.url())).await.unwrap();
    let mut events = Box::pin(kube_discovery::watch_node_pods(client, "n1"));
    let name = |pod: &k8s_openapi::api::core::v1::Pod| pod.metadata.name.clone().unwrap();
    match next(&mut events).await {
        PodEvent::Resync(pods) => {
            assert_eq!(pods.iter().map(name).collect::<Vec<_>>(), ["mine"]);
        }
        other => panic!("expected the first list, got {other:?}"),
    }
    let requests = server.requests();
    assert!(!requests.is_empty());
    for request in &requests {
        assert!(request.starts_with("/api/v1/pods?"), "{request}");
        assert_eq!(
            query_pairs(request)["fieldSelector"],
            "spec.nodeName=n1",
            "{request}"
        );
    }

    server.apply(Resource::Pods, pod("theirs2", "10.0.0.3", "n2"));
    server.apply(Resource::Pods, pod("mine2", "10.0.0.4", "n1"));
    match next(&mut events).await {
        PodEvent::Applied(pod) => assert_eq!(name(&pod), "mine2"),
        other => panic!("expected mine2, got {other:?}"),
    }
    assert!(server.delete(Resource::Pods, "default", "mine"));
    match next(&mut events).await {
        PodEvent::Deleted(pod) => assert_eq!(name(&pod), "mine"),
        other => panic!("expected mine deleted, got {other:?}"),
    }
    // After 410 the consumer gets the whole set again.
    server.expire();
    match next(&mut events).await {
        PodEvent::Resync(pods) => {
            assert_eq!(pods.iter().map(name).collect::<Vec<_>>(), ["mine2"]);
        }
        other => panic!("expected a re-list, got {other:?}"),
    }
    assert!(server.lists(Resource::Pods).len() >= 2);
}
