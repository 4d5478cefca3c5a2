//! What kind of pod this is and which attributes everything it emits carries.
//!
//! The defaults follow the Erda platform's conventions, so pods Erda deploys are told apart
//! and named as Erda names them: a `dice/job` label makes a job, `dice/component` a platform
//! component, a namespace matching `addon` an addon (middleware Erda runs for a project),
//! and everything else a service named by `msp.erda.cloud/service_name` or its workload.
//!
//! Each pod gets one attribute list, in two spellings:
//!
//! | Prometheus label | OTLP resource attribute | from |
//! |---|---|---|
//! | `namespace` | `k8s.namespace.name` | metadata.namespace |
//! | `pod` | `k8s.pod.name` | metadata.name |
//! | `pod_uid` | `k8s.pod.uid` | metadata.uid |
//! | `node` | `k8s.node.name` | spec.nodeName |
//! | `workload_kind`, `workload_name` | `k8s.deployment.name`, `k8s.replicaset.name`, `k8s.statefulset.name`, `k8s.daemonset.name`, `k8s.job.name`, … | the owner reference (a ReplicaSet with a `pod-template-hash` label stands for its Deployment) |
//! | `pod_class` | `erda.pod_class` | the rules: `service`, `job`, `addon`, `component` |
//! | `service_name` | `service.name` | `msp.erda.cloud/service_name` (annotation, then label), else the workload's name, else the pod's |
//! | `org_name`, `project_name`, `application_name`, `workspace_name`, `runtime_name` | `erda.org_name`, … | the `msp.erda.cloud/<same>` annotations (then labels) |
//!
//! The Prometheus names are the cAdvisor ones where cAdvisor has them (`namespace`, `pod`)
//! and otherwise snake case, so they are valid label names as they are. Missing values are
//! left out rather than sent empty.

use regex::Regex;
use serde::Deserialize;

use super::Error;
use super::store::PodInfo;

/// The classification rules, as written in the agent's configuration.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ClassifyConfig {
    /// Pod labels whose presence (any value) makes the pod a `job`.
    pub job_labels: Vec<String>,
    /// Pod labels whose presence makes the pod a `component`.
    pub component_labels: Vec<String>,
    /// A regular expression searched anywhere in the namespace (not anchored: `addon`
    /// matches `addon-mysql` and `project-1-addon`) that makes the pod an `addon`; empty
    /// turns the rule off.
    pub addon_namespace_regex: String,
    /// Annotations, then labels, tried in order for the service name.
    pub service_name_keys: Vec<String>,
    /// Annotations (then labels of the same key) copied into the attributes.
    pub attributes: Vec<AttributeRule>,
}

/// One annotation carried as an attribute.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AttributeRule {
    /// The annotation (or label) key on the pod.
    pub key: String,
    /// The Prometheus label name.
    pub label: String,
    /// The OTLP resource attribute name.
    pub otlp: String,
}

const ERDA_PREFIX: &str = "msp.erda.cloud/";

impl Default for ClassifyConfig {
    fn default() -> Self {
        let attributes = [
            "org_name",
            "project_name",
            "application_name",
            "workspace_name",
            "runtime_name",
        ]
        .into_iter()
        .map(|name| AttributeRule {
            key: format!("{ERDA_PREFIX}{name}"),
            label: name.to_owned(),
            otlp: format!("erda.{name}"),
        })
        .collect();
        Self {
            job_labels: vec!["dice/job".to_owned()],
            component_labels: vec!["dice/component".to_owned()],
            addon_namespace_regex: "addon".to_owned(),
            service_name_keys: vec![format!("{ERDA_PREFIX}service_name")],
            attributes,
        }
    }
}

impl ClassifyConfig {
    /// Reads rules from YAML; keys left out keep their defaults and unknown keys are refused
    /// (a misspelt rule would otherwise silently classify every pod as a service).
    pub fn from_yaml(text: &str) -> Result<Self, Error> {
        serde_saphyr::from_str(text).map_err(|e| Error::Config(e.to_string()))
    }
}

