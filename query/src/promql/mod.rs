//! PromQL, evaluated as Prometheus 2.42 does, over any [`Storage`].
//!
//! Expressions are parsed with the `promql-parser` crate. Evaluation has two phases, as
//! Prometheus's engine has: every selector's series are fetched first (`Storage::select`
//! with its matchers and the time range the expression needs, so selection is pushed into
//! storage), then the expression is evaluated at every step of the query at once,
//! synchronously, on those series.
//!
//! Semantics followed: 5-minute lookback, staleness markers end a series, `offset` and `@`
//! (`start()`/`end()` too), matrix selectors inclusive at both ends (2.42's rule), vector
//! matching with `on`/`ignoring`/`group_left`/`group_right`/`bool`, `__name__` dropped by
//! arithmetic, comparisons with `bool`, and functions that change values.

mod eval;
mod functions;
pub mod notation;
pub mod value;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use model::TenantId;
use promql_parser::label::MatchOp;
use promql_parser::parser::{self, AtModifier, Expr, Offset, VectorSelector};
use storage::{MatchOp as StoreOp, Matcher, Storage};
use thiserror::Error;

pub use self::value::{Histogram, LabelSet, RangeSeries, Series, Value};

/// Prometheus's default lookback: an instant selector takes the newest sample at most this
/// old.
pub const LOOKBACK_MS: i64 = 5 * 60 * 1000;

/// The most steps one evaluation (a query, or a subquery inside it) may have.
pub const MAX_STEPS: i128 = 1_000_000;

#[derive(Debug, Error, PartialEq)]
pub enum EvalError {
    /// The query does not parse or is not valid PromQL (`bad_data`).
    #[error("{0}")]
    Parse(String),
    /// The query is valid but cannot be evaluated (`execution`).
    #[error("{0}")]
    Execution(String),
    /// Storage failed.
    #[error("{0}")]
    Storage(String),
    /// Nobody waits for the answer any more (`canceled`): the client went away.
    #[error("query was canceled")]
    Canceled,
}

/// The steps of a query: `start`, `start + step`, … up to `end` (milliseconds).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Steps {
    pub start_ms: i64,
    pub end_ms: i64,
    pub step_ms: i64,
}

impl Steps {
    pub fn instant(at_ms: i64) -> Self {
        Self {
            start_ms: at_ms,
            end_ms: at_ms,
            step_ms: 1,
        }
    }

    /// The step times; an error past [`MAX_STEPS`] (a subquery of `[30d:1ms]`, say), which
    /// would take more memory than any answer is worth.
    pub fn times(&self) -> Result<Vec<i64>, EvalError> {
        if self.end_ms < self.start_ms {
            return Ok(Vec::new());
        }
        let step = i128::from(self.step_ms.max(1));
        let count = (i128::from(self.end_ms) - i128::from(self.start_ms)) / step + 1;
        if count > MAX_STEPS {
            return Err(EvalError::Execution(format!(
                "query processing would evaluate {count} steps, more than the {MAX_STEPS} \
                 allowed: use a larger step"
            )));
        }
        Ok((0..count)
            .map(|i| (i128::from(self.start_ms) + i * step) as i64)
            .collect())
    }
}

/// Prometheus 3's name for 2.42's `holt_winters`, which the parser knows.
const NEW_NAME: &str = "double_exponential_smoothing";

/// Parses `query` as PromQL 2.42. The parser follows Prometheus 3, where 2.42's
/// `holt_winters` is named `double_exponential_smoothing`.
pub fn parse(query: &str) -> Result<Expr, EvalError> {
    if rename_function(query, NEW_NAME, "_") != query {
        return Err(EvalError::Parse(format!(
            "unknown function with name \"{NEW_NAME}\" (Prometheus 2.42 calls it holt_winters)"
        )));
    }
    let renamed = rename_function(query, "holt_winters", NEW_NAME);
    parser::parse(&renamed).map_err(EvalError::Parse)
}

/// Every series selector in `expr`, each once.
pub fn selectors(expr: &Expr) -> Vec<&VectorSelector> {
    let mut found = Vec::new();
    eval::selections(expr, 0, 0, &Steps::instant(0), &mut found);
    let mut out: Vec<&VectorSelector> = Vec::new();
    for (selector, _, _) in found {
        if !out.iter().any(|s| std::ptr::eq(*s, selector)) {
            out.push(selector);
        }
    }
    out
}

/// `expr` as Prometheus's formatter prints it, with 2.42's function names.
pub fn pretty(expr: &Expr) -> String {
    rename_function(&expr.prettify(), NEW_NAME, "holt_winters")
}

/// `expr` on one line, as Prometheus's `Expr.String()` prints it (rule queries in the rules
/// API and alerts' generator URLs), with 2.42's function names.
pub fn display(expr: &Expr) -> String {
    rename_function(&expr.to_string(), NEW_NAME, "holt_winters")
}

