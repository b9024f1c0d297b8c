//! The one error type of every client call, with its retry classification.
//!
//! A saga step maps an [`Error`] onto its durable retry policy:
//! * [`Error::is_transient`]: timeouts, connection failures, `5xx`, `408` and `429` — retry
//!   with backoff, no sooner than [`Error::retry_after`] when the provider said so.
//! * everything else (other `4xx`, undecodable answers, invalid input) is permanent: fail the
//!   step at once. [`Error::status`], [`Error::code`] and [`Error::provider_message`] carry what
//!   the provider said.
//!
//! Whether a failed *create* may nevertheless have happened is a separate question, answered by
//! [`Error::may_have_taken_effect`]: a step that sees `true` must look for the object before
//! creating it again (Lumanu and Blaaiz have no idempotency keys).

use std::time::Duration;

use chrono::{DateTime, Utc};
use reqwest::header::HeaderMap;
use reqwest::StatusCode;

use crate::money::MoneyError;
use crate::Provider;

/// Result of every client operation.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong talking to a provider.
///
/// The `Display` text names the provider, the operation (`endpoint`, a fixed label such as
/// `create_payable`, never a URL with query parameters) and what the provider said; it never
/// contains credentials or tokens.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The request did not complete within the configured timeout. Transient; the provider may
    /// have acted on it.
    #[error("{provider} {endpoint}: request timed out")]
    Timeout {
        /// Provider called.
        provider: Provider,
        /// Operation label.
        endpoint: &'static str,
    },
    /// No connection could be made (DNS, refused, TLS handshake). Transient; nothing was sent.
    #[error("{provider} {endpoint}: connection failed: {detail}")]
    Connect {
        /// Provider called.
        provider: Provider,
        /// Operation label.
        endpoint: &'static str,
        /// The transport's description (without URL).
        detail: String,
    },
    /// The connection broke while sending the request or reading the answer. Transient; the
    /// provider may have acted on it.
    #[error("{provider} {endpoint}: transport error: {detail}")]
    Transport {
        /// Provider called.
        provider: Provider,
        /// Operation label.
        endpoint: &'static str,
        /// The transport's description (without URL).
        detail: String,
    },
    /// The provider answered with a non-success HTTP status.
    #[error("{provider} {endpoint}: HTTP {status}{}: {message}", fmt_code(.code))]
    Api {
        /// Provider called.
        provider: Provider,
        /// Operation label.
        endpoint: &'static str,
        /// HTTP status code.
        status: u16,
        /// The provider's error code (Lumanu `error.code`, Lean `status`), if any.
        code: Option<String>,
        /// The provider's message (Lumanu `error.message`, Blaaiz `message` plus validation
        /// errors, Lean `message`), or a short excerpt of a non-JSON body.
        message: String,
        /// Lumanu's `error.request_id`, if any.
        request_id: Option<String>,
        /// How long the provider asked us to wait (`Retry-After`, Blaaiz `X-RateLimit-Reset`).
        retry_after: Option<Duration>,
    },
    /// The provider answered with success but the body is not what the contract says.
    /// Permanent (retrying will not change the shape); the provider may have acted on it.
    #[error("{provider} {endpoint}: unexpected response (HTTP {status}): {detail}")]
    Decode {
        /// Provider called.
        provider: Provider,
        /// Operation label.
        endpoint: &'static str,
        /// HTTP status code of the answer.
        status: u16,
        /// What did not match.
        detail: String,
    },
    /// An amount could not be converted exactly. Permanent.
    #[error("{provider} {endpoint}: {source}")]
    Money {
        /// Provider concerned.
        provider: Provider,
        /// Operation label.
        endpoint: &'static str,
        /// The conversion error.
        #[source]
        source: MoneyError,
    },
    /// The request was not sent: its send-by instant (see `paysaga_core::EffectPermit`) had
    /// passed, e.g. after a slow token refresh. Transient; nothing was sent.
    #[error("{provider} {endpoint}: not sent: its send-by time passed before it could leave (another worker may take the step over); nothing was sent")]
    NotSent {
        /// Provider concerned.
        provider: Provider,
        /// Operation label.
        endpoint: &'static str,
    },
    /// The request could not be built (bad base URL, invalid header value, bad input).
    /// Permanent; nothing was sent.
    #[error("{provider} {endpoint}: invalid request: {detail}")]
    InvalidRequest {
        /// Provider concerned.
        provider: Provider,
        /// Operation label.
        endpoint: &'static str,
        /// What is wrong.
        detail: String,
    },
    /// Not sent: the provider's shared request budget had no slot within the longest wait
    /// (see [`crate::budget`]). Transient; nothing was sent; the next slot is `retry_after`
    /// away.
    #[error("{provider} {endpoint}: waiting for provider capacity (the shared rate limit has no free request slot for {}ms); nothing was sent", retry_after.as_millis())]
    NoCapacity {
        /// Provider concerned.
        provider: Provider,
        /// Operation label.
        endpoint: &'static str,
        /// Until the next free slot.
        retry_after: Duration,
    },
}

