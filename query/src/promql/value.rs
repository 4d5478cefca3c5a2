//! What PromQL expressions evaluate to, over every step of a query at once.

use std::collections::HashMap;

use super::EvalError;

/// A label set, sorted by name; `__name__` is an ordinary entry.
pub type LabelSet = Vec<(String, String)>;

pub const METRIC_NAME: &str = "__name__";

/// One series of an instant vector across the query's steps: `points[i]` is its value at
/// step `i`, if it has one there.
#[derive(Clone, Debug, PartialEq)]
pub struct Series {
    pub labels: LabelSet,
    pub points: Vec<Option<f64>>,
}

/// One series of a range vector: raw samples.
#[derive(Clone, Debug, PartialEq)]
pub struct RangeSeries {
    pub labels: LabelSet,
    pub samples: Vec<(i64, f64)>,
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
        let index = match self.index.get(&labels) {
            Some(index) => *index,
            None => {
                let index = self.series.len();
                self.series.push(Series {
                    labels: labels.clone(),
                    points: vec![None; self.steps],
                });
                self.index.insert(labels, index);
                index
            }
        };
        let point = &mut self.series[index].points[step];
        if point.is_some() {
            return Err(EvalError::Execution(
                "vector cannot contain metrics with the same labelset".into(),
            ));
        }
        *point = Some(value);
        Ok(())
    }

    /// Adds a whole series: one label set hashed once, rather than once per point. A label
    /// set already present takes the points, and a step with two values is the same
    /// duplicate-labelset error as [`VectorBuilder::push`].
    pub fn push_series(
        &mut self,
        labels: LabelSet,
        points: Vec<Option<f64>>,
    ) -> Result<(), EvalError> {
        if points.iter().all(Option::is_none) {
            return Ok(());
        }
        match self.index.get(&labels) {
            Some(index) => {
                let target = &mut self.series[*index].points;
                for (slot, point) in target.iter_mut().zip(points) {
                    if point.is_some() {
                        if slot.is_some() {
                            return Err(EvalError::Execution(
                                "vector cannot contain metrics with the same labelset".into(),
                            ));
                        }
                        *slot = point;
                    }
                }
            }
            None => {
                self.index.insert(labels.clone(), self.series.len());
                self.series.push(Series { labels, points });
            }
        }
        Ok(())
    }

    pub fn finish(self) -> Vec<Series> {
        self.series
    }
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
