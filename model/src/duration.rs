//! Durations in Prometheus's notation (`model.Duration`): `1h30m`, `15s`, `500ms`, `90d`.
//!
//! Config files, rule files and API parameters all spell durations this way, and users paste
//! them from Prometheus, so the grammar is Prometheus's exactly: units `y` (365 days), `w`,
//! `d`, `h`, `m`, `s`, `ms`, each at most once and in that order; `0` alone means zero.

const UNITS: [(&str, u64); 7] = [
    ("y", 365 * 86_400_000),
    ("w", 7 * 86_400_000),
    ("d", 86_400_000),
    ("h", 3_600_000),
    ("m", 60_000),
    ("s", 1_000),
    ("ms", 1),
];

/// Milliseconds of a Prometheus duration, `None` if `text` is not one.
pub fn parse_duration_ms(text: &str) -> Option<u64> {
    if text == "0" {
        return Some(0);
    }
    let mut rest = text;
    let mut total: u64 = 0;
    let mut next_unit = 0;
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit())?;
        if digits == 0 {
            return None;
        }
        let number: u64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let unit = &rest[..unit_len];
        let position = UNITS[next_unit..]
            .iter()
            .position(|(name, _)| *name == unit)?;
        let (_, unit_ms) = UNITS[next_unit + position];
        next_unit += position + 1;
        total = total.checked_add(number.checked_mul(unit_ms)?)?;
        rest = &rest[unit_len..];
    }
    (!text.is_empty()).then_some(total)
}

/// Prometheus's spelling of a duration: `1m`, `1h30m`, `90d`, `0s` (years and weeks only
/// when exact).
pub fn format_duration_ms(mut ms: u64) -> String {
    if ms == 0 {
        return "0s".to_owned();
    }
    let mut out = String::new();
    for (i, (name, unit_ms)) in UNITS.iter().enumerate() {
        let exact_only = i < 2;
        if exact_only && !ms.is_multiple_of(*unit_ms) {
            continue;
        }
        let count = ms / unit_ms;
        if count > 0 {
            out.push_str(&format!("{count}{name}"));
            ms -= count * unit_ms;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_grammar_is_prometheus_s() {
        for (text, ms) in [
            ("0", Some(0)),
            ("15s", Some(15_000)),
            ("1h30m", Some(5_400_000)),
            ("500ms", Some(500)),
            ("1d", Some(86_400_000)),
            ("2w", Some(14 * 86_400_000)),
            ("1y", Some(365 * 86_400_000)),
            ("1m1s1ms", Some(61_001)),
            ("", None),
            ("1", None),
            ("1.5s", None),
            ("1s1m", None),
            ("1m1m", None),
            ("-1s", None),
            ("1x", None),
            ("s", None),
        ] {
            assert_eq!(parse_duration_ms(text), ms, "{text:?}");
        }
    }

    #[test]
    fn formatting_round_trips() {
        for (ms, text) in [
            (0, "0s"),
            (60_000, "1m"),
            (5_400_000, "1h30m"),
            (90 * 86_400_000, "90d"),
            (14 * 86_400_000, "2w"),
            (1_500, "1s500ms"),
        ] {
            assert_eq!(format_duration_ms(ms), text);
            assert_eq!(parse_duration_ms(text), Some(ms));
        }
    }
}
