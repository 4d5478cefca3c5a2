//! Which tenant a request belongs to: the same rule for every role that takes requests
//! (the gateway's writes, the query API's reads), so a token reads what it writes.
//!
//! With auth on (tokens configured), the bearer token decides and nothing the client says
//! otherwise counts; an unknown or missing token is refused. With auth off, the
//! `X-Scope-OrgID` header (Cortex's and Mimir's convention, which Prometheus and Grafana
//! agents already send) decides, else the default tenant.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::TenantId;

/// The `auth:` settings (under `gateway:` in `meerkat.yaml`; the query API uses the same).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// Bearer token → tenant. When empty, auth is off: the tenant comes from the
    /// `X-Scope-OrgID` header, or is `default`. When set, every request needs a known token
    /// (`Authorization: Bearer <token>`), and the header is ignored.
    pub tokens: BTreeMap<String, String>,
}

/// Why a request has no tenant.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum AuthError {
    #[error(
        "unknown bearer token: send `Authorization: Bearer <token>` with a token from gateway.auth.tokens"
    )]
    Unauthorized,
    #[error("invalid tenant: {0}")]
    BadTenant(String),
}

/// The header that names the tenant when auth is off.
pub const TENANT_HEADER: &str = "x-scope-orgid";

#[derive(Debug)]
pub struct TenantResolver {
    tokens: HashMap<String, TenantId>,
}

impl TenantResolver {
    pub fn new(config: &AuthConfig) -> Result<Self, AuthError> {
        let tokens = config
            .tokens
            .iter()
            .map(|(token, tenant)| {
                TenantId::new(tenant.clone())
                    .map(|id| (token.clone(), id))
                    .map_err(|e| AuthError::BadTenant(e.to_string()))
            })
            .collect::<Result<_, _>>()?;
        Ok(Self { tokens })
    }

    pub fn auth_enabled(&self) -> bool {
        !self.tokens.is_empty()
    }

    /// Resolves from the `Authorization` and `X-Scope-OrgID` values of a request.
    pub fn resolve(
        &self,
        authorization: Option<&str>,
        org_id: Option<&str>,
    ) -> Result<TenantId, AuthError> {
        if self.auth_enabled() {
            let token = authorization
                .and_then(token_of)
                .ok_or(AuthError::Unauthorized)?;
            return self
                .tokens
                .get(&token)
                .cloned()
                .ok_or(AuthError::Unauthorized);
        }
        match org_id.map(str::trim).filter(|id| !id.is_empty()) {
            Some(id) => TenantId::new(id).map_err(|e| AuthError::BadTenant(e.to_string())),
            None => Ok(TenantId::default_tenant()),
        }
    }
}

/// The token in an `Authorization` value: `Bearer <token>` (Prometheus, OTLP), `Token
/// <token>` (InfluxDB 2 clients, Telegraf), or the password of `Basic` credentials
/// (InfluxDB 1 clients).
fn token_of(authorization: &str) -> Option<String> {
    let (scheme, credentials) = authorization.trim().split_once(' ')?;
    let credentials = credentials.trim();
    match scheme.to_ascii_lowercase().as_str() {
        "bearer" | "token" => Some(credentials.to_owned()),
        "basic" => {
            let decoded = base64_decode(credentials)?;
            let text = String::from_utf8(decoded).ok()?;
            text.split_once(':')
                .map(|(_, password)| password.to_owned())
        }
        _ => None,
    }
}

/// Standard base64 (with or without padding); small enough not to need a crate.
fn base64_decode(text: &str) -> Option<Vec<u8>> {
    let value = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let bytes: Vec<u8> = text.bytes().filter(|b| *b != b'=').collect();
    let mut out = Vec::with_capacity(bytes.len() * 3 / 4);
    for chunk in bytes.chunks(4) {
        let mut acc = 0u32;
        for (i, c) in chunk.iter().enumerate() {
            acc |= value(*c)? << (18 - 6 * i);
        }
        let produced = match chunk.len() {
            4 => 3,
            3 => 2,
            2 => 1,
            _ => return None,
        };
        out.extend_from_slice(&acc.to_be_bytes()[1..1 + produced]);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_or_default_when_auth_is_off() {
        let resolver = TenantResolver::new(&AuthConfig::default()).unwrap();
        assert_eq!(resolver.resolve(None, None).unwrap().as_str(), "default");
        assert_eq!(
            resolver.resolve(None, Some("team-a")).unwrap().as_str(),
            "team-a"
        );
        assert_eq!(
            resolver
                .resolve(Some("Bearer whatever"), Some(" team-b "))
                .unwrap()
                .as_str(),
            "team-b"
        );
        assert!(matches!(
            resolver.resolve(None, Some("../x")),
            Err(AuthError::BadTenant(_))
        ));
    }

    #[test]
    fn token_decides_when_auth_is_on() {
        let config = AuthConfig {
            tokens: [("s3cret".to_owned(), "team-a".to_owned())].into(),
        };
        let resolver = TenantResolver::new(&config).unwrap();
        assert_eq!(
            resolver
                .resolve(Some("Bearer s3cret"), Some("team-b"))
                .unwrap()
                .as_str(),
            "team-a"
        );
        assert!(matches!(
            resolver.resolve(Some("Bearer wrong"), None),
            Err(AuthError::Unauthorized)
        ));
        assert!(matches!(
            resolver.resolve(None, Some("team-a")),
            Err(AuthError::Unauthorized)
        ));
        assert!(matches!(
            resolver.resolve(Some("Basic czNjcmV0"), None),
            Err(AuthError::Unauthorized)
        ));
    }
}
