//! Network collectors: interfaces (sysfs), protocol counters (`/proc/net/*`), sockets,
//! conntrack, ARP and softnet.

use std::collections::BTreeMap;
use std::path::Path;

use super::{CollectError, HostOptions, parse_error, read};
use crate::metrics::Families;

fn interfaces(options: &HostOptions) -> Result<Vec<String>, CollectError> {
    let dir = options.sys("class/net");
    let entries = std::fs::read_dir(&dir).map_err(|source| CollectError::Read {
        path: dir.display().to_string(),
        source,
    })?;
    let mut names: Vec<String> = entries
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    Ok(names)
}

fn read_trimmed(path: &Path) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_owned())
}

fn parse_integer(text: &str) -> Option<f64> {
    match text.strip_prefix("0x") {
        Some(hex) => i64::from_str_radix(hex, 16).ok().map(|v| v as f64),
        None => text.parse::<i64>().ok().map(|v| v as f64),
    }
}

/// node_exporter's `netdev` collector, from each interface's sysfs `statistics` (the kernel's
/// link statistics, the numbers node_exporter 1.5 reads over netlink by default).
pub(super) fn netdev(options: &HostOptions, out: &mut Families) -> Result<(), CollectError> {
    const STATISTICS: [(&str, &str); 17] = [
        ("receive_bytes", "rx_bytes"),
        ("receive_packets", "rx_packets"),
        ("receive_errs", "rx_errors"),
        ("receive_drop", "rx_dropped"),
        ("receive_fifo", "rx_fifo_errors"),
        ("receive_frame", "rx_frame_errors"),
        ("receive_compressed", "rx_compressed"),
        ("receive_multicast", "multicast"),
        ("receive_nohandler", "rx_nohandler"),
        ("transmit_bytes", "tx_bytes"),
        ("transmit_packets", "tx_packets"),
        ("transmit_errs", "tx_errors"),
        ("transmit_drop", "tx_dropped"),
        ("transmit_fifo", "tx_fifo_errors"),
        ("transmit_colls", "collisions"),
        ("transmit_carrier", "tx_carrier_errors"),
        ("transmit_compressed", "tx_compressed"),
    ];
    for device in interfaces(options)? {
        if options.netdev_devices_exclude.is_match(&device) {
            continue;
        }
        let dir = options.sys("class/net").join(&device).join("statistics");
        for (name, file) in STATISTICS {
            let Some(value) = read_trimmed(&dir.join(file)).and_then(|v| parse_integer(&v)) else {
                continue;
            };
            out.counter(
                &format!("node_network_{name}_total"),
                &format!("Network device statistic {name}."),
                &[("device", &device)],
                value,
            );
        }
    }
    Ok(())
}

/// node_exporter's `netclass` collector: each interface's sysfs attributes. An attribute
/// the kernel refuses to read (carrier of a down link, say) is left out, as there.
pub(super) fn netclass(options: &HostOptions, out: &mut Families) -> Result<(), CollectError> {
    const ATTRIBUTES: [(&str, &str, bool); 16] = [
        ("address_assign_type", "addr_assign_type", false),
        ("carrier", "carrier", false),
        ("carrier_changes_total", "carrier_changes", true),
        ("carrier_up_changes_total", "carrier_up_count", true),
        ("carrier_down_changes_total", "carrier_down_count", true),
        ("device_id", "dev_id", false),
        ("dormant", "dormant", false),
        ("flags", "flags", false),
        ("iface_id", "ifindex", false),
        ("iface_link", "iflink", false),
        ("iface_link_mode", "link_mode", false),
        ("mtu_bytes", "mtu", false),
        ("name_assign_type", "name_assign_type", false),
        ("net_dev_group", "netdev_group", false),
        ("protocol_type", "type", false),
        ("transmit_queue_length", "tx_queue_len", false),
    ];
    for device in interfaces(options)? {
        let dir = options.sys("class/net").join(&device);
        let attribute = |file: &str| read_trimmed(&dir.join(file)).unwrap_or_default();
        let operstate = attribute("operstate");
        out.gauge(
            "node_network_info",
            "Non-numeric data from /sys/class/net/<iface>, value is always 1.",
            &[
                ("address", &attribute("address")),
                ("broadcast", &attribute("broadcast")),
                ("device", &device),
                ("duplex", &attribute("duplex")),
                ("ifalias", &attribute("ifalias")),
                ("operstate", &operstate),
            ],
            1.0,
        );
        out.gauge(
            "node_network_up",
            "Value is 1 if operstate is 'up', 0 otherwise.",
            &[("device", &device)],
            if operstate == "up" { 1.0 } else { 0.0 },
        );
        for (name, file, counter) in ATTRIBUTES {
            let Some(value) = read_trimmed(&dir.join(file)).and_then(|v| parse_integer(&v)) else {
                continue;
            };
            let help = format!("Network device property: {name}");
            let metric = format!("node_network_{name}");
            if counter {
                out.counter(&metric, &help, &[("device", &device)], value);
            } else {
                out.gauge(&metric, &help, &[("device", &device)], value);
            }
        }
        if let Some(speed) = read_trimmed(&dir.join("speed")).and_then(|v| parse_integer(&v)) {
            // Mbit/s to bytes/s, as node_exporter reports it (-1, unknown, included).
            out.gauge(
                "node_network_speed_bytes",
                "Network device property: speed_bytes",
                &[("device", &device)],
                speed * 125_000.0,
            );
        }
    }
    Ok(())
}

