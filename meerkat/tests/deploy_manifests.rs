//! The Kubernetes manifests in `deploy/kubernetes/`, checked as `kubectl apply` would check
//! them if an API server could run here: every document parses into its typed Kubernetes
//! API struct (k8s-openapi, API version 1.33) with no unknown field, and the pieces fit
//! together — service accounts, cluster roles and config maps that are referred to exist,
//! the node agent mounts what its flags point at, the cluster agent's scrape configuration
//! parses with the agent's own parser, and every `meerkat.yaml` passes `meerkat config check`.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::core::v1::{
    ConfigMap, Container, Namespace, PodSpec, Service, ServiceAccount,
};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use serde_json::Value;

fn manifest_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/kubernetes")
}

/// Every key of `original` that `round_trip` lacks, as a path (`spec.template.spec.contianers`):
/// k8s-openapi's structs skip fields they do not know, so a key lost on the way through
/// the typed struct is a key Kubernetes would not know either.
fn lost_keys(original: &Value, round_trip: &Value, path: &str, out: &mut Vec<String>) {
    match (original, round_trip) {
        (Value::Object(mine), Value::Object(theirs)) => {
            for (key, value) in mine {
                let here = if path.is_empty() {
                    key.clone()
                } else {
                    format!("{path}.{key}")
                };
                match theirs.get(key) {
                    Some(other) => lost_keys(value, other, &here, out),
                    // A null is "not set" in both.
                    None if value.is_null() => {}
                    None => out.push(here),
                }
            }
        }
        (Value::Array(mine), Value::Array(theirs)) => {
            for (i, value) in mine.iter().enumerate() {
                let here = format!("{path}[{i}]");
                match theirs.get(i) {
                    Some(other) => lost_keys(value, other, &here, out),
                    None => out.push(here),
                }
            }
        }
        _ => {}
    }
}

/// Parses `document` as `T` and reports the fields `T` does not have.
fn typed<T>(document: &Value, out: &mut Vec<String>) -> Result<T, String>
where
    T: serde::de::DeserializeOwned + serde::Serialize,
{
    let parsed: T = serde_json::from_value(document.clone()).map_err(|e| e.to_string())?;
    let round_trip = serde_json::to_value(&parsed).map_err(|e| e.to_string())?;
    let mut lost = Vec::new();
    lost_keys(document, &round_trip, "", &mut lost);
    out.extend(lost.into_iter().map(|path| format!("unknown field {path}")));
    Ok(parsed)
}

#[derive(Default)]
struct Manifests {
    namespaces: Vec<Namespace>,
    daemon_sets: Vec<DaemonSet>,
    deployments: Vec<Deployment>,
    service_accounts: Vec<ServiceAccount>,
    cluster_roles: Vec<ClusterRole>,
    bindings: Vec<ClusterRoleBinding>,
    config_maps: Vec<ConfigMap>,
    services: Vec<Service>,
}

/// Reads every YAML document of `text` (from `file`) into `manifests`; problems are
/// returned as `file#document: message`.
fn load_documents(file: &str, text: &str, manifests: &mut Manifests) -> Vec<String> {
    let documents: Vec<Value> = match serde_saphyr::from_multiple(text) {
        Ok(documents) => documents,
        Err(error) => return vec![format!("{file}: not YAML: {error}")],
    };
    let mut problems = Vec::new();
    for (index, document) in documents.into_iter().enumerate() {
        if document.is_null() {
            continue;
        }
        let mut found = Vec::new();
        let kind = document["kind"].as_str().unwrap_or_default().to_owned();
        let result = match kind.as_str() {
            "Namespace" => typed(&document, &mut found).map(|d| manifests.namespaces.push(d)),
            "DaemonSet" => typed(&document, &mut found).map(|d| manifests.daemon_sets.push(d)),
            "Deployment" => typed(&document, &mut found).map(|d| manifests.deployments.push(d)),
            "ServiceAccount" => {
                typed(&document, &mut found).map(|d| manifests.service_accounts.push(d))
            }
            "ClusterRole" => typed(&document, &mut found).map(|d| manifests.cluster_roles.push(d)),
            "ClusterRoleBinding" => {
                typed(&document, &mut found).map(|d| manifests.bindings.push(d))
            }
            "ConfigMap" => typed(&document, &mut found).map(|d| manifests.config_maps.push(d)),
            "Service" => typed(&document, &mut found).map(|d| manifests.services.push(d)),
            other => Err(format!("kind {other:?} is not one these manifests use")),
        };
        if let Err(error) = result {
            found.push(error);
        }
        let name = document["metadata"]["name"].as_str().unwrap_or("?");
        problems.extend(
            found
                .into_iter()
                .map(|problem| format!("{file}#{index} ({kind} {name}): {problem}")),
        );
    }
    problems
}

