//! Rule groups and their evaluation, with Prometheus 2.42's semantics (`rules/manager.go`,
//! `rules/alerting.go`, `rules/recording.go`): alerts go pending → firing after `for`, stay
//! firing for `keep_firing_for`, are kept 15 minutes after they resolve so receivers hear
//! of it, and are re-sent on a resend delay; `ALERTS` and `ALERTS_FOR_STATE` and recording
//! rules' results are returned as samples at the evaluation time, and series a rule stops
//! returning get a staleness marker.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use async_trait::async_trait;
use promql_parser::parser::Expr;

use crate::expand::{AlertData, QuerySample, expand_alert};
use crate::rulefmt::{self, RuleGroup, RuleNode};

/// A label set, by name.
pub type Labels = BTreeMap<String, String>;

/// `labels` as the data model holds them (an error for names or values it refuses).
pub fn model_labels(labels: &Labels) -> Result<model::Labels, model::ModelError> {
    model::Labels::new(labels.iter().map(|(k, v)| (k.as_str(), v.as_str())))
}

/// How long a resolved alert is still reported (Prometheus's `resolvedRetention`).
pub const RESOLVED_RETENTION_MS: i64 = 15 * 60 * 1000;

/// Runs instant queries for rules.
#[async_trait]
pub trait Querier: Send + Sync {
    /// `expr` at `at_ms`: a vector's samples, a scalar as one sample with no labels, an
    /// error for any other type (Prometheus: "rule result is not a vector or scalar").
    async fn instant(&self, expr: Arc<Expr>, at_ms: i64) -> Result<Vec<QuerySample>, String>;

    /// The raw samples of a range selector (`m[1h]`) at `at_ms`, per series: what
    /// restoring alerts' `for` state reads from `ALERTS_FOR_STATE`.
    async fn range(
        &self,
        expr: Arc<Expr>,
        at_ms: i64,
    ) -> Result<Vec<(Labels, Vec<(i64, f64)>)>, String>;
}

/// How far back `ALERTS_FOR_STATE` is looked for at start-up (Prometheus's
/// `--rules.alert.for-outage-tolerance`).
pub const FOR_OUTAGE_TOLERANCE_MS: i64 = 3_600_000;
/// Rules with a shorter `for` are not restored, and a restored alert fires no sooner than
/// this after start-up (`--rules.alert.for-grace-period`).
pub const FOR_GRACE_PERIOD_MS: i64 = 600_000;

/// Takes one rule's results at once (see [`Group::eval_committing`]).
#[async_trait]
pub trait RuleWriter: Send + Sync {
    async fn write(
        &self,
        samples: &[(Labels, f64)],
        stale: &[Labels],
        at_ms: i64,
    ) -> Result<(), String>;
}

/// Settings every group shares.
#[derive(Clone, Debug)]
pub struct EvalSettings {
    pub external_labels: Labels,
    pub external_url: String,
    /// Minimum time between two sends of a still-firing alert (Prometheus's
    /// `--rules.alert.resend-delay`, 1m).
    pub resend_delay_ms: i64,
}

impl Default for EvalSettings {
    fn default() -> Self {
        Self {
            external_labels: Labels::new(),
            external_url: "http://localhost:9797".into(),
            resend_delay_ms: 60_000,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AlertState {
    Inactive,
    Pending,
    Firing,
}

impl AlertState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Inactive => "inactive",
            Self::Pending => "pending",
            Self::Firing => "firing",
        }
    }
}

/// One active (or recently resolved) alert of an alerting rule.
#[derive(Clone, Debug, PartialEq)]
pub struct Alert {
    pub labels: Labels,
    pub annotations: Labels,
    pub state: AlertState,
    pub value: f64,
    pub active_at_ms: i64,
    pub fired_at_ms: Option<i64>,
    pub resolved_at_ms: Option<i64>,
    pub last_sent_ms: Option<i64>,
    pub valid_until_ms: i64,
    pub keep_firing_since_ms: Option<i64>,
}

/// An alert as Alertmanager receives it.
#[derive(Clone, Debug, PartialEq)]
pub struct Notification {
    pub labels: Labels,
    pub annotations: Labels,
    pub starts_at_ms: i64,
    pub ends_at_ms: i64,
    pub generator_url: String,
}

