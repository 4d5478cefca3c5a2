//! The embedded store: standalone mode's storage engine.
//!
//! Per tenant: a series index in memory (rebuilt at start from the series catalog files), a
//! head of samples not yet flushed (Arrow columns in arrival order, see `head`), and Parquet
//! parts on disk, one directory per day:
//!
//! ```text
//! <dir>/manifest.json                          parts, series files, durable bus offsets
//! <dir>/tenants/<tenant>/series/series-N.parquet
//! <dir>/tenants/<tenant>/metrics/<day>/part-N.parquet
//! ```
//!
//! **Durability comes from the bus.** A flush writes the head as new parts (fsync'd), then
//! the manifest (atomically, by rename), which lists the parts and the bus offsets they
//! cover; only then does ingest commit those offsets. After a crash the head is gone, the
//! manifest says where the durable data ends, and ingest replays the bus from there. Files a
//! crash left out of the manifest are removed at start. Samples are keyed by series and
//! timestamp (the last written wins), so a replay never double-counts.
//!
//! Reads see the head, heads being flushed, and the parts, merged per series.

mod blocks;
mod head;
mod histograms;
mod index;
mod parts;
mod rows;
mod sql;

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use async_trait::async_trait;
use model::{Labels, MetricMetadata, Payload, RemoteWriteBody, Sample, TenantId};
use roaring::RoaringBitmap;
use serde::{Deserialize, Serialize};

use self::head::SampleHead;
pub(crate) use self::histograms::item_field as histogram_list_item;
use self::index::SeriesIndex;
use self::parts::{PartMeta, day_of};
use self::rows::DayRows;
pub(crate) use self::rows::{RowKind, exemplars_of};
use crate::{
    BusPosition, DurableOffsets, Matcher, Result, SeriesSamples, Storage, StorageError,
    WriteSummary,
};

/// Tuning of the embedded store.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EmbeddedStoreConfig {
    /// A sample more than this far behind the newest sample of its series is refused.
    pub out_of_order_window_seconds: u64,
    /// Data older than this is removed, a whole day at a time.
    pub retention_seconds: u64,
    /// Memory for decoded samples kept for the next query (0: none). A dashboard asks for
    /// the same series again at every refresh; what is kept is not decoded again.
    pub read_cache_bytes: u64,
}

impl Default for EmbeddedStoreConfig {
    fn default() -> Self {
        Self {
            out_of_order_window_seconds: 3600,
            retention_seconds: 15 * 24 * 3600,
            read_cache_bytes: 256 << 20,
        }
    }
}

impl EmbeddedStoreConfig {
    pub fn validate(&self) -> Result<()> {
        if self.retention_seconds < 86_400 {
            return Err(StorageError::Config(format!(
                "retention_seconds is {}; it must be at least 86400 (retention removes whole days)",
                self.retention_seconds
            )));
        }
        Ok(())
    }
}

/// What the manifest records.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Manifest {
    version: u32,
    /// `(topic, partition, next offset)` covered by durable data.
    durable_offsets: Vec<(String, u32, u64)>,
    tenants: BTreeMap<String, TenantManifest>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct TenantManifest {
    series_files: Vec<String>,
    parts: Vec<PartMeta>,
    /// Parts of the row tables (`spans`, `logs`, `events`) by table name.
    #[serde(default)]
    row_parts: BTreeMap<String, Vec<RowPartMeta>>,
    /// Next number for a file name.
    next_file: u64,
    /// Metric metadata, saved with every manifest (small: one entry per family).
    #[serde(default)]
    metadata: Vec<MetricMetadata>,
}

impl TenantManifest {
    /// A new part's file name, relative to the tenant's directory: under the table's
    /// directory for the day, numbered so that no two files of the tenant share it.
    fn new_part_name(&mut self, table: &str, day: i64) -> String {
        let name = format!("{table}/{day}/part-{:08}.parquet", self.next_file);
        self.next_file += 1;
        name
    }
}

/// A part of a row table.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RowPartMeta {
    pub file: String,
    pub day: i64,
    pub rows: u64,
    pub bytes: u64,
}

/// 2: sample parts store integer mantissas (see `parts`); version 1's parts are rewritten
/// at open.
const MANIFEST_VERSION: u32 = 2;

#[derive(Debug)]
struct TenantState {
    index: SeriesIndex,
    /// Newest timestamp seen per series (for the out-of-order window).
    newest: HashMap<u32, i64>,
    /// Series created since the last flush.
    new_series: Vec<u32>,
    /// Samples not yet in a part, as Arrow chunks (see `head`).
    head: SampleHead,
    /// Heads being written (or whose write failed): still visible to reads.
    frozen: Vec<Arc<SampleHead>>,
    frozen_series: Vec<u32>,
    /// Rows of the row tables not yet in a part (frozen ones included until written).
    rows: BTreeMap<RowKind, Vec<Arc<DayRows>>>,
    frozen_rows: BTreeMap<RowKind, Vec<Arc<DayRows>>>,
    manifest: TenantManifest,
    /// Metric metadata by family: the distinct entries seen, least recently seen first, at
    /// most `MAX_METADATA_PER_FAMILY` each (targets may disagree on help text).
    metadata: BTreeMap<String, Vec<MetricMetadata>>,
}

/// Bounds what a sender varying help texts can make the store keep.
const MAX_METADATA_PER_FAMILY: usize = 16;

impl TenantState {
    /// The id of `labels`, creating the series if it is new.
    fn series_id(&mut self, labels: &Labels) -> u32 {
        let (id, created) = self.index.get_or_create(labels);
        if created {
            self.new_series.push(id);
        }
        id
    }

    /// Appends samples to a series' head, refusing those further behind its newest sample
    /// than the out-of-order window.
    fn append(&mut self, id: u32, samples: &[Sample], window_ms: i64, summary: &mut WriteSummary) {
        let newest = self.newest.entry(id).or_insert(i64::MIN);
        let oldest_allowed = newest.saturating_sub(window_ms);
        let mut max = *newest;
        let accepted = samples.iter().copied().filter(|sample| {
            if sample.timestamp_ms < oldest_allowed {
                summary.too_old += 1;
                return false;
            }
            max = max.max(sample.timestamp_ms);
            summary.accepted += 1;
            true
        });
        self.head.extend(id, accepted);
        *newest = max;
    }

