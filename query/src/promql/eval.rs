//! Evaluation of a parsed expression at every step, on prefetched series.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use promql_parser::parser::token::{self, TokenId};
use promql_parser::parser::{
    AggregateExpr, BinModifier, BinaryExpr, Expr, LabelModifier, MatrixSelector, SubqueryExpr,
    VectorMatchCardinality, VectorSelector,
};

use super::functions;
use super::value::{
    Histogram, LabelSet, METRIC_NAME, RangeSeries, Series, Value, VectorBuilder, drop_name, label,
};
use super::{EvalError, Fetched, LOOKBACK_MS, Steps, at_ms, millis, offset_ms};

/// Subqueries without a step use this resolution (Prometheus's default evaluation
/// interval).
const DEFAULT_SUBQUERY_STEP_MS: i64 = 60_000;

/// Every selector of `expr` with the time range it needs, for a query over `[start, end]`.
pub(super) fn selections<'a>(
    expr: &'a Expr,
    start: i64,
    end: i64,
    steps: &Steps,
    out: &mut Vec<(&'a VectorSelector, i64, i64)>,
) {
    let window = |at: Option<i64>, offset: i64, back: i64| match at {
        Some(at) => (at - offset - back, at - offset),
        None => (start - offset - back, end - offset),
    };
    match expr {
        Expr::VectorSelector(vs) => {
            let (from, to) = window(at_ms(&vs.at, steps), offset_ms(&vs.offset), LOOKBACK_MS);
            out.push((vs, from, to));
        }
        Expr::MatrixSelector(ms) => {
            let vs = &ms.vs;
            let (from, to) = window(
                at_ms(&vs.at, steps),
                offset_ms(&vs.offset),
                millis(&ms.range),
            );
            out.push((vs, from, to));
        }
        Expr::Subquery(sq) => {
            let (from, to) = window(
                at_ms(&sq.at, steps),
                offset_ms(&sq.offset),
                millis(&sq.range),
            );
            selections(&sq.expr, from, to, steps, out);
        }
        Expr::Aggregate(a) => {
            selections(&a.expr, start, end, steps, out);
            if let Some(param) = &a.param {
                selections(param, start, end, steps, out);
            }
        }
        Expr::Unary(u) => selections(&u.expr, start, end, steps, out),
        Expr::Binary(b) => {
            selections(&b.lhs, start, end, steps, out);
            selections(&b.rhs, start, end, steps, out);
        }
        Expr::Paren(p) => selections(&p.expr, start, end, steps, out),
        Expr::Call(call) => {
            for arg in &call.args.args {
                selections(arg, start, end, steps, out);
            }
        }
        Expr::NumberLiteral(_) | Expr::StringLiteral(_) | Expr::Extension(_) => {}
    }
}

/// `f` over `items`, in order, spread over the cores when there is enough work (`steps`
/// evaluations per item): series are evaluated independently, and a 2-core machine
/// otherwise leaves one idle while a dashboard waits.
pub(super) fn map_parallel<T: Sync, R: Send>(
    items: &[T],
    steps: usize,
    f: impl Fn(&T) -> R + Sync,
) -> Vec<R> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let work = items.len().saturating_mul(steps.max(1));
    if cores < 2 || items.len() < 2 || work < PARALLEL_MIN_WORK {
        return items.iter().map(&f).collect();
    }
    let per_thread = items.len().div_ceil(cores);
    std::thread::scope(|scope| {
        let f = &f;
        let handles: Vec<_> = items
            .chunks(per_thread)
            .map(|chunk| scope.spawn(move || chunk.iter().map(f).collect::<Vec<R>>()))
            .collect();
        handles
            .into_iter()
            .flat_map(|h| {
                h.join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
            })
            .collect()
    })
}

/// Below this many series-steps, threads cost more than they save.
const PARALLEL_MIN_WORK: usize = 50_000;

/// A range-vector argument: raw series and how each step's window is taken from them.
pub(super) struct RangeInput<'a> {
    /// Borrowed from the fetched series when they hold no staleness marker to drop (the
    /// usual case: a day of a few thousand series is not copied again).
    pub series: Vec<Cow<'a, RangeSeries>>,
    pub range_ms: i64,
    pub offset_ms: i64,
    pub at_ms: Option<i64>,
}

impl RangeInput<'_> {
    /// The window's bounds at step time `t`: `[end - range, end]`, both inclusive.
    pub fn bounds(&self, t: i64) -> (i64, i64) {
        let end = self.at_ms.unwrap_or(t) - self.offset_ms;
        (end - self.range_ms, end)
    }

    /// The float samples of `series` in the window at `t`.
    pub fn window<'s>(&self, series: &'s RangeSeries, t: i64) -> &'s [(i64, f64)] {
        let (from, to) = self.bounds(t);
        within(&series.samples, from, to)
    }

    /// The native histogram samples of `series` in the window at `t`.
    pub fn histogram_window<'s>(&self, series: &'s RangeSeries, t: i64) -> &'s [(i64, Histogram)] {
        let (from, to) = self.bounds(t);
        within(&series.histograms, from, to)
    }
}

/// A window sliding forward over one series' samples as a query's steps go forward: after
/// a binary search for the first step, each bound only moves ahead, so all the steps'
/// windows cost one pass over the samples instead of two binary searches a step.
#[derive(Debug, Default)]
pub(super) struct Sliding {
    lo: usize,
    hi: usize,
    started: bool,
}

