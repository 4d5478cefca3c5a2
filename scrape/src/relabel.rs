//! Prometheus relabeling (`relabel_configs`, `metric_relabel_configs`), every action of
//! Prometheus 2.42, with its validation rules and its quirks.
//!
//! Users paste relabel rules from their Prometheus configs, so the semantics are Prometheus's
//! to the letter: regexes are anchored (`^(?:…)$`), `$1`/`${name}` expand with Go's rules
//! (the longest name wins: `$1x` is the group called `1x`), a replacement that expands to
//! nothing deletes the target label, an invalid expanded target name deletes it too, and
//! `hashmod` takes the low 64 bits of the MD5 of the joined source values.

use md5::{Digest, Md5};
use regex::Regex;
use serde::Deserialize;

use crate::labels::LabelSet;

/// One rule as written in YAML. Fields left out take Prometheus's defaults.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RelabelConfigYaml {
    #[serde(default)]
    pub source_labels: Option<Vec<String>>,
    #[serde(default)]
    pub separator: Option<String>,
    #[serde(default)]
    pub regex: Option<String>,
    #[serde(default)]
    pub modulus: Option<u64>,
    #[serde(default)]
    pub target_label: Option<String>,
    #[serde(default)]
    pub replacement: Option<String>,
    #[serde(default)]
    pub action: Option<String>,
}

/// What a rule does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Replace,
    Keep,
    Drop,
    KeepEqual,
    DropEqual,
    HashMod,
    LabelMap,
    LabelDrop,
    LabelKeep,
    Lowercase,
    Uppercase,
}

impl Action {
    /// Prometheus takes action names in any case.
    fn parse(name: &str) -> Result<Self, RelabelError> {
        Ok(match name.to_ascii_lowercase().as_str() {
            "replace" => Self::Replace,
            "keep" => Self::Keep,
            "drop" => Self::Drop,
            "keepequal" => Self::KeepEqual,
            "dropequal" => Self::DropEqual,
            "hashmod" => Self::HashMod,
            "labelmap" => Self::LabelMap,
            "labeldrop" => Self::LabelDrop,
            "labelkeep" => Self::LabelKeep,
            "lowercase" => Self::Lowercase,
            "uppercase" => Self::Uppercase,
            _ => return Err(RelabelError(format!("unknown relabel action {name:?}"))),
        })
    }

    fn name(self) -> &'static str {
        match self {
            Self::Replace => "replace",
            Self::Keep => "keep",
            Self::Drop => "drop",
            Self::KeepEqual => "keepequal",
            Self::DropEqual => "dropequal",
            Self::HashMod => "hashmod",
            Self::LabelMap => "labelmap",
            Self::LabelDrop => "labeldrop",
            Self::LabelKeep => "labelkeep",
            Self::Lowercase => "lowercase",
            Self::Uppercase => "uppercase",
        }
    }
}

/// A rule Prometheus would refuse, with Prometheus's reason.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct RelabelError(pub String);

/// A validated rule, its regex compiled.
#[derive(Clone, Debug)]
pub struct RelabelRule {
    source_labels: Vec<String>,
    separator: String,
    regex: Regex,
    modulus: u64,
    target_label: String,
    replacement: String,
    action: Action,
}

const DEFAULT_SEPARATOR: &str = ";";
const DEFAULT_REPLACEMENT: &str = "$1";
const DEFAULT_REGEX: &str = "(.*)";

/// Compiles a Prometheus regex: anchored at both ends, as Prometheus does.
pub fn anchored_regex(pattern: &str) -> Result<Regex, RelabelError> {
    Regex::new(&format!("^(?:{pattern})$"))
        .map_err(|e| RelabelError(format!("invalid regex {pattern:?}: {e}")))
}

