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
    /// No reason given: every action is recorded in history with why.
    #[error("cannot {action} saga {saga}: --reason must say why (it is recorded in the saga's history with who and when)")]
    NoReason {
        /// Action.
        action: &'static str,
        /// Saga id.
        saga: uuid::Uuid,
    },
    /// A skipped step's output lacks what later steps read from it.
    #[error("cannot skip step {step} of saga {saga}: later steps read fields the given output does not have: {}; give an output with them (see the step's output in a saga that completed it)", .missing.join("; "))]
    OutputMissesReferences {
        /// Saga id.
        saga: uuid::Uuid,
        /// The skipped step.
        step: String,
        /// `step X param P: path` for each reference that matches nothing.
        missing: Vec<String>,
    },
    /// The named step is not in the saga's definition.
    #[error("saga {saga} has no step {step}; its steps are {}", .steps.join(", "))]
    UnknownStep {
        /// Saga id.
        saga: uuid::Uuid,
        /// Step named by the operator.
        step: String,
        /// The definition's steps.
        steps: Vec<String>,
    },
    /// A reset may only go back (or stay): it cannot jump over steps that never ran.
    #[error("cannot reset saga {saga} to step {step}: it is after the current step {current} (steps in between never ran); reset to {current} or an earlier step")]
    ResetAhead {
        /// Saga id.
        saga: uuid::Uuid,
        /// Step named by the operator.
        step: String,
        /// Current step.
        current: String,
    },
    /// The reset would run an irreversible step again that may already have acted.
    #[error("cannot reset saga {saga} to step {step} without --confirm-not-sent: {}; running it again could pay twice. Check at the provider that nothing was sent (or that it failed and the money came back), then repeat the reset with --confirm-not-sent", .why.join("; "))]
    MaySendAgain {
        /// Saga id.
        saga: uuid::Uuid,
        /// Step named by the operator.
        step: String,
        /// For each irreversible step that may have acted: which and why.
        why: Vec<String>,
    },
    /// `close --outcome paid --compensate` after an irreversible step acted: the payee has the
    /// money through it, and the compensations would take back what it relied on.
    #[error("cannot close saga {saga} as paid with --compensate: {}; the payee got the money through it, so undoing the steps the payout relied on ({}) would leave the books wrong, and the irreversible step itself cannot be undone. Close it as paid without --compensate (nothing is undone; settle any leftover at the provider by hand)", .why.join("; "), if .undo.is_empty() { "none".to_string() } else { .undo.join(", ") })]
    PaidWithCompensate {
        /// Saga id.
        saga: uuid::Uuid,
        /// For each irreversible step that acted or may have: which and why.
        why: Vec<String>,
        /// The compensable steps the unwind would undo, in order.
        undo: Vec<String>,
    },
    /// `close --outcome not-paid --compensate` after an irreversible step may have acted,
    /// without the operator's confirmation that it did not pay.
    #[error("cannot close saga {saga} as not paid with --compensate without --confirm-not-sent: {}; the compensations would undo {} but cannot undo that step. Check at the provider that it did not pay (or that it failed and the money came back), then repeat the close with --confirm-not-sent; if it did pay, close it as paid without --compensate", .why.join("; "), if .undo.is_empty() { "nothing".to_string() } else { .undo.join(", ") })]
    CloseMayHavePaid {
        /// Saga id.
        saga: uuid::Uuid,
        /// For each irreversible step that acted or may have: which and why.
        why: Vec<String>,
        /// The compensable steps the unwind would undo, in order.
        undo: Vec<String>,
    },
    /// A `close --compensate` is already pending.
    #[error("cannot close saga {saga} with --compensate: {actor} already asked for it (outcome {outcome}) and its completed steps are being undone; it ends closed when they are. To end it now without undoing the rest, `close` it without --compensate")]
    ClosePending {
        /// Saga id.
        saga: uuid::Uuid,
        /// Who asked first.
        actor: String,
        /// The outcome they declared.
        outcome: crate::saga::ClosedOutcome,
    },
}

/// Refuses an action without a reason.
fn need_reason(action: &'static str, state: &SagaState, reason: &str) -> Result<(), Refusal> {
    if reason.trim().is_empty() {
        return Err(Refusal::NoReason {
            action,
            saga: state.id,
        });
    }
    Ok(())
}

