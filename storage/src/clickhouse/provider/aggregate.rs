//! Aggregations pushed into ClickHouse: `count`, `sum`, `avg`, `min` and `max`, grouped or
//! not, over one ClickHouse table whose filters were all pushed down.
//!
//! DataFusion's `TableProvider` cannot take an aggregation, so this is a logical optimizer
//! rule of ClickHouse sessions ([`PushAggregates`]). It replaces
//! `Aggregate(TableScan(ClickHouseTable))` by a scan of an [`AggregateTable`], whose one
//! query is ClickHouse's `SELECT <groups>, <aggregates> ... GROUP BY <groups>`, under a
//! projection that gives the rows the aggregate's names and SQL's answers where ClickHouse
//! answers otherwise. Only the groups travel.
//!
//! **Where ClickHouse 18.16 and SQL differ** (checked on the server):
//! - over no rows (or only NULLs), `sum`, `min` and `max` give the type's default and `avg`
//!   gives NaN, where SQL gives NULL: each is sent with `count(<column>)`, and the
//!   projection turns it into NULL when that count is 0;
//! - `min`/`max` of floats with NaN depend on the order rows arrive in: they are not pushed
//!   for floats, nor is grouping by a float;
//! - `count` is a `UInt64` there and an `Int64` in SQL; integer sums are cast to the type
//!   DataFusion gives them (both wrap on overflow), and what DataFusion sums or averages as
//!   floats ClickHouse is given as floats (`avg(toFloat64(n))`): its integer sums wrap.
//!
//! Not pushed (DataFusion aggregates the rows instead): `DISTINCT`, `FILTER`, ordered
//! aggregates, other functions, grouping sets, expressions as groups or arguments, numeric
//! columns that are nullable, the `labels` JSON, and any scan with a filter ClickHouse was
//! not given or with a limit. Samples are read `FINAL` (as `count(*)` is), so versions not
//! yet merged count once.

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::tree_node::Transformed;
use datafusion::datasource::{provider_as_source, source_as_provider};
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::logical_expr::expr::AggregateFunction;
use datafusion::logical_expr::{
    Aggregate, Expr, LogicalPlan, LogicalPlanBuilder, TableScan, TableType, col, lit, when,
};
use datafusion::optimizer::{ApplyOrder, OptimizerConfig, OptimizerRule};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::streaming::StreamingTableExec;
use datafusion::scalar::ScalarValue;

use super::ClickHouseTable;
use super::filters;
use super::scan::{Query, Shape};
use super::tables::{Column, Wire};

/// The optimizer rule; see the module doc.
#[derive(Debug, Default)]
pub(super) struct PushAggregates;

impl OptimizerRule for PushAggregates {
    fn name(&self) -> &str {
        "clickhouse_push_aggregates"
    }

    fn apply_order(&self) -> Option<ApplyOrder> {
        Some(ApplyOrder::BottomUp)
    }

    fn supports_rewrite(&self) -> bool {
        true
    }

    fn rewrite(
        &self,
        plan: LogicalPlan,
        _config: &dyn OptimizerConfig,
    ) -> DfResult<Transformed<LogicalPlan>> {
        let LogicalPlan::Aggregate(aggregate) = &plan else {
            return Ok(Transformed::no(plan));
        };
        let LogicalPlan::TableScan(scan) = aggregate.input.as_ref() else {
            return Ok(Transformed::no(plan));
        };
        // Sources other than a table provider are not ours to rewrite.
        let Ok(provider) = source_as_provider(&scan.source) else {
            return Ok(Transformed::no(plan));
        };
        let Some(table) = ClickHouseTable::of(&provider) else {
            return Ok(Transformed::no(plan));
        };
        match pushed(table, aggregate, scan)? {
            Some(rewritten) => Ok(Transformed::yes(rewritten)),
            None => Ok(Transformed::no(plan)),
        }
    }
}

/// One output column of the ClickHouse query.
struct Selected {
    sql: String,
    wire: Wire,
    field: Field,
}

/// An aggregate function ClickHouse answers as SQL does (after the projection's fix-up).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Function {
    Count,
    Sum,
    Avg,
    Min,
    Max,
}

