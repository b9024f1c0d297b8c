//! Records the store reads and writes.

use chrono::{DateTime, Utc};
use paysaga_core::{
    ActiveWait, ClosedOutcome, Definition, Event, HistoryKind, ObservedStatus, SagaState,
    SagaStatus,
};
use serde::Serialize;
use serde_json::Value;
use uuid::Uuid;

/// A stored definition version.
#[derive(Debug, Clone, Serialize)]
pub struct DefinitionRecord {
    /// Row id (sagas pin it).
    pub id: i64,
    /// Workflow name.
    pub name: String,
    /// Version.
    pub version: u32,
    /// Hex SHA-256 of the canonical content.
    pub content_hash: String,
    /// The definition.
    pub definition: Definition,
    /// Step kinds it needs.
    pub step_kinds: Vec<String>,
    /// When it was stored.
    pub created_at: DateTime<Utc>,
}

/// A saga to create.
#[derive(Debug, Clone)]
pub struct NewSaga {
    /// Its id.
    pub id: Uuid,
    /// The definition version it pins.
    pub definition_id: i64,
    /// Workflow name.
    pub workflow: String,
    /// Version.
    pub version: u32,
    /// Caller's idempotency key.
    pub idempotency_key: Option<String>,
    /// Input (validated by the caller).
    pub input: Value,
    /// Who started it (for history).
    pub actor: String,
    /// Its concurrency key and limit (see `paysaga_core::concurrency`), if its definition
    /// declares one: the saga is queued until it holds one of the key's slots.
    pub concurrency: Option<SagaConcurrency>,
    /// The W3C trace context (`{"traceparent": .., "tracestate": ..}` as JSON) of the span
    /// that started it, which the worker's spans for it continue (runtime feature `otel`).
    pub trace_context: Option<String>,
    /// `definition_id` was resolved as the workflow's latest version (no version asked for):
    /// the insert is refused with [`crate::Error::DefinitionOutdated`], writing nothing, if
    /// a newer version of the workflow is stored by then. So a start never pins an older
    /// version than the latest one committed before it, even when its caller resolved the
    /// latest version from a cache.
    pub latest: bool,
    /// Its caller awaits its end from the start (see [`crate::Store::end_signal`]): the
    /// insert marks it awaited, as [`crate::Store::watch_end`] would mark it afterwards, so
    /// the commit that gives it a final status notifies the end (PostgreSQL: trigger
    /// `paysaga_saga_ended`). Without it, a saga's last commit notifies nothing.
    pub awaited: bool,
    /// Documents (e.g. KYC scans) the saga takes in its insert's own commit, all or none,
    /// checked as [`crate::Store::claim_documents`] checks them (refused with
    /// [`crate::Error::NotFound`] or [`crate::Error::Refused`], nothing stored). Nothing is
    /// taken when the insert writes nothing (the key names a saga, the definition is
    /// outdated) or fails, so no document is ever held by an id no saga has.
    pub documents: Vec<paysaga_core::DocumentId>,
}

/// A saga's concurrency key: at most `limit` open sagas with the same `key` hold a slot, and
/// only a saga holding one runs its steps.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SagaConcurrency {
    /// `<group>:<value>` (see `paysaga_core::Concurrency::key_for`).
    pub key: String,
    /// Slots of the key.
    pub limit: u32,
    /// Whether this saga holds one (stored sagas only; `false` in a [`NewSaga`]): taken when
    /// it starts or when a holder ends, kept until it ends itself.
    pub holds_slot: bool,
}

