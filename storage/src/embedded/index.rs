//! A tenant's series index: series ids, their labels, and postings (label name → value →
//! series) for answering matchers the way Prometheus's TSDB does.

use std::collections::{BTreeMap, HashMap};

use model::Labels;
use roaring::RoaringBitmap;

use crate::{MatchOp, Matcher};

/// A tenant's series. Ids are dense and assigned in creation order.
#[derive(Debug, Default)]
pub(crate) struct SeriesIndex {
    /// Fingerprint → ids with that fingerprint (more than one only on a hash collision).
    by_fingerprint: HashMap<u64, Vec<u32>>,
    /// Id → labels.
    labels: Vec<Labels>,
    /// Label name → value → series having it.
    postings: HashMap<String, BTreeMap<String, RoaringBitmap>>,
    all: RoaringBitmap,
}

impl SeriesIndex {
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn labels(&self, id: u32) -> Option<&Labels> {
        self.labels.get(id as usize)
    }

    /// The id of `labels`, if the series exists.
    pub fn find(&self, labels: &Labels, fingerprint: u64) -> Option<u32> {
        self.by_fingerprint
            .get(&fingerprint)?
            .iter()
            .copied()
            .find(|id| self.labels[*id as usize] == *labels)
    }

    /// The id of the series whose labels are exactly `raw` (see [`Labels::equals_raw`]),
    /// `fingerprint` being [`model::fingerprint_of`] them.
    pub fn find_raw(&self, raw: &[(&[u8], &[u8])], fingerprint: u64) -> Option<u32> {
        self.by_fingerprint
            .get(&fingerprint)?
            .iter()
            .copied()
            .find(|id| self.labels[*id as usize].equals_raw(raw))
    }

    /// The id of `labels`, creating the series if needed; `true` when it was created.
    pub fn get_or_create(&mut self, labels: &Labels) -> (u32, bool) {
        let fingerprint = labels.fingerprint();
        if let Some(id) = self.find(labels, fingerprint) {
            return (id, false);
        }
        let id = self.labels.len() as u32;
        self.insert(id, labels.clone(), fingerprint);
        (id, true)
    }

    /// Adds a series with a known id (rebuilding the index from disk).
    pub fn insert(&mut self, id: u32, labels: Labels, fingerprint: u64) {
        for label in labels.iter() {
            self.postings
                .entry(label.name.to_owned())
                .or_default()
                .entry(label.value.to_owned())
                .or_default()
                .insert(id);
        }
        self.by_fingerprint.entry(fingerprint).or_default().push(id);
        if self.labels.len() <= id as usize {
            self.labels.resize(id as usize + 1, Labels::empty());
        }
        self.labels[id as usize] = labels;
        self.all.insert(id);
    }

    /// The series whose values of `name` satisfy `accept`.
    fn union_where(&self, name: &str, accept: impl Fn(&str) -> bool) -> RoaringBitmap {
        let mut out = RoaringBitmap::new();
        if let Some(values) = self.postings.get(name) {
            for (value, ids) in values {
                if accept(value) {
                    out |= ids;
                }
            }
        }
        out
    }

    /// The series matching every matcher (Prometheus's `PostingsForMatchers`): matchers that
    /// cannot match an absent label select from postings; the others remove the series
    /// whose value they reject.
    pub fn select(&self, matchers: &[Matcher]) -> RoaringBitmap {
        let mut result: Option<RoaringBitmap> = None;
        for matcher in matchers.iter().filter(|m| !m.matches_empty()) {
            let ids = match matcher.op {
                MatchOp::Equal => self
                    .postings
                    .get(&matcher.name)
                    .and_then(|values| values.get(&matcher.value))
                    .cloned()
                    .unwrap_or_default(),
                _ => self.union_where(&matcher.name, |value| matcher.matches(value)),
            };
            result = Some(match result {
                Some(current) => current & ids,
                None => ids,
            });
        }
        let mut result = result.unwrap_or_else(|| self.all.clone());
        for matcher in matchers.iter().filter(|m| m.matches_empty()) {
            if result.is_empty() {
                break;
            }
            result -= self.union_where(&matcher.name, |value| !matcher.matches(value));
        }
        result
    }