impl Function {
    fn of(name: &str) -> Option<Self> {
        Some(match name {
            "count" => Self::Count,
            "sum" => Self::Sum,
            "avg" => Self::Avg,
            "min" => Self::Min,
            "max" => Self::Max,
            _ => return None,
        })
    }
}

/// The table column an expression names, when it names one of the scan's columns.
fn column_of<'a>(table: &'a ClickHouseTable, expr: &Expr) -> Option<(&'a Field, &'a Column)> {
    match expr {
        Expr::Column(column) => table.def.column(&column.name),
        _ => None,
    }
}

/// The column an aggregate's argument names, and whether DataFusion aggregates it as a
/// float. Type coercion wraps integer columns in a cast to the sum's or average's type: to
/// a 64-bit integer (`sum(CAST(flags AS UInt64))`), which ClickHouse's integer sum matches
/// (both wrap), or to `Float64` (`avg(CAST(n AS Float64))`), which ClickHouse must be told
/// with `toFloat64`: its integer sums wrap on overflow where a float sum does not.
fn argument_column<'a>(
    table: &'a ClickHouseTable,
    argument: &Expr,
) -> Option<(&'a Field, &'a Column, bool)> {
    let Expr::Cast(cast) = argument else {
        let (field, column) = column_of(table, argument)?;
        return Some((field, column, *field.data_type() == DataType::Float64));
    };
    let (field, column) = column_of(table, &cast.expr)?;
    let target = cast.field.data_type();
    let widened = field.data_type().is_integer()
        && matches!(
            target,
            DataType::Int64 | DataType::UInt64 | DataType::Float64
        );
    widened.then_some((field, column, *target == DataType::Float64))
}

/// The rewritten plan, or `None` when some part of the aggregation cannot be pushed.
fn pushed(
    table: &ClickHouseTable,
    aggregate: &Aggregate,
    scan: &TableScan,
) -> DfResult<Option<LogicalPlan>> {
    if scan.fetch.is_some() {
        return Ok(None);
    }
    let mut conditions = vec![format!(
        "tenant = {}",
        filters::quote(table.tenant.as_str())
    )];
    for filter in &scan.filters {
        match filters::condition(&table.def, filter) {
            Some(condition) => conditions.push(condition),
            None => return Ok(None),
        }
    }
    let mut selected = Vec::new();
    let mut groups = Vec::new();
    // Per output column of the aggregate: the expression over the pushed scan's columns.
    let mut outputs = Vec::new();
    for expr in &aggregate.group_expr {
        let Some((field, column)) = column_of(table, expr) else {
            return Ok(None);
        };
        if matches!(
            column.wire,
            Wire::Float64 | Wire::Labels | Wire::Int32List | Wire::Float64List
        ) {
            return Ok(None);
        }
        let name = format!("g{}", selected.len());
        groups.push(column.source.clone());
        selected.push(Selected {
            sql: column.source.clone(),
            wire: column.wire,
            field: field.clone().with_name(&name),
        });
        outputs.push(col(name));
    }
    for (i, expr) in aggregate.aggr_expr.iter().enumerate() {
        let output = aggregate.schema.field(aggregate.group_expr.len() + i);
        let Some(function) = pushed_function(table, expr, output, &mut selected) else {
            return Ok(None);
        };
        outputs.push(function);
    }
    let select = selected
        .iter()
        .map(|s| s.sql.as_str())
        .collect::<Vec<_>>()
        .join(", ");
    let name = table.def.name;
    let mut sql = format!(
        "SELECT {select} FROM {name} FINAL WHERE {}",
        conditions.join(" AND ")
    );
    if !groups.is_empty() {
        sql.push_str(" GROUP BY ");
        sql.push_str(&groups.join(", "));
    }
    let schema = Arc::new(Schema::new(
        selected.iter().map(|s| s.field.clone()).collect::<Vec<_>>(),
    ));
    let query = Query {
        client: table.client.clone(),
        sql,
        shape: Shape::Rows(selected.iter().map(|s| s.wire).collect()),
        schema: schema.clone(),
        samples_schema: table.def.schema.clone(),
        limit: None,
        log: table.log.clone(),
    };
    let source = provider_as_source(Arc::new(AggregateTable { query }));
    let names = aggregate
        .schema
        .iter()
        .map(|(qualifier, field)| (qualifier.cloned(), field.name().to_owned()));
    let projection = outputs
        .into_iter()
        .zip(names)
        .map(|(expr, (qualifier, name))| expr.alias_qualified(qualifier, name));
    let plan = LogicalPlanBuilder::scan(format!("{name}_aggregate"), source, None)?
        .project(projection)?
        .build()?;
    Ok(Some(plan))
}

