//! # paysaga-store
//!
//! The [`Store`] trait (everything the engine persists) and its two implementations:
//! [`PgStore`] (PostgreSQL, for production and several workers) and [`SqliteStore`] (the
//! embedded store: one SQLite file, one node, for the demo and development; see
//! `docs/EMBEDDED-STORE.md`). [`connect`] picks one by the URL's scheme. This crate is the
//! only place in paysaga with SQL; each store keeps all of its SQL in one file
//! (`postgres.rs`, `sqlite.rs`) and its schema in `migrations/` (PostgreSQL) or
//! `migrations/sqlite/`; every query on a hot path has an index.
//!
//! Guarantees the implementations keep:
//! - **fenced leases**: [`Store::commit`] applies a transition only if the saga is still held
//!   by the committing worker with the same fencing token *and* the worker's lease is live;
//! - **inbox first**: [`Store::deliver_event`] stores the event (deduplicated by provider
//!   event id) and matches it to a wait in the same transaction; a wait that begins later
//!   consumes a stored event in the transaction that stores the wait;
//! - **idempotent start**: [`Store::create_saga`] returns the existing saga for a known key,
//!   even under concurrent calls.
//!
//! The same conformance tests (`tests/conformance.rs`) run against both stores.
//!
//! ## Example
//! ```no_run
//! # async fn demo() -> Result<(), paysaga_store::Error> {
//! // `postgres://...` or `sqlite://paysaga.db` (the file is created if missing).
//! let store = paysaga_store::connect("postgres://postgres@127.0.0.1/paysaga").await?;
//! store.migrate().await?;
//! for def in store.list_definitions().await? {
//!     println!("{} v{}", def.name, def.version);
//! }
//! # Ok(()) }
//! ```

mod postgres;
pub mod sqlite;
mod types;

pub use postgres::PgStore;
pub use sqlite::SqliteStore;
pub use types::*;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use paysaga_core::{Definition, DocumentId, Transition};
use uuid::Uuid;

/// Store errors. Each says what failed; callers add the saga/step context they hold.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The database could not be reached or a query failed.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// Migrations failed.
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// The worker no longer holds the saga (lease taken over or expired): nothing was written.
    #[error(
        "saga {saga}: lease lost (taken over by another worker or expired); nothing was committed"
    )]
    LeaseLost {
        /// The saga.
        saga: Uuid,
    },
    /// A definition version already exists with different content.
    #[error("workflow {name} version {version} already exists with different content (hash {existing}); submit it as a new version")]
    DefinitionConflict {
        /// Workflow name.
        name: String,
        /// Version.
        version: u32,
        /// Stored content hash.
        existing: String,
    },
    /// An idempotency key was reused with a different input.
    #[error("workflow {workflow}: idempotency key {key:?} already started saga {saga} with a different input; use a new key or the same input")]
    KeyReused {
        /// Workflow.
        workflow: String,
        /// The key.
        key: String,
        /// The existing saga.
        saga: Uuid,
    },
    /// A stored value could not be read back (schema drift or manual edits).
    #[error("corrupt row: {0}")]
    Corrupt(String),
    /// The requested object does not exist.
    #[error("{0} not found")]
    NotFound(String),
    /// The operation is not allowed in the saga's current state.
    #[error("{0}")]
    Refused(String),
    /// The embedded (SQLite) store runs one worker at a time and another one is live.
    #[error("another worker is running on this SQLite database: {name:?} (worker id {worker}, pid {pid} on {hostname}, lease until {lease_expires_at}). The embedded SQLite store runs one worker at a time: stop that worker first (if it died, its lease expires at that time), or use PostgreSQL (a postgres:// DATABASE_URL) to run several workers")]
    WorkerAlreadyRunning {
        /// The live worker's id.
        worker: Uuid,
        /// Its configured name.
        name: String,
        /// Its host.
        hostname: String,
        /// Its process id.
        pid: u32,
        /// When its lease expires unless renewed.
        lease_expires_at: DateTime<Utc>,
    },
    /// The database URL names no supported store.
    #[error("unsupported database URL scheme {scheme:?}: use postgres://... (or postgresql://...) for PostgreSQL, or sqlite://FILE for the embedded store")]
    UnsupportedUrl {
        /// The scheme found (never the rest of the URL, which may hold a password).
        scheme: String,
    },
}

