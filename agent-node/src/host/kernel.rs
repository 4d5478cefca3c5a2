//! Collectors over the kernel's global counters: CPU time, memory, load, pressure, vmstat,
//! file descriptors, entropy, clock, uname and the OS release.

use std::time::{SystemTime, UNIX_EPOCH};

use procfs::FromRead;

use super::{CollectError, HostOptions, parse_error, read};
use crate::metrics::Families;

/// The kernel's `USER_HZ`: /proc/stat counts in these ticks on every Linux architecture
/// node_exporter supports (it hard-codes the same 100).
const USER_HZ: f64 = 100.0;

/// `/proc/stat`'s per-CPU lines, as node_exporter's `cpu` collector reports them.
pub(super) fn cpu(options: &HostOptions, out: &mut Families) -> Result<(), CollectError> {
    let path = options.proc("stat");
    let text = read(&path)?;
    const MODES: [&str; 8] = [
        "user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal",
    ];
    for line in text.lines() {
        let mut fields = line.split_ascii_whitespace();
        let Some(cpu) = fields.next().and_then(|name| name.strip_prefix("cpu")) else {
            continue;
        };
        if cpu.is_empty() {
            continue; // the all-CPU total line
        }
        let ticks: Vec<f64> = fields.filter_map(|f| f.parse().ok()).collect();
        for (mode, value) in MODES.iter().zip(&ticks) {
            out.counter(
                "node_cpu_seconds_total",
                "Seconds the CPUs spent in each mode.",
                &[("cpu", cpu), ("mode", mode)],
                value / USER_HZ,
            );
        }
        for (mode, index) in [("user", 8), ("nice", 9)] {
            if let Some(value) = ticks.get(index) {
                out.counter(
                    "node_cpu_guest_seconds_total",
                    "Seconds the CPUs spent in guests (VMs) for each mode.",
                    &[("cpu", cpu), ("mode", mode)],
                    value / USER_HZ,
                );
            }
        }
    }
    Ok(())
}

/// `/proc/stat`'s system-wide lines (node_exporter's `stat` collector).
pub(super) fn stat(options: &HostOptions, out: &mut Families) -> Result<(), CollectError> {
    let path = options.proc("stat");
    let text = read(&path)?;
    for line in text.lines() {
        let mut fields = line.split_ascii_whitespace();
        let (Some(key), Some(value)) = (fields.next(), fields.next()) else {
            continue;
        };
        let Ok(value) = value.parse::<f64>() else {
            continue;
        };
        match key {
            "intr" => out.counter(
                "node_intr_total",
                "Total number of interrupts serviced.",
                &[],
                value,
            ),
            "ctxt" => out.counter(
                "node_context_switches_total",
                "Total number of context switches.",
                &[],
                value,
            ),
            "btime" => out.gauge(
                "node_boot_time_seconds",
                "Node boot time, in unixtime.",
                &[],
                value,
            ),
            "processes" => out.counter("node_forks_total", "Total number of forks.", &[], value),
            "procs_running" => out.gauge(
                "node_procs_running",
                "Number of processes in runnable state.",
                &[],
                value,
            ),
            "procs_blocked" => out.gauge(
                "node_procs_blocked",
                "Number of processes blocked waiting for I/O to complete.",
                &[],
                value,
            ),
            _ => {}
        }
    }
    Ok(())
}

/// Every `/proc/meminfo` field, named as node_exporter names them: `Active(anon)` becomes
/// `node_memory_Active_anon_bytes`, kB values are turned into bytes, unitless counts (the
/// HugePages_ ones) keep their name. All of them, because dashboards pick different ones
/// and the kernel adds fields over time.
pub(super) fn meminfo(options: &HostOptions, out: &mut Families) -> Result<(), CollectError> {
    let path = options.proc("meminfo");
    let text = read(&path)?;
    for line in text.lines() {
        let Some((key, rest)) = line.split_once(':') else {
            continue;
        };
        let mut parts = rest.split_ascii_whitespace();
        let Some(Ok(value)) = parts.next().map(str::parse::<f64>) else {
            return Err(parse_error(&path, format!("bad line {line:?}")));
        };
        let key = key.replace('(', "_").replace(')', "");
        let (name, value) = match parts.next() {
            Some("kB") => (format!("node_memory_{key}_bytes"), value * 1024.0),
            _ => (format!("node_memory_{key}"), value),
        };
        out.gauge(
            &name,
            &format!("Memory information field {key}."),
            &[],
            value,
        );
    }
    Ok(())
}