/// `/proc/net/{netstat,snmp}` (header line, value line per protocol) and
/// `/proc/net/snmp6` (`Ip6InOctets 123`), as `node_netstat_<Protocol>_<Field>`, filtered
/// by the configured pattern.
pub(super) fn netstat(options: &HostOptions, out: &mut Families) -> Result<(), CollectError> {
    let mut values: BTreeMap<String, f64> = BTreeMap::new();
    for file in ["net/netstat", "net/snmp"] {
        let path = options.proc(file);
        let text = read(&path)?;
        let lines: Vec<&str> = text.lines().collect();
        for pair in lines.chunks(2) {
            let [header, numbers] = pair else {
                return Err(parse_error(&path, "odd number of lines"));
            };
            let (Some((protocol, names)), Some((_, numbers))) =
                (header.split_once(':'), numbers.split_once(':'))
            else {
                return Err(parse_error(&path, format!("bad line {header:?}")));
            };
            for (name, number) in names
                .split_ascii_whitespace()
                .zip(numbers.split_ascii_whitespace())
            {
                if let Ok(number) = number.parse::<f64>() {
                    values.insert(format!("{protocol}_{name}"), number);
                }
            }
        }
    }
    // IPv6 counters are absent on kernels without IPv6; that is not an error.
    if let Ok(text) = std::fs::read_to_string(options.proc("net/snmp6")) {
        for line in text.lines() {
            let mut fields = line.split_ascii_whitespace();
            let (Some(key), Some(number)) = (fields.next(), fields.next()) else {
                continue;
            };
            let Some(split) = key.find('6') else {
                continue;
            };
            let (protocol, name) = key.split_at(split + 1);
            if let Ok(number) = number.parse::<f64>() {
                values.insert(format!("{protocol}_{name}"), number);
            }
        }
    }
    for (key, value) in values {
        if !options.netstat_fields.is_match(&key) {
            continue;
        }
        let (protocol, name) = key.split_once('_').unwrap_or((&key, ""));
        out.add(
            &format!("node_netstat_{key}"),
            &format!("Statistic {protocol}{name}."),
            model::MetricType::Unknown,
            &[],
            value,
        );
    }
    Ok(())
}

/// `/proc/net/sockstat{,6}`: `TCP: inuse 5 orphan 0 tw 1 alloc 7 mem 2` becomes
/// `node_sockstat_TCP_inuse` and friends; `mem` is in pages, so a `_mem_bytes` twin too.
pub(super) fn sockstat(options: &HostOptions, out: &mut Families) -> Result<(), CollectError> {
    let page_size = rustix::param::page_size() as f64;
    let mut parse = |text: &str| {
        for line in text.lines() {
            let Some((protocol, rest)) = line.split_once(':') else {
                continue;
            };
            let fields: Vec<&str> = rest.split_ascii_whitespace().collect();
            for pair in fields.chunks(2) {
                let [name, value] = pair else { continue };
                let Ok(value) = value.parse::<f64>() else {
                    continue;
                };
                let protocol = if protocol == "sockets" {
                    "sockets"
                } else {
                    protocol
                };
                out.gauge(
                    &format!("node_sockstat_{protocol}_{name}"),
                    &format!("Number of {protocol} sockets in state {name}."),
                    &[],
                    value,
                );
                if *name == "mem" {
                    out.gauge(
                        &format!("node_sockstat_{protocol}_mem_bytes"),
                        &format!("Number of {protocol} sockets in state mem_bytes."),
                        &[],
                        value * page_size,
                    );
                }
            }
        }
    };
    let path = options.proc("net/sockstat");
    parse(&read(&path)?);
    if let Ok(text) = std::fs::read_to_string(options.proc("net/sockstat6")) {
        parse(&text);
    }
    Ok(())
}

