//! A stand-in for the Kubernetes API server: the API cannot run on these machines, so kube
//! clients are tested against this local HTTP server, which answers list and watch
//! requests from objects the test puts in, as the API server answers them.
//!
//! - **list** (`GET /api/v1/pods`, `/api/v1/namespaces/<ns>/pods`, the same for `services`,
//!   `endpoints`, `nodes`, `events`, `/apis/discovery.k8s.io/v1/endpointslices` and
//!   `/apis/apps/v1/{deployments,statefulsets,daemonsets}`): the current
//!   objects in a `<Kind>List` with `metadata.resourceVersion`;
//! - **watch** (`?watch=1|true&resourceVersion=N`): newline-delimited watch events, first
//!   the recorded changes after `N` (so a client that re-watches from its last
//!   resourceVersion misses nothing), then each change as the test makes it;
//! - [`KubeApiServer::close_watches`] ends every open watch (a "watch restart": the client
//!   must watch again from its last resourceVersion);
//! - [`KubeApiServer::expire`] forgets the history: open watches get an `ERROR` event with a
//!   `Status` of code 410 (reason `Expired`), as the API server sends when a resourceVersion
//!   is too old, and so does any later watch from before that point, so the client must
//!   list again;
//! - every request's path and query is recorded ([`KubeApiServer::requests`]).
//!
//! `labelSelector` and `fieldSelector` are applied when they are plain `key=value` /
//! `key!=value` terms (field paths like `spec.nodeName` or `metadata.namespace`), so a
//! client that sends them gets what the API server would send.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use axum::body::{Body, Bytes};
use axum::http::{StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tokio::sync::mpsc;

/// A kind of object the server knows: where it lives and how it is named in lists.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Resource {
    Pods,
    Services,
    Endpoints,
    Nodes,
    EndpointSlices,
    Deployments,
    StatefulSets,
    DaemonSets,
    Events,
}

impl Resource {
    const ALL: [Resource; 9] = [
        Resource::Pods,
        Resource::Services,
        Resource::Endpoints,
        Resource::Nodes,
        Resource::EndpointSlices,
        Resource::Deployments,
        Resource::StatefulSets,
        Resource::DaemonSets,
        Resource::Events,
    ];

    /// The plural in URLs.
    pub fn plural(self) -> &'static str {
        match self {
            Resource::Pods => "pods",
            Resource::Services => "services",
            Resource::Endpoints => "endpoints",
            Resource::Nodes => "nodes",
            Resource::EndpointSlices => "endpointslices",
            Resource::Deployments => "deployments",
            Resource::StatefulSets => "statefulsets",
            Resource::DaemonSets => "daemonsets",
            Resource::Events => "events",
        }
    }

    fn group_prefix(self) -> &'static str {
        match self {
            Resource::EndpointSlices => "/apis/discovery.k8s.io/v1",
            Resource::Deployments | Resource::StatefulSets | Resource::DaemonSets => {
                "/apis/apps/v1"
            }
            _ => "/api/v1",
        }
    }

    fn api_version(self) -> &'static str {
        match self {
            Resource::EndpointSlices => "discovery.k8s.io/v1",
            Resource::Deployments | Resource::StatefulSets | Resource::DaemonSets => "apps/v1",
            _ => "v1",
        }
    }

    fn kind(self) -> &'static str {
        match self {
            Resource::Pods => "Pod",
            Resource::Services => "Service",
            Resource::Endpoints => "Endpoints",
            Resource::Nodes => "Node",
            Resource::EndpointSlices => "EndpointSlice",
            Resource::Deployments => "Deployment",
            Resource::StatefulSets => "StatefulSet",
            Resource::DaemonSets => "DaemonSet",
            Resource::Events => "Event",
        }
    }

    fn namespaced(self) -> bool {
        self != Resource::Nodes
    }
}

/// One recorded change.
#[derive(Clone, Debug)]
struct Change {
    resource_version: u64,
    resource: Resource,
    kind: &'static str,
    object: Value,
}

/// An open watch stream.
struct Watch {
    resource: Resource,
    namespace: Option<String>,
    selectors: Selectors,
    sender: mpsc::UnboundedSender<Bytes>,
}

