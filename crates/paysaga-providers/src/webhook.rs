//! Webhook signature verification and parsing.
//!
//! | provider | signature | event id | event type |
//! |---|---|---|---|
//! | Lumanu | `X-Signature: hex(HMAC-SHA256(secret, body))` | `id` | `event_type` |
//! | Blaaiz | `x-blaaiz-signature: hex(HMAC-SHA256(secret, "{x-blaaiz-timestamp}.{body}"))`, timestamp within 5 minutes | `event_id` | `event_type`, else from `type` (`payout.status_changed`, `customer.status_changed`) |
//! | Lean | `lean-signature: sha512=hex(HMAC-SHA512(secret, body))` | `event_id` | `type` |
//!
//! The signature is checked over the exact raw bytes received, in constant time. The
//! correlation key (what a saga's wait names) comes from the body alone, per the table in
//! `docs/PROVIDER-CONTRACTS.md`.
//!
//! What the webhook endpoint does with each outcome:
//! * `Ok(event)`: store it (deduplicated on provider + `event_id`), then answer 2xx.
//! * [`WebhookError::MissingSignature`], [`WebhookError::BadSignature`],
//!   [`WebhookError::StaleTimestamp`]: answer 401 and count it; store nothing.
//! * [`WebhookError::Unparseable`]: the signature is valid but the body is not usable. Store the
//!   raw body under [`WebhookError::Unparseable::fallback_event_id`] (hex SHA-256 of the body)
//!   for operators, answer 400.

use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use http::{HeaderMap, HeaderName};
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256, Sha512};

use crate::Provider;

/// Largest accepted distance between a Blaaiz timestamp and now, in seconds.
pub const BLAAIZ_TOLERANCE_SECS: i64 = 300;

/// Lumanu's signature header.
pub const LUMANU_SIGNATURE: HeaderName = HeaderName::from_static("x-signature");
/// Blaaiz's signature header.
pub const BLAAIZ_SIGNATURE: HeaderName = HeaderName::from_static("x-blaaiz-signature");
/// Blaaiz's timestamp header.
pub const BLAAIZ_TIMESTAMP: HeaderName = HeaderName::from_static("x-blaaiz-timestamp");
/// Lean's signature header.
pub const LEAN_SIGNATURE: HeaderName = HeaderName::from_static("lean-signature");

/// A verified, parsed webhook.
#[derive(Debug, Clone, PartialEq)]
pub struct ParsedEvent {
    /// The provider's event id (duplicates share it).
    pub event_id: String,
    /// Event type (`payable.paid`, `customer.status_changed`, `payout.status_changed`,
    /// `payment.updated`, ...).
    pub event_type: String,
    /// What a saga wait names (`payable:{id}`, `intent:{id}`, ...); `None` for event types
    /// outside the contract's table.
    pub correlation_key: Option<String>,
    /// The whole body.
    pub payload: serde_json::Value,
}

/// Why a webhook was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WebhookError {
    /// A signature header (or Blaaiz's timestamp header) is absent. HTTP 401.
    #[error("missing webhook header {header}")]
    MissingSignature {
        /// The header that is missing.
        header: &'static str,
    },
    /// The signature does not match the body (or is malformed). HTTP 401.
    #[error("webhook signature does not match")]
    BadSignature,
    /// Blaaiz's signed timestamp is more than 5 minutes away from now. HTTP 401.
    #[error("webhook timestamp {timestamp} is more than {BLAAIZ_TOLERANCE_SECS} s from now")]
    StaleTimestamp {
        /// The timestamp received (unix seconds).
        timestamp: i64,
    },
    /// The signature is valid but the body cannot be used. HTTP 400; store the raw body anyway
    /// under `fallback_event_id`.
    #[error("signed webhook cannot be parsed: {reason}")]
    Unparseable {
        /// What is wrong.
        reason: String,
        /// Hex SHA-256 of the raw body: the dedup key for storing it.
        fallback_event_id: String,
    },
}

impl WebhookError {
    /// The HTTP status the endpoint answers with: 401, or 400 for [`WebhookError::Unparseable`].
    pub fn http_status(&self) -> u16 {
        match self {
            WebhookError::Unparseable { .. } => 400,
            _ => 401,
        }
    }

    /// `true` when the request is authentic (only its body is unusable): store it.
    pub fn is_authentic(&self) -> bool {
        matches!(self, WebhookError::Unparseable { .. })
    }
}

