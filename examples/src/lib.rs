//! Runnable examples of embedding paysaga in a Rust service (each is built and run by this
//! package's tests against a real PostgreSQL):
//!
//! - `custom_step_worker`: a worker process that registers its own step kind
//!   ([`ReserveBudget`], a typed [`paysaga_core::Step`]) next to the built-in ones, submits a workflow built in Rust, starts a
//!   saga and runs it to its end.
//! - `payout_service`: an axum service whose `POST /payouts` writes the application's payout
//!   row and starts its saga in one transaction (`Engine::start_in`), then awaits the saga's
//!   end (`Engine::wait_for_end`); the same process runs a worker.
//!
//! Run them with `cargo run -p paysaga-examples --bin custom_step_worker -- DATABASE_URL`.

use async_trait::async_trait;
use paysaga_core::{Step, StepContext, StepOutcome};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The parameters of [`ReserveBudget`]; `paysaga kinds` shows these doc comments, and
/// `start` refuses an input whose `amount` is not an integer.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
pub struct ReserveParams {
    /// Amount to reserve, in minor units (positive).
    pub amount: i64,
    /// ISO 4217 currency code.
    pub currency: Option<String>,
}

/// The output of [`ReserveBudget`] (later steps read `$.steps.reserve.output.reservation`).
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct Reservation {
    /// The reservation's id at the budget service.
    pub reservation: String,
    /// Amount reserved, in minor units.
    pub amount: i64,
    /// Its currency.
    pub currency: Option<String>,
}

/// A custom step kind: reserves `amount` (integer minor units) of a team's budget. A real
/// one would call the team's budget service with `ctx.idempotency_key()`, which is the same
/// for every attempt of the step, so a retried reservation is not made twice. A typed
/// [`Step`]: register it as `registry.register(paysaga_core::Typed(ReserveBudget))`.
#[derive(Debug, Clone, Copy, Default)]
pub struct ReserveBudget;

#[async_trait]
impl Step for ReserveBudget {
    type Params = ReserveParams;
    type Output = Reservation;
    const NAME: &'static str = "acme.reserve_budget";
    const DESCRIPTION: &'static str = "Reserves an amount of a team's budget.";

    fn validate(&self, params: &serde_json::Value) -> Result<(), String> {
        // The type says integer; the budget service also wants it positive. (`null`: decided
        // by an earlier step, checked when the step runs.)
        match params.get("amount").and_then(serde_json::Value::as_i64) {
            Some(a) if a <= 0 => Err(format!(
                "amount must be a positive integer (minor units), got {a}"
            )),
            _ => Ok(()),
        }
    }

    async fn run(
        &self,
        ctx: &StepContext,
        params: ReserveParams,
    ) -> Result<Reservation, StepOutcome> {
        if params.amount <= 0 {
            return Err(StepOutcome::fail("amount must be positive"));
        }
        Ok(Reservation {
            reservation: ctx.idempotency_key(),
            amount: params.amount,
            currency: params.currency,
        })
    }
}
