//! The real services Meerkat's tests and benchmarks run against, each started as a child
//! process on free ports of 127.0.0.1 with a data directory of its own, and stopped by the
//! PID it was started with when dropped. Tests never assume a service is already up;
//! `./scripts/install-peers` installs the programs.
//!
//! A dev-dependency only: nothing in the product links it.

pub mod kube_api;

use std::fs::File;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// A port of 127.0.0.1 free right now (the service binds it moments later; tests on one
/// machine pick ports the kernel hands out, so collisions need a race with another binder).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .unwrap_or_else(|error| panic!("no free port on 127.0.0.1: {error}"))
}

/// Finds `program` on `PATH` or in the directories Debian packages and `cargo install` use.
pub fn find_program(program: &str) -> Option<PathBuf> {
    let cargo_bin = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cargo")))
        .map(|home| home.join("bin"));
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(cargo_bin)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/bin")])
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
}

/// Stops a child: SIGTERM to its PID, SIGKILL if it is still there after `patience`.
fn stop(child: &mut Child, patience: Duration) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let deadline = Instant::now() + patience;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}

fn output_file(path: &Path) -> File {
    File::create(path).unwrap_or_else(|e| panic!("cannot create {}: {e}", path.display()))
}

/// A plain HTTP/1.0 GET; `None` if the server does not answer (yet).
fn http_get(port: u16, path: &str) -> Option<String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    Some(response)
}

/// A `clickhouse-server` (the Debian package: 18.16 here) of its own.
#[derive(Debug)]
pub struct ClickHouseServer {
    child: Child,
    http_port: u16,
    dir: TempDir,
}

