//! What one scraped page becomes: series with the target's labels merged in, relabeled,
//! limited and timestamped the way Prometheus 2.42's scrape loop appends them.

use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};

use model::{METRIC_NAME_LABEL, MetricType};

use crate::exposition::{Entry, Format, ParseError, Parser};
use crate::labels::LabelSet;
use crate::relabel::{self, RelabelRule};

/// The per-job options that shape a page's series.
#[derive(Clone, Debug, Default)]
pub struct PageOptions {
    /// Keep the page's labels where they clash with the target's (`honor_labels`).
    pub honor_labels: bool,
    /// Use the page's own timestamps (`honor_timestamps`, Prometheus's default: true).
    pub honor_timestamps: bool,
    /// Fail the scrape when more series than this survive relabeling (0: no limit).
    pub sample_limit: usize,
    /// Fail the scrape when a series has more labels than this (0: no limit).
    pub label_limit: usize,
    pub label_name_length_limit: usize,
    pub label_value_length_limit: usize,
    /// `metric_relabel_configs`.
    pub metric_relabel: Vec<RelabelRule>,
}

/// One series' sample from a page, ready to send.
#[derive(Clone, Debug, PartialEq)]
pub struct PageSample {
    pub labels: LabelSet,
    pub value: f64,
    pub timestamp_ms: i64,
    pub exemplar: Option<PageExemplar>,
    /// The page gave this sample's timestamp (and `honor_timestamps` kept it): Prometheus
    /// does not track such series for staleness.
    pub own_timestamp: bool,
}

#[derive(Clone, Debug, PartialEq)]
pub struct PageExemplar {
    pub labels: LabelSet,
    pub value: f64,
    pub timestamp_ms: Option<i64>,
}

/// A metric family's metadata, as remote-write sends it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FamilyMetadata {
    pub kind: Option<MetricType>,
    pub help: Option<String>,
    pub unit: Option<String>,
}

/// A page's series and what the report series count.
#[derive(Debug, Default)]
pub struct Page {
    pub samples: Vec<PageSample>,
    /// Metadata by family name.
    pub metadata: BTreeMap<String, FamilyMetadata>,
    /// Sample lines on the page (`scrape_samples_scraped`).
    pub scraped: usize,
    /// Samples dropped because the page already had the same series at the same timestamp
    /// (Prometheus's storage keeps the first and refuses the rest).
    pub duplicates: usize,
}

/// Why a page was refused as a whole (Prometheus then reports `up` 0 and appends nothing).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PageError {
    #[error("{0}")]
    Parse(#[from] ParseError),
    #[error("sample limit exceeded: more than {limit} series after metric relabeling")]
    SampleLimit { limit: usize },
    #[error("missing metric name (__name__ label) after relabeling: {labels}")]
    MissingName { labels: String },
    #[error("label name {name:?} is not unique in {series}")]
    DuplicateLabel { name: String, series: String },
    #[error("{0}")]
    LabelLimit(String),
}

fn describe(labels: &LabelSet) -> String {
    let inner: Vec<String> = labels.iter().map(|(n, v)| format!("{n}={v:?}")).collect();
    format!("{{{}}}", inner.join(", "))
}

/// Prometheus's `mutateSampleLabels`: the target's labels go over the page's (a clashing page
/// label is kept as `exported_<name>`), or under them with `honor_labels`; then
/// `metric_relabel_configs`. `None` when relabeling drops the series.
pub fn merge_target_labels(
    sample: LabelSet,
    target: &LabelSet,
    honor_labels: bool,
    metric_relabel: &[RelabelRule],
) -> Option<LabelSet> {
    let mut merged = sample;
    if honor_labels {
        for (name, value) in target.iter() {
            if !merged.contains(name) {
                merged.set(name, value.to_owned());
            }
        }
    } else {
        // The page's values of clashing labels, before the target's replace them.
        let mut conflicts: Vec<(&str, String)> = Vec::new();
        for (name, value) in target.iter() {
            if let Some(existing) = merged.get(name) {
                conflicts.push((name, existing.to_owned()));
            }
            merged.set(name, value.to_owned());
        }
        if !conflicts.is_empty() {
            // Shortest names first, each renamed to the first free exported_…exported_<name>.
            // A name is taken when the page, the target or an earlier rename has it: all
            // of them are in `merged` by now.
            conflicts.sort_by_key(|(name, _)| name.len());
            for (name, value) in conflicts {
                let mut renamed = format!("exported_{name}");
                while merged.contains(&renamed) {
                    renamed.insert_str(0, "exported_");
                }
                merged.set(&renamed, value);
            }
        }
    }
    if metric_relabel.is_empty() || relabel::process(&mut merged, metric_relabel) {
        Some(merged)
    } else {
        None
    }
}

