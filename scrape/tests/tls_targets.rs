//! https scrape targets: a CA, a server certificate and a client certificate made at test
//! time, an exposition page served over TLS by a local tokio-rustls server, and each
//! `tls_config` key checked for the outcome Prometheus gives it — then a real Prometheus 2.42
//! scrapes the same server with the same settings and agrees on which scrapes succeed.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use scrape::config::PrometheusConfig;
use scrape::scraper::{fetch_page, http_client, job_targets};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

const PAGE: &str = "# TYPE tls_test_metric gauge\ntls_test_metric 42\n";

/// PEM files in a temporary directory.
struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    /// A CA, a server certificate for `localhost` only (so an IP target needs
    /// `server_name`) and a client certificate, both signed by the CA.
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "Meerkat test CA");
        let ca_key = KeyPair::generate().unwrap();
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca_params, ca_key);
        let write = |name: &str, text: String| std::fs::write(dir.path().join(name), text).unwrap();
        write("ca.pem", ca_cert.pem());
        for (name, san) in [("server", "localhost"), ("client", "scraper")] {
            let key = KeyPair::generate().unwrap();
            let mut params = CertificateParams::new(vec![san.to_owned()]).unwrap();
            params.distinguished_name.push(DnType::CommonName, san);
            let cert = params.signed_by(&key, &issuer).unwrap();
            write(&format!("{name}.pem"), cert.pem());
            write(&format!("{name}-key.pem"), key.serialize_pem());
        }
        // A second CA that signed nothing here: trusting it alone must fail.
        let other_key = KeyPair::generate().unwrap();
        let mut other = CertificateParams::new(Vec::<String>::new()).unwrap();
        other.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        write("other-ca.pem", other.self_signed(&other_key).unwrap().pem());
        Self { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn show(&self, name: &str) -> String {
        self.path(name).display().to_string()
    }
}

/// What the server saw: a client certificate per request served.
#[derive(Default)]
struct Seen {
    requests: Vec<(String, bool)>,
}

/// An https server on 127.0.0.1 answering every request with [`PAGE`]; with
/// `require_client_cert`, a handshake without a certificate from the CA fails.
async fn tls_server(pki: &Pki, require_client_cert: bool) -> (SocketAddr, Arc<Mutex<Seen>>) {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(pki.path("server.pem"))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_file(pki.path("server-key.pem")).unwrap();
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap();
    let builder = if require_client_cert {
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(pki.path("ca.pem")).unwrap() {
            roots.add(cert.unwrap()).unwrap();
        }
        let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
            .build()
            .unwrap();
        builder.with_client_cert_verifier(verifier)
    } else {
        builder.with_no_client_auth()
    };
    let config = builder.with_single_cert(chain, key).unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Seen::default()));
    let record = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            let record = record.clone();
            tokio::spawn(async move {
                let Ok(mut stream) = acceptor.accept(stream).await else {
                    return;
                };
                let client_cert = stream.get_ref().1.peer_certificates().is_some();
                serve(&mut stream, |line| {
                    record
                        .lock()
                        .unwrap()
                        .requests
                        .push((line.to_owned(), client_cert));
                    ok_page()
                })
                .await;
            });
        }
    });
    (address, seen)
}

fn ok_page() -> String {
    format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\n\r\n{PAGE}",
        PAGE.len()
    )
}

/// Answers HTTP/1.1 requests on one connection with `answer(request line)` until it closes.
async fn serve<S>(stream: &mut S, mut answer: impl FnMut(&str) -> String)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let mut buffer = Vec::new();
    loop {
        let mut chunk = [0u8; 4096];
        let Ok(n) = stream.read(&mut chunk).await else {
            return;
        };
        if n == 0 {
            return;
        }
        buffer.extend_from_slice(&chunk[..n]);
        while let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buffer[..end]).into_owned();
            buffer.drain(..end + 4);
            let line = head.lines().next().unwrap_or_default().to_owned();
            if stream.write_all(answer(&line).as_bytes()).await.is_err() {
                return;
            }
        }
    }
}

/// The scrape config of one job with `target` and `extra` job settings (YAML lines).
fn config(target: &str, extra: &str) -> String {
    format!(
        "scrape_configs:\n  - job_name: tls\n    scheme: https\n{extra}    static_configs:\n      - targets: ['{target}']\n"
    )
}

/// One fetch of the config's only target by Meerkat's scrape engine.
async fn fetch(yaml: &str) -> Result<String, String> {
    let config = PrometheusConfig::parse(yaml).map_err(|e| format!("config: {e}"))?;
    let job = config.jobs[0].clone();
    let targets = job_targets(&job);
    assert!(targets.errors.is_empty(), "{:?}", targets.errors);
    assert_eq!(targets.targets.len(), 1);
    let target = targets.targets[0].clone();
    fetch_page(Arc::new(job), target, http_client())
        .await
        .map(|(body, _)| String::from_utf8(body).unwrap())
}

