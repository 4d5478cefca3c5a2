//! Readers for the cgroup v2 interface files the container metrics come from.
//!
//! The files are tiny and of three shapes (kernel's `Documentation/admin-guide/cgroup-v2.rst`):
//! a single value (`memory.current`, `pids.current`, `memory.max` which may read `max`), flat
//! keyed lines (`cpu.stat`, `memory.stat`, `memory.events`: `key value`) and nested keyed
//! lines (`io.stat`: `major:minor key=value …`). `procfs` has no reader for them, so these
//! are small parsers that skip what they do not understand: a kernel that adds a key or a
//! controller that is not enabled must not cost the other series.

use std::collections::HashMap;
use std::fs;
use std::path::Path;

/// A file's contents, `None` when it is missing or unreadable (not every controller is
/// enabled in every cgroup, and containers exit while they are read).
fn read(path: &Path) -> Option<String> {
    fs::read_to_string(path).ok()
}

/// A single unsigned value.
pub fn single(path: &Path) -> Option<u64> {
    read(path)?.trim().parse().ok()
}

/// A limit: `Some(None)` for `max` (unlimited).
pub fn limit(path: &Path) -> Option<Option<u64>> {
    let text = read(path)?;
    match text.trim() {
        "max" => Some(None),
        value => value.parse().ok().map(Some),
    }
}

/// `key value` lines.
pub fn flat_keyed(path: &Path) -> Option<HashMap<String, u64>> {
    let text = read(path)?;
    Some(
        text.lines()
            .filter_map(|line| {
                let (key, value) = line.split_once(' ')?;
                Some((key.to_owned(), value.trim().parse().ok()?))
            })
            .collect(),
    )
}

/// `cpu.max`: the quota (`None` for `max`) and the period, both in microseconds.
pub fn cpu_max(path: &Path) -> Option<(Option<u64>, u64)> {
    let text = read(path)?;
    let mut fields = text.split_whitespace();
    let quota = match fields.next()? {
        "max" => None,
        value => Some(value.parse().ok()?),
    };
    let period = fields.next()?.parse().ok()?;
    Some((quota, period))
}

/// One device's line of `io.stat`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IoStat {
    pub major: u32,
    pub minor: u32,
    pub rbytes: u64,
    pub wbytes: u64,
    pub rios: u64,
    pub wios: u64,
}

pub fn io_stat(path: &Path) -> Option<Vec<IoStat>> {
    let text = read(path)?;
    let mut out = Vec::new();
    for line in text.lines() {
        let mut fields = line.split_whitespace();
        let Some((major, minor)) = fields.next().and_then(|d| d.split_once(':')) else {
            continue;
        };
        let (Ok(major), Ok(minor)) = (major.parse(), minor.parse()) else {
            continue;
        };
        let mut stat = IoStat {
            major,
            minor,
            ..IoStat::default()
        };
        for field in fields {
            let Some((key, value)) = field.split_once('=') else {
                continue;
            };
            let Ok(value) = value.parse() else {
                continue;
            };
            match key {
                "rbytes" => stat.rbytes = value,
                "wbytes" => stat.wbytes = value,
                "rios" => stat.rios = value,
                "wios" => stat.wios = value,
                _ => {}
            }
        }
        out.push(stat);
    }
    Some(out)
}

/// The pids in `cgroup.procs` of `dir` and of every cgroup below it (a pod's own cgroup
/// holds none: its processes sit in the container scopes).
pub fn procs_recursive(dir: &Path) -> Vec<u32> {
    let mut pids = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        if let Some(text) = read(&dir.join("cgroup.procs")) {
            pids.extend(text.lines().filter_map(|l| l.trim().parse::<u32>().ok()));
        }
        if let Ok(entries) = fs::read_dir(&dir) {
            for entry in entries.filter_map(Result::ok) {
                if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    stack.push(entry.path());
                }
            }
        }
    }
    pids
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parsers_read_the_kernels_formats_and_skip_the_rest() {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        let write = |name: &str, text: &str| fs::write(d.join(name), text).expect("write");
        write("memory.max", "max\n");
        write("memory.high", "1073741824\n");
        write("cpu.max", "50000 100000\n");
        write("cpu.max.unlimited", "max 100000\n");
        write(
            "cpu.stat",
            "usage_usec 12\nuser_usec 7\ncore_sched.force_idle_usec 0\nbogus\n",
        );
        write(
            "io.stat",
            "259:0 rbytes=4096 wbytes=8192 rios=1 wios=2 dbytes=0 dios=0\n8:16 rbytes=1 wbytes=x\nnonsense\n",
        );
        assert_eq!(limit(&d.join("memory.max")), Some(None));
        assert_eq!(limit(&d.join("memory.high")), Some(Some(1 << 30)));
        assert_eq!(limit(&d.join("missing")), None);
        assert_eq!(cpu_max(&d.join("cpu.max")), Some((Some(50_000), 100_000)));
        assert_eq!(cpu_max(&d.join("cpu.max.unlimited")), Some((None, 100_000)));
        let stat = flat_keyed(&d.join("cpu.stat")).expect("read");
        assert_eq!(stat.get("usage_usec"), Some(&12));
        assert_eq!(stat.len(), 3);
        let io = io_stat(&d.join("io.stat")).expect("read");
        assert_eq!(
            io,
            [
                IoStat {
                    major: 259,
                    minor: 0,
                    rbytes: 4096,
                    wbytes: 8192,
                    rios: 1,
                    wios: 2
                },
                IoStat {
                    major: 8,
                    minor: 16,
                    rbytes: 1,
                    ..IoStat::default()
                },
            ]
        );
    }
}
