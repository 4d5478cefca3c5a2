//! Which binary encoding should bus records use?
//!
//! Compared on the batches the bus really carries: remote-write-shaped metric batches
//! (node_exporter-like label sets, 1 sample per series as Prometheus sends them, and 10
//! samples per series as agents batch them) and OTLP-shaped span batches. Candidates:
//! `postcard` and `bitcode` (serde, no schema files), MessagePack (`rmp-serde`), protobuf
//! (`prost`, on mirror types shaped like remote-write's `WriteRequest`: the conversion from
//! the model is not timed, which flatters protobuf), and JSON as the baseline.

use std::hint::black_box;
use std::time::{Duration, Instant};

use model::{
    AnyValue, Envelope, InstrumentationScope, KeyValue, Labels, MetricBatch, Payload, Resource,
    ResourceSpans, Sample, ScopeSpans, Series, Span, SpanBatch, SpanId, SpanKind, SpanStatus,
    StatusCode, TenantId, TraceId,
};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Minimum time spent measuring each encoding on each batch
    #[arg(long, default_value_t = 1.0)]
    seconds_per_case: f64,
}

/// A labelled batch to encode.
struct Case {
    name: &'static str,
    envelope: Envelope,
    /// Samples or spans in the batch, to report per-item figures.
    items: usize,
}

fn metric_batch(series: usize, samples_per_series: usize) -> Envelope {
    let modes = [
        "idle", "iowait", "irq", "nice", "softirq", "steal", "system", "user",
    ];
    let mut out = Vec::with_capacity(series);
    for i in 0..series {
        let labels = Labels::new([
            ("__name__", "node_cpu_seconds_total".to_owned()),
            ("cpu", (i % 64).to_string()),
            ("mode", modes[i % modes.len()].to_owned()),
            (
                "instance",
                format!(
                    "ip-10-0-{}-{}.eu-west-1.compute.internal:9100",
                    i / 250 % 250,
                    i % 250
                ),
            ),
            ("job", "node-exporter".to_owned()),
            ("namespace", "monitoring".to_owned()),
            ("pod", format!("node-exporter-{:05x}", i / 512)),
        ])
        .expect("valid labels");
        let samples = (0..samples_per_series)
            .map(|s| Sample {
                timestamp_ms: 1_764_000_000_000 + (s as i64) * 15_000,
                value: (i * 1000 + s) as f64 * 0.25,
            })
            .collect();
        out.push(Series::with_samples(labels, samples));
    }
    Envelope {
        tenant: TenantId::default_tenant(),
        payload: Payload::Metrics(MetricBatch {
            series: out,
            metadata: vec![],
        }),
    }
}

fn span_batch(spans: usize) -> Envelope {
    let spans = (0..spans)
        .map(|i| Span {
            trace_id: TraceId([(i / 8) as u8; 16]),
            span_id: SpanId([i as u8; 8]),
            trace_state: String::new(),
            parent_span_id: (i % 8 != 0).then_some(SpanId([(i - 1) as u8; 8])),
            flags: 1,
            name: format!("GET /api/v1/orders/{{id}} #{}", i % 20),
            kind: SpanKind::Server,
            start_time_unix_nano: 1_764_000_000_000_000_000 + i as u64 * 1_000_000,
            end_time_unix_nano: 1_764_000_000_000_000_000 + i as u64 * 1_000_000 + 2_500_000,
            attributes: vec![
                KeyValue::string("http.request.method", "GET"),
                KeyValue::string("url.path", format!("/api/v1/orders/{i}")),
                KeyValue::new("http.response.status_code", AnyValue::Int(200)),
                KeyValue::string("server.address", "orders.prod.svc.cluster.local"),
                KeyValue::new("server.port", AnyValue::Int(8080)),
                KeyValue::string("user_agent.original", "Mozilla/5.0 (X11; Linux x86_64)"),
                KeyValue::string("network.protocol.version", "1.1"),
                KeyValue::new("db.rows", AnyValue::Int(i as i64 % 100)),
            ],
            dropped_attributes_count: 0,
            events: vec![],
            dropped_events_count: 0,
            links: vec![],
            dropped_links_count: 0,
            status: SpanStatus {
                code: StatusCode::Unset,
                message: String::new(),
            },
        })
        .collect();
    Envelope {
        tenant: TenantId::default_tenant(),
        payload: Payload::Spans(SpanBatch {
            resource_spans: vec![ResourceSpans {
                resource: Resource {
                    attributes: vec![
                        KeyValue::string("service.name", "orders"),
                        KeyValue::string("k8s.pod.name", "orders-7d9f8b6c5-x2x9z"),
                    ],
                    dropped_attributes_count: 0,
                },
                schema_url: String::new(),
                scope_spans: vec![ScopeSpans {
                    scope: InstrumentationScope {
                        name: "opentelemetry.instrumentation.flask".into(),
                        version: "0.48b0".into(),
                        ..InstrumentationScope::default()
                    },
                    schema_url: String::new(),
                    spans,
                }],
            }],
        }),
    }
}

