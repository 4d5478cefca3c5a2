//! Cluster state metrics with kube-state-metrics v2's names, labels and values, so the
//! dashboards and alerts written for kube-state-metrics work on Meerkat unchanged.
//!
//! Pods, deployments, statefulsets, daemonsets and nodes are watched by kube reflectors
//! (list, watch, resume, re-list after 410 Gone); every interval the stores' objects are
//! turned into series with `job="kube-state-metrics"` and the external labels, and sent by
//! remote-write. A series the previous cycle had and this one lacks (a deleted pod, a
//! container gone from the status) gets a stale marker, as a scrape of kube-state-metrics
//! by Prometheus would give it. Nothing is sent until every watcher has listed once, so a
//! start does not flap series.
//!
//! Names and labels follow kube-state-metrics' `internal/store/{pod,deployment,
//! statefulset,daemonset,node}.go`: a value KSM skips when a field is unset is skipped here
//! too; conditions get the `true`/`false`/`unknown` series; phases one series per phase.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use delivery::Delivery;
use delivery::stale::{Labels, StaleTracker};
use futures_util::StreamExt;
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

/// The `job` label of every series, as a Prometheus scrape of kube-state-metrics has it.
pub const JOB: &str = "kube-state-metrics";

/// The families sent, with kube-state-metrics' type and help, sent as remote-write
/// metadata so Grafana and `/api/v1/metadata` know them.
const FAMILIES: &[(&str, &str)] = &[
    ("kube_pod_info", "Information about pod."),
    ("kube_pod_owner", "Information about the Pod's owner."),
    ("kube_pod_status_phase", "The pods current phase."),
    (
        "kube_pod_status_ready",
        "Describes whether the pod is ready to serve requests.",
    ),
    (
        "kube_pod_container_status_restarts_total",
        "The number of container restarts per container.",
    ),
    (
        "kube_pod_container_status_ready",
        "Describes whether the containers readiness check succeeded.",
    ),
    (
        "kube_pod_container_status_running",
        "Describes whether the container is currently in running state.",
    ),
    (
        "kube_pod_container_status_waiting",
        "Describes whether the container is currently in waiting state.",
    ),
    (
        "kube_pod_container_status_terminated",
        "Describes whether the container is currently in terminated state.",
    ),
    (
        "kube_pod_container_status_waiting_reason",
        "Describes the reason the container is currently in waiting state.",
    ),
    (
        "kube_pod_container_status_terminated_reason",
        "Describes the reason the container is currently in terminated state.",
    ),
    (
        "kube_pod_container_status_last_terminated_reason",
        "Describes the last reason the container was in terminated state.",
    ),
    (
        "kube_deployment_status_replicas",
        "The number of replicas per deployment.",
    ),
    (
        "kube_deployment_status_replicas_ready",
        "The number of ready replicas per deployment.",
    ),
    (
        "kube_deployment_status_replicas_available",
        "The number of available replicas per deployment.",
    ),
    (
        "kube_deployment_status_replicas_unavailable",
        "The number of unavailable replicas per deployment.",
    ),
    (
        "kube_deployment_status_replicas_updated",
        "The number of updated replicas per deployment.",
    ),
    (
        "kube_deployment_status_observed_generation",
        "The generation observed by the deployment controller.",
    ),
    (
        "kube_deployment_spec_replicas",
        "Number of desired pods for a deployment.",
    ),
    (
        "kube_deployment_metadata_generation",
        "Sequence number representing a specific generation of the desired state.",
    ),
    (
        "kube_statefulset_status_replicas",
        "The number of replicas per StatefulSet.",
    ),
    (
        "kube_statefulset_status_replicas_available",
        "The number of available replicas per StatefulSet.",
    ),
    (
        "kube_statefulset_status_replicas_current",
        "The number of current replicas per StatefulSet.",
    ),
    (
        "kube_statefulset_status_replicas_ready",
        "The number of ready replicas per StatefulSet.",
    ),
    (
        "kube_statefulset_status_replicas_updated",
        "The number of updated replicas per StatefulSet.",
    ),
    (
        "kube_statefulset_status_observed_generation",
        "The generation observed by the StatefulSet controller.",
    ),
    (
        "kube_statefulset_replicas",
        "Number of desired pods for a StatefulSet.",
    ),
    (
        "kube_statefulset_metadata_generation",
        "Sequence number representing a specific generation of the desired state for the StatefulSet.",
    ),
    (
        "kube_daemonset_status_current_number_scheduled",
        "The number of nodes running at least one daemon pod and are supposed to.",
    ),
    (
        "kube_daemonset_status_desired_number_scheduled",
        "The number of nodes that should be running the daemon pod.",
    ),
    (
        "kube_daemonset_status_number_available",
        "The number of nodes that should be running the daemon pod and have one or more of the daemon pod running and available",
    ),
    (
        "kube_daemonset_status_number_misscheduled",
        "The number of nodes running a daemon pod but are not supposed to.",
    ),
    (
        "kube_daemonset_status_number_ready",
        "The number of nodes that should be running the daemon pod and have one or more of the daemon pod running and ready.",
    ),
    (
        "kube_daemonset_status_number_unavailable",
        "The number of nodes that should be running the daemon pod and have none of the daemon pod running and available",
    ),
    (
        "kube_daemonset_status_updated_number_scheduled",
        "The total number of nodes that are running updated daemon pod",
    ),
    (
        "kube_daemonset_status_observed_generation",
        "The most recent generation observed by the daemon set controller.",
    ),
    (
        "kube_daemonset_metadata_generation",
        "Sequence number representing a specific generation of the desired state.",
    ),
    ("kube_node_info", "Information about a cluster node."),
    (
        "kube_node_spec_unschedulable",
        "Whether a node can schedule new pods.",
    ),
    (
        "kube_node_status_condition",
        "The condition of a cluster node.",
    ),
    (
        "kube_node_status_capacity",
        "The capacity for different resources of a node.",
    ),
    (
        "kube_node_status_allocatable",
        "The allocatable for different resources of a node that are available for scheduling.",
    ),
];

