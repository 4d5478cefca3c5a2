//! InfluxDB line protocol through the gateway's HTTP routes, as Telegraf sends it.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::io::Write;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use common::{Harness, send};
use gateway::GatewayConfig;

const TELEGRAF: &str = include_str!("../testdata/telegraf.lp");

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(bytes).unwrap();
    encoder.finish().unwrap()
}

#[tokio::test]
async fn telegraf_v2_payload_lands_as_prometheus_series() {
    let h = Harness::new(GatewayConfig::default()).await;
    let request = Request::post("/api/v2/write?org=acme&bucket=telegraf&precision=ns")
        .header("content-encoding", "gzip")
        .header("authorization", "Token ignored-when-auth-is-off")
        .body(Body::from(gzip(TELEGRAF.as_bytes())))
        .unwrap();
    let answer = send(&h.router(), request).await;
    assert_eq!(answer.status, StatusCode::NO_CONTENT, "{}", answer.text());
    let series = h.series().await;
    let find = |name: &str| {
        series
            .iter()
            .find(|(_, labels, _)| labels == name)
            .unwrap_or_else(|| {
                panic!(
                    "{name} missing from {:#?}",
                    series.iter().map(|s| &s.1).collect::<Vec<_>>()
                )
            })
            .2
            .clone()
    };
    assert_eq!(
        find(r#"cpu_usage_idle{cpu="cpu-total", host="web 01"}"#),
        vec![97.87]
    );
    assert_eq!(find(r#"mem_total{host="web 01"}"#), vec![23837880320.0]);
    assert_eq!(
        find(r#"disk_free{device="vda", fstype="ext4", host="web 01", mode="rw", path="/"}"#),
        vec![84875128832.0]
    );
    assert_eq!(
        find(r#"ntp_synced{host="web 01", server="pool.ntp.org"}"#),
        vec![1.0]
    );
    assert_eq!(
        find(r#"app_legacy_healthy{env="prod", team="a=b,c"}"#),
        vec![0.0]
    );
    assert!(
        !series.iter().any(|(_, l, _)| l.contains("uptime_format")),
        "string fields are not samples"
    );
    // 5 cpu + 5 cpu0 + 7 mem + 6 disk + 5 system + 1 uptime + 4 net + 4 processes + 2 ntp + 2 app.
    assert_eq!(series.len(), 41);
    let metrics = h.metrics_text();
    assert!(metrics.contains(r#"meerkat_gateway_received_total{protocol="influx",tenant="default",signal="samples"} 41"#), "{metrics}");
    assert!(metrics.contains(r#"reason="string_field"} 1"#), "{metrics}");
}

#[tokio::test]
async fn v1_write_with_precision_and_errors_in_influx_shapes() {
    let h = Harness::new(GatewayConfig::default()).await;
    let ok = Request::post("/write?db=telegraf&precision=s")
        .body(Body::from("temp,room=kitchen value=21.5 1700000000\n"))
        .unwrap();
    assert_eq!(send(&h.router(), ok).await.status, StatusCode::NO_CONTENT);
    let stored = h.series().await;
    assert_eq!(stored[0].1, r#"temp_value{room="kitchen"}"#);

    let partial = Request::post("/write")
        .body(Body::from("a value=1\nb value=\nc value=3\n"))
        .unwrap();
    let answer = send(&h.router(), partial).await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
    let json: serde_json::Value = serde_json::from_slice(&answer.body).unwrap();
    assert!(json["error"].as_str().unwrap().contains("line 2"), "{json}");
    assert_eq!(h.series().await.len(), 3, "lines 1 and 3 are kept");

    let bad_precision = Request::post("/api/v2/write?precision=weeks")
        .body(Body::from("a value=1"))
        .unwrap();
    let answer = send(&h.router(), bad_precision).await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
    let json: serde_json::Value = serde_json::from_slice(&answer.body).unwrap();
    assert_eq!(json["code"], "invalid");
    assert!(
        json["message"].as_str().unwrap().contains("precision"),
        "{json}"
    );

    let not_gzip = Request::post("/api/v2/write")
        .header("content-encoding", "gzip")
        .body(Body::from("a value=1"))
        .unwrap();
    let answer = send(&h.router(), not_gzip).await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
    assert!(answer.text().contains("gzip"), "{}", answer.text());

    let ping = Request::head("/ping").body(Body::empty()).unwrap();
    assert_eq!(send(&h.router(), ping).await.status, StatusCode::NO_CONTENT);
}

#[tokio::test]
async fn influx_token_and_basic_auth_pick_the_tenant() {
    let mut config = GatewayConfig::default();
    config
        .auth
        .tokens
        .insert("t0ken".into(), "influx-team".into());
    let h = Harness::new(config).await;
    let v2 = Request::post("/api/v2/write")
        .header("authorization", "Token t0ken")
        .body(Body::from("a value=1 1"))
        .unwrap();
    assert_eq!(send(&h.router(), v2).await.status, StatusCode::NO_CONTENT);
    // InfluxDB 1 clients send user:password as Basic auth; the password is the token.
    let v1 = Request::post("/write")
        .header("authorization", "Basic dGVsZWdyYWY6dDBrZW4=")
        .body(Body::from("b value=1 1"))
        .unwrap();
    assert_eq!(send(&h.router(), v1).await.status, StatusCode::NO_CONTENT);
    let denied = Request::post("/write")
        .body(Body::from("c value=1 1"))
        .unwrap();
    let answer = send(&h.router(), denied).await;
    assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
    let json: serde_json::Value = serde_json::from_slice(&answer.body).unwrap();
    assert!(json["error"].as_str().unwrap().contains("token"));
    assert!(
        h.series()
            .await
            .iter()
            .all(|(tenant, _, _)| tenant == "influx-team")
    );
}
