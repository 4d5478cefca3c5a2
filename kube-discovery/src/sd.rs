//! One `kubernetes_sd_configs` entry, running: kube watchers for the kinds its role needs
//! (pods; services; endpoints with their services and pods; nodes), and the target groups
//! they make, republished whenever what they watch changes.
//!
//! Like Prometheus's informers, the watchers list and then watch, resume a closed watch
//! from the last resourceVersion, and list again after 410 Gone (kube's watcher does
//! this); nothing is published until every watcher has listed once, so a start does not
//! flap targets. Namespaces (`namespaces.names`, `own_namespace`) and `selectors` are
//! sent to the API server as list/watch parameters, never filtered here.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::{Endpoints, Node, Pod, Service};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, watcher};
use kube::{Api, Client};
use scrape::config::{KubernetesSdConfigYaml, TargetGroup};
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;

use crate::Error;
use crate::store::Store;
use crate::targets::{self, EndpointsContext, Group};

/// Where a pod's service account namespace is mounted (`own_namespace`).
pub const OWN_NAMESPACE_FILE: &str = "/var/run/secrets/kubernetes.io/serviceaccount/namespace";

/// Changes arriving within this long are published together (a re-list applies many).
const COALESCE: Duration = Duration::from_millis(50);

/// The roles Meerkat discovers (`endpointslice` and `ingress` are refused by name).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Pod,
    Service,
    Endpoints,
    Node,
}

impl Role {
    pub fn parse(role: &str) -> Result<Self, Error> {
        match role {
            "pod" => Ok(Self::Pod),
            "service" => Ok(Self::Service),
            "endpoints" => Ok(Self::Endpoints),
            "node" => Ok(Self::Node),
            other => Err(Error::Unsupported(format!(
                "role {other:?} is not supported by Meerkat's agent yet (pod, service, endpoints and node are)"
            ))),
        }
    }

    /// The selector roles Prometheus allows for this role.
    fn selector_roles(self) -> &'static [&'static str] {
        match self {
            Self::Pod => &["pod"],
            Self::Service => &["service"],
            Self::Endpoints => &["pod", "service", "endpoints"],
            Self::Node => &["node"],
        }
    }
}

/// The watch parameters of one kind: label and field selectors.
#[derive(Clone, Debug, Default)]
struct Selector {
    label: Option<String>,
    field: Option<String>,
}

impl Selector {
    fn watcher_config(&self) -> watcher::Config {
        let mut config = watcher::Config::default();
        if let Some(label) = &self.label {
            config = config.labels(label);
        }
        if let Some(field) = &self.field {
            config = config.fields(field);
        }
        config
    }
}

/// What an SD config asks of the API server, validated.
#[derive(Clone, Debug)]
pub struct Plan {
    pub role: Role,
    /// `None`: every namespace.
    pub namespaces: Option<Vec<String>>,
    attach_node: bool,
    pod: Selector,
    service: Selector,
    endpoints: Selector,
    node: Selector,
}

impl Plan {
    /// Validates an SD config as Prometheus does (selector roles allowed for the role, at
    /// most one selector per role) and resolves its namespaces; `own_namespace` reads
    /// `own_namespace_file` (the service account's, [`OWN_NAMESPACE_FILE`], in a pod).
    pub fn new(config: &KubernetesSdConfigYaml, own_namespace_file: &str) -> Result<Self, Error> {
        let role = Role::parse(&config.role)?;
        let mut plan = Self {
            role,
            namespaces: None,
            attach_node: config.attach_metadata.as_ref().is_some_and(|a| a.node),
            pod: Selector::default(),
            service: Selector::default(),
            endpoints: Selector::default(),
            node: Selector::default(),
        };
        let mut seen = BTreeSet::new();
        for selector in &config.selectors {
            if !role.selector_roles().contains(&selector.role.as_str()) {
                return Err(Error::Config(format!(
                    "{} role supports only {} selectors, not {:?}",
                    config.role,
                    role.selector_roles().join(", "),
                    selector.role
                )));
            }
            if !seen.insert(selector.role.clone()) {
                return Err(Error::Config(format!(
                    "duplicated selector role: {}",
                    selector.role
                )));
            }
            let target = match selector.role.as_str() {
                "pod" => &mut plan.pod,
                "service" => &mut plan.service,
                "endpoints" => &mut plan.endpoints,
                _ => &mut plan.node,
            };
            target.label = selector.label.clone().filter(|s| !s.is_empty());
            target.field = selector.field.clone().filter(|s| !s.is_empty());
        }
        if role != Role::Node
            && let Some(namespaces) = &config.namespaces
        {
            let mut names: Vec<String> = namespaces.names.clone();
            if namespaces.own_namespace {
                let own = std::fs::read_to_string(own_namespace_file).map_err(|source| {
                    Error::OwnNamespace {
                        path: own_namespace_file.to_owned(),
                        source,
                    }
                })?;
                names.push(own.trim().to_owned());
            }
            names.sort();
            names.dedup();
            if !names.is_empty() {
                plan.namespaces = Some(names);
            }
        }
        Ok(plan)
    }
}