fn tls(lines: &[String]) -> String {
    let mut text = "    tls_config:\n".to_owned();
    for line in lines {
        text.push_str(&format!("      {line}\n"));
    }
    text
}

#[tokio::test]
async fn https_targets_follow_tls_config() {
    let pki = Pki::new();
    let (address, seen) = tls_server(&pki, false).await;
    let port = address.port();
    let localhost = format!("localhost:{port}");
    let ip = format!("127.0.0.1:{port}");
    let ca = format!("ca_file: {}", pki.show("ca.pem"));

    // Trusted through ca_file.
    let body = fetch(&config(&localhost, &tls(std::slice::from_ref(&ca))))
        .await
        .unwrap();
    assert_eq!(body, PAGE);

    // Without ca_file the system roots do not know the test CA.
    let error = fetch(&config(&localhost, "")).await.unwrap_err();
    assert!(
        error.contains("invalid peer certificate") && error.contains("UnknownIssuer"),
        "{error}"
    );

    // A CA that did not sign the server's certificate.
    let other = format!("ca_file: {}", pki.show("other-ca.pem"));
    let error = fetch(&config(&localhost, &tls(&[other])))
        .await
        .unwrap_err();
    assert!(error.contains("UnknownIssuer"), "{error}");

    // insecure_skip_verify accepts what nothing vouches for.
    let body = fetch(&config(
        &localhost,
        &tls(&["insecure_skip_verify: true".to_owned()]),
    ))
    .await
    .unwrap();
    assert_eq!(body, PAGE);

    // The certificate names localhost, not 127.0.0.1: server_name decides what is checked.
    let error = fetch(&config(&ip, &tls(std::slice::from_ref(&ca))))
        .await
        .unwrap_err();
    assert!(error.contains("not valid for name"), "{error}");
    let body = fetch(&config(
        &ip,
        &tls(&[ca.clone(), "server_name: localhost".to_owned()]),
    ))
    .await
    .unwrap();
    assert_eq!(body, PAGE);
    let error = fetch(&config(
        &localhost,
        &tls(&[ca.clone(), "server_name: other.example".to_owned()]),
    ))
    .await
    .unwrap_err();
    assert!(error.contains("not valid for name"), "{error}");

    // min_version TLS13 still talks to a server offering 1.2 and 1.3; TLS10 is refused at
    // load, by name.
    let body = fetch(&config(
        &localhost,
        &tls(&[ca.clone(), "min_version: TLS13".to_owned()]),
    ))
    .await
    .unwrap();
    assert_eq!(body, PAGE);
    let error = fetch(&config(
        &localhost,
        &tls(&[ca.clone(), "min_version: TLS10".to_owned()]),
    ))
    .await
    .unwrap_err();
    assert!(error.contains("min_version TLS10"), "{error}");

    // No client certificate was sent: none was configured.
    let seen = seen.lock().unwrap();
    assert!(!seen.requests.is_empty());
    assert!(
        seen.requests
            .iter()
            .all(|(line, cert)| { line.starts_with("GET /metrics ") && !cert })
    );
}

#[tokio::test]
async fn client_certificates_reach_a_server_that_requires_them() {
    let pki = Pki::new();
    let (address, seen) = tls_server(&pki, true).await;
    let target = format!("localhost:{}", address.port());
    let ca = format!("ca_file: {}", pki.show("ca.pem"));

    let error = fetch(&config(&target, &tls(std::slice::from_ref(&ca))))
        .await
        .unwrap_err();
    assert!(!error.is_empty());
    assert!(
        seen.lock().unwrap().requests.is_empty(),
        "served without a client cert"
    );

    let body = fetch(&config(
        &target,
        &tls(&[
            ca.clone(),
            format!("cert_file: {}", pki.show("client.pem")),
            format!("key_file: {}", pki.show("client-key.pem")),
        ]),
    ))
    .await
    .unwrap();
    assert_eq!(body, PAGE);
    let requests = seen.lock().unwrap().requests.clone();
    assert_eq!(requests.len(), 1);
    assert!(requests[0].1, "the client certificate was not presented");

    // A certificate without its key is a configuration error, named.
    let error = PrometheusConfig::parse(&config(
        &target,
        &tls(&[format!("cert_file: {}", pki.show("client.pem"))]),
    ))
    .unwrap_err();
    assert!(error.to_string().contains("key_file"), "{error}");
    // A missing file fails the scrape with its path.
    let error = fetch(&config(
        &target,
        &tls(&["ca_file: /nonexistent/ca.pem".to_owned()]),
    ))
    .await
    .unwrap_err();
    assert!(error.contains("/nonexistent/ca.pem"), "{error}");
}

