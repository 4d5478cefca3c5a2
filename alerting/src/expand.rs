//! Executes the Go `text/template` source of alert labels and annotations, as Prometheus
//! 2.42's `template.Expander` does, with its function map (`humanize`, `query`, …).
//!
//! [`crate::template::check`] validates a template when its file loads; this module runs
//! templates that passed it, so its own parser reports problems briefly. Values follow Go's
//! rules where rule authors notice them: `{{ $value }}` prints a float as Go's `%v`
//! (`1e+06`), a missing label is empty (Prometheus sets `missingkey=zero`), and comparing an integer literal with a
//! float (`gt $value 1`) is an error, as it is in Prometheus.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::template::{escape_len, is_number};

/// One element of a query result handed to a template: `query "up"` returns a list.
#[derive(Clone, Debug, PartialEq)]
pub struct QuerySample {
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// Runs `query` for templates; an error ends the expansion.
pub type QueryFn<'a> = dyn Fn(&str) -> Result<Vec<QuerySample>, String> + 'a;

/// What an alert's templates see.
#[derive(Debug)]
pub struct AlertData<'a> {
    pub labels: &'a BTreeMap<String, String>,
    pub external_labels: &'a BTreeMap<String, String>,
    pub external_url: &'a str,
    pub value: f64,
}

/// A value during execution.
#[derive(Clone, Debug, PartialEq)]
enum Value {
    Nil,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    /// A `map[string]string` (labels).
    Labels(BTreeMap<String, String>),
    /// A struct or `map[string]interface{}`, by field name.
    Struct(BTreeMap<String, Value>),
    Samples(Vec<QuerySample>),
    Sample(QuerySample),
}

/// Expands `text` for an alert as Prometheus does, with `$labels`, `$externalLabels`,
/// `$externalURL` and `$value` defined. Prometheus puts the error in the result instead of
/// failing the rule; so does this.
pub fn expand_alert(text: &str, name: &str, data: &AlertData<'_>, query: &QueryFn<'_>) -> String {
    let dot = Value::Struct(BTreeMap::from([
        ("Labels".to_owned(), Value::Labels(data.labels.clone())),
        (
            "ExternalLabels".to_owned(),
            Value::Labels(data.external_labels.clone()),
        ),
        (
            "ExternalURL".to_owned(),
            Value::Str(data.external_url.to_owned()),
        ),
        ("Value".to_owned(), Value::Float(data.value)),
    ]));
    let vars = vec![
        ("$".to_owned(), dot.clone()),
        ("$labels".to_owned(), Value::Labels(data.labels.clone())),
        (
            "$externalLabels".to_owned(),
            Value::Labels(data.external_labels.clone()),
        ),
        (
            "$externalURL".to_owned(),
            Value::Str(data.external_url.to_owned()),
        ),
        ("$value".to_owned(), Value::Float(data.value)),
    ];
    let template_name = format!("__alert_{name}");
    match run(text, dot, vars, data.external_url, query) {
        Ok(out) => out,
        Err(e) => {
            format!("<error expanding template: error executing template {template_name}: {e}>")
        }
    }
}

fn run(
    text: &str,
    dot: Value,
    vars: Vec<(String, Value)>,
    external_url: &str,
    query: &QueryFn<'_>,
) -> Result<String, String> {
    crate::template::check(
        text,
        &["$labels", "$externalLabels", "$externalURL", "$value"],
    )
    .map_err(|e| format!("template: {}: {}", e.line, e.reason))?;
    let pieces = lex(text)?;
    check_nesting(&pieces)?;
    let mut parser = Parser {
        pieces,
        at: 0,
        defines: BTreeMap::new(),
    };
    let body = parser.nodes()?;
    let mut exec = Exec {
        defines: &parser.defines,
        query,
        external_url,
        out: String::new(),
        vars,
        depth: 0,
    };
    match exec.nodes(&body, &dot) {
        Ok(()) | Err(Flow::Break) | Err(Flow::Continue) => Ok(exec.out),
        Err(Flow::Error(e)) => Err(e),
    }
}

// ---- Lexing: literal text and actions, with Go's trim markers applied. ----

#[derive(Clone, Debug, PartialEq)]
enum Tok {
    Ident(String),
    Var(String),
    /// `.a.b`; `chained` when it follows a term with no space (`$x.a`, `(…).a`).
    Field(Vec<String>, bool),
    Dot,
    Str(String),
    Num(String),
    Pipe,
    Open,
    Close,
    Comma,
    Declare,
    Assign,
}

#[derive(Debug)]
enum Piece {
    Text(String),
    Action(Vec<Tok>),
}

fn lex(text: &str) -> Result<Vec<Piece>, String> {
    let chars: Vec<char> = text.chars().collect();
    let at = |i: usize, s: &str| {
        s.chars()
            .enumerate()
            .all(|(k, c)| chars.get(i + k) == Some(&c))
    };
    let mut pieces = Vec::new();
    let mut literal = String::new();
    let mut trim_next = false;
    let mut i = 0;
    while i < chars.len() {
        if !at(i, "{{") {
            literal.push(chars[i]);
            i += 1;
            continue;
        }
        i += 2;
        let trim_left =
            chars.get(i) == Some(&'-') && chars.get(i + 1).is_some_and(|c| c.is_whitespace());
        if trim_left {
            i += 1;
            literal.truncate(literal.trim_end().len());
        }
        if trim_next {
            literal = literal.trim_start().to_owned();
        }
        if !literal.is_empty() {
            pieces.push(Piece::Text(std::mem::take(&mut literal)));
        }
        literal.clear();
        let mut tokens = Vec::new();
        let mut previous_end = None;
        trim_next = false;
        loop {
            let Some(&c) = chars.get(i) else {
                return Err("unclosed action".into());
            };
            if at(i, "}}") {
                i += 2;
                break;
            }
            if c.is_whitespace() {
                if at(i + 1, "-}}") {
                    i += 4;
                    trim_next = true;
                    break;
                }
                i += 1;
                continue;
            }
            if at(i, "/*") {
                let end = (i + 2..chars.len())
                    .find(|&k| at(k, "*/"))
                    .ok_or("unclosed comment")?;
                i = end + 2;
                continue;
            }
            let adjacent = previous_end == Some(i);
            match c {
                '|' => tokens.push(Tok::Pipe),
                '(' => tokens.push(Tok::Open),
                ')' => tokens.push(Tok::Close),
                ',' => tokens.push(Tok::Comma),
                '=' => tokens.push(Tok::Assign),
                ':' if chars.get(i + 1) == Some(&'=') => {
                    tokens.push(Tok::Declare);
                    i += 1;
                }
                '"' | '\'' => {
                    let (value, end) = unquote(&chars, i)?;
                    tokens.push(if c == '\'' {
                        Tok::Num(value.chars().next().map_or(0, u32::from).to_string())
                    } else {
                        Tok::Str(value)
                    });
                    i = end;
                    previous_end = Some(i);
                    continue;
                }
                '`' => {
                    let end = (i + 1..chars.len())
                        .find(|&k| chars[k] == '`')
                        .ok_or("unterminated raw quoted string")?;
                    tokens.push(Tok::Str(chars[i + 1..end].iter().collect()));
                    i = end + 1;
                    previous_end = Some(i);
                    continue;
                }
                '$' => {
                    let end = (i + 1..=chars.len())
                        .find(|&k| !chars.get(k).is_some_and(|c| ident_char(*c)))
                        .unwrap_or(chars.len());
                    tokens.push(Tok::Var(chars[i..end].iter().collect()));
                    i = end;
                    previous_end = Some(i);
                    continue;
                }
                '.' if chars.get(i + 1).is_some_and(|c| ident_char(*c)) => {
                    let end = (i + 1..=chars.len())
                        .find(|&k| !chars.get(k).is_some_and(|c| ident_char(*c) || *c == '.'))
                        .unwrap_or(chars.len());
                    let path: String = chars[i + 1..end].iter().collect();
                    let chained = adjacent
                        && matches!(
                            tokens.last(),
                            Some(Tok::Var(_) | Tok::Close | Tok::Field(..) | Tok::Ident(_))
                        );
                    tokens.push(Tok::Field(
                        path.split('.').map(str::to_owned).collect(),
                        chained,
                    ));
                    i = end;
                    previous_end = Some(i);
                    continue;
                }
                '.' => tokens.push(Tok::Dot),
                c if c.is_ascii_digit()
                    || ((c == '-' || c == '+' || c == '.')
                        && chars.get(i + 1).is_some_and(|d| d.is_ascii_digit())) =>
                {
                    let end = (i + 1..=chars.len())
                        .find(|&k| {
                            !chars.get(k).is_some_and(|c| {
                                c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '+' | '-')
                            })
                        })
                        .unwrap_or(chars.len());
                    let number: String = chars[i..end].iter().collect();
                    if !is_number(&number) {
                        return Err(format!("bad number syntax: {number:?}"));
                    }
                    tokens.push(Tok::Num(number));
                    i = end;
                    previous_end = Some(i);
                    continue;
                }
                c if ident_char(c) => {
                    let end = (i..=chars.len())
                        .find(|&k| !chars.get(k).is_some_and(|c| ident_char(*c)))
                        .unwrap_or(chars.len());
                    tokens.push(Tok::Ident(chars[i..end].iter().collect()));
                    i = end;
                    previous_end = Some(i);
                    continue;
                }
                other => return Err(format!("unexpected {other:?} in command")),
            }
            i += 1;
            previous_end = Some(i);
        }
        if !tokens.is_empty() {
            pieces.push(Piece::Action(tokens));
        }
    }
    if trim_next {
        literal = literal.trim_start().to_owned();
    }
    if !literal.is_empty() {
        pieces.push(Piece::Text(literal));
    }
    Ok(pieces)
}

