//! Evaluates Prometheus-format alerting and recording rules.
//!
//! This crate owns rule-file loading and validation (`meerkat rules check`, following
//! Prometheus 2.42's `rulefmt` and `promtool check rules` so teams can bring their existing
//! files unchanged). Group evaluation against the query engine, notification of Alertmanager
//! and webhooks, and `meerkat rules test` are still to come (issue 7).

pub mod rulefmt;
pub mod template;

pub use rulefmt::{CheckReport, Duplicate, RuleError, RuleGroup, RuleGroups, RuleNode};