/// Every family's metadata; restarts are KSM's one counter, the rest gauges.
pub fn metadata() -> Vec<prompb::MetricMetadata> {
    FAMILIES
        .iter()
        .map(|(name, help)| {
            let kind = if name.ends_with("_total") {
                model::MetricType::Counter
            } else {
                model::MetricType::Gauge
            };
            prompb::MetricMetadata {
                r#type: model::remote_write::metric_type_number(kind) as i32,
                metric_family_name: (*name).to_owned(),
                help: (*help).to_owned(),
                unit: String::new(),
            }
        })
        .collect()
}

/// One series of a family: its name and its own labels (`namespace`, `pod`, ...).
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub name: &'static str,
    pub labels: Vec<(&'static str, String)>,
    pub value: f64,
}

fn sample(name: &'static str, labels: &[(&'static str, &str)], value: f64) -> Sample {
    Sample {
        name,
        labels: labels.iter().map(|(n, v)| (*n, (*v).to_owned())).collect(),
        value,
    }
}

fn bool_value(b: bool) -> f64 {
    if b { 1.0 } else { 0.0 }
}

/// KSM's condition series: `true`, `false`, `unknown`, 1 for the condition's status.
fn condition_samples(
    name: &'static str,
    base: &[(&'static str, &str)],
    label: &'static str,
    status: &str,
    out: &mut Vec<Sample>,
) {
    for (value, matches) in [
        ("true", status == "True"),
        ("false", status == "False"),
        ("unknown", status == "Unknown"),
    ] {
        let mut labels = base.to_vec();
        labels.push((label, value));
        out.push(sample(name, &labels, bool_value(matches)));
    }
}

/// A Kubernetes quantity (`250m`, `16Gi`, `1e3`, `110`) as a number; `None` if malformed.
/// Hand-written because no maintained crate for it is available here; k8s-openapi keeps
/// quantities as text.
pub fn quantity(text: &str) -> Option<f64> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-'))
        .unwrap_or(text.len());
    let (number, suffix) = text.split_at(split);
    let number: f64 = number.parse().ok()?;
    let binary = |power: i32| 1024f64.powi(power);
    let multiplier = match suffix {
        "" => 1.0,
        "n" => 1e-9,
        "u" => 1e-6,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => binary(1),
        "Mi" => binary(2),
        "Gi" => binary(3),
        "Ti" => binary(4),
        "Pi" => binary(5),
        "Ei" => binary(6),
        exponent if exponent.starts_with(['e', 'E']) => {
            10f64.powi(exponent[1..].parse::<i32>().ok()?)
        }
        _ => return None,
    };
    let value = number * multiplier;
    value.is_finite().then_some(value)
}

fn opt_value<T: Into<f64>>(value: Option<T>) -> f64 {
    value.map_or(0.0, Into::into)
}

/// `kube_pod_*` families of one pod.
pub fn pod_samples(pod: &Pod, out: &mut Vec<Sample>) {
    let namespace = pod.metadata.namespace.as_deref().unwrap_or_default();
    let name = pod.metadata.name.as_deref().unwrap_or_default();
    let uid = pod.metadata.uid.as_deref().unwrap_or_default();
    let base = [("namespace", namespace), ("pod", name), ("uid", uid)];
    let spec = pod.spec.as_ref();
    let status = pod.status.as_ref();
    let owners = pod.metadata.owner_references.as_deref().unwrap_or_default();
    let controller = owners.iter().find(|o| o.controller == Some(true));
    let mut info = base.to_vec();
    info.extend([
        (
            "host_ip",
            status
                .and_then(|s| s.host_ip.as_deref())
                .unwrap_or_default(),
        ),
        (
            "pod_ip",
            status.and_then(|s| s.pod_ip.as_deref()).unwrap_or_default(),
        ),
        (
            "node",
            spec.and_then(|s| s.node_name.as_deref())
                .unwrap_or_default(),
        ),
        (
            "created_by_kind",
            controller.map_or("<none>", |o| o.kind.as_str()),
        ),
        (
            "created_by_name",
            controller.map_or("<none>", |o| o.name.as_str()),
        ),
        (
            "priority_class",
            spec.and_then(|s| s.priority_class_name.as_deref())
                .unwrap_or_default(),
        ),
        (
            "host_network",
            if spec.and_then(|s| s.host_network).unwrap_or(false) {
                "true"
            } else {
                "false"
            },
        ),
    ]);
    out.push(sample("kube_pod_info", &info, 1.0));
    if owners.is_empty() {
        let mut labels = base.to_vec();
        labels.extend([
            ("owner_kind", "<none>"),
            ("owner_name", "<none>"),
            ("owner_is_controller", "<none>"),
        ]);
        out.push(sample("kube_pod_owner", &labels, 1.0));
    }
    for owner in owners {
        let mut labels = base.to_vec();
        labels.extend([
            ("owner_kind", owner.kind.as_str()),
            ("owner_name", owner.name.as_str()),
            (
                "owner_is_controller",
                if owner.controller == Some(true) {
                    "true"
                } else {
                    "false"
                },
            ),
        ]);
        out.push(sample("kube_pod_owner", &labels, 1.0));
    }
    let Some(status) = status else { return };
    if let Some(phase) = status.phase.as_deref().filter(|p| !p.is_empty()) {
        for candidate in ["Pending", "Succeeded", "Failed", "Unknown", "Running"] {
            let mut labels = base.to_vec();
            labels.push(("phase", candidate));
            out.push(sample(
                "kube_pod_status_phase",
                &labels,
                bool_value(phase == candidate),
            ));
        }
    }
    for condition in status.conditions.as_deref().unwrap_or_default() {
        if condition.type_ == "Ready" {
            condition_samples(
                "kube_pod_status_ready",
                &base,
                "condition",
                &condition.status,
                out,
            );
        }
    }
    for container in status.container_statuses.as_deref().unwrap_or_default() {
        let mut labels = base.to_vec();
        labels.push(("container", container.name.as_str()));
        let state = container.state.as_ref();
        let waiting = state.and_then(|s| s.waiting.as_ref());
        let terminated = state.and_then(|s| s.terminated.as_ref());
        out.push(sample(
            "kube_pod_container_status_restarts_total",
            &labels,
            f64::from(container.restart_count),
        ));
        out.push(sample(
            "kube_pod_container_status_ready",
            &labels,
            bool_value(container.ready),
        ));
        out.push(sample(
            "kube_pod_container_status_running",
            &labels,
            bool_value(state.is_some_and(|s| s.running.is_some())),
        ));
        out.push(sample(
            "kube_pod_container_status_waiting",
            &labels,
            bool_value(waiting.is_some()),
        ));
        out.push(sample(
            "kube_pod_container_status_terminated",
            &labels,
            bool_value(terminated.is_some()),
        ));
        // KSM v2 sends only the current reason (v1 sent a 0 for every known one).
        if let Some(reason) = waiting
            .and_then(|w| w.reason.as_deref())
            .filter(|r| !r.is_empty())
        {
            let mut with_reason = labels.clone();
            with_reason.push(("reason", reason));
            out.push(sample(
                "kube_pod_container_status_waiting_reason",
                &with_reason,
                1.0,
            ));
        }
        if let Some(reason) = terminated
            .and_then(|t| t.reason.as_deref())
            .filter(|r| !r.is_empty())
        {
            let mut with_reason = labels.clone();
            with_reason.push(("reason", reason));
            out.push(sample(
                "kube_pod_container_status_terminated_reason",
                &with_reason,
                1.0,
            ));
        }
        if let Some(reason) = container
            .last_state
            .as_ref()
            .and_then(|s| s.terminated.as_ref())
            .and_then(|t| t.reason.as_deref())
            .filter(|r| !r.is_empty())
        {
            let mut with_reason = labels.clone();
            with_reason.push(("reason", reason));
            out.push(sample(
                "kube_pod_container_status_last_terminated_reason",
                &with_reason,
                1.0,
            ));
        }
    }
}

fn namespaced<'a>(
    metadata: &'a k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
    kind: &'static str,
) -> [(&'static str, &'a str); 2] {
    [
        (
            "namespace",
            metadata.namespace.as_deref().unwrap_or_default(),
        ),
        (kind, metadata.name.as_deref().unwrap_or_default()),
    ]
}

