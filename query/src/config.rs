//! The `query:` section of `meerkat.yaml`.

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct QueryConfig {
    /// A query running longer is cancelled and answered 503 `timeout` (Prometheus's
    /// `--query.timeout`, 2 minutes by default). A request may ask for less with `timeout`.
    pub timeout_seconds: f64,
    /// The most rows an SQL result may have; past it the query fails with a message saying
    /// to aggregate or add a `LIMIT`, rather than building an answer too large to send.
    pub max_rows: u64,
    /// The most series one PromQL query may select, over all its selectors; past it the
    /// query fails (422) asking for narrower selectors, before it can exhaust memory.
    pub max_series: u64,
    /// The most samples one PromQL query may hold (Prometheus's `--query.max-samples`):
    /// the samples its selectors read plus one point per selected series and step.
    pub max_samples: u64,
}

impl Default for QueryConfig {
    fn default() -> Self {
        Self {
            timeout_seconds: 120.0,
            max_rows: 100_000,
            max_series: 500_000,
            max_samples: 50_000_000,
        }
    }
}

impl QueryConfig {
    pub fn validate(&self) -> Result<(), String> {
        if !(self.timeout_seconds > 0.0 && self.timeout_seconds <= 86_400.0) {
            return Err(format!(
                "query.timeout_seconds is {}; it must be more than 0 and at most 86400 (a day)",
                self.timeout_seconds
            ));
        }
        for (name, value) in [
            ("max_rows", self.max_rows),
            ("max_series", self.max_series),
            ("max_samples", self.max_samples),
        ] {
            if value == 0 {
                return Err(format!("query.{name} must be at least 1"));
            }
        }
        Ok(())
    }
}