    /// The histogram samples of a series within the out-of-order window, as rows; the
    /// window is the series' (float and histogram samples alike).
    fn accept_histograms(
        &mut self,
        id: u32,
        histograms: &[model::NativeHistogram],
        window_ms: i64,
        summary: &mut WriteSummary,
    ) -> Vec<histograms::HistogramRow> {
        let newest = self.newest.entry(id).or_insert(i64::MIN);
        let oldest_allowed = newest.saturating_sub(window_ms);
        let mut rows = Vec::with_capacity(histograms.len());
        for histogram in histograms {
            if histogram.timestamp_ms < oldest_allowed {
                summary.too_old += 1;
                continue;
            }
            *newest = (*newest).max(histogram.timestamp_ms);
            summary.accepted += 1;
            rows.push(histograms::HistogramRow {
                series_id: id,
                timestamp_ms: histogram.timestamp_ms,
                histogram: model::FloatHistogram::from_native(histogram),
            });
        }
        rows
    }

    fn new(index: SeriesIndex, mut manifest: TenantManifest) -> Self {
        let mut metadata = BTreeMap::new();
        remember_metadata(&mut metadata, std::mem::take(&mut manifest.metadata));
        Self {
            metadata,
            index,
            newest: HashMap::new(),
            new_series: Vec::new(),
            head: SampleHead::default(),
            frozen: Vec::new(),
            frozen_series: Vec::new(),
            rows: BTreeMap::new(),
            frozen_rows: BTreeMap::new(),
            manifest,
        }
    }
}

/// Adds the entries of `metadata` not yet in `known`.
fn remember_metadata(
    known: &mut BTreeMap<String, Vec<MetricMetadata>>,
    metadata: impl IntoIterator<Item = MetricMetadata>,
) {
    for entry in metadata {
        let entries = known.entry(entry.metric_family_name.clone()).or_default();
        if let Some(seen) = entries.iter().position(|e| *e == entry) {
            // Seen again: now the most recent.
            let entry = entries.remove(seen);
            entries.push(entry);
        } else {
            if entries.len() == MAX_METADATA_PER_FAMILY {
                entries.remove(0); // the least recently seen goes
            }
            entries.push(entry);
        }
    }
}

#[derive(Debug)]
struct Tenant {
    dir: PathBuf,
    state: RwLock<TenantState>,
}

/// The embedded store. Share it as `Arc<dyn Storage>`.
#[derive(Debug)]
pub struct EmbeddedStore {
    root: PathBuf,
    config: EmbeddedStoreConfig,
    tenants: RwLock<HashMap<TenantId, Arc<Tenant>>>,
    /// Next offsets of everything written, durable or not.
    pending: Mutex<DurableOffsets>,
    durable: Mutex<DurableOffsets>,
    /// One flush (or retention pass) at a time.
    flush_lock: tokio::sync::Mutex<()>,
    closed: AtomicBool,
    /// Sample parts opened for reading, kept until removed.
    sample_parts: Arc<parts::SamplePartCache>,
    /// Decoded blocks of sample parts, kept for the next read.
    decoded_blocks: Arc<blocks::DecodedBlocks>,
}

fn read_lock<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|e| e.into_inner())
}

fn write_lock<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(|e| e.into_inner())
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| StorageError::io("syncing directory", dir, e))
}

/// Runs blocking file work off the async reactor. The work starts at the call, not at
/// the first poll, so several started before any is awaited run in parallel.
fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T> + Send + 'static,
) -> impl Future<Output = Result<T>> {
    let task = tokio::task::spawn_blocking(work);
    async move {
        task.await.map_err(|e| {
            StorageError::io(
                "running storage task",
                PathBuf::new(),
                std::io::Error::other(e),
            )
        })?
    }
}

