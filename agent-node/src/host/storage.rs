//! Filesystems (statfs of each mount) and block devices (`/proc/diskstats`).

use std::collections::HashSet;

use procfs::FromRead;

use super::{CollectError, HostOptions, parse_error, read};
use crate::metrics::Families;

/// A mount point as the host names it: the root prefix this process sees it under removed.
fn strip_root(options: &HostOptions, mount_point: &str) -> String {
    let root = options.root.to_string_lossy();
    if root == "/" || root.is_empty() {
        return mount_point.to_owned();
    }
    match mount_point.strip_prefix(root.trim_end_matches('/')) {
        Some("") => "/".to_owned(),
        Some(rest) if rest.starts_with('/') => rest.to_owned(),
        _ => mount_point.to_owned(),
    }
}

/// node_exporter's `filesystem` collector: the mounts of PID 1 (the host's, when the host's
/// /proc is mounted), filtered by mount point and type, each statfs'd.
pub(super) fn filesystem(options: &HostOptions, out: &mut Families) -> Result<(), CollectError> {
    let path = options.proc("1/mounts");
    let (path, mounts) = match Vec::<procfs::MountEntry>::from_file(&path) {
        Ok(mounts) => (path, mounts),
        Err(_) => {
            let fallback = options.proc("mounts");
            let mounts = Vec::<procfs::MountEntry>::from_file(&fallback)
                .map_err(|e| parse_error(&fallback, e.to_string()))?;
            (fallback, mounts)
        }
    };
    let _ = path;
    let mut seen = HashSet::new();
    for mount in mounts {
        let mount_point = strip_root(options, &mount.fs_file);
        if options.mount_points_exclude.is_match(&mount_point)
            || options.fs_types_exclude.is_match(&mount.fs_vfstype)
        {
            continue;
        }
        // A filesystem mounted twice at the same place is reported once.
        if !seen.insert((
            mount.fs_spec.clone(),
            mount_point.clone(),
            mount.fs_vfstype.clone(),
        )) {
            continue;
        }
        let labels = [
            ("device", mount.fs_spec.as_str()),
            ("fstype", mount.fs_vfstype.as_str()),
            ("mountpoint", mount_point.as_str()),
        ];
        let readonly = if mount.fs_mntops.contains_key("ro") {
            1.0
        } else {
            0.0
        };
        let target = options.root.join(mount_point.trim_start_matches('/'));
        match statvfs_with_timeout(&target, &mount_point) {
            Ok(stat) => {
                let block = stat.f_bsize as f64;
                out.gauge(
                    "node_filesystem_size_bytes",
                    "Filesystem size in bytes.",
                    &labels,
                    stat.f_blocks as f64 * block,
                );
                out.gauge(
                    "node_filesystem_free_bytes",
                    "Filesystem free space in bytes.",
                    &labels,
                    stat.f_bfree as f64 * block,
                );
                out.gauge(
                    "node_filesystem_avail_bytes",
                    "Filesystem space available to non-root users in bytes.",
                    &labels,
                    stat.f_bavail as f64 * block,
                );
                out.gauge(
                    "node_filesystem_files",
                    "Filesystem total file nodes.",
                    &labels,
                    stat.f_files as f64,
                );
                out.gauge(
                    "node_filesystem_files_free",
                    "Filesystem total free file nodes.",
                    &labels,
                    stat.f_ffree as f64,
                );
                out.gauge(
                    "node_filesystem_readonly",
                    "Filesystem read-only status.",
                    &labels,
                    readonly,
                );
                out.gauge(
                    "node_filesystem_device_error",
                    "Whether an error occurred while getting statistics for the given device.",
                    &labels,
                    0.0,
                );
            }
            Err(error) => {
                tracing::debug!(mount_point, %error, "statfs failed");
                out.gauge(
                    "node_filesystem_device_error",
                    "Whether an error occurred while getting statistics for the given device.",
                    &labels,
                    1.0,
                );
            }
        }
    }
    Ok(())
}

/// Mount points with a statfs call in flight. One that has not come back (a hung NFS
/// server, say) is skipped, as `device_error` 1, until it does, so one dead mount never
/// stalls collection; node_exporter keeps the same list.
static IN_FLIGHT: std::sync::Mutex<Option<HashSet<String>>> = std::sync::Mutex::new(None);

/// How long a statfs may take before the mount counts as stuck (node_exporter's
/// `--collector.filesystem.mount-timeout` default).
const MOUNT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

fn in_flight() -> std::sync::MutexGuard<'static, Option<HashSet<String>>> {
    IN_FLIGHT
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// statfs on a thread of its own, given up on after [`MOUNT_TIMEOUT`]; the thread leaves
/// the in-flight list when the call returns, whenever that is.
fn statvfs_with_timeout(
    target: &std::path::Path,
    mount_point: &str,
) -> Result<rustix::fs::StatVfs, String> {
    if !in_flight()
        .get_or_insert_with(HashSet::new)
        .insert(mount_point.to_owned())
    {
        return Err("an earlier statfs has not returned yet (a stuck mount)".to_owned());
    }
    let (sender, receiver) = std::sync::mpsc::channel();
    let path = target.to_path_buf();
    let name = mount_point.to_owned();
    let spawned = std::thread::Builder::new()
        .name("statfs".to_owned())
        .spawn(move || {
            let result = rustix::fs::statvfs(&path).map_err(|e| e.to_string());
            if let Some(mounts) = in_flight().as_mut() {
                mounts.remove(&name);
            }
            let _ = sender.send(result);
        });
    if let Err(error) = spawned {
        if let Some(mounts) = in_flight().as_mut() {
            mounts.remove(mount_point);
        }
        return Err(format!("cannot start a statfs thread: {error}"));
    }
    receiver.recv_timeout(MOUNT_TIMEOUT).unwrap_or_else(|_| {
        tracing::warn!(
            mount_point,
            "statfs did not return within 5 s; skipping the mount until it does"
        );
        Err("statfs timed out".to_owned())
    })
}

