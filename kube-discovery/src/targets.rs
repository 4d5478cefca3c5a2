//! Kubernetes objects turned into Prometheus target groups, label for label as Prometheus
//! 2.42's `discovery/kubernetes/{pod,service,endpoints,node}.go` build them, so the
//! `relabel_configs` users wrote for Prometheus see the same `__meta_kubernetes_*` labels.
//!
//! Go's zero values are kept: a field the object lacks becomes a label with an empty
//! value, as Prometheus sets it (relabeling treats it as absent either way, but the label
//! sets compare equal to Prometheus's own).

use std::collections::BTreeMap;
use std::net::IpAddr;

use k8s_openapi::api::core::v1::{Container, Endpoints, Node, Pod, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use scrape::config::TargetGroup;

/// A label set, sorted by name.
pub type Labels = BTreeMap<String, String>;

const META: &str = "__meta_kubernetes_";
const ADDRESS: &str = "__address__";

/// One Prometheus `targetgroup.Group`: labels common to its targets, and each target's own
/// labels (`__address__` among them).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Group {
    pub source: String,
    pub labels: Labels,
    pub targets: Vec<Labels>,
}

impl Group {
    fn new(source: String) -> Self {
        Self {
            source,
            ..Self::default()
        }
    }

    /// The group as the scrape manager takes groups: one `TargetGroup` per target, with the
    /// group's labels and the target's own merged (the target's win, as Prometheus merges
    /// them), so per-target labels such as the container port survive.
    pub fn target_groups(&self) -> Vec<TargetGroup> {
        self.targets
            .iter()
            .enumerate()
            .map(|(i, target)| {
                let mut labels = self.labels.clone();
                let mut address = String::new();
                for (name, value) in target {
                    if name == ADDRESS {
                        address.clone_from(value);
                    } else {
                        labels.insert(name.clone(), value.clone());
                    }
                }
                TargetGroup {
                    targets: vec![address],
                    labels,
                    source: format!("{}:{i}", self.source),
                }
            })
            .collect()
    }
}