impl EmbeddedStore {
    /// Opens (or creates) the store in `dir`: reads the manifest, rebuilds each tenant's
    /// series index, and removes files a crash left out of the manifest. Blocking.
    pub fn open(dir: impl AsRef<Path>, config: EmbeddedStoreConfig) -> Result<Self> {
        config.validate()?;
        let root = dir.as_ref().to_path_buf();
        fs::create_dir_all(root.join("tenants"))
            .map_err(|e| StorageError::io("creating", &root, e))?;
        let manifest_path = root.join("manifest.json");
        let manifest: Manifest = match fs::read(&manifest_path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| StorageError::Corrupt {
                path: manifest_path.clone(),
                reason: e.to_string(),
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Manifest::default(),
            Err(e) => return Err(StorageError::io("reading", &manifest_path, e)),
        };
        if manifest.version > MANIFEST_VERSION {
            return Err(StorageError::Corrupt {
                path: manifest_path,
                reason: format!(
                    "manifest version {} is newer than this build reads",
                    manifest.version
                ),
            });
        }
        let durable: DurableOffsets = manifest
            .durable_offsets
            .iter()
            .map(|(topic, partition, offset)| ((topic.clone(), *partition), *offset))
            .collect();
        let rewrite_parts = manifest.version < 2;
        let mut replaced = Vec::new();
        let mut tenants = HashMap::new();
        for (name, mut tenant_manifest) in manifest.tenants {
            let id = TenantId::new(name.clone()).map_err(|e| StorageError::Corrupt {
                path: root.join("manifest.json"),
                reason: e.to_string(),
            })?;
            let dir = root.join("tenants").join(&name);
            let mut index = SeriesIndex::default();
            for file in &tenant_manifest.series_files {
                for (series_id, labels) in parts::read_series(&dir.join(file))? {
                    let fingerprint = labels.fingerprint();
                    index.insert(series_id, labels, fingerprint);
                }
            }
            remove_orphans(&dir, &tenant_manifest)?;
            if rewrite_parts {
                replaced.extend(
                    rewrite_sample_parts(&dir, &mut tenant_manifest, index.len() as u32)?
                        .into_iter()
                        .map(|file| dir.join(file)),
                );
            }
            tracing::info!(tenant = %id, series = index.len(), parts = tenant_manifest.parts.len(), "tenant store opened");
            tenants.insert(
                id,
                Arc::new(Tenant {
                    dir,
                    state: RwLock::new(TenantState::new(index, tenant_manifest)),
                }),
            );
        }
        let decoded_blocks = Arc::new(blocks::DecodedBlocks::new(config.read_cache_bytes));
        let store = Self {
            root,
            config,
            tenants: RwLock::new(tenants),
            pending: Mutex::new(durable.clone()),
            durable: Mutex::new(durable),
            flush_lock: tokio::sync::Mutex::new(()),
            closed: AtomicBool::new(false),
            sample_parts: Arc::default(),
            decoded_blocks,
        };
        if !replaced.is_empty() {
            // The rewritten parts are in the manifest before the old ones go: a crash in
            // between leaves orphans, which the next open removes.
            write_manifest(&store.root, &store.manifest(&lock(&store.durable).clone()))?;
            for path in replaced {
                if let Err(error) = fs::remove_file(&path) {
                    tracing::warn!(path = %path.display(), %error, "cannot remove a rewritten part");
                }
            }
        }
        Ok(store)
    }

    fn tenant(&self, id: &TenantId) -> Option<Arc<Tenant>> {
        read_lock(&self.tenants).get(id).cloned()
    }

    fn tenant_or_create(&self, id: &TenantId) -> Arc<Tenant> {
        if let Some(tenant) = self.tenant(id) {
            return tenant;
        }
        write_lock(&self.tenants)
            .entry(id.clone())
            .or_insert_with(|| {
                Arc::new(Tenant {
                    dir: self.root.join("tenants").join(id.as_str()),
                    state: RwLock::new(TenantState::new(
                        SeriesIndex::default(),
                        TenantManifest::default(),
                    )),
                })
            })
            .clone()
    }

    fn out_of_order_window_ms(&self) -> i64 {
        (self.config.out_of_order_window_seconds as i64).saturating_mul(1000)
    }

    fn write_metrics(&self, tenant: &Tenant, batch: model::MetricBatch) -> Result<WriteSummary> {
        let window_ms = self.out_of_order_window_ms();
        let mut summary = WriteSummary::default();
        let mut state = write_lock(&tenant.state);
        remember_metadata(&mut state.metadata, batch.metadata);
        let mut histogram_rows = Vec::new();
        for series in batch.series {
            if series.samples.is_empty() && series.histograms.is_empty() {
                continue;
            }
            let id = state.series_id(&series.labels);
            if !series.samples.is_empty() {
                state.append(id, &series.samples, window_ms, &mut summary);
            }
            if !series.histograms.is_empty() {
                histogram_rows.extend(state.accept_histograms(
                    id,
                    &series.histograms,
                    window_ms,
                    &mut summary,
                ));
            }
        }
        if !histogram_rows.is_empty() {
            let days = histograms::day_rows(histogram_rows)?;
            state
                .rows
                .entry(RowKind::Histograms)
                .or_default()
                .extend(days.into_iter().map(Arc::new));
        }
        Ok(summary)
    }

    /// Writes a remote-write body as the gateway accepted it, reading it in place: a series
    /// already known is found by the fingerprint of its raw labels, so the common case
    /// builds no `Labels` at all.
    fn write_remote_write(&self, tenant: &Tenant, body: &RemoteWriteBody) -> Result<WriteSummary> {
        let window_ms = self.out_of_order_window_ms();
        let mut summary = WriteSummary::default();
        let body = crate::remote_write::decompress(body)?;
        let metadata = model::remote_write::WriteRequestReader::new(&body)
            .metadata()
            .map_err(|e| StorageError::Decode(format!("remote-write metadata: {e}")))?;
        let mut state = write_lock(&tenant.state);
        remember_metadata(&mut state.metadata, metadata);
        crate::remote_write::for_each_series(&body, |raw, fingerprint, samples| {
            let id = match state.index.find_raw(raw, fingerprint) {
                Some(id) => id,
                None => state.series_id(&crate::remote_write::labels(raw)?),
            };
            state.append(id, samples, window_ms, &mut summary);
            Ok(())
        })?;
        Ok(summary)
    }

    fn is_durable(&self, position: &BusPosition) -> bool {
        lock(&self.durable)
            .get(&(position.topic.clone(), position.partition))
            .is_some_and(|next| position.offset < *next)
    }

    /// Notes that everything up to `position` has been written.
    fn advance(&self, position: &BusPosition) {
        let mut pending = lock(&self.pending);
        let next = pending
            .entry((position.topic.clone(), position.partition))
            .or_insert(0);
        *next = (*next).max(position.offset + 1);
    }

    /// Writes one tenant's frozen row-table rows as parts, one per table and day.
    fn write_row_files(
        dir: &Path,
        manifest: &mut TenantManifest,
        rows: &BTreeMap<RowKind, Vec<Arc<DayRows>>>,
    ) -> Result<()> {
        for (kind, days) in rows {
            let mut by_day: BTreeMap<i64, Vec<datafusion::arrow::array::RecordBatch>> =
                BTreeMap::new();
            for day in days {
                by_day.entry(day.day).or_default().push(day.batch.clone());
            }
            for (day, batches) in by_day {
                let batch = rows::dedup(*kind, &batches)?;
                let name = manifest.new_part_name(kind.name(), day);
                let path = dir.join(&name);
                if let Some(parent) = path.parent() {
                    fs::create_dir_all(parent)
                        .map_err(|e| StorageError::io("creating", parent, e))?;
                }
                let bytes = parts::write_rows(&path, &batch)?;
                manifest
                    .row_parts
                    .entry(kind.name().to_owned())
                    .or_default()
                    .push(RowPartMeta {
                        file: name,
                        day,
                        rows: batch.num_rows() as u64,
                        bytes,
                    });
            }
        }
        Ok(())
    }

    /// Writes one tenant's frozen heads and new series as files; returns the new manifest.
    fn write_tenant_files(
        dir: &Path,
        mut manifest: TenantManifest,
        heads: &[Arc<SampleHead>],
        new_series: &[(u32, Labels)],
    ) -> Result<TenantManifest> {
        if !new_series.is_empty() {
            let series_dir = dir.join("series");
            fs::create_dir_all(&series_dir)
                .map_err(|e| StorageError::io("creating", &series_dir, e))?;
            let name = format!("series/series-{:08}.parquet", manifest.next_file);
            manifest.next_file += 1;
            parts::write_series(&dir.join(&name), new_series)?;
            manifest.series_files.push(name);
        }
        // Gather every sample by day, then by series and time; later writes win.
        let mut by_day: BTreeMap<i64, Vec<(u32, Sample)>> = BTreeMap::new();
        for head in heads {
            head.for_each(|id, sample| {
                by_day
                    .entry(day_of(sample.timestamp_ms))
                    .or_default()
                    .push((id, sample));
            });
        }
        for (day, mut rows) in by_day {
            rows.sort_by_key(|(id, sample)| (*id, sample.timestamp_ms));
            dedup_last(&mut rows);
            let day_dir = dir.join("metrics").join(day.to_string());
            fs::create_dir_all(&day_dir).map_err(|e| StorageError::io("creating", &day_dir, e))?;
            let name = manifest.new_part_name("metrics", day);
            let bytes = parts::write_samples(&dir.join(&name), &rows)?;
            manifest.parts.push(PartMeta {
                file: name,
                day,
                min_ts: rows.iter().map(|(_, s)| s.timestamp_ms).min().unwrap_or(0),
                max_ts: rows.iter().map(|(_, s)| s.timestamp_ms).max().unwrap_or(0),
                rows: rows.len() as u64,
                bytes,
            });
        }
        Ok(manifest)
    }

    /// The manifest as the state stands, with `durable` as the covered offsets.
    fn manifest(&self, durable: &DurableOffsets) -> Manifest {
        let tenants: BTreeMap<String, TenantManifest> = read_lock(&self.tenants)
            .iter()
            .map(|(id, tenant)| {
                let state = read_lock(&tenant.state);
                let mut manifest = state.manifest.clone();
                manifest.metadata = state.metadata.values().flatten().cloned().collect();
                (id.to_string(), manifest)
            })
            .collect();
        Manifest {
            version: MANIFEST_VERSION,
            durable_offsets: durable
                .iter()
                .map(|((topic, partition), offset)| (topic.clone(), *partition, *offset))
                .collect(),
            tenants,
        }
    }

    async fn save_manifest(&self, durable: &DurableOffsets) -> Result<()> {
        let manifest = self.manifest(durable);
        let root = self.root.clone();
        blocking(move || write_manifest(&root, &manifest)).await
    }

    /// Bytes of sample parts on disk (for benchmarks and metrics).
    pub fn sample_bytes(&self) -> u64 {
        read_lock(&self.tenants)
            .values()
            .map(|t| {
                read_lock(&t.state)
                    .manifest
                    .parts
                    .iter()
                    .map(|p| p.bytes)
                    .sum::<u64>()
            })
            .sum()
    }

    /// Every row of a row table (`spans`, `logs`, `events`) of a tenant: parts, then rows
    /// not yet flushed. For tests and tools; queries go through SQL.
    pub async fn rows(
        &self,
        tenant: &TenantId,
        table: &str,
    ) -> Result<Vec<datafusion::arrow::array::RecordBatch>> {
        let Some(kind) = RowKind::ALL.into_iter().find(|k| k.name() == table) else {
            return Err(StorageError::Config(format!("no row table {table:?}")));
        };
        let Some(tenant) = self.tenant(tenant) else {
            return Ok(Vec::new());
        };
        let (files, memory): (Vec<PathBuf>, Vec<datafusion::arrow::array::RecordBatch>) = {
            let state = read_lock(&tenant.state);
            let files = state
                .manifest
                .row_parts
                .get(kind.name())
                .into_iter()
                .flatten()
                .map(|p| tenant.dir.join(&p.file))
                .collect();
            let memory = state
                .frozen_rows
                .get(&kind)
                .into_iter()
                .chain(state.rows.get(&kind))
                .flatten()
                .map(|d| d.batch.clone())
                .collect();
            (files, memory)
        };
        let mut batches = blocking(move || {
            let mut out = Vec::new();
            for file in files {
                out.extend(parts::read_rows(&file)?);
            }
            Ok(out)
        })
        .await?;
        batches.extend(memory);
        Ok(batches)
    }

    /// Merges the sample parts of a day into one: every day before `now_ms`'s with two or
    /// more parts, and the current day once it has [`COMPACT_TODAY_AT`] parts. The merge
    /// streams through the day a range of series at a time (parts are sorted by series, so
    /// each range reads only its row groups), drops samples overwritten by later writes, and
    /// swaps the parts in the manifest. Returns the number of parts removed.
    pub async fn compact(&self, now_ms: i64) -> Result<usize> {
        let _flushing = self.flush_lock.lock().await;
        let today = day_of(now_ms);
        let tenants: Vec<Arc<Tenant>> = read_lock(&self.tenants).values().cloned().collect();
        let mut removed_total = 0;
        for tenant in tenants {
            let plans: Vec<(i64, Vec<PartMeta>, u32, String)> = {
                let mut state = write_lock(&tenant.state);
                let series = state.index.len() as u32;
                let due = due_days(state.manifest.parts.iter().map(|p| (p.day, p)), today);
                due.into_iter()
                    .map(|(day, parts)| {
                        let name = state.manifest.new_part_name("metrics", day);
                        (day, parts, series, name)
                    })
                    .collect()
            };
            for (day, parts, series, name) in plans {
                let dir = tenant.dir.clone();
                let inputs: Vec<PathBuf> = parts.iter().map(|p| dir.join(&p.file)).collect();
                let output = dir.join(&name);
                let merged = blocking(move || merge_parts(&inputs, &output, series)).await?;
                let Some((rows, bytes, min_ts, max_ts)) = merged else {
                    continue;
                };
                {
                    let mut state = write_lock(&tenant.state);
                    let old: std::collections::HashSet<&str> =
                        parts.iter().map(|p| p.file.as_str()).collect();
                    state
                        .manifest
                        .parts
                        .retain(|p| !old.contains(p.file.as_str()));
                    state.manifest.parts.push(PartMeta {
                        file: name,
                        day,
                        min_ts,
                        max_ts,
                        rows,
                        bytes,
                    });
                }
                self.replace_parts(&tenant.dir, parts.iter().map(|p| p.file.as_str()))
                    .await?;
                removed_total += parts.len();
                tracing::debug!(day, parts = parts.len(), rows, "compacted a day");
            }
            removed_total += self.compact_rows(&tenant, today).await?;
        }
        Ok(removed_total)
    }

    /// Merges the parts of each row table's days as [`Self::compact`] does sample parts,
    /// keeping one row per key (the last written): a span sent again by its client is then
    /// stored once. A day's rows are merged in memory.
    async fn compact_rows(&self, tenant: &Tenant, today: i64) -> Result<usize> {
        let mut removed_total = 0;
        for kind in RowKind::ALL {
            let plans: Vec<(i64, Vec<RowPartMeta>, String)> = {
                let mut state = write_lock(&tenant.state);
                let table = state
                    .manifest
                    .row_parts
                    .get(kind.name())
                    .into_iter()
                    .flatten();
                let due = due_days(table.map(|p| (p.day, p)), today);
                due.into_iter()
                    .map(|(day, parts)| {
                        let name = state.manifest.new_part_name(kind.name(), day);
                        (day, parts, name)
                    })
                    .collect()
            };
            for (day, parts, name) in plans {
                let inputs: Vec<PathBuf> = parts.iter().map(|p| tenant.dir.join(&p.file)).collect();
                let output = tenant.dir.join(&name);
                let (rows, bytes) = blocking(move || {
                    let mut batches = Vec::new();
                    for input in &inputs {
                        batches.extend(parts::read_rows(input)?);
                    }
                    let merged = rows::dedup(kind, &batches)?;
                    let bytes = parts::write_rows(&output, &merged)?;
                    Ok((merged.num_rows() as u64, bytes))
                })
                .await?;
                {
                    let mut state = write_lock(&tenant.state);
                    let old: std::collections::HashSet<&str> =
                        parts.iter().map(|p| p.file.as_str()).collect();
                    let table = state
                        .manifest
                        .row_parts
                        .entry(kind.name().to_owned())
                        .or_default();
                    table.retain(|p| !old.contains(p.file.as_str()));
                    table.push(RowPartMeta {
                        file: name,
                        day,
                        rows,
                        bytes,
                    });
                }
                self.replace_parts(&tenant.dir, parts.iter().map(|p| p.file.as_str()))
                    .await?;
                removed_total += parts.len();
            }
        }
        Ok(removed_total)
    }

    /// Makes a compaction's manifest (already updated in memory) durable, then removes the
    /// parts it replaced: a crash in between leaves orphans that the next start removes.
    async fn replace_parts<'a>(
        &self,
        dir: &Path,
        replaced: impl Iterator<Item = &'a str>,
    ) -> Result<()> {
        let durable = lock(&self.durable).clone();
        self.save_manifest(&durable).await?;
        for file in replaced {
            let path = dir.join(file);
            if let Err(error) = fs::remove_file(&path) {
                tracing::warn!(path = %path.display(), %error, "cannot remove a compacted part");
            }
            self.sample_parts.forget(&path);
        }
        Ok(())
    }

