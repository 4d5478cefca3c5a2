//! End-to-end tests of the `meerkat` binary: start it as users do, talk to it over HTTP, and
//! stop it with signals.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const BINARY: &str = env!("CARGO_BIN_EXE_meerkat");

/// A running `meerkat serve`, killed if the test ends without stopping it.
struct Server {
    child: Child,
    addr: SocketAddr,
    log: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Server {
    /// Starts `meerkat serve` in `cwd` with `args` and waits until `/health` says ready.
    fn start(cwd: &Path, args: &[&str], env: &[(&str, &str)]) -> Self {
        let mut command = Command::new(BINARY);
        command
            .arg("serve")
            .args(args)
            .current_dir(cwd)
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (key, value) in env {
            command.env(key, value);
        }
        let mut child = command.spawn().unwrap();
        let stderr = child.stderr.take().unwrap();
        let (sender, log) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if sender.send(line).is_err() {
                    break;
                }
            }
        });
        let mut server = Self {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            log,
            seen: Vec::new(),
        };
        let listening = server.wait_for_log("HTTP listening");
        let addr = listening
            .split("addr=")
            .nth(1)
            .unwrap()
            .split_whitespace()
            .next()
            .unwrap();
        server.addr = addr.parse().unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while get(server.addr, "/health").map(|r| r.status) != Some(200) {
            assert!(
                Instant::now() < deadline,
                "never became ready: {:?}",
                server.seen
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        server.wait_for_log("meerkat serve ready");
        server
    }

    fn wait_for_log(&mut self, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(line) = self.seen.iter().find(|l| l.contains(needle)) {
                return line.clone();
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match self.log.recv_timeout(left) {
                Ok(line) => self.seen.push(line),
                Err(_) => panic!("no log line containing {needle:?}; got {:?}", self.seen),
            }
        }
    }

    fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    fn wait(&mut self) -> ExitStatus {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                // Collect the rest of the log for assertions.
                while let Ok(line) = self.log.recv_timeout(Duration::from_millis(200)) {
                    self.seen.push(line);
                }
                return status;
            }
            assert!(Instant::now() < deadline, "did not exit: {:?}", self.seen);
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct HttpResponse {
    status: u16,
    headers: String,
    body: String,
}

/// A plain HTTP/1.1 GET, so the tests depend on no HTTP client crate.
fn get(addr: SocketAddr, path: &str) -> Option<HttpResponse> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    read_response(&mut stream)
}

fn read_response(stream: &mut TcpStream) -> Option<HttpResponse> {
    let mut raw = String::new();
    stream.read_to_string(&mut raw).ok()?;
    let (head, body) = raw.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    Some(HttpResponse {
        status,
        headers: head.to_owned(),
        body: body.to_owned(),
    })
}

