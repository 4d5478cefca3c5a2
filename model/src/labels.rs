//! Series labels, validated and ordered the way Prometheus does it.
//!
//! A series is identified by its label set, so two label sets that Prometheus would treat as
//! the same series must compare equal here and hash to the same fingerprint: names are sorted
//! byte-wise, a label with an empty value is the same as no label at all, and a name may not
//! appear twice.

use std::fmt;

use serde::{Deserialize, Serialize};
use xxhash_rust::xxh64::Xxh64;

use crate::ModelError;

/// The label that holds a series' metric name.
pub const METRIC_NAME_LABEL: &str = "__name__";

/// One name/value pair of a label set.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Label {
    pub name: String,
    pub value: String,
}

impl Label {
    pub fn new(name: impl Into<String>, value: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            value: value.into(),
        }
    }
}

/// A validated label set: sorted by name, names unique and valid, no empty values.
///
/// The invariants are checked on every way in (constructors and deserialization), so code
/// holding a `Labels` never re-checks them, and a corrupted bus record cannot smuggle an
/// invalid set into storage.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize)]
#[serde(try_from = "Vec<Label>")]
pub struct Labels(Vec<Label>);

/// Serialized as the plain list of labels. Written by hand because serde's `into` would
/// clone every label string on every encode — the gateway's hottest path.
impl Serialize for Labels {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(serializer)
    }
}

impl Labels {
    /// The empty label set.
    pub fn empty() -> Self {
        Self(Vec::new())
    }

    /// Builds a label set from pairs in any order.
    ///
    /// Pairs with an empty value are dropped (Prometheus treats `{a=""}` as "no label a").
    /// Fails on an invalid label name, an invalid metric name in `__name__`, or a name given
    /// twice.
    pub fn new<N, V>(pairs: impl IntoIterator<Item = (N, V)>) -> Result<Self, ModelError>
    where
        N: Into<String>,
        V: Into<String>,
    {
        let labels = pairs
            .into_iter()
            .map(|(name, value)| Label::new(name, value))
            .collect();
        Self::from_labels(labels)
    }

    /// Like [`Labels::new`], taking already-built [`Label`]s.
    pub fn from_labels(labels: Vec<Label>) -> Result<Self, ModelError> {
        Self::from_labels_or_return(labels).map_err(|(error, _)| error)
    }

    /// Like [`Labels::from_labels`], but a refused set is handed back (sorted, without empty
    /// values) with the error, so the caller can describe it without having kept a copy:
    /// the ingest hot path never clones label strings.
    pub fn from_labels_or_return(mut labels: Vec<Label>) -> Result<Self, (ModelError, Vec<Label>)> {
        labels.retain(|label| !label.value.is_empty());
        if !labels.is_sorted_by(|a, b| a.name <= b.name) {
            labels.sort_unstable_by(|a, b| a.name.cmp(&b.name));
        }
        match validate_sorted(&labels) {
            Ok(()) => Ok(Self(labels)),
            Err(error) => Err((error, labels)),
        }
    }

    /// The value of label `name`, if present.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .binary_search_by(|label| label.name.as_str().cmp(name))
            .ok()
            .map(|index| self.0[index].value.as_str())
    }

    /// The metric name (`__name__`), if the set has one.
    pub fn metric_name(&self) -> Option<&str> {
        self.get(METRIC_NAME_LABEL)
    }

    pub fn iter(&self) -> std::slice::Iter<'_, Label> {
        self.0.iter()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn as_slice(&self) -> &[Label] {
        &self.0
    }

    /// A stable 64-bit identity of the label set.
    ///
    /// Computed exactly as Prometheus's `labels.Hash` (xxHash64, seed 0, over
    /// `name 0xff value 0xff` for each label in order), so fingerprints agree with
    /// Prometheus's and never change between Meerkat versions: they may be persisted.
    pub fn fingerprint(&self) -> u64 {
        const SEPARATOR: [u8; 1] = [0xff];
        let mut hasher = Xxh64::new(0);
        for label in &self.0 {
            hasher.update(label.name.as_bytes());
            hasher.update(&SEPARATOR);
            hasher.update(label.value.as_bytes());
            hasher.update(&SEPARATOR);
        }
        hasher.digest()
    }
}

impl TryFrom<Vec<Label>> for Labels {
    type Error = ModelError;

    /// Accepts only a set that already satisfies every invariant (the decoding path: a
    /// well-formed record never needs fixing, so anything that does is corrupt).
    fn try_from(labels: Vec<Label>) -> Result<Self, Self::Error> {
        if let Some(label) = labels.iter().find(|label| label.value.is_empty()) {
            return Err(ModelError::EmptyLabelValue {
                name: label.name.clone(),
            });
        }
        if let Some(pair) = labels.windows(2).find(|pair| pair[0].name > pair[1].name) {
            return Err(ModelError::UnsortedLabels {
                first: pair[0].name.clone(),
                second: pair[1].name.clone(),
            });
        }
        validate_sorted(&labels)?;
        Ok(Self(labels))
    }
}

impl From<Labels> for Vec<Label> {
    fn from(labels: Labels) -> Self {
        labels.0
    }
}

impl<'a> IntoIterator for &'a Labels {
    type Item = &'a Label;
    type IntoIter = std::slice::Iter<'a, Label>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

impl fmt::Display for Labels {
    /// Prometheus's notation: `name{a="1", b="2"}`, with `__name__` pulled out front.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(name) = self.metric_name() {
            f.write_str(name)?;
        }
        f.write_str("{")?;
        let mut first = true;
        for label in self.0.iter().filter(|l| l.name != METRIC_NAME_LABEL) {
            if !first {
                f.write_str(", ")?;
            }
            first = false;
            write!(f, "{}={:?}", label.name, label.value)?;
        }
        f.write_str("}")
    }
}

