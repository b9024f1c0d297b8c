//! The saga state machine: pure functions from (state, step outcome) to a [`Transition`]
//! that the store applies in one transaction. No I/O here.

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use uuid::Uuid;

use crate::definition::CompiledDefinition;
use crate::retry::RetryDecision;
use crate::step::{Event, StepOutcome, WaitSpec, Wake};

/// Where a saga is, as stored (text with a CHECK constraint). What operators are shown adds
/// one derived value, `running` (a worker holds the saga right now): see [`ObservedStatus`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SagaStatus {
    /// Its next step is due at `run_at` (just started, or the previous step completed).
    Scheduled,
    /// The current step failed transiently; its next attempt is due at `run_at`.
    Retrying,
    /// Waiting for an event (with a deadline and a poll time).
    Waiting,
    /// A step failed permanently (or an operator cancelled); completed steps are being undone
    /// in reverse.
    Compensating,
    /// Every step completed.
    Completed,
    /// Failed and fully rolled back (or nothing needed undoing): no money moved.
    Compensated,
    /// Parked: no worker runs it until an operator acts. Money may have moved; the saga's
    /// last error says why it stopped and what was already done.
    NeedsOperator,
    /// Cancelled by an operator before any irreversible effect; compensations ran.
    Cancelled,
    /// Ended by an operator with a declared outcome ([`ClosedOutcome`]); final.
    Closed,
}

impl SagaStatus {
    /// All stored statuses, in lifecycle order.
    pub const ALL: [SagaStatus; 9] = [
        SagaStatus::Scheduled,
        SagaStatus::Retrying,
        SagaStatus::Waiting,
        SagaStatus::Compensating,
        SagaStatus::Completed,
        SagaStatus::Compensated,
        SagaStatus::NeedsOperator,
        SagaStatus::Cancelled,
        SagaStatus::Closed,
    ];

    /// The stored text.
    pub fn as_str(self) -> &'static str {
        match self {
            SagaStatus::Scheduled => "scheduled",
            SagaStatus::Retrying => "retrying",
            SagaStatus::Waiting => "waiting",
            SagaStatus::Compensating => "compensating",
            SagaStatus::Completed => "completed",
            SagaStatus::Compensated => "compensated",
            SagaStatus::NeedsOperator => "needs_operator",
            SagaStatus::Cancelled => "cancelled",
            SagaStatus::Closed => "closed",
        }
    }

    /// No worker will touch the saga again unless an operator acts: the ended statuses and
    /// [`SagaStatus::NeedsOperator`]. Such a saga has no `run_at` and no owner.
    pub fn is_final(self) -> bool {
        match self {
            SagaStatus::Completed
            | SagaStatus::Compensated
            | SagaStatus::NeedsOperator
            | SagaStatus::Cancelled
            | SagaStatus::Closed => true,
            SagaStatus::Scheduled
            | SagaStatus::Retrying
            | SagaStatus::Waiting
            | SagaStatus::Compensating => false,
        }
    }

    /// The saga is over for good: nothing, not even an operator, moves it again
    /// (completed, compensated, cancelled, closed). A saga that needs an operator is not.
    pub fn is_ended(self) -> bool {
        self.is_final() && self != SagaStatus::NeedsOperator
    }
}

impl fmt::Display for SagaStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An unknown status text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown saga status {0:?} (expected one of scheduled, running, retrying, waiting, needs_operator, compensating, completed, compensated, cancelled, closed)")]
pub struct UnknownStatus(pub String);

impl FromStr for SagaStatus {
    type Err = UnknownStatus;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        SagaStatus::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| UnknownStatus(s.to_string()))
    }
}

/// The status operators see, in the CLI, JSON, metrics and docs: the stored
/// [`SagaStatus`], except that a saga a worker holds right now (scheduled, retrying or
/// waiting, with an owner) is `running`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ObservedStatus {
    /// Its next step is due; no worker holds it yet.
    Scheduled,
    /// A worker holds it and is running a step (or a poll of a wait).
    Running,
    /// Backing off after a transient failure of its current step.
    Retrying,
    /// Waiting for a provider's event, with a deadline and a poll time.
    Waiting,
    /// Parked: an operator must act (close, reset, retry, resume, skip).
    NeedsOperator,
    /// Undoing completed steps.
    Compensating,
    /// Every step completed.
    Completed,
    /// Failed and rolled back: no money moved.
    Compensated,
    /// Cancelled by an operator; compensations ran.
    Cancelled,
    /// Ended by an operator with a declared outcome.
    Closed,
}

impl ObservedStatus {
    /// Every value, in lifecycle order.
    pub const ALL: [ObservedStatus; 10] = [
        ObservedStatus::Scheduled,
        ObservedStatus::Running,
        ObservedStatus::Retrying,
        ObservedStatus::Waiting,
        ObservedStatus::NeedsOperator,
        ObservedStatus::Compensating,
        ObservedStatus::Completed,
        ObservedStatus::Compensated,
        ObservedStatus::Cancelled,
        ObservedStatus::Closed,
    ];

    /// What a saga stored with `status` shows, `held` when a worker owns it.
    pub fn of(status: SagaStatus, held: bool) -> ObservedStatus {
        match status {
            SagaStatus::Scheduled | SagaStatus::Retrying | SagaStatus::Waiting if held => {
                ObservedStatus::Running
            }
            SagaStatus::Scheduled => ObservedStatus::Scheduled,
            SagaStatus::Retrying => ObservedStatus::Retrying,
            SagaStatus::Waiting => ObservedStatus::Waiting,
            SagaStatus::Compensating => ObservedStatus::Compensating,
            SagaStatus::Completed => ObservedStatus::Completed,
            SagaStatus::Compensated => ObservedStatus::Compensated,
            SagaStatus::NeedsOperator => ObservedStatus::NeedsOperator,
            SagaStatus::Cancelled => ObservedStatus::Cancelled,
            SagaStatus::Closed => ObservedStatus::Closed,
        }
    }

    /// The text (the stored text for every value but `running`).
    pub fn as_str(self) -> &'static str {
        match self {
            ObservedStatus::Scheduled => "scheduled",
            ObservedStatus::Running => "running",
            ObservedStatus::Retrying => "retrying",
            ObservedStatus::Waiting => "waiting",
            ObservedStatus::NeedsOperator => "needs_operator",
            ObservedStatus::Compensating => "compensating",
            ObservedStatus::Completed => "completed",
            ObservedStatus::Compensated => "compensated",
            ObservedStatus::Cancelled => "cancelled",
            ObservedStatus::Closed => "closed",
        }
    }

    /// The stored statuses this value can come from (`running`: scheduled, retrying,
    /// waiting, held by a worker; the others: themselves, not held).
    pub fn stored(self) -> &'static [SagaStatus] {
        match self {
            ObservedStatus::Running => &[
                SagaStatus::Scheduled,
                SagaStatus::Retrying,
                SagaStatus::Waiting,
            ],
            ObservedStatus::Scheduled => &[SagaStatus::Scheduled],
            ObservedStatus::Retrying => &[SagaStatus::Retrying],
            ObservedStatus::Waiting => &[SagaStatus::Waiting],
            ObservedStatus::NeedsOperator => &[SagaStatus::NeedsOperator],
            ObservedStatus::Compensating => &[SagaStatus::Compensating],
            ObservedStatus::Completed => &[SagaStatus::Completed],
            ObservedStatus::Compensated => &[SagaStatus::Compensated],
            ObservedStatus::Cancelled => &[SagaStatus::Cancelled],
            ObservedStatus::Closed => &[SagaStatus::Closed],
        }
    }
}

impl fmt::Display for ObservedStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ObservedStatus {
    type Err = UnknownStatus;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ObservedStatus::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| UnknownStatus(s.to_string()))
    }
}

/// What an operator declares when closing a saga ([`SagaStatus::Closed`]): did the payee get
/// the money? Stored as text (`paid`, `not_paid`) with a CHECK constraint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClosedOutcome {
    /// The payout reached the payee (e.g. confirmed with the provider by hand).
    Paid,
    /// No money reached the payee.
    NotPaid,
}

impl ClosedOutcome {
    /// The stored text.
    pub fn as_str(self) -> &'static str {
        match self {
            ClosedOutcome::Paid => "paid",
            ClosedOutcome::NotPaid => "not_paid",
        }
    }
}

