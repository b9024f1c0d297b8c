//! Request budgets: before a client sends a request it asks the [`RequestBudget`] it was built
//! with for a slot of its provider's capacity, and tells it about every `429`. This crate does
//! not know where the budget lives; the worker's is a row per provider and credential in the
//! database, shared by every worker (`paysaga-cli`'s `rate_limits.rs`).
//!
//! A request that waits for its slot has not been sent: the wait is no attempt, nothing is
//! reported to the [`crate::observe::CallObserver`]. A wait longer than the budget allows
//! ends the call with [`crate::Error::NoCapacity`] (transient, not sent, with the time until
//! the next free slot as its `retry_after`).
//!
//! Clients use the budget in effect when they were built ([`with_budget`], like
//! [`crate::observe::with_observer`]).

use std::cell::RefCell;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::Provider;

/// What a budget answers to a request for a slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Send now (the budget waited for the slot already, if needed).
    Go,
    /// No slot within the longest wait the budget allows: the next is this far away. Nothing
    /// was reserved.
    Later(Duration),
}

/// A provider's request capacity, shared however the implementation likes.
#[async_trait]
pub trait RequestBudget: Send + Sync {
    /// Waits for a slot for one request to `provider` with the credential `credential` (an id
    /// such as the OAuth client id, never a secret).
    async fn acquire(&self, provider: Provider, credential: &str) -> Admission;
    /// `provider` refused a request for lack of capacity (`429`), asking for `retry_after`.
    async fn throttled(&self, provider: Provider, credential: &str, retry_after: Option<Duration>);
}

/// The budget a client asks (`None`: unlimited).
#[derive(Clone, Default)]
pub(crate) struct BudgetSlot(Option<Arc<dyn RequestBudget>>);

impl BudgetSlot {
    pub(crate) fn get(&self) -> Option<&Arc<dyn RequestBudget>> {
        self.0.as_ref()
    }
}

impl fmt::Debug for BudgetSlot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_some() {
            "Some(RequestBudget)"
        } else {
            "None"
        })
    }
}

thread_local! {
    static BUILDING: RefCell<Option<Arc<dyn RequestBudget>>> = const { RefCell::new(None) };
}

/// Runs `build` (synchronous code that constructs clients); every client constructed inside
/// it, on this thread, asks `budget` before each request. Scopes nest; the previous budget is
/// restored afterwards, also if `build` panics.
pub fn with_budget<R>(budget: Arc<dyn RequestBudget>, build: impl FnOnce() -> R) -> R {
    struct Restore(Option<Arc<dyn RequestBudget>>);
    impl Drop for Restore {
        fn drop(&mut self) {
            let previous = self.0.take();
            BUILDING.with(|slot| *slot.borrow_mut() = previous);
        }
    }
    let previous = BUILDING.with(|slot| slot.borrow_mut().replace(budget));
    let _restore = Restore(previous);
    build()
}

/// The budget for a client being constructed now (see [`with_budget`]).
pub(crate) fn current() -> BudgetSlot {
    BudgetSlot(BUILDING.with(|slot| slot.borrow().clone()))
}
