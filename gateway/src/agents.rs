//! The live list of agents: each agent announces itself with a heartbeat
//! (`POST /api/v1/agents/heartbeat`) and `GET /api/v1/agents` lists the caller's tenant's
//! agents with how recently they were heard from. The cluster manager builds on this list.
//!
//! An agent is `up` while its last heartbeat is within [`STALE_AFTER_INTERVALS`] of its
//! own interval (a missed beat or two is network noise, not an outage), `stale` after that,
//! and forgotten after [`REMOVE_AFTER_INTERVALS`], so agents of deleted clusters do not
//! linger. Intervals are bounded by [`MAX_INTERVAL_SECONDS`], which also bounds how long a
//! silent agent is remembered; agents per tenant by [`MAX_AGENTS_PER_TENANT`], so a
//! misbehaving sender cannot grow the gateway's memory.
//!
//! The list is in memory, per gateway process: in distributed mode each gateway replica
//! knows the agents whose heartbeats it received (a load balancer spreading heartbeats
//! across replicas makes each replica see each agent only some of the time). The bus would
//! make a shared list possible; until the cluster manager needs one, ask one replica, or
//! route `/api/v1/agents/*` to one.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use model::TenantId;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use serde::{Deserialize, Serialize};

use crate::{Gateway, GatewayError, TENANT_HEADER, http};

/// An agent is `stale` once this many of its intervals pass without a heartbeat.
pub const STALE_AFTER_INTERVALS: f64 = 3.0;
/// And forgotten once this many pass.
pub const REMOVE_AFTER_INTERVALS: f64 = 10.0;
/// The longest heartbeat interval accepted: a silent agent is remembered at most ten times
/// this (100 minutes).
pub const MAX_INTERVAL_SECONDS: f64 = 600.0;
/// Agents remembered per tenant; a heartbeat of a new agent beyond this is refused.
pub const MAX_AGENTS_PER_TENANT: usize = 10_000;
/// A heartbeat is a few hundred bytes; anything much larger is not one.
const MAX_BODY_BYTES: u64 = 64 * 1024;
const MAX_TEXT_CHARS: usize = 253;
const MAX_LABELS: usize = 64;
const MAX_LABEL_CHARS: usize = 1024;

/// What kind of agent sent a heartbeat.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AgentKind {
    Cluster,
    Node,
}

impl AgentKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Cluster => "cluster",
            Self::Node => "node",
        }
    }
}

/// Whether an agent is being heard from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AgentStatus {
    Up,
    Stale,
}

impl AgentStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Up => "up",
            Self::Stale => "stale",
        }
    }
}

/// A heartbeat as agents send it (JSON). `started_at` is RFC 3339 text or Unix milliseconds.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct HeartbeatBody {
    agent_id: String,
    kind: AgentKind,
    cluster: String,
    #[serde(default)]
    node: Option<String>,
    version: String,
    started_at: serde_json::Value,
    interval_seconds: f64,
    #[serde(default)]
    labels: BTreeMap<String, String>,
}

/// A validated heartbeat.
#[derive(Clone, Debug, PartialEq)]
pub struct Heartbeat {
    pub agent_id: String,
    pub kind: AgentKind,
    pub cluster: String,
    pub node: Option<String>,
    pub version: String,
    /// Unix milliseconds.
    pub started_at_ms: i64,
    pub interval: Duration,
    pub labels: BTreeMap<String, String>,
}

fn bad(field: &str, message: impl std::fmt::Display) -> GatewayError {
    GatewayError::BadRequest(format!("heartbeat field {field}: {message}"))
}

/// Names must be printable and short: they end up in UIs, logs and metric labels.
fn check_text(field: &str, value: &str, max_chars: usize) -> Result<(), GatewayError> {
    if value.trim().is_empty() {
        return Err(bad(field, "must not be empty"));
    }
    if value.chars().count() > max_chars {
        return Err(bad(field, format!("longer than {max_chars} characters")));
    }
    if value.chars().any(char::is_control) {
        return Err(bad(field, "contains control characters"));
    }
    Ok(())
}

