//! Host metrics with node_exporter's names, labels and units.
//!
//! Dashboards built for node_exporter (the "Node Exporter Full" family) query names such as
//! `node_cpu_seconds_total{mode="idle"}` or `node_filesystem_avail_bytes{mountpoint="/"}`;
//! producing exactly those series lets them work unchanged. Each collector below follows
//! node_exporter 1.5's collector of the same name (the Debian package the tests compare
//! against), reading the same kernel files under a configurable root so that a DaemonSet
//! with the host mounted at `/host` reports the host, not its own container.
//!
//! A collector that fails (a file missing on this kernel, say) reports
//! `node_scrape_collector_success{collector}` 0 and the others carry on, as in node_exporter.

mod kernel;
mod network;
mod storage;

use std::path::{Path, PathBuf};
use std::time::Instant;

use regex::Regex;

use crate::metrics::Families;

/// Where to read and what to leave out; the defaults are node_exporter 1.5's flags'.
#[derive(Clone, Debug)]
pub struct HostOptions {
    /// The host's root as this process sees it (`/`, or `/host` in a DaemonSet).
    pub root: PathBuf,
    /// `--collector.filesystem.mount-points-exclude`.
    pub mount_points_exclude: Regex,
    /// `--collector.filesystem.fs-types-exclude`.
    pub fs_types_exclude: Regex,
    /// `--collector.diskstats.device-exclude`.
    pub disk_devices_exclude: Regex,
    /// `--collector.netdev.device-exclude`.
    pub netdev_devices_exclude: Regex,
    /// `--collector.vmstat.fields`.
    pub vmstat_fields: Regex,
    /// `--collector.netstat.fields`.
    pub netstat_fields: Regex,
}

/// node_exporter 1.5's default mount point exclusion.
pub const DEFAULT_MOUNT_POINTS_EXCLUDE: &str =
    "^/(dev|proc|run/credentials/.+|sys|var/lib/docker/.+|var/lib/containers/storage/.+)($|/)";
/// node_exporter 1.5's default filesystem type exclusion.
pub const DEFAULT_FS_TYPES_EXCLUDE: &str = "^(autofs|binfmt_misc|bpf|cgroup2?|configfs|debugfs|devpts|devtmpfs|fusectl|hugetlbfs|iso9660|mqueue|nsfs|overlay|proc|procfs|pstore|rpc_pipefs|securityfs|selinuxfs|squashfs|sysfs|tracefs)$";
/// node_exporter 1.5's default: partitions, ram and loop devices are left out.
pub const DEFAULT_DISK_DEVICES_EXCLUDE: &str = r"^(ram|loop|fd|(h|s|v|xv)d[a-z]|nvme\d+n\d+p)\d+$";
pub const DEFAULT_NETDEV_DEVICES_EXCLUDE: &str = "^lo$";
pub const DEFAULT_VMSTAT_FIELDS: &str = "^(oom_kill|pgpg|pswp|pg.*fault).*";
pub const DEFAULT_NETSTAT_FIELDS: &str = "^(.*_(InErrors|InErrs)|Ip_Forwarding|Ip(6|Ext)_(InOctets|OutOctets)|Icmp6?_(InMsgs|OutMsgs)|TcpExt_(Listen.*|Syncookies.*|TCPSynRetrans|TCPTimeouts)|Tcp_(ActiveOpens|InSegs|OutSegs|OutRsts|PassiveOpens|RetransSegs|CurrEstab)|Udp6?_(InDatagrams|OutDatagrams|NoPorts|RcvbufErrors|SndbufErrors))$";

fn default_regex(pattern: &str) -> Regex {
    // The defaults are constants checked by a unit test.
    Regex::new(pattern).unwrap_or_else(|_| Regex::new("^$").unwrap_or_else(|_| unreachable!()))
}