/// Parses a page into series: `scrape_time_ms` stamps samples without a timestamp (all of
/// them unless `honor_timestamps`).
pub fn read_page(
    body: &[u8],
    format: Format,
    target: &LabelSet,
    options: &PageOptions,
    scrape_time_ms: i64,
) -> Result<Page, PageError> {
    let mut parser = Parser::new(body, format);
    let mut page = Page::default();
    // Series hash (with timestamp) → index of the first such sample, to find duplicates
    // without cloning every label set.
    let mut seen: HashMap<u64, Vec<usize>> = HashMap::new();
    while let Some(entry) = parser.next_entry()? {
        let sample = match entry {
            Entry::Help { metric, text } => {
                page.metadata.entry(metric.to_owned()).or_default().help = Some(text.into_owned());
                continue;
            }
            Entry::Type { metric, kind } => {
                page.metadata.entry(metric.to_owned()).or_default().kind = Some(kind);
                continue;
            }
            Entry::Unit { metric, unit } => {
                page.metadata.entry(metric.to_owned()).or_default().unit = Some(unit.to_owned());
                continue;
            }
            Entry::Sample(sample) => sample,
        };
        page.scraped += 1;
        let mut labels = LabelSet::new();
        labels.set(METRIC_NAME_LABEL, sample.name.to_owned());
        for (name, value) in sample.labels {
            if labels.contains(name) {
                let mut series = labels.clone();
                series.set(name, value.to_string());
                return Err(PageError::DuplicateLabel {
                    name: (*name).to_owned(),
                    series: describe(&series),
                });
            }
            labels.set(name, value.to_string());
        }
        let Some(labels) = merge_target_labels(
            labels,
            target,
            options.honor_labels,
            &options.metric_relabel,
        ) else {
            continue;
        };
        if !labels.contains(METRIC_NAME_LABEL) {
            return Err(PageError::MissingName {
                labels: describe(&labels),
            });
        }
        check_label_limits(&labels, options)?;
        let (timestamp_ms, own_timestamp) = match sample.timestamp_ms {
            Some(ts) if options.honor_timestamps => (ts, true),
            _ => (scrape_time_ms, false),
        };
        let exemplar = sample.exemplar.map(|e| PageExemplar {
            labels: LabelSet::from_pairs(
                e.labels
                    .into_iter()
                    .map(|(n, v)| (n.to_owned(), v.into_owned())),
            ),
            value: e.value,
            timestamp_ms: e.timestamp_ms,
        });
        let key = {
            let mut hasher = std::collections::hash_map::DefaultHasher::new();
            labels.hash(&mut hasher);
            timestamp_ms.hash(&mut hasher);
            hasher.finish()
        };
        let same = seen.entry(key).or_default();
        if same.iter().any(|&i| {
            page.samples[i].labels == labels && page.samples[i].timestamp_ms == timestamp_ms
        }) {
            page.duplicates += 1;
            continue;
        }
        same.push(page.samples.len());
        page.samples.push(PageSample {
            labels,
            value: sample.value,
            timestamp_ms,
            exemplar,
            own_timestamp,
        });
        if options.sample_limit > 0 && page.samples.len() > options.sample_limit {
            return Err(PageError::SampleLimit {
                limit: options.sample_limit,
            });
        }
    }
    Ok(page)
}