/// Opens the store a URL names: [`PgStore`] for `postgres://` and `postgresql://`,
/// [`SqliteStore`] for `sqlite://FILE` (created if missing; `sqlite::memory:` for a
/// throwaway in-memory database). Migrations are not applied: call [`Store::migrate`].
pub async fn connect(url: &str) -> Result<Arc<dyn Store>, Error> {
    let scheme = url
        .split_once(':')
        .map(|(scheme, _)| scheme.to_ascii_lowercase())
        .unwrap_or_default();
    match scheme.as_str() {
        "postgres" | "postgresql" => Ok(Arc::new(PgStore::connect(url).await?)),
        "sqlite" => Ok(Arc::new(SqliteStore::connect(url).await?)),
        _ => Err(Error::UnsupportedUrl { scheme }),
    }
}

/// Everything the engine persists. Implemented for PostgreSQL by [`PgStore`] and for one
/// SQLite file by [`SqliteStore`].
#[async_trait]
pub trait Store: Send + Sync + std::fmt::Debug + 'static {
    /// Applies pending migrations.
    async fn migrate(&self) -> Result<(), Error>;
    /// (latest migration applied to the database, latest migration this build knows).
    async fn schema_versions(&self) -> Result<(Option<i64>, i64), Error>;

    /// Stores a definition version; the same content again is a no-op, different content
    /// under an existing version is [`Error::DefinitionConflict`].
    async fn put_definition(&self, def: &Definition) -> Result<DefinitionRecord, Error>;
    /// A definition by id.
    async fn definition(&self, id: i64) -> Result<DefinitionRecord, Error>;
    /// The latest version of a workflow, or the named version.
    async fn find_definition(
        &self,
        name: &str,
        version: Option<u32>,
    ) -> Result<Option<DefinitionRecord>, Error>;
    /// All definitions, newest version first per name.
    async fn list_definitions(&self) -> Result<Vec<DefinitionRecord>, Error>;

    /// Creates a saga (status `scheduled`) or returns the existing one for the key.
    async fn create_saga(&self, new: NewSaga) -> Result<(SagaRecord, bool), Error>;
    /// A saga by id.
    async fn saga(&self, id: Uuid) -> Result<Option<SagaRecord>, Error>;
    /// Sagas matching a filter, newest first.
    async fn list_sagas(&self, filter: &SagaFilter) -> Result<Vec<SagaRecord>, Error>;
    /// A saga's history, oldest first.
    async fn history(&self, id: Uuid) -> Result<Vec<HistoryRecord>, Error>;
    /// Asks for a cancel; applied at once when no worker holds the saga, else by the
    /// holder after its current step. Refused for final sagas.
    async fn request_cancel(
        &self,
        id: Uuid,
        actor: &str,
        reason: &str,
    ) -> Result<SagaRecord, Error>;

    /// Registers a worker process with a fresh lease.
    async fn register_worker(&self, worker: &WorkerInfo, ttl: Duration) -> Result<(), Error>;
    /// Extends a worker's lease; `false` when the lease was already lost (reaped).
    async fn heartbeat(&self, worker: Uuid, ttl: Duration) -> Result<bool, Error>;
    /// Marks a worker stopped and releases every saga it holds; returns how many.
    async fn stop_worker(&self, worker: Uuid) -> Result<u64, Error>;
    /// Releases the sagas of workers whose lease expired; returns how many sagas.
    async fn reap_expired_workers(&self) -> Result<u64, Error>;
    /// Unfinished sagas whose definitions need step kinds outside `kinds`.
    async fn sagas_needing_other_kinds(
        &self,
        kinds: &[String],
    ) -> Result<Vec<UnrunnableGroup>, Error>;

    /// Claims up to `limit` runnable sagas for `worker` (fencing token incremented).
    async fn claim(
        &self,
        worker: Uuid,
        kinds: &[String],
        limit: i64,
    ) -> Result<Vec<ClaimedSaga>, Error>;
    /// When the next unowned saga this worker can run becomes due.
    async fn next_due(&self, kinds: &[String]) -> Result<Option<DateTime<Utc>>, Error>;
    /// Gives a claimed saga back without changing it (the step will run again, with the
    /// same idempotency key); `false` when the worker no longer held it.
    async fn release(&self, saga: Uuid, worker: Uuid, fence: i64) -> Result<bool, Error>;
    /// Applies a transition in one transaction, checking the lease and fencing token.
    async fn commit(&self, commit: Commit<'_>) -> Result<Committed, Error>;
    /// Records, under the same fence as a commit, that the holder of `saga` is about to send
    /// step `step`'s request whose effect the provider cannot deduplicate. Refused with
    /// [`EffectMark::Wait`] while an earlier mark on the same step is younger than `window`
    /// (that attempt's request may still land: look again once the window has closed);
    /// [`Error::LeaseLost`] when the worker no longer holds the saga.
    async fn mark_effect(
        &self,
        saga: Uuid,
        worker: Uuid,
        fence: i64,
        step: i32,
        window: Duration,
    ) -> Result<EffectMark, Error>;
    /// Withdraws the holder's mark on step `step` (its request surely did not take effect);
    /// `false` when there was none or the worker no longer holds the saga.
    async fn clear_effect_mark(
        &self,
        saga: Uuid,
        worker: Uuid,
        fence: i64,
        step: i32,
    ) -> Result<bool, Error>;

    /// Stores an event in the inbox (dedup on provider + event id) and wakes a matching wait.
    async fn deliver_event(&self, event: NewEvent) -> Result<Delivery, Error>;
    /// Inbox events, newest first.
    async fn list_events(&self, filter: &EventFilter) -> Result<Vec<EventRecord>, Error>;
    /// One inbox event (with its raw body).
    async fn event(&self, id: i64) -> Result<Option<EventRecord>, Error>;
    /// Matches a stored event again against the waits that exist now (operator replay);
    /// `fields` replaces the event's type, correlation key and payload (a re-parse).
    async fn replay_event(
        &self,
        id: i64,
        fields: Option<(String, String, serde_json::Value)>,
        actor: &str,
        reason: &str,
    ) -> Result<Delivery, Error>;

    /// Applies an operator action: refused if the saga moved since it was read; releases
    /// any lease (fencing out an in-flight worker) and records the actor.
    async fn operator_apply(&self, action: OperatorAction<'_>) -> Result<SagaRecord, Error>;
    /// Appends history entries written by an operator or an API call.
    async fn append_history(
        &self,
        saga: Uuid,
        actor: &str,
        entries: &[paysaga_core::HistoryEntry],
    ) -> Result<(), Error>;
    /// Counts for operators.
    async fn stats(&self) -> Result<Stats, Error>;

    /// A stream of wake-ups (new runnable work); may be lossy, callers also poll.
    async fn wakeups(&self) -> Result<WakeupsBox, Error>;

    /// Stores a document (content, type, size and SHA-256 as given; the caller checks the
    /// size limit and the hash).
    async fn put_document(&self, doc: &NewDocument) -> Result<DocumentRecord, Error>;
    /// A document's metadata.
    async fn document(&self, id: DocumentId) -> Result<Option<DocumentRecord>, Error>;
    /// A document's content; `None` when there is no such document or retention deleted it.
    async fn document_content(&self, id: DocumentId) -> Result<Option<Vec<u8>>, Error>;
    /// Gives documents to saga `saga` (before its row is inserted), all or none: refused with
    /// [`Error::NotFound`] for a missing document and [`Error::Refused`] for one whose
    /// content was deleted or that another saga holds. Documents `saga` already holds pass.
    async fn claim_documents(&self, saga: Uuid, ids: &[DocumentId]) -> Result<(), Error>;
    /// Takes back the documents given to `saga` (its start did not insert it); returns how
    /// many.
    async fn release_documents(&self, saga: Uuid) -> Result<u64, Error>;
    /// Deletes the content (keeping the metadata) of up to `limit` documents whose saga
    /// finished more than `retention` ago, or, held by no existing saga, that were stored
    /// more than `unclaimed_after` ago; returns how many.
    async fn delete_expired_documents(
        &self,
        retention: Duration,
        unclaimed_after: Duration,
        limit: i64,
    ) -> Result<u64, Error>;
}

/// A boxed [`Wakeups`] stream.
pub type WakeupsBox = Box<dyn Wakeups>;

/// Notifications that runnable work may exist.
#[async_trait]
pub trait Wakeups: Send {
    /// Waits for the next notification.
    async fn recv(&mut self) -> Result<(), Error>;
}

/// The answer to [`Store::mark_effect`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EffectMark {
    /// Marked now: the request may go out.
    Marked,
    /// An earlier attempt marked the same step at `marked_at`, less than the window ago.
    Wait {
        /// When the earlier attempt marked it (database clock).
        marked_at: DateTime<Utc>,
        /// How long until the window closes (database clock).
        remaining: Duration,
    },
}