/// udev's properties of a block device (`/run/udev/data/b<major>:<minor>`), for
/// `node_disk_info`; empty when udev's database is not there (containers, say).
fn udev_properties(options: &HostOptions, major: i32, minor: i32) -> [(String, String); 5] {
    let path = options.root.join(format!("run/udev/data/b{major}:{minor}"));
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let property = |key: &str| {
        text.lines()
            .filter_map(|line| line.strip_prefix("E:"))
            .find_map(|line| line.strip_prefix(key).and_then(|l| l.strip_prefix('=')))
            .unwrap_or_default()
            .to_owned()
    };
    [
        ("model".to_owned(), property("ID_MODEL")),
        ("path".to_owned(), property("ID_PATH")),
        ("revision".to_owned(), property("ID_REVISION")),
        ("serial".to_owned(), property("ID_SERIAL_SHORT")),
        ("wwn".to_owned(), property("ID_WWN")),
    ]
}

/// node_exporter's `diskstats` collector: sectors are 512 bytes, times are milliseconds.
pub(super) fn diskstats(options: &HostOptions, out: &mut Families) -> Result<(), CollectError> {
    let path = options.proc("diskstats");
    let text = read(&path)?;
    let stats = procfs::DiskStats::from_read(text.as_bytes())
        .map_err(|e| parse_error(&path, e.to_string()))?;
    for disk in stats.0 {
        if options.disk_devices_exclude.is_match(&disk.name) {
            continue;
        }
        let device = [("device", disk.name.as_str())];
        let mut counter = |name: &str, help: &str, value: f64| {
            out.counter(name, help, &device, value);
        };
        counter(
            "node_disk_reads_completed_total",
            "The total number of reads completed successfully.",
            disk.reads as f64,
        );
        counter(
            "node_disk_reads_merged_total",
            "The total number of reads merged.",
            disk.merged as f64,
        );
        counter(
            "node_disk_read_bytes_total",
            "The total number of bytes read successfully.",
            disk.sectors_read as f64 * 512.0,
        );
        counter(
            "node_disk_read_time_seconds_total",
            "The total number of seconds spent by all reads.",
            disk.time_reading as f64 / 1000.0,
        );
        counter(
            "node_disk_writes_completed_total",
            "The total number of writes completed successfully.",
            disk.writes as f64,
        );
        counter(
            "node_disk_writes_merged_total",
            "The number of writes merged.",
            disk.writes_merged as f64,
        );
        counter(
            "node_disk_written_bytes_total",
            "The total number of bytes written successfully.",
            disk.sectors_written as f64 * 512.0,
        );
        counter(
            "node_disk_write_time_seconds_total",
            "This is the total number of seconds spent by all writes.",
            disk.time_writing as f64 / 1000.0,
        );
        counter(
            "node_disk_io_time_seconds_total",
            "Total seconds spent doing I/Os.",
            disk.time_in_progress as f64 / 1000.0,
        );
        counter(
            "node_disk_io_time_weighted_seconds_total",
            "The weighted # of seconds spent doing I/Os.",
            disk.weighted_time_in_progress as f64 / 1000.0,
        );
        if let (Some(completed), Some(merged), Some(sectors), Some(time)) = (
            disk.discards,
            disk.discards_merged,
            disk.sectors_discarded,
            disk.time_discarding,
        ) {
            counter(
                "node_disk_discards_completed_total",
                "The total number of discards completed successfully.",
                completed as f64,
            );
            counter(
                "node_disk_discards_merged_total",
                "The total number of discards merged.",
                merged as f64,
            );
            counter(
                "node_disk_discarded_sectors_total",
                "The total number of sectors discarded successfully.",
                sectors as f64,
            );
            counter(
                "node_disk_discard_time_seconds_total",
                "This is the total number of seconds spent by all discards.",
                time as f64 / 1000.0,
            );
        }
        if let (Some(flushes), Some(time)) = (disk.flushes, disk.time_flushing) {
            counter(
                "node_disk_flush_requests_total",
                "The total number of flush requests completed successfully",
                flushes as f64,
            );
            counter(
                "node_disk_flush_requests_time_seconds_total",
                "This is the total number of seconds spent by all flush requests.",
                time as f64 / 1000.0,
            );
        }
        out.gauge(
            "node_disk_io_now",
            "The number of I/Os currently in progress.",
            &device,
            disk.in_progress as f64,
        );
        let major = disk.major.to_string();
        let minor = disk.minor.to_string();
        let udev = udev_properties(options, disk.major, disk.minor);
        let mut labels: Vec<(&str, &str)> = vec![
            ("device", disk.name.as_str()),
            ("major", major.as_str()),
            ("minor", minor.as_str()),
        ];
        labels.extend(udev.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        out.gauge(
            "node_disk_info",
            "Info of /sys/block/<block_device>.",
            &labels,
            1.0,
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_points_lose_the_root_they_are_seen_under() {
        let options = HostOptions::new("/host");
        assert_eq!(strip_root(&options, "/host"), "/");
        assert_eq!(strip_root(&options, "/host/boot"), "/boot");
        assert_eq!(strip_root(&options, "/hostile"), "/hostile");
        assert_eq!(strip_root(&HostOptions::new("/"), "/boot"), "/boot");
    }
}
