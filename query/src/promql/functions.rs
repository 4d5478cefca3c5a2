//! PromQL's functions, as Prometheus 2.42 defines them.

use chrono::{DateTime, Datelike, Timelike};
use promql_parser::parser::{Call, Expr};
use regex::Regex;

use std::sync::Arc;

use model::FloatHistogram;

use super::EvalError;
use super::eval::{Evaluator, RangeInput, Sliding, map_parallel, mean, type_error, variance};
use super::value::{
    Histogram, LabelSet, METRIC_NAME, RangeSeries, Series, Value, VectorBuilder, drop_name,
    set_label,
};

pub(super) fn call(ev: &Evaluator<'_>, call: &Call) -> Result<Value, EvalError> {
    let name = call.func.name;
    let args: Vec<&Expr> = call.args.args.iter().map(|a| a.as_ref()).collect();
    let arg = |i: usize| {
        args.get(i)
            .copied()
            .ok_or_else(|| EvalError::Parse(format!("{name}: missing argument {}", i + 1)))
    };
    match name {
        // Range-vector functions.
        "rate" | "increase" | "delta" | "irate" | "idelta" | "changes" | "resets" | "deriv"
        | "avg_over_time" | "min_over_time" | "max_over_time" | "sum_over_time"
        | "count_over_time" | "last_over_time" | "present_over_time" | "stddev_over_time"
        | "stdvar_over_time" => {
            let input = ev.range_input(arg(0)?)?;
            range_function(ev, name, &input, |_| None)
        }
        "quantile_over_time" => {
            let q = ev.scalar_arg(arg(0)?)?;
            let input = ev.range_input(arg(1)?)?;
            range_function(ev, name, &input, |step| Some(q[step]))
        }
        "predict_linear" => {
            let input = ev.range_input(arg(0)?)?;
            let seconds = ev.scalar_arg(arg(1)?)?;
            range_function(ev, name, &input, |step| Some(seconds[step]))
        }
        "holt_winters" | "double_exponential_smoothing" => {
            let input = ev.range_input(arg(0)?)?;
            let sf = ev.scalar_arg(arg(1)?)?;
            let tf = ev.scalar_arg(arg(2)?)?;
            holt_winters(ev, &input, &sf, &tf)
        }
        "absent_over_time" => {
            let input = ev.range_input(arg(0)?)?;
            let present: Vec<bool> = ev
                .times
                .iter()
                .map(|t| {
                    input.series.iter().any(|s| {
                        !input.window(s, *t).is_empty() || !input.histogram_window(s, *t).is_empty()
                    })
                })
                .collect();
            Ok(absent(arg(0)?, &present))
        }
        "absent" => {
            let input = ev.vector_arg(arg(0)?)?;
            let present: Vec<bool> = (0..ev.times.len())
                .map(|step| input.iter().any(|s| s.present(step)))
                .collect();
            Ok(absent(arg(0)?, &present))
        }
        // Instant-vector functions that map values.
        "abs" | "ceil" | "floor" | "exp" | "ln" | "log2" | "log10" | "sqrt" | "sgn" | "acos"
        | "acosh" | "asin" | "asinh" | "atan" | "atanh" | "cos" | "cosh" | "sin" | "sinh"
        | "tan" | "tanh" | "deg" | "rad" => {
            let f = math(name);
            map_values(ev.vector_arg(arg(0)?)?, |_, v| f(v))
        }
        "round" => {
            let to = match args.get(1) {
                Some(e) => ev.scalar_arg(e)?,
                None => vec![1.0; ev.times.len()],
            };
            map_values(ev.vector_arg(arg(0)?)?, |step, v| {
                let inverse = 1.0 / to[step];
                (v * inverse + 0.5).floor() / inverse
            })
        }
        "clamp" => {
            let (lo, hi) = (ev.scalar_arg(arg(1)?)?, ev.scalar_arg(arg(2)?)?);
            let input = ev.vector_arg(arg(0)?)?;
            // Prometheus returns nothing where min > max.
            let mut out = map_values(input, |step, v| go_max(lo[step], go_min(hi[step], v)))?;
            if let Value::Vector(series) = &mut out {
                for s in series.iter_mut() {
                    for (step, p) in s.points.iter_mut().enumerate() {
                        if lo[step] > hi[step] {
                            *p = None;
                        }
                    }
                }
                series.retain(|s| s.points.iter().any(Option::is_some));
            }
            Ok(out)
        }
        "clamp_min" => {
            let lo = ev.scalar_arg(arg(1)?)?;
            map_values(ev.vector_arg(arg(0)?)?, |step, v| go_max(lo[step], v))
        }
        "clamp_max" => {
            let hi = ev.scalar_arg(arg(1)?)?;
            map_values(ev.vector_arg(arg(0)?)?, |step, v| go_min(hi[step], v))
        }
        "timestamp" => timestamp(ev, arg(0)?),
        "pi" => Ok(Value::Scalar(vec![std::f64::consts::PI; ev.times.len()])),
        "time" => Ok(Value::Scalar(
            ev.times.iter().map(|t| *t as f64 / 1000.0).collect(),
        )),
        "vector" => {
            let values = ev.scalar_arg(arg(0)?)?;
            Ok(Value::Vector(vec![Series::floats(
                Vec::new(),
                values.into_iter().map(Some).collect(),
            )]))
        }
        "scalar" => {
            let input = ev.vector_arg(arg(0)?)?;
            Ok(Value::Scalar(
                (0..ev.times.len())
                    .map(|step| {
                        // One sample of either kind; a histogram has no scalar value.
                        let mut present = input.iter().filter(|s| s.present(step));
                        match (present.next(), present.next()) {
                            (Some(s), None) => s.points[step].unwrap_or(f64::NAN),
                            _ => f64::NAN,
                        }
                    })
                    .collect(),
            ))
        }
        "sort" | "sort_desc" => {
            // Sorting only means something for an instant query's single step.
            let mut input = ev.vector_arg(arg(0)?)?;
            let descending = name == "sort_desc";
            input.sort_by(|a, b| {
                let (x, y) = (
                    a.points[0].unwrap_or(f64::NAN),
                    b.points[0].unwrap_or(f64::NAN),
                );
                match (x.is_nan(), y.is_nan()) {
                    (true, true) => std::cmp::Ordering::Equal,
                    (true, false) => std::cmp::Ordering::Greater,
                    (false, true) => std::cmp::Ordering::Less,
                    _ if descending => y.partial_cmp(&x).unwrap_or(std::cmp::Ordering::Equal),
                    _ => x.partial_cmp(&y).unwrap_or(std::cmp::Ordering::Equal),
                }
            });
            Ok(Value::Vector(input))
        }
        "label_replace" => label_replace(ev, &args),
        "label_join" => label_join(ev, &args),
        "histogram_quantile" => {
            let q = ev.scalar_arg(arg(0)?)?;
            histogram_quantile(ev, &q, ev.vector_arg(arg(1)?)?)
        }
        "histogram_count" => map_histograms(ev.vector_arg(arg(0)?)?, |_, h| h.count),
        "histogram_sum" => map_histograms(ev.vector_arg(arg(0)?)?, |_, h| h.sum),
        "histogram_fraction" => {
            let lower = ev.scalar_arg(arg(0)?)?;
            let upper = ev.scalar_arg(arg(1)?)?;
            map_histograms(ev.vector_arg(arg(2)?)?, |step, h| {
                histogram_fraction(lower[step], upper[step], h)
            })
        }
        "minute" | "hour" | "day_of_month" | "day_of_week" | "day_of_year" | "days_in_month"
        | "month" | "year" => {
            let input = match args.first() {
                Some(e) => ev.vector_arg(e)?,
                None => vec![Series::floats(
                    Vec::new(),
                    ev.times.iter().map(|t| Some(*t as f64 / 1000.0)).collect(),
                )],
            };
            map_values(input, |_, v| date_part(name, v))
        }
        other => Err(EvalError::Parse(format!(
            "function {other} is not supported yet"
        ))),
    }
}

