//! A label set being built up: target labels, relabeling, a scraped sample's labels.
//!
//! Kept as a sorted vector of owned pairs because relabeling edits it in place a few labels
//! at a time; the finished set becomes the remote-write series as it is.

/// Labels sorted by name, names unique, no empty values (setting "" deletes, as in
/// Prometheus's `labels.Builder`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LabelSet(Vec<(String, String)>);

impl LabelSet {
    pub fn new() -> Self {
        Self::default()
    }

    /// Builds from pairs in any order; a later pair wins over an earlier one of the same name.
    pub fn from_pairs(pairs: impl IntoIterator<Item = (String, String)>) -> Self {
        let mut set = Self::new();
        for (name, value) in pairs {
            set.set(&name, value);
        }
        set
    }

    fn position(&self, name: &str) -> Result<usize, usize> {
        self.0.binary_search_by(|(n, _)| n.as_str().cmp(name))
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.position(name).ok().map(|i| self.0[i].1.as_str())
    }

    pub fn contains(&self, name: &str) -> bool {
        self.position(name).is_ok()
    }

    /// Sets `name` to `value`; an empty value deletes the label.
    pub fn set(&mut self, name: &str, value: String) {
        if value.is_empty() {
            self.delete(name);
            return;
        }
        match self.position(name) {
            Ok(i) => self.0[i].1 = value,
            Err(i) => self.0.insert(i, (name.to_owned(), value)),
        }
    }

    pub fn delete(&mut self, name: &str) {
        if let Ok(i) = self.position(name) {
            self.0.remove(i);
        }
    }

    /// Keeps the labels whose name `keep` accepts.
    pub fn retain(&mut self, mut keep: impl FnMut(&str) -> bool) {
        self.0.retain(|(name, _)| keep(name));
    }

    pub fn iter(&self) -> impl ExactSizeIterator<Item = (&str, &str)> + '_ {
        self.0.iter().map(|(n, v)| (n.as_str(), v.as_str()))
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn into_pairs(self) -> Vec<(String, String)> {
        self.0
    }

    /// The set packed into one allocation (length-prefixed names and values): what a scrape
    /// loop keeps of each series between scrapes, at a fraction of the owned form's memory.
    pub fn pack(&self) -> Box<[u8]> {
        let mut out = Vec::with_capacity(self.0.iter().map(|(n, v)| n.len() + v.len() + 4).sum());
        for (name, value) in &self.0 {
            for text in [name, value] {
                let mut len = text.len();
                loop {
                    let byte = (len & 0x7f) as u8;
                    len >>= 7;
                    if len == 0 {
                        out.push(byte);
                        break;
                    }
                    out.push(byte | 0x80);
                }
                out.extend_from_slice(text.as_bytes());
            }
        }
        out.into_boxed_slice()
    }

    /// The set [`LabelSet::pack`] packed (`None` if `packed` is not one).
    pub fn unpack(packed: &[u8]) -> Option<Self> {
        fn next(rest: &mut &[u8]) -> Option<String> {
            let mut len = 0usize;
            let mut shift = 0;
            loop {
                let (&byte, tail) = rest.split_first()?;
                *rest = tail;
                len |= usize::from(byte & 0x7f) << shift;
                if byte & 0x80 == 0 {
                    break;
                }
                shift += 7;
                if shift > 35 {
                    return None;
                }
            }
            let (text, tail) = rest.split_at_checked(len)?;
            *rest = tail;
            String::from_utf8(text.to_vec()).ok()
        }
        let mut rest = packed;
        let mut pairs = Vec::new();
        while !rest.is_empty() {
            let name = next(&mut rest)?;
            pairs.push((name, next(&mut rest)?));
        }
        Some(Self(pairs))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stays_sorted_and_drops_empty_values() {
        let mut set = LabelSet::from_pairs([
            ("b".to_owned(), "2".to_owned()),
            ("a".to_owned(), "1".to_owned()),
            ("b".to_owned(), "3".to_owned()),
        ]);
        assert_eq!(set.iter().collect::<Vec<_>>(), [("a", "1"), ("b", "3")]);
        set.set("a", String::new());
        set.set("c", "x".to_owned());
        assert_eq!(set.iter().collect::<Vec<_>>(), [("b", "3"), ("c", "x")]);
        assert!(set.contains("c") && !set.contains("a"));
    }

    #[test]
    fn packing_round_trips() {
        let long = "x".repeat(300);
        let set = LabelSet::from_pairs([
            ("__name__".to_owned(), "up".to_owned()),
            ("a".to_owned(), long),
            ("nul".to_owned(), "a\0b".to_owned()),
        ]);
        assert_eq!(LabelSet::unpack(&set.pack()), Some(set));
        assert_eq!(
            LabelSet::unpack(&LabelSet::new().pack()),
            Some(LabelSet::new())
        );
        assert_eq!(LabelSet::unpack(&[5, b'a']), None);
    }
}
