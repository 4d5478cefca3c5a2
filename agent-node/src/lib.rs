//! The node agent, run as a DaemonSet on every Kubernetes node.
//!
//! It owns host metrics (node_exporter names), container metrics from cgroup v2 (cAdvisor
//! names), pod discovery on the node, log tailing of `/var/log/pods`, a local OTLP proxy
//! that adds Kubernetes attributes, and delivery to the gateway over the network (it never
//! links the server crates).

pub mod agent;
pub mod containers;
pub mod host;
pub mod logs;
pub mod metrics;
pub mod otlp_proxy;
pub mod pod_scrape;
pub mod pods;
pub mod push;
