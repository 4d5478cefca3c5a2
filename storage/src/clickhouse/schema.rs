//! The ClickHouse schema: versioned migrations, applied in order at start.
//!
//! Each migration is exactly one statement (ClickHouse 18.16 takes one per HTTP request)
//! and is idempotent (`IF NOT EXISTS`), so two processes starting at once cannot break
//! each other; `schema_migrations` records which versions are applied. A migration never
//! changes once released: a later change is a new migration.
//!
//! The statements are written for the oldest server Meerkat supports (18.16: no `TTL`, no
//! column codecs, `LowCardinality` experimental, no `Map`, no `DateTime64`). Where the
//! server reports a version that has them, [`Features`] turns on `LowCardinality` for
//! low-cardinality strings and compression codecs suited to each column; the tables are
//! the same otherwise, so every query works on both.
//!
//! Every table has the tenant as the first column of its sorting key, and every query
//! filters on it: tenants never mix. Time-series tables are partitioned by UTC day
//! (`intDiv(<time>, <unit per day>)`, the same day numbers as the embedded store), so
//! retention drops whole partitions.

use std::fmt;

use clickhouse::Client;

use super::ch_error;
use crate::{Result, StorageError};

/// A server's `major.minor` version, from `SELECT version()`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ServerVersion {
    pub major: u32,
    pub minor: u32,
}

impl ServerVersion {
    /// Parses `18.16.1`, `23.8.2.7`, and the like.
    pub fn parse(text: &str) -> Option<Self> {
        let mut parts = text.trim().split('.');
        let major = parts.next()?.parse().ok()?;
        let minor = parts.next()?.parse().ok()?;
        Some(Self { major, minor })
    }
}

impl fmt::Display for ServerVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

/// Schema features the server has, beyond what 18.16 offers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Features {
    /// `LowCardinality(String)` without the experimental setting.
    pub low_cardinality: bool,
    /// Column `CODEC(...)` clauses, including `DoubleDelta` and `Gorilla`.
    pub codecs: bool,
}

impl Features {
    /// The first version taken to have both (LowCardinality left experimental and the
    /// DoubleDelta/Gorilla codecs arrived during 19.x; 20.1 is a safe line).
    pub const MODERN: ServerVersion = ServerVersion {
        major: 20,
        minor: 1,
    };

    pub fn of(version: ServerVersion) -> Self {
        let modern = version >= Self::MODERN;
        Self {
            low_cardinality: modern,
            codecs: modern,
        }
    }

    /// A string column with few distinct values.
    fn low_cardinality(self) -> &'static str {
        if self.low_cardinality {
            "LowCardinality(String)"
        } else {
            "String"
        }
    }

    /// ` CODEC(<codec>)` where supported, else nothing.
    fn codec(self, codec: &str) -> String {
        if self.codecs {
            format!(" CODEC({codec})")
        } else {
            String::new()
        }
    }
}

/// One schema change.
#[derive(Clone, Copy, Debug)]
pub struct Migration {
    pub version: u32,
    pub name: &'static str,
    statement: fn(Features) -> String,
}

impl Migration {
    pub fn statement(&self, features: Features) -> String {
        (self.statement)(features)
    }
}

/// Every migration, in order.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "series",
        statement: series,
    },
    Migration {
        version: 2,
        name: "samples",
        statement: samples,
    },
    Migration {
        version: 3,
        name: "spans",
        statement: spans,
    },
    Migration {
        version: 4,
        name: "logs",
        statement: logs,
    },
    Migration {
        version: 5,
        name: "events",
        statement: events,
    },
    Migration {
        version: 6,
        name: "bus_offsets",
        statement: bus_offsets,
    },
    Migration {
        version: 7,
        name: "metric_metadata",
        statement: metric_metadata,
    },
    Migration {
        version: 8,
        name: "exemplars",
        statement: exemplars,
    },
    Migration {
        version: 9,
        name: "histograms",
        statement: histograms,
    },
];

