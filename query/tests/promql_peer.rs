//! Prometheus 2.42's own PromQL engine tests (`../shared/peer-tests/prometheus-2.42-promql`,
//! read in place), run through Meerkat's engine on a real embedded store: each file's
//! `load` blocks are written to the store, each `eval` is evaluated and compared.
//!
//! Each statement that passes as an instant query is also run as a range query around its
//! time, as Prometheus's own runner does, and must give the same result at the middle step.
//!
//! Prints `N passed, M failed`. Statements that cannot pass yet are listed, with the
//! reason, in `tests/promql_peer_known_failures.txt`; the test fails when a statement
//! outside that list fails (a regression) and when a listed one passes (the list is stale).
//! `PROMQL_KNOWN_FAILURES=update cargo test -p query --test promql_peer` rewrites it.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use model::{Labels, MetricBatch, Payload, Sample, Series, TenantId};
use query::promql::notation::{self, Point};
use query::promql::{Engine, Steps, Value, parse};
use storage::embedded::{EmbeddedStore, EmbeddedStoreConfig};
use storage::{BusPosition, Storage};

/// A label set as the tests write it, sorted.
type LabelPairs = Vec<(String, String)>;

/// A `load` block's series: labels and values by step.
type LoadedSeries = (LabelPairs, Vec<Point>);

const KNOWN_FAILURES: &str = "tests/promql_peer_known_failures.txt";

fn peer_tests_dir() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let candidates = [
        std::env::var_os("MEERKAT_PEER_TESTS").map(PathBuf::from),
        Some(manifest.join("../../shared/peer-tests")),
        Some(PathBuf::from("/work/shared/peer-tests")),
    ];
    candidates
        .into_iter()
        .flatten()
        .map(|dir| dir.join("prometheus-2.42-promql"))
        .find(|dir| dir.is_dir())
        .unwrap_or_else(|| {
            panic!(
                "Prometheus's PromQL tests are not at ../shared/peer-tests/prometheus-2.42-promql \
                 beside the repository; set MEERKAT_PEER_TESTS to the peer-tests directory"
            )
        })
}

/// Milliseconds of a Prometheus duration (`5m`, `1h30m`, `10s`, `1ms`).
fn duration_ms(text: &str) -> i64 {
    let mut total = 0i64;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit()).unwrap();
        let n: i64 = rest[..digits].parse().unwrap();
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let unit = match &rest[..unit_len] {
            "ms" => 1,
            "s" => 1000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            "w" => 7 * 86_400_000,
            "y" => 365 * 86_400_000,
            other => panic!("unit {other:?} in {text:?}"),
        };
        total += n * unit;
        rest = &rest[unit_len..];
    }
    total
}

/// The test format's value sequence: `1 2 _ stale 0+10x5 5-1x3 _x2 7x2`.
fn sequence(tokens: &[&str]) -> Vec<Point> {
    notation::values(&tokens.join(" ")).unwrap_or_else(|e| panic!("{e}"))
}

/// The labels of a series description, `metric{a="b"}` or `{__name__="m", a="b"}`.
fn labels_of(text: &str) -> Vec<(String, String)> {
    notation::labels(text).unwrap_or_else(|e| panic!("{e}"))
}

/// Splits a series line into its description and the rest (labels may hold spaces).
fn split_series(line: &str) -> (&str, &str) {
    let line = line.trim();
    match line.find('{') {
        Some(open) if !line[..open].contains(char::is_whitespace) => {
            let close = line.find('}').unwrap();
            (&line[..=close], line[close + 1..].trim())
        }
        _ => line.split_once(char::is_whitespace).unwrap_or((line, "")),
    }
}

#[derive(Debug)]
struct Expected {
    labels: Option<Vec<(String, String)>>,
    values: Vec<f64>,
}

#[derive(Debug)]
struct Eval {
    line: usize,
    fail: bool,
    ordered: bool,
    at_ms: i64,
    expr: String,
    expected: Vec<Expected>,
}

enum Command {
    Load(i64, Vec<LoadedSeries>),
    Clear,
    Eval(Eval),
}

