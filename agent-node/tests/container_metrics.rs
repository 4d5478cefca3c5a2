//! Container metrics from a cgroup v2 tree built with the kernel's file formats, and from
//! this machine's own cgroup.

use std::collections::BTreeMap;
use std::path::Path;

use agent_node::containers::{self, DeviceNames};
use agent_node::metrics::Families;
use agent_node::pods::{Classifier, ClassifyConfig, PodSource, PodStore, kubelet};

const PODS_JSON: &str = include_str!("../testdata/kubelet/pods.json");
const WEB_ID: &str = "4a6f0c2e8b1d3f5a7c9e0b2d4f6a8c1e3b5d7f9a0c2e4b6d8f1a3c5e7b9d0f2a";
const SANDBOX_ID: &str = "a1b2c3d4e5f6a7b8c9d0e1f2a3b4c5d6e7f8a9b0c1d2e3f4a5b6c7d8e9f0a1b2";
const POD_CGROUP: &str = "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod5f0c3b8e_2a1d_4c6b_9e7f_0a1b2c3d4e5f.slice";

/// `memory.stat` as a 6.x kernel writes it, with the four keys the metrics use set.
fn memory_stat(anon: u64, file: u64, file_mapped: u64, inactive_file: u64) -> String {
    format!(
        "anon {anon}\nfile {file}\nkernel 1966080\nkernel_stack 294912\npagetables 507904\n\
         sec_pagetables 0\npercpu 5184\nsock 0\nvmalloc 8192\nshmem 0\nzswap 0\nzswapped 0\n\
         file_mapped {file_mapped}\nfile_dirty 4096\nfile_writeback 0\nswapcached 0\nanon_thp 0\n\
         file_thp 0\nshmem_thp 0\ninactive_anon {anon}\nactive_anon 0\ninactive_file {inactive_file}\n\
         active_file 1048576\nunevictable 0\nslab_reclaimable 602112\nslab_unreclaimable 380928\n\
         slab 983040\nworkingset_refault_anon 0\nworkingset_refault_file 12\n\
         workingset_activate_anon 0\nworkingset_activate_file 3\nworkingset_restore_anon 0\n\
         workingset_restore_file 0\nworkingset_nodereclaim 0\npgscan 0\npgsteal 0\n\
         pgscan_kswapd 0\npgscan_direct 0\npgscan_khugepaged 0\npgsteal_kswapd 0\n\
         pgsteal_direct 0\npgsteal_khugepaged 0\npgfault 48211\npgmajfault 37\npgrefill 0\n\
         pgactivate 211\npgdeactivate 0\npglazyfree 0\npglazyfreed 0\nzswpin 0\nzswpout 0\n\
         thp_fault_alloc 0\nthp_collapse_alloc 0\n"
    )
}

fn cpu_stat(
    usage: u64,
    user: u64,
    system: u64,
    periods: u64,
    throttled: u64,
    throttled_usec: u64,
) -> String {
    format!(
        "usage_usec {usage}\nuser_usec {user}\nsystem_usec {system}\ncore_sched.force_idle_usec 0\n\
         nr_periods {periods}\nnr_throttled {throttled}\nthrottled_usec {throttled_usec}\n\
         nr_bursts 0\nburst_usec 0\n"
    )
}

const NET_DEV: &str = "Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed
    lo:    5120      64    0    0    0     0          0         0     5120      64    0    0    0     0       0          0
  eth0: 9876543    7321    3    1    0     0          0         0  1234567    6543    2    0    0     0       0          0
";

fn write(dir: &Path, files: &[(&str, String)]) {
    std::fs::create_dir_all(dir).expect("mkdir");
    for (name, text) in files {
        std::fs::write(dir.join(name), text).expect("write");
    }
}