/// Arguments of [`Store::commit`].
#[derive(Debug)]
pub struct Commit<'a> {
    /// The saga.
    pub saga: Uuid,
    /// The committing worker.
    pub worker: Uuid,
    /// The fencing token from the claim.
    pub fence: i64,
    /// The status the worker saw when it ran the step.
    pub prior_status: paysaga_core::SagaStatus,
    /// Inbox id of the event the run consumed, if any.
    pub consumed_event: Option<i64>,
    /// What to write.
    pub transition: &'a Transition,
    /// Unique per transition and the same across retries of its commit: a retry whose earlier
    /// try was applied but not acknowledged (connection lost) finds it and writes nothing twice.
    pub token: Uuid,
}

/// Resubmitting a definition version: the same content is a no-op, other content is refused
/// (the rule both stores apply after their insert found the version already stored).
fn same_definition_or_conflict(
    existing: DefinitionRecord,
    def: &Definition,
    hash: &str,
) -> Result<DefinitionRecord, Error> {
    if existing.content_hash != hash {
        return Err(Error::DefinitionConflict {
            name: def.name.clone(),
            version: def.version,
            existing: existing.content_hash,
        });
    }
    Ok(existing)
}

/// What a replay matches on: the operator's corrected fields, else the stored event's own
/// (refused when it has none to match on).
fn replay_fields(
    stored: &EventRecord,
    fields: Option<(String, String, serde_json::Value)>,
) -> Result<(String, String, serde_json::Value), Error> {
    if let Some(f) = fields {
        return Ok(f);
    }
    match (&stored.event_type, &stored.correlation_key, &stored.payload) {
        (Some(t), Some(k), Some(p)) if stored.parse_error.is_none() => {
            Ok((t.clone(), k.clone(), p.clone()))
        }
        _ => Err(Error::Refused(format!(
            "inbox event {} has no event type, correlation key or parsed body{}; it cannot be matched as it is",
            stored.id,
            stored
                .parse_error
                .as_ref()
                .map(|e| format!(" (parse error: {e})"))
                .unwrap_or_default()
        ))),
    }
}

/// Whether document `id` (found: (holding saga, content deleted)) may be given to `saga`:
/// the rule both stores apply in [`Store::claim_documents`].
fn check_document_claim(
    saga: Uuid,
    id: DocumentId,
    found: Option<(Option<Uuid>, bool)>,
) -> Result<(), Error> {
    match found {
        None => Err(Error::NotFound(format!(
            "document {id} (store it with `paysaga documents put FILE` and use the id it prints)"
        ))),
        Some((_, true)) => Err(Error::Refused(format!(
            "the content of document {id} was deleted by retention; store the document again"
        ))),
        Some((Some(holder), false)) if holder != saga => Err(Error::Refused(format!(
            "document {id} was given to saga {holder}; a document serves one saga: store it again for this one"
        ))),
        Some(_) => Ok(()),
    }
}
