//! SQL over a tenant's ClickHouse tables, with DataFusion: the same five tables as the
//! embedded store's session (`samples`, `series`, `spans`, `logs`, `events`, see `tables`),
//! each a [`ClickHouseTable`] that turns a scan into one ClickHouse query.
//!
//! **Pushed into ClickHouse**: the tenant (always: no table has a tenant column, and every
//! query filters on the session's tenant); filters ClickHouse 18.16 evaluates exactly as
//! DataFusion (see `filters`; they are reported `Exact`, so DataFusion does not filter
//! again, and the others `Unsupported`, so it does); the projection (only the needed
//! columns are selected); the limit, when DataFusion passes one (it does only when every
//! filter was pushed); and aggregations: `count`, `sum`, `avg`, `min`, `max`, grouped by
//! columns or not, go to ClickHouse through an optimizer rule of the session (see
//! `aggregate`), so only the groups travel. A scan that needs no column at all (a
//! `count(*)` the rule could not take whole, under a join say) asks ClickHouse for
//! `count()` and yields that many empty rows.
//!
//! **Versions not yet merged** never show twice: `series`, `spans`, `logs` and `events`
//! are read `FINAL`; samples are read sorted and collapsed in the store, as
//! `Storage::select` does, so only filters on their key (`series_id`, `timestamp_ms`) go to
//! ClickHouse: a filter on `value` there could drop the latest version of a sample and keep
//! an older one.
//!
//! **Transfer**: `RowBinary` (see `decode`).

mod aggregate;
mod decode;
mod filters;
mod scan;
mod tables;

use std::any::Any;
use std::fmt::Write;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use clickhouse::Client;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::{Session, TableProvider};
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown, TableType};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::streaming::StreamingTableExec;
use datafusion::prelude::SessionContext;
use model::TenantId;

pub use self::scan::Scan;
use self::scan::{Query, ScanLog, Shape};
use self::tables::{Dedup, TableDef};
use super::lock;
use crate::{Result, StorageError};

/// One table of one tenant, read from ClickHouse.
#[derive(Debug)]
pub struct ClickHouseTable {
    def: TableDef,
    client: Client,
    tenant: TenantId,
    log: ScanLog,
}

impl ClickHouseTable {
    /// `samples`, `series`, `spans`, `logs` or `events`.
    pub fn name(&self) -> &str {
        self.def.name
    }

    /// The last scan of this table that ran: the SQL sent and the rows received.
    pub fn last_scan(&self) -> Option<Scan> {
        lock(&self.log).clone()
    }

    /// The ClickHouse table behind a provider of a session (for its [`Self::last_scan`]).
    pub fn of(provider: &Arc<dyn TableProvider>) -> Option<&ClickHouseTable> {
        (provider.as_ref() as &dyn Any).downcast_ref::<ClickHouseTable>()
    }

    /// The query for a scan.
    fn query(
        &self,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> DfResult<Query> {
        let def = &self.def;
        let projection: Vec<usize> = match projection {
            Some(p) => p.clone(),
            None => (0..def.schema.fields().len()).collect(),
        };
        let schema = Arc::new(def.schema.project(&projection)?);
        let mut conditions = vec![format!("tenant = {}", filters::quote(self.tenant.as_str()))];
        for filter in filters {
            let condition = filters::condition(def, filter).ok_or_else(|| {
                DataFusionError::Internal(format!(
                    "the filter {filter} on {} was pushed down but has no ClickHouse form",
                    def.name
                ))
            })?;
            conditions.push(condition);
        }
        let table = def.name;
        let conditions = conditions.join(" AND ");
        let (sql, shape) = if projection.is_empty() {
            // FINAL for samples too: with filters on key columns only, its count is the
            // count of collapsed samples.
            let sql = format!("SELECT count() FROM {table} FINAL WHERE {conditions}");
            (sql, Shape::Count)
        } else {
            match def.dedup {
                Dedup::Final => {
                    let columns = projection
                        .iter()
                        .map(|i| def.columns.get(*i))
                        .collect::<Option<Vec<_>>>()
                        .ok_or_else(|| {
                            DataFusionError::Internal(format!(
                                "a projection past {table}'s columns"
                            ))
                        })?;
                    let select = columns
                        .iter()
                        .map(|c| c.source.as_str())
                        .collect::<Vec<_>>()
                        .join(", ");
                    let mut sql = format!("SELECT {select} FROM {table} FINAL WHERE {conditions}");
                    if let Some(limit) = limit {
                        let _ = write!(sql, " LIMIT {limit}");
                    }
                    (sql, Shape::Rows(columns.iter().map(|c| c.wire).collect()))
                }
                // The collapse needs every column and the version, in key order.
                Dedup::LatestSample => (
                    format!(
                        "SELECT fingerprint, timestamp_ms, value, version FROM {table} \
                         WHERE {conditions} ORDER BY fingerprint, timestamp_ms, version"
                    ),
                    Shape::Samples { projection },
                ),
            }
        };
        Ok(Query {
            client: self.client.clone(),
            sql,
            shape,
            schema,
            samples_schema: def.schema.clone(),
            limit,
            log: self.log.clone(),
        })
    }
}

#[async_trait]
impl TableProvider for ClickHouseTable {
    fn schema(&self) -> SchemaRef {
        self.def.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> DfResult<Vec<TableProviderFilterPushDown>> {
        Ok(filters
            .iter()
            .map(|filter| match filters::condition(&self.def, filter) {
                Some(_) => TableProviderFilterPushDown::Exact,
                None => TableProviderFilterPushDown::Unsupported,
            })
            .collect())
    }

    async fn scan(
        &self,
        _state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let query = self.query(projection, filters, limit)?;
        let schema = query.schema.clone();
        let exec = StreamingTableExec::try_new(
            schema,
            vec![Arc::new(query)],
            None,
            Vec::new(),
            false,
            limit,
        )?;
        Ok(Arc::new(exec))
    }
}

/// A session over `tenant`'s tables in the database `client` is set to.
pub(super) fn session(client: &Client, tenant: &TenantId) -> Result<SessionContext> {
    let context = SessionContext::new();
    context.add_optimizer_rule(Arc::new(aggregate::PushAggregates));
    for def in tables::all()? {
        let name = def.name;
        let table = ClickHouseTable {
            def,
            client: client.clone(),
            tenant: tenant.clone(),
            log: Arc::new(Mutex::new(None)),
        };
        context
            .register_table(name, Arc::new(table))
            .map_err(|e| StorageError::Query(e.to_string()))?;
    }
    Ok(context)
}