fn node(root: &Path) {
    let pod = root.join(format!("sys/fs/cgroup{POD_CGROUP}"));
    write(
        &pod,
        &[
            ("cgroup.procs", String::new()),
            ("cpu.stat", cpu_stat(2_600_000, 2_000_000, 600_000, 0, 0, 0)),
            ("cpu.max", "max 100000\n".into()),
            ("memory.current", "71303168\n".into()),
            (
                "memory.stat",
                memory_stat(44_040_192, 23_068_672, 4_194_304, 13_631_488),
            ),
            ("memory.swap.current", "0\n".into()),
            (
                "memory.events",
                "low 0\nhigh 0\nmax 5\noom 2\noom_kill 2\noom_group_kill 0\n".into(),
            ),
            ("memory.max", "max\n".into()),
            (
                "io.stat",
                "259:0 rbytes=1052672 wbytes=524288 rios=257 wios=128 dbytes=0 dios=0\n".into(),
            ),
            ("pids.current", "9\n".into()),
        ],
    );
    write(
        &pod.join(format!("cri-containerd-{WEB_ID}.scope")),
        &[
            ("cgroup.procs", "4242\n4243\n".into()),
            (
                "cpu.stat",
                cpu_stat(2_345_678, 1_834_567, 511_111, 4200, 37, 1_250_000),
            ),
            ("cpu.max", "50000 100000\n".into()),
            ("memory.current", "67108864\n".into()),
            (
                "memory.stat",
                memory_stat(41_943_040, 20_971_520, 4_194_304, 12_582_912),
            ),
            ("memory.swap.current", "0\n".into()),
            (
                "memory.events",
                "low 0\nhigh 0\nmax 5\noom 2\noom_kill 2\noom_group_kill 0\n".into(),
            ),
            ("memory.max", "268435456\n".into()),
            (
                "io.stat",
                "259:0 rbytes=1048576 wbytes=524288 rios=256 wios=128 dbytes=0 dios=0\n\
                 8:0 rbytes=4096 wbytes=0 rios=1 wios=0 dbytes=0 dios=0\n"
                    .into(),
            ),
            ("pids.current", "7\n".into()),
        ],
    );
    // The sandbox ("pause") container: no status in the pod, and few controllers.
    write(
        &pod.join(format!("cri-containerd-{SANDBOX_ID}.scope")),
        &[
            ("cgroup.procs", "4100\n".into()),
            ("cpu.stat", cpu_stat(15_000, 10_000, 5_000, 0, 0, 0)),
            ("memory.current", "1000\n".into()),
            ("memory.stat", memory_stat(0, 800, 0, 5000)),
        ],
    );
    for pid in ["4100", "4242", "4243"] {
        write(
            &root.join(format!("proc/{pid}/net")),
            &[("dev", NET_DEV.into())],
        );
    }
    write(
        &root.join("sys/dev/block/259:0"),
        &[(
            "uevent",
            "MAJOR=259\nMINOR=0\nDEVNAME=nvme0n1\nDEVTYPE=disk\nDISKSEQ=1\n".into(),
        )],
    );
}

/// `name{label="value",…} value` per sample, labels sorted, as a set to compare.
fn lines(families: &Families) -> Vec<String> {
    let mut out: Vec<String> = families
        .iter()
        .flat_map(|f| {
            f.samples.iter().map(|(labels, value)| {
                let labels: Vec<String> =
                    labels.iter().map(|(n, v)| format!("{n}={v:?}")).collect();
                format!("{}{{{}}} {value}", f.name, labels.join(","))
            })
        })
        .collect();
    out.sort();
    out
}

struct Expected {
    lines: Vec<String>,
}

impl Expected {
    fn add(&mut self, name: &str, labels: &[(&str, &str)], extra: &[(&str, &str)], value: f64) {
        let all: BTreeMap<&str, &str> = labels.iter().chain(extra).copied().collect();
        let labels: Vec<String> = all.iter().map(|(n, v)| format!("{n}={v:?}")).collect();
        self.lines
            .push(format!("{name}{{{}}} {value}", labels.join(",")));
    }
}

