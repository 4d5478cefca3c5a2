//! Helpers shared by the end-to-end tests: start the real `meerkat` binary, talk HTTP to
//! it without an HTTP client crate, and stop it with signals.

#![allow(clippy::unwrap_used, dead_code)] // test code; not every test file uses every helper

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub const BINARY: &str = env!("CARGO_BIN_EXE_meerkat");

/// A running `meerkat serve`, killed if the test ends without stopping it.
pub struct Server {
    pub child: Child,
    pub addr: SocketAddr,
    log: mpsc::Receiver<String>,
    pub seen: Vec<String>,
}

impl Server {
    /// Starts `meerkat serve` in `cwd` with `args` and waits until `/health` says ready.
    pub fn start(cwd: &Path, args: &[&str], env: &[(&str, &str)]) -> Self {
        Self::start_role("serve", cwd, args, env)
    }

    /// Starts `meerkat <role>` and waits until it is ready.
    pub fn start_role(role: &str, cwd: &Path, args: &[&str], env: &[(&str, &str)]) -> Self {
        let mut command = Command::new(BINARY);
        command
            .arg(role)
            .args(args)
            .current_dir(cwd)
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        // Tests run side by side: the OTLP ports move off their defaults too (flags given
        // in `args` still win).
        command
            .env("MEERKAT_OTLP_GRPC_LISTEN", "127.0.0.1:0")
            .env("MEERKAT_OTLP_HTTP_LISTEN", "127.0.0.1:0");
        // Tests count and compare the series they wrote: this machine's own metrics stay out
        // unless a test turns them on (`env` below wins).
        command.env("MEERKAT_HOST_METRICS__ENABLED", "false");
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
        server.wait_for_log(&format!("meerkat {role} ready"));
        server
    }

