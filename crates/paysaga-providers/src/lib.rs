//! HTTP clients, webhook verification and money handling for paysaga's three payout providers.
//!
//! * [`lumanu::LumanuClient`]: creator payments through Lumanu's pre-funding flow (funding
//!   invoices, wallet, payables).
//! * [`blaaiz::BlaaizClient`]: KYC (customers, document upload) then payouts with Blaaiz.
//! * [`lean::LeanClient`]: bank payouts in the UAE/KSA with Lean (destinations, customers,
//!   payment sources, payment intents).
//! * [`webhook::verify_and_parse`]: signature verification, event id, event type and
//!   correlation key for the webhooks each provider sends.
//! * [`config::ProvidersConfig::from_env`]: the `PAYSAGA_*` environment variables.
//! * [`observe`]: a [`CallObserver`] hears of every HTTP attempt (provider, endpoint, status,
//!   ok/transient/permanent, duration), e.g. for metrics.
//!
//! Every client operation is one `async fn` returning [`Result`]; every [`Error`] says whether
//! retrying may help ([`Error::is_transient`], [`Error::retry_after`]) so that a saga step can
//! map it onto its durable retry policy. The clients never retry on their own, with one
//! exception: a `401` on an OAuth-authenticated call refreshes the token and repeats the call
//! once.
//!
//! Money never passes through a float: amounts are `i64` minor units plus a currency code, and
//! the decimal amounts Blaaiz and Lean use on the wire are converted exactly by [`money`].
//!
//! Secrets (client secrets, API keys, access tokens, webhook secrets) are kept in
//! [`secrecy::SecretString`] and never appear in `Debug` output, error messages or tracing spans.
//!
//! The provider facts and the decisions taken where the providers' documentation is silent are
//! in `docs/PROVIDER-CONTRACTS.md`.
//!
//! ```
//! use paysaga_providers::money::DecimalAmount;
//! use paysaga_providers::webhook::{sign, verify_and_parse};
//! use paysaga_providers::Provider;
//! use secrecy::SecretString;
//!
//! // A Lean amount of 10.12 AED is 1012 fils, and back again.
//! let amount: DecimalAmount = serde_json::from_str("10.12").unwrap();
//! assert_eq!(amount.to_minor("AED").unwrap(), 1012);
//! assert_eq!(DecimalAmount::from_minor(1012, "AED").as_str(), "10.12");
//!
//! // Verify a signed Lumanu webhook and read its correlation key.
//! let secret = SecretString::from("whsec_test");
//! let body = br#"{"id":"evt_1","event_type":"payable.paid","data":{"id":"pay_9"}}"#;
//! let now = chrono::Utc::now();
//! let mut headers = http::HeaderMap::new();
//! for (name, value) in sign(Provider::Lumanu, &secret, body, now) {
//!     headers.insert(name, value.parse().unwrap());
//! }
//! let event = verify_and_parse(Provider::Lumanu, &headers, body, &secret, now).unwrap();
//! assert_eq!(event.event_id, "evt_1");
//! assert_eq!(event.correlation_key.as_deref(), Some("payable:pay_9"));
//! ```
//!
//! ## Step kinds
//!
//! [`steps`] holds the step kinds that the definitions in `workflows/` name (`blaaiz.payout`,
//! `lean.create_intent`, ...): [`steps::step_kinds`] returns those of the configured providers
//! for a worker to register, [`steps::validation_kinds`] all of them bound to clients that
//! reach nothing, for processes that only check definitions and inputs. The Lean and Blaaiz
//! kinds are typed ([`paysaga_core::Step`]): their parameters are Rust types, checked at start
//! (a `null`, decided by an earlier step, is accepted), each error naming the field:
//!
//! ```
//! use paysaga_core::StepKind;
//! use paysaga_providers::steps::validation_kinds;
//! use serde_json::json;
//!
//! let kinds = validation_kinds();
//! let payout = kinds.iter().find(|k| k.name() == "blaaiz.payout").unwrap();
//! // `customer_id` comes from the earlier `create_customer` step: `null` at start.
//! let input = json!({"customer_id": null, "payout": {"wallet_id": "w_1",
//!     "method": "bank_transfer", "amount": 150_000, "currency": "NGN",
//!     "account_number": "0123456789"}});
//! assert_eq!(payout.validate(&input), Ok(()));
//! let mut refused = input.clone();
//! refused["payout"]["amount"] = json!(-5);
//! let err = payout.validate(&refused).unwrap_err();
//! assert!(err.contains("payout.amount") && err.contains("positive"), "{err}");
//! // The schema `paysaga kinds blaaiz.payout` prints, derived from the parameter types.
//! let schema = payout.schema().unwrap();
//! assert!(schema.params.iter().any(|f| f.path == "payout.wallet_id" && f.required));
//! ```