fn run(args: &[&str], cwd: &Path, env: &[(&str, &str)]) -> (i32, String, String) {
    let mut command = Command::new(BINARY);
    command.args(args).current_dir(cwd);
    for (key, value) in env {
        command.env(key, value);
    }
    let out = command.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn serve_defaults_keep_data_under_dot_data_and_stop_cleanly_on_sigterm() {
    let cwd = tempfile::tempdir().unwrap();
    // No file and no flags; only the port is moved off 9797 so tests can run side by side.
    let mut server = Server::start(cwd.path(), &[], &[("MEERKAT_HTTP_LISTEN", "127.0.0.1:0")]);
    assert!(
        cwd.path()
            .join("data/bus/topics/metrics/topic.json")
            .exists(),
        "the bus lives under ./data"
    );

    let metrics = get(server.addr, "/metrics").unwrap();
    assert_eq!(metrics.status, 200);
    assert!(
        metrics
            .headers
            .to_ascii_lowercase()
            .contains("application/openmetrics-text"),
        "{}",
        metrics.headers
    );
    for family in [
        "meerkat_build_info{",
        "process_resident_memory_bytes ",
        "meerkat_bus_segments{topic=\"metrics\",partition=\"0\"} 1",
        "meerkat_bus_high_watermark{topic=\"events\",partition=\"3\"} 0",
        "meerkat_http_requests_total{handler=\"/health\"",
    ] {
        assert!(
            metrics.body.contains(family),
            "missing {family} in\n{}",
            metrics.body
        );
    }

    server.signal("TERM");
    let status = server.wait();
    assert_eq!(status.code(), Some(0), "log: {:?}", server.seen);
    assert!(
        server.seen.iter().any(|l| l.contains("stopped cleanly")),
        "{:?}",
        server.seen
    );
}

#[test]
fn sigint_drains_a_request_in_flight_before_exiting() {
    let cwd = tempfile::tempdir().unwrap();
    let mut server = Server::start(cwd.path(), &["--http-listen", "127.0.0.1:0"], &[]);
    // A request whose headers are still arriving when the signal comes.
    let mut stream = TcpStream::connect(server.addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(stream, "GET /metrics HTTP/1.1\r\nHost: {}\r\n", server.addr).unwrap();
    stream.flush().unwrap();
    std::thread::sleep(Duration::from_millis(100));
    server.signal("INT");
    server.wait_for_log("shutting down");
    std::thread::sleep(Duration::from_millis(100));
    write!(stream, "Connection: close\r\n\r\n").unwrap();
    let response = read_response(&mut stream).expect("the in-flight request was answered");
    assert_eq!(response.status, 200);
    assert!(response.body.contains("meerkat_build_info"));
    assert_eq!(server.wait().code(), Some(0), "log: {:?}", server.seen);
    // New connections are refused once the server has stopped.
    assert!(get(server.addr, "/health").is_none());
}

#[test]
fn restart_reopens_the_same_bus() {
    let cwd = tempfile::tempdir().unwrap();
    let data = cwd.path().join("elsewhere");
    let data_arg = data.to_str().unwrap();
    for round in 0..2 {
        let mut server = Server::start(
            cwd.path(),
            &["--http-listen", "127.0.0.1:0", "--data-dir", data_arg],
            &[],
        );
        let created = server
            .seen
            .iter()
            .filter(|l| l.contains("created topic"))
            .count();
        assert_eq!(
            created,
            if round == 0 { 4 } else { 0 },
            "topics are created once: {:?}",
            server.seen
        );
        server.signal("TERM");
        assert_eq!(server.wait().code(), Some(0));
    }
    assert!(data.join("bus/topics/logs/0").is_dir());
}

#[test]
fn a_port_in_use_is_a_clear_error() {
    let cwd = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let (code, _, stderr) = run(&["serve", "--http-listen", &addr], cwd.path(), &[]);
    assert_eq!(code, 1);
    assert!(
        stderr.contains(&format!("cannot listen for HTTP on {addr}")),
        "{stderr}"
    );
}

#[test]
fn roles_not_built_yet_fail_clearly() {
    let cwd = tempfile::tempdir().unwrap();
    for role in [
        &["gateway"][..],
        &["ingest"],
        &["query"],
        &["alerting"],
        &["agent", "node"],
        &["agent", "cluster"],
    ] {
        let (code, _, stderr) = run(role, cwd.path(), &[]);
        assert_eq!(code, 69, "{role:?}: {stderr}");
        assert!(
            stderr.contains("not part of this build yet"),
            "{role:?}: {stderr}"
        );
    }
}

#[test]
fn config_check_and_print_show_the_effective_configuration() {
    let cwd = tempfile::tempdir().unwrap();
    std::fs::write(cwd.path().join("meerkat.yaml"), "bus:\n  partitions: 6\n").unwrap();
    let (code, stdout, stderr) = run(
        &["config", "check"],
        cwd.path(),
        &[("MEERKAT_LOG__LEVEL", "debug")],
    );
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.contains("meerkat.yaml") && stdout.contains("MEERKAT_LOG__LEVEL"),
        "{stdout}"
    );

    let (code, stdout, _) = run(
        &["config", "print", "--data-dir", "/srv/meerkat"],
        cwd.path(),
        &[("MEERKAT_LOG__LEVEL", "debug")],
    );
    assert_eq!(code, 0);
    assert!(stdout.contains("partitions: 6"), "file: {stdout}");
    assert!(stdout.contains("level: debug"), "environment: {stdout}");
    assert!(stdout.contains("data_dir: /srv/meerkat"), "flag: {stdout}");

    std::fs::write(
        cwd.path().join("bad.yaml"),
        "bus:\n  partitions: 6\n  retention: 5\n",
    )
    .unwrap();
    let (code, _, stderr) = run(
        &["config", "check", "--config", "bad.yaml"],
        cwd.path(),
        &[],
    );
    assert_eq!(code, 1);
    assert!(
        stderr.contains("bad.yaml") && stderr.contains("bus.retention"),
        "{stderr}"
    );
}

#[test]
fn version_names_the_build() {
    let cwd = tempfile::tempdir().unwrap();
    let (code, stdout, _) = run(&["version"], cwd.path(), &[]);
    assert_eq!(code, 0);
    assert!(
        stdout.starts_with(&format!("meerkat {}", env!("CARGO_PKG_VERSION"))),
        "{stdout}"
    );
}
