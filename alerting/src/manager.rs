//! The running alerting role: every tenant's rule groups evaluated on their intervals,
//! results written back through a [`RuleSink`] (the bus, in Meerkat), alerts handed to the
//! [`Notifier`], state transitions written as platform events, and reloads — on
//! `POST /-/reload` and when a rule file changes — that keep the running rules when a new
//! file is broken.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use model::{
    AlertEvent, AlertState as EventState, AnyValue, EventKind, KeyValue, MetricBatch, Payload,
    PlatformEvent, Sample, Series, TenantId,
};
use tokio::sync::Notify;

use crate::files;
use crate::notifier::Notifier;
use crate::querier::EngineQuerier;
use crate::rulefmt::RuleError;
use crate::rules::{
    AlertState, EvalSettings, Group, GroupOutput, Labels, Querier, Transition, model_labels,
};

/// Where evaluation results go: recording rules' and `ALERTS` samples, alert events.
#[async_trait]
pub trait RuleSink: Send + Sync + std::fmt::Debug {
    async fn write(&self, tenant: &TenantId, payload: Payload) -> Result<(), String>;
}

#[derive(Clone, Debug)]
pub struct ManagerConfig {
    /// Rule file patterns (globs, files or directories) per tenant.
    pub rule_files: Vec<(TenantId, Vec<String>)>,
    /// Groups without an `interval` are evaluated this often.
    pub evaluation_interval_ms: i64,
    pub settings: EvalSettings,
}

#[derive(Debug)]
struct Running {
    tenant: TenantId,
    group: Arc<tokio::sync::Mutex<Group>>,
    stop: Arc<Notify>,
    task: tokio::task::JoinHandle<()>,
}

#[derive(Debug)]
struct Shared {
    config: ManagerConfig,
    store: Arc<dyn storage::Storage>,
    limits: query::promql::Limits,
    sink: Arc<dyn RuleSink>,
    notifier: Arc<Notifier>,
    running: tokio::sync::Mutex<Vec<Running>>,
    /// One reload at a time, from reading the files to the groups running: two racing
    /// (the file watch and `POST /-/reload`) must not install the older files last.
    reloading: tokio::sync::Mutex<()>,
    /// Set by [`RuleManager::stop`]: a reload after it starts nothing.
    stopped: std::sync::atomic::AtomicBool,
}

/// The alerting role's rules, running.
#[derive(Clone, Debug)]
pub struct RuleManager {
    shared: Arc<Shared>,
}

/// A loaded group and whose it is.
type TenantGroup = (TenantId, Group);

impl RuleManager {
    /// Loads every tenant's rule files and starts evaluating them. A broken file stops the
    /// start, naming the file, line and reason.
    pub async fn start(
        config: ManagerConfig,
        store: Arc<dyn storage::Storage>,
        limits: query::promql::Limits,
        sink: Arc<dyn RuleSink>,
        notifier: Arc<Notifier>,
    ) -> Result<Self, Vec<RuleError>> {
        let mut groups = load(&config)?;
        // At start-up, long `for` clocks continue from what the last run wrote.
        for (_, group) in &mut groups {
            group.restore_for_state = true;
        }
        let manager = Self {
            shared: Arc::new(Shared {
                config,
                store,
                limits,
                sink,
                notifier,
                running: tokio::sync::Mutex::new(Vec::new()),
                reloading: tokio::sync::Mutex::new(()),
                stopped: std::sync::atomic::AtomicBool::new(false),
            }),
        };
        manager.replace(groups).await;
        Ok(manager)
    }

    /// Loads the rule files again. When any is broken, nothing changes and the errors are
    /// returned; else the new groups replace the old, taking over the state of unchanged
    /// rules (so pending alerts keep their `for` progress), and removed groups' series get
    /// staleness markers.
    pub async fn reload(&self) -> Result<usize, Vec<RuleError>> {
        let _one_at_a_time = self.shared.reloading.lock().await;
        match load(&self.shared.config) {
            Ok(groups) => {
                let count = groups.len();
                self.replace(groups).await;
                tracing::info!(groups = count, "rules reloaded");
                Ok(count)
            }
            Err(errors) => {
                let texts: Vec<String> = errors.iter().map(ToString::to_string).collect();
                tracing::error!(errors = ?texts, "rule reload failed; the loaded rules keep running");
                Err(errors)
            }
        }
    }

    async fn replace(&self, groups: Vec<TenantGroup>) {
        let mut running = self.shared.running.lock().await;
        if self
            .shared
            .stopped
            .load(std::sync::atomic::Ordering::SeqCst)
        {
            return;
        }
        let old: Vec<Running> = std::mem::take(&mut *running);
        // Stop the old tasks first so no evaluation runs while state moves over.
        for r in &old {
            r.stop.notify_one();
        }
        let mut old_groups: HashMap<(TenantId, String, String), Group> = HashMap::new();
        for r in old {
            let _ = r.task.await;
            let group = r.group.lock().await.clone();
            old_groups.insert((r.tenant, group.file.clone(), group.name.clone()), group);
        }
        for (tenant, mut group) in groups {
            if let Some(previous) =
                old_groups.remove(&(tenant.clone(), group.file.clone(), group.name.clone()))
            {
                group.copy_state(&previous);
            }
            running.push(self.spawn(tenant, group));
        }
        // Groups that are gone: their series end now.
        let now = now_ms();
        for ((tenant, _, _), group) in old_groups {
            let stale = group.series();
            if !stale.is_empty()
                && let Err(error) = self
                    .shared
                    .sink
                    .write(&tenant, Payload::Metrics(metric_batch(&[], &stale, now)))
                    .await
            {
                tracing::warn!(%error, group = %group.name, "cannot end a removed group's series");
            }
        }
    }