#![warn(missing_docs)]

pub mod blaaiz;
pub mod budget;
pub mod config;
#[cfg(feature = "runtime")]
pub mod endpoint;
pub mod error;
pub mod lean;
pub mod lumanu;
pub mod money;
pub mod observe;
pub mod reconcile;
pub mod steps;
pub mod token;
mod transport;
pub mod webhook;

use std::fmt;
use std::str::FromStr;

pub use budget::{Admission, RequestBudget};
pub use config::{development_credentials, sandbox_env, Clients, HttpOptions, ProvidersConfig};
pub use error::{Error, Result};
pub use money::{DecimalAmount, MoneyError};
pub use observe::{CallObserver, CallOutcome, CallRecord};

/// The three payout providers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Provider {
    /// Lumanu (creator payments, pre-funding flow).
    Lumanu,
    /// Blaaiz (KYC then payout).
    Blaaiz,
    /// Lean (bank payouts, UAE/KSA).
    Lean,
}

impl Provider {
    /// Every provider, in a fixed order.
    pub const ALL: [Provider; 3] = [Provider::Lumanu, Provider::Blaaiz, Provider::Lean];

    /// The lowercase name used in URLs (`/webhooks/{name}`), configuration and storage.
    pub fn as_str(self) -> &'static str {
        match self {
            Provider::Lumanu => "lumanu",
            Provider::Blaaiz => "blaaiz",
            Provider::Lean => "lean",
        }
    }
}

impl fmt::Display for Provider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The name given is not one of `lumanu`, `blaaiz`, `lean`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown provider {0:?} (expected lumanu, blaaiz or lean)")]
pub struct UnknownProvider(pub String);

impl FromStr for Provider {
    type Err = UnknownProvider;

    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "lumanu" => Ok(Provider::Lumanu),
            "blaaiz" => Ok(Provider::Blaaiz),
            "lean" => Ok(Provider::Lean),
            _ => Err(UnknownProvider(s.to_owned())),
        }
    }
}

/// Declares a string-valued provider enum: known variants plus `Other(String)` for values this
/// version does not know, matched case-insensitively and written back as the provider spells
/// them.
macro_rules! string_enum {
    (
        $(#[$meta:meta])*
        pub enum $name:ident { $( $(#[$vmeta:meta])* $variant:ident => $text:literal ),+ $(,)? }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash)]
        pub enum $name {
            $( $(#[$vmeta])* $variant, )+
            /// A value this version of the client does not know, as the provider sent it.
            Other(String),
        }

        impl $name {
            /// The value as the provider spells it.
            pub fn as_str(&self) -> &str {
                match self {
                    $( $name::$variant => $text, )+
                    $name::Other(s) => s.as_str(),
                }
            }
        }

        impl ::std::str::FromStr for $name {
            type Err = ::std::convert::Infallible;
            fn from_str(s: &str) -> ::std::result::Result<Self, Self::Err> {
                $( if s.eq_ignore_ascii_case($text) { return Ok($name::$variant); } )+
                Ok($name::Other(s.to_owned()))
            }
        }

        impl ::std::fmt::Display for $name {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl ::serde::Serialize for $name {
            fn serialize<S: ::serde::Serializer>(&self, s: S) -> ::std::result::Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }

        impl<'de> ::serde::Deserialize<'de> for $name {
            fn deserialize<D: ::serde::Deserializer<'de>>(d: D) -> ::std::result::Result<Self, D::Error> {
                let s = <::std::borrow::Cow<'de, str> as ::serde::Deserialize>::deserialize(d)?;
                match s.parse::<$name>() {
                    Ok(v) => Ok(v),
                    Err(never) => match never {},
                }
            }
        }
    };
}
pub(crate) use string_enum;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn provider_round_trips_through_its_name() {
        for p in Provider::ALL {
            assert_eq!(p.as_str().parse::<Provider>(), Ok(p));
            assert_eq!(p.to_string(), p.as_str());
        }
        assert_eq!("LEAN".parse::<Provider>(), Ok(Provider::Lean));
        assert!("stripe".parse::<Provider>().is_err());
    }
}
