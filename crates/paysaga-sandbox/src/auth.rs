//! Access tokens issued by the three token endpoints, and constant-time secret comparison.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use secrecy::{ExposeSecret, SecretString};
use subtle::ConstantTimeEq;

use crate::config::ClientCredentials;
use crate::Provider;

/// Compares a presented secret with the expected one without leaking timing.
pub(crate) fn secret_eq(presented: &str, expected: &SecretString) -> bool {
    presented
        .as_bytes()
        .ct_eq(expected.expose_secret().as_bytes())
        .into()
}

/// True when `id`/`secret` match the configured client credentials.
pub(crate) fn client_matches(
    expected: Option<&ClientCredentials>,
    id: Option<&str>,
    secret: Option<&str>,
) -> bool {
    match (expected, id, secret) {
        (Some(c), Some(id), Some(secret)) => {
            // Evaluate both comparisons to keep timing independent of which one fails.
            let id_ok = id.as_bytes().ct_eq(c.client_id.as_bytes());
            let secret_ok = secret
                .as_bytes()
                .ct_eq(c.client_secret.expose_secret().as_bytes());
            (id_ok & secret_ok).into()
        }
        _ => false,
    }
}

#[derive(Debug)]
struct Issued {
    provider: Provider,
    expires_at: Instant,
    /// Scopes granted (Blaaiz); empty for providers without scopes.
    scopes: Vec<String>,
}

/// Opaque bearer tokens with an expiry.
#[derive(Debug, Default)]
pub(crate) struct Tokens {
    issued: Mutex<HashMap<String, Issued>>,
}

impl Tokens {
    /// Issues a fresh random token for `provider`.
    pub(crate) fn issue(&self, provider: Provider, ttl: Duration) -> String {
        self.issue_scoped(provider, ttl, Vec::new())
    }

    /// Issues a fresh random token for `provider` granting `scopes`.
    pub(crate) fn issue_scoped(
        &self,
        provider: Provider,
        ttl: Duration,
        scopes: Vec<String>,
    ) -> String {
        let token = format!(
            "sbx_{}_{}",
            provider,
            hex::encode(rand::random::<[u8; 24]>())
        );
        let mut issued = self.issued.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        issued.retain(|_, t| t.expires_at > now);
        issued.insert(
            token.clone(),
            Issued {
                provider,
                expires_at: now + ttl,
                scopes,
            },
        );
        token
    }

    /// Is `token` a live token of `provider`?
    pub(crate) fn valid(&self, provider: Provider, token: &str) -> bool {
        self.scopes(provider, token).is_some()
    }

    /// The scopes of a live token of `provider`; `None` if it is not one.
    pub(crate) fn scopes(&self, provider: Provider, token: &str) -> Option<Vec<String>> {
        let issued = self.issued.lock().unwrap_or_else(PoisonError::into_inner);
        issued
            .get(token)
            .filter(|t| t.provider == provider && t.expires_at > Instant::now())
            .map(|t| t.scopes.clone())
    }
}

/// The bearer token in an `Authorization` header value, if any.
pub(crate) fn bearer(headers: &axum::http::HeaderMap) -> Option<&str> {
    let value = headers
        .get(axum::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then_some(token.trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_expire_and_are_per_provider() {
        let t = Tokens::default();
        let a = t.issue(Provider::Lean, Duration::from_secs(60));
        assert!(t.valid(Provider::Lean, &a));
        assert!(!t.valid(Provider::Lumanu, &a));
        let b = t.issue(Provider::Lean, Duration::ZERO);
        assert!(!t.valid(Provider::Lean, &b));
        assert!(!t.valid(Provider::Lean, "nope"));
    }

    #[test]
    fn secrets_compare() {
        let s = SecretString::from("abc");
        assert!(secret_eq("abc", &s));
        assert!(!secret_eq("abd", &s));
        assert!(!secret_eq("ab", &s));
    }
}
