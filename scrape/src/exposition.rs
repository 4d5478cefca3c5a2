//! The Prometheus text exposition format (0.0.4) and OpenMetrics 1.0, parsed the way
//! Prometheus 2.42's scraper parses them.
//!
//! Exporters are written against Prometheus, so "valid" means "what Prometheus accepts", quirks
//! included: the text format skips spaces and tabs between tokens, allows a trailing comma
//! (or no comma at all) between labels, treats any `#` line that is not `HELP`/`TYPE` as a
//! comment and needs no final newline; OpenMetrics takes exactly one space between tokens,
//! timestamps in (fractional) seconds, exemplars after ` # ` on `_total` and `_bucket` samples,
//! and must end with `# EOF`. Values follow Go's `strconv.ParseFloat` without `_`, `p` or `P`
//! (no hex floats, as Prometheus). A page that breaks a rule is an error naming the line: a
//! scrape is all or nothing, as in Prometheus, so the caller drops the whole page.
//!
//! The parser hands out borrowed slices of the page: label values are copied only when they
//! contain an escape, and one label buffer is reused across samples.

use std::borrow::Cow;

use model::MetricType;

/// Which grammar a page is in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// `text/plain; version=0.0.4`, and anything that is not OpenMetrics.
    Prometheus,
    /// `application/openmetrics-text`.
    OpenMetrics,
}

impl Format {
    /// The grammar Prometheus picks for a response's `Content-Type`: OpenMetrics only when
    /// the media type says so, the text format otherwise (a missing or unknown type included).
    pub fn from_content_type(content_type: Option<&str>) -> Self {
        let media_type = content_type
            .and_then(|value| value.split(';').next())
            .map(str::trim)
            .unwrap_or_default();
        if media_type.eq_ignore_ascii_case("application/openmetrics-text") {
            Self::OpenMetrics
        } else {
            Self::Prometheus
        }
    }
}

/// The `Accept` header Prometheus 2.42 sends, so exporters answer as they answer it.
pub const ACCEPT_HEADER: &str = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";

/// One label as the page spells it: the value unescaped.
pub type ParsedLabel<'a> = (&'a str, Cow<'a, str>);

/// An exemplar attached to an OpenMetrics sample.
#[derive(Clone, Debug, PartialEq)]
pub struct ParsedExemplar<'a> {
    pub labels: Vec<ParsedLabel<'a>>,
    pub value: f64,
    pub timestamp_ms: Option<i64>,
}

/// One sample line.
#[derive(Debug, PartialEq)]
pub struct ParsedSample<'p, 'a> {
    /// The metric name (`__name__`).
    pub name: &'a str,
    /// The labels in page order (not sorted, not checked for duplicates).
    pub labels: &'p [ParsedLabel<'a>],
    pub value: f64,
    /// The sample's own timestamp, in milliseconds, when the page gives one.
    pub timestamp_ms: Option<i64>,
    pub exemplar: Option<ParsedExemplar<'a>>,
}

/// One entry of a page: metadata or a sample. Comments are skipped.
#[derive(Debug, PartialEq)]
pub enum Entry<'p, 'a> {
    Help { metric: &'a str, text: Cow<'a, str> },
    Type { metric: &'a str, kind: MetricType },
    Unit { metric: &'a str, unit: &'a str },
    Sample(ParsedSample<'p, 'a>),
}

/// A page that breaks the format: the (1-based) line and what is wrong.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {message}")]
pub struct ParseError {
    pub line: usize,
    pub message: String,
}

/// Walks a page entry by entry; see the module docs for the grammar.
#[derive(Debug)]
pub struct Parser<'a> {
    page: &'a [u8],
    at: usize,
    line: usize,
    format: Format,
    labels: Vec<ParsedLabel<'a>>,
    done: bool,
}

type Result<T> = std::result::Result<T, ParseError>;

impl<'a> Parser<'a> {
    pub fn new(page: &'a [u8], format: Format) -> Self {
        Self {
            page,
            at: 0,
            line: 1,
            format,
            labels: Vec::new(),
            done: false,
        }
    }

