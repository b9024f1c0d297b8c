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

#![warn(missing_docs)]

mod ended;
mod postgres;
pub mod sqlite;
mod types;

pub use postgres::PgStore;
pub use sqlite::SqliteStore;
/// The connection type [`PgStore::create_saga_in`] and `Engine::start_in` take: a
/// `sqlx::Transaction<'_, sqlx::Postgres>` of the same sqlx version derefs to it.
pub use sqlx::PgConnection;
pub use types::*;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use paysaga_core::{Definition, DocumentId, Transition};
use uuid::Uuid;

/// Store errors. Each says what failed; callers add the saga/step context they hold.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
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
    /// A start resolved the workflow's latest version, and a newer one was stored before its
    /// insert (see [`NewSaga::latest`]): nothing was written; resolve the latest version
    /// again and start again (`Engine::start` does).
    #[error("workflow {workflow}: version {version} is no longer the latest (a newer version was submitted); nothing was started: resolve the latest version again and retry")]
    DefinitionOutdated {
        /// Workflow.
        workflow: String,
        /// The version the start resolved.
        version: u32,
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
    /// A migration recorded in `paysaga_migrations` did not finish.
    #[error("migration {version} is partially applied: restore the database from a backup, or finish it by hand and delete its row from paysaga_migrations")]
    MigrationDirty {
        /// The migration's version.
        version: i64,
    },
}

impl Error {
    /// Whether the database refused a write for what it was asked to hold, not for being
    /// unreachable or busy: a data or constraint error, a value it cannot encode, a corrupt
    /// row. Retrying the same write cannot succeed.
    pub fn is_unstorable(&self) -> bool {
        match self {
            Error::Corrupt(_) => true,
            Error::Database(sqlx::Error::Database(db)) => {
                let code = db.code().unwrap_or_default();
                match code.parse::<i64>() {
                    // SQLite (extended) result codes: busy, locked, I/O, full, cannot open pass.
                    Ok(sqlite) => !matches!(sqlite & 0xff, 5 | 6 | 10 | 13 | 14),
                    // PostgreSQL SQLSTATE: connection (08), rollback (40: serialization,
                    // deadlock), resources (53), operator intervention (57), system (58) pass.
                    Err(_) => {
                        !code.is_empty()
                            && !["08", "40", "53", "57", "58"]
                                .iter()
                                .any(|class| code.starts_with(class))
                    }
                }
            }
            Error::Database(
                sqlx::Error::Encode(_) | sqlx::Error::ColumnDecode { .. } | sqlx::Error::Decode(_),
            ) => true,
            _ => false,
        }
    }
}

/// Opens the store a URL names: [`PgStore`] for `postgres://` and `postgresql://`,
/// [`SqliteStore`] for `sqlite://FILE` (created if missing; `sqlite::memory:` for a
/// throwaway in-memory database). Migrations are not applied: call [`Store::migrate`].
pub async fn connect(url: &str) -> Result<Arc<dyn Store>, Error> {
    connect_with(url, &ConnectOptions::default()).await
}

/// How [`connect_with`] opens a store.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ConnectOptions {
    /// Connections in the PostgreSQL pool (default 16), plus one of its own for lease renewals.
    /// A worker holds one for LISTEN for its whole life, and a process awaiting sagas' ends
    /// (`Engine::wait_for_end`) one more for all its waiters, from the first wait on; steps,
    /// webhooks and probes take one only while they read or commit. The embedded SQLite store ignores it (one writer, four
    /// readers).
    pub max_connections: u32,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        ConnectOptions {
            max_connections: 16,
        }
    }
}

impl ConnectOptions {
    /// Sets [`ConnectOptions::max_connections`].
    pub fn max_connections(mut self, n: u32) -> Self {
        self.max_connections = n;
        self
    }
}

/// [`connect`] with options (pool size).
pub async fn connect_with(url: &str, options: &ConnectOptions) -> Result<Arc<dyn Store>, Error> {
    let scheme = url
        .split_once(':')
        .map(|(scheme, _)| scheme.to_ascii_lowercase())
        .unwrap_or_default();
    match scheme.as_str() {
        "postgres" | "postgresql" => Ok(Arc::new(PgStore::connect_with(url, options).await?)),
        "sqlite" => Ok(Arc::new(SqliteStore::connect(url).await?)),
        _ => Err(Error::UnsupportedUrl { scheme }),
    }
}

