//! Scraping on a schedule: one loop per target, as Prometheus 2.42 runs them.
//!
//! Each target is scraped every `interval` at a fixed offset inside the interval (a hash of
//! the target, so many targets spread out instead of firing together), with the job's
//! timeout, auth and `Accept` header. Every scrape yields the page's series plus the five
//! report series (`up`, `scrape_duration_seconds`, `scrape_samples_scraped`,
//! `scrape_samples_post_metric_relabeling`, `scrape_series_added`), and a staleness marker
//! for each series the previous scrape had and this one lacks — all of them when the scrape
//! fails, and all of them plus the report series when the target goes away. Output goes to a
//! [`ScrapeSink`], which the agent wires to delivery.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::io::Read;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::sync::watch;

use crate::config::{
    PrometheusConfig, ScrapeJob, Target, TargetGroup, discovered_labels, populate_target,
};
use crate::discovery;
use crate::exposition::{ACCEPT_HEADER, Format};
use crate::labels::LabelSet;
use crate::page::{FamilyMetadata, PageOptions, PageSample, read_page};
use crate::tls::JobTls;

/// Go's `http.Client` gives up on the 10th redirect; Prometheus keeps that default.
const MAX_REDIRECTS: usize = 10;

/// Prometheus's staleness marker: a NaN with this bit pattern.
pub const STALE_NAN: f64 = f64::from_bits(0x7ff0_0000_0000_0002);

/// One scrape's output.
#[derive(Debug, Default)]
pub struct ScrapeOutput {
    pub samples: Vec<PageSample>,
    pub metadata: BTreeMap<String, FamilyMetadata>,
}

/// Where scrapes go.
pub trait ScrapeSink: Send + Sync + 'static {
    fn accept(&self, output: ScrapeOutput);
}

/// The plain-http client all loops share (connections are kept alive per target); https
/// goes through a per-job client made from the job's `tls_config` ([`crate::tls`]).
pub type HttpClient = Client<HttpConnector, Empty<Bytes>>;

pub fn http_client() -> HttpClient {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(90))
        .build(connector)
}

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

const REPORT_SERIES: [&str; 5] = [
    "up",
    "scrape_duration_seconds",
    "scrape_samples_scraped",
    "scrape_samples_post_metric_relabeling",
    "scrape_series_added",
];

/// The state one target's loop keeps between scrapes.
struct TargetLoop {
    target: Target,
    job: Arc<ScrapeJob>,
    options: PageOptions,
    client: HttpClient,
    /// The job's https client (shared by its targets when the manager hands it in; a
    /// redirect can lead an http target to https too); a bad `tls_config` fails each https
    /// scrape with its message.
    tls: Arc<JobTls>,
    /// The series the last scrape produced (packed), to mark the missing ones stale.
    last_series: HashSet<Box<[u8]>>,
}

impl TargetLoop {
    fn new(target: Target, job: Arc<ScrapeJob>, client: HttpClient) -> Self {
        let options = PageOptions {
            honor_labels: job.honor_labels,
            honor_timestamps: job.honor_timestamps,
            sample_limit: job.sample_limit,
            label_limit: job.label_limit,
            label_name_length_limit: job.label_name_length_limit,
            label_value_length_limit: job.label_value_length_limit,
            metric_relabel: job.metric_relabel.clone(),
        };
        Self {
            target,
            tls: Arc::new(JobTls::new(&job.tls)),
            job,
            options,
            client,
            last_series: HashSet::new(),
        }
    }

    /// Shares the job's https client instead of making one per target.
    fn with_tls(self, tls: Arc<JobTls>) -> Self {
        Self { tls, ..self }
    }

    /// One GET, over TLS when the URL says https.
    async fn send(
        &self,
        url: &url::Url,
        authorize: bool,
    ) -> Result<hyper::Response<hyper::body::Incoming>, String> {
        let uri: hyper::Uri = url
            .as_str()
            .parse()
            .map_err(|e| format!("invalid target URL {url}: {e}"))?;
        let mut request = hyper::Request::get(uri)
            .header("accept", ACCEPT_HEADER)
            .header("accept-encoding", "gzip")
            .header(
                "user-agent",
                concat!("meerkat-agent/", env!("CARGO_PKG_VERSION")),
            )
            .header(
                "x-prometheus-scrape-timeout-seconds",
                format!("{}", self.target.timeout_ms as f64 / 1000.0),
            );
        if authorize && let Some(auth) = &self.job.auth {
            request = request.header("authorization", auth.header_value()?);
        }
        let request = request
            .body(Empty::new())
            .map_err(|e| format!("cannot build the request: {e}"))?;
        let sent = match url.scheme() {
            "http" => self.client.request(request).await,
            "https" => {
                let client = self
                    .tls
                    .client()
                    .map_err(|e| format!("Get {:?}: {e}", url.as_str()))?;
                client.request(request).await
            }
            other => {
                return Err(format!(
                    "Get {:?}: unsupported protocol scheme {other:?}",
                    url.as_str()
                ));
            }
        };
        sent.map_err(|e| format!("Get {:?}: {}", url.as_str(), error_chain(&e)))
    }