/// A change of an alert's state, for the platform event stream.
#[derive(Clone, Debug, PartialEq)]
pub struct Transition {
    pub group: String,
    pub rule: String,
    pub labels: Labels,
    pub from: AlertState,
    pub to: AlertState,
    pub at_ms: i64,
    pub value: f64,
    pub annotations: Labels,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Health {
    Unknown,
    Ok,
    Err,
}

impl Health {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unknown => "unknown",
            Self::Ok => "ok",
            Self::Err => "err",
        }
    }
}

/// What every rule keeps about its last evaluation.
#[derive(Clone, Debug)]
pub struct RuleStatus {
    pub health: Health,
    pub last_error: Option<String>,
    pub last_eval_ms: Option<i64>,
    pub eval_seconds: f64,
}

impl Default for RuleStatus {
    fn default() -> Self {
        Self {
            health: Health::Unknown,
            last_error: None,
            last_eval_ms: None,
            eval_seconds: 0.0,
        }
    }
}

#[derive(Clone, Debug)]
pub struct AlertingRule {
    pub name: String,
    pub expr: Arc<Expr>,
    /// The expression as Prometheus prints it (generator URLs, the rules API).
    pub query: String,
    pub hold_ms: i64,
    pub keep_firing_for_ms: i64,
    pub labels: Labels,
    pub annotations: Labels,
    pub active: HashMap<Labels, Alert>,
    pub status: RuleStatus,
}

#[derive(Clone, Debug)]
pub struct RecordingRule {
    pub name: String,
    pub expr: Arc<Expr>,
    pub query: String,
    pub labels: Labels,
    pub status: RuleStatus,
}

#[derive(Clone, Debug)]
pub enum Rule {
    Alerting(AlertingRule),
    Recording(RecordingRule),
}

impl Rule {
    pub fn name(&self) -> &str {
        match self {
            Self::Alerting(r) => &r.name,
            Self::Recording(r) => &r.name,
        }
    }

    pub fn status(&self) -> &RuleStatus {
        match self {
            Self::Alerting(r) => &r.status,
            Self::Recording(r) => &r.status,
        }
    }

    fn status_mut(&mut self) -> &mut RuleStatus {
        match self {
            Self::Alerting(r) => &mut r.status,
            Self::Recording(r) => &mut r.status,
        }
    }
}

/// A group of rules evaluated in order on one interval.
#[derive(Clone, Debug)]
pub struct Group {
    pub name: String,
    pub file: String,
    pub interval_ms: i64,
    pub limit: usize,
    pub rules: Vec<Rule>,
    /// Series each rule returned at its last successful evaluation, for staleness markers.
    previous: Vec<HashSet<Labels>>,
    pub last_eval_ms: Option<i64>,
    pub eval_seconds: f64,
    /// Set for groups loaded at start-up: after their first evaluation, alerts' `for`
    /// progress is restored from `ALERTS_FOR_STATE`, so a restart does not restart long
    /// `for` clocks (groups loaded by a reload take state from the running ones instead).
    pub restore_for_state: bool,
    /// Series of rules a reload removed, to be marked stale at the next evaluation.
    pending_stale: Vec<Labels>,
}

/// What one evaluation of a group produced.
#[derive(Debug, Default)]
pub struct GroupOutput {
    /// Samples at the evaluation time: recording rules' results, `ALERTS`,
    /// `ALERTS_FOR_STATE`.
    pub samples: Vec<(Labels, f64)>,
    /// Series that need a staleness marker at the evaluation time.
    pub stale: Vec<Labels>,
    pub notifications: Vec<Notification>,
    pub transitions: Vec<Transition>,
}

