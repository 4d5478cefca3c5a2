//! DataFusion filters as ClickHouse conditions, where ClickHouse 18.16 answers them exactly
//! as DataFusion would.
//!
//! Pushed down: comparisons (`= != < <= > >=`, `BETWEEN`) of a column with a literal,
//! `IN` lists of literals, `IS [NOT] NULL`, `LIKE` / `NOT LIKE` with a pattern without
//! backslashes, and `AND` / `OR` / `NOT` of those. A column may be wrapped in a cast that
//! keeps every value (a wider integer, another string type, another time zone of the same
//! unit), which is how DataFusion's type coercion often leaves it. Everything else (functions,
//! arithmetic, floats, `ILIKE`, `SIMILAR TO`, two columns compared) is left to DataFusion.
//!
//! **NULL.** SQL's three-valued logic is not ClickHouse 18.16's: there `NULL IN (...)` is 0,
//! not NULL, so `NULL NOT IN (...)` is 1, and `and`/`or` of Nullable arguments are not
//! ternary. So a filter is translated as two conditions that are never NULL: where it is
//! TRUE and where it is FALSE. `NOT` swaps them, `AND` and `OR` combine them by De Morgan,
//! and a nullable column is only ever compared behind `isNotNull(c) AND ...` (through
//! `assumeNotNull`), so ClickHouse never sees a Nullable value in a condition. `WHERE`
//! keeps the rows where the filter is TRUE, as SQL does.
//!
//! **Semantics checked on 18.16**: integer comparisons across types are by value (accurate
//! comparison, also of signed with unsigned); strings compare as bytes (DataFusion compares
//! UTF-8 bytes too); `LIKE`'s `%` and `_` match any code points, newlines included, as
//! Arrow's `LIKE` does, but its backslash escapes are not the same in corner cases, hence no
//! backslashes. Floats are never pushed: a decimal literal need not round-trip.

use std::fmt::Write;

use datafusion::arrow::datatypes::{DataType, TimeUnit};
use datafusion::logical_expr::expr::{Between, BinaryExpr, InList, Like};
use datafusion::logical_expr::{Expr, Operator};
use datafusion::scalar::ScalarValue;

use super::tables::TableDef;

/// The longest condition pushed down (ClickHouse parses at most 256 KiB of query).
const MAX_CONDITION_BYTES: usize = 16 * 1024;

/// The most values of an `IN` list pushed down.
const MAX_IN_LIST: usize = 1000;

/// The ClickHouse condition true exactly where `filter` is TRUE, or `None` when ClickHouse
/// cannot evaluate it exactly as DataFusion does.
pub(super) fn condition(table: &TableDef, filter: &Expr) -> Option<String> {
    let predicate = predicate(table, filter)?;
    (predicate.holds.len() <= MAX_CONDITION_BYTES).then_some(predicate.holds)
}

/// Where a boolean expression is TRUE and where it is FALSE, as conditions never NULL.
#[derive(Debug)]
struct Predicate {
    holds: String,
    fails: String,
}

impl Predicate {
    fn negate(self) -> Self {
        Self {
            holds: self.fails,
            fails: self.holds,
        }
    }
}

/// What literals a column compares with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Integer,
    Timestamp(TimeUnit),
    String,
}

/// A column as a filter reads it.
#[derive(Debug)]
struct ColumnRef<'a> {
    source: &'a str,
    kind: Kind,
    nullable: bool,
}

impl ColumnRef<'_> {
    /// `holds` and `fails` written over the column's value (`{}`), guarded against NULL.
    fn leaf(&self, holds: impl Fn(&str) -> String, fails: impl Fn(&str) -> String) -> Predicate {
        if self.nullable {
            let value = format!("assumeNotNull({})", self.source);
            let guard = |condition: String| format!("(isNotNull({}) AND {condition})", self.source);
            Predicate {
                holds: guard(holds(&value)),
                fails: guard(fails(&value)),
            }
        } else {
            Predicate {
                holds: holds(self.source),
                fails: fails(self.source),
            }
        }
    }
}