/// Native histogram samples keyed by (tenant, series, timestamp), the latest write winning
/// as for samples: the embedded store's `histograms` columns (see `embedded/histograms.rs`),
/// each side's buckets as parallel arrays of indexes and counts.
fn histograms(f: Features) -> String {
    let lc = f.low_cardinality();
    let zstd = f.codec("ZSTD(1)");
    format!(
        "CREATE TABLE IF NOT EXISTS histograms (\
         tenant {lc}, \
         fingerprint UInt64, \
         timestamp_ms Int64, \
         schema Int32, \
         zero_threshold Float64, \
         zero_count Float64, \
         count Float64, \
         sum Float64, \
         counter_reset {lc}, \
         positive_indexes Array(Int32){zstd}, \
         positive_counts Array(Float64){zstd}, \
         negative_indexes Array(Int32){zstd}, \
         negative_counts Array(Float64){zstd}, \
         version UInt64\
         ) ENGINE = ReplacingMergeTree(version) \
         PARTITION BY intDiv(timestamp_ms, {MS_PER_DAY}) \
         ORDER BY (tenant, fingerprint, timestamp_ms)"
    )
}

/// Exemplars keyed by (tenant, series, timestamp): one per series and time, as Prometheus
/// keeps them; the embedded store's `exemplars` columns, the time in milliseconds.
fn exemplars(f: Features) -> String {
    let lc = f.low_cardinality();
    let zstd = f.codec("ZSTD(1)");
    format!(
        "CREATE TABLE IF NOT EXISTS exemplars (\
         tenant {lc}, \
         timestamp_ms Int64, \
         metric_name {lc}, \
         series_labels String{zstd}, \
         value Float64, \
         labels String{zstd}, \
         trace_id Nullable(String), \
         version UInt64\
         ) ENGINE = ReplacingMergeTree(version) \
         PARTITION BY intDiv(timestamp_ms, {MS_PER_DAY}) \
         ORDER BY (tenant, metric_name, series_labels, timestamp_ms)"
    )
}

/// Metric metadata (type, help, unit) by family, each distinct entry once after merges
/// (reads say `DISTINCT` for the time before).
fn metric_metadata(f: Features) -> String {
    let lc = f.low_cardinality();
    format!(
        "CREATE TABLE IF NOT EXISTS metric_metadata (\
         tenant {lc}, \
         metric_family_name String, \
         metric_type {lc}, \
         help String, \
         unit {lc}\
         ) ENGINE = ReplacingMergeTree \
         ORDER BY (tenant, metric_family_name, metric_type, help, unit)"
    )
}

/// Tables holding time-partitioned data, which retention drops a day at a time.
pub const DAY_PARTITIONED: [&str; 6] = [
    "samples",
    "histograms",
    "spans",
    "logs",
    "events",
    "exemplars",
];

const NS_PER_DAY: &str = "86400000000000";
const MS_PER_DAY: &str = "86400000";

/// One row per series (re-inserts collapse): its labels as parallel name/value arrays in
/// name order, and its fingerprint (Prometheus's `labels.Hash`), which samples refer to.
fn series(f: Features) -> String {
    let lc = f.low_cardinality();
    let label_names = if f.low_cardinality {
        "Array(LowCardinality(String))"
    } else {
        "Array(String)"
    };
    format!(
        "CREATE TABLE IF NOT EXISTS series (\
         tenant {lc}, \
         metric_name {lc}, \
         fingerprint UInt64, \
         label_names {label_names}, \
         label_values Array(String){zstd}\
         ) ENGINE = ReplacingMergeTree \
         ORDER BY (tenant, metric_name, fingerprint)",
        zstd = f.codec("ZSTD(1)"),
    )
}

/// Samples keyed by (tenant, series, timestamp): the row with the highest `version` (the
/// latest write) wins, as in the embedded store.
fn samples(f: Features) -> String {
    format!(
        "CREATE TABLE IF NOT EXISTS samples (\
         tenant {lc}, \
         fingerprint UInt64{fp}, \
         timestamp_ms Int64{ts}, \
         value Float64{value}, \
         version UInt64{version}\
         ) ENGINE = ReplacingMergeTree(version) \
         PARTITION BY intDiv(timestamp_ms, {MS_PER_DAY}) \
         ORDER BY (tenant, fingerprint, timestamp_ms)",
        lc = f.low_cardinality(),
        fp = f.codec("Delta, ZSTD(1)"),
        ts = f.codec("DoubleDelta, ZSTD(1)"),
        value = f.codec("Gorilla, ZSTD(1)"),
        version = f.codec("Delta, ZSTD(1)"),
    )
}