/// Go's `math.Max`: NaN if either is.
fn go_max(a: f64, b: f64) -> f64 {
    if a.is_nan() || b.is_nan() {
        f64::NAN
    } else {
        a.max(b)
    }
}

/// Go's `math.Min`: NaN if either is.
fn go_min(a: f64, b: f64) -> f64 {
    if a.is_nan() || b.is_nan() {
        f64::NAN
    } else {
        a.min(b)
    }
}

fn math(name: &str) -> fn(f64) -> f64 {
    match name {
        "abs" => f64::abs,
        "ceil" => f64::ceil,
        "floor" => f64::floor,
        "exp" => f64::exp,
        "ln" => f64::ln,
        "log2" => f64::log2,
        "log10" => f64::log10,
        "sqrt" => f64::sqrt,
        "sgn" => |v: f64| {
            if v > 0.0 {
                1.0
            } else if v < 0.0 {
                -1.0
            } else {
                v
            }
        },
        "acos" => f64::acos,
        "acosh" => f64::acosh,
        "asin" => f64::asin,
        "asinh" => f64::asinh,
        "atan" => f64::atan,
        "atanh" => f64::atanh,
        "cos" => f64::cos,
        "cosh" => f64::cosh,
        "sin" => f64::sin,
        "sinh" => f64::sinh,
        "tan" => f64::tan,
        "tanh" => f64::tanh,
        "deg" => f64::to_degrees,
        "rad" => f64::to_radians,
        _ => |v: f64| v,
    }
}

/// Applies `f(step, value)` to every point; the metric name goes.
fn map_values(input: Vec<Series>, f: impl Fn(usize, f64) -> f64) -> Result<Value, EvalError> {
    let mut builder = VectorBuilder::new(input.first().map_or(0, |s| s.points.len()));
    for series in input {
        let points = series
            .points
            .iter()
            .enumerate()
            .map(|(step, point)| point.map(|v| f(step, v)))
            .collect();
        builder.push_series(drop_name(&series.labels), points)?;
    }
    Ok(Value::Vector(builder.finish()))
}

