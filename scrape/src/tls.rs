//! TLS for https scrape targets, with Prometheus's `tls_config` meaning.
//!
//! rustls with the ring provider, the stack the workspace already builds for kube: no C
//! toolchain, no OpenSSL to patch on customer nodes. A target without `ca_file`/`ca` is
//! checked against the system roots (as Go's `crypto/tls`, hence Prometheus, does), loaded
//! once per process through `rustls-native-certs`, which the tree already has through kube;
//! bundling webpki's roots would add a crate and ignore the CAs a cluster operator installed.

use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use bytes::Bytes;
use http_body_util::Empty;
use hyper_rustls::{FixedServerNameResolver, HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

use crate::config::TlsConfigYaml;

/// A client that speaks both http and https, with one job's TLS settings.
pub type TlsHttpClient = Client<HttpsConnector<HttpConnector>, Empty<Bytes>>;

/// Why a `tls_config` cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("tls_config: {0}")]
    Invalid(String),
    #[error("tls_config: reading {what} {path:?}: {source}")]
    Read {
        what: &'static str,
        path: String,
        source: std::io::Error,
    },
    #[error("tls_config: {what}: {detail}")]
    Pem { what: String, detail: String },
    #[error("tls_config: {0}")]
    Rustls(#[from] rustls::Error),
}

fn invalid<T>(message: impl Into<String>) -> Result<T, TlsError> {
    Err(TlsError::Invalid(message.into()))
}

/// The TLS versions `min_version`/`max_version` allow (Prometheus's default minimum is
/// TLS 1.2; rustls has nothing older, so TLS10 and TLS11 are refused rather than ignored).
fn versions(
    tls: &TlsConfigYaml,
) -> Result<Vec<&'static rustls::SupportedProtocolVersion>, TlsError> {
    fn rank(key: &str, value: Option<&str>, default: u8) -> Result<u8, TlsError> {
        match value {
            None | Some("") => Ok(default),
            Some("TLS12") => Ok(2),
            Some("TLS13") => Ok(3),
            Some(v @ ("TLS10" | "TLS11")) => invalid(format!(
                "{key} {v}: not supported by Meerkat's agent (TLS 1.2 and 1.3 only)"
            )),
            Some(v) => invalid(format!(
                "{key}: unknown TLS version {v:?} (use TLS12 or TLS13)"
            )),
        }
    }
    let min = rank("min_version", tls.min_version.as_deref(), 2)?;
    let max = rank("max_version", tls.max_version.as_deref(), 3)?;
    if min > max {
        return invalid(format!(
            "max_version must be greater than or equal to min_version (got {:?} and {:?})",
            tls.max_version.as_deref().unwrap_or_default(),
            tls.min_version.as_deref().unwrap_or_default()
        ));
    }
    let mut chosen = Vec::new();
    if min <= 2 {
        chosen.push(&rustls::version::TLS12);
    }
    if max >= 3 {
        chosen.push(&rustls::version::TLS13);
    }
    Ok(chosen)
}

/// The checks that need no file, for config load: a bad combination refuses the file as
/// Prometheus's does, instead of failing every scrape later.
pub fn validate(tls: &TlsConfigYaml) -> Result<(), TlsError> {
    if tls.ca.is_some() && tls.ca_file.is_some() {
        return invalid("at most one of ca and ca_file must be configured");
    }
    if tls.cert.is_some() && tls.cert_file.is_some() {
        return invalid("at most one of cert and cert_file must be configured");
    }
    if tls.key.is_some() && tls.key_file.is_some() {
        return invalid("at most one of key and key_file must be configured");
    }
    let has_cert = tls.cert.is_some() || tls.cert_file.is_some();
    let has_key = tls.key.is_some() || tls.key_file.is_some();
    if has_cert && !has_key {
        return invalid(
            "exactly one of key or key_file must be configured when a client certificate is configured",
        );
    }
    if has_key && !has_cert {
        return invalid(
            "exactly one of cert or cert_file must be configured when a client key is configured",
        );
    }
    if let Some(name) = &tls.server_name {
        ServerName::try_from(name.as_str())
            .map_err(|e| TlsError::Invalid(format!("server_name {name:?}: {e}")))?;
    }
    versions(tls).map(|_| ())
}

/// PEM text from the inline value or the file.
fn pem(
    inline: &Option<String>,
    file: &Option<String>,
    what: &'static str,
) -> Result<Option<Vec<u8>>, TlsError> {
    if let Some(text) = inline {
        return Ok(Some(text.as_bytes().to_vec()));
    }
    let Some(path) = file else {
        return Ok(None);
    };
    std::fs::read(path)
        .map(Some)
        .map_err(|source| TlsError::Read {
            what,
            path: path.clone(),
            source,
        })
}

fn certificates(pem: &[u8], what: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem {
            what: what.to_owned(),
            detail: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Pem {
            what: what.to_owned(),
            detail: "no PEM certificate found".to_owned(),
        });
    }
    Ok(certs)
}

fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| Arc::new(rustls::crypto::ring::default_provider()))
        .clone()
}

/// The system's roots, read once: they change with the image, not while the agent runs.
fn system_roots() -> Arc<RootCertStore> {
    static ROOTS: OnceLock<Arc<RootCertStore>> = OnceLock::new();
    ROOTS
        .get_or_init(|| {
            let found = rustls_native_certs::load_native_certs();
            for error in &found.errors {
                tracing::warn!(%error, "reading the system's CA certificates");
            }
            let mut roots = RootCertStore::empty();
            let (added, ignored) = roots.add_parsable_certificates(found.certs);
            tracing::debug!(added, ignored, "system CA certificates");
            Arc::new(roots)
        })
        .clone()
}

/// The rustls client settings for a job's `tls_config` (files read now).
pub fn client_config(tls: &TlsConfigYaml) -> Result<ClientConfig, TlsError> {
    validate(tls)?;
    let builder =
        ClientConfig::builder_with_provider(provider()).with_protocol_versions(&versions(tls)?)?;
    let builder = if tls.insecure_skip_verify {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(SkipVerify(
                provider().signature_verification_algorithms,
            )))
    } else {
        let roots = match pem(&tls.ca, &tls.ca_file, "ca_file")? {
            Some(pem) => {
                let mut roots = RootCertStore::empty();
                for cert in certificates(&pem, "ca_file")? {
                    roots.add(cert)?;
                }
                Arc::new(roots)
            }
            None => system_roots(),
        };
        builder.with_root_certificates(roots)
    };
    let cert = pem(&tls.cert, &tls.cert_file, "cert_file")?;
    let key = pem(&tls.key, &tls.key_file, "key_file")?;
    let config = match (cert, key) {
        (Some(cert), Some(key)) => {
            let chain = certificates(&cert, "cert_file")?;
            let key = PrivateKeyDer::from_pem_slice(&key).map_err(|e| TlsError::Pem {
                what: "key_file".to_owned(),
                detail: e.to_string(),
            })?;
            builder.with_client_auth_cert(chain, key)?
        }
        _ => builder.with_no_client_auth(),
    };
    Ok(config)
}

/// A pooled client for one job: plain http as before, https with its `tls_config`
/// (`server_name` replaces the URL's host in the certificate check and SNI).
pub fn https_client(tls: &TlsConfigYaml) -> Result<TlsHttpClient, TlsError> {
    let config = client_config(tls)?;
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    // hyper-rustls refuses http URLs unless told; a relabeled scheme can be either.
    connector.enforce_http(false);
    let builder = HttpsConnectorBuilder::new()
        .with_tls_config(config)
        .https_or_http();
    let builder = match &tls.server_name {
        Some(name) if !name.is_empty() => {
            let name = ServerName::try_from(name.clone())
                .map_err(|e| TlsError::Invalid(format!("server_name {name:?}: {e}")))?;
            builder.with_server_name_resolver(FixedServerNameResolver::new(name))
        }
        _ => builder,
    };
    let connector = builder.enable_http1().wrap_connector(connector);
    Ok(Client::builder(TokioExecutor::new())
        .pool_idle_timeout(std::time::Duration::from_secs(90))
        .build(connector))
}

/// A job's https client, made again when its CA, certificate or key file changes: cert-manager
/// and Kubernetes rotate them in place, and Prometheus re-reads them too, so a rotation does
/// not need a reload. A client is kept while its files are unchanged (its connections too).
#[derive(Debug)]
pub struct JobTls {
    tls: TlsConfigYaml,
    current: Mutex<Option<(u64, Result<TlsHttpClient, String>)>>,
}

impl JobTls {
    pub fn new(tls: &TlsConfigYaml) -> Self {
        Self {
            tls: tls.clone(),
            current: Mutex::new(None),
        }
    }

    /// What the files hold now (a file that cannot be read counts by its error).
    fn fingerprint(&self) -> u64 {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        for file in [&self.tls.ca_file, &self.tls.cert_file, &self.tls.key_file]
            .into_iter()
            .flatten()
        {
            match std::fs::read(file) {
                Ok(bytes) => bytes.hash(&mut hasher),
                Err(error) => error.kind().hash(&mut hasher),
            }
        }
        hasher.finish()
    }

    /// The client for the files as they are now, or why there is none.
    pub fn client(&self) -> Result<TlsHttpClient, String> {
        let fingerprint = self.fingerprint();
        let mut current = self.current.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((seen, client)) = &*current
            && *seen == fingerprint
        {
            return client.clone();
        }
        let made = https_client(&self.tls).map_err(|e| e.to_string());
        *current = Some((fingerprint, made.clone()));
        made
    }
}

/// `insecure_skip_verify: true`: any certificate is accepted, but the handshake's
/// signatures are still checked, so the session is at least with the key's holder.
#[derive(Debug)]
struct SkipVerify(WebPkiSupportedAlgorithms);

impl ServerCertVerifier for SkipVerify {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_schemes()
    }
}
