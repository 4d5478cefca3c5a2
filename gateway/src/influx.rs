//! InfluxDB line protocol: `POST /api/v2/write` and `POST /write` (v1), what Telegraf's
//! `influxdb_v2` and `influxdb` outputs send. Parsing is InfluxData's own parser
//! (`influxdb-line-protocol`).
//!
//! Each numeric field becomes a Prometheus series named `<measurement>_<field>` (invalid
//! characters replaced by `_`), tags become labels, booleans become 1 and 0 — the mapping
//! VictoriaMetrics and Telegraf's Prometheus output use, so dashboards carry over. String
//! fields are not samples and are skipped (counted under `reason="string_field"`). A line
//! that does not parse is refused with its number and the parser's reason; the other lines
//! are kept.

use std::collections::HashMap;

use influxdb_line_protocol::{FieldValue, parse_lines};
use model::{Labels, MetricBatch, Sample, Series};

use crate::GatewayError;
use crate::config::Limits;
use crate::validate::{Outcome, Rejection, series_labels};

/// Timestamp units of the `precision` parameter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Precision {
    Nanoseconds,
    Microseconds,
    Milliseconds,
    Seconds,
    Minutes,
    Hours,
}

impl Precision {
    /// Parses v2 (`ns`, `us`, `ms`, `s`) and v1 (`n`, `u`, `ms`, `s`, `m`, `h`) spellings.
    pub fn parse(text: Option<&str>) -> Result<Self, GatewayError> {
        Ok(match text.unwrap_or("ns") {
            "ns" | "n" | "" => Self::Nanoseconds,
            "us" | "u" | "µ" | "µs" => Self::Microseconds,
            "ms" => Self::Milliseconds,
            "s" => Self::Seconds,
            "m" => Self::Minutes,
            "h" => Self::Hours,
            other => {
                return Err(GatewayError::BadRequest(format!(
                    "precision {other:?} is not one of ns, us, ms, s (v1 also n, u, m, h)"
                )));
            }
        })
    }

    /// A timestamp in this unit as Unix milliseconds (`None` if it does not fit).
    fn to_millis(self, value: i64) -> Option<i64> {
        match self {
            Self::Nanoseconds => Some(value.div_euclid(1_000_000)),
            Self::Microseconds => Some(value.div_euclid(1_000)),
            Self::Milliseconds => Some(value),
            Self::Seconds => value.checked_mul(1_000),
            Self::Minutes => value.checked_mul(60_000),
            Self::Hours => value.checked_mul(3_600_000),
        }
    }
}

/// Replaces characters Prometheus does not allow in names with `_`; a leading digit gets an
/// `_` in front.
fn sanitize(name: &str, allow_colon: bool) -> String {
    let mut out: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || (allow_colon && c == ':') {
                c
            } else {
                '_'
            }
        })
        .collect();
    if out.starts_with(|c: char| c.is_ascii_digit()) {
        out.insert(0, '_');
    }
    out
}

/// Parses a body of line protocol into series; `now_ms` stamps lines without a timestamp.
pub fn convert(
    body: &[u8],
    precision: Precision,
    now_ms: i64,
    limits: &Limits,
) -> Result<(MetricBatch, Outcome), GatewayError> {
    let text = std::str::from_utf8(body)
        .map_err(|e| GatewayError::BadRequest(format!("line protocol must be UTF-8: {e}")))?;
    let mut outcome = Outcome::default();
    let mut series: HashMap<Labels, Vec<Sample>> = HashMap::new();
    let mut order: Vec<Labels> = Vec::new();
    for (index, line) in parse_lines(text).enumerate() {
        let number = index + 1;
        let line = match line {
            Ok(line) => line,
            Err(error) => {
                outcome.reject(
                    Rejection::new("line_protocol_syntax", format!("line {number}: {error}")),
                    1,
                );
                continue;
            }
        };
        let timestamp_ms = match line.timestamp {
            None => now_ms,
            Some(ts) => {
                match precision.to_millis(ts) {
                    Some(ms) => ms,
                    None => {
                        outcome.reject(
                        Rejection::new(
                            "invalid_timestamp",
                            format!("line {number}: timestamp {ts} overflows at precision {precision:?}"),
                        ),
                        line.field_set.len() as u64,
                    );
                        continue;
                    }
                }
            }
        };
        let measurement = line.series.measurement.as_str();
        let tags: Vec<(String, String)> = line
            .series
            .tag_set
            .iter()
            .flatten()
            .map(|(key, value)| (sanitize(key.as_str(), false), value.as_str().to_owned()))
            .collect();
        for (field, value) in &line.field_set {
            let value = match value {
                FieldValue::F64(v) => *v,
                FieldValue::I64(v) => *v as f64,
                FieldValue::U64(v) => *v as f64,
                FieldValue::Boolean(v) => f64::from(u8::from(*v)),
                FieldValue::String(_) => {
                    outcome.rejected_quietly("string_field", 1);
                    continue;
                }
            };
            let name = sanitize(&format!("{measurement}_{}", field.as_str()), true);
            let mut pairs = tags.clone();
            pairs.push((model::METRIC_NAME_LABEL.to_owned(), name));
            let labels = match series_labels(pairs, limits) {
                Ok(labels) => labels,
                Err(rejection) => {
                    outcome.reject(
                        Rejection::new(
                            rejection.reason,
                            format!("line {number}: {}", rejection.message),
                        ),
                        1,
                    );
                    continue;
                }
            };
            let samples = series.entry(labels).or_insert_with_key(|labels| {
                order.push(labels.clone());
                Vec::new()
            });
            samples.push(Sample {
                timestamp_ms,
                value,
            });
            outcome.accepted += 1;
        }
    }
    if order.len() as u64 > limits.max_series_per_request {
        return Err(GatewayError::BadRequest(format!(
            "request has {} series, more than the limit of {}; send smaller batches",
            order.len(),
            limits.max_series_per_request
        )));
    }
    let batch = MetricBatch {
        series: order
            .into_iter()
            .map(|labels| {
                let samples = series.remove(&labels).unwrap_or_default();
                Series::with_samples(labels, samples)
            })
            .collect(),
        metadata: Vec::new(),
    };
    Ok((batch, outcome))
}