/// `kube_deployment_*` families of one deployment.
pub fn deployment_samples(deployment: &Deployment, out: &mut Vec<Sample>) {
    let base = namespaced(&deployment.metadata, "deployment");
    let status = deployment.status.clone().unwrap_or_default();
    for (name, value) in [
        ("kube_deployment_status_replicas", status.replicas),
        (
            "kube_deployment_status_replicas_ready",
            status.ready_replicas,
        ),
        (
            "kube_deployment_status_replicas_available",
            status.available_replicas,
        ),
        (
            "kube_deployment_status_replicas_unavailable",
            status.unavailable_replicas,
        ),
        (
            "kube_deployment_status_replicas_updated",
            status.updated_replicas,
        ),
    ] {
        out.push(sample(name, &base, opt_value(value)));
    }
    out.push(sample(
        "kube_deployment_status_observed_generation",
        &base,
        opt_value(status.observed_generation.map(|g| g as f64)),
    ));
    if let Some(replicas) = deployment.spec.as_ref().and_then(|s| s.replicas) {
        out.push(sample(
            "kube_deployment_spec_replicas",
            &base,
            f64::from(replicas),
        ));
    }
    out.push(sample(
        "kube_deployment_metadata_generation",
        &base,
        opt_value(deployment.metadata.generation.map(|g| g as f64)),
    ));
}

