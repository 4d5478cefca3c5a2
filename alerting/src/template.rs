//! A syntax check of Go `text/template` source, as Prometheus runs on alert labels and
//! annotations when it loads a rule file (`template.ParseTest`).
//!
//! Only parsing is checked, as in Prometheus: balanced `{{ }}` and control structures,
//! well-formed pipelines, variables declared before use and functions that exist in
//! Prometheus's template function map. Nothing is executed. No maintained Rust crate parses
//! Go templates (gtmpl has not been released since 2021 and accepts a different function
//! set), so this is a small hand-written parser for exactly what Go's parser rejects.

use std::fmt;

/// Why a template does not parse, with the 1-based line inside the template text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateError {
    pub line: usize,
    pub reason: String,
}

impl fmt::Display for TemplateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.line, self.reason)
    }
}

impl std::error::Error for TemplateError {}

/// Go's built-in template functions plus those Prometheus 2.42 registers for rule
/// templates (`template.NewTemplateExpander`); a call to anything else fails to parse.
const FUNCTIONS: &[&str] = &[
    // text/template built-ins.
    "and",
    "call",
    "html",
    "index",
    "slice",
    "js",
    "len",
    "not",
    "or",
    "print",
    "printf",
    "println",
    "urlquery",
    "eq",
    "ge",
    "gt",
    "le",
    "lt",
    "ne",
    // Prometheus's.
    "query",
    "first",
    "label",
    "value",
    "strvalue",
    "args",
    "reReplaceAll",
    "safeHtml",
    "match",
    "title",
    "toUpper",
    "toLower",
    "graphLink",
    "tableLink",
    "sortByLabel",
    "humanize",
    "humanize1024",
    "humanizeDuration",
    "humanizePercentage",
    "humanizeTimestamp",
    "toTime",
    "pathPrefix",
    "externalURL",
    "parseDuration",
    "stripPort",
    "stripDomain",
];

/// The deepest parenthesis nesting accepted.
const MAX_PARENS: usize = 100;

/// Checks `text` as Go's `template.Parse` would, with `predefined` variables (such as
/// `$labels`) in scope at the top level, the way Prometheus prepends their definitions.
pub fn check(text: &str, predefined: &[&str]) -> Result<(), TemplateError> {
    let actions = lex(text)?;
    // Parentheses are checked recursively: a rule file must not be able to overflow the
    // stack (no template needs this depth).
    for action in &actions {
        let mut depth = 0usize;
        for token in &action.tokens {
            match token {
                Token::Open => depth += 1,
                Token::Close => depth = depth.saturating_sub(1),
                _ => {}
            }
            if depth > MAX_PARENS {
                return Err(error(
                    action.line,
                    format!("parentheses nested more than {MAX_PARENS} deep"),
                ));
            }
        }
    }
    let mut parser = Parser {
        blocks: Vec::new(),
        scopes: vec![predefined.iter().map(|v| (*v).to_owned()).collect()],
        saved: Vec::new(),
    };
    for action in &actions {
        parser.action(action)?;
    }
    if let Some(block) = parser.blocks.last() {
        return Err(TemplateError {
            line: block.line,
            reason: format!("unexpected EOF: {{{{{}}}}} has no {{{{end}}}}", block.kind),
        });
    }
    Ok(())
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Ident(String),
    Variable(String),
    Field,
    Dot,
    Text,
    Pipe,
    Open,
    Close,
    Comma,
    Declare,
    Assign,
}

#[derive(Debug)]
struct Action {
    line: usize,
    tokens: Vec<Token>,
}

fn error(line: usize, reason: impl Into<String>) -> TemplateError {
    TemplateError {
        line,
        reason: reason.into(),
    }
}