#[test]
fn every_series_of_a_pod_and_its_containers() {
    let root = tempfile::tempdir().expect("tempdir");
    node(root.path());
    let store = PodStore::new(Classifier::new(&ClassifyConfig::default()).expect("rules"));
    store.sync(
        PodSource::Kubelet,
        kubelet::parse_pod_list(PODS_JSON.as_bytes()).expect("recorded list"),
    );
    let mut families = Families::new();
    containers::collect(&store, root.path(), &mut families);

    let pod: &[(&str, &str)] = &[
        ("namespace", "project-1-dev"),
        ("pod", "web-7d4b9c8f6-x2x9k"),
        ("pod_uid", "5f0c3b8e-2a1d-4c6b-9e7f-0a1b2c3d4e5f"),
        ("node", "node-a"),
        ("pod_class", "service"),
        ("service_name", "storefront-web"),
        ("org_name", "erda"),
        ("project_name", "shop"),
        ("application_name", "storefront"),
        ("workspace_name", "DEV"),
        ("runtime_name", "feature/checkout"),
        ("workload_kind", "Deployment"),
        ("workload_name", "web"),
    ];
    let web_cgroup = format!("{POD_CGROUP}/cri-containerd-{WEB_ID}.scope");
    let sandbox_cgroup = format!("{POD_CGROUP}/cri-containerd-{SANDBOX_ID}.scope");
    let pod_level: Vec<(&str, &str)> = [("id", POD_CGROUP)]
        .into_iter()
        .chain(pod.iter().copied())
        .collect();
    let web: Vec<(&str, &str)> = [
        ("id", web_cgroup.as_str()),
        ("name", WEB_ID),
        ("container", "web"),
        ("image", "registry.example.com/shop/web:1.4.2"),
    ]
    .into_iter()
    .chain(pod.iter().copied())
    .collect();
    let sandbox: Vec<(&str, &str)> = [("id", sandbox_cgroup.as_str()), ("name", SANDBOX_ID)]
        .into_iter()
        .chain(pod.iter().copied())
        .collect();

    let mut e = Expected { lines: Vec::new() };
    // The pod's own cgroup: no CPU quota, so no CFS series and no quota.
    let p = &pod_level[..];
    e.add(
        "container_cpu_usage_seconds_total",
        p,
        &[("cpu", "total")],
        2.6,
    );
    e.add("container_cpu_user_seconds_total", p, &[], 2.0);
    e.add("container_cpu_system_seconds_total", p, &[], 0.6);
    e.add("container_spec_cpu_period", p, &[], 100000.0);
    e.add("container_memory_usage_bytes", p, &[], 71303168.0);
    e.add(
        "container_memory_working_set_bytes",
        p,
        &[],
        (71303168 - 13631488) as f64,
    );
    e.add("container_memory_rss", p, &[], 44040192.0);
    e.add("container_memory_cache", p, &[], 23068672.0);
    e.add("container_memory_mapped_file", p, &[], 4194304.0);
    e.add("container_memory_swap", p, &[], 0.0);
    e.add("container_oom_events_total", p, &[], 2.0);
    e.add("container_spec_memory_limit_bytes", p, &[], 0.0);
    let nvme = [("device", "/dev/nvme0n1")];
    e.add("container_fs_reads_bytes_total", p, &nvme, 1052672.0);
    e.add("container_fs_writes_bytes_total", p, &nvme, 524288.0);
    e.add("container_fs_reads_total", p, &nvme, 257.0);
    e.add("container_fs_writes_total", p, &nvme, 128.0);
    e.add("container_processes", p, &[], 3.0);
    e.add("container_threads", p, &[], 9.0);
    let eth0 = [("interface", "eth0")];
    e.add("container_network_receive_bytes_total", p, &eth0, 9876543.0);
    e.add("container_network_receive_packets_total", p, &eth0, 7321.0);
    e.add("container_network_receive_errors_total", p, &eth0, 3.0);
    e.add(
        "container_network_transmit_bytes_total",
        p,
        &eth0,
        1234567.0,
    );
    e.add("container_network_transmit_packets_total", p, &eth0, 6543.0);
    e.add("container_network_transmit_errors_total", p, &eth0, 2.0);

    // The application container, limited to half a CPU and 256 MiB.
    let w = &web[..];
    e.add(
        "container_cpu_usage_seconds_total",
        w,
        &[("cpu", "total")],
        2.345678,
    );
    e.add("container_cpu_user_seconds_total", w, &[], 1.834567);
    e.add("container_cpu_system_seconds_total", w, &[], 0.511111);
    e.add("container_cpu_cfs_periods_total", w, &[], 4200.0);
    e.add("container_cpu_cfs_throttled_periods_total", w, &[], 37.0);
    e.add("container_cpu_cfs_throttled_seconds_total", w, &[], 1.25);
    e.add("container_spec_cpu_period", w, &[], 100000.0);
    e.add("container_spec_cpu_quota", w, &[], 50000.0);
    e.add("container_memory_usage_bytes", w, &[], 67108864.0);
    e.add(
        "container_memory_working_set_bytes",
        w,
        &[],
        (67108864 - 12582912) as f64,
    );
    e.add("container_memory_rss", w, &[], 41943040.0);
    e.add("container_memory_cache", w, &[], 20971520.0);
    e.add("container_memory_mapped_file", w, &[], 4194304.0);
    e.add("container_memory_swap", w, &[], 0.0);
    e.add("container_oom_events_total", w, &[], 2.0);
    e.add("container_spec_memory_limit_bytes", w, &[], 268435456.0);
    e.add("container_fs_reads_bytes_total", w, &nvme, 1048576.0);
    e.add("container_fs_writes_bytes_total", w, &nvme, 524288.0);
    e.add("container_fs_reads_total", w, &nvme, 256.0);
    e.add("container_fs_writes_total", w, &nvme, 128.0);
    let unnamed = [("device", "8:0")];
    e.add("container_fs_reads_bytes_total", w, &unnamed, 4096.0);
    e.add("container_fs_writes_bytes_total", w, &unnamed, 0.0);
    e.add("container_fs_reads_total", w, &unnamed, 1.0);
    e.add("container_fs_writes_total", w, &unnamed, 0.0);
    e.add("container_processes", w, &[], 2.0);
    e.add("container_threads", w, &[], 7.0);

    // The sandbox: only what its cgroup has; the working set floors at 0.
    let s = &sandbox[..];
    e.add(
        "container_cpu_usage_seconds_total",
        s,
        &[("cpu", "total")],
        0.015,
    );
    e.add("container_cpu_user_seconds_total", s, &[], 0.01);
    e.add("container_cpu_system_seconds_total", s, &[], 0.005);
    e.add("container_memory_usage_bytes", s, &[], 1000.0);
    e.add("container_memory_working_set_bytes", s, &[], 0.0);
    e.add("container_memory_rss", s, &[], 0.0);
    e.add("container_memory_cache", s, &[], 800.0);
    e.add("container_memory_mapped_file", s, &[], 0.0);
    e.add("container_processes", s, &[], 1.0);

    e.lines.sort();
    assert_eq!(lines(&families), e.lines);

    // cAdvisor's help texts and types, which dashboards' tooltips show.
    let family = |name: &str| families.iter().find(|f| f.name == name).expect(name);
    assert_eq!(
        family("container_memory_working_set_bytes").help,
        "Current working set in bytes."
    );
    assert_eq!(
        family("container_cpu_usage_seconds_total").kind,
        model::MetricType::Counter
    );
    assert_eq!(
        family("container_spec_cpu_quota").kind,
        model::MetricType::Gauge
    );
    // The page parses as Prometheus text.
    let text = families.to_text();
    let mut parser =
        scrape::exposition::Parser::new(text.as_bytes(), scrape::exposition::Format::Prometheus);
    let mut samples = 0;
    while let Some(entry) = parser.next_entry().expect("valid exposition") {
        if let scrape::exposition::Entry::Sample(_) = entry {
            samples += 1;
        }
    }
    assert_eq!(samples, e.lines.len());
}