/// `query` with calls of the function `from` renamed `to` (outside string literals and
/// `#` comments; backquoted strings take no escapes).
fn rename_function(query: &str, from: &str, to: &str) -> String {
    let mut out = String::with_capacity(query.len());
    let mut quote: Option<char> = None;
    let mut rest = query;
    while let Some(c) = rest.chars().next() {
        match quote {
            Some(q) => {
                if c == '\\' && q != '`' {
                    let escaped: String = rest.chars().take(2).collect();
                    out.push_str(&escaped);
                    rest = &rest[escaped.len()..];
                    continue;
                }
                if c == q {
                    quote = None;
                }
            }
            None if c == '"' || c == '\'' || c == '`' => quote = Some(c),
            None if c == '#' => {
                let comment = rest.find('\n').unwrap_or(rest.len());
                out.push_str(&rest[..comment]);
                rest = &rest[comment..];
                continue;
            }
            None if rest.starts_with(from)
                && !out.ends_with(|p: char| p.is_alphanumeric() || p == '_')
                && rest[from.len()..].trim_start().starts_with('(') =>
            {
                out.push_str(to);
                rest = &rest[from.len()..];
                continue;
            }
            None => {}
        }
        out.push(c);
        rest = &rest[c.len_utf8()..];
    }
    out
}

/// Series fetched for the selectors of one query, by the selector's address (an identity
/// while the parsed expression is borrowed, and `Send`, unlike a pointer).
pub(crate) type Fetched = HashMap<usize, Vec<RangeSeries>>;

/// The key of a selector in [`Fetched`].
pub(crate) fn selector_key(selector: &VectorSelector) -> usize {
    selector as *const VectorSelector as usize
}

/// How much one query may select and hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub max_series: u64,
    pub max_samples: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_series: 500_000,
            max_samples: 50_000_000,
        }
    }
}

/// Evaluates PromQL over a store.
#[derive(Clone, Debug)]
pub struct Engine {
    store: Arc<dyn Storage>,
    limits: Limits,
}

impl Engine {
    pub fn new(store: Arc<dyn Storage>) -> Self {
        Self {
            store,
            limits: Limits::default(),
        }
    }

    pub fn with_limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// Evaluates `expr` for `tenant` at every step of `steps`. The evaluation itself is
    /// CPU work and runs on a blocking thread, off the async workers; if the returned future
    /// is dropped (a timeout, a client gone), the evaluation stops at its next expression.
    pub async fn evaluate(
        &self,
        tenant: &TenantId,
        expr: Arc<Expr>,
        steps: Steps,
    ) -> Result<Value, EvalError> {
        let mut wanted = Vec::new();
        eval::selections(&expr, steps.start_ms, steps.end_ms, &steps, &mut wanted);
        let mut fetched: Fetched = HashMap::new();
        let step_count = steps.times()?.len() as u64;
        let (mut series_count, mut sample_count) = (0u64, 0u64);
        // Each selector node is listed once, with the one range it needs.
        let too_many_series = || {
            EvalError::Execution(format!(
                "the query selects more than {} series (query.max_series); narrow its selectors",
                self.limits.max_series
            ))
        };
        for (selector, start_ms, end_ms) in wanted {
            // The index says how many series a selector has before any sample is read (an
            // upper bound: some may have no samples in the range).
            let matchers = store_matchers(selector)?;
            let matching = self
                .store
                .series_count(tenant, &matchers)
                .await
                .map_err(|e| EvalError::Storage(e.to_string()))?;
            if series_count + matching > self.limits.max_series {
                return Err(too_many_series());
            }
            let series = self.fetch(tenant, &matchers, start_ms, end_ms).await?;
            series_count += series.len() as u64;
            if series_count > self.limits.max_series {
                return Err(too_many_series());
            }
            // The samples read, and the points each series takes at every step.
            sample_count += series
                .iter()
                .map(|s| (s.samples.len() + s.histograms.len()) as u64 + step_count)
                .sum::<u64>();
            if sample_count > self.limits.max_samples {
                return Err(EvalError::Execution(format!(
                    "query processing would load too many samples into memory in query \
                     execution (more than {}, query.max_samples)",
                    self.limits.max_samples
                )));
            }
            fetched.insert(selector_key(selector), series);
        }
        let cancelled = Arc::new(AtomicBool::new(false));
        let _cancel_on_drop = CancelOnDrop(cancelled.clone());
        // `expr` stays where it is on the heap, so the selectors' keys stay valid.
        tokio::task::spawn_blocking(move || {
            eval::Evaluator::new(&fetched, steps)?
                .with_cancel(cancelled)
                .eval_top(&expr)
        })
        .await
        .map_err(|e| EvalError::Execution(format!("evaluation failed: {e}")))?
    }