pub(super) fn loadavg(options: &HostOptions, out: &mut Families) -> Result<(), CollectError> {
    let path = options.proc("loadavg");
    let load =
        procfs::LoadAverage::from_file(&path).map_err(|e| parse_error(&path, e.to_string()))?;
    out.gauge("node_load1", "1m load average.", &[], f64::from(load.one));
    out.gauge("node_load5", "5m load average.", &[], f64::from(load.five));
    out.gauge(
        "node_load15",
        "15m load average.",
        &[],
        f64::from(load.fifteen),
    );
    Ok(())
}

/// Pressure stall information: the `total` stall time of `some` (waiting) and `full`
/// (stalled) lines, in seconds. CPU has only `some` in node_exporter 1.5.
pub(super) fn pressure(options: &HostOptions, out: &mut Families) -> Result<(), CollectError> {
    let cpu_path = options.proc("pressure/cpu");
    let cpu = procfs::CpuPressure::from_file(&cpu_path)
        .map_err(|e| parse_error(&cpu_path, e.to_string()))?;
    out.counter(
        "node_pressure_cpu_waiting_seconds_total",
        "Total time in seconds that processes have waited for CPU time",
        &[],
        cpu.some.total as f64 / 1e6,
    );
    let io_path = options.proc("pressure/io");
    let io = procfs::IoPressure::from_file(&io_path)
        .map_err(|e| parse_error(&io_path, e.to_string()))?;
    out.counter(
        "node_pressure_io_waiting_seconds_total",
        "Total time in seconds that processes have waited due to IO congestion",
        &[],
        io.some.total as f64 / 1e6,
    );
    out.counter(
        "node_pressure_io_stalled_seconds_total",
        "Total time in seconds no process could make progress due to IO congestion",
        &[],
        io.full.total as f64 / 1e6,
    );
    let memory_path = options.proc("pressure/memory");
    let memory = procfs::MemoryPressure::from_file(&memory_path)
        .map_err(|e| parse_error(&memory_path, e.to_string()))?;
    out.counter(
        "node_pressure_memory_waiting_seconds_total",
        "Total time in seconds that processes have waited for memory",
        &[],
        memory.some.total as f64 / 1e6,
    );
    out.counter(
        "node_pressure_memory_stalled_seconds_total",
        "Total time in seconds no process could make progress due to memory congestion",
        &[],
        memory.full.total as f64 / 1e6,
    );
    Ok(())
}

/// `/proc/vmstat` fields matching the configured pattern, untyped as in node_exporter.
pub(super) fn vmstat(options: &HostOptions, out: &mut Families) -> Result<(), CollectError> {
    let path = options.proc("vmstat");
    let text = read(&path)?;
    for line in text.lines() {
        let Some((key, value)) = line.split_once(' ') else {
            continue;
        };
        if !options.vmstat_fields.is_match(key) {
            continue;
        }
        let Ok(value) = value.trim().parse::<f64>() else {
            continue;
        };
        out.add(
            &format!("node_vmstat_{key}"),
            &format!("/proc/vmstat information field {key}."),
            model::MetricType::Unknown,
            &[],
            value,
        );
    }
    Ok(())
}

pub(super) fn filefd(options: &HostOptions, out: &mut Families) -> Result<(), CollectError> {
    let path = options.proc("sys/fs/file-nr");
    let text = read(&path)?;
    let fields: Vec<f64> = text
        .split_ascii_whitespace()
        .filter_map(|f| f.parse().ok())
        .collect();
    let [allocated, _, maximum] = fields[..] else {
        return Err(parse_error(&path, "expected three numbers"));
    };
    out.gauge(
        "node_filefd_allocated",
        "File descriptor statistics: allocated.",
        &[],
        allocated,
    );
    out.gauge(
        "node_filefd_maximum",
        "File descriptor statistics: maximum.",
        &[],
        maximum,
    );
    Ok(())
}

fn read_number(path: &std::path::Path) -> Result<f64, CollectError> {
    read(path)?
        .trim()
        .parse()
        .map_err(|_| parse_error(path, "not a number"))
}

pub(super) fn entropy(options: &HostOptions, out: &mut Families) -> Result<(), CollectError> {
    out.gauge(
        "node_entropy_available_bits",
        "Bits of available entropy.",
        &[],
        read_number(&options.proc("sys/kernel/random/entropy_avail"))?,
    );
    out.gauge(
        "node_entropy_pool_size_bits",
        "Bits of entropy pool.",
        &[],
        read_number(&options.proc("sys/kernel/random/poolsize"))?,
    );
    Ok(())
}

