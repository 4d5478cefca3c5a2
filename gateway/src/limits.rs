//! Per-tenant limits: the configured numbers, and the ingest rate limiter.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use model::TenantId;

use crate::GatewayError;
use crate::config::{GatewayConfig, Limits};

/// One tenant's limits and its token bucket.
#[derive(Debug)]
pub struct TenantLimits {
    pub tenant: TenantId,
    pub limits: Limits,
    bucket: Mutex<TokenBucket>,
}

#[derive(Debug)]
struct TokenBucket {
    tokens: f64,
    updated: Instant,
}

impl TenantLimits {
    /// Takes `items` (samples, spans, log records) from the tenant's ingest budget.
    ///
    /// A request larger than the burst is still admitted when the bucket is full (it then
    /// goes into debt, which later requests wait out), so a big but legitimate request is
    /// slowed down, never refused forever.
    pub fn admit(&self, items: u64) -> Result<(), GatewayError> {
        if items == 0 {
            return Ok(());
        }
        let rate = self.limits.ingestion_rate_per_second;
        let burst = self.limits.ingestion_burst;
        let mut bucket = self.bucket.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        let elapsed = now.duration_since(bucket.updated).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * rate).min(burst);
        bucket.updated = now;
        let needed = (items as f64).min(burst);
        if bucket.tokens >= needed {
            bucket.tokens -= items as f64;
            return Ok(());
        }
        let wait = ((needed - bucket.tokens) / rate).ceil().max(1.0);
        Err(GatewayError::RateLimited {
            tenant: self.tenant.to_string(),
            rate,
            burst,
            retry_after_seconds: wait as u64,
        })
    }
}

/// Every tenant's limits, created on first use.
#[derive(Debug)]
pub struct LimitsRegistry {
    defaults: Limits,
    overrides: HashMap<String, crate::config::LimitOverrides>,
    tenants: Mutex<HashMap<TenantId, Arc<TenantLimits>>>,
}

impl LimitsRegistry {
    pub fn new(config: &GatewayConfig) -> Self {
        Self {
            defaults: config.limits.clone(),
            overrides: config.tenant_limits.clone().into_iter().collect(),
            tenants: Mutex::new(HashMap::new()),
        }
    }

    pub fn for_tenant(&self, tenant: &TenantId) -> Arc<TenantLimits> {
        let mut tenants = self.tenants.lock().unwrap_or_else(|e| e.into_inner());
        tenants
            .entry(tenant.clone())
            .or_insert_with(|| {
                let limits = match self.overrides.get(tenant.as_str()) {
                    Some(overrides) => self.defaults.with(overrides),
                    None => self.defaults.clone(),
                };
                Arc::new(TenantLimits {
                    tenant: tenant.clone(),
                    bucket: Mutex::new(TokenBucket {
                        tokens: limits.ingestion_burst,
                        updated: Instant::now(),
                    }),
                    limits,
                })
            })
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::LimitOverrides;

    fn registry(rate: f64, burst: f64) -> LimitsRegistry {
        let mut config = GatewayConfig::default();
        config.tenant_limits.insert(
            "small".into(),
            LimitOverrides {
                ingestion_rate_per_second: Some(rate),
                ingestion_burst: Some(burst),
                ..LimitOverrides::default()
            },
        );
        LimitsRegistry::new(&config)
    }

    #[test]
    fn the_bucket_admits_the_burst_then_refuses_with_a_wait() {
        let registry = registry(10.0, 100.0);
        let small = registry.for_tenant(&TenantId::new("small").unwrap());
        assert_eq!(small.limits.ingestion_rate_per_second, 10.0);
        small.admit(60).unwrap();
        small.admit(40).unwrap();
        match small.admit(50) {
            Err(GatewayError::RateLimited {
                retry_after_seconds,
                ..
            }) => assert!(
                (4..=6).contains(&retry_after_seconds),
                "{retry_after_seconds}"
            ),
            other => panic!("expected a rate limit, got {other:?}"),
        }
        // Other tenants have their own (default) budget.
        let other = registry.for_tenant(&TenantId::new("other").unwrap());
        other.admit(1_000_000).unwrap();
    }

    #[test]
    fn a_request_above_the_burst_passes_on_a_full_bucket_and_leaves_debt() {
        let registry = registry(10.0, 100.0);
        let small = registry.for_tenant(&TenantId::new("small").unwrap());
        small.admit(250).unwrap();
        assert!(small.admit(1).is_err(), "the debt must be waited out");
    }
}