/// Prometheus's `relabelTarget`: label name characters and `$` references.
fn is_relabel_target(text: &str) -> bool {
    static TARGET: std::sync::LazyLock<Regex> = std::sync::LazyLock::new(|| {
        Regex::new(r"^(?:(?:[a-zA-Z_]|\$(?:\{\w+\}|\w+))+\w*)+$").expect("a valid regex")
    });
    TARGET.is_match(text)
}

/// `[a-zA-Z_][a-zA-Z0-9_]*`, the label names Prometheus 2.42 accepts.
pub fn is_valid_label_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    bytes
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

impl RelabelRule {
    /// Validates a rule as Prometheus's `relabel.Config.UnmarshalYAML` does.
    pub fn compile(yaml: &RelabelConfigYaml) -> Result<Self, RelabelError> {
        let action = match yaml.action.as_deref() {
            None => Action::Replace,
            Some("") => return Err(RelabelError("relabel action cannot be empty".into())),
            Some(name) => Action::parse(name)?,
        };
        let name = action.name();
        let target_label = yaml.target_label.clone().unwrap_or_default();
        let replacement = yaml
            .replacement
            .clone()
            .unwrap_or_else(|| DEFAULT_REPLACEMENT.to_owned());
        let modulus = yaml.modulus.unwrap_or(0);
        let separator = yaml
            .separator
            .clone()
            .unwrap_or_else(|| DEFAULT_SEPARATOR.to_owned());
        let fail = |message: String| Err(RelabelError(message));
        use Action::*;
        if modulus == 0 && action == HashMod {
            return fail("relabel configuration for hashmod requires non-zero modulus".into());
        }
        if matches!(
            action,
            Replace | HashMod | Lowercase | Uppercase | KeepEqual | DropEqual
        ) && target_label.is_empty()
        {
            return fail(format!(
                "relabel configuration for {name} action requires 'target_label' value"
            ));
        }
        if matches!(
            action,
            Replace | Lowercase | Uppercase | KeepEqual | DropEqual
        ) && !is_relabel_target(&target_label)
        {
            return fail(format!(
                "{target_label:?} is invalid 'target_label' for {name} action"
            ));
        }
        if matches!(action, Lowercase | Uppercase | KeepEqual | DropEqual)
            && replacement != DEFAULT_REPLACEMENT
        {
            return fail(format!("'replacement' can not be set for {name} action"));
        }
        if action == LabelMap && !is_relabel_target(&replacement) {
            return fail(format!(
                "{replacement:?} is invalid 'replacement' for {name} action"
            ));
        }
        if action == HashMod && !is_valid_label_name(&target_label) {
            return fail(format!(
                "{target_label:?} is invalid 'target_label' for {name} action"
            ));
        }
        if matches!(action, KeepEqual | DropEqual)
            && (yaml.regex.is_some()
                || modulus != 0
                || separator != DEFAULT_SEPARATOR
                || replacement != DEFAULT_REPLACEMENT)
        {
            return fail(format!(
                "{name} action requires only 'source_labels' and `target_label`, and no other fields"
            ));
        }
        if matches!(action, LabelDrop | LabelKeep)
            && (yaml.source_labels.is_some()
                || !target_label.is_empty()
                || modulus != 0
                || separator != DEFAULT_SEPARATOR
                || replacement != DEFAULT_REPLACEMENT)
        {
            return fail(format!(
                "{name} action requires only 'regex', and no other fields"
            ));
        }
        let regex = anchored_regex(yaml.regex.as_deref().unwrap_or(DEFAULT_REGEX))?;
        Ok(Self {
            source_labels: yaml.source_labels.clone().unwrap_or_default(),
            separator,
            regex,
            modulus,
            target_label,
            replacement,
            action,
        })
    }

