//! The series notation of Prometheus's test files (`load` blocks of PromQL engine tests,
//! `input_series` of `promtool test rules`): a selector naming the series and an expanding
//! value sequence such as `1 2 _ stale 0+10x5 5-1x3 _x2 7x2`.

use super::parse;
use super::value::LabelSet;
use promql_parser::parser::Expr;

/// One value of a series sequence.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Point {
    Value(f64),
    /// A staleness marker.
    Stale,
    /// No sample at this step.
    Blank,
}

fn number(text: &str) -> Result<f64, String> {
    match text {
        "Inf" | "+Inf" | "inf" | "+inf" => Ok(f64::INFINITY),
        "-Inf" | "-inf" => Ok(f64::NEG_INFINITY),
        "NaN" | "nan" => Ok(f64::NAN),
        other => other
            .parse()
            .map_err(|_| format!("bad number or duration syntax: {other:?}")),
    }
}

/// The value sequence of a series, by step.
pub fn values(text: &str) -> Result<Vec<Point>, String> {
    let mut out = Vec::new();
    for token in text.split_whitespace() {
        match token {
            "_" => out.push(Point::Blank),
            "stale" => out.push(Point::Stale),
            t if t.contains('x') => {
                let (head, times) = t.rsplit_once('x').unwrap_or((t, ""));
                let times: usize = times
                    .parse()
                    .map_err(|_| format!("invalid repetition in series values: {t:?}"))?;
                if head == "_" {
                    out.extend(std::iter::repeat_n(Point::Blank, times));
                    continue;
                }
                // `a+b` / `a-b`: the sign that is neither the first character nor after `e`.
                let split = head
                    .char_indices()
                    .skip(1)
                    .find(|(i, c)| (*c == '+' || *c == '-') && !head[..*i].ends_with(['e', 'E']))
                    .map(|(i, _)| i);
                let (start, step) = match split {
                    Some(i) => (number(&head[..i])?, number(&head[i..])?),
                    None => (number(head)?, 0.0),
                };
                let mut value = start;
                out.push(Point::Value(value));
                for _ in 0..times {
                    value += step;
                    out.push(Point::Value(value));
                }
            }
            t => out.push(Point::Value(number(t)?)),
        }
    }
    Ok(out)
}

/// The labels of a series description, `metric{a="b"}` or `{__name__="m", a="b"}`, sorted.
pub fn labels(text: &str) -> Result<LabelSet, String> {
    if text.trim() == "{}" {
        return Ok(Vec::new());
    }
    let expr = parse(text).map_err(|e| format!("series {text:?}: {e}"))?;
    let Expr::VectorSelector(vs) = expr else {
        return Err(format!("series {text:?} is not a series selector"));
    };
    let mut labels: LabelSet = vs
        .matchers
        .matchers
        .iter()
        .map(|m| (m.name.clone(), m.value.clone()))
        .collect();
    if let Some(name) = vs.name {
        labels.push(("__name__".into(), name));
    }
    labels.sort();
    Ok(labels)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequences_expand_as_prometheus_expands_them() {
        use Point::*;
        assert_eq!(
            values("1 _ stale 0+10x2 5-1x1 _x2 7x1").unwrap(),
            vec![
                Value(1.0),
                Blank,
                Stale,
                Value(0.0),
                Value(10.0),
                Value(20.0),
                Value(5.0),
                Value(4.0),
                Blank,
                Blank,
                Value(7.0),
                Value(7.0)
            ]
        );
        assert_eq!(values("-1+1e1x1").unwrap(), vec![Value(-1.0), Value(9.0)]);
        assert!(values("1+x").is_err());
        assert!(values("abc").is_err());
    }

    #[test]
    fn descriptions_name_their_labels() {
        assert_eq!(
            labels("up{job=\"a\"}").unwrap(),
            vec![("__name__".into(), "up".into()), ("job".into(), "a".into())]
        );
        assert_eq!(
            labels("requests{}").unwrap(),
            vec![("__name__".into(), "requests".into())]
        );
        assert!(labels("up{job=\"a\"").is_err());
    }
}