fn started_at_ms(value: &serde_json::Value) -> Result<i64, GatewayError> {
    let ms = match value {
        serde_json::Value::String(text) => chrono::DateTime::parse_from_rfc3339(text)
            .map_err(|e| {
                bad(
                    "started_at",
                    format!("{text:?} is not an RFC 3339 time ({e})"),
                )
            })?
            .timestamp_millis(),
        serde_json::Value::Number(number) => number.as_i64().ok_or_else(|| {
            bad(
                "started_at",
                format!("{number} is not a whole number of Unix milliseconds"),
            )
        })?,
        other => {
            return Err(bad(
                "started_at",
                format!("expected RFC 3339 text or Unix milliseconds, got {other}"),
            ));
        }
    };
    if ms <= 0 {
        return Err(bad("started_at", format!("{ms} is not after 1970")));
    }
    Ok(ms)
}

impl Heartbeat {
    /// Parses and validates a heartbeat; the error names the offending field.
    pub fn parse(body: &[u8]) -> Result<Self, GatewayError> {
        let mut deserializer = serde_json::Deserializer::from_slice(body);
        let raw: HeartbeatBody =
            serde_path_to_error::deserialize(&mut deserializer).map_err(|error| {
                let path = error.path().to_string();
                let inner = error.into_inner();
                if path == "." {
                    GatewayError::BadRequest(format!("heartbeat: {inner}"))
                } else {
                    bad(&path, inner)
                }
            })?;
        check_text("agent_id", &raw.agent_id, MAX_TEXT_CHARS)?;
        check_text("cluster", &raw.cluster, MAX_TEXT_CHARS)?;
        check_text("version", &raw.version, MAX_TEXT_CHARS)?;
        match (&raw.node, raw.kind) {
            (Some(node), _) => check_text("node", node, MAX_TEXT_CHARS)?,
            (None, AgentKind::Node) => {
                return Err(bad("node", "a node agent must name its node"));
            }
            (None, AgentKind::Cluster) => {}
        }
        let interval = raw.interval_seconds;
        if !(interval.is_finite() && interval > 0.0 && interval <= MAX_INTERVAL_SECONDS) {
            return Err(bad(
                "interval_seconds",
                format!("{interval} is not within (0, {MAX_INTERVAL_SECONDS}]"),
            ));
        }
        if raw.labels.len() > MAX_LABELS {
            return Err(bad("labels", format!("more than {MAX_LABELS} labels")));
        }
        for (name, value) in &raw.labels {
            check_text(&format!("labels.{name}"), name, MAX_LABEL_CHARS)?;
            if value.chars().count() > MAX_LABEL_CHARS {
                return Err(bad(
                    &format!("labels.{name}"),
                    format!("value longer than {MAX_LABEL_CHARS} characters"),
                ));
            }
        }
        Ok(Self {
            started_at_ms: started_at_ms(&raw.started_at)?,
            agent_id: raw.agent_id,
            kind: raw.kind,
            cluster: raw.cluster,
            node: raw.node,
            version: raw.version,
            interval: Duration::from_secs_f64(interval),
            labels: raw.labels,
        })
    }
}

#[derive(Debug)]
struct Entry {
    heartbeat: Heartbeat,
    first_seen: SystemTime,
    last_seen: SystemTime,
    /// Monotonic, so a clock step on the gateway does not make agents stale.
    last_seen_at: Instant,
}

impl Entry {
    fn status(&self, now: Instant) -> Option<AgentStatus> {
        let silent = now.saturating_duration_since(self.last_seen_at);
        let interval = self.heartbeat.interval;
        if silent <= interval.mul_f64(STALE_AFTER_INTERVALS) {
            Some(AgentStatus::Up)
        } else if silent <= interval.mul_f64(REMOVE_AFTER_INTERVALS) {
            Some(AgentStatus::Stale)
        } else {
            None
        }
    }
}

