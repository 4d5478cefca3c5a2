//! Prometheus's metadata endpoints: `/api/v1/series`, `/api/v1/labels`,
//! `/api/v1/label/<name>/values`, `/api/v1/metadata`, `/api/v1/format_query` and
//! `/api/v1/status/*`, which
//! Grafana uses for its query editor, its variables and its data source check.
//!
//! Time ranges: with `match[]`, only series with samples in `[start, end]` count (exact,
//! where Prometheus counts whole 2-hour blocks). Without `match[]`, `/labels` and
//! `/label/<name>/values` answer from every series the tenant has, as Prometheus does for
//! its head block: a superset, and the cheap answer for an editor's autocompletion.

use std::collections::BTreeSet;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::Json as JsonBody;
use axum::extract::rejection::FormRejection;
use axum::extract::{Form, Path, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use model::Labels;
use promql_parser::parser::Expr;
use serde_json::{Value as Json, json};
use storage::Matcher;

use crate::QueryService;
use crate::api::optional_range;
use crate::error::{ErrorType, QueryError, bad};
use crate::http::tenant_of;
use crate::promql;

/// The Prometheus release whose API this one answers as: Grafana reads the version from
/// `buildinfo` to pick the features it may use.
pub(crate) const PROMETHEUS_API_VERSION: &str = "2.42.0";

/// A request's form parameters in order, repeated names (`match[]`) included.
type Params = Vec<(String, String)>;

fn read_params(params: Result<Form<Params>, FormRejection>) -> Result<Params, QueryError> {
    params
        .map(|Form(p)| p)
        .map_err(|e| bad(format!("cannot read the parameters: {e}")))
}

fn param<'a>(params: &'a Params, name: &str) -> Option<&'a str> {
    params
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

/// What the series-reading endpoints share: their selectors, time range and limit.
struct Selection {
    /// One matcher list per `match[]`; a series matching any of them is selected.
    selectors: Vec<Vec<Matcher>>,
    range: Option<(i64, i64)>,
    /// 0: no limit.
    limit: usize,
}

impl Selection {
    fn read(params: &Params) -> Result<Self, QueryError> {
        let selectors = params
            .iter()
            .filter(|(n, _)| n == "match[]")
            .map(|(_, text)| selector_matchers(text))
            .collect::<Result<Vec<_>, _>>()?;
        let range = match optional_range(param(params, "start"), param(params, "end"))? {
            (None, None) => None,
            (start, end) => Some((start.unwrap_or(i64::MIN), end.unwrap_or(i64::MAX))),
        };
        let limit = match param(params, "limit") {
            None | Some("") => 0,
            Some(text) => text.trim().parse::<usize>().map_err(|_| {
                bad(format!(
                    "invalid parameter \"limit\": {text:?} is not a non-negative integer"
                ))
            })?,
        };
        Ok(Self {
            selectors,
            range,
            limit,
        })
    }

    /// The label sets of the selected series, each once, sorted.
    async fn series(
        &self,
        service: &QueryService,
        tenant: &model::TenantId,
    ) -> Result<Vec<Labels>, QueryError> {
        // With a range, the store reads samples to see which series have some: bound it
        // by the query limit on series first, from the index alone.
        if self.range.is_some() {
            let max = service.shared.config.max_series;
            let mut count = 0u64;
            for matchers in &self.selectors {
                count += service
                    .shared
                    .store
                    .series(tenant, matchers, None)
                    .await?
                    .len() as u64;
            }
            if count > max {
                return Err(QueryError::new(
                    ErrorType::Execution,
                    format!("match[] selects more than {max} series (query.max_series); narrow it"),
                ));
            }
        }
        let mut all = BTreeSet::new();
        for matchers in &self.selectors {
            let found = service
                .shared
                .store
                .series(tenant, matchers, self.range)
                .await?;
            all.extend(found);
        }
        Ok(all.into_iter().collect())
    }

    /// `items` cut to the limit, with Prometheus's warning when something was cut.
    fn limited<T>(&self, mut items: Vec<T>, warnings: &mut Vec<String>) -> Vec<T> {
        if self.limit > 0 && items.len() > self.limit {
            items.truncate(self.limit);
            warnings.push("results truncated due to limit".to_owned());
        }
        items
    }
}

