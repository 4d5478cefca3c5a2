//! Kubernetes API discovery for the agents.
//!
//! - [`sd`]: Prometheus's `kubernetes_sd_configs` (roles `pod`, `service`, `endpoints`,
//!   `node`) with Prometheus 2.42's `__meta_kubernetes_*` labels ([`targets`]), as
//!   `scrape::config::TargetGroup`s the scrape manager treats like file SD groups;
//! - [`node_pods`]: a watch of only this node's pods, for the node agent.
//!
//! Both use kube's watcher, which lists, watches, resumes a closed watch from the last
//! resourceVersion and lists again after 410 Gone. Agents only: this crate never links the
//! server.

pub mod node_pods;
pub mod sd;
mod store;
pub mod targets;

pub use kube::Client;
pub use node_pods::{PodEvent, watch_node_pods};
pub use sd::{KubernetesDiscovery, Plan, Role};

use scrape::config::{Auth, KubernetesSdConfigYaml};

/// Why discovery cannot start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid Kubernetes API URL {url:?}: {message}")]
    Url { url: String, message: String },
    #[error("no Kubernetes API configuration (not in a cluster and no kubeconfig): {0}")]
    Infer(#[from] kube::config::InferConfigError),
    #[error("cannot read the kubeconfig {path}: {message}")]
    Kubeconfig { path: String, message: String },
    #[error("cannot build the Kubernetes client: {0}")]
    Client(#[from] kube::Error),
    #[error("own_namespace: cannot read {path}: {source}")]
    OwnNamespace {
        path: String,
        source: std::io::Error,
    },
    #[error("kubernetes_sd_configs: {0}")]
    Config(String),
    #[error("kubernetes_sd_configs: {0}")]
    Unsupported(String),
}

fn parse_url(url: &str) -> Result<http::Uri, Error> {
    url.parse::<http::Uri>().map_err(|e| Error::Url {
        url: url.to_owned(),
        message: e.to_string(),
    })
}

/// A client for the API server at `api_url` (`--kube-api-url`: tests, `kubectl proxy`,
/// out-of-cluster use), or else from the environment: the pod's service account in a
/// cluster, otherwise `$KUBECONFIG` / `~/.kube/config`.
pub async fn client(api_url: Option<&str>) -> Result<Client, Error> {
    let config = match api_url {
        Some(url) => kube::Config::new(parse_url(url)?),
        None => kube::Config::infer().await?,
    };
    Ok(Client::try_from(config)?)
}

/// The client an SD config asks for: its own `api_server` (with its auth and the TLS
/// options kube has) or `kubeconfig_file`, else `default` (the agent's; `Err` with why
/// there is none when it could not be made).
pub async fn client_for(
    config: &KubernetesSdConfigYaml,
    default: Result<&Client, &str>,
) -> Result<Client, Error> {
    let tls = config.tls_config.clone().unwrap_or_default();
    let unsupported_tls = [
        ("ca", tls.ca.is_some()),
        ("cert_file", tls.cert_file.is_some()),
        ("cert", tls.cert.is_some()),
        ("key_file", tls.key_file.is_some()),
        ("key", tls.key.is_some()),
        ("min_version", tls.min_version.is_some()),
        ("max_version", tls.max_version.is_some()),
    ];
    if let Some((name, _)) = unsupported_tls.iter().find(|(_, set)| *set) {
        return Err(Error::Unsupported(format!(
            "tls_config.{name} is not supported for the Kubernetes API yet"
        )));
    }
    let auth = config.auth().map_err(|e| Error::Config(e.0))?;
    let custom_http = auth.is_some() || config.tls_config.is_some();
    match (&config.api_server, &config.kubeconfig_file) {
        (Some(_), Some(_)) => Err(Error::Config(
            "cannot use 'kubeconfig_file' and 'api_server' simultaneously".to_owned(),
        )),
        (None, Some(_)) if custom_http => Err(Error::Config(
            "cannot use a custom HTTP client configuration together with 'kubeconfig_file'"
                .to_owned(),
        )),
        (None, None) if custom_http => Err(Error::Config(
            "to use custom HTTP client configuration please provide the 'api_server' URL explicitly"
                .to_owned(),
        )),
        (None, None) => default
            .cloned()
            .map_err(|why| Error::Config(format!("no Kubernetes API client: {why}"))),
        (None, Some(path)) => {
            let kubeconfig =
                kube::config::Kubeconfig::read_from(path).map_err(|e| Error::Kubeconfig {
                    path: path.clone(),
                    message: e.to_string(),
                })?;
            let options = kube::config::KubeConfigOptions::default();
            let config = kube::Config::from_custom_kubeconfig(kubeconfig, &options)
                .await
                .map_err(|e| Error::Kubeconfig {
                    path: path.clone(),
                    message: e.to_string(),
                })?;
            Ok(Client::try_from(config)?)
        }
        (Some(url), None) => {
            let mut kube_config = kube::Config::new(parse_url(url)?);
            kube_config.accept_invalid_certs = tls.insecure_skip_verify;
            kube_config.root_cert_file = tls.ca_file.clone().map(Into::into);
            kube_config.tls_server_name = tls.server_name.clone();
            if let Some(auth) = auth {
                kube_config.headers.push(authorization_header(&auth)?);
            }
            Ok(Client::try_from(kube_config)?)
        }
    }
}

fn authorization_header(auth: &Auth) -> Result<(http::HeaderName, http::HeaderValue), Error> {
    let value = auth.header_value().map_err(Error::Config)?;
    let mut value = http::HeaderValue::from_str(&value)
        .map_err(|e| Error::Config(format!("the API server credentials: {e}")))?;
    value.set_sensitive(true);
    Ok((http::header::AUTHORIZATION, value))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sd(yaml: &str) -> KubernetesSdConfigYaml {
        serde_saphyr::from_str(yaml).expect("a valid SD config")
    }

    #[tokio::test]
    async fn https_clients_have_a_crypto_provider() {
        // rustls without a provider feature fails to build any TLS client; `ring` gives one.
        let client = client(Some("https://127.0.0.1:6443")).await;
        assert!(client.is_ok(), "{:?}", client.err());
        let with_auth = client_for(
            &sd("role: pod\napi_server: https://10.0.0.1:6443\nbearer_token: t\ntls_config: {insecure_skip_verify: true}\n"),
            Err("unused"),
        )
        .await;
        assert!(with_auth.is_ok(), "{:?}", with_auth.err());
    }

    #[tokio::test]
    async fn sd_client_options_are_checked_as_prometheus_checks_them() {
        let error = |yaml: &'static str| async move {
            match client_for(&sd(yaml), Err("no cluster here")).await {
                Ok(_) => panic!("accepted: {yaml}"),
                Err(error) => error.to_string(),
            }
        };
        assert!(
            error("role: pod\napi_server: http://a\nkubeconfig_file: /k\n")
                .await
                .contains("simultaneously")
        );
        assert!(
            error("role: pod\nbearer_token: t\n")
                .await
                .contains("provide the 'api_server' URL")
        );
        assert!(
            error("role: pod\n")
                .await
                .contains("no Kubernetes API client: no cluster here")
        );
        assert!(
            error("role: pod\napi_server: http://a\ntls_config: {cert_file: /c}\n")
                .await
                .contains("tls_config.cert_file")
        );
        assert!(
            error("role: pod\nkubeconfig_file: /nonexistent/kubeconfig\n")
                .await
                .contains("/nonexistent/kubeconfig")
        );
    }
}