/// Checks the migrations recorded in a store's `paysaga_migrations` table (version,
/// checksum, success) against those this build embeds, as sqlx's migrator does.
fn check_applied_migrations(
    known: &sqlx::migrate::Migrator,
    applied: &[(i64, Vec<u8>, bool)],
) -> Result<(), Error> {
    use sqlx::migrate::MigrateError;
    for (version, checksum, success) in applied {
        if !success {
            return Err(Error::MigrationDirty { version: *version });
        }
        match known.iter().find(|m| m.version == *version) {
            None => return Err(MigrateError::VersionMissing(*version).into()),
            Some(m) if m.checksum.as_ref() != checksum.as_slice() => {
                return Err(MigrateError::VersionMismatch(*version).into())
            }
            Some(_) => {}
        }
    }
    Ok(())
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
    /// Creates a saga as [`Store::create_saga`] does and, in the same commit, gives it to
    /// `worker` if that worker is live (`owner` set, `fence` 1, as a claim leaves it; no
    /// wake-up sent): an engine whose own process runs a worker hands it the new saga
    /// without the NOTIFY, wake-up and claim round trips. The returned record's `owner`
    /// says whether it was given; when it was not (a worker no longer live, a saga with a
    /// concurrency key, or a store without this path: the default), it is unowned and
    /// workers are woken as by [`Store::create_saga`]. An existing saga of the key is
    /// returned as it is.
    async fn create_saga_for(
        &self,
        new: NewSaga,
        worker: Uuid,
    ) -> Result<(SagaRecord, bool), Error> {
        let _ = worker;
        self.create_saga(new).await
    }
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
    /// Marks a worker stopped and releases every saga it holds; returns how many. Same as
    /// [`Store::stop_worker_because`] with a generic reason.
    async fn stop_worker(&self, worker: Uuid) -> Result<u64, Error> {
        self.stop_worker_because(worker, "worker stopped").await
    }
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
    /// same idempotency key); `false` when the worker no longer held it. Same as
    /// [`Store::give_back`] with a generic reason.
    async fn release(&self, saga: Uuid, worker: Uuid, fence: i64) -> Result<bool, Error> {
        self.give_back(saga, worker, fence, "given back by its worker")
            .await
    }
    /// Applies a transition in one transaction, checking the lease and fencing token.
    async fn commit(&self, commit: Commit<'_>) -> Result<Committed, Error>;
    /// Records, under the same fence as a commit, that the holder of `saga` is about to send
    /// step `step`'s request whose effect the provider cannot deduplicate. The mark keeps the
    /// end of the sender's effect window (`now + window`), so a worker configured with a
    /// shorter window (a rolling change) still honours it. Refused with [`EffectMark::Wait`]
    /// while an earlier mark on the same step holds: until the later of its stored end and
    /// its time + this caller's `window` (that attempt's request may still land: look again
    /// once the window has closed); [`Error::LeaseLost`] when the worker no longer holds the
    /// saga. A mark made writes an `effect_marked` history row in the same transaction.
    async fn mark_effect(&self, mark: EffectMarkRequest<'_>) -> Result<EffectMark, Error>;
    /// Withdraws the holder's mark on step `mark.step` (its request surely did not take
    /// effect; `mark.window` is not used), with an `effect_mark_withdrawn` history row;
    /// `false` when there was none or the worker no longer holds the saga.
    async fn clear_effect_mark(&self, mark: EffectMarkRequest<'_>) -> Result<bool, Error>;

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

    /// [`Store::wakeups`] for a worker registered with [`Assignments`] keyed `listener`:
    /// also the sagas handed to it ([`Wakeup::Assigned`]) and the listening connection's
    /// reconnections. A store that hands no sagas this way gives [`Store::wakeups`].
    async fn worker_wakeups(&self, listener: Uuid) -> Result<WakeupsBox, Error> {
        let _ = listener;
        self.wakeups().await
    }

    /// Begins awaiting saga `id`'s end (a status where `SagaStatus::is_final` holds:
    /// completed, compensated, needs_operator, cancelled, closed); `None` if there is no such
    /// saga. In this order, so that no end is missed: subscribe to this process's end
    /// signals, make sure they are heard (PostgreSQL: the store's one LISTEN connection on
    /// `paysaga_saga_ended`, shared by every waiter of the process and opened by the first
    /// one; not waited for longer than a few seconds), then mark the saga awaited and read
    /// it in one statement ([`EndWatch::saga`]). Only awaited sagas notify their end
    /// (PostgreSQL: a row trigger guarded by the `awaited` column, so the last commit of a
    /// saga nobody awaits sends nothing; SQLite: the store's own commits and operator
    /// actions signal this process's waiters). Ends are hints: callers read the saga again
    /// after [`EndWatch::changed`] and also poll (another process's SQLite write, a
    /// listener that is down).
    async fn watch_end(&self, id: Uuid) -> Result<Option<EndWatch>, Error>;

    /// Begins awaiting the end of saga `id` before it exists, for a start that inserts it
    /// with [`NewSaga::awaited`] (which marks it in the insert, where [`Store::watch_end`]
    /// marks it afterwards): subscribes to this process's end signals and makes sure they are
    /// heard, as [`Store::watch_end`] does, and reads or writes nothing. An end committed by
    /// this store's own worker is signalled by its commit; another process's by the end's
    /// notification.
    async fn end_signal(&self, id: Uuid) -> Result<EndSignal, Error>;

    /// The sagas `worker` holds, with their fencing tokens (index `paysaga_sagas_owner`): a
    /// worker compares them with the sagas it runs and releases the others (a claim whose
    /// reply was lost).
    async fn owned_sagas(&self, worker: Uuid) -> Result<Vec<(Uuid, i64)>, Error>;
    /// The database's clock (leases and effect marks are measured with it; workers schedule
    /// with it too).
    async fn db_now(&self) -> Result<DateTime<Utc>, Error>;
    /// Gives a claimed saga back without changing it and records why (a `saga_released`
    /// history row naming the worker, the fence and `reason`, in the same transaction);
    /// `false` (and no row) when the worker no longer held it.
    async fn give_back(
        &self,
        saga: Uuid,
        worker: Uuid,
        fence: i64,
        reason: &str,
    ) -> Result<bool, Error>;
    /// Marks a worker stopped and releases every saga it holds, each with a `saga_released`
    /// history row giving `reason` and the step and attempt it was at (in the same
    /// transaction); returns how many.
    async fn stop_worker_because(&self, worker: Uuid, reason: &str) -> Result<u64, Error>;
    /// The saga a workflow's idempotency key started, if any.
    async fn find_saga_by_key(
        &self,
        workflow: &str,
        key: &str,
    ) -> Result<Option<SagaRecord>, Error>;
    /// Delivers an operator's event to saga `saga` only: stores it in the inbox, ends the
    /// saga's wait (which must match the event's provider, key and type, else
    /// [`Error::Refused`] and nothing is stored) and appends `entry` under `actor`, all in
    /// one transaction.
    async fn deliver_to_saga(
        &self,
        saga: Uuid,
        event: NewEvent,
        actor: &str,
        entry: paysaga_core::HistoryEntry,
    ) -> Result<Delivery, Error>;
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
    /// [`Store::operator_apply`] with what some actions write besides the transition: the
    /// closed outcome, a new input, fresh idempotency key generations; optionally refused
    /// while a worker holds the saga. One transaction.
    async fn operator_apply_with(
        &self,
        action: OperatorAction<'_>,
        change: OperatorChange<'_>,
    ) -> Result<SagaRecord, Error>;
    /// Operator history rows across sagas (every row with an actor, starts excepted), newest
    /// first; served by the partial index `paysaga_history_operator`.
    async fn operator_history(&self, filter: &AuditFilter) -> Result<Vec<AuditRecord>, Error>;
    /// [`Store::request_cancel`] with the `cancel_requested` row's whole detail (the reason
    /// and who ran the command, e.g. `{"reason": ..., "os_user": ...}`).
    async fn request_cancel_with(
        &self,
        id: Uuid,
        actor: &str,
        detail: serde_json::Value,
    ) -> Result<SagaRecord, Error>;
    /// The references (provider object ids) saga `saga`'s steps returned, in the order stored.
    async fn saga_references(&self, saga: Uuid) -> Result<Vec<SagaReference>, Error>;
    /// The step kinds of each live worker (not stopped, lease not expired).
    async fn live_worker_kinds(&self) -> Result<Vec<Vec<String>>, Error>;
    /// Unfinished sagas (scheduled, retrying, waiting, compensating) that no live worker can
    /// run: no live worker has every step kind of their definition (a worker claims only
    /// those). `missing_kinds`: the kinds of the definition no live worker has.
    async fn sagas_no_live_worker_can_run(&self) -> Result<Vec<UnrunnableGroup>, Error>;
    /// Computes the operator gauges and stores them, if `req.instance` holds the gauge lease
    /// or takes it (free, its own or expired); `None` when another process holds it. Reads
    /// only open sagas (by status, through an index) and the sagas created since the last
    /// refresh: its cost does not grow with the number of finished sagas.
    async fn refresh_gauges(&self, req: GaugeRequest) -> Result<Option<GaugeSnapshot>, Error>;
    /// The gauges last stored by [`Store::refresh_gauges`] (any process).
    async fn gauges(&self) -> Result<Option<GaugeSnapshot>, Error>;
    /// One worker's turn of the operator gauges: [`Store::refresh_gauges`], and when another
    /// process holds the lease, the gauges it stored ([`Store::gauges`]). A store may do it
    /// in one transaction (PostgreSQL does: an idle worker's turn is one transaction).
    async fn gauge_turn(&self, req: GaugeRequest) -> Result<GaugeTurn, Error> {
        Ok(match self.refresh_gauges(req).await? {
            Some(computed) => GaugeTurn::Computed(computed),
            None => GaugeTurn::Stored(self.gauges().await?),
        })
    }
    /// [`Store::reap_expired_workers`], and when the next lease of a live worker other than
    /// `worker` expires (the database's clock): the reaper sleeps until then instead of
    /// looking every second.
    async fn reap_expired_leases(&self, worker: Uuid) -> Result<Reaped, Error>;
    /// Retention: deletes up to `limit` sagas in [`PRUNABLE_STATUSES`] that finished more
    /// than `older_than` ago (oldest first), with their history, waits, the inbox events they
    /// consumed and their documents, in one short transaction. Parked and unfinished sagas
    /// are never deleted. [`Pruned::busy`] when another pruner holds the retention lock (one
    /// pruner at a time); nothing is deleted then.
    async fn prune_finished(&self, older_than: Duration, limit: i64) -> Result<Pruned, Error>;
    /// How many sagas [`Store::prune_finished`] would delete (a dry run).
    async fn count_prunable(&self, older_than: Duration) -> Result<u64, Error>;

    /// Takes the next free request slot of a provider budget shared by every worker (created on
    /// first use), in one atomic step: the slot is the later of the budget's next free time
    /// and `now - (burst - 1) * interval` (a quiet budget lets `burst` requests go at once);
    /// if it is no further than `max_wait` away, it is taken and the next free time moves on
    /// by one interval (two while the budget is slowed), else nothing is reserved.
    async fn reserve_request_slot(&self, request: &SlotRequest<'_>) -> Result<RequestSlot, Error>;
    /// A provider refused a request for lack of capacity (429): no slot of the budget is free
    /// before `now + pause` (its `Retry-After`), and the budget runs at half its rate until
    /// `now + slow_for`. Never loosens a budget another worker tightened further.
    async fn throttle_requests(
        &self,
        provider: &str,
        credential: &str,
        pause: Duration,
        slow_for: Duration,
    ) -> Result<(), Error>;
    /// The open sagas holding a slot of concurrency key `key`, oldest first: those a queued
    /// saga of that key waits behind (`paysaga show`).
    async fn concurrency_holders(&self, key: &str) -> Result<Vec<Uuid>, Error>;
    /// Gives the free slots of every concurrency key to its oldest queued sagas (each key
    /// under its own lock; returns how many sagas got one). A safety net: a saga that ends
    /// hands its slot on at once in its own commit's store call, and a start takes a free one
    /// in its transaction; this catches a hand-over lost to a crash between the two. Each
    /// worker runs it with its reaper ([`Store::reap_expired_leases`]).
    async fn admit_queued(&self) -> Result<u64, Error>;

    /// Starts children of fan-out step `req.step` in one transaction, under the parent's
    /// fence (owner, fencing token, live lease: else [`Error::LeaseLost`] and nothing is
    /// written): each child (`scheduled`, with its parent link and `saga_started` history
    /// row) unless a saga with its idempotency key exists (a fan-out run again after a crash
    /// starts no child twice); the step's counter row records `total` and `started`
    /// (`index + 1` of the last child). Returns how many children were inserted.
    async fn start_children(&self, req: StartChildren<'_>) -> Result<u64, Error>;
    /// The counters of `parent`'s fan-out step `step` (`None` before its first children).
    /// A child that ends for good (completed, compensated, cancelled, closed) counts itself
    /// and wakes its waiting parent in the transaction that ends it.
    async fn fan_out_progress(
        &self,
        parent: Uuid,
        step: &str,
    ) -> Result<Option<paysaga_core::FanOutProgress>, Error>;
    /// The children of `parent`'s fan-out step `step`, in item order, with their outputs if
    /// `with_outputs` (index `paysaga_sagas_children`).
    async fn child_sagas(
        &self,
        parent: Uuid,
        step: &str,
        with_outputs: bool,
    ) -> Result<Vec<ChildSaga>, Error>;
    /// How many children of `parent` are in each observed status, per fan-out step.
    async fn child_counts(&self, parent: Uuid) -> Result<Vec<ChildCount>, Error>;
    /// The children of `parent` (any step) as sagas, in step and item order, only those in
    /// `statuses` if any, at most `limit` after `offset`.
    async fn list_children(
        &self,
        parent: Uuid,
        statuses: &[paysaga_core::ObservedStatus],
        limit: i64,
        offset: i64,
    ) -> Result<Vec<SagaRecord>, Error>;
    /// Asks every unfinished child of `parent` (scheduled, retrying, waiting) to cancel, as
    /// [`Store::request_cancel_with`] does for one saga (a `cancel_requested` history row
    /// each, with `detail`); returns how many.
    async fn cancel_children(
        &self,
        parent: Uuid,
        actor: &str,
        detail: serde_json::Value,
    ) -> Result<u64, Error>;
    /// The safety net of the cancel cascade: asks to cancel every unfinished child (not asked
    /// yet) whose parent unwinds or has ended otherwise than completed (cancel requested,
    /// compensating, compensated, cancelled, closed, or a pending close), whoever left it so
    /// (a crash between a cancel or close and its cascade; a grandchild of a cancelled
    /// campaign). Each worker's reaper calls it; served by the partial index
    /// `paysaga_sagas_open_children` (unfinished children not asked yet). Returns how many.
    async fn cascade_cancels(&self) -> Result<u64, Error>;
    /// Wakes `parent` if it waits unheld (its `run_at` becomes now): the worker calls it after
    /// committing a fan-in wait when a child ended meanwhile. `true` when woken.
    async fn wake_fan_in(&self, parent: Uuid) -> Result<bool, Error>;
    /// The parent of a child saga (`None` for a saga started otherwise).
    async fn parent_of(&self, child: Uuid) -> Result<Option<ParentLink>, Error>;

    /// Reconciliation: the references named `names` (`payable_id`, `transaction_id`, ...) of
    /// sagas created at or after `since` (all when `None`), each with its saga's status.
    async fn reconciliation_references(
        &self,
        names: &[&str],
        since: Option<DateTime<Utc>>,
    ) -> Result<Vec<ReconcileReference>, Error>;
    /// Reconciliation: which of `values` some saga's step returned as a reference, with the
    /// saga (through the index on the value).
    async fn reference_owners(&self, values: &[String]) -> Result<Vec<(String, Uuid)>, Error>;
    /// Takes the periodic reconciler's lease for `lease` if free, expired or already
    /// `instance`'s (as the gauge lease); `false` when another process holds it.
    async fn take_reconciler_lease(&self, instance: Uuid, lease: Duration) -> Result<bool, Error>;
    /// Stores a reconciliation run and its findings in one transaction; keeps the last 100
    /// runs. Returns the run's id.
    async fn store_reconciliation(&self, run: &NewReconciliation) -> Result<i64, Error>;
    /// The latest stored reconciliation run, with its findings in order.
    async fn last_reconciliation(&self) -> Result<Option<Reconciliation>, Error>;
    /// The stored reconciliation run `id` (as [`Store::store_reconciliation`] returned it), with
    /// its findings in order; `None` if there is none (pruned, or another database).
    async fn reconciliation(&self, id: i64) -> Result<Option<Reconciliation>, Error>;
}

/// The statuses in which a saga keeps its concurrency slot: every open one, `needs_operator`
/// included (money may have moved). The SQL of both stores spells the same list.
pub const SLOT_HOLDING_STATUSES: &str =
    "('scheduled', 'retrying', 'waiting', 'compensating', 'needs_operator')";

/// How many reconciliation runs [`Store::store_reconciliation`] keeps (with their findings).
pub const RECONCILIATIONS_KEPT: i64 = 100;

/// The statuses retention deletes: final and closed for good. A parked saga (it waits for an
/// operator) is final for the workers but never pruned.
pub const PRUNABLE_STATUSES: [paysaga_core::SagaStatus; 4] = [
    paysaga_core::SagaStatus::Completed,
    paysaga_core::SagaStatus::Compensated,
    paysaga_core::SagaStatus::Cancelled,
    paysaga_core::SagaStatus::Closed,
];

/// [`PRUNABLE_STATUSES`] as stored text.
fn prunable_statuses() -> Vec<String> {
    PRUNABLE_STATUSES
        .iter()
        .map(|s| s.as_str().to_string())
        .collect()
}

/// Arguments of [`Store::mark_effect`] and [`Store::clear_effect_mark`].
#[derive(Debug, Clone, Copy)]
pub struct EffectMarkRequest<'a> {
    /// The saga.
    pub saga: Uuid,
    /// The worker holding it.
    pub worker: Uuid,
    /// Its fencing token.
    pub fence: i64,
    /// The step's index.
    pub step: i32,
    /// The step's name (history).
    pub step_name: &'a str,
    /// The attempt about to send (history).
    pub attempt: u32,
    /// This worker's effect window: how long another attempt must not send after the mark.
    pub window: Duration,
}

/// Whether two saga inputs are the same JSON value: object key order does not matter and
/// numbers compare by value (`1e2`, `100.0` and `100` are equal), as PostgreSQL's `jsonb`
/// and SQLite's text store them differently. Used to tell a retried start from a reused key.
pub fn same_input(a: &serde_json::Value, b: &serde_json::Value) -> bool {
    use serde_json::Value;
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => same_number(x, y),
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(v, w)| same_input(v, w))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| same_input(v, w)))
        }
        _ => a == b,
    }
}

