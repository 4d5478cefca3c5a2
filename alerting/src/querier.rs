//! Rules' queries answered by Meerkat's PromQL engine, for one tenant.

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use model::{Labels as ModelLabels, Sample, TenantId};
use promql_parser::parser::Expr;
use query::promql::{Engine, Limits, Steps, Value};
use storage::Storage;
use storage::overlay::Overlay;

use crate::expand::QuerySample;
use crate::rules::{Labels, Querier, RuleWriter, model_labels};

/// The samples a group's rules recorded at one evaluation time.
type Recorded = (i64, Arc<Vec<(ModelLabels, Sample)>>);

/// Instant queries through the PromQL engine, over a tenant's data and, as a
/// [`RuleWriter`], the results its group recorded so far at the current evaluation time
/// (which are still on their way through the bus to the store).
#[derive(Debug)]
pub struct EngineQuerier {
    store: Arc<dyn Storage>,
    limits: Limits,
    tenant: TenantId,
    recorded: Mutex<Recorded>,
}

impl EngineQuerier {
    pub fn new(store: Arc<dyn Storage>, tenant: TenantId) -> Self {
        Self::with_limits(store, Limits::default(), tenant)
    }

    pub fn with_limits(store: Arc<dyn Storage>, limits: Limits, tenant: TenantId) -> Self {
        Self {
            store,
            limits,
            tenant,
            recorded: Mutex::new((i64::MIN, Arc::new(Vec::new()))),
        }
    }

    fn engine(&self, at_ms: i64) -> Engine {
        let recorded = self.recorded.lock().unwrap_or_else(|e| e.into_inner());
        let store: Arc<dyn Storage> = if recorded.0 == at_ms && !recorded.1.is_empty() {
            Arc::new(Overlay::new(
                self.store.clone(),
                self.tenant.clone(),
                recorded.1.clone(),
            ))
        } else {
            self.store.clone()
        };
        Engine::new(store).with_limits(self.limits)
    }
}

#[async_trait]
impl Querier for EngineQuerier {
    async fn instant(&self, expr: Arc<Expr>, at_ms: i64) -> Result<Vec<QuerySample>, String> {
        let value = self
            .engine(at_ms)
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
            .engine(at_ms)
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

#[async_trait]
impl RuleWriter for EngineQuerier {
    async fn write(
        &self,
        samples: &[(Labels, f64)],
        _stale: &[Labels],
        at_ms: i64,
    ) -> Result<(), String> {
        let mut recorded = self.recorded.lock().unwrap_or_else(|e| e.into_inner());
        if recorded.0 != at_ms {
            *recorded = (at_ms, Arc::new(Vec::new()));
        }
        let list = Arc::make_mut(&mut recorded.1);
        for (labels, value) in samples {
            // Invalid label sets never reach the store either (`metric_batch` drops them).
            if let Ok(labels) = model_labels(labels) {
                list.push((
                    labels,
                    Sample {
                        timestamp_ms: at_ms,
                        value: *value,
                    },
                ));
            }
        }
        Ok(())
    }
}