/// A saga as stored.
#[derive(Debug, Clone, Serialize)]
pub struct SagaRecord {
    /// Id.
    pub id: Uuid,
    /// Pinned definition.
    pub definition_id: i64,
    /// Workflow name.
    pub workflow: String,
    /// Definition version.
    pub version: u32,
    /// Caller's idempotency key.
    pub idempotency_key: Option<String>,
    /// Input.
    pub input: Value,
    /// Status.
    pub status: SagaStatus,
    /// Current step (or step being compensated).
    pub step_index: usize,
    /// Attempts made of the current step.
    pub attempt: u32,
    /// First attempt of the current step.
    pub step_started_at: Option<DateTime<Utc>>,
    /// When a worker picks it up next.
    pub run_at: Option<DateTime<Utc>>,
    /// Worker holding the lease.
    pub owner: Option<Uuid>,
    /// Fencing token.
    pub fence: i64,
    /// Step outputs by step name.
    pub outputs: Value,
    /// Active wait.
    pub wait: Option<ActiveWait>,
    /// Event that ended the wait and awaits processing.
    pub wake_event: Option<Event>,
    /// Last error shown to operators.
    pub last_error: Option<String>,
    /// An operator asked to cancel.
    pub cancel_requested: bool,
    /// Created.
    pub created_at: DateTime<Utc>,
    /// Last change.
    pub updated_at: DateTime<Utc>,
    /// Reached a final status.
    pub finished_at: Option<DateTime<Utc>>,
    /// An attempt of the current step may have reached the provider: the stored flag (an
    /// ambiguous outcome of an irreversible step) or an effect mark on the current step.
    pub effect_possible: bool,
    /// The outcome an operator declared when closing the saga (status `closed` only).
    pub closed_outcome: Option<ClosedOutcome>,
    /// Steps an operator reset to run again, with how many times: their idempotency keys
    /// (and provider references) are of that generation (see
    /// [`paysaga_core::StepContext::key_generation`]). Empty for most sagas.
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub key_generations: std::collections::BTreeMap<String, u32>,
    /// A pending `close --compensate`: the saga's completed steps are being undone (or the
    /// unwind is parked) and it ends `closed` with this outcome. Only while `compensating` or
    /// `needs_operator`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub close_requested: Option<paysaga_core::CloseRequest>,
    /// Its concurrency key, limit and whether it holds a slot (a saga of a definition with a
    /// `[concurrency]` table); one that does not is queued behind the holders
    /// ([`crate::Store::concurrency_holders`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<SagaConcurrency>,
    /// The W3C trace context of its start (see [`NewSaga::trace_context`]), if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trace_context: Option<String>,
}

impl SagaRecord {
    /// Open and waiting for a slot of its concurrency key: no worker runs it until a holder
    /// ends.
    pub fn is_queued(&self) -> bool {
        self.concurrency.as_ref().is_some_and(|c| !c.holds_slot) && !self.status.is_final()
    }

    /// The idempotency key generation of `step` (0 unless an operator reset it).
    pub fn key_generation(&self, step: &str) -> u32 {
        self.key_generations.get(step).copied().unwrap_or(0)
    }
}

impl SagaRecord {
    /// What operators are shown: the stored status, or `running` while a worker holds it.
    pub fn observed_status(&self) -> ObservedStatus {
        ObservedStatus::of(self.status, self.owner.is_some())
    }

    /// The part the state machine needs.
    pub fn state(&self) -> SagaState {
        SagaState {
            id: self.id,
            status: self.status,
            step_index: self.step_index,
            attempt: self.attempt,
            step_started_at: self.step_started_at,
            wait: self.wait.clone(),
            cancel_requested: self.cancel_requested,
            last_error: self.last_error.clone(),
            effect_possible: self.effect_possible,
            close_requested: self.close_requested.clone(),
            steps_with_output: self
                .outputs
                .as_object()
                .map(|o| o.keys().cloned().collect())
                .unwrap_or_default(),
        }
    }
}

/// A saga claimed by a worker.
#[derive(Debug, Clone)]
pub struct ClaimedSaga {
    /// The saga as claimed (its `fence` is the worker's fencing token).
    pub saga: SagaRecord,
}

/// Which sagas to list.
#[derive(Debug, Clone, Default)]
pub struct SagaFilter {
    /// Only these statuses, as operators see them (`running`: held by a worker).
    pub statuses: Vec<ObservedStatus>,
    /// Only this workflow.
    pub workflow: Option<String>,
    /// Only sagas whose current step has this name.
    pub step: Option<String>,
    /// Only sagas whose workflow uses step kinds of this provider (`lumanu`, ...).
    pub provider: Option<String>,
    /// Only this business key (the idempotency key given at start).
    pub key: Option<String>,
    /// Created at or after.
    pub created_after: Option<DateTime<Utc>>,
    /// Created before.
    pub created_before: Option<DateTime<Utc>>,
    /// Updated at or after.
    pub updated_after: Option<DateTime<Utc>>,
    /// Updated before.
    pub updated_before: Option<DateTime<Utc>>,
    /// Stuck: parked for an operator; or unfinished and without progress since this time,
    /// waiting past its deadline, held by a worker whose lease expired, or at
    /// `stuck_attempts` attempts or more.
    pub stuck_since: Option<DateTime<Utc>>,
    /// Attempt count that counts as stuck (with `stuck_since`; default 5).
    pub stuck_attempts: Option<u32>,
    /// Sort by `updated_at` instead of `created_at`.
    pub sort_by_updated: bool,
    /// Oldest first instead of newest first.
    pub ascending: bool,
    /// At most this many (default 100).
    pub limit: Option<i64>,
    /// Skip this many (pagination).
    pub offset: Option<i64>,
    /// Only sagas with at least one `saga_alert` history row (any status).
    pub alerts: bool,
    /// Only sagas one of whose steps returned this provider object id (a reference, see
    /// [`SagaReference`]).
    pub reference: Option<String>,
}