    fn report_labels(&self, name: &str) -> LabelSet {
        let mut labels = self.target.labels.clone();
        labels.set(model::METRIC_NAME_LABEL, name.to_owned());
        labels
    }

    fn report(&self, output: &mut ScrapeOutput, at_ms: i64, values: [f64; 5]) {
        for (name, value) in REPORT_SERIES.iter().zip(values) {
            output.samples.push(PageSample {
                labels: self.report_labels(name),
                value,
                timestamp_ms: at_ms,
                exemplar: None,
                own_timestamp: false,
            });
        }
    }

    /// Fetches the page: its bytes and `Content-Type`.
    async fn fetch(&self) -> Result<(Vec<u8>, Option<String>), String> {
        let first = url::Url::parse(&self.target.url)
            .map_err(|e| format!("invalid target URL {}: {e}", self.target.url))?;
        let mut url = first.clone();
        let mut redirects = 0;
        let response = loop {
            // Go sends credentials on only to the same host or its subdomains.
            let authorize = match (first.host_str(), url.host_str()) {
                (Some(a), Some(b)) => a == b || b.ends_with(&format!(".{a}")),
                _ => false,
            };
            let response = self.send(&url, authorize).await?;
            let status = response.status().as_u16();
            let followed = matches!(status, 301 | 302 | 303 | 307 | 308);
            let location = response
                .headers()
                .get("location")
                .and_then(|v| v.to_str().ok());
            let (true, true, Some(location)) = (self.job.follow_redirects, followed, location)
            else {
                break response;
            };
            let next = url.join(location).map_err(|e| {
                format!(
                    "Get {:?}: bad redirect location {location:?}: {e}",
                    url.as_str()
                )
            })?;
            redirects += 1;
            if redirects >= MAX_REDIRECTS {
                return Err(format!(
                    "Get {:?}: stopped after {MAX_REDIRECTS} redirects",
                    next.as_str()
                ));
            }
            url = next;
        };
        let status = response.status();
        if !status.is_success() {
            return Err(format!("server returned HTTP status {status}"));
        }
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let content_type = header("content-type");
        let gzip = header("content-encoding").is_some_and(|e| e.eq_ignore_ascii_case("gzip"));
        let limit = match self.job.body_size_limit_bytes {
            0 => usize::MAX,
            limit => limit as usize,
        };
        let body = Limited::new(response.into_body(), limit)
            .collect()
            .await
            .map_err(|e| {
                if e.is::<http_body_util::LengthLimitError>() {
                    format!("body size limit exceeded ({limit} bytes)")
                } else {
                    format!("reading the body: {e}")
                }
            })?
            .to_bytes();
        if !gzip {
            return Ok((body.to_vec(), content_type));
        }
        let mut page = Vec::new();
        flate2::read::GzDecoder::new(&body[..])
            .take((limit as u64).saturating_add(1))
            .read_to_end(&mut page)
            .map_err(|e| format!("decompressing the body: {e}"))?;
        if page.len() > limit {
            return Err(format!("body size limit exceeded ({limit} bytes)"));
        }
        Ok((page, content_type))
    }

