//! Step kinds: the Rust code a definition's steps name, and what one run of a step returns.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

/// Namespace for deterministic idempotency keys (UUIDv5).
const IDEMPOTENCY_NAMESPACE: Uuid = Uuid::from_u128(0x7a1c_5e2b_9f3d_4c8a_b6e0_1d2f_3a4b_5c6d);

/// The idempotency key of a step's external effect: derived from (saga id, step name) only,
/// so it is the same on every attempt, after a crash and on another worker.
pub fn idempotency_key(saga_id: Uuid, step: &str) -> String {
    Uuid::new_v5(
        &IDEMPOTENCY_NAMESPACE,
        format!("{saga_id}/{step}").as_bytes(),
    )
    .to_string()
}

/// The idempotency key of a step's compensation.
pub fn compensation_key(saga_id: Uuid, step: &str) -> String {
    idempotency_key(saga_id, &format!("{step}#compensate"))
}

/// An event delivered to a waiting step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Inbox row id.
    pub inbox_id: i64,
    /// Provider (`lumanu`, `blaaiz`, `lean`, or a test name).
    pub provider: String,
    /// The provider's event id (dedup key).
    pub event_id: String,
    /// Event type, e.g. `payable.paid`.
    pub event_type: String,
    /// Correlation key that matched the wait.
    pub correlation_key: String,
    /// The event's JSON body.
    pub payload: Value,
}

/// Why a step is being run.
#[derive(Debug, Clone, PartialEq)]
pub enum Wake {
    /// First attempt.
    Start,
    /// A retry after a transient failure.
    Retry {
        /// The error of the previous attempt.
        last_error: String,
    },
    /// The event the step waited for arrived.
    Event(Event),
    /// No event arrived within `poll_every` (or the deadline is reached): ask the provider.
    Poll {
        /// The wait's deadline has passed; if the step still has no answer, it fails.
        deadline_passed: bool,
    },
    /// Run the step's compensation.
    Compensate,
}

/// Everything a step run may know about where it is.
#[derive(Debug, Clone)]
pub struct StepContext {
    /// The saga.
    pub saga_id: Uuid,
    /// Its workflow name.
    pub workflow: String,
    /// The step's name in the definition.
    pub step: String,
    /// Attempt number of this run, from 1.
    pub attempt: u32,
    /// Why it runs.
    pub wake: Wake,
    /// State the step stored with its previous `Wait`, if any.
    pub wait_state: Option<Value>,
    /// The step's output, when compensating.
    pub output: Option<Value>,
    /// Current time as seen by the worker.
    pub now: DateTime<Utc>,
    /// Guards requests whose effect the provider cannot deduplicate: see
    /// [`StepContext::begin_effect`].
    pub effects: Arc<dyn EffectGuard>,
    /// The engine's documents (see [`crate::document`]): read the ones the step's
    /// parameters name with `ctx.documents.read(ctx, id)`.
    pub documents: Arc<dyn crate::DocumentSource>,
    /// How many times an operator reset the saga to run this step again (0 unless reset):
    /// each generation has its own idempotency key, so a step run again after a reset (its
    /// earlier request done or confirmed not sent) makes a new request instead of finding
    /// the earlier one.
    pub key_generation: u32,
}

impl StepContext {
    /// Idempotency key for this step's effect (same for every attempt).
    pub fn idempotency_key(&self) -> String {
        match self.wake {
            Wake::Compensate => compensation_key(self.saga_id, &self.keyed_step()),
            _ => self.forward_idempotency_key(),
        }
    }

    /// The idempotency key of the step's forward effect, also when compensating (the key of
    /// the object to undo).
    pub fn forward_idempotency_key(&self) -> String {
        idempotency_key(self.saga_id, &self.keyed_step())
    }

    /// The step name the keys derive from: the name, with the reset generation after it
    /// once an operator reset the saga to run the step again.
    fn keyed_step(&self) -> String {
        match self.key_generation {
            0 => self.step.clone(),
            n => format!("{}#reset{n}", self.step),
        }
    }

    /// Call right before sending a request whose effect the provider cannot deduplicate (a
    /// create without an idempotency key), after looking for the object an earlier attempt
    /// may have created. The worker durably marks, under the saga's lease, that the request
    /// is about to go out; the permit says until when it may be sent (pass
    /// [`EffectPermit::send_by`] to the client, which refuses to send later).
    ///
    /// `Err(outcome)`: return that outcome instead of sending. This happens when the lease
    /// may lapse before the request would be out, and while an earlier attempt's mark is
    /// younger than the effect window: that attempt's request may still land, so the step
    /// retries (looking again first) once the window has closed.
    pub async fn begin_effect(&self) -> Result<EffectPermit, StepOutcome> {
        self.effects.begin(self).await
    }