/// A function of each series' window at each step.
fn range_function(
    ev: &Evaluator<'_>,
    name: &str,
    input: &RangeInput,
    param: impl Fn(usize) -> Option<f64> + Sync,
) -> Result<Value, EvalError> {
    let results = map_parallel(&input.series, ev.times.len(), |series| {
        let mut points = vec![None; ev.times.len()];
        if !series.histograms.is_empty() {
            return range_histogram_values(ev, name, input, series, &param);
        }
        let mut sliding = Sliding::default();
        if matches!(name, "rate" | "increase") {
            // Counter resets found once per series, not once per window that holds them.
            let resets = counter_resets(&series.samples);
            let mut next_reset = 0;
            for (step, t) in ev.times.iter().enumerate() {
                let (from, to) = input.bounds(*t);
                let window = sliding.window(&series.samples, from, to);
                if window.len() < 2 {
                    continue;
                }
                let first = sliding.start();
                while next_reset < resets.len() && resets[next_reset] <= first {
                    next_reset += 1;
                }
                // Each reset inside the window adds the value before it, in order, as
                // Prometheus's loop over the window does.
                let mut result = window[window.len() - 1].1 - window[0].1;
                for reset in resets[next_reset..]
                    .iter()
                    .take_while(|r| **r < first + window.len())
                {
                    result += series.samples[reset - 1].1;
                }
                points[step] = Some(extrapolate_change(
                    window,
                    result,
                    from,
                    to,
                    true,
                    name == "rate",
                ));
            }
            return (points, Vec::new());
        }
        for (step, t) in ev.times.iter().enumerate() {
            let (from, to) = input.bounds(*t);
            let window = sliding.window(&series.samples, from, to);
            if window.is_empty() {
                continue;
            }
            points[step] = range_value(name, window, from, to, *t, param(step));
        }
        (points, Vec::new())
    });
    let mut builder = VectorBuilder::new(ev.times.len());
    for (series, (points, histograms)) in input.series.iter().zip(results) {
        // last_over_time keeps the metric name (Prometheus 2.42).
        let labels = if name == "last_over_time" {
            series.labels.clone()
        } else {
            drop_name(&series.labels)
        };
        builder.push_whole(Series {
            labels,
            points,
            histograms,
        })?;
    }
    Ok(Value::Vector(builder.finish()))
}

/// A range function over a series that has native histogram samples: `rate`, `increase`
/// and `delta` of a window of histograms are histograms (of a window of both kinds,
/// nothing, as in Prometheus); `count_over_time` and `present_over_time` count samples
/// of both kinds; the other functions take the float samples only.
fn range_histogram_values(
    ev: &Evaluator<'_>,
    name: &str,
    input: &RangeInput,
    series: &RangeSeries,
    param: &impl Fn(usize) -> Option<f64>,
) -> (Vec<Option<f64>>, Vec<Option<Histogram>>) {
    let steps = ev.times.len();
    let mut points = vec![None; steps];
    let mut histograms = vec![None; steps];
    let (mut float_cursor, mut histogram_cursor) = (Sliding::default(), Sliding::default());
    for (step, t) in ev.times.iter().enumerate() {
        let (from, to) = input.bounds(*t);
        let floats = float_cursor.window(&series.samples, from, to);
        let hists = histogram_cursor.window(&series.histograms, from, to);
        match name {
            // A window of both kinds has no rate.
            "rate" | "increase" | "delta" if !hists.is_empty() && !floats.is_empty() => {}
            "rate" | "increase" | "delta" if !hists.is_empty() => {
                let counter = name != "delta";
                histograms[step] =
                    histogram_extrapolated(hists, from, to, counter, name == "rate").map(Arc::new);
            }
            "count_over_time" | "present_over_time" if !floats.is_empty() || !hists.is_empty() => {
                points[step] = Some(if name == "count_over_time" {
                    (floats.len() + hists.len()) as f64
                } else {
                    1.0
                });
            }
            _ if !floats.is_empty() => {
                points[step] = range_value(name, floats, from, to, *t, param(step));
            }
            _ => {}
        }
    }
    (points, histograms)
}

/// A range function's value over one non-empty window ending at step time `t`, with the
/// window's bounds `[from, to]` and the function's scalar parameter at that step.
fn range_value(
    name: &str,
    window: &[(i64, f64)],
    from: i64,
    to: i64,
    t: i64,
    param: Option<f64>,
) -> Option<f64> {
    match name {
        "rate" => extrapolated(window, from, to, true, true),
        "increase" => extrapolated(window, from, to, true, false),
        "delta" => extrapolated(window, from, to, false, false),
        "irate" => instant_rate(window, true),
        "idelta" => instant_rate(window, false),
        "changes" => Some(
            window
                .windows(2)
                .filter(|w| w[0].1 != w[1].1 && !(w[0].1.is_nan() && w[1].1.is_nan()))
                .count() as f64,
        ),
        "resets" => Some(window.windows(2).filter(|w| w[1].1 < w[0].1).count() as f64),
        "deriv" => regression(window, window[0].0).map(|(slope, _)| slope),
        "predict_linear" => {
            let seconds = param.unwrap_or(0.0);
            regression(window, t).map(|(slope, intercept)| intercept + slope * seconds)
        }
        "avg_over_time" => {
            let values: Vec<f64> = window.iter().map(|(_, v)| *v).collect();
            Some(mean(&values))
        }
        "min_over_time" => Some(
            window
                .iter()
                .map(|(_, v)| *v)
                .fold(f64::NAN, |m, v| if m.is_nan() || v < m { v } else { m }),
        ),
        "max_over_time" => Some(
            window
                .iter()
                .map(|(_, v)| *v)
                .fold(f64::NAN, |m, v| if m.is_nan() || v > m { v } else { m }),
        ),
        "sum_over_time" => Some(window.iter().map(|(_, v)| *v).sum()),
        "count_over_time" => Some(window.len() as f64),
        "last_over_time" => window.last().map(|(_, v)| *v),
        "present_over_time" => Some(1.0),
        "stddev_over_time" | "stdvar_over_time" => {
            let values: Vec<f64> = window.iter().map(|(_, v)| *v).collect();
            let variance = variance(&values);
            Some(if name == "stddev_over_time" {
                variance.sqrt()
            } else {
                variance
            })
        }
        "quantile_over_time" => Some(quantile(
            param.unwrap_or(f64::NAN),
            window.iter().map(|(_, v)| *v).collect(),
        )),
        _ => None,
    }
}

