//! Operator actions as pure transitions: each checks the saga's state allows it and says
//! clearly why not otherwise. The store applies them with the operator's name and reason.

use chrono::{DateTime, Utc};
use serde_json::{json, Value};

use crate::definition::CompiledDefinition;
use crate::saga::{HistoryEntry, HistoryKind, SagaState, SagaStatus, Transition};

/// Why an operator action is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The saga's status does not allow the action.
    #[error("cannot {action} saga {saga}: it is {status}; {hint}")]
    Status {
        /// Action.
        action: &'static str,
        /// Saga id.
        saga: uuid::Uuid,
        /// Its status.
        status: SagaStatus,
        /// What to do instead.
        hint: &'static str,
    },
    /// The named step is not the saga's current step.
    #[error("cannot skip step {asked} of saga {saga}: its current step is {current}")]
    NotCurrentStep {
        /// Saga id.
        saga: uuid::Uuid,
        /// Step named by the operator.
        asked: String,
        /// Current step.
        current: String,
    },
}

fn entry(kind: HistoryKind, step: Option<&str>, reason: &str, extra: Value) -> HistoryEntry {
    let mut detail = json!({ "reason": reason });
    if let (Value::Object(d), Value::Object(e)) = (&mut detail, extra) {
        d.extend(e);
    }
    HistoryEntry {
        kind,
        step: step.map(str::to_string),
        attempt: None,
        error: None,
        detail,
    }
}

fn base(state: &SagaState, status: SagaStatus) -> Transition {
    Transition {
        status,
        step_index: state.step_index,
        attempt: state.attempt,
        step_started_at: state.step_started_at,
        run_at: None,
        wait: state.wait.clone(),
        output: None,
        last_error: state.last_error.clone(),
        history: Vec::new(),
        continue_now: false,
        effect_possible: state.effect_possible,
    }
}

fn step_name(def: &CompiledDefinition, index: usize) -> Option<&str> {
    def.steps.get(index).map(|s| s.def.name.as_str())
}

/// Runs the current step (or compensation, or poll of a wait) now, resetting its backoff.
pub fn retry_now(
    state: &SagaState,
    def: &CompiledDefinition,
    reason: &str,
    now: DateTime<Utc>,
) -> Result<Transition, Refusal> {
    match state.status {
        SagaStatus::Scheduled | SagaStatus::Retrying | SagaStatus::Waiting | SagaStatus::Compensating => {
            // A fresh retry budget: a step backing off is simply due again.
            let status = if state.status == SagaStatus::Retrying { SagaStatus::Scheduled } else { state.status };
            let mut t = base(state, status);
            t.attempt = 0;
            t.step_started_at = None;
            t.run_at = Some(now);
            t.history = vec![entry(
                HistoryKind::OperatorRetry,
                step_name(def, state.step_index),
                reason,
                json!({"previous_attempts": state.attempt}),
            )];
            Ok(t)
        }
        SagaStatus::NeedsOperator => Err(Refusal::Status {
            action: "retry",
            saga: state.id,
            status: state.status,
            hint: "it is parked for an operator: use `resume` once the cause is fixed, or `skip` if the step's effect happened",
        }),
        SagaStatus::Completed | SagaStatus::Compensated | SagaStatus::Cancelled | SagaStatus::Closed => Err(Refusal::Status {
            action: "retry",
            saga: state.id,
            status: state.status,
            hint: "it is finished; start a new saga if the payout must be made again",
        }),
    }
}

/// Resumes a saga parked for an operator: the failed step (or compensation, when
/// `in_compensation`) runs again with a fresh retry budget.
pub fn resume(
    state: &SagaState,
    def: &CompiledDefinition,
    in_compensation: bool,
    reason: &str,
    now: DateTime<Utc>,
) -> Result<Transition, Refusal> {
    match state.status {
        SagaStatus::NeedsOperator => {
            let status = if in_compensation { SagaStatus::Compensating } else { SagaStatus::Scheduled };
            let mut t = base(state, status);
            t.attempt = 0;
            t.step_started_at = None;
            t.wait = None;
            t.run_at = Some(now);
            t.history = vec![entry(
                HistoryKind::OperatorResume,
                step_name(def, state.step_index),
                reason,
                json!({"phase": if in_compensation { "compensation" } else { "forward" }}),
            )];
            Ok(t)
        }
        SagaStatus::Scheduled
        | SagaStatus::Retrying
        | SagaStatus::Waiting
        | SagaStatus::Compensating
        | SagaStatus::Completed
        | SagaStatus::Compensated
        | SagaStatus::Cancelled
        | SagaStatus::Closed => Err(Refusal::Status {
            action: "resume",
            saga: state.id,
            status: state.status,
            hint: "only sagas parked for an operator (needs_operator) can be resumed; use `retry` to run a backing-off step now",
        }),
    }
}

/// The operator asserts that `step`'s effect happened (e.g. seen on the provider's
/// dashboard) and supplies its output; the saga moves on to the next step.
pub fn skip(
    state: &SagaState,
    def: &CompiledDefinition,
    step: &str,
    output: Value,
    reason: &str,
    now: DateTime<Utc>,
) -> Result<Transition, Refusal> {
    match state.status {
        SagaStatus::Scheduled | SagaStatus::Retrying | SagaStatus::Waiting | SagaStatus::NeedsOperator => {
            let current = step_name(def, state.step_index).unwrap_or("-");
            if current != step {
                return Err(Refusal::NotCurrentStep {
                    saga: state.id,
                    asked: step.to_string(),
                    current: current.to_string(),
                });
            }
            let next = state.step_index + 1;
            let done = next >= def.steps.len();
            let mut t = base(state, if done { SagaStatus::Completed } else { SagaStatus::Scheduled });
            t.step_index = next;
            t.attempt = 0;
            t.step_started_at = None;
            t.wait = None;
            t.last_error = None;
            t.effect_possible = false;
            t.output = Some((step.to_string(), output.clone()));
            t.run_at = if done { None } else { Some(now) };
            t.history = vec![entry(HistoryKind::OperatorSkip, Some(step), reason, json!({"output": output}))];
            if done {
                t.history.push(HistoryEntry {
                    kind: HistoryKind::SagaCompleted,
                    step: None,
                    attempt: None,
                    error: None,
                    detail: Value::Null,
                });
            }
            Ok(t)
        }
        SagaStatus::Compensating
        | SagaStatus::Completed
        | SagaStatus::Compensated
        | SagaStatus::Cancelled
        | SagaStatus::Closed => {
            Err(Refusal::Status {
                action: "skip a step of",
                saga: state.id,
                status: state.status,
                hint: "only a saga moving forward (scheduled, retrying, waiting) or parked (needs_operator) has a step to skip",
            })
        }
    }
}
