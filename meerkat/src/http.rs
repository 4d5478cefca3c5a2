//! The HTTP server every server role runs: the role's routes plus `/health` and `/metrics`,
//! request metrics, and a graceful stop that lets in-flight requests finish.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use anyhow::Context;
use axum::Router;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tower::ServiceExt;

/// Whether the process is ready for traffic: `/health` answers 200 only when it is.
#[derive(Clone, Debug, Default)]
pub struct Readiness(Arc<AtomicBool>);

impl Readiness {
    pub fn set(&self, ready: bool) {
        self.0.store(ready, Ordering::Release);
    }

    pub fn is_ready(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

/// The process's metrics registry. Components add their metrics while starting, which may
/// be after the server already answers (so `/health` can say 503 during start-up).
pub type SharedRegistry = Arc<RwLock<Registry>>;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    /// The route pattern, not the raw path, so metrics cardinality stays bounded.
    handler: String,
    method: String,
    code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HandlerLabels {
    handler: String,
}

#[derive(Clone, Debug)]
struct HttpMetrics {
    requests: Family<RequestLabels, Counter>,
    duration: Family<HandlerLabels, Histogram>,
}

impl HttpMetrics {
    fn register(registry: &mut Registry) -> Self {
        let metrics = Self {
            requests: Family::default(),
            duration: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.0005, 2.0, 16))
            }),
        };
        let registry = registry.sub_registry_with_prefix("meerkat_http");
        registry.register(
            "requests",
            "HTTP requests answered",
            metrics.requests.clone(),
        );
        registry.register_with_unit(
            "request_duration",
            "Time to answer an HTTP request",
            Unit::Seconds,
            metrics.duration.clone(),
        );
        metrics
    }
}

#[derive(Clone, Debug)]
struct AppState {
    registry: SharedRegistry,
    readiness: Readiness,
}

/// A running HTTP server.
#[derive(Debug)]
pub struct HttpServer {
    pub local_addr: SocketAddr,
    stop: watch::Sender<bool>,
    task: JoinHandle<std::io::Result<()>>,
    role_routes: RoleRoutes,
}

/// The roles' routes, installed once the roles have started. Until then every request
/// outside `/health` and `/metrics` is answered 503, so the server can listen (and say
/// "not ready") while the bus is still recovering.
#[derive(Clone, Debug)]
struct RoleRoutes {
    router: Arc<RwLock<Router>>,
    metrics: HttpMetrics,
}

impl HttpServer {
    /// Binds `addr` and starts serving `/health` and `/metrics`; the roles' routes follow
    /// with [`HttpServer::set_routes`].
    pub async fn start(
        addr: SocketAddr,
        registry: SharedRegistry,
        readiness: Readiness,
    ) -> anyhow::Result<Self> {
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen for HTTP on {addr}"))?;
        let local_addr = listener
            .local_addr()
            .context("cannot read the bound HTTP address")?;
        let (app, role_routes) = app(registry, readiness);
        let (stop, mut stopped) = watch::channel(false);
        let task = tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = stopped.wait_for(|stop| *stop).await;
                })
                .await
        });
        tracing::info!(addr = %local_addr, "HTTP listening");
        Ok(Self {
            local_addr,
            stop,
            task,
            role_routes,
        })
    }

    /// Starts serving the roles' routes (with request metrics by route).
    pub fn set_routes(&self, routes: Router) {
        self.role_routes.install(routes);
    }

    /// Stops accepting connections, closes idle ones, and waits up to `grace` for requests
    /// in flight to be answered; past that they are cut off.
    pub async fn stop(self, grace: Duration) -> anyhow::Result<()> {
        let _ = self.stop.send(true);
        let abort = self.task.abort_handle();
        match tokio::time::timeout(grace, self.task).await {
            Ok(joined) => joined
                .context("HTTP server task failed")?
                .context("HTTP server failed"),
            Err(_) => {
                abort.abort();
                tracing::warn!(
                    grace_seconds = grace.as_secs(),
                    "requests still in flight after the grace period were cut off"
                );
                Ok(())
            }
        }
    }
}

/// Meerkat's own routes, with every other path handed to the roles' routes once installed;
/// request metrics on all of them.
fn app(registry: SharedRegistry, readiness: Readiness) -> (Router, RoleRoutes) {
    let metrics = HttpMetrics::register(&mut registry.write().unwrap_or_else(|e| e.into_inner()));
    let role_routes = RoleRoutes {
        router: Arc::new(RwLock::new(Router::new().fallback(not_ready))),
        metrics: metrics.clone(),
    };
    let app = Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics_text))
        .with_state(AppState {
            registry,
            readiness,
        })
        .layer(middleware::from_fn_with_state(metrics, record_request))
        .fallback_service(tower::service_fn({
            let role_routes = role_routes.clone();
            move |request: Request| {
                let router = role_routes
                    .router
                    .read()
                    .unwrap_or_else(|e| e.into_inner())
                    .clone();
                async move { router.oneshot(request).await }
            }
        }));
    (app, role_routes)
}

