//! The real OpenTelemetry Python SDK exports traces, metrics and logs to `meerkat serve`,
//! over OTLP/gRPC and over OTLP/HTTP; everything it sent must be on the bus, translated.
//!
//! Needs the Python packages opentelemetry-sdk and opentelemetry-exporter-otlp-proto-{grpc,http},
//! which `./scripts/test` installs.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::collections::BTreeMap;
use std::process::Command;

use bus::Bus;
use bus::embedded::{EmbeddedBus, EmbeddedBusConfig};
use common::Server;
use model::{
    AnyValue, Envelope, LogRecord, Payload, Series, Span, SpanKind, StatusCode, attribute,
};

struct Received {
    spans: Vec<(String, Span)>,
    logs: Vec<(String, LogRecord)>,
    series: BTreeMap<String, Series>,
}

/// Everything on the bus, by tenant: spans with their service, log records, series by text.
async fn read_bus(dir: &std::path::Path, tenant: &str) -> Received {
    let bus = EmbeddedBus::open(dir, EmbeddedBusConfig::default()).unwrap();
    let mut received = Received {
        spans: Vec::new(),
        logs: Vec::new(),
        series: BTreeMap::new(),
    };
    for topic in bus::topics::ALL {
        for partition in 0..bus.partition_count(topic).await.unwrap() {
            let end = bus
                .watermarks(topic, partition)
                .await
                .unwrap()
                .high_watermark;
            let mut next = 0;
            while next < end {
                let records = bus.fetch(topic, partition, next, 1 << 20).await.unwrap();
                next = records.last().unwrap().offset + 1;
                for record in records {
                    let envelope = Envelope::decode(&record.value).unwrap();
                    if envelope.tenant.as_str() != tenant {
                        continue;
                    }
                    match envelope.payload {
                        Payload::Spans(batch) => {
                            for r in batch.resource_spans {
                                let service =
                                    match attribute(&r.resource.attributes, "service.name") {
                                        Some(AnyValue::String(s)) => s.clone(),
                                        _ => String::new(),
                                    };
                                for s in r.scope_spans {
                                    received.spans.extend(
                                        s.spans.into_iter().map(|span| (service.clone(), span)),
                                    );
                                }
                            }
                        }
                        Payload::Logs(batch) => {
                            for r in batch.resource_logs {
                                let service =
                                    match attribute(&r.resource.attributes, "service.name") {
                                        Some(AnyValue::String(s)) => s.clone(),
                                        _ => String::new(),
                                    };
                                for s in r.scope_logs {
                                    received.logs.extend(
                                        s.log_records.into_iter().map(|l| (service.clone(), l)),
                                    );
                                }
                            }
                        }
                        Payload::Metrics(batch) => {
                            for series in batch.series {
                                received.series.insert(series.labels.to_string(), series);
                            }
                        }
                        Payload::Events(_) | Payload::RemoteWrite(_) => {}
                    }
                }
            }
        }
    }
    received
}