fn is_ident_char(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// Splits the text into its actions (comments dropped), each a list of tokens.
fn lex(text: &str) -> Result<Vec<Action>, TemplateError> {
    let chars: Vec<char> = text.chars().collect();
    let mut actions = Vec::new();
    let mut i = 0;
    let mut line = 1;
    let at = |i: usize, s: &str| {
        s.chars()
            .enumerate()
            .all(|(k, c)| chars.get(i + k) == Some(&c))
    };
    while i < chars.len() {
        if !at(i, "{{") {
            if chars[i] == '\n' {
                line += 1;
            }
            i += 1;
            continue;
        }
        let start_line = line;
        i += 2;
        // A left trim marker is "-" followed by a space.
        if chars.get(i) == Some(&'-') && chars.get(i + 1).is_some_and(|c| c.is_whitespace()) {
            i += 1;
        }
        let mut j = i;
        while chars.get(j).is_some_and(|c| c.is_whitespace()) {
            j += 1;
        }
        if at(j, "/*") {
            let mut k = j + 2;
            loop {
                if k >= chars.len() {
                    return Err(error(start_line, "unclosed comment"));
                }
                if at(k, "*/") {
                    break;
                }
                if chars[k] == '\n' {
                    line += 1;
                }
                k += 1;
            }
            k += 2;
            if at(k, " -}}") {
                k += 4;
            } else if at(k, "}}") {
                k += 2;
            } else {
                return Err(error(line, "comment ends before closing delimiter"));
            }
            i = k;
            continue;
        }
        let mut tokens: Vec<Token> = Vec::new();
        // Where the previous token ended: a field right after a term (no space) chains onto
        // it, which Go allows on some terms only.
        let mut previous_end = None;
        loop {
            let Some(&c) = chars.get(i) else {
                return Err(error(start_line, "unclosed action"));
            };
            if at(i, "}}") {
                i += 2;
                break;
            }
            if c.is_whitespace() {
                if at(i + 1, "-}}") {
                    i += 4;
                    break;
                }
                if c == '\n' {
                    line += 1;
                }
                i += 1;
                continue;
            }
            let adjacent = previous_end == Some(i);
            match c {
                '|' => {
                    tokens.push(Token::Pipe);
                    i += 1;
                }
                '(' => {
                    tokens.push(Token::Open);
                    i += 1;
                }
                ')' => {
                    tokens.push(Token::Close);
                    i += 1;
                }
                ',' => {
                    tokens.push(Token::Comma);
                    i += 1;
                }
                ':' if chars.get(i + 1) == Some(&'=') => {
                    tokens.push(Token::Declare);
                    i += 2;
                }
                '=' => {
                    tokens.push(Token::Assign);
                    i += 1;
                }
                '"' | '\'' => {
                    let quote = c;
                    i += 1;
                    loop {
                        match chars.get(i) {
                            None | Some('\n') => {
                                return Err(error(line, "unterminated quoted string"));
                            }
                            Some('\\') => {
                                i += escape_len(&chars[i + 1..], quote)
                                    .ok_or_else(|| error(line, "invalid syntax"))?
                                    + 1;
                            }
                            Some(&q) if q == quote => {
                                i += 1;
                                break;
                            }
                            Some(_) => i += 1,
                        }
                    }
                    tokens.push(Token::Text);
                }
                '`' => {
                    i += 1;
                    loop {
                        match chars.get(i) {
                            None => return Err(error(line, "unterminated raw quoted string")),
                            Some('`') => {
                                i += 1;
                                break;
                            }
                            Some(&q) => {
                                if q == '\n' {
                                    line += 1;
                                }
                                i += 1;
                            }
                        }
                    }
                    tokens.push(Token::Text);
                }
                '$' => {
                    let mut k = i + 1;
                    while chars.get(k).is_some_and(|c| is_ident_char(*c)) {
                        k += 1;
                    }
                    tokens.push(Token::Variable(chars[i..k].iter().collect()));
                    i = k;
                }
                '.' => {
                    if adjacent {
                        match tokens.last() {
                            Some(Token::Dot) => {
                                return Err(error(line, "unexpected <.> in operand"));
                            }
                            Some(Token::Text) => {
                                return Err(error(line, "unexpected . after term"));
                            }
                            Some(Token::Ident(word))
                                if matches!(word.as_str(), "true" | "false" | "nil") =>
                            {
                                return Err(error(
                                    line,
                                    format!("unexpected . after term {word:?}"),
                                ));
                            }
                            _ => {}
                        }
                    }
                    let mut k = i + 1;
                    if chars.get(k).is_some_and(|c| is_ident_char(*c)) {
                        while chars.get(k).is_some_and(|c| is_ident_char(*c) || *c == '.') {
                            k += 1;
                        }
                        tokens.push(Token::Field);
                    } else {
                        tokens.push(Token::Dot);
                        k = i + 1;
                    }
                    i = k;
                }
                c if c.is_ascii_digit()
                    || ((c == '-' || c == '+')
                        && chars.get(i + 1).is_some_and(|d| d.is_ascii_digit())) =>
                {
                    let mut k = i + 1;
                    while chars.get(k).is_some_and(|c| {
                        c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '+' | '-')
                    }) {
                        k += 1;
                    }
                    let number: String = chars[i..k].iter().collect();
                    if !is_number(&number) {
                        return Err(error(line, format!("bad number syntax: {number:?}")));
                    }
                    tokens.push(Token::Text);
                    i = k;
                }
                c if is_ident_char(c) => {
                    let mut k = i;
                    while chars.get(k).is_some_and(|c| is_ident_char(*c)) {
                        k += 1;
                    }
                    tokens.push(Token::Ident(chars[i..k].iter().collect()));
                    // A field chain right after an identifier or variable belongs to it.
                    i = k;
                }
                other => {
                    return Err(error(line, format!("unexpected {other:?} in command")));
                }
            }
            previous_end = Some(i);
        }
        actions.push(Action {
            line: start_line,
            tokens,
        });
    }
    Ok(actions)
}