#[test]
fn unknown_tls_keys_are_refused_by_name() {
    let error = PrometheusConfig::parse(&config(
        "localhost:1",
        &tls(&["insecure_skip_verfy: true".to_owned()]),
    ))
    .unwrap_err();
    assert!(error.to_string().contains("insecure_skip_verfy"), "{error}");
    let error = PrometheusConfig::parse(&config(
        "localhost:1",
        &tls(&["min_version: SSL3".to_owned()]),
    ))
    .unwrap_err();
    assert!(error.to_string().contains("SSL3"), "{error}");
}

/// A plain http server whose `/hop/N` redirects to `/hop/N-1`, `/hop/0` to `https_page`.
async fn redirect_server(https_page: String) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            let https_page = https_page.clone();
            tokio::spawn(async move {
                serve(&mut stream, |line| {
                    let path = line.split(' ').nth(1).unwrap_or_default();
                    let location = match path.strip_prefix("/hop/").map(str::parse::<u32>) {
                        Some(Ok(0)) => https_page.clone(),
                        Some(Ok(n)) => format!("/hop/{}", n - 1),
                        _ => return ok_page(),
                    };
                    format!(
                        "HTTP/1.1 302 Found\r\nLocation: {location}\r\nContent-Length: 0\r\n\r\n"
                    )
                })
                .await;
            });
        }
    });
    address
}

#[tokio::test]
async fn redirects_are_followed_as_prometheus_does() {
    let pki = Pki::new();
    let (tls_address, _) = tls_server(&pki, false).await;
    let https_page = format!("https://localhost:{}/metrics", tls_address.port());
    let address = redirect_server(https_page).await;
    let plain = |path: &str, extra: &str| {
        format!(
            "scrape_configs:\n  - job_name: r\n    metrics_path: {path}\n{extra}    static_configs:\n      - targets: ['{address}']\n"
        )
    };
    let ca = tls(&[format!("ca_file: {}", pki.show("ca.pem"))]);
    // 9 redirects, the last from http to https (checked with the job's tls_config).
    assert_eq!(fetch(&plain("/hop/8", &ca)).await.unwrap(), PAGE);
    // The 10th redirect is an error, as Go's client makes it.
    let error = fetch(&plain("/hop/9", &ca)).await.unwrap_err();
    assert!(error.contains("stopped after 10 redirects"), "{error}");
    // follow_redirects: false makes any 3xx a failed scrape.
    let error = fetch(&plain(
        "/hop/1",
        &format!("    follow_redirects: false\n{ca}"),
    ))
    .await
    .unwrap_err();
    assert!(error.contains("302"), "{error}");
}