fn ident_char(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// Refuses templates nested deeper than [`MAX_DEPTH`] (blocks or parentheses): parsing and
/// running them recurse, and a stack overflow would take the whole process down.
fn check_nesting(pieces: &[Piece]) -> Result<(), String> {
    let mut depth: i64 = 0;
    for piece in pieces {
        let Piece::Action(tokens) = piece else {
            continue;
        };
        match tokens.first() {
            Some(Tok::Ident(w))
                if matches!(w.as_str(), "if" | "with" | "range" | "define" | "block") =>
            {
                depth += 1;
            }
            Some(Tok::Ident(w)) if w == "end" => depth -= 1,
            _ => {}
        }
        let mut parens: i64 = 0;
        for token in tokens {
            match token {
                Tok::Open => parens += 1,
                Tok::Close => parens -= 1,
                _ => {}
            }
            if depth + parens > MAX_DEPTH as i64 {
                return Err(format!("template nested more than {MAX_DEPTH} deep"));
            }
        }
        if depth > MAX_DEPTH as i64 {
            return Err(format!("template nested more than {MAX_DEPTH} deep"));
        }
    }
    Ok(())
}

/// A Go quoted string starting at `start`: its value and the index after it.
fn unquote(chars: &[char], start: usize) -> Result<(String, usize), String> {
    let quote = chars[start];
    let mut out = String::new();
    let mut i = start + 1;
    loop {
        match chars.get(i) {
            None | Some('\n') => return Err("unterminated quoted string".into()),
            Some(&c) if c == quote => return Ok((out, i + 1)),
            Some('\\') => {
                let rest = &chars[i + 1..];
                let len = escape_len(rest, quote).ok_or("invalid syntax")?;
                let code = |digits: &[char], radix| {
                    u32::from_str_radix(&digits.iter().collect::<String>(), radix)
                        .ok()
                        .and_then(char::from_u32)
                        .ok_or("invalid syntax")
                };
                let c = match rest[0] {
                    'a' => '\u{7}',
                    'b' => '\u{8}',
                    'f' => '\u{c}',
                    'n' => '\n',
                    'r' => '\r',
                    't' => '\t',
                    'v' => '\u{b}',
                    'x' | 'u' | 'U' => code(&rest[1..len], 16)?,
                    '0'..='7' => code(&rest[..3], 8)?,
                    other => other,
                };
                out.push(c);
                i += len + 1;
            }
            Some(&c) => {
                out.push(c);
                i += 1;
            }
        }
    }
}

// ---- Parsing into a tree. ----

#[derive(Clone, Debug)]
enum Arg {
    Dot,
    Field(Vec<String>),
    Var(String, Vec<String>),
    Ident(String),
    Str(String),
    Num(String),
    Sub(Pipeline, Vec<String>),
}

#[derive(Clone, Debug, Default)]
struct Pipeline {
    declare: Vec<String>,
    /// `$x = …`: assigns an existing variable.
    assign: bool,
    commands: Vec<Vec<Arg>>,
}

#[derive(Clone, Debug)]
enum Node {
    Text(String),
    Action(Pipeline),
    If(Pipeline, Vec<Node>, Vec<Node>),
    With(Pipeline, Vec<Node>, Vec<Node>),
    Range(Pipeline, Vec<Node>, Vec<Node>),
    Template(String, Option<Pipeline>),
    Break,
    Continue,
}

struct Parser {
    pieces: Vec<Piece>,
    at: usize,
    defines: BTreeMap<String, Vec<Node>>,
}

/// How a list of nodes ended.
enum ListEnd {
    Eof,
    End,
    /// `{{else}}` or `{{else if …}}` (the tokens after `else`).
    Else(Vec<Tok>),
}

impl Parser {
    fn nodes(&mut self) -> Result<Vec<Node>, String> {
        match self.list()? {
            (nodes, ListEnd::Eof) => Ok(nodes),
            _ => Err("unexpected {{end}} or {{else}}".into()),
        }
    }

    fn list(&mut self) -> Result<(Vec<Node>, ListEnd), String> {
        let mut nodes = Vec::new();
        while self.at < self.pieces.len() {
            let piece = std::mem::replace(&mut self.pieces[self.at], Piece::Text(String::new()));
            self.at += 1;
            let tokens = match piece {
                Piece::Text(text) => {
                    nodes.push(Node::Text(text));
                    continue;
                }
                Piece::Action(tokens) => tokens,
            };
            let keyword = match tokens.first() {
                Some(Tok::Ident(word)) => word.as_str(),
                _ => "",
            };
            match keyword {
                "end" => return Ok((nodes, ListEnd::End)),
                "else" => return Ok((nodes, ListEnd::Else(tokens[1..].to_vec()))),
                "if" | "with" | "range" => {
                    let node = self.control(keyword, &tokens[1..])?;
                    nodes.push(node);
                }
                "define" | "block" => {
                    let Some(Tok::Str(name)) = tokens.get(1) else {
                        return Err(format!("expected template name in {keyword}"));
                    };
                    let name = name.clone();
                    let (body, end) = self.list()?;
                    if !matches!(end, ListEnd::End) {
                        return Err(format!("{keyword} has no {{{{end}}}}"));
                    }
                    if keyword == "block" {
                        let pipe = match tokens.len() > 2 {
                            true => Some(pipeline(&tokens[2..])?),
                            false => None,
                        };
                        nodes.push(Node::Template(name.clone(), pipe));
                    }
                    self.defines.insert(name, body);
                }
                "template" => {
                    let Some(Tok::Str(name)) = tokens.get(1) else {
                        return Err("expected template name in template clause".into());
                    };
                    let pipe = match tokens.len() > 2 {
                        true => Some(pipeline(&tokens[2..])?),
                        false => None,
                    };
                    nodes.push(Node::Template(name.clone(), pipe));
                }
                "break" => nodes.push(Node::Break),
                "continue" => nodes.push(Node::Continue),
                _ => nodes.push(Node::Action(pipeline(&tokens)?)),
            }
        }
        Ok((nodes, ListEnd::Eof))
    }

    fn control(&mut self, keyword: &str, tokens: &[Tok]) -> Result<Node, String> {
        let pipe = pipeline(tokens)?;
        let (body, end) = self.list()?;
        let otherwise = match end {
            ListEnd::Eof => return Err(format!("{keyword} has no {{{{end}}}}")),
            ListEnd::End => Vec::new(),
            ListEnd::Else(rest) if rest.is_empty() => match self.list()? {
                (nodes, ListEnd::End) => nodes,
                _ => return Err(format!("{keyword}'s else has no {{{{end}}}}")),
            },
            // `else if`: the chained if ends at the same {{end}}.
            ListEnd::Else(rest) => vec![self.control("if", &rest[1..])?],
        };
        Ok(match keyword {
            "if" => Node::If(pipe, body, otherwise),
            "with" => Node::With(pipe, body, otherwise),
            _ => Node::Range(pipe, body, otherwise),
        })
    }
}

fn pipeline(tokens: &[Tok]) -> Result<Pipeline, String> {
    let mut pipe = Pipeline::default();
    let mut rest = tokens;
    match rest {
        [
            Tok::Var(a),
            Tok::Comma,
            Tok::Var(b),
            op @ (Tok::Declare | Tok::Assign),
            tail @ ..,
        ] => {
            pipe.declare = vec![a.clone(), b.clone()];
            pipe.assign = *op == Tok::Assign;
            rest = tail;
        }
        [Tok::Var(a), op @ (Tok::Declare | Tok::Assign), tail @ ..] => {
            pipe.declare = vec![a.clone()];
            pipe.assign = *op == Tok::Assign;
            rest = tail;
        }
        _ => {}
    }
    let (commands, used) = commands(rest)?;
    if used != rest.len() {
        return Err("unexpected \")\" in operand".into());
    }
    pipe.commands = commands;
    Ok(pipe)
}

/// Commands up to the end or an unmatched `)`; returns them and where it stopped.
fn commands(tokens: &[Tok]) -> Result<(Vec<Vec<Arg>>, usize), String> {
    let mut commands: Vec<Vec<Arg>> = vec![Vec::new()];
    let mut i = 0;
    while i < tokens.len() {
        let arg = match &tokens[i] {
            Tok::Close => break,
            Tok::Pipe => {
                commands.push(Vec::new());
                i += 1;
                continue;
            }
            Tok::Open => {
                let (inner, used) = commands_in(&tokens[i + 1..])?;
                i += used + 2;
                let fields = match tokens.get(i) {
                    Some(Tok::Field(path, true)) => {
                        i += 1;
                        path.clone()
                    }
                    _ => Vec::new(),
                };
                let sub = Pipeline {
                    commands: inner,
                    ..Pipeline::default()
                };
                current(&mut commands).push(Arg::Sub(sub, fields));
                continue;
            }
            Tok::Var(name) => {
                let fields = match tokens.get(i + 1) {
                    Some(Tok::Field(path, true)) => {
                        i += 1;
                        path.clone()
                    }
                    _ => Vec::new(),
                };
                Arg::Var(name.clone(), fields)
            }
            Tok::Field(path, _) => Arg::Field(path.clone()),
            Tok::Dot => Arg::Dot,
            Tok::Ident(word) => Arg::Ident(word.clone()),
            Tok::Str(s) => Arg::Str(s.clone()),
            Tok::Num(n) => Arg::Num(n.clone()),
            Tok::Comma | Tok::Declare | Tok::Assign => {
                return Err("unexpected token in operand".into());
            }
        };
        current(&mut commands).push(arg);
        i += 1;
    }
    commands.retain(|c| !c.is_empty());
    if commands.is_empty() {
        return Err("missing value for command".into());
    }
    Ok((commands, i))
}

fn commands_in(tokens: &[Tok]) -> Result<(Vec<Vec<Arg>>, usize), String> {
    let (inner, used) = commands(tokens)?;
    if tokens.get(used) != Some(&Tok::Close) {
        return Err("unclosed left paren".into());
    }
    Ok((inner, used))
}

fn current(commands: &mut [Vec<Arg>]) -> &mut Vec<Arg> {
    let last = commands.len() - 1;
    &mut commands[last]
}

// ---- Execution. ----

enum Flow {
    Break,
    Continue,
    Error(String),
}

impl From<String> for Flow {
    fn from(e: String) -> Self {
        Flow::Error(e)
    }
}

struct Exec<'a> {
    defines: &'a BTreeMap<String, Vec<Node>>,
    query: &'a QueryFn<'a>,
    external_url: &'a str,
    out: String,
    vars: Vec<(String, Value)>,
    depth: usize,
}

