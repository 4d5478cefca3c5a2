//! A store seen with a few samples that are not in it yet: what a rule group's later rules
//! read while its earlier rules' results are still on their way through the bus (Prometheus
//! commits each rule's results before the next rule runs; Meerkat's go through the bus and
//! ingest, which takes longer than an evaluation may wait).
//!
//! Only reads of series see the extra samples; writes, SQL sessions and maintenance go to
//! the store underneath.

use std::sync::Arc;

use async_trait::async_trait;
use model::{Labels, MetricMetadata, Payload, Sample, TenantId};

use crate::{BusPosition, DurableOffsets, Matcher, Result, SeriesSamples, Storage, WriteSummary};

/// `inner` with `extra` float samples of one tenant added to what its reads return.
#[derive(Debug)]
pub struct Overlay {
    inner: Arc<dyn Storage>,
    tenant: TenantId,
    extra: Arc<Vec<(Labels, Sample)>>,
}

impl Overlay {
    pub fn new(
        inner: Arc<dyn Storage>,
        tenant: TenantId,
        extra: Arc<Vec<(Labels, Sample)>>,
    ) -> Self {
        Self {
            inner,
            tenant,
            extra,
        }
    }

    fn matching<'a>(
        &'a self,
        tenant: &TenantId,
        matchers: &'a [Matcher],
    ) -> impl Iterator<Item = &'a (Labels, Sample)> + 'a {
        let ours = *tenant == self.tenant;
        self.extra.iter().filter(move |(labels, _)| {
            ours && matchers
                .iter()
                .all(|m| m.matches(labels.get(&m.name).unwrap_or("")))
        })
    }
}

#[async_trait]
impl Storage for Overlay {
    async fn write(
        &self,
        tenant: &TenantId,
        payload: Payload,
        position: &BusPosition,
    ) -> Result<WriteSummary> {
        self.inner.write(tenant, payload, position).await
    }

    async fn flush(&self) -> Result<DurableOffsets> {
        self.inner.flush().await
    }

    async fn durable_offsets(&self) -> Result<DurableOffsets> {
        self.inner.durable_offsets().await
    }

    async fn select(
        &self,
        tenant: &TenantId,
        matchers: &[Matcher],
        start_ms: i64,
        end_ms: i64,
    ) -> Result<Vec<SeriesSamples>> {
        let mut out = self
            .inner
            .select(tenant, matchers, start_ms, end_ms)
            .await?;
        for (labels, sample) in self.matching(tenant, matchers) {
            if sample.timestamp_ms < start_ms || sample.timestamp_ms > end_ms {
                continue;
            }
            match out.iter_mut().find(|s| &s.labels == labels) {
                Some(series) => {
                    // The store may hold it already (it arrived): one sample per timestamp.
                    series
                        .samples
                        .retain(|s| s.timestamp_ms != sample.timestamp_ms);
                    let at = series
                        .samples
                        .partition_point(|s| s.timestamp_ms < sample.timestamp_ms);
                    series.samples.insert(at, *sample);
                }
                None => out.push(SeriesSamples {
                    labels: labels.clone(),
                    samples: vec![*sample],
                    histograms: Vec::new(),
                }),
            }
        }
        Ok(out)
    }

    async fn series(
        &self,
        tenant: &TenantId,
        matchers: &[Matcher],
        range: Option<(i64, i64)>,
    ) -> Result<Vec<Labels>> {
        let mut out = self.inner.series(tenant, matchers, range).await?;
        for (labels, _) in self.matching(tenant, matchers) {
            if !out.contains(labels) {
                out.push(labels.clone());
            }
        }
        out.sort();
        Ok(out)
    }

    async fn series_count(&self, tenant: &TenantId, matchers: &[Matcher]) -> Result<u64> {
        let extra = self.matching(tenant, matchers).count() as u64;
        Ok(self.inner.series_count(tenant, matchers).await? + extra)
    }

    async fn label_names(&self, tenant: &TenantId, matchers: &[Matcher]) -> Result<Vec<String>> {
        self.inner.label_names(tenant, matchers).await
    }

    async fn label_values(
        &self,
        tenant: &TenantId,
        name: &str,
        matchers: &[Matcher],
    ) -> Result<Vec<String>> {
        self.inner.label_values(tenant, name, matchers).await
    }

    async fn metadata(&self, tenant: &TenantId) -> Result<Vec<MetricMetadata>> {
        self.inner.metadata(tenant).await
    }

    async fn session(&self, tenant: &TenantId) -> Result<datafusion::prelude::SessionContext> {
        self.inner.session(tenant).await
    }

    async fn enforce_retention(&self, now_ms: i64) -> Result<()> {
        self.inner.enforce_retention(now_ms).await
    }

    async fn close(&self) -> Result<()> {
        Ok(())
    }
}
