//! Where telemetry comes to rest.
//!
//! This crate will own the storage trait and its two engines: the embedded columnar store of
//! standalone mode (Arrow in memory for the recent window, Parquet parts on disk, a series
//! index for label matchers) and ClickHouse for distributed mode, each read through DataFusion
//! `TableProvider`s with filter and projection pushdown. Durability of the embedded store
//! comes from the bus (it records the bus offset it has persisted and replays from there), so
//! it keeps no write-ahead log of its own.
//!
//! Nothing is implemented yet; see issue 4.