    pub fn wait_for_log(&mut self, needle: &str) -> String {
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

    /// Every log line so far (waits a moment for lines still on their way).
    pub fn log_lines(&mut self) -> &[String] {
        while let Ok(line) = self.log.recv_timeout(Duration::from_millis(100)) {
            self.seen.push(line);
        }
        &self.seen
    }

    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    pub fn wait(&mut self) -> ExitStatus {
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

pub struct HttpResponse {
    pub status: u16,
    pub headers: String,
    pub body: String,
}

/// A plain HTTP/1.1 GET, so the tests depend on no HTTP client crate.
pub fn get(addr: SocketAddr, path: &str) -> Option<HttpResponse> {
    get_with(addr, path, &[])
}

/// A plain HTTP/1.1 GET with extra headers.
#[allow(dead_code)] // not every test file sends headers
pub fn get_with(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Option<HttpResponse> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .ok()?;
    let extra: String = headers
        .iter()
        .map(|(name, value)| format!("{name}: {value}\r\n"))
        .collect();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n{extra}\r\n"
    )
    .ok()?;
    read_response(&mut stream)
}

/// A plain HTTP/1.1 POST with extra headers.
pub fn post(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Option<HttpResponse> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .ok()?;
    let mut head = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).ok()?;
    stream.write_all(body).ok()?;
    read_response(&mut stream)
}

pub fn read_response(stream: &mut TcpStream) -> Option<HttpResponse> {
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

pub fn run(args: &[&str], cwd: &Path, env: &[(&str, &str)]) -> (i32, String, String) {
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

/// A Prometheus server started by this test, stopped by its PID when dropped.
pub struct Prometheus {
    child: Child,
    pub addr: SocketAddr,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Prometheus {
    /// Starts Prometheus with `config` (a prometheus.yml) on a free port and waits until it
    /// is ready. Extra command-line arguments follow.
    pub fn start(dir: &Path, config: &str) -> Self {
        Self::start_with(dir, config, &[])
    }

    pub fn start_with(dir: &Path, config: &str, extra: &[&str]) -> Self {
        let config_path = dir.join("prometheus.yml");
        std::fs::write(&config_path, config).unwrap();
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("tsdb").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start prometheus ({e}); ./scripts/test installs it")
            });
        let prometheus = Self { child, addr };
        let deadline = Instant::now() + Duration::from_secs(30);
        while get(addr, "/-/ready").map(|r| r.status) != Some(200) {
            assert!(Instant::now() < deadline, "prometheus never became ready");
            std::thread::sleep(Duration::from_millis(100));
        }
        prometheus
    }

    /// Runs an instant query and returns the result vector.
    pub fn query(&self, promql: &str) -> Vec<serde_json::Value> {
        let json = self.api(&format!("/api/v1/query?query={}", url_encode(promql)));
        json["data"]["result"].as_array().unwrap().clone()
    }

    /// GETs an API path and returns the parsed JSON body.
    pub fn api(&self, path_and_query: &str) -> serde_json::Value {
        let response = get(self.addr, path_and_query).unwrap();
        assert_eq!(response.status, 200, "{}", response.body);
        // The body may be chunked; the JSON object is between the first '{' and the last '}'.
        let body =
            &response.body[response.body.find('{').unwrap()..=response.body.rfind('}').unwrap()];
        serde_json::from_str(body).unwrap()
    }

    /// Polls `promql` until its first result satisfies `accept` (scrapes arrive once a second).
    pub fn wait_for(&self, promql: &str, accept: impl Fn(f64) -> bool) -> f64 {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let result = self.query(promql);
            if let Some(v) = result.first().map(sample_value).filter(|v| accept(*v)) {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "{promql} never matched: {result:?}"
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// Stops Prometheus with SIGTERM (so it flushes remote-write queues) and waits.
    pub fn stop(mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.child.try_wait().unwrap().is_none() {
            assert!(Instant::now() < deadline, "prometheus did not stop");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

pub fn url_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' | b'.' | b'-' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The value of one instant-vector sample in a query result.
pub fn sample_value(sample: &serde_json::Value) -> f64 {
    sample["value"][1].as_str().unwrap().parse().unwrap()
}

/// A node_exporter started by a test on a free port, stopped by its PID when dropped.
pub struct NodeExporter {
    child: Child,
    pub addr: SocketAddr,
}

impl NodeExporter {
    pub fn start() -> Self {
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let child = Command::new("prometheus-node-exporter")
            .arg(format!("--web.listen-address={addr}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start node_exporter ({e}); ./scripts/test installs it")
            });
        let exporter = Self { child, addr };
        let deadline = Instant::now() + Duration::from_secs(30);
        while get(addr, "/metrics").map(|r| r.status) != Some(200) {
            assert!(Instant::now() < deadline, "node_exporter never answered");
            std::thread::sleep(Duration::from_millis(100));
        }
        exporter
    }
}

impl Drop for NodeExporter {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An instant vector: each series' labels and value.
pub type Vector = std::collections::BTreeMap<std::collections::BTreeMap<String, String>, f64>;

/// The vector of a `/api/v1/query` answer (Meerkat's or Prometheus's).
pub fn parse_vector(body: &str) -> Vector {
    let body = &body[body.find('{').unwrap()..=body.rfind('}').unwrap()];
    let json: serde_json::Value = serde_json::from_str(body).unwrap();
    assert_eq!(json["status"], "success", "{json}");
    json["data"]["result"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            let labels = s["metric"]
                .as_object()
                .unwrap()
                .iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_owned()))
                .collect();
            (labels, s["value"][1].as_str().unwrap().parse().unwrap())
        })
        .collect()
}

/// An instant query against the server at `addr`, now.
pub fn query_vector(addr: SocketAddr, promql: &str) -> Vector {
    let response = get(addr, &format!("/api/v1/query?query={}", url_encode(promql))).unwrap();
    assert_eq!(response.status, 200, "{}", response.body);
    parse_vector(&response.body)
}

/// Polls `done` every 250 ms for up to a minute; fails the test naming `what` after that.
pub fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// The rows (arrays of column values, in the SELECT's order) of `statement` as the server
/// at `addr` answers it on `/api/v1/sql`.
pub fn sql_rows(addr: SocketAddr, statement: &str) -> Vec<serde_json::Value> {
    let body = format!("query={}", url_encode(statement));
    let answer = post(
        addr,
        "/api/v1/sql",
        &[("Content-Type", "application/x-www-form-urlencoded")],
        body.as_bytes(),
    )
    .unwrap();
    assert_eq!(answer.status, 200, "{}", answer.body);
    let body: serde_json::Value = serde_json::from_str(&answer.body).unwrap();
    body["data"]["rows"].as_array().cloned().unwrap_or_default()
}

/// Answers every request on a free port of 127.0.0.1 with `body` as `content_type` (an
/// exporter's page, a kubelet's pod list); returns the port.
pub fn serve_fixed(body: Vec<u8>, content_type: &'static str) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut line = String::new();
            while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
                line.clear();
            }
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = stream.write_all(head.as_bytes());
            let _ = stream.write_all(&body);
        }
    });
    port
}

/// The value of `name` (a series without labels) on an agent's own `/metrics` at `port`.
pub fn agent_metric(port: u16, name: &str) -> f64 {
    let page = get(SocketAddr::from(([127, 0, 0, 1], port)), "/metrics").unwrap();
    assert_eq!(page.status, 200);
    page.body
        .lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{name} not on the agent's page:\n{}", page.body))
}
