//! Pods as the node's filesystem shows them, with no API at all.
//!
//! Two places name every pod by uid: the kubelet's log directories
//! (`/var/log/pods/<namespace>_<pod>_<uid>/<container>/`) and the kubepods cgroup tree,
//! which the kubelet lays out one of two ways depending on its cgroup driver:
//!
//! ```text
//! systemd:  kubepods.slice/[kubepods-<qos>.slice/]kubepods[-<qos>]-pod<uid, - as _>.slice/cri-containerd-<id>.scope
//! cgroupfs: kubepods/[<qos>/]pod<uid>/<id>
//! ```
//!
//! (guaranteed pods sit directly under the top; `crio-<id>.scope` and `docker-<id>.scope`
//! for the other runtimes). Joined by uid they give the namespace and name the cgroups lack
//! and the containers the logs lack. A missing tree is an empty node, not an error: the
//! agent also runs on machines that are not Kubernetes nodes.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

/// One pod found on disk.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FsPod {
    pub uid: String,
    /// From the log directory's name, when the pod has one.
    pub namespace: Option<String>,
    pub name: Option<String>,
    pub log_dir: Option<PathBuf>,
    /// Container names that have a log directory.
    pub log_containers: Vec<String>,
    pub cgroup: Option<PodCgroup>,
}

/// A pod's cgroup and its containers' cgroups.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodCgroup {
    /// `guaranteed`, `burstable` or `besteffort`.
    pub qos: String,
    pub path: PathBuf,
    /// The path below the cgroup mount, with a leading `/`: cAdvisor's `id` label.
    pub id: String,
    pub containers: Vec<ContainerCgroup>,
}

/// One container's cgroup.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerCgroup {
    /// The runtime's container id (what the pod status lists after `containerd://`).
    pub container_id: String,
    pub path: PathBuf,
    /// The path below the cgroup mount, with a leading `/`.
    pub id: String,
}

/// Where the cgroup v2 hierarchy is mounted under `root`: `sys/fs/cgroup` on a unified
/// host, `sys/fs/cgroup/unified` on a hybrid one. The first that has a kubepods tree wins;
/// without one, `sys/fs/cgroup`.
pub fn cgroup_mount(root: &Path) -> PathBuf {
    let candidates = [
        root.join("sys/fs/cgroup"),
        root.join("sys/fs/cgroup/unified"),
    ];
    for candidate in &candidates {
        if candidate.join("kubepods.slice").is_dir() || candidate.join("kubepods").is_dir() {
            return candidate.clone();
        }
    }
    candidates[0].clone()
}

/// Every pod under `root`, joined by uid, sorted by uid.
pub fn scan(root: &Path) -> Vec<FsPod> {
    let mut pods: BTreeMap<String, FsPod> = BTreeMap::new();
    for (uid, namespace, name, dir) in log_dirs(&root.join("var/log/pods")) {
        let log_containers = sorted_dir_names(&dir);
        let pod = pods.entry(uid.clone()).or_default();
        pod.uid = uid;
        pod.namespace = Some(namespace);
        pod.name = Some(name);
        pod.log_dir = Some(dir);
        pod.log_containers = log_containers;
    }
    for (uid, cgroup) in pod_cgroups(&cgroup_mount(root)) {
        let pod = pods.entry(uid.clone()).or_default();
        pod.uid = uid;
        pod.cgroup = Some(cgroup);
    }
    pods.into_values().collect()
}

/// `<namespace>_<pod>_<uid>` directories. Kubernetes names and uids never contain `_`, so
/// a name that does not split into three non-empty parts is not a pod's.
fn log_dirs(dir: &Path) -> Vec<(String, String, String, PathBuf)> {
    let mut out = Vec::new();
    for name in sorted_dir_names(dir) {
        let parts: Vec<&str> = name.split('_').collect();
        if let [namespace, pod, uid] = parts[..]
            && !namespace.is_empty()
            && !pod.is_empty()
            && !uid.is_empty()
        {
            out.push((
                uid.to_owned(),
                namespace.to_owned(),
                pod.to_owned(),
                dir.join(&name),
            ));
        }
    }
    out
}

const QOS_CLASSES: [&str; 2] = ["burstable", "besteffort"];

