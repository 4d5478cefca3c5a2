//! Container and pod metrics from the cgroup v2 tree, in cAdvisor's names, labels and units.
//!
//! The kubelet's built-in cAdvisor is what existing dashboards query
//! (`container_cpu_usage_seconds_total`, `container_memory_working_set_bytes`, …), so the
//! series here are spelled as it spells them: `id` is the cgroup path below the mount,
//! `name` the runtime's container id, `image` and `container` from the pod's status, `pod`
//! and `namespace`, and for the pod's own cgroup the same series with no container, name
//! or image. Each series also carries the pod's attribute labels
//! ([`crate::pods::classify`]). Where the cgroup v2 file differs from cAdvisor's source, the
//! mapping is cAdvisor's (via runc's cgroup v2 reader):
//!
//! | series | file |
//! |---|---|
//! | `container_cpu_usage_seconds_total{cpu="total"}`, `_user_`, `_system_` | `cpu.stat` `usage_usec`, `user_usec`, `system_usec` |
//! | `container_cpu_cfs_periods_total`, `_throttled_periods_total`, `_throttled_seconds_total` | `cpu.stat` `nr_periods`, `nr_throttled`, `throttled_usec`; only with a CPU quota, as cAdvisor |
//! | `container_spec_cpu_quota`, `container_spec_cpu_period` | `cpu.max` (µs; the quota only when limited) |
//! | `container_memory_usage_bytes` | `memory.current` |
//! | `container_memory_working_set_bytes` | `memory.current` − `inactive_file`, floored at 0 |
//! | `container_memory_rss`, `_cache`, `_mapped_file` | `memory.stat` `anon`, `file`, `file_mapped` |
//! | `container_memory_swap` | `memory.swap.current` |
//! | `container_oom_events_total` | `memory.events` `oom_kill` |
//! | `container_spec_memory_limit_bytes` | `memory.max`, 0 for `max` |
//! | `container_fs_{reads,writes}_bytes_total`, `container_fs_{reads,writes}_total` | `io.stat` per `device` (`/dev/<DEVNAME>` from `sys/dev/block/<maj>:<min>/uevent`, else `<maj>:<min>`) |
//! | `container_processes` | pids in `cgroup.procs` of the cgroup and those below it |
//! | `container_threads` | `pids.current` |
//! | `container_network_*_total` per `interface` (not `lo`) | `proc/<pid>/net/dev` of a process in the pod; on the pod's series only, since a pod's containers share one network namespace |
//!
//! A missing file leaves out its series (controllers are enabled per cgroup); nothing here
//! fails the collection.

pub mod cgroup;

use std::collections::HashMap;
use std::path::Path;

use procfs::FromRead;

use crate::metrics::Families;
use crate::pods::PodStore;
use crate::pods::fs::{self, FsPod};

/// Collects every pod's and container's series under `root` into `families`, attributing
/// them with what `store` knows of each pod (pods only on disk get namespace, pod and uid).
pub fn collect(store: &PodStore, root: &Path, families: &mut Families) {
    let mut devices = DeviceNames::new(root);
    for pod in fs::scan(root) {
        collect_pod(store, root, &pod, &mut devices, families);
    }
}

fn collect_pod(
    store: &PodStore,
    root: &Path,
    pod: &FsPod,
    devices: &mut DeviceNames,
    families: &mut Families,
) {
    let Some(cgroup) = &pod.cgroup else {
        return;
    };
    let entry = store.by_uid(&pod.uid);
    let pod_labels: Vec<(String, String)> = match &entry {
        Some(entry) => entry.attributes.labels.clone(),
        None => [
            ("namespace", pod.namespace.clone()),
            ("pod", pod.name.clone()),
            ("pod_uid", Some(pod.uid.clone())),
        ]
        .into_iter()
        .filter_map(|(name, value)| Some((name.to_owned(), value?)))
        .collect(),
    };

    let mut labels = vec![("id".to_owned(), cgroup.id.clone())];
    labels.extend(pod_labels.iter().cloned());
    collect_cgroup(&cgroup.path, root, &labels, true, devices, families);

    for container in &cgroup.containers {
        let info = entry.as_ref().and_then(|e| {
            e.info
                .containers
                .iter()
                .find(|c| c.id == container.container_id)
        });
        let mut labels = vec![
            ("id".to_owned(), container.id.clone()),
            ("name".to_owned(), container.container_id.clone()),
        ];
        if let Some(info) = info {
            labels.push(("container".to_owned(), info.name.clone()));
            labels.push(("image".to_owned(), info.image.clone()));
        }
        labels.extend(pod_labels.iter().cloned());
        collect_cgroup(&container.path, root, &labels, false, devices, families);
    }
}

