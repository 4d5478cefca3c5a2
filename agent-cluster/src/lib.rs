//! The cluster agent, one Deployment per Kubernetes cluster.
//!
//! This crate will own Prometheus-compatible scraping (a Prometheus `scrape_configs` file
//! works as it is), cluster state metrics with kube-state-metrics names, Kubernetes events as
//! platform events, and the agent's registration heartbeat to the gateway.
//!
//! Nothing is implemented yet; see issue 6.
