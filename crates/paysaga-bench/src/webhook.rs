//! The webhook path of the wake-latency scenario, end to end over HTTP.
//!
//! Worker children serve the runtime's real endpoint (`paysaga_runtime::http::router`,
//! `POST /webhooks/lumanu`) with a verifier that checks Lumanu's real signature scheme
//! (`X-Signature: hex(HMAC-SHA256(secret, body))`, `paysaga_providers::webhook`), exactly
//! as the `paysaga worker` binary wires it (`paysaga-cli/src/webhooks.rs`, which is not a
//! library, hence this short copy). The benchmark signs each body with the same secret
//! ([`signed_body`]) and posts it like the provider would.

use chrono::{DateTime, Utc};
use paysaga_providers::webhook::{self, WebhookError};
use paysaga_providers::Provider;
use paysaga_runtime::http::{Rejection, VerifiedEvent, WebhookVerifier};
use secrecy::SecretString;
use serde_json::json;

/// The provider whose webhooks the scenario posts.
pub const PROVIDER: Provider = Provider::Lumanu;

/// Lumanu's webhook verification with the benchmark's secret. `Debug` never shows it.
pub struct BenchWebhook {
    secret: SecretString,
}

impl BenchWebhook {
    /// A verifier for `secret`.
    pub fn new(secret: &str) -> BenchWebhook {
        BenchWebhook {
            secret: SecretString::from(secret.to_string()),
        }
    }
}

impl std::fmt::Debug for BenchWebhook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BenchWebhook").finish_non_exhaustive()
    }
}

impl WebhookVerifier for BenchWebhook {
    fn provider(&self) -> &str {
        PROVIDER.as_str()
    }

    fn verify(
        &self,
        headers: &axum::http::HeaderMap,
        body: &[u8],
        now: DateTime<Utc>,
    ) -> Result<VerifiedEvent, Rejection> {
        match webhook::verify_and_parse(PROVIDER, headers, body, &self.secret, now) {
            Ok(e) => Ok(VerifiedEvent {
                event_id: e.event_id,
                event_type: e.event_type,
                correlation_key: e.correlation_key,
                payload: e.payload,
            }),
            Err(WebhookError::Unparseable {
                reason,
                fallback_event_id,
            }) => Err(Rejection::Unparseable {
                event_id: fallback_event_id,
                reason,
            }),
            Err(other) => Err(Rejection::Unauthorized {
                reason: other.to_string(),
            }),
        }
    }
}

/// A Lumanu `payable.paid` webhook for payable `payable_id` (correlation key
/// `payable:{payable_id}`) and its signature headers.
pub fn signed_body(
    secret: &str,
    event_id: &str,
    payable_id: &str,
) -> (Vec<u8>, Vec<(String, String)>) {
    let body = json!({
        "id": event_id,
        "event_type": crate::kinds::EVENT_TYPE,
        "data": {"id": payable_id, "status": "paid"},
    })
    .to_string()
    .into_bytes();
    let headers = webhook::sign(
        PROVIDER,
        &SecretString::from(secret.to_string()),
        &body,
        Utc::now(),
    )
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    (body, headers)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signed_bodies_verify_and_carry_the_wait_key() {
        let (body, headers) = signed_body("s3cret", "evt-1", "k7");
        let mut map = axum::http::HeaderMap::new();
        for (k, v) in &headers {
            map.insert(
                axum::http::HeaderName::from_bytes(k.as_bytes()).expect("header name"),
                v.parse().expect("header value"),
            );
        }
        let v = BenchWebhook::new("s3cret");
        let e = v.verify(&map, &body, Utc::now()).expect("verifies");
        assert_eq!(e.correlation_key.as_deref(), Some("payable:k7"));
        assert_eq!(crate::kinds::wait_key("k7"), "payable:k7");
        assert!(BenchWebhook::new("other")
            .verify(&map, &body, Utc::now())
            .is_err());
    }
}