impl fmt::Display for ClosedOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ClosedOutcome {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "paid" => Ok(ClosedOutcome::Paid),
            "not_paid" | "not-paid" => Ok(ClosedOutcome::NotPaid),
            other => Err(format!(
                "unknown outcome {other:?} (expected paid or not_paid)"
            )),
        }
    }
}

/// What kind of history entry. Stored as text with a CHECK constraint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HistoryKind {
    /// The saga was created.
    SagaStarted,
    /// A step finished with an output.
    StepCompleted,
    /// A step failed transiently; the next attempt is scheduled.
    StepRetrying,
    /// A step began (or went on) waiting for an event.
    StepWaiting,
    /// An event ended a wait.
    EventReceived,
    /// A step failed permanently.
    StepFailed,
    /// Compensation of completed steps began.
    CompensationStarted,
    /// One step's effect was undone.
    StepCompensated,
    /// A compensation failed transiently.
    CompensationRetrying,
    /// A compensation failed for good.
    CompensationFailed,
    /// The saga completed.
    SagaCompleted,
    /// The saga ended rolled back.
    SagaCompensated,
    /// The saga is parked for an operator (status `needs_operator`).
    SagaParked,
    /// The saga was cancelled.
    SagaCancelled,
    /// An operator asked for a cancel.
    CancelRequested,
    /// A worker lost its lease and another took the saga over.
    LeaseTakenOver,
    /// An operator ran the current step now, resetting its backoff.
    OperatorRetry,
    /// An operator resumed a saga parked for them.
    OperatorResume,
    /// An operator asserted a step's effect happened and supplied its output.
    OperatorSkip,
    /// An operator delivered an event by hand.
    OperatorEvent,
    /// A stored event was matched again on an operator's request.
    EventReplayed,
    /// A worker was about to send a request the provider cannot deduplicate (effect mark:
    /// worker, time and the end of its effect window).
    EffectMarked,
    /// A marked request was refused before it took effect; the mark was withdrawn.
    EffectMarkWithdrawn,
    /// A commit was refused by the fence (the worker no longer held the saga); nothing of
    /// it was written. Recorded after the refusal, in a transaction of its own.
    CommitRefused,
    /// A worker gave the saga back without a result (lease doubt, commit not stored,
    /// shutdown, a claim it was not running), with the reason.
    SagaReleased,
    /// A step reported something an operator must look at although the saga goes on (e.g. a
    /// duplicate funding invoice that was paid): see [`crate::step::alert`].
    SagaAlert,
    /// An operator closed the saga with a declared outcome (detail: `outcome`, `compensate`).
    SagaClosed,
    /// An operator reset the saga to an earlier step (detail: step, input patch).
    OperatorReset,
    /// An operator's action was refused (detail: the action and the refusal).
    OperatorRefused,
    /// An operator printed the saga's personal data unredacted (`--reveal`).
    DataRevealed,
    /// An operator asked to close the saga after undoing its completed steps (`close
    /// --compensate`; detail: `outcome`, `compensate`, the steps to undo). The unwind ends with
    /// `saga_closed`.
    CloseRequested,
    /// A step's `when` condition did not hold: the step was passed over without running and
    /// has no output (detail: `when` as written, `value` seen, `found`).
    StepSkipped,
}

impl HistoryKind {
    /// All kinds.
    pub const ALL: [HistoryKind; 32] = [
        HistoryKind::SagaStarted,
        HistoryKind::StepCompleted,
        HistoryKind::StepRetrying,
        HistoryKind::StepWaiting,
        HistoryKind::EventReceived,
        HistoryKind::StepFailed,
        HistoryKind::CompensationStarted,
        HistoryKind::StepCompensated,
        HistoryKind::CompensationRetrying,
        HistoryKind::CompensationFailed,
        HistoryKind::SagaCompleted,
        HistoryKind::SagaCompensated,
        HistoryKind::SagaParked,
        HistoryKind::SagaCancelled,
        HistoryKind::CancelRequested,
        HistoryKind::LeaseTakenOver,
        HistoryKind::OperatorRetry,
        HistoryKind::OperatorResume,
        HistoryKind::OperatorSkip,
        HistoryKind::OperatorEvent,
        HistoryKind::EventReplayed,
        HistoryKind::EffectMarked,
        HistoryKind::EffectMarkWithdrawn,
        HistoryKind::CommitRefused,
        HistoryKind::SagaReleased,
        HistoryKind::SagaAlert,
        HistoryKind::SagaClosed,
        HistoryKind::OperatorReset,
        HistoryKind::OperatorRefused,
        HistoryKind::DataRevealed,
        HistoryKind::CloseRequested,
        HistoryKind::StepSkipped,
    ];

    /// The stored text.
    pub fn as_str(self) -> &'static str {
        match self {
            HistoryKind::SagaStarted => "saga_started",
            HistoryKind::StepCompleted => "step_completed",
            HistoryKind::StepRetrying => "step_retrying",
            HistoryKind::StepWaiting => "step_waiting",
            HistoryKind::EventReceived => "event_received",
            HistoryKind::StepFailed => "step_failed",
            HistoryKind::CompensationStarted => "compensation_started",
            HistoryKind::StepCompensated => "step_compensated",
            HistoryKind::CompensationRetrying => "compensation_retrying",
            HistoryKind::CompensationFailed => "compensation_failed",
            HistoryKind::SagaCompleted => "saga_completed",
            HistoryKind::SagaCompensated => "saga_compensated",
            HistoryKind::SagaParked => "saga_parked",
            HistoryKind::SagaCancelled => "saga_cancelled",
            HistoryKind::CancelRequested => "cancel_requested",
            HistoryKind::LeaseTakenOver => "lease_taken_over",
            HistoryKind::OperatorRetry => "operator_retry",
            HistoryKind::OperatorResume => "operator_resume",
            HistoryKind::OperatorSkip => "operator_skip",
            HistoryKind::OperatorEvent => "operator_event",
            HistoryKind::EventReplayed => "event_replayed",
            HistoryKind::EffectMarked => "effect_marked",
            HistoryKind::EffectMarkWithdrawn => "effect_mark_withdrawn",
            HistoryKind::CommitRefused => "commit_refused",
            HistoryKind::SagaReleased => "saga_released",
            HistoryKind::SagaAlert => "saga_alert",
            HistoryKind::SagaClosed => "saga_closed",
            HistoryKind::OperatorReset => "operator_reset",
            HistoryKind::OperatorRefused => "operator_refused",
            HistoryKind::DataRevealed => "data_revealed",
            HistoryKind::CloseRequested => "close_requested",
            HistoryKind::StepSkipped => "step_skipped",
        }
    }
}

impl FromStr for HistoryKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        HistoryKind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| format!("unknown history kind {s:?}"))
    }
}

/// One history entry produced by a transition (the store adds time and worker).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HistoryEntry {
    /// What happened.
    pub kind: HistoryKind,
    /// Which step, if any.
    pub step: Option<String>,
    /// Which attempt of it.
    pub attempt: Option<u32>,
    /// The error, for failures.
    pub error: Option<String>,
    /// Extra facts (next attempt time, wait key, output size...).
    pub detail: Value,
}

impl HistoryEntry {
    fn new(kind: HistoryKind, step: Option<&str>, attempt: Option<u32>) -> Self {
        HistoryEntry {
            kind,
            step: step.map(str::to_string),
            attempt,
            error: None,
            detail: Value::Null,
        }
    }
    fn error(mut self, e: &str) -> Self {
        self.error = Some(e.to_string());
        self
    }
    fn detail(mut self, d: Value) -> Self {
        self.detail = d;
        self
    }
}

/// One `saga_alert` history entry per alert in a step's output (its
/// [`crate::step::ALERTS_FIELD`] array, see [`crate::step::alert`]); written in the commit of
/// the step's result. Detail: `{"alert": kind, "message": ..., ...the alert's detail}`.
pub fn alert_entries(step: &str, attempt: u32, output: &Value) -> Vec<HistoryEntry> {
    let Some(alerts) = output
        .get(crate::step::ALERTS_FIELD)
        .and_then(Value::as_array)
    else {
        return Vec::new();
    };
    alerts
        .iter()
        .map(|a| {
            let kind = a
                .get("kind")
                .and_then(Value::as_str)
                .unwrap_or("unspecified");
            let message = a.get("message").and_then(Value::as_str).unwrap_or_default();
            let mut detail = json!({"alert": kind, "message": message});
            if let (Some(extra), Some(map)) = (
                a.get("detail").and_then(Value::as_object),
                detail.as_object_mut(),
            ) {
                for (k, v) in extra {
                    map.entry(k.clone()).or_insert_with(|| v.clone());
                }
            }
            HistoryEntry::new(HistoryKind::SagaAlert, Some(step), Some(attempt)).detail(detail)
        })
        .collect()
}

