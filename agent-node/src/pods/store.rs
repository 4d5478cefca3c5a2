//! The node's pods as the agent knows them, fed by more than one source.
//!
//! The filesystem only says that a pod exists (namespace, name, uid); the kubelet and the
//! API server say what it is (labels, owner, containers, IP). Every source writes into the
//! same [`PodStore`], and a source that knows less never overwrites one that knows more, so
//! a pod keeps its metadata while the kubelet is briefly unreachable and the agent still
//! attributes a pod it has only seen on disk.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use super::classify::{Classifier, PodAttributes};

/// Where a pod's description came from, in increasing order of what it knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PodSource {
    /// `/var/log/pods` and the kubepods cgroups: namespace, name and uid only.
    Filesystem,
    /// The kubelet's `/pods`.
    Kubelet,
    /// A watch of this node's pods on the API server (`spec.nodeName` field selector).
    ApiServer,
}

impl PodSource {
    /// Whether the source has the pod's metadata (labels, owner, containers), not just its
    /// existence.
    pub fn has_metadata(self) -> bool {
        self != PodSource::Filesystem
    }
}

/// The controller that owns a pod, as its `ownerReferences` name it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Owner {
    pub kind: String,
    pub name: String,
}

/// One container of a pod, from the pod's status.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ContainerInfo {
    pub name: String,
    /// The runtime's id without the `containerd://` (or `cri-o://`, `docker://`) prefix:
    /// the same id the cgroup scope is named after.
    pub id: String,
    pub image: String,
}

/// What the agent knows of one pod.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PodInfo {
    pub uid: String,
    pub namespace: String,
    pub name: String,
    pub node: String,
    /// `status.podIPs` (or `podIP`), empty for host-network pods: their address is the
    /// node's and says nothing about which pod sent a span.
    pub ips: Vec<String>,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    /// The controlling owner (`controller: true`), or else the first owner reference.
    pub owner: Option<Owner>,
    pub containers: Vec<ContainerInfo>,
}

/// A pod with the attributes computed from it once, when it was stored.
#[derive(Debug, PartialEq)]
pub struct PodEntry {
    pub info: PodInfo,
    pub source: PodSource,
    pub attributes: PodAttributes,
}

#[derive(Debug, Default)]
struct Inner {
    by_uid: HashMap<String, Arc<PodEntry>>,
    by_ip: HashMap<String, String>,
    by_container_id: HashMap<String, String>,
}

impl Inner {
    fn unindex(&mut self, entry: &PodEntry) {
        for ip in &entry.info.ips {
            if self.by_ip.get(ip) == Some(&entry.info.uid) {
                self.by_ip.remove(ip);
            }
        }
        for container in &entry.info.containers {
            if self.by_container_id.get(&container.id) == Some(&entry.info.uid) {
                self.by_container_id.remove(&container.id);
            }
        }
    }

    fn index(&mut self, entry: &PodEntry) {
        for ip in &entry.info.ips {
            self.by_ip.insert(ip.clone(), entry.info.uid.clone());
        }
        for container in &entry.info.containers {
            if !container.id.is_empty() {
                self.by_container_id
                    .insert(container.id.clone(), entry.info.uid.clone());
            }
        }
    }
}

/// The pods on this node, indexed by uid, IP and container id; cheap to clone and share
/// between the discovery loop, the collectors and the OTLP proxy.
#[derive(Clone, Debug)]
pub struct PodStore {
    inner: Arc<RwLock<Inner>>,
    classifier: Arc<Classifier>,
}

impl PodStore {
    pub fn new(classifier: Classifier) -> Self {
        Self {
            inner: Arc::default(),
            classifier: Arc::new(classifier),
        }
    }

    pub fn classifier(&self) -> &Classifier {
        &self.classifier
    }