fn load_all() -> (Manifests, Vec<String>) {
    let mut manifests = Manifests::default();
    let mut problems = Vec::new();
    let mut files: Vec<_> = std::fs::read_dir(manifest_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    files.sort();
    assert!(files.len() >= 4, "manifests missing: {files:?}");
    for path in files {
        let text = std::fs::read_to_string(&path).unwrap();
        let file = path.file_name().unwrap().to_string_lossy().into_owned();
        problems.extend(load_documents(&file, &text, &mut manifests));
    }
    (manifests, problems)
}

/// The pod specs of the workloads, by workload name.
fn pods(manifests: &Manifests) -> Vec<(String, PodSpec)> {
    let mut out = Vec::new();
    for d in &manifests.daemon_sets {
        let spec = d.spec.as_ref().unwrap().template.spec.clone().unwrap();
        out.push((d.metadata.name.clone().unwrap(), spec));
    }
    for d in &manifests.deployments {
        let spec = d.spec.as_ref().unwrap().template.spec.clone().unwrap();
        out.push((d.metadata.name.clone().unwrap(), spec));
    }
    out
}

/// The value following `flag` in `args`.
fn flag<'a>(args: &'a [String], flag: &str) -> Option<&'a str> {
    args.iter()
        .position(|a| a == flag)
        .and_then(|i| args.get(i + 1))
        .map(String::as_str)
}

fn config_map<'a>(manifests: &'a Manifests, name: &str) -> Option<&'a ConfigMap> {
    manifests
        .config_maps
        .iter()
        .find(|c| c.metadata.name.as_deref() == Some(name))
}

/// The volume mount of `container` holding `path` (the longest mount path that is a
/// prefix of it), with its volume.
fn mount_of<'a>(
    pod: &'a PodSpec,
    container: &'a Container,
    path: &str,
) -> Option<(
    &'a k8s_openapi::api::core::v1::VolumeMount,
    &'a k8s_openapi::api::core::v1::Volume,
)> {
    let mount = container
        .volume_mounts
        .iter()
        .flatten()
        .filter(|m| Path::new(path).starts_with(&m.mount_path) || path == m.mount_path.as_str())
        .max_by_key(|m| m.mount_path.len())?;
    let volume = pod
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == mount.name)?;
    Some((mount, volume))
}

/// The text of the file at `path` in `container`, when it comes from a ConfigMap volume.
fn config_file(
    manifests: &Manifests,
    pod: &PodSpec,
    container: &Container,
    path: &str,
) -> Result<String, String> {
    let (mount, volume) =
        mount_of(pod, container, path).ok_or_else(|| format!("nothing is mounted at {path}"))?;
    let source = volume
        .config_map
        .as_ref()
        .ok_or_else(|| format!("{path} is not on a ConfigMap volume"))?;
    let key = Path::new(path)
        .strip_prefix(&mount.mount_path)
        .map_err(|e| e.to_string())?
        .to_string_lossy()
        .into_owned();
    let map = config_map(manifests, &source.name)
        .ok_or_else(|| format!("ConfigMap {} does not exist", source.name))?;
    map.data
        .as_ref()
        .and_then(|d| d.get(&key))
        .cloned()
        .ok_or_else(|| format!("ConfigMap {} has no key {key}", source.name))
}

