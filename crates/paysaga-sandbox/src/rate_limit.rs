//! Per-provider request limits (`--rate-limit lumanu=50/s,blaaiz=2/s`): a token bucket per
//! provider holding one second's worth of requests (at least 1), refilled at the rate. A
//! request over the limit is answered `429` in the provider's error shape with `Retry-After`
//! (whole seconds until a request is allowed again; Blaaiz adds its `X-RateLimit-*` headers)
//! and counted; `GET /_sandbox/stats` shows every provider's requests and rejections.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::sync::{Mutex, PoisonError};
use std::time::Instant;

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

use crate::app::App;
use crate::Provider;

/// The configured limits, requests per second by provider (empty: none).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RateLimits(pub BTreeMap<Provider, f64>);

impl FromStr for RateLimits {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let mut limits = BTreeMap::new();
        let text = text.trim();
        if text.is_empty() || text == "none" {
            return Ok(RateLimits(limits));
        }
        for part in text.split(',') {
            let bad = |why: &str| {
                format!("rate limit {part:?}: {why} (expected e.g. `lumanu=20/s,blaaiz=2/s`)")
            };
            let (name, rate) = part.split_once('=').ok_or_else(|| bad("no `=`"))?;
            let provider = Provider::from_path(name.trim())
                .ok_or_else(|| bad("the provider must be lumanu, blaaiz or lean"))?;
            let (count, unit) = rate.split_once('/').ok_or_else(|| bad("no `/unit`"))?;
            let count: f64 = count.trim().parse().map_err(|_| bad("not a number"))?;
            let seconds = match unit.trim() {
                "s" => 1.0,
                "min" | "m" => 60.0,
                "h" => 3600.0,
                _ => return Err(bad("the unit must be s, min or h")),
            };
            let per_second = count / seconds;
            if !(per_second.is_finite() && per_second > 0.0) {
                return Err(bad("the rate must be above 0"));
            }
            limits.insert(provider, per_second);
        }
        Ok(RateLimits(limits))
    }
}

impl fmt::Display for RateLimits {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("none");
        }
        let parts: Vec<String> = self.0.iter().map(|(p, r)| format!("{p}={r}/s")).collect();
        f.write_str(&parts.join(","))
    }
}

#[derive(Debug)]
struct Bucket {
    per_second: f64,
    tokens: f64,
    at: Instant,
}

#[derive(Debug, Default, Clone, Copy)]
struct Counts {
    requests: u64,
    rejected: u64,
}

/// The limiter and its counts.
#[derive(Debug, Default)]
pub(crate) struct Limiter {
    state: Mutex<(BTreeMap<Provider, Bucket>, BTreeMap<Provider, Counts>)>,
}

impl Limiter {
    pub(crate) fn new(limits: &RateLimits) -> Self {
        let now = Instant::now();
        let buckets = limits
            .0
            .iter()
            .map(|(p, r)| {
                (
                    *p,
                    Bucket {
                        per_second: *r,
                        tokens: r.max(1.0),
                        at: now,
                    },
                )
            })
            .collect();
        Limiter {
            state: Mutex::new((buckets, BTreeMap::new())),
        }
    }

    /// Counts one request; `Some(seconds)` to wait if it is over the limit.
    fn admit(&self, provider: Provider) -> Option<u64> {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let (buckets, counts) = &mut *state;
        let count = counts.entry(provider).or_default();
        count.requests += 1;
        let bucket = buckets.get_mut(&provider)?;
        let now = Instant::now();
        let capacity = bucket.per_second.max(1.0);
        bucket.tokens = (bucket.tokens
            + now.duration_since(bucket.at).as_secs_f64() * bucket.per_second)
            .min(capacity);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            return None;
        }
        count.rejected += 1;
        let wait = (1.0 - bucket.tokens) / bucket.per_second;
        Some((wait.ceil() as u64).max(1))
    }

    /// `{"providers": {"lumanu": {"limit_per_second", "requests", "rejected"}}}`.
    pub(crate) fn stats(&self) -> Value {
        let state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let (buckets, counts) = &*state;
        let mut providers = serde_json::Map::new();
        for p in [Provider::Lumanu, Provider::Blaaiz, Provider::Lean] {
            let c = counts.get(&p).copied().unwrap_or_default();
            providers.insert(
                p.as_str().to_owned(),
                json!({
                    "limit_per_second": buckets.get(&p).map(|b| b.per_second),
                    "requests": c.requests,
                    "rejected": c.rejected,
                }),
            );
        }
        json!({ "providers": providers })
    }
}

/// Answers `429` to a provider request over its limit (before faults and handlers).
pub(crate) async fn middleware(State(app): State<App>, req: Request, next: Next) -> Response {
    let Some(provider) = Provider::from_path(req.uri().path()) else {
        return next.run(req).await;
    };
    let Some(secs) = app.rate_limiter.admit(provider) else {
        return next.run(req).await;
    };
    let mut response = match provider {
        Provider::Lumanu => {
            crate::lumanu::ApiError::injected(StatusCode::TOO_MANY_REQUESTS).into_response()
        }
        Provider::Blaaiz => {
            crate::blaaiz::ApiError::injected(StatusCode::TOO_MANY_REQUESTS).into_response()
        }
        Provider::Lean => {
            crate::lean::ApiError::injected(StatusCode::TOO_MANY_REQUESTS).into_response()
        }
    };
    let headers = response.headers_mut();
    headers.insert(axum::http::header::RETRY_AFTER, secs.into());
    if provider == Provider::Blaaiz {
        headers.insert("x-ratelimit-remaining", 0.into());
        headers.insert("x-ratelimit-reset", secs.into());
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_parse_and_a_burst_over_the_limit_is_counted() {
        let limits: RateLimits = "lumanu=5/s, blaaiz=120/min".parse().expect("parses");
        assert_eq!(limits.0.get(&Provider::Blaaiz), Some(&2.0));
        assert!("stripe=5/s".parse::<RateLimits>().is_err());
        assert!("lumanu=5".parse::<RateLimits>().is_err());
        assert!("lumanu=0/s".parse::<RateLimits>().is_err());
        let limiter = Limiter::new(&limits);
        let rejected = (0..8)
            .filter(|_| limiter.admit(Provider::Lumanu).is_some())
            .count();
        assert_eq!(rejected, 3, "one second's worth goes, the rest is refused");
        assert!(limiter.admit(Provider::Lean).is_none(), "no limit");
        let stats = limiter.stats();
        assert_eq!(stats["providers"]["lumanu"]["requests"], 8);
        assert_eq!(stats["providers"]["lumanu"]["rejected"], 3);
        assert_eq!(stats["providers"]["lean"]["limit_per_second"], Value::Null);
    }
}