/// An operator action to apply (see `paysaga_core::operator`).
#[derive(Debug)]
pub struct OperatorAction<'a> {
    /// The saga.
    pub saga: Uuid,
    /// The status the transition was computed from; refused if the saga moved meanwhile.
    pub expect_status: SagaStatus,
    /// The step index it was computed from.
    pub expect_step_index: usize,
    /// What to write.
    pub transition: &'a paysaga_core::Transition,
    /// Who (recorded in history).
    pub actor: &'a str,
}

/// Counts for `paysaga stats`.
#[derive(Debug, Clone, Serialize)]
pub struct Stats {
    /// (workflow, status, sagas).
    pub by_status: Vec<(String, String, i64)>,
    /// (workflow, current step, sagas) of unfinished sagas.
    pub by_step: Vec<(String, String, i64)>,
    /// The longest-waiting saga: (id, workflow, waiting since).
    pub oldest_waiting: Option<(Uuid, String, DateTime<Utc>)>,
    /// (attempts made, unfinished sagas) for sagas retrying (attempt > 1).
    pub retries: Vec<(i32, i64)>,
    /// Inbox events no saga consumed: (provider, events).
    pub unmatched_events: Vec<(String, i64)>,
}

/// One history entry.
#[derive(Debug, Clone, Serialize)]
pub struct HistoryRecord {
    /// Row id (order).
    pub id: i64,
    /// When.
    pub at: DateTime<Utc>,
    /// Which worker wrote it.
    pub worker: Option<Uuid>,
    /// Who, for operator and API entries.
    pub actor: Option<String>,
    /// Step name.
    pub step: Option<String>,
    /// Attempt.
    pub attempt: Option<u32>,
    /// What happened.
    pub kind: HistoryKind,
    /// Error.
    pub error: Option<String>,
    /// Details.
    pub detail: Option<Value>,
}

/// A worker process registering itself.
#[derive(Debug, Clone)]
pub struct WorkerInfo {
    /// Unique per process start.
    pub id: Uuid,
    /// Configured name (a label only).
    pub name: String,
    /// Host.
    pub hostname: String,
    /// Process id.
    pub pid: u32,
    /// Registered step kinds.
    pub step_kinds: Vec<String>,
    /// Whether (and how) a start in another process may insert a new saga held by this
    /// worker and wake it alone (PostgreSQL); `None`: never, the worker claims its sagas.
    pub assignments: Option<Assignments>,
}

/// A worker taking new sagas a start inserts held by it ([`WorkerInfo::assignments`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Assignments {
    /// How many sagas it runs at once: a start hands it a saga only while it holds fewer.
    pub concurrency: u32,
    /// The key of the channel it listens on for them ([`crate::Store::worker_wakeups`]);
    /// stays the same when the worker registers again under a new id.
    pub listener: Uuid,
}

/// Unfinished sagas a worker cannot run.
#[derive(Debug, Clone, Serialize)]
pub struct UnrunnableGroup {
    /// Workflow.
    pub workflow: String,
    /// Version.
    pub version: u32,
    /// How many sagas.
    pub sagas: i64,
    /// Step kinds the worker lacks.
    pub missing_kinds: Vec<String>,
}

/// The result of a commit.
#[derive(Debug, Clone)]
pub struct Committed {
    /// The worker still holds the saga (run the next step now).
    pub kept: bool,
    /// An event that ended the new wait at once (the worker keeps the saga to handle it).
    pub wake_event: Option<Event>,
    /// An operator asked to cancel meanwhile.
    pub cancel_requested: bool,
}

/// An event for the inbox.
#[derive(Debug, Clone)]
pub struct NewEvent {
    /// Provider.
    pub provider: String,
    /// Provider's event id.
    pub event_id: String,
    /// Event type (absent when unparseable).
    pub event_type: Option<String>,
    /// Correlation key (absent when unknown).
    pub correlation_key: Option<String>,
    /// Parsed body.
    pub payload: Option<Value>,
    /// Raw body, kept when it could not be parsed.
    pub raw_body: Option<Vec<u8>>,
    /// Why it could not be parsed.
    pub parse_error: Option<String>,
}

