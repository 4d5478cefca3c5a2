//! Meerkat's benchmarks: programs that measure Meerkat beside a peer and print ratios.
//!
//! Absolute numbers on shared machines are noise; ratios measured in the same run are not.
//! Each subcommand says what it compares.

mod agent_scrape;
mod clickhouse_ingest;
mod dashboard;
mod encoding;
mod node_agent;
mod remote_write;
mod rules;
mod storage_size;
mod visibility;

use clap::{Parser, Subcommand};

/// The allocator `meerkat` itself uses, for the parts of Meerkat that run in-process.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
#[command(name = "bench", about = "Meerkat benchmarks (run with --release)")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Bus record encodings compared on realistic batches: size, encode and decode time
    Encoding(encoding::Args),
    /// Remote-write ingest: Meerkat vs VictoriaMetrics vs Prometheus, samples per CPU-second
    RemoteWrite(remote_write::Args),
    /// Bytes on disk per sample: the embedded store vs VictoriaMetrics, same data
    StorageSize(storage_size::Args),
    /// Acknowledged → visible to a read, under load: Meerkat vs VictoriaMetrics vs Prometheus
    Visibility(visibility::Args),
    /// Dashboard queries: Meerkat vs Prometheus vs VictoriaMetrics, median and p99 latency
    Dashboard(dashboard::Args),
    /// Distributed mode's write path: Kafka → ingest → ClickHouse, samples per second
    ClickhouseIngest(clickhouse_ingest::Args),
    /// Scraping agents: meerkat agent cluster vs Prometheus agent mode vs vmagent, CPU and RSS
    AgentScrape(agent_scrape::Args),
    /// The node agent's idle footprint beside node_exporter: CPU per minute and RSS
    NodeAgent(node_agent::Args),
    /// Rule evaluation: 1,000 rules in Meerkat vs Prometheus vs vmalert, time per interval
    Rules(rules::Args),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Encoding(args) => encoding::run(&args),
        Command::RemoteWrite(args) => remote_write::run(&args),
        Command::StorageSize(args) => storage_size::run(&args),
        Command::Visibility(args) => visibility::run(&args),
        Command::ClickhouseIngest(args) => clickhouse_ingest::run(&args),
        Command::Dashboard(args) => dashboard::run(&args),
        Command::AgentScrape(args) => agent_scrape::run(&args),
        Command::NodeAgent(args) => node_agent::run(&args),
        Command::Rules(args) => rules::run(&args),
    }
}