/// The clock and its clocksources.
pub(super) fn time(options: &HostOptions, out: &mut Families) -> Result<(), CollectError> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or_default();
    out.gauge(
        "node_time_seconds",
        "System time in seconds since epoch (1970).",
        &[],
        now,
    );
    let base = options.sys("devices/system/clocksource");
    let Ok(entries) = std::fs::read_dir(&base) else {
        return Ok(());
    };
    let mut sources: Vec<_> = entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.strip_prefix("clocksource")
                .map(|d| (d.to_owned(), e.path()))
        })
        .collect();
    sources.sort();
    for (device, dir) in sources {
        if let Ok(available) = read(&dir.join("available_clocksource")) {
            for source in available.split_ascii_whitespace() {
                out.gauge(
                    "node_time_clocksource_available_info",
                    "Available clocksources read from '/sys/devices/system/clocksource'.",
                    &[("clocksource", source), ("device", &device)],
                    1.0,
                );
            }
        }
        if let Ok(current) = read(&dir.join("current_clocksource")) {
            out.gauge(
                "node_time_clocksource_current_info",
                "Current clocksource read from '/sys/devices/system/clocksource'.",
                &[("clocksource", current.trim()), ("device", &device)],
                1.0,
            );
        }
    }
    Ok(())
}

pub(super) fn uname(_options: &HostOptions, out: &mut Families) -> Result<(), CollectError> {
    let uname = rustix::system::uname();
    let text = |s: &std::ffi::CStr| s.to_string_lossy().into_owned();
    out.gauge(
        "node_uname_info",
        "Labeled system information as provided by the uname system call.",
        &[
            ("domainname", &text(uname.domainname())),
            ("machine", &text(uname.machine())),
            ("nodename", &text(uname.nodename())),
            ("release", &text(uname.release())),
            ("sysname", &text(uname.sysname())),
            ("version", &text(uname.version())),
        ],
        1.0,
    );
    Ok(())
}

/// `os-release`: node_os_info with every field node_exporter labels (empty when absent) and
/// node_os_version as a number.
pub(super) fn os(options: &HostOptions, out: &mut Families) -> Result<(), CollectError> {
    let candidates = [
        options.root.join("etc/os-release"),
        options.root.join("usr/lib/os-release"),
    ];
    let mut last_error = None;
    let mut text = None;
    for path in &candidates {
        match read(path) {
            Ok(found) => {
                text = Some(found);
                break;
            }
            Err(error) => last_error = Some(error),
        }
    }
    let Some(text) = text else {
        return Err(last_error.unwrap_or_else(|| parse_error(&candidates[0], "missing")));
    };
    let mut fields = std::collections::HashMap::new();
    for line in text.lines() {
        if let Some((key, value)) = line.split_once('=') {
            let value = value.trim();
            let value = value
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .or_else(|| value.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')))
                .unwrap_or(value);
            fields.insert(key.trim().to_owned(), value.to_owned());
        }
    }
    let field = |key: &str| fields.get(key).map(String::as_str).unwrap_or_default();
    let labels = [
        ("build_id", "BUILD_ID"),
        ("id", "ID"),
        ("id_like", "ID_LIKE"),
        ("image_id", "IMAGE_ID"),
        ("image_version", "IMAGE_VERSION"),
        ("name", "NAME"),
        ("pretty_name", "PRETTY_NAME"),
        ("variant", "VARIANT"),
        ("variant_id", "VARIANT_ID"),
        ("version", "VERSION"),
        ("version_codename", "VERSION_CODENAME"),
        ("version_id", "VERSION_ID"),
    ];
    let values: Vec<(&str, &str)> = labels.iter().map(|(l, k)| (*l, field(k))).collect();
    out.gauge(
        "node_os_info",
        "A metric with a constant '1' value labeled by build_id, id, id_like, image_id, image_version, name, pretty_name, variant, variant_id, version, version_codename, version_id.",
        &values,
        1.0,
    );
    // node_exporter keeps the leading "major.minor" of VERSION_ID as a number.
    let version_id = field("VERSION_ID");
    let numeric: String = version_id.split('.').take(2).collect::<Vec<_>>().join(".");
    if let Ok(version) = numeric.parse::<f64>() {
        out.gauge(
            "node_os_version",
            "Metric containing the major.minor part of the OS version.",
            &[
                ("id", field("ID")),
                ("id_like", field("ID_LIKE")),
                ("name", field("NAME")),
            ],
            version,
        );
    }
    Ok(())
}
