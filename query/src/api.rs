//! Prometheus's query endpoints: `/api/v1/query` and `/api/v1/query_range`, with its
//! parameters, its JSON and its errors, so Grafana and promtool work unchanged.

use std::time::{SystemTime, UNIX_EPOCH};

use axum::Json as JsonBody;
use axum::extract::rejection::FormRejection;
use axum::extract::{Form, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::{Value as Json, json};

use crate::QueryService;
use crate::error::{ErrorType, QueryError, bad};
use crate::http::{parse_duration, tenant_of, timeout};
use crate::promql::{self, EvalError, Histogram, LabelSet, Steps, Value};

/// Prometheus refuses range queries of more points than this per series.
const MAX_POINTS: i64 = 11_000;

#[derive(Debug, Deserialize)]
pub(crate) struct QueryParams {
    query: Option<String>,
    time: Option<String>,
    start: Option<String>,
    end: Option<String>,
    step: Option<String>,
    timeout: Option<String>,
}

impl From<EvalError> for QueryError {
    fn from(error: EvalError) -> Self {
        let kind = match error {
            EvalError::Parse(_) => ErrorType::BadData,
            EvalError::Execution(_) => ErrorType::Execution,
            EvalError::Storage(_) => ErrorType::Unavailable,
            EvalError::Canceled => ErrorType::Canceled,
        };
        QueryError::new(kind, error.to_string())
    }
}

/// A time parameter: Unix seconds (`1700000000.5`) or RFC 3339.
pub(crate) fn parse_time(name: &str, text: &str) -> Result<i64, QueryError> {
    let text = text.trim();
    // Prometheus's own bounds are far wider, but no query needs times past ±10^13 s
    // (~300,000 years), and staying inside keeps every step computation exact.
    if let Ok(seconds) = text.parse::<f64>() {
        if !(seconds.is_finite() && seconds.abs() <= 1e13) {
            return Err(bad(format!(
                "invalid parameter \"{name}\": {text:?} is out of range"
            )));
        }
        return Ok((seconds * 1000.0).round() as i64);
    }
    chrono::DateTime::parse_from_rfc3339(text)
        .map(|t| t.timestamp_millis())
        .map_err(|_| {
            bad(format!(
                "invalid parameter \"{name}\": cannot parse {text:?} to a valid timestamp"
            ))
        })
}

/// Prometheus's check that a range does not end before it starts.
fn check_order(start: i64, end: i64) -> Result<(), QueryError> {
    if end < start {
        return Err(bad(
            "invalid parameter \"end\": end timestamp must not be before start time",
        ));
    }
    Ok(())
}

/// Optional `start` and `end` parameters, each parsed when given and in order when both
/// are.
pub(crate) fn optional_range(
    start: Option<&str>,
    end: Option<&str>,
) -> Result<(Option<i64>, Option<i64>), QueryError> {
    let start = start.map(|t| parse_time("start", t)).transpose()?;
    let end = end.map(|t| parse_time("end", t)).transpose()?;
    if let (Some(start), Some(end)) = (start, end) {
        check_order(start, end)?;
    }
    Ok((start, end))
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

pub(crate) async fn instant(
    State(service): State<QueryService>,
    headers: HeaderMap,
    params: Result<Form<QueryParams>, FormRejection>,
) -> Response {
    respond(answer(&service, &headers, params, false).await)
}

pub(crate) async fn range(
    State(service): State<QueryService>,
    headers: HeaderMap,
    params: Result<Form<QueryParams>, FormRejection>,
) -> Response {
    respond(answer(&service, &headers, params, true).await)
}

fn respond(result: Result<QueryData, QueryError>) -> Response {
    match result {
        Ok(data) => JsonBody(Success {
            data,
            status: "success",
        })
        .into_response(),
        Err(error) => error.into_response(),
    }
}

/// Fields in the order the `json!` objects this replaced wrote them (sorted keys), so the
/// bytes stay the same.
#[derive(Serialize)]
struct Success {
    data: QueryData,
    status: &'static str,
}

/// A query's `data`. A range query's matrix is written straight from the evaluated
/// points: a dashboard panel is hundreds of thousands of them, and building each as a
/// JSON tree first cost more than evaluating it.
#[derive(Serialize)]
#[serde(untagged)]
enum QueryData {
    Tree(Json),
    Matrix(Matrix),
}

#[derive(Serialize)]
struct Matrix {
    result: Vec<MatrixSeries>,
    #[serde(rename = "resultType")]
    result_type: &'static str,
}

/// `{"metric": {...}, "values": [[seconds, "value"], ...], "histograms": [[seconds,
/// {...}], ...]}`, each list only when the series has points of its kind, as Prometheus
/// writes a series.
struct MatrixSeries {
    labels: LabelSet,
    points: Vec<(i64, f64)>,
    histograms: Vec<(i64, Histogram)>,
}

impl MatrixSeries {
    fn is_empty(&self) -> bool {
        self.points.is_empty() && self.histograms.is_empty()
    }
}

impl Serialize for MatrixSeries {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        struct Labels<'a>(&'a LabelSet);
        impl Serialize for Labels<'_> {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.collect_map(self.0.iter().map(|(name, value)| (name, value)))
            }
        }
        struct Points<'a>(&'a [(i64, f64)]);
        impl Serialize for Points<'_> {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.collect_seq(self.0.iter().map(|(t, v)| point(*t, *v)))
            }
        }
        struct Histograms<'a>(&'a [(i64, Histogram)]);
        impl Serialize for Histograms<'_> {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.collect_seq(
                    self.0
                        .iter()
                        .map(|(t, h)| (Timestamp(*t), HistogramJson(h))),
                )
            }
        }
        let mut map = serializer.serialize_map(None)?;
        map.serialize_entry("metric", &Labels(&self.labels))?;
        if !self.points.is_empty() {
            map.serialize_entry("values", &Points(&self.points))?;
        }
        if !self.histograms.is_empty() {
            map.serialize_entry("histograms", &Histograms(&self.histograms))?;
        }
        map.end()
    }
}