/// Hex SHA-256 of `raw_body`: the event id under which an unparseable (but signed) body is
/// stored.
pub fn fallback_event_id(raw_body: &[u8]) -> String {
    hex::encode(Sha256::digest(raw_body))
}

type HmacSha256 = Hmac<Sha256>;
type HmacSha512 = Hmac<Sha512>;

fn mac256(secret: &SecretString, parts: &[&[u8]]) -> HmacSha256 {
    let mut mac = HmacSha256::new_from_slice(secret.expose_secret().as_bytes())
        .expect("HMAC accepts keys of any length");
    for p in parts {
        mac.update(p);
    }
    mac
}

fn mac512(secret: &SecretString, body: &[u8]) -> HmacSha512 {
    let mut mac = HmacSha512::new_from_slice(secret.expose_secret().as_bytes())
        .expect("HMAC accepts keys of any length");
    mac.update(body);
    mac
}

/// The headers `provider` would send with `body` signed by `secret` at `timestamp` (only
/// Blaaiz signs the timestamp). Used by tests and the sandbox.
pub fn sign(
    provider: Provider,
    secret: &SecretString,
    body: &[u8],
    timestamp: DateTime<Utc>,
) -> Vec<(HeaderName, String)> {
    match provider {
        Provider::Lumanu => {
            vec![(
                LUMANU_SIGNATURE,
                hex::encode(mac256(secret, &[body]).finalize().into_bytes()),
            )]
        }
        Provider::Blaaiz => {
            let ts = timestamp.timestamp().to_string();
            let sig = hex::encode(
                mac256(secret, &[ts.as_bytes(), b".", body])
                    .finalize()
                    .into_bytes(),
            );
            vec![(BLAAIZ_TIMESTAMP, ts), (BLAAIZ_SIGNATURE, sig)]
        }
        Provider::Lean => {
            vec![(
                LEAN_SIGNATURE,
                format!(
                    "sha512={}",
                    hex::encode(mac512(secret, body).finalize().into_bytes())
                ),
            )]
        }
    }
}

fn header<'a>(
    headers: &'a HeaderMap,
    name: &HeaderName,
    label: &'static str,
) -> Result<&'a str, WebhookError> {
    let value = headers
        .get(name)
        .ok_or(WebhookError::MissingSignature { header: label })?;
    let value = value
        .to_str()
        .map_err(|_| WebhookError::BadSignature)?
        .trim();
    if value.is_empty() {
        return Err(WebhookError::MissingSignature { header: label });
    }
    Ok(value)
}

fn decode_hex(sig: &str) -> Result<Vec<u8>, WebhookError> {
    hex::decode(sig).map_err(|_| WebhookError::BadSignature)
}

/// Checks the signature of `raw_body` and parses it.
///
/// `now` is the current time (a parameter so that tests and replays are deterministic); it is
/// only used for Blaaiz's timestamp window.
pub fn verify_and_parse(
    provider: Provider,
    headers: &HeaderMap,
    raw_body: &[u8],
    secret: &SecretString,
    now: DateTime<Utc>,
) -> Result<ParsedEvent, WebhookError> {
    verify(provider, headers, raw_body, secret, now)?;
    parse(provider, raw_body)
}

/// Signature (and, for Blaaiz, timestamp) check only.
pub fn verify(
    provider: Provider,
    headers: &HeaderMap,
    raw_body: &[u8],
    secret: &SecretString,
    now: DateTime<Utc>,
) -> Result<(), WebhookError> {
    match provider {
        Provider::Lumanu => {
            let sig = decode_hex(header(headers, &LUMANU_SIGNATURE, "X-Signature")?)?;
            mac256(secret, &[raw_body])
                .verify_slice(&sig)
                .map_err(|_| WebhookError::BadSignature)
        }
        Provider::Blaaiz => {
            let sig = header(headers, &BLAAIZ_SIGNATURE, "x-blaaiz-signature")?;
            let ts_text = header(headers, &BLAAIZ_TIMESTAMP, "x-blaaiz-timestamp")?;
            let sig = decode_hex(sig)?;
            mac256(secret, &[ts_text.as_bytes(), b".", raw_body])
                .verify_slice(&sig)
                .map_err(|_| WebhookError::BadSignature)?;
            let timestamp: i64 = ts_text.parse().map_err(|_| WebhookError::BadSignature)?;
            // `abs_diff`: a signed timestamp near i64::MIN/MAX must not overflow (a panic).
            if now.timestamp().abs_diff(timestamp) > BLAAIZ_TOLERANCE_SECS.unsigned_abs() {
                return Err(WebhookError::StaleTimestamp { timestamp });
            }
            Ok(())
        }
        Provider::Lean => {
            let value = header(headers, &LEAN_SIGNATURE, "lean-signature")?;
            let (algo, hex_sig) = value.split_once('=').ok_or(WebhookError::BadSignature)?;
            if !algo.trim().eq_ignore_ascii_case("sha512") {
                return Err(WebhookError::BadSignature);
            }
            let sig = decode_hex(hex_sig.trim())?;
            mac512(secret, raw_body)
                .verify_slice(&sig)
                .map_err(|_| WebhookError::BadSignature)
        }
    }
}

