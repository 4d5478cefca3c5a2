use axum::http::StatusCode;
use thiserror::Error;

/// Why a request (or part of it) was refused. Each variant maps to the HTTP status the
/// protocol's clients expect and says whether retrying can help; messages say what was
/// wrong and what to do.
#[derive(Debug, Error)]
pub enum GatewayError {
    #[error(
        "unknown bearer token: send `Authorization: Bearer <token>` with a token from gateway.auth.tokens"
    )]
    Unauthorized,
    #[error("invalid tenant: {0}")]
    BadTenant(String),
    #[error("request body is larger than the limit of {limit} bytes; send smaller batches")]
    BodyTooLarge { limit: u64 },
    #[error("{0}")]
    BadRequest(String),
    #[error("unsupported media type {0:?}")]
    UnsupportedMediaType(String),
    #[error(
        "ingestion rate limit of {rate}/s (burst {burst}) exceeded for tenant {tenant}; retry later or ask for a higher limit"
    )]
    RateLimited {
        tenant: String,
        rate: f64,
        burst: f64,
        retry_after_seconds: u64,
    },
    #[error("the gateway is overloaded (the bus is slower than the input); retry later")]
    Overloaded,
    #[error(
        "ingest is {behind_seconds:.1} s behind the accepted data (gateway.max_backlog_seconds is {limit_seconds}); retry later"
    )]
    Backlogged {
        behind_seconds: f64,
        limit_seconds: f64,
    },
    #[error("cannot store the data: {0}")]
    Unavailable(String),
}

impl GatewayError {
    pub fn status(&self) -> StatusCode {
        match self {
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::BadTenant(_) | Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::Overloaded | Self::Backlogged { .. } | Self::Unavailable(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
        }
    }

    /// Seconds a client should wait before retrying, for the `Retry-After` header.
    pub fn retry_after_seconds(&self) -> Option<u64> {
        match self {
            Self::RateLimited {
                retry_after_seconds,
                ..
            } => Some(*retry_after_seconds),
            Self::Overloaded | Self::Backlogged { .. } | Self::Unavailable(_) => Some(1),
            _ => None,
        }
    }

    /// The reason label for rejection metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Unauthorized => "unauthorized",
            Self::BadTenant(_) => "bad_tenant",
            Self::BodyTooLarge { .. } => "body_too_large",
            Self::BadRequest(_) => "bad_request",
            Self::UnsupportedMediaType(_) => "unsupported_media_type",
            Self::RateLimited { .. } => "rate_limited",
            Self::Overloaded => "overloaded",
            Self::Backlogged { .. } => "backlogged",
            Self::Unavailable(_) => "unavailable",
        }
    }
}

impl From<bus::BusError> for GatewayError {
    fn from(error: bus::BusError) -> Self {
        // A bus that refuses a well-formed batch is an outage on our side, never the
        // client's fault: 503 so the client retries.
        Self::Unavailable(error.to_string())
    }
}

impl From<model::auth::AuthError> for GatewayError {
    fn from(error: model::auth::AuthError) -> Self {
        match error {
            model::auth::AuthError::Unauthorized => Self::Unauthorized,
            model::auth::AuthError::BadTenant(reason) => Self::BadTenant(reason),
        }
    }
}
