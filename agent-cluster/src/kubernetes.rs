//! `kubernetes_sd_configs` for the cluster agent: a running [`KubernetesDiscovery`] per SD
//! config of each job, and their current groups handed to the scrape manager
//! (`ScrapeManager::apply_with`), so `scrape` stays free of Kubernetes.
//!
//! The API server is the one given with `--kube-api-url`, else the pod's service account
//! (or a kubeconfig outside a cluster); an SD config's own `api_server` or
//! `kubeconfig_file` wins. Watchers keep running across reloads while a job's SD configs
//! are unchanged, so a reload does not re-list the cluster.

use std::collections::HashMap;
use std::sync::Arc;

use kube_discovery::sd::OWN_NAMESPACE_FILE;
use kube_discovery::{Client, KubernetesDiscovery, Plan};
use scrape::config::{KubernetesSdConfigYaml, PrometheusConfig, TargetGroup};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

/// Refuses, at load, what discovery would refuse at start (roles, selectors), so a broken
/// configuration is reported as one and the running one kept. The own namespace file is
/// read only when discovery starts.
pub(crate) fn validate(config: &PrometheusConfig) -> Result<(), String> {
    for job in &config.jobs {
        for (i, sd) in job.kubernetes_sd.iter().enumerate() {
            let mut checked = sd.clone();
            if let Some(namespaces) = &mut checked.namespaces {
                namespaces.own_namespace = false;
            }
            Plan::new(&checked, OWN_NAMESPACE_FILE)
                .map_err(|e| format!("job {:?}: kubernetes_sd_configs[{i}]: {e}", job.name))?;
            sd.auth()
                .map_err(|e| format!("job {:?}: kubernetes_sd_configs[{i}]: {}", job.name, e.0))?;
        }
    }
    Ok(())
}

/// One job's discoveries, with the SD configs they were started from.
struct JobDiscovery {
    configs: Vec<KubernetesSdConfigYaml>,
    running: Vec<(KubernetesDiscovery, JoinHandle<()>)>,
}

impl Drop for JobDiscovery {
    fn drop(&mut self) {
        for (_, forward) in &self.running {
            forward.abort();
        }
    }
}

/// Every job's Kubernetes discovery.
pub(crate) struct KubernetesSd {
    api_url: Option<String>,
    client: Option<Client>,
    jobs: HashMap<String, JobDiscovery>,
    changed: Arc<Notify>,
}

impl std::fmt::Debug for KubernetesSd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubernetesSd")
            .field("api_url", &self.api_url)
            .field("jobs", &self.jobs.len())
            .finish()
    }
}

impl KubernetesSd {
    pub(crate) fn new(api_url: Option<String>) -> Self {
        Self {
            api_url,
            client: None,
            jobs: HashMap::new(),
            changed: Arc::new(Notify::new()),
        }
    }

    /// Starts discovery for the jobs of `config` that have `kubernetes_sd_configs` (keeping
    /// those whose SD configs are unchanged) and stops it for the others.
    pub(crate) async fn sync(&mut self, config: &PrometheusConfig) {
        self.jobs.retain(|name, job| {
            config
                .jobs
                .iter()
                .any(|j| &j.name == name && j.kubernetes_sd == job.configs)
        });
        for job in &config.jobs {
            if job.kubernetes_sd.is_empty() || self.jobs.contains_key(&job.name) {
                continue;
            }
            let default = self.default_client().await;
            let mut running = Vec::new();
            for (i, sd) in job.kubernetes_sd.iter().enumerate() {
                let started = async {
                    let plan = Plan::new(sd, OWN_NAMESPACE_FILE)?;
                    let client =
                        kube_discovery::client_for(sd, default.as_ref().map_err(String::as_str))
                            .await?;
                    Ok::<_, kube_discovery::Error>(KubernetesDiscovery::start(client, plan))
                };
                match started.await {
                    Ok(discovery) => {
                        let mut groups = discovery.subscribe();
                        let changed = self.changed.clone();
                        let forward = tokio::spawn(async move {
                            while groups.changed().await.is_ok() {
                                changed.notify_one();
                            }
                        });
                        running.push((discovery, forward));
                    }
                    Err(error) => tracing::error!(
                        job = %job.name,
                        %error,
                        "kubernetes_sd_configs[{i}]: discovery cannot start; the job gets no targets from it"
                    ),
                }
            }
            self.jobs.insert(
                job.name.clone(),
                JobDiscovery {
                    configs: job.kubernetes_sd.clone(),
                    running,
                },
            );
        }
    }

    /// The agent's own client, made once (a failure is retried at the next sync).
    async fn default_client(&mut self) -> Result<Client, String> {
        if let Some(client) = &self.client {
            return Ok(client.clone());
        }
        match kube_discovery::client(self.api_url.as_deref()).await {
            Ok(client) => {
                self.client = Some(client.clone());
                Ok(client)
            }
            Err(error) => Err(error.to_string()),
        }
    }

    /// Each job's groups now.
    pub(crate) fn groups(&self) -> HashMap<String, Vec<TargetGroup>> {
        self.jobs
            .iter()
            .map(|(name, job)| {
                let groups = job
                    .running
                    .iter()
                    .flat_map(|(discovery, _)| discovery.groups())
                    .collect();
                (name.clone(), groups)
            })
            .collect()
    }

    /// Resolves when some discovery's groups changed since the last call.
    pub(crate) async fn changed(&self) {
        self.changed.notified().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unsupported_roles_and_bad_selectors_are_refused_at_load() {
        let config = |sd: &str| {
            PrometheusConfig::parse(&format!(
                "scrape_configs:\n  - job_name: k\n    kubernetes_sd_configs:\n      - {sd}\n"
            ))
            .expect("a valid Prometheus configuration")
        };
        assert!(validate(&config("{role: pod, namespaces: {own_namespace: true}}")).is_ok());
        let error = validate(&config("{role: ingress}")).expect_err("ingress is refused");
        assert!(
            error.contains("job \"k\"") && error.contains("not supported"),
            "{error}"
        );
        let error = validate(&config(
            "{role: service, selectors: [{role: pod, label: a=b}]}",
        ))
        .expect_err("a pod selector on the service role is refused");
        assert!(
            error.contains("service role supports only service"),
            "{error}"
        );
    }
}
