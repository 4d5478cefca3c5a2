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
///
/// Stored packed: all names and values in one string, plus their end offsets — two
/// allocations per series instead of two per label (the representation Prometheus's
/// `stringlabels` build uses, for the same reason: ingest creates one of these for every
/// series of every request, and allocation dominated its profile). Serialized in the same
/// packed form, so encoding is a copy.
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub struct Labels {
    /// `name₀ value₀ name₁ value₁ …`, concatenated.
    text: Box<str>,
    /// End offset in `text` of each name and each value, in that order.
    ends: Box<[u32]>,
}

/// A borrowed view of one label of a [`Labels`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LabelRef<'a> {
    pub name: &'a str,
    pub value: &'a str,
}

impl LabelRef<'_> {
    pub fn to_owned(self) -> Label {
        Label::new(self.name, self.value)
    }
}

impl Labels {
    /// The empty label set.
    pub fn empty() -> Self {
        Self::default()
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
        let owned: Vec<(String, String)> = pairs
            .into_iter()
            .map(|(n, v)| (n.into(), v.into()))
            .collect();
        let mut refs: Vec<(&str, &str)> = owned
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_str()))
            .collect();
        Self::from_pairs(&mut refs)
    }

    /// Like [`Labels::new`], taking already-built [`Label`]s.
    pub fn from_labels(labels: Vec<Label>) -> Result<Self, ModelError> {
        let mut refs: Vec<(&str, &str)> = labels
            .iter()
            .map(|l| (l.name.as_str(), l.value.as_str()))
            .collect();
        Self::from_pairs(&mut refs)
    }

    /// The fast way in: builds from borrowed pairs (for example straight out of a request
    /// buffer), copying each string exactly once, into the packed form.
    ///
    /// `pairs` is left sorted and without empty values, so on error the caller can still
    /// describe what it sent.
    pub fn from_pairs(pairs: &mut Vec<(&str, &str)>) -> Result<Self, ModelError> {
        pairs.retain(|(_, value)| !value.is_empty());
        if !pairs.is_sorted_by(|a, b| a.0 <= b.0) {
            pairs.sort_unstable_by(|a, b| a.0.cmp(b.0));
        }
        validate_sorted(pairs.iter().copied())?;
        let total: usize = pairs.iter().map(|(n, v)| n.len() + v.len()).sum();
        let Ok(total_u32) = u32::try_from(total) else {
            return Err(ModelError::InvalidLabelName {
                name: format!("(label set of {total} bytes is larger than 4 GiB)"),
            });
        };
        let mut text = String::with_capacity(total);
        let mut ends = Vec::with_capacity(pairs.len() * 2);
        for (name, value) in pairs.iter() {
            text.push_str(name);
            ends.push(text.len() as u32);
            text.push_str(value);
            ends.push(text.len() as u32);
        }
        debug_assert_eq!(text.len() as u32, total_u32);
        Ok(Self {
            text: text.into_boxed_str(),
            ends: ends.into_boxed_slice(),
        })
    }

    /// Label `index` (in name order).
    fn label(&self, index: usize) -> LabelRef<'_> {
        let start = if index == 0 {
            0
        } else {
            self.ends[index * 2 - 1] as usize
        };
        let name_end = self.ends[index * 2] as usize;
        let value_end = self.ends[index * 2 + 1] as usize;
        LabelRef {
            name: &self.text[start..name_end],
            value: &self.text[name_end..value_end],
        }
    }

    /// The value of label `name`, if present.
    pub fn get(&self, name: &str) -> Option<&str> {
        let (mut low, mut high) = (0, self.len());
        while low < high {
            let middle = (low + high) / 2;
            let label = self.label(middle);
            match label.name.cmp(name) {
                std::cmp::Ordering::Equal => return Some(label.value),
                std::cmp::Ordering::Less => low = middle + 1,
                std::cmp::Ordering::Greater => high = middle,
            }
        }
        None
    }

    /// The metric name (`__name__`), if the set has one.
    pub fn metric_name(&self) -> Option<&str> {
        self.get(METRIC_NAME_LABEL)
    }

    /// The labels in name order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = LabelRef<'_>> + DoubleEndedIterator + '_ {
        (0..self.len()).map(|i| self.label(i))
    }

    pub fn len(&self) -> usize {
        self.ends.len() / 2
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// The labels as owned pairs.
    pub fn to_vec(&self) -> Vec<Label> {
        self.iter().map(|l| l.to_owned()).collect()
    }

    /// A stable 64-bit identity of the label set.
    ///
    /// Computed exactly as Prometheus's `labels.Hash` (xxHash64, seed 0, over
    /// `name 0xff value 0xff` for each label in order), so fingerprints agree with
    /// Prometheus's and never change between Meerkat versions: they may be persisted.
    pub fn fingerprint(&self) -> u64 {
        fingerprint_of(self.iter().map(|l| (l.name.as_bytes(), l.value.as_bytes())))
    }

    /// Whether these are exactly `raw`'s labels, in `raw`'s order (which for a valid set
    /// as sent by Prometheus is name order).
    pub fn equals_raw(&self, raw: &[(&[u8], &[u8])]) -> bool {
        self.len() == raw.len()
            && self.iter().zip(raw).all(|(l, (name, value))| {
                l.name.as_bytes() == *name && l.value.as_bytes() == *value
            })
    }
}

