//! Evaluates Prometheus-format alerting and recording rules.
//!
//! Teams bring their Prometheus rule files unchanged: [`rulefmt`] loads and checks them as
//! Prometheus 2.42 does (`meerkat rules check`), [`rules`] evaluates groups with its
//! semantics against the PromQL engine ([`querier`]), [`expand`] runs label and annotation
//! templates, [`manager`] runs every tenant's groups on their intervals and reloads them,
//! [`notifier`] sends alerts to Alertmanager and webhooks, [`api`] answers Prometheus's
//! rules and alerts endpoints, and [`unittest`] runs `promtool test rules` files
//! (`meerkat rules test`).

pub mod api;
pub mod expand;
pub mod files;
pub mod manager;
pub mod notifier;
pub mod querier;
pub mod rulefmt;
pub mod rules;
pub mod template;
pub mod unittest;

pub use rulefmt::{CheckReport, Duplicate, RuleError, RuleGroup, RuleGroups, RuleNode};