    /// Sample parts on disk, all tenants.
    pub fn part_count(&self) -> usize {
        read_lock(&self.tenants)
            .values()
            .map(|t| read_lock(&t.state).manifest.parts.len())
            .sum()
    }
}

/// Where a selection's histogram samples are: the parts of the days it covers, and the
/// rows not yet flushed (oldest first, the order in which later writes win).
struct HistogramSources {
    files: Vec<PathBuf>,
    memory: Vec<datafusion::arrow::array::RecordBatch>,
}

impl HistogramSources {
    fn of(state: &TenantState, dir: &Path, start_ms: i64, end_ms: i64) -> Self {
        let (first_day, last_day) = (day_of(start_ms), day_of(end_ms));
        let covered = |day: i64| day >= first_day && day <= last_day;
        let files = state
            .manifest
            .row_parts
            .get(RowKind::Histograms.name())
            .into_iter()
            .flatten()
            .filter(|p| covered(p.day))
            .map(|p| dir.join(&p.file))
            .collect();
        let memory = state
            .frozen_rows
            .get(&RowKind::Histograms)
            .into_iter()
            .chain(state.rows.get(&RowKind::Histograms))
            .flatten()
            .filter(|d| covered(d.day))
            .map(|d| d.batch.clone())
            .collect();
        Self { files, memory }
    }

