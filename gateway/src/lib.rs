//! The one door through which telemetry enters Meerkat.
//!
//! This crate will own the protocol decoders (Prometheus remote-write, OTLP over gRPC and
//! HTTP, InfluxDB line protocol, Zipkin), tenant resolution, per-tenant limits, and the rule
//! that a request is answered 2xx only after the bus acknowledged a durable append.
//!
//! Nothing is implemented yet; see issue 3.