/// An active wait as stored on the saga.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ActiveWait {
    /// Provider whose events may end it.
    pub provider: String,
    /// Event types that end it.
    pub event_types: Vec<String>,
    /// Correlation key the event must carry.
    pub correlation_key: String,
    /// When the step gives up.
    pub deadline: DateTime<Utc>,
    /// When the step polls the provider if no event came.
    pub poll_at: DateTime<Utc>,
    /// When the wait began.
    pub since: DateTime<Utc>,
    /// State handed back to the step.
    #[serde(default)]
    pub state: Value,
}

/// What the state machine needs to know about a saga.
#[derive(Debug, Clone, PartialEq)]
pub struct SagaState {
    /// Saga id.
    pub id: Uuid,
    /// Status.
    pub status: SagaStatus,
    /// The current step (forward) or the step being compensated.
    pub step_index: usize,
    /// Attempts already made of the current step (or compensation).
    pub attempt: u32,
    /// When the first attempt of the current step ran.
    pub step_started_at: Option<DateTime<Utc>>,
    /// The active wait, when waiting.
    pub wait: Option<ActiveWait>,
    /// An operator asked to cancel.
    pub cancel_requested: bool,
    /// The error operators see; during compensation, the failure that started it.
    pub last_error: Option<String>,
    /// An attempt of the current step may have reached the provider: the step is
    /// irreversible and an attempt ended without a definite answer (a transient failure: a
    /// timeout, a 5xx, a connection lost after sending), or an effect mark is on it. An unwind
    /// then parks for an operator instead of claiming nothing happened.
    pub effect_possible: bool,
    /// An operator asked to close the saga once its completed steps are undone (`close
    /// --compensate`): the unwind ends [`SagaStatus::Closed`] with this outcome instead of
    /// [`SagaStatus::Compensated`] or [`SagaStatus::Cancelled`]. Pending only while the saga
    /// compensates or is parked for an operator.
    pub close_requested: Option<CloseRequest>,
    /// The steps with a stored output (completed, or skipped by an operator with one). A
    /// conditional step (`when`) before the cursor without an output was skipped by its
    /// condition: it did nothing, so an unwind neither compensates it nor counts it as an
    /// irreversible effect.
    pub steps_with_output: BTreeSet<String>,
}

impl SagaState {
    /// Step `index` (before the cursor) was skipped by its `when`: it has a condition and
    /// no output.
    /// (The current step and those after it are not skipped: they have not come yet.)
    pub fn was_skipped(&self, def: &CompiledDefinition, index: usize) -> bool {
        index < self.step_index
            && def
                .steps
                .get(index)
                .is_some_and(|s| s.when.is_some() && !self.steps_with_output.contains(&s.def.name))
    }
}

/// A pending `close --compensate` (stored with the saga until the unwind ends).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CloseRequest {
    /// The outcome the operator declared.
    pub outcome: ClosedOutcome,
    /// Who asked.
    pub actor: String,
    /// Why.
    pub reason: String,
    /// When.
    pub requested_at: DateTime<Utc>,
}

/// What a step kind (combined with the definition's flags) says about undoing a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StepTraits {
    /// The step can be undone (the kind can, and the definition allows it).
    pub compensable: bool,
    /// The effect cannot be undone.
    pub irreversible: bool,
}

/// What the worker should run next for a claimed saga.
#[derive(Debug, Clone, PartialEq)]
pub enum NextRun {
    /// Run step `index` forward.
    Step {
        /// Step index.
        index: usize,
        /// Why.
        wake: Wake,
        /// Attempt number of this run.
        attempt: u32,
    },
    /// Run the compensation of step `index`.
    Compensate {
        /// Step index.
        index: usize,
        /// Attempt number of this run.
        attempt: u32,
    },
    /// Nothing to run; apply this transition (e.g. a cancel with nothing to undo).
    Apply(Box<Transition>),
}

/// The result of deciding: what the store writes in one transaction.
#[derive(Debug, Clone, PartialEq)]
pub struct Transition {
    /// New status.
    pub status: SagaStatus,
    /// New step cursor.
    pub step_index: usize,
    /// Attempts made of the (new) current step.
    pub attempt: u32,
    /// First attempt time of the (new) current step.
    pub step_started_at: Option<DateTime<Utc>>,
    /// When a worker should pick the saga up again; `None` when final.
    pub run_at: Option<DateTime<Utc>>,
    /// The wait to store (status `Waiting`).
    pub wait: Option<ActiveWait>,
    /// A step output to store under the step's name.
    pub output: Option<(String, Value)>,
    /// The error to show operators (`None` clears it).
    pub last_error: Option<String>,
    /// History entries to append.
    pub history: Vec<HistoryEntry>,
    /// The worker keeps its lease and runs the next step at once (no re-claim).
    pub continue_now: bool,
    /// An attempt of the (new) current step may have reached the provider (see
    /// [`SagaState::effect_possible`]); stored with the saga.
    pub effect_possible: bool,
}

impl Transition {
    fn base(state: &SagaState, status: SagaStatus) -> Self {
        Transition {
            status,
            step_index: state.step_index,
            attempt: state.attempt,
            step_started_at: state.step_started_at,
            run_at: None,
            wait: None,
            output: None,
            last_error: None,
            history: Vec::new(),
            continue_now: false,
            effect_possible: state.effect_possible,
        }
    }
}

/// Decides what to run for a saga a worker just claimed (or kept). `scope` is what step
/// parameters and conditions read: `{"input", "steps": {name: output}, "saga": {"id",
/// "workflow"}}`. A step about to make its first attempt whose `when` does not hold is skipped
/// (with the conditional steps after it that do not hold either): [`NextRun::Apply`] of a
/// transition to the next step that runs, with a `step_skipped` history entry for each.
pub fn next_run(
    state: &SagaState,
    def: &CompiledDefinition,
    wake_event: Option<Event>,
    scope: &Value,
    now: DateTime<Utc>,
) -> NextRun {
    match state.status {
        SagaStatus::Scheduled | SagaStatus::Retrying | SagaStatus::Waiting
            if state.cancel_requested =>
        {
            NextRun::Apply(Box::new(begin_unwind(
                state,
                def,
                "cancelled by operator",
                now,
                Vec::new(),
            )))
        }
        SagaStatus::Scheduled | SagaStatus::Retrying => {
            if state.attempt == 0 {
                if let Some(t) = skip_unmet_conditions(state, def, scope, now) {
                    return NextRun::Apply(Box::new(t));
                }
            }
            let wake = if state.attempt == 0 {
                Wake::Start
            } else {
                Wake::Retry {
                    last_error: state.last_error.clone().unwrap_or_default(),
                }
            };
            NextRun::Step {
                index: state.step_index,
                wake,
                attempt: state.attempt + 1,
            }
        }
        SagaStatus::Waiting => {
            let wake = match (wake_event, &state.wait) {
                (Some(ev), _) => Wake::Event(ev),
                (None, Some(w)) => Wake::Poll {
                    deadline_passed: now >= w.deadline,
                },
                (None, None) => Wake::Poll {
                    deadline_passed: false,
                },
            };
            NextRun::Step {
                index: state.step_index,
                wake,
                attempt: state.attempt.max(1),
            }
        }
        SagaStatus::Compensating => NextRun::Compensate {
            index: state.step_index,
            attempt: state.attempt + 1,
        },
        SagaStatus::Completed
        | SagaStatus::Compensated
        | SagaStatus::NeedsOperator
        | SagaStatus::Cancelled
        | SagaStatus::Closed => {
            // A final saga is never claimed; keep it where it is.
            NextRun::Apply(Box::new(Transition::base(state, state.status)))
        }
    }
}