/// `rate`, `increase` and `delta`: the change over the window, extrapolated towards its
/// edges as Prometheus 2.42's `extrapolatedRate` does.
fn extrapolated(
    window: &[(i64, f64)],
    range_start: i64,
    range_end: i64,
    counter: bool,
    per_second: bool,
) -> Option<f64> {
    if window.len() < 2 {
        return None;
    }
    let (first, last) = (window[0], window[window.len() - 1]);
    let mut result = last.1 - first.1;
    if counter {
        let mut previous = first.1;
        for (_, v) in &window[1..] {
            if *v < previous {
                result += previous;
            }
            previous = *v;
        }
    }
    Some(extrapolate_change(
        window,
        result,
        range_start,
        range_end,
        counter,
        per_second,
    ))
}

/// The indexes of the samples below their predecessor: a counter's resets.
fn counter_resets(samples: &[(i64, f64)]) -> Vec<usize> {
    (1..samples.len())
        .filter(|i| samples[*i].1 < samples[i - 1].1)
        .collect()
}

/// `result`, the change over `window` (at least two samples), extrapolated to the range.
fn extrapolate_change(
    window: &[(i64, f64)],
    result: f64,
    range_start: i64,
    range_end: i64,
    counter: bool,
    per_second: bool,
) -> f64 {
    let (first, last) = (window[0], window[window.len() - 1]);
    // A counter cannot go below zero: extrapolation stops where it would reach it.
    let zero_point = (counter && result > 0.0 && first.1 >= 0.0).then(|| first.1 / result);
    let window_times = (first.0, last.0, window.len());
    result * extrapolation(window_times, range_start, range_end, zero_point, per_second)
}

/// `rate`, `increase` and `delta` of native histograms: the last histogram less the
/// first, at the lowest resolution in the window, plus every histogram before a counter
/// reset, extrapolated as floats are (without the stop at zero, as in Prometheus 2.42).
fn histogram_extrapolated(
    window: &[(i64, Histogram)],
    range_start: i64,
    range_end: i64,
    counter: bool,
    per_second: bool,
) -> Option<FloatHistogram> {
    if window.len() < 2 {
        return None;
    }
    let (first, last) = (&window[0], &window[window.len() - 1]);
    let mut schema = first.1.schema.min(last.1.schema);
    if counter {
        for (_, h) in &window[1..window.len() - 1] {
            schema = schema.min(h.schema);
        }
    }
    let mut result = last.1.copy_to_schema(schema);
    result.sub(&first.1);
    if counter {
        let mut previous = &first.1;
        for (_, current) in &window[1..] {
            if current.detect_reset(previous) {
                result.add(previous);
            }
            previous = current;
        }
    }
    result.compact();
    let window_times = (first.0, last.0, window.len());
    result.scale(extrapolation(
        window_times,
        range_start,
        range_end,
        None,
        per_second,
    ));
    Some(result)
}

/// Prometheus's extrapolation of a change over a window `(first time, last time, samples)`
/// to the edges of `[range_start, range_end]`: the factor to multiply the change by (and
/// per second, for a rate). `zero_point` is where a counter would reach zero before the
/// first sample, as a fraction of the sampled interval.
fn extrapolation(
    (first, last, samples): (i64, i64, usize),
    range_start: i64,
    range_end: i64,
    zero_point: Option<f64>,
    per_second: bool,
) -> f64 {
    let mut to_start = (first - range_start) as f64 / 1000.0;
    let to_end = (range_end - last) as f64 / 1000.0;
    let sampled = (last - first) as f64 / 1000.0;
    let average_gap = sampled / (samples - 1) as f64;
    if let Some(fraction) = zero_point {
        let to_zero = sampled * fraction;
        if to_zero < to_start {
            to_start = to_zero;
        }
    }
    let threshold = average_gap * 1.1;
    let mut interval = sampled;
    interval += if to_start < threshold {
        to_start
    } else {
        average_gap / 2.0
    };
    interval += if to_end < threshold {
        to_end
    } else {
        average_gap / 2.0
    };
    let mut factor = interval / sampled;
    if per_second {
        factor /= (range_end - range_start) as f64 / 1000.0;
    }
    factor
}

/// `irate` and `idelta`: from the last two samples.
fn instant_rate(window: &[(i64, f64)], rate: bool) -> Option<f64> {
    if window.len() < 2 {
        return None;
    }
    let (previous, last) = (window[window.len() - 2], window[window.len() - 1]);
    let mut result = if rate && last.1 < previous.1 {
        last.1 // a counter reset
    } else {
        last.1 - previous.1
    };
    if rate {
        let seconds = (last.0 - previous.0) as f64 / 1000.0;
        if seconds == 0.0 {
            return None;
        }
        result /= seconds;
    }
    Some(result)
}