impl Sliding {
    /// The samples of `samples` (sorted by time) in `[from, to]`; `from` and `to` must not
    /// go back from one call to the next.
    pub fn window<'s, T>(&mut self, samples: &'s [(i64, T)], from: i64, to: i64) -> &'s [(i64, T)] {
        if !self.started {
            self.started = true;
            self.lo = samples.partition_point(|(ts, _)| *ts < from);
            self.hi = self.lo;
        }
        while self.lo < samples.len() && samples[self.lo].0 < from {
            self.lo += 1;
        }
        self.hi = self.hi.max(self.lo);
        while self.hi < samples.len() && samples[self.hi].0 <= to {
            self.hi += 1;
        }
        &samples[self.lo..self.hi]
    }

    /// Where the last window starts in the samples.
    pub fn start(&self) -> usize {
        self.lo
    }

    /// How many samples are at or before `at` (which must not go back either).
    pub fn count_to(&mut self, samples: &[(i64, impl Sized)], at: i64) -> usize {
        if !self.started {
            self.started = true;
            self.hi = samples.partition_point(|(ts, _)| *ts <= at);
        }
        while self.hi < samples.len() && samples[self.hi].0 <= at {
            self.hi += 1;
        }
        self.hi
    }
}

/// The samples of `samples` (sorted by time) in `[from, to]`.
fn within<T>(samples: &[(i64, T)], from: i64, to: i64) -> &[(i64, T)] {
    let lo = samples.partition_point(|(ts, _)| *ts < from);
    let hi = samples.partition_point(|(ts, _)| *ts <= to);
    &samples[lo..hi.max(lo)]
}

/// The newest sample of a series at or before a time, of either kind.
enum Latest<'s> {
    Float(i64, f64),
    Histogram(i64, &'s Histogram),
}

impl Latest<'_> {
    fn timestamp(&self) -> i64 {
        match self {
            Self::Float(t, _) | Self::Histogram(t, _) => *t,
        }
    }

    fn is_stale(&self) -> bool {
        match self {
            Self::Float(_, v) => model::is_stale_nan(*v),
            Self::Histogram(_, h) => h.is_stale(),
        }
    }
}

/// The newest sample of `series` at or before `reference`, which goes forward from one
/// call to the next (the cursors keep where the last call ended).
fn latest<'s>(
    series: &'s RangeSeries,
    reference: i64,
    cursors: &mut [Sliding; 2],
) -> Option<Latest<'s>> {
    let float = cursors[0]
        .count_to(&series.samples, reference)
        .checked_sub(1)
        .map(|i| Latest::Float(series.samples[i].0, series.samples[i].1));
    if series.histograms.is_empty() {
        return float;
    }
    let histogram = cursors[1]
        .count_to(&series.histograms, reference)
        .checked_sub(1)
        .map(|i| Latest::Histogram(series.histograms[i].0, &series.histograms[i].1));
    match (float, histogram) {
        (Some(f), Some(h)) if h.timestamp() > f.timestamp() => Some(h),
        (Some(f), _) => Some(f),
        (None, h) => h,
    }
}

pub(super) struct Evaluator<'a> {
    fetched: &'a Fetched,
    pub steps: Steps,
    pub times: Vec<i64>,
    /// The whole query's steps: what `@ start()` and `@ end()` mean, also inside a
    /// subquery (whose own steps are `steps`).
    query: Steps,
    /// Set when nobody waits for the result any more.
    cancelled: Arc<AtomicBool>,
}

impl<'a> Evaluator<'a> {
    pub fn new(fetched: &'a Fetched, steps: Steps) -> Result<Self, EvalError> {
        Ok(Self {
            fetched,
            steps,
            times: steps.times()?,
            query: steps,
            cancelled: Arc::default(),
        })
    }

    pub fn with_cancel(mut self, cancelled: Arc<AtomicBool>) -> Self {
        self.cancelled = cancelled;
        self
    }

    /// The expression's value; a range vector only at the top of an instant query.
    pub fn eval_top(&self, expr: &Expr) -> Result<Value, EvalError> {
        match unparen(expr) {
            Expr::MatrixSelector(_) | Expr::Subquery(_) if self.times.len() == 1 => {
                let input = self.range_input(unparen(expr))?;
                let t = self.times[0];
                let series = input
                    .series
                    .iter()
                    .map(|s| RangeSeries {
                        labels: s.labels.clone(),
                        samples: input.window(s, t).to_vec(),
                        histograms: input.histogram_window(s, t).to_vec(),
                    })
                    .filter(|s| !s.samples.is_empty() || !s.histograms.is_empty())
                    .collect();
                Ok(Value::Matrix(series))
            }
            Expr::MatrixSelector(_) | Expr::Subquery(_) => Err(EvalError::Parse(
                "a range query's expression must be a scalar or an instant vector".into(),
            )),
            other => self.eval(other),
        }
    }