/// From the current step on, passes over each step whose `when` does not hold: `None` when the
/// current step runs (no condition, or it holds). A condition that cannot be evaluated (its
/// path matched several values) fails that step.
fn skip_unmet_conditions(
    state: &SagaState,
    def: &CompiledDefinition,
    scope: &Value,
    now: DateTime<Utc>,
) -> Option<Transition> {
    let mut index = state.step_index;
    let mut history = Vec::new();
    while let Some(step) = def.steps.get(index) {
        let Some(when) = &step.when else { break };
        match when.evaluate(scope) {
            Ok(v) if v.holds => break,
            Ok(v) => {
                history.push(
                    HistoryEntry::new(HistoryKind::StepSkipped, Some(&step.def.name), None).detail(
                        json!({
                            "when": when.condition,
                            "value": v.seen,
                            "found": v.seen.is_some(),
                        }),
                    ),
                );
                index += 1;
            }
            Err(error) => {
                let at = SagaState {
                    step_index: index,
                    attempt: 0,
                    ..state.clone()
                };
                let error = format!("its `when` cannot be evaluated: {error}");
                return Some(fail_step(&at, def, index, 0, &error, false, now, history));
            }
        }
    }
    if index == state.step_index {
        return None;
    }
    let mut t = Transition::base(state, SagaStatus::Scheduled);
    t.step_index = index;
    t.attempt = 0;
    t.step_started_at = None;
    t.effect_possible = false;
    t.last_error = None;
    if index >= def.steps.len() {
        t.status = SagaStatus::Completed;
        history.push(HistoryEntry::new(HistoryKind::SagaCompleted, None, None));
    } else {
        t.run_at = Some(now);
        t.continue_now = true;
    }
    t.history = history;
    Some(t)
}

fn jitter_seed(id: Uuid, index: usize, attempt: u32) -> u64 {
    let v = id.as_u128();
    (v as u64) ^ ((v >> 64) as u64) ^ ((index as u64) << 32) ^ u64::from(attempt)
}

fn since(now: DateTime<Utc>, start: Option<DateTime<Utc>>) -> Duration {
    start
        .map(|s| (now - s).to_std().unwrap_or_default())
        .unwrap_or_default()
}

