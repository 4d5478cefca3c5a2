//! Rules' queries answered by Meerkat's PromQL engine, for one tenant.

use std::sync::Arc;

use async_trait::async_trait;
use model::TenantId;
use promql_parser::parser::Expr;
use query::promql::{Engine, Steps, Value};
use storage::Storage;

use crate::expand::QuerySample;
use crate::rules::{Labels, Querier};

/// Instant queries through the PromQL engine, over a tenant's data.
#[derive(Clone, Debug)]
pub struct EngineQuerier {
    engine: Engine,
    tenant: TenantId,
}

impl EngineQuerier {
    pub fn new(store: Arc<dyn Storage>, tenant: TenantId) -> Self {
        Self {
            engine: Engine::new(store),
            tenant,
        }
    }

    pub fn with_engine(engine: Engine, tenant: TenantId) -> Self {
        Self { engine, tenant }
    }
}

#[async_trait]
impl Querier for EngineQuerier {
    async fn instant(&self, expr: Arc<Expr>, at_ms: i64) -> Result<Vec<QuerySample>, String> {
        let value = self
            .engine
            .evaluate(&self.tenant, expr, Steps::instant(at_ms))
            .await
            .map_err(|e| e.to_string())?;
        match value {
            Value::Scalar(values) => Ok(values
                .first()
                .map(|v| QuerySample {
                    labels: Default::default(),
                    value: *v,
                })
                .into_iter()
                .collect()),
            Value::Vector(series) => Ok(series
                .into_iter()
                .filter_map(|s| {
                    let value = s.points.first().copied().flatten()?;
                    Some(QuerySample {
                        labels: s.labels.into_iter().collect(),
                        value,
                    })
                })
                .collect()),
            other => Err(format!(
                "rule result is not a vector or scalar (it is a {})",
                other.type_name()
            )),
        }
    }

    async fn range(
        &self,
        expr: Arc<Expr>,
        at_ms: i64,
    ) -> Result<Vec<(Labels, Vec<(i64, f64)>)>, String> {
        match self
            .engine
            .evaluate(&self.tenant, expr, Steps::instant(at_ms))
            .await
            .map_err(|e| e.to_string())?
        {
            Value::Matrix(series) => Ok(series
                .into_iter()
                .map(|s| (s.labels.into_iter().collect(), s.samples))
                .collect()),
            other => Err(format!(
                "expected a range vector, got a {}",
                other.type_name()
            )),
        }
    }
}