fn same_number(x: &serde_json::Number, y: &serde_json::Number) -> bool {
    let int = |n: &serde_json::Number| {
        n.as_i64()
            .map(i128::from)
            .or_else(|| n.as_u64().map(i128::from))
    };
    match (int(x), int(y)) {
        (Some(i), Some(j)) => i == j,
        (Some(i), None) => float_is_int(y.as_f64(), i),
        (None, Some(j)) => float_is_int(x.as_f64(), j),
        (None, None) => x.as_f64() == y.as_f64(),
    }
}

/// A float equal to an integer: integral, and exactly that integer (no rounding).
fn float_is_int(f: Option<f64>, i: i128) -> bool {
    match f {
        Some(f) if f.is_finite() && f.fract() == 0.0 && f.abs() < 1.7e38 => f as i128 == i,
        _ => false,
    }
}

/// A boxed [`Wakeups`] stream.
pub type WakeupsBox = Box<dyn Wakeups>;

/// A caller awaiting one saga's end, from [`Store::watch_end`]; stops when dropped.
#[derive(Debug)]
pub struct EndWatch {
    /// The saga as read when the watch began (already marked awaited): if its status is
    /// final there is nothing to wait for.
    pub saga: SagaRecord,
    /// Its end signals (see [`EndSignal::changed`]).
    pub signal: EndSignal,
}

