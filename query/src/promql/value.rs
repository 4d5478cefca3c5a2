//! What PromQL expressions evaluate to, over every step of a query at once.

use std::collections::HashMap;
use std::sync::Arc;

use model::FloatHistogram;

use super::EvalError;

/// A label set, sorted by name; `__name__` is an ordinary entry.
pub type LabelSet = Vec<(String, String)>;

pub const METRIC_NAME: &str = "__name__";

/// A native histogram value, shared: an instant selector repeats one sample at every step
/// its lookback covers.
pub type Histogram = Arc<FloatHistogram>;

/// One series of an instant vector across the query's steps: `points[i]` is its float
/// value at step `i`, if it has one there, and `histograms[i]` its native histogram value.
/// A step has one or the other, never both; `histograms` is empty for a series of floats
/// only (nearly all), so float-only code never pays for histograms.
#[derive(Clone, Debug, PartialEq)]
pub struct Series {
    pub labels: LabelSet,
    pub points: Vec<Option<f64>>,
    pub histograms: Vec<Option<Histogram>>,
}

impl Series {
    /// A series of float values only.
    pub fn floats(labels: LabelSet, points: Vec<Option<f64>>) -> Self {
        Self {
            labels,
            points,
            histograms: Vec::new(),
        }
    }

    /// The histogram value at `step`, if any.
    pub fn histogram(&self, step: usize) -> Option<&Histogram> {
        self.histograms.get(step).and_then(Option::as_ref)
    }

    /// Whether the series has a value of either kind at `step`.
    pub fn present(&self, step: usize) -> bool {
        self.points[step].is_some() || self.histogram(step).is_some()
    }

    /// Whether the series has any histogram value.
    pub fn has_histograms(&self) -> bool {
        self.histograms.iter().any(Option::is_some)
    }
}

/// One series of a range vector: raw samples, floats and native histograms apart (a
/// series may have both, at different times).
#[derive(Clone, Debug, PartialEq)]
pub struct RangeSeries {
    pub labels: LabelSet,
    pub samples: Vec<(i64, f64)>,
    pub histograms: Vec<(i64, Histogram)>,
}

impl RangeSeries {
    /// A series of float samples only.
    pub fn floats(labels: LabelSet, samples: Vec<(i64, f64)>) -> Self {
        Self {
            labels,
            samples,
            histograms: Vec::new(),
        }
    }
}

/// A value at every step of a query.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    /// One number per step.
    Scalar(Vec<f64>),
    String(String),
    Vector(Vec<Series>),
    /// Only as the result of an instant query (`foo[5m]`): functions take range vectors
    /// straight from their selectors.
    Matrix(Vec<RangeSeries>),
}

impl Value {
    pub fn type_name(&self) -> &'static str {
        match self {
            Self::Scalar(_) => "scalar",
            Self::String(_) => "string",
            Self::Vector(_) => "instant vector",
            Self::Matrix(_) => "range vector",
        }
    }
}

/// Builds an instant vector step by step, one series per label set.
#[derive(Debug)]
pub struct VectorBuilder {
    steps: usize,
    index: HashMap<LabelSet, usize>,
    series: Vec<Series>,
}

impl VectorBuilder {
    pub fn new(steps: usize) -> Self {
        Self {
            steps,
            index: HashMap::new(),
            series: Vec::new(),
        }
    }

    /// Sets `labels`' value at `step`. Two values for one label set at one step is
    /// Prometheus's "vector cannot contain metrics with the same labelset".
    pub fn push(&mut self, labels: LabelSet, step: usize, value: f64) -> Result<(), EvalError> {
        let index = self.slot(labels, step)?;
        self.series[index].points[step] = Some(value);
        Ok(())
    }

    /// Sets `labels`' native histogram value at `step`, as [`VectorBuilder::push`] does a
    /// float.
    pub fn push_histogram(
        &mut self,
        labels: LabelSet,
        step: usize,
        value: Histogram,
    ) -> Result<(), EvalError> {
        let index = self.slot(labels, step)?;
        let steps = self.steps;
        let histograms = &mut self.series[index].histograms;
        if histograms.is_empty() {
            *histograms = vec![None; steps];
        }
        histograms[step] = Some(value);
        Ok(())
    }