/// What an operator can do with a parked saga (the same list as `show` and the stored error).
pub const PARKED_HINT: &str = "it is parked for an operator: `close` it with the outcome you checked at the provider, `reset` it to a step to run again (e.g. after correcting the input), `resume` it once the cause is fixed, or `skip` the step if its effect happened";

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
    need_reason("retry", state, reason)?;
    match state.status {
        SagaStatus::Scheduled
        | SagaStatus::Retrying
        | SagaStatus::Waiting
        | SagaStatus::Compensating => {
            // A fresh retry budget: a step backing off is simply due again.
            let status = if state.status == SagaStatus::Retrying {
                SagaStatus::Scheduled
            } else {
                state.status
            };
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
            hint: PARKED_HINT,
        }),
        SagaStatus::Completed
        | SagaStatus::Compensated
        | SagaStatus::Cancelled
        | SagaStatus::Closed => Err(Refusal::Status {
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
    need_reason("resume", state, reason)?;
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
    need_reason("skip a step of", state, reason)?;
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
            let missing = unmatched_references(def, state.step_index, &output);
            if !missing.is_empty() {
                return Err(Refusal::OutputMissesReferences {
                    saga: state.id,
                    step: step.to_string(),
                    missing,
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

/// The references of steps after `index` into step `index`'s output that `output` does
/// not satisfy: `step X params.P: $.steps.S...` for each one that matches nothing.
pub fn unmatched_references(def: &CompiledDefinition, index: usize, output: &Value) -> Vec<String> {
    let Some(name) = step_name(def, index) else {
        return Vec::new();
    };
    let scope = json!({ "steps": { name: output } });
    let mut missing = Vec::new();
    for later in def.steps.iter().skip(index + 1) {
        for (at, source, path) in later.params.references() {
            if crate::definition::referenced_step(source) == Some(name)
                && path.query(&scope).all().is_empty()
            {
                missing.push(format!("step {} {at}: {source}", later.def.name));
            }
        }
    }
    missing
}

/// What `close` is asked to do.
#[derive(Debug, Clone, Copy)]
pub struct CloseAction {
    /// The outcome the operator declares after checking the provider.
    pub outcome: crate::saga::ClosedOutcome,
    /// Undo the completed (compensable) steps first; the saga ends closed when they are.
    pub compensate: bool,
    /// A parked saga (`needs_operator`) stopped in its compensation (a compensation failed):
    /// its current step is the next one to undo, not the next one to run.
    pub in_compensation: bool,
    /// With `compensate`: the operator checked at the provider that the irreversible steps
    /// that acted (or may have) did not pay, or that the money came back.
    pub confirm_not_sent: bool,
}

/// Ends a saga that is not over (parked, or moving while no worker holds it) with the
/// outcome the operator declares after checking the provider. Without `compensate` nothing
/// is undone: the saga is `closed` at once. With `compensate` its completed compensable steps
/// are undone first by the workers (status `compensating`, in reverse, with their retries)
/// and the unwind ends `closed` with the outcome (the store keeps the request with the saga);
/// with nothing to undo it is `closed` at once. An irreversible step that acted (or may
/// have) cannot be undone: with outcome `paid` the compensation is refused, with `not_paid`
/// it needs `confirm_not_sent`. The store writes `closed_outcome` with the status.
pub fn close(
    state: &SagaState,
    def: &CompiledDefinition,
    req: CloseAction,
    reason: &str,
    now: DateTime<Utc>,
) -> Result<Transition, Refusal> {
    need_reason("close", state, reason)?;
    match state.status {
        SagaStatus::NeedsOperator
        | SagaStatus::Scheduled
        | SagaStatus::Retrying
        | SagaStatus::Waiting
        | SagaStatus::Compensating => {
            if req.compensate {
                return close_compensating(state, def, req, reason, now);
            }
            let mut t = base(state, SagaStatus::Closed);
            t.run_at = None;
            t.wait = None;
            t.history = vec![entry(
                HistoryKind::SagaClosed,
                step_name(def, state.step_index),
                reason,
                json!({
                    "outcome": req.outcome.as_str(),
                    "compensate": false,
                    "from_status": state.status.as_str(),
                    "effect_possible": state.effect_possible,
                }),
            )];
            Ok(t)
        }
        SagaStatus::Completed | SagaStatus::Compensated | SagaStatus::Cancelled | SagaStatus::Closed => {
            Err(Refusal::Status {
                action: "close",
                saga: state.id,
                status: state.status,
                hint: "it has already ended, so there is nothing to close; start a new saga if the payout must be made again",
            })
        }
    }
}

/// The compensable steps a `close --compensate` undoes, in the order they are undone.
pub fn close_undo_steps(
    state: &SagaState,
    def: &CompiledDefinition,
    in_compensation: bool,
) -> Vec<String> {
    undone_below(state, def, in_compensation)
        .rev()
        .filter(|&j| def.steps[j].traits.compensable)
        .map(|j| def.steps[j].def.name.clone())
        .collect()
}

/// The steps not undone yet whose effect may stand: those completed before the current step
/// moving forward; during (or parked in) an unwind, the current step too (its compensation
/// has not finished).
fn undone_below(
    state: &SagaState,
    def: &CompiledDefinition,
    in_compensation: bool,
) -> std::ops::Range<usize> {
    let end = if unwinding(state, in_compensation) {
        state.step_index + 1
    } else {
        state.step_index
    };
    0..end.min(def.steps.len())
}

/// The saga is undoing its steps, or parked in that phase.
fn unwinding(state: &SagaState, in_compensation: bool) -> bool {
    state.status == SagaStatus::Compensating
        || (state.status == SagaStatus::NeedsOperator && in_compensation)
}

fn close_compensating(
    state: &SagaState,
    def: &CompiledDefinition,
    req: CloseAction,
    reason: &str,
    now: DateTime<Utc>,
) -> Result<Transition, Refusal> {
    if let Some(pending) = &state.close_requested {
        return Err(Refusal::ClosePending {
            saga: state.id,
            actor: pending.actor.clone(),
            outcome: pending.outcome,
        });
    }
    let done = undone_below(state, def, req.in_compensation);
    let moving_forward = !unwinding(state, req.in_compensation);
    let mut acted: Vec<String> = done
        .clone()
        .filter(|&j| def.steps[j].traits.irreversible)
        .map(|j| {
            format!(
                "irreversible step {} completed (its request reached the provider)",
                def.steps[j].def.name
            )
        })
        .collect();
    if let Some(current) = def.steps.get(state.step_index) {
        if moving_forward && state.effect_possible && current.traits.irreversible {
            acted.push(format!(
                "an attempt of irreversible step {} may have reached the provider (money may have moved)",
                current.def.name
            ));
        }
    }
    let undo = close_undo_steps(state, def, req.in_compensation);
    if !acted.is_empty() {
        match req.outcome {
            crate::saga::ClosedOutcome::Paid => {
                return Err(Refusal::PaidWithCompensate {
                    saga: state.id,
                    why: acted,
                    undo,
                })
            }
            crate::saga::ClosedOutcome::NotPaid if !req.confirm_not_sent => {
                return Err(Refusal::CloseMayHavePaid {
                    saga: state.id,
                    why: acted,
                    undo,
                })
            }
            crate::saga::ClosedOutcome::NotPaid => {}
        }
    }
    let detail = json!({
        "outcome": req.outcome.as_str(),
        "compensate": true,
        "from_status": state.status.as_str(),
        "effect_possible": state.effect_possible,
        "undo": undo,
        "may_have_acted": acted,
        "confirm_not_sent": req.confirm_not_sent,
    });
    let Some(first) = undo.first() else {
        // Nothing to undo: closed at once.
        let mut t = base(state, SagaStatus::Closed);
        t.run_at = None;
        t.wait = None;
        t.history = vec![entry(
            HistoryKind::SagaClosed,
            step_name(def, state.step_index),
            reason,
            detail,
        )];
        return Ok(t);
    };
    let first_index = def
        .steps
        .iter()
        .position(|s| &s.def.name == first)
        .unwrap_or(state.step_index);
    let mut t = base(state, SagaStatus::Compensating);
    t.run_at = Some(now);
    t.wait = None;
    let requested = entry(
        HistoryKind::CloseRequested,
        step_name(def, state.step_index),
        reason,
        detail,
    );
    if state.status == SagaStatus::Compensating && first_index == state.step_index {
        // Already undoing: the unwind goes on where it is (its attempts and the failure that
        // started it kept) and ends closed.
        t.history = vec![requested];
        return Ok(t);
    }
    t.step_index = first_index;
    t.attempt = 0;
    t.step_started_at = None;
    t.effect_possible = false;
    t.last_error = Some(format!(
        "closing as {} on an operator's request ({reason}): undoing completed step(s) {} first",
        req.outcome,
        undo.join(", ")
    ));
    t.history = vec![
        requested,
        HistoryEntry {
            kind: HistoryKind::CompensationStarted,
            step: None,
            attempt: None,
            error: None,
            detail: json!({"first": first, "close": true}),
        },
    ];
    Ok(t)
}

/// What `reset` is asked to do.
#[derive(Debug, Clone, Copy)]
pub struct ResetRequest<'a> {
    /// The step to run again from.
    pub step: &'a str,
    /// The RFC 7396 merge patch applied to the input (recorded in history).
    pub input_patch: Option<&'a Value>,
    /// The operator checked at the provider that the irreversible steps to run again did not
    /// act (or failed and were reversed).
    pub confirm_not_sent: bool,
}

/// Runs a saga again from an earlier (or its current) step: a fresh attempt count, earlier
/// outputs kept. Refused on an ended saga, during compensation, and, without
/// `confirm_not_sent`, when an irreversible step at or after `step` may already have acted
/// (it completed, or an attempt of it may have reached the provider). `def` must carry the
/// kinds' real traits. The caller patches and re-validates the input and gives the steps from
/// `step` on fresh idempotency keys.
pub fn reset(
    state: &SagaState,
    def: &CompiledDefinition,
    req: ResetRequest<'_>,
    reason: &str,
    now: DateTime<Utc>,
) -> Result<Transition, Refusal> {
    need_reason("reset", state, reason)?;
    match state.status {
        SagaStatus::NeedsOperator | SagaStatus::Scheduled | SagaStatus::Retrying | SagaStatus::Waiting => {
            let steps: Vec<String> = def.steps.iter().map(|s| s.def.name.clone()).collect();
            let Some(to) = steps.iter().position(|s| s == req.step) else {
                return Err(Refusal::UnknownStep {
                    saga: state.id,
                    step: req.step.to_string(),
                    steps,
                });
            };
            let current = state.step_index.min(def.steps.len().saturating_sub(1));
            if to > current {
                return Err(Refusal::ResetAhead {
                    saga: state.id,
                    step: req.step.to_string(),
                    current: steps[current].clone(),
                });
            }
            // A step skipped by its `when` did nothing: it cannot have acted.
            let acted: Vec<String> = (to..=current)
                .filter(|&j| def.steps[j].traits.irreversible && !state.was_skipped(def, j))
                .filter_map(|j| {
                    let name = &steps[j];
                    if j < state.step_index {
                        Some(format!("irreversible step {name} completed (its request reached the provider; see its output)"))
                    } else if state.effect_possible {
                        Some(format!("an attempt of irreversible step {name} may have reached the provider (money may have moved)"))
                    } else {
                        None
                    }
                })
                .collect();
            if !acted.is_empty() && !req.confirm_not_sent {
                return Err(Refusal::MaySendAgain {
                    saga: state.id,
                    step: req.step.to_string(),
                    why: acted,
                });
            }
            let mut t = base(state, SagaStatus::Scheduled);
            t.step_index = to;
            t.attempt = 0;
            t.step_started_at = None;
            t.run_at = Some(now);
            t.wait = None;
            t.last_error = None;
            t.effect_possible = false;
            t.history = vec![entry(
                HistoryKind::OperatorReset,
                Some(req.step),
                reason,
                json!({
                    "from_step": steps[current],
                    "from_status": state.status.as_str(),
                    "input_patch": req.input_patch,
                    "confirm_not_sent": req.confirm_not_sent,
                    "may_have_acted": acted,
                }),
            )];
            Ok(t)
        }
        SagaStatus::Compensating => Err(Refusal::Status {
            action: "reset",
            saga: state.id,
            status: state.status,
            hint: "it is undoing completed steps; wait until it ends or parks (then reset it), or `close` it",
        }),
        SagaStatus::Completed | SagaStatus::Compensated | SagaStatus::Cancelled | SagaStatus::Closed => {
            Err(Refusal::Status {
                action: "reset",
                saga: state.id,
                status: state.status,
                hint: "it has ended; start a new saga (with the corrected input) if the payout must be made",
            })
        }
    }
}

/// The steps a reset to `to` runs again (from `to` to the current step): they get fresh
/// idempotency keys, since their earlier requests are done (or confirmed not sent).
pub fn reset_steps(state: &SagaState, def: &CompiledDefinition, to: &str) -> Vec<String> {
    let Some(from) = def.steps.iter().position(|s| s.def.name == to) else {
        return Vec::new();
    };
    let current = state.step_index.min(def.steps.len().saturating_sub(1));
    def.steps[from..=current.max(from)]
        .iter()
        .map(|s| s.def.name.clone())
        .collect()
}

/// Applies an RFC 7396 JSON merge patch: objects merge key by key, `null` removes a key,
/// anything else replaces.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(serde_json::Map::new());
    }
    if let Value::Object(map) = target {
        for (k, v) in patch {
            if v.is_null() {
                map.remove(k);
            } else {
                merge_patch(map.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::definition::Definition;
    use crate::saga::{ClosedOutcome, StepTraits};

    /// create (compensable) -> payout (irreversible) -> await_payout (reads payout's id).
    fn def() -> CompiledDefinition {
        let d = Definition::from_toml(
            r#"
            name = "t"
            version = 1
            [[steps]]
            name = "create"
            kind = "k.create"
            [[steps]]
            name = "payout"
            kind = "k.payout"
            params = { customer = "$.steps.create.customer_id", payout = "$.input.payout" }
            [[steps]]
            name = "await_payout"
            kind = "k.await"
            params = { id = "$.steps.payout.transaction_id", also = ["$.steps.payout.status"] }
            "#,
        )
        .expect("toml");
        d.compile(
            &|k| {
                Some(StepTraits {
                    compensable: k == "k.create",
                    irreversible: k == "k.payout",
                })
            },
            &[],
        )
        .expect("valid")
    }

    fn state(status: SagaStatus, index: usize) -> SagaState {
        SagaState {
            id: uuid::Uuid::from_u128(7),
            status,
            step_index: index,
            attempt: 2,
            step_started_at: None,
            wait: None,
            cancel_requested: false,
            last_error: Some("step await_payout failed: FAILED".into()),
            effect_possible: false,
            close_requested: None,
            steps_with_output: Default::default(),
        }
    }

    fn plain(outcome: ClosedOutcome) -> CloseAction {
        CloseAction {
            outcome,
            compensate: false,
            in_compensation: false,
            confirm_not_sent: false,
        }
    }

    #[test]
    fn close_ends_a_parked_or_moving_saga_with_the_outcome_and_refuses_an_ended_one() {
        let d = def();
        for status in [
            SagaStatus::NeedsOperator,
            SagaStatus::Scheduled,
            SagaStatus::Retrying,
            SagaStatus::Waiting,
            SagaStatus::Compensating,
        ] {
            let t = close(
                &state(status, 2),
                &d,
                plain(ClosedOutcome::NotPaid),
                "bank rejected",
                Utc::now(),
            )
            .expect("closes");
            assert_eq!(t.status, SagaStatus::Closed);
            assert_eq!((t.run_at, t.wait.is_none()), (None, true));
            assert_eq!(t.history.len(), 1);
            let h = &t.history[0];
            assert_eq!(h.kind, HistoryKind::SagaClosed);
            assert_eq!(h.step.as_deref(), Some("await_payout"));
            assert_eq!(h.detail["outcome"], "not_paid");
            assert_eq!(h.detail["reason"], "bank rejected");
            assert_eq!(h.detail["from_status"], status.as_str());
        }
        for status in [
            SagaStatus::Completed,
            SagaStatus::Compensated,
            SagaStatus::Cancelled,
            SagaStatus::Closed,
        ] {
            let err = close(
                &state(status, 2),
                &d,
                plain(ClosedOutcome::Paid),
                "x",
                Utc::now(),
            )
            .unwrap_err();
            assert!(err.to_string().contains("already ended"), "{err}");
        }
        let err = close(
            &state(SagaStatus::NeedsOperator, 2),
            &d,
            plain(ClosedOutcome::Paid),
            "  ",
            Utc::now(),
        )
        .unwrap_err();
        assert!(matches!(err, Refusal::NoReason { .. }));
    }

    #[test]
    fn reset_runs_again_from_an_earlier_step_and_needs_confirmation_past_an_irreversible_one() {
        let d = def();
        let now = Utc::now();
        let parked = state(SagaStatus::NeedsOperator, 2);
        let patch = json!({"payout": {"account_number": "1234567890"}});
        let req = ResetRequest {
            step: "payout",
            input_patch: Some(&patch),
            confirm_not_sent: false,
        };
        // payout completed: it reached the provider.
        let err = reset(&parked, &d, req, "account corrected", now).unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, Refusal::MaySendAgain { .. }), "{text}");
        assert!(
            text.contains("irreversible step payout completed")
                && text.contains("--confirm-not-sent"),
            "{text}"
        );
        let t = reset(
            &parked,
            &d,
            ResetRequest {
                confirm_not_sent: true,
                ..req
            },
            "account corrected",
            now,
        )
        .expect("confirmed");
        assert_eq!(
            (t.status, t.step_index, t.attempt),
            (SagaStatus::Scheduled, 1, 0)
        );
        assert_eq!(
            (t.run_at, t.last_error.clone(), t.effect_possible),
            (Some(now), None, false)
        );
        let h = &t.history[0];
        assert_eq!(h.kind, HistoryKind::OperatorReset);
        assert_eq!(h.step.as_deref(), Some("payout"));
        assert_eq!(h.detail["input_patch"], patch);
        assert_eq!(h.detail["from_step"], "await_payout");
        assert_eq!(h.detail["reason"], "account corrected");
        assert_eq!(
            reset_steps(&parked, &d, "payout"),
            vec!["payout", "await_payout"]
        );
        // Back to the first step: no irreversible step ran before the current one...
        let at_payout = state(SagaStatus::Retrying, 1);
        let t = reset(
            &at_payout,
            &d,
            ResetRequest {
                step: "create",
                input_patch: None,
                confirm_not_sent: false,
            },
            "r",
            now,
        )
        .expect("nothing irreversible acted");
        assert_eq!(t.step_index, 0);
        // ...unless an attempt of the current irreversible step may have reached the provider.
        let ambiguous = SagaState {
            effect_possible: true,
            ..at_payout.clone()
        };
        let err = reset(
            &ambiguous,
            &d,
            ResetRequest {
                step: "create",
                input_patch: None,
                confirm_not_sent: false,
            },
            "r",
            now,
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("may have reached the provider"),
            "{err}"
        );
        // Forward, unknown steps, compensation, ended sagas are refused.
        let err = reset(
            &at_payout,
            &d,
            ResetRequest {
                step: "await_payout",
                input_patch: None,
                confirm_not_sent: true,
            },
            "r",
            now,
        )
        .unwrap_err();
        assert!(matches!(err, Refusal::ResetAhead { .. }));
        let err = reset(
            &at_payout,
            &d,
            ResetRequest {
                step: "nope",
                input_patch: None,
                confirm_not_sent: true,
            },
            "r",
            now,
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("create, payout, await_payout"),
            "{err}"
        );
        for status in [
            SagaStatus::Compensating,
            SagaStatus::Completed,
            SagaStatus::Closed,
            SagaStatus::Cancelled,
            SagaStatus::Compensated,
        ] {
            assert!(matches!(
                reset(
                    &state(status, 1),
                    &d,
                    ResetRequest {
                        step: "create",
                        input_patch: None,
                        confirm_not_sent: true
                    },
                    "r",
                    now
                ),
                Err(Refusal::Status { .. })
            ));
        }
    }

    #[test]
    fn skip_refuses_an_output_without_the_fields_later_steps_read() {
        let d = def();
        let s = state(SagaStatus::NeedsOperator, 1);
        let err = skip(
            &s,
            &d,
            "payout",
            json!({"transaction_id": "t_1"}),
            "seen on dashboard",
            Utc::now(),
        )
        .unwrap_err();
        let Refusal::OutputMissesReferences { missing, .. } = &err else {
            panic!("{err}")
        };
        assert_eq!(
            missing,
            &vec!["step await_payout params.also[0]: $.steps.payout.status".to_string()]
        );
        let t = skip(
            &s,
            &d,
            "payout",
            json!({"transaction_id": "t_1", "status": "SUCCESSFUL"}),
            "seen",
            Utc::now(),
        )
        .expect("complete output");
        assert_eq!(t.step_index, 2);
        // The last step has no later readers; an empty reason is refused.
        let last = state(SagaStatus::Waiting, 2);
        assert!(skip(&last, &d, "await_payout", json!({}), "ok", Utc::now()).is_ok());
        assert!(matches!(
            skip(&last, &d, "await_payout", json!({}), "", Utc::now()),
            Err(Refusal::NoReason { .. })
        ));
    }

    #[test]
    fn every_action_refuses_an_empty_reason_and_parked_refusals_name_the_parked_actions() {
        let d = def();
        let s = state(SagaStatus::NeedsOperator, 1);
        assert!(matches!(
            resume(&s, &d, false, " ", Utc::now()),
            Err(Refusal::NoReason { .. })
        ));
        let s = state(SagaStatus::Retrying, 1);
        assert!(matches!(
            retry_now(&s, &d, "", Utc::now()),
            Err(Refusal::NoReason { .. })
        ));
        let parked = state(SagaStatus::NeedsOperator, 1);
        let err = retry_now(&parked, &d, "r", Utc::now())
            .unwrap_err()
            .to_string();
        for action in ["`close`", "`reset`", "`resume`", "`skip`"] {
            assert!(err.contains(action), "{err}");
        }
    }

    fn compensating(outcome: ClosedOutcome, confirm_not_sent: bool) -> CloseAction {
        CloseAction {
            outcome,
            compensate: true,
            in_compensation: false,
            confirm_not_sent,
        }
    }

    fn pending(outcome: ClosedOutcome) -> crate::saga::CloseRequest {
        crate::saga::CloseRequest {
            outcome,
            actor: "ops:alice".into(),
            reason: "bank returned it".into(),
            requested_at: Utc::now(),
        }
    }

    #[test]
    fn close_with_compensate_undoes_the_completed_steps_first_and_the_unwind_ends_closed() {
        let d = def();
        let now = Utc::now();
        // Retrying the payout (no attempt reached the provider): create is undone first.
        let s = state(SagaStatus::Retrying, 1);
        let t = close(
            &s,
            &d,
            compensating(ClosedOutcome::NotPaid, false),
            "customer withdrew",
            now,
        )
        .expect("compensates");
        assert_eq!(
            (t.status, t.step_index, t.attempt),
            (SagaStatus::Compensating, 0, 0)
        );
        assert_eq!((t.run_at, t.effect_possible), (Some(now), false));
        let kinds: Vec<HistoryKind> = t.history.iter().map(|h| h.kind).collect();
        assert_eq!(
            kinds,
            [
                HistoryKind::CloseRequested,
                HistoryKind::CompensationStarted
            ]
        );
        let h = &t.history[0];
        assert_eq!(h.detail["outcome"], "not_paid");
        assert_eq!(h.detail["compensate"], true);
        assert_eq!(h.detail["undo"], json!(["create"]));
        assert_eq!(h.detail["reason"], "customer withdrew");
        assert_eq!(close_undo_steps(&s, &d, false), ["create"]);
        // The workers undo create; the last compensation ends the saga closed, not compensated.
        let unwinding = SagaState {
            status: SagaStatus::Compensating,
            step_index: 0,
            attempt: 0,
            close_requested: Some(pending(ClosedOutcome::NotPaid)),
            ..s.clone()
        };
        let end = crate::saga::after_compensation(
            &unwinding,
            &d,
            0,
            1,
            crate::step::StepOutcome::Done(json!({})),
            now,
        );
        assert_eq!((end.status, end.run_at), (SagaStatus::Closed, None));
        let last = end.history.last().expect("history");
        assert_eq!(last.kind, HistoryKind::SagaClosed);
        assert_eq!(last.detail["outcome"], "not_paid");
        assert_eq!(last.detail["compensate"], true);
        assert_eq!(last.detail["requested_by"], "ops:alice");
        // Nothing to undo (still at the first step): closed at once.
        let t = close(
            &state(SagaStatus::Scheduled, 0),
            &d,
            compensating(ClosedOutcome::Paid, false),
            "paid by hand",
            now,
        )
        .expect("closes");
        assert_eq!((t.status, t.run_at), (SagaStatus::Closed, None));
        assert_eq!(t.history[0].kind, HistoryKind::SagaClosed);
        assert_eq!(t.history[0].detail["compensate"], true);
        assert_eq!(t.history[0].detail["undo"], json!([]));
    }

    #[test]
    fn close_with_compensate_after_an_irreversible_step_acted_refuses_paid_and_needs_confirmation_for_not_paid(
    ) {
        let d = def();
        let now = Utc::now();
        // Parked waiting for the payout's outcome: payout completed (it reached the provider).
        let parked = state(SagaStatus::NeedsOperator, 2);
        let err = close(
            &parked,
            &d,
            compensating(ClosedOutcome::Paid, true),
            "paid",
            now,
        )
        .unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, Refusal::PaidWithCompensate { .. }), "{text}");
        assert!(
            text.contains("irreversible step payout completed")
                && text.contains("without --compensate")
                && text.contains("(create)"),
            "{text}"
        );
        let err = close(
            &parked,
            &d,
            compensating(ClosedOutcome::NotPaid, false),
            "returned",
            now,
        )
        .unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, Refusal::CloseMayHavePaid { .. }), "{text}");
        assert!(
            text.contains("--confirm-not-sent") && text.contains("cannot undo that step"),
            "{text}"
        );
        let t = close(
            &parked,
            &d,
            compensating(ClosedOutcome::NotPaid, true),
            "returned",
            now,
        )
        .expect("confirmed");
        assert_eq!((t.status, t.step_index), (SagaStatus::Compensating, 0));
        assert_eq!(t.history[0].detail["confirm_not_sent"], true);
        assert_eq!(
            t.history[0].detail["may_have_acted"][0],
            "irreversible step payout completed (its request reached the provider)"
        );
        // An ambiguous attempt of the current irreversible step counts too.
        let ambiguous = SagaState {
            effect_possible: true,
            ..state(SagaStatus::Retrying, 1)
        };
        let err = close(
            &ambiguous,
            &d,
            compensating(ClosedOutcome::NotPaid, false),
            "r",
            now,
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("may have reached the provider"),
            "{err}"
        );
    }

    #[test]
    fn close_with_compensate_of_an_unwinding_saga_goes_on_where_it_is_and_a_pending_request_refuses_another(
    ) {
        let d = def();
        let now = Utc::now();
        // Undoing create after a failure, attempt 2 backing off: it goes on, then ends closed.
        let mut s = state(SagaStatus::Compensating, 0);
        s.attempt = 2;
        let t = close(
            &s,
            &d,
            compensating(ClosedOutcome::NotPaid, false),
            "r",
            now,
        )
        .expect("requested");
        assert_eq!(
            (t.status, t.step_index, t.attempt),
            (SagaStatus::Compensating, 0, 2)
        );
        assert_eq!(t.last_error, s.last_error);
        assert_eq!(
            t.history.iter().map(|h| h.kind).collect::<Vec<_>>(),
            [HistoryKind::CloseRequested]
        );
        // Parked in its unwind (a compensation failed): the failed compensation runs again.
        let parked = state(SagaStatus::NeedsOperator, 0);
        let t = close(
            &parked,
            &d,
            CloseAction {
                in_compensation: true,
                ..compensating(ClosedOutcome::NotPaid, false)
            },
            "r",
            now,
        )
        .expect("requested");
        assert_eq!(
            (t.status, t.step_index, t.attempt),
            (SagaStatus::Compensating, 0, 0)
        );
        // A second request while one is pending is refused; a plain close still ends it now.
        let with_request = SagaState {
            close_requested: Some(pending(ClosedOutcome::NotPaid)),
            ..s
        };
        let err = close(
            &with_request,
            &d,
            compensating(ClosedOutcome::Paid, false),
            "r",
            now,
        )
        .unwrap_err();
        assert!(matches!(err, Refusal::ClosePending { .. }), "{err}");
        assert!(
            err.to_string().contains("ops:alice")
                && err.to_string().contains("without --compensate"),
            "{err}"
        );
        let t =
            close(&with_request, &d, plain(ClosedOutcome::NotPaid), "r", now).expect("plain close");
        assert_eq!(t.status, SagaStatus::Closed);
    }

    #[test]
    fn merge_patch_follows_rfc_7396() {
        let mut v = json!({"a": "b", "c": {"d": "e", "f": "g"}, "l": [1]});
        merge_patch(
            &mut v,
            &json!({"a": "z", "c": {"f": null, "h": 1}, "l": [2], "n": {"x": null}}),
        );
        assert_eq!(
            v,
            json!({"a": "z", "c": {"d": "e", "h": 1}, "l": [2], "n": {}})
        );
        let mut v = json!([1]);
        merge_patch(&mut v, &json!({"a": 1}));
        assert_eq!(v, json!({"a": 1}));
    }

    #[test]
    fn reset_over_an_irreversible_step_its_condition_skipped_needs_no_confirmation() {
        let d = Definition::from_toml(
            r#"
            name = "t"
            version = 1
            [[steps]]
            name = "create"
            kind = "k.create"
            [[steps]]
            name = "payout"
            kind = "k.payout"
            when = { path = "$.input.pay", equals = true }
            [[steps]]
            name = "notify"
            kind = "k.notify"
            "#,
        )
        .expect("toml")
        .compile(
            &|k| {
                Some(StepTraits {
                    compensable: k == "k.create",
                    irreversible: k == "k.payout",
                })
            },
            &[],
        )
        .expect("valid");
        let mut parked = state(SagaStatus::NeedsOperator, 2);
        parked.steps_with_output = ["create".to_string()].into_iter().collect();
        let req = ResetRequest {
            step: "create",
            input_patch: None,
            confirm_not_sent: false,
        };
        let t =
            reset(&parked, &d, req, "again", Utc::now()).expect("payout was skipped: nothing sent");
        assert_eq!((t.status, t.step_index), (SagaStatus::Scheduled, 0));
        // Had it run (an output stored), the reset needs --confirm-not-sent.
        parked.steps_with_output.insert("payout".into());
        assert!(matches!(
            reset(&parked, &d, req, "again", Utc::now()),
            Err(Refusal::MaySendAgain { .. })
        ));
    }
}
