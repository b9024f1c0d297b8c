//! The webhook path of the wake-latency scenario, end to end over HTTP.
//!
//! Worker children serve the runtime's real endpoint (`paysaga_runtime::http::router`,
//! `POST /webhooks/lumanu`) with a verifier that checks Lumanu's real signature scheme
//! (`X-Signature: hex(HMAC-SHA256(secret, body))`), the same `paysaga_providers::endpoint`
//! verifier the `paysaga worker` binary wires. The benchmark signs each body with the same
//! secret ([`signed_body`]) and posts it like the provider would.

use chrono::Utc;
use paysaga_providers::webhook;
use paysaga_providers::Provider;
use secrecy::SecretString;
use serde_json::json;

/// The provider whose webhooks the scenario posts.
pub const PROVIDER: Provider = Provider::Lumanu;

/// A signed Lumanu `payable.paid` body and its headers.
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
    use paysaga_providers::endpoint::ProviderWebhook;
    use paysaga_runtime::http::WebhookVerifier;

    fn verifier(secret: &str) -> ProviderWebhook {
        ProviderWebhook::new(PROVIDER, secret.to_string().into())
    }

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
        let v = verifier("s3cret");
        let e = v.verify(&map, &body, Utc::now()).expect("verifies");
        assert_eq!(e.correlation_key.as_deref(), Some("payable:k7"));
        assert_eq!(crate::kinds::wait_key("k7"), "payable:k7");
        assert!(verifier("other").verify(&map, &body, Utc::now()).is_err());
    }
}
