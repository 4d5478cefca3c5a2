//! Which pods run on this node, what they are, and the attributes their telemetry carries.
//!
//! [`PodDiscovery`] owns a [`PodStore`] and keeps it current from two sources: the
//! filesystem ([`fs`]: log directories and kubepods cgroups, always available on a node)
//! and the kubelet's pod list ([`kubelet`], for labels, owners, containers and IPs). A
//! third source, the API server's watch of this node's pods, is built elsewhere and feeds
//! the same store through [`PodStore::upsert`] / [`PodStore::sync`] with
//! [`PodSource::ApiServer`]. Every stored pod is classified once ([`classify`]) and carries
//! its attribute list in Prometheus and OTLP spellings.

pub mod api_watch;
pub mod classify;
pub mod fs;
pub mod kubelet;
pub mod store;

use std::collections::HashSet;
use std::future::Future;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde::Deserialize;

pub use classify::{Classifier, ClassifyConfig, PodAttributes, PodClass, Workload};
pub use kubelet::KubeletClient;
pub use store::{ContainerInfo, Owner, PodEntry, PodInfo, PodSource, PodStore};

/// What went wrong in pod discovery; each says which file, URL or rule.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("pod classification rules: {0}")]
    Config(String),
    #[error("pod classification rules: addon_namespace_regex {regex:?}: {message}")]
    Regex { regex: String, message: String },
    #[error("kubelet URL {url:?}: {message}")]
    KubeletUrl { url: String, message: String },
    #[error("reading the kubelet bearer token file {}: {source}", path.display())]
    TokenFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("kubelet pod list {url}: {message}")]
    KubeletHttp { url: String, message: String },
    #[error("kubelet pod list {url} answered HTTP {status}: {body}")]
    KubeletStatus {
        url: String,
        status: u16,
        body: String,
    },
    #[error("kubelet pod list {url}: {message}")]
    KubeletBody { url: String, message: String },
}

/// Pod discovery settings.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DiscoveryConfig {
    /// The host's root as the agent sees it (`/`, or where a DaemonSet mounts it, such as
    /// `/host`); `var/log/pods`, `sys/fs/cgroup`, `proc` and `sys/dev/block` are read
    /// below it.
    pub root: PathBuf,
    /// This node's name, for pods known only from the filesystem.
    pub node_name: String,
    /// The kubelet's pod list, e.g. `http://127.0.0.1:10255/pods`; none turns it off.
    pub kubelet_url: Option<String>,
    /// A bearer token for the kubelet (the service-account token in a cluster).
    pub kubelet_token_file: Option<PathBuf>,
    pub kubelet_refresh_seconds: f64,
    pub kubelet_timeout_seconds: f64,
    /// How often the filesystem is scanned; a pod directory not seen before also asks the
    /// kubelet at once, so a new pod gets its metadata without waiting for the refresh.
    pub scan_interval_seconds: f64,
    pub classify: ClassifyConfig,
}

impl Default for DiscoveryConfig {
    fn default() -> Self {
        Self {
            root: PathBuf::from("/"),
            node_name: String::new(),
            kubelet_url: None,
            kubelet_token_file: None,
            kubelet_refresh_seconds: 10.0,
            kubelet_timeout_seconds: 5.0,
            scan_interval_seconds: 2.0,
            classify: ClassifyConfig::default(),
        }
    }
}

fn seconds(value: f64, default: f64) -> Duration {
    Duration::try_from_secs_f64(value)
        .ok()
        .filter(|d| !d.is_zero())
        .unwrap_or_else(|| Duration::from_secs_f64(default))
}

/// The discovery loop and the store it keeps current.
#[derive(Debug)]
pub struct PodDiscovery {
    config: DiscoveryConfig,
    store: PodStore,
    kubelet: Option<KubeletClient>,
    /// Uids seen by the last filesystem scan, to notice new pod directories.
    seen: HashSet<String>,
}

impl PodDiscovery {
    pub fn new(config: DiscoveryConfig) -> Result<Self, Error> {
        let store = PodStore::new(Classifier::new(&config.classify)?);
        let kubelet = match &config.kubelet_url {
            Some(url) => Some(KubeletClient::new(
                url,
                config.kubelet_token_file.clone(),
                seconds(config.kubelet_timeout_seconds, 5.0),
            )?),
            None => None,
        };
        Ok(Self {
            config,
            store,
            kubelet,
            seen: HashSet::new(),
        })
    }

