//! Label matchers, with Prometheus's semantics: regexes are fully anchored, and a matcher
//! on a label the series does not have sees the empty string.

use std::fmt;

use regex::Regex;

use crate::StorageError;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MatchOp {
    Equal,
    NotEqual,
    Regex,
    NotRegex,
}

/// `name op value`, e.g. `job=~"api|db"`.
#[derive(Clone, Debug)]
pub struct Matcher {
    pub name: String,
    pub op: MatchOp,
    pub value: String,
    /// The anchored regex for `=~` and `!~`.
    regex: Option<Regex>,
}

impl PartialEq for Matcher {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name && self.op == other.op && self.value == other.value
    }
}

impl Matcher {
    pub fn new(
        name: impl Into<String>,
        op: MatchOp,
        value: impl Into<String>,
    ) -> Result<Self, StorageError> {
        let name = name.into();
        let value = value.into();
        let regex = match op {
            MatchOp::Regex | MatchOp::NotRegex => Some(
                Regex::new(&format!("^(?s:{value})$"))
                    .map_err(|e| StorageError::BadMatcher(format!("{name}=~{value:?}: {e}")))?,
            ),
            _ => None,
        };
        Ok(Self {
            name,
            op,
            value,
            regex,
        })
    }

    pub fn equal(name: impl Into<String>, value: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            op: MatchOp::Equal,
            value: value.into(),
            regex: None,
        }
    }

    /// Whether a label value (the empty string for an absent label) matches.
    pub fn matches(&self, value: &str) -> bool {
        match self.op {
            MatchOp::Equal => value == self.value,
            MatchOp::NotEqual => value != self.value,
            MatchOp::Regex => self.regex.as_ref().is_some_and(|r| r.is_match(value)),
            MatchOp::NotRegex => !self.regex.as_ref().is_some_and(|r| r.is_match(value)),
        }
    }

    /// Whether the matcher accepts series that lack the label (so it cannot be answered
    /// from the postings of existing values alone).
    pub fn matches_empty(&self) -> bool {
        self.matches("")
    }
}

impl fmt::Display for Matcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let op = match self.op {
            MatchOp::Equal => "=",
            MatchOp::NotEqual => "!=",
            MatchOp::Regex => "=~",
            MatchOp::NotRegex => "!~",
        };
        write!(f, "{}{op}{:?}", self.name, self.value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regexes_are_anchored_and_absent_labels_are_empty() {
        let m = Matcher::new("job", MatchOp::Regex, "api|db").unwrap();
        assert!(m.matches("api") && m.matches("db"));
        assert!(!m.matches("apiserver"), "anchored at both ends");
        assert!(!m.matches_empty());
        let any = Matcher::new("job", MatchOp::Regex, ".*").unwrap();
        assert!(any.matches_empty());
        let not = Matcher::new("job", MatchOp::NotEqual, "api").unwrap();
        assert!(not.matches_empty());
        let multiline = Matcher::new("msg", MatchOp::Regex, "a.b").unwrap();
        assert!(
            multiline.matches("a\nb"),
            "dot matches newline, as in Prometheus"
        );
        assert!(Matcher::new("x", MatchOp::Regex, "(").is_err());
    }
}
