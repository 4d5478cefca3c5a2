//! `/api/v1/query_exemplars`: the stored exemplars of the series a PromQL query selects,
//! so Grafana can jump from a latency panel to the trace behind a point.
//!
//! Exemplars live in the tenant's `exemplars` table on either engine (written by ingest
//! from remote-write and OTLP metrics). The table is read through the tenant's SQL session
//! with the time range and, where the selector names its metric, the name pushed down; each
//! row's series is then checked against the selector's matchers.

use std::collections::BTreeMap;

use axum::Json as JsonBody;
use axum::extract::rejection::FormRejection;
use axum::extract::{Form, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use datafusion::arrow::array::{Array, AsArray, RecordBatch};
use datafusion::arrow::datatypes::{Float64Type, Int64Type};
use serde_json::{Map, Value as Json, json};
use storage::Matcher;

use crate::QueryService;
use crate::api::optional_range;
use crate::error::{ErrorType, QueryError, bad};
use crate::http::tenant_of;
use crate::promql;

#[derive(Debug, serde::Deserialize)]
pub(crate) struct ExemplarParams {
    query: Option<String>,
    start: Option<String>,
    end: Option<String>,
}

pub(crate) async fn query_exemplars(
    State(service): State<QueryService>,
    headers: HeaderMap,
    params: Result<Form<ExemplarParams>, FormRejection>,
) -> Response {
    match answer(&service, &headers, params).await {
        Ok(data) => JsonBody(json!({"status": "success", "data": data})).into_response(),
        Err(error) => error.into_response(),
    }
}

async fn answer(
    service: &QueryService,
    headers: &HeaderMap,
    params: Result<Form<ExemplarParams>, FormRejection>,
) -> Result<Json, QueryError> {
    let tenant = tenant_of(&service.shared, headers)?;
    let Form(params) = params.map_err(|e| bad(format!("cannot read the parameters: {e}")))?;
    let query = params
        .query
        .filter(|q| !q.trim().is_empty())
        .ok_or_else(|| bad("invalid parameter \"query\": the query is missing"))?;
    let (start, end) = optional_range(params.start.as_deref(), params.end.as_deref())?;
    let expr = promql::parse(&query)?;
    let mut selectors: Vec<(Option<String>, Vec<Matcher>)> = Vec::new();
    for selector in promql::selectors(&expr) {
        let matchers = promql::store_matchers(selector)?;
        let name = matchers
            .iter()
            .find(|m| m.name == model::METRIC_NAME_LABEL && m.op == storage::MatchOp::Equal)
            .map(|m| m.value.clone());
        selectors.push((name, matchers));
    }
    if selectors.is_empty() {
        return Ok(json!([]));
    }
    // One name for every selector narrows the read; otherwise all names are read.
    let name = selectors[0].0.clone().filter(|first| {
        selectors
            .iter()
            .all(|(name, _)| name.as_deref() == Some(first))
    });
    let batches = read_exemplars(service, &tenant, name.as_deref(), start, end).await?;
    // Series (as stored, a JSON object) → its exemplars: (time, value, labels).
    let mut found: BTreeMap<String, Vec<(i64, f64, String)>> = BTreeMap::new();
    let mut verdicts: BTreeMap<String, bool> = BTreeMap::new();
    for batch in &batches {
        let series = batch.column(0).as_string::<i32>();
        let times = batch.column(1).as_primitive::<Int64Type>();
        let values = batch.column(2).as_primitive::<Float64Type>();
        let labels = batch.column(3).as_string::<i32>();
        for row in 0..batch.num_rows() {
            if series.is_null(row) {
                continue;
            }
            let key = series.value(row);
            let selected = match verdicts.get(key) {
                Some(verdict) => *verdict,
                None => {
                    let verdict = selects(&selectors, key);
                    verdicts.insert(key.to_owned(), verdict);
                    verdict
                }
            };
            if selected {
                found.entry(key.to_owned()).or_default().push((
                    times.value(row),
                    values.value(row),
                    labels.value(row).to_owned(),
                ));
            }
        }
    }
    let data: Vec<Json> = found
        .into_iter()
        .map(|(series, mut exemplars)| {
            // One exemplar per series and time, as Prometheus keeps them: a batch resent
            // after a timeout can sit in the embedded store twice until compaction.
            exemplars.sort_by_key(|e| e.0);
            exemplars.dedup_by_key(|e| e.0);
            json!({
                "seriesLabels": object(&series),
                "exemplars": exemplars
                    .into_iter()
                    .map(|(t, v, labels)| json!({
                        "labels": object(&labels),
                        "value": model::format_api_value(v),
                        "timestamp": crate::api::Timestamp(t),
                    }))
                    .collect::<Vec<_>>(),
            })
        })
        .collect();
    Ok(Json::Array(data))
}

/// Whether the series (its labels as a JSON object) matches any selector.
fn selects(selectors: &[(Option<String>, Vec<Matcher>)], series: &str) -> bool {
    let Ok(labels) = serde_json::from_str::<Map<String, Json>>(series) else {
        return false;
    };
    let value = |name: &str| labels.get(name).and_then(Json::as_str).unwrap_or("");
    selectors
        .iter()
        .any(|(_, matchers)| matchers.iter().all(|m| m.matches(value(&m.name))))
}

fn object(text: &str) -> Json {
    serde_json::from_str(text).unwrap_or_else(|_| json!({}))
}

/// The tenant's exemplars in `[start, end]` (of metric `name`, each when given): series labels,
/// time in milliseconds, value and exemplar labels.
async fn read_exemplars(
    service: &QueryService,
    tenant: &model::TenantId,
    name: Option<&str>,
    start: Option<i64>,
    end: Option<i64>,
) -> Result<Vec<RecordBatch>, QueryError> {
    let unavailable = |e: String| QueryError::new(ErrorType::Unavailable, e);
    let context = service.shared.store.session(tenant).await?;
    let mut conditions = Vec::new();
    if let Some(start) = start {
        conditions.push(format!("timestamp >= to_timestamp_millis({start})"));
    }
    if let Some(end) = end {
        conditions.push(format!("timestamp <= to_timestamp_millis({end})"));
    }
    if let Some(name) = name {
        conditions.push(format!("metric_name = '{}'", name.replace('\'', "''")));
    }
    let mut sql =
        "SELECT series_labels, CAST(timestamp AS BIGINT), value, labels FROM exemplars".to_owned();
    if !conditions.is_empty() {
        sql.push_str(" WHERE ");
        sql.push_str(&conditions.join(" AND "));
    }
    context
        .sql(&sql)
        .await
        .map_err(|e| unavailable(format!("reading exemplars: {e}")))?
        .collect()
        .await
        .map_err(|e| unavailable(format!("reading exemplars: {e}")))
}
