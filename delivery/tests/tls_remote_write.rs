//! Remote-write and the heartbeat over https: a gateway stand-in behind TLS (a tokio-rustls
//! server with a certificate from a CA made at test time) takes requests from a delivery
//! that trusts the CA, and none from one that only knows the system's roots.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use delivery::heartbeat::{AgentKind, Heartbeat, HeartbeatConfig};
use delivery::{Delivery, RemoteWriteConfig, prompb};
use prost::Message;
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The CA's certificate, and the server's chain and key (for `localhost`).
struct Pki {
    ca: CertificateDer<'static>,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

fn pki() -> Pki {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_key = KeyPair::generate().unwrap();
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["localhost".to_owned()])
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    Pki {
        ca: ca.der().clone(),
        chain: vec![cert.der().clone()],
        key: PrivateKeyDer::from_pem_slice(key.serialize_pem().as_bytes()).unwrap(),
    }
}

/// What the server was sent: (path, body).
type Received = Arc<Mutex<Vec<(String, Vec<u8>)>>>;

/// An https server on 127.0.0.1 answering every POST with 200; returns its port.
async fn tls_gateway(pki: &Pki, received: Received) -> u16 {
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(pki.chain.clone(), pki.key.clone_key())
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let (acceptor, received) = (acceptor.clone(), received.clone());
            tokio::spawn(async move {
                let Ok(mut stream) = acceptor.accept(stream).await else {
                    return;
                };
                let mut buffer = Vec::new();
                loop {
                    let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") else {
                        let mut chunk = [0u8; 8192];
                        match stream.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buffer.extend_from_slice(&chunk[..n]),
                        }
                        continue;
                    };
                    let head = String::from_utf8_lossy(&buffer[..end]).into_owned();
                    let length: usize = head
                        .lines()
                        .find_map(|l| {
                            let (name, value) = l.split_once(':')?;
                            name.eq_ignore_ascii_case("content-length")
                                .then(|| value.trim().parse().ok())?
                        })
                        .unwrap_or(0);
                    while buffer.len() < end + 4 + length {
                        let mut chunk = [0u8; 8192];
                        match stream.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buffer.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let body = buffer[end + 4..end + 4 + length].to_vec();
                    buffer.drain(..end + 4 + length);
                    let path = head.split(' ').nth(1).unwrap_or_default().to_owned();
                    received.lock().unwrap().push((path, body));
                    let answer = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";
                    if stream.write_all(answer).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    port
}

fn trusting(ca: &CertificateDer<'static>) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.clone()).unwrap();
    Arc::new(
        rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth(),
    )
}

fn series(value: f64) -> prompb::TimeSeries {
    prompb::TimeSeries {
        labels: vec![prompb::Label {
            name: Bytes::from_static(b"__name__"),
            value: Bytes::from_static(b"over_tls"),
        }],
        samples: vec![prompb::Sample {
            value,
            timestamp: 1,
        }],
        ..Default::default()
    }
}

fn config(url: &str) -> RemoteWriteConfig {
    RemoteWriteConfig {
        flush_interval: Duration::from_millis(10),
        min_backoff: Duration::from_millis(5),
        max_backoff: Duration::from_millis(20),
        timeout: Duration::from_secs(2),
        ..RemoteWriteConfig::new(url)
    }
}

#[tokio::test]
async fn remote_write_over_https_with_the_ca_only() {
    let pki = pki();
    let received: Received = Arc::default();
    let port = tls_gateway(&pki, received.clone()).await;
    let url = format!("https://localhost:{port}/api/v1/write");

    // The system's roots do not know the test CA: nothing gets through, it is retried.
    let (delivery, task) = Delivery::start(config(&url)).unwrap();
    delivery.push(vec![series(1.0)]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while delivery.stats().retries < 2 {
        assert!(Instant::now() < deadline, "{:?}", delivery.stats());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    delivery.close();
    task.await.unwrap();
    assert!(received.lock().unwrap().is_empty());
    assert_eq!(delivery.stats().sent_samples, 0);

    // Trusting the CA: delivered, snappy protobuf as over http.
    let (delivery, task) = Delivery::start(RemoteWriteConfig {
        tls: Some(trusting(&pki.ca)),
        ..config(&url)
    })
    .unwrap();
    delivery.push(vec![series(42.0)]);
    delivery.close();
    task.await.unwrap();
    assert_eq!(delivery.stats().sent_samples, 1);
    let received = received.lock().unwrap();
    assert_eq!(received.len(), 1);
    assert_eq!(received[0].0, "/api/v1/write");
    let raw = snap::raw::Decoder::new()
        .decompress_vec(&received[0].1)
        .unwrap();
    let request = prompb::WriteRequest::decode(&raw[..]).unwrap();
    assert_eq!(request.timeseries[0].samples[0].value, 42.0);
}

#[tokio::test]
async fn heartbeats_over_https() {
    let pki = pki();
    let received: Received = Arc::default();
    let port = tls_gateway(&pki, received.clone()).await;
    let mut config = HeartbeatConfig::new(
        &format!("https://localhost:{port}"),
        "agent-1",
        AgentKind::Cluster,
        "c1",
        "0.1.0",
    );
    config.tls = Some(trusting(&pki.ca));
    let heartbeat = Heartbeat::start(config).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while heartbeat.stats().sent == 0 {
        assert!(Instant::now() < deadline, "{:?}", heartbeat.stats());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    heartbeat.stop().await;
    let received = received.lock().unwrap();
    assert_eq!(received[0].0, "/api/v1/agents/heartbeat");
    let body: serde_json::Value = serde_json::from_slice(&received[0].1).unwrap();
    assert_eq!(body["cluster"], "c1", "{body}");
}
