//! The query service's HTTP routes.

use std::time::Duration;

use axum::Router;
use axum::extract::rejection::FormRejection;
use axum::extract::{Form, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Deserialize;

use crate::error::{ErrorType, QueryError};
use crate::sql::{self, Format};
use crate::{QueryService, Shared, api, exemplars, meta};
use model::TenantId;

pub(crate) fn routes(service: QueryService) -> Router {
    Router::new()
        .route("/api/v1/sql", get(sql_handler).post(sql_handler))
        .route("/api/v1/query", get(api::instant).post(api::instant))
        .route("/api/v1/query_range", get(api::range).post(api::range))
        .route("/api/v1/series", get(meta::series).post(meta::series))
        .route(
            "/api/v1/labels",
            get(meta::label_names).post(meta::label_names),
        )
        .route("/api/v1/label/{name}/values", get(meta::label_values))
        .route("/api/v1/metadata", get(meta::metadata))
        .route(
            "/api/v1/query_exemplars",
            get(exemplars::query_exemplars).post(exemplars::query_exemplars),
        )
        .route(
            "/api/v1/format_query",
            get(meta::format_query).post(meta::format_query),
        )
        .route("/api/v1/status/buildinfo", get(meta::build_info))
        .route("/api/v1/status/runtimeinfo", get(meta::runtime_info))
        .with_state(service)
}

/// The tenant of a request, by the gateway's rule.
pub(crate) fn tenant_of(shared: &Shared, headers: &HeaderMap) -> Result<TenantId, QueryError> {
    Ok(shared.tenants.resolve(
        header(headers, "authorization"),
        header(headers, model::auth::TENANT_HEADER),
    )?)
}

/// `/api/v1/sql`'s parameters, from the URL (GET) or a form body (POST), as Prometheus
/// takes its own.
#[derive(Debug, Deserialize)]
struct SqlParams {
    query: Option<String>,
    format: Option<String>,
    timeout: Option<String>,
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

async fn sql_handler(
    State(service): State<QueryService>,
    headers: HeaderMap,
    params: Result<Form<SqlParams>, FormRejection>,
) -> Response {
    match answer_sql(&service, &headers, params).await {
        Ok(response) => response,
        Err(error) => error.into_response(),
    }
}

async fn answer_sql(
    service: &QueryService,
    headers: &HeaderMap,
    params: Result<Form<SqlParams>, FormRejection>,
) -> Result<Response, QueryError> {
    let shared = &service.shared;
    let tenant = tenant_of(shared, headers)?;
    let Form(params) = params.map_err(|e| {
        QueryError::new(
            ErrorType::BadData,
            format!("cannot read the parameters: {e}"),
        )
    })?;
    let query = params
        .query
        .filter(|q| !q.trim().is_empty())
        .ok_or_else(|| QueryError::new(ErrorType::BadData, "the query parameter is missing"))?;
    let format = Format::parse(params.format.as_deref())?;
    let timeout = timeout(shared, params.timeout.as_deref())?;
    let run = sql::run(
        shared.store.as_ref(),
        &tenant,
        &query,
        shared.config.max_rows,
    );
    let result = tokio::time::timeout(timeout, run).await.map_err(|_| {
        QueryError::new(
            ErrorType::Timeout,
            format!("query timed out after {:.3} s", timeout.as_secs_f64()),
        )
    })??;
    result.into_response(format)
}

/// A query's time budget: what the request asks for (`timeout`), at most
/// `query.timeout_seconds`.
pub(crate) fn timeout(shared: &Shared, asked: Option<&str>) -> Result<Duration, QueryError> {
    // Validated at start: positive and at most a day.
    let limit = Duration::try_from_secs_f64(shared.config.timeout_seconds)
        .unwrap_or(Duration::from_secs(120));
    Ok(match asked {
        Some(text) => parse_duration(text)?.min(limit),
        None => limit,
    })
}

/// A duration as Prometheus takes one: seconds as a number (`1.5`), or with a unit (`ms`,
/// `s`, `m`, `h`, `d`, `w`, `y`, combinable as in `1m30s`).
pub(crate) fn parse_duration(text: &str) -> Result<Duration, QueryError> {
    let bad = || {
        QueryError::new(
            ErrorType::BadData,
            format!("invalid duration {text:?}: give seconds (1.5) or a duration (30s, 1m30s)"),
        )
    };
    let text = text.trim();
    if let Ok(seconds) = text.parse::<f64>() {
        return match Duration::try_from_secs_f64(seconds) {
            Ok(duration) if !duration.is_zero() => Ok(duration),
            _ => Err(bad()),
        };
    }
    match model::duration::parse_duration_ms(text) {
        Some(total_ms) if total_ms > 0 => Ok(Duration::from_millis(total_ms)),
        _ => Err(bad()),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn durations_read_as_prometheus_reads_them() {
        assert_eq!(parse_duration("1.5").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("1m30s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("2h").unwrap(), Duration::from_secs(7200));
        for bad in [
            "", "0", "-1", "s", "10x", "1.5s", "NaN", "0s", "1e20", "inf",
        ] {
            let error = parse_duration(bad).unwrap_err();
            assert_eq!(error.kind, ErrorType::BadData, "{bad:?}");
        }
    }
}
