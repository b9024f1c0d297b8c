//! Provider rate limits held across every worker: the providers' [`RequestBudget`] backed by
//! the store's request budgets (`Store::reserve_request_slot`, one row per provider and
//! credential id), configured per provider (`PAYSAGA_LUMANU_RATE_LIMIT=20/s,burst=40`).
//!
//! A request waits for its slot before it is sent (no attempt, nothing logged as an error);
//! if the slot is further away than `--rate-limit-max-wait` (keep it below the steps' attempt
//! timeout), the call ends with the providers' transient `NoCapacity` ("waiting for provider
//! capacity", nothing sent) and the step retries after the slot. A `429` pushes the budget's
//! next free slot to the end of its `Retry-After` and halves its rate for `SLOW_FOR`, for every
//! worker. A store error lets the request go (the provider's own limit still answers `429`).

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use paysaga_providers::{Admission, Provider, RequestBudget};
use paysaga_store::{SlotRequest, Store};

/// How long a budget runs at half its rate after a `429`.
pub const SLOW_FOR: Duration = Duration::from_secs(30);

/// The pause after a `429` that gave no `Retry-After`.
const DEFAULT_PAUSE: Duration = Duration::from_secs(1);

/// A configured rate: `N/s`, `N/min` or `N/h`, optionally `,burst=B` (default 1).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimit {
    /// Requests per second.
    pub per_second: f64,
    /// Requests that may go at once after a quiet period.
    pub burst: u32,
}

impl RateLimit {
    /// The time between two requests.
    pub fn interval(&self) -> Duration {
        Duration::from_secs_f64(1.0 / self.per_second)
    }
}

impl FromStr for RateLimit {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let bad = |why: &str| {
            format!(
                "rate limit {text:?}: {why} (expected e.g. `20/s`, `100/min` or `20/s,burst=40`)"
            )
        };
        let mut parts = text.split(',').map(str::trim);
        let rate = parts.next().unwrap_or_default();
        let (count, unit) = rate.split_once('/').ok_or_else(|| bad("no `/unit`"))?;
        let count: f64 = count
            .trim()
            .parse()
            .map_err(|_| bad("the count is not a number"))?;
        let seconds = match unit.trim() {
            "s" | "sec" | "second" => 1.0,
            "m" | "min" | "minute" => 60.0,
            "h" | "hour" => 3600.0,
            _ => return Err(bad("the unit must be s, min or h")),
        };
        let per_second = count / seconds;
        if !(per_second.is_finite() && per_second > 0.0 && per_second <= 1_000_000.0) {
            return Err(bad("the rate must be above 0 and at most 1000000/s"));
        }
        let mut burst = 1;
        for option in parts {
            match option.split_once('=') {
                Some(("burst", b)) => {
                    burst = b
                        .trim()
                        .parse()
                        .ok()
                        .filter(|b| *b >= 1)
                        .ok_or_else(|| bad("burst must be a whole number of at least 1"))?;
                }
                _ => return Err(bad(&format!("unknown option {option:?}"))),
            }
        }
        Ok(RateLimit { per_second, burst })
    }
}

impl fmt::Display for RateLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/s,burst={}", self.per_second, self.burst)
    }
}

/// The store-backed budget handed to the provider clients before the engine (and its store)
/// exists; [`StoreBudget::attach`] connects it. No request is made before that.
pub struct StoreBudget {
    limits: HashMap<Provider, RateLimit>,
    max_wait: Duration,
    store: OnceLock<Arc<dyn Store>>,
}

impl StoreBudget {
    /// A detached budget; providers without a limit are not limited.
    pub fn new(limits: HashMap<Provider, RateLimit>, max_wait: Duration) -> Arc<StoreBudget> {
        Arc::new(StoreBudget {
            limits,
            max_wait,
            store: OnceLock::new(),
        })
    }

    /// Uses `store` from now on (the first call wins).
    pub fn attach(&self, store: Arc<dyn Store>) {
        let _ = self.store.set(store);
    }
}

#[async_trait]
impl RequestBudget for StoreBudget {
    async fn acquire(&self, provider: Provider, credential: &str) -> Admission {
        let (Some(limit), Some(store)) = (self.limits.get(&provider), self.store.get()) else {
            return Admission::Go;
        };
        let request = SlotRequest {
            provider: provider.as_str(),
            credential,
            interval: limit.interval(),
            burst: limit.burst,
            max_wait: self.max_wait,
        };
        match store.reserve_request_slot(&request).await {
            Ok(slot) => {
                let wait = (slot.at - slot.now).to_std().unwrap_or_default();
                if !slot.granted {
                    tracing::debug!(%provider, wait_ms = wait.as_millis() as u64, "no provider capacity within the longest wait");
                    return Admission::Later(wait);
                }
                if !wait.is_zero() {
                    tokio::time::sleep(wait).await;
                }
                Admission::Go
            }
            Err(e) => {
                tracing::warn!(%provider, error = %e, "cannot read the shared request budget: sending without it");
                Admission::Go
            }
        }
    }

    async fn throttled(&self, provider: Provider, credential: &str, retry_after: Option<Duration>) {
        let (Some(_), Some(store)) = (self.limits.get(&provider), self.store.get()) else {
            return;
        };
        let pause = retry_after
            .unwrap_or(DEFAULT_PAUSE)
            .min(Duration::from_secs(3600));
        if let Err(e) = store
            .throttle_requests(provider.as_str(), credential, pause, SLOW_FOR)
            .await
        {
            tracing::warn!(%provider, error = %e, "cannot tighten the shared request budget after a 429");
        } else {
            tracing::info!(%provider, pause_ms = pause.as_millis() as u64, "provider rate limit hit: every worker pauses, then runs at half the rate for a while");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_parse_with_units_and_burst_and_bad_ones_say_why() {
        assert_eq!(
            "20/s".parse::<RateLimit>(),
            Ok(RateLimit {
                per_second: 20.0,
                burst: 1
            })
        );
        assert_eq!(
            " 120/min , burst=5".parse::<RateLimit>(),
            Ok(RateLimit {
                per_second: 2.0,
                burst: 5
            })
        );
        assert_eq!(
            "20/s,burst=40".parse::<RateLimit>().map(|r| r.interval()),
            Ok(Duration::from_millis(50))
        );
        for (bad, why) in [
            ("20", "no `/unit`"),
            ("x/s", "not a number"),
            ("20/day", "unit"),
            ("0/s", "above 0"),
            ("-3/s", "above 0"),
            ("20/s,burst=0", "burst"),
            ("20/s,bust=3", "unknown option"),
        ] {
            let err = bad.parse::<RateLimit>().expect_err(bad);
            assert!(
                err.contains(why) && err.contains("expected e.g."),
                "{bad}: {err}"
            );
        }
    }
}
