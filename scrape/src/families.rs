//! Metric families an agent produces itself (host and container metrics, its own
//! self-metrics), in the exporters' own names.
//!
//! Collectors fill a [`Families`] each cycle; the same value is then rendered as a
//! Prometheus text page (an agent's `/metrics`, and the comparison tests against
//! node_exporter) or encoded as remote-write series for the gateway. Keeping one
//! intermediate shape means a collector never knows where its numbers go.

use std::fmt::Write as _;

use crate::LabelSet;
use model::MetricType;

/// One metric family: a name, its help and type, and its samples.
#[derive(Clone, Debug, PartialEq)]
pub struct Family {
    pub name: String,
    pub help: String,
    pub kind: MetricType,
    /// Each sample's labels (without `__name__`) and value.
    pub samples: Vec<(LabelSet, f64)>,
}

/// The families of one collection cycle, in the order collectors added them.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Families {
    families: Vec<Family>,
}

impl Families {
    pub fn new() -> Self {
        Self::default()
    }

    /// The family called `name`, created with `help` and `kind` if it is new.
    pub fn family(&mut self, name: &str, help: &str, kind: MetricType) -> &mut Family {
        let index = match self.families.iter().position(|f| f.name == name) {
            Some(index) => index,
            None => {
                self.families.push(Family {
                    name: name.to_owned(),
                    help: help.to_owned(),
                    kind,
                    samples: Vec::new(),
                });
                self.families.len() - 1
            }
        };
        &mut self.families[index]
    }

    /// Adds a gauge sample.
    pub fn gauge(&mut self, name: &str, help: &str, labels: &[(&str, &str)], value: f64) {
        self.add(name, help, MetricType::Gauge, labels, value);
    }

    /// Adds a counter sample (`name` ends in `_total` where the exporter's name does).
    pub fn counter(&mut self, name: &str, help: &str, labels: &[(&str, &str)], value: f64) {
        self.add(name, help, MetricType::Counter, labels, value);
    }

    pub fn add(
        &mut self,
        name: &str,
        help: &str,
        kind: MetricType,
        labels: &[(&str, &str)],
        value: f64,
    ) {
        let labels = LabelSet::from_pairs(
            labels
                .iter()
                .map(|(name, value)| ((*name).to_owned(), (*value).to_owned())),
        );
        self.family(name, help, kind).samples.push((labels, value));
    }

    /// Moves every family of `other` in after these.
    pub fn extend(&mut self, other: Families) {
        for family in other.families {
            let kind = family.kind;
            let target = self.family(&family.name, &family.help, kind);
            target.samples.extend(family.samples);
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = &Family> {
        self.families.iter()
    }

    pub fn len(&self) -> usize {
        self.families.len()
    }

    pub fn is_empty(&self) -> bool {
        self.families.is_empty()
    }

    /// Number of samples across all families.
    pub fn samples(&self) -> usize {
        self.families.iter().map(|f| f.samples.len()).sum()
    }

    /// Adds `labels` to every sample that lacks them (pod attributes on container series,
    /// say); a sample's own label of the same name wins.
    pub fn add_labels(&mut self, labels: &[(String, String)]) {
        for family in &mut self.families {
            for (sample_labels, _) in &mut family.samples {
                for (name, value) in labels {
                    if !sample_labels.contains(name) {
                        sample_labels.set(name, value.clone());
                    }
                }
            }
        }
    }

    /// The Prometheus text exposition (format 0.0.4) of these families.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        for family in &self.families {
            let _ = writeln!(out, "# HELP {} {}", family.name, escape_help(&family.help));
            let _ = writeln!(out, "# TYPE {} {}", family.name, type_name(family.kind));
            for (labels, value) in &family.samples {
                out.push_str(&family.name);
                if !labels.is_empty() {
                    out.push('{');
                    for (i, (name, value)) in labels.iter().enumerate() {
                        if i > 0 {
                            out.push(',');
                        }
                        let _ = write!(out, "{name}=\"{}\"", escape_value(value));
                    }
                    out.push('}');
                }
                let _ = writeln!(out, " {}", format_value(*value));
            }
        }
        out
    }
}

fn type_name(kind: MetricType) -> &'static str {
    match kind {
        MetricType::Counter => "counter",
        MetricType::Gauge => "gauge",
        MetricType::Histogram => "histogram",
        MetricType::Summary => "summary",
        _ => "untyped",
    }
}

fn escape_help(help: &str) -> String {
    help.replace('\\', "\\\\").replace('\n', "\\n")
}

fn escape_value(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Values as Go's `strconv.FormatFloat(v, 'g', -1, 64)` spells the special ones.
fn format_value(value: f64) -> String {
    if value.is_nan() {
        "NaN".to_owned()
    } else if value.is_infinite() {
        if value > 0.0 { "+Inf" } else { "-Inf" }.to_owned()
    } else {
        value.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_page_parses_back_to_the_same_samples() {
        let mut families = Families::new();
        families.counter(
            "node_cpu_seconds_total",
            "Seconds the CPUs spent in each mode.",
            &[("cpu", "0"), ("mode", "idle")],
            12.5,
        );
        families.gauge(
            "node_filesystem_avail_bytes",
            "Filesystem space available.",
            &[("mountpoint", "/a \"b\""), ("device", "/dev/x")],
            1e12,
        );
        families.gauge("node_load1", "1m load average.", &[], f64::NAN);
        families.counter(
            "node_cpu_seconds_total",
            "ignored: the family exists",
            &[("cpu", "0"), ("mode", "user")],
            3.0,
        );
        assert_eq!(families.len(), 3);
        assert_eq!(families.samples(), 4);
        let text = families.to_text();
        let mut parser =
            crate::exposition::Parser::new(text.as_bytes(), crate::exposition::Format::Prometheus);
        let mut samples: Vec<(String, Option<String>, f64)> = Vec::new();
        while let Some(entry) = parser.next_entry().expect("our own page parses") {
            if let crate::exposition::Entry::Sample(sample) = entry {
                let mountpoint = sample
                    .labels
                    .iter()
                    .find(|(name, _)| *name == "mountpoint")
                    .map(|(_, value)| value.to_string());
                samples.push((sample.name.to_owned(), mountpoint, sample.value));
            }
        }
        let names: Vec<&str> = samples.iter().map(|s| s.0.as_str()).collect();
        assert_eq!(
            names,
            [
                "node_cpu_seconds_total",
                "node_cpu_seconds_total",
                "node_filesystem_avail_bytes",
                "node_load1"
            ]
        );
        assert_eq!(samples[2].1.as_deref(), Some("/a \"b\""));
        assert_eq!(samples[1].2, 3.0);
        assert!(samples[3].2.is_nan());
    }

    #[test]
    fn added_labels_never_override_a_samples_own() {
        let mut families = Families::new();
        families.gauge("m", "h", &[("pod", "own")], 1.0);
        families.gauge("m", "h", &[], 2.0);
        families.add_labels(&[("pod".to_owned(), "added".to_owned())]);
        let pods: Vec<_> = families
            .iter()
            .flat_map(|f| {
                f.samples
                    .iter()
                    .map(|(l, _)| l.get("pod").map(str::to_owned))
            })
            .collect();
        assert_eq!(pods, [Some("own".to_owned()), Some("added".to_owned())]);
    }
}