/// Collects one cgroup's series with `labels` (which should include cAdvisor's `id`).
/// `network` adds the interface counters of the network namespace of a process in the
/// cgroup, read from `<root>/proc/<pid>/net/dev`.
pub fn collect_cgroup(
    dir: &Path,
    root: &Path,
    labels: &[(String, String)],
    network: bool,
    devices: &mut DeviceNames,
    families: &mut Families,
) {
    let base: Vec<(&str, &str)> = labels
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_str()))
        .collect();
    let usec = |v: u64| v as f64 / 1e6;

    // CPU
    let cpu_max = cgroup::cpu_max(&dir.join("cpu.max"));
    let quota = cpu_max.and_then(|(quota, _)| quota);
    if let Some(stat) = cgroup::flat_keyed(&dir.join("cpu.stat")) {
        if let Some(&v) = stat.get("usage_usec") {
            families.counter(
                "container_cpu_usage_seconds_total",
                "Cumulative cpu time consumed in seconds.",
                &with(&base, ("cpu", "total")),
                usec(v),
            );
        }
        if let Some(&v) = stat.get("user_usec") {
            families.counter(
                "container_cpu_user_seconds_total",
                "Cumulative user cpu time consumed in seconds.",
                &base,
                usec(v),
            );
        }
        if let Some(&v) = stat.get("system_usec") {
            families.counter(
                "container_cpu_system_seconds_total",
                "Cumulative system cpu time consumed in seconds.",
                &base,
                usec(v),
            );
        }
        if quota.is_some() {
            if let Some(&v) = stat.get("nr_periods") {
                families.counter(
                    "container_cpu_cfs_periods_total",
                    "Number of elapsed enforcement period intervals.",
                    &base,
                    v as f64,
                );
            }
            if let Some(&v) = stat.get("nr_throttled") {
                families.counter(
                    "container_cpu_cfs_throttled_periods_total",
                    "Number of throttled period intervals.",
                    &base,
                    v as f64,
                );
            }
            if let Some(&v) = stat.get("throttled_usec") {
                families.counter(
                    "container_cpu_cfs_throttled_seconds_total",
                    "Total time duration the container has been throttled.",
                    &base,
                    usec(v),
                );
            }
        }
    }
    if let Some((quota, period)) = cpu_max {
        families.gauge(
            "container_spec_cpu_period",
            "CPU period of the container.",
            &base,
            period as f64,
        );
        if let Some(quota) = quota {
            families.gauge(
                "container_spec_cpu_quota",
                "CPU quota of the container.",
                &base,
                quota as f64,
            );
        }
    }

    // Memory
    let usage = cgroup::single(&dir.join("memory.current"));
    let stat = cgroup::flat_keyed(&dir.join("memory.stat")).unwrap_or_default();
    if let Some(usage) = usage {
        families.gauge(
            "container_memory_usage_bytes",
            "Current memory usage in bytes, including all memory regardless of when it was accessed",
            &base,
            usage as f64,
        );
        let inactive_file = stat.get("inactive_file").copied().unwrap_or(0);
        families.gauge(
            "container_memory_working_set_bytes",
            "Current working set in bytes.",
            &base,
            usage.saturating_sub(inactive_file) as f64,
        );
    }
    for (key, name, help) in [
        ("anon", "container_memory_rss", "Size of RSS in bytes."),
        (
            "file",
            "container_memory_cache",
            "Number of bytes of page cache memory.",
        ),
        (
            "file_mapped",
            "container_memory_mapped_file",
            "Size of memory mapped files in bytes.",
        ),
    ] {
        if let Some(&v) = stat.get(key) {
            families.gauge(name, help, &base, v as f64);
        }
    }
    if let Some(swap) = cgroup::single(&dir.join("memory.swap.current")) {
        families.gauge(
            "container_memory_swap",
            "Container swap usage in bytes.",
            &base,
            swap as f64,
        );
    }
    if let Some(&v) = cgroup::flat_keyed(&dir.join("memory.events"))
        .as_ref()
        .and_then(|events| events.get("oom_kill"))
    {
        families.counter(
            "container_oom_events_total",
            "Count of out of memory events observed for the container",
            &base,
            v as f64,
        );
    }
    if let Some(limit) = cgroup::limit(&dir.join("memory.max")) {
        families.gauge(
            "container_spec_memory_limit_bytes",
            "Memory limit for the container.",
            &base,
            limit.unwrap_or(0) as f64,
        );
    }

    // Block I/O
    if let Some(io) = cgroup::io_stat(&dir.join("io.stat")) {
        for stat in io {
            let device = devices.name(stat.major, stat.minor);
            let labels = with(&base, ("device", &device));
            for (name, help, value) in [
                (
                    "container_fs_reads_bytes_total",
                    "Cumulative count of bytes read",
                    stat.rbytes,
                ),
                (
                    "container_fs_writes_bytes_total",
                    "Cumulative count of bytes written",
                    stat.wbytes,
                ),
                (
                    "container_fs_reads_total",
                    "Cumulative count of reads completed",
                    stat.rios,
                ),
                (
                    "container_fs_writes_total",
                    "Cumulative count of writes completed",
                    stat.wios,
                ),
            ] {
                families.counter(name, help, &labels, value as f64);
            }
        }
    }

    // Processes
    let pids = cgroup::procs_recursive(dir);
    if dir.join("cgroup.procs").is_file() {
        families.gauge(
            "container_processes",
            "Number of processes running inside the container.",
            &base,
            pids.len() as f64,
        );
    }
    if let Some(threads) = cgroup::single(&dir.join("pids.current")) {
        families.gauge(
            "container_threads",
            "Number of threads running inside the container",
            &base,
            threads as f64,
        );
    }

    if network {
        collect_network(root, &pids, &base, families);
    }
}

