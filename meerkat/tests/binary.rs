//! End-to-end tests of the `meerkat` binary: start it as users do, talk to it over HTTP, and
//! stop it with signals.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::time::Duration;

use common::{Server, get, read_response, run};

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
fn lone_query_and_alerting_roles_on_the_embedded_store_are_refused_with_the_reason() {
    let cwd = tempfile::tempdir().unwrap();
    for role in ["query", "alerting"] {
        let (code, _, stderr) = run(&[role, "--http-listen", "127.0.0.1:0"], cwd.path(), &[]);
        assert_eq!(code, 1, "{stderr}");
        assert!(
            stderr.contains(&format!(
                "meerkat {role} reads ClickHouse (storage.engine: clickhouse)"
            )),
            "{stderr}"
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

#[test]
fn the_gateway_role_runs_on_its_own() {
    let cwd = tempfile::tempdir().unwrap();
    let mut gateway = Server::start_role(
        "gateway",
        cwd.path(),
        &["--http-listen", "127.0.0.1:0"],
        &[],
    );
    let influx = common::post(
        gateway.addr,
        "/api/v2/write",
        &[],
        b"temp,room=hall value=20.5",
    );
    assert_eq!(influx.map(|r| r.status), Some(204));
    gateway.signal("TERM");
    assert_eq!(gateway.wait().code(), Some(0), "{:?}", gateway.seen);
    assert!(
        gateway
            .seen
            .iter()
            .any(|l| l.contains("meerkat gateway starting"))
    );
}