    /// One scrape at `at_ms`: the page (or the failure) and the report series.
    async fn scrape(&mut self, at_ms: i64) -> ScrapeOutput {
        let started = Instant::now();
        let timeout = Duration::from_millis(self.target.timeout_ms);
        let fetched = match tokio::time::timeout(timeout, self.fetch()).await {
            Ok(result) => result,
            Err(_) => Err(format!(
                "context deadline exceeded (scrape timeout {timeout:?})"
            )),
        };
        let page = fetched.and_then(|(body, content_type)| {
            let format = Format::from_content_type(content_type.as_deref());
            read_page(&body, format, &self.target.labels, &self.options, at_ms)
                .map_err(|e| e.to_string())
        });
        let mut output = ScrapeOutput::default();
        let (up, scraped, kept, added) = match page {
            Ok(page) => {
                // Series with their own timestamps are not tracked for staleness (Prometheus).
                let current: HashSet<Box<[u8]>> = page
                    .samples
                    .iter()
                    .filter(|s| !s.own_timestamp)
                    .map(|s| s.labels.pack())
                    .collect();
                let added = current.difference(&self.last_series).count();
                let kept = page.samples.len();
                output.samples = page.samples;
                output.metadata = page.metadata;
                self.mark_stale(&mut output, &current, at_ms);
                self.last_series = current;
                (1.0, page.scraped, kept, added)
            }
            Err(error) => {
                tracing::debug!(target = %self.target.url, %error, "scrape failed");
                self.mark_stale(&mut output, &HashSet::new(), at_ms);
                self.last_series.clear();
                (0.0, 0, 0, 0)
            }
        };
        let duration = started.elapsed().as_secs_f64();
        self.report(
            &mut output,
            at_ms,
            [up, duration, scraped as f64, kept as f64, added as f64],
        );
        output
    }

    /// Staleness markers for the last scrape's series missing from `current`.
    fn mark_stale(&self, output: &mut ScrapeOutput, current: &HashSet<Box<[u8]>>, at_ms: i64) {
        for gone in self.last_series.difference(current) {
            let Some(labels) = LabelSet::unpack(gone) else {
                continue;
            };
            output.samples.push(PageSample {
                labels,
                value: STALE_NAN,
                timestamp_ms: at_ms,
                exemplar: None,
                own_timestamp: false,
            });
        }
    }

    /// The target went away: every series it had, and its report series, go stale.
    fn end(&mut self, at_ms: i64) -> ScrapeOutput {
        let mut output = ScrapeOutput::default();
        self.mark_stale(&mut output, &HashSet::new(), at_ms);
        self.last_series.clear();
        self.report(&mut output, at_ms, [STALE_NAN; 5]);
        output
    }
}

/// One fetch of `target`'s page as its loop makes it (TLS, auth, redirects, size limit),
/// off the schedule: for checking a target by hand, where why it fails matters and `up`
/// only says 0.
pub async fn fetch_page(
    job: Arc<ScrapeJob>,
    target: Target,
    client: HttpClient,
) -> Result<(Vec<u8>, Option<String>), String> {
    let timeout = Duration::from_millis(target.timeout_ms);
    let state = TargetLoop::new(target, job, client);
    match tokio::time::timeout(timeout, state.fetch()).await {
        Ok(result) => result,
        Err(_) => Err(format!(
            "context deadline exceeded (scrape timeout {timeout:?})"
        )),
    }
}

/// Go's `err.Error()` is one line with causes; hyper's errors keep theirs as sources.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Where in each interval a target is scraped: a stable hash of it, so restarts keep the
/// schedule and targets spread over the interval.
fn offset_ms(target: &Target) -> u64 {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    target.url.hash(&mut hasher);
    target.labels.hash(&mut hasher);
    hasher.finish() % target.interval_ms.max(1)
}

/// Runs one target's loop until `stop` turns true, then marks everything stale.
async fn run_target(
    mut state: TargetLoop,
    sink: Arc<dyn ScrapeSink>,
    mut stop: watch::Receiver<bool>,
) {
    let interval = state.target.interval_ms.max(1);
    let offset = offset_ms(&state.target);
    let now = now_ms().max(0) as u64;
    let mut next = now - now % interval + offset;
    if next < now {
        next += interval;
    }
    loop {
        let wait = Duration::from_millis(next.saturating_sub(now_ms().max(0) as u64));
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.changed() => break,
        }
        if *stop.borrow() {
            break;
        }
        let at_ms = now_ms();
        let output = state.scrape(at_ms).await;
        sink.accept(output);
        let now = now_ms().max(0) as u64;
        // Skip rounds a slow scrape overran, as a ticker does.
        while next <= now {
            next += interval;
        }
    }
    sink.accept(state.end(now_ms()));
}

/// A running target: what identifies it and how to stop it.
struct Running {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

/// All of a configuration's targets, started, stopped and refreshed as discovery changes.
pub struct ScrapeManager {
    client: HttpClient,
    sink: Arc<dyn ScrapeSink>,
    /// Keyed by job name, a fingerprint of the job's settings (so a reload that changes
    /// them restarts its loops, as Prometheus does) and the target.
    running: HashMap<(String, u64, Target), Running>,
    /// Each file discovery entry's last good read.
    file_sd: HashMap<(String, usize), discovery::FileSdCache>,
}

impl std::fmt::Debug for ScrapeManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScrapeManager")
            .field("targets", &self.running.len())
            .finish()
    }
}