/// Least-squares slope (per second) and intercept at `at_ms`.
fn regression(window: &[(i64, f64)], at_ms: i64) -> Option<(f64, f64)> {
    if window.len() < 2 {
        return None;
    }
    let n = window.len() as f64;
    let (mut sum_x, mut sum_y, mut sum_xy, mut sum_x2) = (0.0, 0.0, 0.0, 0.0);
    for (t, v) in window {
        let x = (*t - at_ms) as f64 / 1000.0;
        sum_x += x;
        sum_y += v;
        sum_xy += x * v;
        sum_x2 += x * x;
    }
    let covariance = sum_xy - sum_x * sum_y / n;
    let variance = sum_x2 - sum_x * sum_x / n;
    let slope = covariance / variance;
    let intercept = sum_y / n - slope * sum_x / n;
    Some((slope, intercept))
}

/// The φ-quantile of `values` (Prometheus's linear interpolation; NaN outside [0, 1] is
/// ±Inf).
pub(super) fn quantile(q: f64, mut values: Vec<f64>) -> f64 {
    if values.is_empty() || q.is_nan() {
        return f64::NAN;
    }
    if q < 0.0 {
        return f64::NEG_INFINITY;
    }
    if q > 1.0 {
        return f64::INFINITY;
    }
    // NaN sorts lowest, as in Prometheus (Go's `sort.Float64s`); `total_cmp` orders -0
    // before 0, which changes no quantile.
    values.sort_by(|a, b| match (a.is_nan(), b.is_nan()) {
        (true, true) => std::cmp::Ordering::Equal,
        (true, false) => std::cmp::Ordering::Less,
        (false, true) => std::cmp::Ordering::Greater,
        _ => a.total_cmp(b),
    });
    let n = values.len() as f64;
    let rank = q * (n - 1.0);
    let lower = rank.floor().max(0.0) as usize;
    let upper = (lower + 1).min(values.len() - 1);
    let weight = rank - rank.floor();
    values[lower] * (1.0 - weight) + values[upper] * weight
}

fn holt_winters(
    ev: &Evaluator<'_>,
    input: &RangeInput,
    smoothing: &[f64],
    trend: &[f64],
) -> Result<Value, EvalError> {
    let mut builder = VectorBuilder::new(ev.times.len());
    for series in &input.series {
        let labels = drop_name(&series.labels);
        let mut points = vec![None; ev.times.len()];
        for (step, t) in ev.times.iter().enumerate() {
            let (sf, tf) = (smoothing[step], trend[step]);
            if !(sf > 0.0 && sf < 1.0 && tf > 0.0 && tf < 1.0) {
                return Err(EvalError::Execution(format!(
                    "invalid smoothing factor. Expected: 0 < sf < 1, got: {sf}"
                )));
            }
            let window = input.window(series, *t);
            if window.len() < 2 {
                continue;
            }
            let (mut s0, mut s1) = (0.0, window[0].1);
            let mut b = window[1].1 - window[0].1;
            for (i, (_, v)) in window.iter().enumerate().skip(1) {
                let x = sf * v;
                b = if i > 1 {
                    tf * (s1 - s0) + (1.0 - tf) * b
                } else {
                    b
                };
                let y = (1.0 - sf) * (s1 + b);
                s0 = s1;
                s1 = x + y;
            }
            points[step] = Some(s1);
        }
        builder.push_series(labels, points)?;
    }
    Ok(Value::Vector(builder.finish()))
}

/// `absent`/`absent_over_time`: one series, labelled by the selector's equality matchers,
/// at the steps where nothing was present.
fn absent(arg: &Expr, present: &[bool]) -> Value {
    let mut labels: LabelSet = Vec::new();
    // Prometheus unwraps parentheses around a function's arguments before it looks.
    let mut arg = arg;
    while let Expr::Paren(inner) = arg {
        arg = &inner.expr;
    }
    let selector = match arg {
        Expr::VectorSelector(vs) => Some(vs),
        Expr::MatrixSelector(ms) => Some(&ms.vs),
        _ => None,
    };
    if let Some(vs) = selector {
        let mut seen: Vec<&str> = Vec::new();
        for m in &vs.matchers.matchers {
            if m.name == METRIC_NAME {
                continue;
            }
            if seen.contains(&m.name.as_str()) {
                // A label matched twice is left out.
                labels.retain(|(n, _)| n != &m.name);
                continue;
            }
            seen.push(&m.name);
            if matches!(m.op, promql_parser::label::MatchOp::Equal) {
                set_label(&mut labels, &m.name, &m.value);
            }
        }
    }
    let points: Vec<Option<f64>> = present.iter().map(|p| (!p).then_some(1.0)).collect();
    if points.iter().all(Option::is_none) {
        return Value::Vector(Vec::new());
    }
    Value::Vector(vec![Series::floats(labels, points)])
}