impl EndWatch {
    /// See [`EndSignal::changed`].
    pub async fn changed(&mut self) {
        self.signal.changed().await;
    }
}

/// A caller's subscription to one saga's end signals, from [`Store::end_signal`] (or inside
/// an [`EndWatch`]); stops when dropped.
#[derive(Debug)]
pub struct EndSignal(ended::Subscription);

impl EndSignal {
    /// Returns when the saga may have ended (its end was notified or committed by this
    /// store) or when an end may have been missed (the listening connection dropped or came
    /// back): read the saga again then. Does not return otherwise, however long: callers keep
    /// their own deadline and polling fallback beside it.
    pub async fn changed(&mut self) {
        self.0.changed().await;
    }
}

/// Notifications that runnable work may exist.
#[async_trait]
pub trait Wakeups: Send {
    /// Waits for the next notification.
    async fn recv(&mut self) -> Result<(), Error>;

    /// Waits for the next notification and says what it is (a stream from
    /// [`Store::worker_wakeups`] tells a saga handed to its worker apart).
    async fn next(&mut self) -> Result<Wakeup, Error> {
        self.recv().await.map(|()| Wakeup::Runnable)
    }
}

/// One notification of a [`Wakeups`] stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wakeup {
    /// Runnable work may exist: claim.
    Runnable,
    /// A start inserted saga `saga` held by the listening worker (see [`Assignments`]): it is
    /// the worker's to run, with no claim.
    Assigned {
        /// The new saga.
        saga: Uuid,
    },
    /// The listening connection was lost and is back: notifications sent in between were
    /// lost, sagas handed to the worker among them.
    Reconnected,
}