/// What a pod is, by the rules.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PodClass {
    Service,
    Job,
    Addon,
    Component,
}

impl PodClass {
    pub fn as_str(self) -> &'static str {
        match self {
            PodClass::Service => "service",
            PodClass::Job => "job",
            PodClass::Addon => "addon",
            PodClass::Component => "component",
        }
    }
}

/// The workload a pod belongs to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Workload {
    /// `Deployment`, `ReplicaSet`, `StatefulSet`, `DaemonSet`, `Job`, `CronJob` or
    /// `ReplicationController`.
    pub kind: String,
    pub name: String,
}

/// The attributes of one pod, computed once when the pod is stored.
#[derive(Clone, Debug, PartialEq)]
pub struct PodAttributes {
    pub class: PodClass,
    pub service_name: String,
    pub workload: Option<Workload>,
    /// Prometheus label pairs for container metrics and scraped series.
    pub labels: Vec<(String, String)>,
    /// OTLP resource attribute pairs for logs, spans and OTLP metrics.
    pub otlp: Vec<(String, String)>,
}

/// The rules, compiled.
#[derive(Debug)]
pub struct Classifier {
    config: ClassifyConfig,
    addon_namespace: Option<Regex>,
}

impl Classifier {
    pub fn new(config: &ClassifyConfig) -> Result<Self, Error> {
        let addon_namespace = if config.addon_namespace_regex.is_empty() {
            None
        } else {
            Some(
                Regex::new(&config.addon_namespace_regex).map_err(|e| Error::Regex {
                    regex: config.addon_namespace_regex.clone(),
                    message: e.to_string(),
                })?,
            )
        };
        Ok(Self {
            config: config.clone(),
            addon_namespace,
        })
    }

    pub fn classify(&self, pod: &PodInfo) -> PodClass {
        let has_label = |keys: &[String]| keys.iter().any(|k| pod.labels.contains_key(k));
        if has_label(&self.config.job_labels) {
            PodClass::Job
        } else if has_label(&self.config.component_labels) {
            PodClass::Component
        } else if self
            .addon_namespace
            .as_ref()
            .is_some_and(|re| re.is_match(&pod.namespace))
        {
            PodClass::Addon
        } else {
            PodClass::Service
        }
    }

    pub fn attributes(&self, pod: &PodInfo) -> PodAttributes {
        let class = self.classify(pod);
        let workload = workload(pod);
        let service_name = self
            .config
            .service_name_keys
            .iter()
            .find_map(|key| annotation_or_label(pod, key))
            .map(str::to_owned)
            .or_else(|| workload.as_ref().map(|w| w.name.clone()))
            .unwrap_or_else(|| pod.name.clone());

        let mut labels = Vec::new();
        let mut otlp = Vec::new();
        let mut both = |label: &str, attribute: &str, value: &str| {
            if !value.is_empty() {
                labels.push((label.to_owned(), value.to_owned()));
                otlp.push((attribute.to_owned(), value.to_owned()));
            }
        };
        both("namespace", "k8s.namespace.name", &pod.namespace);
        both("pod", "k8s.pod.name", &pod.name);
        both("pod_uid", "k8s.pod.uid", &pod.uid);
        both("node", "k8s.node.name", &pod.node);
        both("pod_class", "erda.pod_class", class.as_str());
        both("service_name", "service.name", &service_name);
        for rule in &self.config.attributes {
            if let Some(value) = annotation_or_label(pod, &rule.key) {
                both(&rule.label, &rule.otlp, value);
            }
        }
        if let Some(workload) = &workload {
            labels.push(("workload_kind".to_owned(), workload.kind.clone()));
            labels.push(("workload_name".to_owned(), workload.name.clone()));
            if let Some(key) = otlp_workload_key(&workload.kind) {
                otlp.push((key.to_owned(), workload.name.clone()));
            }
            // A Deployment's pods also name the ReplicaSet in between, as the OpenTelemetry
            // collector's k8sattributes processor does.
            if workload.kind == "Deployment"
                && let Some(owner) = &pod.owner
            {
                otlp.push(("k8s.replicaset.name".to_owned(), owner.name.clone()));
            }
        }
        PodAttributes {
            class,
            service_name,
            workload,
            labels,
            otlp,
        }
    }
}

