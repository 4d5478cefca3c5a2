//! Helpers shared by the end-to-end tests: start the real `meerkat` binary, talk HTTP to
//! it without an HTTP client crate, and stop it with signals.

#![allow(clippy::unwrap_used, dead_code)] // test code; not every test file uses every helper

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
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