/// The answer to [`Store::gauge_turn`].
#[derive(Debug, Clone, PartialEq)]
pub enum GaugeTurn {
    /// This process holds the gauge lease and computed (and stored) the gauges.
    Computed(GaugeSnapshot),
    /// Another process holds the lease: the gauges it last stored, if any.
    Stored(Option<GaugeSnapshot>),
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
    /// References of the saga the committed step returned (see [`SagaReference`]), stored in
    /// the same transaction (a reference already stored is kept once).
    pub references: &'a [SagaReference],
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

/// A start whose key already names `existing`: the saga when the input is the same (see
/// [`same_input`]), else [`Error::KeyReused`].
/// A stored `closed_outcome`.
fn closed_outcome(text: Option<String>) -> Result<Option<paysaga_core::ClosedOutcome>, Error> {
    text.map(|t| t.parse().map_err(Error::Corrupt)).transpose()
}

/// A stored `close_requested` (a pending `close --compensate`).
fn close_request(
    value: Option<serde_json::Value>,
) -> Result<Option<paysaga_core::CloseRequest>, Error> {
    value
        .map(serde_json::from_value)
        .transpose()
        .map_err(|e| Error::Corrupt(format!("saga close_requested: {e}")))
}

/// Refuses a cancel of a saga unwinding for a pending `close --compensate`: it already
/// undoes its steps and ends closed with the declared outcome.
fn refuse_cancel_while_closing(saga: &SagaRecord) -> Result<(), Error> {
    match &saga.close_requested {
        Some(req) => Err(Error::Refused(format!(
            "saga {} is already undoing its completed steps because {} closed it with --compensate (outcome {}): it ends closed with that outcome when they are undone, so there is nothing to cancel; to end it now without undoing the rest, `close` it without --compensate",
            saga.id, req.actor, req.outcome
        ))),
        None => Ok(()),
    }
}

/// The key generations after an operator action: `stored` with each step of
/// `change.new_key_generation` one higher.
fn next_key_generations(
    saga: Uuid,
    stored: serde_json::Value,
    change: &OperatorChange<'_>,
) -> Result<serde_json::Value, Error> {
    let mut map: std::collections::BTreeMap<String, u32> = serde_json::from_value(stored)
        .map_err(|e| Error::Corrupt(format!("saga {saga} key_generations: {e}")))?;
    for step in change.new_key_generation {
        *map.entry(step.clone()).or_insert(0) += 1;
    }
    serde_json::to_value(map).map_err(|e| Error::Corrupt(e.to_string()))
}

/// What both stores check before applying an operator change: no worker holds the saga when
/// required, and a closed outcome exactly with status `closed`.
fn check_operator_change(
    saga: Uuid,
    t: &Transition,
    owner: Option<Uuid>,
    change: &OperatorChange<'_>,
) -> Result<(), Error> {
    if let (true, Some(worker)) = (change.require_unheld, owner) {
        return Err(Error::Refused(format!(
            "saga {saga} is running: worker {worker} holds it and is running its current step; wait until it lets go (`paysaga show {saga}` no longer shows a lease), then act again"
        )));
    }
    if change.close_request.is_some() && t.status != paysaga_core::SagaStatus::Compensating {
        return Err(Error::Refused(format!(
            "saga {saga}: a close request is stored only with an unwind (status compensating), not with status {}",
            t.status
        )));
    }
    let closing = t.status == paysaga_core::SagaStatus::Closed;
    if closing != change.closed_outcome.is_some() {
        return Err(Error::Refused(format!(
            "saga {saga}: a closed saga needs its declared outcome, and only a closed one has one (status {}, outcome {:?})",
            t.status, change.closed_outcome
        )));
    }
    Ok(())
}

/// What to do instead of cancelling a saga in `status` (a final one), for the refusal.
fn cancel_refusal_hint(status: paysaga_core::SagaStatus) -> &'static str {
    if status == paysaga_core::SagaStatus::NeedsOperator {
        "; it is parked for an operator: `close` it with the outcome, `reset` it to a step, `resume` it or `skip` the step"
    } else {
        "; it has ended"
    }
}