    /// The next entry, `None` at the end of the page. After an error the parser stays done.
    pub fn next_entry(&mut self) -> Result<Option<Entry<'_, 'a>>> {
        if self.done {
            return Ok(None);
        }
        let entry = match self.format {
            Format::Prometheus => self.next_text(),
            Format::OpenMetrics => self.next_openmetrics(),
        };
        match entry {
            Ok(Some(Parsed::Meta(entry))) => Ok(Some(entry)),
            Ok(Some(Parsed::Sample {
                name,
                value,
                timestamp_ms,
                exemplar,
            })) => Ok(Some(Entry::Sample(ParsedSample {
                name,
                labels: &self.labels,
                value,
                timestamp_ms,
                exemplar,
            }))),
            Ok(None) => {
                self.done = true;
                Ok(None)
            }
            Err(error) => {
                self.done = true;
                Err(error)
            }
        }
    }

    fn error<T>(&self, message: impl Into<String>) -> Result<T> {
        Err(ParseError {
            line: self.line,
            message: message.into(),
        })
    }

    fn peek(&self) -> Option<u8> {
        self.page.get(self.at).copied()
    }

    fn skip_blanks(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t')) {
            self.at += 1;
        }
    }

    /// Consumes `byte` if it is next.
    fn eat(&mut self, byte: u8) -> bool {
        if self.peek() == Some(byte) {
            self.at += 1;
            true
        } else {
            false
        }
    }

    /// Consumes `word` if the page continues with it.
    fn eat_word(&mut self, word: &[u8]) -> bool {
        if self.page[self.at..].starts_with(word) {
            self.at += word.len();
            true
        } else {
            false
        }
    }

    /// Ends a line: a newline, or (text format only) the end of the page.
    fn end_of_line(&mut self, what: &str) -> Result<()> {
        match self.peek() {
            Some(b'\n') => {
                self.at += 1;
                self.line += 1;
                Ok(())
            }
            None if self.format == Format::Prometheus => Ok(()),
            None => self.error("data does not end with # EOF"),
            Some(_) => self.error(format!("{what}, found {}", self.found())),
        }
    }

    /// What is at the cursor, for error messages.
    fn found(&self) -> String {
        match self.peek() {
            None => "the end of the page".to_owned(),
            Some(b'\n') => "the end of the line".to_owned(),
            Some(_) => {
                let rest = &self.page[self.at..];
                let end = rest
                    .iter()
                    .position(|&b| b == b'\n')
                    .unwrap_or(rest.len())
                    .min(20);
                format!("`{}`", String::from_utf8_lossy(&rest[..end]))
            }
        }
    }

    /// The rest of the line (not including its newline).
    fn rest_of_line(&mut self) -> &'a [u8] {
        let page = self.page;
        let start = self.at;
        let end = page[start..]
            .iter()
            .position(|&b| b == b'\n')
            .map_or(page.len(), |i| start + i);
        self.at = end;
        &page[start..end]
    }

    /// `[a-zA-Z_:][a-zA-Z0-9_:]*`, or `[a-zA-Z_][a-zA-Z0-9_]*` for label names.
    fn name(&mut self, colons: bool) -> Option<&'a str> {
        let page = self.page;
        let start = self.at;
        let allowed = |b: u8, first: bool| {
            b.is_ascii_alphabetic()
                || b == b'_'
                || (colons && b == b':')
                || (!first && b.is_ascii_digit())
        };
        if !self.peek().is_some_and(|b| allowed(b, true)) {
            return None;
        }
        self.at += 1;
        while self.peek().is_some_and(|b| allowed(b, false)) {
            self.at += 1;
        }
        // Only ASCII was accepted.
        std::str::from_utf8(&page[start..self.at]).ok()
    }

    /// A double-quoted label value, unescaped as Prometheus does (`\"`, `\\`, `\n`; any other
    /// escape is kept as written). The text format lets a value span lines; OpenMetrics not.
    fn quoted(&mut self) -> Result<Cow<'a, str>> {
        let page = self.page;
        if !self.eat(b'"') {
            return self.error(format!(
                "expected a quoted label value, found {}",
                self.found()
            ));
        }
        let start = self.at;
        let start_line = self.line;
        let unclosed = || {
            Err(ParseError {
                line: start_line,
                message: "label value is not closed by `\"`".to_owned(),
            })
        };
        let mut escaped = false;
        loop {
            match self.peek() {
                None => return unclosed(),
                Some(b'\n') if self.format == Format::OpenMetrics => {
                    return self.error("label value is not closed by `\"` on its line");
                }
                Some(b'\\') => {
                    escaped = true;
                    self.at += 2;
                    if self.at > page.len() {
                        return unclosed();
                    }
                    if page[self.at - 1] == b'\n' {
                        self.line += 1;
                    }
                }
                Some(b'"') => break,
                Some(b) => {
                    if b == b'\n' {
                        self.line += 1;
                    }
                    self.at += 1;
                }
            }
        }
        let raw = &page[start..self.at];
        self.at += 1;
        let Ok(raw) = std::str::from_utf8(raw) else {
            return self.error("label value is not valid UTF-8");
        };
        Ok(if escaped {
            Cow::Owned(unescape(raw, true))
        } else {
            Cow::Borrowed(raw)
        })
    }

    // ---- the text format ------------------------------------------------------------------

    fn next_text(&mut self) -> Result<Option<Parsed<'a>>> {
        loop {
            self.skip_blanks();
            match self.peek() {
                // Prometheus's lexer reads a NUL at the start of a token as the end of the page.
                None | Some(0) => return Ok(None),
                Some(b'\n') => {
                    self.at += 1;
                    self.line += 1;
                }
                Some(b'#') => {
                    self.at += 1;
                    if let Some(meta) = self.text_comment()? {
                        return Ok(Some(Parsed::Meta(meta)));
                    }
                }
                Some(_) => return self.text_sample().map(Some),
            }
        }
    }

    /// After a `#`: `HELP`/`TYPE` lines become entries, everything else is a comment.
    fn text_comment(&mut self) -> Result<Option<Entry<'a, 'a>>> {
        let blank = |b: Option<u8>| matches!(b, Some(b' ' | b'\t'));
        if !blank(self.peek()) {
            self.rest_of_line();
            self.end_of_line("")?;
            return Ok(None);
        }
        self.skip_blanks();
        let help = self.eat_word(b"HELP");
        let is_type = !help && self.eat_word(b"TYPE");
        if !(help || is_type) || !blank(self.peek()) {
            self.rest_of_line();
            self.end_of_line("")?;
            return Ok(None);
        }
        self.skip_blanks();
        let keyword = if help { "HELP" } else { "TYPE" };
        let Some(metric) = self.name(true) else {
            return self.error(format!(
                "expected a metric name after # {keyword}, found {}",
                self.found()
            ));
        };
        // Prometheus drops exactly one character between the name and the text.
        let rest = self.rest_of_line();
        let text = rest.get(1..).unwrap_or_default();
        let Ok(text) = std::str::from_utf8(text) else {
            return self.error(format!("# {keyword} text of {metric} is not valid UTF-8"));
        };
        let entry = if help {
            let text = if text.contains('\\') {
                Cow::Owned(unescape(text, false))
            } else {
                Cow::Borrowed(text)
            };
            Entry::Help { metric, text }
        } else {
            let kind = match text {
                "counter" => MetricType::Counter,
                "gauge" => MetricType::Gauge,
                "histogram" => MetricType::Histogram,
                "summary" => MetricType::Summary,
                "untyped" => MetricType::Unknown,
                other => {
                    return self.error(format!("invalid metric type {other:?} for {metric}"));
                }
            };
            Entry::Type { metric, kind }
        };
        self.end_of_line("")?;
        Ok(Some(entry))
    }

    fn text_sample(&mut self) -> Result<Parsed<'a>> {
        let Some(name) = self.name(true) else {
            return self.error(format!(
                "expected a metric name, `#` or a blank line, found {}",
                self.found()
            ));
        };
        self.labels.clear();
        self.skip_blanks();
        if self.eat(b'{') {
            loop {
                self.skip_blanks();
                if self.eat(b'}') {
                    break;
                }
                let Some(label) = self.name(false) else {
                    return self.error(format!("expected a label name, found {}", self.found()));
                };
                self.skip_blanks();
                if !self.eat(b'=') {
                    return self.error(format!(
                        "expected `=` after label {label}, found {}",
                        self.found()
                    ));
                }
                self.skip_blanks();
                let value = self.quoted()?;
                self.labels.push((label, value));
                self.skip_blanks();
                self.eat(b',');
            }
        }
        self.skip_blanks();
        let value = self.token(|b| matches!(b, b'{' | b' ' | b'\t' | b'\n' | 0));
        if value.is_empty() {
            return self.error(format!(
                "expected a value after {name}, found {}",
                self.found()
            ));
        }
        let value = self.float(value)?;
        self.skip_blanks();
        let mut timestamp_ms = None;
        if self.peek().is_some_and(|b| b.is_ascii_digit()) {
            let digits = self.token(|b| !b.is_ascii_digit());
            match std::str::from_utf8(digits)
                .ok()
                .and_then(|d| d.parse().ok())
            {
                Some(ms) => timestamp_ms = Some(ms),
                None => return self.error("timestamp is out of range"),
            }
            self.skip_blanks();
            self.end_of_line("expected the end of the line after the timestamp")?;
        } else {
            self.end_of_line("expected a timestamp or the end of the line")?;
        }
        Ok(Parsed::Sample {
            name,
            value,
            timestamp_ms,
            exemplar: None,
        })
    }

    /// Bytes up to the first one `stop` accepts (or the end of the page).
    fn token(&mut self, stop: impl Fn(u8) -> bool) -> &'a [u8] {
        let page = self.page;
        let start = self.at;
        while self.peek().is_some_and(|b| !stop(b)) {
            self.at += 1;
        }
        &page[start..self.at]
    }

    fn float(&self, token: &[u8]) -> Result<f64> {
        match std::str::from_utf8(token).ok().and_then(parse_go_float) {
            Some(value) => Ok(value),
            None => self.error(format!(
                "{:?} is not a number",
                String::from_utf8_lossy(token)
            )),
        }
    }

    // ---- OpenMetrics ----------------------------------------------------------------------

    fn next_openmetrics(&mut self) -> Result<Option<Parsed<'a>>> {
        match self.peek() {
            None => self.error("data does not end with # EOF"),
            Some(b'#') => {
                if !self.eat_word(b"# ") {
                    return self.error("expected `# ` (OpenMetrics has no other comments)");
                }
                if self.eat_word(b"EOF") {
                    self.eat(b'\n');
                    if self.at < self.page.len() {
                        self.line += 1;
                        return self.error("unexpected data after # EOF");
                    }
                    return Ok(None);
                }
                let keyword = if self.eat_word(b"HELP ") {
                    "HELP"
                } else if self.eat_word(b"TYPE ") {
                    "TYPE"
                } else if self.eat_word(b"UNIT ") {
                    "UNIT"
                } else {
                    return self.error(format!(
                        "expected HELP, TYPE, UNIT or EOF after `# `, found {}",
                        self.found()
                    ));
                };
                self.openmetrics_meta(keyword)
                    .map(|m| Some(Parsed::Meta(m)))
            }
            Some(_) => self.openmetrics_sample().map(Some),
        }
    }

    fn openmetrics_meta(&mut self, keyword: &str) -> Result<Entry<'a, 'a>> {
        let Some(metric) = self.name(true) else {
            return self.error(format!(
                "expected a metric name after # {keyword}, found {}",
                self.found()
            ));
        };
        if !self.eat(b' ') {
            return self.error(format!(
                "expected a space and text after # {keyword} {metric}, found {}",
                self.found()
            ));
        }
        let text = self.rest_of_line();
        if self.peek().is_none() {
            return self.error("data does not end with # EOF");
        }
        let Ok(text) = std::str::from_utf8(text) else {
            return self.error(format!("# {keyword} text of {metric} is not valid UTF-8"));
        };
        let entry = match keyword {
            "HELP" => Entry::Help {
                metric,
                text: if text.contains('\\') {
                    Cow::Owned(unescape(text, true))
                } else {
                    Cow::Borrowed(text)
                },
            },
            "TYPE" => {
                // OpenMetrics's types are exactly the metadata types, by the same names.
                let Some(kind) = MetricType::ALL
                    .into_iter()
                    .find(|kind| kind.prometheus_name() == text)
                else {
                    return self.error(format!("invalid metric type {text:?} for {metric}"));
                };
                Entry::Type { metric, kind }
            }
            _ => {
                let suffix_ok = text.is_empty()
                    || (metric.len() > text.len()
                        && metric.ends_with(text)
                        && metric.as_bytes()[metric.len() - text.len() - 1] == b'_');
                if !suffix_ok {
                    return self.error(format!("unit {text:?} is not a suffix of metric {metric}"));
                }
                Entry::Unit { metric, unit: text }
            }
        };
        self.end_of_line("")?;
        Ok(entry)
    }

    /// `{a="1",b="2"}` with OpenMetrics's strict commas, into `labels`.
    fn openmetrics_labels(&mut self, labels: &mut Vec<ParsedLabel<'a>>) -> Result<()> {
        let mut first = true;
        loop {
            if self.eat(b'}') {
                return Ok(());
            }
            if !first && !self.eat(b',') {
                return self.error(format!("expected `,` or `}}`, found {}", self.found()));
            }
            first = false;
            let Some(label) = self.name(false) else {
                return self.error(format!("expected a label name, found {}", self.found()));
            };
            if !self.eat(b'=') {
                return self.error(format!(
                    "expected `=` after label {label}, found {}",
                    self.found()
                ));
            }
            let value = self.quoted()?;
            labels.push((label, value));
        }
    }

    /// ` <token>` (exactly one space, then up to a space or newline).
    fn spaced_token(&mut self) -> Option<&'a [u8]> {
        if self.peek() != Some(b' ') {
            return None;
        }
        let start = self.at;
        self.at += 1;
        let token = self.token(|b| b == b' ' || b == b'\n');
        if token.is_empty() {
            self.at = start;
            return None;
        }
        Some(token)
    }

    fn openmetrics_timestamp(&self, token: &[u8], what: &str) -> Result<i64> {
        let seconds = self.float(token)?;
        if !seconds.is_finite() {
            return self.error(format!("invalid {what}timestamp"));
        }
        // Go's int64(ts * 1000): truncation toward zero.
        Ok((seconds * 1000.0) as i64)
    }

    fn openmetrics_sample(&mut self) -> Result<Parsed<'a>> {
        let Some(name) = self.name(true) else {
            return self.error(format!(
                "expected a metric name or `# `, found {}",
                self.found()
            ));
        };
        let mut labels = std::mem::take(&mut self.labels);
        labels.clear();
        let parsed = self.openmetrics_sample_rest(name, &mut labels);
        self.labels = labels;
        parsed
    }

    fn openmetrics_sample_rest(
        &mut self,
        name: &'a str,
        labels: &mut Vec<ParsedLabel<'a>>,
    ) -> Result<Parsed<'a>> {
        if self.eat(b'{') {
            self.openmetrics_labels(labels)?;
        }
        let Some(value) = self.spaced_token() else {
            return self.error(format!(
                "expected a space and a value after {name}, found {}",
                self.found()
            ));
        };
        let value = self.float(value)?;
        let mut timestamp_ms = None;
        let mut exemplar = None;
        if !self.page[self.at..].starts_with(b" # {")
            && let Some(token) = self.spaced_token()
        {
            timestamp_ms = Some(self.openmetrics_timestamp(token, "")?);
        }
        if self.eat_word(b" # {") {
            exemplar = Some(self.openmetrics_exemplar(name)?);
        }
        match self.peek() {
            Some(b'\n') => {
                self.at += 1;
                self.line += 1;
            }
            None => return self.error("data does not end with # EOF"),
            Some(_) => {
                return self.error(format!(
                    "expected a timestamp, an exemplar or the end of the line, found {}",
                    self.found()
                ));
            }
        }
        Ok(Parsed::Sample {
            name,
            value,
            timestamp_ms,
            exemplar,
        })
    }

    /// After ` # {`: the exemplar's labels, value and optional timestamp.
    fn openmetrics_exemplar(&mut self, name: &str) -> Result<ParsedExemplar<'a>> {
        if !(name.ends_with("_total") || name.ends_with("_bucket")) {
            return self.error(format!(
                "metric name {name} does not support exemplars (only _total and _bucket do)"
            ));
        }
        let mut labels = Vec::new();
        self.openmetrics_labels(&mut labels)?;
        let Some(value) = self.spaced_token() else {
            return self.error(format!(
                "expected a space and the exemplar's value, found {}",
                self.found()
            ));
        };
        let value = self.float(value)?;
        let timestamp_ms = match self.spaced_token() {
            Some(token) => Some(self.openmetrics_timestamp(token, "exemplar ")?),
            None => None,
        };
        Ok(ParsedExemplar {
            labels,
            value,
            timestamp_ms,
        })
    }
}

