//! Retry policies: how long to wait before the next attempt of a step, and when to stop.
//!
//! Policies are bounded by default (attempts *and* total time). Unlimited attempts must be
//! asked for explicitly with `max_attempts = "unlimited"`; the total-time bound still applies.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::definition::serde_duration;

/// How many attempts a step may make.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attempts {
    /// At most this many attempts (the first run counts as attempt 1).
    Limited(u32),
    /// No attempt limit; only `max_total` stops the retries.
    Unlimited,
}

impl Serialize for Attempts {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Attempts::Limited(n) => s.serialize_u32(*n),
            Attempts::Unlimited => s.serialize_str("unlimited"),
        }
    }
}

impl<'de> Deserialize<'de> for Attempts {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            N(u32),
            S(String),
        }
        match Raw::deserialize(d)? {
            Raw::N(n) => Ok(Attempts::Limited(n)),
            Raw::S(s) if s == "unlimited" => Ok(Attempts::Unlimited),
            Raw::S(s) => Err(serde::de::Error::custom(format!(
                "max_attempts must be a positive integer or \"unlimited\", got {s:?}"
            ))),
        }
    }
}

/// Exponential backoff with deterministic jitter, bounded in attempts and total time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryPolicy {
    /// Delay before the second attempt.
    #[serde(with = "serde_duration")]
    pub initial_delay: Duration,
    /// Factor applied to the delay after each attempt (>= 1.0).
    pub multiplier: f64,
    /// Upper bound of one delay.
    #[serde(with = "serde_duration")]
    pub max_delay: Duration,
    /// Attempt limit (the first run is attempt 1).
    pub max_attempts: Attempts,
    /// Upper bound of the time from the first attempt to the last retry.
    #[serde(with = "serde_duration")]
    pub max_total: Duration,
    /// Fraction of each delay that is randomised, in `[0, 1]`: a delay `d` becomes a value in
    /// `[d * (1 - jitter), d]`.
    pub jitter: f64,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            initial_delay: Duration::from_secs(1),
            multiplier: 2.0,
            max_delay: Duration::from_secs(300),
            max_attempts: Attempts::Limited(10),
            max_total: Duration::from_secs(24 * 3600),
            jitter: 0.2,
        }
    }
}

impl RetryPolicy {
    /// With this delay before the second attempt.
    #[must_use]
    pub fn with_initial_delay(mut self, delay: Duration) -> Self {
        self.initial_delay = delay;
        self
    }

    /// With this factor applied to the delay after each attempt (>= 1.0).
    #[must_use]
    pub fn with_multiplier(mut self, multiplier: f64) -> Self {
        self.multiplier = multiplier;
        self
    }

    /// With this upper bound of one delay.
    #[must_use]
    pub fn with_max_delay(mut self, delay: Duration) -> Self {
        self.max_delay = delay;
        self
    }

    /// With at most `attempts` attempts (the first run is attempt 1).
    #[must_use]
    pub fn with_max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = Attempts::Limited(attempts);
        self
    }

    /// Without an attempt limit (the total-time bound still applies).
    #[must_use]
    pub fn with_unlimited_attempts(mut self) -> Self {
        self.max_attempts = Attempts::Unlimited;
        self
    }

    /// With this bound of the time from the first attempt to the last retry.
    #[must_use]
    pub fn with_max_total(mut self, total: Duration) -> Self {
        self.max_total = total;
        self
    }

    /// With this randomised fraction of each delay, in `[0, 1]`.
    #[must_use]
    pub fn with_jitter(mut self, jitter: f64) -> Self {
        self.jitter = jitter;
        self
    }
}

/// Why a policy is impossible.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyError {
    /// `max_attempts = 0` would never run the step.
    #[error("max_attempts must be at least 1 (use \"unlimited\" for no limit)")]
    ZeroAttempts,
    /// A multiplier below 1 would shrink delays; NaN and infinities are refused too.
    #[error("multiplier must be a finite number >= 1.0, got {0}")]
    Multiplier(String),
    /// Jitter outside `[0, 1]`.
    #[error("jitter must be between 0.0 and 1.0, got {0}")]
    Jitter(String),
    /// The first delay is longer than the longest allowed.
    #[error("initial_delay ({initial:?}) is longer than max_delay ({max:?})")]
    InitialAboveMax {
        /// initial delay
        initial: Duration,
        /// max delay
        max: Duration,
    },
    /// A zero total-time bound leaves no room for any retry.
    #[error("max_total must be longer than zero")]
    ZeroTotal,
}

/// What the policy says after a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryDecision {
    /// Try again after this delay.
    RetryAfter(Duration),
    /// The policy is exhausted (attempts or total time).
    Exhausted,
}

impl RetryPolicy {
    /// Checks the policy is possible.
    pub fn validate(&self) -> Result<(), PolicyError> {
        if self.max_attempts == Attempts::Limited(0) {
            return Err(PolicyError::ZeroAttempts);
        }
        if !self.multiplier.is_finite() || self.multiplier < 1.0 {
            return Err(PolicyError::Multiplier(self.multiplier.to_string()));
        }
        if !self.jitter.is_finite() || !(0.0..=1.0).contains(&self.jitter) {
            return Err(PolicyError::Jitter(self.jitter.to_string()));
        }
        if self.initial_delay > self.max_delay {
            return Err(PolicyError::InitialAboveMax {
                initial: self.initial_delay,
                max: self.max_delay,
            });
        }
        if self.max_total.is_zero() {
            return Err(PolicyError::ZeroTotal);
        }
        Ok(())
    }

