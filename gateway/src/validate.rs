//! Turning what a client sent into valid model data, one series at a time, so one bad series
//! is refused with a reason while the rest of the request is kept.

use std::fmt;

use model::Labels;

use crate::config::Limits;

/// Why one series (or span, or log record) was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejection {
    /// A short stable reason, used as a metrics label.
    pub reason: &'static str,
    pub message: String,
}

impl Rejection {
    pub fn new(reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            reason,
            message: message.into(),
        }
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// Renders a label set as the client sent it, for error messages (truncated).
pub fn describe_pairs<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> String {
    let mut out = String::from("{");
    for (i, (name, value)) in pairs.into_iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        out.push_str(name);
        out.push('=');
        out.push_str(&format!("{value:?}"));
        if out.len() > 300 {
            // Cut at a character boundary: values may hold any UTF-8.
            let mut cut = 300;
            while !out.is_char_boundary(cut) {
                cut -= 1;
            }
            out.truncate(cut);
            out.push('…');
            break;
        }
    }
    out.push('}');
    out
}

/// Builds the label set of a series, enforcing the tenant's limits and Prometheus's rules.
pub fn series_labels(pairs: Vec<(String, String)>, limits: &Limits) -> Result<Labels, Rejection> {
    let mut refs: Vec<(&str, &str)> = pairs
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_str()))
        .collect();
    labels_from_refs(&mut refs, limits)
}

/// The fast form of [`series_labels`]: borrowed pairs (straight out of the request buffer)
/// are copied once, into the packed label set.
pub fn labels_from_refs(
    pairs: &mut Vec<(&str, &str)>,
    limits: &Limits,
) -> Result<Labels, Rejection> {
    let describe = |pairs: &[(&str, &str)]| describe_pairs(pairs.iter().copied());
    if pairs.len() as u64 > limits.max_labels_per_series {
        return Err(Rejection::new(
            "too_many_labels",
            format!(
                "series {} has {} labels, more than the limit of {}",
                describe(pairs),
                pairs.len(),
                limits.max_labels_per_series
            ),
        ));
    }
    for (name, value) in pairs.iter() {
        if name.len() as u64 > limits.max_label_name_bytes {
            return Err(Rejection::new(
                "label_name_too_long",
                format!(
                    "series {}: label name of {} bytes is longer than the limit of {}",
                    describe(pairs),
                    name.len(),
                    limits.max_label_name_bytes
                ),
            ));
        }
        if value.len() as u64 > limits.max_label_value_bytes {
            return Err(Rejection::new(
                "label_value_too_long",
                format!(
                    "series {}: value of label {name} is {} bytes, longer than the limit of {}",
                    describe(pairs),
                    value.len(),
                    limits.max_label_value_bytes
                ),
            ));
        }
    }
    let labels = Labels::from_pairs(pairs).map_err(|error| {
        let reason = match error {
            model::ModelError::DuplicateLabel { .. } => "duplicate_label",
            model::ModelError::InvalidMetricName { .. } => "invalid_metric_name",
            _ => "invalid_label",
        };
        Rejection::new(reason, format!("series {}: {error}", describe(pairs)))
    })?;
    if labels.metric_name().is_none() {
        return Err(Rejection::new(
            "missing_metric_name",
            format!("series {labels} has no metric name (__name__)"),
        ));
    }
    Ok(labels)
}

/// Counts what a request brought and what was refused, keeping the first refusal's message
/// for the client.
#[derive(Debug, Default)]
pub struct Outcome {
    pub accepted: u64,
    pub rejected: Vec<(&'static str, u64)>,
    pub first_rejection: Option<String>,
    /// Items dropped by design (an Influx string field is not a sample): counted in the
    /// metrics, but not an error for the client.
    pub skipped: Vec<(&'static str, u64)>,
}

impl Outcome {
    pub fn reject(&mut self, rejection: Rejection, items: u64) {
        match self
            .rejected
            .iter_mut()
            .find(|(reason, _)| *reason == rejection.reason)
        {
            Some((_, count)) => *count += items,
            None => self.rejected.push((rejection.reason, items)),
        }
        self.first_rejection.get_or_insert(rejection.message);
    }

    pub fn rejected_quietly(&mut self, reason: &'static str, items: u64) {
        match self.skipped.iter_mut().find(|(r, _)| *r == reason) {
            Some((_, count)) => *count += items,
            None => self.skipped.push((reason, items)),
        }
    }

    pub fn rejected_total(&self) -> u64 {
        self.rejected.iter().map(|(_, n)| n).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn each_problem_has_its_reason_and_names_the_series() {
        let limits = Limits {
            max_labels_per_series: 3,
            max_label_value_bytes: 8,
            ..Limits::default()
        };
        let cases = [
            (
                pairs(&[("__name__", "up"), ("a", "1"), ("b", "2"), ("c", "3")]),
                "too_many_labels",
            ),
            (
                pairs(&[("__name__", "up"), ("a", "123456789")]),
                "label_value_too_long",
            ),
            (
                pairs(&[("__name__", "up"), ("a", "1"), ("a", "2")]),
                "duplicate_label",
            ),
            (pairs(&[("__name__", "up-time")]), "invalid_metric_name"),
            (
                pairs(&[("__name__", "up"), ("bad-name", "1")]),
                "invalid_label",
            ),
            (pairs(&[("job", "x")]), "missing_metric_name"),
        ];
        for (input, reason) in cases {
            let err = series_labels(input, &limits).unwrap_err();
            assert_eq!(err.reason, reason, "{}", err.message);
            assert!(err.message.contains("series {"), "{}", err.message);
        }
        let ok = series_labels(pairs(&[("job", "x"), ("__name__", "up")]), &limits).unwrap();
        // Long multi-byte values are cut for the message without splitting a character.
        let long = "ü".repeat(400);
        let described = describe_pairs([("a", long.as_str())]);
        assert!(
            described.len() < 320 && described.ends_with("…}"),
            "{described}"
        );
        assert_eq!(ok.to_string(), r#"up{job="x"}"#);
    }
}