impl Error {
    /// `true` when retrying later may succeed: timeouts, connection and transport failures,
    /// HTTP `5xx`, `408` and `429`.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Timeout { .. }
            | Error::Connect { .. }
            | Error::Transport { .. }
            | Error::NotSent { .. }
            | Error::NoCapacity { .. } => true,
            Error::Api { status, .. } => *status >= 500 || *status == 429 || *status == 408,
            Error::Decode { .. } | Error::Money { .. } | Error::InvalidRequest { .. } => false,
        }
    }

    /// `true` when the error is permanent (the opposite of [`Error::is_transient`]).
    pub fn is_permanent(&self) -> bool {
        !self.is_transient()
    }

    /// The delay the provider asked for before the next attempt (`Retry-After` in seconds or as
    /// an HTTP date, or Blaaiz's `X-RateLimit-Reset`), if it gave one.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Error::Api { retry_after, .. } => *retry_after,
            Error::NoCapacity { retry_after, .. } => Some(*retry_after),
            _ => None,
        }
    }

    /// `true` when the request may have reached the provider and been acted on even though the
    /// call failed: timeouts, broken connections, `5xx` and answers we could not decode. For a
    /// create call without an idempotency key, look for the object before creating it again.
    pub fn may_have_taken_effect(&self) -> bool {
        match self {
            Error::Timeout { .. } | Error::Transport { .. } | Error::Decode { .. } => true,
            Error::Api { status, .. } => *status >= 500,
            Error::Connect { .. }
            | Error::NotSent { .. }
            | Error::NoCapacity { .. }
            | Error::Money { .. }
            | Error::InvalidRequest { .. } => false,
        }
    }

    /// The HTTP status of an [`Error::Api`] or [`Error::Decode`].
    pub fn status(&self) -> Option<u16> {
        match self {
            Error::Api { status, .. } | Error::Decode { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// The provider's error code (Lumanu `error.code`, Lean `status` such as
    /// `CUSTOMER_ALREADY_EXISTS`), if any.
    pub fn code(&self) -> Option<&str> {
        match self {
            Error::Api { code, .. } => code.as_deref(),
            _ => None,
        }
    }

    /// The provider's own error message, if it answered with one.
    pub fn provider_message(&self) -> Option<&str> {
        match self {
            Error::Api { message, .. } => Some(message),
            _ => None,
        }
    }

    /// The provider the failed call was addressed to.
    pub fn provider(&self) -> Provider {
        match self {
            Error::Timeout { provider, .. }
            | Error::Connect { provider, .. }
            | Error::Transport { provider, .. }
            | Error::Api { provider, .. }
            | Error::Decode { provider, .. }
            | Error::Money { provider, .. }
            | Error::NotSent { provider, .. }
            | Error::NoCapacity { provider, .. }
            | Error::InvalidRequest { provider, .. } => *provider,
        }
    }

    /// `true` for HTTP `409 Conflict` (Lean's `CUSTOMER_ALREADY_EXISTS`).
    pub fn is_conflict(&self) -> bool {
        self.status() == Some(409)
    }

    /// `true` for HTTP `404 Not Found`.
    pub fn is_not_found(&self) -> bool {
        self.status() == Some(404)
    }

    /// `true` for HTTP `401`/`403` (credentials rejected even after a token refresh).
    pub fn is_unauthorized(&self) -> bool {
        matches!(self.status(), Some(401) | Some(403))
    }

    pub(crate) fn from_reqwest(
        provider: Provider,
        endpoint: &'static str,
        err: reqwest::Error,
    ) -> Self {
        // Pre-signed upload URLs carry signatures in their query: never keep the URL.
        let err = err.without_url();
        let detail = error_chain(&err);
        if err.is_timeout() {
            Error::Timeout { provider, endpoint }
        } else if err.is_builder() {
            Error::InvalidRequest {
                provider,
                endpoint,
                detail,
            }
        } else if err.is_connect() {
            Error::Connect {
                provider,
                endpoint,
                detail,
            }
        } else {
            Error::Transport {
                provider,
                endpoint,
                detail,
            }
        }
    }

    /// Wraps a [`MoneyError`] met while handling `provider`'s `endpoint` (e.g. converting an amount
    /// read from a response).
    pub fn money(provider: Provider, endpoint: &'static str, source: MoneyError) -> Self {
        Error::Money {
            provider,
            endpoint,
            source,
        }
    }

    pub(crate) fn decode(
        provider: Provider,
        endpoint: &'static str,
        status: u16,
        detail: impl Into<String>,
    ) -> Self {
        Error::Decode {
            provider,
            endpoint,
            status,
            detail: detail.into(),
        }
    }

    /// Builds the error for a non-success answer from its status, headers and body.
    pub(crate) fn from_response(
        provider: Provider,
        endpoint: &'static str,
        status: StatusCode,
        headers: &HeaderMap,
        body: &[u8],
        now: DateTime<Utc>,
    ) -> Self {
        let (code, message, request_id) = parse_error_body(provider, status, body);
        Error::Api {
            provider,
            endpoint,
            status: status.as_u16(),
            code,
            message,
            request_id,
            retry_after: retry_after_from_headers(headers, now),
        }
    }
}

fn fmt_code(code: &Option<String>) -> String {
    code.as_deref().map(|c| format!(" {c}")).unwrap_or_default()
}

fn error_chain(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// Reads the provider's error body: Lumanu `{"error":{"code","message","request_id"}}`, Blaaiz
/// `{"message", "errors"?}`, Lean `{"status","message","timestamp"}`. Falls back to a short
/// excerpt of the body, or the status's reason phrase.
fn parse_error_body(
    provider: Provider,
    status: StatusCode,
    body: &[u8],
) -> (Option<String>, String, Option<String>) {
    let fallback = || {
        let text = String::from_utf8_lossy(body);
        let text = text.trim();
        if text.is_empty() {
            status.canonical_reason().unwrap_or("no message").to_owned()
        } else {
            truncate(text, 200)
        }
    };
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(body) else {
        return (None, fallback(), None);
    };
    let str_at =
        |v: &serde_json::Value, key: &str| v.get(key).and_then(|x| x.as_str()).map(str::to_owned);
    // OAuth token endpoints (all three): `{"error": "invalid_client", "error_description": ...}`.
    if let Some(code) = str_at(&value, "error") {
        let message = str_at(&value, "error_description")
            .or_else(|| str_at(&value, "message"))
            .unwrap_or_else(|| code.clone());
        return (Some(code), message, None);
    }
    match provider {
        Provider::Lumanu => {
            if let Some(err) = value.get("error").filter(|e| e.is_object()) {
                let message = str_at(err, "message").unwrap_or_else(fallback);
                return (str_at(err, "code"), message, str_at(err, "request_id"));
            }
            (
                None,
                str_at(&value, "message").unwrap_or_else(fallback),
                None,
            )
        }
        Provider::Blaaiz => {
            let mut message = str_at(&value, "message").unwrap_or_else(fallback);
            if let Some(errors) = value.get("errors").and_then(|e| e.as_object()) {
                let mut details = Vec::new();
                for (field, msgs) in errors {
                    match msgs {
                        serde_json::Value::Array(list) => {
                            for m in list.iter().filter_map(|m| m.as_str()) {
                                details.push(format!("{field}: {m}"));
                            }
                        }
                        serde_json::Value::String(m) => details.push(format!("{field}: {m}")),
                        _ => {}
                    }
                }
                if !details.is_empty() {
                    message = format!("{message} ({})", details.join("; "));
                }
            }
            (None, message, None)
        }
        Provider::Lean => {
            let message = str_at(&value, "message").unwrap_or_else(fallback);
            (str_at(&value, "status"), message, None)
        }
    }
}

fn truncate(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

/// `Retry-After` as delta-seconds or HTTP date; otherwise Blaaiz's `X-RateLimit-Reset`
/// (below 10^9: seconds from now; otherwise a unix timestamp).
pub(crate) fn retry_after_from_headers(
    headers: &HeaderMap,
    now: DateTime<Utc>,
) -> Option<Duration> {
    if let Some(value) = headers
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
    {
        let value = value.trim();
        if let Ok(secs) = value.parse::<u64>() {
            return Some(Duration::from_secs(secs));
        }
        if let Ok(date) = DateTime::parse_from_rfc2822(value) {
            let delta = date.with_timezone(&Utc) - now;
            return Some(delta.to_std().unwrap_or(Duration::ZERO));
        }
    }
    if let Some(value) = headers
        .get("x-ratelimit-reset")
        .and_then(|v| v.to_str().ok())
    {
        if let Ok(n) = value.trim().parse::<i64>() {
            if n < 1_000_000_000 {
                return Some(Duration::from_secs(n.max(0).unsigned_abs()));
            }
            let delta = n - now.timestamp();
            return Some(Duration::from_secs(delta.max(0).unsigned_abs()));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    fn api(status: u16) -> Error {
        Error::Api {
            provider: Provider::Lean,
            endpoint: "x",
            status,
            code: None,
            message: "m".into(),
            request_id: None,
            retry_after: None,
        }
    }

    #[test]
    fn classification() {
        assert!(api(500).is_transient());
        assert!(api(503).is_transient());
        assert!(api(429).is_transient());
        assert!(api(408).is_transient());
        assert!(!api(400).is_transient());
        assert!(!api(404).is_transient());
        assert!(!api(409).is_transient());
        assert!(api(409).is_conflict());
        assert!(api(502).may_have_taken_effect());
        assert!(!api(429).may_have_taken_effect());
        assert!(Error::Timeout {
            provider: Provider::Lean,
            endpoint: "x"
        }
        .is_transient());
        assert!(!Error::decode(Provider::Lean, "x", 200, "bad").is_transient());
    }

    #[test]
    fn retry_after_seconds_and_http_date() {
        let now =
            DateTime::parse_from_rfc3339("2026-11-23T10:00:00Z").map(|d| d.with_timezone(&Utc));
        let now = now.unwrap_or_else(|_| Utc::now());
        let mut h = HeaderMap::new();
        h.insert("retry-after", HeaderValue::from_static("7"));
        assert_eq!(
            retry_after_from_headers(&h, now),
            Some(Duration::from_secs(7))
        );
        h.insert(
            "retry-after",
            HeaderValue::from_static("Mon, 23 Nov 2026 10:00:30 GMT"),
        );
        assert_eq!(
            retry_after_from_headers(&h, now),
            Some(Duration::from_secs(30))
        );
        h.insert(
            "retry-after",
            HeaderValue::from_static("Mon, 23 Nov 2026 09:00:00 GMT"),
        );
        assert_eq!(retry_after_from_headers(&h, now), Some(Duration::ZERO));
        let mut h = HeaderMap::new();
        h.insert("x-ratelimit-reset", HeaderValue::from_static("12"));
        assert_eq!(
            retry_after_from_headers(&h, now),
            Some(Duration::from_secs(12))
        );
        let at = (now.timestamp() + 40).to_string();
        h.insert(
            "x-ratelimit-reset",
            HeaderValue::from_str(&at).unwrap_or(HeaderValue::from_static("0")),
        );
        assert_eq!(
            retry_after_from_headers(&h, now),
            Some(Duration::from_secs(40))
        );
        assert_eq!(retry_after_from_headers(&HeaderMap::new(), now), None);
    }

    #[test]
    fn error_bodies_per_provider() {
        let (code, msg, rid) = parse_error_body(
            Provider::Lumanu,
            StatusCode::BAD_REQUEST,
            br#"{"error":{"code":"invalid_request","message":"amount must be positive","request_id":"req_1"}}"#,
        );
        assert_eq!(
            (code.as_deref(), msg.as_str(), rid.as_deref()),
            (
                Some("invalid_request"),
                "amount must be positive",
                Some("req_1")
            )
        );
        let (code, msg, _) = parse_error_body(
            Provider::Blaaiz,
            StatusCode::UNPROCESSABLE_ENTITY,
            br#"{"message":"The given data was invalid.","errors":{"email":["The email field is required."]}}"#,
        );
        assert_eq!(code, None);
        assert_eq!(
            msg,
            "The given data was invalid. (email: The email field is required.)"
        );
        let (code, msg, _) = parse_error_body(
            Provider::Lean,
            StatusCode::CONFLICT,
            br#"{"status":"CUSTOMER_ALREADY_EXISTS","message":"exists","timestamp":"2026-01-01T00:00:00Z"}"#,
        );
        assert_eq!(
            (code.as_deref(), msg.as_str()),
            (Some("CUSTOMER_ALREADY_EXISTS"), "exists")
        );
        let (code, msg, _) = parse_error_body(
            Provider::Lean,
            StatusCode::UNAUTHORIZED,
            br#"{"error":"invalid_client","error_description":"Bad client credentials"}"#,
        );
        assert_eq!(
            (code.as_deref(), msg.as_str()),
            (Some("invalid_client"), "Bad client credentials")
        );
        let (_, msg, _) = parse_error_body(
            Provider::Lean,
            StatusCode::BAD_GATEWAY,
            b"<html>bad gateway</html>",
        );
        assert_eq!(msg, "<html>bad gateway</html>");
        let (_, msg, _) = parse_error_body(Provider::Lean, StatusCode::SERVICE_UNAVAILABLE, b"");
        assert_eq!(msg, "Service Unavailable");
    }
}