impl Group {
    /// Builds a group from a checked rule file's group; `default_interval_ms` applies when
    /// the group sets none.
    pub fn from_file(
        file: &str,
        group: &RuleGroup,
        default_interval_ms: i64,
    ) -> Result<Self, String> {
        let interval_ms = match &group.interval {
            Some(i) => rulefmt::parse_duration(&i.value.0)? as i64,
            None => default_interval_ms,
        };
        let rules = group
            .rules
            .iter()
            .map(|r| rule(&r.value))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            name: group.name.value.clone(),
            file: file.to_owned(),
            interval_ms: if interval_ms > 0 {
                interval_ms
            } else {
                default_interval_ms
            },
            limit: group.limit.unwrap_or(0).max(0) as usize,
            previous: vec![HashSet::new(); rules.len()],
            rules,
            last_eval_ms: None,
            eval_seconds: 0.0,
            restore_for_state: false,
            pending_stale: Vec::new(),
        })
    }

    /// Takes over the state of `old`'s rules, as Prometheus's `CopyState` does on reload:
    /// rules are matched by name, in order (the first rule named `x` takes the first old
    /// `x`), so a reload neither re-fires nor forgets alerts even when an expression or
    /// annotation changed; the series of old rules left unmatched end at the next
    /// evaluation.
    pub fn copy_state(&mut self, old: &Group) {
        self.last_eval_ms = old.last_eval_ms;
        self.pending_stale = old.pending_stale.clone();
        let mut taken = vec![false; old.rules.len()];
        for (i, rule) in self.rules.iter_mut().enumerate() {
            let found = old
                .rules
                .iter()
                .enumerate()
                .find(|(j, o)| !taken[*j] && o.name() == rule.name());
            let Some((j, old_rule)) = found else { continue };
            taken[j] = true;
            self.previous[i] = old.previous[j].clone();
            *rule.status_mut() = old_rule.status().clone();
            if let (Rule::Alerting(new), Rule::Alerting(old)) = (rule, old_rule) {
                new.active = old.active.clone();
            }
        }
        for (j, _) in taken.iter().enumerate().filter(|(_, t)| !**t) {
            self.pending_stale.extend(old.previous[j].iter().cloned());
        }
    }

    /// Every series the group's rules last returned: on removal they need staleness markers.
    pub fn series(&self) -> Vec<Labels> {
        self.previous
            .iter()
            .flatten()
            .chain(&self.pending_stale)
            .cloned()
            .collect()
    }

    /// Evaluates every rule at `at_ms`, in order.
    pub async fn eval(
        &mut self,
        at_ms: i64,
        querier: &Arc<dyn Querier>,
        settings: &EvalSettings,
    ) -> GroupOutput {
        self.eval_committing(at_ms, querier, settings, None).await
    }

    /// [`Group::eval`], handing each rule's samples and staleness markers to `writer` before
    /// the next rule runs, as Prometheus commits each rule's appender: a later rule of the
    /// group then sees what an earlier one recorded at this very time (`rules test` runs so;
    /// through the bus a later rule sees it one interval later).
    pub async fn eval_committing(
        &mut self,
        at_ms: i64,
        querier: &Arc<dyn Querier>,
        settings: &EvalSettings,
        writer: Option<&dyn RuleWriter>,
    ) -> GroupOutput {
        let started = std::time::Instant::now();
        let mut output = GroupOutput {
            stale: std::mem::take(&mut self.pending_stale),
            ..GroupOutput::default()
        };
        for i in 0..self.rules.len() {
            let rule_started = std::time::Instant::now();
            let result = match &mut self.rules[i] {
                Rule::Recording(rule) => rule.eval(at_ms, querier, self.limit).await,
                Rule::Alerting(rule) => {
                    let result = rule
                        .eval(
                            at_ms,
                            querier,
                            settings,
                            self.limit,
                            &self.name,
                            &mut output,
                        )
                        .await;
                    if result.is_ok() {
                        rule.send(at_ms, settings, self.interval_ms, &mut output);
                    }
                    result
                }
            };
            // Before its state is restored, an alerting rule writes no `ALERTS` series (as
            // in Prometheus): they would say the alerts began now.
            let result = match result {
                Ok(_) if self.restore_for_state && matches!(self.rules[i], Rule::Alerting(_)) => {
                    Ok(Vec::new())
                }
                other => other,
            };
            let status = self.rules[i].status_mut();
            status.last_eval_ms = Some(at_ms);
            status.eval_seconds = rule_started.elapsed().as_secs_f64();
            match result {
                Err(error) => {
                    status.health = Health::Err;
                    status.last_error = Some(error);
                }
                Ok(samples) => {
                    status.health = Health::Ok;
                    status.last_error = None;
                    let returned: HashSet<Labels> =
                        samples.iter().map(|(l, _)| l.clone()).collect();
                    let stale: Vec<Labels> = self.previous[i]
                        .iter()
                        .filter(|l| !returned.contains(*l))
                        .cloned()
                        .collect();
                    if let Some(writer) = writer
                        && let Err(error) = writer.write(&samples, &stale, at_ms).await
                    {
                        let status = self.rules[i].status_mut();
                        status.health = Health::Err;
                        status.last_error = Some(error);
                    }
                    self.previous[i] = returned;
                    output.stale.extend(stale);
                    output.samples.extend(samples);
                }
            }
        }
        if std::mem::take(&mut self.restore_for_state) {
            self.restore(at_ms, querier).await;
        }
        self.last_eval_ms = Some(at_ms);
        self.eval_seconds = started.elapsed().as_secs_f64();
        output
    }

    /// Prometheus's `RestoreForState`: each pending alert of a rule whose `for` is at least
    /// the grace period takes its `activeAt` from the newest `ALERTS_FOR_STATE` sample of
    /// the last hour, shifted by the time Meerkat was down (and so that it fires no sooner
    /// than the grace period from now).
    async fn restore(&mut self, at_ms: i64, querier: &Arc<dyn Querier>) {
        for rule in &mut self.rules {
            let Rule::Alerting(rule) = rule else { continue };
            if rule.hold_ms < FOR_GRACE_PERIOD_MS || rule.active.is_empty() {
                continue;
            }
            let selector = format!(
                "ALERTS_FOR_STATE{{alertname={:?}}}[{}ms]",
                rule.name, FOR_OUTAGE_TOLERANCE_MS
            );
            let expr = match query::promql::parse(&selector) {
                Ok(expr) => Arc::new(expr),
                Err(error) => {
                    tracing::warn!(rule = %rule.name, %error, "cannot restore for state");
                    continue;
                }
            };
            let found = match querier.range(expr, at_ms).await {
                Ok(found) => found,
                Err(error) => {
                    tracing::warn!(rule = %rule.name, %error, "cannot restore for state");
                    continue;
                }
            };
            for (mut labels, samples) in found {
                labels.remove("__name__");
                // Samples written at this evaluation are not what was there before.
                let Some(&(down_at_ms, active_s)) = samples.iter().rev().find(|(t, _)| *t < at_ms)
                else {
                    continue;
                };
                let Some(alert) = rule.active.get_mut(&labels) else {
                    continue;
                };
                let restored_ms = active_s as i64 * 1000;
                let remaining = rule.hold_ms - (down_at_ms - restored_ms);
                alert.active_at_ms = if remaining <= 0 {
                    // It was firing: the next evaluation fires it again.
                    restored_ms
                } else if remaining < FOR_GRACE_PERIOD_MS {
                    at_ms + FOR_GRACE_PERIOD_MS - rule.hold_ms
                } else {
                    restored_ms + (at_ms - down_at_ms)
                };
            }
        }
    }
}