/// How deep templates may call templates. Go allows 100,000 on its growable stacks; a
/// Rust thread's fixed stack does not, and no alert template needs more than a few.
const MAX_DEPTH: usize = 100;

impl Exec<'_> {
    fn nodes(&mut self, nodes: &[Node], dot: &Value) -> Result<(), Flow> {
        for node in nodes {
            self.node(node, dot)?;
        }
        Ok(())
    }

    fn scoped(&mut self, nodes: &[Node], dot: &Value) -> Result<(), Flow> {
        let mark = self.vars.len();
        let result = self.nodes(nodes, dot);
        self.vars.truncate(mark);
        result
    }

    fn node(&mut self, node: &Node, dot: &Value) -> Result<(), Flow> {
        match node {
            Node::Text(text) => self.out.push_str(text),
            Node::Action(pipe) => {
                let value = self.pipeline(pipe, dot)?;
                if pipe.declare.is_empty() {
                    let text = print(&value);
                    self.out.push_str(&text);
                }
            }
            Node::If(pipe, then, otherwise) | Node::With(pipe, then, otherwise) => {
                let mark = self.vars.len();
                let value = self.pipeline(pipe, dot)?;
                let result = if truth(&value) {
                    let inner = if matches!(node, Node::With(..)) {
                        value
                    } else {
                        dot.clone()
                    };
                    self.scoped(then, &inner)
                } else {
                    self.scoped(otherwise, dot)
                };
                self.vars.truncate(mark);
                result?;
            }
            Node::Range(pipe, body, otherwise) => self.range(pipe, body, otherwise, dot)?,
            Node::Template(name, pipe) => {
                let body = self
                    .defines
                    .get(name)
                    .ok_or_else(|| format!("no such template {name:?}"))?;
                let inner = match pipe {
                    Some(pipe) => self.pipeline(pipe, dot)?,
                    None => Value::Nil,
                };
                self.depth += 1;
                if self.depth > MAX_DEPTH {
                    return Err(Flow::Error("exceeded maximum template depth".into()));
                }
                // A template sees only its own `$`.
                let saved = std::mem::replace(&mut self.vars, vec![("$".into(), inner.clone())]);
                let result = self.nodes(body, &inner);
                self.vars = saved;
                self.depth -= 1;
                result?;
            }
            Node::Break => return Err(Flow::Break),
            Node::Continue => return Err(Flow::Continue),
        }
        Ok(())
    }

    fn range(
        &mut self,
        pipe: &Pipeline,
        body: &[Node],
        otherwise: &[Node],
        dot: &Value,
    ) -> Result<(), Flow> {
        let mark = self.vars.len();
        let plain = Pipeline {
            declare: Vec::new(),
            assign: false,
            commands: pipe.commands.clone(),
        };
        let value = self.pipeline(&plain, dot)?;
        let items: Vec<(Value, Value)> = match value {
            Value::Samples(samples) => samples
                .into_iter()
                .enumerate()
                .map(|(i, s)| (Value::Int(i as i64), Value::Sample(s)))
                .collect(),
            Value::Labels(map) => map
                .into_iter()
                .map(|(k, v)| (Value::Str(k), Value::Str(v)))
                .collect(),
            Value::Struct(map) => map.into_iter().map(|(k, v)| (Value::Str(k), v)).collect(),
            Value::Nil => Vec::new(),
            other => return Err(format!("range can't iterate over {}", print(&other)).into()),
        };
        if items.is_empty() {
            return self.scoped(otherwise, dot);
        }
        for (key, item) in items {
            match pipe.declare.as_slice() {
                [element] => self.bind(element, item.clone(), pipe.assign)?,
                [index, element] => {
                    self.bind(index, key, pipe.assign)?;
                    self.bind(element, item.clone(), pipe.assign)?;
                }
                _ => {}
            }
            match self.scoped(body, &item) {
                Ok(()) | Err(Flow::Continue) => {}
                Err(Flow::Break) => break,
                Err(error) => {
                    self.vars.truncate(mark);
                    return Err(error);
                }
            }
            if !pipe.declare.is_empty() && !pipe.assign {
                self.vars.truncate(mark);
            }
        }
        self.vars.truncate(mark);
        Ok(())
    }

    fn bind(&mut self, name: &str, value: Value, assign: bool) -> Result<(), String> {
        if assign {
            let slot = self
                .vars
                .iter_mut()
                .rev()
                .find(|(n, _)| n == name)
                .ok_or_else(|| format!("undefined variable: {name}"))?;
            slot.1 = value;
        } else {
            self.vars.push((name.to_owned(), value));
        }
        Ok(())
    }

    fn variable(&self, name: &str) -> Result<Value, String> {
        self.vars
            .iter()
            .rev()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
            .ok_or_else(|| format!("undefined variable: {name}"))
    }

    fn pipeline(&mut self, pipe: &Pipeline, dot: &Value) -> Result<Value, String> {
        let mut value: Option<Value> = None;
        for command in &pipe.commands {
            value = Some(self.command(command, dot, value)?);
        }
        let value = value.unwrap_or(Value::Nil);
        match pipe.declare.as_slice() {
            [name] => self.bind(name, value.clone(), pipe.assign)?,
            [] => {}
            _ => return Err("too many declarations in pipeline".into()),
        }
        Ok(value)
    }

    /// One command; `piped` is the previous command's result, passed as the last argument.
    fn command(
        &mut self,
        args: &[Arg],
        dot: &Value,
        piped: Option<Value>,
    ) -> Result<Value, String> {
        let Some(first) = args.first() else {
            return Err("empty command".into());
        };
        if let Arg::Ident(name) = first
            && !matches!(name.as_str(), "true" | "false" | "nil")
        {
            // `and` and `or` stop at the first argument that decides them, as Go's do.
            if name == "and" || name == "or" {
                let mut last = Value::Nil;
                let count = args.len() - 1 + usize::from(piped.is_some());
                let mut piped = piped;
                for i in 0..count {
                    // Each argument is evaluated only if the ones before did not decide.
                    let v = match args.get(i + 1) {
                        Some(arg) => self.operand(arg, dot)?,
                        None => piped.take().unwrap_or(Value::Nil),
                    };
                    let decided = if name == "and" { !truth(&v) } else { truth(&v) };
                    last = v;
                    if decided {
                        break;
                    }
                }
                return Ok(last);
            }
            let mut values = Vec::with_capacity(args.len());
            for arg in &args[1..] {
                values.push(self.operand(arg, dot)?);
            }
            values.extend(piped);
            return self.call(name, values);
        }
        if args.len() > 1 || piped.is_some() {
            return Err(format!("can't give argument to non-function {:?}", first));
        }
        self.operand(first, dot)
    }

    fn operand(&mut self, arg: &Arg, dot: &Value) -> Result<Value, String> {
        match arg {
            Arg::Dot => Ok(dot.clone()),
            Arg::Field(path) => fields(dot.clone(), path),
            Arg::Var(name, path) => fields(self.variable(name)?, path),
            Arg::Str(s) => Ok(Value::Str(s.clone())),
            Arg::Num(n) => number(n),
            Arg::Ident(word) => match word.as_str() {
                "true" => Ok(Value::Bool(true)),
                "false" => Ok(Value::Bool(false)),
                "nil" => Ok(Value::Nil),
                name => self.call(name, Vec::new()),
            },
            Arg::Sub(pipe, path) => {
                let value = self.pipeline(pipe, dot)?;
                fields(value, path)
            }
        }
    }

    fn call(&mut self, name: &str, args: Vec<Value>) -> Result<Value, String> {
        let arity = |n: usize| {
            if args.len() == n {
                Ok(())
            } else {
                Err(format!(
                    "wrong number of args for {name}: want {n} got {}",
                    args.len()
                ))
            }
        };
        let text_arg = |i: usize| -> Result<String, String> {
            match &args[i] {
                Value::Str(s) => Ok(s.clone()),
                other => Err(format!(
                    "wrong type for value; expected string; got {}",
                    go_type(other)
                )),
            }
        };
        Ok(match name {
            "humanize" | "humanize1024" | "humanizeDuration" | "humanizePercentage"
            | "humanizeTimestamp" => {
                arity(1)?;
                let v = to_float(&args[0])?;
                Value::Str(humanize(name, v))
            }
            "toTime" => {
                arity(1)?;
                Value::Str(go_time(to_float(&args[0])?))
            }
            "parseDuration" => {
                arity(1)?;
                let ms = crate::rulefmt::parse_duration(&text_arg(0)?)?;
                Value::Float(ms as f64 / 1000.0)
            }
            "query" => {
                arity(1)?;
                Value::Samples((self.query)(&text_arg(0)?)?)
            }
            "first" => {
                arity(1)?;
                match &args[0] {
                    Value::Samples(s) => Value::Sample(
                        s.first()
                            .cloned()
                            .ok_or("first() called on vector with no elements")?,
                    ),
                    other => return Err(format!("first() of {}", go_type(other))),
                }
            }
            "label" => {
                arity(2)?;
                let label = text_arg(0)?;
                match &args[1] {
                    Value::Sample(s) => {
                        Value::Str(s.labels.get(&label).cloned().unwrap_or_default())
                    }
                    other => return Err(format!("label() of {}", go_type(other))),
                }
            }
            "value" | "strvalue" => {
                arity(1)?;
                match &args[0] {
                    Value::Sample(s) if name == "value" => Value::Float(s.value),
                    Value::Sample(s) => {
                        Value::Str(s.labels.get("__value__").cloned().unwrap_or_default())
                    }
                    other => return Err(format!("{name}() of {}", go_type(other))),
                }
            }
            "sortByLabel" => {
                arity(2)?;
                let label = text_arg(0)?;
                let Value::Samples(mut samples) = args[1].clone() else {
                    return Err(format!("sortByLabel() of {}", go_type(&args[1])));
                };
                samples.sort_by(|a, b| a.labels.get(&label).cmp(&b.labels.get(&label)));
                Value::Samples(samples)
            }
            "args" => Value::Struct(
                args.iter()
                    .enumerate()
                    .map(|(i, v)| (format!("arg{i}"), v.clone()))
                    .collect(),
            ),
            "reReplaceAll" => {
                arity(3)?;
                let re = regex::Regex::new(&text_arg(0)?).map_err(|e| e.to_string())?;
                Value::Str(
                    re.replace_all(&text_arg(2)?, text_arg(1)?.as_str())
                        .into_owned(),
                )
            }
            "match" => {
                arity(2)?;
                let re = regex::Regex::new(&text_arg(0)?).map_err(|e| e.to_string())?;
                Value::Bool(re.is_match(&text_arg(1)?))
            }
            "title" => {
                arity(1)?;
                Value::Str(title(&text_arg(0)?))
            }
            "toUpper" => {
                arity(1)?;
                Value::Str(text_arg(0)?.to_uppercase())
            }
            "toLower" => {
                arity(1)?;
                Value::Str(text_arg(0)?.to_lowercase())
            }
            "safeHtml" => {
                arity(1)?;
                Value::Str(text_arg(0)?)
            }
            "graphLink" | "tableLink" => {
                arity(1)?;
                let tab = if name == "graphLink" { 0 } else { 1 };
                Value::Str(format!(
                    "/graph?g0.expr={}&g0.tab={tab}",
                    query_escape(&text_arg(0)?)
                ))
            }
            "externalURL" => Value::Str(self.external_url.to_owned()),
            "pathPrefix" => Value::Str(url_path(self.external_url)),
            "stripPort" => {
                arity(1)?;
                Value::Str(strip_port(&text_arg(0)?))
            }
            "stripDomain" => {
                arity(1)?;
                Value::Str(strip_domain(&text_arg(0)?))
            }
            "not" => {
                arity(1)?;
                Value::Bool(!truth(&args[0]))
            }
            "len" => {
                arity(1)?;
                Value::Int(match &args[0] {
                    Value::Str(s) => s.len(),
                    Value::Labels(m) => m.len(),
                    Value::Struct(m) => m.len(),
                    Value::Samples(s) => s.len(),
                    other => return Err(format!("len of type {}", go_type(other))),
                } as i64)
            }
            "index" => {
                let Some((first, keys)) = args.split_first() else {
                    return Err("wrong number of args for index".into());
                };
                let mut value = first.clone();
                for key in keys {
                    value = index(value, key)?;
                }
                value
            }
            "print" | "println" | "printf" => {
                let text = match name {
                    "printf" => {
                        let Some((format, rest)) = args.split_first() else {
                            return Err("wrong number of args for printf".into());
                        };
                        let Value::Str(format) = format else {
                            return Err("printf's format is not a string".into());
                        };
                        sprintf(format, rest)
                    }
                    "println" => {
                        let parts: Vec<String> = args.iter().map(print).collect();
                        parts.join(" ") + "\n"
                    }
                    _ => go_sprint(&args),
                };
                Value::Str(text)
            }
            "html" | "js" | "urlquery" => {
                let text = go_sprint(&args);
                Value::Str(match name {
                    "html" => html_escape(&text),
                    "js" => js_escape(&text),
                    _ => query_escape(&text),
                })
            }
            "eq" => {
                let Some((first, rest)) = args.split_first() else {
                    return Err("missing argument for comparison".into());
                };
                if rest.is_empty() {
                    return Err("missing argument for comparison".into());
                }
                let mut equal = false;
                for other in rest {
                    if compare(first, other)? == std::cmp::Ordering::Equal {
                        equal = true;
                        break;
                    }
                }
                Value::Bool(equal)
            }
            "ne" | "lt" | "le" | "gt" | "ge" => {
                arity(2)?;
                let order = compare(&args[0], &args[1])?;
                if name != "ne"
                    && !matches!(args[0], Value::Int(_) | Value::Float(_) | Value::Str(_))
                {
                    return Err("invalid type for comparison".into());
                }
                use std::cmp::Ordering::*;
                Value::Bool(match name {
                    "ne" => order != Equal,
                    "lt" => order == Less,
                    "le" => order != Greater,
                    "gt" => order == Greater,
                    _ => order != Less,
                })
            }
            "slice" | "call" => return Err(format!("{name} is not supported in alert templates")),
            other => return Err(format!("function {other:?} not defined")),
        })
    }
}

