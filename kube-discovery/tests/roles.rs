//! Each role's target groups for the objects of Prometheus 2.42's own unit tests, compared
//! with the label sets those tests expect: first built straight from the objects, then
//! discovered through list/watch from the Kubernetes API stand-in.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

mod fixtures;

use std::collections::HashMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Endpoints, Node, Pod, Service};
use kube_discovery::targets::{self, EndpointsContext, Group};
use kube_discovery::{KubernetesDiscovery, Plan};
use scrape::config::{KubernetesSdConfigYaml, TargetGroup};
use serde_json::Value;
use test_peers::kube_api::{KubeApiServer, Resource, query_pairs};

use fixtures::*;

fn object<K: serde::de::DeserializeOwned>(value: Value) -> K {
    serde_json::from_value(value).expect("a valid Kubernetes object")
}

#[derive(Default)]
struct Objects {
    services: HashMap<(String, String), Service>,
    pods: HashMap<(String, String), Pod>,
}

impl EndpointsContext for Objects {
    fn service(&self, namespace: &str, name: &str) -> Option<&Service> {
        self.services.get(&(namespace.to_owned(), name.to_owned()))
    }
    fn pod(&self, namespace: &str, name: &str) -> Option<&Pod> {
        self.pods.get(&(namespace.to_owned(), name.to_owned()))
    }
    fn node(&self, _: &str) -> Option<&Node> {
        None
    }
}

#[test]
fn pod_role_matches_prometheus() {
    let pod: Pod = object(multi_port_pod());
    assert_eq!(targets::pod_group(&pod, None), multi_port_pod_group());
    let pod: Pod = object(init_container_pod());
    assert_eq!(targets::pod_group(&pod, None), init_container_pod_group());
    // No pod IP yet: an empty group (the targets go away), as Prometheus sends.
    let mut starting = multi_port_pod();
    starting["status"]["podIP"] = Value::Null;
    let group = targets::pod_group(&object(starting), None);
    assert_eq!(group.source, "pod/default/testpod");
    assert!(group.targets.is_empty() && group.labels.is_empty());
}

#[test]
fn attached_node_metadata_goes_on_the_pod_group() {
    let pod: Pod = object(multi_port_pod());
    let mut node: Node = object(node());
    node.metadata.name = Some("testnode".to_owned());
    let group = targets::pod_group(&pod, Some(&node));
    assert_eq!(group.labels["__meta_kubernetes_node_name"], "testnode");
    assert_eq!(
        group.labels["__meta_kubernetes_node_label_test_label"],
        "testvalue"
    );
    assert_eq!(
        group.labels["__meta_kubernetes_node_labelpresent_test_label"],
        "true"
    );
    // Annotations of the node are not attached (Prometheus's addNodeLabels).
    assert!(
        !group
            .labels
            .contains_key("__meta_kubernetes_node_annotation_test_annotation")
    );
}

#[test]
fn service_role_matches_prometheus() {
    let service: Service = object(multi_port_service());
    assert_eq!(targets::service_group(&service), multi_port_service_group());
    let service: Service = object(external_service());
    assert_eq!(targets::service_group(&service), external_service_group());
}

#[test]
fn node_role_matches_prometheus() {
    let node: Node = object(node());
    assert_eq!(targets::node_group(&node), Some(node_group()));
    let mut without = fixtures::node();
    without["status"]["addresses"] = Value::Array(Vec::new());
    assert_eq!(targets::node_group(&object(without)), None);
    // ExternalIP is preferred to Hostname but not to InternalDNS.
    let mut external = fixtures::node();
    external["status"]["addresses"] = serde_json::json!([
        {"type": "Hostname", "address": "h"},
        {"type": "ExternalIP", "address": "5.6.7.8"},
        {"type": "InternalDNS", "address": "test.cluster.local"}
    ]);
    let group = targets::node_group(&object(external)).unwrap();
    assert_eq!(group.targets[0]["__address__"], "test.cluster.local:10250");
}

