//! Evaluates Prometheus-format alerting and recording rules.
//!
//! This crate will own rule-file loading and validation (`meerkat rules check|test`), group
//! evaluation against the query engine, and notification of Alertmanager and webhooks; alert
//! state transitions go onto the bus as platform events.
//!
//! Nothing is implemented yet; see issue 7.
