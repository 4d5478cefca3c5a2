//! Sending alerts to Alertmanager's v2 API and to plain webhooks, as Prometheus's notifier
//! does: a bounded queue (the oldest alerts dropped, and counted, when it overflows),
//! batches of at most 64 alerts, each batch posted to every Alertmanager, external labels
//! added to alerts that lack them. A failed post is not retried: firing alerts are sent
//! again on the resend delay, so Alertmanager hears of them at the next one.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::json;
use tokio::sync::Notify;

use crate::rules::{Labels, Notification};

/// Prometheus's `maxBatchSize`.
pub const MAX_BATCH: usize = 64;

#[derive(Clone, Debug)]
pub struct NotifierConfig {
    /// Alertmanager base URLs (`http://am:9093`); alerts go to `<url>/api/v2/alerts`.
    pub alertmanager_urls: Vec<String>,
    /// URLs that receive Alertmanager's webhook payload (`version: 4`) for each batch.
    pub webhook_urls: Vec<String>,
    pub external_labels: Labels,
    pub external_url: String,
    pub timeout: Duration,
    /// Alerts waiting to be sent, at most (Prometheus's `--alertmanager.notification-queue-capacity`).
    pub queue_capacity: usize,
}

impl Default for NotifierConfig {
    fn default() -> Self {
        Self {
            alertmanager_urls: Vec::new(),
            webhook_urls: Vec::new(),
            external_labels: Labels::new(),
            external_url: String::new(),
            timeout: Duration::from_secs(10),
            queue_capacity: 10_000,
        }
    }
}

/// Counters for `/metrics`.
#[derive(Debug, Default)]
pub struct NotifierStats {
    pub sent: AtomicU64,
    pub errors: AtomicU64,
    pub dropped: AtomicU64,
}

#[derive(Debug)]
pub struct Notifier {
    config: NotifierConfig,
    queue: Mutex<VecDeque<Notification>>,
    wake: Notify,
    stop: Notify,
    pub stats: NotifierStats,
}

type HttpClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

impl Notifier {
    /// Checks the URLs and starts the sending task.
    pub fn start(
        config: NotifierConfig,
    ) -> Result<(Arc<Self>, tokio::task::JoinHandle<()>), String> {
        for url in config.alertmanager_urls.iter().chain(&config.webhook_urls) {
            let uri: hyper::Uri = url
                .parse()
                .map_err(|e| format!("notification URL {url:?}: {e}"))?;
            if !matches!(uri.scheme_str(), Some("http" | "https")) {
                return Err(format!(
                    "notification URL {url:?}: use an http:// or https:// URL"
                ));
            }
        }
        // System roots are read only when some URL is https.
        let urls = || config.alertmanager_urls.iter().chain(&config.webhook_urls);
        let probe = urls()
            .find(|u| u.starts_with("https:"))
            .or_else(|| urls().next())
            .cloned()
            .unwrap_or_else(|| "http://localhost".to_owned());
        let uri: hyper::Uri = probe.parse().map_err(|e| format!("{probe:?}: {e}"))?;
        let connector = delivery::tls::connector(&probe, &uri, None).map_err(|e| e.to_string())?;
        let client: HttpClient = Client::builder(TokioExecutor::new()).build(connector);
        let notifier = Arc::new(Self {
            config,
            queue: Mutex::new(VecDeque::new()),
            wake: Notify::new(),
            stop: Notify::new(),
            stats: NotifierStats::default(),
        });
        let task = tokio::spawn(notifier.clone().run(client));
        Ok((notifier, task))
    }

    /// Whether there is anywhere to send alerts.
    pub fn has_targets(&self) -> bool {
        !self.config.alertmanager_urls.is_empty() || !self.config.webhook_urls.is_empty()
    }

    /// Queues alerts for sending.
    pub fn send(&self, alerts: Vec<Notification>) {
        if alerts.is_empty() || !self.has_targets() {
            return;
        }
        let mut queue = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        for mut alert in alerts {
            for (k, v) in &self.config.external_labels {
                alert.labels.entry(k.clone()).or_insert_with(|| v.clone());
            }
            queue.push_back(alert);
        }
        let over = queue.len().saturating_sub(self.config.queue_capacity);
        if over > 0 {
            queue.drain(..over);
            self.stats.dropped.fetch_add(over as u64, Ordering::Relaxed);
            tracing::warn!(
                dropped = over,
                "alert notification queue full, dropped the oldest"
            );
        }
        drop(queue);
        self.wake.notify_one();
    }

