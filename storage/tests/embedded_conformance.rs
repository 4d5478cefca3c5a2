//! The storage conformance suite over the embedded store, in a temporary directory.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod conformance;

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use conformance::{Engine, RETENTION_DAYS};
use datafusion::arrow::array::{Array, Int64Array};
use model::TenantId;
use storage::Storage;
use storage::embedded::{EmbeddedStore, EmbeddedStoreConfig};
use tempfile::TempDir;

struct Embedded {
    dir: TempDir,
    last: Mutex<Option<Arc<EmbeddedStore>>>,
}

impl Embedded {
    fn new() -> Self {
        Self {
            dir: TempDir::new().unwrap(),
            last: Mutex::new(None),
        }
    }
}

#[async_trait]
impl Engine for Embedded {
    async fn open(&self) -> Arc<dyn Storage> {
        let config = EmbeddedStoreConfig {
            retention_seconds: RETENTION_DAYS as u64 * 86_400,
            ..EmbeddedStoreConfig::default()
        };
        let store = Arc::new(EmbeddedStore::open(self.dir.path(), config).unwrap());
        *self.last.lock().unwrap() = Some(store.clone());
        store
    }

    async fn row_count(&self, tenant: &TenantId, table: &str) -> u64 {
        let store = self.last.lock().unwrap().clone().unwrap();
        let context = store.session(tenant).await.unwrap();
        let batches = context
            .sql(&format!("SELECT count(*) FROM {table}"))
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        let counts = batches[0]
            .column(0)
            .as_any()
            .downcast_ref::<Int64Array>()
            .unwrap();
        assert_eq!(counts.len(), 1);
        counts.value(0) as u64
    }

    async fn settle(&self) {
        let store = self.last.lock().unwrap().clone().unwrap();
        store.compact(i64::MAX / 2).await.unwrap();
    }
}

#[tokio::test]
async fn histograms_are_kept() {
    conformance::histograms_are_kept(&Embedded::new()).await;
}

#[tokio::test]
async fn select_with_every_matcher() {
    conformance::select_with_every_matcher(&Embedded::new()).await;
}

#[tokio::test]
async fn series_listing() {
    conformance::series_listing(&Embedded::new()).await;
}

#[tokio::test]
async fn metadata_is_kept() {
    conformance::metadata_is_kept(&Embedded::new()).await;
}

#[tokio::test]
async fn exemplars_are_kept() {
    conformance::exemplars_are_kept(&Embedded::new()).await;
}

#[tokio::test]
async fn label_names_and_values() {
    conformance::label_names_and_values(&Embedded::new()).await;
}

#[tokio::test]
async fn metric_rewrites_count_once() {
    conformance::metric_rewrites_count_once(&Embedded::new()).await;
}

#[tokio::test]
async fn row_rewrites_count_once() {
    conformance::row_rewrites_count_once(&Embedded::new()).await;
}

#[tokio::test]
async fn flush_returns_durable_offsets() {
    conformance::flush_returns_durable_offsets(&Embedded::new()).await;
}

#[tokio::test]
async fn durable_across_restart() {
    conformance::durable_across_restart(&Embedded::new()).await;
}

#[tokio::test]
async fn tenants_never_mix() {
    conformance::tenants_never_mix(&Embedded::new()).await;
}

#[tokio::test]
async fn retention_drops_whole_days() {
    conformance::retention_drops_whole_days(&Embedded::new()).await;
}

#[tokio::test]
async fn retention_drops_whole_days_of_rows() {
    conformance::retention_drops_whole_days_of_rows(&Embedded::new()).await;
}

#[tokio::test]
async fn sql_reads_the_same_on_every_engine() {
    conformance::sql_reads_the_same_on_every_engine(&Embedded::new()).await;
}

#[tokio::test]
async fn sql_sees_one_tenant_only() {
    conformance::sql_sees_one_tenant_only(&Embedded::new()).await;
}

#[tokio::test]
async fn remote_write_bodies_are_stored_like_batches() {
    conformance::remote_write_bodies_are_stored_like_batches(&Embedded::new()).await;
}