/// A sample time as Prometheus writes it: seconds, a whole number when it is one.
#[derive(Clone, Copy)]
pub(crate) struct Timestamp(pub(crate) i64);

impl Serialize for Timestamp {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if self.0 % 1000 == 0 {
            serializer.serialize_i64(self.0 / 1000)
        } else {
            serializer.serialize_f64(self.0 as f64 / 1000.0)
        }
    }
}

/// A native histogram as Prometheus writes it: `{"count": "…", "sum": "…", "buckets":
/// [[boundaries, "lower", "upper", "count"], …]}`, the populated buckets only, and
/// `boundaries` 0 (lower open, upper closed), 1 (lower closed, upper open), 2 (both open)
/// or 3 (both closed).
struct HistogramJson<'a>(&'a model::FloatHistogram);

impl Serialize for HistogramJson<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let h = self.0;
        let buckets: Vec<(u8, String, String, String)> = h
            .all_buckets()
            .into_iter()
            .filter(|b| b.count != 0.0)
            .map(|b| {
                let boundaries = match (b.lower_inclusive, b.upper_inclusive) {
                    (false, true) => 0,
                    (true, false) => 1,
                    (false, false) => 2,
                    (true, true) => 3,
                };
                (
                    boundaries,
                    model::format_api_value(b.lower),
                    model::format_api_value(b.upper),
                    model::format_api_value(b.count),
                )
            })
            .collect();
        let mut map = serializer.serialize_map(None)?;
        map.serialize_entry("count", &model::format_api_value(h.count))?;
        map.serialize_entry("sum", &model::format_api_value(h.sum))?;
        if !buckets.is_empty() {
            map.serialize_entry("buckets", &buckets)?;
        }
        map.end()
    }
}