    fn spawn(&self, tenant: TenantId, group: Group) -> Running {
        let stop = Arc::new(Notify::new());
        let group = Arc::new(tokio::sync::Mutex::new(group));
        let task = tokio::spawn(run_group(
            self.shared.clone(),
            tenant.clone(),
            group.clone(),
            stop.clone(),
        ));
        Running {
            tenant,
            group,
            stop,
            task,
        }
    }

    /// Stops every group (their current evaluation finishes first).
    pub async fn stop(&self) {
        self.shared
            .stopped
            .store(true, std::sync::atomic::Ordering::SeqCst);
        let mut running = self.shared.running.lock().await;
        for r in running.iter() {
            r.stop.notify_one();
        }
        for r in running.drain(..) {
            let _ = r.task.await;
        }
        self.shared.notifier.stop();
    }

    /// A copy of `tenant`'s groups as they are now.
    pub async fn groups(&self, tenant: &TenantId) -> Vec<Group> {
        let running = self.shared.running.lock().await;
        let mut out = Vec::new();
        for r in running.iter().filter(|r| &r.tenant == tenant) {
            out.push(r.group.lock().await.clone());
        }
        out
    }

    /// Every directory the rule file patterns live in, for watching.
    pub fn watched_dirs(&self) -> Vec<std::path::PathBuf> {
        let mut dirs: Vec<std::path::PathBuf> = self
            .shared
            .config
            .rule_files
            .iter()
            .flat_map(|(_, patterns)| patterns)
            .map(|p| {
                let path = std::path::Path::new(p);
                if path.is_dir() {
                    return path.to_path_buf();
                }
                // The deepest directory without glob characters.
                let mut dir = path.parent().unwrap_or(std::path::Path::new("."));
                while dir.to_string_lossy().contains(['*', '?', '[']) {
                    dir = dir.parent().unwrap_or(std::path::Path::new("."));
                }
                if dir.as_os_str().is_empty() {
                    std::path::PathBuf::from(".")
                } else {
                    dir.to_path_buf()
                }
            })
            .collect();
        dirs.sort();
        dirs.dedup();
        dirs
    }
}

/// Reloads the rules when a file in their directories changes; dropping it stops watching.
#[derive(Debug)]
pub struct RuleWatcher {
    _watcher: notify::RecommendedWatcher,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for RuleWatcher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl RuleManager {
    /// Watches the rule files' directories (editors replace files, so the directory, not
    /// the file, is what sees every save) and reloads half a second after changes settle.
    pub fn watch(&self) -> Result<RuleWatcher, String> {
        use notify::Watcher;
        let (tx, mut rx) = tokio::sync::mpsc::channel::<()>(1);
        let mut watcher =
            notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
                if event.is_ok_and(|e| !e.kind.is_access()) {
                    let _ = tx.try_send(());
                }
            })
            .map_err(|e| format!("cannot watch rule files: {e}"))?;
        for dir in self.watched_dirs() {
            watcher
                .watch(&dir, notify::RecursiveMode::NonRecursive)
                .map_err(|e| format!("cannot watch {}: {e}", dir.display()))?;
        }
        let manager = self.clone();
        let task = tokio::spawn(async move {
            while rx.recv().await.is_some() {
                // Let a burst of writes (an editor's save, a ConfigMap update) settle.
                tokio::time::sleep(Duration::from_millis(500)).await;
                while rx.try_recv().is_ok() {}
                let _ = manager.reload().await;
            }
        });
        Ok(RuleWatcher {
            _watcher: watcher,
            task,
        })
    }
}