#[test]
fn every_document_parses_into_its_kubernetes_type_with_no_unknown_field() {
    let (manifests, problems) = load_all();
    assert!(problems.is_empty(), "{problems:#?}");
    assert_eq!(manifests.namespaces.len(), 1);
    assert_eq!(manifests.daemon_sets.len(), 1);
    assert_eq!(manifests.deployments.len(), 1);
    assert_eq!(manifests.service_accounts.len(), 2);
    assert_eq!(manifests.cluster_roles.len(), 2);
    assert_eq!(manifests.bindings.len(), 2);
    assert!(manifests.config_maps.len() >= 2);
    // Everything namespaced lives in the namespace the manifests create.
    let namespace = manifests.namespaces[0].metadata.name.clone().unwrap();
    let namespaced = manifests
        .daemon_sets
        .iter()
        .map(|d| &d.metadata)
        .chain(manifests.deployments.iter().map(|d| &d.metadata))
        .chain(manifests.service_accounts.iter().map(|d| &d.metadata))
        .chain(manifests.config_maps.iter().map(|d| &d.metadata))
        .chain(manifests.services.iter().map(|d| &d.metadata));
    for metadata in namespaced {
        assert_eq!(
            metadata.namespace.as_deref(),
            Some(namespace.as_str()),
            "{:?}",
            metadata.name
        );
    }
}

#[test]
fn a_misspelled_field_is_reported_with_its_path() {
    let text = std::fs::read_to_string(manifest_dir().join("40-cluster-agent.yaml")).unwrap();
    assert!(text.contains("      containers:"));
    let broken = text.replacen("      containers:", "      contianers:", 1);
    let problems = load_documents("broken.yaml", &broken, &mut Manifests::default());
    assert!(
        problems
            .iter()
            .any(|p| p.contains("unknown field spec.template.spec.contianers")),
        "{problems:#?}"
    );
    // Deep inside a list too, and a wrong type is an error of its own.
    let broken = text.replacen("readOnly: true", "readOnyl: true", 1);
    let problems = load_documents("broken.yaml", &broken, &mut Manifests::default());
    assert!(
        problems.iter().any(|p| p
            .contains("unknown field spec.template.spec.containers[0].volumeMounts[0].readOnyl")),
        "{problems:#?}"
    );
    let broken = text.replacen("replicas: 1", "replicas: one", 1);
    let problems = load_documents("broken.yaml", &broken, &mut Manifests::default());
    assert_eq!(problems.len(), 1, "{problems:#?}");
    let broken = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: x\n";
    let problems = load_documents("pod.yaml", broken, &mut Manifests::default());
    assert!(problems[0].contains("Pod"), "{problems:#?}");
}