#[derive(Default)]
struct State {
    resource_version: u64,
    /// Changes before this resourceVersion are forgotten: watches from before get 410.
    oldest: u64,
    objects: BTreeMap<(Resource, String, String), Value>,
    history: Vec<Change>,
    watches: Vec<Watch>,
    requests: Vec<String>,
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A running replay server on 127.0.0.1 (its own thread and runtime, so sync and async
/// tests can both use it); stopped when dropped.
#[derive(Debug)]
pub struct KubeApiServer {
    address: SocketAddr,
    state: Arc<Mutex<State>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("State")
            .field("resource_version", &self.resource_version)
            .field("objects", &self.objects.len())
            .field("watches", &self.watches.len())
            .finish()
    }
}

impl KubeApiServer {
    /// Starts the server on a free port of 127.0.0.1 with no objects.
    pub fn start() -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap_or_else(|e| panic!("cannot bind 127.0.0.1:0: {e}"));
        let address = listener
            .local_addr()
            .unwrap_or_else(|e| panic!("no local address: {e}"));
        listener
            .set_nonblocking(true)
            .unwrap_or_else(|e| panic!("cannot make the listener non-blocking: {e}"));
        let state = Arc::new(Mutex::new(State {
            resource_version: 1000,
            ..State::default()
        }));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let shared = state.clone();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap_or_else(|e| panic!("no runtime for the Kubernetes API stand-in: {e}"));
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener)
                    .unwrap_or_else(|e| panic!("cannot adopt the listener: {e}"));
                let app = axum::Router::new().fallback(move |uri: Uri| {
                    let state = shared.clone();
                    async move { answer(&state, &uri) }
                });
                // Not a graceful shutdown: a client still re-watching would keep a stream
                // open forever. Dropping the runtime ends every connection.
                tokio::select! {
                    _ = axum::serve(listener, app) => {}
                    _ = stopped => {}
                }
            });
        });
        Self {
            address,
            state,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// `http://127.0.0.1:<port>`: the API server URL to give the client.
    pub fn url(&self) -> String {
        format!("http://{}", self.address)
    }

    /// The resourceVersion of the last change.
    pub fn resource_version(&self) -> u64 {
        lock(&self.state).resource_version
    }

    /// Creates or replaces an object (namespace and name from its `metadata`); open watches
    /// get `ADDED` or `MODIFIED`. Returns the object's new resourceVersion.
    pub fn apply(&self, resource: Resource, object: Value) -> u64 {
        let mut state = lock(&self.state);
        let (namespace, name) = identity(resource, &object);
        let key = (resource, namespace, name);
        let kind = if state.objects.contains_key(&key) {
            "MODIFIED"
        } else {
            "ADDED"
        };
        let object = state.record(resource, kind, object);
        state.objects.insert(key, object);
        state.resource_version
    }

    /// Deletes an object; open watches get `DELETED` with its last state. `false` if there
    /// was no such object.
    pub fn delete(&self, resource: Resource, namespace: &str, name: &str) -> bool {
        let mut state = lock(&self.state);
        let namespace = if resource.namespaced() { namespace } else { "" };
        let Some(object) = state
            .objects
            .remove(&(resource, namespace.to_owned(), name.to_owned()))
        else {
            return false;
        };
        state.record(resource, "DELETED", object);
        true
    }

    /// Sends a `BOOKMARK` with the current resourceVersion to every open watch of
    /// `resource`.
    pub fn bookmark(&self, resource: Resource) {
        let mut state = lock(&self.state);
        let resource_version = state.resource_version.to_string();
        let event = event_line(
            "BOOKMARK",
            &json!({
                "apiVersion": resource.api_version(),
                "kind": resource.kind(),
                "metadata": {"resourceVersion": resource_version},
            }),
        );
        state
            .watches
            .retain(|watch| watch.resource != resource || watch.sender.send(event.clone()).is_ok());
    }

    /// Ends every open watch stream, as the API server does at its watch timeout or when it
    /// restarts: clients watch again from their last resourceVersion.
    pub fn close_watches(&self) {
        lock(&self.state).watches.clear();
    }

    /// Forgets every change so far: open watches get `ERROR` with a 410 `Status` and end,
    /// and a watch from an older resourceVersion is answered the same, so clients list
    /// again.
    pub fn expire(&self) {
        let mut state = lock(&self.state);
        state.oldest = state.resource_version + 1;
        state.history.clear();
        let event = gone_event(state.oldest);
        for watch in state.watches.drain(..) {
            let _ = watch.sender.send(event.clone());
        }
    }

    /// How many watch streams are open now.
    pub fn open_watches(&self) -> usize {
        let mut state = lock(&self.state);
        state.watches.retain(|watch| !watch.sender.is_closed());
        state.watches.len()
    }

    /// Every request so far, as `path?query`.
    pub fn requests(&self) -> Vec<String> {
        lock(&self.state).requests.clone()
    }

    /// The recorded requests for `resource`'s collection that were lists (not watches).
    pub fn lists(&self, resource: Resource) -> Vec<String> {
        self.requests_for(resource)
            .into_iter()
            .filter(|r| !is_watch(&query_pairs(r)))
            .collect()
    }

    /// The recorded watch requests for `resource`'s collection.
    pub fn watches(&self, resource: Resource) -> Vec<String> {
        self.requests_for(resource)
            .into_iter()
            .filter(|r| is_watch(&query_pairs(r)))
            .collect()
    }

    fn requests_for(&self, resource: Resource) -> Vec<String> {
        self.requests()
            .into_iter()
            .filter(|r| {
                let path = r.split('?').next().unwrap_or_default();
                parse_path(path).is_some_and(|(found, _)| found == resource)
            })
            .collect()
    }
}

