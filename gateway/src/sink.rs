//! Where accepted telemetry goes: onto the bus, durably, before the client hears "ok".
//!
//! A request's batch is split into one envelope per bus partition (series by their
//! fingerprint, spans by trace, log records by resource), so each series' samples stay in
//! order in one partition and ingest can work on partitions in parallel. Envelopes larger
//! than `max_record_bytes` are halved until they fit, because Kafka refuses large messages.

use std::sync::Arc;

use bus::{Bus, ProduceRecord, partition_for_key, topics};
use model::{Envelope, LogBatch, MetricBatch, Payload, PlatformEvent, SpanBatch, TenantId};

use crate::GatewayError;

/// Largest encoded envelope put on the bus (Kafka's default message limit is 1 MB).
pub const DEFAULT_MAX_RECORD_BYTES: usize = 900 * 1024;

#[derive(Debug)]
pub struct Sink {
    bus: Arc<dyn Bus>,
    metric_partitions: u32,
    span_partitions: u32,
    log_partitions: u32,
    event_partitions: u32,
    max_record_bytes: usize,
}

impl Sink {
    /// Reads the partition counts of Meerkat's topics (which must exist).
    pub async fn new(bus: Arc<dyn Bus>, max_record_bytes: usize) -> Result<Self, GatewayError> {
        Ok(Self {
            metric_partitions: bus.partition_count(topics::METRICS).await?,
            span_partitions: bus.partition_count(topics::SPANS).await?,
            log_partitions: bus.partition_count(topics::LOGS).await?,
            event_partitions: bus.partition_count(topics::EVENTS).await?,
            bus,
            max_record_bytes,
        })
    }

    /// Encodes `payload` into bus records (on a blocking thread: encoding big batches is CPU
    /// work) and appends them; returns once the bus acknowledged a durable append.
    pub async fn write(&self, tenant: &TenantId, payload: Payload) -> Result<(), GatewayError> {
        let plan = RecordPlan {
            tenant: tenant.clone(),
            metric_partitions: self.metric_partitions,
            span_partitions: self.span_partitions,
            log_partitions: self.log_partitions,
            event_partitions: self.event_partitions,
            max_record_bytes: self.max_record_bytes,
        };
        let (topic, records) = tokio::task::spawn_blocking(move || plan.records(payload))
            .await
            .map_err(|e| GatewayError::Unavailable(format!("encoding task failed: {e}")))??;
        if records.is_empty() {
            return Ok(());
        }
        self.bus.produce(topic, records).await?;
        Ok(())
    }
}

struct RecordPlan {
    tenant: TenantId,
    metric_partitions: u32,
    span_partitions: u32,
    log_partitions: u32,
    event_partitions: u32,
    max_record_bytes: usize,
}

/// A partition key: the tenant and something stable about the item.
fn key(tenant: &TenantId, item: &[u8]) -> Vec<u8> {
    let mut key = Vec::with_capacity(tenant.as_str().len() + 1 + item.len());
    key.extend_from_slice(tenant.as_str().as_bytes());
    key.push(0);
    key.extend_from_slice(item);
    key
}

impl RecordPlan {
    fn records(self, payload: Payload) -> Result<(&'static str, Vec<ProduceRecord>), GatewayError> {
        match payload {
            Payload::Metrics(batch) => Ok((topics::METRICS, self.metric_records(batch)?)),
            Payload::Spans(batch) => Ok((topics::SPANS, self.span_records(batch)?)),
            Payload::Logs(batch) => Ok((topics::LOGS, self.log_records(batch)?)),
            Payload::Events(events) => Ok((topics::EVENTS, self.event_records(events)?)),
            Payload::RemoteWrite(body) => Ok((topics::METRICS, self.remote_write_records(body)?)),
        }
    }

