//! `GET /api/v1/rules`, `GET /api/v1/alerts` and `POST /-/reload`, answering as Prometheus
//! 2.42 does (Grafana's rule and alert views read these), per tenant.

use axum::Json;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use model::auth::TenantResolver;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::manager::RuleManager;
use crate::notifier::rfc3339;
use crate::rules::{Alert, AlertState, AlertingRule, Group, Rule};

#[derive(Clone, Debug)]
struct ApiState {
    manager: RuleManager,
    tenants: std::sync::Arc<TenantResolver>,
}

/// The alerting routes, resolving tenants as the gateway and the query API do.
pub fn routes(manager: RuleManager, tenants: TenantResolver) -> axum::Router {
    axum::Router::new()
        .route("/api/v1/rules", get(rules))
        .route("/api/v1/alerts", get(alerts))
        .route("/-/reload", post(reload).put(reload))
        .with_state(ApiState {
            manager,
            tenants: std::sync::Arc::new(tenants),
        })
}

/// An API error in Prometheus's JSON shape.
struct ApiError {
    status: StatusCode,
    kind: &'static str,
    message: String,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({"status": "error", "errorType": self.kind, "error": self.message});
        (self.status, Json(body)).into_response()
    }
}

fn error(status: StatusCode, kind: &'static str, message: impl Into<String>) -> ApiError {
    ApiError {
        status,
        kind,
        message: message.into(),
    }
}

fn tenant(state: &ApiState, headers: &HeaderMap) -> Result<model::TenantId, ApiError> {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    state
        .tenants
        .resolve(header("authorization"), header(model::auth::TENANT_HEADER))
        .map_err(|e| match e {
            model::auth::AuthError::Unauthorized => error(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "a valid bearer token is required (Authorization: Bearer <token>)",
            ),
            other => error(StatusCode::BAD_REQUEST, "bad_data", other.to_string()),
        })
}

#[derive(Debug, Deserialize)]
struct RulesParams {
    #[serde(rename = "type")]
    kind: Option<String>,
}

async fn rules(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Query(params): Query<RulesParams>,
) -> Response {
    let tenant = match tenant(&state, &headers) {
        Ok(t) => t,
        Err(error) => return error.into_response(),
    };
    let (alerting, recording) = match params.kind.as_deref() {
        None | Some("") => (true, true),
        Some("alert") => (true, false),
        Some("record") => (false, true),
        Some(other) => {
            return error(
                StatusCode::BAD_REQUEST,
                "bad_data",
                format!("invalid parameter type: {other:?} (use alert or record)"),
            )
            .into_response();
        }
    };
    let groups: Vec<Value> = state
        .manager
        .groups(&tenant)
        .await
        .iter()
        .map(|g| group_json(g, alerting, recording))
        .collect();
    Json(json!({"status": "success", "data": {"groups": groups}})).into_response()
}

async fn alerts(State(state): State<ApiState>, headers: HeaderMap) -> Response {
    let tenant = match tenant(&state, &headers) {
        Ok(t) => t,
        Err(error) => return error.into_response(),
    };
    let mut out = Vec::new();
    for group in state.manager.groups(&tenant).await {
        for rule in &group.rules {
            if let Rule::Alerting(rule) = rule {
                out.extend(active(rule).map(alert_json));
            }
        }
    }
    Json(json!({"status": "success", "data": {"alerts": out}})).into_response()
}

async fn reload(State(state): State<ApiState>, headers: HeaderMap) -> Response {
    // With auth on, only a holder of a token may make every group restart.
    if let Err(error) = tenant(&state, &headers) {
        return error.into_response();
    }
    match state.manager.reload().await {
        Ok(_) => (StatusCode::OK, "").into_response(),
        Err(errors) => {
            let text: Vec<String> = errors.iter().map(ToString::to_string).collect();
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                format!(
                    "failed to reload config: {}\n(the rules loaded before keep running)\n",
                    text.join("; ")
                ),
            )
                .into_response()
        }
    }
}

/// Alerts Prometheus lists: pending and firing, not the resolved ones it still keeps.
fn active(rule: &AlertingRule) -> impl Iterator<Item = &Alert> {
    let mut alerts: Vec<&Alert> = rule
        .active
        .values()
        .filter(|a| a.state != AlertState::Inactive)
        .collect();
    alerts.sort_by(|a, b| a.labels.cmp(&b.labels));
    alerts.into_iter()
}

/// Go's `strconv.FormatFloat(v, 'e', -1, 64)`, which Prometheus uses for alert values.
fn value_text(v: f64) -> String {
    crate::expand::go_exp(v, None)
}

/// Seconds as Go's JSON encoder prints a float64 of them: `60`, not `60.0`.
fn seconds(ms: i64) -> Value {
    if ms % 1000 == 0 {
        json!(ms / 1000)
    } else {
        json!(ms as f64 / 1000.0)
    }
}

fn alert_json(alert: &Alert) -> Value {
    json!({
        "labels": alert.labels,
        "annotations": alert.annotations,
        "state": alert.state.as_str(),
        "activeAt": rfc3339(alert.active_at_ms),
        "value": value_text(alert.value),
    })
}

fn group_json(group: &Group, alerting: bool, recording: bool) -> Value {
    let rules: Vec<Value> = group
        .rules
        .iter()
        .filter_map(|rule| {
            let status = rule.status();
            let mut json = match rule {
                Rule::Alerting(r) if alerting => {
                    let alerts: Vec<Value> = active(r).map(alert_json).collect();
                    let state = if r.active.values().any(|a| a.state == AlertState::Firing) {
                        "firing"
                    } else if r.active.values().any(|a| a.state == AlertState::Pending) {
                        "pending"
                    } else {
                        "inactive"
                    };
                    json!({
                        "state": state,
                        "name": r.name,
                        "query": r.query,
                        "duration": seconds(r.hold_ms),
                        "keepFiringFor": seconds(r.keep_firing_for_ms),
                        "labels": r.labels,
                        "annotations": r.annotations,
                        "alerts": alerts,
                        "type": "alerting",
                    })
                }
                Rule::Recording(r) if recording => {
                    let mut json = json!({
                        "name": r.name,
                        "query": r.query,
                        "type": "recording",
                    });
                    // Prometheus leaves empty labels out of recording rules (`omitempty`).
                    if !r.labels.is_empty() {
                        json["labels"] = json!(r.labels);
                    }
                    json
                }
                _ => return None,
            };
            json["health"] = json!(status.health.as_str());
            json["evaluationTime"] = json!(status.eval_seconds);
            json["lastEvaluation"] = json!(
                status
                    .last_eval_ms
                    .map_or_else(|| "0001-01-01T00:00:00Z".to_owned(), rfc3339)
            );
            if let Some(e) = &status.last_error {
                json["lastError"] = json!(e);
            }
            Some(json)
        })
        .collect();
    json!({
        "name": group.name,
        "file": group.file,
        "rules": rules,
        "interval": seconds(group.interval_ms),
        "limit": group.limit,
        "evaluationTime": group.eval_seconds,
        "lastEvaluation": group.last_eval_ms.map_or_else(|| "0001-01-01T00:00:00Z".to_owned(), rfc3339),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_print_as_prometheus_api_prints_them() {
        assert_eq!(value_text(1.0), "1e+00");
        assert_eq!(value_text(0.25), "2.5e-01");
        assert_eq!(value_text(12345.0), "1.2345e+04");
    }
}