fn fields(mut value: Value, path: &[String]) -> Result<Value, String> {
    for name in path {
        value = match value {
            // Prometheus expands with `missingkey=zero`: a missing label is "".
            Value::Labels(map) => Value::Str(map.get(name).cloned().unwrap_or_default()),
            Value::Struct(map) => map
                .get(name)
                .cloned()
                .ok_or_else(|| format!("can't evaluate field {name}"))?,
            Value::Sample(sample) => match name.as_str() {
                "Labels" => Value::Labels(sample.labels),
                "Value" => Value::Float(sample.value),
                _ => {
                    return Err(format!(
                        "can't evaluate field {name} in type *template.sample"
                    ));
                }
            },
            Value::Nil => {
                return Err(format!("nil pointer evaluating interface {{}}.{name}"));
            }
            other => {
                return Err(format!(
                    "can't evaluate field {name} in type {}",
                    go_type(&other)
                ));
            }
        };
    }
    Ok(value)
}

fn index(value: Value, key: &Value) -> Result<Value, String> {
    match (value, key) {
        (Value::Labels(map), Value::Str(k)) => {
            Ok(Value::Str(map.get(k).cloned().unwrap_or_default()))
        }
        (Value::Struct(map), Value::Str(k)) => Ok(map.get(k).cloned().unwrap_or(Value::Nil)),
        (Value::Samples(list), Value::Int(i)) => usize::try_from(*i)
            .ok()
            .and_then(|i| list.get(i).cloned())
            .map(Value::Sample)
            .ok_or_else(|| format!("error calling index: index out of range: {i}")),
        (value, key) => Err(format!(
            "error calling index: cannot index {} with {}",
            go_type(&value),
            go_type(key)
        )),
    }
}