    fn metric_records(&self, batch: MetricBatch) -> Result<Vec<ProduceRecord>, GatewayError> {
        let mut by_partition: Vec<MetricBatch> =
            vec![MetricBatch::default(); self.metric_partitions as usize];
        for series in batch.series {
            let fingerprint = series.labels.fingerprint().to_le_bytes();
            let partition =
                partition_for_key(&key(&self.tenant, &fingerprint), self.metric_partitions);
            by_partition[partition as usize].series.push(series);
        }
        // Metadata is small and per family: it travels with the first non-empty share.
        if let Some(first) = by_partition.iter_mut().find(|b| !b.series.is_empty()) {
            first.metadata = batch.metadata;
        } else if !batch.metadata.is_empty() {
            by_partition[0].metadata = batch.metadata;
        }
        let mut records = Vec::new();
        for (partition, share) in by_partition.into_iter().enumerate() {
            if share.series.is_empty() && share.metadata.is_empty() {
                continue;
            }
            self.encode_split(Payload::Metrics(share), partition as u32, &mut records)?;
        }
        Ok(records)
    }

    /// A whole valid remote-write body is one record, on the partition of its first
    /// series; one too large for a record is split through the decoded batch instead.
    fn remote_write_records(
        &self,
        body: model::RemoteWriteBody,
    ) -> Result<Vec<ProduceRecord>, GatewayError> {
        if body.snappy.len() + 64 > self.max_record_bytes {
            let batch = body
                .decode()
                .map_err(|e| GatewayError::BadRequest(format!("remote-write body: {e}")))?;
            return self.metric_records(batch);
        }
        let partition = partition_for_key(
            &key(&self.tenant, &body.affinity.to_le_bytes()),
            self.metric_partitions,
        );
        let mut records = Vec::with_capacity(1);
        self.encode_split(Payload::RemoteWrite(body), partition, &mut records)?;
        Ok(records)
    }

    fn span_records(&self, batch: SpanBatch) -> Result<Vec<ProduceRecord>, GatewayError> {
        // All spans of a trace go to one partition, keeping their resource and scope.
        let mut by_partition: Vec<SpanBatch> =
            vec![SpanBatch::default(); self.span_partitions as usize];
        for resource_spans in batch.resource_spans {
            let mut shares: Vec<Option<model::ResourceSpans>> =
                vec![None; self.span_partitions as usize];
            for scope_spans in resource_spans.scope_spans {
                let mut scope_shares: Vec<Option<model::ScopeSpans>> =
                    vec![None; self.span_partitions as usize];
                for span in scope_spans.spans {
                    let partition = partition_for_key(
                        &key(&self.tenant, &span.trace_id.0),
                        self.span_partitions,
                    ) as usize;
                    scope_shares[partition]
                        .get_or_insert_with(|| model::ScopeSpans {
                            scope: scope_spans.scope.clone(),
                            schema_url: scope_spans.schema_url.clone(),
                            spans: Vec::new(),
                        })
                        .spans
                        .push(span);
                }
                for (partition, share) in scope_shares.into_iter().enumerate() {
                    if let Some(share) = share {
                        shares[partition]
                            .get_or_insert_with(|| model::ResourceSpans {
                                resource: resource_spans.resource.clone(),
                                schema_url: resource_spans.schema_url.clone(),
                                scope_spans: Vec::new(),
                            })
                            .scope_spans
                            .push(share);
                    }
                }
            }
            for (partition, share) in shares.into_iter().enumerate() {
                if let Some(share) = share {
                    by_partition[partition].resource_spans.push(share);
                }
            }
        }
        let mut records = Vec::new();
        for (partition, share) in by_partition.into_iter().enumerate() {
            if !share.resource_spans.is_empty() {
                self.encode_split(Payload::Spans(share), partition as u32, &mut records)?;
            }
        }
        Ok(records)
    }

    fn log_records(&self, batch: LogBatch) -> Result<Vec<ProduceRecord>, GatewayError> {
        // A resource's records stay together (and in order) in one partition.
        let mut by_partition: Vec<LogBatch> =
            vec![LogBatch::default(); self.log_partitions as usize];
        for resource_logs in batch.resource_logs {
            let identity = format!("{:?}", resource_logs.resource.attributes);
            let partition =
                partition_for_key(&key(&self.tenant, identity.as_bytes()), self.log_partitions);
            by_partition[partition as usize]
                .resource_logs
                .push(resource_logs);
        }
        let mut records = Vec::new();
        for (partition, share) in by_partition.into_iter().enumerate() {
            if !share.resource_logs.is_empty() {
                self.encode_split(Payload::Logs(share), partition as u32, &mut records)?;
            }
        }
        Ok(records)
    }