/// Spans keyed by (tenant, trace id, span id); the columns of the embedded store's `spans`
/// table, with times as Int64 nanoseconds and nested OTLP data as JSON text.
fn spans(f: Features) -> String {
    let lc = f.low_cardinality();
    let zstd = f.codec("ZSTD(1)");
    format!(
        "CREATE TABLE IF NOT EXISTS spans (\
         tenant {lc}, \
         trace_id String, \
         span_id String, \
         parent_span_id Nullable(String), \
         service_name {lc}, \
         name String, \
         kind {lc}, \
         start_time_ns Int64{delta}, \
         end_time_ns Int64{delta}, \
         duration_ns Int64, \
         status_code {lc}, \
         status_message String, \
         attributes String{zstd}, \
         resource_attributes String{zstd}, \
         scope_name {lc}, \
         scope_version {lc}, \
         events String{zstd}, \
         links String{zstd}, \
         trace_state String, \
         flags UInt32, \
         version UInt64\
         ) ENGINE = ReplacingMergeTree(version) \
         PARTITION BY intDiv(start_time_ns, {NS_PER_DAY}) \
         ORDER BY (tenant, trace_id, span_id)",
        delta = f.codec("Delta, ZSTD(1)"),
    )
}

/// Log records keyed by their bus position (partition, offset, index in the record); the
/// service and time lead the sorting key for queries, and are the same for every delivery
/// of a record, so they do not change what counts as a duplicate.
fn logs(f: Features) -> String {
    let lc = f.low_cardinality();
    let zstd = f.codec("ZSTD(1)");
    format!(
        "CREATE TABLE IF NOT EXISTS logs (\
         tenant {lc}, \
         timestamp_ns Int64{delta}, \
         observed_timestamp_ns Int64{delta}, \
         service_name {lc}, \
         severity_number Int32, \
         severity_text {lc}, \
         body String{zstd}, \
         attributes String{zstd}, \
         resource_attributes String{zstd}, \
         scope_name {lc}, \
         trace_id Nullable(String), \
         span_id Nullable(String), \
         event_name {lc}, \
         flags UInt32, \
         bus_partition UInt32, \
         bus_offset UInt64, \
         bus_index UInt32, \
         version UInt64\
         ) ENGINE = ReplacingMergeTree(version) \
         PARTITION BY intDiv(timestamp_ns, {NS_PER_DAY}) \
         ORDER BY (tenant, service_name, timestamp_ns, bus_partition, bus_offset, bus_index)",
        delta = f.codec("Delta, ZSTD(1)"),
    )
}

/// Platform events keyed by their bus position, like log records.
fn events(f: Features) -> String {
    let lc = f.low_cardinality();
    let zstd = f.codec("ZSTD(1)");
    format!(
        "CREATE TABLE IF NOT EXISTS events (\
         tenant {lc}, \
         timestamp_ms Int64, \
         kind {lc}, \
         source {lc}, \
         details String{zstd}, \
         attributes String{zstd}, \
         bus_partition UInt32, \
         bus_offset UInt64, \
         bus_index UInt32, \
         version UInt64\
         ) ENGINE = ReplacingMergeTree(version) \
         PARTITION BY intDiv(timestamp_ms, {MS_PER_DAY}) \
         ORDER BY (tenant, kind, timestamp_ms, bus_partition, bus_offset, bus_index)"
    )
}

/// The bus offsets covered by durable data: one row per flush and partition, collapsing to
/// the highest offset per partition.
fn bus_offsets(_: Features) -> String {
    "CREATE TABLE IF NOT EXISTS bus_offsets (\
     topic String, \
     partition UInt32, \
     next_offset UInt64\
     ) ENGINE = ReplacingMergeTree(next_offset) \
     ORDER BY (topic, partition)"
        .to_owned()
}