fn rule(node: &RuleNode) -> Result<Rule, String> {
    let text = node.expr.as_ref().map_or("", |e| e.value.0.as_str());
    let expr = query::promql::parse(text).map_err(|e| e.to_string())?;
    let query = query::promql::display(&expr);
    let map = |m: &BTreeMap<String, rulefmt::Scalar>| -> Labels {
        m.iter().map(|(k, v)| (k.clone(), v.0.clone())).collect()
    };
    let duration = |f: &Option<serde_saphyr::Spanned<rulefmt::Scalar>>| -> Result<i64, String> {
        match f {
            Some(v) => Ok(rulefmt::parse_duration(&v.value.0)? as i64),
            None => Ok(0),
        }
    };
    let expr = Arc::new(expr);
    Ok(match &node.alert {
        Some(alert) if !alert.value.0.is_empty() => Rule::Alerting(AlertingRule {
            name: alert.value.0.clone(),
            expr,
            query,
            hold_ms: duration(&node.for_)?,
            keep_firing_for_ms: duration(&node.keep_firing_for)?,
            labels: map(&node.labels),
            annotations: map(&node.annotations),
            active: HashMap::new(),
            status: RuleStatus::default(),
        }),
        _ => Rule::Recording(RecordingRule {
            name: node.name().to_owned(),
            expr,
            query,
            labels: map(&node.labels),
            status: RuleStatus::default(),
        }),
    })
}

/// Whether two samples of a result share a label set (Prometheus refuses such a result).
fn has_duplicates(samples: &[(Labels, f64)]) -> bool {
    let mut seen = HashSet::with_capacity(samples.len());
    samples.iter().any(|(l, _)| !seen.insert(l))
}

impl RecordingRule {
    async fn eval(
        &self,
        at_ms: i64,
        querier: &Arc<dyn Querier>,
        limit: usize,
    ) -> Result<Vec<(Labels, f64)>, String> {
        let result = querier.instant(self.expr.clone(), at_ms).await?;
        let samples: Vec<(Labels, f64)> = result
            .into_iter()
            .map(|s| {
                let mut labels = s.labels;
                labels.insert("__name__".into(), self.name.clone());
                // As Prometheus's `labels.Builder`: a label set to "" is removed.
                for (k, v) in &self.labels {
                    if v.is_empty() {
                        labels.remove(k);
                    } else {
                        labels.insert(k.clone(), v.clone());
                    }
                }
                (labels, s.value)
            })
            .collect();
        if has_duplicates(&samples) {
            return Err(
                "vector contains metrics with the same labelset after applying rule labels".into(),
            );
        }
        if limit > 0 && samples.len() > limit {
            return Err(format!(
                "exceeded limit of {limit} with {} series",
                samples.len()
            ));
        }
        Ok(samples)
    }
}