fn timestamp(ev: &Evaluator<'_>, arg: &Expr) -> Result<Value, EvalError> {
    // A selector's samples carry their own times; computed vectors have the step's.
    let mut inner = arg;
    while let Expr::Paren(p) = inner {
        inner = &p.expr;
    }
    let input = match inner {
        Expr::VectorSelector(vs) => ev.select_timestamps(vs),
        other => {
            // Samples of either kind have the step's time.
            let input = ev.vector_arg(other)?;
            let mut builder = VectorBuilder::new(ev.times.len());
            for series in input {
                let points = (0..ev.times.len())
                    .map(|step| series.present(step).then(|| ev.times[step] as f64 / 1000.0))
                    .collect();
                builder.push_series(drop_name(&series.labels), points)?;
            }
            return Ok(Value::Vector(builder.finish()));
        }
    };
    map_values(input, |_, v| v)
}

fn label_replace(ev: &Evaluator<'_>, args: &[&Expr]) -> Result<Value, EvalError> {
    let strings = string_args(ev, &args[1..])?;
    let [dst, replacement, src, regex] = strings.as_slice() else {
        return Err(EvalError::Parse("label_replace takes 5 arguments".into()));
    };
    let pattern = Regex::new(&format!("^(?s:{regex})$")).map_err(|e| {
        EvalError::Execution(format!(
            "invalid regular expression in label_replace(): {e}"
        ))
    })?;
    if !model::is_valid_label_name(dst) {
        return Err(EvalError::Execution(format!(
            "invalid destination label name in label_replace(): {dst}"
        )));
    }
    // Go's `$1`/`${1}` expansion reads the same in Rust's regex (`$1x` is the group named
    // `1x` in both), so the replacement is the template as it is.
    relabel(ev, args[0], |labels| {
        let value = super::value::label(labels, src).to_owned();
        if let Some(captures) = pattern.captures(&value) {
            let mut expanded = String::new();
            captures.expand(replacement, &mut expanded);
            set_label(labels, dst, &expanded);
        }
    })
}

/// The vector `arg` with each series' labels changed by `change`, values kept; series that
/// meet at one step are Prometheus's duplicate-labelset error.
fn relabel(
    ev: &Evaluator<'_>,
    arg: &Expr,
    change: impl Fn(&mut LabelSet),
) -> Result<Value, EvalError> {
    let mut builder = VectorBuilder::new(ev.times.len());
    for mut series in ev.vector_arg(arg)? {
        change(&mut series.labels);
        builder.push_whole(series)?;
    }
    Ok(Value::Vector(builder.finish()))
}

fn label_join(ev: &Evaluator<'_>, args: &[&Expr]) -> Result<Value, EvalError> {
    let strings = string_args(ev, &args[1..])?;
    let (dst, separator, sources) = match strings.as_slice() {
        [dst, separator, sources @ ..] => (dst, separator, sources),
        _ => {
            return Err(EvalError::Parse(
                "label_join takes at least 3 arguments".into(),
            ));
        }
    };
    if !model::is_valid_label_name(dst) {
        return Err(EvalError::Execution(format!(
            "invalid destination label name in label_join(): {dst}"
        )));
    }
    relabel(ev, args[0], |labels| {
        let joined = sources
            .iter()
            .map(|s| super::value::label(labels, s))
            .collect::<Vec<_>>()
            .join(separator);
        set_label(labels, dst, &joined);
    })
}

fn string_args(ev: &Evaluator<'_>, args: &[&Expr]) -> Result<Vec<String>, EvalError> {
    args.iter()
        .map(|a| match ev.eval(a)? {
            Value::String(s) => Ok(s),
            other => Err(type_error("a string argument", &other)),
        })
        .collect()
}

