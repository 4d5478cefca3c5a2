//! Label matchers as ClickHouse conditions on the `series` table, where ClickHouse answers
//! them exactly as Prometheus does.
//!
//! A label's value is `label_values[indexOf(label_names, name)]`: `indexOf` is 0 for an
//! absent label and element 0 of a ClickHouse array is the type's default, the empty
//! string, which is exactly Prometheus's rule that an absent label matches as `""`.
//!
//! `=` and `!=` are byte equality on both sides. Regexes differ between engines
//! (Prometheus and Rust's `regex` are Unicode-aware: `\d`, `\w`, `\s`, `\b`, case folding;
//! ClickHouse's RE2 is ASCII for those, and its syntax differs in corners such as class
//! set operations), so a regex is never sent as written: it is parsed with `regex-syntax`
//! (Rust's own parser, so the meaning is Rust's), and the parsed form is printed back in a
//! small RE2 subset where every class is an explicit list of code point ranges and every
//! non-alphanumeric character an `\x{..}` escape; ClickHouse matches UTF-8 code points
//! (checked on 18.16). Constructs without an exact RE2 equivalent (Unicode word
//! boundaries, byte classes, repetition counts above RE2's limit, very large classes) are
//! not pushed down; the store then filters those series itself. Every series ClickHouse
//! returns is checked again against all matchers in Rust, so a pushed-down condition only
//! ever narrows what is read.

use std::fmt::Write;

use regex_syntax::hir::{Class, Hir, HirKind, Look};

use crate::{MatchOp, Matcher};

/// A SQL fragment with `?` placeholders and the strings bound to them, in order.
#[derive(Clone, Debug, Default, PartialEq)]
pub(super) struct Condition {
    pub sql: String,
    pub binds: Vec<String>,
}

/// The longest RE2 pattern pushed down (ClickHouse parses at most 256 KiB of query).
const MAX_PATTERN_BYTES: usize = 16 * 1024;

/// RE2's largest repetition count.
const MAX_REPEAT: u32 = 1000;

/// The condition for `matcher`, or `None` when ClickHouse cannot evaluate it exactly.
pub(super) fn condition(matcher: &Matcher) -> Option<Condition> {
    let (value_sql, mut binds) = if matcher.name == "__name__" {
        ("metric_name".to_owned(), Vec::new())
    } else {
        (
            "label_values[indexOf(label_names, ?)]".to_owned(),
            vec![matcher.name.clone()],
        )
    };
    let sql = match matcher.op {
        MatchOp::Equal => {
            binds.push(matcher.value.clone());
            format!("{value_sql} = ?")
        }
        MatchOp::NotEqual => {
            binds.push(matcher.value.clone());
            format!("{value_sql} != ?")
        }
        MatchOp::Regex => {
            binds.push(re2_pattern(&matcher.value)?);
            format!("match({value_sql}, ?)")
        }
        MatchOp::NotRegex => {
            binds.push(re2_pattern(&matcher.value)?);
            format!("NOT match({value_sql}, ?)")
        }
    };
    Some(Condition { sql, binds })
}

/// The fully anchored RE2 pattern matching exactly what Prometheus's `^(?s:value)$`
/// matches, if there is one this module can write.
pub(super) fn re2_pattern(value: &str) -> Option<String> {
    let hir = regex_syntax::ParserBuilder::new()
        .build()
        .parse(&format!("(?s:{value})"))
        .ok()?;
    let mut out = String::from(r"\A(?:");
    write_hir(&hir, &mut out)?;
    out.push_str(r")\z");
    (out.len() <= MAX_PATTERN_BYTES).then_some(out)
}

fn push_char(c: char, out: &mut String) {
    if c.is_ascii_alphanumeric() || c == '_' {
        out.push(c);
    } else {
        let _ = write!(out, "\\x{{{:X}}}", u32::from(c));
    }
}