impl AlertingRule {
    /// Prometheus's `AlertingRule.Eval`; returns the `ALERTS` and `ALERTS_FOR_STATE` samples.
    async fn eval(
        &mut self,
        at_ms: i64,
        querier: &Arc<dyn Querier>,
        settings: &EvalSettings,
        limit: usize,
        group: &str,
        output: &mut GroupOutput,
    ) -> Result<Vec<(Labels, f64)>, String> {
        let result = querier.instant(self.expr.clone(), at_ms).await?;
        let expanded = self.expand_all(&result, at_ms, querier, settings).await;
        let mut current: HashMap<Labels, Alert> = HashMap::with_capacity(result.len());
        for (sample, (labels, annotations)) in result.iter().zip(expanded) {
            if current.contains_key(&labels) {
                return Err(
                    "vector contains metrics with the same labelset after applying alert labels"
                        .into(),
                );
            }
            current.insert(
                labels.clone(),
                Alert {
                    labels,
                    annotations,
                    state: AlertState::Pending,
                    value: sample.value,
                    active_at_ms: at_ms,
                    fired_at_ms: None,
                    resolved_at_ms: None,
                    last_sent_ms: None,
                    valid_until_ms: 0,
                    keep_firing_since_ms: None,
                },
            );
        }
        for (labels, alert) in &current {
            match self.active.get_mut(labels) {
                Some(existing) if existing.state != AlertState::Inactive => {
                    existing.value = alert.value;
                    existing.annotations = alert.annotations.clone();
                }
                _ => {
                    output.transitions.push(Transition {
                        group: group.to_owned(),
                        rule: self.name.clone(),
                        labels: labels.clone(),
                        from: AlertState::Inactive,
                        to: AlertState::Pending,
                        at_ms,
                        value: alert.value,
                        annotations: alert.annotations.clone(),
                    });
                    self.active.insert(labels.clone(), alert.clone());
                }
            }
        }
        let mut samples = Vec::new();
        let mut active_count = 0;
        let mut removed = Vec::new();
        for (labels, alert) in &mut self.active {
            if !current.contains_key(labels) {
                let mut keep_firing = false;
                if alert.state == AlertState::Firing && self.keep_firing_for_ms > 0 {
                    let since = *alert.keep_firing_since_ms.get_or_insert(at_ms);
                    keep_firing = at_ms - since < self.keep_firing_for_ms;
                }
                if alert.state == AlertState::Pending
                    || alert
                        .resolved_at_ms
                        .is_some_and(|r| at_ms - r > RESOLVED_RETENTION_MS)
                {
                    removed.push(labels.clone());
                }
                if alert.state != AlertState::Inactive && !keep_firing {
                    output.transitions.push(Transition {
                        group: group.to_owned(),
                        rule: self.name.clone(),
                        labels: labels.clone(),
                        from: alert.state,
                        to: AlertState::Inactive,
                        at_ms,
                        value: alert.value,
                        annotations: alert.annotations.clone(),
                    });
                    alert.state = AlertState::Inactive;
                    alert.resolved_at_ms = Some(at_ms);
                }
                if !keep_firing {
                    continue;
                }
            } else {
                alert.keep_firing_since_ms = None;
            }
            active_count += 1;
            if alert.state == AlertState::Pending && at_ms - alert.active_at_ms >= self.hold_ms {
                alert.state = AlertState::Firing;
                alert.fired_at_ms = Some(at_ms);
                output.transitions.push(Transition {
                    group: group.to_owned(),
                    rule: self.name.clone(),
                    labels: labels.clone(),
                    from: AlertState::Pending,
                    to: AlertState::Firing,
                    at_ms,
                    value: alert.value,
                    annotations: alert.annotations.clone(),
                });
            }
            let mut series = alert.labels.clone();
            series.insert("__name__".into(), "ALERTS".into());
            series.insert("alertstate".into(), alert.state.as_str().into());
            samples.push((series, 1.0));
            let mut for_state = alert.labels.clone();
            for_state.insert("__name__".into(), "ALERTS_FOR_STATE".into());
            samples.push((for_state, (alert.active_at_ms.div_euclid(1000)) as f64));
        }
        for labels in removed {
            self.active.remove(&labels);
        }
        if limit > 0 && active_count > limit {
            self.active.clear();
            return Err(format!(
                "exceeded limit of {limit} with {active_count} alerts"
            ));
        }
        Ok(samples)
    }