impl Drop for KubeApiServer {
    fn drop(&mut self) {
        self.close_watches();
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl State {
    /// Stamps `object` with the next resourceVersion, records the change and sends it to
    /// the open watches it matches.
    fn record(&mut self, resource: Resource, kind: &'static str, mut object: Value) -> Value {
        self.resource_version += 1;
        if let Some(map) = object.as_object_mut() {
            map.insert("apiVersion".to_owned(), json!(resource.api_version()));
            map.insert("kind".to_owned(), json!(resource.kind()));
            let metadata = map.entry("metadata").or_insert_with(|| json!({}));
            if let Some(metadata) = metadata.as_object_mut() {
                metadata.insert(
                    "resourceVersion".to_owned(),
                    json!(self.resource_version.to_string()),
                );
            }
        }
        let change = Change {
            resource_version: self.resource_version,
            resource,
            kind,
            object: object.clone(),
        };
        let line = event_line(kind, &object);
        self.watches.retain(|watch| {
            if watch.matches(&change) {
                watch.sender.send(line.clone()).is_ok()
            } else {
                !watch.sender.is_closed()
            }
        });
        self.history.push(change);
        object
    }
}

impl Watch {
    fn matches(&self, change: &Change) -> bool {
        change.resource == self.resource
            && self
                .namespace
                .as_ref()
                .is_none_or(|ns| object_namespace(&change.object) == *ns)
            && self.selectors.matches(&change.object)
    }
}

fn identity(resource: Resource, object: &Value) -> (String, String) {
    let namespace = if resource.namespaced() {
        object_namespace(object)
    } else {
        String::new()
    };
    let name = object["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    (namespace, name)
}

fn object_namespace(object: &Value) -> String {
    object["metadata"]["namespace"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

fn event_line(kind: &str, object: &Value) -> Bytes {
    let mut line = json!({"type": kind, "object": object}).to_string();
    line.push('\n');
    Bytes::from(line)
}

fn gone_event(oldest: u64) -> Bytes {
    event_line(
        "ERROR",
        &json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": format!("too old resource version: requested is older than {oldest}"),
            "reason": "Expired",
            "code": 410,
        }),
    )
}

/// `/api/v1/pods`, `/api/v1/namespaces/ns/pods`, `/apis/discovery.k8s.io/v1/...`: the
/// resource and the namespace, if any.
fn parse_path(path: &str) -> Option<(Resource, Option<String>)> {
    for resource in Resource::ALL {
        let Some(rest) = path.strip_prefix(resource.group_prefix()) else {
            continue;
        };
        if rest == format!("/{}", resource.plural()) {
            return Some((resource, None));
        }
        if let Some(namespaced) = rest.strip_prefix("/namespaces/")
            && let Some((namespace, plural)) = namespaced.split_once('/')
            && plural == resource.plural()
            && resource.namespaced()
        {
            return Some((resource, Some(namespace.to_owned())));
        }
    }
    None
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
                match hex.and_then(|hex| u8::from_str_radix(hex, 16).ok()) {
                    Some(byte) => {
                        out.push(byte);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            other => out.push(other),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The decoded query parameters of a recorded request (`path?query`).
pub fn query_pairs(request: &str) -> BTreeMap<String, String> {
    request
        .split_once('?')
        .map(|(_, query)| query)
        .unwrap_or_default()
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(key), percent_decode(value))
        })
        .collect()
}

fn is_watch(query: &BTreeMap<String, String>) -> bool {
    query.get("watch").is_some_and(|w| w == "1" || w == "true")
}

/// Equality-based selectors: `a=b`, `a==b`, `a!=b`, comma-separated.
#[derive(Clone, Debug, Default)]
struct Selectors {
    labels: Vec<(String, String, bool)>,
    fields: Vec<(String, String, bool)>,
}

fn parse_terms(text: Option<&String>) -> Vec<(String, String, bool)> {
    text.map(|text| {
        text.split(',')
            .filter(|term| !term.trim().is_empty())
            .map(|term| {
                if let Some((key, value)) = term.split_once("!=") {
                    (key.trim().to_owned(), value.trim().to_owned(), false)
                } else {
                    let (key, value) = term
                        .split_once("==")
                        .or_else(|| term.split_once('='))
                        .unwrap_or((term, ""));
                    (key.trim().to_owned(), value.trim().to_owned(), true)
                }
            })
            .collect()
    })
    .unwrap_or_default()
}

impl Selectors {
    fn from_query(query: &BTreeMap<String, String>) -> Self {
        Self {
            labels: parse_terms(query.get("labelSelector")),
            fields: parse_terms(query.get("fieldSelector")),
        }
    }

    fn matches(&self, object: &Value) -> bool {
        let labels = &object["metadata"]["labels"];
        self.labels.iter().all(|(key, value, equal)| {
            (labels[key.as_str()].as_str() == Some(value.as_str())) == *equal
        }) && self.fields.iter().all(|(path, value, equal)| {
            let found = path
                .split('.')
                .fold(object, |at, part| &at[part])
                .as_str()
                .unwrap_or_default();
            (found == value) == *equal
        })
    }
}

fn answer(state: &Mutex<State>, uri: &Uri) -> Response {
    let recorded = uri
        .path_and_query()
        .map_or_else(|| uri.path().to_owned(), |pq| pq.as_str().to_owned());
    let query = query_pairs(&recorded);
    lock(state).requests.push(recorded);
    if uri.path() == "/version" {
        return axum::Json(json!({
            "major": "1", "minor": "33", "gitVersion": "v1.33.0",
            "gitCommit": "", "gitTreeState": "clean", "buildDate": "2025-04-23T00:00:00Z",
            "goVersion": "go1.24.2", "compiler": "gc", "platform": "linux/amd64",
        }))
        .into_response();
    }
    let Some((resource, namespace)) = parse_path(uri.path()) else {
        return (
            StatusCode::NOT_FOUND,
            axum::Json(json!({
                "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": format!("the server could not find the requested resource ({})", uri.path()),
                "reason": "NotFound", "code": 404,
            })),
        )
            .into_response();
    };
    let selectors = Selectors::from_query(&query);
    let mut state = lock(state);
    if !is_watch(&query) {
        let items: Vec<Value> = state
            .objects
            .iter()
            .filter(|((r, ns, _), object)| {
                *r == resource
                    && namespace.as_ref().is_none_or(|want| want == ns)
                    && selectors.matches(object)
            })
            .map(|(_, object)| {
                // List items carry no kind or apiVersion, as the API server sends them.
                let mut item = object.clone();
                if let Some(map) = item.as_object_mut() {
                    map.remove("kind");
                    map.remove("apiVersion");
                }
                item
            })
            .collect();
        return axum::Json(json!({
            "kind": format!("{}List", resource.kind()),
            "apiVersion": resource.api_version(),
            "metadata": {"resourceVersion": state.resource_version.to_string()},
            "items": items,
        }))
        .into_response();
    }
    let from: u64 = query
        .get("resourceVersion")
        .and_then(|rv| rv.parse().ok())
        .unwrap_or(0);
    let (sender, receiver) = mpsc::unbounded_channel::<Bytes>();
    if from != 0 && from + 1 < state.oldest {
        let _ = sender.send(gone_event(state.oldest));
        drop(sender);
    } else {
        let watch = Watch {
            resource,
            namespace,
            selectors,
            sender,
        };
        let missed: Vec<Bytes> = state
            .history
            .iter()
            .filter(|change| change.resource_version > from && watch.matches(change))
            .map(|change| event_line(change.kind, &change.object))
            .collect();
        for line in missed {
            let _ = watch.sender.send(line);
        }
        state.watches.push(watch);
    }
    let stream = futures_util::stream::unfold(receiver, |mut receiver| async move {
        receiver
            .recv()
            .await
            .map(|line| (Ok::<_, std::convert::Infallible>(line), receiver))
    });
    Response::builder()
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from_stream(stream))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_and_queries() {
        assert_eq!(parse_path("/api/v1/pods"), Some((Resource::Pods, None)));
        assert_eq!(
            parse_path("/api/v1/namespaces/kube-system/endpoints"),
            Some((Resource::Endpoints, Some("kube-system".to_owned())))
        );
        assert_eq!(parse_path("/api/v1/namespaces/x/nodes"), None);
        assert_eq!(
            parse_path("/apis/discovery.k8s.io/v1/endpointslices"),
            Some((Resource::EndpointSlices, None))
        );
        let query = query_pairs("/api/v1/pods?fieldSelector=spec.nodeName%3Dn1&watch=true");
        assert_eq!(query["fieldSelector"], "spec.nodeName=n1");
        assert!(is_watch(&query));
        let selectors = Selectors::from_query(&query);
        assert!(selectors.matches(&json!({"spec": {"nodeName": "n1"}})));
        assert!(!selectors.matches(&json!({"spec": {"nodeName": "n2"}})));
    }

    /// What the wire carries: a list with its resourceVersion and no kinds on items; a
    /// watch from that version streaming the later change, then ERROR 410 on expiry.
    #[test]
    fn lists_and_watches_on_the_wire() {
        let server = KubeApiServer::start();
        let port = server.address.port();
        server.apply(
            Resource::Pods,
            json!({"metadata": {"name": "a", "namespace": "ns"}}),
        );
        let listed = super::super::http_get(port, "/api/v1/namespaces/ns/pods").expect("a list");
        let body: Value =
            serde_json::from_str(listed.split("\r\n\r\n").nth(1).expect("a body")).expect("JSON");
        assert_eq!(body["kind"], "PodList");
        assert_eq!(body["metadata"]["resourceVersion"], "1001");
        assert_eq!(body["items"][0]["metadata"]["resourceVersion"], "1001");
        assert!(body["items"][0].get("kind").is_none());
        let watch = std::thread::spawn(move || {
            super::super::http_get(port, "/api/v1/pods?watch=1&resourceVersion=1001")
        });
        while server.open_watches() == 0 {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        server.apply(
            Resource::Pods,
            json!({"metadata": {"name": "b", "namespace": "other"}}),
        );
        server.expire();
        let streamed = watch.join().expect("the watch thread").expect("a watch");
        let events: Vec<Value> = streamed
            .split("\r\n\r\n")
            .nth(1)
            .expect("a body")
            .lines()
            .filter_map(|line| serde_json::from_str(line).ok())
            .collect();
        assert_eq!(events.len(), 2, "{streamed}");
        assert_eq!(events[0]["type"], "ADDED");
        assert_eq!(events[0]["object"]["kind"], "Pod");
        assert_eq!(events[0]["object"]["metadata"]["resourceVersion"], "1002");
        assert_eq!(events[1]["type"], "ERROR");
        assert_eq!(events[1]["object"]["code"], 410);
        assert_eq!(events[1]["object"]["reason"], "Expired");
        // A watch from before the expiry is answered 410 at once.
        let late = super::super::http_get(port, "/api/v1/pods?watch=1&resourceVersion=1001")
            .expect("a watch");
        assert!(late.contains("\"code\":410"), "{late}");
        assert_eq!(server.watches(Resource::Pods).len(), 2);
        assert_eq!(server.lists(Resource::Pods).len(), 1);
    }
}