/// `kube_statefulset_*` families of one statefulset.
pub fn statefulset_samples(statefulset: &StatefulSet, out: &mut Vec<Sample>) {
    let base = namespaced(&statefulset.metadata, "statefulset");
    let status = statefulset.status.clone().unwrap_or_default();
    out.push(sample(
        "kube_statefulset_status_replicas",
        &base,
        f64::from(status.replicas),
    ));
    for (name, value) in [
        (
            "kube_statefulset_status_replicas_available",
            status.available_replicas,
        ),
        (
            "kube_statefulset_status_replicas_current",
            status.current_replicas,
        ),
        (
            "kube_statefulset_status_replicas_ready",
            status.ready_replicas,
        ),
        (
            "kube_statefulset_status_replicas_updated",
            status.updated_replicas,
        ),
    ] {
        out.push(sample(name, &base, opt_value(value)));
    }
    if let Some(generation) = status.observed_generation {
        out.push(sample(
            "kube_statefulset_status_observed_generation",
            &base,
            generation as f64,
        ));
    }
    if let Some(replicas) = statefulset.spec.as_ref().and_then(|s| s.replicas) {
        out.push(sample(
            "kube_statefulset_replicas",
            &base,
            f64::from(replicas),
        ));
    }
    out.push(sample(
        "kube_statefulset_metadata_generation",
        &base,
        opt_value(statefulset.metadata.generation.map(|g| g as f64)),
    ));
}

/// `kube_daemonset_*` families of one daemonset.
pub fn daemonset_samples(daemonset: &DaemonSet, out: &mut Vec<Sample>) {
    let base = namespaced(&daemonset.metadata, "daemonset");
    let status = daemonset.status.clone().unwrap_or_default();
    for (name, value) in [
        (
            "kube_daemonset_status_current_number_scheduled",
            Some(status.current_number_scheduled),
        ),
        (
            "kube_daemonset_status_desired_number_scheduled",
            Some(status.desired_number_scheduled),
        ),
        (
            "kube_daemonset_status_number_available",
            status.number_available,
        ),
        (
            "kube_daemonset_status_number_misscheduled",
            Some(status.number_misscheduled),
        ),
        (
            "kube_daemonset_status_number_ready",
            Some(status.number_ready),
        ),
        (
            "kube_daemonset_status_number_unavailable",
            status.number_unavailable,
        ),
        (
            "kube_daemonset_status_updated_number_scheduled",
            status.updated_number_scheduled,
        ),
    ] {
        out.push(sample(name, &base, opt_value(value)));
    }
    out.push(sample(
        "kube_daemonset_status_observed_generation",
        &base,
        opt_value(status.observed_generation.map(|g| g as f64)),
    ));
    out.push(sample(
        "kube_daemonset_metadata_generation",
        &base,
        opt_value(daemonset.metadata.generation.map(|g| g as f64)),
    ));
}

/// KSM's `resource` and `unit` labels for a node resource; `None` for what KSM skips.
fn resource_labels(resource: &str) -> Option<(String, &'static str)> {
    let unit = match resource {
        "cpu" => "core",
        "memory" | "ephemeral-storage" | "storage" => "byte",
        "pods" => "integer",
        r if r.starts_with("hugepages-") || r.starts_with("attachable-volumes-") => "byte",
        // Extended resources (`nvidia.com/gpu`): a domain-prefixed name.
        r if r.contains('/') && !r.starts_with("kubernetes.io/") => "integer",
        _ => return None,
    };
    let sanitized = resource
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    Some((sanitized, unit))
}

fn resource_samples(
    name: &'static str,
    node: &str,
    resources: Option<&BTreeMap<String, Quantity>>,
    out: &mut Vec<Sample>,
) {
    for (resource, amount) in resources.into_iter().flatten() {
        let (Some((resource, unit)), Some(value)) =
            (resource_labels(resource), quantity(&amount.0))
        else {
            continue;
        };
        out.push(sample(
            name,
            &[("node", node), ("resource", &resource), ("unit", unit)],
            value,
        ));
    }
}

/// `kube_node_*` families of one node.
pub fn node_samples(node: &Node, out: &mut Vec<Sample>) {
    let name = node.metadata.name.as_deref().unwrap_or_default();
    let status = node.status.clone().unwrap_or_default();
    let info = status.node_info.clone().unwrap_or_default();
    let spec = node.spec.clone().unwrap_or_default();
    let internal_ip = status
        .addresses
        .as_deref()
        .unwrap_or_default()
        .iter()
        .find(|a| a.type_ == "InternalIP")
        .map(|a| a.address.as_str())
        .unwrap_or_default();
    out.push(sample(
        "kube_node_info",
        &[
            ("node", name),
            ("kernel_version", &info.kernel_version),
            ("os_image", &info.os_image),
            ("container_runtime_version", &info.container_runtime_version),
            ("kubelet_version", &info.kubelet_version),
            ("kubeproxy_version", &info.kube_proxy_version),
            (
                "provider_id",
                spec.provider_id.as_deref().unwrap_or_default(),
            ),
            ("pod_cidr", spec.pod_cidr.as_deref().unwrap_or_default()),
            ("system_uuid", &info.system_uuid),
            ("internal_ip", internal_ip),
        ],
        1.0,
    ));
    out.push(sample(
        "kube_node_spec_unschedulable",
        &[("node", name)],
        bool_value(spec.unschedulable.unwrap_or(false)),
    ));
    for condition in status.conditions.as_deref().unwrap_or_default() {
        condition_samples(
            "kube_node_status_condition",
            &[("node", name), ("condition", &condition.type_)],
            "status",
            &condition.status,
            out,
        );
    }
    resource_samples(
        "kube_node_status_capacity",
        name,
        status.capacity.as_ref(),
        out,
    );
    resource_samples(
        "kube_node_status_allocatable",
        name,
        status.allocatable.as_ref(),
        out,
    );
}

/// The reflector stores being filled.
#[derive(Clone)]
struct Stores {
    pods: Store<Pod>,
    deployments: Store<Deployment>,
    statefulsets: Store<StatefulSet>,
    daemonsets: Store<DaemonSet>,
    nodes: Store<Node>,
}