/// The stores of every watcher of one SD config (one per kind and namespace).
#[derive(Debug, Default)]
struct Watched {
    pods: Vec<Store<Pod>>,
    services: Vec<Store<Service>>,
    endpoints: Vec<Store<Endpoints>>,
    nodes: Vec<Store<Node>>,
}

impl Watched {
    fn synced(&self) -> bool {
        self.pods.iter().all(Store::synced)
            && self.services.iter().all(Store::synced)
            && self.endpoints.iter().all(Store::synced)
            && self.nodes.iter().all(Store::synced)
    }

    fn node(&self, name: &str) -> Option<&Node> {
        self.nodes.iter().find_map(|s| s.get("", name))
    }

    fn groups(&self, plan: &Plan) -> Vec<Group> {
        let node_of = |pod: &Pod| {
            pod.spec
                .as_ref()
                .and_then(|s| s.node_name.as_deref())
                .and_then(|name| self.node(name))
        };
        match plan.role {
            Role::Pod => self
                .pods
                .iter()
                .flat_map(Store::values)
                .map(|pod| targets::pod_group(pod, node_of(pod)))
                .collect(),
            Role::Service => self
                .services
                .iter()
                .flat_map(Store::values)
                .map(targets::service_group)
                .collect(),
            Role::Node => self
                .nodes
                .iter()
                .flat_map(Store::values)
                .filter_map(targets::node_group)
                .collect(),
            Role::Endpoints => self
                .endpoints
                .iter()
                .flat_map(Store::values)
                .map(|endpoints| targets::endpoints_group(endpoints, self))
                .collect(),
        }
    }
}

impl EndpointsContext for Watched {
    fn service(&self, namespace: &str, name: &str) -> Option<&Service> {
        self.services.iter().find_map(|s| s.get(namespace, name))
    }

    fn pod(&self, namespace: &str, name: &str) -> Option<&Pod> {
        self.pods.iter().find_map(|s| s.get(namespace, name))
    }

    fn node(&self, name: &str) -> Option<&Node> {
        Watched::node(self, name)
    }
}

fn lock(watched: &Mutex<Watched>) -> MutexGuard<'_, Watched> {
    watched.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A running SD config; its watchers stop when it is dropped.