// ---------------------------------------------------------------------------------------
// HTTP

use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use model::Payload;

use crate::metrics::{Protocol, Signal};
use crate::{Gateway, http};

/// Query parameters of Influx writes; `org`, `bucket` and `db` are accepted and ignored
/// (the tenant comes from auth, the store is Meerkat's).
#[derive(Debug, Default, serde::Deserialize)]
pub(crate) struct InfluxParams {
    precision: Option<String>,
}

async fn write(
    gateway: Gateway,
    headers: HeaderMap,
    body: Body,
    params: InfluxParams,
    v1: bool,
) -> Response {
    let precision = match Precision::parse(params.precision.as_deref()) {
        Ok(precision) => precision,
        Err(error) => return error_response(error, v1),
    };
    let encoding = http::header_str(&headers, "content-encoding").map(str::to_owned);
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    let result = gateway
        .handle_http(
            Protocol::Influx,
            Signal::Samples,
            &headers,
            body,
            move |body, limits| {
                let raw = http::decode_content(
                    body,
                    encoding.as_deref(),
                    limits.max_decompressed_body_bytes,
                )?;
                let (batch, outcome) = convert(&raw, precision, now_ms, limits)?;
                Ok((Payload::Metrics(batch), outcome))
            },
        )
        .await;
    match result {
        Ok(outcome) => match &outcome.first_rejection {
            None => StatusCode::NO_CONTENT.into_response(),
            Some(first) => error_response(
                GatewayError::BadRequest(format!(
                    "partial write: {} values refused, {} accepted; first problem: {first}",
                    outcome.rejected_total(),
                    outcome.accepted
                )),
                v1,
            ),
        },
        Err(error) => error_response(error, v1),
    }
}

/// Errors in the JSON shapes InfluxDB uses (v2: `code` + `message`; v1: `error`), so
/// Telegraf logs them properly.
fn error_response(error: GatewayError, v1: bool) -> Response {
    let code = match error.status() {
        StatusCode::UNAUTHORIZED => "unauthorized",
        StatusCode::PAYLOAD_TOO_LARGE => "request too large",
        StatusCode::TOO_MANY_REQUESTS => "too many requests",
        StatusCode::SERVICE_UNAVAILABLE => "unavailable",
        _ => "invalid",
    };
    let body = if v1 {
        serde_json::json!({ "error": error.to_string() })
    } else {
        serde_json::json!({ "code": code, "message": error.to_string() })
    };
    let mut response = (error.status(), axum::Json(body)).into_response();
    if let Some(seconds) = error.retry_after_seconds() {
        response.headers_mut().insert(
            axum::http::header::RETRY_AFTER,
            axum::http::HeaderValue::from(seconds),
        );
    }
    response
}

/// `POST /api/v2/write`.
pub(crate) async fn v2_handler(
    State(gateway): State<Gateway>,
    Query(params): Query<InfluxParams>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    write(gateway, headers, body, params, false).await
}

/// `POST /write`.
pub(crate) async fn v1_handler(
    State(gateway): State<Gateway>,
    Query(params): Query<InfluxParams>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    write(gateway, headers, body, params, true).await
}