#[derive(Debug)]
struct Block {
    kind: &'static str,
    line: usize,
    /// Whether a plain `{{else}}` was seen: nothing but `{{end}}` may follow it.
    ended: bool,
}

#[derive(Debug)]
struct Parser {
    blocks: Vec<Block>,
    scopes: Vec<Vec<String>>,
    /// The enclosing scopes while inside a `define`.
    saved: Vec<Vec<Vec<String>>>,
}

impl Parser {
    fn defined(&self, variable: &str) -> bool {
        variable == "$" || self.scopes.iter().any(|s| s.iter().any(|v| v == variable))
    }

    fn open(&mut self, kind: &'static str, line: usize) {
        self.blocks.push(Block {
            kind,
            line,
            ended: false,
        });
        self.scopes.push(Vec::new());
    }

    fn action(&mut self, action: &Action) -> Result<(), TemplateError> {
        let line = action.line;
        let tokens = &action.tokens[..];
        let keyword = match tokens.first() {
            Some(Token::Ident(word)) => word.as_str(),
            Some(_) => "",
            None => return Err(error(line, "missing value for command")),
        };
        let rest = &tokens[1..];
        match keyword {
            "if" | "with" | "range" => {
                let kind = match keyword {
                    "if" => "if",
                    "with" => "with",
                    _ => "range",
                };
                self.open(kind, line);
                self.pipeline(rest, line, kind == "range", keyword)
            }
            "else" => {
                let Some(top) = self.blocks.last_mut() else {
                    return Err(error(line, "unexpected {{else}}"));
                };
                if !matches!(top.kind, "if" | "with" | "range") {
                    return Err(error(line, "unexpected {{else}}"));
                }
                if top.ended {
                    return Err(error(line, "expected end; found {{else}}"));
                }
                // `else if` chains on; Go 1.19 (Prometheus 2.42's) has no `else with`.
                let chained = top.kind == "if"
                    && matches!(rest.first(), Some(Token::Ident(word)) if word == "if");
                top.ended = !chained;
                // Variables of the whole control structure (its pipeline's and its body's)
                // stay visible in its else branch, as in Go.
                match rest.first() {
                    None => Ok(()),
                    Some(Token::Ident(word)) if word == "if" && chained => {
                        self.pipeline(&rest[1..], line, false, word)
                    }
                    Some(_) => Err(error(line, "unexpected token in {{else}}")),
                }
            }
            "end" => {
                if !rest.is_empty() {
                    return Err(error(line, "unexpected token in {{end}}"));
                }
                let Some(block) = self.blocks.pop() else {
                    return Err(error(line, "unexpected {{end}}"));
                };
                self.scopes.pop();
                if block.kind == "define"
                    && let Some(outer) = self.saved.pop()
                {
                    self.scopes = outer;
                }
                Ok(())
            }
            "define" | "block" => {
                if keyword == "define" && !self.blocks.is_empty() {
                    return Err(error(line, "unexpected \"define\" in nested action"));
                }
                if rest.first() != Some(&Token::Text) {
                    return Err(error(line, format!("expected template name in {keyword}")));
                }
                if keyword == "block" {
                    self.open("block", line);
                    if rest.len() > 1 {
                        self.pipeline(&rest[1..], line, false, keyword)?;
                    }
                    return Ok(());
                }
                if rest.len() > 1 {
                    return Err(error(line, "unexpected token in define clause"));
                }
                // A definition sees only `$` (its own dot), not the enclosing variables.
                self.blocks.push(Block {
                    kind: "define",
                    line,
                    ended: false,
                });
                let outer = std::mem::replace(&mut self.scopes, vec![Vec::new(), Vec::new()]);
                self.saved.push(outer);
                Ok(())
            }
            "template" => {
                if rest.first() != Some(&Token::Text) {
                    return Err(error(line, "expected template name in template clause"));
                }
                if rest.len() > 1 {
                    self.pipeline(&rest[1..], line, false, keyword)?;
                }
                Ok(())
            }
            "break" | "continue" => {
                if !rest.is_empty() {
                    return Err(error(
                        line,
                        format!("unexpected token in {{{{{keyword}}}}}"),
                    ));
                }
                if !self.blocks.iter().any(|b| b.kind == "range") {
                    return Err(error(
                        line,
                        format!("{{{{{keyword}}}}} outside {{{{range}}}}"),
                    ));
                }
                Ok(())
            }
            _ => self.pipeline(tokens, line, false, "command"),
        }
    }

