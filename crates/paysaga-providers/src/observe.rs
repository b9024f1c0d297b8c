//! Observing provider calls: one [`CallRecord`] per HTTP attempt, handed to a [`CallObserver`]
//! (e.g. the worker's Prometheus metrics), without this crate knowing where it goes.
//!
//! A record carries the provider, the endpoint (the static operation name such as
//! `"get_payable"`, or `"token"` for an OAuth token fetch: never a URL, an id or a secret), the
//! HTTP status if an answer arrived, the outcome class ([`CallOutcome`]) and the duration.
//!
//! Every attempt is reported, including the `401` that makes a client refresh its token and try
//! once more, and an answer that arrived but could not be decoded (permanent, with its status).
//! Not reported: requests refused before anything was sent (invalid credentials or headers) and
//! Blaaiz's `upload_file` `PUT` to a pre-signed URL (it bypasses the shared transport).
//!
//! Clients report to the observer that was in effect when they were built:
//! [`crate::ProvidersConfig::clients_observed`] for configured clients, or [`with_observer`]
//! around any client constructor.
//!
//! ```
//! use std::sync::{Arc, Mutex};
//! use paysaga_providers::observe::{with_observer, CallObserver, CallRecord};
//! use paysaga_providers::ProvidersConfig;
//!
//! #[derive(Default)]
//! struct Log(Mutex<Vec<String>>);
//! impl CallObserver for Log {
//!     fn observe(&self, call: &CallRecord) {
//!         if let Ok(mut log) = self.0.lock() {
//!             log.push(format!("{} {} {}", call.provider, call.endpoint, call.outcome));
//!         }
//!     }
//! }
//!
//! let log = Arc::new(Log::default());
//! let clients = ProvidersConfig::default().clients_observed(log.clone());
//! assert!(clients.lumanu.is_none());
//! // Or around a constructor: `with_observer(log.clone(), || LumanuClient::new(config))`.
//! let answer = with_observer(log, || 42);
//! assert_eq!(answer, 42);
//! ```

use std::cell::RefCell;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::error::Error;
use crate::Provider;

/// How an HTTP attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CallOutcome {
    /// A `2xx` answer that decoded.
    Ok,
    /// Retrying later may succeed ([`Error::is_transient`]): timeouts, connection failures,
    /// `5xx`, `408`, `429`.
    Transient,
    /// Retrying will not help: other `4xx`, undecodable answers.
    Permanent,
}

impl CallOutcome {
    /// `ok`, `transient` or `permanent`.
    pub fn as_str(self) -> &'static str {
        match self {
            CallOutcome::Ok => "ok",
            CallOutcome::Transient => "transient",
            CallOutcome::Permanent => "permanent",
        }
    }

    /// The class of a failed attempt.
    pub fn of_error(error: &Error) -> CallOutcome {
        if error.is_transient() {
            CallOutcome::Transient
        } else {
            CallOutcome::Permanent
        }
    }
}

impl fmt::Display for CallOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One HTTP attempt to a provider.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallRecord {
    /// The provider called.
    pub provider: Provider,
    /// The operation: a static name (`"list_payables"`, `"token"`), safe as a metric label.
    pub endpoint: &'static str,
    /// The HTTP status of the answer; `None` when none arrived (timeout, connection error) and
    /// for a successful token fetch (the token cache does not report it).
    pub status: Option<u16>,
    /// How the attempt ended.
    pub outcome: CallOutcome,
    /// From sending the request to the end of the answer (for a token fetch, including the
    /// wait for a concurrent fetch of the same token).
    pub duration: Duration,
}

/// Receives a [`CallRecord`] for every HTTP attempt of the clients it is set on. Called on the
/// request's task, after the answer: keep it cheap and never block.
pub trait CallObserver: Send + Sync {
    /// One attempt ended.
    fn observe(&self, call: &CallRecord);
}

/// The observer a client reports to (`None`: nobody listens).
#[derive(Clone, Default)]
pub(crate) struct ObserverSlot(Option<Arc<dyn CallObserver>>);

impl ObserverSlot {
    pub(crate) fn observe(&self, call: CallRecord) {
        if let Some(observer) = &self.0 {
            observer.observe(&call);
        }
    }

    pub(crate) fn is_set(&self) -> bool {
        self.0.is_some()
    }
}

impl fmt::Debug for ObserverSlot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_some() {
            "Some(CallObserver)"
        } else {
            "None"
        })
    }
}

thread_local! {
    static BUILDING: RefCell<Option<Arc<dyn CallObserver>>> = const { RefCell::new(None) };
}

/// Runs `build` (synchronous code that constructs clients, e.g. `LumanuClient::new(config)`);
/// every client constructed inside it, on this thread, reports its calls to `observer` for as
/// long as it (and its clones) live. Scopes nest; the previous observer is restored afterwards,
/// also if `build` panics.
pub fn with_observer<R>(observer: Arc<dyn CallObserver>, build: impl FnOnce() -> R) -> R {
    struct Restore(Option<Arc<dyn CallObserver>>);
    impl Drop for Restore {
        fn drop(&mut self) {
            let previous = self.0.take();
            BUILDING.with(|slot| *slot.borrow_mut() = previous);
        }
    }
    let previous = BUILDING.with(|slot| slot.borrow_mut().replace(observer));
    let _restore = Restore(previous);
    build()
}

/// The observer for a client being constructed now (see [`with_observer`]).
pub(crate) fn current() -> ObserverSlot {
    ObserverSlot(BUILDING.with(|slot| slot.borrow().clone()))
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Nobody;
    impl CallObserver for Nobody {
        fn observe(&self, _: &CallRecord) {}
    }

    #[test]
    fn scope_sets_and_restores_the_observer() {
        assert!(!current().is_set());
        let inner = with_observer(Arc::new(Nobody), || {
            let nested = with_observer(Arc::new(Nobody), || current().is_set());
            (nested, current().is_set())
        });
        assert_eq!(inner, (true, true));
        assert!(!current().is_set());
        let panicked = std::panic::catch_unwind(|| {
            with_observer(Arc::new(Nobody), || panic!("constructor failed"))
        });
        assert!(panicked.is_err());
        assert!(!current().is_set());
    }

    #[test]
    fn outcome_names() {
        assert_eq!(CallOutcome::Ok.to_string(), "ok");
        let timeout = Error::Timeout {
            provider: Provider::Lean,
            endpoint: "x",
        };
        assert_eq!(CallOutcome::of_error(&timeout), CallOutcome::Transient);
        let decode = Error::decode(Provider::Lean, "x", 200, "bad");
        assert_eq!(CallOutcome::of_error(&decode).as_str(), "permanent");
    }
}
