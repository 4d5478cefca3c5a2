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
}

impl ErrorType {
    fn name(self) -> &'static str {
        match self {
            Self::BadData => "bad_data",
            Self::Execution => "execution",
            Self::Timeout => "timeout",
            Self::Unavailable => "unavailable",
            Self::Unauthorized => "unauthorized",
        }
    }

    fn status(self) -> StatusCode {
        match self {
            Self::BadData => StatusCode::BAD_REQUEST,
            Self::Execution => StatusCode::UNPROCESSABLE_ENTITY,
            Self::Timeout | Self::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
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