fn load(config: &ManagerConfig) -> Result<Vec<TenantGroup>, Vec<RuleError>> {
    let mut out = Vec::new();
    let mut errors = Vec::new();
    for (tenant, patterns) in &config.rule_files {
        match files::load_patterns(patterns, config.evaluation_interval_ms) {
            Ok(groups) => out.extend(groups.into_iter().map(|g| (tenant.clone(), g))),
            Err(e) => errors.extend(e),
        }
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Where in each interval a group is evaluated: spread by its identity, as Prometheus
/// spreads groups, so they do not all query at once.
fn slot_offset(tenant: &TenantId, group: &Group) -> i64 {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    (tenant.as_str(), &group.file, &group.name).hash(&mut hasher);
    (hasher.finish() % group.interval_ms.max(1) as u64) as i64
}

/// The first evaluation slot strictly after `after_ms`.
fn next_slot(after_ms: i64, interval_ms: i64, offset_ms: i64) -> i64 {
    let base = (after_ms - offset_ms).div_euclid(interval_ms) * interval_ms + offset_ms;
    if base > after_ms {
        base
    } else {
        base + interval_ms
    }
}

async fn run_group(
    shared: Arc<Shared>,
    tenant: TenantId,
    group: Arc<tokio::sync::Mutex<Group>>,
    stop: Arc<Notify>,
) {
    // Also the group's writer: a later rule sees what an earlier one recorded at the same
    // evaluation, before it has come back from the bus.
    let engine = Arc::new(EngineQuerier::with_limits(
        shared.store.clone(),
        shared.limits,
        tenant.clone(),
    ));
    let querier: Arc<dyn Querier> = engine.clone();
    let (interval_ms, offset_ms, mut last) = {
        let g = group.lock().await;
        (g.interval_ms, slot_offset(&tenant, &g), g.last_eval_ms)
    };
    loop {
        let now = now_ms();
        let mut slot = next_slot(
            last.unwrap_or(now).max(now - interval_ms),
            interval_ms,
            offset_ms,
        );
        if slot > now {
            let wait = Duration::from_millis((slot - now) as u64);
            tokio::select! {
                () = stop.notified() => return,
                () = tokio::time::sleep(wait) => {}
            }
        } else {
            // A stop asked for while this group was behind is seen here too (the permit
            // `notify_one` stored completes `notified()` at once).
            tokio::select! {
                biased;
                () = stop.notified() => return,
                () = std::future::ready(()) => {}
            }
            // Late (a slow evaluation): evaluate the newest slot, skipping missed ones.
            let newest = next_slot(now - interval_ms, interval_ms, offset_ms);
            if newest > slot {
                tracing::warn!(
                    missed = (newest - slot) / interval_ms,
                    "rule group evaluation fell behind"
                );
                slot = newest;
            }
        }
        let output = {
            let mut g = group.lock().await;
            g.eval_committing(
                slot,
                &querier,
                &shared.config.settings,
                Some(engine.as_ref()),
            )
            .await
        };
        last = Some(slot);
        deliver(&shared, &tenant, output, slot).await;
    }
}

async fn deliver(shared: &Shared, tenant: &TenantId, output: GroupOutput, at_ms: i64) {
    if !output.samples.is_empty() || !output.stale.is_empty() {
        let batch = metric_batch(&output.samples, &output.stale, at_ms);
        if let Err(error) = shared.sink.write(tenant, Payload::Metrics(batch)).await {
            tracing::warn!(%error, "cannot write rule results");
        }
    }
    shared.notifier.send(output.notifications);
    let events: Vec<PlatformEvent> = output.transitions.iter().filter_map(event).collect();
    if !events.is_empty()
        && let Err(error) = shared.sink.write(tenant, Payload::Events(events)).await
    {
        tracing::warn!(%error, "cannot write alert events");
    }
}

/// Samples and staleness markers at `at_ms`, as one batch.
pub fn metric_batch(samples: &[(Labels, f64)], stale: &[Labels], at_ms: i64) -> MetricBatch {
    let series = samples
        .iter()
        .map(|(l, v)| (l, *v))
        .chain(stale.iter().map(|l| (l, model::stale_nan())))
        .filter_map(|(labels, value)| match model_labels(labels) {
            Ok(labels) => Some(Series::with_samples(
                labels,
                vec![Sample {
                    timestamp_ms: at_ms,
                    value,
                }],
            )),
            Err(error) => {
                tracing::warn!(%error, "a rule produced an invalid series; dropped");
                None
            }
        })
        .collect();
    MetricBatch {
        series,
        metadata: Vec::new(),
    }
}

/// An alert state transition as a platform event (pending, firing, resolved).
fn event(t: &Transition) -> Option<PlatformEvent> {
    let state = match (t.from, t.to) {
        (_, AlertState::Pending) => EventState::Pending,
        (_, AlertState::Firing) => EventState::Firing,
        (AlertState::Firing, AlertState::Inactive) => EventState::Resolved,
        // A pending alert that went away never fired: nothing was resolved.
        _ => return None,
    };
    let labels = model_labels(&t.labels).ok()?;
    Some(PlatformEvent {
        timestamp_ms: t.at_ms,
        source: "alerting".into(),
        attributes: vec![KeyValue::new(
            "rule_group",
            AnyValue::String(t.group.clone()),
        )],
        kind: EventKind::Alert(AlertEvent {
            alert_name: t.rule.clone(),
            state,
            labels,
            annotations: t.annotations.clone(),
            value: t.value,
            starts_at_ms: t.at_ms,
            ends_at_ms: (state == EventState::Resolved).then_some(t.at_ms),
        }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_aligned_to_the_interval_and_offset() {
        assert_eq!(next_slot(0, 60_000, 5_000), 5_000);
        assert_eq!(next_slot(5_000, 60_000, 5_000), 65_000);
        assert_eq!(next_slot(64_999, 60_000, 5_000), 65_000);
        assert_eq!(next_slot(-1, 1_000, 0), 0);
    }
}