    /// Sets a series' value at `step` to whichever of `float` and `histogram` it has.
    pub fn push_value(
        &mut self,
        labels: LabelSet,
        step: usize,
        float: Option<f64>,
        histogram: Option<&Histogram>,
    ) -> Result<(), EvalError> {
        match (float, histogram) {
            (Some(v), _) => self.push(labels, step, v),
            (None, Some(h)) => self.push_histogram(labels, step, h.clone()),
            (None, None) => Ok(()),
        }
    }

    /// The series of `labels` (created if new), checked to have no value at `step` yet.
    fn slot(&mut self, labels: LabelSet, step: usize) -> Result<usize, EvalError> {
        let index = match self.index.get(&labels) {
            Some(index) => *index,
            None => {
                let index = self.series.len();
                self.series
                    .push(Series::floats(labels.clone(), vec![None; self.steps]));
                self.index.insert(labels, index);
                index
            }
        };
        if self.series[index].present(step) {
            return Err(duplicate_labelset());
        }
        Ok(index)
    }

    /// Adds a whole series of floats: one label set hashed once, rather than once per
    /// point. A label set already present takes the points, and a step with two values is
    /// the same duplicate-labelset error as [`VectorBuilder::push`].
    pub fn push_series(
        &mut self,
        labels: LabelSet,
        points: Vec<Option<f64>>,
    ) -> Result<(), EvalError> {
        self.push_whole(Series::floats(labels, points))
    }

    /// Adds a whole series, its histogram values included, as
    /// [`VectorBuilder::push_series`] does.
    pub fn push_whole(&mut self, series: Series) -> Result<(), EvalError> {
        if series.points.iter().all(Option::is_none) && !series.has_histograms() {
            return Ok(());
        }
        let Some(index) = self.index.get(&series.labels).copied() else {
            self.index.insert(series.labels.clone(), self.series.len());
            self.series.push(series);
            return Ok(());
        };
        for step in 0..self.steps.min(series.points.len()) {
            let float = series.points[step];
            let histogram = series.histogram(step).cloned();
            if float.is_none() && histogram.is_none() {
                continue;
            }
            if self.series[index].present(step) {
                return Err(duplicate_labelset());
            }
            let target = &mut self.series[index];
            target.points[step] = float;
            if let Some(h) = histogram {
                if target.histograms.is_empty() {
                    target.histograms = vec![None; self.steps];
                }
                target.histograms[step] = Some(h);
            }
        }
        Ok(())
    }

    pub fn finish(self) -> Vec<Series> {
        self.series
    }
}

fn duplicate_labelset() -> EvalError {
    EvalError::Execution("vector cannot contain metrics with the same labelset".into())
}

/// `labels` without `__name__`.
pub fn drop_name(labels: &LabelSet) -> LabelSet {
    labels
        .iter()
        .filter(|(name, _)| name != METRIC_NAME)
        .cloned()
        .collect()
}

/// The value of `name` in `labels`, or "".
pub fn label<'a>(labels: &'a LabelSet, name: &str) -> &'a str {
    labels
        .iter()
        .find(|(n, _)| n == name)
        .map_or("", |(_, v)| v.as_str())
}

/// Sets `name` to `value` in `labels` (an empty value removes it, as in Prometheus).
pub fn set_label(labels: &mut LabelSet, name: &str, value: &str) {
    match labels.binary_search_by(|(n, _)| n.as_str().cmp(name)) {
        Ok(i) if value.is_empty() => {
            labels.remove(i);
        }
        Ok(i) => labels[i].1 = value.to_owned(),
        Err(_) if value.is_empty() => {}
        Err(i) => labels.insert(i, (name.to_owned(), value.to_owned())),
    }
}

/// `{a="1", b="2"}` as Prometheus prints a label set.
pub fn format_labels(labels: &LabelSet) -> String {
    let inner: Vec<String> = labels.iter().map(|(n, v)| format!("{n}={v:?}")).collect();
    format!("{{{}}}", inner.join(", "))
}
