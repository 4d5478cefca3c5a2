//! Prometheus 2.42's rule file format (`model/rulefmt`) and the checks of
//! `rulefmt.Parse` and `promtool check rules`, so a file Prometheus accepts loads here and a
//! file it refuses is refused for the same reason, naming the file and line.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use serde::Deserialize;
use serde::de::{self, Deserializer, Visitor};
use serde_saphyr::Spanned;

/// One problem with a rule file: what Prometheus would refuse it for, and where (`file` is
/// the path as given; lines and columns are 1-based).
#[derive(Debug, thiserror::Error)]
pub enum RuleError {
    #[error("{file}: cannot read the file: {source}")]
    Read {
        file: String,
        source: std::io::Error,
    },
    /// Not YAML, or not a rule file's shape (unknown keys, wrong types).
    #[error("{file}: {}{reason}", position(*.line, *.column))]
    Yaml {
        file: String,
        line: Option<u64>,
        column: Option<u64>,
        reason: String,
    },
    /// A group or rule that `rulefmt.Parse` refuses; `context` is `group "g", rule 2,
    /// "name": ` for a rule's problem, else empty.
    #[error("{file}: {}{context}{reason}", position(*.line, *.column))]
    Invalid {
        file: String,
        line: Option<u64>,
        column: Option<u64>,
        context: String,
        reason: String,
    },
}

impl RuleError {
    /// The line the problem is on, when known.
    pub fn line(&self) -> Option<u64> {
        match self {
            Self::Read { .. } => None,
            Self::Yaml { line, .. } | Self::Invalid { line, .. } => *line,
        }
    }

    /// Why, without the position and context.
    pub fn reason(&self) -> String {
        match self {
            Self::Read { source, .. } => format!("cannot read the file: {source}"),
            Self::Yaml { reason, .. } | Self::Invalid { reason, .. } => reason.clone(),
        }
    }
}

fn position(line: Option<u64>, column: Option<u64>) -> String {
    match (line, column) {
        (Some(line), Some(column)) => format!("{line}:{column}: "),
        (Some(line), None) => format!("{line}: "),
        _ => String::new(),
    }
}

/// A parsed rule file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleGroups {
    #[serde(default, deserialize_with = "null_as_empty")]
    pub groups: Vec<RuleGroup>,
}

/// A group of rules evaluated together on one interval.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleGroup {
    #[serde(default = "empty_name")]
    pub name: Spanned<String>,
    #[serde(default)]
    pub interval: Option<Spanned<Scalar>>,
    #[serde(default)]
    pub limit: Option<i64>,
    #[serde(default, deserialize_with = "null_as_empty")]
    pub rules: Vec<Spanned<RuleNode>>,
}

/// A key given with no value (`groups:`) is empty, as Go's YAML decoder leaves it.
fn null_as_empty<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(deserializer)?.unwrap_or_default())
}

fn empty_name() -> Spanned<String> {
    Spanned::new(
        String::new(),
        serde_saphyr::Location::UNKNOWN,
        serde_saphyr::Location::UNKNOWN,
    )
}

/// An alerting rule (`alert`) or a recording rule (`record`), as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleNode {
    #[serde(default)]
    pub record: Option<Spanned<Scalar>>,
    #[serde(default)]
    pub alert: Option<Spanned<Scalar>>,
    #[serde(default)]
    pub expr: Option<Spanned<Scalar>>,
    #[serde(default, rename = "for")]
    pub for_: Option<Spanned<Scalar>>,
    #[serde(default)]
    pub keep_firing_for: Option<Spanned<Scalar>>,
    #[serde(default, deserialize_with = "null_as_empty")]
    pub labels: BTreeMap<String, Scalar>,
    #[serde(default, deserialize_with = "null_as_empty")]
    pub annotations: BTreeMap<String, Scalar>,
}

impl RuleNode {
    /// The rule's name: its `alert`, else its `record`, else empty.
    pub fn name(&self) -> &str {
        if self.alert().is_empty() {
            self.record()
        } else {
            self.alert()
        }
    }