    /// Applies this rule; `false` means the label set is dropped.
    fn apply(&self, labels: &mut LabelSet) -> bool {
        let value = self
            .source_labels
            .iter()
            .map(|name| labels.get(name).unwrap_or_default())
            .collect::<Vec<_>>()
            .join(&self.separator);
        match self.action {
            Action::Drop => return !self.regex.is_match(&value),
            Action::Keep => return self.regex.is_match(&value),
            Action::DropEqual => {
                return labels.get(&self.target_label).unwrap_or_default() != value;
            }
            Action::KeepEqual => {
                return labels.get(&self.target_label).unwrap_or_default() == value;
            }
            Action::Replace => {
                let Some(captures) = self.regex.captures(&value) else {
                    return true;
                };
                let mut target = String::new();
                captures.expand(&self.target_label, &mut target);
                if !is_valid_label_name(&target) {
                    labels.delete(&self.target_label);
                    return true;
                }
                let mut replaced = String::new();
                captures.expand(&self.replacement, &mut replaced);
                if replaced.is_empty() {
                    labels.delete(&self.target_label);
                } else {
                    labels.set(&target, replaced);
                }
            }
            Action::Lowercase => labels.set(&self.target_label, simple_case(&value, false)),
            Action::Uppercase => labels.set(&self.target_label, simple_case(&value, true)),
            Action::HashMod => {
                let digest = Md5::digest(value.as_bytes());
                // Go's sum64 shifts the first eight bytes out: the last eight, big-endian.
                let mut low = [0u8; 8];
                low.copy_from_slice(&digest[8..]);
                let hash = u64::from_be_bytes(low) % self.modulus;
                labels.set(&self.target_label, hash.to_string());
            }
            Action::LabelMap => {
                // Matches are taken from the set as it was before this rule.
                let renamed: Vec<(String, String)> = labels
                    .iter()
                    .filter(|(name, _)| self.regex.is_match(name))
                    .map(|(name, value)| {
                        (
                            self.regex
                                .replace_all(name, self.replacement.as_str())
                                .into_owned(),
                            value.to_owned(),
                        )
                    })
                    .collect();
                for (name, value) in renamed {
                    labels.set(&name, value);
                }
            }
            Action::LabelDrop => labels.retain(|name| !self.regex.is_match(name)),
            Action::LabelKeep => labels.retain(|name| self.regex.is_match(name)),
        }
        true
    }
}

/// Go's `strings.ToLower`/`ToUpper`: each character mapped on its own (`ß` stays `ß` in
/// upper case; Rust's full mapping would make it `SS`).
fn simple_case(text: &str, upper: bool) -> String {
    text.chars()
        .map(|c| {
            let mut mapped: Vec<char> = if upper {
                c.to_uppercase().collect()
            } else {
                c.to_lowercase().collect()
            };
            if mapped.len() == 1 {
                mapped.remove(0)
            } else {
                c
            }
        })
        .collect()
}

/// Runs `rules` in order; `false` means the label set was dropped (or relabeled to nothing).
pub fn process(labels: &mut LabelSet, rules: &[RelabelRule]) -> bool {
    for rule in rules {
        if !rule.apply(labels) {
            return false;
        }
    }
    !labels.is_empty()
}

