//! `meerkat agent node` and `meerkat serve`'s in-process host metrics, end to end: the
//! numbers this machine's kernel reports come back from PromQL with node_exporter's names,
//! `job="node"` and the node's name as `instance`, and a stopped agent's series go stale.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{BINARY, Server, query_vector};

fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// `MemTotal` in bytes and the number of CPUs, read from the kernel directly.
fn this_machine() -> (f64, usize) {
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap();
    let kib: f64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let stat = std::fs::read_to_string("/proc/stat").unwrap();
    let cpus = stat
        .lines()
        .filter(|l| l.starts_with("cpu") && !l.starts_with("cpu "))
        .count();
    (kib * 1024.0, cpus)
}

#[test]
fn serve_collects_this_machines_metrics_by_default() {
    let dir = tempfile::tempdir().unwrap();
    let meerkat = Server::start(
        dir.path(),
        &["--http-listen", "127.0.0.1:0"],
        &[
            ("MEERKAT_HOST_METRICS__ENABLED", "true"),
            ("MEERKAT_HOST_METRICS__INTERVAL_SECONDS", "1"),
        ],
    );
    let (mem_total, cpus) = this_machine();
    wait_until("host metrics in serve", || {
        !query_vector(meerkat.addr, "node_memory_MemTotal_bytes").is_empty()
    });
    let memory = query_vector(meerkat.addr, "node_memory_MemTotal_bytes");
    let (labels, value) = memory.iter().next().unwrap();
    assert_eq!(*value, mem_total);
    assert_eq!(labels["job"], "node");
    assert_eq!(labels["instance"], agent_node::agent::hostname());
    let per_mode = query_vector(meerkat.addr, "count by (mode) (node_cpu_seconds_total)");
    assert_eq!(per_mode.len(), 8, "{per_mode:?}");
    assert!(per_mode.values().all(|n| *n == cpus as f64), "{per_mode:?}");
    // A rate over the collected counters works as on node_exporter's series.
    wait_until("two collections for a rate", || {
        let busy = query_vector(
            meerkat.addr,
            "sum(rate(node_cpu_seconds_total{mode!=\"idle\"}[5s]))",
        );
        busy.values().next().is_some_and(|v| *v >= 0.0)
    });
}

#[test]
fn serve_without_host_metrics_writes_none() {
    let dir = tempfile::tempdir().unwrap();
    let mut meerkat = Server::start(
        dir.path(),
        &["--http-listen", "127.0.0.1:0", "--no-host-metrics"],
        &[
            ("MEERKAT_HOST_METRICS__ENABLED", "true"),
            ("MEERKAT_HOST_METRICS__INTERVAL_SECONDS", "1"),
        ],
    );
    std::thread::sleep(Duration::from_secs(3));
    assert!(query_vector(meerkat.addr, "{job=\"node\"}").is_empty());
    assert!(
        !meerkat
            .log_lines()
            .iter()
            .any(|l| l.contains("collecting this machine's metrics"))
    );
}

struct NodeAgent(std::process::Child);

impl Drop for NodeAgent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn node_agent_delivers_host_metrics_and_marks_them_stale_on_stop() {
    let dir = tempfile::tempdir().unwrap();
    let meerkat = Server::start(dir.path(), &["--http-listen", "127.0.0.1:0"], &[]);
    let log = dir.path().join("agent.log");
    let mut agent = NodeAgent(
        Command::new(BINARY)
            .args(["agent", "node", "--interval-seconds", "1"])
            .args(["--gateway", &format!("http://{}", meerkat.addr)])
            .args(["--node-name", "test-node-7"])
            .arg("--buffer-dir")
            .arg(dir.path().join("buffer"))
            .current_dir(dir.path())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    let agent_log = || std::fs::read_to_string(&log).unwrap_or_default();
    let (mem_total, cpus) = this_machine();
    wait_until("the node agent's first collection", || {
        !query_vector(meerkat.addr, "node_uname_info{instance=\"test-node-7\"}").is_empty()
    });
    let memory = query_vector(
        meerkat.addr,
        "node_memory_MemTotal_bytes{job=\"node\",instance=\"test-node-7\"}",
    );
    assert_eq!(memory.values().copied().collect::<Vec<_>>(), [mem_total], "{}", agent_log());
    let cpu = query_vector(
        meerkat.addr,
        "count(node_cpu_seconds_total{instance=\"test-node-7\"})",
    );
    assert_eq!(cpu.values().next().copied(), Some((8 * cpus) as f64));
    let filesystems = query_vector(
        meerkat.addr,
        "node_filesystem_size_bytes{instance=\"test-node-7\",mountpoint=\"/\"}",
    );
    assert_eq!(filesystems.len(), 1, "{filesystems:?}");

    // SIGTERM: the agent marks its series stale and flushes before exiting.
    Command::new("kill")
        .args(["-TERM", &agent.0.id().to_string()])
        .status()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = agent.0.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "the agent did not stop: {}", agent_log());
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{}", agent_log());
    wait_until("stale markers", || {
        query_vector(meerkat.addr, "node_uname_info{instance=\"test-node-7\"}").is_empty()
    });
}