    pub fn eval(&self, expr: &Expr) -> Result<Value, EvalError> {
        if self.cancelled.load(Ordering::Relaxed) {
            return Err(EvalError::Canceled);
        }
        match expr {
            Expr::NumberLiteral(n) => Ok(Value::Scalar(vec![n.val; self.times.len()])),
            Expr::StringLiteral(s) => Ok(Value::String(s.val.clone())),
            Expr::Paren(p) => self.eval(&p.expr),
            Expr::Unary(u) => match self.eval(&u.expr)? {
                Value::Scalar(values) => {
                    Ok(Value::Scalar(values.into_iter().map(|v| -v).collect()))
                }
                Value::Vector(series) => {
                    let mut builder = VectorBuilder::new(self.times.len());
                    for s in series {
                        let points = s.points.iter().map(|p| p.map(|v| -v)).collect();
                        builder.push_series(drop_name(&s.labels), points)?;
                    }
                    Ok(Value::Vector(builder.finish()))
                }
                other => Err(type_error("unary minus", &other)),
            },
            Expr::VectorSelector(vs) => Ok(Value::Vector(self.select(vs))),
            Expr::MatrixSelector(_) | Expr::Subquery(_) => Err(EvalError::Parse(
                "a range vector is only an argument of a function here".into(),
            )),
            Expr::Aggregate(a) => self.aggregate(a),
            Expr::Binary(b) => self.binary(b),
            Expr::Call(call) => functions::call(self, call),
            Expr::Extension(_) => Err(EvalError::Parse("extension expressions".into())),
        }
    }