fn write_hir(hir: &Hir, out: &mut String) -> Option<()> {
    if out.len() > MAX_PATTERN_BYTES {
        return None;
    }
    match hir.kind() {
        HirKind::Empty => {}
        HirKind::Literal(literal) => {
            for c in std::str::from_utf8(&literal.0).ok()?.chars() {
                push_char(c, out);
            }
        }
        HirKind::Class(Class::Unicode(class)) => {
            if class.ranges().is_empty() {
                // Matches nothing; RE2 has no syntax for an empty class.
                return None;
            }
            out.push('[');
            for range in class.iter() {
                push_char(range.start(), out);
                if range.end() != range.start() {
                    out.push('-');
                    push_char(range.end(), out);
                }
            }
            out.push(']');
        }
        HirKind::Class(Class::Bytes(_)) => return None,
        HirKind::Look(look) => out.push_str(match look {
            Look::Start => r"\A",
            Look::End => r"\z",
            Look::StartLF => "(?m:^)",
            Look::EndLF => "(?m:$)",
            // CRLF-aware anchors and Unicode word boundaries have no RE2 equivalent.
            _ => return None,
        }),
        HirKind::Repetition(repetition) => {
            if repetition.min > MAX_REPEAT || repetition.max.is_some_and(|m| m > MAX_REPEAT) {
                return None;
            }
            out.push_str("(?:");
            write_hir(&repetition.sub, out)?;
            out.push(')');
            let _ = match (repetition.min, repetition.max) {
                (0, None) => write!(out, "*"),
                (1, None) => write!(out, "+"),
                (0, Some(1)) => write!(out, "?"),
                (min, None) => write!(out, "{{{min},}}"),
                (min, Some(max)) if min == max => write!(out, "{{{min}}}"),
                (min, Some(max)) => write!(out, "{{{min},{max}}}"),
            };
            if !repetition.greedy {
                out.push('?');
            }
        }
        HirKind::Capture(capture) => {
            out.push_str("(?:");
            write_hir(&capture.sub, out)?;
            out.push(')');
        }
        HirKind::Concat(items) => {
            for item in items {
                write_hir(item, out)?;
            }
        }
        HirKind::Alternation(items) => {
            out.push_str("(?:");
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push('|');
                }
                write_hir(item, out)?;
            }
            out.push(')');
        }
    }
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regexes_are_rewritten_into_explicit_re2() {
        assert_eq!(
            re2_pattern("api|db").unwrap(),
            r"\A(?:(?:api|db))\z",
            "alternation is grouped, so the anchors bind to all of it"
        );
        assert_eq!(re2_pattern("a.b").unwrap(), r"\A(?:a[\x{0}-\x{10FFFF}]b)\z");
        assert_eq!(re2_pattern("(?i)ab").unwrap(), r"\A(?:[Aa][Bb])\z");
        assert_eq!(
            re2_pattern(r"x\.y{2,3}").unwrap(),
            r"\A(?:x\x{2E}(?:y){2,3})\z"
        );
        assert_eq!(re2_pattern("").unwrap(), r"\A(?:)\z");
        // Unicode word boundaries and huge repetitions are left to Rust.
        assert!(re2_pattern(r"\bx").is_none());
        assert!(re2_pattern("a{1001}").is_none());
        assert!(re2_pattern("(").is_none());
    }

    #[test]
    fn conditions_read_absent_labels_as_empty() {
        let equal = condition(&Matcher::equal("job", "api")).unwrap();
        assert_eq!(equal.sql, "label_values[indexOf(label_names, ?)] = ?");
        assert_eq!(equal.binds, ["job", "api"]);
        let name = condition(&Matcher::new("__name__", MatchOp::NotEqual, "up").unwrap()).unwrap();
        assert_eq!(name.sql, "metric_name != ?");
        let regex = condition(&Matcher::new("job", MatchOp::NotRegex, "a.*").unwrap()).unwrap();
        assert!(regex.sql.starts_with("NOT match("));
        assert!(condition(&Matcher::new("job", MatchOp::Regex, r"\bapi").unwrap()).is_none());
    }
}
