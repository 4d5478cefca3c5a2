//! Scraping the Prometheus exporters of this node's pods, found the usual way: the
//! `prometheus.io/scrape: "true"` annotation (or pod label), with `prometheus.io/port`,
//! `prometheus.io/path` (default `/metrics`) and `prometheus.io/scheme` (default `http`).
//!
//! The pods come from the node's own pod store (no API-server watch of the cluster), and
//! the scraping is the shared scrape engine's, so a pod's series get exactly what the
//! cluster agent would give them, plus the pod's attributes (namespace, pod, workload,
//! Erda classification) as labels.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use delivery::Delivery;
use scrape::LabelSet;
use scrape::config::{PrometheusConfig, TargetGroup};
use scrape::remote_write::RemoteWriteSink;
use scrape::scraper::{ScrapeManager, http_client};

use crate::pods::{PodEntry, PodStore};

/// The job name pod targets are scraped under (the `job` label).
pub const JOB: &str = "kubernetes-pods";

fn setting<'a>(pod: &'a PodEntry, key: &str) -> Option<&'a str> {
    pod.info
        .annotations
        .get(key)
        .or_else(|| pod.info.labels.get(key))
        .map(String::as_str)
}

/// One target group per annotated pod with an IP and a port.
pub fn pod_targets(store: &PodStore) -> Vec<TargetGroup> {
    let mut groups = Vec::new();
    for pod in store.pods() {
        if setting(&pod, "prometheus.io/scrape") != Some("true") {
            continue;
        }
        let (Some(ip), Some(port)) = (
            pod.info.ips.first(),
            setting(&pod, "prometheus.io/port").and_then(|p| p.parse::<u16>().ok()),
        ) else {
            tracing::debug!(pod = %pod.info.name, "annotated for scraping but without an IP or a prometheus.io/port");
            continue;
        };
        let host = if ip.contains(':') {
            format!("[{ip}]:{port}")
        } else {
            format!("{ip}:{port}")
        };
        let mut labels: BTreeMap<String, String> = pod.attributes.labels.iter().cloned().collect();
        labels.insert(
            "__metrics_path__".to_owned(),
            setting(&pod, "prometheus.io/path")
                .unwrap_or("/metrics")
                .to_owned(),
        );
        labels.insert(
            "__scheme__".to_owned(),
            setting(&pod, "prometheus.io/scheme")
                .unwrap_or("http")
                .to_owned(),
        );
        groups.push(TargetGroup {
            targets: vec![host],
            labels,
            source: format!("pod {}/{}", pod.info.namespace, pod.info.name),
        });
    }
    groups.sort_by(|a, b| a.source.cmp(&b.source));
    groups
}

/// Scrapes annotated pods every `interval` until `shutdown`, re-reading the store every
/// few seconds; stopped targets (and, at the end, all) get staleness markers.
pub async fn run(
    store: PodStore,
    delivery: Delivery,
    node_name: String,
    interval: Duration,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let seconds = interval.as_secs().max(1);
    let config = PrometheusConfig::parse(&format!(
        "global:\n  scrape_interval: {seconds}s\n  scrape_timeout: {seconds}s\nscrape_configs:\n  - job_name: {JOB}\n    static_configs: []\n"
    ));
    let config = match config {
        Ok(config) => config,
        Err(error) => {
            tracing::error!(%error, "pod scraping cannot start");
            return;
        }
    };
    let external = LabelSet::from_pairs([("node".to_owned(), node_name)]);
    let sink = Arc::new(RemoteWriteSink::new(delivery, true, external));
    let mut manager = ScrapeManager::new(http_client(), sink);
    let mut applied: Option<Vec<TargetGroup>> = None;
    let mut check = tokio::time::interval(Duration::from_secs(2));
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            _ = check.tick() => {}
        }
        let groups = pod_targets(&store);
        if applied.as_ref() == Some(&groups) {
            continue;
        }
        tracing::info!(targets = groups.len(), "pod scrape targets changed");
        let external: HashMap<String, Vec<TargetGroup>> =
            HashMap::from([(JOB.to_owned(), groups.clone())]);
        for error in manager.apply_with(&config, &external) {
            tracing::warn!(%error, "pod scrape targets");
        }
        applied = Some(groups);
    }
    manager.stop().await;
}