/// One agent as `GET /api/v1/agents` lists it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct AgentInfo {
    pub agent_id: String,
    pub kind: AgentKind,
    pub cluster: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    pub version: String,
    /// RFC 3339, UTC.
    pub started_at: String,
    pub interval_seconds: f64,
    pub labels: BTreeMap<String, String>,
    pub first_seen: String,
    pub last_seen: String,
    /// How long ago the last heartbeat arrived, by the gateway's monotonic clock.
    pub last_seen_seconds_ago: f64,
    pub status: AgentStatus,
}

/// What recording a heartbeat did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Recorded {
    /// The first heartbeat of this agent id (or the first since it was forgotten).
    Registered,
    /// An agent already known: a stale one is up again.
    Refreshed { was: AgentStatus },
}

/// The agents each tenant has, by agent id.
#[derive(Debug, Default)]
pub struct AgentRegistry {
    tenants: Mutex<HashMap<TenantId, HashMap<String, Entry>>>,
}

fn rfc3339_ms(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms).map_or_else(
        || ms.to_string(),
        |t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
    )
}

fn rfc3339(time: SystemTime) -> String {
    let ms = time
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
    rfc3339_ms(ms)
}

impl AgentRegistry {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<TenantId, HashMap<String, Entry>>> {
        self.tenants.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Forgets agents silent for longer than [`REMOVE_AFTER_INTERVALS`] (and tenants left
    /// with none); done on every use, so memory follows the live agents.
    fn sweep(tenants: &mut HashMap<TenantId, HashMap<String, Entry>>, now: Instant) {
        for agents in tenants.values_mut() {
            agents.retain(|_, entry| entry.status(now).is_some());
        }
        tenants.retain(|_, agents| !agents.is_empty());
    }

    /// Records `heartbeat` from `tenant`, received at `now` (`wall` on the wall clock).
    pub fn record(
        &self,
        tenant: &TenantId,
        heartbeat: Heartbeat,
        now: Instant,
        wall: SystemTime,
    ) -> Result<Recorded, GatewayError> {
        let mut tenants = self.lock();
        Self::sweep(&mut tenants, now);
        let agents = tenants.entry(tenant.clone()).or_default();
        if let Some(entry) = agents.get_mut(&heartbeat.agent_id) {
            let was = entry.status(now).unwrap_or(AgentStatus::Stale);
            entry.heartbeat = heartbeat;
            entry.last_seen = wall;
            entry.last_seen_at = now;
            return Ok(Recorded::Refreshed { was });
        }
        if agents.len() >= MAX_AGENTS_PER_TENANT {
            return Err(GatewayError::BadRequest(format!(
                "tenant {tenant} already has {MAX_AGENTS_PER_TENANT} live agents, the most the \
                 gateway tracks; reuse agent ids (they should be stable across restarts)"
            )));
        }
        agents.insert(
            heartbeat.agent_id.clone(),
            Entry {
                heartbeat,
                first_seen: wall,
                last_seen: wall,
                last_seen_at: now,
            },
        );
        Ok(Recorded::Registered)
    }

    /// `tenant`'s agents at `now`, by cluster, kind and id.
    pub fn list(&self, tenant: &TenantId, now: Instant) -> Vec<AgentInfo> {
        let mut tenants = self.lock();
        Self::sweep(&mut tenants, now);
        let Some(agents) = tenants.get(tenant) else {
            return Vec::new();
        };
        let mut out: Vec<AgentInfo> = agents
            .values()
            .filter_map(|entry| {
                let status = entry.status(now)?;
                let beat = &entry.heartbeat;
                Some(AgentInfo {
                    agent_id: beat.agent_id.clone(),
                    kind: beat.kind,
                    cluster: beat.cluster.clone(),
                    node: beat.node.clone(),
                    version: beat.version.clone(),
                    started_at: rfc3339_ms(beat.started_at_ms),
                    interval_seconds: beat.interval.as_secs_f64(),
                    labels: beat.labels.clone(),
                    first_seen: rfc3339(entry.first_seen),
                    last_seen: rfc3339(entry.last_seen),
                    last_seen_seconds_ago: now
                        .saturating_duration_since(entry.last_seen_at)
                        .as_secs_f64(),
                    status,
                })
            })
            .collect();
        out.sort_by(|a, b| {
            (&a.cluster, a.kind, &a.agent_id).cmp(&(&b.cluster, b.kind, &b.agent_id))
        });
        out
    }

    /// Agents of every tenant by kind and status at `now`; every combination is present
    /// (zero when none), so a dashboard's series do not come and go.
    pub fn counts(&self, now: Instant) -> BTreeMap<(AgentKind, &'static str), i64> {
        let mut counts = BTreeMap::new();
        for kind in [AgentKind::Cluster, AgentKind::Node] {
            for status in [AgentStatus::Up, AgentStatus::Stale] {
                counts.insert((kind, status.as_str()), 0);
            }
        }
        let mut tenants = self.lock();
        Self::sweep(&mut tenants, now);
        for entry in tenants.values().flat_map(HashMap::values) {
            if let Some(status) = entry.status(now) {
                *counts
                    .entry((entry.heartbeat.kind, status.as_str()))
                    .or_default() += 1;
            }
        }
        counts
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AgentLabels {
    kind: &'static str,
    status: &'static str,
}

/// `meerkat_gateway_agents{kind,status}`, computed when `/metrics` is read so that agents
/// turn stale on time even when no heartbeat arrives to update a gauge.
#[derive(Debug)]
pub(crate) struct AgentsCollector(pub(crate) std::sync::Arc<AgentRegistry>);

impl Collector for AgentsCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let family = Family::<AgentLabels, Gauge>::default();
        for ((kind, status), count) in self.0.counts(Instant::now()) {
            family
                .get_or_create(&AgentLabels {
                    kind: kind.as_str(),
                    status,
                })
                .set(count);
        }
        let metric = encoder.encode_descriptor(
            "agents",
            "Agents heard from by heartbeat (up) or silent for more than 3 intervals (stale)",
            None,
            family.metric_type(),
        )?;
        family.encode(metric)
    }
}

fn tenant_of(gateway: &Gateway, headers: &HeaderMap) -> Result<TenantId, GatewayError> {
    gateway.tenant(
        http::header_str(headers, "authorization"),
        http::header_str(headers, TENANT_HEADER),
    )
}

/// `POST /api/v1/agents/heartbeat`.
pub async fn heartbeat_handler(
    State(gateway): State<Gateway>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    match heartbeat(&gateway, &headers, body).await {
        Ok(answer) => Json(answer).into_response(),
        Err(error) => error.into_response(),
    }
}

#[derive(Debug, Serialize)]
struct HeartbeatAnswer {
    status: AgentStatus,
    registered: bool,
}

async fn heartbeat(
    gateway: &Gateway,
    headers: &HeaderMap,
    body: Body,
) -> Result<HeartbeatAnswer, GatewayError> {
    let tenant = tenant_of(gateway, headers)?;
    let body = http::read_body(headers, body, MAX_BODY_BYTES).await?;
    let heartbeat = Heartbeat::parse(&body)?;
    let (agent_id, kind, cluster) = (
        heartbeat.agent_id.clone(),
        heartbeat.kind,
        heartbeat.cluster.clone(),
    );
    let recorded =
        gateway
            .agents()
            .record(&tenant, heartbeat, Instant::now(), SystemTime::now())?;
    match recorded {
        Recorded::Registered => tracing::info!(
            %tenant, agent_id, kind = kind.as_str(), cluster, "agent registered"
        ),
        Recorded::Refreshed {
            was: AgentStatus::Stale,
        } => tracing::info!(%tenant, agent_id, cluster, "agent is back"),
        Recorded::Refreshed { .. } => {}
    }
    Ok(HeartbeatAnswer {
        status: AgentStatus::Up,
        registered: recorded == Recorded::Registered,
    })
}

#[derive(Debug, Serialize)]
struct ListAnswer {
    status: &'static str,
    data: Vec<AgentInfo>,
}

/// `GET /api/v1/agents`: the caller's tenant's agents, in the Prometheus API's envelope.
pub async fn list_handler(State(gateway): State<Gateway>, headers: HeaderMap) -> Response {
    match tenant_of(&gateway, &headers) {
        Ok(tenant) => Json(ListAnswer {
            status: "success",
            data: gateway.agents().list(&tenant, Instant::now()),
        })
        .into_response(),
        Err(error) => error.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn beat(id: &str, interval_seconds: f64) -> Heartbeat {
        Heartbeat::parse(
            serde_json::json!({
                "agent_id": id, "kind": "cluster", "cluster": "prod-eu", "version": "0.1.0",
                "started_at": "2025-01-02T03:04:05+01:00", "interval_seconds": interval_seconds,
                "labels": {"region": "eu"}
            })
            .to_string()
            .as_bytes(),
        )
        .expect("valid heartbeat")
    }

    fn tenant(name: &str) -> TenantId {
        TenantId::new(name).expect("valid tenant")
    }

    fn error_of(body: serde_json::Value) -> String {
        Heartbeat::parse(body.to_string().as_bytes())
            .expect_err("must be refused")
            .to_string()
    }

    #[test]
    fn valid_heartbeats_parse_with_either_time_form() {
        let parsed = beat("a", 30.0);
        assert_eq!(parsed.started_at_ms, 1_735_783_445_000);
        assert_eq!(parsed.interval, Duration::from_secs(30));
        assert_eq!(parsed.labels["region"], "eu");
        let node = Heartbeat::parse(
            br#"{"agent_id":"n","kind":"node","cluster":"c","node":"worker-1","version":"1",
                "started_at":1700000000123,"interval_seconds":0.5}"#,
        )
        .expect("valid");
        assert_eq!(node.started_at_ms, 1_700_000_000_123);
        assert_eq!(node.node.as_deref(), Some("worker-1"));
        assert!(node.labels.is_empty());
    }

    #[test]
    fn refusals_name_the_bad_field() {
        let good = serde_json::json!({
            "agent_id": "a", "kind": "cluster", "cluster": "c", "version": "1",
            "started_at": 1_700_000_000_000_i64, "interval_seconds": 30
        });
        let with = |key: &str, value: serde_json::Value| {
            let mut body = good.clone();
            body[key] = value;
            error_of(body)
        };
        let message = with("kind", "pod".into());
        assert!(
            message.contains("kind") && message.contains("pod"),
            "{message}"
        );
        let message = with("started_at", "yesterday".into());
        assert!(message.contains("started_at"), "{message}");
        let message = with("started_at", serde_json::json!(1.5));
        assert!(message.contains("started_at"), "{message}");
        for interval in [0.0, -1.0, 601.0] {
            let message = with("interval_seconds", interval.into());
            assert!(message.contains("interval_seconds"), "{message}");
        }
        let message = with("interval_seconds", "thirty".into());
        assert!(message.contains("interval_seconds"), "{message}");
        let message = with("agent_id", "".into());
        assert!(message.contains("agent_id"), "{message}");
        let message = with("cluster", "a\nb".into());
        assert!(message.contains("cluster"), "{message}");
        let message = with("kind", "node".into());
        assert!(message.contains("field node"), "{message}");
        let message = with("colour", "red".into());
        assert!(message.contains("colour"), "{message}");
        let mut missing = good.clone();
        missing
            .as_object_mut()
            .expect("an object")
            .remove("version");
        let message = error_of(missing);
        assert!(message.contains("version"), "{message}");
        let message = with("labels", serde_json::json!({"k": 1}));
        assert!(message.contains("labels.k"), "{message}");
        let message = Heartbeat::parse(b"{not json")
            .expect_err("refused")
            .to_string();
        assert!(message.starts_with("heartbeat"), "{message}");
    }

    #[test]
    fn agents_go_stale_then_are_forgotten() {
        let registry = AgentRegistry::default();
        let t0 = Instant::now();
        let wall = SystemTime::now();
        let team = tenant("team-a");
        assert_eq!(
            registry
                .record(&team, beat("a", 10.0), t0, wall)
                .expect("recorded"),
            Recorded::Registered
        );
        let at = |seconds: u64| t0 + Duration::from_secs(seconds);
        let listed = registry.list(&team, at(30));
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].status, AgentStatus::Up);
        assert_eq!(listed[0].cluster, "prod-eu");
        assert_eq!(listed[0].started_at, "2025-01-02T02:04:05.000Z");
        assert!((listed[0].last_seen_seconds_ago - 30.0).abs() < 1e-9);
        assert_eq!(registry.list(&team, at(31))[0].status, AgentStatus::Stale);
        assert_eq!(
            registry.counts(at(31))[&(AgentKind::Cluster, "stale")],
            1,
            "counted as stale"
        );
        // A heartbeat brings it back.
        assert_eq!(
            registry
                .record(&team, beat("a", 10.0), at(40), wall)
                .expect("recorded"),
            Recorded::Refreshed {
                was: AgentStatus::Stale
            }
        );
        assert_eq!(registry.list(&team, at(41))[0].status, AgentStatus::Up);
        assert_eq!(registry.list(&team, at(140))[0].status, AgentStatus::Stale);
        assert!(registry.list(&team, at(141)).is_empty(), "forgotten");
        assert_eq!(registry.counts(at(141))[&(AgentKind::Cluster, "stale")], 0);
        // Forgotten means the next heartbeat registers it again.
        assert_eq!(
            registry
                .record(&team, beat("a", 10.0), at(150), wall)
                .expect("recorded"),
            Recorded::Registered
        );
    }