    /// The samples of the series in `ids` within `[start_ms, end_ms]`, by series; read on
    /// a blocking thread, which starts at the call.
    fn read(
        self,
        ids: &RoaringBitmap,
        start_ms: i64,
        end_ms: i64,
    ) -> impl Future<Output = Result<HashMap<u32, Vec<crate::HistogramSample>>>> + use<> {
        let ids = ids.clone();
        let empty = self.files.is_empty() && self.memory.is_empty();
        blocking(move || {
            let mut by_series: HashMap<u32, Vec<crate::HistogramSample>> = HashMap::new();
            if empty {
                return Ok(by_series);
            }
            let mut push = |id: u32, sample| by_series.entry(id).or_default().push(sample);
            for file in &self.files {
                histograms::read_part(file, &ids, start_ms, end_ms, &mut push)?;
            }
            for batch in &self.memory {
                histograms::decode(batch, &ids, start_ms, end_ms, &mut push)?;
            }
            Ok(histograms::settle(by_series))
        })
    }
}

/// The series of a selection in slices to read in parallel, in id order: one per core,
/// each of at least [`SERIES_PER_SLICE`] series.
fn select_slices(ids: &RoaringBitmap) -> Vec<RoaringBitmap> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as u64;
    let count = (ids.len() / SERIES_PER_SLICE).clamp(1, cores);
    let per_slice = ids.len().div_ceil(count).max(1);
    let mut slices = Vec::new();
    let mut current = RoaringBitmap::new();
    for id in ids {
        current.insert(id);
        if current.len() == per_slice {
            slices.push(std::mem::take(&mut current));
        }
    }
    if !current.is_empty() || slices.is_empty() {
        slices.push(current);
    }
    slices
}

/// Below this many series per slice a selection is read on one thread.
const SERIES_PER_SLICE: u64 = 64;

/// Reads a slice of a selection from `parts` and merges in the
/// slice's samples from memory (`memory`, one entry per series, in id order, newer than
/// any part's); returns each series' samples, in time order, one per timestamp.
fn read_slice(
    parts: &[Arc<parts::SamplePart>],
    cache: &blocks::DecodedBlocks,
    slice: &RoaringBitmap,
    memory: Vec<Vec<Sample>>,
    start_ms: i64,
    end_ms: i64,
) -> Result<Vec<Vec<Sample>>> {
    // Sized up front from each part's index: a series' samples are not copied as they grow.
    let mut buckets: Vec<Vec<Sample>> = slice
        .iter()
        .zip(&memory)
        .map(|(id, memory)| {
            let expected: u64 = parts
                .iter()
                .map(|part| part.rows_within(id, start_ms, end_ms))
                .sum();
            Vec::with_capacity(expected as usize + memory.len())
        })
        .collect();
    // A run of a part is in time order with one sample per timestamp; only a bucket whose
    // runs overlap in time (two parts of one day, or memory over a part) needs sorting.
    let mut unsettled = vec![false; buckets.len()];
    fn append(bucket: &mut Vec<Sample>, unsettled: &mut bool, run: &[Sample]) {
        if let (Some(last), Some(first)) = (bucket.last(), run.first())
            && first.timestamp_ms <= last.timestamp_ms
        {
            *unsettled = true;
        }
        bucket.extend_from_slice(run);
    }
    for part in parts {
        // Parts are sorted by series: a series' rank is looked up once per run of rows.
        let mut last: Option<(u32, usize)> = None;
        part.read(slice, start_ms, end_ms, Some(cache), |id, run| {
            let index = match last {
                Some((last_id, index)) if last_id == id => index,
                _ => {
                    let index = slice.rank(id) as usize - 1;
                    last = Some((id, index));
                    index
                }
            };
            append(&mut buckets[index], &mut unsettled[index], run);
        })?;
    }
    // Parts are older than anything in memory: on equal timestamps memory wins.
    for ((bucket, unsettled), samples) in buckets.iter_mut().zip(&mut unsettled).zip(memory) {
        // The head keeps arrival order, which the out-of-order window lets go back.
        if !samples.is_sorted_by(|a, b| a.timestamp_ms < b.timestamp_ms) {
            *unsettled = true;
        }
        append(bucket, unsettled, &samples);
        if *unsettled {
            sort_and_keep_last(bucket);
        }
        // The estimate covers whole checkpoints: a short range over many series would
        // otherwise hold hundreds of unused slots per series through evaluation.
        if bucket.capacity() > 2 * bucket.len() + 64 {
            bucket.shrink_to_fit();
        }
    }
    Ok(buckets)
}

