//! A gateway on a real embedded bus in a temporary directory, driven through its axum
//! router in-process.

#![allow(clippy::unwrap_used, dead_code)] // test code; not every test uses every helper

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use bus::Bus;
use bus::embedded::{EmbeddedBus, EmbeddedBusConfig};
use gateway::{Gateway, GatewayConfig};
use model::Envelope;
use tempfile::TempDir;
use tower::ServiceExt;

pub struct Harness {
    pub dir: TempDir,
    pub bus: Arc<EmbeddedBus>,
    pub gateway: Gateway,
    pub registry: prometheus_client::registry::Registry,
}

impl Harness {
    pub async fn new(config: GatewayConfig) -> Self {
        let dir = TempDir::new().unwrap();
        let bus = Arc::new(EmbeddedBus::open(dir.path(), EmbeddedBusConfig::default()).unwrap());
        Self::on_bus(dir, bus.clone(), bus, config).await
    }

    /// A gateway whose sink is `sink` (e.g. a slowed-down bus) while `bus` is read back.
    pub async fn on_bus(
        dir: TempDir,
        bus: Arc<EmbeddedBus>,
        sink: Arc<dyn Bus>,
        config: GatewayConfig,
    ) -> Self {
        for topic in bus::topics::ALL {
            bus.ensure_topic(topic, 2).await.unwrap();
        }
        let mut registry = prometheus_client::registry::Registry::default();
        let metrics = gateway::metrics::GatewayMetrics::new(&mut registry);
        let gateway = Gateway::new(&config, sink, metrics).await.unwrap();
        Self {
            dir,
            bus,
            gateway,
            registry,
        }
    }

    pub fn router(&self) -> Router {
        self.gateway.http_routes()
    }

    /// Every envelope on a topic, in partition then offset order.
    pub async fn envelopes(&self, topic: &str) -> Vec<Envelope> {
        let mut out = Vec::new();
        for partition in 0..self.bus.partition_count(topic).await.unwrap() {
            let end = self
                .bus
                .watermarks(topic, partition)
                .await
                .unwrap()
                .high_watermark;
            let mut next = 0;
            while next < end {
                let records = self
                    .bus
                    .fetch(topic, partition, next, 1 << 20)
                    .await
                    .unwrap();
                next = records.last().unwrap().offset + 1;
                out.extend(records.iter().map(|r| Envelope::decode(&r.value).unwrap()));
            }
        }
        out
    }

    /// Sample values on the bus, by series (rendered as Prometheus text) and tenant.
    pub async fn series(&self) -> Vec<(String, String, Vec<f64>)> {
        let mut out = Vec::new();
        for envelope in self.envelopes(bus::topics::METRICS).await {
            if let Some(batch) = envelope.payload.into_metric_batch().unwrap() {
                for s in batch.series {
                    out.push((
                        envelope.tenant.to_string(),
                        s.labels.to_string(),
                        s.samples.iter().map(|x| x.value).collect(),
                    ));
                }
            }
        }
        out.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
        out
    }

    pub fn metrics_text(&self) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry).unwrap();
        text
    }
}

pub struct Answer {
    pub status: StatusCode,
    pub retry_after: Option<String>,
    pub content_type: Option<String>,
    pub body: Vec<u8>,
}

impl Answer {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

pub async fn send(router: &Router, request: Request<Body>) -> Answer {
    let response = router.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let header = |name: &str| headers.get(name).map(|v| v.to_str().unwrap().to_owned());
    let retry_after = header("retry-after");
    let content_type = header("content-type");
    let body = axum::body::to_bytes(response.into_body(), 1 << 24)
        .await
        .unwrap()
        .to_vec();
    Answer {
        status,
        retry_after,
        content_type,
        body,
    }
}