#[test]
fn references_between_objects_resolve() {
    let (manifests, problems) = load_all();
    assert!(problems.is_empty(), "{problems:#?}");
    let accounts: BTreeSet<(String, String)> = manifests
        .service_accounts
        .iter()
        .map(|a| {
            (
                a.metadata.namespace.clone().unwrap(),
                a.metadata.name.clone().unwrap(),
            )
        })
        .collect();
    let roles: BTreeSet<String> = manifests
        .cluster_roles
        .iter()
        .map(|r| r.metadata.name.clone().unwrap())
        .collect();
    for binding in &manifests.bindings {
        assert_eq!(binding.role_ref.kind, "ClusterRole");
        assert!(
            roles.contains(&binding.role_ref.name),
            "{:?} binds a missing role",
            binding.metadata.name
        );
        for subject in binding.subjects.iter().flatten() {
            assert_eq!(subject.kind, "ServiceAccount");
            let key = (subject.namespace.clone().unwrap(), subject.name.clone());
            assert!(accounts.contains(&key), "missing account {key:?}");
        }
    }
    let mut images = BTreeSet::new();
    for (workload, pod) in pods(&manifests) {
        let account = pod.service_account_name.clone().unwrap();
        assert!(
            accounts.iter().any(|(_, name)| *name == account),
            "{workload}: service account {account} does not exist"
        );
        assert!(
            manifests.bindings.iter().any(|b| b
                .subjects
                .iter()
                .flatten()
                .any(|s| s.name == account)),
            "{workload}: {account} is bound to no role"
        );
        for container in &pod.containers {
            let image = container.image.clone().unwrap_or_default();
            let tag = image.rsplit_once(':').map(|(_, tag)| tag).unwrap_or("");
            assert!(
                !tag.is_empty() && tag != "latest" && !tag.contains('/'),
                "{workload}: image {image:?} needs a fixed tag"
            );
            images.insert(image);
            let resources = container.resources.clone().unwrap_or_default();
            assert!(
                resources.requests.is_some() && resources.limits.is_some(),
                "{workload}: requests and limits"
            );
            let args = container.args.clone().unwrap_or_default();
            let env: BTreeMap<String, _> = container
                .env
                .iter()
                .flatten()
                .map(|e| (e.name.clone(), e.value_from.clone()))
                .collect();
            // Every $(VAR) the arguments use is defined.
            for arg in &args {
                if let Some(var) = arg.strip_prefix("$(").and_then(|a| a.strip_suffix(')')) {
                    assert!(env.contains_key(var), "{workload}: $({var}) is not defined");
                }
            }
            // MEERKAT_* variables are configuration keys, refused when unknown; the only
            // one that is not is the cluster agent's cluster name.
            for name in env.keys() {
                assert!(
                    !name.starts_with("MEERKAT_") || name == "MEERKAT_CLUSTER_NAME",
                    "{workload}: {name} would be refused as an unknown configuration key"
                );
            }
            for source in env.values().flatten() {
                if let Some(key_ref) = &source.config_map_key_ref {
                    let map = config_map(&manifests, &key_ref.name)
                        .unwrap_or_else(|| panic!("{workload}: no ConfigMap {}", key_ref.name));
                    assert!(
                        map.data.as_ref().unwrap().contains_key(&key_ref.key),
                        "{workload}: ConfigMap {} has no key {}",
                        key_ref.name,
                        key_ref.key
                    );
                }
            }
            // The meerkat.yaml each agent is given is one Meerkat accepts.
            let config = flag(&args, "--config").expect("--config");
            let text = config_file(&manifests, &pod, container, config)
                .unwrap_or_else(|e| panic!("{workload}: {e}"));
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("meerkat.yaml");
            std::fs::write(&path, text).unwrap();
            let (code, _, stderr) = common::run(
                &["config", "check", "--config", path.to_str().unwrap()],
                dir.path(),
                &[],
            );
            assert_eq!(code, 0, "{workload}: {stderr}");
        }
    }
    assert_eq!(images.len(), 1, "one image for every agent: {images:?}");
}

fn container_of(manifests: &Manifests, workload: &str) -> (PodSpec, Container) {
    let (_, pod) = pods(manifests)
        .into_iter()
        .find(|(name, _)| name == workload)
        .unwrap_or_else(|| panic!("no workload {workload}"));
    let container = pod.containers[0].clone();
    (pod, container)
}