/// What happened to a delivered event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Delivery {
    /// Inbox row id.
    pub inbox_id: i64,
    /// Already stored before (same provider event id): ignored.
    pub duplicate: bool,
    /// The saga whose wait it ended, if any.
    pub matched_saga: Option<Uuid>,
}

/// An inbox row.
#[derive(Debug, Clone, Serialize)]
pub struct EventRecord {
    /// Row id.
    pub id: i64,
    /// Provider.
    pub provider: String,
    /// Provider's event id.
    pub event_id: String,
    /// Type.
    pub event_type: Option<String>,
    /// Correlation key.
    pub correlation_key: Option<String>,
    /// Body.
    pub payload: Option<Value>,
    /// Parse error.
    pub parse_error: Option<String>,
    /// Raw body, kept for unparseable events (base64 is the caller's business).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub raw_body: Option<Vec<u8>>,
    /// Received.
    pub received_at: DateTime<Utc>,
    /// Consumed by this saga.
    pub consumed_by: Option<Uuid>,
    /// Consumed when.
    pub consumed_at: Option<DateTime<Utc>>,
}

/// Which inbox events to list.
#[derive(Debug, Clone, Default)]
pub struct EventFilter {
    /// Only events whose body could not be parsed.
    pub unparseable: bool,
    /// Only events no saga consumed.
    pub unmatched: bool,
    /// Only this provider.
    pub provider: Option<String>,
    /// At most this many (default 100).
    pub limit: Option<i64>,
}

/// A document to store (see [`crate::Store::put_document`]).
#[derive(Clone)]
pub struct NewDocument {
    /// Its id.
    pub id: paysaga_core::DocumentId,
    /// MIME type.
    pub content_type: String,
    /// Lowercase hex SHA-256 of `content`.
    pub sha256: String,
    /// The bytes.
    pub content: Vec<u8>,
}

impl std::fmt::Debug for NewDocument {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewDocument")
            .field("id", &self.id)
            .field("content_type", &self.content_type)
            .field("size", &self.content.len())
            .field("sha256", &self.sha256)
            .finish_non_exhaustive()
    }
}

/// A stored document's metadata (never its bytes).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DocumentRecord {
    /// Its id (`doc_<hex>`).
    pub id: paysaga_core::DocumentId,
    /// MIME type.
    pub content_type: String,
    /// Size in bytes.
    pub size: i64,
    /// Lowercase hex SHA-256 of the content.
    pub sha256: String,
    /// Stored when.
    pub created_at: DateTime<Utc>,
    /// The saga it was given to at start, if any.
    pub saga_id: Option<Uuid>,
    /// When retention deleted the content (`None`: the content is stored).
    pub content_deleted_at: Option<DateTime<Utc>>,
}

/// What an operator action writes besides its transition (see [`crate::Store::operator_apply_with`]).
#[derive(Debug, Clone, Copy, Default)]
pub struct OperatorChange<'a> {
    /// The declared outcome, stored with status `closed` (required with it, refused without).
    pub closed_outcome: Option<ClosedOutcome>,
    /// A new input (a reset's patched input, validated by the caller).
    pub input: Option<&'a Value>,
    /// Steps whose idempotency key generation goes up by one (a reset runs them again).
    pub new_key_generation: &'a [String],
    /// Refused while a worker holds the saga (its current step is running).
    pub require_unheld: bool,
    /// A `close --compensate` to store with the saga (status `compensating` only): the unwind
    /// ends `closed` with its outcome. Any other status clears a stored one.
    pub close_request: Option<&'a paysaga_core::CloseRequest>,
}

/// Which operator history rows `paysaga audit` lists.
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    /// At or after.
    pub since: Option<DateTime<Utc>>,
    /// Only this actor.
    pub actor: Option<String>,
    /// At most this many, newest first (default 100).
    pub limit: Option<i64>,
}

/// One history row written by an operator (any row with an actor but the start of a saga).
#[derive(Debug, Clone, Serialize)]
pub struct AuditRecord {
    /// The saga.
    pub saga_id: Uuid,
    /// Its workflow.
    pub workflow: String,
    /// The row.
    #[serde(flatten)]
    pub entry: HistoryRecord,
}

