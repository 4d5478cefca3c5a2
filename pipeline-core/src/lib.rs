//! A lightweight pipeline runner whose runs are observable.
//!
//! This crate will own pipeline definitions and their execution; every run, stage and result
//! is published on the bus as a platform event, so CI/CD activity can be queried and
//! alerted on beside the telemetry it affects.
//!
//! Nothing is implemented yet.