    /// A pipeline: an optional declaration (`$x :=`, `$x =`, or `$i, $e :=` in range), then
    /// commands separated by `|`.
    fn pipeline(
        &mut self,
        tokens: &[Token],
        line: usize,
        range: bool,
        context: &str,
    ) -> Result<(), TemplateError> {
        let mut tokens = tokens;
        let mut declared = Vec::new();
        match tokens {
            [Token::Variable(v), Token::Declare, rest @ ..] => {
                declared.push(v.clone());
                tokens = rest;
            }
            // Go's parser leaves assignment to an undeclared variable to execution.
            [Token::Variable(_), Token::Assign, rest @ ..] => {
                tokens = rest;
            }
            [
                Token::Variable(a),
                Token::Comma,
                Token::Variable(b),
                op,
                rest @ ..,
            ] if range && matches!(op, Token::Declare | Token::Assign) => {
                declared.push(a.clone());
                declared.push(b.clone());
                tokens = rest;
            }
            _ => {}
        }
        if tokens.is_empty() {
            return Err(error(line, format!("missing value for {context}")));
        }
        let end = self.commands(tokens, line)?;
        if end != tokens.len() {
            return Err(error(line, "unexpected \")\" in operand"));
        }
        if let Some(scope) = self.scopes.last_mut() {
            scope.extend(declared);
        }
        Ok(())
    }

    /// Commands up to the end of `tokens` or an unmatched `)`; returns where it stopped.
    fn commands(&self, tokens: &[Token], line: usize) -> Result<usize, TemplateError> {
        let mut i = 0;
        let mut operands = 0;
        let mut stage = 1;
        while i < tokens.len() {
            match &tokens[i] {
                Token::Pipe => {
                    if operands == 0 {
                        return Err(error(line, "missing command"));
                    }
                    operands = 0;
                    stage += 1;
                    i += 1;
                    continue;
                }
                Token::Close => break,
                Token::Open => {
                    let inner = &tokens[i + 1..];
                    if inner.first() == Some(&Token::Close) {
                        return Err(error(line, "missing value for parenthesized pipeline"));
                    }
                    let used = self.commands(inner, line)?;
                    if inner.get(used) != Some(&Token::Close) {
                        return Err(error(line, "unclosed left paren"));
                    }
                    i += used + 2;
                }
                Token::Variable(v) => {
                    if !self.defined(v) {
                        return Err(error(line, format!("undefined variable {v:?}")));
                    }
                    i += 1;
                }
                Token::Ident(word) => {
                    match word.as_str() {
                        "true" | "false" | "nil" => {
                            if stage > 1 && operands == 0 {
                                return Err(non_executable(line, stage));
                            }
                        }
                        name if FUNCTIONS.contains(&name) => {}
                        name if is_keyword(name) => {
                            return Err(error(line, format!("unexpected <{name}> in command")));
                        }
                        name => {
                            return Err(error(line, format!("function {name:?} not defined")));
                        }
                    }
                    i += 1;
                }
                Token::Dot | Token::Text if stage > 1 && operands == 0 => {
                    return Err(non_executable(line, stage));
                }
                Token::Field | Token::Dot | Token::Text => i += 1,
                Token::Comma | Token::Declare | Token::Assign => {
                    return Err(error(line, "unexpected token in operand"));
                }
            }
            operands += 1;
        }
        // Go's parser takes a trailing `|` as part of the last command, so `{{ x | }}` parses.
        if operands == 0 && stage == 1 {
            return Err(error(line, "missing value for command"));
        }
        Ok(i)
    }
}

