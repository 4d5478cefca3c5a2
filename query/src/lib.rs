//! Answers questions about stored telemetry, over HTTP, in the shapes Prometheus's clients
//! expect.
//!
//! PromQL ([`promql`], Prometheus 2.42's semantics) behind Prometheus's HTTP API —
//! `/api/v1/query`, `/api/v1/query_range`, the series, label, metadata and exemplar
//! endpoints, `format_query` and `status` — and `/api/v1/sql`, DataFusion SQL over the
//! tenant's `samples`, `series`, `spans`, `logs`, `events` and `exemplars` tables (see
//! `storage`'s sessions), on either storage engine.
//!
//! Every request's tenant comes from the same auth as the gateway's
//! ([`model::auth::TenantResolver`]), and a session only ever holds its tenant's tables.

mod api;
mod config;
mod error;
mod exemplars;
mod http;
mod meta;
pub mod promql;
mod sql;

use std::sync::Arc;

use axum::Router;
use model::auth::{AuthConfig, AuthError, TenantResolver};
use storage::Storage;

pub use config::QueryConfig;
pub use error::{ErrorType, QueryError};
pub use sql::Format;

/// The query service of a role: what its HTTP routes share.
#[derive(Clone, Debug)]
pub struct QueryService {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    engine: promql::Engine,
    store: Arc<dyn Storage>,
    tenants: TenantResolver,
    config: QueryConfig,
    /// For `/api/v1/status/runtimeinfo`.
    started_at: std::time::SystemTime,
    storage_retention: String,
}

impl QueryService {
    /// A service reading `store`, with the gateway's `auth`.
    pub fn new(
        store: Arc<dyn Storage>,
        auth: &AuthConfig,
        config: QueryConfig,
    ) -> Result<Self, AuthError> {
        Ok(Self {
            shared: Arc::new(Shared {
                engine: promql::Engine::new(store.clone()).with_limits(promql::Limits {
                    max_series: config.max_series,
                    max_samples: config.max_samples,
                }),
                store,
                tenants: TenantResolver::new(auth)?,
                config,
                started_at: std::time::SystemTime::now(),
                storage_retention: String::new(),
            }),
        })
    }

    /// Says how long the store keeps data (`15d`), for `/api/v1/status/runtimeinfo`.
    pub fn with_storage_retention(mut self, retention: impl Into<String>) -> Self {
        if let Some(shared) = Arc::get_mut(&mut self.shared) {
            shared.storage_retention = retention.into();
        }
        self
    }

    /// The routes to serve on the role's HTTP port.
    pub fn http_routes(&self) -> Router {
        http::routes(self.clone())
    }
}
