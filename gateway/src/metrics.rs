//! The gateway's own metrics: what came in, what was refused and why, and how long it took.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

use crate::validate::Outcome;

/// The protocols the gateway speaks, as metrics label values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Protocol {
    RemoteWrite,
    OtlpGrpc,
    OtlpHttp,
    Influx,
    Zipkin,
    Events,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::RemoteWrite => "remote_write",
            Self::OtlpGrpc => "otlp_grpc",
            Self::OtlpHttp => "otlp_http",
            Self::Influx => "influx",
            Self::Zipkin => "zipkin",
            Self::Events => "events",
        }
    }
}

/// What a request carried.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Signal {
    Samples,
    Spans,
    LogRecords,
    /// Platform events (`POST /api/v1/events`).
    Events,
}

impl Signal {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Samples => "samples",
            Self::Spans => "spans",
            Self::LogRecords => "log_records",
            Self::Events => "events",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReceivedLabels {
    protocol: &'static str,
    tenant: String,
    signal: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RejectedLabels {
    protocol: &'static str,
    tenant: String,
    signal: &'static str,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    protocol: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Debug)]
pub struct GatewayMetrics {
    received: Family<ReceivedLabels, Counter>,
    rejected: Family<RejectedLabels, Counter>,
    requests: Family<RequestLabels, Counter>,
    duration: Family<RequestLabels, Histogram>,
    pub inflight_bytes: Gauge,
    /// The live list of agents: kept here because its gauges are read from it on scrape.
    pub(crate) agents: std::sync::Arc<crate::agents::AgentRegistry>,
}

impl GatewayMetrics {
    pub fn new(registry: &mut Registry) -> Self {
        let metrics = Self {
            received: Family::default(),
            rejected: Family::default(),
            requests: Family::default(),
            duration: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.0005, 2.0, 16))
            }),
            inflight_bytes: Gauge::default(),
            agents: Default::default(),
        };
        let registry = registry.sub_registry_with_prefix("meerkat_gateway");
        registry.register(
            "received",
            "Samples, spans and log records accepted and durably on the bus",
            metrics.received.clone(),
        );
        registry.register(
            "rejected",
            "Samples, spans and log records refused, by reason",
            metrics.rejected.clone(),
        );
        registry.register(
            "requests",
            "Write requests answered, by outcome",
            metrics.requests.clone(),
        );
        registry.register_with_unit(
            "request_duration",
            "Time from receiving a write request to answering it",
            Unit::Seconds,
            metrics.duration.clone(),
        );
        registry.register_with_unit(
            "inflight",
            "Request bytes being decoded or waiting for the bus",
            Unit::Bytes,
            metrics.inflight_bytes.clone(),
        );
        registry.register_collector(Box::new(crate::agents::AgentsCollector(
            metrics.agents.clone(),
        )));
        metrics
    }

    /// Records what one request brought: accepted items and rejections by reason.
    pub fn record(&self, protocol: Protocol, tenant: &str, signal: Signal, outcome: &Outcome) {
        if outcome.accepted > 0 {
            self.received
                .get_or_create(&ReceivedLabels {
                    protocol: protocol.as_str(),
                    tenant: tenant.to_owned(),
                    signal: signal.as_str(),
                })
                .inc_by(outcome.accepted);
        }
        for (reason, count) in outcome.rejected.iter().chain(&outcome.skipped) {
            self.reject(protocol, tenant, signal, reason, *count);
        }
    }

    pub fn reject(
        &self,
        protocol: Protocol,
        tenant: &str,
        signal: Signal,
        reason: &'static str,
        count: u64,
    ) {
        self.rejected
            .get_or_create(&RejectedLabels {
                protocol: protocol.as_str(),
                tenant: tenant.to_owned(),
                signal: signal.as_str(),
                reason,
            })
            .inc_by(count);
    }

    pub fn request_done(&self, protocol: Protocol, outcome: &'static str, seconds: f64) {
        let labels = RequestLabels {
            protocol: protocol.as_str(),
            outcome,
        };
        self.requests.get_or_create(&labels).inc();
        self.duration.get_or_create(&labels).observe(seconds);
    }
}