#[derive(Debug)]
pub struct KubernetesDiscovery {
    groups: watch::Receiver<Vec<TargetGroup>>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for KubernetesDiscovery {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Which store of [`Watched`] a watcher fills.
type Slot<K> = fn(&mut Watched) -> &mut Vec<Store<K>>;

impl KubernetesDiscovery {
    /// Starts the watchers of `plan` on `client` (inside a tokio runtime).
    pub fn start(client: Client, plan: Plan) -> Self {
        let watched = Arc::new(Mutex::new(Watched::default()));
        let changed = Arc::new(Notify::new());
        let mut tasks = Vec::new();
        let namespaces: Vec<Option<String>> = match &plan.namespaces {
            None => vec![None],
            Some(names) => names.iter().cloned().map(Some).collect(),
        };
        let mut spawn_kind = |kind: Kind, selector: &Selector| {
            for namespace in &namespaces {
                let namespace = if kind == Kind::Nodes {
                    None
                } else {
                    namespace.as_deref()
                };
                let task = match kind {
                    Kind::Pods => spawn_watch::<Pod>(
                        api(&client, namespace),
                        selector,
                        &watched,
                        |w| &mut w.pods,
                        &changed,
                    ),
                    Kind::Services => spawn_watch::<Service>(
                        api(&client, namespace),
                        selector,
                        &watched,
                        |w| &mut w.services,
                        &changed,
                    ),
                    Kind::Endpoints => spawn_watch::<Endpoints>(
                        api(&client, namespace),
                        selector,
                        &watched,
                        |w| &mut w.endpoints,
                        &changed,
                    ),
                    Kind::Nodes => spawn_watch::<Node>(
                        Api::all(client.clone()),
                        selector,
                        &watched,
                        |w| &mut w.nodes,
                        &changed,
                    ),
                };
                tasks.push(task);
                if kind == Kind::Nodes {
                    break;
                }
            }
        };
        match plan.role {
            Role::Pod => spawn_kind(Kind::Pods, &plan.pod),
            Role::Service => spawn_kind(Kind::Services, &plan.service),
            Role::Node => spawn_kind(Kind::Nodes, &plan.node),
            Role::Endpoints => {
                spawn_kind(Kind::Endpoints, &plan.endpoints);
                spawn_kind(Kind::Services, &plan.service);
                spawn_kind(Kind::Pods, &plan.pod);
            }
        }
        if plan.attach_node && matches!(plan.role, Role::Pod | Role::Endpoints) {
            spawn_kind(Kind::Nodes, &Selector::default());
        }
        let (sender, groups) = watch::channel(Vec::new());
        tasks.push(tokio::spawn(publish(plan, watched, changed, sender)));
        Self { groups, tasks }
    }

    /// The target groups now (empty until every watcher has listed once).
    pub fn groups(&self) -> Vec<TargetGroup> {
        self.groups.borrow().clone()
    }

    /// A receiver that sees every new set of groups.
    pub fn subscribe(&self) -> watch::Receiver<Vec<TargetGroup>> {
        self.groups.clone()
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Pods,
    Services,
    Endpoints,
    Nodes,
}

fn api<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
    K::DynamicType: Default,
{
    match namespace {
        Some(namespace) => Api::namespaced(client.clone(), namespace),
        None => Api::all(client.clone()),
    }
}

fn spawn_watch<K>(
    api: Api<K>,
    selector: &Selector,
    watched: &Arc<Mutex<Watched>>,
    slot: Slot<K>,
    changed: &Arc<Notify>,
) -> JoinHandle<()>
where
    K: kube::Resource + kube::ResourceExt + Clone + std::fmt::Debug + Send + Sync + 'static,
    K: serde::de::DeserializeOwned,
    K::DynamicType: Default,
{
    let index = {
        let mut watched = lock(watched);
        let stores = slot(&mut watched);
        stores.push(Store::default());
        stores.len() - 1
    };
    let config = selector.watcher_config();
    let watched = watched.clone();
    let changed = changed.clone();
    tokio::spawn(async move {
        let kind = K::kind(&K::DynamicType::default()).into_owned();
        let mut events = watcher(api, config).default_backoff().boxed();
        while let Some(event) = events.next().await {
            match event {
                Ok(event) => {
                    let updated = slot(&mut lock(&watched))[index].apply(event);
                    if updated {
                        changed.notify_one();
                    }
                }
                // kube re-watches or re-lists by itself, after a backoff.
                Err(error) => tracing::warn!(%kind, %error, "Kubernetes watch failed; retrying"),
            }
        }
    })
}

/// Rebuilds and publishes the groups after each change (once every watcher has listed).
async fn publish(
    plan: Plan,
    watched: Arc<Mutex<Watched>>,
    changed: Arc<Notify>,
    sender: watch::Sender<Vec<TargetGroup>>,
) {
    loop {
        changed.notified().await;
        tokio::time::sleep(COALESCE).await;
        let groups: Vec<TargetGroup> = {
            let watched = lock(&watched);
            if !watched.synced() {
                continue;
            }
            watched
                .groups(&plan)
                .iter()
                .flat_map(Group::target_groups)
                .collect()
        };
        sender.send_if_modified(|current| {
            if *current == groups {
                false
            } else {
                *current = groups;
                true
            }
        });
    }
}