    /// Sends what is queued, then stops the task.
    pub fn stop(&self) {
        self.stop.notify_one();
    }

    async fn run(self: Arc<Self>, client: HttpClient) {
        loop {
            let batch: Vec<Notification> = {
                let mut queue = self.queue.lock().unwrap_or_else(|e| e.into_inner());
                let n = queue.len().min(MAX_BATCH);
                queue.drain(..n).collect()
            };
            if batch.is_empty() {
                tokio::select! {
                    () = self.wake.notified() => continue,
                    () = self.stop.notified() => return,
                }
            }
            self.post_batch(&client, &batch).await;
        }
    }

    async fn post_batch(&self, client: &HttpClient, batch: &[Notification]) {
        let alerts: Vec<serde_json::Value> = batch.iter().map(alert_json).collect();
        let body = Bytes::from(serde_json::Value::Array(alerts.clone()).to_string());
        for url in &self.config.alertmanager_urls {
            let target = format!("{}/api/v2/alerts", url.trim_end_matches('/'));
            self.post(client, &target, body.clone(), batch.len()).await;
        }
        if !self.config.webhook_urls.is_empty() {
            let body =
                Bytes::from(webhook_json(batch, alerts, &self.config.external_url).to_string());
            for url in &self.config.webhook_urls {
                self.post(client, url, body.clone(), batch.len()).await;
            }
        }
    }

    async fn post(&self, client: &HttpClient, url: &str, body: Bytes, count: usize) {
        let request = hyper::Request::post(url)
            .header("content-type", "application/json")
            .header("user-agent", concat!("meerkat/", env!("CARGO_PKG_VERSION")))
            .body(Full::new(body));
        let request = match request {
            Ok(r) => r,
            Err(error) => {
                tracing::error!(url, %error, "cannot build the notification request");
                return;
            }
        };
        let exchange = async {
            let response = client.request(request).await.map_err(|e| e.to_string())?;
            let status = response.status();
            let text = response
                .into_body()
                .collect()
                .await
                .map(|b| String::from_utf8_lossy(&b.to_bytes()).trim().to_owned())
                .unwrap_or_default();
            if status.is_success() {
                Ok(())
            } else {
                Err(format!("answered {status}: {text}"))
            }
        };
        match tokio::time::timeout(self.config.timeout, exchange).await {
            Ok(Ok(())) => {
                self.stats.sent.fetch_add(count as u64, Ordering::Relaxed);
            }
            Ok(Err(error)) => {
                self.stats.errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(url, %error, alerts = count, "sending alerts failed");
            }
            Err(_) => {
                self.stats.errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(url, alerts = count, "sending alerts timed out");
            }
        }
    }
}

/// RFC 3339 in UTC with milliseconds, as Alertmanager reads times.
pub fn rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_default()
}

/// One alert in Alertmanager's v2 `postableAlert` shape.
fn alert_json(alert: &Notification) -> serde_json::Value {
    json!({
        "labels": alert.labels,
        "annotations": alert.annotations,
        "startsAt": rfc3339(alert.starts_at_ms),
        "endsAt": rfc3339(alert.ends_at_ms),
        "generatorURL": alert.generator_url,
    })
}

