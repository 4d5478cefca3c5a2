//! The tailer end to end: real files in a temporary root, a local HTTP server decoding the
//! OTLP requests in the gateway's place. (An end-to-end test against `meerkat serve` belongs
//! in `meerkat/tests` once the node agent is wired into the binary.)

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::http::StatusCode;
use axum::routing::post;
use bytes::Bytes;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use prost::Message;

use super::*;

/// One record as the receiver decoded it.
#[derive(Clone, Debug)]
struct Got {
    body: String,
    resource: HashMap<String, String>,
    attributes: HashMap<String, String>,
    time: u64,
    observed: u64,
}

fn text(value: &Option<opentelemetry_proto::tonic::common::v1::AnyValue>) -> String {
    match value.as_ref().and_then(|v| v.value.as_ref()) {
        Some(Value::StringValue(s)) => s.clone(),
        Some(Value::IntValue(i)) => i.to_string(),
        Some(Value::BoolValue(b)) => b.to_string(),
        other => format!("{other:?}"),
    }
}

#[derive(Clone)]
struct Receiver {
    url: String,
    got: Arc<Mutex<Vec<Got>>>,
    attempts: Arc<AtomicUsize>,
}

impl Receiver {
    fn bodies(&self) -> Vec<String> {
        self.got
            .lock()
            .expect("lock")
            .iter()
            .map(|g| g.body.clone())
            .collect()
    }

    fn count(&self) -> usize {
        self.got.lock().expect("lock").len()
    }
}

