//! The node agent's view of the cluster: only the pods scheduled on its own node.
//!
//! A DaemonSet that watched every pod would make every node hold (and the API server send)
//! the whole cluster's pods; the field selector `spec.nodeName=<node>` makes the API server
//! send only this node's. The stream is kube's watcher (resumed after a closed watch,
//! re-listed after 410 Gone) turned into what a pod store needs:
//!
//! - [`PodEvent::Resync`] with every pod on the node, after the first list and after each
//!   re-list: the consumer replaces what it holds (pods deleted while the watch was down
//!   are simply absent);
//! - [`PodEvent::Applied`] for a pod added or changed, [`PodEvent::Deleted`] for one gone.
//!
//! Errors from the API server are logged and retried with backoff inside the stream; it
//! only ends when dropped.

use futures_util::{Stream, StreamExt};
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event, watcher};
use kube::{Api, Client};

/// One change to the pods of the node.
#[derive(Clone, Debug)]
pub enum PodEvent {
    /// Every pod on the node now; replaces what the consumer holds.
    Resync(Vec<Pod>),
    /// A pod was added or changed.
    Applied(Pod),
    /// A pod was deleted (its last state).
    Deleted(Pod),
}

/// The field selector for `node`'s pods.
pub fn node_field_selector(node: &str) -> String {
    format!("spec.nodeName={node}")
}

/// Watches the pods of `node` (all namespaces). Run it inside a tokio runtime.
pub fn watch_node_pods(client: Client, node: &str) -> impl Stream<Item = PodEvent> + Send {
    let api: Api<Pod> = Api::all(client);
    let config = watcher::Config::default().fields(&node_field_selector(node));
    let node = node.to_owned();
    let events = watcher(api, config).default_backoff().boxed();
    futures_util::stream::unfold(
        (events, None::<Vec<Pod>>, node),
        |(mut events, mut listing, node)| async move {
            loop {
                let event = match events.next().await? {
                    Ok(event) => event,
                    Err(error) => {
                        tracing::warn!(%node, %error, "watching the node's pods failed; retrying");
                        continue;
                    }
                };
                let out = match event {
                    Event::Init => {
                        listing = Some(Vec::new());
                        continue;
                    }
                    Event::InitApply(pod) => {
                        listing.get_or_insert_with(Vec::new).push(pod);
                        continue;
                    }
                    Event::InitDone => PodEvent::Resync(listing.take().unwrap_or_default()),
                    Event::Apply(pod) => PodEvent::Applied(pod),
                    Event::Delete(pod) => PodEvent::Deleted(pod),
                };
                return Some((out, (events, listing, node)));
            }
        },
    )
}