/// Alertmanager's webhook payload (`version: 4`) for one batch, the shape plain webhook
/// receivers already parse.
fn webhook_json(
    batch: &[Notification],
    alerts: Vec<serde_json::Value>,
    external_url: &str,
) -> serde_json::Value {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    let resolved = |a: &Notification| a.ends_at_ms <= now;
    let alerts: Vec<serde_json::Value> = alerts
        .into_iter()
        .zip(batch)
        .map(|(mut json, a)| {
            json["status"] = json!(if resolved(a) { "resolved" } else { "firing" });
            json
        })
        .collect();
    let status = if batch.iter().all(resolved) {
        "resolved"
    } else {
        "firing"
    };
    let common = |pick: fn(&Notification) -> &Labels| -> Labels {
        let mut common = batch.first().map(pick).cloned().unwrap_or_default();
        for a in batch {
            common.retain(|k, v| pick(a).get(k) == Some(v));
        }
        common
    };
    json!({
        "version": "4",
        "receiver": "meerkat",
        "status": status,
        "alerts": alerts,
        "groupLabels": {},
        "commonLabels": common(|a| &a.labels),
        "commonAnnotations": common(|a| &a.annotations),
        "externalURL": external_url,
        "truncatedAlerts": 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    /// Each request's path and JSON body.
    type Received = Arc<Mutex<Vec<(String, serde_json::Value)>>>;

    /// A receiver that records each request's path and JSON body.
    fn receiver() -> (String, Received) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let store = seen.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let mut raw = Vec::new();
                let mut buf = [0u8; 65536];
                loop {
                    let n = stream.read(&mut buf).unwrap_or(0);
                    if n == 0 {
                        break;
                    }
                    raw.extend_from_slice(&buf[..n]);
                    let text = String::from_utf8_lossy(&raw).into_owned();
                    let Some((head, body)) = text.split_once("\r\n\r\n") else {
                        continue;
                    };
                    let length = head
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length:")
                                .and_then(|v| v.trim().parse::<usize>().ok())
                        })
                        .unwrap_or(0);
                    if body.len() < length {
                        continue;
                    }
                    let path = head.split_whitespace().nth(1).unwrap_or("").to_owned();
                    if let Ok(json) = serde_json::from_str(body) {
                        store.lock().expect("lock").push((path, json));
                    }
                    let _ = stream.write_all(
                        b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                    );
                    break;
                }
            }
        });
        (url, seen)
    }

    fn alert(i: usize) -> Notification {
        Notification {
            labels: Labels::from([
                ("alertname".to_owned(), "A".to_owned()),
                ("i".to_owned(), i.to_string()),
                ("cluster".to_owned(), "own".to_owned()),
            ]),
            annotations: Labels::new(),
            starts_at_ms: 1_000,
            ends_at_ms: 61_000,
            generator_url: "http://x/graph".into(),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn alerts_go_to_every_alertmanager_in_batches_of_64_with_external_labels() {
        let (first, first_seen) = receiver();
        let (second, second_seen) = receiver();
        let (hook, hook_seen) = receiver();
        let (notifier, task) = Notifier::start(NotifierConfig {
            alertmanager_urls: vec![first, second],
            webhook_urls: vec![format!("{hook}/hook")],
            external_labels: Labels::from([
                ("cluster".to_owned(), "external".to_owned()),
                ("region".to_owned(), "eu".to_owned()),
            ]),
            ..NotifierConfig::default()
        })
        .expect("start");
        notifier.send((0..150).map(alert).collect());
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while notifier.stats.sent.load(Ordering::Relaxed) < 450 {
            assert!(
                std::time::Instant::now() < deadline,
                "not everything was sent"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        notifier.stop();
        task.await.expect("task");
        for seen in [&first_seen, &second_seen] {
            let seen = seen.lock().expect("lock");
            let sizes: Vec<usize> = seen
                .iter()
                .map(|(path, body)| {
                    assert_eq!(path, "/api/v2/alerts");
                    body.as_array().map_or(0, Vec::len)
                })
                .collect();
            assert_eq!(sizes, vec![64, 64, 22]);
            let first = &seen[0].1[0];
            // The alert's own label wins over an external one of the same name.
            assert_eq!(first["labels"]["cluster"], "own");
            assert_eq!(first["labels"]["region"], "eu");
            assert_eq!(first["startsAt"], "1970-01-01T00:00:01.000Z");
            assert_eq!(first["endsAt"], "1970-01-01T00:01:01.000Z");
        }
        let hook_seen = hook_seen.lock().expect("lock");
        assert_eq!(hook_seen.len(), 3);
        assert_eq!(hook_seen[0].0, "/hook");
        assert_eq!(hook_seen[0].1["version"], "4");
        // endsAt is long past: the webhook payload says resolved.
        assert_eq!(hook_seen[0].1["status"], "resolved");
        assert_eq!(hook_seen[0].1["commonLabels"]["alertname"], "A");
    }

    #[tokio::test]
    async fn a_full_queue_drops_the_oldest_and_counts_them() {
        // Nobody listens: nothing is sent, and the queue keeps only the newest.
        let (notifier, _task) = Notifier::start(NotifierConfig {
            alertmanager_urls: vec!["http://127.0.0.1:9".into()],
            queue_capacity: 10,
            timeout: Duration::from_millis(200),
            ..NotifierConfig::default()
        })
        .expect("start");
        notifier.send((0..100).map(alert).collect());
        assert!(notifier.stats.dropped.load(Ordering::Relaxed) >= 90);
    }

    #[test]
    fn bad_urls_are_refused() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async {
            let error = Notifier::start(NotifierConfig {
                alertmanager_urls: vec!["ftp://am".into()],
                ..NotifierConfig::default()
            })
            .expect_err("ftp is not http");
            assert!(error.contains("use an http:// or https:// URL"), "{error}");
        });
    }
}