fn pod_cgroups(mount: &Path) -> Vec<(String, PodCgroup)> {
    let mut out = Vec::new();
    // systemd driver
    let top = mount.join("kubepods.slice");
    let mut parents = vec![(top.clone(), "guaranteed", "kubepods-pod".to_owned())];
    for qos in QOS_CLASSES {
        parents.push((
            top.join(format!("kubepods-{qos}.slice")),
            qos,
            format!("kubepods-{qos}-pod"),
        ));
    }
    for (parent, qos, prefix) in parents {
        for name in sorted_dir_names(&parent) {
            let Some(uid) = name
                .strip_prefix(prefix.as_str())
                .and_then(|rest| rest.strip_suffix(".slice"))
            else {
                continue;
            };
            let path = parent.join(&name);
            let containers = sorted_dir_names(&path)
                .into_iter()
                .filter_map(|scope| {
                    let id = systemd_scope_container_id(&scope)?.to_owned();
                    Some(container(mount, path.join(&scope), id))
                })
                .collect();
            out.push((
                uid.replace('_', "-"),
                PodCgroup {
                    qos: qos.to_owned(),
                    id: relative_id(mount, &path),
                    path,
                    containers,
                },
            ));
        }
    }
    // cgroupfs driver
    let top = mount.join("kubepods");
    let mut parents = vec![(top.clone(), "guaranteed")];
    for qos in QOS_CLASSES {
        parents.push((top.join(qos), qos));
    }
    for (parent, qos) in parents {
        for name in sorted_dir_names(&parent) {
            let Some(uid) = name.strip_prefix("pod") else {
                continue;
            };
            let path = parent.join(&name);
            let containers = sorted_dir_names(&path)
                .into_iter()
                .filter(|id| is_container_id(id))
                .map(|id| container(mount, path.join(&id), id))
                .collect();
            out.push((
                uid.to_owned(),
                PodCgroup {
                    qos: qos.to_owned(),
                    id: relative_id(mount, &path),
                    path,
                    containers,
                },
            ));
        }
    }
    out
}

fn container(mount: &Path, path: PathBuf, container_id: String) -> ContainerCgroup {
    ContainerCgroup {
        container_id,
        id: relative_id(mount, &path),
        path,
    }
}

/// The container id in a systemd scope's name; CRI-O's `crio-conmon-<id>.scope` holds its
/// monitor process, not the container, and is skipped.
fn systemd_scope_container_id(scope: &str) -> Option<&str> {
    let stem = scope.strip_suffix(".scope")?;
    let id = ["cri-containerd-", "crio-", "docker-"]
        .iter()
        .find_map(|prefix| stem.strip_prefix(prefix))?;
    is_container_id(id).then_some(id)
}

/// Runtimes name containers by a hex id (64 digits for containerd, CRI-O and Docker).
fn is_container_id(name: &str) -> bool {
    name.len() >= 12 && name.bytes().all(|b| b.is_ascii_hexdigit())
}

fn relative_id(mount: &Path, path: &Path) -> String {
    match path.strip_prefix(mount) {
        Ok(rest) => format!("/{}", rest.to_string_lossy()),
        Err(_) => path.to_string_lossy().into_owned(),
    }
}