/// A `match[]` selector's matchers. Like Prometheus, a selector must have a matcher that
/// does not match the empty string, so it cannot select every series by accident.
fn selector_matchers(text: &str) -> Result<Vec<Matcher>, QueryError> {
    let invalid = |why: String| bad(format!("invalid parameter \"match[]\": {why}"));
    let expr = promql_parser::parser::parse(text).map_err(invalid)?;
    let Expr::VectorSelector(selector) = expr else {
        return Err(invalid(format!(
            "{text:?} is not a series selector such as up{{job=\"api\"}}"
        )));
    };
    if selector.offset.is_some() || selector.at.is_some() {
        return Err(invalid(format!(
            "{text:?}: a series selector takes no offset or @ modifier"
        )));
    }
    let matchers = promql::store_matchers(&selector).map_err(|e| invalid(e.to_string()))?;
    if matchers.iter().all(|m| m.matches("")) {
        return Err(invalid(format!(
            "{text:?}: match[] must contain at least one non-empty matcher"
        )));
    }
    Ok(matchers)
}

fn success(data: Json, warnings: Vec<String>) -> Response {
    let mut body = json!({"status": "success", "data": data});
    if !warnings.is_empty() {
        body["warnings"] = json!(warnings);
    }
    JsonBody(body).into_response()
}

fn respond(result: Result<Response, QueryError>) -> Response {
    result.unwrap_or_else(IntoResponse::into_response)
}

pub(crate) async fn series(
    State(service): State<QueryService>,
    headers: HeaderMap,
    params: Result<Form<Params>, FormRejection>,
) -> Response {
    respond(
        async {
            let tenant = tenant_of(&service.shared, &headers)?;
            let selection = Selection::read(&read_params(params)?)?;
            if selection.selectors.is_empty() {
                return Err(bad("no match[] parameter provided"));
            }
            let mut warnings = Vec::new();
            let series =
                selection.limited(selection.series(&service, &tenant).await?, &mut warnings);
            let data: Vec<Json> = series.iter().map(labels_json).collect();
            Ok(success(json!(data), warnings))
        }
        .await,
    )
}

pub(crate) async fn label_names(
    State(service): State<QueryService>,
    headers: HeaderMap,
    params: Result<Form<Params>, FormRejection>,
) -> Response {
    respond(
        async {
            let tenant = tenant_of(&service.shared, &headers)?;
            let selection = Selection::read(&read_params(params)?)?;
            let all = service.shared.store.label_names(&tenant, &[]);
            label_answer(&service, &tenant, &selection, all, |series| {
                series
                    .iter()
                    .flat_map(|l| l.iter().map(|l| l.name.to_owned()))
                    .collect()
            })
            .await
        }
        .await,
    )
}

pub(crate) async fn label_values(
    State(service): State<QueryService>,
    Path(name): Path<String>,
    headers: HeaderMap,
    params: Result<Form<Params>, FormRejection>,
) -> Response {
    respond(
        async {
            let tenant = tenant_of(&service.shared, &headers)?;
            // Prometheus 2.42 takes plain names; `U__` escapes came later, with UTF-8 names.
            if !is_label_name(&name) {
                return Err(bad(format!("invalid label name: {name:?}")));
            }
            let selection = Selection::read(&read_params(params)?)?;
            let all = service.shared.store.label_values(&tenant, &name, &[]);
            label_answer(&service, &tenant, &selection, all, |series| {
                series
                    .iter()
                    .filter_map(|l| l.get(&name).map(str::to_owned))
                    .collect()
            })
            .await
        }
        .await,
    )
}

/// `/api/v1/metadata`: type, help and unit per metric family, as remote-write brought
/// them. `limit` caps the families, `limit_per_metric` the entries of each, `metric` picks
/// one family; negative limits are none, as in Prometheus.
pub(crate) async fn metadata(
    State(service): State<QueryService>,
    headers: HeaderMap,
    params: Result<Form<Params>, FormRejection>,
) -> Response {
    respond(
        async {
            let tenant = tenant_of(&service.shared, &headers)?;
            let params = read_params(params)?;
            let number = |name: &str| -> Result<i64, QueryError> {
                match param(&params, name) {
                    None | Some("") => Ok(-1),
                    Some(text) => text
                        .trim()
                        .parse()
                        .map_err(|_| bad(format!("{name} must be a number"))),
                }
            };
            let (limit, per_metric) = (number("limit")?, number("limit_per_metric")?);
            let metric = param(&params, "metric").filter(|m| !m.is_empty());
            let entries = service.shared.store.metadata(&tenant).await?;
            let mut families = serde_json::Map::new();
            for entry in entries {
                if metric.is_some_and(|m| m != entry.metric_family_name) {
                    continue;
                }
                if !families.contains_key(&entry.metric_family_name) {
                    if limit >= 0 && families.len() as i64 >= limit {
                        continue;
                    }
                    families.insert(entry.metric_family_name.clone(), json!([]));
                }
                if let Some(Json::Array(list)) = families.get_mut(&entry.metric_family_name)
                    && (per_metric <= 0 || (list.len() as i64) < per_metric)
                {
                    list.push(json!({
                        "type": entry.metric_type.prometheus_name(),
                        "help": entry.help,
                        "unit": entry.unit,
                    }));
                }
            }
            Ok(success(Json::Object(families), Vec::new()))
        }
        .await,
    )
}