/// Checks names and uniqueness of a set already sorted by name.
fn validate_sorted(labels: &[Label]) -> Result<(), ModelError> {
    for label in labels {
        if !is_valid_label_name(&label.name) {
            return Err(ModelError::InvalidLabelName {
                name: label.name.clone(),
            });
        }
        if label.name == METRIC_NAME_LABEL && !is_valid_metric_name(&label.value) {
            return Err(ModelError::InvalidMetricName {
                name: label.value.clone(),
            });
        }
    }
    if let Some(pair) = labels.windows(2).find(|pair| pair[0].name == pair[1].name) {
        return Err(ModelError::DuplicateLabel {
            name: pair[0].name.clone(),
        });
    }
    Ok(())
}

/// Prometheus's label name rule: `[a-zA-Z_][a-zA-Z0-9_]*`.
pub fn is_valid_label_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    match bytes.next() {
        Some(first) if first.is_ascii_alphabetic() || first == b'_' => {}
        _ => return false,
    }
    bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// Prometheus's metric name rule: `[a-zA-Z_:][a-zA-Z0-9_:]*`.
pub fn is_valid_metric_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    match bytes.next() {
        Some(first) if first.is_ascii_alphabetic() || first == b'_' || first == b':' => {}
        _ => return false,
    }
    bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b':')
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn sorts_drops_empty_values_and_finds_by_name() {
        let labels =
            Labels::new([("job", "api"), ("__name__", "up"), ("zone", ""), ("a", "1")]).unwrap();
        let names: Vec<&str> = labels.iter().map(|l| l.name.as_str()).collect();
        assert_eq!(names, ["__name__", "a", "job"]);
        assert_eq!(labels.get("job"), Some("api"));
        assert_eq!(labels.get("zone"), None);
        assert_eq!(labels.metric_name(), Some("up"));
        assert_eq!(labels.to_string(), r#"up{a="1", job="api"}"#);
    }

    #[test]
    fn rejects_invalid_names_and_duplicates() {
        assert!(matches!(
            Labels::new([("1abc", "x")]),
            Err(ModelError::InvalidLabelName { name }) if name == "1abc"
        ));
        assert!(matches!(
            Labels::new([("a-b", "x")]),
            Err(ModelError::InvalidLabelName { .. })
        ));
        assert!(matches!(
            Labels::new([("", "x")]),
            Err(ModelError::InvalidLabelName { .. })
        ));
        assert!(matches!(
            Labels::new([("__name__", "http-requests")]),
            Err(ModelError::InvalidMetricName { name }) if name == "http-requests"
        ));
        assert!(matches!(
            Labels::new([("a", "1"), ("b", "2"), ("a", "3")]),
            Err(ModelError::DuplicateLabel { name }) if name == "a"
        ));
        // Colons are fine in metric names (recording rules) but not in label names.
        assert!(Labels::new([("__name__", "job:up:sum")]).is_ok());
        assert!(Labels::new([("job:x", "1")]).is_err());
    }

    #[test]
    fn fingerprint_matches_prometheus_labels_hash() {
        // Golden values computed independently with the reference xxHash64 implementation
        // (Python `xxhash`) over Prometheus's `name 0xff value 0xff` layout. They must never
        // change: fingerprints are persisted.
        assert_eq!(Labels::empty().fingerprint(), 17241709254077376921);
        let up = Labels::new([
            ("job", "prometheus"),
            ("instance", "localhost:9090"),
            ("__name__", "up"),
        ])
        .unwrap();
        assert_eq!(up.fingerprint(), 17477497072380077407);
        assert_eq!(
            Labels::new([("a", "1")]).unwrap().fingerprint(),
            7311538254805615637
        );
        // Longer than Prometheus's 1 KiB fast-path buffer: its streaming path gives the same hash.
        let long = Labels::new([("__name__", "x".repeat(600)), ("b", "y".repeat(600))]).unwrap();
        assert_eq!(long.fingerprint(), 16074256360095752104);
    }

    #[test]
    fn decoding_rejects_sets_that_break_the_invariants() {
        let unsorted = vec![Label::new("b", "1"), Label::new("a", "2")];
        assert!(matches!(
            Labels::try_from(unsorted),
            Err(ModelError::UnsortedLabels { .. })
        ));
        let empty_value = vec![Label::new("a", "")];
        assert!(matches!(
            Labels::try_from(empty_value),
            Err(ModelError::EmptyLabelValue { .. })
        ));
        let duplicate = vec![Label::new("a", "1"), Label::new("a", "2")];
        assert!(matches!(
            Labels::try_from(duplicate),
            Err(ModelError::DuplicateLabel { .. })
        ));
    }

    proptest! {
        #[test]
        fn order_of_input_never_changes_identity(
            mut pairs in proptest::collection::btree_map("[a-z_][a-z0-9_]{0,8}", "[ -~]{1,12}", 0..12)
                .prop_map(|m| m.into_iter().collect::<Vec<_>>()),
            seed in any::<u64>(),
        ) {
            let forward = Labels::new(pairs.clone()).unwrap();
            // A deterministic shuffle driven by `seed`.
            let len = pairs.len().max(1);
            pairs.rotate_left((seed as usize) % len);
            pairs.reverse();
            let shuffled = Labels::new(pairs).unwrap();
            prop_assert_eq!(&forward, &shuffled);
            prop_assert_eq!(forward.fingerprint(), shuffled.fingerprint());
        }

        #[test]
        fn validity_matches_the_prometheus_regex(name in "[ -~]{0,10}") {
            let expected = !name.is_empty()
                && name.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            prop_assert_eq!(is_valid_label_name(&name), expected);
        }
    }
}