impl HostOptions {
    /// node_exporter's defaults, reading the host at `root`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self {
            root: root.into(),
            mount_points_exclude: default_regex(DEFAULT_MOUNT_POINTS_EXCLUDE),
            fs_types_exclude: default_regex(DEFAULT_FS_TYPES_EXCLUDE),
            disk_devices_exclude: default_regex(DEFAULT_DISK_DEVICES_EXCLUDE),
            netdev_devices_exclude: default_regex(DEFAULT_NETDEV_DEVICES_EXCLUDE),
            vmstat_fields: default_regex(DEFAULT_VMSTAT_FIELDS),
            netstat_fields: default_regex(DEFAULT_NETSTAT_FIELDS),
        }
    }

    pub(crate) fn proc(&self, rest: &str) -> PathBuf {
        self.root.join("proc").join(rest)
    }

    pub(crate) fn sys(&self, rest: &str) -> PathBuf {
        self.root.join("sys").join(rest)
    }
}

/// Why one collector produced nothing this cycle.
#[derive(Debug, thiserror::Error)]
pub enum CollectError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: String, message: String },
}

pub(crate) fn read(path: &Path) -> Result<String, CollectError> {
    std::fs::read_to_string(path).map_err(|source| CollectError::Read {
        path: path.display().to_string(),
        source,
    })
}

pub(crate) fn parse_error(path: &Path, message: impl Into<String>) -> CollectError {
    CollectError::Parse {
        path: path.display().to_string(),
        message: message.into(),
    }
}

type CollectFn = fn(&HostOptions, &mut Families) -> Result<(), CollectError>;

/// The collectors in node_exporter's names (the `collector` label of its scrape series).
const COLLECTORS: &[(&str, CollectFn)] = &[
    ("arp", network::arp),
    ("conntrack", network::conntrack),
    ("cpu", kernel::cpu),
    ("diskstats", storage::diskstats),
    ("entropy", kernel::entropy),
    ("filefd", kernel::filefd),
    ("filesystem", storage::filesystem),
    ("loadavg", kernel::loadavg),
    ("meminfo", kernel::meminfo),
    ("netclass", network::netclass),
    ("netdev", network::netdev),
    ("netstat", network::netstat),
    ("os", kernel::os),
    ("pressure", kernel::pressure),
    ("sockstat", network::sockstat),
    ("softnet", network::softnet),
    ("stat", kernel::stat),
    ("time", kernel::time),
    ("uname", kernel::uname),
    ("vmstat", kernel::vmstat),
];

/// Collects host metrics; cheap to keep, one per agent.
#[derive(Debug)]
pub struct HostCollector {
    options: HostOptions,
}

impl HostCollector {
    pub fn new(options: HostOptions) -> Self {
        Self { options }
    }

    pub fn options(&self) -> &HostOptions {
        &self.options
    }

    /// One cycle of every collector. Blocking file I/O: call it off the async reactor.
    pub fn collect(&self, out: &mut Families) {
        let mut outcomes = Vec::with_capacity(COLLECTORS.len());
        for (name, collect) in COLLECTORS {
            let started = Instant::now();
            let mut families = Families::new();
            let result = collect(&self.options, &mut families);
            let seconds = started.elapsed().as_secs_f64();
            match result {
                Ok(()) => {
                    out.extend(families);
                    outcomes.push((*name, seconds, 1.0));
                }
                Err(error) => {
                    tracing::debug!(collector = name, %error, "host collector failed");
                    outcomes.push((*name, seconds, 0.0));
                }
            }
        }
        for (name, seconds, success) in outcomes {
            out.gauge(
                "node_scrape_collector_duration_seconds",
                "node_exporter: Duration of a collector scrape.",
                &[("collector", name)],
                seconds,
            );
            out.gauge(
                "node_scrape_collector_success",
                "node_exporter: Whether a collector succeeded.",
                &[("collector", name)],
                success,
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_patterns_compile() {
        for pattern in [
            DEFAULT_MOUNT_POINTS_EXCLUDE,
            DEFAULT_FS_TYPES_EXCLUDE,
            DEFAULT_DISK_DEVICES_EXCLUDE,
            DEFAULT_NETDEV_DEVICES_EXCLUDE,
            DEFAULT_VMSTAT_FIELDS,
            DEFAULT_NETSTAT_FIELDS,
        ] {
            Regex::new(pattern).expect(pattern);
        }
        let options = HostOptions::new("/");
        assert!(options.disk_devices_exclude.is_match("sda1"));
        assert!(!options.disk_devices_exclude.is_match("sda"));
        assert!(options.mount_points_exclude.is_match("/proc/sys"));
        assert!(!options.mount_points_exclude.is_match("/home"));
    }
}