fn number(text: &str) -> Result<Value, String> {
    let clean = text.replace('_', "");
    let (sign, digits) = match clean.strip_prefix('-') {
        Some(rest) => (-1i64, rest.to_owned()),
        None => (1, clean.trim_start_matches('+').to_owned()),
    };
    let lower = digits.to_ascii_lowercase();
    let radix = [("0x", 16), ("0o", 8), ("0b", 2)]
        .into_iter()
        .find(|(p, _)| lower.starts_with(p));
    if let Some((prefix, radix)) = radix {
        return i64::from_str_radix(&lower[prefix.len()..], radix)
            .map(|n| Value::Int(sign * n))
            .map_err(|_| format!("bad number syntax: {text:?}"));
    }
    if let Ok(n) = digits.parse::<i64>() {
        return Ok(Value::Int(sign * n));
    }
    clean
        .parse::<f64>()
        .map(Value::Float)
        .map_err(|_| format!("bad number syntax: {text:?}"))
}

fn truth(value: &Value) -> bool {
    match value {
        Value::Nil => false,
        Value::Bool(b) => *b,
        Value::Int(n) => *n != 0,
        Value::Float(f) => *f != 0.0,
        Value::Str(s) => !s.is_empty(),
        Value::Labels(m) => !m.is_empty(),
        Value::Struct(m) => !m.is_empty(),
        Value::Samples(s) => !s.is_empty(),
        Value::Sample(_) => true,
    }
}

fn go_type(value: &Value) -> &'static str {
    match value {
        Value::Nil => "nil",
        Value::Bool(_) => "bool",
        Value::Int(_) => "int",
        Value::Float(_) => "float64",
        Value::Str(_) => "string",
        Value::Labels(_) => "map[string]string",
        Value::Struct(_) => "struct",
        Value::Samples(_) => "template.queryResult",
        Value::Sample(_) => "*template.sample",
    }
}

/// Go's `basicKind` comparison: both sides the same kind, or an error.
fn compare(a: &Value, b: &Value) -> Result<std::cmp::Ordering, String> {
    use std::cmp::Ordering;
    match (a, b) {
        (Value::Int(x), Value::Int(y)) => Ok(x.cmp(y)),
        (Value::Float(x), Value::Float(y)) => Ok(x.partial_cmp(y).unwrap_or(Ordering::Less)),
        (Value::Str(x), Value::Str(y)) => Ok(x.cmp(y)),
        (Value::Bool(x), Value::Bool(y)) => Ok(x.cmp(y)),
        (Value::Nil, Value::Nil) => Ok(Ordering::Equal),
        _ => Err("incompatible types for comparison".into()),
    }
}

/// Prometheus's `convertToFloat`.
fn to_float(value: &Value) -> Result<f64, String> {
    match value {
        Value::Float(f) => Ok(*f),
        Value::Int(n) => Ok(*n as f64),
        Value::Str(s) => s
            .parse()
            .map_err(|_| format!("strconv.ParseFloat: parsing {s:?}: invalid syntax")),
        other => Err(format!("can't convert {} to float", go_type(other))),
    }
}