#[test]
fn the_node_agent_mounts_what_its_flags_point_at() {
    let (manifests, problems) = load_all();
    assert!(problems.is_empty(), "{problems:#?}");
    let daemon_set = &manifests.daemon_sets[0];
    let (pod, container) = container_of(&manifests, daemon_set.metadata.name.as_ref().unwrap());
    let args = container.args.clone().unwrap();
    assert_eq!(&args[2..4], ["agent", "node"], "{args:?}");
    let root = flag(&args, "--root").expect("--root");
    for host_path in [
        "/proc",
        "/sys",
        "/sys/fs/cgroup",
        "/var/log/pods",
        "/var/log/containers",
    ] {
        let inside = format!("{root}{host_path}");
        let (mount, volume) = mount_of(&pod, &container, &inside)
            .unwrap_or_else(|| panic!("{inside} is not mounted"));
        assert_eq!(mount.mount_path, inside, "mounted exactly at {inside}");
        assert_eq!(mount.read_only, Some(true), "{inside} read-only");
        assert_eq!(
            volume.host_path.as_ref().map(|h| h.path.as_str()),
            Some(host_path),
            "{inside} is the host's {host_path}"
        );
    }
    let checkpoints = flag(&args, "--checkpoint-dir").expect("--checkpoint-dir");
    let (mount, volume) = mount_of(&pod, &container, checkpoints)
        .unwrap_or_else(|| panic!("{checkpoints} is not mounted"));
    assert_ne!(mount.read_only, Some(true), "checkpoints are written");
    assert!(
        volume.host_path.is_some(),
        "checkpoints outlive the pod (a hostPath)"
    );
    assert_eq!(flag(&args, "--node-name"), Some("$(NODE_NAME)"));
    let node_name = container
        .env
        .iter()
        .flatten()
        .find(|e| e.name == "NODE_NAME")
        .and_then(|e| e.value_from.as_ref())
        .and_then(|v| v.field_ref.as_ref())
        .map(|f| f.field_path.clone());
    assert_eq!(node_name.as_deref(), Some("spec.nodeName"));
    // The OTLP proxy on the node's address.
    let ports: BTreeSet<i32> = container
        .ports
        .iter()
        .flatten()
        .filter_map(|p| p.host_port)
        .collect();
    assert!(
        pod.host_network == Some(true) || ports == BTreeSet::from([4317, 4318]),
        "OTLP proxy not reachable on the node: {ports:?}"
    );
    // On every node, tainted or not.
    assert!(
        pod.tolerations
            .iter()
            .flatten()
            .any(|t| t.operator.as_deref() == Some("Exists") && t.key.is_none()),
        "tolerates every taint"
    );
    // The host's own filesystems are under the root, for node_filesystem_*.
    let (mount, volume) = mount_of(&pod, &container, root).expect("the host's / at --root");
    assert_eq!(mount.mount_path, root);
    assert_eq!(
        volume.host_path.as_ref().map(|h| h.path.as_str()),
        Some("/")
    );
    assert_eq!(mount.mount_propagation.as_deref(), Some("HostToContainer"));
    // Every flag given is one `meerkat agent node` has.
    let (code, help, stderr) = common::run(
        &["agent", "node", "--help"],
        std::env::temp_dir().as_path(),
        &[],
    );
    assert_eq!(code, 0, "{stderr}");
    for arg in args.iter().filter(|a| a.starts_with("--")) {
        assert!(help.contains(arg.as_str()), "unknown flag {arg}");
    }
}

#[test]
fn the_cluster_agent_runs_a_scrape_config_its_parser_accepts() {
    let (manifests, problems) = load_all();
    assert!(problems.is_empty(), "{problems:#?}");
    let deployment = &manifests.deployments[0];
    let (pod, container) = container_of(&manifests, deployment.metadata.name.as_ref().unwrap());
    let args = container.args.clone().unwrap();
    assert_eq!(&args[2..4], ["agent", "cluster"], "{args:?}");
    let path = flag(&args, "--scrape-config").expect("--scrape-config");
    let text = config_file(&manifests, &pod, &container, path).unwrap();
    let config = scrape::config::PrometheusConfig::parse(&text)
        .unwrap_or_else(|e| panic!("{path}: {}", e.0));
    assert!(
        config.jobs.iter().any(|j| !j.kubernetes_sd.is_empty()),
        "discovers pods through the Kubernetes API"
    );
    assert!(flag(&args, "--cluster-name").is_some(), "names its cluster");
    let buffer = flag(&args, "--buffer-dir").expect("--buffer-dir");
    let (mount, _) = mount_of(&pod, &container, buffer).expect("buffer mounted");
    assert_ne!(mount.read_only, Some(true), "the buffer is written");
    // Every flag given is one `meerkat agent cluster` has.
    let (code, help, stderr) = common::run(
        &["agent", "cluster", "--help"],
        std::env::temp_dir().as_path(),
        &[],
    );
    assert_eq!(code, 0, "{stderr}");
    for arg in args.iter().filter(|a| a.starts_with("--")) {
        assert!(help.contains(arg.as_str()), "unknown flag {arg}");
    }
}