impl ClickHouseServer {
    /// Starts a server and waits (up to a minute) until its HTTP interface answers.
    pub fn start() -> Self {
        let binary = find_program("clickhouse-server").unwrap_or_else(|| {
            panic!(
                "clickhouse-server is not installed: run ./scripts/install-peers, which installs \
                 the Debian packages clickhouse-server and clickhouse-client"
            )
        });
        let dir = TempDir::new().unwrap_or_else(|e| panic!("no temporary directory: {e}"));
        let root = dir.path();
        let (http_port, tcp_port) = (free_port(), free_port());
        let data = root.join("data");
        let written = std::fs::create_dir_all(&data)
            .and_then(|()| {
                std::fs::write(
                    root.join("config.xml"),
                    server_config(root, &data, http_port, tcp_port),
                )
            })
            .and_then(|()| std::fs::write(root.join("users.xml"), USERS_CONFIG));
        if let Err(error) = written {
            panic!("cannot write ClickHouse's configuration: {error}");
        }
        let child = Command::new(&binary)
            .arg(format!(
                "--config-file={}",
                root.join("config.xml").display()
            ))
            .current_dir(root)
            .stdin(Stdio::null())
            .stdout(output_file(&root.join("stdout.log")))
            .stderr(output_file(&root.join("stderr.log")))
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", binary.display()));
        let mut server = Self {
            child,
            http_port,
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if http_get(http_port, "/ping").is_some_and(|r| r.ends_with("Ok.\n")) {
                return server;
            }
            if let Ok(Some(status)) = server.child.try_wait() {
                panic!(
                    "clickhouse-server exited ({status}) before answering: {}",
                    server.logs()
                );
            }
            assert!(
                Instant::now() < deadline,
                "clickhouse-server did not answer /ping within 60 s: {}",
                server.logs()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Its HTTP interface, `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.http_port)
    }

    pub fn http_port(&self) -> u16 {
        self.http_port
    }

    /// The server's process id (for CPU accounting in benchmarks).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The server's directory (configuration, logs, `data/`).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Its standard error and error log, for a failing test's message.
    pub fn logs(&self) -> String {
        let read =
            |name: &str| std::fs::read_to_string(self.dir.path().join(name)).unwrap_or_default();
        format!(
            "stderr: {}\nerror log: {}",
            read("stderr.log"),
            read("server.err.log")
        )
    }

    /// Runs one SQL statement over HTTP and returns the response body (`Err` with the
    /// server's message when it refuses it).
    pub fn sql(&self, statement: &str) -> Result<String, String> {
        let mut stream =
            TcpStream::connect(("127.0.0.1", self.http_port)).map_err(|e| e.to_string())?;
        stream
            .set_read_timeout(Some(Duration::from_secs(60)))
            .map_err(|e| e.to_string())?;
        write!(
            stream,
            "POST / HTTP/1.0\r\nHost: 127.0.0.1\r\nContent-Length: {}\r\n\r\n{statement}",
            statement.len()
        )
        .map_err(|e| e.to_string())?;
        let mut response = String::new();
        stream
            .read_to_string(&mut response)
            .map_err(|e| e.to_string())?;
        let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
        if head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200") {
            Ok(body.to_owned())
        } else {
            Err(body.to_owned())
        }
    }
}

impl Drop for ClickHouseServer {
    fn drop(&mut self) {
        stop(&mut self.child, Duration::from_secs(10));
    }
}

fn server_config(root: &Path, data: &Path, http_port: u16, tcp_port: u16) -> String {
    format!(
        r#"<?xml version="1.0"?>
<yandex>
  <logger>
    <level>warning</level>
    <log>{root}/server.log</log>
    <errorlog>{root}/server.err.log</errorlog>
    <size>10M</size>
    <count>1</count>
  </logger>
  <listen_host>127.0.0.1</listen_host>
  <http_port>{http_port}</http_port>
  <tcp_port>{tcp_port}</tcp_port>
  <path>{data}/</path>
  <tmp_path>{data}/tmp/</tmp_path>
  <user_files_path>{data}/user_files/</user_files_path>
  <format_schema_path>{data}/format_schemas/</format_schema_path>
  <mark_cache_size>67108864</mark_cache_size>
  <uncompressed_cache_size>67108864</uncompressed_cache_size>
  <max_concurrent_queries>100</max_concurrent_queries>
  <keep_alive_timeout>3</keep_alive_timeout>
  <timezone>UTC</timezone>
  <default_profile>default</default_profile>
  <default_database>default</default_database>
  <users_config>users.xml</users_config>
</yandex>
"#,
        root = root.display(),
        data = data.display(),
    )
}

const USERS_CONFIG: &str = r#"<?xml version="1.0"?>
<yandex>
  <profiles><default><max_memory_usage>2000000000</max_memory_usage></default></profiles>
  <users>
    <default>
      <password></password>
      <networks><ip>127.0.0.1</ip></networks>
      <profile>default</profile>
      <quota>default</quota>
    </default>
  </users>
  <quotas><default><interval><duration>3600</duration><queries>0</queries><errors>0</errors><result_rows>0</result_rows><read_rows>0</read_rows><execution_time>0</execution_time></interval></default></quotas>
</yandex>
"#;

/// A Kafka-protocol broker (Tansu) of its own.
///
/// Storage is Tansu's SQLite engine unless `BUS_TANSU_STORAGE` names another: its default
/// S3/memory engine ("dynostore") reports the high watermark of a partition whose last
/// batch holds several records as that batch's base offset + 1, and a fetch from inside a
/// batch skips the whole batch, so replay from the middle loses records. SQLite answers
/// both as Kafka does.
#[derive(Debug)]
pub struct KafkaBroker {
    child: Child,
    address: SocketAddr,
    log: PathBuf,
    _dir: TempDir,
}

impl KafkaBroker {
    /// Starts a broker and waits (up to 30 s) until it listens.
    pub fn start() -> Self {
        let binary = find_program("tansu").unwrap_or_else(|| {
            panic!(
                "the Kafka-compatible broker `tansu` is not installed: run ./scripts/install-peers \
                 (cargo install tansu --locked --features dynostore,libsql)"
            )
        });
        let storage =
            std::env::var("BUS_TANSU_STORAGE").unwrap_or_else(|_| "sqlite://tansu.db".to_owned());
        let dir = TempDir::new().unwrap_or_else(|e| panic!("no temporary directory: {e}"));
        let log = dir.path().join("tansu.log");
        let port = free_port();
        let url = format!("tcp://127.0.0.1:{port}");
        let output = output_file(&log);
        let stderr = output
            .try_clone()
            .unwrap_or_else(|e| panic!("cannot share the broker's log file: {e}"));
        let child = Command::new(&binary)
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
            ])
            .args(["--storage-engine", &storage])
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(output)
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", binary.display()));
        let mut broker = Self {
            child,
            address: SocketAddr::from(([127, 0, 0, 1], port)),
            log,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = broker.child.try_wait() {
                panic!(
                    "tansu exited ({status}) before listening:\n{}",
                    broker.output()
                );
            }
            if TcpStream::connect_timeout(&broker.address, Duration::from_millis(200)).is_ok() {
                return broker;
            }
            assert!(
                Instant::now() < deadline,
                "tansu did not listen on {} within 30 s:\n{}",
                broker.address,
                broker.output()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `host:port` of its listener: the bootstrap broker list.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// The broker's process id (for CPU accounting in benchmarks).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What the broker printed.
    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for KafkaBroker {
    fn drop(&mut self) {
        // Nothing to keep: SIGKILL by PID, then reap.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A Prometheus 2.42 server (the Debian package) of its own: a config file, a TSDB in a
/// temporary directory, a free port.
#[derive(Debug)]
pub struct PrometheusServer {
    child: Child,
    port: u16,
    log: PathBuf,
    _dir: TempDir,
}

impl PrometheusServer {
    /// Starts Prometheus with `config` (a prometheus.yml) and `extra` flags, and waits (up to
    /// 30 s) until `/-/ready` answers 200.
    pub fn start(config: &str, extra: &[&str]) -> Self {
        let binary = find_program("prometheus")
            .unwrap_or_else(|| panic!("prometheus is not installed: run ./scripts/install-peers"));
        let dir = TempDir::new().unwrap_or_else(|e| panic!("no temporary directory: {e}"));
        let config_path = dir.path().join("prometheus.yml");
        std::fs::write(&config_path, config)
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", config_path.display()));
        let port = free_port();
        let log = dir.path().join("prometheus.log");
        let output = output_file(&log);
        let stderr = output
            .try_clone()
            .unwrap_or_else(|e| panic!("cannot share Prometheus's log file: {e}"));
        let child = Command::new(&binary)
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("tsdb").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .args(extra)
            .stdin(Stdio::null())
            .stdout(output)
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", binary.display()));
        let mut server = Self {
            child,
            port,
            log,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = server.child.try_wait() {
                panic!("prometheus exited ({status}):\n{}", server.output());
            }
            if server
                .get("/-/ready")
                .is_some_and(|(status, _)| status == 200)
            {
                return server;
            }
            assert!(
                Instant::now() < deadline,
                "prometheus was not ready within 30 s:\n{}",
                server.output()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// GETs `path_and_query`: the status and the body, `None` if Prometheus does not answer.
    pub fn get(&self, path_and_query: &str) -> Option<(u16, String)> {
        let response = http_get(self.port, path_and_query)?;
        let status = response.split(' ').nth(1)?.parse().ok()?;
        let body = response
            .split_once("\r\n\r\n")
            .map(|(_, body)| body.to_owned())
            .unwrap_or_default();
        Some((status, body))
    }

    /// What Prometheus logged.
    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for PrometheusServer {
    fn drop(&mut self) {
        stop(&mut self.child, Duration::from_secs(10));
    }
}

/// A node_exporter (the Debian package `prometheus-node-exporter`, 1.5 here) of its own on a
/// free port, with `flags` added to its command line.
#[derive(Debug)]
pub struct NodeExporter {
    child: Child,
    port: u16,
}

impl NodeExporter {
    /// Starts it and waits (up to 30 s) until `/metrics` answers.
    pub fn start(flags: &[&str]) -> Self {
        let binary = find_program("prometheus-node-exporter")
            .or_else(|| find_program("node_exporter"))
            .unwrap_or_else(|| {
                panic!("node_exporter is not installed: run ./scripts/install-peers")
            });
        let port = free_port();
        let child = Command::new(&binary)
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .args(flags)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", binary.display()));
        let mut exporter = Self { child, port };
        let deadline = Instant::now() + Duration::from_secs(30);
        while exporter.metrics().is_none() {
            if let Ok(Some(status)) = exporter.child.try_wait() {
                panic!("node_exporter exited ({status})");
            }
            assert!(Instant::now() < deadline, "node_exporter never answered");
            std::thread::sleep(Duration::from_millis(100));
        }
        exporter
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Its `/metrics` page, `None` if it does not answer 200.
    pub fn metrics(&self) -> Option<String> {
        let response = http_get(self.port, "/metrics")?;
        let (head, body) = response.split_once("\r\n\r\n")?;
        head.starts_with("HTTP/1.0 200")
            .then(|| body.to_owned())
            .or_else(|| head.starts_with("HTTP/1.1 200").then(|| body.to_owned()))
    }
}

impl Drop for NodeExporter {
    fn drop(&mut self) {
        stop(&mut self.child, Duration::from_secs(5));
    }
}