/// Compiles a list of YAML rules, naming the failing rule's position.
pub fn compile_all(rules: &[RelabelConfigYaml]) -> Result<Vec<RelabelRule>, RelabelError> {
    rules
        .iter()
        .enumerate()
        .map(|(i, rule)| {
            RelabelRule::compile(rule).map_err(|e| RelabelError(format!("rule {}: {}", i + 1, e.0)))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(yaml: &str) -> Result<Vec<RelabelRule>, RelabelError> {
        let parsed: Vec<RelabelConfigYaml> =
            serde_saphyr::from_str(yaml).map_err(|e| RelabelError(e.to_string()))?;
        compile_all(&parsed)
    }

    fn set(pairs: &[(&str, &str)]) -> LabelSet {
        LabelSet::from_pairs(pairs.iter().map(|(n, v)| (n.to_string(), v.to_string())))
    }

    fn run(yaml: &str, input: &[(&str, &str)]) -> Option<Vec<(String, String)>> {
        let rules = rules(yaml).unwrap_or_else(|e| panic!("{yaml}: {e}"));
        let mut labels = set(input);
        process(&mut labels, &rules).then(|| {
            labels
                .iter()
                .map(|(n, v)| (n.to_owned(), v.to_owned()))
                .collect()
        })
    }

    fn pairs(pairs: &[(&str, &str)]) -> Option<Vec<(String, String)>> {
        Some(
            pairs
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect(),
        )
    }

    #[test]
    fn every_action_does_what_prometheus_does() {
        let input = [("a", "foo"), ("b", "bar"), ("c", "baz")];
        // replace with groups, the default regex and an expanded target name.
        assert_eq!(
            run(
                "- source_labels: [a]\n  regex: f(.*)\n  target_label: d\n  replacement: ch${1}-ch${1}\n",
                &input
            ),
            pairs(&[("a", "foo"), ("b", "bar"), ("c", "baz"), ("d", "choo-choo")])
        );
        assert_eq!(
            run("- source_labels: [a, b]\n  target_label: d\n", &input),
            pairs(&[("a", "foo"), ("b", "bar"), ("c", "baz"), ("d", "foo;bar")])
        );
        assert_eq!(
            run(
                "- source_labels: [a]\n  regex: (f)(.*)\n  target_label: ${1}${2}\n  replacement: x\n",
                &input
            ),
            pairs(&[("a", "foo"), ("b", "bar"), ("c", "baz"), ("foo", "x")])
        );
        // No match: nothing happens. Empty result or invalid target: the target goes.
        assert_eq!(
            run(
                "- source_labels: [a]\n  regex: nomatch\n  target_label: b\n",
                &input
            ),
            pairs(&input)
        );
        assert_eq!(
            run(
                "- source_labels: [a]\n  regex: foo\n  target_label: b\n  replacement: ''\n",
                &input
            ),
            pairs(&[("a", "foo"), ("c", "baz")])
        );
        assert_eq!(
            run(
                "- source_labels: [d]\n  target_label: '${1}'\n",
                &[("d", "1abc")]
            ),
            pairs(&[("d", "1abc")]),
            "an invalid expanded name deletes the literal target, which does not exist"
        );
        // `$1x` is the group named "1x" (empty), as in Go.
        assert_eq!(
            run(
                "- source_labels: [a]\n  target_label: d\n  replacement: $1x\n",
                &input
            ),
            pairs(&input)
        );
        // keep / drop are anchored.
        assert_eq!(
            run(
                "- source_labels: [a]\n  regex: fo\n  action: keep\n",
                &input
            ),
            None
        );
        assert_eq!(
            run(
                "- source_labels: [a]\n  regex: fo+\n  action: KEEP\n",
                &input
            ),
            pairs(&input)
        );
        assert_eq!(
            run(
                "- source_labels: [a]\n  regex: foo\n  action: drop\n",
                &input
            ),
            None
        );
        assert_eq!(
            run("- source_labels: [a]\n  regex: o\n  action: drop\n", &input),
            pairs(&input)
        );
        // keepequal / dropequal compare with the target label's value.
        let equal = [("a", "x"), ("b", "x"), ("c", "y")];
        assert_eq!(
            run(
                "- source_labels: [a]\n  target_label: b\n  action: keepequal\n",
                &equal
            ),
            pairs(&equal)
        );
        assert_eq!(
            run(
                "- source_labels: [a]\n  target_label: c\n  action: keepequal\n",
                &equal
            ),
            None
        );
        assert_eq!(
            run(
                "- source_labels: [a]\n  target_label: b\n  action: dropequal\n",
                &equal
            ),
            None
        );
        // hashmod: the figures of Prometheus's relabel tests.
        assert_eq!(
            run(
                "- source_labels: [c]\n  modulus: 1000\n  target_label: d\n  action: hashmod\n",
                &input
            ),
            pairs(&[("a", "foo"), ("b", "bar"), ("c", "baz"), ("d", "976")])
        );
        assert_eq!(
            run(
                "- source_labels: [a]\n  modulus: 1000\n  target_label: b\n  action: hashmod\n",
                &[("a", "foo\nbar")]
            ),
            pairs(&[("a", "foo\nbar"), ("b", "734")])
        );
        // labelmap copies (the originals stay), labeldrop / labelkeep by name.
        assert_eq!(
            run(
                "- regex: (a|b)\n  replacement: ${1}_copy\n  action: labelmap\n",
                &input
            ),
            pairs(&[
                ("a", "foo"),
                ("a_copy", "foo"),
                ("b", "bar"),
                ("b_copy", "bar"),
                ("c", "baz")
            ])
        );
        assert_eq!(
            run(
                "- regex: __meta_(.+)\n  action: labelmap\n",
                &[("__meta_pod", "p"), ("x", "1")]
            ),
            pairs(&[("__meta_pod", "p"), ("pod", "p"), ("x", "1")])
        );
        assert_eq!(
            run("- regex: (a|b)\n  action: labeldrop\n", &input),
            pairs(&[("c", "baz")])
        );
        assert_eq!(
            run("- regex: (a|b)\n  action: labelkeep\n", &input),
            pairs(&[("a", "foo"), ("b", "bar")])
        );
        // lowercase / uppercase.
        assert_eq!(
            run(
                "- source_labels: [a, b]\n  target_label: d\n  action: uppercase\n",
                &input
            ),
            pairs(&[("a", "foo"), ("b", "bar"), ("c", "baz"), ("d", "FOO;BAR")])
        );
        assert_eq!(
            run(
                "- source_labels: [d]\n  target_label: e\n  action: uppercase\n",
                &[("d", "straße")]
            ),
            pairs(&[("d", "straße"), ("e", "STRAßE")]),
            "Go's per-character mapping"
        );
        assert_eq!(
            run(
                "- source_labels: [d]\n  target_label: e\n  action: lowercase\n",
                &[("d", "AbC")]
            ),
            pairs(&[("d", "AbC"), ("e", "abc")])
        );
        // Rules chain; dropping every label drops the set.
        assert_eq!(
            run(
                "- source_labels: [a]\n  target_label: z\n- regex: .*\n  action: labeldrop\n",
                &input
            ),
            None
        );
    }

    #[test]
    fn invalid_rules_are_refused_with_prometheus_reasons() {
        for (yaml, reason) in [
            ("- action: ''\n", "relabel action cannot be empty"),
            ("- action: explode\n", "unknown relabel action \"explode\""),
            (
                "- action: hashmod\n  target_label: a\n",
                "requires non-zero modulus",
            ),
            (
                "- source_labels: [a]\n",
                "replace action requires 'target_label' value",
            ),
            (
                "- target_label: 'a-b'\n",
                "\"a-b\" is invalid 'target_label' for replace action",
            ),
            (
                "- action: lowercase\n  target_label: a\n  replacement: x\n",
                "'replacement' can not be set for lowercase",
            ),
            (
                "- action: labelmap\n  replacement: 'a-b'\n",
                "invalid 'replacement' for labelmap",
            ),
            (
                "- action: hashmod\n  modulus: 2\n  target_label: $1\n",
                "invalid 'target_label' for hashmod",
            ),
            (
                "- action: keepequal\n  target_label: a\n  regex: (.*)\n",
                "keepequal action requires only 'source_labels'",
            ),
            (
                "- action: labeldrop\n  regex: a\n  source_labels: [a]\n",
                "labeldrop action requires only 'regex'",
            ),
            ("- target_label: a\n  regex: '('\n", "invalid regex"),
            ("- target_label: a\n  colour: red\n", "colour"),
        ] {
            let error = rules(yaml).expect_err(yaml).0;
            assert!(error.contains(reason), "{yaml}: {error}");
        }
    }
}