    /// The store, to share with collectors, the log tailer and the OTLP proxy.
    pub fn store(&self) -> &PodStore {
        &self.store
    }

    pub fn config(&self) -> &DiscoveryConfig {
        &self.config
    }

    /// Scans the filesystem once and records its pods; returns the uids not seen by the
    /// previous scan.
    pub fn scan_filesystem(&mut self) -> Vec<String> {
        let pods = fs::scan(&self.config.root);
        let mut new = Vec::new();
        let mut seen = HashSet::with_capacity(pods.len());
        let mut infos = Vec::new();
        for pod in pods {
            if !self.seen.contains(&pod.uid) {
                new.push(pod.uid.clone());
            }
            seen.insert(pod.uid.clone());
            if let (Some(namespace), Some(name)) = (pod.namespace, pod.name) {
                infos.push(PodInfo {
                    uid: pod.uid,
                    namespace,
                    name,
                    node: self.config.node_name.clone(),
                    ..PodInfo::default()
                });
            }
        }
        self.store.sync(PodSource::Filesystem, infos);
        self.seen = seen;
        new
    }

    /// Asks the kubelet once and makes the store's kubelet pods what it listed. Without a
    /// kubelet configured this does nothing; on an error the pods it listed before stay.
    pub async fn refresh_kubelet(&self) -> Result<usize, Error> {
        let Some(kubelet) = &self.kubelet else {
            return Ok(0);
        };
        let pods = kubelet.pods().await?;
        let count = pods.len();
        self.store.sync(PodSource::Kubelet, pods);
        Ok(count)
    }

    /// Runs until `shutdown` completes: scans the filesystem every scan interval and asks
    /// the kubelet every refresh interval and whenever a new pod directory appears.
    pub async fn run(mut self, shutdown: impl Future<Output = ()>) {
        let scan_every = seconds(self.config.scan_interval_seconds, 2.0);
        let refresh_every = seconds(self.config.kubelet_refresh_seconds, 10.0);
        tokio::pin!(shutdown);
        let mut scan = tokio::time::interval(scan_every);
        scan.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_refresh: Option<Instant> = None;
        loop {
            tokio::select! {
                () = &mut shutdown => return,
                _ = scan.tick() => {}
            }
            let new = self.scan_filesystem();
            let due = last_refresh.is_none_or(|at| at.elapsed() >= refresh_every);
            // A new directory asks at once, but at most once a second: a burst of pod
            // starts should not become a burst of kubelet requests.
            let new_pod = !new.is_empty()
                && last_refresh.is_none_or(|at| at.elapsed() >= Duration::from_secs(1));
            if self.kubelet.is_some() && (due || new_pod) {
                last_refresh = Some(Instant::now());
                match self.refresh_kubelet().await {
                    Ok(count) => tracing::debug!(pods = count, "kubelet pod list refreshed"),
                    Err(error) => {
                        tracing::warn!(%error, "kubelet pod list not refreshed; keeping the last one")
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn discovery_settings_load_from_yaml_with_nested_rules() {
        let config: DiscoveryConfig = serde_saphyr::from_str(
            "root: /host\nkubelet_url: http://127.0.0.1:10255/pods\n\
             classify:\n  component_labels: [platform/component]\n",
        )
        .expect("valid settings");
        assert_eq!(config.root, PathBuf::from("/host"));
        assert_eq!(config.kubelet_refresh_seconds, 10.0, "default kept");
        assert_eq!(config.classify.component_labels, ["platform/component"]);
        assert_eq!(config.classify.job_labels, ["dice/job"]);
        let error = serde_saphyr::from_str::<DiscoveryConfig>("classify:\n  jobs: [x]\n")
            .expect_err("unknown nested key");
        assert!(error.to_string().contains("jobs"), "{error}");
        // Nonsense intervals fall back to the defaults instead of spinning or panicking.
        assert_eq!(seconds(-1.0, 2.0), Duration::from_secs(2));
        assert_eq!(seconds(f64::NAN, 2.0), Duration::from_secs(2));
        assert_eq!(seconds(0.0, 2.0), Duration::from_secs(2));
        assert_eq!(seconds(0.5, 2.0), Duration::from_millis(500));
    }
}