impl Stores {
    async fn ready(&self) {
        // An error means the writer is gone (the watcher task ended): nothing to wait for.
        let _ = self.pods.wait_until_ready().await;
        let _ = self.deployments.wait_until_ready().await;
        let _ = self.statefulsets.wait_until_ready().await;
        let _ = self.daemonsets.wait_until_ready().await;
        let _ = self.nodes.wait_until_ready().await;
    }

    fn samples(&self) -> Vec<Sample> {
        let mut out = Vec::new();
        for pod in self.pods.state() {
            pod_samples(&pod, &mut out);
        }
        for deployment in self.deployments.state() {
            deployment_samples(&deployment, &mut out);
        }
        for statefulset in self.statefulsets.state() {
            statefulset_samples(&statefulset, &mut out);
        }
        for daemonset in self.daemonsets.state() {
            daemonset_samples(&daemonset, &mut out);
        }
        for node in self.nodes.state() {
            node_samples(&node, &mut out);
        }
        out
    }
}

/// Starts a reflector of every object of kind `K` (all namespaces) on its own task.
fn reflect<K>(client: &Client, tasks: &mut Vec<JoinHandle<()>>) -> Store<K>
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    let (reader, writer) = reflector::store::<K>();
    let api: Api<K> = Api::all(client.clone());
    let stream = watcher(api, watcher::Config::default())
        .default_backoff()
        .reflect(writer);
    tasks.push(tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(event) = stream.next().await {
            if let Err(error) = event {
                tracing::warn!(kind = K::kind(&()).as_ref(), %error, "cluster state watch failed; retrying");
            }
        }
    }));
    reader
}

/// Series labels: the sample's own, `__name__`, `job` and the external labels a sample
/// lacks (KSM's own labels win, as `honor_labels` would not make them).
fn labels_of(sample: Sample, external: &[(String, String)]) -> Labels {
    let mut labels: Labels = Vec::with_capacity(sample.labels.len() + external.len() + 2);
    labels.push((model::METRIC_NAME_LABEL.to_owned(), sample.name.to_owned()));
    labels.push(("job".to_owned(), JOB.to_owned()));
    for (name, value) in sample.labels {
        labels.push((name.to_owned(), value));
    }
    for (name, value) in external {
        if !labels.iter().any(|(n, _)| n == name) {
            labels.push((name.clone(), value.clone()));
        }
    }
    labels
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// The running cluster state metrics; [`ClusterState::stop`] marks their series stale.
pub(crate) struct ClusterState {
    stop: Arc<Notify>,
    task: JoinHandle<()>,
}

impl ClusterState {
    /// Starts the watchers and sends every `interval` once they have listed; `external`
    /// holds the external labels now (a reload replaces them).
    pub(crate) fn start(
        client: Client,
        delivery: Delivery,
        external: Arc<Mutex<Vec<(String, String)>>>,
        interval: Duration,
    ) -> Self {
        let mut watchers = Vec::new();
        let stores = Stores {
            pods: reflect(&client, &mut watchers),
            deployments: reflect(&client, &mut watchers),
            statefulsets: reflect(&client, &mut watchers),
            daemonsets: reflect(&client, &mut watchers),
            nodes: reflect(&client, &mut watchers),
        };
        let stop = Arc::new(Notify::new());
        let stopped = stop.clone();
        let task = tokio::spawn(async move {
            let mut tracker = StaleTracker::new();
            let run = async {
                stores.ready().await;
                tracing::info!(
                    "cluster state watchers have listed; sending kube-state-metrics series"
                );
                let mut metadata_sent: Option<std::time::Instant> = None;
                let mut tick = tokio::time::interval(interval);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tick.tick().await;
                    let external = external
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .clone();
                    let series = stores
                        .samples()
                        .into_iter()
                        .map(|s| {
                            let value = s.value;
                            (labels_of(s, &external), value)
                        })
                        .collect::<Vec<_>>();
                    let sent = tracker.push(&delivery, series, now_ms());
                    // Metadata once a minute, as Prometheus's metadata sender does.
                    if metadata_sent.is_none_or(|at| at.elapsed() >= Duration::from_secs(60)) {
                        delivery.push_metadata(metadata());
                        metadata_sent = Some(std::time::Instant::now());
                    }
                    tracing::debug!(sent, "cluster state series sent");
                }
            };
            tokio::select! {
                () = run => {}
                () = stopped.notified() => {}
            }
            for watcher in watchers {
                watcher.abort();
            }
            tracker.stop(&delivery, now_ms());
        });
        Self { stop, task }
    }

    /// Stops the watchers and marks every series sent stale (before delivery closes).
    pub(crate) async fn stop(self) {
        self.stop.notify_one();
        let _ = self.task.await;
    }
}

/// The global `scrape_interval` of a Prometheus configuration file's text, if it sets one.
fn global_scrape_interval(text: &str) -> Option<Duration> {
    #[derive(serde::Deserialize)]
    struct File {
        global: Option<Global>,
    }
    #[derive(serde::Deserialize)]
    struct Global {
        scrape_interval: Option<scrape::config::DurationMs>,
    }
    // The scrape crate validated the file already; a failure here only means "unset".
    let file: File = serde_saphyr::from_str(text).ok()?;
    let ms = file.global?.scrape_interval?.0;
    (ms > 0).then(|| Duration::from_millis(ms))
}