    fn fetched(&self, vs: &VectorSelector) -> &'a [RangeSeries] {
        self.fetched
            .get(&super::selector_key(vs))
            .map_or(&[], |v| v.as_slice())
    }

    /// An instant selector: at each step the newest sample (float or histogram) within
    /// the lookback, unless it is a staleness marker.
    fn select(&self, vs: &VectorSelector) -> Vec<Series> {
        self.select_each(vs, |series, steps| {
            let mut points = vec![None; steps.len()];
            let mut histograms = Vec::new();
            for (step, sample) in steps.iter().enumerate() {
                match sample {
                    Some(Latest::Float(_, v)) => points[step] = Some(*v),
                    Some(Latest::Histogram(_, h)) => {
                        if histograms.is_empty() {
                            histograms = vec![None; steps.len()];
                        }
                        histograms[step] = Some(Histogram::clone(h));
                    }
                    None => {}
                }
            }
            Series {
                labels: series.labels.clone(),
                points,
                histograms,
            }
        })
    }

    /// An instant selector's series with each sample's time (in seconds) as its value:
    /// `timestamp()` of a selector.
    pub fn select_timestamps(&self, vs: &VectorSelector) -> Vec<Series> {
        self.select_each(vs, |series, steps| {
            let points = steps
                .iter()
                .map(|s| s.as_ref().map(|s| s.timestamp() as f64 / 1000.0))
                .collect();
            Series::floats(series.labels.clone(), points)
        })
    }

    /// Each series of an instant selector made by `make` from its live sample at every
    /// step (`None` where it has none, or only a staleness marker); series with no sample
    /// at any step are left out.
    fn select_each<'s>(
        &'s self,
        vs: &VectorSelector,
        make: impl Fn(&'s RangeSeries, &[Option<Latest<'s>>]) -> Series,
    ) -> Vec<Series> {
        let at = at_ms(&vs.at, &self.query);
        let offset = offset_ms(&vs.offset);
        let mut out = Vec::new();
        let mut steps: Vec<Option<Latest<'s>>> = Vec::with_capacity(self.times.len());
        for series in self.fetched(vs) {
            steps.clear();
            let mut cursors = [Sliding::default(), Sliding::default()];
            steps.extend(self.times.iter().map(|t| {
                let reference = at.unwrap_or(*t) - offset;
                latest(series, reference, &mut cursors)
                    .filter(|s| s.timestamp() >= reference - LOOKBACK_MS && !s.is_stale())
            }));
            if steps.iter().any(Option::is_some) {
                out.push(make(series, &steps));
            }
        }
        out
    }

    /// A range-vector argument (a matrix selector or a subquery).
    pub fn range_input(&self, expr: &Expr) -> Result<RangeInput<'a>, EvalError> {
        match unparen(expr) {
            Expr::MatrixSelector(MatrixSelector { vs, range }) => Ok(RangeInput {
                series: self
                    .fetched(vs)
                    .iter()
                    .map(|s| {
                        let stale_float = s.samples.iter().any(|(_, v)| model::is_stale_nan(*v));
                        let stale_histogram = s.histograms.iter().any(|(_, h)| h.is_stale());
                        if stale_float || stale_histogram {
                            Cow::Owned(RangeSeries {
                                labels: s.labels.clone(),
                                samples: s
                                    .samples
                                    .iter()
                                    .copied()
                                    .filter(|(_, v)| !model::is_stale_nan(*v))
                                    .collect(),
                                histograms: s
                                    .histograms
                                    .iter()
                                    .filter(|(_, h)| !h.is_stale())
                                    .cloned()
                                    .collect(),
                            })
                        } else {
                            Cow::Borrowed(s)
                        }
                    })
                    .collect(),
                range_ms: millis(range),
                offset_ms: offset_ms(&vs.offset),
                at_ms: at_ms(&vs.at, &self.query),
            }),
            Expr::Subquery(sq) => self.subquery(sq),
            other => Err(EvalError::Parse(format!(
                "expected a range vector, got {}",
                describe(other)
            ))),
        }
    }

    /// A subquery: its expression evaluated at steps aligned to multiples of its step,
    /// covering every window the outer steps need.
    fn subquery(&self, sq: &SubqueryExpr) -> Result<RangeInput<'a>, EvalError> {
        let step = sq
            .step
            .as_ref()
            .map_or(DEFAULT_SUBQUERY_STEP_MS, millis)
            .max(1);
        let range = millis(&sq.range);
        let offset = offset_ms(&sq.offset);
        let at = at_ms(&sq.at, &self.query);
        let first = at.unwrap_or(self.steps.start_ms) - offset - range;
        let last = at.unwrap_or(self.steps.end_ms) - offset;
        let mut start = first.div_euclid(step) * step;
        if start < first {
            start += step;
        }
        let inner_steps = Steps {
            start_ms: start,
            end_ms: last,
            step_ms: step,
        };
        let mut inner =
            Evaluator::new(self.fetched, inner_steps)?.with_cancel(self.cancelled.clone());
        inner.query = self.query;
        let times = inner.times.clone();
        let series = match inner.eval(&sq.expr)? {
            Value::Vector(series) => series
                .into_iter()
                .map(|s| RangeSeries {
                    samples: times
                        .iter()
                        .zip(&s.points)
                        .filter_map(|(t, p)| p.map(|v| (*t, v)))
                        .collect(),
                    histograms: times
                        .iter()
                        .zip(&s.histograms)
                        .filter_map(|(t, h)| h.clone().map(|h| (*t, h)))
                        .collect(),
                    labels: s.labels,
                })
                .collect(),
            Value::Scalar(values) => vec![RangeSeries::floats(
                Vec::new(),
                times.iter().copied().zip(values).collect(),
            )],
            other => return Err(type_error("a subquery", &other)),
        };
        Ok(RangeInput {
            series: series.into_iter().map(Cow::Owned).collect(),
            range_ms: range,
            offset_ms: offset,
            at_ms: at,
        })
    }

    /// A scalar argument's value at each step.
    pub fn scalar_arg(&self, expr: &Expr) -> Result<Vec<f64>, EvalError> {
        match self.eval(expr)? {
            Value::Scalar(values) => Ok(values),
            other => Err(type_error("a scalar argument", &other)),
        }
    }

    pub fn vector_arg(&self, expr: &Expr) -> Result<Vec<Series>, EvalError> {
        match self.eval(expr)? {
            Value::Vector(series) => Ok(series),
            other => Err(type_error("an instant-vector argument", &other)),
        }
    }

    fn aggregate(&self, a: &AggregateExpr) -> Result<Value, EvalError> {
        let input = self.vector_arg(&a.expr)?;
        let op = a.op.id();
        if op == token::T_COUNT_VALUES {
            let Some(Value::String(label_name)) =
                a.param.as_deref().map(|p| self.eval(p)).transpose()?
            else {
                return Err(EvalError::Parse("count_values needs a label name".into()));
            };
            if !model::is_valid_label_name(&label_name) {
                return Err(EvalError::Execution(format!(
                    "invalid label name {label_name:?}"
                )));
            }
            return self.count_values(&input, &a.modifier, &label_name);
        }
        let param = match (op, &a.param) {
            (token::T_TOPK | token::T_BOTTOMK | token::T_QUANTILE, Some(p)) => {
                Some(self.scalar_arg(p)?)
            }
            _ => None,
        };
        if !matches!(
            op,
            token::T_TOPK
                | token::T_BOTTOMK
                | token::T_SUM
                | token::T_AVG
                | token::T_COUNT
                | token::T_GROUP
                | token::T_MIN
                | token::T_MAX
                | token::T_STDDEV
                | token::T_STDVAR
                | token::T_QUANTILE
        ) {
            return Err(EvalError::Parse(format!(
                "aggregation {} is not supported",
                a.op
            )));
        }
        // A series' group depends on its labels only: found once, not at every step.
        let mut keys: Vec<LabelSet> = Vec::new();
        let mut index: HashMap<LabelSet, usize> = HashMap::new();
        let group_of: Vec<usize> = input
            .iter()
            .map(|series| {
                let key = grouping(&series.labels, &a.modifier);
                *index.entry(key.clone()).or_insert_with(|| {
                    keys.push(key);
                    keys.len() - 1
                })
            })
            .collect();
        let steps = self.times.len();
        let selecting = matches!(op, token::T_TOPK | token::T_BOTTOMK);
        // Per group: the step's (series, value) pairs, reused from step to step.
        let mut members: Vec<Vec<(usize, f64)>> = vec![Vec::new(); keys.len()];
        // topk/bottomk keep input series (in the order first selected); the others make
        // one series per group.
        let mut kept: Vec<Option<Vec<Option<f64>>>> =
            vec![None; if selecting { input.len() } else { 0 }];
        let mut kept_order: Vec<usize> = Vec::new();
        let mut group_points: Vec<Vec<Option<f64>>> =
            vec![Vec::new(); if selecting { 0 } else { keys.len() }];
        let mut values: Vec<f64> = Vec::new();
        // Native histograms count in `count` and `group`, and add up in `sum` (a group of
        // floats and histograms has no sum); the other aggregations take floats only.
        let histogram_aware = matches!(op, token::T_SUM | token::T_COUNT | token::T_GROUP)
            && input.iter().any(Series::has_histograms);
        let mut histogram_members: Vec<Vec<usize>> =
            vec![Vec::new(); if histogram_aware { keys.len() } else { 0 }];
        let mut group_histograms: Vec<Vec<Option<Histogram>>> =
            vec![Vec::new(); histogram_members.len()];
        for step in 0..steps {
            for (i, series) in input.iter().enumerate() {
                if let Some(v) = series.points[step] {
                    members[group_of[i]].push((i, v));
                } else if histogram_aware && series.histogram(step).is_some() {
                    histogram_members[group_of[i]].push(i);
                }
            }
            let param = param.as_ref().map(|p| p[step]);
            for (group, elements) in members.iter_mut().enumerate() {
                let histograms = histogram_members
                    .get_mut(group)
                    .map(std::mem::take)
                    .unwrap_or_default();
                if !histograms.is_empty() {
                    let value = match op {
                        token::T_COUNT => Some((elements.len() + histograms.len()) as f64),
                        token::T_GROUP => Some(1.0),
                        _ => None,
                    };
                    if op == token::T_SUM && elements.is_empty() {
                        let sum = histograms
                            .iter()
                            .filter_map(|i| input[*i].histogram(step))
                            .fold(None, |sum: Option<model::FloatHistogram>, h| {
                                Some(match sum {
                                    None => model::FloatHistogram::clone(h),
                                    Some(mut sum) => {
                                        sum.add(h);
                                        sum
                                    }
                                })
                            });
                        let slot = &mut group_histograms[group];
                        if slot.is_empty() {
                            *slot = vec![None; steps];
                        }
                        slot[step] = sum.map(std::sync::Arc::new);
                    }
                    if let Some(value) = value {
                        let points = &mut group_points[group];
                        if points.is_empty() {
                            *points = vec![None; steps];
                        }
                        points[step] = Some(value);
                    }
                    // A sum of floats and histograms has no value.
                    elements.clear();
                    continue;
                }
                if elements.is_empty() {
                    continue;
                }
                if selecting {
                    let k = param.unwrap_or(0.0);
                    // Prometheus converts k to an int64 and refuses what does not fit.
                    if !(-9.223_372_036_854_776e18..=9.223_372_036_854_776e18).contains(&k) {
                        return Err(EvalError::Execution(format!(
                            "Scalar value {} overflows int64",
                            model::format_go_f(k)
                        )));
                    }
                    if k >= 1.0 {
                        let top = op == token::T_TOPK;
                        elements.sort_by(|a, b| match (a.1.is_nan(), b.1.is_nan()) {
                            // NaN last, whichever the order.
                            (true, false) => std::cmp::Ordering::Greater,
                            (false, true) => std::cmp::Ordering::Less,
                            _ if top => b.1.partial_cmp(&a.1).unwrap_or(std::cmp::Ordering::Equal),
                            _ => a.1.partial_cmp(&b.1).unwrap_or(std::cmp::Ordering::Equal),
                        });
                        let k = if k.is_finite() {
                            k as usize
                        } else {
                            usize::MAX
                        };
                        for &(i, v) in elements.iter().take(k) {
                            let points = kept[i].get_or_insert_with(|| {
                                kept_order.push(i);
                                vec![None; steps]
                            });
                            points[step] = Some(v);
                        }
                    }
                } else {
                    values.clear();
                    values.extend(elements.iter().map(|(_, v)| *v));
                    let value = match op {
                        token::T_SUM => values.iter().sum(),
                        token::T_AVG => mean(&values),
                        token::T_COUNT => values.len() as f64,
                        token::T_GROUP => 1.0,
                        token::T_MIN => values
                            .iter()
                            .copied()
                            .fold(f64::NAN, |m, v| if m.is_nan() || v < m { v } else { m }),
                        token::T_MAX => values
                            .iter()
                            .copied()
                            .fold(f64::NAN, |m, v| if m.is_nan() || v > m { v } else { m }),
                        token::T_STDDEV => group_variance(&values).sqrt(),
                        token::T_STDVAR => group_variance(&values),
                        _ => functions::quantile(param.unwrap_or(f64::NAN), values.clone()),
                    };
                    let points = &mut group_points[group];
                    if points.is_empty() {
                        *points = vec![None; steps];
                    }
                    points[step] = Some(value);
                }
                elements.clear();
            }
        }
        let mut builder = VectorBuilder::new(steps);
        if selecting {
            for i in kept_order {
                if let Some(points) = kept[i].take() {
                    builder.push_series(input[i].labels.clone(), points)?;
                }
            }
        } else {
            let mut group_histograms = group_histograms.into_iter();
            for (key, points) in keys.into_iter().zip(group_points) {
                let histograms = group_histograms.next().unwrap_or_default();
                if points.is_empty() && histograms.is_empty() {
                    continue;
                }
                let points = if points.is_empty() {
                    vec![None; steps]
                } else {
                    points
                };
                builder.push_whole(Series {
                    labels: key,
                    points,
                    histograms,
                })?;
            }
        }
        Ok(Value::Vector(builder.finish()))
    }

    fn count_values(
        &self,
        input: &[Series],
        modifier: &Option<LabelModifier>,
        label_name: &str,
    ) -> Result<Value, EvalError> {
        let mut builder = VectorBuilder::new(self.times.len());
        for step in 0..self.times.len() {
            let mut counts: HashMap<LabelSet, f64> = HashMap::new();
            let mut order = Vec::new();
            for series in input {
                let Some(v) = series.points[step] else {
                    continue;
                };
                let mut key = grouping(&series.labels, modifier);
                super::value::set_label(&mut key, label_name, &model::format_go_f(v));
                let count = counts.entry(key.clone()).or_insert_with(|| {
                    order.push(key);
                    0.0
                });
                *count += 1.0;
            }
            for key in order {
                let count = counts[&key];
                builder.push(key, step, count)?;
            }
        }
        Ok(Value::Vector(builder.finish()))
    }

    fn binary(&self, b: &BinaryExpr) -> Result<Value, EvalError> {
        let op = b.op.id();
        let modifier = b.modifier.as_ref();
        let return_bool = modifier.is_some_and(|m| m.return_bool);
        let lhs = self.eval(&b.lhs)?;
        let rhs = self.eval(&b.rhs)?;
        match (lhs, rhs) {
            (Value::Scalar(l), Value::Scalar(r)) => Ok(Value::Scalar(
                l.iter()
                    .zip(&r)
                    .map(|(x, y)| {
                        let (value, keep) = apply(op, *x, *y);
                        if is_comparison(op) {
                            if keep { 1.0 } else { 0.0 }
                        } else {
                            value
                        }
                    })
                    .collect(),
            )),
            (Value::Vector(v), Value::Scalar(s)) => {
                Ok(Value::Vector(vector_scalar(op, v, &s, false, return_bool)?))
            }
            (Value::Scalar(s), Value::Vector(v)) => {
                Ok(Value::Vector(vector_scalar(op, v, &s, true, return_bool)?))
            }
            (Value::Vector(l), Value::Vector(r)) => match op {
                token::T_LAND | token::T_LOR | token::T_LUNLESS => {
                    Ok(Value::Vector(self.set_op(op, &l, &r, modifier)?))
                }
                _ => self.vector_vector(op, &l, &r, modifier, return_bool),
            },
            (l, r) => Err(EvalError::Parse(format!(
                "binary {} between {} and {}",
                b.op,
                l.type_name(),
                r.type_name()
            ))),
        }
    }

    /// `and`, `or`, `unless`. Output series are keyed by their labels, so a left and a
    /// right series with the same labels at different steps (`x or vector(0)` in a range
    /// query) are one series, as in Prometheus.
    fn set_op(
        &self,
        op: TokenId,
        lhs: &[Series],
        rhs: &[Series],
        modifier: Option<&BinModifier>,
    ) -> Result<Vec<Series>, EvalError> {
        let matching = modifier.and_then(|m| m.matching.as_ref());
        let left_signatures: Vec<LabelSet> =
            lhs.iter().map(|s| signature(&s.labels, matching)).collect();
        let right_signatures: Vec<LabelSet> =
            rhs.iter().map(|s| signature(&s.labels, matching)).collect();
        let mut builder = VectorBuilder::new(self.times.len());
        for step in 0..self.times.len() {
            let present = |series: &[Series], signatures: &[LabelSet]| -> HashSet<LabelSet> {
                series
                    .iter()
                    .zip(signatures)
                    .filter(|(s, _)| s.present(step))
                    .map(|(_, sig)| sig.clone())
                    .collect()
            };
            let right = present(rhs, &right_signatures);
            for (s, sig) in lhs.iter().zip(&left_signatures) {
                if !s.present(step) {
                    continue;
                }
                let keep = match op {
                    token::T_LAND => right.contains(sig),
                    token::T_LUNLESS => !right.contains(sig),
                    _ => true,
                };
                if keep {
                    builder.push_value(
                        s.labels.clone(),
                        step,
                        s.points[step],
                        s.histogram(step),
                    )?;
                }
            }
            if op == token::T_LOR {
                let left = present(lhs, &left_signatures);
                for (s, sig) in rhs.iter().zip(&right_signatures) {
                    if s.present(step) && !left.contains(sig) {
                        builder.push_value(
                            s.labels.clone(),
                            step,
                            s.points[step],
                            s.histogram(step),
                        )?;
                    }
                }
            }
        }
        Ok(builder.finish())
    }

    fn vector_vector(
        &self,
        op: TokenId,
        lhs: &[Series],
        rhs: &[Series],
        modifier: Option<&BinModifier>,
        return_bool: bool,
    ) -> Result<Value, EvalError> {
        let matching = modifier.and_then(|m| m.matching.as_ref());
        let card = modifier.map_or(&VectorMatchCardinality::OneToOne, |m| &m.card);
        let one_to_many = matches!(card, VectorMatchCardinality::OneToMany(_));
        // The "many" side (or the left one for one-to-one) is iterated; the other is
        // looked up by signature.
        let (many, one) = if one_to_many { (rhs, lhs) } else { (lhs, rhs) };
        let mut builder = VectorBuilder::new(self.times.len());
        for step in 0..self.times.len() {
            let mut one_side: HashMap<LabelSet, (&LabelSet, Operand<'_>)> = HashMap::new();
            for s in one {
                let Some(v) = Operand::of(s, step) else {
                    continue;
                };
                let sig = signature(&s.labels, matching);
                if one_side.insert(sig.clone(), (&s.labels, v)).is_some() {
                    let side = if one_to_many { "left" } else { "right" };
                    return Err(EvalError::Execution(format!(
                        "found duplicate series for the match group {} on the {side} hand-side of the operation;\
                         many-to-many matching not allowed: matching labels must be unique on one side",
                        super::value::format_labels(&sig)
                    )));
                }
            }
            let mut matched: HashMap<LabelSet, ()> = HashMap::new();
            for s in many {
                let Some(v) = Operand::of(s, step) else {
                    continue;
                };
                let sig = signature(&s.labels, matching);
                let Some((one_labels, one_value)) = one_side.get(&sig) else {
                    continue;
                };
                let (vl, vr) = if one_to_many {
                    (*one_value, v)
                } else {
                    (v, *one_value)
                };
                // Of two histograms only a sum means something; a histogram and a float
                // have no result (Prometheus 2.42 checks matching first, then drops).
                let result = match (vl, vr) {
                    (Operand::Float(l), Operand::Float(r)) => {
                        let (value, keep) = apply(op, l, r);
                        if return_bool {
                            Some(Operand::Float(if keep { 1.0 } else { 0.0 }))
                        } else if !keep {
                            continue;
                        } else {
                            Some(Operand::Float(value))
                        }
                    }
                    (Operand::Histogram(_), Operand::Histogram(_)) if op == token::T_ADD => {
                        Some(vl)
                    }
                    _ => None,
                };
                let labels = result_labels(&s.labels, one_labels, op, matching, card, return_bool);
                if matches!(card, VectorMatchCardinality::OneToOne) {
                    if matched.insert(sig.clone(), ()).is_some() {
                        return Err(EvalError::Execution(
                            "multiple matches for labels: many-to-one matching must be explicit (group_left/group_right)".into(),
                        ));
                    }
                } else if matched.insert(labels.clone(), ()).is_some() {
                    return Err(EvalError::Execution(
                        "multiple matches for labels: grouping labels must ensure unique matches"
                            .into(),
                    ));
                }
                match (result, vl, vr) {
                    (Some(Operand::Float(value)), _, _) => builder.push(labels, step, value)?,
                    (Some(_), Operand::Histogram(l), Operand::Histogram(r)) => {
                        // The coarser one takes the finer (Prometheus's order of operands).
                        let (base, other) = if r.schema >= l.schema { (l, r) } else { (r, l) };
                        let mut sum = model::FloatHistogram::clone(base);
                        sum.add(other);
                        builder.push_histogram(labels, step, std::sync::Arc::new(sum))?;
                    }
                    _ => {}
                }
            }
        }
        Ok(Value::Vector(builder.finish()))
    }
}