    fn record(&self) -> &str {
        self.record.as_ref().map_or("", |r| r.value.0.as_str())
    }

    fn alert(&self) -> &str {
        self.alert.as_ref().map_or("", |r| r.value.0.as_str())
    }
}

/// A YAML scalar read as text, as Go's YAML decoder does for string fields and
/// `map[string]string` (so `severity: 1` or `for: 0` are accepted like Prometheus does).
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Scalar(pub String);

impl<'de> Deserialize<'de> for Scalar {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ScalarVisitor;
        impl Visitor<'_> for ScalarVisitor {
            type Value = Scalar;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Scalar, E> {
                Ok(Scalar(v.to_owned()))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Scalar, E> {
                Ok(Scalar(String::new()))
            }
        }
        deserializer.deserialize_any(ScalarVisitor)
    }
}

/// Rules that share a name and labels across a file (promtool warns: their series would
/// collide).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Duplicate {
    pub name: String,
    pub labels: BTreeMap<String, String>,
}

/// What `promtool check rules` reports for a file that passes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckReport {
    pub rules: usize,
    pub duplicates: Vec<Duplicate>,
}

/// Variables Prometheus defines before a rule's label and annotation templates.
const TEMPLATE_VARIABLES: &[&str] = &["$labels", "$externalLabels", "$externalURL", "$value"];

/// Reads and checks a rule file as `promtool check rules` does.
pub fn check_file(path: &Path) -> Result<CheckReport, Vec<RuleError>> {
    let (file, text) = read(path)?;
    check(&file, &text)
}

/// A rule file's name (as errors give it) and text.
pub fn read(path: &Path) -> Result<(String, String), Vec<RuleError>> {
    let file = path.display().to_string();
    match std::fs::read_to_string(path) {
        Ok(text) => Ok((file, text)),
        Err(source) => Err(vec![RuleError::Read { file, source }]),
    }
}

/// Checks a rule file's text; `file` names it in errors.
pub fn check(file: &str, text: &str) -> Result<CheckReport, Vec<RuleError>> {
    let groups = parse(file, text)?;
    let rules = groups.groups.iter().map(|g| g.rules.len()).sum();
    Ok(CheckReport {
        rules,
        duplicates: duplicates(&groups),
    })
}