fn export(transport: &str, endpoint: &str, tenant: &str) -> String {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/otel/export.py");
    let out = Command::new("python3")
        .args([script, transport, endpoint, tenant])
        .output()
        .expect("python3 runs; ./scripts/test installs the OpenTelemetry SDK");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "the SDK's {transport} export failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// `histogram_count`, `histogram_sum` and the median of the SDK's exponential histogram
/// `rpc_duration_seconds` as Meerkat's PromQL answers them for `tenant`, once ingested.
fn native_histogram_answers(addr: std::net::SocketAddr, tenant: &str) -> (f64, f64, f64) {
    let ask = |query: &str| -> Option<f64> {
        let path = format!("/api/v1/query?query={}", common::url_encode(query));
        let answer = common::get_with(addr, &path, &[("X-Scope-OrgID", tenant)])?;
        let body = &answer.body[answer.body.find('{')?..=answer.body.rfind('}')?];
        let json: serde_json::Value = serde_json::from_str(body).ok()?;
        json["data"]["result"][0]["value"][1].as_str()?.parse().ok()
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let selector = r#"rpc_duration_seconds{rpc_method="Pay"}"#;
        if let Some(count) = ask(&format!("histogram_count({selector})")) {
            let sum = ask(&format!("histogram_sum({selector})")).unwrap();
            let median = ask(&format!("histogram_quantile(0.5, {selector})")).unwrap();
            return (count, sum, median);
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{tenant}: the exponential histogram never became queryable"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

fn value(series: &BTreeMap<String, Series>, name: &str) -> f64 {
    series
        .get(name)
        .unwrap_or_else(|| {
            panic!(
                "{name} not on the bus; have:\n{}",
                series.keys().cloned().collect::<Vec<_>>().join("\n")
            )
        })
        .samples
        .last()
        .unwrap()
        .value
}

#[test]
fn the_opentelemetry_sdk_exports_over_grpc_and_http() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut meerkat = Server::start(
        dir.path(),
        &[
            "--http-listen",
            "127.0.0.1:0",
            "--otlp-grpc-listen",
            "127.0.0.1:0",
            "--otlp-http-listen",
            "127.0.0.1:0",
            "--data-dir",
            data.to_str().unwrap(),
        ],
        &[],
    );
    let otlp = meerkat.wait_for_log("OTLP listening");
    let grpc = otlp
        .split("grpc=")
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned();
    let http = otlp
        .split("http=")
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned();

    let grpc_out = export("grpc", &format!("http://{grpc}"), "otel-grpc");
    let http_out = export("http", &format!("http://{http}"), "otel-http");
    // The exponential histogram is a native histogram to PromQL.
    for tenant in ["otel-grpc", "otel-http"] {
        let (count, sum, median) = native_histogram_answers(meerkat.addr, tenant);
        assert_eq!(count, 5.0, "{tenant}");
        assert!((sum - 3.257).abs() < 1e-9, "{tenant}: {sum}");
        // The third of five observations is 0.004: its bucket's bounds hold it.
        assert!(median > 0.0035 && median <= 0.0045, "{tenant}: {median}");
    }
    meerkat.signal("TERM");
    assert_eq!(meerkat.wait().code(), Some(0), "{:?}", meerkat.seen);

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    for (tenant, output, instance) in [
        ("otel-grpc", &grpc_out, "checkout-grpc"),
        ("otel-http", &http_out, "checkout-http"),
    ] {
        let received = runtime.block_on(read_bus(&data.join("bus"), tenant));
        let trace_id = output
            .lines()
            .find(|l| l.starts_with("exported traces"))
            .unwrap()
            .split_whitespace()
            .last()
            .unwrap();

        // Traces: both spans, every attribute type, the event, the error, the parent link.
        assert_eq!(received.spans.len(), 2, "{tenant}");
        let (service, server) = received
            .spans
            .iter()
            .find(|(_, s)| s.kind == SpanKind::Server)
            .unwrap();
        let (_, client) = received
            .spans
            .iter()
            .find(|(_, s)| s.kind == SpanKind::Client)
            .unwrap();
        assert_eq!(service, "checkout");
        assert_eq!(server.trace_id.to_string(), trace_id);
        assert_eq!(server.name, "POST /checkout");
        assert_eq!(
            attribute(&server.attributes, "http.response.status_code"),
            Some(&AnyValue::Int(500))
        );
        assert_eq!(
            attribute(&server.attributes, "retry"),
            Some(&AnyValue::Bool(true))
        );
        assert_eq!(
            attribute(&server.attributes, "ratio"),
            Some(&AnyValue::Double(0.25))
        );
        assert_eq!(
            attribute(&server.attributes, "items"),
            Some(&AnyValue::Array(vec![
                AnyValue::String("book".into()),
                AnyValue::String("pen".into())
            ]))
        );
        assert_eq!(client.parent_span_id, Some(server.span_id));
        assert_eq!(client.status.code, StatusCode::Error);
        assert_eq!(client.status.message, "declined");
        assert_eq!(client.events[0].name, "card declined");
        assert_eq!(
            attribute(&client.events[0].attributes, "attempt"),
            Some(&AnyValue::Int(2))
        );

        // Logs: body, severity, attributes and the trace context of the span around them.
        assert_eq!(received.logs.len(), 1, "{tenant}");
        let (service, log) = &received.logs[0];
        assert_eq!(service, "checkout");
        assert_eq!(
            log.body,
            AnyValue::String("payment declined for order A-17".into())
        );
        assert_eq!(log.severity_text, "WARN");
        assert_eq!(log.severity_number, 13);
        assert!(log.trace_id.is_some() && log.span_id.is_some());
        assert_eq!(
            attribute(&log.attributes, "order.id"),
            Some(&AnyValue::String("A-17".into()))
        );

        // Metrics, named as Prometheus's OTLP translation names them.
        let s = &received.series;
        let at = |extra: &str| format!(r#"instance="{instance}", job="shop/checkout"{extra}"#);
        assert_eq!(
            value(
                s,
                &format!(
                    r#"orders_processed_total{{{}, payment_method="card"}}"#,
                    at("")
                )
            ),
            3.0
        );
        assert_eq!(
            value(
                s,
                &format!(
                    r#"orders_processed_total{{{}, payment_method="cash"}}"#,
                    at("")
                )
            ),
            2.0
        );
        assert_eq!(value(s, &format!("queue_depth{{{}}}", at(""))), 7.0);
        assert_eq!(
            value(
                s,
                &format!(r#"cpu_utilization_ratio{{cpu="0", {}}}"#, at(""))
            ),
            0.5
        );
        let histogram = "http_server_request_duration_seconds";
        assert_eq!(
            value(
                s,
                &format!(r#"{histogram}_count{{http_route="/checkout", {}}}"#, at(""))
            ),
            4.0
        );
        let sum = value(
            s,
            &format!(r#"{histogram}_sum{{http_route="/checkout", {}}}"#, at("")),
        );
        assert!((sum - 1.824).abs() < 1e-9, "{sum}");
        assert_eq!(
            value(
                s,
                &format!(
                    r#"{histogram}_bucket{{http_route="/checkout", {}, le="+Inf"}}"#,
                    at("")
                )
            ),
            4.0
        );
        // Every other resource attribute, including the SDK's own telemetry_sdk_*, is on
        // target_info.
        let info = s
            .values()
            .find(|series| {
                series.labels.metric_name() == Some("target_info")
                    && series.labels.get("instance") == Some(instance)
            })
            .expect("target_info");
        assert_eq!(info.labels.get("job"), Some("shop/checkout"));
        assert_eq!(info.labels.get("deployment_environment"), Some("test"));
        assert_eq!(info.labels.get("telemetry_sdk_language"), Some("python"));
        assert_eq!(info.samples.last().unwrap().value, 1.0);
    }
}