/// The stored statuses a worker can hold, shown as `running` while one does.
const HOLDABLE: &str = "('scheduled', 'retrying', 'waiting')";

/// The statuses filter of a saga listing, shared by both stores: `member(x)` is the store's
/// SQL for "x is one of the asked (observed) statuses". A stored status matches itself unless
/// a worker holds the saga, and `running` matches the held ones; the stored status is
/// compared as a column, so a status index still serves it.
fn status_filter_sql(member: impl Fn(&str) -> String) -> String {
    format!(
        "({} AND (s.owner IS NULL OR s.status NOT IN {HOLDABLE})
          OR ({} AND s.owner IS NOT NULL AND s.status IN {HOLDABLE}))",
        member("s.status"),
        member("'running'")
    )
}

/// One row of a store's gauge query: open sagas of a workflow in one observed status.
struct GaugeRow {
    workflow: String,
    status: String,
    sagas: i64,
    oldest_wait: Option<DateTime<Utc>>,
    past_deadline: i64,
    stuck: i64,
}

/// The open statuses the gauges count (`running` is derived from the owner).
const OPEN: &str = "('scheduled', 'retrying', 'waiting', 'compensating', 'needs_operator')";

/// The snapshot of gauge rows and the started counts, at `now`.
fn gauge_snapshot(
    now: DateTime<Utc>,
    started: &std::collections::BTreeMap<String, i64>,
    rows: Vec<GaugeRow>,
    unrunnable: Vec<UnrunnableGroup>,
) -> GaugeSnapshot {
    let mut workflows: std::collections::BTreeMap<String, WorkflowGauges> = started
        .iter()
        .map(|(w, n)| {
            (
                w.clone(),
                WorkflowGauges {
                    started: *n,
                    ..Default::default()
                },
            )
        })
        .collect();
    for row in rows {
        let g = workflows.entry(row.workflow).or_default();
        *g.by_status.entry(row.status).or_default() += row.sagas;
        if let Some(since) = row.oldest_wait {
            let age = (now - since).num_milliseconds().max(0) as f64 / 1000.0;
            g.oldest_wait_seconds = g.oldest_wait_seconds.max(age);
        }
        g.waits_past_deadline += row.past_deadline;
        g.stuck += row.stuck;
    }
    for group in unrunnable {
        let g = workflows.entry(group.workflow).or_default();
        g.unrunnable += group.sagas;
        for kind in group.missing_kinds {
            if !g.missing_kinds.contains(&kind) {
                g.missing_kinds.push(kind);
            }
        }
    }
    GaugeSnapshot {
        computed_at: now,
        workflows,
    }
}