    /// Each result's alert labels and annotations, templates expanded. Templates that run
    /// queries expand on a blocking thread, since the template engine calls them
    /// synchronously.
    async fn expand_all(
        &self,
        result: &[QuerySample],
        at_ms: i64,
        querier: &Arc<dyn Querier>,
        settings: &EvalSettings,
    ) -> Vec<(Labels, Labels)> {
        let uses_query = self
            .labels
            .values()
            .chain(self.annotations.values())
            .any(|t| t.contains("query"));
        let job = ExpandJob {
            name: self.name.clone(),
            labels: self.labels.clone(),
            annotations: self.annotations.clone(),
            external_labels: settings.external_labels.clone(),
            external_url: settings.external_url.clone(),
            result: result.to_vec(),
        };
        let fallback = |why: String| -> Vec<(Labels, Labels)> {
            let text = format!("<error expanding template: {why}>");
            result
                .iter()
                .map(|s| {
                    let mut labels = s.labels.clone();
                    labels.remove("__name__");
                    labels.insert("alertname".into(), self.name.clone());
                    let annotations = self
                        .annotations
                        .keys()
                        .map(|k| (k.clone(), text.clone()))
                        .collect();
                    (labels, annotations)
                })
                .collect()
        };
        if !uses_query {
            // A bug in the template engine must not stop the group: it becomes the text.
            return std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                job.run(&|_| Err("query is not available".into()))
            }))
            .unwrap_or_else(|_| fallback("the template engine failed".into()));
        }
        let querier = querier.clone();
        let handle = tokio::runtime::Handle::current();
        let task = tokio::task::spawn_blocking(move || {
            let query = |text: &str| -> Result<Vec<QuerySample>, String> {
                let expr = query::promql::parse(text).map_err(|e| e.to_string())?;
                handle.block_on(querier.instant(Arc::new(expr), at_ms))
            };
            job.run(&query)
        });
        match task.await {
            Ok(expanded) => expanded,
            Err(e) => fallback(e.to_string()),
        }
    }

    /// Prometheus's `sendAlerts`: firing alerts not sent within the resend delay, and
    /// alerts resolved since they were last sent.
    fn send(
        &mut self,
        at_ms: i64,
        settings: &EvalSettings,
        interval_ms: i64,
        output: &mut GroupOutput,
    ) {
        let delta = settings.resend_delay_ms.max(interval_ms);
        let generator_url = format!(
            "{}/graph?g0.expr={}&g0.tab=1",
            settings.external_url.trim_end_matches('/'),
            crate::expand::query_escape(&self.query)
        );
        for alert in self.active.values_mut() {
            let needs = match alert.state {
                AlertState::Pending => false,
                _ if alert.resolved_at_ms > alert.last_sent_ms => true,
                _ => alert
                    .last_sent_ms
                    .is_none_or(|sent| sent + settings.resend_delay_ms < at_ms),
            };
            if !needs {
                continue;
            }
            alert.last_sent_ms = Some(at_ms);
            alert.valid_until_ms = at_ms + 4 * delta;
            output.notifications.push(Notification {
                labels: alert.labels.clone(),
                annotations: alert.annotations.clone(),
                starts_at_ms: alert.fired_at_ms.unwrap_or(alert.active_at_ms),
                ends_at_ms: alert.resolved_at_ms.unwrap_or(alert.valid_until_ms),
                generator_url: generator_url.clone(),
            });
        }
    }
}

/// The template work of one evaluation, owned so it can move to a blocking thread.
struct ExpandJob {
    name: String,
    labels: Labels,
    annotations: Labels,
    external_labels: Labels,
    external_url: String,
    result: Vec<QuerySample>,
}