/// How Go's `{{ }}` prints a value (`fmt.Print`).
fn print(value: &Value) -> String {
    match value {
        Value::Nil => "<nil>".into(),
        Value::Bool(b) => b.to_string(),
        Value::Int(n) => n.to_string(),
        Value::Float(f) => format_g(*f, None),
        Value::Str(s) => s.clone(),
        Value::Labels(m) => {
            let parts: Vec<String> = m.iter().map(|(k, v)| format!("{k}:{v}")).collect();
            format!("map[{}]", parts.join(" "))
        }
        Value::Struct(m) => {
            let parts: Vec<String> = m.values().map(print).collect();
            format!("{{{}}}", parts.join(" "))
        }
        Value::Samples(s) => {
            let parts: Vec<String> = s.iter().map(|s| print(&Value::Sample(s.clone()))).collect();
            format!("[{}]", parts.join(" "))
        }
        Value::Sample(s) => format!(
            "{{{} {}}}",
            print(&Value::Labels(s.labels.clone())),
            format_g(s.value, None)
        ),
    }
}

/// Go's `fmt.Sprint`: spaces only between operands that are not strings.
fn go_sprint(args: &[Value]) -> String {
    let mut out = String::new();
    for (i, arg) in args.iter().enumerate() {
        let is_str = |v: &Value| matches!(v, Value::Str(_));
        if i > 0 && !is_str(arg) && !is_str(&args[i - 1]) {
            out.push(' ');
        }
        out.push_str(&print(arg));
    }
    out
}

/// Go's `%g`: `precision` significant digits, or the fewest that round-trip (`%v`), in
/// exponent form below 1e-4 and from 10^precision (10^6 for the shortest form).
fn format_g(v: f64, precision: Option<usize>) -> String {
    if v.is_nan() {
        return "NaN".into();
    }
    if v.is_infinite() {
        return if v > 0.0 { "+Inf" } else { "-Inf" }.into();
    }
    let sci = match precision {
        Some(p) => format!("{:.*e}", p.max(1) - 1, v),
        None => format!("{v:e}"),
    };
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let negative = mantissa.starts_with('-');
    let digits: String = mantissa.chars().filter(char::is_ascii_digit).collect();
    let threshold = match precision {
        Some(p) => p.max(1) as i32,
        None => 6,
    };
    let mut out = String::new();
    if negative {
        out.push('-');
    }
    let digits = match precision {
        Some(_) => digits.trim_end_matches('0').to_owned(),
        None => digits,
    };
    let digits = if digits.is_empty() {
        "0".to_owned()
    } else {
        digits
    };
    if exp < -4 || exp >= threshold {
        out.push_str(&digits[..1]);
        if digits.len() > 1 {
            out.push('.');
            out.push_str(&digits[1..]);
        }
        let _ = write!(out, "e{}{:02}", if exp < 0 { '-' } else { '+' }, exp.abs());
    } else if exp < 0 {
        out.push_str("0.");
        out.push_str(&"0".repeat((-exp - 1) as usize));
        out.push_str(&digits);
    } else {
        let int_len = exp as usize + 1;
        if digits.len() <= int_len {
            out.push_str(&digits);
            out.push_str(&"0".repeat(int_len - digits.len()));
        } else {
            out.push_str(&digits[..int_len]);
            out.push('.');
            out.push_str(&digits[int_len..]);
        }
    }
    out
}

/// Prometheus's `humanize*` template functions.
fn humanize(name: &str, v: f64) -> String {
    let g4 = |v: f64| format_g(v, Some(4));
    match name {
        "humanize" => {
            if v == 0.0 || !v.is_finite() {
                return g4(v);
            }
            let mut v = v;
            let mut prefix = "";
            if v.abs() >= 1.0 {
                for p in ["k", "M", "G", "T", "P", "E", "Z", "Y"] {
                    if v.abs() < 1000.0 {
                        break;
                    }
                    prefix = p;
                    v /= 1000.0;
                }
            } else {
                for p in ["m", "u", "n", "p", "f", "a", "z", "y"] {
                    if v.abs() >= 1.0 {
                        break;
                    }
                    prefix = p;
                    v *= 1000.0;
                }
            }
            format!("{}{prefix}", g4(v))
        }
        "humanize1024" => {
            if v.abs() <= 1.0 || !v.is_finite() {
                return g4(v);
            }
            let mut v = v;
            let mut prefix = "";
            for p in ["ki", "Mi", "Gi", "Ti", "Pi", "Ei", "Zi", "Yi"] {
                if v.abs() < 1024.0 {
                    break;
                }
                prefix = p;
                v /= 1024.0;
            }
            format!("{}{prefix}", g4(v))
        }
        "humanizeDuration" => {
            if v.is_nan() || v.is_infinite() {
                return g4(v);
            }
            if v == 0.0 {
                return "0s".into();
            }
            if v.abs() >= 1.0 {
                let sign = if v < 0.0 { "-" } else { "" };
                let v = v.abs();
                let whole = v as i64;
                let (seconds, minutes) = (whole % 60, (whole / 60) % 60);
                let (hours, days) = ((whole / 3600) % 24, whole / 86_400);
                if days != 0 {
                    return format!("{sign}{days}d {hours}h {minutes}m {seconds}s");
                }
                if hours != 0 {
                    return format!("{sign}{hours}h {minutes}m {seconds}s");
                }
                if minutes != 0 {
                    return format!("{sign}{minutes}m {seconds}s");
                }
                return format!("{sign}{}s", g4(v));
            }
            let mut v = v;
            let mut prefix = "";
            for p in ["m", "u", "n", "p", "f", "a", "z", "y"] {
                if v.abs() >= 1.0 {
                    break;
                }
                prefix = p;
                v *= 1000.0;
            }
            format!("{}{prefix}s", g4(v))
        }
        "humanizePercentage" => format!("{}%", g4(v * 100.0)),
        _ => {
            if v.is_nan() || v.is_infinite() {
                return g4(v);
            }
            go_time(v)
        }
    }
}

/// A Unix time in seconds as Prometheus's `toTime` makes it (millisecond precision, via
/// `model.Time`) and Go's `time.Time.String()` prints it in UTC.
fn go_time(seconds: f64) -> String {
    let ms = ((seconds * 1e9) as i64) / 1_000_000;
    let millis = ms.rem_euclid(1000);
    match chrono::DateTime::from_timestamp(ms.div_euclid(1000), (millis * 1_000_000) as u32) {
        Some(t) => {
            let base = t.format("%Y-%m-%d %H:%M:%S").to_string();
            let fraction = if millis == 0 {
                String::new()
            } else {
                format!(".{millis:03}").trim_end_matches('0').to_owned()
            };
            format!("{base}{fraction} +0000 UTC")
        }
        None => format!("{seconds}"),
    }
}

/// Go's deprecated `strings.Title`: the first letter of each word upper-cased.
fn title(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut previous: Option<char> = None;
    for c in text.chars() {
        let starts_word = previous.is_none_or(|p| !(p.is_alphanumeric() || p == '_' || p == '\''));
        if starts_word {
            out.extend(c.to_uppercase());
        } else {
            out.push(c);
        }
        previous = Some(c);
    }
    out
}

/// Go's `url.QueryEscape`.
pub(crate) fn query_escape(text: &str) -> String {
    let mut out = String::new();
    for b in text.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            b' ' => out.push('+'),
            other => {
                let _ = write!(out, "%{other:02X}");
            }
        }
    }
    out
}

fn html_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('\'', "&#39;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&#34;")
        .replace('\0', "\u{FFFD}")
}