#[test]
fn endpoints_role_matches_prometheus() {
    let mut objects = Objects::default();
    let service: Service = object(endpoints_service());
    objects
        .services
        .insert(("default".to_owned(), "testendpoints".to_owned()), service);
    let endpoints: Endpoints = object(fixtures::endpoints());
    assert_eq!(
        targets::endpoints_group(&endpoints, &objects),
        endpoints_group()
    );
    let pod: Pod = object(endpoints_pod());
    objects
        .pods
        .insert(("ns1".to_owned(), "testpod".to_owned()), pod);
    let endpoints: Endpoints = object(pod_endpoints());
    assert_eq!(
        targets::endpoints_group(&endpoints, &objects),
        pod_endpoints_group()
    );
}

fn sd_config(yaml: &str) -> KubernetesSdConfigYaml {
    serde_saphyr::from_str(yaml).unwrap()
}

/// Waits until discovery publishes groups that `done` accepts.
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
            "timed out waiting for {what}; groups now: {groups:#?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn flat(groups: &[TargetGroup]) -> Vec<(Vec<String>, std::collections::BTreeMap<String, String>)> {
    let mut out: Vec<_> = groups
        .iter()
        .map(|g| (g.targets.clone(), g.labels.clone()))
        .collect();
    out.sort();
    out
}

async fn discover(server: &KubeApiServer, yaml: &str) -> KubernetesDiscovery {
    let client = kube_discovery::client(Some(&server.url())).await.unwrap();
    let plan = Plan::new(&sd_config(yaml), "/nonexistent").unwrap();
    KubernetesDiscovery::start(client, plan)
}

