//! An agent's own HTTP endpoint: `/metrics` (its self-metrics, Prometheus text format) and
//! `/health`, as every Meerkat role has. Agents render their page on each request from
//! counters they already keep, so nothing is registered twice.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::http::{HeaderValue, header};
use axum::response::IntoResponse;
use axum::routing::get;

use crate::families::Families;

/// Fills the families of one `/metrics` answer.
pub type Render = Arc<dyn Fn(&mut Families) + Send + Sync>;

/// The running endpoint; dropping it does not stop it, [`StatusServer::stop`] does.
#[derive(Debug)]
pub struct StatusServer {
    pub addr: SocketAddr,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl StatusServer {
    /// Binds `addr` (port 0 picks a free one) and serves until stopped.
    pub async fn start(addr: SocketAddr, render: Render) -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let app = axum::Router::new()
            .route(
                "/metrics",
                get(move || {
                    let render = render.clone();
                    async move {
                        let mut families = Families::new();
                        render(&mut families);
                        let mut response = families.to_text().into_response();
                        response.headers_mut().insert(
                            header::CONTENT_TYPE,
                            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
                        );
                        response
                    }
                }),
            )
            .route("/health", get(|| async { "ok\n" }));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = stopped.await;
                })
                .await
        });
        tracing::info!(%addr, "agent metrics listening");
        Ok(Self { addr, stop, task })
    }

    /// Stops, waiting up to 5 s for a request in flight (a scraper that stalls mid-answer
    /// must not hold the agent's stop).
    pub async fn stop(self) {
        let _ = self.stop.send(());
        let abort = self.task.abort_handle();
        if tokio::time::timeout(std::time::Duration::from_secs(5), self.task)
            .await
            .is_err()
        {
            abort.abort();
        }
    }
}

/// The self-metrics every agent exports about its delivery to the gateway.
pub fn delivery_families(kind: &str, stats: &delivery::DeliveryStats, out: &mut Families) {
    out.gauge(
        "meerkat_agent_info",
        "The agent's kind and version.",
        &[("kind", kind), ("version", env!("CARGO_PKG_VERSION"))],
        1.0,
    );
    out.counter(
        "meerkat_agent_delivery_sent_samples_total",
        "Samples the gateway accepted.",
        &[],
        stats.sent_samples as f64,
    );
    out.counter(
        "meerkat_agent_delivery_sent_requests_total",
        "Remote-write requests the gateway accepted.",
        &[],
        stats.sent_requests as f64,
    );
    out.counter(
        "meerkat_agent_delivery_dropped_samples_total",
        "Samples dropped because the buffer was full (the oldest go first).",
        &[],
        stats.dropped_samples as f64,
    );
    out.counter(
        "meerkat_agent_delivery_rejected_samples_total",
        "Samples the gateway refused for good (a 4xx other than 429).",
        &[],
        stats.rejected_samples as f64,
    );
    out.counter(
        "meerkat_agent_delivery_retries_total",
        "Remote-write attempts that will be retried.",
        &[],
        stats.retries as f64,
    );
    out.gauge(
        "meerkat_agent_delivery_buffered_bytes",
        "Compressed requests waiting for the gateway, in memory and on disk.",
        &[],
        stats.buffered_bytes as f64,
    );
    out.gauge(
        "meerkat_agent_delivery_pending_samples",
        "Samples waiting for the gateway.",
        &[],
        stats.pending_samples as f64,
    );
}

/// The self-metrics every agent exports about its heartbeat.
pub fn heartbeat_families(stats: &delivery::heartbeat::HeartbeatStats, out: &mut Families) {
    let help = "Heartbeats to the gateway, by outcome.";
    out.counter(
        "meerkat_agent_heartbeats_total",
        help,
        &[("outcome", "sent")],
        stats.sent as f64,
    );
    out.counter(
        "meerkat_agent_heartbeats_total",
        help,
        &[("outcome", "failed")],
        stats.failed as f64,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn serves_the_rendered_page_and_health() {
        let render: Render = Arc::new(|families: &mut Families| {
            families.counter("meerkat_agent_things_total", "Things.", &[("a", "b")], 3.0);
        });
        let server = StatusServer::start(SocketAddr::from(([127, 0, 0, 1], 0)), render)
            .await
            .expect("binds");
        let client = crate::scraper::http_client();
        let get = |path: &str| {
            let uri: hyper::Uri = format!("http://{}{path}", server.addr)
                .parse()
                .expect("uri");
            client.get(uri)
        };
        let response = get("/metrics").await.expect("answers");
        assert_eq!(response.status(), 200);
        let body = http_body_util::BodyExt::collect(response.into_body())
            .await
            .expect("body")
            .to_bytes();
        let text = String::from_utf8_lossy(&body);
        assert!(
            text.contains("meerkat_agent_things_total{a=\"b\"} 3"),
            "{text}"
        );
        assert_eq!(get("/health").await.expect("answers").status(), 200);
        server.stop().await;
    }
}