/// `histogram_quantile` over classic buckets (`le` labels) and native histograms, as
/// Prometheus 2.42: a native histogram and classic buckets of the same labels at one step
/// give neither a result.
fn histogram_quantile(
    ev: &Evaluator<'_>,
    q: &[f64],
    input: Vec<Series>,
) -> Result<Value, EvalError> {
    // Each bucket's upper bound, group and label set (name dropped) are fixed across
    // steps: work them out once per series.
    let mut groups: Vec<LabelSet> = Vec::new();
    let mut group_of: std::collections::HashMap<LabelSet, usize> = std::collections::HashMap::new();
    let mut identities: std::collections::HashMap<LabelSet, usize> =
        std::collections::HashMap::new();
    // (series, upper bound, group, identity)
    let mut buckets_of: Vec<(usize, f64, usize, usize)> = Vec::new();
    let mut identity_members: Vec<usize> = Vec::new();
    for (i, series) in input.iter().enumerate() {
        let Ok(upper) = parse_le(super::value::label(&series.labels, "le")) else {
            continue;
        };
        let unnamed = drop_name(&series.labels);
        let key: LabelSet = unnamed.iter().filter(|(n, _)| n != "le").cloned().collect();
        let group = *group_of.entry(key.clone()).or_insert_with(|| {
            groups.push(key);
            groups.len() - 1
        });
        let next = identities.len();
        let identity = *identities.entry(unnamed).or_insert(next);
        if identity == identity_members.len() {
            identity_members.push(0);
        }
        identity_members[identity] += 1;
        buckets_of.push((i, upper, group, identity));
    }
    // Two series that differ only by name would be one bucket twice.
    let shared: Vec<bool> = identity_members.iter().map(|n| *n > 1).collect();
    let mut points: Vec<Vec<Option<f64>>> = vec![vec![None; ev.times.len()]; groups.len()];
    let mut per_group: Vec<Vec<(f64, f64)>> = vec![Vec::new(); groups.len()];
    let mut seen: Vec<bool> = vec![false; identity_members.len()];
    let natives: Vec<usize> = (0..input.len())
        .filter(|i| input[*i].has_histograms())
        .collect();
    let mut native_points: Vec<Vec<Option<f64>>> = vec![vec![None; ev.times.len()]; natives.len()];
    for (step, q) in q.iter().enumerate() {
        for &(i, upper, group, identity) in &buckets_of {
            let Some(v) = input[i].points[step] else {
                continue;
            };
            if shared[identity] {
                if seen[identity] {
                    return Err(EvalError::Execution(
                        "vector cannot contain metrics with the same labelset".into(),
                    ));
                }
                seen[identity] = true;
            }
            per_group[group].push((upper, v));
        }
        for (native, &i) in natives.iter().enumerate() {
            let series = &input[i];
            let Some(h) = series.histogram(step) else {
                continue;
            };
            // Classic buckets of the same name and labels at this step?
            let name = super::value::label(&series.labels, METRIC_NAME);
            let conflicting = super::value::label(&series.labels, "le")
                .is_empty()
                .then(|| group_of.get(&drop_name(&series.labels)).copied())
                .flatten()
                .filter(|group| {
                    buckets_of.iter().any(|&(b, _, g, _)| {
                        g == *group
                            && input[b].points[step].is_some()
                            && super::value::label(&input[b].labels, METRIC_NAME) == name
                    })
                });
            match conflicting {
                Some(group) => per_group[group].clear(),
                None => native_points[native][step] = Some(native_quantile(*q, h)),
            }
        }
        for (group, buckets) in per_group.iter_mut().enumerate() {
            if !buckets.is_empty() {
                points[group][step] = Some(bucket_quantile(*q, buckets));
                buckets.clear();
            }
        }
        seen.iter_mut().for_each(|s| *s = false);
    }
    let mut builder = VectorBuilder::new(ev.times.len());
    for (i, points) in natives.into_iter().zip(native_points) {
        builder.push_series(drop_name(&input[i].labels), points)?;
    }
    for (labels, points) in groups.into_iter().zip(points) {
        builder.push_series(labels, points)?;
    }
    Ok(Value::Vector(builder.finish()))
}

/// Applies `f(step, histogram)` to every native histogram value, the name dropped; float
/// values are left out (`histogram_count`, `histogram_sum`, `histogram_fraction`).
fn map_histograms(
    input: Vec<Series>,
    f: impl Fn(usize, &FloatHistogram) -> f64,
) -> Result<Value, EvalError> {
    let mut builder = VectorBuilder::new(input.first().map_or(0, |s| s.points.len()));
    for series in input.iter().filter(|s| s.has_histograms()) {
        let points = series
            .histograms
            .iter()
            .enumerate()
            .map(|(step, h)| h.as_ref().map(|h| f(step, h)))
            .collect();
        builder.push_series(drop_name(&series.labels), points)?;
    }
    Ok(Value::Vector(builder.finish()))
}

/// The bucket an observation of rank `rank` falls in: the first whose cumulative count
/// reaches it (or the last), with that cumulative count; a histogram with no buckets has
/// an empty one from 0 to 0, as Prometheus's zero-valued bucket.
fn rank_bucket(h: &FloatHistogram, rank: f64) -> (model::histogram::Bucket, f64) {
    let mut found = model::histogram::Bucket {
        lower: 0.0,
        upper: 0.0,
        lower_inclusive: false,
        upper_inclusive: false,
        count: 0.0,
    };
    let mut count = 0.0;
    for bucket in h.all_buckets() {
        found = bucket;
        count += bucket.count;
        if count >= rank {
            break;
        }
    }
    (found, count)
}

/// A bucket straddling zero (the zero bucket) of a histogram with buckets on one side only
/// is taken to end at zero on the other.
fn one_sided(h: &FloatHistogram, mut bucket: model::histogram::Bucket) -> model::histogram::Bucket {
    if bucket.lower < 0.0 && bucket.upper > 0.0 {
        if h.negative.is_empty() && !h.positive.is_empty() {
            bucket.lower = 0.0;
        } else if h.positive.is_empty() && !h.negative.is_empty() {
            bucket.upper = 0.0;
        }
    }
    bucket
}

/// `histogram_quantile` of a native histogram: linear interpolation within the bucket the
/// rank falls in, as Prometheus 2.42's `histogramQuantile`.
fn native_quantile(q: f64, h: &FloatHistogram) -> f64 {
    if q < 0.0 {
        return f64::NEG_INFINITY;
    }
    if q > 1.0 {
        return f64::INFINITY;
    }
    if h.count == 0.0 || q.is_nan() {
        return f64::NAN;
    }
    let mut rank = q * h.count;
    let (bucket, count) = rank_bucket(h, rank);
    let bucket = one_sided(h, bucket);
    // Rounding may take the buckets' total above the count.
    let count = count.min(h.count);
    if count < rank {
        // Not reached (observations of NaN): the top of the highest bucket.
        return bucket.upper;
    }
    rank -= count - bucket.count;
    bucket.lower + (bucket.upper - bucket.lower) * (rank / bucket.count)
}