/// A day's parts are merged at once when the day is over; the current day's only once it
/// has this many (flushes keep adding to it).
pub const COMPACT_TODAY_AT: usize = 8;

/// The days due for merging, with their parts (in manifest order, oldest first): every
/// day before `today` with two or more parts, and `today` once it has
/// [`COMPACT_TODAY_AT`].
fn due_days<'a, P: Clone + 'a>(
    parts: impl Iterator<Item = (i64, &'a P)>,
    today: i64,
) -> Vec<(i64, Vec<P>)> {
    let mut by_day: BTreeMap<i64, Vec<P>> = BTreeMap::new();
    for (day, part) in parts {
        by_day.entry(day).or_default().push(part.clone());
    }
    by_day
        .into_iter()
        .filter(|(day, parts)| parts.len() >= if *day < today { 2 } else { COMPACT_TODAY_AT })
        .collect()
}

/// Series merged per step of a compaction: bounds its memory.
const COMPACTION_SERIES_PER_STEP: u32 = 2048;

/// Merges sample parts (oldest first) into `output`; `None` if they held no rows.
fn merge_parts(
    inputs: &[PathBuf],
    output: &Path,
    series: u32,
) -> Result<Option<(u64, u64, i64, i64)>> {
    let inputs = inputs
        .iter()
        .map(|path| parts::SamplePart::open(path))
        .collect::<Result<Vec<_>>>()?;
    let mut writer = parts::PartWriter::create(output, parts::PartKind::Compacted)?;
    let (mut rows_total, mut min_ts, mut max_ts) = (0u64, i64::MAX, i64::MIN);
    let mut start = 0u32;
    while start < series.max(1) {
        let end = start.saturating_add(COMPACTION_SERIES_PER_STEP);
        let mut ids = RoaringBitmap::new();
        ids.insert_range(start..end);
        let mut rows: Vec<(u32, Sample)> = Vec::new();
        for input in &inputs {
            // Not through the block cache: a compaction reads every block once.
            input.read(&ids, i64::MIN, i64::MAX, None, |id, run| {
                rows.extend(run.iter().map(|sample| (id, *sample)));
            })?;
        }
        rows.sort_by_key(|(id, s)| (*id, s.timestamp_ms));
        dedup_last(&mut rows);
        for (_, sample) in &rows {
            min_ts = min_ts.min(sample.timestamp_ms);
            max_ts = max_ts.max(sample.timestamp_ms);
        }
        rows_total += rows.len() as u64;
        writer.write(&rows)?;
        start = end;
    }
    let bytes = writer.finish()?;
    if rows_total == 0 {
        let _ = fs::remove_file(output);
        return Ok(None);
    }
    Ok(Some((rows_total, bytes, min_ts, max_ts)))
}

/// Rewrites a tenant's sample parts of manifest version 1 in the current layout, updating
/// `manifest`; returns the replaced files.
fn rewrite_sample_parts(
    dir: &Path,
    manifest: &mut TenantManifest,
    series: u32,
) -> Result<Vec<String>> {
    let mut replaced = Vec::new();
    for index in 0..manifest.parts.len() {
        let name = manifest.new_part_name("metrics", manifest.parts[index].day);
        let part = &mut manifest.parts[index];
        let merged = merge_parts(&[dir.join(&part.file)], &dir.join(&name), series)?;
        if let Some((rows, bytes, _, _)) = merged {
            replaced.push(std::mem::replace(&mut part.file, name));
            part.rows = rows;
            part.bytes = bytes;
        }
    }
    tracing::info!(dir = %dir.display(), parts = replaced.len(), "sample parts rewritten with integer mantissas");
    Ok(replaced)
}

/// Writes the manifest atomically: temporary file, fsync, rename, fsync of the directory.
fn write_manifest(root: &Path, manifest: &Manifest) -> Result<()> {
    let path = root.join("manifest.json");
    let temp = root.join("manifest.json.tmp");
    let bytes =
        serde_json::to_vec_pretty(manifest).map_err(|e| StorageError::Decode(e.to_string()))?;
    let write = || -> std::io::Result<()> {
        let mut file = File::create(&temp)?;
        std::io::Write::write_all(&mut file, &bytes)?;
        file.sync_all()?;
        fs::rename(&temp, &path)
    };
    write().map_err(|e| StorageError::io("writing", &path, e))?;
    sync_dir(root)
}

/// Sorts one series' samples by time, keeping the last written of equal timestamps.
/// Usually already in order (parts and heads each are), so the sort is only a check.
fn sort_and_keep_last(samples: &mut Vec<Sample>) {
    if !samples.is_sorted_by_key(|s| s.timestamp_ms) {
        samples.sort_by_key(|s| s.timestamp_ms); // stable: later writes stay later
    }
    let mut write = 0;
    for read in 0..samples.len() {
        if write > 0 && samples[write - 1].timestamp_ms == samples[read].timestamp_ms {
            samples[write - 1] = samples[read];
        } else {
            samples[write] = samples[read];
            write += 1;
        }
    }
    samples.truncate(write);
}

/// Keeps the last of each run of equal `(series, timestamp)` in rows sorted stably by them.
fn dedup_last(rows: &mut Vec<(u32, Sample)>) {
    let mut write = 0;
    for read in 0..rows.len() {
        if write > 0
            && rows[write - 1].0 == rows[read].0
            && rows[write - 1].1.timestamp_ms == rows[read].1.timestamp_ms
        {
            rows[write - 1] = rows[read];
        } else {
            rows[write] = rows[read];
            write += 1;
        }
    }
    rows.truncate(write);
}

/// Removes files under a tenant's directory that the manifest does not list (left by a
/// crash between writing a file and the manifest).
fn remove_orphans(dir: &Path, manifest: &TenantManifest) -> Result<()> {
    let listed: std::collections::HashSet<PathBuf> = manifest
        .parts
        .iter()
        .map(|p| dir.join(&p.file))
        .chain(manifest.series_files.iter().map(|f| dir.join(f)))
        .chain(
            manifest
                .row_parts
                .values()
                .flatten()
                .map(|p| dir.join(&p.file)),
        )
        .collect();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(current) = stack.pop() {
        let Ok(entries) = fs::read_dir(&current) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if !listed.contains(&path) {
                tracing::warn!(path = %path.display(), "removing a file the manifest does not list (left by a crash)");
                fs::remove_file(&path)
                    .map_err(|e| StorageError::io("removing orphan", &path, e))?;
            }
        }
    }
    Ok(())
}