pub(super) fn conntrack(options: &HostOptions, out: &mut Families) -> Result<(), CollectError> {
    let number = |file: &str| -> Result<f64, CollectError> {
        let path = options.proc(file);
        read(&path)?
            .trim()
            .parse()
            .map_err(|_| parse_error(&path, "not a number"))
    };
    out.gauge(
        "node_nf_conntrack_entries",
        "Number of currently allocated flow entries for connection tracking.",
        &[],
        number("sys/net/netfilter/nf_conntrack_count")?,
    );
    out.gauge(
        "node_nf_conntrack_entries_limit",
        "Maximum size of connection tracking table.",
        &[],
        number("sys/net/netfilter/nf_conntrack_max")?,
    );
    // Per-CPU rows of hexadecimal counters, summed.
    if let Ok(text) = std::fs::read_to_string(options.proc("net/stat/nf_conntrack")) {
        let mut lines = text.lines();
        let names: Vec<&str> = lines
            .next()
            .map(|h| h.split_ascii_whitespace().collect())
            .unwrap_or_default();
        let mut sums = vec![0.0; names.len()];
        for line in lines {
            for (sum, field) in sums.iter_mut().zip(line.split_ascii_whitespace()) {
                *sum += u64::from_str_radix(field, 16).unwrap_or(0) as f64;
            }
        }
        for wanted in [
            "found",
            "invalid",
            "ignore",
            "insert",
            "insert_failed",
            "drop",
            "early_drop",
            "search_restart",
        ] {
            if let Some(index) = names.iter().position(|n| *n == wanted) {
                out.gauge(
                    &format!("node_nf_conntrack_stat_{wanted}"),
                    &format!("Number of conntrack {wanted}."),
                    &[],
                    sums[index],
                );
            }
        }
    }
    Ok(())
}

/// ARP entries per interface.
pub(super) fn arp(options: &HostOptions, out: &mut Families) -> Result<(), CollectError> {
    let path = options.proc("net/arp");
    let text = read(&path)?;
    let mut counts: BTreeMap<&str, f64> = BTreeMap::new();
    for line in text.lines().skip(1) {
        if let Some(device) = line.split_ascii_whitespace().nth(5) {
            *counts.entry(device).or_default() += 1.0;
        }
    }
    for (device, count) in counts {
        out.gauge(
            "node_arp_entries",
            "ARP entries by device",
            &[("device", device)],
            count,
        );
    }
    Ok(())
}

/// `/proc/net/softnet_stat`: one row of hexadecimal counters per CPU.
pub(super) fn softnet(options: &HostOptions, out: &mut Families) -> Result<(), CollectError> {
    let path = options.proc("net/softnet_stat");
    let text = read(&path)?;
    for (cpu, line) in text.lines().enumerate() {
        let fields: Vec<f64> = line
            .split_ascii_whitespace()
            .map(|f| u64::from_str_radix(f, 16).map(|v| v as f64))
            .collect::<Result<_, _>>()
            .map_err(|_| parse_error(&path, format!("bad line {line:?}")))?;
        let cpu = cpu.to_string();
        for (name, index, help) in [
            (
                "node_softnet_processed_total",
                0,
                "Number of processed packets",
            ),
            ("node_softnet_dropped_total", 1, "Number of dropped packets"),
            (
                "node_softnet_times_squeezed_total",
                2,
                "Number of times processing packets ran out of quota",
            ),
        ] {
            if let Some(value) = fields.get(index) {
                out.counter(name, help, &[("cpu", &cpu)], *value);
            }
        }
    }
    Ok(())
}