/// Adds the ClickHouse columns `expr` needs to `selected` and returns the output column's
/// expression over them; `None` when it cannot be pushed.
fn pushed_function(
    table: &ClickHouseTable,
    expr: &Expr,
    output: &Field,
    selected: &mut Vec<Selected>,
) -> Option<Expr> {
    let expr = match expr {
        Expr::Alias(alias) => alias.expr.as_ref(),
        other => other,
    };
    let Expr::AggregateFunction(AggregateFunction { func, params }) = expr else {
        return None;
    };
    if params.distinct || params.filter.is_some() || !params.order_by.is_empty() {
        return None;
    }
    let function = Function::of(func.name())?;
    let argument = match params.args.as_slice() {
        [Expr::Literal(value, _)] if function == Function::Count && !value.is_null() => None,
        [argument] => Some(argument_column(table, argument)?),
        _ => return None,
    };
    let mut add = |sql: String, wire: Wire, data_type: DataType| {
        let name = format!("a{}", selected.len());
        selected.push(Selected {
            sql,
            wire,
            field: Field::new(&name, data_type, wire == Wire::NullableString),
        });
        col(name)
    };
    let Some((field, column, as_float)) = argument else {
        // count(*)
        return Some(add("toInt64(count())".into(), Wire::Int64, DataType::Int64));
    };
    if matches!(
        column.wire,
        Wire::Labels | Wire::Int32List | Wire::Float64List
    ) {
        return None;
    }
    let source = &column.source;
    if function == Function::Count {
        return Some(add(
            format!("toInt64(count({source}))"),
            Wire::Int64,
            DataType::Int64,
        ));
    }
    let numeric = !matches!(column.wire, Wire::String | Wire::NullableString)
        && !matches!(field.data_type(), DataType::Timestamp(_, _))
        && !field.is_nullable();
    let (sql, wire) = match (function, output.data_type()) {
        (Function::Sum, DataType::Int64) if numeric => {
            (format!("toInt64(sum({source}))"), Wire::Int64)
        }
        (Function::Sum, DataType::UInt64) if numeric => {
            (format!("toUInt64(sum({source}))"), Wire::UInt64)
        }
        (Function::Sum | Function::Avg, DataType::Float64) if numeric && as_float => {
            let name = if function == Function::Sum {
                "sum"
            } else {
                "avg"
            };
            (format!("{name}(toFloat64({source}))"), Wire::Float64)
        }
        (Function::Min | Function::Max, data_type)
            if column.wire != Wire::Float64
                && data_type == field.data_type()
                && (!field.is_nullable() || column.wire == Wire::NullableString) =>
        {
            let name = if function == Function::Min {
                "min"
            } else {
                "max"
            };
            (format!("{name}({source})"), column.wire)
        }
        _ => return None,
    };
    let value = add(sql, wire, output.data_type().clone());
    let count = add(
        format!("toInt64(count({source}))"),
        Wire::Int64,
        DataType::Int64,
    );
    let null = ScalarValue::try_from(output.data_type()).ok()?;
    when(count.eq(lit(0i64)), lit(null)).otherwise(value).ok()
}

/// The result of one pushed aggregation, as a table of its groups.
#[derive(Debug)]
struct AggregateTable {
    query: Query,
}

#[async_trait]
impl TableProvider for AggregateTable {
    fn schema(&self) -> SchemaRef {
        self.query.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Temporary
    }

    async fn scan(
        &self,
        _state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        if !filters.is_empty() {
            return Err(DataFusionError::Internal(
                "a pushed ClickHouse aggregation was given filters it does not take".into(),
            ));
        }
        // Every column is queried (the groups are few); the exec projects.
        let exec = StreamingTableExec::try_new(
            self.query.schema.clone(),
            vec![Arc::new(self.query.clone())],
            projection,
            Vec::new(),
            false,
            limit,
        )?;
        Ok(Arc::new(exec))
    }
}
