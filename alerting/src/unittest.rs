//! `meerkat rules test`: rule unit tests in `promtool test rules`'s file format, run as
//! Prometheus 2.42's promtool runs them (`cmd/promtool/unittest.go`).
//!
//! Each test group loads its `input_series` into a fresh embedded store, evaluates every
//! rule group from time 0 to the largest `eval_time` in steps of `evaluation_interval`
//! (writing recording rules' results and `ALERTS` back, as Prometheus does), compares the
//! firing alerts at each `alert_rule_test` time, then runs each `promql_expr_test` query.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use model::{MetricBatch, Payload, Sample, Series, TenantId};
use query::promql::notation::{self, Point};
use serde::Deserialize;
use storage::embedded::{EmbeddedStore, EmbeddedStoreConfig};
use storage::{BusPosition, Storage};

use crate::expand::QuerySample;
use crate::querier::EngineQuerier;
use crate::rules::{AlertState, EvalSettings, Labels, Querier, RuleWriter, model_labels};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TestFile {
    #[serde(default)]
    rule_files: Vec<String>,
    #[serde(default)]
    evaluation_interval: Option<String>,
    #[serde(default)]
    group_eval_order: Vec<String>,
    #[serde(default)]
    tests: Vec<TestGroup>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct TestGroup {
    #[serde(default)]
    interval: Option<String>,
    #[serde(default)]
    input_series: Vec<InputSeries>,
    #[serde(default)]
    alert_rule_test: Vec<AlertTest>,
    #[serde(default)]
    promql_expr_test: Vec<ExprTest>,
    #[serde(default)]
    external_labels: BTreeMap<String, String>,
    #[serde(default)]
    external_url: String,
    #[serde(default, rename = "name")]
    test_group_name: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct InputSeries {
    series: String,
    /// Read as written: `0x10` is "0 ten times", not YAML's hexadecimal 16.
    values: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AlertTest {
    #[serde(default, deserialize_with = "scalar_text")]
    eval_time: String,
    #[serde(default)]
    alertname: String,
    #[serde(default)]
    exp_alerts: Vec<ExpectedAlert>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ExpectedAlert {
    #[serde(default)]
    exp_labels: BTreeMap<String, String>,
    #[serde(default)]
    exp_annotations: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ExprTest {
    expr: String,
    #[serde(default, deserialize_with = "scalar_text")]
    eval_time: String,
    #[serde(default)]
    exp_samples: Vec<ExpectedSample>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ExpectedSample {
    #[serde(default)]
    labels: String,
    value: f64,
}

/// A YAML scalar as text: `values: 1` and `eval_time: 0` are numbers to YAML.
fn scalar_text<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    Ok(crate::rulefmt::Scalar::deserialize(d)?.0)
}

/// Milliseconds of a test file's duration (`0` and bare numbers are accepted as promtool's
/// `model.Duration` does for `0`).
fn duration_ms(text: &str) -> Result<i64, String> {
    if text.is_empty() {
        return Ok(0);
    }
    crate::rulefmt::parse_duration(text).map(|ms| ms as i64)
}

/// Runs one test file; `Err` holds every failure, formatted as promtool prints them.
pub async fn run_file(path: &Path) -> Result<(), Vec<String>> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| vec![format!("{}: cannot read the file: {e}", path.display())])?;
    let file: TestFile = serde_saphyr::from_str(&text)
        .map_err(|e| vec![format!("{}: {}", path.display(), e.without_snippet())])?;
    let dir = path.parent().unwrap_or(Path::new("."));
    let eval_interval_ms = match &file.evaluation_interval {
        Some(text) => duration_ms(text).map_err(|e| vec![e])?,
        None => 0,
    };
    let eval_interval_ms = if eval_interval_ms > 0 {
        eval_interval_ms
    } else {
        60_000
    };
    let mut order = HashMap::new();
    for (i, name) in file.group_eval_order.iter().enumerate() {
        if order.insert(name.clone(), i).is_some() {
            return Err(vec![format!(
                "group name repeated in evaluation order: {name}"
            )]);
        }
    }
    let rule_files = resolve(dir, &file.rule_files).map_err(|e| vec![e])?;
    let mut errors = Vec::new();
    for group in &file.tests {
        errors.extend(run_group(group, eval_interval_ms, &order, &rule_files).await);
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}

/// Rule file names relative to the test file, globs expanded.
fn resolve(dir: &Path, names: &[String]) -> Result<Vec<PathBuf>, String> {
    let mut out = Vec::new();
    for name in names {
        let path = dir.join(name);
        let pattern = path.to_string_lossy().into_owned();
        if pattern.contains(['*', '?', '[']) {
            let matched = crate::files::glob(&pattern)?;
            out.extend(matched);
        } else {
            out.push(path);
        }
    }
    Ok(out)
}

async fn run_group(
    test: &TestGroup,
    eval_interval_ms: i64,
    order: &HashMap<String, usize>,
    rule_files: &[PathBuf],
) -> Vec<String> {
    let in_group = if test.test_group_name.is_empty() {
        String::new()
    } else {
        format!(" (in TestGroup {})", test.test_group_name)
    };
    let interval_ms = match test.interval.as_deref().map(duration_ms) {
        Some(Ok(ms)) if ms > 0 => ms,
        Some(Err(e)) => return vec![e],
        _ => eval_interval_ms,
    };
    let mut groups = Vec::new();
    let mut load_errors = Vec::new();
    for file in rule_files {
        match crate::files::load_file(file, interval_ms) {
            Ok(loaded) => groups.extend(loaded),
            Err(errors) => load_errors.extend(errors.iter().map(ToString::to_string)),
        }
    }
    if !load_errors.is_empty() {
        return load_errors;
    }
    // Groups in `group_eval_order` first, in that order; the rest as loaded.
    groups.sort_by_key(|g| order.get(&g.name).copied().unwrap_or(usize::MAX));

    let data = match tempfile::TempDir::new() {
        Ok(d) => d,
        Err(e) => return vec![format!("cannot create a temporary directory: {e}")],
    };
    let config = EmbeddedStoreConfig {
        read_cache_bytes: 0,
        ..EmbeddedStoreConfig::default()
    };
    let store: Arc<dyn Storage> = match EmbeddedStore::open(data.path(), config) {
        Ok(s) => Arc::new(s),
        Err(e) => return vec![format!("cannot open a test store: {e}")],
    };
    let tenant = TenantId::default_tenant();
    let mut input = Vec::new();
    for series in &test.input_series {
        let parsed = notation::labels(&series.series)
            .and_then(|labels| Ok((labels, notation::values(&series.values)?)));
        match parsed {
            Ok(s) => input.push(s),
            Err(e) => return vec![format!("    series {:?}: {e}", series.series)],
        }
    }
    let writer = Writer {
        store: store.clone(),
        tenant: tenant.clone(),
        offset: std::sync::atomic::AtomicU64::new(0),
    };
    let samples: Vec<(Labels, Vec<(i64, f64)>)> = input
        .into_iter()
        .map(|(labels, points)| {
            let samples = points
                .into_iter()
                .enumerate()
                .filter_map(|(i, p)| match p {
                    Point::Value(v) => Some((i as i64 * interval_ms, v)),
                    Point::Stale => Some((i as i64 * interval_ms, model::stale_nan())),
                    Point::Blank => None,
                })
                .collect();
            (labels.into_iter().collect(), samples)
        })
        .collect();
    if let Err(e) = writer.write_input(samples).await {
        return vec![e];
    }

    let querier: Arc<dyn Querier> = Arc::new(EngineQuerier::new(store.clone(), tenant));
    let settings = EvalSettings {
        external_labels: test.external_labels.clone(),
        external_url: test.external_url.clone(),
        ..EvalSettings::default()
    };

    let mut alert_times: Vec<i64> = Vec::new();
    let mut alert_tests: BTreeMap<i64, Vec<&AlertTest>> = BTreeMap::new();
    for alert in &test.alert_rule_test {
        if alert.alertname.is_empty() {
            return vec![format!(
                "an item under alert_rule_test misses required attribute alertname at eval_time {}{in_group}",
                alert.eval_time
            )];
        }
        let at = match duration_ms(&alert.eval_time) {
            Ok(ms) => ms,
            Err(e) => return vec![e],
        };
        alert_times.push(at);
        alert_tests.entry(at).or_default().push(alert);
    }
    alert_times.sort_unstable();
    alert_times.dedup();
    let mut expr_times = Vec::new();
    for expr in &test.promql_expr_test {
        match duration_ms(&expr.eval_time) {
            Ok(ms) => expr_times.push(ms),
            Err(e) => return vec![e],
        }
    }
    let max_time = alert_times
        .iter()
        .chain(&expr_times)
        .copied()
        .max()
        .unwrap_or(0);

    let mut errors = Vec::new();
    let mut next_alert = 0;
    let mut ts = 0;
    while ts <= max_time {
        let mut eval_errors = Vec::new();
        for group in &mut groups {
            // Each rule's results are in the store before the next rule runs.
            group
                .eval_committing(ts, &querier, &settings, Some(&writer))
                .await;
            for rule in &group.rules {
                if let Some(error) = &rule.status().last_error {
                    eval_errors.push(format!(
                        "    rule: {}, time: {}, err: {error}",
                        rule.name(),
                        go_duration(ts)
                    ));
                }
            }
        }
        errors.extend(eval_errors.iter().cloned());
        if !eval_errors.is_empty() {
            return errors;
        }
        while next_alert < alert_times.len()
            && ts <= alert_times[next_alert]
            && alert_times[next_alert] < ts + eval_interval_ms
        {
            let at = alert_times[next_alert];
            for case in &alert_tests[&at] {
                let mut got: Vec<(Labels, Labels)> = Vec::new();
                for group in &groups {
                    for rule in &group.rules {
                        if let crate::rules::Rule::Alerting(rule) = rule
                            && rule.name == case.alertname
                        {
                            got.extend(
                                rule.active
                                    .values()
                                    .filter(|a| a.state == AlertState::Firing)
                                    .map(|a| (a.labels.clone(), a.annotations.clone())),
                            );
                        }
                    }
                }
                let mut expected: Vec<(Labels, Labels)> = case
                    .exp_alerts
                    .iter()
                    .map(|a| {
                        let mut labels = a.exp_labels.clone();
                        labels.insert("alertname".into(), case.alertname.clone());
                        (labels, a.exp_annotations.clone())
                    })
                    .collect();
                got.sort();
                expected.sort();
                if got != expected {
                    errors.push(format!(
                        "    alertname: {}, time: {}, \n        exp:{}, \n        got:{}",
                        case.alertname,
                        go_duration(at),
                        alerts_text(&expected),
                        alerts_text(&got)
                    ));
                }
            }
            next_alert += 1;
        }
        ts += eval_interval_ms;
    }

    for (case, at) in test.promql_expr_test.iter().zip(expr_times) {
        let got = match query_at(&querier, &case.expr, at).await {
            Ok(got) => got,
            Err(e) => {
                errors.push(format!(
                    "    expr: {:?}, time: {}, err: {e}",
                    case.expr,
                    go_duration(at)
                ));
                continue;
            }
        };
        let mut expected = Vec::new();
        let mut bad_labels = None;
        for sample in &case.exp_samples {
            match expected_labels(&sample.labels) {
                Ok(labels) => expected.push((labels, sample.value)),
                Err(e) => {
                    bad_labels = Some(format!("labels {:?}: {e}", sample.labels));
                    break;
                }
            }
        }
        if let Some(e) = bad_labels {
            errors.push(format!(
                "    expr: {:?}, time: {}, err: {e}",
                case.expr,
                go_duration(at)
            ));
            continue;
        }
        let mut got: Vec<(Labels, f64)> = got.into_iter().map(|s| (s.labels, s.value)).collect();
        got.sort_by(|a, b| a.0.cmp(&b.0));
        expected.sort_by(|a, b| a.0.cmp(&b.0));
        let same = got.len() == expected.len()
            && got
                .iter()
                .zip(&expected)
                .all(|(g, e)| g.0 == e.0 && (g.1 == e.1 || (g.1.is_nan() && e.1.is_nan())));
        if !same {
            errors.push(format!(
                "    expr: {:?}, time: {},\n        exp: {}\n        got: {}",
                case.expr,
                go_duration(at),
                samples_text(&expected),
                samples_text(&got)
            ));
        }
    }
    drop(data);
    if !test.test_group_name.is_empty() {
        for error in &mut errors {
            *error = format!("    name: {},\n{error}", test.test_group_name);
        }
    }
    errors
}

async fn query_at(
    querier: &Arc<dyn Querier>,
    text: &str,
    at: i64,
) -> Result<Vec<QuerySample>, String> {
    let expr = query::promql::parse(text).map_err(|e| e.to_string())?;
    querier.instant(Arc::new(expr), at).await
}

/// An `exp_samples` label set: a series description, or empty for a scalar's.
fn expected_labels(text: &str) -> Result<Labels, String> {
    if text.trim().is_empty() {
        return Ok(Labels::new());
    }
    Ok(notation::labels(text)?.into_iter().collect())
}

/// Writes samples into the test store, each write a new record.
struct Writer {
    store: Arc<dyn Storage>,
    tenant: TenantId,
    offset: std::sync::atomic::AtomicU64,
}

impl Writer {
    /// The input series, each with its samples.
    async fn write_input(&self, series: Vec<(Labels, Vec<(i64, f64)>)>) -> Result<(), String> {
        let mut batch = Vec::with_capacity(series.len());
        for (labels, samples) in series {
            let labels = model_labels(&labels).map_err(|e| format!("series {labels:?}: {e}"))?;
            let samples = samples
                .into_iter()
                .map(|(timestamp_ms, value)| Sample {
                    timestamp_ms,
                    value,
                })
                .collect();
            batch.push(Series::with_samples(labels, samples));
        }
        self.write_batch(MetricBatch {
            series: batch,
            metadata: vec![],
        })
        .await
    }

    async fn write_batch(&self, batch: MetricBatch) -> Result<(), String> {
        if batch.series.is_empty() {
            return Ok(());
        }
        let at = BusPosition {
            topic: "metrics".into(),
            partition: 0,
            offset: self
                .offset
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        };
        self.store
            .write(&self.tenant, Payload::Metrics(batch), &at)
            .await
            .map(|_| ())
            .map_err(|e| format!("cannot write to the test store: {e}"))
    }
}

#[async_trait::async_trait]
impl RuleWriter for Writer {
    async fn write(
        &self,
        samples: &[(Labels, f64)],
        stale: &[Labels],
        at_ms: i64,
    ) -> Result<(), String> {
        self.write_batch(crate::manager::metric_batch(samples, stale, at_ms))
            .await
    }
}

/// Prometheus's `labels.Labels.String()`: `{a="b", c="d"}`, `__name__` among them.
fn labels_text(labels: &Labels) -> String {
    let parts: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v:?}")).collect();
    format!("{{{}}}", parts.join(", "))
}

fn alerts_text(alerts: &[(Labels, Labels)]) -> String {
    let parts: Vec<String> = alerts
        .iter()
        .enumerate()
        .map(|(i, (l, a))| {
            format!(
                "{i}:\n          Labels:{}\n          Annotations:{}",
                labels_text(l),
                labels_text(a)
            )
        })
        .collect();
    if parts.is_empty() {
        "[]".into()
    } else {
        format!("[\n        {}\n        ]", parts.join("\n        "))
    }
}

fn samples_text(samples: &[(Labels, f64)]) -> String {
    let parts: Vec<String> = samples
        .iter()
        .map(|(l, v)| format!("{} {}", labels_text(l), go_upper_exp(*v)))
        .collect();
    parts.join(", ")
}

/// The shortest `%E` form (`1E+00`, `2.5E-01`), as promtool prints sample values.
fn go_upper_exp(v: f64) -> String {
    if !v.is_finite() {
        return format!("{v}");
    }
    let text = format!("{v:E}");
    let (mantissa, exp) = text.split_once('E').unwrap_or((&text, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    format!(
        "{mantissa}E{}{:02}",
        if exp < 0 { '-' } else { '+' },
        exp.abs()
    )
}

/// Go's `time.Duration` printing (`1m0s`, `2m59.999s`, `0s`), as promtool's messages use.
fn go_duration(ms: i64) -> String {
    if ms == 0 {
        return "0s".into();
    }
    let sign = if ms < 0 { "-" } else { "" };
    let ms = ms.unsigned_abs();
    let (hours, minutes) = (ms / 3_600_000, (ms / 60_000) % 60);
    let seconds = (ms % 60_000) as f64 / 1000.0;
    let mut out = sign.to_owned();
    if hours > 0 {
        out.push_str(&format!("{hours}h"));
    }
    if hours > 0 || minutes > 0 {
        out.push_str(&format!("{minutes}m"));
    }
    out.push_str(&format!("{seconds}s"));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_print_as_go_prints_them() {
        assert_eq!(go_duration(0), "0s");
        assert_eq!(go_duration(60_000), "1m0s");
        assert_eq!(go_duration(179_999), "2m59.999s");
        assert_eq!(go_duration(86_400_000), "24h0m0s");
    }
}