impl RoleRoutes {
    fn install(&self, routes: Router) {
        let routes = routes.layer(middleware::from_fn_with_state(
            self.metrics.clone(),
            record_request,
        ));
        *self.router.write().unwrap_or_else(|e| e.into_inner()) = routes;
    }
}

async fn not_ready() -> Response {
    (StatusCode::SERVICE_UNAVAILABLE, "not ready: starting up\n").into_response()
}

async fn health(State(state): State<AppState>) -> Response {
    if state.readiness.is_ready() {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: starting up or shutting down\n",
        )
            .into_response()
    }
}

/// The OpenMetrics content type, which Prometheus negotiates and parses.
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

async fn metrics_text(State(state): State<AppState>) -> Response {
    let mut body = String::new();
    let encoded = {
        let registry = state.registry.read().unwrap_or_else(|e| e.into_inner());
        prometheus_client::encoding::text::encode(&mut body, &registry)
    };
    match encoded {
        Ok(()) => (
            [(header::CONTENT_TYPE, HeaderValue::from_static(OPENMETRICS))],
            body,
        )
            .into_response(),
        Err(error) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot encode metrics: {error}\n"),
        )
            .into_response(),
    }
}

async fn record_request(
    State(metrics): State<HttpMetrics>,
    request: Request,
    next: Next,
) -> Response {
    let handler = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let method = request.method().as_str().to_owned();
    let started = Instant::now();
    let response = next.run(request).await;
    metrics
        .duration
        .get_or_create(&HandlerLabels {
            handler: handler.clone(),
        })
        .observe(started.elapsed().as_secs_f64());
    metrics
        .requests
        .get_or_create(&RequestLabels {
            handler,
            method,
            code: response.status().as_u16().to_string(),
        })
        .inc();
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use tower::ServiceExt;

    async fn get_text(app: &Router, path: &str) -> (StatusCode, String, String) {
        let response = app
            .clone()
            .oneshot(Request::get(path).body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = response.status();
        let content_type = response
            .headers()
            .get(header::CONTENT_TYPE)
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .unwrap();
        (
            status,
            content_type,
            String::from_utf8(bytes.to_vec()).unwrap(),
        )
    }

    #[tokio::test]
    async fn health_follows_readiness() {
        let readiness = Readiness::default();
        let (app, _) = app(SharedRegistry::default(), readiness.clone());
        let (status, _, body) = get_text(&app, "/health").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(body.contains("not ready"), "{body}");
        readiness.set(true);
        assert_eq!(get_text(&app, "/health").await.0, StatusCode::OK);
        readiness.set(false);
        assert_eq!(
            get_text(&app, "/health").await.0,
            StatusCode::SERVICE_UNAVAILABLE
        );
    }

    #[tokio::test]
    async fn metrics_are_openmetrics_and_count_requests_by_route() {
        let (app, role_routes) = app(SharedRegistry::default(), Readiness::default());
        assert_eq!(
            get_text(&app, "/api/v1/things/1").await.0,
            StatusCode::SERVICE_UNAVAILABLE,
            "before the roles start"
        );
        role_routes.install(Router::new().route("/api/v1/things/{id}", get(|| async { "thing" })));
        for id in ["1", "2", "3"] {
            assert_eq!(
                get_text(&app, &format!("/api/v1/things/{id}")).await.0,
                StatusCode::OK
            );
        }
        assert_eq!(get_text(&app, "/nowhere").await.0, StatusCode::NOT_FOUND);
        let (status, content_type, body) = get_text(&app, "/metrics").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(content_type, OPENMETRICS);
        assert!(body.ends_with("# EOF\n"), "{body}");
        assert!(
            body.contains(r#"meerkat_http_requests_total{handler="/api/v1/things/{id}",method="GET",code="200"} 3"#),
            "one series per route, not per path: {body}"
        );
        assert!(
            body.contains(
                r#"meerkat_http_requests_total{handler="unmatched",method="GET",code="404"} 1"#
            ),
            "{body}"
        );
        assert!(
            body.contains(
                r#"meerkat_http_request_duration_seconds_count{handler="/api/v1/things/{id}"} 3"#
            ),
            "{body}"
        );
    }
}
