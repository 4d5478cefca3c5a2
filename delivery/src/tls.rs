//! The connector both remote-write and the heartbeat use: plain http as before, https over
//! rustls with ring (the stack the scrape side and kube use; no aws-lc or OpenSSL build).
//!
//! The caller hands in the rustls settings (the cluster agent builds them from a
//! remote_write `tls_config` with `scrape::tls::client_config`); without them the gateway's
//! certificate is checked against the system's roots, as Prometheus does.

use std::sync::Arc;
use std::time::Duration;

use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::connect::HttpConnector;

use crate::DeliveryError;

/// A connector for `url` with `tls`, else the system's roots (read only when `url` is
/// https, so an http-only agent starts on an image without CA certificates).
pub fn connector(
    url: &str,
    uri: &hyper::Uri,
    tls: Option<&Arc<rustls::ClientConfig>>,
) -> Result<HttpsConnector<HttpConnector>, DeliveryError> {
    let mut http = HttpConnector::new();
    http.set_nodelay(true);
    http.set_connect_timeout(Some(Duration::from_secs(5)));
    // hyper-rustls takes https itself; the inner connector must let it through.
    http.enforce_http(false);
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let invalid = |reason: String| DeliveryError::InvalidUrl {
        url: url.to_owned(),
        reason,
    };
    let builder = match tls {
        Some(config) => HttpsConnectorBuilder::new().with_tls_config(config.as_ref().clone()),
        None if uri.scheme_str() == Some("https") => HttpsConnectorBuilder::new()
            .with_provider_and_native_roots(provider)
            .map_err(|e| invalid(format!("no system CA certificates for https: {e}")))?,
        None => {
            let config = rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .map_err(|e| invalid(format!("TLS settings: {e}")))?
                .with_root_certificates(rustls::RootCertStore::empty())
                .with_no_client_auth();
            HttpsConnectorBuilder::new().with_tls_config(config)
        }
    };
    Ok(builder.https_or_http().enable_http1().wrap_connector(http))
}

/// `http` or `https`, else why not.
pub(crate) fn check_scheme(url: &str, uri: &hyper::Uri) -> Result<(), DeliveryError> {
    match uri.scheme_str() {
        Some("http" | "https") => Ok(()),
        _ => Err(DeliveryError::InvalidUrl {
            url: url.to_owned(),
            reason: "use an http:// or https:// URL".to_owned(),
        }),
    }
}