const MIGRATIONS_TABLE: &str = "CREATE TABLE IF NOT EXISTS schema_migrations (\
     version UInt32, \
     name String, \
     applied_at DateTime\
     ) ENGINE = ReplacingMergeTree \
     ORDER BY version";

#[derive(Debug, clickhouse::Row, serde::Serialize)]
struct MigrationRow<'a> {
    version: u32,
    name: &'a str,
    applied_at: u32,
}

/// Applies the migrations `client`'s database lacks; returns the versions applied now.
pub async fn migrate(client: &Client, features: Features) -> Result<Vec<u32>> {
    client
        .query(MIGRATIONS_TABLE)
        .execute()
        .await
        .map_err(|e| ch_error("creating schema_migrations", e))?;
    let applied: Vec<u32> = client
        .query("SELECT DISTINCT version FROM schema_migrations ORDER BY version")
        .fetch_all()
        .await
        .map_err(|e| ch_error("reading schema_migrations", e))?;
    let known = MIGRATIONS.last().map_or(0, |m| m.version);
    if let Some(newer) = applied.iter().find(|v| **v > known) {
        return Err(StorageError::Config(format!(
            "the ClickHouse database has schema version {newer}, newer than this build knows \
             ({known}): run a newer Meerkat or use another database"
        )));
    }
    let mut done = Vec::new();
    for migration in MIGRATIONS {
        if applied.contains(&migration.version) {
            continue;
        }
        client
            .query(&migration.statement(features))
            .execute()
            .await
            .map_err(|e| ch_error("applying a schema migration", e))?;
        let mut insert = client
            .insert::<MigrationRow<'_>>("schema_migrations")
            .await
            .map_err(|e| ch_error("recording a schema migration", e))?;
        let applied_at = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u32::try_from(d.as_secs()).unwrap_or(u32::MAX));
        insert
            .write(&MigrationRow {
                version: migration.version,
                name: migration.name,
                applied_at,
            })
            .await
            .map_err(|e| ch_error("recording a schema migration", e))?;
        insert
            .end()
            .await
            .map_err(|e| ch_error("recording a schema migration", e))?;
        tracing::info!(
            version = migration.version,
            name = migration.name,
            "ClickHouse schema migration applied"
        );
        done.push(migration.version);
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_parse_and_choose_features() {
        let old = ServerVersion::parse("18.16.1").unwrap();
        assert_eq!(
            old,
            ServerVersion {
                major: 18,
                minor: 16
            }
        );
        assert_eq!(
            Features::of(old),
            Features {
                low_cardinality: false,
                codecs: false
            }
        );
        let new = ServerVersion::parse("23.8.2.7").unwrap();
        assert!(Features::of(new).low_cardinality && Features::of(new).codecs);
        assert!(ServerVersion::parse("nonsense").is_none());
    }

    #[test]
    fn the_old_schema_uses_nothing_18_16_lacks_and_the_new_one_uses_more() {
        let old = Features::of(ServerVersion::parse("18.16.1").unwrap());
        let new = Features::of(ServerVersion::parse("24.3").unwrap());
        for migration in MIGRATIONS {
            let statement = migration.statement(old);
            for missing in ["CODEC", "LowCardinality", "TTL", "Map(", "DateTime64", ";"] {
                assert!(
                    !statement.contains(missing),
                    "{} uses {missing}",
                    migration.name
                );
            }
            assert!(statement.starts_with("CREATE TABLE IF NOT EXISTS"));
        }
        let samples = MIGRATIONS[1].statement(new);
        assert!(samples.contains("timestamp_ms Int64 CODEC(DoubleDelta, ZSTD(1))"));
        assert!(samples.contains("tenant LowCardinality(String)"));
        let versions: Vec<u32> = MIGRATIONS.iter().map(|m| m.version).collect();
        assert!(versions.windows(2).all(|w| w[0] < w[1]));
    }
}