impl ExpandJob {
    fn run(&self, query: &crate::expand::QueryFn<'_>) -> Vec<(Labels, Labels)> {
        self.result
            .iter()
            .map(|sample| {
                let data = AlertData {
                    labels: &sample.labels,
                    external_labels: &self.external_labels,
                    external_url: &self.external_url,
                    value: sample.value,
                };
                let mut labels = sample.labels.clone();
                labels.remove("__name__");
                // As Prometheus's `labels.Builder`: a label set to "" is removed.
                for (k, v) in &self.labels {
                    let value = expand_alert(v, &self.name, &data, query);
                    if value.is_empty() {
                        labels.remove(k);
                    } else {
                        labels.insert(k.clone(), value);
                    }
                }
                labels.insert("alertname".into(), self.name.clone());
                let annotations = self
                    .annotations
                    .iter()
                    .map(|(k, v)| (k.clone(), expand_alert(v, &self.name, &data, query)))
                    .collect();
                (labels, annotations)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// Answers every query with the samples it is set to.
    #[derive(Default)]
    struct Fixed(Mutex<Vec<QuerySample>>);

    #[async_trait]
    impl Querier for Fixed {
        async fn instant(&self, _: Arc<Expr>, _: i64) -> Result<Vec<QuerySample>, String> {
            Ok(self.0.lock().map_err(|e| e.to_string())?.clone())
        }

        async fn range(
            &self,
            _: Arc<Expr>,
            _: i64,
        ) -> Result<Vec<(Labels, Vec<(i64, f64)>)>, String> {
            // What a previous run wrote: pending since 100 s, last written at 400 s.
            Ok(vec![(
                Labels::from([
                    ("__name__".into(), "ALERTS_FOR_STATE".into()),
                    ("alertname".into(), "Down".into()),
                    ("job".into(), "a".into()),
                ]),
                vec![(300_000, 100.0), (400_000, 100.0)],
            )])
        }
    }

    fn group(text: &str) -> Group {
        let parsed = crate::rulefmt::parse("test.yml", text).expect("valid rules");
        Group::from_file("test.yml", &parsed.groups[0], 60_000).expect("group")
    }

    fn firing(querier: &Fixed, on: bool) {
        let mut samples = querier.0.lock().expect("lock");
        samples.clear();
        if on {
            samples.push(QuerySample {
                labels: Labels::from([
                    ("__name__".into(), "up".into()),
                    ("job".into(), "a".into()),
                ]),
                value: 0.0,
            });
        }
    }

    #[tokio::test]
    async fn alerts_are_sent_on_firing_resent_after_the_delay_and_resolved_once() {
        let mut g = group(
            "groups:\n  - name: g\n    rules:\n      - alert: Down\n        expr: up == 0\n        for: 2m\n",
        );
        let fixed = Arc::new(Fixed::default());
        let querier: Arc<dyn Querier> = fixed.clone();
        let settings = EvalSettings::default();
        firing(&fixed, true);
        let mut sent = Vec::new();
        for minute in 0..=5 {
            let out = g.eval(minute * 60_000, &querier, &settings).await;
            sent.push(out.notifications);
        }
        // Pending at 0 and 1 min (nothing sent), firing from 2 min; the resend delay (1 min)
        // must have passed strictly, so with a 1 min interval it is re-sent every 2 min.
        let counts: Vec<usize> = sent.iter().map(Vec::len).collect();
        assert_eq!(counts, vec![0, 0, 1, 0, 1, 0]);
        let first = &sent[2][0];
        assert_eq!(first.starts_at_ms, 120_000);
        // Valid for 4 intervals (or resend delays), so Alertmanager keeps it meanwhile.
        assert_eq!(first.ends_at_ms, 120_000 + 4 * 60_000);
        assert_eq!(
            first.labels.get("alertname").map(String::as_str),
            Some("Down")
        );
        assert!(
            first
                .generator_url
                .ends_with("/graph?g0.expr=up+%3D%3D+0&g0.tab=1")
        );

        firing(&fixed, false);
        let out = g.eval(6 * 60_000, &querier, &settings).await;
        assert_eq!(out.notifications.len(), 1, "the resolution is sent");
        assert_eq!(out.notifications[0].ends_at_ms, 6 * 60_000);
        assert!(
            out.stale
                .iter()
                .any(|l| l.get("__name__").map(String::as_str) == Some("ALERTS"))
        );
        assert!(
            out.transitions
                .iter()
                .any(|t| t.to == AlertState::Inactive && t.from == AlertState::Firing)
        );
        // Kept (and re-sent as resolved on the resend delay) for 15 minutes, then forgotten.
        let Rule::Alerting(rule) = &g.rules[0] else {
            panic!("alerting rule")
        };
        assert_eq!(rule.active.len(), 1);
        for minute in 7..=22 {
            g.eval(minute * 60_000, &querier, &settings).await;
        }
        let Rule::Alerting(rule) = &g.rules[0] else {
            panic!("alerting rule")
        };
        assert!(
            rule.active.is_empty(),
            "resolved alerts are dropped after 15 minutes"
        );
    }

    #[tokio::test]
    async fn a_reload_keeps_alerts_of_rules_by_name_and_ends_removed_rules_series() {
        let fixed = Arc::new(Fixed::default());
        let querier: Arc<dyn Querier> = fixed.clone();
        let settings = EvalSettings::default();
        firing(&fixed, true);
        let mut old = group(
            "groups:\n  - name: g\n    rules:\n      - alert: Down\n        expr: up == 0\n        for: 1m\n      - record: gone\n        expr: up\n",
        );
        old.eval(0, &querier, &settings).await;
        old.eval(60_000, &querier, &settings).await;
        // The expression and an empty label changed; the rule keeps its name.
        let mut new = group(
            "groups:\n  - name: g\n    rules:\n      - alert: Down\n        expr: up < 1\n        for: 1m\n        labels:\n          job: ''\n",
        );
        new.copy_state(&old);
        let out = new.eval(120_000, &querier, &settings).await;
        let Rule::Alerting(rule) = &new.rules[0] else {
            panic!("alerting rule")
        };
        // The old alert (with job) resolves; the new one has no `job` label at all.
        assert!(rule.active.values().any(|a| !a.labels.contains_key("job")));
        assert!(
            rule.active
                .values()
                .any(|a| a.state == AlertState::Inactive)
        );
        assert!(
            out.stale
                .iter()
                .any(|l| l.get("__name__").map(String::as_str) == Some("gone")),
            "the removed rule's series end: {:?}",
            out.stale
        );
    }

    #[tokio::test]
    async fn a_restart_keeps_the_for_progress_of_long_for_rules() {
        let text = "groups:\n  - name: g\n    rules:\n      - alert: Down\n        expr: up == 0\n        for: 1h\n";
        let fixed = Arc::new(Fixed::default());
        let querier: Arc<dyn Querier> = fixed.clone();
        firing(&fixed, true);
        let mut g = group(text);
        g.restore_for_state = true;
        // Down from 400 s to 1000 s: pending 300 s before, so the clock goes on from there.
        g.eval(1_000_000, &querier, &EvalSettings::default()).await;
        let Rule::Alerting(rule) = &g.rules[0] else {
            panic!("alerting rule")
        };
        let alert = rule.active.values().next().expect("an alert");
        assert_eq!(alert.active_at_ms, 100_000 + (1_000_000 - 400_000));
        // Restored once, at start-up only.
        assert!(!g.restore_for_state);
        // A reloaded group (no restoration) starts its clock at its first evaluation.
        let mut fresh = group(text);
        fresh
            .eval(1_000_000, &querier, &EvalSettings::default())
            .await;
        let Rule::Alerting(rule) = &fresh.rules[0] else {
            panic!("alerting rule")
        };
        assert_eq!(
            rule.active.values().next().expect("an alert").active_at_ms,
            1_000_000
        );
    }

    #[tokio::test]
    async fn a_pending_alert_that_goes_away_is_never_sent_and_limits_fail_the_rule() {
        let mut g = group(
            "groups:\n  - name: g\n    limit: 1\n    rules:\n      - alert: Down\n        expr: up == 0\n        for: 5m\n",
        );
        let fixed = Arc::new(Fixed::default());
        let querier: Arc<dyn Querier> = fixed.clone();
        let settings = EvalSettings::default();
        firing(&fixed, true);
        let out = g.eval(0, &querier, &settings).await;
        assert!(out.notifications.is_empty());
        assert_eq!(out.samples.len(), 2, "ALERTS and ALERTS_FOR_STATE");
        firing(&fixed, false);
        let out = g.eval(60_000, &querier, &settings).await;
        assert!(out.notifications.is_empty());
        assert_eq!(out.stale.len(), 2);
        // Two alerts over a limit of one: the rule fails and keeps no alerts.
        fixed.0.lock().expect("lock").extend([
            QuerySample {
                labels: Labels::from([("job".into(), "a".into())]),
                value: 0.0,
            },
            QuerySample {
                labels: Labels::from([("job".into(), "b".into())]),
                value: 0.0,
            },
        ]);
        g.eval(120_000, &querier, &settings).await;
        let status = g.rules[0].status();
        assert_eq!(status.health, Health::Err);
        assert_eq!(
            status.last_error.as_deref(),
            Some("exceeded limit of 1 with 2 alerts")
        );
    }
}