/// `now + d`, with `d` capped at [`crate::definition::MAX_DURATION`]: a step's or provider's
/// hint of centuries (a huge `Retry-After` or wait) schedules far out instead of overflowing.
fn add(now: DateTime<Utc>, d: Duration) -> DateTime<Utc> {
    let d = d.min(crate::definition::MAX_DURATION);
    chrono::Duration::from_std(d)
        .ok()
        .and_then(|d| now.checked_add_signed(d))
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

/// Decides the transition after a forward run of step `index` returned `outcome`.
pub fn after_step(
    state: &SagaState,
    def: &CompiledDefinition,
    index: usize,
    attempt: u32,
    wake: &Wake,
    outcome: StepOutcome,
    now: DateTime<Utc>,
) -> Transition {
    let step = &def.steps[index].def;
    let name = step.name.as_str();
    let started = state.step_started_at.or(Some(now));
    let waiting = matches!(wake, Wake::Event(_) | Wake::Poll { .. });
    // An irreversible step that waits or fails transiently may have acted at the provider
    // (the engine cannot tell a timeout or 5xx after sending from a refusal before it).
    let irreversible = def.steps[index].traits.irreversible;
    let possible = state.effect_possible || irreversible;
    let mut history = Vec::new();
    if let Wake::Event(ev) = wake {
        history.push(
            HistoryEntry::new(HistoryKind::EventReceived, Some(name), Some(attempt)).detail(
                json!({
                    "provider": ev.provider, "event_id": ev.event_id, "event_type": ev.event_type,
                    "correlation_key": ev.correlation_key, "inbox_id": ev.inbox_id,
                }),
            ),
        );
    }
    match outcome {
        StepOutcome::Done(output) => {
            history.push(HistoryEntry::new(
                HistoryKind::StepCompleted,
                Some(name),
                Some(attempt),
            ));
            history.extend(alert_entries(name, attempt, &output));
            let next = index + 1;
            let mut t = Transition::base(state, SagaStatus::Scheduled);
            t.output = Some((name.to_string(), output));
            t.step_index = next;
            t.attempt = 0;
            t.step_started_at = None;
            t.effect_possible = false;
            if next >= def.steps.len() {
                t.status = SagaStatus::Completed;
                history.push(HistoryEntry::new(HistoryKind::SagaCompleted, None, None));
            } else {
                t.run_at = Some(now);
                t.continue_now = true;
            }
            t.history = history;
            t
        }
        StepOutcome::Wait(spec) => {
            if let Wake::Poll {
                deadline_passed: true,
            } = wake
            {
                let error = format!(
                    "wait deadline passed: no {} event {} for {} and the provider still has no final answer",
                    spec.provider,
                    spec.event_types.join("/"),
                    spec.correlation_key
                );
                return fail_step(state, def, index, attempt, &error, possible, now, history);
            }
            let mut t = begin_wait(state, step, index, attempt, spec, now, started, history);
            t.effect_possible = possible;
            t
        }
        StepOutcome::Held { reason, after } => {
            // Not an attempt: the attempt count, the retry budget and the step's start stay.
            let at = add(now, after);
            let mut t = match (&state.wait, waiting) {
                (Some(wait), true) => {
                    let poll_at = at.min(wait.deadline);
                    let mut t = Transition::base(state, SagaStatus::Waiting);
                    t.run_at = Some(poll_at);
                    t.wait = Some(ActiveWait {
                        poll_at,
                        ..wait.clone()
                    });
                    t
                }
                _ => {
                    let status = if state.attempt > 0 {
                        SagaStatus::Retrying
                    } else {
                        SagaStatus::Scheduled
                    };
                    let mut t = Transition::base(state, status);
                    t.run_at = Some(at);
                    t
                }
            };
            t.last_error = Some(reason);
            // Only an event that woke the step is recorded (it was consumed).
            t.history = history;
            t
        }
        StepOutcome::Retry { error, after } if waiting => {
            // A failed poll or event handling: the wait goes on; poll again after a backoff,
            // never later than the wait's own rhythm. The deadline still rules.
            let Some(wait) = state.wait.clone() else {
                return fail_step(state, def, index, attempt, &error, possible, now, history);
            };
            if now >= wait.deadline {
                let error = format!("wait deadline passed; last poll failed: {error}");
                return fail_step(state, def, index, attempt, &error, possible, now, history);
            }
            let failures = state.attempt.saturating_add(1);
            let delay = step
                .retry
                .base_delay(failures)
                .min(step.poll_every)
                .max(after.unwrap_or_default());
            let poll_at = add(now, delay).min(wait.deadline);
            history.push(
                HistoryEntry::new(HistoryKind::StepWaiting, Some(name), Some(attempt))
                    .error(&error)
                    .detail(json!({"poll_at": poll_at, "deadline": wait.deadline})),
            );
            let mut t = Transition::base(state, SagaStatus::Waiting);
            t.attempt = failures;
            t.run_at = Some(poll_at);
            t.wait = Some(ActiveWait { poll_at, ..wait });
            t.last_error = Some(error);
            t.history = history;
            t
        }
        StepOutcome::Retry { error, after } => {
            let elapsed = since(now, started);
            match step.retry.decide(
                attempt,
                elapsed,
                jitter_seed(state.id, index, attempt),
                after,
            ) {
                RetryDecision::RetryAfter(delay) => {
                    let at = add(now, delay);
                    history.push(
                        HistoryEntry::new(HistoryKind::StepRetrying, Some(name), Some(attempt))
                            .error(&error)
                            .detail(json!({"next_attempt_at": at})),
                    );
                    let mut t = Transition::base(state, SagaStatus::Retrying);
                    t.attempt = attempt;
                    t.step_started_at = started;
                    t.run_at = Some(at);
                    t.last_error = Some(error);
                    t.history = history;
                    t.effect_possible = possible;
                    t
                }
                RetryDecision::Exhausted => {
                    let error = format!("retries exhausted after {attempt} attempts: {error}");
                    fail_step(state, def, index, attempt, &error, possible, now, history)
                }
            }
        }
        StepOutcome::Fail { error } => {
            // A definite refusal of this attempt; an earlier attempt may still have acted.
            let possible = state.effect_possible;
            fail_step(state, def, index, attempt, &error, possible, now, history)
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn begin_wait(
    state: &SagaState,
    step: &crate::definition::StepDef,
    index: usize,
    attempt: u32,
    spec: WaitSpec,
    now: DateTime<Utc>,
    started: Option<DateTime<Utc>>,
    mut history: Vec<HistoryEntry>,
) -> Transition {
    let same_step_wait = state.status == SagaStatus::Waiting && state.step_index == index;
    let deadline = match (spec.new_deadline, &state.wait) {
        (Some(d), _) => add(now, d),
        (None, Some(w)) if same_step_wait => w.deadline,
        (None, _) => add(now, step.deadline),
    };
    let since = match &state.wait {
        Some(w) if same_step_wait && spec.new_deadline.is_none() => w.since,
        _ => now,
    };
    let poll_at = add(now, spec.poll_after.unwrap_or(step.poll_every)).min(deadline);
    let mut detail = json!({
        "provider": spec.provider, "event_types": spec.event_types,
        "correlation_key": spec.correlation_key, "deadline": deadline, "poll_at": poll_at,
    });
    if let Some(status) = &spec.provider_status {
        detail["provider_status"] = json!(status);
    }
    history.push(
        HistoryEntry::new(HistoryKind::StepWaiting, Some(&step.name), Some(attempt)).detail(detail),
    );
    let mut t = Transition::base(state, SagaStatus::Waiting);
    t.attempt = attempt;
    t.step_started_at = started;
    t.run_at = Some(poll_at);
    t.wait = Some(ActiveWait {
        provider: spec.provider,
        event_types: spec.event_types,
        correlation_key: spec.correlation_key,
        deadline,
        poll_at,
        since,
        state: spec.state,
    });
    t.history = history;
    t
}

#[allow(clippy::too_many_arguments)]
fn fail_step(
    state: &SagaState,
    def: &CompiledDefinition,
    index: usize,
    attempt: u32,
    error: &str,
    effect_possible: bool,
    now: DateTime<Utc>,
    mut history: Vec<HistoryEntry>,
) -> Transition {
    let name = def.steps[index].def.name.as_str();
    history
        .push(HistoryEntry::new(HistoryKind::StepFailed, Some(name), Some(attempt)).error(error));
    let reason = format!("step {name} failed: {error}");
    let unwinding = SagaState {
        step_index: index,
        attempt,
        effect_possible,
        ..state.clone()
    };
    begin_unwind(&unwinding, def, &reason, now, history)
}

/// Starts undoing the steps completed before `state.step_index`: compensations in
/// reverse, or a park for an operator when one of them cannot be undone, or when the current
/// step is irreversible and an attempt of it may have reached the provider.
fn begin_unwind(
    state: &SagaState,
    def: &CompiledDefinition,
    reason: &str,
    now: DateTime<Utc>,
    mut history: Vec<HistoryEntry>,
) -> Transition {
    let completed = state.step_index.min(def.steps.len());
    let irreversible: Vec<&str> = (0..completed)
        .filter(|&j| def.steps[j].traits.irreversible && !state.was_skipped(def, j))
        .map(|j| def.steps[j].def.name.as_str())
        .collect();
    let current_may_have_acted = state.effect_possible
        && def
            .steps
            .get(state.step_index)
            .is_some_and(|s| s.traits.irreversible);
    let mut t = Transition::base(state, SagaStatus::NeedsOperator);
    t.wait = None;
    t.attempt = 0;
    t.step_started_at = None;
    if current_may_have_acted {
        // The step stays current with its attempts kept: `resume` runs it again (it looks
        // for what an earlier attempt did first), `skip` records what the operator found.
        let name = def.steps[state.step_index].def.name.as_str();
        let done = if irreversible.is_empty() {
            String::new()
        } else {
            format!(
                " (completed step(s) {} cannot be undone either)",
                irreversible.join(", ")
            )
        };
        let error = format!(
            "{reason}; parked for an operator because step {name} is irreversible and attempt {} of it may have reached the provider (money may have moved){done}: check the provider, then `close` the saga with the outcome, `reset` it to a step, `resume` the step or `skip` it",
            state.attempt.max(1)
        );
        history.push(
            HistoryEntry::new(HistoryKind::SagaParked, Some(name), Some(state.attempt))
                .error(&error)
                .detail(json!({"effect_possible": true})),
        );
        t.attempt = state.attempt;
        t.last_error = Some(error);
        t.history = history;
        return t;
    }
    if !irreversible.is_empty() {
        let error = format!(
            "{reason}; parked for an operator because completed step(s) {} cannot be undone (money may have moved): check the provider, then `close` the saga with the outcome, `reset` it to a step, `resume` it or `skip` the step",
            irreversible.join(", ")
        );
        history.push(HistoryEntry::new(HistoryKind::SagaParked, None, None).error(&error));
        t.last_error = Some(error);
        t.history = history;
        return t;
    }
    t.effect_possible = false;
    t.last_error = Some(reason.to_string());
    match previous_compensable(state, def, completed) {
        Some(j) => {
            history.push(
                HistoryEntry::new(HistoryKind::CompensationStarted, None, None)
                    .error(reason)
                    .detail(json!({"first": def.steps[j].def.name})),
            );
            t.status = SagaStatus::Compensating;
            t.step_index = j;
            t.run_at = Some(now);
            t.continue_now = true;
        }
        None => {
            let (status, entry) = end_of_unwind(state);
            history.push(entry.error(reason));
            t.status = status;
        }
    }
    t.history = history;
    t
}

/// How an unwind ends: closed with the outcome of a pending close request, else cancelled
/// (an operator asked) or compensated. A close request wins over a cancel: it came later
/// (a cancel of a saga unwinding for a close is refused) or ends the same unwind.
fn end_of_unwind(state: &SagaState) -> (SagaStatus, HistoryEntry) {
    if let Some(req) = &state.close_requested {
        let entry = HistoryEntry::new(HistoryKind::SagaClosed, None, None).detail(json!({
            "outcome": req.outcome.as_str(),
            "compensate": true,
            "requested_by": req.actor,
            "reason": req.reason,
            "requested_at": req.requested_at,
        }));
        (SagaStatus::Closed, entry)
    } else if state.cancel_requested {
        (
            SagaStatus::Cancelled,
            HistoryEntry::new(HistoryKind::SagaCancelled, None, None),
        )
    } else {
        (
            SagaStatus::Compensated,
            HistoryEntry::new(HistoryKind::SagaCompensated, None, None),
        )
    }
}

/// The highest compensable step below `below` that ran (a step skipped by its `when` did
/// nothing to undo).
pub(crate) fn previous_compensable(
    state: &SagaState,
    def: &CompiledDefinition,
    below: usize,
) -> Option<usize> {
    (0..below)
        .rev()
        .find(|&j| def.steps[j].traits.compensable && !state.was_skipped(def, j))
}

/// Decides the transition after the compensation of step `index` returned `outcome`.
pub fn after_compensation(
    state: &SagaState,
    def: &CompiledDefinition,
    index: usize,
    attempt: u32,
    outcome: StepOutcome,
    now: DateTime<Utc>,
) -> Transition {
    let step = &def.steps[index].def;
    let name = step.name.as_str();
    let started = state.step_started_at.or(Some(now));
    let (error, after) = match outcome {
        StepOutcome::Done(_) => {
            let mut history = vec![HistoryEntry::new(
                HistoryKind::StepCompensated,
                Some(name),
                Some(attempt),
            )];
            let mut t = Transition::base(state, SagaStatus::Compensating);
            t.attempt = 0;
            t.step_started_at = None;
            t.last_error = state.last_error.clone();
            match previous_compensable(state, def, index) {
                Some(j) => {
                    t.step_index = j;
                    t.run_at = Some(now);
                    t.continue_now = true;
                }
                None => {
                    let (status, entry) = end_of_unwind(state);
                    history.push(entry);
                    t.status = status;
                }
            }
            t.history = history;
            return t;
        }
        StepOutcome::Fail { error } => (error, None),
        StepOutcome::Retry { error, after } => {
            let elapsed = since(now, started);
            match step.retry.decide(
                attempt,
                elapsed,
                jitter_seed(state.id, index, attempt),
                after,
            ) {
                RetryDecision::RetryAfter(delay) => {
                    let at = add(now, delay);
                    let mut t = Transition::base(state, SagaStatus::Compensating);
                    t.attempt = attempt;
                    t.step_started_at = started;
                    t.run_at = Some(at);
                    // The failure that started the unwind stays visible; this error is in history.
                    t.last_error = state.last_error.clone();
                    t.history = vec![HistoryEntry::new(
                        HistoryKind::CompensationRetrying,
                        Some(name),
                        Some(attempt),
                    )
                    .error(&error)
                    .detail(json!({"next_attempt_at": at}))];
                    return t;
                }
                RetryDecision::Exhausted => (
                    format!("retries exhausted after {attempt} attempts: {error}"),
                    after,
                ),
            }
        }
        StepOutcome::Wait(_) => ("a compensation may not wait for events".to_string(), None),
        StepOutcome::Held { reason, after } => {
            // Not an attempt; the failure that started the unwind stays the saga's last error.
            let mut t = Transition::base(state, SagaStatus::Compensating);
            t.run_at = Some(add(now, after));
            t.last_error = state.last_error.clone();
            let _ = reason;
            return t;
        }
    };
    let _ = after;
    let error = match &state.close_requested {
        None => format!(
            "compensation of step {name} failed: {error}; parked for an operator: steps before {name} were not undone; fix the cause and `resume`, or `close` the saga with the outcome (`reset` and `skip` also apply)"
        ),
        Some(req) => format!(
            "compensation of step {name} failed: {error}; parked for an operator: steps before {name} were not undone; the close requested by {} (outcome {}) is still pending: fix the cause and `resume` to go on undoing (the saga then ends closed), or `close` it without --compensate to end it now",
            req.actor, req.outcome
        ),
    };
    let mut t = Transition::base(state, SagaStatus::NeedsOperator);
    t.attempt = 0;
    t.step_started_at = None;
    t.last_error = Some(error.clone());
    t.history = vec![
        HistoryEntry::new(HistoryKind::CompensationFailed, Some(name), Some(attempt)).error(&error),
        HistoryEntry::new(HistoryKind::SagaParked, None, None).error(&error),
    ];
    t
}

/// The result of attempt `attempt` of the current step (or compensation) could not be stored
/// (the database refused the commit again and again: a constraint, a value it cannot hold):
/// the saga parks for an operator with the database's error, the attempt counted, so that
/// the step and its provider call do not run again and again.
pub fn unstorable(
    state: &SagaState,
    def: &CompiledDefinition,
    attempt: u32,
    db_error: &str,
    _now: DateTime<Utc>,
) -> Transition {
    let step = def.steps.get(state.step_index);
    let name = step.map(|s| s.def.name.as_str()).unwrap_or("-");
    let phase = if state.status == SagaStatus::Compensating {
        "compensation of step"
    } else {
        "step"
    };
    let error = format!(
        "the result of attempt {attempt} of {phase} {name} could not be stored ({db_error}); parked for an operator: check what the step did at the provider, fix the cause, then `resume` or `skip` it, `reset` it to a step, or `close` the saga with the outcome"
    );
    let mut t = Transition::base(state, SagaStatus::NeedsOperator);
    t.attempt = attempt;
    t.wait = None;
    t.effect_possible = state.effect_possible || step.is_some_and(|s| s.traits.irreversible);
    t.last_error = Some(error.clone());
    t.history = vec![
        HistoryEntry::new(HistoryKind::SagaParked, Some(name), Some(attempt))
            .error(&error)
            .detail(json!({"unstorable": true})),
    ];
    t
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::definition::{Definition, StepDef};
    use serde_json::json;

    fn def(traits: &[StepTraits]) -> CompiledDefinition {
        let d = Definition {
            name: "t".into(),
            version: 1,
            description: None,
            steps: (0..traits.len())
                .map(|i| StepDef::new(format!("s{i}"), format!("k{i}"), json!({})))
                .collect(),
            concurrency: None,
        };
        let kind = |k: &str| k[1..].parse::<usize>().ok().map(|i| traits[i]);
        d.compile(&kind, &[]).expect("valid")
    }

    fn state(status: SagaStatus, index: usize) -> SagaState {
        SagaState {
            id: Uuid::from_u128(1),
            status,
            step_index: index,
            attempt: 0,
            step_started_at: None,
            wait: None,
            cancel_requested: false,
            last_error: None,
            effect_possible: false,
            close_requested: None,
            steps_with_output: Default::default(),
        }
    }

    #[test]
    fn done_advances_and_last_step_completes() {
        let tr = [StepTraits::default(); 2];
        let d = def(&tr);
        let now = Utc::now();
        let s = state(SagaStatus::Scheduled, 0);
        let t = after_step(&s, &d, 0, 1, &Wake::Start, StepOutcome::Done(json!(1)), now);
        assert_eq!(
            (t.status, t.step_index, t.continue_now),
            (SagaStatus::Scheduled, 1, true)
        );
        let s = state(SagaStatus::Scheduled, 1);
        let t = after_step(&s, &d, 1, 1, &Wake::Start, StepOutcome::Done(json!(2)), now);
        assert_eq!(t.status, SagaStatus::Completed);
        assert_eq!(t.run_at, None);
        assert_eq!(
            t.history.last().map(|h| h.kind),
            Some(HistoryKind::SagaCompleted)
        );
    }

    #[test]
    fn alerts_in_a_done_output_become_saga_alert_history_entries_of_the_same_commit() {
        let tr = [StepTraits::default(); 2];
        let d = def(&tr);
        let s = state(SagaStatus::Scheduled, 0);
        let output = json!({"x": 1, "alerts": [
            crate::step::alert("duplicate_funding_deposit", "funded twice", json!({"amount": 5})),
            {"message": "no kind"},
        ]});
        let t = after_step(
            &s,
            &d,
            0,
            2,
            &Wake::Start,
            StepOutcome::Done(output),
            Utc::now(),
        );
        let alerts: Vec<&HistoryEntry> = t
            .history
            .iter()
            .filter(|h| h.kind == HistoryKind::SagaAlert)
            .collect();
        assert_eq!(alerts.len(), 2);
        assert_eq!(alerts[0].step.as_deref(), Some("s0"));
        assert_eq!(alerts[0].attempt, Some(2));
        assert_eq!(
            alerts[0].detail,
            json!({"alert": "duplicate_funding_deposit", "message": "funded twice", "amount": 5})
        );
        assert_eq!(alerts[1].detail["alert"], "unspecified");
        // No alerts field, no alert rows.
        let t = after_step(
            &s,
            &d,
            0,
            1,
            &Wake::Start,
            StepOutcome::Done(json!({})),
            Utc::now(),
        );
        assert!(t.history.iter().all(|h| h.kind != HistoryKind::SagaAlert));
        assert_eq!(
            HistoryKind::SagaAlert.as_str().parse(),
            Ok(HistoryKind::SagaAlert)
        );
    }

    #[test]
    fn permanent_failure_compensates_completed_steps_in_reverse() {
        let tr = [
            StepTraits {
                compensable: true,
                irreversible: false,
            },
            StepTraits {
                compensable: false,
                irreversible: false,
            },
            StepTraits {
                compensable: true,
                irreversible: false,
            },
            StepTraits::default(),
        ];
        let d = def(&tr);
        let now = Utc::now();
        let s = state(SagaStatus::Scheduled, 3);
        let t = after_step(&s, &d, 3, 1, &Wake::Start, StepOutcome::fail("no"), now);
        assert_eq!((t.status, t.step_index), (SagaStatus::Compensating, 2));
        let s = SagaState {
            status: SagaStatus::Compensating,
            step_index: 2,
            ..s
        };
        let t = after_compensation(&s, &d, 2, 1, StepOutcome::Done(json!(null)), now);
        assert_eq!((t.status, t.step_index), (SagaStatus::Compensating, 0));
        let s = SagaState { step_index: 0, ..s };
        let t = after_compensation(&s, &d, 0, 1, StepOutcome::Done(json!(null)), now);
        assert_eq!(t.status, SagaStatus::Compensated);
    }

    #[test]
    fn failure_after_irreversible_step_parks_for_operator() {
        let tr = [
            StepTraits {
                compensable: true,
                irreversible: false,
            },
            StepTraits {
                compensable: false,
                irreversible: true,
            },
            StepTraits::default(),
        ];
        let d = def(&tr);
        let s = state(SagaStatus::Scheduled, 2);
        let t = after_step(
            &s,
            &d,
            2,
            1,
            &Wake::Start,
            StepOutcome::fail("bank said no"),
            Utc::now(),
        );
        assert_eq!(t.status, SagaStatus::NeedsOperator);
        assert!(t.last_error.as_deref().unwrap_or_default().contains("s1"));
    }

    #[test]
    fn retries_then_exhausts() {
        let tr = [StepTraits::default()];
        let d = def(&tr);
        let now = Utc::now();
        let s = state(SagaStatus::Scheduled, 0);
        let t = after_step(&s, &d, 0, 1, &Wake::Start, StepOutcome::retry("503"), now);
        assert_eq!(t.status, SagaStatus::Retrying);
        assert!(t.run_at.is_some_and(|at| at > now));
        assert_eq!(t.attempt, 1);
        let t = after_step(&s, &d, 0, 10, &Wake::Start, StepOutcome::retry("503"), now);
        assert_eq!(t.status, SagaStatus::Compensated);
        assert!(t
            .last_error
            .as_deref()
            .unwrap_or_default()
            .contains("retries exhausted after 10"));
    }

    #[test]
    fn a_step_held_back_for_provider_capacity_is_no_attempt_and_logs_no_error() {
        let tr = [StepTraits::default()];
        let d = def(&tr);
        let now = Utc::now();
        let held = || StepOutcome::Held {
            reason: "waiting for provider capacity".into(),
            after: Duration::from_millis(300),
        };
        // The 10th run of a step allowed 10 attempts, held: not exhausted, nothing counted.
        let mut s = state(SagaStatus::Retrying, 0);
        s.attempt = 9;
        let wake = Wake::Retry {
            last_error: "503".into(),
        };
        let t = after_step(&s, &d, 0, 10, &wake, held(), now);
        assert_eq!(t.status, SagaStatus::Retrying);
        assert_eq!(t.attempt, 9, "the attempt count stays");
        assert_eq!(t.run_at, Some(now + chrono::Duration::milliseconds(300)));
        assert!(t.history.is_empty(), "no error in history: {:?}", t.history);
        assert_eq!(
            t.last_error.as_deref(),
            Some("waiting for provider capacity")
        );
        let first = after_step(
            &state(SagaStatus::Scheduled, 0),
            &d,
            0,
            1,
            &Wake::Start,
            held(),
            now,
        );
        assert_eq!((first.status, first.attempt), (SagaStatus::Scheduled, 0));
        // A compensation held back keeps the unwind's cause as the saga's error.
        let mut c = state(SagaStatus::Compensating, 0);
        c.last_error = Some("step s1 failed".into());
        let t = after_compensation(&c, &d, 0, 1, held(), now);
        assert_eq!(t.status, SagaStatus::Compensating);
        assert_eq!(t.attempt, 0);
        assert_eq!(t.last_error.as_deref(), Some("step s1 failed"));
    }

    #[test]
    fn wait_keeps_its_deadline_and_fails_when_it_passes() {
        let tr = [StepTraits::default(); 2];
        let d = def(&tr);
        let now = Utc::now();
        let s = state(SagaStatus::Scheduled, 1);
        let spec = WaitSpec::new("p", "paid", "k");
        let t = after_step(
            &s,
            &d,
            1,
            1,
            &Wake::Start,
            StepOutcome::Wait(spec.clone()),
            now,
        );
        assert_eq!(t.status, SagaStatus::Waiting);
        let wait = t.wait.clone().expect("wait");
        assert!(wait.poll_at < wait.deadline);
        let later = now + chrono::Duration::seconds(400);
        let s2 = SagaState {
            status: SagaStatus::Waiting,
            wait: Some(wait.clone()),
            attempt: 1,
            ..s.clone()
        };
        let t2 = after_step(
            &s2,
            &d,
            1,
            1,
            &Wake::Poll {
                deadline_passed: false,
            },
            StepOutcome::Wait(spec.clone()),
            later,
        );
        assert_eq!(t2.wait.as_ref().map(|w| w.deadline), Some(wait.deadline));
        let t3 = after_step(
            &s2,
            &d,
            1,
            1,
            &Wake::Poll {
                deadline_passed: true,
            },
            StepOutcome::Wait(spec),
            later,
        );
        assert_eq!(t3.status, SagaStatus::Compensated);
        assert!(t3
            .last_error
            .as_deref()
            .unwrap_or_default()
            .contains("deadline"));
    }

    #[test]
    fn cancel_in_every_non_final_state_unwinds() {
        let tr = [
            StepTraits {
                compensable: true,
                irreversible: false,
            },
            StepTraits::default(),
        ];
        let d = def(&tr);
        for status in [
            SagaStatus::Scheduled,
            SagaStatus::Retrying,
            SagaStatus::Waiting,
        ] {
            let s = SagaState {
                cancel_requested: true,
                ..state(status, 1)
            };
            let NextRun::Apply(t) = next_run(&s, &d, None, &Value::Null, Utc::now()) else {
                panic!("cancel must apply")
            };
            assert_eq!((t.status, t.step_index), (SagaStatus::Compensating, 0));
        }
        let s = SagaState {
            cancel_requested: true,
            ..state(SagaStatus::Scheduled, 0)
        };
        let NextRun::Apply(t) = next_run(&s, &d, None, &Value::Null, Utc::now()) else {
            panic!()
        };
        assert_eq!(t.status, SagaStatus::Cancelled);
    }

    #[test]
    fn cancel_after_an_ambiguous_attempt_of_an_irreversible_step_parks() {
        let tr = [
            StepTraits {
                compensable: true,
                irreversible: false,
            },
            StepTraits {
                compensable: false,
                irreversible: true,
            },
        ];
        let d = def(&tr);
        let now = Utc::now();
        // Attempt 1 of the payout timed out: it may have paid.
        let s = state(SagaStatus::Scheduled, 1);
        let t = after_step(
            &s,
            &d,
            1,
            1,
            &Wake::Start,
            StepOutcome::retry("timed out"),
            now,
        );
        assert!(t.effect_possible);
        let s = SagaState {
            attempt: 1,
            effect_possible: true,
            cancel_requested: true,
            ..s
        };
        let NextRun::Apply(t) = next_run(&s, &d, None, &Value::Null, now) else {
            panic!("cancel must apply")
        };
        assert_eq!(t.status, SagaStatus::NeedsOperator);
        assert!(t.effect_possible);
        assert!(t
            .last_error
            .as_deref()
            .unwrap_or_default()
            .contains("may have reached the provider"));
        // A later definite refusal (4xx) does not erase the earlier ambiguity either.
        let s = SagaState {
            cancel_requested: false,
            ..s
        };
        let t = after_step(&s, &d, 1, 2, &Wake::Start, StepOutcome::fail("400"), now);
        assert_eq!(t.status, SagaStatus::NeedsOperator);
        // Without an ambiguous attempt a refusal compensates as before.
        let s = SagaState {
            effect_possible: false,
            ..s
        };
        let t = after_step(&s, &d, 1, 1, &Wake::Start, StepOutcome::fail("400"), now);
        assert_eq!(t.status, SagaStatus::Compensating);
    }

    #[test]
    fn huge_wait_and_retry_hints_do_not_overflow() {
        let tr = [StepTraits::default()];
        let d = def(&tr);
        let now = Utc::now();
        let s = state(SagaStatus::Scheduled, 0);
        let mut spec = WaitSpec::new("p", "paid", "k");
        spec.poll_after = Some(Duration::MAX);
        spec.new_deadline = Some(Duration::MAX);
        let t = after_step(&s, &d, 0, 1, &Wake::Start, StepOutcome::Wait(spec), now);
        assert_eq!(t.status, SagaStatus::Waiting);
        let t = after_step(
            &s,
            &d,
            0,
            1,
            &Wake::Start,
            StepOutcome::Retry {
                error: "429".into(),
                after: Some(Duration::MAX),
            },
            now,
        );
        assert_eq!(t.status, SagaStatus::Compensated);
    }

    #[test]
    fn a_pending_close_ends_the_unwind_closed_and_a_failed_compensation_parks_with_it_visible() {
        let tr = [
            StepTraits {
                compensable: true,
                irreversible: false,
            },
            StepTraits {
                compensable: true,
                irreversible: false,
            },
        ];
        let d = def(&tr);
        let now = Utc::now();
        let s = SagaState {
            close_requested: Some(CloseRequest {
                outcome: ClosedOutcome::Paid,
                actor: "ops:bob".into(),
                reason: "paid by hand".into(),
                requested_at: now,
            }),
            // A cancel asked before the close: the close decides how the unwind ends.
            cancel_requested: true,
            ..state(SagaStatus::Compensating, 1)
        };
        let t = after_compensation(&s, &d, 1, 1, StepOutcome::Done(json!(null)), now);
        assert_eq!((t.status, t.step_index), (SagaStatus::Compensating, 0));
        let t = after_compensation(
            &SagaState {
                step_index: 0,
                ..s.clone()
            },
            &d,
            0,
            1,
            StepOutcome::Done(json!(null)),
            now,
        );
        assert_eq!(t.status, SagaStatus::Closed);
        let last = t.history.last().expect("entry");
        assert_eq!(
            (last.kind, last.detail["outcome"].as_str()),
            (HistoryKind::SagaClosed, Some("paid"))
        );
        let t = after_compensation(&s, &d, 1, 1, StepOutcome::fail("403"), now);
        assert_eq!(t.status, SagaStatus::NeedsOperator);
        let error = t.last_error.unwrap_or_default();
        assert!(
            error.contains("close requested by ops:bob (outcome paid) is still pending"),
            "{error}"
        );
        // Without a close request the unwind ends as before.
        let plain = SagaState {
            close_requested: None,
            cancel_requested: false,
            step_index: 0,
            ..s
        };
        let t = after_compensation(&plain, &d, 0, 1, StepOutcome::Done(json!(null)), now);
        assert_eq!(t.status, SagaStatus::Compensated);
    }

    #[test]
    fn status_text_round_trips() {
        for s in SagaStatus::ALL {
            assert_eq!(s.as_str().parse::<SagaStatus>(), Ok(s));
        }
        for k in HistoryKind::ALL {
            assert_eq!(k.as_str().parse::<HistoryKind>(), Ok(k));
        }
    }

    /// Steps s0..sN of kinds k0..kN; `when[i]` is step i's condition.
    fn conditional_def(
        traits: &[StepTraits],
        when: &[Option<crate::Condition>],
    ) -> CompiledDefinition {
        let d = Definition {
            name: "t".into(),
            version: 1,
            description: None,
            steps: (0..traits.len())
                .map(|i| {
                    let s = StepDef::new(format!("s{i}"), format!("k{i}"), json!({}));
                    match when.get(i).cloned().flatten() {
                        Some(c) => s.with_when(c),
                        None => s,
                    }
                })
                .collect(),
            concurrency: None,
        };
        let kind = |k: &str| k[1..].parse::<usize>().ok().map(|i| traits[i]);
        d.compile(&kind, &[]).expect("valid")
    }

    fn unverified() -> Option<crate::Condition> {
        Some(crate::Condition::equals(
            "$.steps.s0.verified",
            json!(false),
        ))
    }

    #[test]
    fn a_step_whose_condition_does_not_hold_is_skipped_with_the_value_seen_and_no_output() {
        let d = conditional_def(&[StepTraits::default(); 3], &[None, unverified(), None]);
        let now = Utc::now();
        let s = state(SagaStatus::Scheduled, 1);
        let verified = json!({"input": {}, "steps": {"s0": {"verified": true}}});
        let NextRun::Apply(t) = next_run(&s, &d, None, &verified, now) else {
            panic!("a skip is a transition")
        };
        assert_eq!(
            (t.status, t.step_index, t.attempt, t.continue_now, t.run_at),
            (SagaStatus::Scheduled, 2, 0, true, Some(now))
        );
        assert_eq!(t.output, None, "a skipped step has no output");
        assert_eq!(t.history.len(), 1);
        let h = &t.history[0];
        assert_eq!(
            (h.kind, h.step.as_deref()),
            (HistoryKind::StepSkipped, Some("s1"))
        );
        assert_eq!(
            h.detail,
            json!({"when": {"path": "$.steps.s0.verified", "equals": false}, "value": true, "found": true})
        );
        // The condition holds: the step runs.
        let unverified_scope = json!({"steps": {"s0": {"verified": false}}});
        assert_eq!(
            next_run(&s, &d, None, &unverified_scope, now),
            NextRun::Step {
                index: 1,
                wake: Wake::Start,
                attempt: 1
            }
        );
        // A step already retrying is not judged again: its condition held when it began.
        let retrying = SagaState {
            status: SagaStatus::Retrying,
            attempt: 1,
            ..s
        };
        assert!(matches!(
            next_run(&retrying, &d, None, &verified, now),
            NextRun::Step {
                index: 1,
                attempt: 2,
                ..
            }
        ));
    }

    #[test]
    fn consecutive_unmet_conditions_are_skipped_in_one_commit_and_the_last_ones_complete_the_saga()
    {
        let d = conditional_def(
            &[StepTraits::default(); 3],
            &[None, unverified(), unverified()],
        );
        let s = state(SagaStatus::Scheduled, 1);
        let scope = json!({"steps": {"s0": {"verified": true}}});
        let NextRun::Apply(t) = next_run(&s, &d, None, &scope, Utc::now()) else {
            panic!("skip")
        };
        assert_eq!(
            (t.status, t.step_index, t.run_at),
            (SagaStatus::Completed, 3, None)
        );
        let kinds: Vec<(HistoryKind, Option<&str>)> = t
            .history
            .iter()
            .map(|h| (h.kind, h.step.as_deref()))
            .collect();
        assert_eq!(
            kinds,
            vec![
                (HistoryKind::StepSkipped, Some("s1")),
                (HistoryKind::StepSkipped, Some("s2")),
                (HistoryKind::SagaCompleted, None),
            ]
        );
    }

    #[test]
    fn an_unwind_neither_compensates_nor_parks_for_a_skipped_step() {
        let compensable = StepTraits {
            compensable: true,
            irreversible: false,
        };
        let irreversible = StepTraits {
            compensable: false,
            irreversible: true,
        };
        let d = conditional_def(
            &[
                compensable,
                compensable,
                irreversible,
                StepTraits::default(),
            ],
            &[None, unverified(), unverified(), None],
        );
        let mut s = state(SagaStatus::Scheduled, 3);
        s.steps_with_output = ["s0".to_string()].into_iter().collect();
        let t = after_step(
            &s,
            &d,
            3,
            1,
            &Wake::Start,
            StepOutcome::fail("no"),
            Utc::now(),
        );
        // s2 (irreversible) and s1 (compensable) were skipped: only s0 is undone.
        assert_eq!((t.status, t.step_index), (SagaStatus::Compensating, 0));
        // Had they run (outputs stored), the irreversible one parks the saga.
        s.steps_with_output
            .extend(["s1".to_string(), "s2".to_string()]);
        let t = after_step(
            &s,
            &d,
            3,
            1,
            &Wake::Start,
            StepOutcome::fail("no"),
            Utc::now(),
        );
        assert_eq!(t.status, SagaStatus::NeedsOperator);
        // After s1's compensation, s0 is next unless s0 was skipped.
        let by_input = Some(crate::Condition::exists("$.input.documents", true));
        let d = conditional_def(
            &[compensable, compensable, StepTraits::default()],
            &[by_input, None, None],
        );
        let c = SagaState {
            status: SagaStatus::Compensating,
            steps_with_output: ["s1".to_string()].into_iter().collect(),
            ..state(SagaStatus::Compensating, 1)
        };
        let t = after_compensation(&c, &d, 1, 1, StepOutcome::Done(json!(null)), Utc::now());
        assert_eq!(
            t.status,
            SagaStatus::Compensated,
            "s0 was skipped: nothing more to undo"
        );
    }

    #[test]
    fn a_condition_that_matches_several_values_fails_the_step() {
        let d = conditional_def(
            &[StepTraits::default(); 2],
            &[
                None,
                Some(crate::Condition::exists("$.input.list[*]", true)),
            ],
        );
        let s = state(SagaStatus::Scheduled, 1);
        let scope = json!({"input": {"list": [1, 2]}});
        let NextRun::Apply(t) = next_run(&s, &d, None, &scope, Utc::now()) else {
            panic!("a failure is a transition")
        };
        assert_eq!(t.status, SagaStatus::Compensated);
        let failed = t
            .history
            .iter()
            .find(|h| h.kind == HistoryKind::StepFailed)
            .expect("failed");
        assert_eq!(failed.step.as_deref(), Some("s1"));
        assert!(failed
            .error
            .as_deref()
            .unwrap_or_default()
            .contains("matched 2 values"));
    }
}
