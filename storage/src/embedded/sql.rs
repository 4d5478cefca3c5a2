//! SQL over a tenant's data, with DataFusion.
//!
//! Each table is a view over its Parquet parts (a `ListingTable`, so filters on time,
//! trace id, service and the like prune row groups by their statistics and only the needed
//! columns are read) unioned with the rows still in memory:
//!
//! - `samples(series_id, timestamp_ms, value)` and `series(series_id, metric_name, labels)`
//!   (labels as JSON text), joined on `series_id`;
//! - `spans`, `logs`, `events` (see their schemas in `rows.rs`).
//!
//! Metric-name and label filters reach the samples' Parquet scan without a provider of our
//! own: `series` is the small side of the join, and DataFusion pushes the ids its hash
//! join collected into the probe side's scan as a dynamic filter, where the parts' sort
//! order (series, then time) lets statistics skip other series' row groups and pages.

use std::path::PathBuf;
use std::sync::Arc;

use datafusion::arrow::array::{RecordBatch, StringArray, UInt32Array};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::datasource::MemTable;
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::{
    ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl,
};
use datafusion::prelude::SessionContext;
use model::TenantId;

use super::parts::{sample_part_schema, samples_schema, value_sql};
use super::rows::RowKind;
use super::{EmbeddedStore, read_lock};
use crate::{Result, StorageError};

fn query_error(error: impl std::fmt::Display) -> StorageError {
    StorageError::Query(error.to_string())
}

fn series_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("series_id", DataType::UInt32, false),
        Field::new("metric_name", DataType::Utf8, false),
        Field::new("labels", DataType::Utf8, false),
    ]))
}

/// How a table's parts are read: their schema and the columns that make a row of the
/// table from them.
struct PartLayout {
    schema: SchemaRef,
    select: String,
}

impl PartLayout {
    /// Parts whose rows are the table's rows.
    fn same_as(schema: &SchemaRef) -> Self {
        Self {
            schema: schema.clone(),
            select: "*".to_owned(),
        }
    }
}

/// Registers `name` as the union of its parts and its in-memory rows.
async fn register(
    context: &SessionContext,
    name: &str,
    schema: SchemaRef,
    parts: PartLayout,
    files: Vec<PathBuf>,
    memory: Vec<RecordBatch>,
) -> Result<()> {
    let mut sources = Vec::new();
    if !files.is_empty() {
        let urls = files
            .iter()
            .map(|file| ListingTableUrl::parse(file.to_string_lossy()))
            .collect::<datafusion::error::Result<Vec<_>>>()
            .map_err(query_error)?;
        let options =
            ListingOptions::new(Arc::new(ParquetFormat::default())).with_file_extension(".parquet");
        let config = ListingTableConfig::new_with_multi_paths(urls)
            .with_listing_options(options)
            .with_schema(parts.schema);
        let table = ListingTable::try_new(config).map_err(query_error)?;
        context
            .register_table(format!("{name}_parts"), Arc::new(table))
            .map_err(query_error)?;
        sources.push(format!("SELECT {} FROM {name}_parts", parts.select));
    }
    let recent = MemTable::try_new(schema, vec![memory]).map_err(query_error)?;
    context
        .register_table(format!("{name}_recent"), Arc::new(recent))
        .map_err(query_error)?;
    sources.push(format!("SELECT * FROM {name}_recent"));
    context
        .sql(&format!(
            "CREATE VIEW {name} AS {}",
            sources.join(" UNION ALL ")
        ))
        .await
        .map_err(query_error)?;
    Ok(())
}

impl EmbeddedStore {
    /// A DataFusion session over `tenant`'s tables, as they are now. Another tenant's data
    /// is never registered in it.
    pub async fn session(&self, tenant: &TenantId) -> Result<SessionContext> {
        let context = SessionContext::new();
        let found = self.tenant(tenant);
        let (sample_files, sample_rows, series_rows, row_files, row_memory) = match &found {
            None => Default::default(),
            Some(tenant) => {
                let state = read_lock(&tenant.state);
                let sample_files: Vec<PathBuf> = state
                    .manifest
                    .parts
                    .iter()
                    .map(|p| tenant.dir.join(&p.file))
                    .collect();
                // The heads' Arrow chunks, shared rather than copied.
                let mut sample_rows = Vec::new();
                for head in state
                    .frozen
                    .iter()
                    .map(|h| h.as_ref())
                    .chain(std::iter::once(&state.head))
                {
                    sample_rows.extend(head.batches()?);
                }
                let all = state.index.select(&[]);
                let mut series_ids = Vec::new();
                let mut names = Vec::new();
                let mut labels = Vec::new();
                for id in &all {
                    if let Some(set) = state.index.labels(id) {
                        series_ids.push(id);
                        names.push(set.metric_name().unwrap_or_default().to_owned());
                        labels.push(crate::otel_json::labels_json(set));
                    }
                }
                let series_rows = RecordBatch::try_new(
                    series_schema(),
                    vec![
                        Arc::new(UInt32Array::from(series_ids)),
                        Arc::new(StringArray::from(names)),
                        Arc::new(StringArray::from(labels)),
                    ],
                )?;
                let mut row_files = Vec::new();
                let mut row_memory = Vec::new();
                for kind in RowKind::ALL {
                    row_files.push(
                        state
                            .manifest
                            .row_parts
                            .get(kind.name())
                            .into_iter()
                            .flatten()
                            .map(|p| tenant.dir.join(&p.file))
                            .collect::<Vec<_>>(),
                    );
                    row_memory.push(
                        state
                            .frozen_rows
                            .get(&kind)
                            .into_iter()
                            .chain(state.rows.get(&kind))
                            .flatten()
                            .map(|d| d.batch.clone())
                            .collect::<Vec<_>>(),
                    );
                }
                (
                    sample_files,
                    sample_rows,
                    vec![series_rows],
                    row_files,
                    row_memory,
                )
            }
        };
        let sample_parts = PartLayout {
            schema: sample_part_schema(),
            select: format!("series_id, timestamp_ms, {} AS value", value_sql()),
        };
        register(
            &context,
            "samples",
            samples_schema(),
            sample_parts,
            sample_files,
            sample_rows,
        )
        .await?;
        let series = series_schema();
        let series_parts = PartLayout::same_as(&series);
        register(
            &context,
            "series",
            series,
            series_parts,
            Vec::new(),
            series_rows,
        )
        .await?;
        for (i, kind) in RowKind::ALL.into_iter().enumerate() {
            let schema = kind.schema();
            register(
                &context,
                kind.name(),
                schema.clone(),
                PartLayout::same_as(&schema),
                row_files.get(i).cloned().unwrap_or_default(),
                row_memory.get(i).cloned().unwrap_or_default(),
            )
            .await?;
        }
        Ok(context)
    }
}
