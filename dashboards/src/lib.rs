//! Dashboards and UI assets shipped inside the `meerkat` binary.
//!
//! This crate will own the bundled Grafana dashboards (node, containers, Kubernetes, Meerkat's
//! own health) and the static assets of Meerkat's web UI.
//!
//! Nothing is implemented yet.
