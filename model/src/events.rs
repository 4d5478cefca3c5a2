//! Platform events: what the platform itself did (deploys, pipeline runs, alert state
//! changes, Kubernetes events). They ride the same bus as telemetry so that "what changed?"
//! can be asked beside "what broke?".

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{KeyValue, Labels};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PlatformEvent {
    pub timestamp_ms: i64,
    /// Who emitted it, e.g. `alerting`, `pipeline-core`, `agent-cluster/prod-eu`.
    pub source: String,
    /// Anything the kind does not model (free-form, OTLP-typed).
    pub attributes: Vec<KeyValue>,
    pub kind: EventKind,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum EventKind {
    Deploy(DeployEvent),
    Pipeline(PipelineEvent),
    Alert(AlertEvent),
    Kubernetes(KubernetesEvent),
}

impl EventKind {
    /// A short stable name, used as a column value and in metrics labels.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Deploy(_) => "deploy",
            Self::Pipeline(_) => "pipeline",
            Self::Alert(_) => "alert",
            Self::Kubernetes(_) => "kubernetes",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum DeployPhase {
    Started,
    Succeeded,
    Failed,
    RolledBack,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DeployEvent {
    pub service: String,
    pub version: String,
    pub environment: String,
    pub cluster: String,
    pub namespace: String,
    pub phase: DeployPhase,
    /// The user or automation that triggered it.
    pub actor: String,
    pub message: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PipelinePhase {
    Queued,
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PipelineEvent {
    pub pipeline: String,
    pub run_id: String,
    /// `None` for an event about the whole run.
    pub stage: Option<String>,
    pub phase: PipelinePhase,
    pub duration_ms: Option<u64>,
    pub message: String,
}

/// Alert states as Prometheus names them (plus `Resolved`, the transition out of firing).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AlertState {
    Pending,
    Firing,
    Resolved,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AlertEvent {
    pub alert_name: String,
    pub state: AlertState,
    pub labels: Labels,
    pub annotations: BTreeMap<String, String>,
    pub value: f64,
    pub starts_at_ms: i64,
    pub ends_at_ms: Option<i64>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum KubernetesEventType {
    Normal,
    Warning,
}

/// A Kubernetes `Event` object (core/v1 or events.k8s.io/v1), flattened.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct KubernetesEvent {
    pub cluster: String,
    pub namespace: String,
    pub involved_kind: String,
    pub involved_name: String,
    pub involved_uid: String,
    pub reason: String,
    pub message: String,
    pub event_type: KubernetesEventType,
    pub count: u32,
    pub first_timestamp_ms: i64,
    pub last_timestamp_ms: i64,
    pub reporting_component: String,
    pub reporting_host: String,
}