/// The answer of `/labels` or `/label/<name>/values`: `all` (from the index) without
/// `match[]`, else what `of_series` finds in the selected series; sorted, cut to the limit.
async fn label_answer(
    service: &QueryService,
    tenant: &model::TenantId,
    selection: &Selection,
    all: impl std::future::Future<Output = storage::Result<Vec<String>>>,
    of_series: impl Fn(&[Labels]) -> BTreeSet<String>,
) -> Result<Response, QueryError> {
    let found: Vec<String> = if selection.selectors.is_empty() {
        all.await?
    } else {
        of_series(&selection.series(service, tenant).await?)
            .into_iter()
            .collect()
    };
    let mut warnings = Vec::new();
    Ok(success(
        json!(selection.limited(found, &mut warnings)),
        warnings,
    ))
}

/// `[a-zA-Z_][a-zA-Z0-9_]*`, Prometheus 2.42's label names.
fn is_label_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn labels_json(labels: &Labels) -> Json {
    Json::Object(
        labels
            .iter()
            .map(|l| (l.name.to_owned(), Json::String(l.value.to_owned())))
            .collect(),
    )
}

/// `/api/v1/format_query`: the query as Prometheus's formatter prints it.
pub(crate) async fn format_query(params: Result<Form<Params>, FormRejection>) -> Response {
    respond(
        async {
            let params = read_params(params)?;
            let query = param(&params, "query")
                .filter(|q| !q.trim().is_empty())
                .ok_or_else(|| bad("invalid parameter \"query\": the query is missing"))?;
            let expr = promql::parse(query)?;
            Ok(success(json!(promql::pretty(&expr)), Vec::new()))
        }
        .await,
    )
}

pub(crate) async fn build_info() -> Response {
    success(
        json!({
            "version": PROMETHEUS_API_VERSION,
            "revision": concat!("meerkat-", env!("CARGO_PKG_VERSION")),
            "branch": "meerkat",
            "buildUser": "meerkat",
            "buildDate": "",
            "goVersion": "",
        }),
        Vec::new(),
    )
}

pub(crate) async fn runtime_info(State(service): State<QueryService>) -> Response {
    let started = seconds_rfc3339(service.shared.started_at);
    let cwd = std::env::current_dir()
        .map(|d| d.display().to_string())
        .unwrap_or_default();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    success(
        json!({
            "startTime": started,
            "CWD": cwd,
            "reloadConfigSuccess": true,
            "lastConfigTime": started,
            "corruptionCount": 0,
            "goroutineCount": 0,
            "GOMAXPROCS": cores,
            "GOGC": "",
            "GODEBUG": "",
            "storageRetention": service.shared.storage_retention,
        }),
        Vec::new(),
    )
}

fn seconds_rfc3339(time: SystemTime) -> String {
    let millis = time
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    chrono::DateTime::from_timestamp_millis(millis)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn match_selectors_must_narrow_the_selection() {
        assert_eq!(selector_matchers("up").unwrap().len(), 1);
        assert_eq!(selector_matchers(r#"{job=~"a.+"}"#).unwrap().len(), 1);
        for text in [
            r#"{job=~".*"}"#,
            r#"{job=""}"#,
            "rate(up[5m])",
            "up{",
            "",
            "up offset 5m",
            "up @ 100",
        ] {
            let error = selector_matchers(text).unwrap_err();
            assert_eq!(error.kind, ErrorType::BadData, "{text:?}");
            assert!(error.message.contains("match[]"), "{}", error.message);
        }
    }

    #[test]
    fn label_names_as_prometheus_2_42_takes_them() {
        for good in ["job", "_x", "A1_b"] {
            assert!(is_label_name(good), "{good}");
        }
        for bad in ["", "1a", "a-b", "é", "a b"] {
            assert!(!is_label_name(bad), "{bad}");
        }
    }
}