    async fn fetch(
        &self,
        tenant: &TenantId,
        matchers: &[Matcher],
        start_ms: i64,
        end_ms: i64,
    ) -> Result<Vec<RangeSeries>, EvalError> {
        let series = self
            .store
            .select(tenant, matchers, start_ms, end_ms)
            .await
            .map_err(|e| EvalError::Storage(e.to_string()))?;
        Ok(series
            .into_iter()
            .map(|s| RangeSeries {
                labels: s
                    .labels
                    .iter()
                    .map(|l| (l.name.to_owned(), l.value.to_owned()))
                    .collect(),
                // Same layout: collected in place, not copied.
                samples: s
                    .samples
                    .into_iter()
                    .map(|x| (x.timestamp_ms, x.value))
                    .collect(),
                histograms: s
                    .histograms
                    .into_iter()
                    .map(|h| (h.timestamp_ms, Arc::new(h.histogram)))
                    .collect(),
            })
            .collect())
    }
}

/// Sets its flag when dropped: tells a running evaluation nobody waits for it any more.
struct CancelOnDrop(Arc<AtomicBool>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// The selector's matchers as storage takes them; the metric name is one of them.
pub(crate) fn store_matchers(selector: &VectorSelector) -> Result<Vec<Matcher>, EvalError> {
    if !selector.matchers.or_matchers.is_empty() {
        return Err(EvalError::Parse(
            "`or` inside a selector is not PromQL 2.42".into(),
        ));
    }
    let mut out = Vec::new();
    if let Some(name) = &selector.name
        && !selector
            .matchers
            .matchers
            .iter()
            .any(|m| m.name == value::METRIC_NAME)
    {
        out.push(
            Matcher::new(value::METRIC_NAME, StoreOp::Equal, name.clone())
                .map_err(|e| EvalError::Parse(e.to_string()))?,
        );
    }
    for matcher in &selector.matchers.matchers {
        let op = match &matcher.op {
            MatchOp::Equal => StoreOp::Equal,
            MatchOp::NotEqual => StoreOp::NotEqual,
            MatchOp::Re(_) => StoreOp::Regex,
            MatchOp::NotRe(_) => StoreOp::NotRegex,
        };
        out.push(
            Matcher::new(matcher.name.clone(), op, matcher.value.clone())
                .map_err(|e| EvalError::Parse(e.to_string()))?,
        );
    }
    Ok(out)
}

/// Milliseconds of a duration.
pub(crate) fn millis(duration: &Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

/// An offset in milliseconds (negative offsets look ahead).
pub(crate) fn offset_ms(offset: &Option<Offset>) -> i64 {
    match offset {
        None => 0,
        Some(Offset::Pos(d)) => millis(d),
        Some(Offset::Neg(d)) => -millis(d),
    }
}

/// The time an `@` modifier pins evaluation to, if any.
pub(crate) fn at_ms(at: &Option<AtModifier>, steps: &Steps) -> Option<i64> {
    match at {
        None => None,
        Some(AtModifier::Start) => Some(steps.start_ms),
        Some(AtModifier::End) => Some(steps.end_ms),
        Some(AtModifier::At(time)) => Some(system_time_ms(time)),
    }
}

fn system_time_ms(time: &SystemTime) -> i64 {
    match time.duration_since(UNIX_EPOCH) {
        Ok(after) => millis(&after),
        Err(before) => -millis(&before.duration()),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn holt_winters_is_renamed_only_where_it_is_a_call() {
        let renamed = |q| rename_function(q, "holt_winters", "des");
        assert_eq!(
            renamed("holt_winters(x[5m], 0.5, 0.5)"),
            "des(x[5m], 0.5, 0.5)"
        );
        assert_eq!(renamed("holt_winters (x)"), "des (x)");
        assert_eq!(
            renamed(r#"x{a="holt_winters(\"x"} + holt_winters(y)"#),
            r#"x{a="holt_winters(\"x"} + des(y)"#
        );
        assert_eq!(renamed(r"x{a=`\` + holt_winters(y)"), r"x{a=`\` + des(y)");
        assert_eq!(renamed("my_holt_winters(x)"), "my_holt_winters(x)");
        assert_eq!(
            renamed("x # holt_winters(y)\n+ holt_winters(z)"),
            "x # holt_winters(y)\n+ des(z)"
        );
    }

    #[test]
    fn the_3x_name_is_not_2_42_promql() {
        assert!(parse("holt_winters(x[5m], 0.5, 0.5)").is_ok());
        let error = parse("double_exponential_smoothing(x[5m], 0.5, 0.5)").unwrap_err();
        assert!(matches!(error, EvalError::Parse(m) if m.contains("holt_winters")));
    }

    #[test]
    fn pretty_printing_keeps_2_42_names() {
        let expr = parse("sum(holt_winters(x[5m],0.5,0.5))").unwrap();
        assert_eq!(pretty(&expr), "sum(holt_winters(x[5m], 0.5, 0.5))");
    }
}