/// InfluxDB's liveness endpoint, which Influx clients call before writing.
pub(crate) async fn ping() -> Response {
    (StatusCode::NO_CONTENT, [("X-Influxdb-Version", "meerkat")]).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn render(batch: &MetricBatch) -> Vec<String> {
        batch
            .series
            .iter()
            .map(|s| {
                let samples: Vec<String> = s
                    .samples
                    .iter()
                    .map(|x| format!("{}@{}", x.value, x.timestamp_ms))
                    .collect();
                format!("{} {}", s.labels, samples.join(" "))
            })
            .collect()
    }

    #[test]
    fn every_field_type_and_escape() {
        let body = concat!(
            "# a comment\n",
            "cpu,host=server\\ 01,region=eu-west usage_idle=98.5,usage_user=1i,online=true,cores=8u 1700000000000000000\n",
            "\n",
            "cpu,host=server\\ 01,region=eu-west usage_idle=97.5,online=F 1700000010000000000\n",
            "weather\\,station,loc=a\\=b temp=-3.5e1,note=\"frost \\\"likely\\\"\" 1700000000000000000\n",
            "disk.io,dev=sda read_bytes=100\n",
        );
        let (batch, outcome) = convert(
            body.as_bytes(),
            Precision::Nanoseconds,
            42,
            &Limits::default(),
        )
        .unwrap();
        assert_eq!(
            render(&batch),
            [
                r#"cpu_usage_idle{host="server 01", region="eu-west"} 98.5@1700000000000 97.5@1700000010000"#,
                r#"cpu_usage_user{host="server 01", region="eu-west"} 1@1700000000000"#,
                r#"cpu_online{host="server 01", region="eu-west"} 1@1700000000000 0@1700000010000"#,
                r#"cpu_cores{host="server 01", region="eu-west"} 8@1700000000000"#,
                r#"weather_station_temp{loc="a=b"} -35@1700000000000"#,
                r#"disk_io_read_bytes{dev="sda"} 100@42"#,
            ]
        );
        assert_eq!(outcome.accepted, 8);
        assert_eq!(
            outcome.first_rejection, None,
            "a string field is skipped, not an error"
        );
        assert!(outcome.rejected.is_empty());
        assert_eq!(outcome.skipped, vec![("string_field", 1)]);
    }

    #[test]
    fn bad_lines_are_refused_by_number_and_the_rest_kept() {
        let body = "good value=1 1000\nbad value= 1000\nalso value=2 2000\nbad2 value=1 notatime\n";
        let (batch, outcome) =
            convert(body.as_bytes(), Precision::Seconds, 0, &Limits::default()).unwrap();
        assert_eq!(batch.series.len(), 2);
        assert_eq!(
            batch.series[0].samples[0].timestamp_ms, 1_000_000,
            "precision s"
        );
        assert_eq!(outcome.rejected, vec![("line_protocol_syntax", 2)]);
        let first = outcome.first_rejection.unwrap();
        assert!(first.starts_with("line 2:"), "{first}");
    }

    #[test]
    fn precisions_convert_to_milliseconds() {
        let cases = [
            (
                Precision::parse(Some("ns")).unwrap(),
                1_700_000_000_123_456_789_i64,
                1_700_000_000_123_i64,
            ),
            (
                Precision::parse(Some("u")).unwrap(),
                1_700_000_000_123_456,
                1_700_000_000_123,
            ),
            (
                Precision::parse(Some("ms")).unwrap(),
                1_700_000_000_123,
                1_700_000_000_123,
            ),
            (
                Precision::parse(Some("s")).unwrap(),
                1_700_000_000,
                1_700_000_000_000,
            ),
            (Precision::parse(Some("m")).unwrap(), 2, 120_000),
            (Precision::parse(Some("h")).unwrap(), 1, 3_600_000),
        ];
        for (precision, input, expected) in cases {
            let body = format!("m v=1 {input}");
            let (batch, _) = convert(body.as_bytes(), precision, 0, &Limits::default()).unwrap();
            assert_eq!(
                batch.series[0].samples[0].timestamp_ms, expected,
                "{precision:?}"
            );
        }
        assert!(Precision::parse(Some("fortnight")).is_err());
        let (_, outcome) = convert(
            b"m v=1 9223372036854775807",
            Precision::Hours,
            0,
            &Limits::default(),
        )
        .unwrap();
        assert_eq!(outcome.rejected, vec![("invalid_timestamp", 1)]);
    }

    #[test]
    fn invalid_utf8_and_duplicate_tags_are_clear_errors() {
        assert!(matches!(
            convert(&[0xff, 0xfe, b' '], Precision::Nanoseconds, 0, &Limits::default()),
            Err(GatewayError::BadRequest(m)) if m.contains("UTF-8")
        ));
        let (_, outcome) = convert(
            b"m,a-b=1,a_b=2 v=1",
            Precision::Nanoseconds,
            0,
            &Limits::default(),
        )
        .unwrap();
        assert_eq!(outcome.rejected, vec![("duplicate_label", 1)]);
    }

    proptest! {
        #[test]
        fn arbitrary_input_never_panics(text in "\\PC{0,200}") {
            let _ = convert(text.as_bytes(), Precision::Nanoseconds, 0, &Limits::default());
        }

        #[test]
        fn line_shaped_input_never_panics(
            measurement in "[a-z,\\\\ ]{0,8}", tag in "[a-z=,\\\\ ]{0,8}", field in "[a-z0-9=\"\\\\.ituTF-]{0,12}", ts in "[0-9-]{0,20}"
        ) {
            let line = format!("{measurement},{tag} {field} {ts}");
            let _ = convert(line.as_bytes(), Precision::Nanoseconds, 0, &Limits::default());
        }
    }
}