fn commands(text: &str) -> Vec<Command> {
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    let mut i = 0;
    let indented = |l: &str| l.starts_with([' ', '\t']) && !l.trim().is_empty();
    while i < lines.len() {
        let line = lines[i].trim_end();
        i += 1;
        if line.trim().is_empty() || line.trim_start().starts_with('#') {
            continue;
        }
        if let Some(interval) = line.strip_prefix("load ") {
            let mut series = Vec::new();
            while i < lines.len() && indented(lines[i]) {
                let (desc, values) = split_series(lines[i]);
                let tokens: Vec<&str> = values.split_whitespace().collect();
                series.push((labels_of(desc), sequence(&tokens)));
                i += 1;
            }
            out.push(Command::Load(duration_ms(interval.trim()), series));
        } else if line == "clear" {
            out.push(Command::Clear);
        } else if line.starts_with("eval") {
            let (head, expr) = line.split_once(" at ").unwrap();
            let (at, expr) = expr.trim().split_once(char::is_whitespace).unwrap();
            let mut expected = Vec::new();
            let number_of = i;
            while i < lines.len() && indented(lines[i]) {
                let text = lines[i].trim();
                let first = text.split_whitespace().next().unwrap_or("");
                let is_value = first.parse::<f64>().is_ok()
                    || matches!(first, "NaN" | "Inf" | "+Inf" | "-Inf");
                if is_value && !text.contains('{') {
                    let tokens: Vec<&str> = text.split_whitespace().collect();
                    expected.push(Expected {
                        labels: None,
                        values: values_of(&tokens),
                    });
                } else {
                    let (desc, values) = split_series(text);
                    let tokens: Vec<&str> = values.split_whitespace().collect();
                    expected.push(Expected {
                        labels: Some(labels_of(desc)),
                        values: values_of(&tokens),
                    });
                }
                i += 1;
            }
            out.push(Command::Eval(Eval {
                line: number_of,
                fail: head.starts_with("eval_fail"),
                ordered: head.starts_with("eval_ordered"),
                at_ms: duration_ms(at),
                expr: expr.trim().to_owned(),
                expected,
            }));
        } else {
            panic!("unknown command at line {i}: {line}");
        }
    }
    out
}

fn values_of(tokens: &[&str]) -> Vec<f64> {
    sequence(tokens)
        .into_iter()
        .filter_map(|p| match p {
            Point::Value(v) => Some(v),
            _ => None,
        })
        .collect()
}

fn close(expected: f64, got: f64) -> bool {
    if expected.is_nan() || got.is_nan() {
        return expected.is_nan() && got.is_nan();
    }
    if expected == got {
        return true;
    }
    let diff = (expected - got).abs();
    diff <= 1e-6 * expected.abs().max(got.abs()) || diff < 1e-12
}

/// Why the result differs from what the test expects, if it does.
fn mismatch(eval: &Eval, value: &Value) -> Option<String> {
    let got: Vec<(Option<LabelPairs>, Vec<f64>)> = match value {
        Value::Scalar(values) => vec![(None, vec![values[0]])],
        Value::String(s) => return Some(format!("got the string {s:?}")),
        Value::Vector(series) => series
            .iter()
            .filter_map(|s| s.points[0].map(|v| (Some(s.labels.clone()), vec![v])))
            .collect(),
        Value::Matrix(series) => series
            .iter()
            .map(|s| {
                (
                    Some(s.labels.clone()),
                    s.samples.iter().map(|(_, v)| *v).collect(),
                )
            })
            .collect(),
    };
    if got.len() != eval.expected.len() {
        return Some(format!(
            "expected {} elements, got {}: {got:?}",
            eval.expected.len(),
            got.len()
        ));
    }
    for (position, expected) in eval.expected.iter().enumerate() {
        let found = if eval.ordered {
            got.get(position).filter(|g| g.0 == expected.labels)
        } else {
            got.iter().find(|g| g.0 == expected.labels)
        };
        let Some((_, values)) = found else {
            return Some(format!("{:?} missing from {got:?}", expected.labels));
        };
        let equal = values.len() == expected.values.len()
            && values
                .iter()
                .zip(&expected.values)
                .all(|(g, e)| close(*e, *g));
        if !equal {
            return Some(format!(
                "{:?}: expected {:?}, got {values:?}",
                expected.labels, expected.values
            ));
        }
    }
    None
}

/// Evaluates `eval` as a range query around its time and compares the middle step.
async fn range_mismatch(engine: &Engine, tenant: &TenantId, eval: &Eval) -> Option<String> {
    let steps = Steps {
        start_ms: eval.at_ms - 60_000,
        end_ms: eval.at_ms + 60_000,
        step_ms: 60_000,
    };
    let expr = Arc::new(parse(&eval.expr).ok()?);
    let value = match engine.evaluate(tenant, expr, steps).await {
        Ok(value) => value,
        Err(e) => return Some(format!("in range mode: error: {e}")),
    };
    // The middle step as an instant result.
    let middle = match value {
        Value::Scalar(values) => Value::Scalar(vec![values[1]]),
        Value::Vector(series) => Value::Vector(
            series
                .into_iter()
                .filter_map(|s| {
                    s.points[1].map(|v| query::promql::Series::floats(s.labels, vec![Some(v)]))
                })
                .collect(),
        ),
        other => return Some(format!("in range mode: a {}", other.type_name())),
    };
    mismatch(eval, &middle).map(|why| format!("in range mode: {why}"))
}