/// Whether the Kubernetes API is there without being named: only in a pod (a kubeconfig on
/// a laptop is no reason to watch that cluster uninvited).
fn kube_reachable(options: &crate::ClusterAgentOptions) -> bool {
    options.kube_api_url.is_some() || std::env::var_os("KUBERNETES_SERVICE_HOST").is_some()
}

fn label_pairs(labels: &scrape::LabelSet) -> Vec<(String, String)> {
    labels
        .iter()
        .map(|(name, value)| (name.to_owned(), value.to_owned()))
        .collect()
}

/// What the agent runs from the Kubernetes API besides discovery: state metrics and
/// events, each when asked for and the API is reachable.
pub(crate) struct KubeFeatures {
    external: Arc<Mutex<Vec<(String, String)>>>,
    state: Option<ClusterState>,
    events: Option<crate::kube_events::KubeEvents>,
}

impl KubeFeatures {
    pub(crate) async fn start(
        options: &crate::ClusterAgentOptions,
        cluster: &str,
        external_labels: &scrape::LabelSet,
        delivery: &Delivery,
        headers: Vec<(String, String)>,
    ) -> Result<Self, crate::AgentError> {
        let external = Arc::new(Mutex::new(label_pairs(external_labels)));
        let mut features = Self {
            external: external.clone(),
            state: None,
            events: None,
        };
        if !kube_reachable(options) || !(options.cluster_state || options.kube_events) {
            return Ok(features);
        }
        let client = match kube_discovery::client(options.kube_api_url.as_deref()).await {
            Ok(client) => client,
            Err(error) => {
                tracing::error!(%error, "no Kubernetes API client: cluster state metrics and events are off");
                return Ok(features);
            }
        };
        if options.cluster_state {
            let interval = options
                .cluster_state_interval
                .or_else(|| {
                    std::fs::read_to_string(&options.scrape_config)
                        .ok()
                        .and_then(|text| global_scrape_interval(&text))
                })
                .unwrap_or(Duration::from_secs(60));
            tracing::info!(?interval, "cluster state metrics on");
            features.state = Some(ClusterState::start(
                client.clone(),
                delivery.clone(),
                external,
                interval,
            ));
        }
        if options.kube_events {
            let mut config = crate::kube_events::EventsConfig::new(
                &options.gateway,
                cluster,
                options.buffer_dir.clone(),
            );
            config.headers = headers;
            features.events = Some(crate::kube_events::KubeEvents::start(client, config)?);
        }
        Ok(features)
    }

    pub(crate) fn set_external_labels(&self, labels: &scrape::LabelSet) {
        *self.external.lock().unwrap_or_else(PoisonError::into_inner) = label_pairs(labels);
    }