    #[test]
    fn tenants_see_only_their_own_agents() {
        let registry = AgentRegistry::default();
        let now = Instant::now();
        let wall = SystemTime::now();
        registry
            .record(&tenant("team-a"), beat("a", 30.0), now, wall)
            .expect("recorded");
        registry
            .record(&tenant("team-b"), beat("b", 30.0), now, wall)
            .expect("recorded");
        let a: Vec<_> = registry
            .list(&tenant("team-a"), now)
            .into_iter()
            .map(|i| i.agent_id)
            .collect();
        assert_eq!(a, ["a"]);
        assert!(registry.list(&tenant("team-c"), now).is_empty());
        assert_eq!(registry.counts(now)[&(AgentKind::Cluster, "up")], 2);
    }

    #[test]
    fn a_tenant_cannot_register_unbounded_agents() {
        let registry = AgentRegistry::default();
        let now = Instant::now();
        let wall = SystemTime::now();
        let team = tenant("team-a");
        for i in 0..MAX_AGENTS_PER_TENANT {
            registry
                .record(&team, beat(&format!("agent-{i}"), 30.0), now, wall)
                .expect("within the bound");
        }
        let error = registry
            .record(&team, beat("one-too-many", 30.0), now, wall)
            .expect_err("over the bound");
        assert!(error.to_string().contains("live agents"), "{error}");
        // Known agents still refresh, and other tenants are unaffected.
        registry
            .record(&team, beat("agent-0", 30.0), now, wall)
            .expect("known agent");
        registry
            .record(&tenant("team-b"), beat("x", 30.0), now, wall)
            .expect("other tenant");
    }
}