/// One side's value at a step in a binary operation between vectors.
#[derive(Clone, Copy)]
enum Operand<'s> {
    Float(f64),
    Histogram(&'s Histogram),
}

impl<'s> Operand<'s> {
    fn of(series: &'s Series, step: usize) -> Option<Self> {
        match (series.points[step], series.histogram(step)) {
            (Some(v), _) => Some(Self::Float(v)),
            (None, Some(h)) => Some(Self::Histogram(h)),
            (None, None) => None,
        }
    }
}

fn unparen(expr: &Expr) -> &Expr {
    match expr {
        Expr::Paren(p) => unparen(&p.expr),
        other => other,
    }
}

fn describe(expr: &Expr) -> &'static str {
    match expr {
        Expr::NumberLiteral(_) => "a number",
        Expr::StringLiteral(_) => "a string",
        Expr::VectorSelector(_) => "an instant vector",
        _ => "an expression",
    }
}

pub(super) fn type_error(what: &str, value: &Value) -> EvalError {
    EvalError::Parse(format!("{what} cannot be {}", value.type_name()))
}

/// Operators whose result drops `__name__` (Prometheus's `shouldDropMetricName`: not
/// `atan2`, not comparisons without `bool`).
fn drops_name(op: TokenId) -> bool {
    matches!(
        op,
        token::T_ADD | token::T_SUB | token::T_MUL | token::T_DIV | token::T_MOD | token::T_POW
    )
}