#[async_trait]
impl Storage for EmbeddedStore {
    async fn write(
        &self,
        tenant: &TenantId,
        payload: Payload,
        position: &BusPosition,
    ) -> Result<WriteSummary> {
        if self.closed.load(Ordering::Acquire) {
            return Err(StorageError::Closed);
        }
        // A record below the durable offset of its partition is already in a part: ingest
        // writes each partition in order, so this is a replay (a restart, a rebalance) and
        // storing it again would count it twice. It is reported as accepted, as it is stored.
        if self.is_durable(position) {
            return Ok(WriteSummary {
                accepted: payload.record_count(),
                too_old: 0,
            });
        }
        let rows = match payload {
            Payload::Spans(batch) => Some((RowKind::Spans, rows::span_rows(batch)?)),
            Payload::Logs(batch) => Some((RowKind::Logs, rows::log_rows(batch, position)?)),
            Payload::Events(events) => Some((RowKind::Events, rows::event_rows(events, position)?)),
            Payload::RemoteWrite(body) => {
                let tenant = self.tenant_or_create(tenant);
                let summary = self.write_remote_write(&tenant, &body)?;
                self.advance(position);
                return Ok(summary);
            }
            metrics => {
                let batch = metrics
                    .into_metric_batch()
                    .map_err(|e| StorageError::Decode(e.to_string()))?
                    .unwrap_or_default();
                let exemplars = rows::exemplar_rows(&batch)?;
                let tenant = self.tenant_or_create(tenant);
                let summary = self.write_metrics(&tenant, batch)?;
                if !exemplars.is_empty() {
                    write_lock(&tenant.state)
                        .rows
                        .entry(RowKind::Exemplars)
                        .or_default()
                        .extend(exemplars.into_iter().map(Arc::new));
                }
                self.advance(position);
                return Ok(summary);
            }
        };
        let mut summary = WriteSummary::default();
        if let Some((kind, days)) = rows {
            summary.accepted = days.iter().map(|d| d.batch.num_rows() as u64).sum();
            let tenant = self.tenant_or_create(tenant);
            let mut state = write_lock(&tenant.state);
            state
                .rows
                .entry(kind)
                .or_default()
                .extend(days.into_iter().map(Arc::new));
        }
        self.advance(position);
        Ok(summary)
    }

    async fn flush(&self) -> Result<DurableOffsets> {
        let _flushing = self.flush_lock.lock().await;
        // Everything written before this point is in the heads frozen below.
        let offsets = lock(&self.pending).clone();
        let tenants: Vec<Arc<Tenant>> = read_lock(&self.tenants).values().cloned().collect();
        let mut work = Vec::new();
        for tenant in &tenants {
            let mut state = write_lock(&tenant.state);
            if !state.head.is_empty() {
                let head = std::mem::take(&mut state.head);
                state.frozen.push(Arc::new(head));
            }
            let created = std::mem::take(&mut state.new_series);
            state.frozen_series.extend(created);
            let fresh_rows = std::mem::take(&mut state.rows);
            for (kind, days) in fresh_rows {
                state.frozen_rows.entry(kind).or_default().extend(days);
            }
            if state.frozen.is_empty()
                && state.frozen_series.is_empty()
                && state.frozen_rows.is_empty()
            {
                continue;
            }
            let new_series: Vec<(u32, Labels)> = state
                .frozen_series
                .iter()
                .filter_map(|id| state.index.labels(*id).map(|l| (*id, l.clone())))
                .collect();
            work.push((
                tenant.clone(),
                state.frozen.clone(),
                new_series,
                state.frozen_rows.clone(),
                state.manifest.clone(),
            ));
        }
        let written = blocking(move || {
            let mut out = Vec::new();
            for (tenant, heads, new_series, frozen_rows, manifest) in work {
                let mut manifest =
                    Self::write_tenant_files(&tenant.dir, manifest, &heads, &new_series)?;
                Self::write_row_files(&tenant.dir, &mut manifest, &frozen_rows)?;
                let flushed_rows: BTreeMap<RowKind, usize> = frozen_rows
                    .iter()
                    .map(|(kind, days)| (*kind, days.len()))
                    .collect();
                out.push((tenant, heads.len(), flushed_rows, manifest));
            }
            Ok(out)
        })
        .await?;
        for (tenant, flushed_heads, flushed_rows, manifest) in written {
            let mut state = write_lock(&tenant.state);
            state.manifest = manifest;
            state.frozen.drain(..flushed_heads);
            state.frozen_series.clear();
            for (kind, count) in flushed_rows {
                if let Some(days) = state.frozen_rows.get_mut(&kind) {
                    days.drain(..count);
                }
            }
            state.frozen_rows.retain(|_, days| !days.is_empty());
        }
        // The manifest makes the new files and the offsets they cover durable together.
        self.save_manifest(&offsets).await?;
        *lock(&self.durable) = offsets.clone();
        Ok(offsets)
    }

    async fn durable_offsets(&self) -> Result<DurableOffsets> {
        Ok(lock(&self.durable).clone())
    }

    async fn select(
        &self,
        tenant: &TenantId,
        matchers: &[Matcher],
        start_ms: i64,
        end_ms: i64,
    ) -> Result<Vec<SeriesSamples>> {
        let Some(tenant) = self.tenant(tenant) else {
            return Ok(Vec::new());
        };
        let (ids, memory, parts, histogram_sources) = {
            let state = read_lock(&tenant.state);
            let ids = state.index.select(matchers);
            let histogram_sources = HistogramSources::of(&state, &tenant.dir, start_ms, end_ms);
            let mut parts: Vec<PartMeta> = state
                .manifest
                .parts
                .iter()
                .filter(|p| p.min_ts <= end_ms && p.max_ts >= start_ms)
                .cloned()
                .collect();
            // Read day by day, so that each series' samples arrive in time order (a
            // compacted day goes to the end of the manifest); within a day, the order in
            // which later writes win.
            parts.sort_by_key(|p| p.day);
            // Frozen heads, then the head: the order in which later writes win.
            let heads: Vec<Arc<SampleHead>> = state.frozen.clone();
            let mut memory: Vec<Vec<Sample>> = Vec::with_capacity(ids.len() as usize);
            for id in ids.iter() {
                let mut samples = Vec::new();
                for head in heads
                    .iter()
                    .map(|h| h.as_ref())
                    .chain(std::iter::once(&state.head))
                {
                    samples.extend(
                        head.samples_of(id)
                            .into_iter()
                            .filter(|s| s.timestamp_ms >= start_ms && s.timestamp_ms <= end_ms),
                    );
                }
                memory.push(samples);
            }
            (ids, memory, parts, histogram_sources)
        };
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        // Read beside the float samples (a blocking task starts at once).
        let histograms = histogram_sources.read(&ids, start_ms, end_ms);
        let dir = tenant.dir.clone();
        let cache = self.sample_parts.clone();
        let opened = blocking(move || {
            parts
                .iter()
                .map(|part| cache.get(&dir.join(&part.file)))
                .collect::<Result<Vec<_>>>()
        })
        .await?;
        let opened = Arc::new(opened);
        // The selection is read in as many slices of series as there are cores, each on
        // its own thread; a slice's buckets are in id order, so the slices concatenate.
        let slices = select_slices(&ids);
        let mut reads = Vec::new();
        let mut memory = memory.into_iter();
        for slice in slices {
            let slice_memory: Vec<Vec<Sample>> =
                memory.by_ref().take(slice.len() as usize).collect();
            let (opened, cache) = (opened.clone(), self.decoded_blocks.clone());
            reads.push(blocking(move || {
                read_slice(&opened, &cache, &slice, slice_memory, start_ms, end_ms)
            }));
        }
        let mut buckets = Vec::with_capacity(ids.len() as usize);
        for read in reads {
            buckets.extend(read.await?);
        }
        let mut histograms = histograms.await?;
        let state = read_lock(&tenant.state);
        let mut out: Vec<SeriesSamples> = ids
            .iter()
            .zip(buckets)
            .filter_map(|(id, samples)| {
                let histograms = histograms.remove(&id).unwrap_or_default();
                if samples.is_empty() && histograms.is_empty() {
                    return None;
                }
                state.index.labels(id).map(|labels| SeriesSamples {
                    labels: labels.clone(),
                    samples,
                    histograms,
                })
            })
            .collect();
        drop(state);
        out.sort_by(|a, b| a.labels.cmp(&b.labels));
        Ok(out)
    }