    /// Label names present on `ids`.
    pub fn label_names(&self, ids: &RoaringBitmap) -> Vec<String> {
        let mut names: Vec<String> = self
            .postings
            .iter()
            .filter(|(_, values)| values.values().any(|series| !series.is_disjoint(ids)))
            .map(|(name, _)| name.clone())
            .collect();
        names.sort_unstable();
        names
    }

    /// Values of `name` present on `ids`.
    pub fn label_values(&self, name: &str, ids: &RoaringBitmap) -> Vec<String> {
        self.postings
            .get(name)
            .map(|values| {
                values
                    .iter()
                    .filter(|(_, series)| !series.is_disjoint(ids))
                    .map(|(value, _)| value.clone())
                    .collect()
            })
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn index() -> SeriesIndex {
        let mut index = SeriesIndex::default();
        for (job, instance, code) in [
            ("api", "a:1", "200"),
            ("api", "a:2", "500"),
            ("db", "d:1", ""),
            ("cache", "c:1", "200"),
        ] {
            let labels = Labels::new([
                ("__name__", "http_requests_total"),
                ("job", job),
                ("instance", instance),
                ("code", code),
            ])
            .unwrap();
            index.get_or_create(&labels);
        }
        index
    }

    fn select(index: &SeriesIndex, matchers: &[(&str, MatchOp, &str)]) -> Vec<u32> {
        let matchers: Vec<Matcher> = matchers
            .iter()
            .map(|(n, op, v)| Matcher::new(*n, *op, *v).unwrap())
            .collect();
        index.select(&matchers).iter().collect()
    }

    #[test]
    fn matchers_select_like_prometheus() {
        let index = index();
        assert_eq!(select(&index, &[("job", MatchOp::Equal, "api")]), [0, 1]);
        assert_eq!(
            select(&index, &[("job", MatchOp::Regex, "api|db")]),
            [0, 1, 2]
        );
        assert_eq!(select(&index, &[("job", MatchOp::NotEqual, "api")]), [2, 3]);
        assert_eq!(select(&index, &[("job", MatchOp::NotRegex, "a.*")]), [2, 3]);
        // An absent label is the empty string: code="" selects the series without code.
        assert_eq!(select(&index, &[("code", MatchOp::Equal, "")]), [2]);
        assert_eq!(
            select(&index, &[("code", MatchOp::NotEqual, "")]),
            [0, 1, 3]
        );
        assert_eq!(
            select(&index, &[("code", MatchOp::Regex, "2.*|")]),
            [0, 2, 3]
        );
        assert_eq!(
            select(
                &index,
                &[
                    ("job", MatchOp::Equal, "api"),
                    ("code", MatchOp::Equal, "500")
                ]
            ),
            [1]
        );
        assert_eq!(
            select(&index, &[("missing", MatchOp::Equal, "x")]),
            Vec::<u32>::new()
        );
        assert_eq!(
            select(&index, &[("__name__", MatchOp::Regex, ".+")]).len(),
            4
        );
    }

    #[test]
    fn the_same_labels_are_the_same_series() {
        let mut index = index();
        let labels = Labels::new([
            ("__name__", "http_requests_total"),
            ("job", "api"),
            ("instance", "a:1"),
            ("code", "200"),
        ])
        .unwrap();
        assert_eq!(index.get_or_create(&labels), (0, false));
        assert_eq!(index.len(), 4);
        let all = index.select(&[]);
        assert_eq!(
            index.label_names(&all),
            ["__name__", "code", "instance", "job"]
        );
        assert_eq!(index.label_values("job", &all), ["api", "cache", "db"]);
    }
}