/// Protobuf mirror of a remote-write `WriteRequest`, for the prost candidate.
mod proto {
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct WriteRequest {
        #[prost(string, tag = "1")]
        pub tenant: String,
        #[prost(message, repeated, tag = "2")]
        pub timeseries: Vec<TimeSeries>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct TimeSeries {
        #[prost(message, repeated, tag = "1")]
        pub labels: Vec<Label>,
        #[prost(message, repeated, tag = "2")]
        pub samples: Vec<Sample>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Label {
        #[prost(string, tag = "1")]
        pub name: String,
        #[prost(string, tag = "2")]
        pub value: String,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Sample {
        #[prost(double, tag = "1")]
        pub value: f64,
        #[prost(int64, tag = "2")]
        pub timestamp: i64,
    }
}

fn to_proto(envelope: &Envelope) -> Option<proto::WriteRequest> {
    let Payload::Metrics(batch) = &envelope.payload else {
        return None;
    };
    Some(proto::WriteRequest {
        tenant: envelope.tenant.to_string(),
        timeseries: batch
            .series
            .iter()
            .map(|s| proto::TimeSeries {
                labels: s
                    .labels
                    .iter()
                    .map(|l| proto::Label {
                        name: l.name.to_owned(),
                        value: l.value.to_owned(),
                    })
                    .collect(),
                samples: s
                    .samples
                    .iter()
                    .map(|x| proto::Sample {
                        value: x.value,
                        timestamp: x.timestamp_ms,
                    })
                    .collect(),
            })
            .collect(),
    })
}

struct Measurement {
    bytes: usize,
    encode: Duration,
    decode: Duration,
}

/// Runs `f` repeatedly for at least `budget` and returns the median time of one call.
fn median_time(budget: Duration, mut f: impl FnMut()) -> Duration {
    let mut times = Vec::new();
    let started = Instant::now();
    while started.elapsed() < budget || times.len() < 5 {
        let t = Instant::now();
        f();
        times.push(t.elapsed());
    }
    times.sort_unstable();
    times[times.len() / 2]
}

fn measure<E>(budget: Duration, encode: impl Fn() -> E, decode: impl Fn(&E)) -> Measurement
where
    E: AsRef<[u8]>,
{
    let encoded = encode();
    Measurement {
        bytes: encoded.as_ref().len(),
        encode: median_time(budget, || {
            black_box(encode());
        }),
        decode: median_time(budget, || decode(black_box(&encoded))),
    }
}

pub fn run(args: &Args) -> anyhow::Result<()> {
    let budget = Duration::from_secs_f64(args.seconds_per_case);
    let cases = [
        Case {
            name: "metrics 500 series x 1 sample",
            envelope: metric_batch(500, 1),
            items: 500,
        },
        Case {
            name: "metrics 200 series x 10 samples",
            envelope: metric_batch(200, 10),
            items: 2000,
        },
        Case {
            name: "spans 200 x 8 attributes",
            envelope: span_batch(200),
            items: 200,
        },
    ];
    println!("Bus record encoding: median of repeated runs; per item = per sample or span.\n");
    for case in &cases {
        let envelope = &case.envelope;
        let mut rows: Vec<(&str, Measurement)> = vec![
            (
                "postcard",
                measure(
                    budget,
                    || envelope.encode().expect("postcard encodes"),
                    |b| {
                        black_box(Envelope::decode(b).expect("postcard decodes"));
                    },
                ),
            ),
            (
                "bitcode",
                measure(
                    budget,
                    || bitcode::serialize(envelope).expect("bitcode encodes"),
                    |b| {
                        black_box(bitcode::deserialize::<Envelope>(b).expect("bitcode decodes"));
                    },
                ),
            ),
            (
                "messagepack",
                measure(
                    budget,
                    || rmp_serde::to_vec(envelope).expect("msgpack encodes"),
                    |b| {
                        black_box(rmp_serde::from_slice::<Envelope>(b).expect("msgpack decodes"));
                    },
                ),
            ),
            (
                "json",
                measure(
                    budget,
                    || serde_json::to_vec(envelope).expect("json encodes"),
                    |b| {
                        black_box(serde_json::from_slice::<Envelope>(b).expect("json decodes"));
                    },
                ),
            ),
        ];
        if let Some(request) = to_proto(envelope) {
            use prost::Message;
            rows.push((
                "protobuf*",
                measure(
                    budget,
                    || request.encode_to_vec(),
                    |b| {
                        black_box(
                            proto::WriteRequest::decode(b.as_slice()).expect("protobuf decodes"),
                        );
                    },
                ),
            ));
        }
        let baseline = &rows[0].1;
        let (base_size, base_encode, base_decode) = (
            baseline.bytes as f64,
            baseline.encode.as_secs_f64(),
            baseline.decode.as_secs_f64(),
        );
        println!("## {}", case.name);
        println!(
            "| encoding | bytes/item | encode ns/item | decode ns/item | size vs postcard | encode vs postcard | decode vs postcard |"
        );
        println!("|---|---:|---:|---:|---:|---:|---:|");
        for (name, m) in &rows {
            let per = |d: Duration| d.as_secs_f64() * 1e9 / case.items as f64;
            println!(
                "| {name} | {:.1} | {:.0} | {:.0} | {:.2}x | {:.2}x | {:.2}x |",
                m.bytes as f64 / case.items as f64,
                per(m.encode),
                per(m.decode),
                m.bytes as f64 / base_size,
                m.encode.as_secs_f64() / base_encode,
                m.decode.as_secs_f64() / base_decode,
            );
        }
        println!();
    }
    println!("* protobuf on remote-write-shaped mirror types; model conversion not timed.");
    Ok(())
}