    /// The delay before attempt `attempts_made + 1`, without jitter.
    ///
    /// Monotone in `attempts_made` and never above `max_delay`.
    pub fn base_delay(&self, attempts_made: u32) -> Duration {
        let exp = attempts_made.saturating_sub(1).min(64) as i32;
        let secs = self.initial_delay.as_secs_f64() * self.multiplier.powi(exp);
        let capped = secs.min(self.max_delay.as_secs_f64());
        Duration::from_secs_f64(capped.max(0.0))
    }

    /// Decides what follows a failed attempt.
    ///
    /// `attempts_made` counts the attempts already run including the one that just failed;
    /// `elapsed` is the time since the first attempt; `jitter_seed` is any stable value
    /// (the runtime derives it from the saga id and attempt, so a replay computes the same
    /// delay); `provider_hint` is a delay the provider asked for (429 `Retry-After`), which
    /// wins over the computed one when longer.
    pub fn decide(
        &self,
        attempts_made: u32,
        elapsed: Duration,
        jitter_seed: u64,
        provider_hint: Option<Duration>,
    ) -> RetryDecision {
        if let Attempts::Limited(max) = self.max_attempts {
            if attempts_made >= max {
                return RetryDecision::Exhausted;
            }
        }
        let base = self.base_delay(attempts_made);
        // Deterministic jitter in [1 - jitter, 1].
        let unit = (splitmix64(jitter_seed) >> 11) as f64 / (1u64 << 53) as f64;
        let factor = 1.0 - self.jitter * unit;
        let mut delay = Duration::from_secs_f64(base.as_secs_f64() * factor);
        if let Some(hint) = provider_hint {
            delay = delay.max(hint);
        }
        // Saturating: a provider hint of years (a huge `Retry-After`) must exhaust the policy,
        // not overflow.
        if elapsed.saturating_add(delay) > self.max_total {
            return RetryDecision::Exhausted;
        }
        RetryDecision::RetryAfter(delay)
    }
}

/// A small, well-known mixing function (SplitMix64) to turn a seed into uniform bits.
fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = x;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_are_monotone_and_capped() {
        let p = RetryPolicy {
            initial_delay: Duration::from_millis(100),
            multiplier: 3.0,
            max_delay: Duration::from_secs(5),
            ..RetryPolicy::default()
        };
        let mut last = Duration::ZERO;
        for n in 1..100 {
            let d = p.base_delay(n);
            assert!(d >= last, "delay shrank at attempt {n}");
            assert!(d <= p.max_delay);
            last = d;
        }
        assert_eq!(p.base_delay(1), Duration::from_millis(100));
        assert_eq!(p.base_delay(2), Duration::from_millis(300));
        assert_eq!(p.base_delay(50), Duration::from_secs(5));
    }

    #[test]
    fn attempts_and_total_time_bound_retries() {
        let p = RetryPolicy {
            max_attempts: Attempts::Limited(3),
            jitter: 0.0,
            ..RetryPolicy::default()
        };
        assert_eq!(
            p.decide(1, Duration::ZERO, 7, None),
            RetryDecision::RetryAfter(Duration::from_secs(1))
        );
        assert_eq!(
            p.decide(3, Duration::ZERO, 7, None),
            RetryDecision::Exhausted
        );
        let p = RetryPolicy {
            max_attempts: Attempts::Unlimited,
            max_total: Duration::from_secs(10),
            jitter: 0.0,
            ..RetryPolicy::default()
        };
        assert_eq!(
            p.decide(1000, Duration::from_secs(9), 1, None),
            RetryDecision::Exhausted
        );
    }

    #[test]
    fn jitter_stays_in_range_and_is_deterministic() {
        let p = RetryPolicy {
            jitter: 0.5,
            ..RetryPolicy::default()
        };
        for seed in 0..1000 {
            let RetryDecision::RetryAfter(d) = p.decide(2, Duration::ZERO, seed, None) else {
                panic!("expected a retry");
            };
            assert!(
                d >= Duration::from_secs(1) && d <= Duration::from_secs(2),
                "{d:?}"
            );
            assert_eq!(
                p.decide(2, Duration::ZERO, seed, None),
                RetryDecision::RetryAfter(d)
            );
        }
    }

    #[test]
    fn provider_retry_after_wins_when_longer() {
        let p = RetryPolicy {
            jitter: 0.0,
            ..RetryPolicy::default()
        };
        assert_eq!(
            p.decide(1, Duration::ZERO, 0, Some(Duration::from_secs(30))),
            RetryDecision::RetryAfter(Duration::from_secs(30))
        );
    }

    #[test]
    fn huge_retry_after_exhausts_instead_of_overflowing() {
        let p = RetryPolicy::default();
        assert_eq!(
            p.decide(1, Duration::from_secs(5), 0, Some(Duration::MAX)),
            RetryDecision::Exhausted
        );
        assert_eq!(
            p.decide(1, Duration::MAX, 0, Some(Duration::from_secs(u64::MAX / 2))),
            RetryDecision::Exhausted
        );
    }

    #[test]
    fn impossible_policies_are_refused() {
        let bad = [
            RetryPolicy {
                max_attempts: Attempts::Limited(0),
                ..RetryPolicy::default()
            },
            RetryPolicy {
                multiplier: 0.5,
                ..RetryPolicy::default()
            },
            RetryPolicy {
                multiplier: f64::NAN,
                ..RetryPolicy::default()
            },
            RetryPolicy {
                jitter: 1.5,
                ..RetryPolicy::default()
            },
            RetryPolicy {
                initial_delay: Duration::from_secs(10),
                max_delay: Duration::from_secs(1),
                ..RetryPolicy::default()
            },
            RetryPolicy {
                max_total: Duration::ZERO,
                ..RetryPolicy::default()
            },
        ];
        for p in bad {
            assert!(p.validate().is_err(), "{p:?} should be refused");
        }
        assert!(RetryPolicy::default().validate().is_ok());
    }
}