    /// Stops events (sending what is queued, briefly) and state metrics (stale markers).
    pub(crate) async fn stop(self) {
        if let Some(events) = self.events {
            events.stop().await;
        }
        if let Some(state) = self.state {
            state.stop().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture<K: serde::de::DeserializeOwned>(name: &str) -> K {
        let path = format!(
            "{}/tests/fixtures/cluster_state/{name}",
            env!("CARGO_MANIFEST_DIR")
        );
        let text = std::fs::read_to_string(&path).expect("the fixture exists");
        serde_json::from_str(&text).expect("the fixture is a valid object")
    }

    /// Samples as `name{a="x",b="y"} value` lines, labels in the order emitted.
    fn lines(samples: &[Sample]) -> Vec<String> {
        samples
            .iter()
            .map(|s| {
                let labels: Vec<String> = s
                    .labels
                    .iter()
                    .map(|(n, v)| format!("{n}=\"{v}\""))
                    .collect();
                format!("{}{{{}}} {}", s.name, labels.join(","), s.value)
            })
            .collect()
    }

    #[test]
    fn every_family_sent_has_metadata() {
        let mut out = Vec::new();
        pod_samples(&fixture::<Pod>("pod-web.json"), &mut out);
        pod_samples(&fixture::<Pod>("pod-batch.json"), &mut out);
        deployment_samples(&fixture("deployment.json"), &mut out);
        statefulset_samples(&fixture("statefulset.json"), &mut out);
        daemonset_samples(&fixture("daemonset.json"), &mut out);
        node_samples(&fixture("node.json"), &mut out);
        let described: std::collections::BTreeSet<String> = metadata()
            .into_iter()
            .map(|m| m.metric_family_name)
            .collect();
        let missing: Vec<&str> = out
            .iter()
            .map(|s| s.name)
            .filter(|name| !described.contains(*name))
            .collect();
        assert!(missing.is_empty(), "no metadata for {missing:?}");
        let restarts = metadata()
            .into_iter()
            .find(|m| m.metric_family_name == "kube_pod_container_status_restarts_total")
            .expect("described");
        assert_eq!(
            restarts.r#type,
            model::remote_write::metric_type_number(model::MetricType::Counter) as i32
        );
    }

    #[test]
    fn quantities_parse_as_kubernetes_writes_them() {
        assert_eq!(quantity("4"), Some(4.0));
        assert_eq!(quantity("3920m"), Some(3.92));
        assert_eq!(quantity("16Ki"), Some(16384.0));
        assert_eq!(quantity("1Gi"), Some(1_073_741_824.0));
        assert_eq!(quantity("2G"), Some(2e9));
        assert_eq!(quantity("1e3"), Some(1000.0));
        assert_eq!(quantity("1.5"), Some(1.5));
        assert_eq!(quantity("12Q"), None);
        assert_eq!(quantity(""), None);
    }

    #[test]
    fn a_running_pod_with_a_crashing_sidecar() {
        let pod: Pod = fixture("pod-web.json");
        let mut out = Vec::new();
        pod_samples(&pod, &mut out);
        let id = r#"namespace="shop",pod="web-7d4b9c8f6-x2k9p",uid="5f0c3f0e-8a3b-4c3e-9d7e-2a1b3c4d5e6f""#;
        let expected: Vec<String> = [
            format!(r#"kube_pod_info{{{id},host_ip="10.0.0.11",pod_ip="10.244.1.23",node="node-a",created_by_kind="ReplicaSet",created_by_name="web-7d4b9c8f6",priority_class="high",host_network="false"}} 1"#),
            format!(r#"kube_pod_owner{{{id},owner_kind="ReplicaSet",owner_name="web-7d4b9c8f6",owner_is_controller="true"}} 1"#),
            format!(r#"kube_pod_status_phase{{{id},phase="Pending"}} 0"#),
            format!(r#"kube_pod_status_phase{{{id},phase="Succeeded"}} 0"#),
            format!(r#"kube_pod_status_phase{{{id},phase="Failed"}} 0"#),
            format!(r#"kube_pod_status_phase{{{id},phase="Unknown"}} 0"#),
            format!(r#"kube_pod_status_phase{{{id},phase="Running"}} 1"#),
            format!(r#"kube_pod_status_ready{{{id},condition="true"}} 0"#),
            format!(r#"kube_pod_status_ready{{{id},condition="false"}} 1"#),
            format!(r#"kube_pod_status_ready{{{id},condition="unknown"}} 0"#),
            format!(r#"kube_pod_container_status_restarts_total{{{id},container="app"}} 0"#),
            format!(r#"kube_pod_container_status_ready{{{id},container="app"}} 1"#),
            format!(r#"kube_pod_container_status_running{{{id},container="app"}} 1"#),
            format!(r#"kube_pod_container_status_waiting{{{id},container="app"}} 0"#),
            format!(r#"kube_pod_container_status_terminated{{{id},container="app"}} 0"#),
            format!(r#"kube_pod_container_status_restarts_total{{{id},container="sidecar"}} 5"#),
            format!(r#"kube_pod_container_status_ready{{{id},container="sidecar"}} 0"#),
            format!(r#"kube_pod_container_status_running{{{id},container="sidecar"}} 0"#),
            format!(r#"kube_pod_container_status_waiting{{{id},container="sidecar"}} 1"#),
            format!(r#"kube_pod_container_status_terminated{{{id},container="sidecar"}} 0"#),
            format!(r#"kube_pod_container_status_waiting_reason{{{id},container="sidecar",reason="CrashLoopBackOff"}} 1"#),
            format!(r#"kube_pod_container_status_last_terminated_reason{{{id},container="sidecar",reason="Error"}} 1"#),
        ]
        .into_iter()
        .collect();
        assert_eq!(lines(&out), expected);
    }

    #[test]
    fn a_pending_pod_without_owner_or_statuses() {
        let pod: Pod = fixture("pod-batch.json");
        let mut out = Vec::new();
        pod_samples(&pod, &mut out);
        let id = r#"namespace="shop",pod="migrate",uid="9e8d7c6b-1111-4222-8333-444455556666""#;
        let expected = vec![
            format!(
                r#"kube_pod_info{{{id},host_ip="",pod_ip="",node="",created_by_kind="<none>",created_by_name="<none>",priority_class="",host_network="true"}} 1"#
            ),
            format!(
                r#"kube_pod_owner{{{id},owner_kind="<none>",owner_name="<none>",owner_is_controller="<none>"}} 1"#
            ),
            format!(r#"kube_pod_status_phase{{{id},phase="Pending"}} 1"#),
            format!(r#"kube_pod_status_phase{{{id},phase="Succeeded"}} 0"#),
            format!(r#"kube_pod_status_phase{{{id},phase="Failed"}} 0"#),
            format!(r#"kube_pod_status_phase{{{id},phase="Unknown"}} 0"#),
            format!(r#"kube_pod_status_phase{{{id},phase="Running"}} 0"#),
        ];
        assert_eq!(lines(&out), expected);
    }

    #[test]
    fn deployment_families() {
        let deployment: Deployment = fixture("deployment.json");
        let mut out = Vec::new();
        deployment_samples(&deployment, &mut out);
        let id = r#"namespace="shop",deployment="web""#;
        let expected: Vec<String> = [
            ("kube_deployment_status_replicas", 3),
            ("kube_deployment_status_replicas_ready", 2),
            ("kube_deployment_status_replicas_available", 2),
            ("kube_deployment_status_replicas_unavailable", 1),
            ("kube_deployment_status_replicas_updated", 3),
            ("kube_deployment_status_observed_generation", 4),
            ("kube_deployment_spec_replicas", 3),
            ("kube_deployment_metadata_generation", 4),
        ]
        .iter()
        .map(|(name, value)| format!("{name}{{{id}}} {value}"))
        .collect();
        assert_eq!(lines(&out), expected);
    }

    #[test]
    fn statefulset_families() {
        let statefulset: StatefulSet = fixture("statefulset.json");
        let mut out = Vec::new();
        statefulset_samples(&statefulset, &mut out);
        let id = r#"namespace="shop",statefulset="db""#;
        let expected: Vec<String> = [
            ("kube_statefulset_status_replicas", 3),
            ("kube_statefulset_status_replicas_available", 3),
            ("kube_statefulset_status_replicas_current", 3),
            ("kube_statefulset_status_replicas_ready", 3),
            ("kube_statefulset_status_replicas_updated", 2),
            ("kube_statefulset_status_observed_generation", 2),
            ("kube_statefulset_replicas", 3),
            ("kube_statefulset_metadata_generation", 2),
        ]
        .iter()
        .map(|(name, value)| format!("{name}{{{id}}} {value}"))
        .collect();
        assert_eq!(lines(&out), expected);
    }

    #[test]
    fn daemonset_families() {
        let daemonset: DaemonSet = fixture("daemonset.json");
        let mut out = Vec::new();
        daemonset_samples(&daemonset, &mut out);
        let id = r#"namespace="meerkat",daemonset="meerkat-node""#;
        let expected: Vec<String> = [
            ("kube_daemonset_status_current_number_scheduled", 2),
            ("kube_daemonset_status_desired_number_scheduled", 3),
            ("kube_daemonset_status_number_available", 2),
            ("kube_daemonset_status_number_misscheduled", 1),
            ("kube_daemonset_status_number_ready", 2),
            ("kube_daemonset_status_number_unavailable", 1),
            ("kube_daemonset_status_updated_number_scheduled", 2),
            ("kube_daemonset_status_observed_generation", 1),
            ("kube_daemonset_metadata_generation", 1),
        ]
        .iter()
        .map(|(name, value)| format!("{name}{{{id}}} {value}"))
        .collect();
        assert_eq!(lines(&out), expected);
    }

    #[test]
    fn node_families_with_ksm_resource_and_unit_labels() {
        let node: Node = fixture("node.json");
        let mut out = Vec::new();
        node_samples(&node, &mut out);
        let expected = vec![
            r#"kube_node_info{node="node-a",kernel_version="6.1.0-18-amd64",os_image="Debian GNU/Linux 12 (bookworm)",container_runtime_version="containerd://1.7.13",kubelet_version="v1.33.1",kubeproxy_version="v1.33.1",provider_id="aws:///eu-west-1a/i-0abc",pod_cidr="10.244.1.0/24",system_uuid="ec2a0c2e-1111-2222-3333-444455556666",internal_ip="10.0.0.11"} 1"#,
            r#"kube_node_spec_unschedulable{node="node-a"} 1"#,
            r#"kube_node_status_condition{node="node-a",condition="MemoryPressure",status="true"} 0"#,
            r#"kube_node_status_condition{node="node-a",condition="MemoryPressure",status="false"} 1"#,
            r#"kube_node_status_condition{node="node-a",condition="MemoryPressure",status="unknown"} 0"#,
            r#"kube_node_status_condition{node="node-a",condition="Ready",status="true"} 1"#,
            r#"kube_node_status_condition{node="node-a",condition="Ready",status="false"} 0"#,
            r#"kube_node_status_condition{node="node-a",condition="Ready",status="unknown"} 0"#,
            // BTreeMap order: cpu, ephemeral-storage, hugepages-2Mi, memory, nvidia.com/gpu, pods.
            r#"kube_node_status_capacity{node="node-a",resource="cpu",unit="core"} 4"#,
            r#"kube_node_status_capacity{node="node-a",resource="ephemeral_storage",unit="byte"} 103865303040"#,
            r#"kube_node_status_capacity{node="node-a",resource="hugepages_2Mi",unit="byte"} 0"#,
            r#"kube_node_status_capacity{node="node-a",resource="memory",unit="byte"} 16767574016"#,
            r#"kube_node_status_capacity{node="node-a",resource="nvidia_com_gpu",unit="integer"} 1"#,
            r#"kube_node_status_capacity{node="node-a",resource="pods",unit="integer"} 110"#,
            r#"kube_node_status_allocatable{node="node-a",resource="cpu",unit="core"} 3.92"#,
            r#"kube_node_status_allocatable{node="node-a",resource="ephemeral_storage",unit="byte"} 93478772582"#,
            r#"kube_node_status_allocatable{node="node-a",resource="memory",unit="byte"} 15588974592"#,
            r#"kube_node_status_allocatable{node="node-a",resource="pods",unit="integer"} 110"#,
        ];
        assert_eq!(lines(&out), expected);
    }

    #[test]
    fn series_get_job_and_the_external_labels_they_lack() {
        let s = sample(
            "kube_pod_info",
            &[("namespace", "a"), ("cluster", "own")],
            1.0,
        );
        let external = vec![
            ("cluster".to_owned(), "prod".to_owned()),
            ("region".to_owned(), "eu".to_owned()),
        ];
        let mut labels = labels_of(s, &external);
        labels.sort();
        let expected: Labels = [
            ("__name__", "kube_pod_info"),
            ("cluster", "own"),
            ("job", "kube-state-metrics"),
            ("namespace", "a"),
            ("region", "eu"),
        ]
        .iter()
        .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
        .collect();
        assert_eq!(labels, expected);
    }

    #[test]
    fn cluster_state_follows_the_global_scrape_interval() {
        assert_eq!(
            global_scrape_interval("global:\n  scrape_interval: 15s\nscrape_configs: []\n"),
            Some(Duration::from_secs(15))
        );
        assert_eq!(global_scrape_interval("scrape_configs: []\n"), None);
        assert_eq!(global_scrape_interval(""), None);
    }
}