/// Parses an (already verified) body: event id, event type, correlation key.
pub fn parse(provider: Provider, raw_body: &[u8]) -> Result<ParsedEvent, WebhookError> {
    let unparseable = |reason: String| WebhookError::Unparseable {
        reason,
        fallback_event_id: fallback_event_id(raw_body),
    };
    let payload: serde_json::Value = serde_json::from_slice(raw_body)
        .map_err(|e| unparseable(format!("body is not JSON: {e}")))?;
    if !payload.is_object() {
        return Err(unparseable("body is not a JSON object".to_owned()));
    }
    if has_nul(&payload) {
        // Valid JSON, but PostgreSQL cannot store U+0000 in jsonb or text: refusing it here
        // keeps the raw body (400) instead of failing the insert (503, retried forever).
        return Err(unparseable(
            "body contains U+0000 (NUL), which cannot be stored as JSON text".to_owned(),
        ));
    }
    let id_field = match provider {
        Provider::Lumanu => "id",
        Provider::Blaaiz | Provider::Lean => "event_id",
    };
    let event_id = id_at(&payload, &[id_field])
        .ok_or_else(|| unparseable(format!("body has no {id_field}")))?;
    let event_type = match provider {
        Provider::Lumanu => text_at(&payload, &["event_type"]),
        Provider::Lean => text_at(&payload, &["type"]),
        Provider::Blaaiz => text_at(&payload, &["event_type"]).or_else(|| {
            text_at(&payload, &["type"]).map(|t| match t.as_str() {
                "payout" => "payout.status_changed".to_owned(),
                "customer" => "customer.status_changed".to_owned(),
                other => format!("{other}.status_changed"),
            })
        }),
    }
    .ok_or_else(|| unparseable("body has no event type".to_owned()))?;
    let correlation_key = correlation_key(provider, &event_type, &payload);
    Ok(ParsedEvent {
        event_id,
        event_type,
        correlation_key,
        payload,
    })
}

/// The correlation key of an event, per the contract's table.
pub fn correlation_key(
    provider: Provider,
    event_type: &str,
    payload: &serde_json::Value,
) -> Option<String> {
    match provider {
        Provider::Lumanu => {
            if event_type.starts_with("transfer.") {
                if let Some(funding) = id_at(payload, &["data", "funding_id"]) {
                    return Some(format!("funding:{funding}"));
                }
                id_at(payload, &["data", "id"]).map(|id| format!("transfer:{id}"))
            } else if event_type.starts_with("payable.") {
                id_at(payload, &["data", "id"]).map(|id| format!("payable:{id}"))
            } else {
                None
            }
        }
        Provider::Blaaiz => match event_type {
            "customer.status_changed" => {
                id_at(payload, &["customer_id"]).map(|id| format!("customer:{id}"))
            }
            "payout.status_changed" => {
                id_at(payload, &["transaction_id"]).map(|id| format!("transaction:{id}"))
            }
            _ => None,
        },
        Provider::Lean => match event_type {
            "payment_source.beneficiary.created" | "payment_source.beneficiary.updated" => {
                let customer = id_at(payload, &["payload", "customer_id"])?;
                let destination = id_at(payload, &["payload", "payment_destination_id"])?;
                Some(format!("beneficiary:{customer}:{destination}"))
            }
            "payment_source.created" => {
                id_at(payload, &["payload", "customer_id"]).map(|id| format!("customer:{id}"))
            }
            "payment.created" | "payment.updated" => {
                id_at(payload, &["payload", "intent_id"]).map(|id| format!("intent:{id}"))
            }
            _ => None,
        },
    }
}