/// A provider object id a saga's step returned (a transaction, payable, funding, intent,
/// customer id...), declared by the step kind (`StepKind::references`) and stored in the commit
/// of the step's result: `paysaga list --ref VALUE` finds the saga.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SagaReference {
    /// The step that returned it.
    pub step: String,
    /// The output field (`transaction_id`, `payable_id`, ...).
    pub name: String,
    /// The id.
    pub value: String,
}

/// What [`crate::Store::refresh_gauges`] computes: the operator gauges of `/metrics`.
#[derive(Debug, Clone, Copy)]
pub struct GaugeRequest {
    /// The process asking (holds the gauge lease while it computes).
    pub instance: Uuid,
    /// How long the lease lasts (a few intervals): another process takes over after it.
    pub lease: std::time::Duration,
    /// An open saga without progress for this long counts as stuck (as `list --stuck-for`).
    pub stuck_after: std::time::Duration,
    /// Attempts that count as stuck.
    pub stuck_attempts: u32,
    /// Sagas created in the last `started_lag` are counted at the next refresh (a start whose
    /// transaction is still open has a `created_at` in the past).
    pub started_lag: std::time::Duration,
}

/// The operator gauges, computed by one process and stored for every worker to serve.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct GaugeSnapshot {
    /// When they were computed (database clock).
    pub computed_at: DateTime<Utc>,
    /// By workflow.
    pub workflows: std::collections::BTreeMap<String, WorkflowGauges>,
}

/// The gauges of one workflow.
#[derive(Debug, Clone, Default, PartialEq, Serialize, serde::Deserialize)]
pub struct WorkflowGauges {
    /// Open sagas (not ended: ended ones are not counted, see `sagas_finished_total`) by
    /// observed status (`running` for a saga a worker holds).
    pub by_status: std::collections::BTreeMap<String, i64>,
    /// Age in seconds of the oldest wait (0 when none waits).
    pub oldest_wait_seconds: f64,
    /// Waiting sagas whose wait deadline has passed.
    pub waits_past_deadline: i64,
    /// Stuck sagas, as `paysaga list --stuck-for`: parked for an operator, or open and
    /// without progress, past their wait deadline, at many attempts or held by a dead worker.
    pub stuck: i64,
    /// Sagas started (created), all time.
    pub started: i64,
    /// Unfinished sagas that no live worker can run (no live worker has every step kind of
    /// their definition; [`crate::Store::sagas_no_live_worker_can_run`]).
    #[serde(default)]
    pub unrunnable: i64,
    /// Step kinds those sagas need that no live worker has, for the log line an operator acts on.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub missing_kinds: Vec<String>,
}

/// The answer to [`crate::Store::reap_expired_leases`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Reaped {
    /// Sagas released.
    pub sagas: u64,
    /// When the next lease of another live worker expires (database clock), if any.
    pub next_expiry: Option<DateTime<Utc>>,
}

/// Rows one [`crate::Store::prune_finished`] batch deleted, per table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Pruned {
    /// Sagas.
    pub sagas: u64,
    /// History rows.
    pub history: u64,
    /// Waits.
    pub waits: u64,
    /// Inbox events the sagas consumed.
    pub events: u64,
    /// Documents given to the sagas.
    pub documents: u64,
    /// Another pruner holds the retention lock: nothing was deleted.
    pub busy: bool,
}

/// A request slot asked of a provider's shared request budget
/// ([`crate::Store::reserve_request_slot`]). Rate and burst are the caller's configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotRequest<'a> {
    /// The provider (`lumanu`).
    pub provider: &'a str,
    /// Which credential's budget: an id, never the secret.
    pub credential: &'a str,
    /// Time between two requests at the configured rate (1 / rate).
    pub interval: std::time::Duration,
    /// How many requests may go at once after a quiet period (at least 1).
    pub burst: u32,
    /// The longest the caller will wait: a slot further away is not taken.
    pub max_wait: std::time::Duration,
}

/// The answer to a [`SlotRequest`], on the database's clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestSlot {
    /// The slot was taken: send at `at` (at once if `at <= now`). Not taken: `at` is the next
    /// free slot, further away than the caller would wait; nothing was reserved.
    pub granted: bool,
    /// The slot's time.
    pub at: DateTime<Utc>,
    /// The database's time when it answered (sleep `at - now`, not `at - local clock`).
    pub now: DateTime<Utc>,
    /// The budget runs at half its rate after a provider's 429.
    pub slowed: bool,
}

