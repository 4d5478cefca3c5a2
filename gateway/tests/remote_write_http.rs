//! Remote-write through the gateway's HTTP routes onto a real embedded bus: what a client
//! gets back for every kind of request, and what reaches the bus.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use bus::embedded::{EmbeddedBus, EmbeddedBusConfig};
use bus::{Bus, ConsumedRecord, Consumer, ProduceRecord, RecordPosition, Watermarks};
use common::{Harness, send};
use gateway::proto::prometheus as pb;
use gateway::{GatewayConfig, LimitOverrides};

fn write_request(series: &[(&[(&str, &str)], f64)]) -> Vec<u8> {
    let request = pb::WriteRequest {
        timeseries: series
            .iter()
            .map(|(labels, value)| pb::TimeSeries {
                labels: labels
                    .iter()
                    .map(|(n, v)| pb::Label {
                        name: n.to_string().into(),
                        value: v.to_string().into(),
                    })
                    .collect(),
                samples: vec![pb::Sample {
                    value: *value,
                    timestamp: 1_700_000_000_000,
                }],
                ..Default::default()
            })
            .collect(),
        metadata: vec![],
    };
    snap::raw::Encoder::new()
        .compress_vec(&prost::Message::encode_to_vec(&request))
        .unwrap()
}

fn post(body: Vec<u8>) -> axum::http::request::Builder {
    let _ = &body;
    Request::post("/api/v1/write")
        .header("content-encoding", "snappy")
        .header("content-type", "application/x-protobuf")
        .header("x-prometheus-remote-write-version", "0.1.0")
}

async fn write(
    h: &Harness,
    builder: axum::http::request::Builder,
    body: Vec<u8>,
) -> common::Answer {
    send(&h.router(), builder.body(Body::from(body)).unwrap()).await
}