    /// Call after [`StepContext::begin_effect`] when the request surely did not take effect:
    /// the provider refused it before acting (a 4xx such as 429, a connection that never
    /// opened, a request not sent). The mark is withdrawn, so the next attempt may send
    /// without waiting for the effect window. Never call it after a timeout or a 5xx.
    pub async fn effect_not_sent(&self) {
        self.effects.not_sent(self).await
    }

    /// Whether an earlier attempt of this step may have sent its request: it marked one
    /// ([`StepContext::begin_effect`]) that was not withdrawn, or it ended with an unknown
    /// outcome. When `false`, no request of this step can have reached the provider, so the
    /// look-up of an earlier attempt's object before [`StepContext::begin_effect`] can be
    /// skipped (for a provider whose look-up costs pages of a list, that is what keeps a
    /// campaign linear). `Err(outcome)`: return it (the answer could not be had).
    pub async fn earlier_send_possible(&self) -> Result<bool, StepOutcome> {
        self.effects.earlier_send_possible(self).await
    }
}

/// Decides whether a step may send a request the provider cannot deduplicate. The worker
/// implements it with a fenced, durable mark in the store; [`Unguarded`] is for tests and
/// tools that run steps outside a worker.
#[async_trait]
pub trait EffectGuard: Send + Sync + std::fmt::Debug {
    /// See [`StepContext::begin_effect`].
    async fn begin(&self, ctx: &StepContext) -> Result<EffectPermit, StepOutcome>;
    /// See [`StepContext::effect_not_sent`]. Best effort: if the mark stays, the next attempt
    /// only waits longer.
    async fn not_sent(&self, _ctx: &StepContext) {}
    /// See [`StepContext::earlier_send_possible`]. The default says `true` (always look),
    /// which is right for a guard that keeps no marks.
    async fn earlier_send_possible(&self, _ctx: &StepContext) -> Result<bool, StepOutcome> {
        Ok(true)
    }
}

/// Permission to send one request whose effect the provider cannot deduplicate, until
/// [`EffectPermit::send_by`].
#[derive(Debug, Clone, Copy)]
pub struct EffectPermit {
    send_by: Instant,
}

impl EffectPermit {
    /// A permit that holds until `send_by`.
    pub fn until(send_by: Instant) -> Self {
        EffectPermit { send_by }
    }

    /// The request must not leave after this instant (monotonic clock): past it another
    /// worker may already have taken the saga over and be about to send the same request.
    pub fn send_by(&self) -> Instant {
        self.send_by
    }
}

/// An [`EffectGuard`] that always permits (for 60 s): for tests and for tools that run a
/// step outside a worker, where no other process can run the same step.
#[derive(Debug, Clone, Copy, Default)]
pub struct Unguarded;

#[async_trait]
impl EffectGuard for Unguarded {
    async fn begin(&self, _ctx: &StepContext) -> Result<EffectPermit, StepOutcome> {
        Ok(EffectPermit::until(
            Instant::now() + Duration::from_secs(60),
        ))
    }
}

/// A wait for an external event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WaitSpec {
    /// Provider whose events may end the wait.
    pub provider: String,
    /// Event types that end the wait.
    pub event_types: Vec<String>,
    /// The correlation key the event must carry (e.g. `payable:p_123`).
    pub correlation_key: String,
    /// Poll after this silence instead of the definition's `poll_every`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub poll_after: Option<Duration>,
    /// A new deadline measured from now (e.g. a reconciliation wait); otherwise the wait
    /// keeps the deadline set when the step first waited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub new_deadline: Option<Duration>,
    /// Opaque state handed back to the step on the next run.
    #[serde(default, skip_serializing_if = "Value::is_null")]
    pub state: Value,
    /// What the provider last said about the awaited object, as text for operators (e.g.
    /// `payout tx_1 is PENDING`): written in the `step_waiting` history row and shown by
    /// `paysaga show`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider_status: Option<String>,
}

impl WaitSpec {
    /// Waits for one event type with a correlation key.
    pub fn new(provider: &str, event_type: &str, correlation_key: impl Into<String>) -> Self {
        WaitSpec {
            provider: provider.to_string(),
            event_types: vec![event_type.to_string()],
            correlation_key: correlation_key.into(),
            poll_after: None,
            new_deadline: None,
            state: Value::Null,
            provider_status: None,
        }
    }