fn existing_for_key(existing: SagaRecord, new: NewSaga) -> Result<(SagaRecord, bool), Error> {
    if same_input(&existing.input, &new.input) {
        return Ok((existing, false));
    }
    Err(Error::KeyReused {
        workflow: new.workflow,
        key: new.idempotency_key.unwrap_or_default(),
        saga: existing.id,
    })
}

/// The time between two requests of a budget: its interval, doubled while it is slowed.
pub(crate) fn budget_step(interval: Duration, slowed: bool) -> chrono::Duration {
    let interval = if slowed {
        interval.saturating_mul(2)
    } else {
        interval
    };
    chrono::Duration::from_std(interval).unwrap_or(chrono::Duration::MAX)
}

/// The slot a budget whose next free time is `next_free` (`None`: a new budget, quiet) gives
/// `request` at `now` (the embedded store's arithmetic; PostgreSQL does the same in SQL).
pub(crate) fn budget_slot(
    request: &SlotRequest<'_>,
    next_free: Option<DateTime<Utc>>,
    slowed: bool,
    now: DateTime<Utc>,
) -> RequestSlot {
    let step = budget_step(request.interval, slowed);
    let burst_window = step * (i32::try_from(request.burst.max(1)).unwrap_or(i32::MAX) - 1);
    let quiet = now
        .checked_sub_signed(burst_window)
        .unwrap_or(DateTime::<Utc>::MIN_UTC);
    let at = next_free.map_or(quiet, |next| next.max(quiet));
    let horizon = chrono::Duration::from_std(request.max_wait).unwrap_or(chrono::Duration::MAX);
    let granted = at
        <= now
            .checked_add_signed(horizon)
            .unwrap_or(DateTime::<Utc>::MAX_UTC);
    RequestSlot {
        granted,
        at,
        now,
        slowed,
    }
}

/// The history row of a commit the fence refused.
fn refused_commit_entry(c: &Commit<'_>) -> paysaga_core::HistoryEntry {
    let t = c.transition;
    let step = t.history.iter().find_map(|h| h.step.clone());
    let attempt = t.history.iter().find_map(|h| h.attempt);
    paysaga_core::HistoryEntry {
        kind: paysaga_core::HistoryKind::CommitRefused,
        step,
        attempt,
        error: Some(format!(
            "worker {} no longer held the saga (fencing token {} is stale or its lease lapsed): \
             its result was not stored; the saga's holder runs the step again",
            c.worker, c.fence
        )),
        detail: serde_json::json!({
            "worker": c.worker,
            "fence": c.fence,
            "status": t.status.as_str(),
            "step_index": t.step_index,
            "attempt": t.attempt,
            "refused_entries": t.history.iter().map(|h| h.kind.as_str()).collect::<Vec<_>>(),
            "last_error": t.last_error,
        }),
    }
}

