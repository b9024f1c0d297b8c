//! Runnable examples of embedding paysaga in a Rust service (each is built and run by this
//! package's tests against a real PostgreSQL):
//!
//! - `custom_step_worker`: a worker process that registers its own step kind
//!   ([`ReserveBudget`]) next to the built-in ones, submits a workflow built in Rust, starts a
//!   saga and runs it to its end.
//! - `payout_service`: an axum service whose `POST /payouts` writes the application's payout
//!   row and starts its saga in one transaction (`Engine::start_in`), then awaits the saga's
//!   end (`Engine::wait_for_end`); the same process runs a worker.
//!
//! Run them with `cargo run -p paysaga-examples --bin custom_step_worker -- DATABASE_URL`.

use async_trait::async_trait;
use paysaga_core::{StepContext, StepKind, StepOutcome};
use serde_json::{json, Value};

/// A custom step kind: reserves `amount` (integer minor units) of a team's budget. A real
/// one would call the team's budget service with `ctx.idempotency_key()`, which is the same
/// for every attempt of the step, so a retried reservation is not made twice.
#[derive(Debug, Clone, Copy, Default)]
pub struct ReserveBudget;

#[async_trait]
impl StepKind for ReserveBudget {
    fn name(&self) -> &'static str {
        "acme.reserve_budget"
    }

    fn validate(&self, params: &Value) -> Result<(), String> {
        match params.get("amount") {
            // Unknown at start (from an earlier step's output): checked when it runs.
            None | Some(Value::Null) => Ok(()),
            Some(v) if v.as_i64().is_some_and(|a| a > 0) => Ok(()),
            Some(v) => Err(format!(
                "amount must be a positive integer (minor units), got {v}"
            )),
        }
    }

    async fn run(&self, ctx: &StepContext, params: Value) -> StepOutcome {
        let Some(amount) = params.get("amount").and_then(Value::as_i64) else {
            return StepOutcome::fail("amount is missing");
        };
        StepOutcome::Done(json!({
            "reservation": ctx.idempotency_key(),
            "amount": amount,
            "currency": params.get("currency").cloned().unwrap_or(Value::Null),
        }))
    }
}