/// A stand-in gateway answering `status(n)` to its n-th request, keeping what it took.
async fn receiver(status: impl Fn(usize) -> StatusCode + Send + Sync + 'static) -> Receiver {
    let got = Arc::new(Mutex::new(Vec::new()));
    let attempts = Arc::new(AtomicUsize::new(0));
    let status = Arc::new(status);
    let (g, a) = (got.clone(), attempts.clone());
    let app = Router::new().route(
        "/v1/logs",
        post(move |headers: axum::http::HeaderMap, body: Bytes| {
            let (g, a, status) = (g.clone(), a.clone(), status.clone());
            async move {
                let code = status(a.fetch_add(1, Ordering::SeqCst));
                assert_eq!(headers["content-type"], "application/x-protobuf");
                assert_eq!(headers["content-encoding"], "snappy");
                assert_eq!(headers["authorization"], "Bearer t0ken");
                if code.is_success() {
                    let raw = snap::raw::Decoder::new()
                        .decompress_vec(&body)
                        .expect("snappy");
                    let request = ExportLogsServiceRequest::decode(&raw[..]).expect("protobuf");
                    let mut got = g.lock().expect("lock");
                    for resource_logs in request.resource_logs {
                        let resource: HashMap<String, String> = resource_logs
                            .resource
                            .map(|r| r.attributes)
                            .unwrap_or_default()
                            .iter()
                            .map(|kv| (kv.key.clone(), text(&kv.value)))
                            .collect();
                        for scope in resource_logs.scope_logs {
                            for record in scope.log_records {
                                got.push(Got {
                                    body: text(&record.body),
                                    resource: resource.clone(),
                                    attributes: record
                                        .attributes
                                        .iter()
                                        .map(|kv| (kv.key.clone(), text(&kv.value)))
                                        .collect(),
                                    time: record.time_unix_nano,
                                    observed: record.observed_time_unix_nano,
                                });
                            }
                        }
                    }
                }
                code
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, app).await });
    Receiver { url, got, attempts }
}

struct Node {
    root: tempfile::TempDir,
    state: tempfile::TempDir,
}

impl Node {
    fn new() -> Self {
        Self {
            root: tempfile::tempdir().expect("tempdir"),
            state: tempfile::tempdir().expect("tempdir"),
        }
    }

    fn container_dir(&self, pod: &str, container: &str) -> PathBuf {
        let dir = self
            .root
            .path()
            .join("var/log/pods")
            .join(format!("default_{pod}_1234-abcd"))
            .join(container);
        std::fs::create_dir_all(&dir).expect("mkdir");
        dir
    }

    fn options(&self, gateway: &Receiver) -> LogTailOptions {
        LogTailOptions {
            root: self.root.path().to_path_buf(),
            headers: vec![("authorization".into(), "Bearer t0ken".into())],
            poll_interval: Duration::from_millis(50),
            flush_interval: Duration::from_millis(30),
            min_backoff: Duration::from_millis(10),
            max_backoff: Duration::from_millis(40),
            rotated_idle: Duration::from_millis(300),
            request_timeout: Duration::from_secs(5),
            ..LogTailOptions::new(&gateway.url, self.state.path())
        }
    }
}

fn cri(content: &str) -> String {
    format!("2024-05-01T10:00:00.000000001Z stdout F {content}\n")
}

fn append(path: &Path, text: &str) {
    let mut file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .expect("open");
    file.write_all(text.as_bytes()).expect("write");
}

fn lines(prefix: &str, range: std::ops::Range<usize>) -> String {
    range.map(|i| cri(&format!("{prefix}-{i}"))).collect()
}

fn names(prefix: &str, range: std::ops::Range<usize>) -> Vec<String> {
    range.map(|i| format!("{prefix}-{i}")).collect()
}

async fn until(what: &str, done: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while !done() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The bodies starting with `prefix-`, in arrival order.
fn only(bodies: &[String], prefix: &str) -> Vec<String> {
    let start = format!("{prefix}-");
    bodies
        .iter()
        .filter(|b| b.starts_with(&start))
        .cloned()
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lines_arrive_with_their_container_and_pod_attributes() {
    let gateway = receiver(|_| StatusCode::OK).await;
    let node = Node::new();
    let dir = node.container_dir("web-7d4b9", "nginx");
    append(
        &dir.join("2.log"),
        &format!(
            "{}{}{}",
            "2024-05-01T10:00:00Z stdout P hel\n",
            "2024-05-01T10:00:00Z stdout F lo\n",
            "2024-05-01T10:00:01Z stderr F boom\n"
        ),
    );
    append(
        &dir.join("2.log"),
        "{\"log\":\"from docker\\n\",\"stream\":\"stdout\",\"time\":\"2024-05-01T10:00:02Z\"}\nrandom garbage\n",
    );
    let lookup: PodAttributes = Arc::new(|pod: &PodLogRef| {
        vec![
            ("service.name".to_owned(), format!("svc-{}", pod.container)),
            ("k8s.pod.name".to_owned(), "overridden?".to_owned()),
        ]
    });
    let options = LogTailOptions {
        pod_attributes: Some(lookup),
        ..node.options(&gateway)
    };
    let tailer = LogTailer::start(options).expect("start");
    until("four records", || gateway.count() == 4).await;
    let got = gateway.got.lock().expect("lock").clone();
    let bodies: Vec<_> = got.iter().map(|g| g.body.as_str()).collect();
    assert_eq!(bodies, ["hello", "boom", "from docker", "random garbage"]);
    let resource = &got[0].resource;
    assert_eq!(resource["k8s.namespace.name"], "default");
    assert_eq!(resource["k8s.pod.name"], "web-7d4b9");
    assert_eq!(resource["k8s.pod.uid"], "1234-abcd");
    assert_eq!(resource["k8s.container.name"], "nginx");
    assert_eq!(resource["k8s.container.restart_count"], "2");
    assert_eq!(resource["service.name"], "svc-nginx");
    assert!(resource["log.file.path"].ends_with("nginx/2.log"));
    assert_eq!(got[0].attributes["log.iostream"], "stdout");
    assert_eq!(got[1].attributes["log.iostream"], "stderr");
    assert!(!got[3].attributes.contains_key("log.iostream"));
    assert_eq!(got[0].time, 1_714_557_600_000_000_000);
    assert_eq!(got[3].time, 0);
    assert!(got[3].observed > 1_714_557_600_000_000_000);
    let stats = tailer.stop().await.expect("stop");
    assert_eq!((stats.lines_read, stats.lines_shipped), (4, 4));
    assert_eq!(stats.bytes_behind, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_is_followed_through_the_old_inode() {
    let gateway = receiver(|_| StatusCode::OK).await;
    let node = Node::new();
    let dir = node.container_dir("app", "main");
    let live = dir.join("0.log");
    append(&live, &lines("a", 0..50));
    let tailer = LogTailer::start(node.options(&gateway)).expect("start");
    until("the first lines", || gateway.count() == 50).await;
    // The runtime keeps its descriptor on the old inode for a moment after the rename.
    let mut old = OpenOptions::new().append(true).open(&live).expect("open");
    std::fs::rename(&live, dir.join("0.log.20240501-101112")).expect("rename");
    old.write_all(lines("a", 50..60).as_bytes()).expect("write");
    append(&live, &lines("b", 0..30));
    old.write_all(lines("a", 60..70).as_bytes()).expect("write");
    drop(old);
    append(&live, &lines("b", 30..40));
    until("every line", || gateway.count() == 110).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let bodies = gateway.bodies();
    assert_eq!(bodies.len(), 110, "nothing twice");
    assert_eq!(only(&bodies, "a"), names("a", 0..70));
    assert_eq!(only(&bodies, "b"), names("b", 0..40));
    let paths: Vec<String> = gateway
        .got
        .lock()
        .expect("lock")
        .iter()
        .filter(|g| g.body == "a-65")
        .map(|g| g.resource["log.file.path"].clone())
        .collect();
    assert!(paths[0].ends_with("0.log.20240501-101112"), "{paths:?}");
    // The kubelet compresses and deletes the rotated file: it is forgotten.
    std::fs::remove_file(dir.join("0.log.20240501-101112")).expect("rm");
    until("one file left", || tailer.stats().files == 1).await;
    tailer.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copytruncate_starts_the_file_again() {
    let gateway = receiver(|_| StatusCode::OK).await;
    let node = Node::new();
    let live = node.container_dir("app", "main").join("0.log");
    append(&live, &lines("before", 0..40));
    let tailer = LogTailer::start(node.options(&gateway)).expect("start");
    until("the first lines", || gateway.count() == 40).await;
    OpenOptions::new()
        .write(true)
        .open(&live)
        .expect("open")
        .set_len(0)
        .expect("truncate");
    append(&live, &lines("after", 0..5));
    until("the new lines", || gateway.count() == 45).await;
    // Truncated and then written past the old offset before the next look: the changed
    // first bytes tell it apart.
    File::create(&live).expect("truncate");
    append(&live, &lines("again", 0..100));
    until("the rewritten file", || gateway.count() == 145).await;
    let bodies = gateway.bodies();
    assert_eq!(only(&bodies, "after"), names("after", 0..5));
    assert_eq!(only(&bodies, "again"), names("again", 0..100));
    tailer.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_containers_are_found_and_removed_pods_forgotten() {
    let gateway = receiver(|_| StatusCode::OK).await;
    let node = Node::new();
    std::fs::create_dir_all(node.root.path().join("var/log/pods")).expect("mkdir");
    let tailer = LogTailer::start(node.options(&gateway)).expect("start");
    tokio::time::sleep(Duration::from_millis(100)).await;
    let first = node.container_dir("one", "c").join("0.log");
    append(&first, &lines("one", 0..10));
    until("the first pod", || gateway.count() == 10).await;
    let second = node.container_dir("two", "c").join("0.log");
    append(&second, &lines("two", 0..10));
    until("the second pod", || gateway.count() == 20).await;
    assert_eq!(tailer.stats().files, 2);
    std::fs::remove_dir_all(first.parent().and_then(Path::parent).expect("pod dir")).expect("rm");
    until("the pod forgotten", || tailer.stats().files == 1).await;
    append(&second, &lines("two", 10..15));
    until("more lines", || gateway.count() == 25).await;
    assert_eq!(only(&gateway.bodies(), "two"), names("two", 0..15));
    tailer.stop().await.expect("stop");
    let checkpoint =
        std::fs::read_to_string(node.state.path().join("logs-checkpoint.json")).expect("read");
    assert!(!checkpoint.contains("one_"), "{checkpoint}");
    assert!(checkpoint.contains("two_"), "{checkpoint}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_neither_loses_nor_repeats_lines() {
    let gateway = receiver(|_| StatusCode::OK).await;
    let node = Node::new();
    let live = node.container_dir("app", "main").join("0.log");
    append(&live, &lines("x", 0..100));
    // A split line still waiting for its end when the agent stops.
    append(&live, "2024-05-01T10:00:00Z stdout P split \n");
    let tailer = LogTailer::start(node.options(&gateway)).expect("start");
    until("the first lines", || gateway.count() == 100).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    tailer.stop().await.expect("stop");
    append(&live, "2024-05-01T10:00:00Z stdout F line\n");
    append(&live, &lines("x", 100..150));
    let tailer = LogTailer::start(node.options(&gateway)).expect("start");
    until("the rest", || gateway.count() == 151).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let bodies = gateway.bodies();
    assert_eq!(bodies.len(), 151, "nothing twice");
    assert_eq!(only(&bodies, "x"), names("x", 0..150));
    assert_eq!(bodies[100], "split line");
    tailer.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_down_for_a_while_loses_nothing() {
    // Fifteen 503s (with the files growing meanwhile), then it takes everything.
    let gateway = receiver(|n| {
        if n < 15 {
            StatusCode::SERVICE_UNAVAILABLE
        } else {
            StatusCode::OK
        }
    })
    .await;
    let node = Node::new();
    let a = node.container_dir("app", "a").join("0.log");
    let b = node.container_dir("app", "b").join("0.log");
    let options = LogTailOptions {
        max_batch_lines: 50,
        ..node.options(&gateway)
    };
    let tailer = LogTailer::start(options).expect("start");
    for round in 0..10 {
        append(&a, &lines("a", round * 30..(round + 1) * 30));
        append(&b, &lines("b", round * 20..(round + 1) * 20));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    until("everything", || gateway.count() == 500).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let bodies = gateway.bodies();
    assert_eq!(bodies.len(), 500, "nothing twice");
    assert_eq!(only(&bodies, "a"), names("a", 0..300));
    assert_eq!(only(&bodies, "b"), names("b", 0..200));
    let stats = tailer.stop().await.expect("stop");
    assert!(stats.batches_retried >= 15, "{stats:?}");
    assert_eq!((stats.lines_shipped, stats.lines_dropped), (500, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_gateway_bounds_what_is_read_ahead() {
    // Nothing listens on this port.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let gateway = Receiver {
        url: format!("http://127.0.0.1:{port}"),
        got: Arc::default(),
        attempts: Arc::default(),
    };
    let node = Node::new();
    let live = node.container_dir("app", "main").join("0.log");
    append(&live, &lines("x", 0..20_000));
    let options = LogTailOptions {
        max_inflight_bytes: 64 << 10,
        ..node.options(&gateway)
    };
    let tailer = LogTailer::start(options).expect("start");
    until("a retry", || tailer.stats().batches_retried >= 2).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let stats = tailer.stats();
    // 64 KiB of lines at ~70 bytes each (plus one read step past the bound).
    assert!(stats.lines_read < 3_000, "{stats:?}");
    let size = std::fs::metadata(&live).expect("stat").len();
    assert!(stats.bytes_behind >= size / 2, "{stats:?} of {size}");
    let stats = tailer.stop().await.expect("stop");
    assert_eq!(stats.lines_shipped, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_batch_is_dropped_and_counted() {
    let gateway = receiver(|n| {
        if n == 0 {
            StatusCode::BAD_REQUEST
        } else {
            StatusCode::OK
        }
    })
    .await;
    let node = Node::new();
    let live = node.container_dir("app", "main").join("0.log");
    append(&live, &lines("poison", 0..5));
    let tailer = LogTailer::start(node.options(&gateway)).expect("start");
    until("the refusal", || tailer.stats().batches_dropped == 1).await;
    append(&live, &lines("later", 0..5));
    until("later lines", || gateway.count() == 5).await;
    assert_eq!(gateway.bodies(), names("later", 0..5));
    let stats = tailer.stop().await.expect("stop");
    assert_eq!(stats.lines_dropped, 5);
    assert!(gateway.attempts.load(Ordering::SeqCst) >= 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_line_arrives_in_capped_pieces() {
    let gateway = receiver(|_| StatusCode::OK).await;
    let node = Node::new();
    let live = node.container_dir("app", "main").join("0.log");
    let piece = "z".repeat(16 << 10);
    let mut text = String::new();
    for _ in 0..40 {
        text.push_str(&format!("2024-05-01T10:00:00Z stdout P {piece}\n"));
    }
    text.push_str(&cri("end"));
    text.push_str(&cri("next"));
    append(&live, &text);
    let options = LogTailOptions {
        max_line_bytes: 100 << 10,
        ..node.options(&gateway)
    };
    let tailer = LogTailer::start(options).expect("start");
    until("the next line", || {
        gateway.bodies().last().is_some_and(|b| b == "next")
    })
    .await;
    let got = gateway.got.lock().expect("lock").clone();
    let total: usize = got[..got.len() - 1].iter().map(|g| g.body.len()).sum();
    assert_eq!(total, 40 * piece.len() + 3);
    assert!(got.iter().all(|g| g.body.len() <= 100 << 10));
    assert!(got.len() >= 7, "{} pieces", got.len());
    assert_eq!(got[0].attributes["log.truncated"], "true");
    assert!(!got[got.len() - 1].attributes.contains_key("log.truncated"));
    tailer.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_url_or_damaged_checkpoint_is_refused_at_start() {
    let node = Node::new();
    let gateway = Receiver {
        url: "ftp://x".into(),
        got: Arc::default(),
        attempts: Arc::default(),
    };
    let error = LogTailer::start(node.options(&gateway)).expect_err("ftp");
    assert!(error.to_string().contains("only http://"), "{error}");
    std::fs::write(node.state.path().join("logs-checkpoint.json"), "[").expect("write");
    let gateway = receiver(|_| StatusCode::OK).await;
    let error = LogTailer::start(node.options(&gateway)).expect_err("damaged");
    assert!(error.to_string().contains("damaged"), "{error}");
}

mod exactly_once {
    use super::*;
    use proptest::prelude::*;

    #[derive(Clone, Debug)]
    enum Action {
        Write {
            file: usize,
            lines: usize,
        },
        /// The first piece of a split line (CRI `P`); its end comes with the next write.
        Split {
            file: usize,
        },
        Rotate {
            file: usize,
        },
        /// copytruncate, once everything written so far arrived (what is written and
        /// truncated before it is read is lost by any tailer).
        Truncate {
            file: usize,
        },
        Restart,
        /// The gateway answers 503 to this many requests.
        Outage {
            requests: usize,
        },
    }

    fn action() -> impl Strategy<Value = Action> {
        prop_oneof![
            5 => (0..2usize, 1..40usize).prop_map(|(file, lines)| Action::Write { file, lines }),
            2 => (0..2usize).prop_map(|file| Action::Split { file }),
            2 => (0..2usize).prop_map(|file| Action::Rotate { file }),
            1 => (0..2usize).prop_map(|file| Action::Truncate { file }),
            2 => Just(Action::Restart),
            1 => (1..6usize).prop_map(|requests| Action::Outage { requests }),
        ]
    }

    async fn play(actions: Vec<Action>) -> Result<(), TestCaseError> {
        let failing = Arc::new(AtomicUsize::new(0));
        let f = failing.clone();
        let gateway = receiver(move |_| {
            let fail = f
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok();
            if fail {
                StatusCode::SERVICE_UNAVAILABLE
            } else {
                StatusCode::OK
            }
        })
        .await;
        let node = Node::new();
        let dirs = [node.container_dir("p", "c0"), node.container_dir("p", "c1")];
        let mut written: [Vec<String>; 2] = [Vec::new(), Vec::new()];
        let mut rotations = 0;
        let mut split = [false, false];
        // A split line ends in the file it began in (a rotation between its pieces would
        // make two records of it, as with any tailer).
        let end_split = |split: &mut [bool; 2], file: usize| {
            if std::mem::take(&mut split[file]) {
                append(
                    &dirs[file].join("0.log"),
                    "2024-05-01T10:00:00Z stdout F \n",
                );
            }
        };
        let mut tailer = LogTailer::start(node.options(&gateway)).expect("start");
        for action in actions {
            match action {
                Action::Split { file } => {
                    if !split[file] {
                        let name = format!("c{file}-{}", written[file].len());
                        append(
                            &dirs[file].join("0.log"),
                            &format!("2024-05-01T10:00:00Z stdout P {name}\n"),
                        );
                        written[file].push(name);
                        split[file] = true;
                    }
                }
                Action::Write { file, lines } => {
                    end_split(&mut split, file);
                    let mut text = String::new();
                    for _ in 0..lines {
                        let name = format!("c{file}-{}", written[file].len());
                        text.push_str(&cri(&name));
                        written[file].push(name);
                    }
                    append(&dirs[file].join("0.log"), &text);
                }
                Action::Rotate { file } => {
                    end_split(&mut split, file);
                    let live = dirs[file].join("0.log");
                    if live.exists() {
                        rotations += 1;
                        let rotated = format!("0.log.20240501-1000{rotations:02}");
                        std::fs::rename(&live, dirs[file].join(rotated)).expect("rename");
                    }
                }
                Action::Truncate { file } => {
                    end_split(&mut split, 0);
                    end_split(&mut split, 1);
                    let total = written[0].len() + written[1].len();
                    until("everything before a truncation", || {
                        gateway.count() >= total
                    })
                    .await;
                    let live = dirs[file].join("0.log");
                    if live.exists() {
                        OpenOptions::new()
                            .write(true)
                            .open(&live)
                            .expect("open")
                            .set_len(0)
                            .expect("truncate");
                    }
                }
                Action::Restart => {
                    tailer.stop().await.expect("stop");
                    tailer = LogTailer::start(node.options(&gateway)).expect("start");
                }
                Action::Outage { requests } => failing.store(requests, Ordering::SeqCst),
            }
            tokio::time::sleep(Duration::from_millis(15)).await;
        }
        end_split(&mut split, 0);
        end_split(&mut split, 1);
        let total = written[0].len() + written[1].len();
        until("every line", || gateway.count() >= total).await;
        tokio::time::sleep(Duration::from_millis(150)).await;
        let bodies = gateway.bodies();
        tailer.stop().await.expect("stop");
        prop_assert_eq!(bodies.len(), total, "exactly once");
        for (file, lines) in written.iter().enumerate() {
            prop_assert_eq!(&only(&bodies, &format!("c{file}")), lines);
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig {
            cases: 12,
            failure_persistence: None,
            ..ProptestConfig::default()
        })]
        #[test]
        fn every_line_arrives_once_in_order(actions in proptest::collection::vec(action(), 1..14)) {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(play(actions))?;
        }
    }
}
