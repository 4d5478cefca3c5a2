//! A lightweight workload orchestrator and cluster manager.
//!
//! This crate will own deploy tracking and the cluster registry (the live list of
//! `agent-cluster` instances, from their heartbeats); every deploy is published on the bus as
//! a platform event.
//!
//! Nothing is implemented yet.