/// The length of a Go escape sequence after its backslash, if it is one.
pub(crate) fn escape_len(rest: &[char], quote: char) -> Option<usize> {
    let hex = |n: usize| {
        (rest.len() > n && rest[1..=n].iter().all(char::is_ascii_hexdigit)).then_some(n + 1)
    };
    match rest.first()? {
        'a' | 'b' | 'f' | 'n' | 'r' | 't' | 'v' | '\\' => Some(1),
        &c if c == quote => Some(1),
        'x' => hex(2),
        'u' => hex(4),
        'U' => hex(8),
        '0'..='7' => {
            (rest.len() > 2 && rest[..3].iter().all(|c| ('0'..='7').contains(c))).then_some(3)
        }
        _ => None,
    }
}

/// Go's number literals as templates accept them: decimal (with exponent), 0x/0o/0b
/// integers, `_` separators, an optional sign, and imaginary `i`.
pub(crate) fn is_number(text: &str) -> bool {
    let text = text.strip_prefix(['+', '-']).unwrap_or(text);
    let text = text.strip_suffix('i').unwrap_or(text);
    let digits = |s: &str, radix: u32| {
        !s.is_empty() && s.chars().all(|c| c == '_' || c.is_digit(radix)) && !s.ends_with('_')
    };
    let lower = text.to_ascii_lowercase();
    if let Some(rest) = lower.strip_prefix("0x") {
        return digits(rest.trim_start_matches('_'), 16);
    }
    if let Some(rest) = lower.strip_prefix("0o") {
        return digits(rest.trim_start_matches('_'), 8);
    }
    if let Some(rest) = lower.strip_prefix("0b") {
        return digits(rest.trim_start_matches('_'), 2);
    }
    !text.contains("__")
        && !text.ends_with('_')
        && text.replace('_', "").parse::<f64>().is_ok()
        && text.starts_with(|c: char| c.is_ascii_digit() || c == '.')
}

/// Go's check that only a pipeline's first command may start with a constant or dot.
fn non_executable(line: usize, stage: usize) -> TemplateError {
    error(
        line,
        format!("non executable command in pipeline stage {stage}"),
    )
}

