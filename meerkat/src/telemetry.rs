//! Meerkat's own logs and build metric.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::registry::{Registry, Unit};
use tracing_subscriber::EnvFilter;

use crate::config::{LogConfig, LogFormat};

/// Sends `tracing` events to stderr with the configured filter and format.
pub fn init_logging(config: &LogConfig) -> anyhow::Result<()> {
    let filter = EnvFilter::try_new(&config.level)?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let installed = match config.format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
    installed.map_err(|e| anyhow::anyhow!("cannot install the logger: {e}"))
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: String,
    revision: String,
}

/// `meerkat_build_info{version, revision} 1`, the conventional way to tell which build a
/// scraped process runs.
fn register_build_info(registry: &mut Registry) {
    let info: Family<BuildLabels, Gauge> = Family::default();
    info.get_or_create(&BuildLabels {
        version: env!("CARGO_PKG_VERSION").to_owned(),
        revision: env!("GIT_REVISION").to_owned(),
    })
    .set(1);
    registry.register(
        "meerkat_build_info",
        "Version and git revision of this build",
        info,
    );
}

/// The standard `process_*` metrics every Prometheus exporter has (CPU, memory, file
/// descriptors, threads, start time), read from `/proc/self` at each scrape, so Meerkat's
/// own footprint shows in the same dashboards as everything else.
#[derive(Debug, Default)]
pub struct ProcessCollector;

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Ok(process) = procfs::process::Process::myself() else {
            return Ok(()); // not on Linux /proc: nothing to report
        };
        let Ok(stat) = process.stat() else {
            return Ok(());
        };
        let ticks = procfs::ticks_per_second() as f64;
        let page_size = procfs::page_size();
        let cpu_seconds = (stat.utime + stat.stime) as f64 / ticks;
        let start_seconds = procfs::boot_time_secs()
            .map_or(0.0, |boot| boot as f64 + stat.starttime as f64 / ticks);
        let gauges: [(&str, &str, Option<Unit>, f64); 4] = [
            (
                "process_resident_memory",
                "Resident memory size",
                Some(Unit::Bytes),
                (stat.rss * page_size) as f64,
            ),
            (
                "process_virtual_memory",
                "Virtual memory size",
                Some(Unit::Bytes),
                stat.vsize as f64,
            ),
            (
                "process_start_time",
                "Start time since the Unix epoch",
                Some(Unit::Seconds),
                start_seconds,
            ),
            (
                "process_threads",
                "OS threads",
                None,
                stat.num_threads as f64,
            ),
        ];
        let counter = encoder.encode_descriptor(
            "process_cpu",
            "User and system CPU time spent",
            Some(&Unit::Seconds),
            MetricType::Counter,
        )?;
        ConstCounter::new(cpu_seconds).encode(counter)?;
        for (name, help, unit, value) in &gauges {
            let metric = encoder.encode_descriptor(name, help, unit.as_ref(), MetricType::Gauge)?;
            ConstGauge::new(*value).encode(metric)?;
        }
        if let Ok(fds) = process.fd_count() {
            let metric = encoder.encode_descriptor(
                "process_open_fds",
                "Open file descriptors",
                None,
                MetricType::Gauge,
            )?;
            ConstGauge::new(fds as i64).encode(metric)?;
        }
        Ok(())
    }
}

/// Adds the build info and process metrics every role exports.
pub fn register_process_metrics(registry: &mut Registry) {
    register_build_info(registry);
    registry.register_collector(Box::new(ProcessCollector));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn process_metrics_describe_this_process() {
        let mut registry = Registry::default();
        register_process_metrics(&mut registry);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        let value = |name: &str| -> f64 {
            text.lines()
                .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
                .and_then(|l| l.rsplit(' ').next())
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("{name} missing from\n{text}"))
        };
        let rss = value("process_resident_memory_bytes");
        assert!(rss > 1e6 && rss < 1e10, "{rss}");
        assert!(value("process_open_fds") >= 3.0);
        assert!(value("process_threads") >= 1.0);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        let started = value("process_start_time_seconds");
        assert!(
            started <= now + 1.0 && started > now - 3600.0,
            "{started} vs {now}"
        );
        assert!(value("process_cpu_seconds_total") >= 0.0);
        assert!(text.contains("meerkat_build_info{"), "{text}");
    }
}