async fn answer(
    service: &QueryService,
    headers: &HeaderMap,
    params: Result<Form<QueryParams>, FormRejection>,
    is_range: bool,
) -> Result<QueryData, QueryError> {
    let shared = &service.shared;
    let tenant = tenant_of(shared, headers)?;
    let Form(params) = params.map_err(|e| bad(format!("cannot read the parameters: {e}")))?;
    let query = params
        .query
        .filter(|q| !q.trim().is_empty())
        .ok_or_else(|| bad("invalid parameter \"query\": the query is missing"))?;
    let steps = if is_range {
        let start = parse_time(
            "start",
            params
                .start
                .as_deref()
                .ok_or_else(|| bad("invalid parameter \"start\": missing"))?,
        )?;
        let end = parse_time(
            "end",
            params
                .end
                .as_deref()
                .ok_or_else(|| bad("invalid parameter \"end\": missing"))?,
        )?;
        check_order(start, end)?;
        let step = params
            .step
            .as_deref()
            .ok_or_else(|| bad("invalid parameter \"step\": missing"))?;
        let step_ms = parse_duration(step)
            .map_err(|_| {
                bad(format!(
                    "invalid parameter \"step\": cannot parse {step:?} to a valid duration"
                ))
            })?
            .as_millis() as i64;
        if step_ms <= 0 {
            return Err(bad(
                "zero or negative query resolution step widths are not accepted. Try a positive integer",
            ));
        }
        if (end - start) / step_ms > MAX_POINTS {
            return Err(bad(
                "exceeded maximum resolution of 11,000 points per timeseries. Try decreasing the query resolution (?step=XX)",
            ));
        }
        Steps {
            start_ms: start,
            end_ms: end,
            step_ms,
        }
    } else {
        let at = match params.time.as_deref() {
            Some(t) => parse_time("time", t)?,
            None => now_ms(),
        };
        Steps::instant(at)
    };
    let timeout = timeout(shared, params.timeout.as_deref())?;
    let expr = std::sync::Arc::new(promql::parse(&query)?);
    let evaluation = shared.engine.evaluate(&tenant, expr, steps);
    let value = tokio::time::timeout(timeout, evaluation)
        .await
        .map_err(|_| {
            QueryError::new(
                ErrorType::Timeout,
                "query timed out in expression evaluation",
            )
        })??;
    Ok(if is_range {
        QueryData::Matrix(range_matrix(value, &steps)?)
    } else {
        QueryData::Tree(instant_json(value, steps.start_ms))
    })
}

fn seconds(t: i64) -> Json {
    json!(Timestamp(t))
}

/// A sample as Prometheus writes it: seconds as a number, the value as a string.
fn point(t: i64, v: f64) -> (Timestamp, String) {
    (Timestamp(t), model::format_api_value(v))
}

fn sample(t: i64, v: f64) -> Json {
    json!(point(t, v))
}

fn histogram_sample(t: i64, h: &model::FloatHistogram) -> Json {
    json!((Timestamp(t), HistogramJson(h)))
}

fn metric(labels: &[(String, String)]) -> Json {
    Json::Object(
        labels
            .iter()
            .map(|(n, v)| (n.clone(), Json::String(v.clone())))
            .collect(),
    )
}

fn instant_json(value: Value, at: i64) -> Json {
    match value {
        Value::Scalar(values) => json!({
            "resultType": "scalar",
            "result": sample(at, values.first().copied().unwrap_or(f64::NAN)),
        }),
        Value::String(s) => json!({"resultType": "string", "result": [seconds(at), s]}),
        Value::Vector(series) => json!({
            "resultType": "vector",
            "result": series
                .iter()
                .filter_map(|s| match (s.points.first().copied().flatten(), s.histogram(0)) {
                    (Some(v), _) => Some(json!({"metric": metric(&s.labels), "value": sample(at, v)})),
                    (None, Some(h)) => Some(json!({
                        "metric": metric(&s.labels),
                        "histogram": histogram_sample(at, h),
                    })),
                    (None, None) => None,
                })
                .collect::<Vec<_>>(),
        }),
        Value::Matrix(series) => json!({
            "resultType": "matrix",
            "result": series
                .into_iter()
                .map(|s| MatrixSeries {
                    labels: s.labels,
                    points: s.samples,
                    histograms: s.histograms,
                })
                .collect::<Vec<_>>(),
        }),
    }
}

/// A range query's result: always a matrix, series sorted by their labels as Prometheus
/// sorts them.
fn range_matrix(value: Value, steps: &Steps) -> Result<Matrix, QueryError> {
    let times = steps.times()?;
    let mut series: Vec<MatrixSeries> = match value {
        Value::Scalar(values) => vec![MatrixSeries {
            labels: Vec::new(),
            points: times.iter().copied().zip(values).collect(),
            histograms: Vec::new(),
        }],
        Value::Vector(series) => series
            .into_iter()
            .map(|s| MatrixSeries {
                points: times
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
        other => {
            return Err(bad(format!(
                "invalid expression type \"{}\" for range query, must be Scalar or instant Vector",
                other.type_name()
            )));
        }
    };
    series.retain(|s| !s.is_empty());
    series.sort_by(|a, b| a.labels.cmp(&b.labels));
    Ok(Matrix {
        result_type: "matrix",
        result: series,
    })
}
