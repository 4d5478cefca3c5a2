//! The host collector against node_exporter 1.5 (the Debian package) on the same host, at
//! the same moment: every family Meerkat produces must be one node_exporter produces, with
//! the same label sets, and values between two node_exporter scrapes taken just before and
//! just after Meerkat's (widened by a tolerance suited to each metric). The test prints
//! which node_exporter families Meerkat produces and which it does not.

use std::collections::{BTreeMap, BTreeSet};

use agent_node::host::{self, HostCollector, HostOptions};
use agent_node::metrics::Families;
use scrape::exposition::{Entry, Format, Parser};

type Series = BTreeMap<Vec<(String, String)>, f64>;

/// A page as Prometheus would store it: family → label set (empty values dropped) → value.
fn parse(page: &str) -> BTreeMap<String, Series> {
    let mut families: BTreeMap<String, Series> = BTreeMap::new();
    let mut parser = Parser::new(page.as_bytes(), Format::Prometheus);
    while let Some(entry) = parser.next_entry().expect("the page parses") {
        if let Entry::Sample(sample) = entry {
            let mut labels: Vec<(String, String)> = sample
                .labels
                .iter()
                .filter(|(_, value)| !value.is_empty())
                .map(|(name, value)| ((*name).to_owned(), value.to_string()))
                .collect();
            labels.sort();
            families
                .entry(sample.name.to_owned())
                .or_default()
                .insert(labels, sample.value);
        }
    }
    families
}

/// How far a value may sit outside the range node_exporter's two scrapes span: an absolute
/// and a relative allowance, per metric.
fn tolerance(name: &str) -> Option<(f64, f64)> {
    if name == "node_scrape_collector_duration_seconds" {
        return None; // how long each implementation takes: not comparable
    }
    // Gauges that move with whatever else runs (other tests in CI) get room; counters are
    // bracketed by the two scrapes and need almost none.
    Some(match name {
        "node_time_seconds" => (10.0, 0.0),
        n if n.starts_with("node_load") => (2.0, 0.0),
        n if n.starts_with("node_memory_") => (512.0 * 1024.0 * 1024.0, 0.05),
        n if n.starts_with("node_filesystem_") => (256.0 * 1024.0 * 1024.0, 0.01),
        n if n.starts_with("node_sockstat_") && n.ends_with("_bytes") => {
            (64.0 * 1024.0 * 1024.0, 0.1)
        }
        n if n.starts_with("node_sockstat_") => (256.0, 0.1),
        "node_filefd_allocated" => (1024.0, 0.0),
        "node_procs_running" | "node_procs_blocked" => (64.0, 0.0),
        "node_disk_io_now" => (256.0, 0.0),
        n if n.starts_with("node_nf_conntrack_") => (256.0, 0.0),
        "node_arp_entries" => (16.0, 0.0),
        n if n.starts_with("node_netstat_") => (256.0, 0.01),
        n if n.starts_with("node_vmstat_") => (0.0, 0.01),
        n if n.starts_with("node_pressure_") => (1.0, 0.0),
        _ => (0.0, 0.001),
    })
}

#[test]
fn host_metrics_match_node_exporter() {
    let flags = [
        format!(
            "--collector.filesystem.mount-points-exclude={}",
            host::DEFAULT_MOUNT_POINTS_EXCLUDE
        ),
        format!(
            "--collector.filesystem.fs-types-exclude={}",
            host::DEFAULT_FS_TYPES_EXCLUDE
        ),
        format!(
            "--collector.diskstats.device-exclude={}",
            host::DEFAULT_DISK_DEVICES_EXCLUDE
        ),
        format!(
            "--collector.netdev.device-exclude={}",
            host::DEFAULT_NETDEV_DEVICES_EXCLUDE
        ),
    ];
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let exporter = test_peers::NodeExporter::start(&flags);
    let collector = HostCollector::new(HostOptions::new("/"));

    let before = parse(&exporter.metrics().expect("node_exporter answers"));
    let mut ours = Families::new();
    collector.collect(&mut ours);
    let after = parse(&exporter.metrics().expect("node_exporter answers"));
    let ours = parse(&ours.to_text());

    let mut problems = Vec::new();
    let mut identical = Vec::new();
    for (name, our_series) in &ours {
        let (Some(theirs_before), Some(theirs_after)) = (before.get(name), after.get(name)) else {
            problems.push(format!("{name}: node_exporter has no such family"));
            continue;
        };
        let our_labels: BTreeSet<_> = our_series.keys().collect();
        let their_labels: BTreeSet<_> = theirs_after.keys().collect();
        let subset_only = name.starts_with("node_scrape_collector_");
        if subset_only {
            // node_exporter runs collectors Meerkat does not; ours must be among its.
            for missing in our_labels.difference(&their_labels) {
                problems.push(format!(
                    "{name}{missing:?}: node_exporter has no such series"
                ));
            }
        } else if our_labels != their_labels {
            problems.push(format!(
                "{name}: label sets differ\n  only Meerkat: {:?}\n  only node_exporter: {:?}",
                our_labels.difference(&their_labels).collect::<Vec<_>>(),
                their_labels.difference(&our_labels).collect::<Vec<_>>()
            ));
            continue;
        }
        let Some((absolute, relative)) = tolerance(name) else {
            identical.push(name.clone());
            continue;
        };
        let mut values_agree = true;
        for (labels, ours) in our_series {
            let (Some(a), Some(b)) = (theirs_before.get(labels), theirs_after.get(labels)) else {
                continue;
            };
            let (low, high) = (a.min(*b), a.max(*b));
            let allowance = absolute.max(relative * high.abs());
            if !(*ours >= low - allowance && *ours <= high + allowance) {
                values_agree = false;
                problems.push(format!(
                    "{name}{labels:?}: Meerkat {ours}, node_exporter {a} then {b} (allowance {allowance})"
                ));
            }
        }
        if values_agree {
            identical.push(name.clone());
        }
    }
    let not_produced: Vec<&String> = after
        .keys()
        .filter(|name| name.starts_with("node_") && !ours.contains_key(*name))
        .collect();
    println!(
        "{} node_exporter families produced by Meerkat with identical names and label sets \
         and values within tolerance:",
        identical.len()
    );
    for name in &identical {
        println!("  {name} ({} series)", ours[name].len());
    }
    println!(
        "{} node_exporter families Meerkat does not produce: {}",
        not_produced.len(),
        not_produced
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join(" ")
    );
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    // The core families every node_exporter dashboard reads must be among them.
    for core in [
        "node_cpu_seconds_total",
        "node_memory_MemTotal_bytes",
        "node_memory_MemAvailable_bytes",
        "node_load1",
        "node_filesystem_avail_bytes",
        "node_filesystem_size_bytes",
        "node_disk_read_bytes_total",
        "node_disk_io_time_seconds_total",
        "node_network_receive_bytes_total",
        "node_network_transmit_bytes_total",
        "node_boot_time_seconds",
        "node_uname_info",
        "node_vmstat_pgmajfault",
        "node_netstat_Tcp_CurrEstab",
        "node_pressure_cpu_waiting_seconds_total",
        "node_time_seconds",
    ] {
        assert!(
            identical.iter().any(|n| n == core),
            "{core} is not among the identical families"
        );
    }
}