#[tokio::test]
async fn a_good_request_is_acknowledged_with_204_after_it_is_on_the_bus() {
    let h = Harness::new(GatewayConfig::default()).await;
    let body = write_request(&[
        (&[("__name__", "up"), ("job", "api")], 1.0),
        (&[("__name__", "up"), ("job", "db")], 0.0),
    ]);
    let answer = write(&h, post(body.clone()), body).await;
    assert_eq!(answer.status, StatusCode::NO_CONTENT, "{}", answer.text());
    let series = h.series().await;
    assert_eq!(
        series,
        vec![
            ("default".into(), r#"up{job="api"}"#.into(), vec![1.0]),
            ("default".into(), r#"up{job="db"}"#.into(), vec![0.0]),
        ]
    );
    let metrics = h.metrics_text();
    assert!(
        metrics.contains(r#"meerkat_gateway_received_total{protocol="remote_write",tenant="default",signal="samples"} 2"#),
        "{metrics}"
    );
}

#[tokio::test]
async fn bad_series_are_refused_by_name_and_good_ones_kept() {
    let h = Harness::new(GatewayConfig::default()).await;
    let body = write_request(&[
        (&[("__name__", "up"), ("job", "api")], 1.0),
        (&[("__name__", "up"), ("job", "x"), ("job", "y")], 2.0),
        (&[("__name__", "up"), ("job", "db")], 3.0),
    ]);
    let answer = write(&h, post(body.clone()), body).await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
    let text = answer.text();
    assert!(text.contains("1 samples refused, 2 accepted"), "{text}");
    assert!(
        text.contains(r#"job="x""#) && text.contains("duplicate label"),
        "{text}"
    );
    assert_eq!(h.series().await.len(), 2, "the good series are stored");
    assert!(h.metrics_text().contains(r#"reason="duplicate_label"} 1"#));
}

#[tokio::test]
async fn every_malformed_body_gets_a_4xx_that_says_why() {
    let h = Harness::new(GatewayConfig::default()).await;
    let good = write_request(&[(&[("__name__", "up")], 1.0)]);
    let cases: Vec<(
        &str,
        axum::http::request::Builder,
        Vec<u8>,
        StatusCode,
        &str,
    )> = vec![
        (
            "bad snappy",
            post(vec![]),
            b"not snappy at all".to_vec(),
            StatusCode::BAD_REQUEST,
            "snappy",
        ),
        (
            "truncated",
            post(vec![]),
            good[..good.len() / 2].to_vec(),
            StatusCode::BAD_REQUEST,
            "",
        ),
        (
            "bad protobuf",
            post(vec![]),
            snap::raw::Encoder::new().compress_vec(&[0xff; 40]).unwrap(),
            StatusCode::BAD_REQUEST,
            "WriteRequest",
        ),
        (
            "wrong encoding",
            Request::post("/api/v1/write").header("content-encoding", "gzip"),
            good.clone(),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "snappy",
        ),
        (
            "bad tenant",
            post(vec![]).header("x-scope-orgid", "../etc"),
            good.clone(),
            StatusCode::BAD_REQUEST,
            "tenant",
        ),
    ];
    for (name, builder, body, status, needle) in cases {
        let answer = write(&h, builder, body).await;
        assert_eq!(answer.status, status, "{name}: {}", answer.text());
        assert!(answer.text().contains(needle), "{name}: {}", answer.text());
    }
    assert!(
        h.series().await.is_empty(),
        "nothing from a malformed request is stored"
    );
}

#[tokio::test]
async fn oversized_bodies_get_413() {
    let mut config = GatewayConfig::default();
    config.limits.max_request_body_bytes = 1000;
    let h = Harness::new(config).await;
    let body = vec![0u8; 5000];
    let declared = write(
        &h,
        post(vec![]).header("content-length", "5000"),
        body.clone(),
    )
    .await;
    assert_eq!(declared.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(
        declared.text().contains("1000 bytes"),
        "{}",
        declared.text()
    );
    let undeclared = write(&h, post(vec![]), body).await;
    assert_eq!(undeclared.status, StatusCode::PAYLOAD_TOO_LARGE);
}

#[tokio::test]
async fn tenants_come_from_the_header_or_the_token_and_never_mix() {
    let h = Harness::new(GatewayConfig::default()).await;
    let body = write_request(&[(&[("__name__", "up")], 1.0)]);
    for tenant in ["team-a", "team-b"] {
        let answer = write(
            &h,
            post(vec![]).header("x-scope-orgid", tenant),
            body.clone(),
        )
        .await;
        assert_eq!(answer.status, StatusCode::NO_CONTENT);
    }
    let tenants: Vec<String> = h.series().await.into_iter().map(|(t, _, _)| t).collect();
    assert_eq!(tenants, ["team-a", "team-b"]);

    let mut config = GatewayConfig::default();
    config.auth.tokens.insert("s3cret".into(), "team-c".into());
    let h = Harness::new(config).await;
    let unauthorized = write(
        &h,
        post(vec![]).header("x-scope-orgid", "team-a"),
        body.clone(),
    )
    .await;
    assert_eq!(unauthorized.status, StatusCode::UNAUTHORIZED);
    assert!(
        unauthorized.text().contains("bearer token"),
        "{}",
        unauthorized.text()
    );
    let wrong = write(
        &h,
        post(vec![]).header("authorization", "Bearer nope"),
        body.clone(),
    )
    .await;
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
    let ok = write(
        &h,
        post(vec![])
            .header("authorization", "Bearer s3cret")
            .header("x-scope-orgid", "team-a"),
        body,
    )
    .await;
    assert_eq!(ok.status, StatusCode::NO_CONTENT);
    assert_eq!(
        h.series().await[0].0,
        "team-c",
        "the token decides, not the header"
    );
}

#[tokio::test]
async fn over_the_rate_limit_is_429_with_retry_after_and_nothing_stored() {
    let mut config = GatewayConfig::default();
    config.tenant_limits.insert(
        "slow".into(),
        LimitOverrides {
            ingestion_rate_per_second: Some(1.0),
            ingestion_burst: Some(3.0),
            ..LimitOverrides::default()
        },
    );
    let h = Harness::new(config).await;
    let three = write_request(&[
        (&[("__name__", "a")], 1.0),
        (&[("__name__", "b")], 1.0),
        (&[("__name__", "c")], 1.0),
    ]);
    let first = write(
        &h,
        post(vec![]).header("x-scope-orgid", "slow"),
        three.clone(),
    )
    .await;
    assert_eq!(first.status, StatusCode::NO_CONTENT);
    let second = write(
        &h,
        post(vec![]).header("x-scope-orgid", "slow"),
        three.clone(),
    )
    .await;
    assert_eq!(
        second.status,
        StatusCode::TOO_MANY_REQUESTS,
        "{}",
        second.text()
    );
    assert!(
        second
            .retry_after
            .as_deref()
            .is_some_and(|s| s.parse::<u64>().unwrap() >= 1)
    );
    assert!(second.text().contains("rate limit"), "{}", second.text());
    assert_eq!(
        h.series().await.len(),
        3,
        "the refused request stored nothing"
    );
    // Another tenant is unaffected.
    let other = write(&h, post(vec![]).header("x-scope-orgid", "fast"), three).await;
    assert_eq!(other.status, StatusCode::NO_CONTENT);
}

/// A bus that takes its time: what the gateway faces when storage falls behind.
#[derive(Debug)]
struct SlowBus {
    inner: Arc<EmbeddedBus>,
    delay: Duration,
}

#[async_trait]
impl Bus for SlowBus {
    async fn ensure_topic(&self, topic: &str, partitions: u32) -> bus::Result<()> {
        self.inner.ensure_topic(topic, partitions).await
    }
    async fn partition_count(&self, topic: &str) -> bus::Result<u32> {
        self.inner.partition_count(topic).await
    }
    async fn produce(
        &self,
        topic: &str,
        records: Vec<ProduceRecord>,
    ) -> bus::Result<Vec<RecordPosition>> {
        tokio::time::sleep(self.delay).await;
        self.inner.produce(topic, records).await
    }
    async fn fetch(
        &self,
        topic: &str,
        partition: u32,
        offset: u64,
        max_bytes: usize,
    ) -> bus::Result<Vec<ConsumedRecord>> {
        self.inner.fetch(topic, partition, offset, max_bytes).await
    }
    async fn watermarks(&self, topic: &str, partition: u32) -> bus::Result<Watermarks> {
        self.inner.watermarks(topic, partition).await
    }
    async fn subscribe(&self, group: &str, topics: &[&str]) -> bus::Result<Box<dyn Consumer>> {
        self.inner.subscribe(group, topics).await
    }
    async fn committed_offset(
        &self,
        group: &str,
        topic: &str,
        partition: u32,
    ) -> bus::Result<Option<u64>> {
        self.inner.committed_offset(group, topic, partition).await
    }
    async fn close(&self) -> bus::Result<()> {
        self.inner.close().await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_bus_makes_the_gateway_shed_with_503_not_buffer() {
    let dir = tempfile::TempDir::new().unwrap();
    let bus = Arc::new(EmbeddedBus::open(dir.path(), EmbeddedBusConfig::default()).unwrap());
    let slow: Arc<dyn Bus> = Arc::new(SlowBus {
        inner: bus.clone(),
        delay: Duration::from_millis(300),
    });
    let mut config = GatewayConfig {
        max_inflight_bytes: 256 * 1024,
        ..GatewayConfig::default()
    };
    config.limits.max_request_body_bytes = 64 * 1024;
    let h = Harness::on_bus(dir, bus, slow, config).await;
    let series: Vec<(Vec<(String, String)>, f64)> = (0..400)
        .map(|i| {
            (
                vec![
                    ("__name__".to_owned(), "m".to_owned()),
                    ("i".to_owned(), {
                        // Incompressible values, like real pod or trace ids.
                        let a = (i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
                        format!(
                            "{a:016x}{:016x}{:016x}",
                            a.rotate_left(17) ^ 0xdead_beef,
                            a.wrapping_mul(31)
                        )
                    }),
                ],
                1.0,
            )
        })
        .collect();
    let borrowed: Vec<(Vec<(&str, &str)>, f64)> = series
        .iter()
        .map(|(l, v)| {
            (
                l.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect(),
                *v,
            )
        })
        .collect();
    let refs: Vec<(&[(&str, &str)], f64)> =
        borrowed.iter().map(|(l, v)| (l.as_slice(), *v)).collect();
    let body = write_request(&refs);
    assert!(
        body.len() > 8 * 1024,
        "each request must be a real share of the budget"
    );

    let router = h.router();
    let mut tasks = Vec::new();
    for _ in 0..40 {
        let router = router.clone();
        let body = body.clone();
        tasks.push(tokio::spawn(async move {
            let request = post(vec![])
                .header("content-length", body.len().to_string())
                .body(Body::from(body))
                .unwrap();
            send(&router, request).await
        }));
    }
    let mut accepted = 0;
    let mut shed = 0;
    for task in tasks {
        let answer = task.await.unwrap();
        match answer.status {
            StatusCode::NO_CONTENT => accepted += 1,
            StatusCode::SERVICE_UNAVAILABLE => {
                assert_eq!(answer.retry_after.as_deref(), Some("1"));
                assert!(answer.text().contains("overloaded"), "{}", answer.text());
                shed += 1;
            }
            other => panic!("unexpected {other}: {}", answer.text()),
        }
    }
    assert!(
        shed > 0,
        "40 concurrent requests into a 256 KiB budget must shed some"
    );
    assert!(accepted > 0, "shedding must not refuse everything");
    // Every accepted request is on the bus; nothing of a shed one is.
    assert_eq!(h.series().await.len(), accepted * 400);
    assert!(
        h.metrics_text()
            .contains("meerkat_gateway_inflight_bytes 0"),
        "the budget is returned"
    );
}

#[tokio::test]
async fn valid_requests_travel_as_received_and_big_ones_are_split() {
    let h = Harness::new(GatewayConfig::default()).await;
    let body = write_request(&[(&[("__name__", "up"), ("job", "api")], 1.0)]);
    assert_eq!(
        write(&h, post(vec![]), body.clone()).await.status,
        StatusCode::NO_CONTENT
    );
    let envelopes = h.envelopes(bus::topics::METRICS).await;
    assert_eq!(envelopes.len(), 1);
    match &envelopes[0].payload {
        model::Payload::RemoteWrite(stored) => {
            assert_eq!(
                stored.snappy, body,
                "the body is stored exactly as it arrived"
            );
            assert_eq!(stored.samples, 1);
        }
        other => panic!("expected the raw body, got {other:?}"),
    }

    // About 1.5 MB compressed: more than one bus record may hold, so it is split by series.
    let names: Vec<String> = (0..60_000)
        .map(|i: u64| {
            format!(
                "{:016x}{:016x}",
                i.wrapping_mul(0x9E37_79B9_7F4A_7C15),
                i.wrapping_mul(31)
            )
        })
        .collect();
    let labels: Vec<[(&str, &str); 2]> = names
        .iter()
        .map(|n| [("__name__", "big"), ("id", n.as_str())])
        .collect();
    let series: Vec<(&[(&str, &str)], f64)> = labels.iter().map(|l| (&l[..], 1.0)).collect();
    let big = write_request(&series);
    assert!(big.len() > 1_000_000, "{} bytes", big.len());
    let answer = write(&h, post(vec![]), big).await;
    assert_eq!(answer.status, StatusCode::NO_CONTENT, "{}", answer.text());
    let stored = h.series().await;
    assert_eq!(
        stored
            .iter()
            .filter(|(_, l, _)| l.starts_with("big{"))
            .count(),
        60_000
    );
    let envelopes = h.envelopes(bus::topics::METRICS).await;
    assert!(envelopes.len() > 2, "split into several records");
}

#[tokio::test]
async fn writes_wait_while_the_consumer_is_too_far_behind_then_get_503() {
    use std::sync::atomic::{AtomicU64, Ordering};

    let h = Harness::new(GatewayConfig::default()).await;
    let behind_ms = Arc::new(AtomicU64::new(300));
    let source = behind_ms.clone();
    h.gateway.set_backlog(Arc::new(move || {
        Duration::from_millis(source.load(Ordering::Relaxed))
    }));
    let body = || write_request(&[(&[("__name__", "up"), ("job", "api")], 1.0)]);

    let answer = write(&h, post(vec![]), body()).await;
    assert_eq!(
        answer.status,
        StatusCode::NO_CONTENT,
        "0.3 s behind is within the default 0.5 s"
    );

    // Behind for a moment: the write waits, then goes through.
    behind_ms.store(3_000, Ordering::Relaxed);
    let catching_up = behind_ms.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        catching_up.store(100, Ordering::Relaxed);
    });
    let started = std::time::Instant::now();
    let answer = write(&h, post(vec![]), body()).await;
    assert_eq!(answer.status, StatusCode::NO_CONTENT, "{}", answer.text());
    assert!(started.elapsed() >= Duration::from_millis(250), "it waited");
    assert_eq!(h.envelopes(bus::topics::METRICS).await.len(), 2);

    // Behind for longer than the gateway waits: 503.
    behind_ms.store(3_000, Ordering::Relaxed);
    let started = std::time::Instant::now();
    let answer = write(&h, post(vec![]), body()).await;
    assert!(started.elapsed() >= gateway::BACKLOG_WAIT);
    assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(answer.retry_after.as_deref(), Some("1"));
    assert!(
        answer.text().contains("ingest is 3.0 s behind")
            && answer.text().contains("max_backlog_seconds"),
        "{}",
        answer.text()
    );
    assert_eq!(
        h.envelopes(bus::topics::METRICS).await.len(),
        2,
        "the refused write is not on the bus"
    );
    assert!(
        h.metrics_text().contains("outcome=\"backlogged\""),
        "{}",
        h.metrics_text()
    );

    behind_ms.store(0, Ordering::Relaxed);
    assert_eq!(
        write(&h, post(vec![]), body()).await.status,
        StatusCode::NO_CONTENT
    );
    assert_eq!(h.envelopes(bus::topics::METRICS).await.len(), 3);

    // 0 turns the check off.
    let off = Harness::new(GatewayConfig {
        max_backlog_seconds: 0.0,
        ..GatewayConfig::default()
    })
    .await;
    off.gateway
        .set_backlog(Arc::new(|| Duration::from_secs(100)));
    assert_eq!(
        write(&off, post(vec![]), body()).await.status,
        StatusCode::NO_CONTENT
    );

    let negative = GatewayConfig {
        max_backlog_seconds: -1.0,
        ..GatewayConfig::default()
    };
    let error = negative.validate().unwrap_err();
    assert!(error.contains("gateway.max_backlog_seconds"), "{error}");
}