/// A child saga to start from a fan-out step (see [`StartChildren`]).
#[derive(Debug, Clone)]
pub struct NewChild {
    /// Its id (used when it is inserted; an existing child for the key keeps its own).
    pub id: Uuid,
    /// Its element's position in the parent's list.
    pub index: u64,
    /// Its element's key.
    pub key: String,
    /// Its idempotency key (`paysaga_core::child_idempotency_key`).
    pub idempotency_key: String,
    /// Its input (validated by the caller).
    pub input: Value,
    /// Its concurrency key when its workflow declares `[concurrency]` (`holds_slot` ignored):
    /// it is started queued and takes a free slot of the key like any started saga.
    pub concurrency: Option<SagaConcurrency>,
}

/// Children to start from fan-out step `step` of `parent`, under the parent's lease.
#[derive(Debug, Clone)]
pub struct StartChildren<'a> {
    /// The parent saga.
    pub parent: Uuid,
    /// The worker holding it.
    pub worker: Uuid,
    /// The worker's fencing token for it.
    pub fence: i64,
    /// The fan-out step.
    pub step: &'a str,
    /// Elements in the list.
    pub total: u64,
    /// The children's definition version.
    pub definition_id: i64,
    /// The children's workflow.
    pub workflow: &'a str,
    /// Its version.
    pub version: u32,
    /// The next elements, consecutive from the step's `started` count.
    pub children: &'a [NewChild],
}

/// A child saga as its parent's steps and operators see it.
#[derive(Debug, Clone, Serialize)]
pub struct ChildSaga {
    /// The child's id.
    pub id: Uuid,
    /// The parent's fan-out step.
    pub step: String,
    /// Its element's position.
    pub index: u64,
    /// Its element's key.
    pub key: String,
    /// Its stored status.
    pub status: SagaStatus,
    /// Held by a worker now.
    pub held: bool,
    /// Its step outputs (`Value::Null` unless asked for).
    pub outputs: Value,
    /// Its last error.
    pub last_error: Option<String>,
}

/// How many children of a parent's fan-out step are in one observed status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChildCount {
    /// The fan-out step.
    pub step: String,
    /// The status operators see.
    pub status: ObservedStatus,
    /// How many.
    pub count: u64,
}

/// Where a child saga comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ParentLink {
    /// The parent saga.
    pub parent: Uuid,
    /// Its fan-out step.
    pub step: String,
    /// The element's position.
    pub index: u64,
    /// The element's key.
    pub key: String,
}

/// A reference of a saga with where the saga stands: what reconciliation compares with the
/// provider's object ([`crate::Store::reconciliation_references`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReconcileReference {
    /// The saga.
    pub saga_id: Uuid,
    /// Its workflow.
    pub workflow: String,
    /// Its status.
    pub status: SagaStatus,
    /// Its closed outcome, for a closed saga.
    pub closed_outcome: Option<paysaga_core::ClosedOutcome>,
    /// Its last change.
    pub updated_at: DateTime<Utc>,
    /// The step that returned the reference.
    pub step: String,
    /// The output field (`payable_id`, `transaction_id`, `intent_id`, ...).
    pub name: String,
    /// The provider's id.
    pub value: String,
}

/// One drift a reconciliation found (stored in `paysaga_drift`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct DriftRecord {
    /// `status_mismatch`, `unowned_object` or `unaccounted_money` (CHECK in the table).
    pub kind: String,
    /// The provider (`lumanu`, `blaaiz`, `lean`).
    pub provider: String,
    /// The saga concerned, if one is.
    pub saga_id: Option<Uuid>,
    /// The provider's object, if one is.
    pub object_id: Option<String>,
    /// Currency of `amount`.
    pub currency: Option<String>,
    /// Amount in minor units of `currency`.
    pub amount: Option<i64>,
    /// What differs.
    pub detail: String,
    /// What an operator should do.
    pub action: String,
}

/// A reconciliation run to store ([`crate::Store::store_reconciliation`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewReconciliation {
    /// When it began.
    pub started_at: DateTime<Utc>,
    /// The providers it compared.
    pub providers: Vec<String>,
    /// Sagas and objects created before this were left out (`--since`).
    pub since: Option<DateTime<Utc>>,
    /// Provider objects read.
    pub objects_checked: i64,
    /// Who ran it (`worker:<id>`, `cli:<os user>`).
    pub actor: String,
    /// What it found, in order.
    pub findings: Vec<DriftRecord>,
}

/// A stored reconciliation run ([`crate::Store::last_reconciliation`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reconciliation {
    /// Its id.
    pub id: i64,
    /// When it finished (stored).
    pub finished_at: DateTime<Utc>,
    /// The run as stored.
    pub run: NewReconciliation,
}