/// Prometheus's `strutil.SanitizeLabelName`: every character outside `[a-zA-Z0-9_]`
/// becomes `_`.
pub fn sanitize_label_name(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

fn label(name: &str) -> String {
    format!("{META}{name}")
}

/// Go's `net.JoinHostPort`: IPv6 hosts in brackets.
fn join_host_port(host: &str, port: &str) -> String {
    if host.contains(':') || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_ipv6()) {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

fn text(value: &Option<String>) -> String {
    value.clone().unwrap_or_default()
}

/// `<prefix>_label_<name>`, `<prefix>_labelpresent_<name>` and the same for annotations.
fn add_metadata_labels(labels: &mut Labels, role: &str, meta: &ObjectMeta) {
    for (key, value) in meta.labels.iter().flatten() {
        let name = sanitize_label_name(key);
        labels.insert(label(&format!("{role}_label_{name}")), value.clone());
        labels.insert(
            label(&format!("{role}_labelpresent_{name}")),
            "true".to_owned(),
        );
    }
    for (key, value) in meta.annotations.iter().flatten() {
        let name = sanitize_label_name(key);
        labels.insert(label(&format!("{role}_annotation_{name}")), value.clone());
        labels.insert(
            label(&format!("{role}_annotationpresent_{name}")),
            "true".to_owned(),
        );
    }
}

/// `podLabels`: the labels every target of a pod shares (also attached to endpoints).
pub fn pod_labels(pod: &Pod) -> Labels {
    let status = pod.status.clone().unwrap_or_default();
    let spec = pod.spec.clone().unwrap_or_default();
    let ready = status
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == "Ready")
        .map_or_else(|| "unknown".to_owned(), |c| c.status.to_lowercase());
    let mut labels = Labels::from([
        (label("pod_name"), text(&pod.metadata.name)),
        (label("pod_ip"), text(&status.pod_ip)),
        (label("pod_ready"), ready),
        (label("pod_phase"), text(&status.phase)),
        (label("pod_node_name"), text(&spec.node_name)),
        (label("pod_host_ip"), text(&status.host_ip)),
        (label("pod_uid"), text(&pod.metadata.uid)),
    ]);
    let controller = pod
        .metadata
        .owner_references
        .iter()
        .flatten()
        .find(|owner| owner.controller == Some(true));
    if let Some(owner) = controller {
        if !owner.kind.is_empty() {
            labels.insert(label("pod_controller_kind"), owner.kind.clone());
        }
        if !owner.name.is_empty() {
            labels.insert(label("pod_controller_name"), owner.name.clone());
        }
    }
    add_metadata_labels(&mut labels, "pod", &pod.metadata);
    labels
}

/// `addNodeLabels` (`attach_metadata: {node: true}`): the node's name and labels.
pub fn node_metadata_labels(node: &Node) -> Labels {
    let mut labels = Labels::from([(label("node_name"), text(&node.metadata.name))]);
    for (key, value) in node.metadata.labels.iter().flatten() {
        let name = sanitize_label_name(key);
        labels.insert(label(&format!("node_label_{name}")), value.clone());
        labels.insert(
            label(&format!("node_labelpresent_{name}")),
            "true".to_owned(),
        );
    }
    labels
}

/// The containers and then the init containers, each with whether it is an init one.
fn containers(pod: &Pod) -> Vec<(&Container, bool)> {
    let Some(spec) = &pod.spec else {
        return Vec::new();
    };
    spec.containers
        .iter()
        .map(|c| (c, false))
        .chain(spec.init_containers.iter().flatten().map(|c| (c, true)))
        .collect()
}

/// The pod role: one target per container port, or one per container without ports at
/// the pod's IP; none while the pod has no IP (starting or evicted), as Prometheus.
/// `node` is the pod's node when `attach_metadata.node` is set and the node is known.
pub fn pod_group(pod: &Pod, node: Option<&Node>) -> Group {
    let namespace = text(&pod.metadata.namespace);
    let mut group = Group::new(format!("pod/{namespace}/{}", text(&pod.metadata.name)));
    let status = pod.status.clone().unwrap_or_default();
    let pod_ip = text(&status.pod_ip);
    if pod_ip.is_empty() {
        return group;
    }
    group.labels = pod_labels(pod);
    group.labels.insert(label("namespace"), namespace);
    if let Some(node) = node {
        group.labels.extend(node_metadata_labels(node));
    }
    for (container, init) in containers(pod) {
        let statuses = if init {
            &status.init_container_statuses
        } else {
            &status.container_statuses
        };
        let id = statuses
            .iter()
            .flatten()
            .find(|s| s.name == container.name)
            .map(|s| text(&s.container_id))
            .unwrap_or_default();
        let common = [
            (label("pod_container_name"), container.name.clone()),
            (label("pod_container_id"), id),
            (label("pod_container_image"), text(&container.image)),
            (label("pod_container_init"), init.to_string()),
        ];
        let ports = container.ports.as_deref().unwrap_or_default();
        if ports.is_empty() {
            let mut target = Labels::from(common);
            target.insert(ADDRESS.to_owned(), pod_ip.clone());
            group.targets.push(target);
            continue;
        }
        for port in ports {
            let number = port.container_port.to_string();
            let mut target = Labels::from(common.clone());
            target.insert(ADDRESS.to_owned(), join_host_port(&pod_ip, &number));
            target.insert(label("pod_container_port_number"), number);
            target.insert(label("pod_container_port_name"), text(&port.name));
            target.insert(label("pod_container_port_protocol"), text(&port.protocol));
            group.targets.push(target);
        }
    }
    group
}

/// `serviceLabels`: name, namespace, labels and annotations of a service.
pub fn service_labels(service: &Service) -> Labels {
    let mut labels = Labels::from([
        (label("service_name"), text(&service.metadata.name)),
        (label("namespace"), text(&service.metadata.namespace)),
    ]);
    add_metadata_labels(&mut labels, "service", &service.metadata);
    labels
}

/// The service role: one target per service port at `<name>.<namespace>.svc:<port>`.
pub fn service_group(service: &Service) -> Group {
    let name = text(&service.metadata.name);
    let namespace = text(&service.metadata.namespace);
    let mut group = Group::new(format!("svc/{namespace}/{name}"));
    group.labels = service_labels(service);
    let spec = service.spec.clone().unwrap_or_default();
    let kind = text(&spec.type_);
    for port in spec.ports.iter().flatten() {
        let number = port.port.to_string();
        let mut target = Labels::from([
            (
                ADDRESS.to_owned(),
                join_host_port(&format!("{name}.{namespace}.svc"), &number),
            ),
            (label("service_port_name"), text(&port.name)),
            (label("service_port_number"), number),
            (label("service_port_protocol"), text(&port.protocol)),
            (label("service_type"), kind.clone()),
        ]);
        if kind == "ExternalName" {
            target.insert(label("service_external_name"), text(&spec.external_name));
        } else {
            target.insert(label("service_cluster_ip"), text(&spec.cluster_ip));
        }
        group.targets.push(target);
    }
    group
}

/// `nodeAddress`: InternalIP, InternalDNS, ExternalIP, ExternalDNS, LegacyHostIP,
/// Hostname, the first address of the first type present; and every type's first address.
fn node_address(node: &Node) -> (Option<String>, BTreeMap<String, String>) {
    let mut first: BTreeMap<String, String> = BTreeMap::new();
    let addresses = node
        .status
        .as_ref()
        .and_then(|s| s.addresses.as_ref())
        .map(Vec::as_slice)
        .unwrap_or_default();
    for address in addresses {
        first
            .entry(address.type_.clone())
            .or_insert_with(|| address.address.clone());
    }
    let chosen = [
        "InternalIP",
        "InternalDNS",
        "ExternalIP",
        "ExternalDNS",
        "LegacyHostIP",
        "Hostname",
    ]
    .iter()
    .find_map(|kind| first.get(*kind).cloned());
    (chosen, first)
}

/// The node role: one target at the node's preferred address and its kubelet port, with
/// `instance` set to the node's name; `None` (no update, as Prometheus) when the node has
/// no address.
pub fn node_group(node: &Node) -> Option<Group> {
    let name = text(&node.metadata.name);
    let mut group = Group::new(format!("node/{name}"));
    group.labels = Labels::from([
        (label("node_name"), name.clone()),
        (
            label("node_provider_id"),
            node.spec
                .as_ref()
                .map(|s| text(&s.provider_id))
                .unwrap_or_default(),
        ),
    ]);
    add_metadata_labels(&mut group.labels, "node", &node.metadata);
    let (address, by_type) = node_address(node);
    let address = address?;
    let port = node
        .status
        .as_ref()
        .and_then(|s| s.daemon_endpoints.as_ref())
        .and_then(|d| d.kubelet_endpoint.as_ref())
        .map_or(0, |k| k.port);
    let mut target = Labels::from([
        (
            ADDRESS.to_owned(),
            join_host_port(&address, &port.to_string()),
        ),
        ("instance".to_owned(), name),
    ]);
    for (kind, address) in by_type {
        target.insert(
            sanitize_label_name(&format!("{META}node_address_{kind}")),
            address,
        );
    }
    group.targets.push(target);
    Some(group)
}

/// What the endpoints role looks up beside the Endpoints object.
pub trait EndpointsContext {
    fn service(&self, namespace: &str, name: &str) -> Option<&Service>;
    fn pod(&self, namespace: &str, name: &str) -> Option<&Pod>;
    /// The node, when `attach_metadata.node` is set.
    fn node(&self, name: &str) -> Option<&Node>;
}

/// The endpoints role: one target per address and port (ready and not ready), with the
/// service's labels on the group, the pod's labels (and the container whose port matches)
/// on targets backed by a pod, and one more target for each container port of those pods
/// that no endpoint port covers.
pub fn endpoints_group(endpoints: &Endpoints, context: &dyn EndpointsContext) -> Group {
    let name = text(&endpoints.metadata.name);
    let namespace = text(&endpoints.metadata.namespace);
    let mut group = Group::new(format!("endpoints/{namespace}/{name}"));
    group.labels = Labels::from([
        (label("namespace"), namespace.clone()),
        (label("endpoints_name"), name.clone()),
    ]);
    if let Some(service) = context.service(&namespace, &name) {
        group.labels.extend(service_labels(service));
    }
    for (key, value) in endpoints.metadata.labels.iter().flatten() {
        let key = sanitize_label_name(key);
        group
            .labels
            .insert(label(&format!("endpoints_label_{key}")), value.clone());
        group.labels.insert(
            label(&format!("endpoints_labelpresent_{key}")),
            "true".to_owned(),
        );
    }
    // Pods seen (in order of first sighting) and the endpoint ports they were seen with.
    let mut seen_pods: Vec<(&Pod, Vec<i32>)> = Vec::new();
    for subset in endpoints.subsets.iter().flatten() {
        for port in subset.ports.iter().flatten() {
            let ready = subset.addresses.iter().flatten().map(|a| (a, "true"));
            let not_ready = subset
                .not_ready_addresses
                .iter()
                .flatten()
                .map(|a| (a, "false"));
            for (address, ready) in ready.chain(not_ready) {
                let number = port.port.to_string();
                let mut target = Labels::from([
                    (ADDRESS.to_owned(), join_host_port(&address.ip, &number)),
                    (label("endpoint_port_name"), text(&port.name)),
                    (label("endpoint_port_protocol"), text(&port.protocol)),
                    (label("endpoint_ready"), ready.to_owned()),
                ]);
                if let Some(reference) = &address.target_ref {
                    target.insert(label("endpoint_address_target_kind"), text(&reference.kind));
                    target.insert(label("endpoint_address_target_name"), text(&reference.name));
                }
                if let Some(node) = &address.node_name {
                    target.insert(label("endpoint_node_name"), node.clone());
                    if let Some(node) = context.node(node) {
                        target.extend(node_metadata_labels(node));
                    }
                }
                if let Some(hostname) = address.hostname.as_ref().filter(|h| !h.is_empty()) {
                    target.insert(label("endpoint_hostname"), hostname.clone());
                }
                let pod = address
                    .target_ref
                    .as_ref()
                    .filter(|r| r.kind.as_deref() == Some("Pod"))
                    .and_then(|r| context.pod(&text(&r.namespace), &text(&r.name)));
                let Some(pod) = pod else {
                    group.targets.push(target);
                    continue;
                };
                // `target.Merge(podLabels(pod))`: the pod's labels win.
                target.extend(pod_labels(pod));
                let matching = pod
                    .spec
                    .iter()
                    .flat_map(|s| s.containers.iter())
                    .find_map(|c| {
                        c.ports
                            .iter()
                            .flatten()
                            .find(|p| p.container_port == port.port)
                            .map(|p| (c, p))
                    });
                if let Some((container, container_port)) = matching {
                    target.insert(label("pod_container_name"), container.name.clone());
                    target.insert(label("pod_container_port_name"), text(&container_port.name));
                    target.insert(label("pod_container_port_number"), number.clone());
                    // Prometheus takes the endpoint port's protocol here.
                    target.insert(label("pod_container_port_protocol"), text(&port.protocol));
                }
                let key = (pod.metadata.namespace.clone(), pod.metadata.name.clone());
                match seen_pods
                    .iter_mut()
                    .find(|(p, _)| (p.metadata.namespace.clone(), p.metadata.name.clone()) == key)
                {
                    Some((_, ports)) => ports.push(port.port),
                    None => seen_pods.push((pod, vec![port.port])),
                }
                group.targets.push(target);
            }
        }
    }
    for (pod, ports) in seen_pods {
        let pod_ip = pod
            .status
            .as_ref()
            .map(|s| text(&s.pod_ip))
            .unwrap_or_default();
        for container in pod.spec.iter().flat_map(|s| s.containers.iter()) {
            for container_port in container.ports.iter().flatten() {
                if ports.contains(&container_port.container_port) {
                    continue;
                }
                let number = container_port.container_port.to_string();
                let mut target = Labels::from([
                    (ADDRESS.to_owned(), join_host_port(&pod_ip, &number)),
                    (label("pod_container_name"), container.name.clone()),
                    (label("pod_container_port_name"), text(&container_port.name)),
                    (label("pod_container_port_number"), number),
                    (
                        label("pod_container_port_protocol"),
                        text(&container_port.protocol),
                    ),
                ]);
                target.extend(pod_labels(pod));
                group.targets.push(target);
            }
        }
    }
    group
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sanitizing_and_host_ports_follow_go() {
        assert_eq!(
            sanitize_label_name("app.kubernetes.io/name"),
            "app_kubernetes_io_name"
        );
        assert_eq!(sanitize_label_name("ünï"), "_n_");
        assert_eq!(join_host_port("1.2.3.4", "80"), "1.2.3.4:80");
        assert_eq!(join_host_port("fd00::1", "80"), "[fd00::1]:80");
        assert_eq!(join_host_port("a.b.svc", "80"), "a.b.svc:80");
    }
}
