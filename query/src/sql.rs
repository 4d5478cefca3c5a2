//! `/api/v1/sql`: one read-only DataFusion statement over the tenant's tables, answered as
//! JSON, CSV or an Arrow IPC stream.

use std::sync::Arc;

use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use datafusion::arrow::array::{Array, ArrayRef, RecordBatch};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};
use datafusion::error::DataFusionError;
use datafusion::execution::context::SQLOptions;
use futures_util::StreamExt;
use model::TenantId;
use serde_json::{Value, json};
use storage::{Storage, StorageError};

use crate::error::{ErrorType, QueryError};

/// How a result is sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// `{"status":"success","data":{"columns":[{"name","type"}],"rows":[[...]]}}`.
    Json,
    /// RFC 4180 CSV with a header row.
    Csv,
    /// An Arrow IPC stream (`application/vnd.apache.arrow.stream`): the result's own types.
    Arrow,
}

impl Format {
    /// The `format` parameter; JSON when it is absent.
    pub fn parse(value: Option<&str>) -> Result<Self, QueryError> {
        match value.map(str::trim) {
            None | Some("") | Some("json") => Ok(Self::Json),
            Some("csv") => Ok(Self::Csv),
            Some("arrow") => Ok(Self::Arrow),
            Some(other) => Err(QueryError::new(
                ErrorType::BadData,
                format!("unknown format {other:?}: use json, csv or arrow"),
            )),
        }
    }
}

/// A complete result.
#[derive(Debug)]
pub(crate) struct SqlResult {
    schema: SchemaRef,
    batches: Vec<RecordBatch>,
}

fn execution(error: impl std::fmt::Display) -> QueryError {
    QueryError::new(ErrorType::Execution, error.to_string())
}

/// A failure while the query ran: the storage engine's own (ClickHouse unreachable, a part
/// unreadable) is `unavailable`, which clients retry; the rest is the query's.
fn run_error(error: DataFusionError) -> QueryError {
    let from_storage = match error.find_root() {
        DataFusionError::External(inner) => inner.downcast_ref::<StorageError>().is_some(),
        _ => false,
    };
    if from_storage {
        QueryError::new(ErrorType::Unavailable, error.to_string())
    } else {
        execution(error)
    }
}

/// Runs `sql` in `tenant`'s session. Statements that change anything (DDL, DML, `SET`)
/// are refused; a result over `max_rows` rows fails rather than growing without bound.
pub(crate) async fn run(
    store: &dyn Storage,
    tenant: &TenantId,
    sql: &str,
    max_rows: u64,
) -> Result<SqlResult, QueryError> {
    let context = store.session(tenant).await.map_err(|e| {
        QueryError::new(
            ErrorType::Unavailable,
            format!("cannot open the tenant's tables: {e}"),
        )
    })?;
    let read_only = SQLOptions::new()
        .with_allow_ddl(false)
        .with_allow_dml(false)
        .with_allow_statements(false);
    let frame = context
        .sql_with_options(sql, read_only)
        .await
        .map_err(|e| QueryError::new(ErrorType::BadData, e.to_string()))?;
    let mut stream = frame.execute_stream().await.map_err(run_error)?;
    let schema = stream.schema();
    let mut batches = Vec::new();
    let mut rows = 0u64;
    while let Some(batch) = stream.next().await {
        let batch = batch.map_err(run_error)?;
        rows += batch.num_rows() as u64;
        if rows > max_rows {
            return Err(QueryError::new(
                ErrorType::Execution,
                format!(
                    "the result has more than {max_rows} rows (query.max_rows): aggregate, \
                     filter, or add a LIMIT"
                ),
            ));
        }
        batches.push(batch);
    }
    Ok(SqlResult { schema, batches })
}

impl SqlResult {
    /// The HTTP response in `format`.
    pub(crate) fn into_response(self, format: Format) -> Result<Response, QueryError> {
        let (content_type, body) = match format {
            Format::Json => ("application/json", self.json()?),
            Format::Csv => ("text/csv; charset=utf-8", self.csv()?),
            Format::Arrow => ("application/vnd.apache.arrow.stream", self.arrow()?),
        };
        Ok((
            [(header::CONTENT_TYPE, HeaderValue::from_static(content_type))],
            body,
        )
            .into_response())
    }

