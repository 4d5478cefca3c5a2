//! Agent heartbeats and the live agent list through the gateway's HTTP routes: tenancy
//! from the request's auth as for writes, refusals naming the bad field, and the gauges on
//! the gateway's metrics.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use common::{Harness, send};
use gateway::GatewayConfig;

fn heartbeat(id: &str, tenant_header: (&str, &str)) -> Request<Body> {
    let body = serde_json::json!({
        "agent_id": id, "kind": "cluster", "cluster": "prod-eu", "version": "1.2.3",
        "started_at": "2025-06-01T12:00:00Z", "interval_seconds": 30,
        "labels": {"region": "eu-west"}
    });
    Request::post("/api/v1/agents/heartbeat")
        .header("content-type", "application/json")
        .header(tenant_header.0, tenant_header.1)
        .body(Body::from(body.to_string()))
        .unwrap()
}

fn list(tenant_header: (&str, &str)) -> Request<Body> {
    Request::get("/api/v1/agents")
        .header(tenant_header.0, tenant_header.1)
        .body(Body::empty())
        .unwrap()
}

fn json(body: &[u8]) -> serde_json::Value {
    serde_json::from_slice(body).unwrap()
}

#[tokio::test]
async fn heartbeats_register_agents_listed_for_their_tenant_only() {
    let h = Harness::new(GatewayConfig::default()).await;
    let router = h.router();
    let team_a = ("X-Scope-OrgID", "team-a");
    let answer = send(&router, heartbeat("cluster/prod-eu", team_a)).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());
    assert_eq!(json(&answer.body)["registered"], true);
    let again = send(&router, heartbeat("cluster/prod-eu", team_a)).await;
    assert_eq!(json(&again.body)["registered"], false, "{}", again.text());

    let answer = send(&router, list(team_a)).await;
    assert_eq!(answer.status, StatusCode::OK);
    let listed = json(&answer.body);
    assert_eq!(listed["status"], "success");
    let agents = listed["data"].as_array().unwrap();
    assert_eq!(agents.len(), 1, "{listed}");
    let agent = &agents[0];
    assert_eq!(agent["agent_id"], "cluster/prod-eu");
    assert_eq!(agent["kind"], "cluster");
    assert_eq!(agent["cluster"], "prod-eu");
    assert_eq!(agent["version"], "1.2.3");
    assert_eq!(agent["status"], "up");
    assert_eq!(agent["started_at"], "2025-06-01T12:00:00.000Z");
    assert_eq!(agent["labels"]["region"], "eu-west");
    assert!(agent["last_seen_seconds_ago"].as_f64().unwrap() < 5.0);
    assert!(agent["last_seen"].as_str().unwrap().ends_with('Z'));

    let other = json(&send(&router, list(("X-Scope-OrgID", "team-b"))).await.body);
    assert_eq!(other["data"].as_array().unwrap().len(), 0, "{other}");

    let metrics = h.metrics_text();
    assert!(
        metrics.contains(r#"meerkat_gateway_agents{kind="cluster",status="up"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"meerkat_gateway_agents{kind="node",status="stale"} 0"#),
        "{metrics}"
    );
}

#[tokio::test]
async fn bad_heartbeats_are_refused_naming_the_field() {
    let h = Harness::new(GatewayConfig::default()).await;
    let router = h.router();
    let request = Request::post("/api/v1/agents/heartbeat")
        .body(Body::from(
            r#"{"agent_id":"a","kind":"pod","cluster":"c","version":"1","started_at":1,"interval_seconds":1}"#,
        ))
        .unwrap();
    let answer = send(&router, request).await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
    assert!(answer.text().contains("field kind"), "{}", answer.text());
    let request = Request::post("/api/v1/agents/heartbeat")
        .body(Body::from(
            r#"{"agent_id":"a","kind":"cluster","cluster":"c","version":"1","started_at":1,"interval_seconds":99999}"#,
        ))
        .unwrap();
    let answer = send(&router, request).await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
    assert!(
        answer.text().contains("field interval_seconds"),
        "{}",
        answer.text()
    );
    let huge = Request::post("/api/v1/agents/heartbeat")
        .body(Body::from(vec![b' '; 1 << 20]))
        .unwrap();
    assert_eq!(
        send(&router, huge).await.status,
        StatusCode::PAYLOAD_TOO_LARGE
    );
    // Nothing was registered by the refused heartbeats.
    let listed = json(&send(&router, list(("X-Scope-OrgID", "default"))).await.body);
    assert_eq!(listed["data"].as_array().unwrap().len(), 0, "{listed}");
}

#[tokio::test]
async fn with_auth_on_the_token_decides_the_tenant() {
    let mut config = GatewayConfig::default();
    config.auth.tokens.insert("s3cret".into(), "team-c".into());
    config.auth.tokens.insert("other".into(), "team-d".into());
    let h = Harness::new(config).await;
    let router = h.router();
    let answer = send(&router, heartbeat("a", ("X-Scope-OrgID", "team-c"))).await;
    assert_eq!(answer.status, StatusCode::UNAUTHORIZED, "{}", answer.text());
    let answer = send(&router, list(("X-Scope-OrgID", "team-c"))).await;
    assert_eq!(answer.status, StatusCode::UNAUTHORIZED);

    let answer = send(&router, heartbeat("a", ("Authorization", "Bearer s3cret"))).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());
    let mine = json(
        &send(&router, list(("Authorization", "Bearer s3cret")))
            .await
            .body,
    );
    assert_eq!(mine["data"][0]["agent_id"], "a", "{mine}");
    let theirs = json(
        &send(&router, list(("Authorization", "Bearer other")))
            .await
            .body,
    );
    assert_eq!(theirs["data"].as_array().unwrap().len(), 0, "{theirs}");
}