/// `up` for `job` in Prometheus once it has scraped it, waiting up to 30 s.
fn prometheus_up(prometheus: &test_peers::PrometheusServer, job: &str) -> f64 {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let query = format!("/api/v1/query?query=up%7Bjob%3D%22{job}%22%7D");
        if let Some((200, body)) = prometheus.get(&query) {
            let json: serde_json::Value = serde_json::from_str(&body).unwrap();
            if let Some(value) = json["data"]["result"][0]["value"][1].as_str() {
                return value.parse().unwrap();
            }
        }
        assert!(
            Instant::now() < deadline,
            "Prometheus did not scrape {job}:\n{}",
            prometheus.output()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_agrees_on_the_same_tls_config() {
    let pki = Pki::new();
    let (address, _) = tls_server(&pki, true).await;
    let target = format!("localhost:{}", address.port());
    let ca = format!("ca_file: {}", pki.show("ca.pem"));
    let client = [
        format!("cert_file: {}", pki.show("client.pem")),
        format!("key_file: {}", pki.show("client-key.pem")),
    ];
    let ip = format!("127.0.0.1:{}", address.port());
    let with_client = |lines: &[&str]| {
        let mut all: Vec<String> = lines.iter().map(|l| (*l).to_owned()).collect();
        all.extend(client.iter().cloned());
        all
    };
    // Job, target, tls_config lines, and whether the scrape should succeed.
    let cases: Vec<(&str, &str, Vec<String>, f64)> = vec![
        ("ca_and_cert", &target, with_client(&[&ca]), 1.0),
        ("no_client_cert", &target, vec![ca.clone()], 0.0),
        ("no_ca", &target, client.to_vec(), 0.0),
        (
            "skip_verify",
            &target,
            with_client(&["insecure_skip_verify: true"]),
            1.0,
        ),
        ("ip_no_name", &ip, with_client(&[&ca]), 0.0),
        (
            "ip_server_name",
            &ip,
            with_client(&[&ca, "server_name: localhost"]),
            1.0,
        ),
    ];
    let mut prometheus_config = "global:\n  scrape_interval: 1s\nscrape_configs:\n".to_owned();
    for (job, address, lines, _) in &cases {
        let block = config(address, &tls(lines)).replacen("scrape_configs:\n", "", 1);
        prometheus_config.push_str(&block.replacen(
            "job_name: tls",
            &format!("job_name: {job}"),
            1,
        ));
    }
    let prometheus = test_peers::PrometheusServer::start(&prometheus_config, &[]);
    for (job, address, lines, expected) in &cases {
        let ours = fetch(&config(address, &tls(lines))).await;
        let theirs = tokio::task::block_in_place(|| prometheus_up(&prometheus, job));
        let ours_up = if ours.is_ok() { 1.0 } else { 0.0 };
        assert_eq!(
            (ours_up, theirs),
            (*expected, *expected),
            "job {job}: Meerkat {ours:?}, Prometheus up={theirs}"
        );
    }
}

/// Collects `up` per job from a running [`ScrapeManager`].
#[derive(Default)]
struct UpSink(Mutex<Vec<(String, f64)>>);

impl scrape::scraper::ScrapeSink for UpSink {
    fn accept(&self, output: scrape::scraper::ScrapeOutput) {
        for sample in output.samples {
            if sample.labels.get("__name__") == Some("up") {
                let job = sample.labels.get("job").unwrap_or_default().to_owned();
                self.0.lock().unwrap().push((job, sample.value));
            }
        }
    }
}

#[tokio::test]
async fn the_scrape_manager_runs_https_targets_and_reports_bad_tls_settings() {
    let pki = Pki::new();
    let (address, seen) = tls_server(&pki, false).await;
    let target = format!("localhost:{}", address.port());
    let yaml = format!(
        "global:\n  scrape_interval: 1s\nscrape_configs:\n\
         {}{}",
        config(&target, &tls(&[format!("ca_file: {}", pki.show("ca.pem"))]))
            .replacen("scrape_configs:\n", "", 1)
            .replacen("job_name: tls", "job_name: good", 1),
        config(&target, &tls(&["ca_file: /nonexistent/ca.pem".to_owned()]))
            .replacen("scrape_configs:\n", "", 1)
            .replacen("job_name: tls", "job_name: bad", 1),
    );
    let config = PrometheusConfig::parse(&yaml).unwrap();
    let sink = Arc::new(UpSink::default());
    let mut manager = scrape::scraper::ScrapeManager::new(http_client(), sink.clone());
    let errors = manager.apply(&config);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        errors[0].contains("\"bad\"") && errors[0].contains("/nonexistent/ca.pem"),
        "{errors:?}"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let ups = sink.0.lock().unwrap().clone();
        let good = ups.iter().any(|(job, up)| job == "good" && *up == 1.0);
        let bad = ups.iter().any(|(job, up)| job == "bad" && *up == 0.0);
        if good && bad {
            assert!(!ups.iter().any(|(job, up)| job == "bad" && *up == 1.0));
            break;
        }
        assert!(Instant::now() < deadline, "{ups:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    manager.stop().await;
    assert!(!seen.lock().unwrap().requests.is_empty());
}

#[tokio::test]
async fn a_rotated_ca_file_is_picked_up_without_a_reload() {
    let pki = Pki::new();
    let (address, _) = tls_server(&pki, false).await;
    // The job's CA file first holds a CA that did not sign the server's certificate.
    let ca_path = pki.path("rotating-ca.pem");
    std::fs::copy(pki.path("other-ca.pem"), &ca_path).unwrap();
    let yaml = format!(
        "global:\n  scrape_interval: 1s\n{}",
        config(
            &format!("localhost:{}", address.port()),
            &tls(&[format!("ca_file: {}", ca_path.display())]),
        )
    );
    let sink = Arc::new(UpSink::default());
    let mut manager = scrape::scraper::ScrapeManager::new(http_client(), sink.clone());
    assert!(
        manager
            .apply(&PrometheusConfig::parse(&yaml).unwrap())
            .is_empty()
    );
    let wait_for = |up: f64| {
        let sink = sink.clone();
        async move {
            let deadline = Instant::now() + Duration::from_secs(10);
            while !sink.0.lock().unwrap().iter().any(|(_, v)| *v == up) {
                assert!(Instant::now() < deadline, "no up={up}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    wait_for(0.0).await;
    assert!(!sink.0.lock().unwrap().iter().any(|(_, v)| *v == 1.0));
    // Rotated in place: the next scrape trusts the new CA.
    std::fs::copy(pki.path("ca.pem"), &ca_path).unwrap();
    wait_for(1.0).await;
    manager.stop().await;
}
