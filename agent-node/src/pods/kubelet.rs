//! The kubelet's own list of the pods on its node (`GET /pods`).
//!
//! The kubelet already holds exactly this node's pods, so asking it costs the API server
//! nothing, however large the cluster. Its answer is a `PodList` like the API server's and
//! is parsed with `k8s-openapi`'s types.
//!
//! Only `http://` URLs are supported for now: the kubelet's authenticated port (10250)
//! speaks TLS with a certificate the agent would have to verify, which is a follow-up. An
//! `https://` URL is refused with a message saying so rather than sent in clear.

use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper::Uri;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use k8s_openapi::api::core::v1::{ContainerStatus, Pod};

use super::Error;
use super::store::{ContainerInfo, Owner, PodInfo, strip_runtime_prefix};

/// A node's pod list is a few megabytes at most; this bounds a misbehaving endpoint.
const BODY_LIMIT_BYTES: usize = 64 << 20;

/// Fetches and parses the kubelet's pod list.
#[derive(Debug, Clone)]
pub struct KubeletClient {
    client: Client<HttpConnector, Empty<Bytes>>,
    url: Uri,
    token_file: Option<PathBuf>,
    timeout: Duration,
}

impl KubeletClient {
    /// `url` is the full URL of the list, e.g. `http://127.0.0.1:10255/pods`. The token is
    /// read from `token_file` before every request, because projected service-account
    /// tokens are rotated on disk.
    pub fn new(url: &str, token_file: Option<PathBuf>, timeout: Duration) -> Result<Self, Error> {
        let parsed: Uri = url.parse().map_err(|e| Error::KubeletUrl {
            url: url.to_owned(),
            message: format!("{e}"),
        })?;
        match parsed.scheme_str() {
            Some("http") => {}
            Some("https") => {
                return Err(Error::KubeletUrl {
                    url: url.to_owned(),
                    message: "https is not supported yet (the kubelet's TLS certificate cannot \
                              be verified by this build); use the kubelet's http read-only port \
                              or the API-server pod watch"
                        .to_owned(),
                });
            }
            _ => {
                return Err(Error::KubeletUrl {
                    url: url.to_owned(),
                    message: "expected an http:// URL".to_owned(),
                });
            }
        }
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(timeout));
        Ok(Self {
            client: Client::builder(TokioExecutor::new()).build(connector),
            url: parsed,
            token_file,
            timeout,
        })
    }

    pub fn url(&self) -> &Uri {
        &self.url
    }

    /// The pods the kubelet lists now.
    pub async fn pods(&self) -> Result<Vec<PodInfo>, Error> {
        let mut request =
            hyper::Request::get(self.url.clone()).header("accept", "application/json");
        if let Some(path) = &self.token_file {
            let token = std::fs::read_to_string(path).map_err(|e| Error::TokenFile {
                path: path.clone(),
                source: e,
            })?;
            request = request.header("authorization", format!("Bearer {}", token.trim()));
        }
        let request = request
            .body(Empty::new())
            .map_err(|e| self.http_error(e.to_string()))?;
        let fetch = async {
            let response = self
                .client
                .request(request)
                .await
                .map_err(|e| self.http_error(error_chain(&e)))?;
            let status = response.status();
            let body = Limited::new(response.into_body(), BODY_LIMIT_BYTES)
                .collect()
                .await
                .map_err(|e| self.http_error(format!("reading the body: {e}")))?
                .to_bytes();
            if !status.is_success() {
                let text = String::from_utf8_lossy(&body[..body.len().min(512)]).into_owned();
                return Err(Error::KubeletStatus {
                    url: self.url.to_string(),
                    status: status.as_u16(),
                    body: text,
                });
            }
            Ok(body)
        };
        let body = tokio::time::timeout(self.timeout, fetch)
            .await
            .map_err(|_| self.http_error(format!("no answer within {:?}", self.timeout)))??;
        parse_pod_list(&body).map_err(|message| Error::KubeletBody {
            url: self.url.to_string(),
            message,
        })
    }

    fn http_error(&self, message: String) -> Error {
        Error::KubeletHttp {
            url: self.url.to_string(),
            message,
        }
    }
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut out = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        out.push_str(": ");
        out.push_str(&e.to_string());
        source = e.source();
    }
    out
}

/// A `PodList` document's pods; the message says what was wrong with a bad one.
pub fn parse_pod_list(body: &[u8]) -> Result<Vec<PodInfo>, String> {
    let list: k8s_openapi::List<Pod> =
        serde_json::from_slice(body).map_err(|e| format!("not a PodList: {e}"))?;
    Ok(list.items.iter().filter_map(pod_info).collect())
}

/// What the agent keeps of a pod object (from the kubelet or an API-server watch); `None`
/// for an object without a uid.
pub fn pod_info(pod: &Pod) -> Option<PodInfo> {
    let metadata = &pod.metadata;
    let uid = metadata.uid.clone().filter(|u| !u.is_empty())?;
    let spec = pod.spec.as_ref();
    let status = pod.status.as_ref();
    let host_network = spec.and_then(|s| s.host_network).unwrap_or(false);
    // A finished pod's IP goes back to the pool and may already belong to a new pod: it
    // must not attribute that pod's spans or scrapes to the finished one.
    let finished = status
        .and_then(|s| s.phase.as_deref())
        .is_some_and(|phase| phase == "Succeeded" || phase == "Failed");
    let host_network = host_network || finished;
    let mut ips: Vec<String> = Vec::new();
    if !host_network && let Some(status) = status {
        for ip in status.pod_ips.iter().flatten() {
            if !ip.ip.is_empty() && !ips.contains(&ip.ip) {
                ips.push(ip.ip.clone());
            }
        }
        if let Some(ip) = &status.pod_ip
            && !ip.is_empty()
            && !ips.contains(ip)
        {
            ips.insert(0, ip.clone());
        }
    }
    let owners = metadata.owner_references.as_deref().unwrap_or_default();
    let owner = owners
        .iter()
        .find(|o| o.controller == Some(true))
        .or_else(|| owners.first())
        .map(|o| Owner {
            kind: o.kind.clone(),
            name: o.name.clone(),
        });
    let mut containers = Vec::new();
    if let Some(status) = status {
        let statuses = [
            &status.container_statuses,
            &status.init_container_statuses,
            &status.ephemeral_container_statuses,
        ];
        for status in statuses.into_iter().flatten().flatten() {
            containers.push(container_info(status));
        }
    }
    // Containers not started yet have no status; keep their names and images from the spec.
    if let Some(spec) = spec {
        for container in &spec.containers {
            if !containers.iter().any(|c| c.name == container.name) {
                containers.push(ContainerInfo {
                    name: container.name.clone(),
                    id: String::new(),
                    image: container.image.clone().unwrap_or_default(),
                });
            }
        }
    }
    Some(PodInfo {
        uid,
        namespace: metadata.namespace.clone().unwrap_or_default(),
        name: metadata.name.clone().unwrap_or_default(),
        node: spec.and_then(|s| s.node_name.clone()).unwrap_or_default(),
        ips,
        labels: metadata.labels.clone().unwrap_or_default(),
        annotations: metadata.annotations.clone().unwrap_or_default(),
        owner,
        containers,
    })
}

fn container_info(status: &ContainerStatus) -> ContainerInfo {
    ContainerInfo {
        name: status.name.clone(),
        id: status
            .container_id
            .as_deref()
            .map(strip_runtime_prefix)
            .unwrap_or_default()
            .to_owned(),
        image: status.image.clone(),
    }
}
