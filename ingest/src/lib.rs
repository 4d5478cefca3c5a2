//! Moves telemetry from the bus into storage.
//!
//! This crate will own the ingest workers: a consumer group on the bus that batches by size
//! and age, writes to storage idempotently, and commits bus offsets only after storage holds
//! the batch durably.
//!
//! Nothing is implemented yet; see issue 4.