/// Prometheus's `verifyLabelLimits`.
fn check_label_limits(labels: &LabelSet, options: &PageOptions) -> Result<(), PageError> {
    if options.label_limit > 0 && labels.len() > options.label_limit {
        return Err(PageError::LabelLimit(format!(
            "label_limit exceeded (metric: {}, number of labels: {}, limit: {})",
            labels.get(METRIC_NAME_LABEL).unwrap_or_default(),
            labels.len(),
            options.label_limit
        )));
    }
    for (name, value) in labels.iter() {
        if options.label_name_length_limit > 0 && name.len() > options.label_name_length_limit {
            return Err(PageError::LabelLimit(format!(
                "label_name_length_limit exceeded (metric: {}, label name: {name}, length: {}, limit: {})",
                labels.get(METRIC_NAME_LABEL).unwrap_or_default(),
                name.len(),
                options.label_name_length_limit
            )));
        }
        if options.label_value_length_limit > 0 && value.len() > options.label_value_length_limit {
            return Err(PageError::LabelLimit(format!(
                "label_value_length_limit exceeded (metric: {}, label name: {name}, value: {value:?}, length: {}, limit: {})",
                labels.get(METRIC_NAME_LABEL).unwrap_or_default(),
                value.len(),
                options.label_value_length_limit
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::relabel::{RelabelConfigYaml, compile_all};

    fn target() -> LabelSet {
        LabelSet::from_pairs([
            ("instance".to_owned(), "host:9100".to_owned()),
            ("job".to_owned(), "node".to_owned()),
        ])
    }

    fn options() -> PageOptions {
        PageOptions {
            honor_timestamps: true,
            ..PageOptions::default()
        }
    }

    fn series(page: &Page) -> Vec<String> {
        page.samples
            .iter()
            .map(|s| format!("{} {} @{}", describe(&s.labels), s.value, s.timestamp_ms))
            .collect()
    }

    #[test]
    fn a_series_twice_on_a_page_keeps_the_first_as_prometheus_storage_does() {
        let body = b"a{x=\"1\"} 1\na{x=\"1\"} 2\na{x=\"2\"} 3\na{x=\"1\"} 4 1000\n";
        let page = read_page(body, Format::Prometheus, &target(), &options(), 5_000).unwrap();
        assert_eq!(page.scraped, 4);
        assert_eq!(page.duplicates, 1);
        assert_eq!(
            series(&page),
            [
                "{__name__=\"a\", instance=\"host:9100\", job=\"node\", x=\"1\"} 1 @5000",
                "{__name__=\"a\", instance=\"host:9100\", job=\"node\", x=\"2\"} 3 @5000",
                "{__name__=\"a\", instance=\"host:9100\", job=\"node\", x=\"1\"} 4 @1000"
            ]
        );
    }

    #[test]
    fn target_labels_win_and_page_labels_are_exported() {
        let body = b"# TYPE m counter\n# HELP m Help.\nm{job=\"app\",exported_job=\"x\",a=\"1\"} 1\nn 2 1000\n";
        let page = read_page(body, Format::Prometheus, &target(), &options(), 5000).unwrap();
        assert_eq!(
            series(&page),
            [
                "{__name__=\"m\", a=\"1\", exported_exported_job=\"app\", exported_job=\"x\", instance=\"host:9100\", job=\"node\"} 1 @5000",
                "{__name__=\"n\", instance=\"host:9100\", job=\"node\"} 2 @1000",
            ]
        );
        assert_eq!(page.scraped, 2);
        assert_eq!(
            page.metadata["m"],
            FamilyMetadata {
                kind: Some(MetricType::Counter),
                help: Some("Help.".into()),
                unit: None
            }
        );
        // honor_labels keeps the page's; honor_timestamps false uses the scrape time.
        let honoring = PageOptions {
            honor_labels: true,
            honor_timestamps: false,
            ..options()
        };
        let page = read_page(body, Format::Prometheus, &target(), &honoring, 5000).unwrap();
        assert_eq!(
            series(&page),
            [
                "{__name__=\"m\", a=\"1\", exported_job=\"x\", instance=\"host:9100\", job=\"app\"} 1 @5000",
                "{__name__=\"n\", instance=\"host:9100\", job=\"node\"} 2 @5000",
            ]
        );
    }

    #[test]
    fn metric_relabeling_limits_and_bad_pages() {
        let rules: Vec<RelabelConfigYaml> = serde_saphyr::from_str(
            "- source_labels: [__name__]\n  regex: drop_me\n  action: drop\n",
        )
        .unwrap();
        let opts = PageOptions {
            metric_relabel: compile_all(&rules).unwrap(),
            sample_limit: 2,
            ..options()
        };
        let body = b"a 1\ndrop_me 2\ndrop_me 3\nb 4\n";
        let page = read_page(body, Format::Prometheus, &target(), &opts, 0).unwrap();
        assert_eq!(
            page.samples.len(),
            2,
            "dropped series do not count against the limit"
        );
        assert_eq!(page.scraped, 4);
        let error =
            read_page(b"a 1\nb 2\nc 3\n", Format::Prometheus, &target(), &opts, 0).unwrap_err();
        assert_eq!(error, PageError::SampleLimit { limit: 2 });

        let error = read_page(
            b"a 1\nb{x=\"1\",x=\"2\"} 2\n",
            Format::Prometheus,
            &target(),
            &options(),
            0,
        )
        .unwrap_err();
        assert!(
            matches!(error, PageError::DuplicateLabel { ref name, .. } if name == "x"),
            "{error}"
        );
        let error =
            read_page(b"a 1\nb{ 2\n", Format::Prometheus, &target(), &options(), 0).unwrap_err();
        assert!(error.to_string().starts_with("line 2:"), "{error}");

        let unname: Vec<RelabelConfigYaml> =
            serde_saphyr::from_str("- regex: __name__\n  action: labeldrop\n").unwrap();
        let opts = PageOptions {
            metric_relabel: compile_all(&unname).unwrap(),
            ..options()
        };
        let error = read_page(b"a 1\n", Format::Prometheus, &target(), &opts, 0).unwrap_err();
        assert!(matches!(error, PageError::MissingName { .. }), "{error}");

        let limited = PageOptions {
            label_limit: 3,
            ..options()
        };
        let error = read_page(
            b"a{b=\"1\"} 1\n",
            Format::Prometheus,
            &target(),
            &limited,
            0,
        )
        .unwrap_err();
        assert!(
            error.to_string().contains("label_limit exceeded"),
            "{error}"
        );
    }
}