fn is_comparison(op: TokenId) -> bool {
    matches!(
        op,
        token::T_EQLC | token::T_NEQ | token::T_GTR | token::T_LSS | token::T_GTE | token::T_LTE
    )
}

/// `lhs op rhs`: the arithmetic result, or for comparisons `lhs` and whether it holds.
fn apply(op: TokenId, lhs: f64, rhs: f64) -> (f64, bool) {
    match op {
        token::T_ADD => (lhs + rhs, true),
        token::T_SUB => (lhs - rhs, true),
        token::T_MUL => (lhs * rhs, true),
        token::T_DIV => (lhs / rhs, true),
        token::T_MOD => (lhs % rhs, true),
        token::T_POW => (lhs.powf(rhs), true),
        token::T_ATAN2 => (lhs.atan2(rhs), true),
        token::T_EQLC => (lhs, lhs == rhs),
        token::T_NEQ => (lhs, lhs != rhs),
        token::T_GTR => (lhs, lhs > rhs),
        token::T_LSS => (lhs, lhs < rhs),
        token::T_GTE => (lhs, lhs >= rhs),
        token::T_LTE => (lhs, lhs <= rhs),
        _ => (f64::NAN, false),
    }
}

/// A vector with a scalar on one side. Series whose labels meet once the name is dropped
/// are one series, and an error where both have a value at one step (as in Prometheus).
fn vector_scalar(
    op: TokenId,
    vector: Vec<Series>,
    scalar: &[f64],
    scalar_left: bool,
    return_bool: bool,
) -> Result<Vec<Series>, EvalError> {
    let comparison = is_comparison(op);
    let mut builder = VectorBuilder::new(scalar.len());
    for series in vector {
        let labels = if drops_name(op) || return_bool {
            drop_name(&series.labels)
        } else {
            series.labels.clone()
        };
        let points = series
            .points
            .iter()
            .zip(scalar)
            .map(|(point, s)| {
                let v = (*point)?;
                let (l, r) = if scalar_left { (*s, v) } else { (v, *s) };
                let (value, keep) = apply(op, l, r);
                if return_bool {
                    Some(if keep { 1.0 } else { 0.0 })
                } else if comparison {
                    // The vector's sample is kept with its own value.
                    keep.then_some(v)
                } else {
                    Some(value)
                }
            })
            .collect();
        builder.push_series(labels, points)?;
    }
    Ok(builder.finish())
}