fn expected(groups: &[Group]) -> Vec<(Vec<String>, std::collections::BTreeMap<String, String>)> {
    flattened(groups)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_role_discovered_through_the_api() {
    let server = KubeApiServer::start();
    server.apply(Resource::Pods, multi_port_pod());
    server.apply(Resource::Pods, endpoints_pod());
    server.apply(Resource::Services, multi_port_service());
    server.apply(Resource::Services, external_service());
    server.apply(Resource::Services, endpoints_service());
    server.apply(Resource::Nodes, fixtures::node());
    server.apply(Resource::Endpoints, fixtures::endpoints());
    server.apply(Resource::Endpoints, pod_endpoints());

    let pods = discover(&server, "role: pod\nnamespaces: {names: [default]}\n").await;
    let groups = until(&pods, "pod targets", |g| !g.is_empty()).await;
    assert_eq!(flat(&groups), expected(&[multi_port_pod_group()]));

    let services = discover(&server, "role: service\n").await;
    let groups = until(&services, "service targets", |g| g.len() == 4).await;
    let mut endpoints_service_group = targets::service_group(&object(endpoints_service()));
    endpoints_service_group.source = "svc/default/testendpoints".to_owned();
    assert_eq!(
        flat(&groups),
        expected(&[
            multi_port_service_group(),
            external_service_group(),
            endpoints_service_group
        ])
    );

    let nodes = discover(&server, "role: node\n").await;
    let groups = until(&nodes, "node targets", |g| !g.is_empty()).await;
    assert_eq!(flat(&groups), expected(&[node_group()]));

    let endpoints = discover(&server, "role: endpoints\n").await;
    let groups = until(&endpoints, "endpoints targets", |g| g.len() == 6).await;
    assert_eq!(
        flat(&groups),
        expected(&[endpoints_group(), pod_endpoints_group()])
    );

    // The namespace went into the path; no other role listed pods of every namespace.
    let pod_lists = server.lists(Resource::Pods);
    assert!(
        pod_lists
            .iter()
            .any(|r| r.starts_with("/api/v1/namespaces/default/pods?")),
        "{pod_lists:?}"
    );
    assert!(
        server
            .watches(Resource::Nodes)
            .iter()
            .all(|r| query_pairs(r).contains_key("resourceVersion")),
        "watches resume from the listed resourceVersion"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoints_get_their_node_s_labels_with_attach_metadata() {
    let server = KubeApiServer::start();
    server.apply(Resource::Endpoints, fixtures::endpoints());
    let mut node = fixtures::node();
    node["metadata"]["name"] = "foobar".into();
    server.apply(Resource::Nodes, node);
    let discovery = discover(&server, "role: endpoints\nattach_metadata: {node: true}\n").await;
    let groups = until(&discovery, "endpoints targets", |g| g.len() == 4).await;
    let on_node: Vec<_> = groups
        .iter()
        .filter(|g| {
            g.labels
                .contains_key("__meta_kubernetes_endpoint_node_name")
        })
        .collect();
    assert_eq!(on_node.len(), 1, "{groups:#?}");
    assert_eq!(on_node[0].targets, ["1.2.3.4:9000"]);
    assert_eq!(on_node[0].labels["__meta_kubernetes_node_name"], "foobar");
    assert_eq!(
        on_node[0].labels["__meta_kubernetes_node_label_test_label"],
        "testvalue"
    );
    // The others have no node, so no node labels.
    assert!(
        groups
            .iter()
            .filter(|g| !g
                .labels
                .contains_key("__meta_kubernetes_endpoint_node_name"))
            .all(|g| !g.labels.contains_key("__meta_kubernetes_node_name"))
    );
    assert!(!server.lists(Resource::Nodes).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn selectors_and_namespaces_go_to_the_api_server() {
    let server = KubeApiServer::start();
    let mut other = multi_port_pod();
    other["metadata"]["name"] = "otherpod".into();
    other["metadata"]["labels"] = serde_json::json!({"app": "other"});
    let mut mine = multi_port_pod();
    mine["metadata"]["labels"] = serde_json::json!({"app": "mine"});
    server.apply(Resource::Pods, mine);
    server.apply(Resource::Pods, other);
    let own = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(own.path(), "monitoring\n").unwrap();
    let config = sd_config(
        "role: endpoints\nnamespaces: {names: [default], own_namespace: true}\nselectors:\n  - {role: pod, label: app=mine}\n  - {role: service, field: metadata.name=x}\n",
    );
    let plan = Plan::new(&config, &own.path().display().to_string()).unwrap();
    assert_eq!(
        plan.namespaces,
        Some(vec!["default".to_owned(), "monitoring".to_owned()])
    );
    let client = kube_discovery::client(Some(&server.url())).await.unwrap();
    let discovery = KubernetesDiscovery::start(client, plan);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while server.watches(Resource::Services).len() < 2 || server.watches(Resource::Pods).len() < 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{:?}",
            server.requests()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let requests = server.requests();
    for namespace in ["default", "monitoring"] {
        for (plural, selector) in [
            ("pods", Some(("labelSelector", "app=mine"))),
            ("services", Some(("fieldSelector", "metadata.name=x"))),
            ("endpoints", None),
        ] {
            let prefix = format!("/api/v1/namespaces/{namespace}/{plural}?");
            let sent: Vec<_> = requests.iter().filter(|r| r.starts_with(&prefix)).collect();
            assert!(!sent.is_empty(), "no request for {prefix}: {requests:?}");
            for request in sent {
                let query = query_pairs(request);
                match selector {
                    Some((key, value)) => assert_eq!(query[key], value, "{request}"),
                    None => assert!(
                        !query.contains_key("labelSelector")
                            && !query.contains_key("fieldSelector"),
                        "{request}"
                    ),
                }
            }
        }
    }
    assert!(
        !requests.iter().any(|r| r.starts_with("/api/v1/pods")),
        "pods of every namespace were asked for: {requests:?}"
    );
    drop(discovery);

    // Prometheus's validation: selector roles must fit the role, once each.
    let error = Plan::new(
        &sd_config("role: pod\nselectors: [{role: node, label: a=b}]\n"),
        "/x",
    )
    .unwrap_err();
    assert!(
        error
            .to_string()
            .contains("pod role supports only pod selectors"),
        "{error}"
    );
    let error = Plan::new(
        &sd_config("role: pod\nselectors: [{role: pod, label: a=b}, {role: pod, field: x=y}]\n"),
        "/x",
    )
    .unwrap_err();
    assert!(
        error.to_string().contains("duplicated selector role"),
        "{error}"
    );
    let error = Plan::new(&sd_config("role: ingress\n"), "/x").unwrap_err();
    assert!(error.to_string().contains("not supported"), "{error}");
    let error = Plan::new(
        &sd_config("role: pod\nnamespaces: {own_namespace: true}\n"),
        "/nonexistent/namespace",
    )
    .unwrap_err();
    assert!(
        error.to_string().contains("/nonexistent/namespace"),
        "{error}"
    );
}