fn js_escape(text: &str) -> String {
    let mut out = String::new();
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\'' => out.push_str("\\'"),
            '"' => out.push_str("\\\""),
            '<' => out.push_str("\\u003C"),
            '>' => out.push_str("\\u003E"),
            '&' => out.push_str("\\u0026"),
            '=' => out.push_str("\\u003D"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04X}", c as u32);
            }
            c => out.push(c),
        }
    }
    out
}

fn url_path(url: &str) -> String {
    let after_scheme = url.split_once("://").map_or(url, |(_, rest)| rest);
    match after_scheme.find('/') {
        Some(i) => after_scheme[i..]
            .split(['?', '#'])
            .next()
            .unwrap_or("")
            .to_owned(),
        None => String::new(),
    }
}

/// Go's `net.SplitHostPort` host, or the text unchanged when it has no port.
fn strip_port(hostport: &str) -> String {
    if let Some(rest) = hostport.strip_prefix('[')
        && let Some((host, port)) = rest.split_once("]:")
        && !port.contains(':')
    {
        return host.to_owned();
    }
    match hostport.rsplit_once(':') {
        Some((host, _)) if !host.contains(':') => host.to_owned(),
        _ => hostport.to_owned(),
    }
}

/// Prometheus's `stripDomain`: the first label of a host name, keeping any port; IP
/// addresses unchanged.
fn strip_domain(hostport: &str) -> String {
    let (host, port) = match hostport.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') && !h.is_empty() => (h, Some(p)),
        _ => (hostport, None),
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.parse::<std::net::IpAddr>().is_ok() {
        return hostport.to_owned();
    }
    let short = host.split('.').next().unwrap_or(host);
    match port {
        Some(p) => format!("{short}:{p}"),
        None => short.to_owned(),
    }
}

/// Go's `fmt` refuses widths and precisions above this (`%!(BADWIDTH)`), as must we: a
/// template's `%9999999999d` would otherwise ask for gigabytes.
const GO_FMT_LIMIT: usize = 1_000_000;

/// Go's `fmt.Sprintf` for the verbs rule templates use (`%s %v %d %f %g %e %q %x %t %%`,
/// with flags, width and precision).
fn sprintf(format: &str, args: &[Value]) -> String {
    let mut out = String::new();
    let mut next = 0;
    let mut chars = format.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let mut flags = String::new();
        while let Some(&f) = chars.peek() {
            if "+-# 0".contains(f) {
                flags.push(f);
                chars.next();
            } else {
                break;
            }
        }
        let mut width = String::new();
        while let Some(&d) = chars.peek().filter(|d| d.is_ascii_digit()) {
            width.push(d);
            chars.next();
        }
        let mut precision: Option<usize> = None;
        if chars.peek() == Some(&'.') {
            chars.next();
            let mut p = String::new();
            while let Some(&d) = chars.peek().filter(|d| d.is_ascii_digit()) {
                p.push(d);
                chars.next();
            }
            precision = match p.parse::<usize>() {
                Ok(n) if n <= GO_FMT_LIMIT => Some(n),
                Ok(_) => {
                    out.push_str("%!(BADPREC)");
                    None
                }
                Err(_) => Some(0),
            };
        }
        let Some(verb) = chars.next() else {
            out.push_str("%!(NOVERB)");
            break;
        };
        if verb == '%' {
            out.push('%');
            continue;
        }
        let Some(arg) = args.get(next) else {
            let _ = write!(out, "%!{verb}(MISSING)");
            continue;
        };
        next += 1;
        let plus = flags.contains('+');
        let body = match (verb, arg) {
            ('v' | 's', Value::Float(f)) if verb == 'v' => format_g(*f, precision),
            ('s' | 'v', other) => {
                let text = print(other);
                match precision {
                    Some(p) => text.chars().take(p).collect(),
                    None => text,
                }
            }
            ('d', Value::Int(n)) => signed(n.to_string(), *n >= 0, plus),
            ('f' | 'F', Value::Float(f)) => {
                signed(format!("{:.*}", precision.unwrap_or(6), f), *f >= 0.0, plus)
            }
            ('f' | 'F', Value::Int(_)) | ('d', Value::Float(_)) => {
                format!("%!{verb}({}={})", go_type(arg), print(arg))
            }
            ('g' | 'G', Value::Float(f)) => signed(format_g(*f, precision), *f >= 0.0, plus),
            ('e' | 'E', Value::Float(f)) => {
                let text = go_exp(*f, Some(precision.unwrap_or(6)));
                let text = if verb == 'E' {
                    text.to_uppercase()
                } else {
                    text
                };
                signed(text, *f >= 0.0, plus)
            }
            ('q', Value::Str(s)) => format!("{s:?}"),
            ('x', Value::Int(n)) => format!("{n:x}"),
            ('X', Value::Int(n)) => format!("{n:X}"),
            ('x', Value::Str(s)) => s.bytes().map(|b| format!("{b:02x}")).collect(),
            ('t', Value::Bool(b)) => b.to_string(),
            (verb, other) => format!("%!{verb}({}={})", go_type(other), print(other)),
        };
        let width: usize = match width.parse::<usize>() {
            Ok(n) if n <= GO_FMT_LIMIT => n,
            Ok(_) => {
                out.push_str("%!(BADWIDTH)");
                0
            }
            Err(_) => 0,
        };
        let len = body.chars().count();
        if len < width {
            let pad = width - len;
            if flags.contains('-') {
                out.push_str(&body);
                out.push_str(&" ".repeat(pad));
            } else if flags.contains('0') && matches!(verb, 'd' | 'f' | 'F' | 'g' | 'e') {
                let (sign, digits) = match body.strip_prefix(['-', '+']) {
                    Some(rest) => (&body[..1], rest),
                    None => ("", body.as_str()),
                };
                out.push_str(sign);
                out.push_str(&"0".repeat(pad));
                out.push_str(digits);
            } else {
                out.push_str(&" ".repeat(pad));
                out.push_str(&body);
            }
        } else {
            out.push_str(&body);
        }
    }
    if next < args.len() {
        let extra: Vec<String> = args[next..]
            .iter()
            .map(|a| format!("{}={}", go_type(a), print(a)))
            .collect();
        let _ = write!(out, "%!(EXTRA {})", extra.join(", "));
    }
    out
}

fn signed(text: String, non_negative: bool, plus: bool) -> String {
    if plus && non_negative {
        format!("+{text}")
    } else {
        text
    }
}