/// `labels` kept by `by (...)`/`on (...)` (the listed ones) or `without (...)`/
/// `ignoring (...)` (the others, never the metric name).
fn kept_labels(labels: &LabelSet, modifier: &LabelModifier) -> LabelSet {
    let listed = |name: &String| modifier.labels().labels.iter().any(|x| x == name);
    labels
        .iter()
        .filter(|(n, _)| match modifier {
            LabelModifier::Include(_) => listed(n),
            LabelModifier::Exclude(_) => n != METRIC_NAME && !listed(n),
        })
        .cloned()
        .collect()
}

/// The label set two sides are matched on.
fn signature(labels: &LabelSet, matching: Option<&LabelModifier>) -> LabelSet {
    match matching {
        Some(modifier) => kept_labels(labels, modifier),
        None => drop_name(labels),
    }
}

/// The labels of a binary operation's result, as Prometheus's `resultMetric`.
fn result_labels(
    many: &LabelSet,
    one: &LabelSet,
    op: TokenId,
    matching: Option<&LabelModifier>,
    card: &VectorMatchCardinality,
    return_bool: bool,
) -> LabelSet {
    let mut labels = if drops_name(op) || return_bool {
        drop_name(many)
    } else {
        many.clone()
    };
    match card {
        VectorMatchCardinality::OneToOne => match matching {
            Some(LabelModifier::Include(names)) => {
                labels.retain(|(n, _)| names.labels.iter().any(|x| x == n));
            }
            Some(LabelModifier::Exclude(names)) => {
                labels.retain(|(n, _)| !names.labels.iter().any(|x| x == n));
            }
            None => {}
        },
        VectorMatchCardinality::ManyToOne(include) | VectorMatchCardinality::OneToMany(include) => {
            for name in &include.labels {
                super::value::set_label(&mut labels, name, label(one, name));
            }
        }
        VectorMatchCardinality::ManyToMany => {}
    }
    labels
}

