//! The API server's watch of only this node's pods (`spec.nodeName` field selector) as a
//! third source of the pod store. In a cluster it is the source that needs nothing beyond
//! the service account (the kubelet's https port wants client certificates or a TLS setup
//! of its own), and it learns of a new pod as soon as it is scheduled.

use std::future::Future;

use futures_util::StreamExt;
use kube_discovery::PodEvent;

use super::kubelet::pod_info;
use super::{PodSource, PodStore};

/// Feeds `store` from the watch until `shutdown`; a client that cannot be built is logged
/// and the other sources carry on.
pub async fn run(
    store: PodStore,
    api_url: Option<String>,
    node: String,
    shutdown: impl Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    // A client that cannot be built (no service account yet, a bad kubeconfig) is tried
    // again with a doubling wait; the other pod sources carry on meanwhile.
    let mut wait = std::time::Duration::from_secs(1);
    let client = loop {
        match kube_discovery::client(api_url.as_deref()).await {
            Ok(client) => break client,
            Err(error) => {
                tracing::error!(%error, retry_in_seconds = wait.as_secs(), "cannot watch this node's pods: no Kubernetes API client");
                tokio::select! {
                    () = &mut shutdown => return,
                    () = tokio::time::sleep(wait) => {}
                }
                wait = (wait * 2).min(std::time::Duration::from_secs(60));
            }
        }
    };
    let events = kube_discovery::watch_node_pods(client, &node);
    tokio::pin!(events);
    loop {
        let event = tokio::select! {
            () = &mut shutdown => return,
            event = events.next() => event,
        };
        match event {
            Some(PodEvent::Resync(pods)) => {
                tracing::debug!(pods = pods.len(), "this node's pods listed");
                store.sync(
                    PodSource::ApiServer,
                    pods.iter().filter_map(pod_info).collect(),
                );
            }
            Some(PodEvent::Applied(pod)) => {
                if let Some(info) = pod_info(&pod) {
                    store.upsert(info, PodSource::ApiServer);
                }
            }
            Some(PodEvent::Deleted(pod)) => {
                if let Some(uid) = pod.metadata.uid.as_deref() {
                    store.remove(uid);
                }
            }
            None => {
                tracing::warn!(
                    "the watch of this node's pods ended; pods come from the other sources now"
                );
                return;
            }
        }
    }
}