/// A fingerprint of everything a job's loops use (its rules print their patterns).
fn job_fingerprint(job: &ScrapeJob) -> u64 {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    format!("{job:?}").hash(&mut hasher);
    hasher.finish()
}

/// What discovery found for a job: its targets and the problems met on the way.
#[derive(Debug, Default)]
pub struct JobTargets {
    pub targets: Vec<Target>,
    pub errors: Vec<String>,
}

/// The targets of `job` now: static groups and file discovery, populated and relabeled.
pub fn job_targets(job: &ScrapeJob) -> JobTargets {
    job_targets_with(job, &[])
}

/// Like [`job_targets`], with `external` groups found by a discovery that runs outside
/// this crate (Kubernetes, in the cluster agent) treated like file discovery's.
pub fn job_targets_with(job: &ScrapeJob, external: &[TargetGroup]) -> JobTargets {
    job_targets_cached(job, external, &mut HashMap::new())
}

/// [`job_targets_with`], keeping each file discovery file's last good read in `file_sd`
/// (keyed by job and entry), as Prometheus does when a file breaks.
fn job_targets_cached(
    job: &ScrapeJob,
    external: &[TargetGroup],
    file_sd: &mut HashMap<(String, usize), discovery::FileSdCache>,
) -> JobTargets {
    let mut found = JobTargets::default();
    let mut groups = job.static_groups.clone();
    groups.extend(external.iter().cloned());
    for (index, sd) in job.file_sd.iter().enumerate() {
        let cache = file_sd.entry((job.name.clone(), index)).or_default();
        let (file_groups, errors) = cache.read(&sd.files);
        groups.extend(file_groups);
        found.errors.extend(errors);
    }
    for group in &groups {
        for address in &group.targets {
            match populate_target(&discovered_labels(group, address), job) {
                Ok(Some(target)) => {
                    if !found.targets.contains(&target) {
                        found.targets.push(target);
                    }
                }
                Ok(None) => {}
                Err(error) => found
                    .errors
                    .push(format!("{} target {address:?}: {error}", group.source)),
            }
        }
    }
    found
}

impl ScrapeManager {
    pub fn new(client: HttpClient, sink: Arc<dyn ScrapeSink>) -> Self {
        Self {
            client,
            sink,
            running: HashMap::new(),
            file_sd: HashMap::new(),
        }
    }

    /// Makes the running targets those of `config` now: new ones start, gone ones stop
    /// (their series marked stale), unchanged ones keep running. Returns discovery's errors.
    pub fn apply(&mut self, config: &PrometheusConfig) -> Vec<String> {
        self.apply_with(config, &HashMap::new())
    }

    /// Like [`ScrapeManager::apply`], adding to each job the groups `external` holds under
    /// its name: discoveries that run elsewhere (the cluster agent's Kubernetes watchers)
    /// hand their current groups in, so this crate needs no Kubernetes client.
    pub fn apply_with(
        &mut self,
        config: &PrometheusConfig,
        external: &HashMap<String, Vec<TargetGroup>>,
    ) -> Vec<String> {
        let mut wanted: HashMap<(String, u64, Target), Arc<ScrapeJob>> = HashMap::new();
        let mut errors = Vec::new();
        for job in &config.jobs {
            let extra = external.get(&job.name).map_or(&[][..], Vec::as_slice);
            let mut found = job_targets_cached(job, extra, &mut self.file_sd);
            if job.target_limit > 0 && found.targets.len() > job.target_limit {
                // Prometheus fails the whole pool rather than picking some targets.
                errors.push(format!(
                    "job {:?}: target_limit exceeded ({} targets, limit {}): none scraped",
                    job.name,
                    found.targets.len(),
                    job.target_limit
                ));
                found.targets.clear();
            }
            errors.extend(
                found
                    .errors
                    .into_iter()
                    .map(|e| format!("job {:?}: {e}", job.name)),
            );
            let settings = job_fingerprint(job);
            let job = Arc::new(job.clone());
            for target in found.targets {
                wanted.insert((job.name.clone(), settings, target), job.clone());
            }
        }
        self.running.retain(|key, running| {
            let keep = wanted.contains_key(key);
            if !keep {
                let _ = running.stop.send(true);
            }
            keep
        });
        // One https client per job and apply, shared by the job's new targets.
        let mut tls_clients: HashMap<String, Arc<JobTls>> = HashMap::new();
        for (key, job) in wanted {
            if self.running.contains_key(&key) {
                continue;
            }
            let (stop, stopped) = watch::channel(false);
            let tls = tls_clients
                .entry(key.0.clone())
                .or_insert_with(|| {
                    let tls = Arc::new(JobTls::new(&job.tls));
                    // Made now for https jobs, so a bad file is reported at once.
                    if key.2.url.starts_with("https://")
                        && let Err(error) = tls.client()
                    {
                        errors.push(format!("job {:?}: {error}", job.name));
                    }
                    tls
                })
                .clone();
            let state = TargetLoop::new(key.2.clone(), job, self.client.clone()).with_tls(tls);
            let task = tokio::spawn(run_target(state, self.sink.clone(), stopped));
            self.running.insert(key, Running { stop, task });
        }
        errors
    }