/// The group an element falls in for `by`/`without` (one group without either).
fn grouping(labels: &LabelSet, modifier: &Option<LabelModifier>) -> LabelSet {
    modifier
        .as_ref()
        .map_or_else(Vec::new, |m| kept_labels(labels, m))
}

/// Prometheus's incremental mean: each value divided before it is added (no overflow of
/// the sum), and an infinite mean kept through finite values and infinities of its sign.
pub(super) fn mean(values: &[f64]) -> f64 {
    let mut mean: f64 = 0.0;
    for (i, v) in values.iter().enumerate() {
        let count = (i + 1) as f64;
        if mean.is_infinite() {
            if v.is_infinite() && (mean > 0.0) == (*v > 0.0) {
                continue;
            }
            if !v.is_infinite() && !v.is_nan() {
                continue;
            }
        }
        mean += v / count - mean / count;
    }
    mean
}

/// `stdvar`'s variance as Prometheus aggregates it: the first value is the mean and adds
/// nothing, so one sample (even NaN or ±Inf) has variance 0, unlike `stdvar_over_time`.
fn group_variance(values: &[f64]) -> f64 {
    match values.split_first() {
        Some((first, rest)) => running_variance(1.0, *first, rest),
        None => f64::NAN,
    }
}

/// `stdvar_over_time`'s variance: Welford's running mean from 0.
pub(super) fn variance(values: &[f64]) -> f64 {
    running_variance(0.0, 0.0, values)
}

/// Welford's algorithm from `count` values of mean `mean`, whose squared deviations sum
/// to 0 so far, over `values`.
fn running_variance(mut count: f64, mut mean: f64, values: &[f64]) -> f64 {
    let mut m2 = 0.0;
    for v in values {
        count += 1.0;
        let delta = v - mean;
        mean += delta / count;
        m2 += delta * (v - mean);
    }
    m2 / count
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn an_evaluation_nobody_waits_for_stops_as_canceled() {
        let fetched = Fetched::new();
        let cancelled = Arc::new(AtomicBool::new(true));
        let evaluator = Evaluator::new(&fetched, Steps::instant(0))
            .unwrap()
            .with_cancel(cancelled);
        let expr = super::super::parse("sum(rate(x[5m]))").unwrap();
        assert_eq!(evaluator.eval_top(&expr), Err(EvalError::Canceled));
    }
}