/// Does any string or key of `v` contain U+0000? (`v` is at most 128 levels deep: serde_json's
/// recursion limit.)
fn has_nul(v: &serde_json::Value) -> bool {
    match v {
        serde_json::Value::String(s) => s.contains('\0'),
        serde_json::Value::Array(items) => items.iter().any(has_nul),
        serde_json::Value::Object(map) => map.iter().any(|(k, v)| k.contains('\0') || has_nul(v)),
        _ => false,
    }
}

fn at<'a>(v: &'a serde_json::Value, path: &[&str]) -> Option<&'a serde_json::Value> {
    path.iter().try_fold(v, |v, k| v.get(k))
}

fn text_at(v: &serde_json::Value, path: &[&str]) -> Option<String> {
    at(v, path)
        .and_then(|x| x.as_str())
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
}

/// A non-empty string, or an integer written as text.
fn id_at(v: &serde_json::Value, path: &[&str]) -> Option<String> {
    match at(v, path)? {
        serde_json::Value::String(s) if !s.is_empty() => Some(s.clone()),
        serde_json::Value::Number(n) if n.is_i64() || n.is_u64() => Some(n.to_string()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use http::HeaderValue;

    fn secret() -> SecretString {
        SecretString::from("whsec_paysaga_test")
    }

    fn now() -> DateTime<Utc> {
        Utc.timestamp_opt(1_763_900_000, 0)
            .single()
            .unwrap_or_else(Utc::now)
    }

    fn signed(provider: Provider, body: &[u8], at: DateTime<Utc>) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (name, value) in sign(provider, &secret(), body, at) {
            if let Ok(v) = HeaderValue::from_str(&value) {
                h.insert(name, v);
            }
        }
        h
    }

    fn ok(provider: Provider, body: &str) -> ParsedEvent {
        let h = signed(provider, body.as_bytes(), now());
        match verify_and_parse(provider, &h, body.as_bytes(), &secret(), now()) {
            Ok(e) => e,
            Err(e) => panic!("{provider} {body}: {e:?}"),
        }
    }

    #[test]
    fn known_vectors() {
        // Independently computed with `openssl dgst -sha256|-sha512 -hmac secret` over the same bytes.
        let body = br#"{"id":"evt_1","event_type":"payable.paid","data":{"id":"pay_1"}}"#;
        let s = SecretString::from("secret");
        let lumanu = sign(Provider::Lumanu, &s, body, now());
        assert_eq!(
            lumanu[0].1,
            "949b6b4fb1f8775260b49caf2828d291930d50e5b6bac130eaeaea4d13ff39b2"
        );
        let blaaiz = sign(Provider::Blaaiz, &s, b"{}", now());
        assert_eq!(blaaiz[0].1, "1763900000");
        assert_eq!(
            blaaiz[1].1,
            "94f79e5eac6928ea3189939be9f0d0719f432b134dd6500d3f152e7ecbfe5f8b"
        );
        let lean = sign(Provider::Lean, &s, b"{}", now());
        assert_eq!(
            lean[0].1,
            "sha512=d6f1126a735b5a754f6e58434f170bdefdffada2c17f67d9bbd86d97669b94f80a92978665bf7ea423832b3f4f3856e2901a7c028e16c81efbb43298a1c00772"
        );
    }

    #[test]
    fn lumanu_events_and_keys() {
        let e = ok(
            Provider::Lumanu,
            r#"{"id":"evt_1","event_type":"payable.paid","data":{"id":"pay_1"}}"#,
        );
        assert_eq!(
            (e.event_id.as_str(), e.event_type.as_str()),
            ("evt_1", "payable.paid")
        );
        assert_eq!(e.correlation_key.as_deref(), Some("payable:pay_1"));
        for t in [
            "payable.created",
            "payable.updated",
            "payable.approved",
            "payable.unapproved",
            "payable.canceled",
        ] {
            let body = format!(r#"{{"id":"e","event_type":"{t}","data":{{"id":"p9"}}}}"#);
            assert_eq!(
                ok(Provider::Lumanu, &body).correlation_key.as_deref(),
                Some("payable:p9"),
                "{t}"
            );
        }
        for t in ["transfer.created", "transfer.updated"] {
            let with = format!(
                r#"{{"id":"e","event_type":"{t}","data":{{"id":"tr1","funding_id":"f1"}}}}"#
            );
            assert_eq!(
                ok(Provider::Lumanu, &with).correlation_key.as_deref(),
                Some("funding:f1")
            );
            let without = format!(r#"{{"id":"e","event_type":"{t}","data":{{"id":"tr1"}}}}"#);
            assert_eq!(
                ok(Provider::Lumanu, &without).correlation_key.as_deref(),
                Some("transfer:tr1")
            );
            let null_funding = format!(
                r#"{{"id":"e","event_type":"{t}","data":{{"id":"tr1","funding_id":null}}}}"#
            );
            assert_eq!(
                ok(Provider::Lumanu, &null_funding)
                    .correlation_key
                    .as_deref(),
                Some("transfer:tr1")
            );
        }
        let other = ok(
            Provider::Lumanu,
            r#"{"id":"e","event_type":"workspace.created","data":{"id":"w"}}"#,
        );
        assert_eq!(other.correlation_key, None);
    }

    #[test]
    fn blaaiz_events_and_keys() {
        let c = ok(
            Provider::Blaaiz,
            r#"{"event_type":"customer.status_changed","customer_id":"cus_1","old_status":"PENDING","new_status":"VERIFIED","comment":"","event_id":"ev_c","type":"customer"}"#,
        );
        assert_eq!(
            (c.event_id.as_str(), c.event_type.as_str()),
            ("ev_c", "customer.status_changed")
        );
        assert_eq!(c.correlation_key.as_deref(), Some("customer:cus_1"));
        let p = ok(
            Provider::Blaaiz,
            r#"{"message":"Payout successful","transaction_id":"tx_1","transaction_reference":"r","merchant_reference":"ps-1","transaction_status":"SUCCESSFUL","transaction_amount":100.5,"transaction_currency":"NGN","customer_id":"cus_1","event_id":"ev_p","type":"payout"}"#,
        );
        assert_eq!(
            (p.event_id.as_str(), p.event_type.as_str()),
            ("ev_p", "payout.status_changed")
        );
        assert_eq!(p.correlation_key.as_deref(), Some("transaction:tx_1"));
    }

    #[test]
    fn lean_events_and_keys() {
        let pay = |t: &str| {
            format!(
                r#"{{"type":"{t}","payload":{{"id":"pm1","customer_id":"c1","intent_id":"in1","status":"ACCEPTED_BY_BANK","amount":10.12,"currency":"AED"}},"message":"m","timestamp":"2026-11-23T10:00:00Z","event_id":"ev-{t}"}}"#
            )
        };
        for t in ["payment.created", "payment.updated"] {
            let e = ok(Provider::Lean, &pay(t));
            assert_eq!(
                (e.event_type.as_str(), e.correlation_key.as_deref()),
                (t, Some("intent:in1"))
            );
            assert_eq!(e.event_id, format!("ev-{t}"));
        }
        for t in [
            "payment_source.beneficiary.created",
            "payment_source.beneficiary.updated",
        ] {
            let body = format!(
                r#"{{"type":"{t}","payload":{{"id":"b1","customer_id":"c1","payment_source_id":"ps1","payment_destination_id":"d1","status":"ACTIVE"}},"message":"m","timestamp":"2026-11-23T10:00:00Z","event_id":"e"}}"#
            );
            assert_eq!(
                ok(Provider::Lean, &body).correlation_key.as_deref(),
                Some("beneficiary:c1:d1")
            );
        }
        let created = ok(
            Provider::Lean,
            r#"{"type":"payment_source.created","payload":{"id":"ps1","customer_id":"c1","status":"ACTIVE"},"message":"m","timestamp":"t","event_id":"e"}"#,
        );
        assert_eq!(created.correlation_key.as_deref(), Some("customer:c1"));
        let unknown = ok(
            Provider::Lean,
            r#"{"type":"entity.created","payload":{},"event_id":"e"}"#,
        );
        assert_eq!(unknown.correlation_key, None);
    }

    #[test]
    fn tampered_body_wrong_secret_and_missing_headers() {
        let body = br#"{"id":"evt_1","event_type":"payable.paid","data":{"id":"pay_1"}}"#;
        for p in Provider::ALL {
            let h = signed(p, body, now());
            let tampered = br#"{"id":"evt_1","event_type":"payable.paid","data":{"id":"pay_2"}}"#;
            assert_eq!(
                verify_and_parse(p, &h, tampered, &secret(), now()),
                Err(WebhookError::BadSignature),
                "{p}"
            );
            let wrong = SecretString::from("other");
            assert_eq!(
                verify_and_parse(p, &h, body, &wrong, now()),
                Err(WebhookError::BadSignature),
                "{p}"
            );
            let r = verify_and_parse(p, &HeaderMap::new(), body, &secret(), now());
            assert!(
                matches!(r, Err(WebhookError::MissingSignature { .. })),
                "{p}"
            );
            assert_eq!(r.err().map(|e| e.http_status()), Some(401));
        }
        // Garbage signatures.
        let mut h = HeaderMap::new();
        h.insert(LUMANU_SIGNATURE, HeaderValue::from_static("zz-not-hex"));
        assert_eq!(
            verify(Provider::Lumanu, &h, body, &secret(), now()),
            Err(WebhookError::BadSignature)
        );
        let mut h = signed(Provider::Lean, body, now());
        let value = h
            .get(LEAN_SIGNATURE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .replace("sha512=", "sha256=");
        if let Ok(v) = HeaderValue::from_str(&value) {
            h.insert(LEAN_SIGNATURE, v);
        }
        assert_eq!(
            verify(Provider::Lean, &h, body, &secret(), now()),
            Err(WebhookError::BadSignature)
        );
        // Uppercase hex is accepted.
        let mut h = signed(Provider::Lumanu, body, now());
        let upper = h
            .get(LUMANU_SIGNATURE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_uppercase();
        if let Ok(v) = HeaderValue::from_str(&upper) {
            h.insert(LUMANU_SIGNATURE, v);
        }
        assert_eq!(verify(Provider::Lumanu, &h, body, &secret(), now()), Ok(()));
    }

    #[test]
    fn blaaiz_timestamp_window() {
        let body = br#"{"event_type":"customer.status_changed","customer_id":"c","event_id":"e","type":"customer"}"#;
        let at = now() - chrono::Duration::seconds(301);
        let h = signed(Provider::Blaaiz, body, at);
        assert_eq!(
            verify_and_parse(Provider::Blaaiz, &h, body, &secret(), now()),
            Err(WebhookError::StaleTimestamp {
                timestamp: at.timestamp()
            })
        );
        let future = now() + chrono::Duration::seconds(301);
        let h = signed(Provider::Blaaiz, body, future);
        assert!(matches!(
            verify(Provider::Blaaiz, &h, body, &secret(), now()),
            Err(WebhookError::StaleTimestamp { .. })
        ));
        let h = signed(
            Provider::Blaaiz,
            body,
            now() - chrono::Duration::seconds(299),
        );
        assert!(verify(Provider::Blaaiz, &h, body, &secret(), now()).is_ok());
        // The timestamp is signed: changing it breaks the signature.
        let mut h = signed(Provider::Blaaiz, body, now());
        h.insert(BLAAIZ_TIMESTAMP, HeaderValue::from(now().timestamp() + 1));
        assert_eq!(
            verify(Provider::Blaaiz, &h, body, &secret(), now()),
            Err(WebhookError::BadSignature)
        );
        // Missing timestamp header.
        let mut h = signed(Provider::Blaaiz, body, now());
        h.remove(BLAAIZ_TIMESTAMP);
        assert_eq!(
            verify(Provider::Blaaiz, &h, body, &secret(), now()),
            Err(WebhookError::MissingSignature {
                header: "x-blaaiz-timestamp"
            })
        );
    }

    #[test]
    fn unparseable_but_signed() {
        for (p, body) in [
            (Provider::Lumanu, &b"not json at all"[..]),
            (
                Provider::Lumanu,
                &br#"{"event_type":"payable.paid","data":{"id":"x"}}"#[..],
            ),
            (
                Provider::Blaaiz,
                &br#"{"type":"payout","transaction_id":"t"}"#[..],
            ),
            (Provider::Lean, &br#"[1,2,3]"#[..]),
            (Provider::Lean, &br#"{"event_id":"e","payload":{}}"#[..]),
        ] {
            let h = signed(p, body, now());
            match verify_and_parse(p, &h, body, &secret(), now()) {
                Err(e @ WebhookError::Unparseable { .. }) => {
                    assert_eq!(e.http_status(), 400);
                    assert!(e.is_authentic());
                    if let WebhookError::Unparseable {
                        fallback_event_id: id,
                        ..
                    } = e
                    {
                        assert_eq!(id, fallback_event_id(body));
                        assert_eq!(id.len(), 64);
                    }
                }
                other => panic!("{p}: {other:?}"),
            }
        }
        assert_eq!(
            fallback_event_id(b""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn secret_not_in_debug() {
        let s = secret();
        assert!(!format!("{s:?}").contains("whsec_paysaga_test"));
        let err = verify(Provider::Lumanu, &HeaderMap::new(), b"{}", &s, now());
        assert!(!format!("{err:?}").contains("whsec_paysaga_test"));
    }
}