    /// The targets running now, by job.
    pub fn targets(&self) -> Vec<(String, Target)> {
        let mut targets: Vec<(String, Target)> = self
            .running
            .keys()
            .map(|(job, _, target)| (job.clone(), target.clone()))
            .collect();
        targets.sort_by(|a, b| (&a.0, &a.1.url).cmp(&(&b.0, &b.1.url)));
        targets
    }

    /// Stops every loop (each marks its series stale) and waits for them.
    pub async fn stop(&mut self) {
        let running: Vec<Running> = self.running.drain().map(|(_, r)| r).collect();
        for r in &running {
            let _ = r.stop.send(true);
        }
        for r in running {
            let _ = r.task.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Discard;

    impl ScrapeSink for Discard {
        fn accept(&self, _: ScrapeOutput) {}
    }

    #[tokio::test]
    async fn external_groups_are_relabeled_like_file_groups() {
        let config = PrometheusConfig::parse(
            r#"
scrape_configs:
  - job_name: pods
    kubernetes_sd_configs: [{role: pod}]
    relabel_configs:
      - source_labels: [__meta_kubernetes_pod_annotation_prometheus_io_scrape]
        action: keep
        regex: "true"
      - source_labels: [__meta_kubernetes_pod_name]
        target_label: pod
"#,
        )
        .unwrap();
        let group = |name: &str, scrape: &str| TargetGroup {
            targets: vec![format!("{name}:8080")],
            labels: BTreeMap::from([
                ("__meta_kubernetes_pod_name".to_owned(), name.to_owned()),
                (
                    "__meta_kubernetes_pod_annotation_prometheus_io_scrape".to_owned(),
                    scrape.to_owned(),
                ),
            ]),
            source: format!("pod/default/{name}:0"),
        };
        let external = HashMap::from([(
            "pods".to_owned(),
            vec![group("a", "true"), group("b", "false")],
        )]);
        let mut manager = ScrapeManager::new(http_client(), Arc::new(Discard));
        assert!(manager.apply_with(&config, &external).is_empty());
        let targets = manager.targets();
        assert_eq!(targets.len(), 1, "{targets:?}");
        assert_eq!(targets[0].1.url, "http://a:8080/metrics");
        assert_eq!(targets[0].1.labels.get("pod"), Some("a"));
        // Groups of another job name are not this job's; without groups the target stops.
        let other = HashMap::from([("other".to_owned(), vec![group("c", "true")])]);
        manager.apply_with(&config, &other);
        assert!(manager.targets().is_empty());
        manager.stop().await;
    }

    #[test]
    fn basic_auth_is_standard_base64() {
        let auth = crate::config::Auth::Basic {
            username: "user".into(),
            password: crate::config::Secret::Inline("pass".into()),
        };
        assert_eq!(auth.header_value().unwrap(), "Basic dXNlcjpwYXNz");
    }

    /// A page server whose answer (status, body) the test changes between scrapes.
    fn page_server(answer: Arc<std::sync::Mutex<(u16, String)>>) -> u16 {
        use std::io::{BufRead, BufReader, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut line = String::new();
                while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
                    line.clear();
                }
                let (status, body) = answer.lock().unwrap().clone();
                let _ = write!(
                    stream,
                    "HTTP/1.1 {status} X\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        port
    }

    fn values(output: &ScrapeOutput) -> Vec<(String, String)> {
        let mut values: Vec<(String, String)> = output
            .samples
            .iter()
            .map(|s| {
                let value = if s.value.to_bits() == STALE_NAN.to_bits() {
                    "stale".to_owned()
                } else {
                    s.value.to_string()
                };
                (s.labels.get("__name__").unwrap().to_owned(), value)
            })
            .filter(|(name, _)| name != "scrape_duration_seconds")
            .collect();
        values.sort();
        values
    }

    fn pairs(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[tokio::test]
    async fn gone_series_and_failed_scrapes_are_marked_stale() {
        let answer = Arc::new(std::sync::Mutex::new((200, "a 1\nb 2\n".to_owned())));
        let port = page_server(answer.clone());
        let config = PrometheusConfig::parse(&format!(
            "scrape_configs:\n  - job_name: j\n    scrape_interval: 1s\n    static_configs:\n      - targets: ['127.0.0.1:{port}']\n"
        ))
        .unwrap();
        let job = Arc::new(config.jobs[0].clone());
        let target = job_targets(&job).targets.remove(0);
        let mut state = TargetLoop::new(target, job, http_client());

        let first = state.scrape(1_000).await;
        assert_eq!(
            values(&first),
            pairs(&[
                ("a", "1"),
                ("b", "2"),
                ("scrape_samples_post_metric_relabeling", "2"),
                ("scrape_samples_scraped", "2"),
                ("scrape_series_added", "2"),
                ("up", "1")
            ])
        );
        assert!(first.samples.iter().all(|s| s.timestamp_ms == 1_000));
        assert_eq!(first.samples[0].labels.get("job"), Some("j"));

        *answer.lock().unwrap() = (200, "a 3\n".to_owned());
        let second = state.scrape(2_000).await;
        assert_eq!(
            values(&second),
            pairs(&[
                ("a", "3"),
                ("b", "stale"),
                ("scrape_samples_post_metric_relabeling", "1"),
                ("scrape_samples_scraped", "1"),
                ("scrape_series_added", "0"),
                ("up", "1")
            ])
        );

        // A failed scrape: up 0, everything the last one had goes stale.
        *answer.lock().unwrap() = (500, String::new());
        let third = state.scrape(3_000).await;
        assert_eq!(
            values(&third),
            pairs(&[
                ("a", "stale"),
                ("scrape_samples_post_metric_relabeling", "0"),
                ("scrape_samples_scraped", "0"),
                ("scrape_series_added", "0"),
                ("up", "0")
            ])
        );

        // A broken page fails the scrape as a whole.
        *answer.lock().unwrap() = (200, "a 1\nb{ 2\n".to_owned());
        assert_eq!(
            values(&state.scrape(4_000).await).last().unwrap(),
            &("up".to_owned(), "0".to_owned())
        );

        // The target goes away: its series and its report series go stale.
        *answer.lock().unwrap() = (200, "a 5\n".to_owned());
        state.scrape(5_000).await;
        let end = state.end(6_000);
        assert_eq!(
            values(&end),
            pairs(&[
                ("a", "stale"),
                ("scrape_samples_post_metric_relabeling", "stale"),
                ("scrape_samples_scraped", "stale"),
                ("scrape_series_added", "stale"),
                ("up", "stale")
            ])
        );
    }

    #[tokio::test]
    async fn series_with_their_own_timestamps_are_not_marked_stale() {
        let answer = Arc::new(std::sync::Mutex::new((200, "a 1\nt 5 1000\n".to_owned())));
        let port = page_server(answer.clone());
        let config = PrometheusConfig::parse(&format!(
            "scrape_configs:\n  - job_name: j\n    static_configs:\n      - targets: ['127.0.0.1:{port}']\n"
        ))
        .unwrap();
        let job = Arc::new(config.jobs[0].clone());
        let target = job_targets(&job).targets.remove(0);
        let mut state = TargetLoop::new(target, job, http_client());
        state.scrape(2_000).await;
        *answer.lock().unwrap() = (200, String::new());
        let names: Vec<(String, String)> = values(&state.scrape(3_000).await);
        assert!(
            names.contains(&("a".to_owned(), "stale".to_owned())),
            "{names:?}"
        );
        assert!(!names.iter().any(|(n, _)| n == "t"), "{names:?}");
    }

    #[test]
    fn stale_markers_are_prometheus_s() {
        assert_eq!(STALE_NAN.to_bits(), 0x7ff0_0000_0000_0002);
        assert!(STALE_NAN.is_nan());
    }
}