    // A panic while holding the lock cannot leave the maps half-updated in a way that
    // matters more than losing the agent's view, so a poisoned lock is simply reused.
    fn read(&self) -> RwLockReadGuard<'_, Inner> {
        self.inner.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, Inner> {
        self.inner.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Stores `info` from `source`. A source with less metadata does not replace what a
    /// richer one stored (the filesystem never overwrites the kubelet); returns whether the
    /// store changed.
    pub fn upsert(&self, info: PodInfo, source: PodSource) -> bool {
        if info.uid.is_empty() {
            return false;
        }
        let mut inner = self.write();
        if let Some(existing) = inner.by_uid.get(&info.uid)
            && (existing.source > source || (existing.source == source && existing.info == info))
        {
            return false;
        }
        let attributes = self.classifier.attributes(&info);
        let entry = Arc::new(PodEntry {
            info,
            source,
            attributes,
        });
        if let Some(old) = inner.by_uid.insert(entry.info.uid.clone(), entry.clone()) {
            inner.unindex(&old);
        }
        inner.index(&entry);
        true
    }

    /// Forgets the pod; returns whether it was known.
    pub fn remove(&self, uid: &str) -> bool {
        let mut inner = self.write();
        match inner.by_uid.remove(uid) {
            Some(old) => {
                inner.unindex(&old);
                true
            }
            None => false,
        }
    }

    /// Makes `source`'s pods exactly `pods`: each is upserted and every pod last stored by
    /// `source` that is not among them is removed (a pod the kubelet no longer lists is
    /// gone; the filesystem may bring back its bare entry while its directory remains).
    pub fn sync(&self, source: PodSource, pods: Vec<PodInfo>) {
        let keep: HashSet<String> = pods.iter().map(|p| p.uid.clone()).collect();
        for pod in pods {
            self.upsert(pod, source);
        }
        let stale: Vec<String> = self
            .read()
            .by_uid
            .values()
            .filter(|e| e.source == source && !keep.contains(&e.info.uid))
            .map(|e| e.info.uid.clone())
            .collect();
        for uid in stale {
            self.remove(&uid);
        }
    }

    pub fn by_uid(&self, uid: &str) -> Option<Arc<PodEntry>> {
        self.read().by_uid.get(uid).cloned()
    }

    /// The pod with this IP (what the OTLP proxy looks up for a sender's address).
    pub fn by_ip(&self, ip: &str) -> Option<Arc<PodEntry>> {
        let inner = self.read();
        inner
            .by_ip
            .get(ip)
            .and_then(|uid| inner.by_uid.get(uid))
            .cloned()
    }

    /// The pod running the container with this runtime id (prefix like `containerd://`
    /// accepted and ignored).
    pub fn by_container_id(&self, id: &str) -> Option<Arc<PodEntry>> {
        let id = strip_runtime_prefix(id);
        let inner = self.read();
        inner
            .by_container_id
            .get(id)
            .and_then(|uid| inner.by_uid.get(uid))
            .cloned()
    }

    /// Every pod, in no particular order.
    pub fn pods(&self) -> Vec<Arc<PodEntry>> {
        self.read().by_uid.values().cloned().collect()
    }

    pub fn len(&self) -> usize {
        self.read().by_uid.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// `containerd://abc` → `abc`; an id without a scheme is returned as it is.
pub fn strip_runtime_prefix(id: &str) -> &str {
    id.split_once("://").map_or(id, |(_, rest)| rest)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pods::classify::ClassifyConfig;

    fn store() -> PodStore {
        PodStore::new(Classifier::new(&ClassifyConfig::default()).expect("default rules"))
    }

    fn pod(uid: &str, ip: &str, container: &str) -> PodInfo {
        PodInfo {
            uid: uid.to_owned(),
            namespace: "default".to_owned(),
            name: format!("pod-{uid}"),
            ips: vec![ip.to_owned()],
            containers: vec![ContainerInfo {
                name: "app".to_owned(),
                id: container.to_owned(),
                image: "nginx:1".to_owned(),
            }],
            ..PodInfo::default()
        }
    }

    #[test]
    fn indexes_follow_upserts_and_removals() {
        let store = store();
        assert!(store.upsert(pod("u1", "10.0.0.1", "c1"), PodSource::Kubelet));
        assert_eq!(
            store.by_ip("10.0.0.1").map(|e| e.info.uid.clone()),
            Some("u1".to_owned())
        );
        assert_eq!(
            store
                .by_container_id("containerd://c1")
                .map(|e| e.info.uid.clone()),
            Some("u1".to_owned())
        );
        // The pod moved to a new IP and its container restarted.
        assert!(store.upsert(pod("u1", "10.0.0.2", "c2"), PodSource::Kubelet));
        assert!(store.by_ip("10.0.0.1").is_none());
        assert!(store.by_container_id("c1").is_none());
        assert!(store.by_container_id("c2").is_some());
        assert!(store.remove("u1"));
        assert!(store.by_ip("10.0.0.2").is_none());
        assert!(store.is_empty());
        assert!(!store.remove("u1"));
    }

    #[test]
    fn a_poorer_source_never_overwrites_a_richer_one() {
        let store = store();
        store.upsert(pod("u1", "10.0.0.1", "c1"), PodSource::ApiServer);
        let bare = PodInfo {
            uid: "u1".to_owned(),
            namespace: "default".to_owned(),
            name: "pod-u1".to_owned(),
            ..PodInfo::default()
        };
        assert!(!store.upsert(bare.clone(), PodSource::Filesystem));
        assert!(!store.upsert(bare, PodSource::Kubelet));
        let entry = store.by_uid("u1").expect("stored");
        assert_eq!(entry.source, PodSource::ApiServer);
        assert_eq!(entry.info.ips, ["10.0.0.1"]);
    }

    #[test]
    fn sync_removes_only_the_sources_own_missing_pods() {
        let store = store();
        store.upsert(pod("a", "10.0.0.1", "c1"), PodSource::Kubelet);
        store.upsert(pod("b", "10.0.0.2", "c2"), PodSource::Kubelet);
        store.upsert(pod("c", "10.0.0.3", "c3"), PodSource::Filesystem);
        store.sync(PodSource::Kubelet, vec![pod("b", "10.0.0.2", "c2")]);
        let mut uids: Vec<String> = store.pods().iter().map(|e| e.info.uid.clone()).collect();
        uids.sort();
        assert_eq!(uids, ["b", "c"]);
    }
}
