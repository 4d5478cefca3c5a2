//! The objects one watcher has seen, kept as the API server has them now.
//!
//! kube's watcher lists and then watches; after a 410 Gone (or any failed re-watch) it
//! lists again, announcing it with `Init` ... `InitApply`* ... `InitDone`. The listed objects
//! are collected apart and replace the store only at `InitDone`, so a re-list neither loses
//! objects that still exist nor keeps ones deleted while the watch was down, and nobody sees
//! a half-listed store.

use std::collections::BTreeMap;

use kube::ResourceExt;
use kube::runtime::watcher::Event;

/// Objects by namespace and name.
#[derive(Debug)]
pub(crate) struct Store<K> {
    objects: BTreeMap<(String, String), K>,
    listing: Option<BTreeMap<(String, String), K>>,
    /// Whether a first list has completed.
    synced: bool,
}

impl<K> Default for Store<K> {
    fn default() -> Self {
        Self {
            objects: BTreeMap::new(),
            listing: None,
            synced: false,
        }
    }
}

fn key<K: ResourceExt>(object: &K) -> (String, String) {
    (object.namespace().unwrap_or_default(), object.name_any())
}

impl<K: ResourceExt + Clone> Store<K> {
    /// Applies one watcher event; `true` if what the store holds changed.
    pub(crate) fn apply(&mut self, event: Event<K>) -> bool {
        match event {
            Event::Init => {
                self.listing = Some(BTreeMap::new());
                false
            }
            Event::InitApply(object) => {
                self.listing
                    .get_or_insert_with(BTreeMap::new)
                    .insert(key(&object), object);
                false
            }
            Event::InitDone => {
                self.objects = self.listing.take().unwrap_or_default();
                self.synced = true;
                true
            }
            Event::Apply(object) => {
                self.objects.insert(key(&object), object);
                true
            }
            Event::Delete(object) => self.objects.remove(&key(&object)).is_some(),
        }
    }

    pub(crate) fn synced(&self) -> bool {
        self.synced
    }

    pub(crate) fn get(&self, namespace: &str, name: &str) -> Option<&K> {
        self.objects.get(&(namespace.to_owned(), name.to_owned()))
    }

    pub(crate) fn values(&self) -> impl Iterator<Item = &K> {
        self.objects.values()
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.objects.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::Pod;

    fn pod(name: &str) -> Pod {
        let mut pod = Pod::default();
        pod.metadata.name = Some(name.to_owned());
        pod.metadata.namespace = Some("default".to_owned());
        pod
    }

    #[test]
    fn a_relist_replaces_the_store_only_when_complete() {
        let mut store = Store::default();
        assert!(!store.apply(Event::Init));
        assert!(!store.apply(Event::InitApply(pod("a"))));
        assert!(!store.apply(Event::InitApply(pod("b"))));
        assert!(!store.synced());
        assert!(store.apply(Event::InitDone));
        assert_eq!(store.len(), 2);
        assert!(store.apply(Event::Delete(pod("a"))));
        assert!(!store.apply(Event::Delete(pod("a"))));
        // A re-list: b is gone meanwhile, c is new; until InitDone the old store stays.
        store.apply(Event::Init);
        store.apply(Event::InitApply(pod("c")));
        assert!(store.get("default", "b").is_some());
        store.apply(Event::InitDone);
        assert!(store.get("default", "b").is_none());
        assert!(store.get("default", "c").is_some());
        assert_eq!(store.len(), 1);
    }
}