#[test]
fn a_pod_known_only_from_its_cgroup_still_has_its_uid() {
    let root = tempfile::tempdir().expect("tempdir");
    node(root.path());
    let store = PodStore::new(Classifier::new(&ClassifyConfig::default()).expect("rules"));
    let mut families = Families::new();
    containers::collect(&store, root.path(), &mut families);
    let usage = families
        .iter()
        .find(|f| f.name == "container_cpu_usage_seconds_total")
        .expect("cpu usage");
    assert_eq!(usage.samples.len(), 3, "pod, web and sandbox cgroups");
    for (labels, _) in &usage.samples {
        assert_eq!(
            labels.get("pod_uid"),
            Some("5f0c3b8e-2a1d-4c6b-9e7f-0a1b2c3d4e5f")
        );
        assert_eq!(labels.get("namespace"), None);
        assert_eq!(labels.get("container"), None);
    }

    let empty = tempfile::tempdir().expect("tempdir");
    let mut families = Families::new();
    containers::collect(&store, empty.path(), &mut families);
    assert!(families.is_empty(), "no kubepods tree, no series");
}

/// This process's cgroup v2 directory: the `0::` line of `/proc/self/cgroup` below the
/// `cgroup2` mount in `/proc/self/mountinfo`.
fn own_cgroup() -> Option<(std::path::PathBuf, String)> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let mount = mountinfo.lines().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        right
            .starts_with("cgroup2 ")
            .then(|| left.split_whitespace().nth(4).map(str::to_owned))?
    })?;
    let cgroup = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let path = cgroup
        .lines()
        .find_map(|l| l.strip_prefix("0::"))?
        .to_owned();
    Some((Path::new(&mount).join(path.trim_start_matches('/')), path))
}