fn is_keyword(word: &str) -> bool {
    matches!(
        word,
        "if" | "else"
            | "end"
            | "range"
            | "with"
            | "define"
            | "template"
            | "block"
            | "break"
            | "continue"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const PROMETHEUS: &[&str] = &["$labels", "$externalLabels", "$externalURL", "$value"];

    fn ok(text: &str) {
        if let Err(e) = check(text, PROMETHEUS) {
            panic!("{text:?} should parse: {e}");
        }
    }

    fn bad(text: &str, reason: &str) {
        match check(text, PROMETHEUS) {
            Ok(()) => panic!("{text:?} should not parse"),
            Err(e) => assert!(e.reason.contains(reason), "{text:?}: {e} lacks {reason:?}"),
        }
    }

    #[test]
    fn templates_rule_authors_write_parse() {
        ok("plain text, no actions");
        ok("Instance {{ $labels.instance }} down");
        ok("stuff's happening with {{ $.labels.service }}");
        ok("{{ $value | humanizePercentage }} of {{ $labels.job }}");
        ok("{{ if gt $value 0.5 }}high{{ else if eq $value 0.0 }}none{{ else }}low{{ end }}");
        ok("{{- range $i, $s := query \"up\" -}}{{ $s.Labels.instance }} {{ $i }}{{ end }}");
        ok("{{ with query \"up\" }}{{ . | first | value | humanize }}{{ end }}");
        ok("{{ $x := 1 }}{{ $x = 2 }}{{ printf \"%d\" $x }}");
        ok("{{/* a comment with }} inside */}}text{{- /* trimmed */ -}}");
        ok("{{ define \"t\" }}{{ . }}{{ end }}{{ template \"t\" $labels }}");
        ok("{{ reReplaceAll \"(.*)\" `$1` (index $labels \"x\") }}");
        ok("{{ range query \"up\" }}{{ if .Value }}{{ break }}{{ end }}{{ end }}");
        ok("{{ if $x := 1 }}{{ $x }}{{ else }}{{ $x }}{{ end }}");
        ok("{{ if 1 }}{{ else if 2 }}{{ else if 3 }}{{ else }}{{ end }}");
        ok("{{ \"\\x41\\u0041\\101\\n\" }} {{ 0b101 }} {{ 0o17 }} {{ 1_000 }} {{ .5 }} {{ 1i }}");
        ok("{{ $labels.a.b }} {{ (humanize 1).x }} {{ $y = 2 }}");
        ok("{{ 'a' }} {{ -1 }} {{ 1e3 }} {{ 0x1F }} {{ true }} {{ nil | print }} {{ nil }}");
    }

    #[test]
    fn broken_templates_are_refused_with_a_reason() {
        bad("{{ $labels.instance", "unclosed action");
        bad("{{ if $value }}x", "unexpected EOF");
        bad("x{{ end }}", "unexpected {{end}}");
        bad("{{ else }}", "unexpected {{else}}");
        bad("{{ $missing }}", "undefined variable \"$missing\"");
        bad("{{ nosuchfunc 1 }}", "function \"nosuchfunc\" not defined");
        bad("{{ }}", "missing value for command");
        bad("{{ if }}{{ end }}", "missing value for if");
        ok("{{ humanize 1 | }}");
        bad("{{ humanize 1 | | print }}", "missing command");
        bad("{{ | print }}", "missing command");
        bad("{{ (humanize 1 }}", "unclosed left paren");
        bad("{{ humanize 1) }}", "unexpected \")\"");
        bad("{{ \"open }}", "unterminated quoted string");
        bad("{{/* open }}", "unclosed comment");
        bad("{{ break }}", "outside {{range}}");
        bad("{{ 1 | 2 }}", "non executable command in pipeline stage 2");
        bad(
            "{{ humanize 1 | . }}",
            "non executable command in pipeline stage 2",
        );
        bad("{{ 1x2 }}", "bad number syntax");
        bad("{{ 0x1g }}", "bad number syntax");
        bad("{{ 1__0 }}", "bad number syntax");
        bad("{{ \"\\z\" }}", "invalid syntax");
        bad(
            "{{ if 1 }}{{ else }}{{ else }}{{ end }}",
            "expected end; found {{else}}",
        );
        bad(
            "{{ with . }}{{ else with 1 }}{{ end }}",
            "unexpected token in {{else}}",
        );
        bad("{{ true.x }}", "unexpected . after term");
        bad("{{ \"a\".x }}", "unexpected . after term");
        bad("{{ .. }}", "unexpected <.> in operand");
        bad("{{ if 1 }}{{ define \"t\" }}{{ end }}{{ end }}", "nested");
    }

    #[test]
    fn variables_are_scoped_to_their_block() {
        bad(
            "{{ if 1 }}{{ $x := 1 }}{{ end }}{{ $x }}",
            "undefined variable \"$x\"",
        );
        ok("{{ $x := 1 }}{{ if 1 }}{{ $x }}{{ end }}");
        bad(
            "{{ define \"t\" }}{{ $labels }}{{ end }}",
            "undefined variable \"$labels\"",
        );
    }

    proptest::proptest! {
        /// Whatever a rule author writes, the checker answers instead of panicking.
        #[test]
        fn arbitrary_text_never_panics(text in "(\\{\\{|\\}\\}|[-$.|()\"'`\\\\/* a-z0-9=:,]){0,40}") {
            if let Err(error) = check(&text, PROMETHEUS) {
                proptest::prop_assert!(error.line >= 1 && error.line <= text.lines().count().max(1));
                proptest::prop_assert!(!error.reason.is_empty());
            }
        }
    }

    #[test]
    fn deep_nesting_is_refused_not_a_stack_overflow() {
        let parens = format!("{{{{ {}1{} }}}}", "(".repeat(100_000), ")".repeat(100_000));
        bad(&parens, "nested more than");
    }

    #[test]
    fn errors_name_the_line_inside_the_template() {
        let error = check("first\nsecond {{ oops }}", PROMETHEUS).expect_err("undefined function");
        assert_eq!(error.line, 2);
    }
}