/// The history row of a saga its worker gave back without a result.
fn released_entry(
    worker: Uuid,
    fence: i64,
    status: String,
    step_index: i32,
    attempt: i32,
    reason: &str,
) -> paysaga_core::HistoryEntry {
    paysaga_core::HistoryEntry {
        kind: paysaga_core::HistoryKind::SagaReleased,
        step: None,
        attempt: u32::try_from(attempt).ok().filter(|a| *a > 0),
        error: None,
        detail: serde_json::json!({
            "reason": reason,
            "worker": worker,
            "fence": fence,
            "status": status,
            "step_index": step_index,
        }),
    }
}

/// The `saga_started` history row of a new saga (both stores).
fn saga_started_entry(new: &NewSaga) -> paysaga_core::HistoryEntry {
    paysaga_core::HistoryEntry {
        kind: paysaga_core::HistoryKind::SagaStarted,
        step: None,
        attempt: None,
        error: None,
        detail: serde_json::json!({"definition_id": new.definition_id, "version": new.version,
                                   "idempotency_key": new.idempotency_key}),
    }
}

/// The history row of an effect mark.
fn effect_marked_entry(
    m: &EffectMarkRequest<'_>,
    marked_at: DateTime<Utc>,
    until: DateTime<Utc>,
) -> paysaga_core::HistoryEntry {
    paysaga_core::HistoryEntry {
        kind: paysaga_core::HistoryKind::EffectMarked,
        step: Some(m.step_name.to_string()),
        attempt: Some(m.attempt),
        error: None,
        detail: serde_json::json!({
            "worker": m.worker,
            "fence": m.fence,
            "step_index": m.step,
            "marked_at": marked_at,
            "window_ms": u64::try_from(m.window.as_millis()).unwrap_or(u64::MAX),
            "until": until,
        }),
    }
}

/// The history row of a withdrawn effect mark.
fn effect_withdrawn_entry(m: &EffectMarkRequest<'_>) -> paysaga_core::HistoryEntry {
    paysaga_core::HistoryEntry {
        kind: paysaga_core::HistoryKind::EffectMarkWithdrawn,
        step: Some(m.step_name.to_string()),
        attempt: Some(m.attempt),
        error: None,
        detail: serde_json::json!({"worker": m.worker, "fence": m.fence, "step_index": m.step}),
    }
}

/// Children counts by observed status (`running`: held by a worker), per step, from the
/// stored (step, status, held, count) groups.
/// The actor of a cancel a parent asks of its children.
fn parent_actor(parent: Uuid) -> String {
    format!("parent {parent}")
}

/// The detail of the `cancel_requested` rows of a parent's children: why (`why`: what
/// happened to the parent).
fn cascade_detail(parent: Uuid, why: &str) -> serde_json::Value {
    serde_json::json!({"reason": format!("parent saga {parent} {why}"), "parent": parent})
}

/// The operator transitions after which a parent's unfinished children are asked to cancel:
/// it unwinds, ends otherwise than completed, or a close is pending.
fn operator_cascades(t: &paysaga_core::Transition, change: &OperatorChange<'_>) -> bool {
    use paysaga_core::SagaStatus as S;
    change.close_request.is_some()
        || matches!(
            t.status,
            S::Compensating | S::Compensated | S::Cancelled | S::Closed
        )
}

fn child_counts_of(raw: Vec<(String, paysaga_core::SagaStatus, bool, u64)>) -> Vec<ChildCount> {
    let mut out: Vec<ChildCount> = Vec::new();
    for (step, status, held, n) in raw {
        let status = paysaga_core::ObservedStatus::of(status, held);
        match out
            .iter_mut()
            .find(|c| c.step == step && c.status == status)
        {
            Some(c) => c.count += n,
            None => out.push(ChildCount {
                step,
                status,
                count: n,
            }),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::same_input;
    use serde_json::json;

    #[test]
    fn inputs_compare_as_values_not_as_text() {
        let parse = |t: &str| serde_json::from_str::<serde_json::Value>(t).unwrap_or_default();
        assert!(same_input(
            &parse(r#"{"a": 1e2, "b": [1, 2]}"#),
            &json!({"b": [1, 2], "a": 100})
        ));
        assert!(same_input(&parse("100.0"), &json!(100)));
        assert!(same_input(&parse("-3"), &parse("-3.0")));
        assert!(!same_input(&parse("100.5"), &json!(100)));
        assert!(!same_input(&json!("100"), &json!(100)));
        assert!(!same_input(&json!([1, 2]), &json!([2, 1])));
        assert!(!same_input(&json!({"a": 1}), &json!({"a": 1, "b": null})));
        assert!(!same_input(&json!(u64::MAX), &json!(-1)));
    }
}