    fn json(&self) -> Result<Vec<u8>, QueryError> {
        let columns: Vec<Value> = self
            .schema
            .fields()
            .iter()
            .map(|f| json!({"name": f.name(), "type": f.data_type().to_string()}))
            .collect();
        let mut rows = Vec::new();
        for batch in &self.batches {
            let mut batch_rows = vec![Vec::with_capacity(batch.num_columns()); batch.num_rows()];
            for column in batch.columns() {
                for (row, value) in batch_rows.iter_mut().zip(json_values(column)?) {
                    row.push(value);
                }
            }
            rows.extend(batch_rows.into_iter().map(Value::Array));
        }
        let body = json!({"status": "success", "data": {"columns": columns, "rows": rows}});
        serde_json::to_vec(&body).map_err(execution)
    }

    fn csv(&self) -> Result<Vec<u8>, QueryError> {
        let mut writer = datafusion::arrow::csv::WriterBuilder::new()
            .with_header(true)
            .build(Vec::new());
        if self.batches.is_empty() {
            // The header alone, from an empty batch.
            writer
                .write(&RecordBatch::new_empty(self.schema.clone()))
                .map_err(execution)?;
        }
        for batch in &self.batches {
            writer.write(batch).map_err(execution)?;
        }
        Ok(writer.into_inner())
    }

    fn arrow(&self) -> Result<Vec<u8>, QueryError> {
        let mut writer =
            datafusion::arrow::ipc::writer::StreamWriter::try_new(Vec::new(), &self.schema)
                .map_err(execution)?;
        for batch in &self.batches {
            writer.write(batch).map_err(execution)?;
        }
        writer.into_inner().map_err(execution)
    }
}

/// A column's values as JSON: numbers as numbers (but NaN and infinities, which JSON
/// lacks, as Prometheus writes them: `"NaN"`, `"+Inf"`, `"-Inf"`), booleans and strings
/// as themselves, NULL as null, and anything else (times, lists) as its display text.
fn json_values(column: &ArrayRef) -> Result<Vec<Value>, QueryError> {
    let data_type = column.data_type();
    let values: Vec<Value> = if data_type.is_signed_integer() {
        let ints = cast(column, &DataType::Int64).map_err(execution)?;
        let ints = datafusion::common::cast::as_int64_array(&ints).map_err(execution)?;
        ints.iter()
            .map(|v| v.map_or(Value::Null, Value::from))
            .collect()
    } else if data_type.is_unsigned_integer() {
        let ints = cast(column, &DataType::UInt64).map_err(execution)?;
        let ints = datafusion::common::cast::as_uint64_array(&ints).map_err(execution)?;
        ints.iter()
            .map(|v| v.map_or(Value::Null, Value::from))
            .collect()
    } else if data_type.is_floating() {
        let floats = cast(column, &DataType::Float64).map_err(execution)?;
        let floats = datafusion::common::cast::as_float64_array(&floats).map_err(execution)?;
        floats
            .iter()
            .map(|v| v.map_or(Value::Null, float))
            .collect()
    } else if *data_type == DataType::Boolean {
        let bools = datafusion::common::cast::as_boolean_array(column).map_err(execution)?;
        bools
            .iter()
            .map(|v| v.map_or(Value::Null, Value::Bool))
            .collect()
    } else {
        let text: ArrayRef = Arc::new(
            cast(column, &DataType::Utf8)
                .or_else(|_| {
                    // Types without a cast to text (lists, structs): their display form.
                    let options = FormatOptions::default();
                    let formatter = ArrayFormatter::try_new(column.as_ref(), &options)?;
                    Ok::<_, datafusion::arrow::error::ArrowError>(Arc::new(
                        (0..column.len())
                            .map(|i| column.is_valid(i).then(|| formatter.value(i).to_string()))
                            .collect::<datafusion::arrow::array::StringArray>(),
                    ) as ArrayRef)
                })
                .map_err(execution)?,
        );
        let text = datafusion::common::cast::as_string_array(&text).map_err(execution)?;
        text.iter()
            .map(|v| v.map_or(Value::Null, |s| Value::String(s.to_owned())))
            .collect()
    };
    Ok(values)
}

fn float(value: f64) -> Value {
    if value.is_nan() {
        Value::String("NaN".into())
    } else if value == f64::INFINITY {
        Value::String("+Inf".into())
    } else if value == f64::NEG_INFINITY {
        Value::String("-Inf".into())
    } else {
        Value::from(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn storage_failures_are_unavailable_and_the_rest_execution_errors() {
        let storage = DataFusionError::Context(
            "scanning".into(),
            Box::new(DataFusionError::External(Box::new(StorageError::Query(
                "ClickHouse is unreachable".into(),
            )))),
        );
        assert_eq!(run_error(storage).kind, ErrorType::Unavailable);
        let query = DataFusionError::Execution("division by zero".into());
        assert_eq!(run_error(query).kind, ErrorType::Execution);
    }
}