/// [`Labels::fingerprint`] of name/value pairs that are a valid label set as they stand
/// (sorted by name, no empty values), such as a remote-write series accepted by the
/// gateway's fast path: a series can be looked up by it before any `Labels` is built.
pub fn fingerprint_of<'a>(pairs: impl IntoIterator<Item = (&'a [u8], &'a [u8])>) -> u64 {
    const SEPARATOR: [u8; 1] = [0xff];
    let mut hasher = Xxh64::new(0);
    for (name, value) in pairs {
        hasher.update(name);
        hasher.update(&SEPARATOR);
        hasher.update(value);
        hasher.update(&SEPARATOR);
    }
    hasher.digest()
}

impl Ord for Labels {
    /// Label by label, name then value: the order Prometheus sorts series in.
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.iter().cmp(other.iter())
    }
}

impl PartialOrd for Labels {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Debug for Labels {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Labels({self})")
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
        for label in self.iter().filter(|l| l.name != METRIC_NAME_LABEL) {
            if !first {
                f.write_str(", ")?;
            }
            first = false;
            write!(f, "{}={:?}", label.name, label.value)?;
        }
        f.write_str("}")
    }
}

impl Serialize for Labels {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        (&*self.text, &*self.ends).serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Labels {
    /// Accepts only a set that already satisfies every invariant (the decoding path: a
    /// well-formed record never needs fixing, so anything that does is corrupt). The text
    /// is borrowed from the input where the format allows, so decoding copies it once.
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let (text, ends): (std::borrow::Cow<'de, str>, Vec<u32>) =
            Deserialize::deserialize(deserializer)?;
        Labels::from_packed(text.into_owned(), ends).map_err(serde::de::Error::custom)
    }
}

impl Labels {
    /// Checks a packed set from outside (a decoded record) before trusting it.
    fn from_packed(text: String, ends: Vec<u32>) -> Result<Self, ModelError> {
        let corrupt = |reason: &str| ModelError::Decode {
            reason: format!("label set: {reason}"),
        };
        if !ends.len().is_multiple_of(2) {
            return Err(corrupt("odd number of offsets"));
        }
        let mut previous = 0usize;
        for end in &ends {
            let end = *end as usize;
            if end < previous || end > text.len() || !text.is_char_boundary(end) {
                return Err(corrupt("offsets out of order or out of bounds"));
            }
            previous = end;
        }
        if previous != text.len() {
            return Err(corrupt("text longer than its labels"));
        }
        let labels = Self {
            text: text.into_boxed_str(),
            ends: ends.into_boxed_slice(),
        };
        for label in labels.iter() {
            if label.value.is_empty() {
                return Err(ModelError::EmptyLabelValue {
                    name: label.name.to_owned(),
                });
            }
        }
        if let Some((a, b)) = labels
            .iter()
            .zip(labels.iter().skip(1))
            .find(|(a, b)| a.name > b.name)
        {
            return Err(ModelError::UnsortedLabels {
                first: a.name.to_owned(),
                second: b.name.to_owned(),
            });
        }
        validate_sorted(labels.iter().map(|l| (l.name, l.value)))?;
        Ok(labels)
    }
}

impl TryFrom<Vec<Label>> for Labels {
    type Error = ModelError;

    /// Accepts only a set that already satisfies every invariant.
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
        Self::from_labels(labels)
    }
}

/// Checks names and uniqueness of pairs already sorted by name.
fn validate_sorted<'a>(pairs: impl Iterator<Item = (&'a str, &'a str)>) -> Result<(), ModelError> {
    let mut previous: Option<&str> = None;
    for (name, value) in pairs {
        if !is_valid_label_name(name) {
            return Err(ModelError::InvalidLabelName {
                name: name.to_owned(),
            });
        }
        if name == METRIC_NAME_LABEL && !is_valid_metric_name(value) {
            return Err(ModelError::InvalidMetricName {
                name: value.to_owned(),
            });
        }
        if previous == Some(name) {
            return Err(ModelError::DuplicateLabel {
                name: name.to_owned(),
            });
        }
        previous = Some(name);
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
        let names: Vec<&str> = labels.iter().map(|l| l.name).collect();
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

    #[test]
    fn packed_form_round_trips_and_corrupt_packings_are_refused() {
        let labels = Labels::new([("job", "api"), ("__name__", "up"), ("zone", "ü-1")]).unwrap();
        let bytes = postcard::to_stdvec(&labels).unwrap();
        let back: Labels = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(back, labels);
        assert_eq!(back.fingerprint(), labels.fingerprint());
        assert_eq!(back.get("zone"), Some("ü-1"));

        let packed = |text: &str, ends: &[u32]| postcard::to_stdvec(&(text, ends)).unwrap();
        let cases: [(&str, Vec<u8>); 7] = [
            ("odd offsets", packed("ab", &[1])),
            ("out of bounds", packed("ab", &[1, 5])),
            ("backwards", packed("abcd", &[3, 2, 3, 4])),
            ("not all text used", packed("abcdef", &[1, 2])),
            ("unsorted", packed("b1a2", &[1, 2, 3, 4])),
            ("empty value", packed("a", &[1, 1])),
            ("bad name", packed("1a", &[1, 2])),
        ];
        for (what, bytes) in cases {
            assert!(
                postcard::from_bytes::<Labels>(&bytes).is_err(),
                "{what} was accepted"
            );
        }
        // An offset inside a multi-byte character.
        assert!(postcard::from_bytes::<Labels>(&packed("aü", &[1, 2])).is_err());
    }

    #[test]
    fn ordering_is_label_by_label() {
        let a = Labels::new([("a", "bc")]).unwrap();
        let b = Labels::new([("ab", "c")]).unwrap();
        // Same concatenated text, different labels: "a" < "ab" decides.
        assert!(a < b);
        assert_ne!(a, b);
        assert_ne!(a.fingerprint(), b.fingerprint());
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