    /// Sets [`WaitSpec::provider_status`].
    pub fn provider_status(mut self, status: impl Into<String>) -> Self {
        self.provider_status = Some(status.into());
        self
    }
}

/// What one run of a step returns.
#[derive(Debug, Clone, PartialEq)]
pub enum StepOutcome {
    /// The step's effect happened; its output is stored for later steps.
    Done(Value),
    /// Wait for an event (with a deadline and a polling fallback).
    Wait(WaitSpec),
    /// A transient failure: try again later under the step's retry policy.
    Retry {
        /// What failed (shown to operators; must not contain secrets).
        error: String,
        /// A delay the provider asked for (429 `Retry-After`).
        after: Option<Duration>,
    },
    /// A permanent failure: the step cannot succeed; compensation starts.
    Fail {
        /// What failed (shown to operators; must not contain secrets).
        error: String,
    },
    /// Held back before anything was sent (a provider's shared rate limit had no free slot
    /// within the attempt's wait): **not an attempt**. The step runs again after `after`, its
    /// attempt count and retry budget untouched, no error in history; `reason` ("waiting for
    /// provider capacity ...") is what operators see as the saga's last error meanwhile. A step
    /// returns it only when nothing reached the provider.
    Held {
        /// Why (shown to operators; must not contain secrets).
        reason: String,
        /// When to run again.
        after: Duration,
    },
}

impl StepOutcome {
    /// A transient failure without a provider delay.
    pub fn retry(error: impl Into<String>) -> Self {
        StepOutcome::Retry {
            error: error.into(),
            after: None,
        }
    }
    /// A permanent failure.
    pub fn fail(error: impl Into<String>) -> Self {
        StepOutcome::Fail {
            error: error.into(),
        }
    }
}

/// The field of a step's output that carries its alerts (see [`alert`]).
pub const ALERTS_FIELD: &str = "alerts";

/// An alert for a step's output (`{kind, message, detail}`), put in an array under
/// [`ALERTS_FIELD`]: something an operator must look at although the step is done (a duplicate
/// object at the provider that moved money). The worker writes each as a `saga_alert` history
/// row in the commit of the step's result and counts it in `paysaga_saga_alerts_total{workflow,
/// kind}`; `paysaga list --alerts` finds such sagas. `kind` is a short static name
/// (`duplicate_funding_deposit`); `message` says what happened and what the operator can do.
pub fn alert(kind: &str, message: impl Into<String>, detail: Value) -> Value {
    serde_json::json!({"kind": kind, "message": message.into(), "detail": detail})
}

/// A step kind: Rust code registered with the engine under a stable name.
///
/// A run must be idempotent: it may be repeated after a crash, with the same
/// [`StepContext::idempotency_key`]. Steps that create objects at a provider without
/// idempotency support look the object up first (by a reference derived from that key).
#[async_trait]
pub trait StepKind: Send + Sync + std::fmt::Debug + 'static {
    /// Registered name, e.g. `noop.sleep` or `lumanu.create_payable`.
    fn name(&self) -> &'static str;

    /// Checks parameters resolved from the saga input (step outputs appear as `null`).
    /// Called at start, so a bad input is refused before anything is stored.
    fn validate(&self, _params: &Value) -> Result<(), String> {
        Ok(())
    }

    /// Runs the step once.
    async fn run(&self, ctx: &StepContext, params: Value) -> StepOutcome;

    /// Whether the kind can undo its effect (see [`StepKind::compensate`]).
    fn compensable(&self) -> bool {
        false
    }

    /// Undoes the step's effect; `ctx.output` holds the step's output.
    /// `Wait` is not allowed here and is treated as a transient failure.
    async fn compensate(&self, _ctx: &StepContext, _params: Value) -> StepOutcome {
        StepOutcome::Done(Value::Null)
    }

    /// The effect cannot be undone (money sent). A failure after such a step parks the
    /// saga for an operator instead of compensating.
    fn irreversible(&self) -> bool {
        false
    }

    /// [`StepKind::compensable`] and [`StepKind::irreversible`], as definitions are compiled
    /// against them.
    fn traits(&self) -> crate::StepTraits {
        crate::StepTraits {
            compensable: self.compensable(),
            irreversible: self.irreversible(),
        }
    }

    /// The documents (see [`crate::document`]) that parameters already checked by
    /// [`StepKind::validate`] reference. `start` refuses an input naming one that does not
    /// exist (or whose content is gone, or that another saga holds), and gives them to the
    /// new saga; nothing is stored when it refuses.
    fn documents(&self, _params: &Value) -> Vec<crate::DocumentId> {
        Vec::new()
    }

    /// What the kind takes and returns (`paysaga kinds` prints it). `start` checks the
    /// parameters against it ([`crate::KindSchema::check`]: required fields, nested ones
    /// included, and types) before [`StepKind::validate`]. `None`: the kind declares nothing
    /// and only `validate` checks its parameters.
    fn schema(&self) -> Option<crate::KindSchema> {
        None
    }

    /// The provider object ids in a completed run's `output` (transaction, payable, funding,
    /// intent, customer ids...) as `(name, value)`: the worker stores them with the step's
    /// result, in the same commit, as references of the saga (`paysaga list --ref VALUE`
    /// finds the saga from an id quoted in a support ticket). A kind declares which output
    /// fields are ids; the default is none.
    fn references(&self, _output: &Value) -> Vec<(String, String)> {
        Vec::new()
    }

    /// The JSON Schemas of the parameters and the output, `{"params": ..., "output": ...}`,
    /// for kinds with typed parameters ([`crate::Step`]); `paysaga kinds --json` prints them.
    /// `None` (the default): the kind declares at most a [`StepKind::schema`].
    fn json_schema(&self) -> Option<Value> {
        None
    }
}

