//! Agents announce themselves: `meerkat agent cluster` against `meerkat serve` shows up in
//! the gateway's `GET /api/v1/agents` with its cluster name, version and a recent
//! heartbeat, for its own tenant only; a restart keeps its id; once stopped it goes stale
//! and is then forgotten.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{BINARY, Server, get, get_with};
use serde_json::Value;

/// An agent process, killed if the test ends early.
struct Agent(Child);

impl Agent {
    fn start(dir: &Path, config: &Path, args: &[&str], env: &[(&str, &str)], log: &str) -> Self {
        let mut command = Command::new(BINARY);
        command
            .args(["agent", "cluster", "--scrape-config"])
            .arg(config)
            .args(args)
            .current_dir(dir)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join(log)).unwrap());
        for (key, value) in env {
            command.env(key, value);
        }
        Self(command.spawn().unwrap())
    }

    fn terminate(&mut self) {
        Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.0.try_wait().unwrap().is_none() {
            assert!(Instant::now() < deadline, "the agent did not stop");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The agents `tenant` sees.
fn agents(meerkat: &Server, tenant: &str) -> Vec<Value> {
    let response = get_with(meerkat.addr, "/api/v1/agents", &[("X-Scope-OrgID", tenant)]).unwrap();
    assert_eq!(response.status, 200, "{}", response.body);
    let body = &response.body[response.body.find('{').unwrap()..=response.body.rfind('}').unwrap()];
    let json: Value = serde_json::from_str(body).unwrap();
    assert_eq!(json["status"], "success", "{json}");
    json["data"].as_array().unwrap().clone()
}

/// Polls `tenant`'s agents until `accept` takes them.
fn wait_for_agents(
    meerkat: &Server,
    tenant: &str,
    what: &str,
    accept: impl Fn(&[Value]) -> bool,
) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let listed = agents(meerkat, tenant);
        if accept(&listed) {
            return listed;
        }
        assert!(Instant::now() < deadline, "{what}: {listed:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn cluster_agents_register_heartbeat_and_go_stale_when_stopped() {
    let dir = tempfile::tempdir().unwrap();
    let meerkat = Server::start(dir.path(), &["--http-listen", "127.0.0.1:0"], &[]);
    let gateway = format!("http://{}", meerkat.addr);
    let (code, version_line, _) = common::run(&["version"], dir.path(), &[]);
    assert_eq!(code, 0);
    let version = version_line.split_whitespace().nth(1).unwrap().to_owned();

    // Agent A sends as tenant team-a (its remote-write headers, which the heartbeat shares).
    let team_config = dir.path().join("team-a.yml");
    std::fs::write(
        &team_config,
        format!(
            "global:\n  external_labels:\n    region: eu-west\nremote_write:\n  - url: {gateway}/api/v1/write\n    headers:\n      X-Scope-OrgID: team-a\nscrape_configs: []\n"
        ),
    )
    .unwrap();
    let a_args = [
        "--gateway",
        &gateway,
        "--cluster-name",
        "prod-eu",
        "--heartbeat-interval",
        "1",
        "--buffer-dir",
        "buffer-a",
    ];
    let mut agent_a = Agent::start(dir.path(), &team_config, &a_args, &[], "a.log");
    // Agent B: the default tenant, its cluster named by the environment.
    let plain_config = dir.path().join("plain.yml");
    std::fs::write(&plain_config, "scrape_configs: []\n").unwrap();
    let _agent_b = Agent::start(
        dir.path(),
        &plain_config,
        &[
            "--gateway",
            &gateway,
            "--heartbeat-interval",
            "1",
            "--buffer-dir",
            "buffer-b",
        ],
        &[("MEERKAT_CLUSTER_NAME", "prod-us")],
        "b.log",
    );
    let log = |name: &str| std::fs::read_to_string(dir.path().join(name)).unwrap_or_default();

    let listed = wait_for_agents(&meerkat, "team-a", "agent A never registered", |a| {
        a.len() == 1
    });
    let a = &listed[0];
    assert_eq!(a["kind"], "cluster", "{a}");
    assert_eq!(a["cluster"], "prod-eu", "{a}");
    assert_eq!(a["version"], version.as_str(), "{a}");
    assert_eq!(a["status"], "up", "{a}");
    assert_eq!(a["interval_seconds"], 1.0, "{a}");
    assert_eq!(a["labels"]["region"], "eu-west", "{a}");
    assert!(a["last_seen_seconds_ago"].as_f64().unwrap() < 3.0, "{a}");
    let a_id = a["agent_id"].as_str().unwrap().to_owned();
    let a_started = a["started_at"].clone();
    // Heartbeats keep coming: last_seen moves.
    let first_seen = a["last_seen"].clone();
    wait_for_agents(&meerkat, "team-a", "no second heartbeat", |a| {
        a.len() == 1 && a[0]["last_seen"] != first_seen
    });

    // Tenancy: B is in the default tenant only, A in team-a only.
    let b = wait_for_agents(&meerkat, "default", "agent B never registered", |a| {
        a.len() == 1
    });
    assert_eq!(b[0]["cluster"], "prod-us", "{:?}\n{}", b, log("b.log"));
    assert_ne!(b[0]["agent_id"], a_id.as_str());
    assert!(agents(&meerkat, "team-b").is_empty());
    let metrics = get(meerkat.addr, "/metrics").unwrap().body;
    assert!(
        metrics.contains(r#"meerkat_gateway_agents{kind="cluster",status="up"} 2"#),
        "{metrics}"
    );

    // A restart keeps the agent id (kept in its buffer directory): still one agent, with
    // a new start time.
    agent_a.terminate();
    let mut agent_a = Agent::start(dir.path(), &team_config, &a_args, &[], "a2.log");
    let listed = wait_for_agents(&meerkat, "team-a", "the restart never beat", |a| {
        a.len() == 1 && a[0]["started_at"] != a_started
    });
    assert_eq!(listed[0]["agent_id"], a_id.as_str(), "{}", log("a2.log"));

    // Stopped: stale after 3 missed intervals, forgotten after 10.
    agent_a.terminate();
    let stopped = Instant::now();
    wait_for_agents(&meerkat, "team-a", "never went stale", |a| {
        a.len() == 1 && a[0]["status"] == "stale"
    });
    assert!(
        stopped.elapsed() >= Duration::from_secs(2),
        "stale too soon"
    );
    let metrics = get(meerkat.addr, "/metrics").unwrap().body;
    assert!(
        metrics.contains(r#"meerkat_gateway_agents{kind="cluster",status="stale"} 1"#),
        "{metrics}"
    );
    wait_for_agents(&meerkat, "team-a", "never forgotten", <[Value]>::is_empty);
    assert!(
        stopped.elapsed() >= Duration::from_secs(9),
        "forgotten too soon"
    );
    // B, still running, is still up.
    assert_eq!(agents(&meerkat, "default")[0]["status"], "up");
}