/// Parses and validates a rule file's text as `rulefmt.Parse` does: every problem found,
/// not just the first.
pub fn parse(file: &str, text: &str) -> Result<RuleGroups, Vec<RuleError>> {
    let problem = |line: Option<u64>, column: Option<u64>, context: String, reason: String| {
        RuleError::Invalid {
            file: file.to_owned(),
            line,
            column,
            context,
            reason,
        }
    };
    // An empty file (or one of comments only) is an empty rule set, as in Prometheus.
    let has_content = text
        .lines()
        .any(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'));
    let groups: RuleGroups = if has_content {
        serde_saphyr::from_str(text).map_err(|error| {
            let location = error.location();
            let known = |v: u64| (v > 0).then_some(v);
            // The message without saphyr's own position suffix: the position leads instead.
            let (line, column) = (
                location.and_then(|l| known(l.line())),
                location.and_then(|l| known(l.column())),
            );
            let mut message = error.without_snippet().to_string();
            if let (Some(l), Some(c)) = (line, column)
                && let Some(stripped) = message.strip_suffix(&format!(" at line {l}, column {c}"))
            {
                message = stripped.to_owned();
            }
            vec![RuleError::Yaml {
                file: file.to_owned(),
                line,
                column,
                reason: message,
            }]
        })?
    } else {
        RuleGroups::default()
    };

    let mut errors = Vec::new();
    let mut names = std::collections::HashSet::new();
    for group in &groups.groups {
        let (line, column) = at(&group.name);
        if group.name.value.is_empty() {
            errors.push(problem(
                line,
                column,
                String::new(),
                "Groupname must not be empty".into(),
            ));
        }
        if !names.insert(group.name.value.as_str()) {
            errors.push(problem(
                line,
                column,
                String::new(),
                format!(
                    "groupname: \"{}\" is repeated in the same file",
                    group.name.value
                ),
            ));
        }
        if let Some(interval) = &group.interval
            && let Err(reason) = parse_duration(&interval.value.0)
        {
            let (line, column) = at(interval);
            errors.push(problem(
                line,
                column,
                format!("group \"{}\": ", group.name.value),
                reason,
            ));
        }
        for (index, rule) in group.rules.iter().enumerate() {
            let context = format!(
                "group \"{}\", rule {}, \"{}\": ",
                group.name.value,
                index + 1,
                rule.value.name()
            );
            for (node, reason) in validate(&rule.value) {
                let (line, column) = node.map_or_else(|| at(rule), |(l, c)| (Some(l), Some(c)));
                errors.push(problem(line, column, context.clone(), reason));
            }
        }
    }
    if errors.is_empty() {
        Ok(groups)
    } else {
        Err(errors)
    }
}

fn at<T>(spanned: &Spanned<T>) -> (Option<u64>, Option<u64>) {
    let location = spanned.referenced;
    if location.line() == 0 {
        (None, None)
    } else {
        (Some(location.line()), Some(location.column()))
    }
}

/// `RuleNode.Validate`: each problem with the position of the field it is about, when
/// Prometheus names one (else the rule's own position is used).
fn validate(rule: &RuleNode) -> Vec<(Option<(u64, u64)>, String)> {
    let pos = |field: &Option<Spanned<Scalar>>| {
        field.as_ref().and_then(|f| match at(f) {
            (Some(l), Some(c)) => Some((l, c)),
            _ => None,
        })
    };
    let mut problems = Vec::new();
    let (record, alert) = (rule.record(), rule.alert());
    if !record.is_empty() && !alert.is_empty() {
        problems.push((
            pos(&rule.record),
            "only one of 'record' and 'alert' must be set".into(),
        ));
    }
    if record.is_empty() && alert.is_empty() {
        problems.push((
            pos(&rule.record),
            "one of 'record' or 'alert' must be set".into(),
        ));
    }
    match rule.expr.as_ref().map(|e| e.value.0.as_str()) {
        None | Some("") => {
            problems.push((pos(&rule.expr), "field 'expr' must be set in rule".into()));
        }
        Some(expr) => {
            if let Err(error) = parse_expr(expr) {
                problems.push((
                    pos(&rule.expr),
                    format!("could not parse expression: {}", error.trim()),
                ));
            }
        }
    }
    for (name, field) in [
        ("for", &rule.for_),
        ("keep_firing_for", &rule.keep_firing_for),
    ] {
        if let Some(value) = field
            && let Err(reason) = parse_duration(&value.value.0)
        {
            problems.push((pos(field), format!("{name}: {reason}")));
        }
    }
    let nonzero = |field: &Option<Spanned<Scalar>>| {
        field
            .as_ref()
            .is_some_and(|f| parse_duration(&f.value.0).is_ok_and(|ms| ms != 0))
    };
    if !record.is_empty() {
        if !rule.annotations.is_empty() {
            problems.push((
                pos(&rule.record),
                "invalid field 'annotations' in recording rule".into(),
            ));
        }
        if nonzero(&rule.for_) {
            problems.push((
                pos(&rule.record),
                "invalid field 'for' in recording rule".into(),
            ));
        }
        if nonzero(&rule.keep_firing_for) {
            problems.push((
                pos(&rule.record),
                "invalid field 'keep_firing_for' in recording rule".into(),
            ));
        }
        if !is_metric_name(record) {
            problems.push((
                pos(&rule.record),
                format!("invalid recording rule name: {record}"),
            ));
        }
    }
    for name in rule.labels.keys() {
        if !is_label_name(name) || name == "__name__" {
            problems.push((None, format!("invalid label name: {name}")));
        }
    }
    for name in rule.annotations.keys() {
        if !is_label_name(name) {
            problems.push((None, format!("invalid annotation name: {name}")));
        }
    }
    // Prometheus parses templates of alerting rules only: recording rules' labels are
    // never expanded.
    if !alert.is_empty() {
        for (kind, map) in [("label", &rule.labels), ("annotation", &rule.annotations)] {
            for (name, value) in map {
                if let Err(error) = crate::template::check(&value.0, TEMPLATE_VARIABLES) {
                    problems.push((
                        None,
                        format!(
                            "{kind} {name:?}: template: __alert_{alert}:{}: {}",
                            error.line, error.reason
                        ),
                    ));
                }
            }
        }
    }
    problems
}

/// The functions of Prometheus 2.42's PromQL (`promql/functions.go`): promql-parser follows
/// Prometheus 3, which renamed `holt_winters` and added functions 2.42 refuses.
const PROMQL_2_42_FUNCTIONS: &[&str] = &[
    "abs",
    "absent",
    "absent_over_time",
    "acos",
    "acosh",
    "asin",
    "asinh",
    "atan",
    "atanh",
    "avg_over_time",
    "ceil",
    "changes",
    "clamp",
    "clamp_max",
    "clamp_min",
    "cos",
    "cosh",
    "count_over_time",
    "days_in_month",
    "day_of_month",
    "day_of_week",
    "day_of_year",
    "deg",
    "delta",
    "deriv",
    "exp",
    "floor",
    "histogram_count",
    "histogram_sum",
    "histogram_fraction",
    "histogram_quantile",
    "holt_winters",
    "hour",
    "idelta",
    "increase",
    "irate",
    "label_replace",
    "label_join",
    "last_over_time",
    "ln",
    "log10",
    "log2",
    "max_over_time",
    "min_over_time",
    "minute",
    "month",
    "pi",
    "predict_linear",
    "present_over_time",
    "quantile_over_time",
    "rad",
    "rate",
    "resets",
    "round",
    "scalar",
    "sgn",
    "sin",
    "sinh",
    "sort",
    "sort_desc",
    "sqrt",
    "stddev_over_time",
    "stdvar_over_time",
    "sum_over_time",
    "tan",
    "tanh",
    "time",
    "timestamp",
    "vector",
    "year",
];

/// Parses a rule's expression as Prometheus 2.42 would accept it.
fn parse_expr(expr: &str) -> Result<(), String> {
    let (text, uses_new_name) = rename_holt_winters(expr);
    let parsed = promql_parser::parser::parse(&text)?;
    let mut check = VersionCheck { uses_new_name };
    promql_parser::util::walk_expr(&mut check, &parsed).map(|_| ())
}

/// `holt_winters(` → `double_exponential_smoothing(` outside string literals (the same
/// function and argument types under its Prometheus 3 name, which promql-parser knows).
/// Also says whether the text used the new name itself, which 2.42 does not know.
fn rename_holt_winters(expr: &str) -> (String, bool) {
    const OLD: &str = "holt_winters";
    const NEW: &str = "double_exponential_smoothing";
    let mut out = String::with_capacity(expr.len());
    let mut uses_new_name = false;
    let mut rest = expr;
    while let Some(c) = rest.chars().next() {
        if matches!(c, '"' | '\'' | '`') {
            // Copy a string literal through unchanged (backslash escapes except in raw ones).
            // An unterminated literal runs to the end (the parser then refuses it).
            let mut end = rest.len();
            let mut escaped = false;
            for (i, d) in rest.char_indices().skip(1) {
                if escaped {
                    escaped = false;
                } else if d == '\\' && c != '`' {
                    escaped = true;
                } else if d == c {
                    end = i + d.len_utf8();
                    break;
                }
            }
            out.push_str(&rest[..end]);
            rest = &rest[end..];
        } else if c.is_ascii_alphabetic() || c == '_' {
            let len = rest
                .find(|d: char| !(d.is_ascii_alphanumeric() || d == '_' || d == ':'))
                .unwrap_or(rest.len());
            let word = &rest[..len];
            let called = rest[len..].trim_start().starts_with('(');
            if word == OLD && called {
                out.push_str(NEW);
            } else {
                uses_new_name |= word == NEW && called;
                out.push_str(word);
            }
            rest = &rest[len..];
        } else {
            out.push(c);
            rest = &rest[c.len_utf8()..];
        }
    }
    (out, uses_new_name)
}

/// Refuses what promql-parser accepts and Prometheus 2.42 does not: later functions and
/// the `limitk`/`limit_ratio` aggregations.
#[derive(Debug)]
struct VersionCheck {
    /// The text called `double_exponential_smoothing` itself (not through the rename).
    uses_new_name: bool,
}

impl promql_parser::util::ExprVisitor for VersionCheck {
    type Error = String;

    fn pre_visit(&mut self, expr: &promql_parser::parser::Expr) -> Result<bool, String> {
        use promql_parser::parser::Expr;
        match expr {
            Expr::Call(call) => {
                let name = call.func.name;
                let known = PROMQL_2_42_FUNCTIONS.contains(&name)
                    || (name == "double_exponential_smoothing" && !self.uses_new_name);
                if !known {
                    return Err(format!("unknown function with name {name:?}"));
                }
            }
            Expr::Aggregate(aggregate) => {
                let op = aggregate.op.to_string();
                if op == "limitk" || op == "limit_ratio" {
                    return Err(format!("unexpected aggregation {op:?}"));
                }
            }
            _ => {}
        }
        Ok(true)
    }
}

/// Prometheus's `model.IsValidMetricName`.
pub fn is_metric_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// Prometheus's `model.LabelName.IsValid`.
pub fn is_label_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Prometheus's `model.ParseDuration` (`1h30m`, `5m`, `0`; units y w d h m s ms, each at
/// most once, largest first), in milliseconds.
pub fn parse_duration(text: &str) -> Result<u64, String> {
    const UNITS: [(&str, u64); 7] = [
        ("y", 365 * 24 * 3_600_000),
        ("w", 7 * 24 * 3_600_000),
        ("d", 24 * 3_600_000),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1_000),
        ("ms", 1),
    ];
    let invalid = || format!("not a valid duration string: {text:?}");
    if text == "0" {
        return Ok(0);
    }
    if text.is_empty() {
        return Err("empty duration string".into());
    }
    let mut rest = text;
    let mut next_unit = 0;
    let mut total: u64 = 0;
    while !rest.is_empty() {
        let digits = rest.chars().take_while(char::is_ascii_digit).count();
        if digits == 0 {
            return Err(invalid());
        }
        let number: u64 = rest[..digits].parse().map_err(|_| invalid())?;
        rest = &rest[digits..];
        let unit_len = rest.chars().take_while(char::is_ascii_alphabetic).count();
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        let Some(offset) = UNITS[next_unit..].iter().position(|(u, _)| *u == unit) else {
            return Err(invalid());
        };
        let (_, factor) = UNITS[next_unit + offset];
        next_unit += offset + 1;
        total = number
            .checked_mul(factor)
            .and_then(|v| total.checked_add(v))
            .ok_or_else(|| format!("duration out of range: {text:?}"))?;
    }
    Ok(total)
}