    fn event_records(
        &self,
        events: Vec<PlatformEvent>,
    ) -> Result<Vec<ProduceRecord>, GatewayError> {
        let mut records = Vec::new();
        if !events.is_empty() {
            let partition = partition_for_key(&key(&self.tenant, b"events"), self.event_partitions);
            self.encode_split(Payload::Events(events), partition, &mut records)?;
        }
        Ok(records)
    }

    /// Encodes one envelope, halving its payload until each part fits in a record.
    fn encode_split(
        &self,
        payload: Payload,
        partition: u32,
        out: &mut Vec<ProduceRecord>,
    ) -> Result<(), GatewayError> {
        let envelope = Envelope {
            tenant: self.tenant.clone(),
            payload,
        };
        let bytes = envelope
            .encode()
            .map_err(|e| GatewayError::Unavailable(e.to_string()))?;
        if bytes.len() <= self.max_record_bytes {
            out.push(ProduceRecord::new(bytes).with_partition(partition));
            return Ok(());
        }
        match split(envelope.payload) {
            Some((first, second)) => {
                self.encode_split(first, partition, out)?;
                self.encode_split(second, partition, out)
            }
            None => Err(GatewayError::BadRequest(format!(
                "a single item encodes to {} bytes, more than the {} a bus record may hold",
                bytes.len(),
                self.max_record_bytes
            ))),
        }
    }
}

/// Splits a payload into two halves, in order; `None` when it holds a single item.
fn split(payload: Payload) -> Option<(Payload, Payload)> {
    fn halves<T>(mut items: Vec<T>) -> Option<(Vec<T>, Vec<T>)> {
        if items.len() < 2 {
            return None;
        }
        let second = items.split_off(items.len() / 2);
        Some((items, second))
    }
    match payload {
        Payload::Metrics(batch) => {
            let (first, second) = halves(batch.series)?;
            Some((
                Payload::Metrics(MetricBatch {
                    series: first,
                    metadata: batch.metadata,
                }),
                Payload::Metrics(MetricBatch {
                    series: second,
                    metadata: Vec::new(),
                }),
            ))
        }
        Payload::Spans(batch) => split_nested(
            batch.resource_spans,
            |r| &mut r.scope_spans,
            |s| &mut s.spans,
        )
        .map(|(a, b)| {
            (
                Payload::Spans(SpanBatch { resource_spans: a }),
                Payload::Spans(SpanBatch { resource_spans: b }),
            )
        }),
        Payload::Logs(batch) => split_nested(
            batch.resource_logs,
            |r| &mut r.scope_logs,
            |s| &mut s.log_records,
        )
        .map(|(a, b)| {
            (
                Payload::Logs(LogBatch { resource_logs: a }),
                Payload::Logs(LogBatch { resource_logs: b }),
            )
        }),
        Payload::Events(events) => {
            halves(events).map(|(a, b)| (Payload::Events(a), Payload::Events(b)))
        }
        // Sized before encoding (see `remote_write_records`): never split here.
        Payload::RemoteWrite(_) => None,
    }
}

/// Halves a resource → scope → item tree, at the outermost level that has two or more
/// entries, cloning the enclosing resource or scope into both halves.
fn split_nested<R: Clone, S: Clone, I>(
    mut resources: Vec<R>,
    scopes: impl Fn(&mut R) -> &mut Vec<S>,
    items: impl Fn(&mut S) -> &mut Vec<I>,
) -> Option<(Vec<R>, Vec<R>)> {
    if resources.len() >= 2 {
        let second = resources.split_off(resources.len() / 2);
        return Some((resources, second));
    }
    let mut resource = resources.pop()?;
    let scope_list = scopes(&mut resource);
    if scope_list.len() >= 2 {
        let second_scopes = scope_list.split_off(scope_list.len() / 2);
        let mut other = resource.clone();
        *scopes(&mut other) = second_scopes;
        return Some((vec![resource], vec![other]));
    }
    let mut scope = scope_list.pop()?;
    let item_list = items(&mut scope);
    if item_list.len() < 2 {
        return None;
    }
    let second_items = item_list.split_off(item_list.len() / 2);
    let mut other_scope = scope.clone();
    // The clone carried the first half's items; replace them with the second half.
    *items(&mut other_scope) = second_items;
    let mut other = resource.clone();
    scopes(&mut resource).push(scope);
    scopes(&mut other).push(other_scope);
    Some((vec![resource], vec![other]))
}