/// An entry before its labels are lent out.
enum Parsed<'a> {
    Meta(Entry<'a, 'a>),
    Sample {
        name: &'a str,
        value: f64,
        timestamp_ms: Option<i64>,
        exemplar: Option<ParsedExemplar<'a>>,
    },
}

/// Prometheus's replacers: `\\` → `\`, `\n` → newline, and `\"` → `"` in label values (and
/// OpenMetrics help text). Other backslashes stay as they are.
fn unescape(raw: &str, quotes: bool) -> String {
    let mut out = String::with_capacity(raw.len());
    let mut chars = raw.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.clone().next() {
            Some('\\') => {
                out.push('\\');
                chars.next();
            }
            Some('n') => {
                out.push('\n');
                chars.next();
            }
            Some('"') if quotes => {
                out.push('"');
                chars.next();
            }
            _ => out.push('\\'),
        }
    }
    out
}

/// Go's `strconv.ParseFloat(s, 64)` as Prometheus calls it: decimal numbers, `Inf`/`Infinity`
/// with an optional sign and `NaN` without one (any case); no `_`, no hex (`p`/`P`).
pub fn parse_go_float(token: &str) -> Option<f64> {
    if token.contains(['_', 'p', 'P']) {
        return None;
    }
    let unsigned = token.strip_prefix(['+', '-']);
    if unsigned.is_some_and(|rest| rest.starts_with(['n', 'N'])) {
        return None;
    }
    // Rust's decimal grammar is Go's; hex needs a `p` in Go, excluded above.
    let value: f64 = token.parse().ok()?;
    // Go refuses a finite literal too big for a float64 (ErrRange); Rust rounds it to ±Inf.
    let literal_infinity = unsigned.unwrap_or(token).starts_with(['i', 'I']);
    if value.is_infinite() && !literal_infinity {
        return None;
    }
    Some(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Everything a page parses to, as text, or the error.
    fn parse(page: &str, format: Format) -> std::result::Result<Vec<String>, ParseError> {
        let mut parser = Parser::new(page.as_bytes(), format);
        let mut out = Vec::new();
        while let Some(entry) = parser.next_entry()? {
            out.push(match entry {
                Entry::Help { metric, text } => format!("HELP {metric} {text:?}"),
                Entry::Type { metric, kind } => format!("TYPE {metric} {kind:?}"),
                Entry::Unit { metric, unit } => format!("UNIT {metric} {unit}"),
                Entry::Sample(s) => {
                    let labels: Vec<String> =
                        s.labels.iter().map(|(n, v)| format!("{n}={v:?}")).collect();
                    let mut line = format!("{}{{{}}} {}", s.name, labels.join(","), s.value);
                    if let Some(ts) = s.timestamp_ms {
                        line.push_str(&format!(" @{ts}"));
                    }
                    if let Some(e) = s.exemplar {
                        let labels: Vec<String> =
                            e.labels.iter().map(|(n, v)| format!("{n}={v:?}")).collect();
                        line.push_str(&format!(
                            " # {{{}}} {} {:?}",
                            labels.join(","),
                            e.value,
                            e.timestamp_ms
                        ));
                    }
                    line
                }
            });
        }
        Ok(out)
    }

    fn text(page: &str) -> Vec<String> {
        parse(page, Format::Prometheus).unwrap_or_else(|e| panic!("{page:?}: {e}"))
    }

    fn text_error(page: &str) -> ParseError {
        parse(page, Format::Prometheus).expect_err(page)
    }

    fn om(page: &str) -> Vec<String> {
        parse(page, Format::OpenMetrics).unwrap_or_else(|e| panic!("{page:?}: {e}"))
    }

    fn om_error(page: &str) -> ParseError {
        parse(page, Format::OpenMetrics).expect_err(page)
    }

    #[test]
    fn the_text_format_is_as_lenient_as_prometheus() {
        assert_eq!(
            text(
                "# HELP m Some \\\\ help\\n.\n# TYPE m counter\nm{a=\"1\",b=\"x\\\"y\\\\z\\n\"} 1.5 1000\n"
            ),
            [
                "HELP m \"Some \\\\ help\\n.\"",
                "TYPE m Counter",
                "m{a=\"1\",b=\"x\\\"y\\\\z\\n\"} 1.5 @1000",
            ]
        );
        // Blanks between tokens and at line ends, trailing and missing commas, no final
        // newline, comments of every shape, a space between the name and its labels.
        assert_eq!(
            text(
                "\n  \t\n#comment\n# another one\n# HELPER not help\n m {a=\"1\", b = \"2\",} \t 2 \t\nn{a=\"1\" b=\"2\"} +Inf\no{} -inf 5"
            ),
            [
                "m{a=\"1\",b=\"2\"} 2",
                "n{a=\"1\",b=\"2\"} inf",
                "o{} -inf @5",
            ]
        );
        // A value needs no blank after a bare name when it cannot continue the name.
        assert_eq!(text("a-1\n"), ["a{} -1"]);
        // Unknown escapes stay as written; a value may span lines.
        assert_eq!(text("a{b=\"x\\ty\nz\"} 1\n"), ["a{b=\"x\\\\ty\\nz\"} 1"]);
        // HELP text: exactly one character after the name is dropped, \" stays.
        assert_eq!(
            text("# HELP a  two \\\"spaces\\\"\n# HELP b\n"),
            ["HELP a \" two \\\\\\\"spaces\\\\\\\"\"", "HELP b \"\""]
        );
        // NaN in any case; a NUL at the start of a token ends the page.
        let nan = text("a NaN\nb nan\n\0garbage");
        assert_eq!(nan, ["a{} NaN", "b{} NaN"]);
    }

    #[test]
    fn text_format_errors_name_the_line() {
        for (page, line, needle) in [
            ("a", 1, "expected a value"),
            ("a{b='c'} 1\n", 1, "quoted label value"),
            ("ok 1\na{b=\n", 2, "quoted label value"),
            ("a{\u{ff}=\"foo\"} 1\n", 1, "label name"),
            ("a true\n", 1, "\"true\" is not a number"),
            ("a{b=\"c} 1\n", 1, "not closed"),
            ("empty{=\"\"} 0", 1, "label name"),
            ("foo 1_2\n", 1, "not a number"),
            ("foo 0x1p-3\n", 1, "not a number"),
            ("foo 0x10\n", 1, "not a number"),
            ("foo -nan\n", 1, "not a number"),
            ("foo 0 1_2\n", 1, "after the timestamp"),
            ("foo 0 -5\n", 1, "timestamp or the end"),
            ("foo 0 99999999999999999999\n", 1, "out of range"),
            ("{a=\"ok\"} 1", 1, "expected a metric name"),
            ("# TYPE #\n", 1, "metric name after # TYPE"),
            ("# HELP #\n", 1, "metric name after # HELP"),
            ("# TYPE a countr\n", 1, "invalid metric type \"countr\""),
            ("a{b=\u{0}\"ssss\"} 1\n", 1, "quoted label value"),
            ("a{b\u{0}=\"hiih\"}\t1", 1, "expected `=`"),
            ("a\u{0}{b=\"ddd\"} 1", 1, "expected a value"),
            ("a 0 1\u{0}", 1, "after the timestamp"),
        ] {
            let error = text_error(page);
            assert_eq!(error.line, line, "{page:?}: {error}");
            assert!(error.message.contains(needle), "{page:?}: {error}");
        }
        // Invalid UTF-8 in a label value.
        let mut parser = Parser::new(b"a{b=\"\xff\"} 1\n", Format::Prometheus);
        let error = parser.next_entry().unwrap_err();
        assert!(error.message.contains("UTF-8"), "{error}");
        // NUL inside quotes is just a character.
        assert_eq!(text("a{b=\"x\0\"} 1"), ["a{b=\"x\\0\"} 1"]);
    }

    #[test]
    fn openmetrics_pages_parse_with_units_exemplars_and_second_timestamps() {
        let page = "# HELP rpc Some \\\"help\\\".\n# TYPE rpc counter\n# UNIT rpc_seconds seconds\n\
rpc_total{a=\"1\"} 17 1520879607.789 # {trace_id=\"abc\"} 0.5 1520879607.1\n\
rpc_created 1520430000.123\n\
hist_bucket{le=\"+Inf\"} 3 # {id=\"x\"} 2\n\
g{} 1.5e3\n\
# EOF\n";
        assert_eq!(
            om(page),
            [
                "HELP rpc \"Some \\\"help\\\".\"",
                "TYPE rpc Counter",
                "UNIT rpc_seconds seconds",
                "rpc_total{a=\"1\"} 17 @1520879607789 # {trace_id=\"abc\"} 0.5 Some(1520879607100)",
                "rpc_created{} 1520430000.123",
                "hist_bucket{le=\"+Inf\"} 3 # {id=\"x\"} 2 None",
                "g{} 1500",
            ]
        );
        // `# EOF` without a final newline, and the OpenMetrics-only types.
        assert_eq!(
            om("# TYPE s stateset\n# TYPE i info\n# TYPE gh gaugehistogram\n# EOF"),
            ["TYPE s StateSet", "TYPE i Info", "TYPE gh GaugeHistogram"]
        );
    }

    #[test]
    fn openmetrics_is_strict() {
        for (page, line, needle) in [
            ("a 1\n", 2, "does not end with # EOF"),
            ("a 1", 1, "does not end with # EOF"),
            ("# EOF\na 1\n", 2, "after # EOF"),
            ("# a comment\n# EOF\n", 1, "HELP, TYPE, UNIT or EOF"),
            ("#EOF\n", 1, "expected `# `"),
            ("a  1\n# EOF\n", 1, "a value"),
            ("a\t1\n# EOF\n", 1, "a value"),
            ("a{b=\"1\",} 1\n# EOF\n", 1, "label name"),
            ("a{b=\"1\" c=\"2\"} 1\n# EOF\n", 1, "expected `,`"),
            ("a{,b=\"1\"} 1\n# EOF\n", 1, "label name"),
            ("a{b=\"1\n\"} 1\n# EOF\n", 1, "on its line"),
            ("a 1 NaN\n# EOF\n", 1, "invalid timestamp"),
            (
                "a 1 # {b=\"1\"} 1\n# EOF\n",
                1,
                "does not support exemplars",
            ),
            ("a_total 1 # {b=\"1\"}\n# EOF\n", 1, "exemplar's value"),
            (
                "a_total 1 # {b=\"1\"} 1 Inf\n# EOF\n",
                1,
                "invalid exemplar timestamp",
            ),
            ("a 1 2 3\n# EOF\n", 1, "end of the line"),
            ("# HELP a\n# EOF\n", 1, "a space and text"),
            ("# UNIT a_bytes seconds\n# EOF\n", 1, "not a suffix"),
            ("# UNIT seconds seconds\n# EOF\n", 1, "not a suffix"),
            ("# TYPE a untyped\n# EOF\n", 1, "invalid metric type"),
        ] {
            let error = om_error(page);
            assert_eq!(error.line, line, "{page:?}: {error}");
            assert!(error.message.contains(needle), "{page:?}: {error}");
        }
    }

    #[test]
    fn the_content_type_picks_the_grammar() {
        for (content_type, format) in [
            (None, Format::Prometheus),
            (
                Some("text/plain; version=0.0.4; charset=utf-8"),
                Format::Prometheus,
            ),
            (
                Some("application/openmetrics-text; version=1.0.0; charset=utf-8"),
                Format::OpenMetrics,
            ),
            (Some("Application/OpenMetrics-Text"), Format::OpenMetrics),
            (Some("application/json"), Format::Prometheus),
        ] {
            assert_eq!(
                Format::from_content_type(content_type),
                format,
                "{content_type:?}"
            );
        }
    }

    #[test]
    fn floats_follow_go() {
        for (token, value) in [
            ("1", Some(1.0)),
            ("-1.5e3", Some(-1500.0)),
            (".5", Some(0.5)),
            ("1.", Some(1.0)),
            ("+Inf", Some(f64::INFINITY)),
            ("-Infinity", Some(f64::NEG_INFINITY)),
            ("inf", Some(f64::INFINITY)),
            ("1e400", None),
            ("1e-400", Some(0.0)),
            ("1_000", None),
            ("0x1p3", None),
            ("0x10", None),
            ("+NaN", None),
            ("", None),
            ("1e", None),
        ] {
            assert_eq!(parse_go_float(token), value, "{token}");
        }
        assert!(parse_go_float("NaN").is_some_and(f64::is_nan));
        assert!(parse_go_float("nan").is_some_and(f64::is_nan));
    }

    proptest::proptest! {
        /// No input panics either grammar.
        #[test]
        fn arbitrary_bytes_never_panic(page in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200)) {
            for format in [Format::Prometheus, Format::OpenMetrics] {
                let mut parser = Parser::new(&page, format);
                while let Ok(Some(_)) = parser.next_entry() {}
            }
        }
    }
}