/// promtool's `checkDuplicates`: rules of the whole file with the same name and labels,
/// each reported once.
fn duplicates(groups: &RuleGroups) -> Vec<Duplicate> {
    let mut rules: Vec<Duplicate> = groups
        .groups
        .iter()
        .flat_map(|g| &g.rules)
        .map(|rule| Duplicate {
            name: rule.value.name().to_owned(),
            labels: rule
                .value
                .labels
                .iter()
                .map(|(k, v)| (k.clone(), v.0.clone()))
                .collect(),
        })
        .collect();
    rules.sort_by(|a, b| (&a.name, &a.labels).cmp(&(&b.name, &b.labels)));
    let mut found: Vec<Duplicate> = Vec::new();
    for pair in rules.windows(2) {
        if pair[0] == pair[1] && found.last() != Some(&pair[1]) {
            found.push(pair[1].clone());
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors(text: &str) -> Vec<RuleError> {
        match parse("rules.yml", text) {
            Ok(_) => panic!("should be refused:\n{text}"),
            Err(errors) => errors,
        }
    }

    #[test]
    fn a_valid_file_counts_its_rules() {
        let text = "groups:\n  - name: a\n    interval: 30s\n    limit: 10\n    rules:\n      - alert: Down\n        expr: up == 0\n        for: 5m\n        keep_firing_for: 1m\n        labels: {severity: page}\n        annotations: {summary: \"{{ $labels.instance }} down\"}\n      - record: job:up:sum\n        expr: sum by (job) (up)\n  - name: b\n";
        let report = check("rules.yml", text).expect("valid");
        assert_eq!(report.rules, 2);
        assert!(report.duplicates.is_empty());
    }

    #[test]
    fn an_empty_file_has_no_rules() {
        assert_eq!(check("f", "# nothing\n").expect("empty").rules, 0);
        assert_eq!(check("f", "groups:\n").expect("no groups").rules, 0);
        let nulls = "groups:\n  - name: g\n    rules:\n      - alert: a\n        expr: 1\n        labels:\n        annotations:\n";
        assert_eq!(check("f", nulls).expect("null maps").rules, 1);
    }

    #[test]
    fn errors_name_file_line_rule_and_reason() {
        let text = "groups:\n  - name: g\n    rules:\n      - record: x\n        expr: 'up +'\n";
        let errors = errors(text);
        assert_eq!(errors.len(), 1);
        let message = errors[0].to_string();
        assert!(message.starts_with("rules.yml: 5:"), "{message}");
        assert!(
            message.contains("group \"g\", rule 1, \"x\": could not parse expression"),
            "{message}"
        );
    }

    #[test]
    fn unknown_keys_are_refused_with_their_line() {
        let text = "groups:\n  - name: g\n    rules:\n      - alert: a\n        expr: 1\n        annotation:\n          x: y\n";
        let errors = errors(text);
        assert_eq!(errors[0].line(), Some(6), "{}", errors[0]);
        assert!(errors[0].reason().contains("annotation"), "{}", errors[0]);
    }

    #[test]
    fn rule_checks_match_prometheus() {
        let rule = |body: &str| format!("groups:\n  - name: g\n    rules:\n      - {body}\n");
        let cases = [
            (
                "record: a\n        alert: b\n        expr: 1",
                "only one of 'record' and 'alert'",
            ),
            ("expr: 1", "one of 'record' or 'alert' must be set"),
            ("record: a", "field 'expr' must be set"),
            (
                "record: a\n        expr: 1\n        for: 1m",
                "invalid field 'for'",
            ),
            (
                "record: a\n        expr: 1\n        keep_firing_for: 1m",
                "invalid field 'keep_firing_for'",
            ),
            (
                "record: a\n        expr: 1\n        annotations: {x: y}",
                "invalid field 'annotations'",
            ),
            (
                "record: 'a{b=\"c\"}'\n        expr: 1",
                "invalid recording rule name",
            ),
            (
                "record: a\n        expr: 1\n        labels: {__name__: x}",
                "invalid label name: __name__",
            ),
            (
                "record: a\n        expr: 1\n        labels: {a-b: x}",
                "invalid label name: a-b",
            ),
            (
                "alert: a\n        expr: 1\n        annotations: {a-b: x}",
                "invalid annotation name",
            ),
            (
                "alert: a\n        expr: 1\n        for: 5 minutes",
                "not a valid duration",
            ),
            (
                "alert: a\n        expr: 1\n        labels: {x: '{{ $nope }}'}",
                "label \"x\": template",
            ),
            (
                "alert: a\n        expr: 1\n        annotations: {x: '{{ if 1 }}'}",
                "annotation \"x\": template",
            ),
            (
                "record: a\n        expr: rate(x)",
                "could not parse expression",
            ),
        ];
        for (body, reason) in cases {
            let errors = errors(&rule(body));
            assert!(
                errors.iter().any(|e| e.reason().contains(reason)),
                "{body}: {errors:?} lacks {reason:?}"
            );
            assert!(errors.iter().all(|e| e.line().is_some()), "{errors:?}");
        }
        // Zero durations are allowed on recording rules, as in Prometheus.
        assert!(parse("f", &rule("record: a\n        expr: 1\n        for: 0s")).is_ok());
    }

    #[test]
    fn group_names_must_be_present_and_unique() {
        let errors = errors("groups:\n  - name: a\n  - name: a\n  - rules: []\n");
        assert!(
            errors
                .iter()
                .any(|e| e.reason().contains("\"a\" is repeated") && e.line() == Some(3))
        );
        assert!(
            errors
                .iter()
                .any(|e| e.reason().contains("must not be empty"))
        );
    }

    #[test]
    fn duplicates_are_found_across_groups_once() {
        let text = "groups:\n  - name: a\n    rules:\n      - record: x\n        expr: 1\n      - record: x\n        expr: 2\n  - name: b\n    rules:\n      - record: x\n        expr: 1\n      - record: x\n        expr: 1\n        labels: {l: v}\n";
        let report = check("f", text).expect("duplicates only warn");
        assert_eq!(report.rules, 4);
        assert_eq!(
            report.duplicates,
            vec![Duplicate {
                name: "x".into(),
                labels: BTreeMap::new()
            }]
        );
    }

    #[test]
    fn expressions_are_those_of_prometheus_2_42() {
        assert_eq!(parse_expr("holt_winters(x[5m], 0.5, 0.5)"), Ok(()));
        assert_eq!(
            parse_expr("sum(holt_winters (x{a=\"holt_winters(\"}[5m], 0.5, 0.5))"),
            Ok(())
        );
        assert!(
            parse_expr("holt_winters(x, 0.5, 0.5)").is_err(),
            "needs a range vector"
        );
        assert!(parse_expr("double_exponential_smoothing(x[5m], 0.5, 0.5)").is_err());
        assert!(parse_expr("sort_by_label(x, \"a\")").is_err());
        assert!(parse_expr("limitk(1, x)").is_err());
        assert_eq!(
            parse_expr("label_replace(x, \"a\", \"$1\", \"b\", \"(.*)\")"),
            Ok(())
        );
        assert_eq!(
            rename_holt_winters("'holt_winters(' + `x`").0,
            "'holt_winters(' + `x`"
        );
    }

    proptest::proptest! {
        /// Broken files are refused with errors, never a panic.
        #[test]
        fn arbitrary_files_never_panic(text in "(groups:|\n|  |- |name: |rules:|record: |alert: |expr: |labels:|for: |[a-z0-9{}$\"'(), ]){0,60}") {
            if let Err(errors) = parse("f", &text) {
                proptest::prop_assert!(!errors.is_empty());
                for error in errors {
                    proptest::prop_assert!(error.to_string().starts_with("f: "));
                    proptest::prop_assert!(!error.reason().is_empty());
                }
            }
        }

        #[test]
        fn arbitrary_expressions_never_panic(expr in "(holt_winters|\\(|\\)|\"|'|`|\\\\|[a-z_ ,\\[\\]0-9])*") {
            if let Err(reason) = parse_expr(&expr) {
                proptest::prop_assert!(!reason.is_empty());
            }
        }
    }

    #[test]
    fn durations_parse_as_prometheus_does() {
        assert_eq!(parse_duration("1h30m"), Ok(5_400_000));
        assert_eq!(parse_duration("0"), Ok(0));
        assert_eq!(parse_duration("1w2d"), Ok(9 * 24 * 3_600_000));
        assert_eq!(parse_duration("100ms"), Ok(100));
        assert!(parse_duration("30m1h").is_err());
        assert!(parse_duration("1.5h").is_err());
        assert!(parse_duration("5").is_err());
        assert!(parse_duration("").is_err());
    }
}