fn with<'a>(base: &[(&'a str, &'a str)], extra: (&'a str, &'a str)) -> Vec<(&'a str, &'a str)> {
    let mut labels = base.to_vec();
    labels.push(extra);
    labels
}

/// Interface counters of the first process in `pids` whose `net/dev` can be read.
fn collect_network(root: &Path, pids: &[u32], base: &[(&str, &str)], families: &mut Families) {
    let Some(status) = pids.iter().find_map(|pid| {
        procfs::net::InterfaceDeviceStatus::from_file(
            root.join("proc").join(pid.to_string()).join("net/dev"),
        )
        .ok()
    }) else {
        return;
    };
    let mut interfaces: Vec<_> = status.0.into_values().filter(|d| d.name != "lo").collect();
    interfaces.sort_by(|a, b| a.name.cmp(&b.name));
    for dev in interfaces {
        let mut labels = base.to_vec();
        labels.push(("interface", &dev.name));
        for (name, help, value) in [
            (
                "container_network_receive_bytes_total",
                "Cumulative count of bytes received",
                dev.recv_bytes,
            ),
            (
                "container_network_receive_packets_total",
                "Cumulative count of packets received",
                dev.recv_packets,
            ),
            (
                "container_network_receive_errors_total",
                "Cumulative count of errors encountered while receiving",
                dev.recv_errs,
            ),
            (
                "container_network_transmit_bytes_total",
                "Cumulative count of bytes transmitted",
                dev.sent_bytes,
            ),
            (
                "container_network_transmit_packets_total",
                "Cumulative count of packets transmitted",
                dev.sent_packets,
            ),
            (
                "container_network_transmit_errors_total",
                "Cumulative count of errors encountered while transmitting",
                dev.sent_errs,
            ),
        ] {
            families.counter(name, help, &labels, value as f64);
        }
    }
}

/// Block device names by `major:minor`, read once per collection from
/// `<root>/sys/dev/block/<major>:<minor>/uevent`.
#[derive(Debug)]
pub struct DeviceNames {
    dir: std::path::PathBuf,
    names: HashMap<(u32, u32), String>,
}

impl DeviceNames {
    pub fn new(root: &Path) -> Self {
        Self {
            dir: root.join("sys/dev/block"),
            names: HashMap::new(),
        }
    }

    /// `/dev/<DEVNAME>` as cAdvisor labels devices, or `<major>:<minor>` when the device is
    /// not described.
    pub fn name(&mut self, major: u32, minor: u32) -> String {
        let dir = &self.dir;
        self.names
            .entry((major, minor))
            .or_insert_with(|| {
                std::fs::read_to_string(dir.join(format!("{major}:{minor}/uevent")))
                    .ok()
                    .and_then(|text| {
                        text.lines()
                            .find_map(|l| l.strip_prefix("DEVNAME="))
                            .map(|name| format!("/dev/{}", name.trim()))
                    })
                    .unwrap_or_else(|| format!("{major}:{minor}"))
            })
            .clone()
    }
}