fn predicate(table: &TableDef, expr: &Expr) -> Option<Predicate> {
    match expr {
        Expr::BinaryExpr(BinaryExpr { left, op, right }) => match op {
            Operator::And | Operator::Or => {
                let a = predicate(table, left)?;
                let b = predicate(table, right)?;
                let (holds, fails) = if *op == Operator::And {
                    ("AND", "OR")
                } else {
                    ("OR", "AND")
                };
                Some(Predicate {
                    holds: format!("({} {holds} {})", a.holds, b.holds),
                    fails: format!("({} {fails} {})", a.fails, b.fails),
                })
            }
            _ => comparison(table, left, *op, right),
        },
        Expr::Not(inner) => predicate(table, inner).map(Predicate::negate),
        Expr::IsNull(inner) => {
            let column = column(table, inner)?;
            Some(Predicate {
                holds: format!("isNull({})", column.source),
                fails: format!("isNotNull({})", column.source),
            })
        }
        Expr::IsNotNull(inner) => {
            predicate(table, &Expr::IsNull(inner.clone())).map(Predicate::negate)
        }
        Expr::Between(Between {
            expr,
            negated,
            low,
            high,
        }) => {
            let column = column(table, expr)?;
            let low = literal(column.kind, low)?;
            let high = literal(column.kind, high)?;
            let between = column.leaf(
                |v| format!("({v} >= {low} AND {v} <= {high})"),
                |v| format!("({v} < {low} OR {v} > {high})"),
            );
            Some(if *negated { between.negate() } else { between })
        }
        Expr::InList(InList {
            expr,
            list,
            negated,
        }) => {
            if list.is_empty() || list.len() > MAX_IN_LIST {
                return None;
            }
            let column = column(table, expr)?;
            let values = list
                .iter()
                .map(|item| literal(column.kind, item))
                .collect::<Option<Vec<_>>>()?
                .join(", ");
            let within = column.leaf(
                |v| format!("{v} IN ({values})"),
                |v| format!("{v} NOT IN ({values})"),
            );
            Some(if *negated { within.negate() } else { within })
        }
        Expr::Like(Like {
            negated,
            expr,
            pattern,
            escape_char: None,
            case_insensitive: false,
        }) => {
            let column = column(table, expr)?;
            if column.kind != Kind::String {
                return None;
            }
            let pattern = string_literal(pattern)?;
            if pattern.contains('\\') {
                return None;
            }
            let pattern = quote(pattern);
            let like = column.leaf(
                |v| format!("{v} LIKE {pattern}"),
                |v| format!("{v} NOT LIKE {pattern}"),
            );
            Some(if *negated { like.negate() } else { like })
        }
        _ => None,
    }
}

/// `column op literal` or `literal op column`.
fn comparison(table: &TableDef, left: &Expr, op: Operator, right: &Expr) -> Option<Predicate> {
    let (column_expr, op, literal_expr) = match column(table, left) {
        Some(_) => (left, op, right),
        None => (right, swapped(op)?, left),
    };
    let column = column(table, column_expr)?;
    let value = literal(column.kind, literal_expr)?;
    let holds = sql_operator(op)?;
    let fails = sql_operator(negated(op)?)?;
    Some(column.leaf(
        |v| format!("{v} {holds} {value}"),
        |v| format!("{v} {fails} {value}"),
    ))
}

fn sql_operator(op: Operator) -> Option<&'static str> {
    Some(match op {
        Operator::Eq => "=",
        Operator::NotEq => "!=",
        Operator::Lt => "<",
        Operator::LtEq => "<=",
        Operator::Gt => ">",
        Operator::GtEq => ">=",
        _ => return None,
    })
}

/// `b op' a` for `a op b`.
fn swapped(op: Operator) -> Option<Operator> {
    Some(match op {
        Operator::Eq | Operator::NotEq => op,
        Operator::Lt => Operator::Gt,
        Operator::LtEq => Operator::GtEq,
        Operator::Gt => Operator::Lt,
        Operator::GtEq => Operator::LtEq,
        _ => return None,
    })
}

/// The comparison false exactly where `op` is true (values here are totally ordered: no
/// floats, no NULLs behind the guard).
fn negated(op: Operator) -> Option<Operator> {
    Some(match op {
        Operator::Eq => Operator::NotEq,
        Operator::NotEq => Operator::Eq,
        Operator::Lt => Operator::GtEq,
        Operator::LtEq => Operator::Gt,
        Operator::Gt => Operator::LtEq,
        Operator::GtEq => Operator::Lt,
        _ => return None,
    })
}

