//! The scrape engine `agent-node` and `agent-cluster` share.
//!
//! Both agents scrape Prometheus exporters and must see exactly what Prometheus 2.42 sees, so
//! this crate follows Prometheus's own code paths: [`exposition`] parses the text format and
//! OpenMetrics as Prometheus's `textparse` does, [`relabel`] applies `relabel_configs` with
//! every action and Prometheus's validation. It depends only on small crates, never on the
//! server: agents talk to the gateway over the network.

pub mod config;
pub mod discovery;
pub mod exposition;
pub mod families;
pub mod labels;
pub mod page;
pub mod relabel;
pub mod remote_write;
pub mod scraper;
pub mod status;
pub mod tls;

pub use exposition::{Entry, Format, ParseError, ParsedSample, Parser};
pub use labels::LabelSet;
pub use relabel::{RelabelConfigYaml, RelabelError, RelabelRule};