/// `histogram_fraction`: the share of observations between `lower` and `upper`, buckets
/// split by linear interpolation, as Prometheus 2.42's `histogramFraction`.
fn histogram_fraction(lower: f64, upper: f64, h: &FloatHistogram) -> f64 {
    if h.count == 0.0 || lower.is_nan() || upper.is_nan() {
        return f64::NAN;
    }
    if lower >= upper {
        return 0.0;
    }
    let (mut rank, mut lower_rank, mut upper_rank) = (0.0, None, None);
    for bucket in h.all_buckets() {
        let b = one_sided(h, bucket);
        if lower_rank.is_none() && b.lower >= lower {
            lower_rank = Some(rank);
        }
        if upper_rank.is_none() && b.lower >= upper {
            upper_rank = Some(rank);
        }
        if lower_rank.is_some() && upper_rank.is_some() {
            break;
        }
        if lower_rank.is_none() && b.lower < lower && b.upper > lower {
            lower_rank = Some(rank + b.count * (lower - b.lower) / (b.upper - b.lower));
        }
        if upper_rank.is_none() && b.lower < upper && b.upper > upper {
            upper_rank = Some(rank + b.count * (upper - b.lower) / (b.upper - b.lower));
        }
        if lower_rank.is_some() && upper_rank.is_some() {
            break;
        }
        rank += b.count;
    }
    let within = |r: Option<f64>| r.filter(|r| *r <= h.count).unwrap_or(h.count);
    (within(upper_rank) - within(lower_rank)) / h.count
}

fn parse_le(text: &str) -> Result<f64, ()> {
    match text {
        "+Inf" | "Inf" | "+inf" | "inf" => Ok(f64::INFINITY),
        "-Inf" | "-inf" => Ok(f64::NEG_INFINITY),
        other => other.parse().map_err(|_| ()),
    }
}

fn bucket_quantile(q: f64, buckets: &mut [(f64, f64)]) -> f64 {
    if q.is_nan() {
        return f64::NAN;
    }
    if q < 0.0 {
        return f64::NEG_INFINITY;
    }
    if q > 1.0 {
        return f64::INFINITY;
    }
    buckets.sort_by(|a, b| a.0.partial_cmp(&b.0).unwrap_or(std::cmp::Ordering::Equal));
    // One bound written two ways (`0.1`, `1e-1`) is one bucket: their counts add up.
    let mut merged: Vec<(f64, f64)> = Vec::with_capacity(buckets.len());
    for (upper, count) in buckets.iter().copied() {
        match merged.last_mut() {
            Some(last) if last.0 == upper => last.1 += count,
            _ => merged.push((upper, count)),
        }
    }
    let buckets = merged.as_mut_slice();
    if buckets.len() < 2 || buckets.last().is_none_or(|b| b.0 != f64::INFINITY) {
        return f64::NAN;
    }
    // Make counts monotonic, as Prometheus does.
    let mut max = f64::NEG_INFINITY;
    for b in buckets.iter_mut() {
        if b.1 > max {
            max = b.1;
        } else {
            b.1 = max;
        }
    }
    let observations = buckets[buckets.len() - 1].1;
    if observations == 0.0 {
        return f64::NAN;
    }
    let rank = q * observations;
    let i = buckets.partition_point(|b| b.1 < rank);
    if i == buckets.len() - 1 {
        return buckets[buckets.len() - 2].0;
    }
    if i == 0 && buckets[0].0 <= 0.0 {
        return buckets[0].0;
    }
    let (mut start, mut count, mut rank) = (0.0, buckets[i].1, rank);
    let end = buckets[i].0;
    if i > 0 {
        start = buckets[i - 1].0;
        count -= buckets[i - 1].1;
        rank -= buckets[i - 1].1;
    }
    start + (end - start) * (rank / count)
}

fn date_part(name: &str, seconds: f64) -> f64 {
    let Some(time) = DateTime::from_timestamp(seconds as i64, 0) else {
        return f64::NAN;
    };
    match name {
        "minute" => time.minute() as f64,
        "hour" => time.hour() as f64,
        "day_of_month" => time.day() as f64,
        "day_of_week" => time.weekday().num_days_from_sunday() as f64,
        "day_of_year" => time.ordinal() as f64,
        "days_in_month" => {
            let (y, m) = (time.year(), time.month());
            let next = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
            let first = chrono::NaiveDate::from_ymd_opt(y, m, 1);
            let following = chrono::NaiveDate::from_ymd_opt(next.0, next.1, 1);
            match (first, following) {
                (Some(a), Some(b)) => (b - a).num_days() as f64,
                _ => f64::NAN,
            }
        }
        "month" => time.month() as f64,
        "year" => time.year() as f64,
        _ => f64::NAN,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_sort_nan_lowest_as_prometheus() {
        assert_eq!(quantile(0.5, vec![1.0, f64::NAN, 3.0]), 1.0);
        assert_eq!(quantile(1.0, vec![1.0, f64::NAN, 3.0]), 3.0);
        assert!(quantile(0.0, vec![1.0, f64::NAN, 3.0]).is_nan());
        assert_eq!(quantile(0.5, vec![4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(quantile(2.0, vec![1.0]), f64::INFINITY);
    }
}