/// The `(name, value)` references of `output`'s fields `names` that hold a non-empty string or
/// a number (for [`StepKind::references`]).
pub fn output_references(output: &Value, names: &[&str]) -> Vec<(String, String)> {
    names
        .iter()
        .filter_map(|name| {
            let value = match output.get(*name)? {
                Value::String(s) if !s.trim().is_empty() => s.trim().to_string(),
                Value::Number(n) => n.to_string(),
                _ => return None,
            };
            Some((name.to_string(), value))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idempotency_key_depends_only_on_saga_and_step() {
        let saga = Uuid::from_u128(42);
        assert_eq!(idempotency_key(saga, "pay"), idempotency_key(saga, "pay"));
        assert_ne!(
            idempotency_key(saga, "pay"),
            idempotency_key(saga, "approve")
        );
        assert_ne!(
            idempotency_key(saga, "pay"),
            idempotency_key(Uuid::from_u128(43), "pay")
        );
        assert_ne!(idempotency_key(saga, "pay"), compensation_key(saga, "pay"));
    }

    #[test]
    fn a_reset_generation_gives_the_step_new_keys_and_generation_zero_keeps_the_old_ones() {
        let saga = Uuid::from_u128(42);
        let ctx = |wake: Wake, key_generation: u32| StepContext {
            saga_id: saga,
            workflow: "w".into(),
            step: "pay".into(),
            attempt: 1,
            wake,
            wait_state: None,
            output: None,
            now: Utc::now(),
            effects: Arc::new(Unguarded),
            documents: Arc::new(crate::InMemoryDocuments::default()),
            key_generation,
        };
        // Generation 0: the keys sagas always had.
        assert_eq!(
            ctx(Wake::Start, 0).idempotency_key(),
            idempotency_key(saga, "pay")
        );
        assert_eq!(
            ctx(Wake::Compensate, 0).idempotency_key(),
            compensation_key(saga, "pay")
        );
        // After a reset: new forward and compensation keys, stable across attempts; the
        // compensation names the object of its own generation.
        let reset = ctx(Wake::Start, 1);
        assert_ne!(reset.idempotency_key(), idempotency_key(saga, "pay"));
        assert_eq!(
            reset.idempotency_key(),
            ctx(
                Wake::Retry {
                    last_error: String::new()
                },
                1
            )
            .idempotency_key()
        );
        assert_ne!(
            reset.idempotency_key(),
            ctx(Wake::Start, 2).idempotency_key()
        );
        let undo = ctx(Wake::Compensate, 1);
        assert_eq!(undo.forward_idempotency_key(), reset.idempotency_key());
        assert_ne!(undo.idempotency_key(), compensation_key(saga, "pay"));
    }

    #[test]
    fn output_references_keep_non_empty_strings_and_numbers_of_the_named_fields() {
        let output = serde_json::json!({
            "payable_id": "pay_1", "invoice_number": 1001, "funding_id": " ",
            "status": "paid", "customer_id": null, "nested": {"id": "x"},
        });
        assert_eq!(
            output_references(
                &output,
                &[
                    "payable_id",
                    "invoice_number",
                    "funding_id",
                    "customer_id",
                    "nested",
                    "absent"
                ]
            ),
            vec![
                ("payable_id".to_string(), "pay_1".to_string()),
                ("invoice_number".to_string(), "1001".to_string()),
            ]
        );
    }
}