fn annotation_or_label<'a>(pod: &'a PodInfo, key: &str) -> Option<&'a str> {
    pod.annotations
        .get(key)
        .or_else(|| pod.labels.get(key))
        .map(String::as_str)
        .filter(|v| !v.is_empty())
}

fn otlp_workload_key(kind: &str) -> Option<&'static str> {
    Some(match kind {
        "Deployment" => "k8s.deployment.name",
        "ReplicaSet" => "k8s.replicaset.name",
        "StatefulSet" => "k8s.statefulset.name",
        "DaemonSet" => "k8s.daemonset.name",
        "Job" => "k8s.job.name",
        "CronJob" => "k8s.cronjob.name",
        _ => return None,
    })
}

/// The pod's workload from its owner. A ReplicaSet whose name ends in the pod's
/// `pod-template-hash` was made by a Deployment named by the rest; owners that are not
/// workloads (a static pod's Node) give none.
fn workload(pod: &PodInfo) -> Option<Workload> {
    let owner = pod.owner.as_ref()?;
    let kind = match owner.kind.as_str() {
        "ReplicaSet" => {
            if let Some(hash) = pod.labels.get("pod-template-hash")
                && let Some(deployment) = owner
                    .name
                    .strip_suffix(hash.as_str())
                    .and_then(|rest| rest.strip_suffix('-'))
                && !deployment.is_empty()
            {
                return Some(Workload {
                    kind: "Deployment".to_owned(),
                    name: deployment.to_owned(),
                });
            }
            "ReplicaSet"
        }
        kind @ ("StatefulSet" | "DaemonSet" | "Job" | "CronJob" | "ReplicationController") => kind,
        _ => return None,
    };
    Some(Workload {
        kind: kind.to_owned(),
        name: owner.name.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pods::store::Owner;

    fn pod(namespace: &str, labels: &[(&str, &str)], owner: Option<(&str, &str)>) -> PodInfo {
        PodInfo {
            uid: "uid-1".to_owned(),
            namespace: namespace.to_owned(),
            name: "web-7d4b9c8f6-x2x9k".to_owned(),
            node: "node-a".to_owned(),
            labels: labels
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            owner: owner.map(|(kind, name)| Owner {
                kind: kind.to_owned(),
                name: name.to_owned(),
            }),
            ..PodInfo::default()
        }
    }

    fn classifier() -> Classifier {
        Classifier::new(&ClassifyConfig::default()).expect("default rules compile")
    }

    #[test]
    fn erda_defaults_classify_in_order() {
        let c = classifier();
        assert_eq!(
            c.classify(&pod("addon-mysql", &[("dice/job", "x")], None)),
            PodClass::Job
        );
        assert_eq!(
            c.classify(&pod("addon-mysql", &[("dice/component", "x")], None)),
            PodClass::Component
        );
        assert_eq!(
            c.classify(&pod("project-3-addon", &[], None)),
            PodClass::Addon
        );
        assert_eq!(c.classify(&pod("default", &[], None)), PodClass::Service);
    }

    #[test]
    fn service_name_from_annotation_else_workload_else_pod() {
        let c = classifier();
        let mut p = pod(
            "default",
            &[("pod-template-hash", "7d4b9c8f6")],
            Some(("ReplicaSet", "web-7d4b9c8f6")),
        );
        let a = c.attributes(&p);
        assert_eq!(
            a.workload,
            Some(Workload {
                kind: "Deployment".to_owned(),
                name: "web".to_owned()
            })
        );
        assert_eq!(a.service_name, "web");
        assert!(
            a.otlp
                .contains(&("k8s.deployment.name".to_owned(), "web".to_owned()))
        );
        assert!(
            a.otlp
                .contains(&("k8s.replicaset.name".to_owned(), "web-7d4b9c8f6".to_owned()))
        );

        p.labels.insert(
            "msp.erda.cloud/service_name".to_owned(),
            "from-label".to_owned(),
        );
        assert_eq!(c.attributes(&p).service_name, "from-label");
        p.annotations.insert(
            "msp.erda.cloud/service_name".to_owned(),
            "from-annotation".to_owned(),
        );
        assert_eq!(c.attributes(&p).service_name, "from-annotation");

        let bare = pod("default", &[], Some(("Node", "node-a")));
        let a = c.attributes(&bare);
        assert_eq!(a.workload, None);
        assert_eq!(a.service_name, "web-7d4b9c8f6-x2x9k");
    }

    #[test]
    fn replicaset_without_template_hash_stays_a_replicaset() {
        let a = classifier().attributes(&pod("default", &[], Some(("ReplicaSet", "web-abc"))));
        assert_eq!(
            a.workload.map(|w| (w.kind, w.name)),
            Some(("ReplicaSet".into(), "web-abc".into()))
        );
    }

    #[test]
    fn erda_annotations_become_attributes_in_both_spellings() {
        let mut p = pod("default", &[], Some(("StatefulSet", "db")));
        p.annotations
            .insert("msp.erda.cloud/org_name".to_owned(), "erda".to_owned());
        p.annotations.insert(
            "msp.erda.cloud/workspace_name".to_owned(),
            "PROD".to_owned(),
        );
        let a = classifier().attributes(&p);
        let label = |name: &str| {
            a.labels
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(label("org_name"), Some("erda"));
        assert_eq!(label("workspace_name"), Some("PROD"));
        assert_eq!(label("project_name"), None);
        assert_eq!(label("pod_class"), Some("service"));
        assert_eq!(label("workload_kind"), Some("StatefulSet"));
        assert_eq!(label("namespace"), Some("default"));
        assert!(
            a.otlp
                .contains(&("erda.org_name".to_owned(), "erda".to_owned()))
        );
        assert!(
            a.otlp
                .contains(&("k8s.statefulset.name".to_owned(), "db".to_owned()))
        );
        assert!(
            a.otlp
                .contains(&("k8s.pod.uid".to_owned(), "uid-1".to_owned()))
        );
        assert!(
            a.otlp
                .contains(&("service.name".to_owned(), "db".to_owned()))
        );
    }

    #[test]
    fn rules_load_from_yaml_and_refuse_unknown_keys() {
        let config = ClassifyConfig::from_yaml(
            "job_labels: [batch/job]\naddon_namespace_regex: '^middleware-'\n",
        )
        .expect("valid rules");
        assert_eq!(config.job_labels, ["batch/job"]);
        assert_eq!(config.component_labels, ["dice/component"], "defaults kept");
        let c = Classifier::new(&config).expect("compiles");
        assert_eq!(
            c.classify(&pod("middleware-redis", &[], None)),
            PodClass::Addon
        );
        assert_eq!(c.classify(&pod("addon-x", &[], None)), PodClass::Service);
        assert_eq!(
            c.classify(&pod("x", &[("batch/job", "1")], None)),
            PodClass::Job
        );

        let err = ClassifyConfig::from_yaml("job_label: [x]\n").expect_err("misspelt key");
        assert!(err.to_string().contains("job_label"), "{err}");
        let err = Classifier::new(&ClassifyConfig {
            addon_namespace_regex: "(".to_owned(),
            ..ClassifyConfig::default()
        })
        .expect_err("bad regex");
        assert!(err.to_string().contains('('), "{err}");
    }
}
