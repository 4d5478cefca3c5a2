//! Errors as Prometheus's HTTP API reports them: `{"status":"error","errorType":...,
//! "error":...}` with the status code its clients (Grafana, promtool) act on.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use model::auth::AuthError;
use serde_json::json;
use thiserror::Error;

/// Prometheus's `errorType`s.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorType {
    /// The request is wrong (400): a parameter, the query's syntax or its names.
    BadData,
    /// The query is valid but could not be answered (422).
    Execution,
    /// The query ran out of time (503).
    Timeout,
    /// The storage engine failed (503: a retry may find it back).
    Unavailable,
    /// No tenant for the request (401).
    Unauthorized,
    /// The query was stopped because its client went away (499, nginx's and Prometheus's
    /// "client closed request").
    Canceled,
}

impl ErrorType {
    fn name(self) -> &'static str {
        match self {
            Self::BadData => "bad_data",
            Self::Execution => "execution",
            Self::Timeout => "timeout",
            Self::Unavailable => "unavailable",
            Self::Unauthorized => "unauthorized",
            Self::Canceled => "canceled",
        }
    }

    fn status(self) -> StatusCode {
        match self {
            Self::BadData => StatusCode::BAD_REQUEST,
            Self::Execution => StatusCode::UNPROCESSABLE_ENTITY,
            Self::Timeout | Self::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::Canceled => StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST),
        }
    }
}

/// A failed query: its type and a message saying what was wrong.
#[derive(Debug, Error)]
#[error("{message}")]
pub struct QueryError {
    pub kind: ErrorType,
    pub message: String,
}

impl QueryError {
    pub fn new(kind: ErrorType, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }
}

/// A `bad_data` error: the request is wrong, and `message` says where.
pub(crate) fn bad(message: impl Into<String>) -> QueryError {
    QueryError::new(ErrorType::BadData, message)
}

/// The storage engine failed: `unavailable`, which clients retry.
impl From<storage::StorageError> for QueryError {
    fn from(error: storage::StorageError) -> Self {
        Self::new(ErrorType::Unavailable, error.to_string())
    }
}

impl From<AuthError> for QueryError {
    fn from(error: AuthError) -> Self {
        let kind = match error {
            AuthError::Unauthorized => ErrorType::Unauthorized,
            AuthError::BadTenant(_) => ErrorType::BadData,
        };
        Self::new(kind, error.to_string())
    }
}

impl IntoResponse for QueryError {
    fn into_response(self) -> Response {
        let body = json!({
            "status": "error",
            "errorType": self.kind.name(),
            "error": self.message,
        });
        (self.kind.status(), Json(body)).into_response()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[tokio::test]
    async fn each_error_type_has_prometheus_s_name_and_status() {
        for (kind, name, status) in [
            (ErrorType::BadData, "bad_data", 400),
            (ErrorType::Execution, "execution", 422),
            (ErrorType::Timeout, "timeout", 503),
            (ErrorType::Unavailable, "unavailable", 503),
            (ErrorType::Unauthorized, "unauthorized", 401),
            (ErrorType::Canceled, "canceled", 499),
        ] {
            let response = QueryError::new(kind, "why").into_response();
            assert_eq!(response.status().as_u16(), status, "{name}");
            let body = axum::body::to_bytes(response.into_body(), 1 << 16)
                .await
                .unwrap();
            let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(
                json,
                json!({"status": "error", "errorType": name, "error": "why"})
            );
        }
    }
}