/// The filterable column `expr` reads, through casts that keep every value.
fn column<'a>(table: &'a TableDef, expr: &Expr) -> Option<ColumnRef<'a>> {
    typed_column(table, expr).map(|(column, _)| column)
}

/// The column `expr` reads, and the type `expr` yields.
fn typed_column<'a>(table: &'a TableDef, expr: &Expr) -> Option<(ColumnRef<'a>, DataType)> {
    match expr {
        Expr::Column(column) => {
            let (field, source) = table.column(&column.name)?;
            if !source.filterable {
                return None;
            }
            let kind = match field.data_type() {
                DataType::Int32 | DataType::UInt32 | DataType::Int64 | DataType::UInt64 => {
                    Kind::Integer
                }
                DataType::Timestamp(unit, _) => Kind::Timestamp(*unit),
                DataType::Utf8 => Kind::String,
                _ => return None,
            };
            let column = ColumnRef {
                source: &source.source,
                kind,
                nullable: field.is_nullable(),
            };
            Some((column, field.data_type().clone()))
        }
        Expr::Cast(cast) => {
            let (column, from) = typed_column(table, &cast.expr)?;
            let to = cast.field.data_type();
            lossless(column.kind, &from, to).then(|| (column, to.clone()))
        }
        _ => None,
    }
}

/// Whether a cast from `from` to `to` of a column of `kind` keeps every value and its order.
fn lossless(kind: Kind, from: &DataType, to: &DataType) -> bool {
    use DataType::{Int32, Int64, LargeUtf8, Timestamp, UInt32, UInt64, Utf8, Utf8View};
    match (kind, from, to) {
        (_, a, b) if a == b => true,
        (Kind::Integer, Int32, Int64) | (Kind::Integer, UInt32, Int64 | UInt64) => true,
        (Kind::String, Utf8 | LargeUtf8 | Utf8View, Utf8 | LargeUtf8 | Utf8View) => true,
        (Kind::Timestamp(unit), Timestamp(a, _), Timestamp(b, _)) => *a == unit && *b == unit,
        _ => false,
    }
}

/// A literal of `kind` as ClickHouse SQL.
fn literal(kind: Kind, expr: &Expr) -> Option<String> {
    let Expr::Literal(value, _) = expr else {
        return None;
    };
    match kind {
        Kind::Integer => integer(value).map(|v| v.to_string()),
        Kind::Timestamp(unit) => {
            let v = match (unit, value) {
                (TimeUnit::Second, ScalarValue::TimestampSecond(Some(v), _))
                | (TimeUnit::Millisecond, ScalarValue::TimestampMillisecond(Some(v), _))
                | (TimeUnit::Microsecond, ScalarValue::TimestampMicrosecond(Some(v), _))
                | (TimeUnit::Nanosecond, ScalarValue::TimestampNanosecond(Some(v), _)) => *v,
                _ => return None,
            };
            Some(v.to_string())
        }
        Kind::String => string_literal(expr).map(quote),
    }
}

fn integer(value: &ScalarValue) -> Option<i128> {
    Some(match value {
        ScalarValue::Int8(Some(v)) => i128::from(*v),
        ScalarValue::Int16(Some(v)) => i128::from(*v),
        ScalarValue::Int32(Some(v)) => i128::from(*v),
        ScalarValue::Int64(Some(v)) => i128::from(*v),
        ScalarValue::UInt8(Some(v)) => i128::from(*v),
        ScalarValue::UInt16(Some(v)) => i128::from(*v),
        ScalarValue::UInt32(Some(v)) => i128::from(*v),
        ScalarValue::UInt64(Some(v)) => i128::from(*v),
        _ => return None,
    })
}

fn string_literal(expr: &Expr) -> Option<&str> {
    match expr {
        Expr::Literal(
            ScalarValue::Utf8(Some(s))
            | ScalarValue::LargeUtf8(Some(s))
            | ScalarValue::Utf8View(Some(s)),
            _,
        ) => Some(s),
        _ => None,
    }
}

/// A ClickHouse string literal: backslash and quote escaped, control bytes as `\xHH`.
pub(super) fn quote(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    out.push('\'');
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\'' => out.push_str("\\'"),
            c if c.is_ascii_control() => {
                let _ = write!(out, "\\x{:02X}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('\'');
    out
}