/// Names of the directories in `dir`, sorted; nothing when `dir` is missing or unreadable
/// (pods come and go while the agent reads).
fn sorted_dir_names(dir: &Path) -> Vec<String> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut names: Vec<String> = entries
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .filter_map(|e| e.file_name().into_string().ok())
        .collect();
    names.sort();
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mkdir(path: &Path) {
        fs::create_dir_all(path).expect("create test directory");
    }

    const ID_A: &str = "0b3c4f5e6d7a8b9c0d1e2f3a4b5c6d7e8f9a0b1c2d3e4f5a6b7c8d9e0f1a2b3c";
    const ID_B: &str = "1111111111111111111111111111111111111111111111111111111111111111";
    const ID_C: &str = "2222222222222222222222222222222222222222222222222222222222222222";

    #[test]
    fn joins_log_directories_and_both_cgroup_layouts_by_uid() {
        let root = tempfile::tempdir().expect("tempdir");
        let r = root.path();
        mkdir(&r.join("var/log/pods/default_web-1_aaaa-1111/app"));
        mkdir(&r.join("var/log/pods/default_web-1_aaaa-1111/sidecar"));
        mkdir(&r.join("var/log/pods/kube-system_dns_bbbb-2222/coredns"));
        mkdir(&r.join("var/log/pods/not-a-pod-dir"));
        let cg = r.join("sys/fs/cgroup/kubepods.slice");
        mkdir(&cg.join(format!(
            "kubepods-burstable.slice/kubepods-burstable-podaaaa_1111.slice/cri-containerd-{ID_A}.scope"
        )));
        mkdir(&cg.join(format!(
            "kubepods-burstable.slice/kubepods-burstable-podaaaa_1111.slice/crio-conmon-{ID_B}.scope"
        )));
        mkdir(&cg.join(format!("kubepods-podcccc_3333.slice/crio-{ID_B}.scope")));
        mkdir(&cg.join(format!(
            "kubepods-besteffort.slice/kubepods-besteffort-poddddd_4444.slice/docker-{ID_C}.scope"
        )));

        let pods = scan(r);
        let uids: Vec<&str> = pods.iter().map(|p| p.uid.as_str()).collect();
        assert_eq!(uids, ["aaaa-1111", "bbbb-2222", "cccc-3333", "dddd-4444"]);

        let web = &pods[0];
        assert_eq!(web.namespace.as_deref(), Some("default"));
        assert_eq!(web.name.as_deref(), Some("web-1"));
        assert_eq!(web.log_containers, ["app", "sidecar"]);
        let cgroup = web.cgroup.as_ref().expect("web has a cgroup");
        assert_eq!(cgroup.qos, "burstable");
        assert_eq!(
            cgroup.id,
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-podaaaa_1111.slice"
        );
        assert_eq!(cgroup.containers.len(), 1, "conmon scope skipped");
        assert_eq!(cgroup.containers[0].container_id, ID_A);
        assert_eq!(
            cgroup.containers[0].id,
            format!("{}/cri-containerd-{ID_A}.scope", cgroup.id)
        );

        assert!(pods[1].cgroup.is_none(), "log directory only");
        let guaranteed = pods[2].cgroup.as_ref().expect("cgroup");
        assert_eq!(guaranteed.qos, "guaranteed");
        assert_eq!(guaranteed.containers[0].container_id, ID_B);
        assert_eq!(pods[2].namespace, None);
        let besteffort = pods[3].cgroup.as_ref().expect("cgroup");
        assert_eq!(besteffort.qos, "besteffort");
        assert_eq!(besteffort.containers[0].container_id, ID_C);
    }

    #[test]
    fn cgroupfs_driver_layout_on_a_hybrid_host() {
        let root = tempfile::tempdir().expect("tempdir");
        let mount = root.path().join("sys/fs/cgroup/unified");
        mkdir(&mount.join(format!("kubepods/burstable/podeeee-5555/{ID_A}")));
        mkdir(&mount.join("kubepods/burstable/podeeee-5555/not-a-container"));
        mkdir(&mount.join(format!("kubepods/podffff-6666/{ID_B}")));
        assert_eq!(cgroup_mount(root.path()), mount);
        let pods = scan(root.path());
        assert_eq!(pods.len(), 2);
        let burstable = pods[0].cgroup.as_ref().expect("cgroup");
        assert_eq!(pods[0].uid, "eeee-5555");
        assert_eq!(burstable.id, "/kubepods/burstable/podeeee-5555");
        assert_eq!(burstable.containers.len(), 1);
        assert_eq!(
            burstable.containers[0].id,
            format!("/kubepods/burstable/podeeee-5555/{ID_A}")
        );
        assert_eq!(pods[1].uid, "ffff-6666");
        assert_eq!(
            pods[1].cgroup.as_ref().map(|c| c.qos.as_str()),
            Some("guaranteed")
        );
    }

    #[test]
    fn a_machine_without_kubernetes_has_no_pods() {
        let root = tempfile::tempdir().expect("tempdir");
        assert!(scan(root.path()).is_empty());
        assert!(scan(&root.path().join("does/not/exist")).is_empty());
    }
}