/// Go's `%e` with `precision` decimals, or the fewest that round-trip (`strconv`'s
/// `'e', -1`); the exponent has two digits at least.
pub(crate) fn go_exp(v: f64, precision: Option<usize>) -> String {
    if !v.is_finite() {
        return format_g(v, None);
    }
    let text = match precision {
        Some(p) => format!("{:.*e}", p, v),
        None => format!("{v:e}"),
    };
    let (mantissa, exp) = text.split_once('e').unwrap_or((&text, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    format!(
        "{mantissa}e{}{:02}",
        if exp < 0 { '-' } else { '+' },
        exp.abs()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn expand(text: &str, value: f64) -> String {
        let l = labels(&[("instance", "host:9100"), ("job", "node")]);
        let none = BTreeMap::new();
        let data = AlertData {
            labels: &l,
            external_labels: &none,
            external_url: "http://meerkat.example:9797/prefix",
            value,
        };
        let query = |q: &str| -> Result<Vec<QuerySample>, String> {
            match q {
                "up" => Ok(vec![
                    QuerySample {
                        labels: labels(&[("__name__", "up"), ("instance", "b")]),
                        value: 1.0,
                    },
                    QuerySample {
                        labels: labels(&[("__name__", "up"), ("instance", "a")]),
                        value: 0.0,
                    },
                ]),
                _ => Ok(Vec::new()),
            }
        };
        expand_alert(text, "Test", &data, &query)
    }

    #[test]
    fn labels_and_values_print_as_prometheus_prints_them() {
        assert_eq!(
            expand("Instance {{ $labels.instance }} down", 0.0),
            "Instance host:9100 down"
        );
        assert_eq!(expand("{{ $value }}", 1e6), "1e+06");
        assert_eq!(expand("{{ $value }}", 123456.0), "123456");
        assert_eq!(expand("{{ $value }}", 0.5), "0.5");
        assert_eq!(expand("{{ $value }}", 1.0), "1");
        assert_eq!(expand("{{ .Value }} {{ .Labels.job }}", 2.5), "2.5 node");
        assert_eq!(expand("[{{ $labels.missing }}]", 0.0), "[]");
        assert_eq!(expand("[{{ index $labels \"missing\" }}]", 0.0), "[]");
        assert_eq!(
            expand("{{ $externalURL }}", 0.0),
            "http://meerkat.example:9797/prefix"
        );
    }

    #[test]
    fn humanize_functions_match_prometheus() {
        assert_eq!(expand("{{ humanize 1234567.0 }}", 0.0), "1.235M");
        assert_eq!(expand("{{ $value | humanize }}", 0.0012), "1.2m");
        assert_eq!(expand("{{ humanize 0 }}", 0.0), "0");
        assert_eq!(expand("{{ humanize $value }}", f64::INFINITY), "+Inf");
        assert_eq!(expand("{{ humanize1024 1048576.0 }}", 0.0), "1Mi");
        assert_eq!(expand("{{ humanizeDuration 3725.0 }}", 0.0), "1h 2m 5s");
        assert_eq!(expand("{{ humanizeDuration 90061 }}", 0.0), "1d 1h 1m 1s");
        assert_eq!(expand("{{ humanizeDuration 1.5 }}", 0.0), "1.5s");
        assert_eq!(expand("{{ humanizeDuration 0.0015 }}", 0.0), "1.5ms");
        assert_eq!(expand("{{ humanizeDuration 0 }}", 0.0), "0s");
        assert_eq!(
            expand("{{ $value | humanizePercentage }}", 0.1234),
            "12.34%"
        );
        assert_eq!(
            expand("{{ humanizeTimestamp 1435065584.128 }}", 0.0),
            "2015-06-23 13:19:44.128 +0000 UTC"
        );
        assert_eq!(expand("{{ humanize \"2048\" }}", 0.0), "2.048k");
    }

    #[test]
    fn control_structures_and_queries_run() {
        assert_eq!(
            expand(
                "{{ if gt $value 0.5 }}high{{ else if eq $value 0.0 }}none{{ else }}low{{ end }}",
                0.7
            ),
            "high"
        );
        assert_eq!(
            expand(
                "{{ if gt $value 0.5 }}high{{ else if eq $value 0.0 }}none{{ else }}low{{ end }}",
                0.0
            ),
            "none"
        );
        assert_eq!(
            expand(
                "{{ range sortByLabel \"instance\" (query \"up\") }}{{ .Labels.instance }}={{ .Value }};{{ end }}",
                0.0
            ),
            "a=0;b=1;"
        );
        assert_eq!(
            expand(
                "{{ with query \"up\" }}{{ . | first | value }}{{ end }}",
                0.0
            ),
            "1"
        );
        assert_eq!(
            expand(
                "{{ with query \"nothing\" }}some{{ else }}none{{ end }}",
                0.0
            ),
            "none"
        );
        assert_eq!(
            expand(
                "{{- range $i, $s := query \"up\" -}} {{ $i }}:{{ label \"instance\" $s }} {{- end }}",
                0.0
            ),
            "0:b1:a"
        );
        assert_eq!(
            expand("{{ $x := 1 }}{{ $x = 2 }}{{ printf \"%d\" $x }}", 0.0),
            "2"
        );
        assert_eq!(
            expand(
                "{{ define \"t\" }}<{{ .job }}>{{ end }}{{ template \"t\" $labels }}",
                0.0
            ),
            "<node>"
        );
        assert_eq!(
            expand("{{ range query \"up\" }}x{{ break }}{{ end }}", 0.0),
            "x"
        );
    }

    #[test]
    fn printf_and_string_functions() {
        assert_eq!(expand("{{ printf \"%.2f\" $value }}", 1.23456), "1.23");
        assert_eq!(
            expand("{{ printf \"%s is %v\" $labels.job $value }}", 3.0),
            "node is 3"
        );
        assert_eq!(
            expand("{{ printf \"%5.1f|%-4d|\" 2.25 7 }}", 0.0),
            "  2.2|7   |"
        );
        assert_eq!(expand("{{ printf \"%d\" $value }}", 1.0), "%!d(float64=1)");
        assert!(expand("{{ printf \"%9999999999d\" 1 }}", 0.0).starts_with("%!(BADWIDTH)"));
        assert!(expand("{{ printf \"%.9999999999f\" 1.0 }}", 0.0).starts_with("%!(BADPREC)"));
        assert_eq!(expand("{{ $labels.instance | stripPort }}", 0.0), "host");
        assert_eq!(
            expand("{{ stripDomain \"node1.example.com:9100\" }}", 0.0),
            "node1:9100"
        );
        assert_eq!(
            expand(
                "{{ reReplaceAll \"(.*):.*\" \"$1\" $labels.instance }}",
                0.0
            ),
            "host"
        );
        assert_eq!(
            expand("{{ toUpper \"ab\" }}{{ title \"hello world\" }}", 0.0),
            "ABHello World"
        );
        assert_eq!(
            expand("{{ graphLink \"up == 0\" }}", 0.0),
            "/graph?g0.expr=up+%3D%3D+0&g0.tab=0"
        );
        assert_eq!(expand("{{ pathPrefix }}", 0.0), "/prefix");
        assert_eq!(
            expand("{{ if match \"^host\" $labels.instance }}y{{ end }}", 0.0),
            "y"
        );
        assert_eq!(expand("{{ parseDuration \"1m30s\" }}", 0.0), "90");
        assert_eq!(expand("{{ (args 1 \"b\").arg1 }}", 0.0), "b");
    }

    #[test]
    fn errors_are_reported_in_the_text_as_prometheus_does() {
        let out = expand("{{ gt $value 1 }}", 2.0);
        assert!(out.starts_with("<error expanding template:"), "{out}");
        assert!(out.contains("incompatible types for comparison"), "{out}");
        let out = expand("{{ query \"nothing\" | first }}", 0.0);
        assert!(
            out.contains("first() called on vector with no elements"),
            "{out}"
        );
        let out = expand("{{ nosuch }}", 0.0);
        assert!(out.contains("not defined"), "{out}");
    }

    #[test]
    fn templates_that_would_exhaust_the_stack_are_refused() {
        let recursive = "{{ define \"a\" }}{{ template \"a\" }}{{ end }}{{ template \"a\" }}";
        assert!(expand(recursive, 0.0).contains("exceeded maximum template depth"));
        let deep = format!("{}1{}", "{{ if 1 }}".repeat(5000), "{{ end }}".repeat(5000));
        assert!(expand(&deep, 0.0).contains("nested more than"));
        let parens = format!("{{{{ {}1{} }}}}", "(".repeat(5000), ")".repeat(5000));
        assert!(expand(&parens, 0.0).starts_with("<error expanding template"));
        // Short-circuit: the second argument is not evaluated.
        assert_eq!(
            expand("{{ and false (query \"x\" | first) }}", 0.0),
            "false"
        );
    }

    #[test]
    fn go_float_formatting() {
        assert_eq!(format_g(1234.5, Some(4)), "1234");
        assert_eq!(format_g(12345.0, Some(4)), "1.234e+04");
        assert_eq!(format_g(0.00001234, None), "1.234e-05");
        assert_eq!(format_g(1e21, None), "1e+21");
        assert_eq!(format_g(-2.5, None), "-2.5");
        assert_eq!(format_g(f64::INFINITY, None), "+Inf");
        assert_eq!(format_g(0.0, None), "0");
        assert_eq!(format_g(100.0, Some(4)), "100");
    }
}
