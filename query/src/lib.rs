//! Answers questions about stored telemetry.
//!
//! This crate will own the PromQL engine (parsed with `promql-parser`, evaluated with
//! Prometheus's semantics), SQL over DataFusion, and the Prometheus-compatible HTTP API that
//! Grafana speaks.
//!
//! Nothing is implemented yet; see issue 5.