    async fn series(
        &self,
        tenant_id: &TenantId,
        matchers: &[Matcher],
        range: Option<(i64, i64)>,
    ) -> Result<Vec<Labels>> {
        if let Some((start_ms, end_ms)) = range {
            let selected = self.select(tenant_id, matchers, start_ms, end_ms).await?;
            return Ok(selected.into_iter().map(|s| s.labels).collect());
        }
        let Some(tenant) = self.tenant(tenant_id) else {
            return Ok(Vec::new());
        };
        let state = read_lock(&tenant.state);
        let mut out: Vec<Labels> = state
            .index
            .select(matchers)
            .iter()
            .filter_map(|id| state.index.labels(id).cloned())
            .collect();
        out.sort();
        Ok(out)
    }

    async fn series_count(&self, tenant: &TenantId, matchers: &[Matcher]) -> Result<u64> {
        Ok(self
            .tenant(tenant)
            .map_or(0, |t| read_lock(&t.state).index.select(matchers).len()))
    }

    async fn label_names(&self, tenant: &TenantId, matchers: &[Matcher]) -> Result<Vec<String>> {
        let Some(tenant) = self.tenant(tenant) else {
            return Ok(Vec::new());
        };
        let state = read_lock(&tenant.state);
        let ids: RoaringBitmap = state.index.select(matchers);
        Ok(state.index.label_names(&ids))
    }

    async fn label_values(
        &self,
        tenant: &TenantId,
        name: &str,
        matchers: &[Matcher],
    ) -> Result<Vec<String>> {
        let Some(tenant) = self.tenant(tenant) else {
            return Ok(Vec::new());
        };
        let state = read_lock(&tenant.state);
        let ids = state.index.select(matchers);
        Ok(state.index.label_values(name, &ids))
    }

    async fn metadata(&self, tenant: &TenantId) -> Result<Vec<MetricMetadata>> {
        let Some(tenant) = self.tenant(tenant) else {
            return Ok(Vec::new());
        };
        let state = read_lock(&tenant.state);
        Ok(state.metadata.values().flatten().cloned().collect())
    }

    async fn session(&self, tenant: &TenantId) -> Result<datafusion::prelude::SessionContext> {
        EmbeddedStore::session(self, tenant).await
    }

    async fn enforce_retention(&self, now_ms: i64) -> Result<()> {
        let _flushing = self.flush_lock.lock().await;
        let cutoff_day = day_of(
            now_ms.saturating_sub((self.config.retention_seconds as i64).saturating_mul(1000)),
        );
        let tenants: Vec<Arc<Tenant>> = read_lock(&self.tenants).values().cloned().collect();
        let mut doomed = Vec::new();
        for tenant in &tenants {
            let mut state = write_lock(&tenant.state);
            let (old, kept): (Vec<PartMeta>, Vec<PartMeta>) = state
                .manifest
                .parts
                .drain(..)
                .partition(|p| p.day < cutoff_day);
            state.manifest.parts = kept;
            doomed.extend(old.into_iter().map(|p| tenant.dir.join(p.file)));
            for parts in state.manifest.row_parts.values_mut() {
                let (old, kept): (Vec<RowPartMeta>, Vec<RowPartMeta>) =
                    parts.drain(..).partition(|p| p.day < cutoff_day);
                *parts = kept;
                doomed.extend(old.into_iter().map(|p| tenant.dir.join(p.file)));
            }
        }
        if doomed.is_empty() {
            return Ok(());
        }
        let durable = lock(&self.durable).clone();
        self.save_manifest(&durable).await?;
        for path in doomed {
            if let Err(error) = fs::remove_file(&path) {
                tracing::warn!(path = %path.display(), %error, "cannot remove a part dropped by retention");
            }
            self.sample_parts.forget(&path);
        }
        Ok(())
    }

    async fn close(&self) -> Result<()> {
        self.flush().await?;
        self.closed.store(true, Ordering::Release);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use model::MetricType;

    fn entry(help: &str) -> MetricMetadata {
        MetricMetadata {
            metric_family_name: "up".to_owned(),
            metric_type: MetricType::Gauge,
            help: help.to_owned(),
            unit: String::new(),
        }
    }

    #[test]
    fn metadata_keeps_the_most_recently_seen_entries() {
        let mut known = BTreeMap::new();
        let helps: Vec<String> = (0..MAX_METADATA_PER_FAMILY + 2)
            .map(|i| format!("help {i}"))
            .collect();
        remember_metadata(&mut known, helps.iter().map(|h| entry(h)));
        // "help 2" is seen again: it becomes the newest, and survives the next one.
        remember_metadata(&mut known, [entry("help 2"), entry("latest")]);
        let kept: Vec<&str> = known["up"].iter().map(|e| e.help.as_str()).collect();
        assert_eq!(kept.len(), MAX_METADATA_PER_FAMILY);
        assert_eq!(&kept[kept.len() - 2..], ["help 2", "latest"]);
        assert!(
            !kept.contains(&"help 0") && !kept.contains(&"help 3"),
            "{kept:?}"
        );
    }
}