async fn load(store: &EmbeddedStore, interval: i64, series: &[LoadedSeries]) {
    let batch = series
        .iter()
        .map(|(labels, points)| {
            let samples = points
                .iter()
                .enumerate()
                .filter_map(|(i, p)| {
                    let value = match p {
                        Point::Value(v) => *v,
                        Point::Stale => model::stale_nan(),
                        Point::Blank => return None,
                    };
                    Some(Sample {
                        timestamp_ms: i as i64 * interval,
                        value,
                    })
                })
                .collect();
            Series::with_samples(
                Labels::new(labels.iter().map(|(n, v)| (n.as_str(), v.as_str()))).unwrap(),
                samples,
            )
        })
        .collect();
    let payload = Payload::Metrics(MetricBatch {
        series: batch,
        metadata: vec![],
    });
    let at = BusPosition {
        topic: "metrics".into(),
        partition: 0,
        offset: 0,
    };
    store
        .write(&TenantId::default_tenant(), payload, &at)
        .await
        .unwrap();
}

#[tokio::test]
async fn prometheus_promql_engine_tests() {
    let dir = peer_tests_dir();
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "test"))
        .collect();
    files.sort();
    let tenant = TenantId::default_tenant();
    let mut failures: BTreeMap<String, String> = BTreeMap::new();
    let mut passed = 0;
    for file in &files {
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        let text = std::fs::read_to_string(file).unwrap();
        let mut data = tempfile::TempDir::new().unwrap();
        let mut store =
            Arc::new(EmbeddedStore::open(data.path(), EmbeddedStoreConfig::default()).unwrap());
        for command in commands(&text) {
            match command {
                Command::Clear => {
                    data = tempfile::TempDir::new().unwrap();
                    store = Arc::new(
                        EmbeddedStore::open(data.path(), EmbeddedStoreConfig::default()).unwrap(),
                    );
                }
                Command::Load(interval, series) => load(&store, interval, &series).await,
                Command::Eval(eval) => {
                    let engine = Engine::new(store.clone());
                    let result = match parse(&eval.expr) {
                        Ok(expr) => {
                            engine
                                .evaluate(&tenant, Arc::new(expr), Steps::instant(eval.at_ms))
                                .await
                        }
                        Err(e) => Err(e),
                    };
                    let problem = match (&result, eval.fail) {
                        (Err(_), true) => None,
                        (Ok(_), true) => Some("expected an error, got a result".to_owned()),
                        (Err(e), false) => Some(format!("error: {e}")),
                        (Ok(value), false) => match mismatch(&eval, value) {
                            // As Prometheus's runner does: the same statement as a range
                            // query (a minute either side, 1m step) must give the same
                            // result at its middle step.
                            None if !eval.ordered && !matches!(value, Value::Matrix(_)) => {
                                range_mismatch(&engine, &tenant, &eval).await
                            }
                            other => other,
                        },
                    };
                    match problem {
                        None => passed += 1,
                        Some(reason) => {
                            let reason: String = reason.chars().take(160).collect();
                            failures.insert(
                                format!("{name}:{}", eval.line),
                                format!("{} -- {}", eval.expr, reason.replace('\n', " ")),
                            );
                        }
                    }
                }
            }
        }
    }
    println!("{passed} passed, {} failed", failures.len());

    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(KNOWN_FAILURES);
    if std::env::var("PROMQL_KNOWN_FAILURES").as_deref() == Ok("update") {
        let mut text = String::from(
            "# Prometheus 2.42 PromQL engine tests that Meerkat's engine does not pass yet:\n\
             # <file>:<line of the eval> <expression> -- <why>. Rewritten by\n\
             # PROMQL_KNOWN_FAILURES=update cargo test -p query --test promql_peer\n",
        );
        for (at, why) in &failures {
            text.push_str(&format!("{at} {why}\n"));
        }
        std::fs::write(&path, text).unwrap();
        return;
    }
    let known: BTreeMap<String, ()> = std::fs::read_to_string(&path)
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| l.split_whitespace().next().map(|k| (k.to_owned(), ())))
        .collect();
    let regressions: Vec<String> = failures
        .iter()
        .filter(|(at, _)| !known.contains_key(*at))
        .map(|(at, why)| format!("{at} {why}"))
        .collect();
    let now_passing: Vec<&String> = known
        .keys()
        .filter(|k| !failures.contains_key(*k))
        .collect();
    assert!(
        regressions.is_empty(),
        "{} statements fail that are not in {KNOWN_FAILURES}:\n{}",
        regressions.len(),
        regressions.join("\n")
    );
    assert!(
        now_passing.is_empty(),
        "these pass now; remove them from {KNOWN_FAILURES}: {now_passing:?}"
    );
}