#[test]
fn this_machines_own_cgroup_reads_sanely() {
    let Some((dir, id)) = own_cgroup() else {
        // Not a cgroup v2 host: the node layout is absent, so there is nothing to collect.
        let store = PodStore::new(Classifier::new(&ClassifyConfig::default()).expect("rules"));
        let mut families = Families::new();
        containers::collect(&store, Path::new("/"), &mut families);
        assert!(families.is_empty());
        return;
    };
    let mut families = Families::new();
    let mut devices = DeviceNames::new(Path::new("/"));
    containers::collect_cgroup(
        &dir,
        Path::new("/"),
        &[("id".to_owned(), id.clone())],
        true,
        &mut devices,
        &mut families,
    );
    let value = |name: &str| {
        families
            .iter()
            .find(|f| f.name == name)
            .and_then(|f| f.samples.first())
            .map(|(labels, value)| {
                assert_eq!(labels.get("id"), Some(id.as_str()));
                *value
            })
    };
    let usage = value("container_cpu_usage_seconds_total").expect("cpu.stat is always there");
    assert!(usage > 0.0, "this test itself used CPU: {usage}");
    let user = value("container_cpu_user_seconds_total").expect("user");
    let system = value("container_cpu_system_seconds_total").expect("system");
    assert!(
        user + system <= usage * 1.01 + 0.01,
        "user {user} + system {system} vs {usage}"
    );
    if let Some(memory) = value("container_memory_usage_bytes") {
        let working_set = value("container_memory_working_set_bytes").expect("with usage");
        assert!(memory > 0.0);
        assert!(working_set <= memory, "{working_set} > {memory}");
    }
    if let Some(processes) = value("container_processes") {
        assert!(processes >= 1.0, "this test runs in the cgroup");
    }
    let has_interface = std::fs::read_to_string("/proc/self/net/dev")
        .map(|t| {
            t.lines()
                .skip(2)
                .any(|l| !l.trim_start().starts_with("lo:"))
        })
        .unwrap_or(false);
    if has_interface {
        let interfaces = families
            .iter()
            .find(|f| f.name == "container_network_receive_bytes_total")
            .map_or(0, |f| f.samples.len());
        assert!(interfaces >= 1, "an interface besides lo");
    }
}
