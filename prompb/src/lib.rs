//! Prometheus remote-write 1.0's protobuf messages (`prometheus/prompb`), generated with
//! prost-build from `proto/remote.proto`.
//!
//! Its own crate because both sides speak it: the gateway decodes it, and the agents (which
//! never link the server) encode it.

include!(concat!(env!("OUT_DIR"), "/prometheus.rs"));
