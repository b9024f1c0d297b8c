//! The PostgreSQL store. All of paysaga's SQL lives in this file.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use paysaga_core::{ActiveWait, Definition, Event, HistoryEntry, SagaStatus};
use serde_json::{json, Value};
use sqlx::postgres::{PgConnectOptions, PgListener, PgPool, PgPoolOptions, PgRow};
use sqlx::{Connection, Postgres, Row, Transaction};
use tracing::{instrument, warn};
use uuid::Uuid;

use crate::ended::EndSignals;
use crate::SagaReference;
use crate::{AuditFilter, AuditRecord, OperatorChange};
use crate::{ChildCount, ChildSaga, ParentLink, StartChildren};
use crate::{
    ClaimedSaga, Commit, Committed, DefinitionRecord, Delivery, EffectMark, EffectMarkRequest,
    Error, EventFilter, EventRecord, HistoryRecord, NewEvent, NewSaga, OperatorAction, SagaFilter,
    SagaRecord, Stats, Store, UnrunnableGroup, WakeupsBox, WorkerInfo,
};
use crate::{DocumentRecord, NewDocument};
use crate::{DriftRecord, NewReconciliation, ReconcileReference, Reconciliation};
use crate::{GaugeRequest, GaugeSnapshot, GaugeTurn};
use crate::{Pruned, Reaped};
use crate::{RequestSlot, SlotRequest};
use paysaga_core::DocumentId;

mod group;
mod kept;

/// The migrations in `migrations/`, embedded at build time.
static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations");

/// The channel workers LISTEN on for new runnable work.
const WAKEUP_CHANNEL: &str = "paysaga_wakeup";

/// The channel the trigger `paysaga_saga_ended` notifies (payload: the saga id) when an
/// awaited saga reaches a final status (migration `20261127160701_await_end.sql`).
const ENDED_CHANNEL: &str = "paysaga_saga_ended";

/// How long [`Store::watch_end`] waits for the shared LISTEN connection before it marks the
/// saga awaited anyway (its caller then relies on polling until the listener is up).
const LISTENER_READY_WITHIN: Duration = Duration::from_secs(3);

/// The longest pause between two attempts of the end listener to (re)connect.
const LISTENER_RETRY_MAX: Duration = Duration::from_secs(5);

const SAGA_COLUMNS: &str = "id, definition_id, workflow, version, idempotency_key, input, status, \
    step_index, attempt, step_started_at, run_at, owner, fence, outputs, wait, wake_event, \
    last_error, cancel_requested, created_at, updated_at, finished_at, effect_possible, effect_step, \
    closed_outcome, key_generations, close_requested, concurrency_key, concurrency_limit, concurrency_held, trace_context";

const ACTIVE: &str = "('scheduled', 'retrying', 'waiting', 'compensating')";

/// Per-key concurrency in the claim and `next_due`: a saga with a concurrency key runs its
/// steps only while it holds one of the key's slots; one queued for a slot is taken only to
/// apply a cancel (it has run no step, so it ends without any). A queued saga has no `run_at`
/// (it is given one with its slot), so it is not due and the claim never meets it: sagas
/// without a key pay one column test on rows the index already found.
const RUNS_ITS_STEPS: &str = "(concurrency_key IS NULL OR concurrency_held OR cancel_requested)";

/// Key space of the per-key concurrency locks (`pg_advisory_xact_lock(int, int)` with
/// `hashtext(key)`; apart from the correlation locks' `bigint` and the retention lock).
const CONCURRENCY_LOCK: i32 = 0x7061_7974;

/// Gives the free slots of concurrency key `$1` to its oldest queued sagas, under the key's
/// lock (taken before, so that the counts read what every earlier holder committed). The
/// key's limit is the smallest among its open sagas (definition versions may differ). Served
/// by `paysaga_sagas_concurrency`.
fn admit_sql() -> String {
    let holding = crate::SLOT_HOLDING_STATUSES;
    format!(
        "WITH holders AS (
             SELECT count(*) FILTER (WHERE concurrency_held) AS held,
                    min(concurrency_limit) AS slots
             FROM paysaga_sagas
             WHERE concurrency_key = $1 AND status IN {holding}),
         next AS (
             SELECT id FROM paysaga_sagas
             WHERE concurrency_key = $1 AND NOT concurrency_held AND status IN {holding}
               AND status IN {ACTIVE}
             ORDER BY created_at, id
             LIMIT (SELECT GREATEST(coalesce(slots, 0) - held, 0) FROM holders)
             FOR UPDATE)
         UPDATE paysaga_sagas s SET concurrency_held = true, run_at = now(), updated_at = now()
         FROM next WHERE s.id = next.id
         RETURNING s.id"
    )
}

/// The keys whose queue could take a free slot now (the sweep of [`Store::admit_queued`]):
/// keys with a queued saga and fewer holders than slots. Served by
/// `paysaga_sagas_concurrency`, which holds open keyed sagas only.
fn keys_with_free_slots_sql() -> String {
    let holding = crate::SLOT_HOLDING_STATUSES;
    format!(
        "SELECT q.concurrency_key FROM (
             SELECT DISTINCT concurrency_key FROM paysaga_sagas
             WHERE concurrency_key IS NOT NULL AND NOT concurrency_held
               AND status IN {holding} AND status IN {ACTIVE}) q
         WHERE (SELECT count(*) FILTER (WHERE h.concurrency_held) < min(h.concurrency_limit)
                FROM paysaga_sagas h
                WHERE h.concurrency_key = q.concurrency_key AND h.status IN {holding})
         LIMIT 1000"
    )
}

/// The holders of concurrency key `$1`, oldest first (`paysaga_sagas_concurrency`).
fn holders_sql() -> String {
    format!(
        "SELECT id FROM paysaga_sagas
         WHERE concurrency_key = $1 AND concurrency_held AND status IN {}
         ORDER BY created_at, id",
        crate::SLOT_HOLDING_STATUSES
    )
}

/// Takes the concurrency lock of `key` and gives its free slots to its oldest queued sagas,
/// on `conn` (inside its transaction, which holds the lock until it ends), with the wake-up
/// NOTIFY when one got a slot; returns how many did.
async fn admit_on(conn: &mut sqlx::PgConnection, key: &str) -> Result<u64, Error> {
    sqlx::query("SELECT pg_advisory_xact_lock($1, hashtext($2))")
        .bind(CONCURRENCY_LOCK)
        .bind(key)
        .execute(&mut *conn)
        .await?;
    let admitted = sqlx::query(&admit_sql())
        .bind(key)
        .execute(&mut *conn)
        .await?
        .rows_affected();
    if admitted > 0 {
        sqlx::query("SELECT pg_notify($1, '')")
            .bind(WAKEUP_CHANNEL)
            .execute(&mut *conn)
            .await?;
    }
    Ok(admitted)
}

/// The claim: unowned runnable sagas, oldest due first, skipping rows other workers are
/// claiming; served by the partial index `paysaga_sagas_runnable`, whose size does not grow
/// with finished sagas. `$1` worker, `$2` limit, `$3` the worker's step kinds.
fn claim_sql() -> String {
    let returning: Vec<String> = SAGA_COLUMNS.split(", ").map(|c| format!("s.{c}")).collect();
    format!(
        "WITH me AS (
             SELECT id FROM paysaga_workers
             WHERE id = $1 AND stopped_at IS NULL AND lease_expires_at > now()
             FOR SHARE),
         runnable AS (
             SELECT id FROM paysaga_sagas
             WHERE owner IS NULL AND status IN {ACTIVE} AND run_at <= now()
               AND definition_id IN (SELECT id FROM paysaga_definitions WHERE step_kinds <@ $3::text[])
               AND {RUNS_ITS_STEPS}
               AND EXISTS (SELECT 1 FROM me)
             ORDER BY run_at
             LIMIT $2
             FOR UPDATE SKIP LOCKED)
         UPDATE paysaga_sagas s SET owner = $1, fence = s.fence + 1
         FROM runnable WHERE s.id = runnable.id
         RETURNING {}",
        returning.join(", ")
    )
}

/// When the next unowned saga becomes due (`$1` step kinds); same index as the claim.
fn next_due_sql() -> String {
    format!(
        "SELECT run_at FROM paysaga_sagas
         WHERE owner IS NULL AND status IN {ACTIVE} AND run_at IS NOT NULL
           AND definition_id IN (SELECT id FROM paysaga_definitions WHERE step_kinds <@ $1::text[])
           AND {RUNS_ITS_STEPS}
         ORDER BY run_at LIMIT 1"
    )
}

/// The sagas a worker holds (`$1`), served by the partial index `paysaga_sagas_owner`.
const OWNED_SQL: &str = "SELECT id, fence FROM paysaga_sagas WHERE owner = $1";

/// Whether workflow `$1` has a version newer than `$2` (index
/// `paysaga_definitions_name_version_key`; test `hot_path_queries_use_their_indexes`).
const NEWER_VERSION_SQL: &str =
    "SELECT EXISTS (SELECT 1 FROM paysaga_definitions WHERE name = $1 AND version > $2)";

/// A pooled connection idle at least this long is pinged before it is handed out.
const PING_WHEN_IDLE_FOR: Duration = Duration::from_secs(5);

/// The store's pool settings. sqlx pings every connection it hands out by default: one more
/// round trip before every statement of the hot path (a step's commit, a claim, a start).
/// Here only a connection idle for [`PING_WHEN_IDLE_FOR`] is pinged first (the one that may
/// have been cut while unused, e.g. by a database restart); one that fails is closed and
/// another taken, as sqlx does. A connection that breaks between two busy statements fails
/// the next statement, which every caller already retries or reports. (sqlx also pings every
/// connection given back to the pool, which no option turns off: the hot path keeps its
/// connections instead, see [`kept`].)
fn pool_options() -> PgPoolOptions {
    PgPoolOptions::new()
        .acquire_timeout(Duration::from_secs(10))
        .test_before_acquire(false)
        .before_acquire(|conn, meta| {
            Box::pin(async move {
                if meta.idle_for >= PING_WHEN_IDLE_FOR {
                    conn.ping().await?;
                }
                Ok(true)
            })
        })
}

/// The reaper's release (`$1` the workers just found dead): their sagas and, a safety net
/// (the claim refuses a worker that is not live, so it should find none), any saga still held
/// by a worker stopped earlier. `owner IS NOT NULL` lets the partial index
/// `paysaga_sagas_owner` serve it: that index holds only owned sagas (the work in flight), so
/// the reaper's cost does not grow with finished sagas (an `owner = ANY($1) OR owner IN
/// (...)` without it was a sequential scan of the table).
const REAP_SQL: &str = "UPDATE paysaga_sagas s
     SET owner = NULL, run_at = LEAST(s.run_at, now()), updated_at = now()
     WHERE s.owner IS NOT NULL
       AND (s.owner = ANY($1)
            OR EXISTS (SELECT 1 FROM paysaga_workers w
                       WHERE w.id = s.owner AND w.stopped_at IS NOT NULL))
     RETURNING s.id";

/// When the next lease of a live worker other than `$1` expires (index
/// `paysaga_workers_live`).
const NEXT_EXPIRY_SQL: &str = "SELECT min(lease_expires_at) FROM paysaga_workers
     WHERE stopped_at IS NULL AND id <> $1";

/// The retention lock (`pg_try_advisory_xact_lock(int, int)`, a key space of its own apart
/// from the correlation locks' single `bigint`): one pruner at a time.
const RETENTION_LOCK: (i32, i32) = (0x7061_7973, 1);

/// Finished sagas retention may delete (`$1` seconds since they finished, `$2` the prunable
/// statuses): the partial index `paysaga_sagas_finished`, oldest first.
const PRUNABLE_WHERE: &str = "finished_at < now() - make_interval(secs => $1) AND status = ANY($2)";

/// One retention batch (`$1`, `$2` as [`PRUNABLE_WHERE`], `$3` batch size), a finished
/// campaign as a unit: the oldest prunable sagas that are not children of a saga still
/// stored (a child goes with its parent; a NULL `parent_id` matches no saga) and whose
/// children are all prunable too (locked,
/// skipping rows another transaction holds), with their descendants (`paysaga_sagas_children`)
/// unless one of those is not prunable; then their history, waits, consumed events,
/// documents and fan-out rows, each by its index (`paysaga_history_saga`, the primary key of
/// waits, `paysaga_events_consumed_by`, `paysaga_documents_saga`, the primary key of
/// `paysaga_fan_outs`); the foreign keys are checked at the end of the statement, when the
/// referencing rows are gone. A campaign's children count in the batch's sagas beyond `$3`.
fn prune_sql() -> String {
    format!(
        "WITH RECURSIVE roots AS (
             SELECT r.id FROM paysaga_sagas r WHERE {PRUNABLE_WHERE}
               AND NOT EXISTS (SELECT 1 FROM paysaga_sagas p WHERE p.id = r.parent_id)
               AND NOT EXISTS (
                   SELECT 1 FROM paysaga_sagas c
                   WHERE c.parent_id = r.id
                     AND NOT (c.finished_at < now() - make_interval(secs => $1)
                              AND c.status = ANY($2)))
             ORDER BY r.finished_at LIMIT $3
             FOR UPDATE OF r SKIP LOCKED),
         tree (root, id, prunable) AS (
             SELECT id, id, true FROM roots
             UNION ALL
             SELECT t.root, c.id,
                    coalesce(c.finished_at < now() - make_interval(secs => $1)
                             AND c.status = ANY($2), false)
             FROM tree t JOIN paysaga_sagas c ON c.parent_id = t.id
             WHERE c.parent_id IS NOT NULL),
         doomed AS (SELECT id FROM tree
                    WHERE root NOT IN (SELECT root FROM tree WHERE NOT prunable)),
         h AS (DELETE FROM paysaga_history WHERE saga_id IN (SELECT id FROM doomed) RETURNING 1),
         w AS (DELETE FROM paysaga_waits WHERE saga_id IN (SELECT id FROM doomed) RETURNING 1),
         e AS (DELETE FROM paysaga_events WHERE consumed_by IN (SELECT id FROM doomed) RETURNING 1),
         d AS (DELETE FROM paysaga_documents WHERE saga_id IN (SELECT id FROM doomed) RETURNING 1),
         f AS (DELETE FROM paysaga_fan_outs WHERE parent_id = ANY (ARRAY(SELECT id FROM doomed))
               RETURNING 1),
         s AS (DELETE FROM paysaga_sagas WHERE id IN (SELECT id FROM doomed) RETURNING 1)
         SELECT (SELECT count(*) FROM s), (SELECT count(*) FROM h), (SELECT count(*) FROM w),
                (SELECT count(*) FROM e), (SELECT count(*) FROM d),
                0 * (SELECT count(*) FROM f)"
    )
}

/// The sagas [`prune_sql`] would delete with no batch limit (`$1`, `$2` as
/// [`PRUNABLE_WHERE`]): the roots and their children (the dry run's count).
fn count_prunable_sql() -> String {
    format!(
        "WITH roots AS (
             SELECT r.id FROM paysaga_sagas r WHERE {PRUNABLE_WHERE}
               AND NOT EXISTS (SELECT 1 FROM paysaga_sagas p WHERE p.id = r.parent_id)
               AND NOT EXISTS (
                   SELECT 1 FROM paysaga_sagas c
                   WHERE c.parent_id = r.id
                     AND NOT (c.finished_at < now() - make_interval(secs => $1)
                              AND c.status = ANY($2))))
         SELECT (SELECT count(*) FROM roots)
              + (SELECT count(*) FROM paysaga_sagas c
                 WHERE c.parent_id IS NOT NULL AND c.parent_id IN (SELECT id FROM roots))"
    )
}

/// PostgreSQL implementation of [`Store`].
#[derive(Debug, Clone)]
pub struct PgStore {
    pool: PgPool,
    /// One connection of its own for lease renewals (register, heartbeat): a burst of webhooks
    /// or slow queries that drains `pool` must not make a live worker lose its lease.
    lease_pool: PgPool,
    /// The LISTEN connection's own pool (one connection): a listener holds its connection for
    /// as long as it lives, which must not take one of `pool`'s from claims and commits.
    listen_pool: PgPool,
    /// The one LISTEN connection on [`ENDED_CHANNEL`] of this store (and its clones), opened
    /// by the first [`Store::watch_end`], and the waiters it wakes.
    ended: Arc<EndListener>,
    /// The group commit of the hot-path commits of this store (and its clones).
    group: Arc<group::Group<SimpleCommit, Result<Grouped, Error>>>,
    /// Connections of `pool` kept for the hot path's one-statement transactions (commits,
    /// claims, starts), reused without the ping sqlx's pool makes on every release.
    kept: Arc<kept::Kept>,
}

/// The end listener of a [`PgStore`]: one connection for every waiter of the process.
#[derive(Debug)]
struct EndListener {
    signals: Arc<EndSignals>,
    /// Its own pool of one connection (not `listen_pool`, which a worker of the same store
    /// holds for its whole life).
    pool: PgPool,
    /// Set once the listening task runs; dropping it (with the last clone of the store)
    /// ends the task and closes the connection.
    stop: OnceLock<tokio::sync::oneshot::Sender<()>>,
}

impl EndListener {
    fn new(pool: PgPool) -> Arc<EndListener> {
        Arc::new(EndListener {
            signals: EndSignals::new(None),
            pool,
            stop: OnceLock::new(),
        })
    }

    /// Starts the listening task unless it runs.
    fn start(&self) {
        self.stop.get_or_init(|| {
            let (stop, stopped) = tokio::sync::oneshot::channel();
            tokio::spawn(listen_for_ends(
                self.pool.clone(),
                self.signals.clone(),
                stopped,
            ));
            stop
        });
    }
}

/// The end listener's task: LISTEN on [`ENDED_CHANNEL`] and wake the waiters of each
/// notified saga. Whenever listening (re)starts every waiter reads its saga again (an end
/// may have been notified while nobody listened); while it cannot connect, waiters poll and
/// it retries with a backoff.
async fn listen_for_ends(
    pool: PgPool,
    signals: Arc<EndSignals>,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) {
    let mut generation = 0_u64;
    let mut pause = Duration::from_millis(100);
    loop {
        let connect = async {
            let mut listener = PgListener::connect_with(&pool).await?;
            listener.listen(ENDED_CHANNEL).await?;
            Ok::<_, sqlx::Error>(listener)
        };
        let connected = tokio::select! {
            _ = &mut stop => return,
            connected = connect => connected,
        };
        let mut listener = match connected {
            Ok(listener) => listener,
            Err(err) => {
                warn!(error = %err, retry_in_ms = pause.as_millis() as u64,
                      "cannot LISTEN for saga ends; waiters poll meanwhile");
                tokio::select! {
                    _ = &mut stop => return,
                    _ = tokio::time::sleep(pause) => {}
                }
                pause = (pause * 2).min(LISTENER_RETRY_MAX);
                continue;
            }
        };
        pause = Duration::from_millis(100);
        generation += 1;
        signals.set_listening(Some(generation));
        loop {
            let next = tokio::select! {
                _ = &mut stop => return,
                next = listener.try_recv() => next,
            };
            match next {
                Ok(Some(notification)) => {
                    if let Ok(id) = notification.payload().parse::<Uuid>() {
                        signals.signal(id);
                    }
                }
                // The connection was lost and is back (listening again): ends notified in
                // between were lost.
                Ok(None) => {
                    generation += 1;
                    signals.set_listening(Some(generation));
                }
                Err(err) => {
                    warn!(error = %err, "lost the LISTEN connection for saga ends; waiters poll until it is back");
                    signals.set_listening(None);
                    break;
                }
            }
        }
    }
}

impl PgStore {
    /// Connects with a pool sized for a worker (16 connections) plus one connection for lease
    /// renewals.
    pub async fn connect(url: &str) -> Result<PgStore, Error> {
        PgStore::connect_with(url, &crate::ConnectOptions::default()).await
    }

    /// Connects with `options.max_connections` in the pool plus one connection for lease
    /// renewals. TLS as the URL says (`sslmode`, `sslrootcert`, ...).
    pub async fn connect_with(
        url: &str,
        connect: &crate::ConnectOptions,
    ) -> Result<PgStore, Error> {
        // A safety net: a session left idle inside a transaction (a cancelled `BEGIN`) would
        // hold its locks and stall every worker; PostgreSQL ends it after a minute. paysaga's
        // own transactions never wait on anything but the database.
        let options: PgConnectOptions = url
            .parse::<PgConnectOptions>()?
            .options([("idle_in_transaction_session_timeout", "60s")]);
        // One connection first, on its own: a pool retries a failing connect until its
        // acquire timeout and then says only "pool timed out"; this says why (connection
        // refused, unknown host, authentication, TLS, no such database).
        match tokio::time::timeout(
            Duration::from_secs(10),
            sqlx::PgConnection::connect_with(&options),
        )
        .await
        {
            Ok(Ok(conn)) => {
                let _ = conn.close().await;
            }
            Ok(Err(err)) => return Err(err.into()),
            Err(_) => {
                return Err(sqlx::Error::Io(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "no answer from the database server within 10s",
                ))
                .into())
            }
        }
        let pool = pool_options()
            .max_connections(connect.max_connections.max(1))
            .connect_with(options.clone())
            .await?;
        let lease_pool = pool_options()
            .max_connections(1)
            .min_connections(0)
            .connect_lazy_with(options.clone());
        let listen_pool = pool_options()
            .max_connections(1)
            .min_connections(0)
            .connect_lazy_with(options.clone());
        let end_pool = pool_options()
            .max_connections(1)
            .min_connections(0)
            .connect_lazy_with(options);
        Ok(PgStore {
            lease_pool,
            listen_pool,
            ended: EndListener::new(end_pool),
            group: Arc::default(),
            kept: Arc::new(kept::Kept::for_pool(&pool)),
            pool,
        })
    }

    /// Wraps an existing pool (lease renewals, the worker's LISTEN and the end listener of
    /// [`Store::watch_end`] share it).
    pub fn from_pool(pool: PgPool) -> PgStore {
        PgStore {
            lease_pool: pool.clone(),
            listen_pool: pool.clone(),
            ended: EndListener::new(pool.clone()),
            group: Arc::default(),
            kept: Arc::new(kept::Kept::for_pool(&pool)),
            pool,
        }
    }

    /// The pool (for readiness checks).
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Marks workers whose lease expired as stopped and releases their sagas (one
    /// transaction); with `except`, also reads when the next lease of another live worker
    /// expires.
    async fn reap(&self, except: Option<Uuid>) -> Result<Reaped, Error> {
        let mut tx = self.pool.begin().await?;
        let dead: Vec<Uuid> = sqlx::query_scalar(
            "UPDATE paysaga_workers SET stopped_at = now()
             WHERE stopped_at IS NULL AND lease_expires_at < now()
             RETURNING id",
        )
        .fetch_all(&mut *tx)
        .await?;
        let released: Vec<Uuid> = sqlx::query_scalar(REAP_SQL)
            .bind(&dead)
            .fetch_all(&mut *tx)
            .await?;
        let next_expiry: Option<DateTime<Utc>> = match except {
            Some(me) => {
                sqlx::query_scalar(NEXT_EXPIRY_SQL)
                    .bind(me)
                    .fetch_one(&mut *tx)
                    .await?
            }
            None => None,
        };
        if released.is_empty() && dead.is_empty() {
            tx.rollback().await?;
            return Ok(Reaped {
                sagas: 0,
                next_expiry,
            });
        }
        for saga in &released {
            let entry = HistoryEntry {
                kind: paysaga_core::HistoryKind::LeaseTakenOver,
                step: None,
                attempt: None,
                error: None,
                detail: json!({"expired_workers": dead}),
            };
            insert_history(&mut tx, *saga, None, None, &[entry]).await?;
        }
        notify(&mut tx).await?;
        tx.commit().await?;
        if !released.is_empty() {
            tracing::warn!(workers = ?dead, sagas = released.len(), "released sagas of workers whose lease expired");
        }
        Ok(Reaped {
            sagas: released.len() as u64,
            next_expiry,
        })
    }

    /// A commit that found no row it may write: either the lease is lost, or an earlier try of
    /// this very commit was applied but its acknowledgement was lost (the saga carries the
    /// commit's token). Then nothing is written twice; the saga is given back if this worker
    /// still holds it, so that it is claimed again from what is stored.
    async fn already_committed(&self, c: &Commit<'_>) -> Result<Committed, Error> {
        let applied: Option<bool> = sqlx::query_scalar(
            "SELECT last_commit IS NOT DISTINCT FROM $2 FROM paysaga_sagas WHERE id = $1",
        )
        .bind(c.saga)
        .bind(c.token)
        .fetch_optional(&self.pool)
        .await?;
        if applied != Some(true) {
            self.record_refused_commit(c).await;
            return Err(Error::LeaseLost { saga: c.saga });
        }
        let mut tx = self.pool.begin().await?;
        let released = sqlx::query(
            "UPDATE paysaga_sagas SET owner = NULL, run_at = LEAST(run_at, now()), updated_at = now()
             WHERE id = $1 AND owner = $2 AND fence = $3",
        )
        .bind(c.saga)
        .bind(c.worker)
        .bind(c.fence)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if released > 0 {
            notify(&mut tx).await?;
        }
        tx.commit().await?;
        tracing::warn!(saga_id = %c.saga, "commit retried after a lost acknowledgement: it had been applied; nothing written twice");
        Ok(Committed {
            kept: false,
            wake_event: None,
            cancel_requested: false,
        })
    }

    /// After saga `saga` ended: gives its concurrency key's free slot to the oldest queued
    /// saga of the key, in a transaction of its own (the saga's end is committed whatever
    /// happens here; a hand-over lost to an error or a crash is made by the next
    /// [`Store::admit_queued`] sweep).
    async fn hand_over_slot(&self, saga: Uuid, key: &str) {
        let handed = async {
            let mut tx = self.pool.begin().await?;
            let n = admit_on(&mut tx, key).await?;
            tx.commit().await?;
            Ok::<u64, Error>(n)
        }
        .await;
        if let Err(e) = handed {
            tracing::warn!(saga_id = %saga, error = %e, "could not hand the ended saga's concurrency slot on; the workers' sweep will");
        }
    }

    /// Asks `parent`'s unfinished children to cancel, in a transaction of its own after the
    /// parent's (children only: a child's end locks the child, then its parent, so the two
    /// are never locked in the other order). A failure is logged: the reapers'
    /// [`Store::cascade_cancels`] does it later.
    async fn cascade_to_children(&self, parent: Uuid, why: &str) {
        let detail = crate::cascade_detail(parent, why);
        if let Err(e) = self
            .cancel_children(parent, &crate::parent_actor(parent), detail)
            .await
        {
            tracing::warn!(saga_id = %parent, error = %e,
                  "could not ask the children to cancel; the workers' reaper will");
        }
    }

    /// Records a commit the fence refused, in a small transaction of its own after the
    /// refusal (the refused transaction wrote nothing and rolled back). Best effort: the
    /// refusal stands even if this row cannot be written.
    async fn record_refused_commit(&self, c: &Commit<'_>) {
        let entry = crate::refused_commit_entry(c);
        let written = async {
            let mut tx = self.pool.begin().await?;
            let exists: Option<i32> =
                sqlx::query_scalar("SELECT 1 FROM paysaga_sagas WHERE id = $1")
                    .bind(c.saga)
                    .fetch_optional(&mut *tx)
                    .await?;
            if exists.is_some() {
                insert_history(&mut tx, c.saga, Some(c.worker), None, &[entry]).await?;
            }
            tx.commit().await?;
            Ok::<(), Error>(())
        }
        .await;
        if let Err(e) = written {
            tracing::warn!(saga_id = %c.saga, error = %e, "could not record the refused commit in history");
        }
    }

    /// The hot path of [`Store::commit`]: a transition that neither begins nor ends a wait
    /// (a step done, a retry scheduled, a failure, a compensation). One statement, so one
    /// round trip and one implicit transaction: the fence check (row lock), the saga update,
    /// the history rows and the wake-up notification commit together or not at all. While
    /// the database is busy, the commits of this store's sagas group into one such statement
    /// ([`group`]); each saga's commit still applies or is refused on its own.
    async fn commit_simple(&self, c: &Commit<'_>) -> Result<Committed, Error> {
        let t = c.transition;
        let simple = Arc::new(SimpleCommit::new(c));
        let hot = self.hot();
        let grouped = self
            .group
            .submit(simple.clone(), |batch| commit_group(hot, batch))
            .await;
        let outcome = match grouped {
            Some(Ok(Grouped::Applied(a))) => Some(a),
            Some(Ok(Grouped::Refused)) => None,
            Some(Err(e)) => return Err(e),
            // Its group's statement failed or left it out (a child's end), or the leader
            // running it was dropped: alone.
            Some(Ok(Grouped::Alone)) | None => commit_one(hot, &simple).await?,
        };
        let Some(applied) = outcome else {
            return self.already_committed(c).await;
        };
        if t.status.is_final() {
            // A waiter in this process hears it now rather than by the notification's hop.
            self.ended.signals.signal(c.saga);
        }
        if t.status.is_ended() {
            if let Some(key) = &applied.concurrency_key {
                self.hand_over_slot(c.saga, key).await;
            }
        }
        Ok(Committed {
            kept: simple.keep,
            wake_event: None,
            cancel_requested: applied.cancel_requested,
        })
    }
}

/// A hot-path commit, owned, as the statements bind it.
#[derive(Debug)]
struct SimpleCommit {
    saga: Uuid,
    worker: Uuid,
    fence: i64,
    status: &'static str,
    step_index: i32,
    attempt: i32,
    step_started_at: Option<DateTime<Utc>>,
    run_at: Option<DateTime<Utc>>,
    output_name: Option<String>,
    output_value: Option<Value>,
    last_error: Option<String>,
    /// The worker keeps the saga (runs its next step at once).
    keep: bool,
    final_status: bool,
    history: HistoryColumns,
    notify_now: bool,
    token: Uuid,
    effect_possible: bool,
    references: Vec<SagaReference>,
}

impl SimpleCommit {
    fn new(c: &Commit<'_>) -> SimpleCommit {
        let t = c.transition;
        let final_status = t.status.is_final();
        let keep = t.continue_now && !final_status;
        let run_at = if final_status { None } else { t.run_at };
        let (output_name, output_value) = match &t.output {
            Some((n, v)) => (Some(n.clone()), Some(v.clone())),
            None => (None, None),
        };
        SimpleCommit {
            saga: c.saga,
            worker: c.worker,
            fence: c.fence,
            status: t.status.as_str(),
            step_index: t.step_index as i32,
            attempt: t.attempt as i32,
            step_started_at: t.step_started_at,
            run_at,
            output_name,
            output_value,
            last_error: t.last_error.clone(),
            keep,
            final_status,
            history: HistoryColumns::from(t.history.as_slice()),
            notify_now: !keep && run_at.is_some_and(|at| at <= Utc::now()),
            token: c.token,
            effect_possible: t.effect_possible,
            references: c.references.to_vec(),
        }
    }
}

/// What a hot-path commit found: applied (with what the caller needs of the row), or no row
/// it may write (lease lost, or applied by an earlier try: see `already_committed`).
#[derive(Debug)]
enum Grouped {
    Applied(Applied),
    Refused,
    /// Not made in the group's statement (it failed as a whole, or the commit ends a child
    /// saga): the commit is made alone.
    Alone,
}

#[derive(Debug)]
struct Applied {
    cancel_requested: bool,
    concurrency_key: Option<String>,
}

impl Applied {
    /// From a row of [`COMMIT_SIMPLE_SQL`] or [`COMMIT_GROUP_SQL`].
    fn from_row(row: &PgRow) -> Result<Applied, Error> {
        Ok(Applied {
            cancel_requested: row.try_get("cancel_requested")?,
            concurrency_key: row.try_get("concurrency_key")?,
        })
    }
}

/// Where the hot path's statements run: on a connection [`kept::Kept`] for it, else one of
/// the pool's.
#[derive(Debug, Clone, Copy)]
struct Hot<'a> {
    pool: &'a PgPool,
    kept: &'a kept::Kept,
}

impl PgStore {
    fn hot(&self) -> Hot<'_> {
        Hot {
            pool: &self.pool,
            kept: &self.kept,
        }
    }
}

/// The statement of a group of hot-path commits: one commit alone as [`COMMIT_SIMPLE_SQL`]
/// (its errors are the commit's), several as [`COMMIT_GROUP_SQL`]; if that fails, each
/// commit is made alone.
async fn commit_group(hot: Hot<'_>, batch: Vec<Arc<SimpleCommit>>) -> Vec<Result<Grouped, Error>> {
    if let [one] = batch.as_slice() {
        return vec![commit_one(hot, one).await.map(|a| match a {
            Some(a) => Grouped::Applied(a),
            None => Grouped::Refused,
        })];
    }
    match commit_many(hot, &batch).await {
        Ok(outcomes) => outcomes.into_iter().map(Ok).collect(),
        Err(e) => {
            tracing::warn!(commits = batch.len(), error = %e,
                "a group of step commits failed as a whole; committing each alone");
            batch.iter().map(|_| Ok(Grouped::Alone)).collect()
        }
    }
}

/// One hot-path commit as one statement. `None`: no row it may write.
async fn commit_one(hot: Hot<'_>, c: &SimpleCommit) -> Result<Option<Applied>, Error> {
    let h = &c.history;
    let mut conn = hot.kept.take(hot.pool).await?;
    let row = sqlx::query(COMMIT_SIMPLE_SQL)
        .bind(c.saga)
        .bind(c.worker)
        .bind(c.fence)
        .bind(c.status)
        .bind(c.step_index)
        .bind(c.attempt)
        .bind(c.step_started_at)
        .bind(c.run_at)
        .bind(c.output_name.as_deref())
        .bind(c.output_value.as_ref())
        .bind(&c.last_error)
        .bind(c.keep)
        .bind(c.final_status)
        .bind(&h.steps)
        .bind(&h.attempts)
        .bind(&h.kinds)
        .bind(&h.errors)
        .bind(&h.details)
        .bind(c.notify_now)
        .bind(WAKEUP_CHANNEL)
        .bind(c.token)
        .bind(c.effect_possible)
        .bind(
            c.references
                .iter()
                .map(|r| r.step.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(
            c.references
                .iter()
                .map(|r| r.name.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(
            c.references
                .iter()
                .map(|r| r.value.as_str())
                .collect::<Vec<_>>(),
        )
        .fetch_optional(&mut *conn)
        .await;
    hot.kept.give_back(conn, row.as_ref().err());
    row?.as_ref().map(Applied::from_row).transpose()
}

/// Several hot-path commits (distinct sagas) as one statement: one outcome per commit, in
/// order.
async fn commit_many(hot: Hot<'_>, batch: &[Arc<SimpleCommit>]) -> Result<Vec<Grouped>, Error> {
    // Microseconds, truncated, as the other statements bind them.
    let at = |t: Option<DateTime<Utc>>| t.map(|t| t.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string());
    let mut commits = Vec::with_capacity(batch.len());
    let mut history = Vec::new();
    let mut references = Vec::new();
    for (n, c) in batch.iter().enumerate() {
        let n = n + 1;
        commits.push(json!({
            "id": c.saga, "worker": c.worker, "fence": c.fence, "status": c.status,
            "step_index": c.step_index, "attempt": c.attempt,
            "step_started_at": at(c.step_started_at), "run_at": at(c.run_at),
            "output_name": c.output_name, "output_value": c.output_value,
            "last_error": c.last_error, "keep": c.keep, "final": c.final_status,
            "token": c.token, "effect_possible": c.effect_possible, "notify": c.notify_now,
            "n": n,
        }));
        let h = &c.history;
        for i in 0..h.kinds.len() {
            history.push(json!({
                "c": n, "step": h.steps[i], "attempt": h.attempts[i], "kind": h.kinds[i],
                "error": h.errors[i], "detail": h.details[i], "n": history.len(),
            }));
        }
        for r in &c.references {
            references.push(json!({"c": n, "step": r.step, "name": r.name, "value": r.value}));
        }
    }
    let mut conn = hot.kept.take(hot.pool).await?;
    let rows = sqlx::query(COMMIT_GROUP_SQL)
        .bind(Value::Array(commits))
        .bind(Value::Array(history))
        .bind(Value::Array(references))
        .bind(WAKEUP_CHANNEL)
        .fetch_all(&mut *conn)
        .await;
    hot.kept.give_back(conn, rows.as_ref().err());
    let rows = rows?;
    let mut outcomes: Vec<Grouped> = batch.iter().map(|_| Grouped::Refused).collect();
    for row in rows {
        let n: i64 = row.try_get("n")?;
        let slot = usize::try_from(n - 1)
            .ok()
            .and_then(|i| outcomes.get_mut(i))
            .ok_or_else(|| Error::Corrupt(format!("group commit answered for commit #{n}")))?;
        *slot = if row.try_get("alone")? {
            Grouped::Alone
        } else {
            Grouped::Applied(Applied::from_row(&row)?)
        };
    }
    Ok(outcomes)
}

/// History entries as column arrays for `UNNEST`.
#[derive(Debug)]
struct HistoryColumns {
    steps: Vec<Option<String>>,
    attempts: Vec<Option<i32>>,
    kinds: Vec<&'static str>,
    errors: Vec<Option<String>>,
    details: Vec<Value>,
}

impl From<&[HistoryEntry]> for HistoryColumns {
    fn from(entries: &[HistoryEntry]) -> Self {
        HistoryColumns {
            steps: entries.iter().map(|e| e.step.clone()).collect(),
            attempts: entries
                .iter()
                .map(|e| e.attempt.map(|a| a as i32))
                .collect(),
            kinds: entries.iter().map(|e| e.kind.as_str()).collect(),
            errors: entries.iter().map(|e| e.error.clone()).collect(),
            details: entries.iter().map(|e| e.detail.clone()).collect(),
        }
    }
}

/// One statement for the hot-path commit. Data-modifying CTEs run even if unreferenced; the
/// notification CTE is referenced so that it runs. No row back = lease lost, nothing written.
/// A saga the worker keeps (`$12`) keeps its `run_at`: nothing reads it while the saga is
/// owned (the claim and `next_due` look at unowned sagas only; a release sets
/// `LEAST(run_at, now())`), and leaving it, like every other indexed column, alone makes the
/// update HOT (no new index entries; see docs/PERFORMANCE.md).
const COMMIT_SIMPLE_SQL: &str = "
WITH lease AS (
    SELECT id, cancel_requested FROM paysaga_sagas
    WHERE id = $1 AND owner = $2 AND fence = $3 AND last_commit IS DISTINCT FROM $21
      AND EXISTS (SELECT 1 FROM paysaga_workers w
                  WHERE w.id = $2 AND w.stopped_at IS NULL AND w.lease_expires_at > now())
    FOR UPDATE),
upd AS (
    UPDATE paysaga_sagas s SET status = $4, step_index = $5, attempt = $6, step_started_at = $7,
           run_at = CASE WHEN $12 THEN s.run_at ELSE $8 END, wait = NULL, wake_event = NULL,
           outputs = CASE WHEN $9::text IS NULL THEN s.outputs
                          ELSE s.outputs || jsonb_build_object($9::text, $10::jsonb) END,
           last_error = $11,
           owner = CASE WHEN $12 THEN s.owner ELSE NULL END,
           updated_at = now(),
           finished_at = CASE WHEN $13 THEN now() ELSE NULL END,
           last_commit = $21,
           effect_possible = $22,
           cancel_requested = s.cancel_requested AND NOT $13,
           closed_outcome = CASE WHEN $4 = 'closed' THEN s.close_requested->>'outcome' END,
           close_requested = CASE WHEN $4 IN ('compensating', 'needs_operator')
                                  THEN s.close_requested END
    FROM lease WHERE s.id = lease.id
    RETURNING s.id, s.concurrency_key),
hist AS (
    INSERT INTO paysaga_history (saga_id, worker, step, attempt, kind, error, detail)
    SELECT upd.id, $2, t.step, t.attempt, t.kind, t.error, NULLIF(t.detail, 'null'::jsonb)
    FROM upd, UNNEST($14::text[], $15::int4[], $16::text[], $17::text[], $18::jsonb[])
         WITH ORDINALITY AS t(step, attempt, kind, error, detail, n)
    ORDER BY t.n
    RETURNING 1),
refs AS (
    INSERT INTO paysaga_saga_refs (saga_id, step, name, value)
    SELECT upd.id, r.step, r.name, r.value
    FROM upd, UNNEST($23::text[], $24::text[], $25::text[]) AS r(step, name, value)
    ON CONFLICT DO NOTHING
    RETURNING 1),
wake AS (SELECT pg_notify($20, '') FROM upd WHERE $19)
SELECT lease.cancel_requested, (SELECT count(*) FROM hist) AS history_rows,
       (SELECT count(*) FROM wake) AS notified,
       (SELECT concurrency_key FROM upd) AS concurrency_key
FROM lease";

/// [`COMMIT_SIMPLE_SQL`] for several commits of distinct sagas: `$1` the commits, `$2` their
/// history rows, `$3` their references (JSON arrays of objects; each history row and
/// reference names its commit by its 1-based number `c`), `$4` the wake-up channel. The same
/// conditions and writes per saga; a saga whose lease is lost is left out (no row back for
/// it) without holding the others back. The rows are locked in id order, so two groups never
/// wait for each other in a cycle. One notification for the whole statement.
///
/// A child saga's final commit (`alone`: it has a parent) is not made here: its row comes
/// back marked `alone` and the committer makes it in a statement of its own. Its end counts
/// itself on the parent's fan-out row and may wake the parent (trigger
/// `paysaga_child_ended`), so a statement ending children of two parents would lock two
/// fan-out rows in an order of its own, and two such statements in opposite orders would
/// deadlock (PostgreSQL breaks the cycle after `deadlock_timeout` by failing one). Alone, a
/// child's end locks one parent and one fan-out row (test
/// `a_group_leaves_a_child_sagas_end_to_a_statement_of_its_own`).
///
/// The batch travels as JSON, not as arrays, for the plan cache: the planner sizes
/// `UNNEST` of a constant array exactly in a custom plan and guesses in a generic one, so a
/// statement of arrays is planned again at every execution (~1.3 ms for this one, more than
/// it takes to run); `jsonb_to_recordset` is sized the same both ways, so the connection
/// settles on one generic plan. `s.id = ANY(ARRAY(SELECT id FROM c))` gives both scans of
/// `paysaga_sagas` their primary-key lookup whatever the join order (test
/// `hot_path_queries_use_their_indexes`, generic plan included).
const COMMIT_GROUP_SQL: &str = "
WITH c AS (
    SELECT * FROM jsonb_to_recordset($1::jsonb)
        AS c(id uuid, worker uuid, fence int8, status text, step_index int4, attempt int4,
             step_started_at timestamptz, run_at timestamptz, output_name text,
             output_value jsonb, last_error text, keep bool, final bool, token uuid,
             effect_possible bool, notify bool, n int8)),
lease AS (
    SELECT s.id, s.cancel_requested, c.n, c.final AND s.parent_id IS NOT NULL AS alone
    FROM paysaga_sagas s JOIN c ON s.id = c.id
    WHERE s.id = ANY(ARRAY(SELECT id FROM c)) AND s.owner = c.worker AND s.fence = c.fence
      AND s.last_commit IS DISTINCT FROM c.token
      AND EXISTS (SELECT 1 FROM paysaga_workers w
                  WHERE w.id = c.worker AND w.stopped_at IS NULL AND w.lease_expires_at > now())
    ORDER BY s.id
    FOR UPDATE OF s),
upd AS (
    UPDATE paysaga_sagas s SET status = c.status, step_index = c.step_index,
           attempt = c.attempt, step_started_at = c.step_started_at,
           run_at = CASE WHEN c.keep THEN s.run_at ELSE c.run_at END, wait = NULL,
           wake_event = NULL,
           outputs = CASE WHEN c.output_name IS NULL THEN s.outputs
                          ELSE s.outputs || jsonb_build_object(c.output_name, c.output_value) END,
           last_error = c.last_error,
           owner = CASE WHEN c.keep THEN s.owner ELSE NULL END,
           updated_at = now(),
           finished_at = CASE WHEN c.final THEN now() ELSE NULL END,
           last_commit = c.token,
           effect_possible = c.effect_possible,
           cancel_requested = s.cancel_requested AND NOT c.final,
           closed_outcome = CASE WHEN c.status = 'closed' THEN s.close_requested->>'outcome' END,
           close_requested = CASE WHEN c.status IN ('compensating', 'needs_operator')
                                  THEN s.close_requested END
    FROM lease JOIN c ON c.n = lease.n
    WHERE s.id = lease.id AND NOT lease.alone AND s.id = ANY(ARRAY(SELECT id FROM lease))
    RETURNING s.id, s.concurrency_key, c.n, c.worker, c.notify),
hist AS (
    INSERT INTO paysaga_history (saga_id, worker, step, attempt, kind, error, detail)
    SELECT upd.id, upd.worker, t.step, t.attempt, t.kind, t.error, NULLIF(t.detail, 'null'::jsonb)
    FROM jsonb_to_recordset($2::jsonb)
         AS t(c int8, step text, attempt int4, kind text, error text, detail jsonb, n int8)
    JOIN upd ON upd.n = t.c
    ORDER BY t.n
    RETURNING 1),
refs AS (
    INSERT INTO paysaga_saga_refs (saga_id, step, name, value)
    SELECT upd.id, r.step, r.name, r.value
    FROM jsonb_to_recordset($3::jsonb) AS r(c int8, step text, name text, value text)
    JOIN upd ON upd.n = r.c
    ON CONFLICT DO NOTHING
    RETURNING 1),
wake AS (SELECT pg_notify($4, '') WHERE EXISTS (SELECT 1 FROM upd WHERE upd.notify))
SELECT lease.n, lease.cancel_requested, upd.concurrency_key, lease.alone,
       (SELECT count(*) FROM wake) AS notified
FROM lease LEFT JOIN upd ON upd.n = lease.n";

/// The saga listing of [`Store::list_sagas`] (`$1`.. the filter's fields) in `order`.
fn list_sagas_sql(order: &str) -> String {
    let columns: Vec<String> = SAGA_COLUMNS.split(", ").map(|c| format!("s.{c}")).collect();
    let status_filter = crate::status_filter_sql(|x| format!("{x} = ANY($1)"));
    format!(
        "SELECT {} FROM paysaga_sagas s JOIN paysaga_definitions d ON d.id = s.definition_id
         WHERE (cardinality($1::text[]) = 0 OR {status_filter})
           AND ($2::text IS NULL OR s.workflow = $2)
           AND ($3::text IS NULL OR d.body->'steps'->s.step_index->>'name' = $3)
           AND ($4::text IS NULL OR EXISTS (SELECT 1 FROM unnest(d.step_kinds) k WHERE k LIKE $4 || '.%'))
           AND ($5::text IS NULL OR s.idempotency_key = $5)
           AND ($6::timestamptz IS NULL OR s.created_at >= $6)
           AND ($7::timestamptz IS NULL OR s.created_at < $7)
           AND ($8::timestamptz IS NULL OR s.updated_at >= $8)
           AND ($9::timestamptz IS NULL OR s.updated_at < $9)
           AND ($10::timestamptz IS NULL OR s.status = 'needs_operator'
                OR (s.status IN {ACTIVE} AND (
                    s.updated_at < $10
                    OR (s.wait IS NOT NULL AND (s.wait->>'deadline')::timestamptz < now())
                    OR s.attempt >= $11
                    OR (s.owner IS NOT NULL AND NOT EXISTS (
                        SELECT 1 FROM paysaga_workers w
                        WHERE w.id = s.owner AND w.stopped_at IS NULL AND w.lease_expires_at > now()))
                    OR (s.owner IS NULL AND NOT EXISTS (
                        SELECT 1 FROM paysaga_workers w
                        WHERE w.stopped_at IS NULL AND w.lease_expires_at > now()
                          AND d.step_kinds <@ w.step_kinds)))))
           AND (NOT $14::boolean OR EXISTS (SELECT 1 FROM paysaga_history h
                                  WHERE h.saga_id = s.id AND h.kind = 'saga_alert'))
           AND ($15::text IS NULL OR s.id IN (SELECT r.saga_id FROM paysaga_saga_refs r
                                              WHERE r.value = $15))
         ORDER BY {order}
         LIMIT $12 OFFSET $13",
        columns.join(", ")
    )
}

/// The unfinished sagas, unowned (the partial index `paysaga_sagas_runnable` holds them), whose
/// definition no live worker can run, by definition (see
/// [`Store::sagas_no_live_worker_can_run`]).
fn no_live_worker_sql() -> String {
    format!(
        "WITH live AS (SELECT step_kinds FROM paysaga_workers
                       WHERE stopped_at IS NULL AND lease_expires_at > now())
         SELECT d.name, d.version, count(*) AS sagas,
                ARRAY(SELECT k FROM unnest(d.step_kinds) k
                      WHERE NOT EXISTS (SELECT 1 FROM live WHERE k = ANY(live.step_kinds))
                      ORDER BY k) AS missing
         FROM paysaga_sagas s JOIN paysaga_definitions d ON d.id = s.definition_id
         WHERE s.status IN {ACTIVE} AND s.owner IS NULL
           AND NOT EXISTS (SELECT 1 FROM live WHERE d.step_kinds <@ live.step_kinds)
         GROUP BY d.id, d.name, d.version, d.step_kinds
         ORDER BY d.name, d.version"
    )
}

/// [`Store::sagas_no_live_worker_can_run`] on `conn`.
async fn unrunnable_on(conn: &mut sqlx::PgConnection) -> Result<Vec<UnrunnableGroup>, Error> {
    let rows = sqlx::query(&no_live_worker_sql())
        .fetch_all(&mut *conn)
        .await?;
    rows.iter().map(unrunnable_from_row).collect()
}

/// A row of [`no_live_worker_sql`] or of the kinds check (`name`, `version`, `sagas`,
/// `missing`).
fn unrunnable_from_row(r: &PgRow) -> Result<UnrunnableGroup, Error> {
    Ok(UnrunnableGroup {
        workflow: r.try_get("name")?,
        version: r.try_get::<i32, _>("version")? as u32,
        sagas: r.try_get("sagas")?,
        missing_kinds: r.try_get("missing")?,
    })
}

/// The stored gauges (`paysaga_gauges.snapshot`).
fn stored_gauges(snapshot: Value) -> Result<GaugeSnapshot, Error> {
    serde_json::from_value(snapshot)
        .map_err(|e| Error::Corrupt(format!("paysaga_gauges.snapshot: {e}")))
}

fn saga_from_row(row: &PgRow) -> Result<SagaRecord, Error> {
    let status: String = row.try_get("status")?;
    let wait: Option<Value> = row.try_get("wait")?;
    let wake_event: Option<Value> = row.try_get("wake_event")?;
    Ok(SagaRecord {
        id: row.try_get("id")?,
        definition_id: row.try_get("definition_id")?,
        workflow: row.try_get("workflow")?,
        version: row.try_get::<i32, _>("version")? as u32,
        idempotency_key: row.try_get("idempotency_key")?,
        input: row.try_get("input")?,
        status: status.parse().map_err(|e| Error::Corrupt(format!("{e}")))?,
        step_index: row.try_get::<i32, _>("step_index")? as usize,
        attempt: row.try_get::<i32, _>("attempt")? as u32,
        step_started_at: row.try_get("step_started_at")?,
        run_at: row.try_get("run_at")?,
        owner: row.try_get("owner")?,
        fence: row.try_get("fence")?,
        outputs: row.try_get("outputs")?,
        wait: wait
            .map(serde_json::from_value::<ActiveWait>)
            .transpose()
            .map_err(|e| Error::Corrupt(format!("saga wait: {e}")))?,
        wake_event: wake_event
            .map(serde_json::from_value::<Event>)
            .transpose()
            .map_err(|e| Error::Corrupt(format!("saga wake_event: {e}")))?,
        last_error: row.try_get("last_error")?,
        cancel_requested: row.try_get("cancel_requested")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
        finished_at: row.try_get("finished_at")?,
        effect_possible: row.try_get::<bool, _>("effect_possible")?
            || row.try_get::<Option<i32>, _>("effect_step")?
                == Some(row.try_get::<i32, _>("step_index")?),
        closed_outcome: crate::closed_outcome(row.try_get("closed_outcome")?)?,
        key_generations: serde_json::from_value(row.try_get("key_generations")?)
            .map_err(|e| Error::Corrupt(format!("saga key_generations: {e}")))?,
        close_requested: crate::close_request(row.try_get("close_requested")?)?,
        concurrency: concurrency_from_row(row)?,
        trace_context: row.try_get("trace_context")?,
    })
}

fn concurrency_from_row(row: &PgRow) -> Result<Option<crate::SagaConcurrency>, Error> {
    let key: Option<String> = row.try_get("concurrency_key")?;
    let limit: Option<i32> = row.try_get("concurrency_limit")?;
    Ok(match (key, limit) {
        (Some(key), Some(limit)) => Some(crate::SagaConcurrency {
            key,
            limit: u32::try_from(limit)
                .map_err(|_| Error::Corrupt(format!("concurrency_limit {limit}")))?,
            holds_slot: row.try_get("concurrency_held")?,
        }),
        _ => None,
    })
}

fn definition_from_row(row: &PgRow) -> Result<DefinitionRecord, Error> {
    let body: Value = row.try_get("body")?;
    Ok(DefinitionRecord {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        version: row.try_get::<i32, _>("version")? as u32,
        content_hash: row.try_get("content_hash")?,
        definition: serde_json::from_value(body)
            .map_err(|e| Error::Corrupt(format!("definition body: {e}")))?,
        step_kinds: row.try_get("step_kinds")?,
        created_at: row.try_get("created_at")?,
    })
}

fn event_from_row(row: &PgRow) -> Result<EventRecord, Error> {
    Ok(EventRecord {
        id: row.try_get("id")?,
        provider: row.try_get("provider")?,
        event_id: row.try_get("event_id")?,
        event_type: row.try_get("event_type")?,
        correlation_key: row.try_get("correlation_key")?,
        payload: row.try_get("payload")?,
        parse_error: row.try_get("parse_error")?,
        raw_body: row.try_get("raw_body")?,
        received_at: row.try_get("received_at")?,
        consumed_by: row.try_get("consumed_by")?,
        consumed_at: row.try_get("consumed_at")?,
    })
}

/// Lock order, the same in every transaction (so two of them never wait for each other in a
/// cycle, which PostgreSQL would break with "deadlock detected"):
/// 1. the correlation key's advisory lock (`lock_correlation`: event delivery and replay, a
///    commit that begins a wait), at most one per transaction;
/// 2. the saga row (`FOR UPDATE`, or the `UPDATE` itself);
/// 3. the saga's wait row (`paysaga_waits`);
/// 4. inbox rows (`paysaga_events`).
///
/// A transaction that finds a wait by its key reads it without a lock, locks the saga, then
/// deletes the wait only if it still matches (see `end_matching_wait`).
///
/// Serialises event matching per (provider, correlation key) so that an event stored
/// concurrently with a wait beginning is seen by exactly one of the two transactions.
async fn lock_correlation(
    tx: &mut Transaction<'_, Postgres>,
    provider: &str,
    key: &str,
) -> Result<(), Error> {
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1 || ':' || $2, 0))")
        .bind(provider)
        .bind(key)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Ends the oldest wait matching (provider, key, event type), in the lock order: reads the
/// candidate without a lock, locks its saga row, then deletes the wait if it still matches
/// (a commit or an operator action may have ended it meanwhile: then the next candidate).
/// The caller holds the key's advisory lock, so no matching wait can begin meanwhile.
async fn end_matching_wait(
    tx: &mut Transaction<'_, Postgres>,
    provider: &str,
    key: &str,
    event_type: &str,
) -> Result<Option<Uuid>, Error> {
    let mut passed: Vec<Uuid> = Vec::new();
    loop {
        let candidate: Option<Uuid> = sqlx::query_scalar(
            "SELECT saga_id FROM paysaga_waits
             WHERE provider = $1 AND correlation_key = $2 AND $3 = ANY(event_types)
               AND saga_id <> ALL($4)
             ORDER BY created_at LIMIT 1",
        )
        .bind(provider)
        .bind(key)
        .bind(event_type)
        .bind(&passed)
        .fetch_optional(&mut **tx)
        .await?;
        let Some(saga) = candidate else {
            return Ok(None);
        };
        sqlx::query("SELECT 1 FROM paysaga_sagas WHERE id = $1 FOR UPDATE")
            .bind(saga)
            .execute(&mut **tx)
            .await?;
        let ended: Option<Uuid> = sqlx::query_scalar(
            "DELETE FROM paysaga_waits
             WHERE saga_id = $1 AND provider = $2 AND correlation_key = $3 AND $4 = ANY(event_types)
             RETURNING saga_id",
        )
        .bind(saga)
        .bind(provider)
        .bind(key)
        .bind(event_type)
        .fetch_optional(&mut **tx)
        .await?;
        if ended.is_some() {
            return Ok(ended);
        }
        passed.push(saga);
    }
}

/// Marks an inbox event consumed by `saga` and hands it to the saga (run now).
async fn hand_event_to_saga(
    tx: &mut Transaction<'_, Postgres>,
    saga: Uuid,
    event: &Event,
) -> Result<(), Error> {
    sqlx::query("UPDATE paysaga_sagas SET wake_event = $2, run_at = now(), updated_at = now() WHERE id = $1")
        .bind(saga)
        .bind(serde_json::to_value(event).map_err(|e| Error::Corrupt(e.to_string()))?)
        .execute(&mut **tx)
        .await?;
    sqlx::query("UPDATE paysaga_events SET consumed_by = $2, consumed_at = now() WHERE id = $1")
        .bind(event.inbox_id)
        .bind(saga)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Releases the sagas `worker` holds (`only`: just that one, under `fence`) with a
/// `saga_released` history row each; returns the sagas released.
async fn release_sagas(
    tx: &mut Transaction<'_, Postgres>,
    worker: Uuid,
    only: Option<(Uuid, i64)>,
    reason: &str,
) -> Result<Vec<Uuid>, Error> {
    let rows = sqlx::query(
        "UPDATE paysaga_sagas SET owner = NULL, run_at = LEAST(run_at, now()), updated_at = now()
         WHERE owner = $1 AND ($2::uuid IS NULL OR (id = $2 AND fence = $3))
         RETURNING id, fence, status, step_index, attempt",
    )
    .bind(worker)
    .bind(only.map(|o| o.0))
    .bind(only.map(|o| o.1))
    .fetch_all(&mut **tx)
    .await?;
    let mut released = Vec::with_capacity(rows.len());
    for row in &rows {
        let id: Uuid = row.try_get("id")?;
        let entry = crate::released_entry(
            worker,
            row.try_get("fence")?,
            row.try_get::<String, _>("status")?,
            row.try_get::<i32, _>("step_index")?,
            row.try_get::<i32, _>("attempt")?,
            reason,
        );
        insert_history(tx, id, Some(worker), None, &[entry]).await?;
        released.push(id);
    }
    Ok(released)
}

async fn insert_history(
    tx: &mut sqlx::PgConnection,
    saga: Uuid,
    worker: Option<Uuid>,
    actor: Option<&str>,
    entries: &[HistoryEntry],
) -> Result<(), Error> {
    if entries.is_empty() {
        return Ok(());
    }
    let HistoryColumns {
        steps,
        attempts,
        kinds,
        errors,
        details,
    } = HistoryColumns::from(entries);
    sqlx::query(
        "INSERT INTO paysaga_history (saga_id, worker, actor, step, attempt, kind, error, detail)
         SELECT $1, $2, $3, t.step, t.attempt, t.kind, t.error, NULLIF(t.detail, 'null'::jsonb)
         FROM UNNEST($4::text[], $5::int4[], $6::text[], $7::text[], $8::jsonb[])
              WITH ORDINALITY AS t(step, attempt, kind, error, detail, n)
         ORDER BY t.n",
    )
    .bind(saga)
    .bind(worker)
    .bind(actor)
    .bind(&steps)
    .bind(&attempts)
    .bind(&kinds)
    .bind(&errors)
    .bind(&details)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// Stores a commit's references of the saga (a reference already stored is kept once).
async fn insert_references(
    tx: &mut Transaction<'_, Postgres>,
    saga: Uuid,
    refs: &[SagaReference],
) -> Result<(), Error> {
    if refs.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO paysaga_saga_refs (saga_id, step, name, value)
         SELECT $1, r.step, r.name, r.value FROM UNNEST($2::text[], $3::text[], $4::text[])
              AS r(step, name, value)
         ON CONFLICT DO NOTHING",
    )
    .bind(saga)
    .bind(refs.iter().map(|r| r.step.as_str()).collect::<Vec<_>>())
    .bind(refs.iter().map(|r| r.name.as_str()).collect::<Vec<_>>())
    .bind(refs.iter().map(|r| r.value.as_str()).collect::<Vec<_>>())
    .execute(&mut **tx)
    .await?;
    Ok(())
}

async fn notify(tx: &mut Transaction<'_, Postgres>) -> Result<(), Error> {
    sqlx::query("SELECT pg_notify($1, '')")
        .bind(WAKEUP_CHANNEL)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Inserts a saga (`scheduled`, due now) with its `saga_started` history row and the
/// wake-up NOTIFY on `conn`, inside whatever transaction `conn` is in; with the idempotency
/// key of an existing saga (committed, or this transaction's own), returns that one
/// (`false`) or refuses another input ([`Error::KeyReused`]) and writes nothing.
async fn insert_saga_on(
    conn: &mut sqlx::PgConnection,
    new: NewSaga,
) -> Result<(SagaRecord, bool), Error> {
    // A saga with a concurrency key is inserted queued (no run_at) and then given a free slot
    // of its key, if any, under the key's lock (the oldest queued saga of the key first).
    let key = new.concurrency.as_ref().map(|c| c.key.clone());
    if key.is_none() {
        // Inside the caller's transaction no worker row is locked (its heartbeat would wait
        // for the caller's commit): the saga is inserted free.
        return insert_saga_at_once_on(conn, new, Holder::None).await;
    }
    refuse_if_outdated_on(conn, &new).await?;
    let inserted = sqlx::query(&format!(
        "INSERT INTO paysaga_sagas (id, definition_id, workflow, version, idempotency_key,
                                    input, status, run_at, concurrency_key, concurrency_limit,
                                    trace_context, awaited)
         VALUES ($1, $2, $3, $4, $5, $6, 'scheduled', CASE WHEN $7::text IS NULL THEN now() END,
                 $7, $8, $9, $10)
         ON CONFLICT (workflow, idempotency_key) DO NOTHING
         RETURNING {SAGA_COLUMNS}"
    ))
    .bind(new.id)
    .bind(new.definition_id)
    .bind(&new.workflow)
    .bind(new.version as i32)
    .bind(&new.idempotency_key)
    .bind(&new.input)
    .bind(&key)
    .bind(
        new.concurrency
            .as_ref()
            .map(|c| i32::try_from(c.limit).unwrap_or(i32::MAX)),
    )
    .bind(&new.trace_context)
    .bind(new.awaited)
    .fetch_optional(&mut *conn)
    .await?;
    if let Some(row) = inserted {
        let mut saga = saga_from_row(&row)?;
        if let Some(key) = &key {
            admit_on(conn, key).await?;
            let row = sqlx::query(&format!(
                "SELECT {SAGA_COLUMNS} FROM paysaga_sagas WHERE id = $1"
            ))
            .bind(saga.id)
            .fetch_one(&mut *conn)
            .await?;
            saga = saga_from_row(&row)?;
        }
        let entry = crate::saga_started_entry(&new);
        insert_history(conn, saga.id, None, Some(&new.actor), &[entry]).await?;
        sqlx::query("SELECT pg_notify($1, '')")
            .bind(WAKEUP_CHANNEL)
            .execute(&mut *conn)
            .await?;
        return Ok((saga, true));
    }
    existing_by_key_on(conn, new).await
}

impl PgStore {
    /// [`insert_saga_at_once_on`] on a connection kept for the hot path.
    async fn insert_saga_at_once(
        &self,
        new: NewSaga,
        worker: Option<Uuid>,
    ) -> Result<(SagaRecord, bool), Error> {
        let mut conn = self.kept.take(&self.pool).await?;
        let holder = match worker {
            Some(worker) => Holder::Worker(worker),
            None => Holder::AnyWithFreeSlot,
        };
        let inserted = insert_saga_at_once_on(&mut conn, new, holder).await;
        let failed = match &inserted {
            Err(Error::Database(e)) => Some(e),
            // Answered (a refusal such as an outdated definition is the server's answer).
            _ => None,
        };
        self.kept.give_back(conn, failed);
        inserted
    }
}

/// The worker a new saga is inserted held by ([`Holder::AnyWithFreeSlot`]), if `any` (an
/// SQL boolean expression) is true: a live one registered with [`crate::Assignments`], with
/// every step kind of definition `definition` (a placeholder) and fewer sagas held than its
/// concurrency, the fewest first; and none while a free saga is due (it waits in the claim's
/// queue, which is first come first served: a new saga handed to a worker would pass it).
/// Live workers by `paysaga_workers_live`, their sagas by `paysaga_sagas_owner`, a due free
/// saga by the claim's `paysaga_sagas_runnable` (test `hot_path_queries_use_their_indexes`).
///
/// The worker row is not locked: every start would share-lock the same few rows (a
/// multixact per locker, each new one listing the others; under a load of starts that
/// stalls them all). A worker that stops or dies between this read and the insert's commit
/// leaves the saga held by a worker whose lease has ended: the reaper releases it, as it
/// releases the sagas of a worker that crashed.
fn pick_worker_sql(any: &str, definition: &str) -> String {
    format!(
        "SELECT w.id, w.wake_channel
         FROM paysaga_workers w
              CROSS JOIN LATERAL (SELECT count(*) AS held FROM paysaga_sagas o
                                  WHERE o.owner = w.id) held
         WHERE {any} AND w.wake_channel IS NOT NULL
           AND w.stopped_at IS NULL AND w.lease_expires_at > now()
           AND held.held < w.concurrency
           AND w.step_kinds @> (SELECT d.step_kinds FROM paysaga_definitions d
                                WHERE d.id = {definition})
           AND NOT EXISTS (SELECT 1 FROM paysaga_sagas q
                           WHERE q.owner IS NULL AND q.status IN {ACTIVE} AND q.run_at <= now())
         ORDER BY held.held, random()
         LIMIT 1"
    )
}

/// Who holds a saga [`insert_saga_at_once_on`] inserts.
#[derive(Debug, Clone, Copy)]
enum Holder {
    /// That worker (of this process), if it is live.
    Worker(Uuid),
    /// A live worker of any process with a free slot and the saga's step kinds, if any.
    AnyWithFreeSlot,
    /// No one: every worker is woken to claim it.
    None,
}

/// [`insert_saga_on`] for a saga without a concurrency key: the saga row, its
/// `saga_started` history row and the wake-up NOTIFY in one statement (one round trip; on the
/// pool it commits by itself, without `BEGIN`/`COMMIT`). A key already taken inserts nothing
/// and answers as [`insert_saga_on`] does.
///
/// Held by [`Holder::Worker`] (see [`Store::create_saga_for`]) the saga is inserted held by that worker
/// if it is live, as the claim would leave it (`owner`, `fence` 1), and no NOTIFY is sent;
/// the worker row is read `FOR SHARE` as by the claim, so a worker stopping meanwhile
/// releases it with the others it holds.
///
/// With [`Holder::AnyWithFreeSlot`] the saga is inserted held by a live worker of any process that takes
/// sagas this way (registered with [`crate::Assignments`]), has every step kind of the
/// definition and holds fewer sagas than its concurrency (the fewest first; index
/// `paysaga_sagas_owner`), and the NOTIFY goes to that worker's channel alone, naming the
/// saga: it runs it without a claim. A worker row locked at that moment (its heartbeat) is
/// skipped. With no such worker the saga is inserted free and every worker is woken.
async fn insert_saga_at_once_on(
    conn: &mut sqlx::PgConnection,
    new: NewSaga,
    holder: Holder,
) -> Result<(SagaRecord, bool), Error> {
    // One statement per kind of holder: the parts of another kind would cost every
    // execution their initialisation.
    let (worker, me) = match holder {
        Holder::Worker(worker) => (
            Some(worker),
            "SELECT id, NULL::text AS wake_channel FROM paysaga_workers
             WHERE id = $12 AND stopped_at IS NULL AND lease_expires_at > now()
             FOR SHARE"
                .to_string(),
        ),
        Holder::AnyWithFreeSlot => (None, pick_worker_sql("$12::uuid IS NULL", "$2")),
        Holder::None => (
            None,
            "SELECT $12::uuid AS id, NULL::text AS wake_channel WHERE false".to_string(),
        ),
    };
    let started = crate::saga_started_entry(&new);
    // `n` runs because the final SELECT reads it (a SELECT in a WITH runs only if read).
    let inserted = sqlx::query(&format!(
        "WITH me AS ({me}),
         s AS (
             INSERT INTO paysaga_sagas (id, definition_id, workflow, version, idempotency_key,
                                        input, status, run_at, trace_context, owner, fence,
                                        awaited)
             SELECT $1, $2, $3, $4, $5, $6, 'scheduled', now(), $7, (SELECT id FROM me),
                    CASE WHEN EXISTS (SELECT 1 FROM me) THEN 1 ELSE 0 END, $14
             WHERE NOT ($13 AND EXISTS (SELECT 1 FROM paysaga_definitions d
                                        WHERE d.name = $3 AND d.version > $4))
             ON CONFLICT (workflow, idempotency_key) DO NOTHING
             RETURNING {SAGA_COLUMNS}),
         h AS (
             INSERT INTO paysaga_history (saga_id, actor, kind, detail)
             SELECT s.id, $8, $9, $10 FROM s),
         n AS (SELECT pg_notify(COALESCE(me.wake_channel, $11),
                                CASE WHEN me.id IS NULL THEN '' ELSE s.id::text END)
               FROM s LEFT JOIN me ON true
               WHERE s.owner IS NULL OR me.wake_channel IS NOT NULL)
         SELECT {SAGA_COLUMNS}, (SELECT count(*) FROM n) AS notified FROM s"
    ))
    .bind(new.id)
    .bind(new.definition_id)
    .bind(&new.workflow)
    .bind(new.version as i32)
    .bind(&new.idempotency_key)
    .bind(&new.input)
    .bind(&new.trace_context)
    .bind(&new.actor)
    .bind(started.kind.as_str())
    .bind(&started.detail)
    .bind(WAKEUP_CHANNEL)
    .bind(worker)
    .bind(new.latest)
    .bind(new.awaited)
    .fetch_optional(&mut *conn)
    .await?;
    if let Some(row) = inserted {
        return Ok((saga_from_row(&row)?, true));
    }
    // Nothing inserted: a newer version (only when `latest`), or the key taken.
    refuse_if_outdated_on(conn, &new).await?;
    existing_by_key_on(conn, new).await
}

/// [`Error::DefinitionOutdated`] if `new` resolved the latest version of its workflow and a
/// newer one is stored (index `paysaga_definitions_name_version_key`).
async fn refuse_if_outdated_on(conn: &mut sqlx::PgConnection, new: &NewSaga) -> Result<(), Error> {
    if !new.latest {
        return Ok(());
    }
    let newer: bool = sqlx::query_scalar(NEWER_VERSION_SQL)
        .bind(&new.workflow)
        .bind(new.version as i32)
        .fetch_one(&mut *conn)
        .await?;
    if newer {
        return Err(Error::DefinitionOutdated {
            workflow: new.workflow.clone(),
            version: new.version,
        });
    }
    Ok(())
}

/// The saga an insert found holding `new`'s idempotency key: committed by a concurrent start
/// (the insert waited for it) or inserted earlier in this very transaction; `new`'s input
/// must be the same ([`Error::KeyReused`] otherwise).
async fn existing_by_key_on(
    conn: &mut sqlx::PgConnection,
    new: NewSaga,
) -> Result<(SagaRecord, bool), Error> {
    let row = sqlx::query(&format!(
        "SELECT {SAGA_COLUMNS} FROM paysaga_sagas WHERE workflow = $1 AND idempotency_key = $2"
    ))
    .bind(&new.workflow)
    .bind(&new.idempotency_key)
    .fetch_one(&mut *conn)
    .await?;
    crate::existing_for_key(saga_from_row(&row)?, new)
}

/// Gives the documents `ids` to `saga` on `conn` (inside its transaction): all or none.
async fn claim_documents_on(
    conn: &mut sqlx::PgConnection,
    saga: Uuid,
    ids: &[DocumentId],
) -> Result<(), Error> {
    let uuids: Vec<Uuid> = ids.iter().map(|d| d.0).collect();
    let rows = sqlx::query(
        "SELECT id, saga_id, content IS NULL AS deleted FROM paysaga_documents
         WHERE id = ANY($1) ORDER BY id FOR UPDATE",
    )
    .bind(&uuids)
    .fetch_all(&mut *conn)
    .await?;
    for id in ids {
        let mut found = None;
        for row in &rows {
            if row.try_get::<Uuid, _>("id")? == id.0 {
                found = Some((row.try_get("saga_id")?, row.try_get("deleted")?));
            }
        }
        crate::check_document_claim(saga, *id, found)?;
    }
    sqlx::query("UPDATE paysaga_documents SET saga_id = $1 WHERE id = ANY($2) AND saga_id IS NULL")
        .bind(saga)
        .bind(&uuids)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

impl PgStore {
    /// The saga started with `key` for `workflow`, read on `conn` (inside the caller's
    /// transaction: a saga this transaction started is found too).
    pub async fn find_saga_by_key_in(
        conn: &mut sqlx::PgConnection,
        workflow: &str,
        key: &str,
    ) -> Result<Option<SagaRecord>, Error> {
        let row = sqlx::query(&format!(
            "SELECT {SAGA_COLUMNS} FROM paysaga_sagas WHERE workflow = $1 AND idempotency_key = $2"
        ))
        .bind(workflow)
        .bind(key)
        .fetch_optional(&mut *conn)
        .await?;
        row.as_ref().map(saga_from_row).transpose()
    }

    /// Creates a saga inside the caller's own transaction on `conn` (a
    /// `sqlx::Transaction<Postgres>` derefs to it): the saga, its history row, the documents
    /// it takes (`new.documents`, checked as by [`Store::claim_documents`]) and its wake-up
    /// NOTIFY commit or roll back with the caller's own writes (e.g. the application's payout
    /// row). `conn` must be a connection to this store's database, migrated. The input must
    /// have been validated (use `paysaga_runtime::Engine::start_in`, which does).
    pub async fn create_saga_in(
        conn: &mut sqlx::PgConnection,
        new: NewSaga,
    ) -> Result<(SagaRecord, bool), Error> {
        insert_with_documents_on(conn, new, Holder::None).await
    }

    /// [`Store::create_saga`] in a transaction of its own (held by `holder` when the saga
    /// has no concurrency key), for a saga with a concurrency key or documents: documents are
    /// taken and the saga is inserted in one transaction, so a start whose insert fails or is
    /// refused leaves them free, and no other start ever finds them held by an id that no
    /// saga has.
    async fn create_saga_in_transaction(
        &self,
        new: NewSaga,
        holder: Holder,
    ) -> Result<(SagaRecord, bool), Error> {
        let mut tx = self.pool.begin().await?;
        let created = insert_with_documents_on(&mut tx, new, holder).await?;
        if created.1 {
            tx.commit().await?;
        } else {
            tx.rollback().await?;
        }
        Ok(created)
    }
}

/// Inserts `new` on `conn`, inside whatever transaction `conn` is in, after giving it
/// `new.documents` there (all or none): with documents, the saga of its idempotency key if
/// one exists (nothing taken), else a refusal for a document missing, deleted or held by
/// another saga; then the saga inserted as [`insert_saga_on`] (held by `holder` when it has
/// no concurrency key) does.
async fn insert_with_documents_on(
    conn: &mut sqlx::PgConnection,
    new: NewSaga,
    holder: Holder,
) -> Result<(SagaRecord, bool), Error> {
    if !new.documents.is_empty() {
        // The key first: documents a saga of the key holds are its own, not taken again.
        if let Some(existing) = saga_of_key_on(conn, &new).await? {
            return crate::existing_for_key(existing, new);
        }
        if let Err(e) = claim_documents_on(conn, new.id, &new.documents).await {
            // A start of the same key that committed while this one waited for the
            // documents' rows holds them: its saga is this start's.
            if matches!(e, Error::Refused(_)) {
                if let Some(existing) = saga_of_key_on(conn, &new).await? {
                    return crate::existing_for_key(existing, new);
                }
            }
            return Err(e);
        }
    }
    if new.concurrency.is_none() {
        insert_saga_at_once_on(conn, new, holder).await
    } else {
        insert_saga_on(conn, new).await
    }
}

/// The saga holding `new`'s idempotency key, read on `conn` (none without a key).
async fn saga_of_key_on(
    conn: &mut sqlx::PgConnection,
    new: &NewSaga,
) -> Result<Option<SagaRecord>, Error> {
    match &new.idempotency_key {
        Some(key) => PgStore::find_saga_by_key_in(conn, &new.workflow, key).await,
        None => Ok(None),
    }
}

/// Key of the advisory lock `migrate` holds ("paysaga" in ASCII).
const MIGRATION_LOCK: i64 = 0x0070_6179_7361_6761;

/// Applies `MIGRATOR`'s pending migrations, recording them in `paysaga_migrations` (sqlx's
/// `_sqlx_migrations` stays the application's: a shared database works with both). The
/// records of a deployment made before that table existed are moved over first. Each
/// migration runs in its own transaction with its record. The caller holds `MIGRATION_LOCK`.
async fn migrate_locked(conn: &mut sqlx::PgConnection) -> Result<(), Error> {
    use sqlx::migrate::MigrateError;
    sqlx::Executor::execute(
        &mut *conn,
        "CREATE TABLE IF NOT EXISTS paysaga_migrations (
             version BIGINT PRIMARY KEY,
             description TEXT NOT NULL,
             installed_on TIMESTAMPTZ NOT NULL DEFAULT now(),
             success BOOLEAN NOT NULL,
             checksum BYTEA NOT NULL,
             execution_time BIGINT NOT NULL)",
    )
    .await?;
    let legacy: Option<String> = sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations')::text")
        .fetch_one(&mut *conn)
        .await?;
    if legacy.is_some() {
        // paysaga's own records (same version and checksum) move; an application's stay.
        let mut tx = conn.begin().await?;
        for m in MIGRATOR.iter() {
            sqlx::query(
                "WITH moved AS (
                     DELETE FROM _sqlx_migrations WHERE version = $1 AND checksum = $2
                     RETURNING version, description, installed_on, success, checksum, execution_time)
                 INSERT INTO paysaga_migrations SELECT * FROM moved ON CONFLICT (version) DO NOTHING",
            )
            .bind(m.version)
            .bind(m.checksum.as_ref())
            .execute(&mut *tx)
            .await?;
        }
        let left: i64 = sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations")
            .fetch_one(&mut *tx)
            .await?;
        if left == 0 {
            sqlx::Executor::execute(&mut *tx, "DROP TABLE _sqlx_migrations").await?;
        }
        tx.commit().await?;
    }
    let applied: Vec<(i64, Vec<u8>, bool)> = sqlx::query_as(
        "SELECT version, checksum, success FROM paysaga_migrations ORDER BY version",
    )
    .fetch_all(&mut *conn)
    .await?;
    crate::check_applied_migrations(&MIGRATOR, &applied)?;
    for m in MIGRATOR.iter() {
        if applied.iter().any(|(v, _, _)| *v == m.version) {
            continue;
        }
        let started = std::time::Instant::now();
        let mut tx = conn.begin().await?;
        sqlx::Executor::execute(&mut *tx, m.sql.as_ref())
            .await
            .map_err(|e| MigrateError::ExecuteMigration(e, m.version))?;
        sqlx::query(
            "INSERT INTO paysaga_migrations (version, description, success, checksum, execution_time)
             VALUES ($1, $2, TRUE, $3, $4)",
        )
        .bind(m.version)
        .bind(m.description.as_ref())
        .bind(m.checksum.as_ref())
        .bind(i64::try_from(started.elapsed().as_nanos()).unwrap_or(i64::MAX))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
    }
    Ok(())
}

#[async_trait]
impl Store for PgStore {
    async fn migrate(&self) -> Result<(), Error> {
        // One migrator at a time per database (workers starting together): a session lock,
        // released on every path below before the connection goes back to the pool.
        let mut conn = self.pool.acquire().await?;
        sqlx::query("SELECT pg_advisory_lock($1)")
            .bind(MIGRATION_LOCK)
            .execute(&mut *conn)
            .await?;
        let result = migrate_locked(&mut conn).await;
        let unlocked = sqlx::query("SELECT pg_advisory_unlock($1)")
            .bind(MIGRATION_LOCK)
            .execute(&mut *conn)
            .await;
        if unlocked.is_err() {
            // Never return a connection holding the lock to the pool.
            conn.detach();
        }
        result
    }

    async fn schema_versions(&self) -> Result<(Option<i64>, i64), Error> {
        let known = MIGRATOR.iter().map(|m| m.version).max().unwrap_or(0);
        let table: Option<String> =
            sqlx::query_scalar("SELECT to_regclass('paysaga_migrations')::text")
                .fetch_one(&self.pool)
                .await?;
        if table.is_none() {
            return Ok((None, known));
        }
        let applied: Option<i64> =
            sqlx::query_scalar("SELECT max(version) FROM paysaga_migrations WHERE success")
                .fetch_one(&self.pool)
                .await?;
        Ok((applied, known))
    }

    #[instrument(skip_all, fields(workflow = %def.name, version = def.version))]
    async fn put_definition(&self, def: &Definition) -> Result<DefinitionRecord, Error> {
        let hash = def.content_hash();
        let body = serde_json::to_value(def).map_err(|e| Error::Corrupt(e.to_string()))?;
        let inserted = sqlx::query(
            "INSERT INTO paysaga_definitions (name, version, content_hash, body, step_kinds)
             VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (name, version) DO NOTHING
             RETURNING id, name, version, content_hash, body, step_kinds, created_at",
        )
        .bind(&def.name)
        .bind(def.version as i32)
        .bind(&hash)
        .bind(&body)
        .bind(def.step_kinds())
        .fetch_optional(&self.pool)
        .await?;
        if let Some(row) = inserted {
            return definition_from_row(&row);
        }
        let existing = self
            .find_definition(&def.name, Some(def.version))
            .await?
            .ok_or_else(|| Error::NotFound(format!("definition {} v{}", def.name, def.version)))?;
        crate::same_definition_or_conflict(existing, def, &hash)
    }

    async fn definition(&self, id: i64) -> Result<DefinitionRecord, Error> {
        let row = sqlx::query(
            "SELECT id, name, version, content_hash, body, step_kinds, created_at
             FROM paysaga_definitions WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await?
        .ok_or_else(|| Error::NotFound(format!("definition id {id}")))?;
        definition_from_row(&row)
    }

    async fn find_definition(
        &self,
        name: &str,
        version: Option<u32>,
    ) -> Result<Option<DefinitionRecord>, Error> {
        let row = sqlx::query(
            "SELECT id, name, version, content_hash, body, step_kinds, created_at
             FROM paysaga_definitions
             WHERE name = $1 AND ($2::int4 IS NULL OR version = $2)
             ORDER BY version DESC LIMIT 1",
        )
        .bind(name)
        .bind(version.map(|v| v as i32))
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(definition_from_row).transpose()
    }

    async fn list_definitions(&self) -> Result<Vec<DefinitionRecord>, Error> {
        let rows = sqlx::query(
            "SELECT id, name, version, content_hash, body, step_kinds, created_at
             FROM paysaga_definitions ORDER BY name, version DESC",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(definition_from_row).collect()
    }

    #[instrument(skip_all, fields(workflow = %new.workflow, saga_id = %new.id))]
    async fn create_saga(&self, new: NewSaga) -> Result<(SagaRecord, bool), Error> {
        // No look-up of the key first: the insert finds a saga holding it (and writes
        // nothing then), and `Engine::start` looks it up itself where it must.
        if new.concurrency.is_none() && new.documents.is_empty() {
            // One statement: it commits by itself.
            return self.insert_saga_at_once(new, None).await;
        }
        self.create_saga_in_transaction(new, Holder::AnyWithFreeSlot)
            .await
    }

    async fn create_saga_for(
        &self,
        new: NewSaga,
        worker: Uuid,
    ) -> Result<(SagaRecord, bool), Error> {
        if new.concurrency.is_some() {
            // Queued for a slot of its key: the claim takes it when it holds one.
            return self.create_saga(new).await;
        }
        if !new.documents.is_empty() {
            return self
                .create_saga_in_transaction(new, Holder::Worker(worker))
                .await;
        }
        self.insert_saga_at_once(new, Some(worker)).await
    }

    async fn saga(&self, id: Uuid) -> Result<Option<SagaRecord>, Error> {
        let row = sqlx::query(&format!(
            "SELECT {SAGA_COLUMNS} FROM paysaga_sagas WHERE id = $1"
        ))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(saga_from_row).transpose()
    }

    async fn list_sagas(&self, filter: &SagaFilter) -> Result<Vec<SagaRecord>, Error> {
        let statuses: Vec<&str> = filter.statuses.iter().map(|st| st.as_str()).collect();
        let order = match (filter.sort_by_updated, filter.ascending) {
            (false, false) => "s.created_at DESC",
            (false, true) => "s.created_at ASC",
            (true, false) => "s.updated_at DESC",
            (true, true) => "s.updated_at ASC",
        };
        let rows = sqlx::query(&list_sagas_sql(order))
            .bind(&statuses)
            .bind(&filter.workflow)
            .bind(&filter.step)
            .bind(&filter.provider)
            .bind(&filter.key)
            .bind(filter.created_after)
            .bind(filter.created_before)
            .bind(filter.updated_after)
            .bind(filter.updated_before)
            .bind(filter.stuck_since)
            .bind(filter.stuck_attempts.unwrap_or(5) as i32)
            .bind(filter.limit.unwrap_or(100))
            .bind(filter.offset.unwrap_or(0))
            .bind(filter.alerts)
            .bind(&filter.reference)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(saga_from_row).collect()
    }

    async fn history(&self, id: Uuid) -> Result<Vec<HistoryRecord>, Error> {
        let rows = sqlx::query(
            "SELECT id, at, worker, actor, step, attempt, kind, error, detail
             FROM paysaga_history WHERE saga_id = $1 ORDER BY id",
        )
        .bind(id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                let kind: String = row.try_get("kind")?;
                Ok(HistoryRecord {
                    id: row.try_get("id")?,
                    at: row.try_get("at")?,
                    worker: row.try_get("worker")?,
                    actor: row.try_get("actor")?,
                    step: row.try_get("step")?,
                    attempt: row.try_get::<Option<i32>, _>("attempt")?.map(|a| a as u32),
                    kind: kind.parse().map_err(Error::Corrupt)?,
                    error: row.try_get("error")?,
                    detail: row.try_get("detail")?,
                })
            })
            .collect()
    }

    async fn request_cancel(
        &self,
        id: Uuid,
        actor: &str,
        reason: &str,
    ) -> Result<SagaRecord, Error> {
        self.request_cancel_with(id, actor, json!({"reason": reason}))
            .await
    }

    async fn register_worker(&self, w: &WorkerInfo, ttl: Duration) -> Result<(), Error> {
        sqlx::query(
            "INSERT INTO paysaga_workers (id, name, hostname, pid, step_kinds, lease_expires_at,
                                          concurrency, wake_channel)
             VALUES ($1, $2, $3, $4, $5, now() + $6 * interval '1 millisecond', $7, $8)",
        )
        .bind(w.id)
        .bind(&w.name)
        .bind(&w.hostname)
        .bind(w.pid as i32)
        .bind(&w.step_kinds)
        .bind(ttl.as_millis() as f64)
        .bind(
            w.assignments
                .map(|a| i32::try_from(a.concurrency).unwrap_or(i32::MAX)),
        )
        .bind(w.assignments.map(|a| worker_channel(a.listener)))
        .execute(&self.lease_pool)
        .await?;
        Ok(())
    }

    async fn heartbeat(&self, worker: Uuid, ttl: Duration) -> Result<bool, Error> {
        let updated = sqlx::query(
            "UPDATE paysaga_workers
             SET heartbeat_at = now(), lease_expires_at = now() + $2 * interval '1 millisecond'
             WHERE id = $1 AND stopped_at IS NULL AND lease_expires_at > now()",
        )
        .bind(worker)
        .bind(ttl.as_millis() as f64)
        .execute(&self.lease_pool)
        .await?;
        Ok(updated.rows_affected() == 1)
    }

    async fn stop_worker_because(&self, worker: Uuid, reason: &str) -> Result<u64, Error> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "UPDATE paysaga_workers SET stopped_at = now(), lease_expires_at = now() WHERE id = $1",
        )
        .bind(worker)
        .execute(&mut *tx)
        .await?;
        let released = release_sagas(&mut tx, worker, None, reason).await?.len() as u64;
        if released > 0 {
            notify(&mut tx).await?;
        }
        tx.commit().await?;
        Ok(released)
    }

    async fn reap_expired_workers(&self) -> Result<u64, Error> {
        Ok(self.reap(None).await?.sagas)
    }

    async fn sagas_needing_other_kinds(
        &self,
        kinds: &[String],
    ) -> Result<Vec<UnrunnableGroup>, Error> {
        let rows = sqlx::query(&format!(
            "SELECT d.name, d.version, count(*) AS sagas,
                    ARRAY(SELECT unnest(d.step_kinds) EXCEPT SELECT unnest($1::text[])) AS missing
             FROM paysaga_sagas s JOIN paysaga_definitions d ON d.id = s.definition_id
             WHERE s.status IN {ACTIVE} AND NOT d.step_kinds <@ $1::text[]
             GROUP BY d.id, d.name, d.version, d.step_kinds"
        ))
        .bind(kinds)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(unrunnable_from_row).collect()
    }

    async fn claim(
        &self,
        worker: Uuid,
        kinds: &[String],
        limit: i64,
    ) -> Result<Vec<ClaimedSaga>, Error> {
        let mut conn = self.kept.take(&self.pool).await?;
        let rows = sqlx::query(&claim_sql())
            .bind(worker)
            .bind(limit)
            .bind(kinds)
            .fetch_all(&mut *conn)
            .await;
        self.kept.give_back(conn, rows.as_ref().err());
        let rows = rows?;
        rows.iter()
            .map(|r| {
                Ok(ClaimedSaga {
                    saga: saga_from_row(r)?,
                })
            })
            .collect()
    }

    async fn next_due(&self, kinds: &[String]) -> Result<Option<DateTime<Utc>>, Error> {
        let mut conn = self.kept.take(&self.pool).await?;
        let due: Result<Option<Option<DateTime<Utc>>>, _> = sqlx::query_scalar(&next_due_sql())
            .bind(kinds)
            .fetch_optional(&mut *conn)
            .await;
        self.kept.give_back(conn, due.as_ref().err());
        Ok(due?.flatten())
    }

    #[instrument(skip_all, fields(saga_id = %m.saga, step = m.step))]
    async fn mark_effect(&self, m: EffectMarkRequest<'_>) -> Result<EffectMark, Error> {
        let mut tx = self.pool.begin().await?;
        // Held back until the later of the end the marking worker stored and the mark's time
        // plus this worker's own window.
        let row = sqlx::query(
            "SELECT effect_marked_at, effect_until,
                    GREATEST(effect_until, effect_marked_at + make_interval(secs => $5)) AS closes,
                    effect_step = $4
                      AND GREATEST(effect_until, effect_marked_at + make_interval(secs => $5)) > now()
                        AS recent,
                    extract(epoch FROM GREATEST(effect_until, effect_marked_at + make_interval(secs => $5))
                                       - now())::float8 AS remaining
             FROM paysaga_sagas
             WHERE id = $1 AND owner = $2 AND fence = $3
               AND EXISTS (SELECT 1 FROM paysaga_workers w
                           WHERE w.id = $2 AND w.stopped_at IS NULL AND w.lease_expires_at > now())
             FOR UPDATE",
        )
        .bind(m.saga)
        .bind(m.worker)
        .bind(m.fence)
        .bind(m.step)
        .bind(m.window.as_secs_f64())
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else {
            tx.rollback().await?;
            return Err(Error::LeaseLost { saga: m.saga });
        };
        if row.try_get::<Option<bool>, _>("recent")?.unwrap_or(false) {
            tx.rollback().await?;
            let remaining: f64 = row.try_get::<Option<f64>, _>("remaining")?.unwrap_or(0.0);
            return Ok(EffectMark::Wait {
                marked_at: row.try_get("effect_marked_at")?,
                remaining: Duration::from_secs_f64(remaining.max(0.0)),
            });
        }
        let marked: (DateTime<Utc>, DateTime<Utc>) = sqlx::query_as(
            "UPDATE paysaga_sagas SET effect_step = $2, effect_marked_at = now(),
                    effect_until = now() + make_interval(secs => $3)
             WHERE id = $1 RETURNING effect_marked_at, effect_until",
        )
        .bind(m.saga)
        .bind(m.step)
        .bind(m.window.as_secs_f64())
        .fetch_one(&mut *tx)
        .await?;
        let entry = crate::effect_marked_entry(&m, marked.0, marked.1);
        insert_history(&mut tx, m.saga, Some(m.worker), None, &[entry]).await?;
        tx.commit().await?;
        Ok(EffectMark::Marked)
    }

    #[instrument(skip_all, fields(saga_id = %m.saga, step = m.step))]
    async fn clear_effect_mark(&self, m: EffectMarkRequest<'_>) -> Result<bool, Error> {
        let mut tx = self.pool.begin().await?;
        let cleared = sqlx::query(
            "UPDATE paysaga_sagas SET effect_step = NULL, effect_marked_at = NULL, effect_until = NULL
             WHERE id = $1 AND owner = $2 AND fence = $3 AND effect_step = $4",
        )
        .bind(m.saga)
        .bind(m.worker)
        .bind(m.fence)
        .bind(m.step)
        .execute(&mut *tx)
        .await?
        .rows_affected()
            == 1;
        if cleared {
            let entry = crate::effect_withdrawn_entry(&m);
            insert_history(&mut tx, m.saga, Some(m.worker), None, &[entry]).await?;
        }
        tx.commit().await?;
        Ok(cleared)
    }

    async fn give_back(
        &self,
        saga: Uuid,
        worker: Uuid,
        fence: i64,
        reason: &str,
    ) -> Result<bool, Error> {
        let mut tx = self.pool.begin().await?;
        let released = !release_sagas(&mut tx, worker, Some((saga, fence)), reason)
            .await?
            .is_empty();
        if released {
            notify(&mut tx).await?;
        }
        tx.commit().await?;
        Ok(released)
    }

    #[instrument(skip_all, fields(saga_id = %c.saga, status = %c.transition.status))]
    async fn commit(&self, c: Commit<'_>) -> Result<Committed, Error> {
        let t = c.transition;
        if t.wait.is_none() && c.prior_status != SagaStatus::Waiting {
            return self.commit_simple(&c).await;
        }
        let mut tx = self.pool.begin().await?;
        // The lock order (see `lock_correlation`): correlation lock, saga row, wait row, events.
        if let Some(wait) = &t.wait {
            lock_correlation(&mut tx, &wait.provider, &wait.correlation_key).await?;
        }
        let row = sqlx::query(
            "SELECT wake_event, cancel_requested, concurrency_key FROM paysaga_sagas
             WHERE id = $1 AND owner = $2 AND fence = $3 AND last_commit IS DISTINCT FROM $4
               AND EXISTS (SELECT 1 FROM paysaga_workers w
                           WHERE w.id = $2 AND w.stopped_at IS NULL AND w.lease_expires_at > now())
             FOR UPDATE",
        )
        .bind(c.saga)
        .bind(c.worker)
        .bind(c.fence)
        .bind(c.token)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else {
            tx.rollback().await?;
            return self.already_committed(&c).await;
        };
        let stored_event: Option<Value> = row.try_get("wake_event")?;
        let cancel_requested: bool = row.try_get("cancel_requested")?;
        let concurrency_key: Option<String> = row.try_get("concurrency_key")?;
        let mut pending: Option<Event> = stored_event
            .map(serde_json::from_value::<Event>)
            .transpose()
            .map_err(|e| Error::Corrupt(format!("saga {} wake_event: {e}", c.saga)))?
            .filter(|ev| Some(ev.inbox_id) != c.consumed_event);

        let mut keep = t.continue_now;
        let mut run_at = t.run_at;
        let mut wait_json: Option<Value> = None;
        // The wait row before any inbox row: the step's old wait ends here (a new one is
        // inserted below, keeping the old one's place in the queue for its key, unless a
        // stored event ends it at once).
        let mut waiting_since: Option<DateTime<Utc>> = None;
        if t.wait.is_some() || c.prior_status == SagaStatus::Waiting {
            waiting_since = sqlx::query_scalar(
                "DELETE FROM paysaga_waits WHERE saga_id = $1 RETURNING created_at",
            )
            .bind(c.saga)
            .fetch_optional(&mut *tx)
            .await?;
        }
        if let Some(wait) = &t.wait {
            if pending.is_none() {
                // Inbox first: an event that arrived before the wait was stored ends it now.
                let found = sqlx::query(
                    "UPDATE paysaga_events SET consumed_by = $1, consumed_at = now()
                     WHERE id = (SELECT id FROM paysaga_events
                                 WHERE provider = $2 AND correlation_key = $3
                                   AND event_type = ANY($4) AND consumed_by IS NULL
                                   AND parse_error IS NULL
                                 ORDER BY id LIMIT 1 FOR UPDATE)
                     RETURNING id, provider, event_id, event_type, correlation_key, payload",
                )
                .bind(c.saga)
                .bind(&wait.provider)
                .bind(&wait.correlation_key)
                .bind(&wait.event_types)
                .fetch_optional(&mut *tx)
                .await?;
                if let Some(r) = found {
                    pending = Some(Event {
                        inbox_id: r.try_get("id")?,
                        provider: r.try_get("provider")?,
                        event_id: r.try_get("event_id")?,
                        event_type: r
                            .try_get::<Option<String>, _>("event_type")?
                            .unwrap_or_default(),
                        correlation_key: r
                            .try_get::<Option<String>, _>("correlation_key")?
                            .unwrap_or_default(),
                        payload: r
                            .try_get::<Option<Value>, _>("payload")?
                            .unwrap_or(Value::Null),
                    });
                }
            }
            wait_json =
                Some(serde_json::to_value(wait).map_err(|e| Error::Corrupt(e.to_string()))?);
            if pending.is_some() {
                keep = true;
                run_at = Some(Utc::now());
            } else {
                sqlx::query(
                    "INSERT INTO paysaga_waits (saga_id, provider, event_types, correlation_key, deadline,
                                                created_at)
                     VALUES ($1, $2, $3, $4, $5, COALESCE($6, now()))",
                )
                .bind(c.saga)
                .bind(&wait.provider)
                .bind(&wait.event_types)
                .bind(&wait.correlation_key)
                .bind(wait.deadline)
                .bind(waiting_since)
                .execute(&mut *tx)
                .await?;
            }
        } else {
            // The step left its wait (or never waited): no stale event or wait may remain
            // (the wait row was deleted above).
            pending = None;
        }
        let wake_json = pending
            .as_ref()
            .map(serde_json::to_value)
            .transpose()
            .map_err(|e| Error::Corrupt(e.to_string()))?;
        let final_status = t.status.is_final();
        if final_status {
            keep = false;
            run_at = None;
        }
        let (output_name, output_value) = match &t.output {
            Some((n, v)) => (Some(n.as_str()), Some(v)),
            None => (None, None),
        };
        sqlx::query(
            "UPDATE paysaga_sagas SET status = $2, step_index = $3, attempt = $4,
                    step_started_at = $5, run_at = CASE WHEN $12 THEN run_at ELSE $6 END,
                    wait = $7, wake_event = $8,
                    outputs = CASE WHEN $9::text IS NULL THEN outputs
                                   ELSE outputs || jsonb_build_object($9::text, $10::jsonb) END,
                    last_error = $11,
                    owner = CASE WHEN $12 THEN owner ELSE NULL END,
                    updated_at = now(),
                    finished_at = CASE WHEN $13 THEN now() ELSE NULL END,
                    last_commit = $14, effect_possible = $15,
                    cancel_requested = cancel_requested AND NOT $13,
                    closed_outcome = CASE WHEN $2 = 'closed' THEN close_requested->>'outcome' END,
                    close_requested = CASE WHEN $2 IN ('compensating', 'needs_operator')
                                           THEN close_requested END
             WHERE id = $1",
        )
        .bind(c.saga)
        .bind(t.status.as_str())
        .bind(t.step_index as i32)
        .bind(t.attempt as i32)
        .bind(t.step_started_at)
        .bind(run_at)
        .bind(&wait_json)
        .bind(&wake_json)
        .bind(output_name)
        .bind(output_value)
        .bind(&t.last_error)
        .bind(keep)
        .bind(final_status)
        .bind(c.token)
        .bind(t.effect_possible)
        .execute(&mut *tx)
        .await?;
        insert_history(&mut tx, c.saga, Some(c.worker), None, &t.history).await?;
        insert_references(&mut tx, c.saga, c.references).await?;
        if !keep && run_at.is_some_and(|at| at <= Utc::now()) {
            notify(&mut tx).await?;
        }
        tx.commit().await?;
        if t.status.is_final() {
            self.ended.signals.signal(c.saga);
        }
        if let (true, Some(key)) = (t.status.is_ended(), &concurrency_key) {
            self.hand_over_slot(c.saga, key).await;
        }
        Ok(Committed {
            kept: keep,
            wake_event: pending,
            cancel_requested,
        })
    }

    #[instrument(skip_all, fields(provider = %e.provider, event_id = %e.event_id))]
    async fn deliver_event(&self, e: NewEvent) -> Result<Delivery, Error> {
        let mut tx = self.pool.begin().await?;
        if let Some(key) = &e.correlation_key {
            lock_correlation(&mut tx, &e.provider, key).await?;
        }
        let inserted: Option<i64> = sqlx::query_scalar(
            "INSERT INTO paysaga_events (provider, event_id, event_type, correlation_key, payload,
                                         raw_body, parse_error)
             VALUES ($1, $2, $3, $4, $5, $6, $7)
             ON CONFLICT (provider, event_id) DO NOTHING
             RETURNING id",
        )
        .bind(&e.provider)
        .bind(&e.event_id)
        .bind(&e.event_type)
        .bind(&e.correlation_key)
        .bind(&e.payload)
        .bind(&e.raw_body)
        .bind(&e.parse_error)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(inbox_id) = inserted else {
            tx.rollback().await?;
            let id: i64 = sqlx::query_scalar(
                "SELECT id FROM paysaga_events WHERE provider = $1 AND event_id = $2",
            )
            .bind(&e.provider)
            .bind(&e.event_id)
            .fetch_one(&self.pool)
            .await?;
            return Ok(Delivery {
                inbox_id: id,
                duplicate: true,
                matched_saga: None,
            });
        };
        let mut matched_saga = None;
        if let (Some(key), Some(event_type), None) =
            (&e.correlation_key, &e.event_type, &e.parse_error)
        {
            // The event's own (new) inbox row is invisible to others: locking the saga after
            // inserting it keeps the lock order.
            if let Some(saga) = end_matching_wait(&mut tx, &e.provider, key, event_type).await? {
                let event = Event {
                    inbox_id,
                    provider: e.provider.clone(),
                    event_id: e.event_id.clone(),
                    event_type: event_type.clone(),
                    correlation_key: key.clone(),
                    payload: e.payload.clone().unwrap_or(Value::Null),
                };
                hand_event_to_saga(&mut tx, saga, &event).await?;
                notify(&mut tx).await?;
                matched_saga = Some(saga);
            }
        }
        tx.commit().await?;
        Ok(Delivery {
            inbox_id,
            duplicate: false,
            matched_saga,
        })
    }

    async fn list_events(&self, filter: &EventFilter) -> Result<Vec<EventRecord>, Error> {
        let rows = sqlx::query(
            "SELECT id, provider, event_id, event_type, correlation_key, payload, parse_error,
                    NULL::bytea AS raw_body, received_at, consumed_by, consumed_at
             FROM paysaga_events
             WHERE (NOT $1 OR consumed_by IS NULL) AND ($2::text IS NULL OR provider = $2)
               AND (NOT $4 OR parse_error IS NOT NULL)
             ORDER BY id DESC LIMIT $3",
        )
        .bind(filter.unmatched)
        .bind(&filter.provider)
        .bind(filter.limit.unwrap_or(100))
        .bind(filter.unparseable)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(event_from_row).collect()
    }

    async fn event(&self, id: i64) -> Result<Option<EventRecord>, Error> {
        let row = sqlx::query(
            "SELECT id, provider, event_id, event_type, correlation_key, payload, parse_error,
                    raw_body, received_at, consumed_by, consumed_at
             FROM paysaga_events WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(event_from_row).transpose()
    }

    #[instrument(skip(self, fields, reason))]
    async fn replay_event(
        &self,
        id: i64,
        fields: Option<(String, String, Value)>,
        actor: &str,
        reason: &str,
    ) -> Result<Delivery, Error> {
        let stored = self
            .event(id)
            .await?
            .ok_or_else(|| Error::NotFound(format!("inbox event {id}")))?;
        let (event_type, key, payload) = crate::replay_fields(&stored, fields)?;
        let mut tx = self.pool.begin().await?;
        lock_correlation(&mut tx, &stored.provider, &key).await?;
        // The lock order: the saga (and its wait) before the inbox row.
        let waiting = end_matching_wait(&mut tx, &stored.provider, &key, &event_type).await?;
        sqlx::query(
            "UPDATE paysaga_events SET event_type = $2, correlation_key = $3, payload = $4, parse_error = NULL
             WHERE id = $1",
        )
        .bind(id)
        .bind(&event_type)
        .bind(&key)
        .bind(&payload)
        .execute(&mut *tx)
        .await?;
        let Some(saga) = waiting else {
            tx.commit().await?;
            return Err(Error::Refused(format!(
                "no saga waits for {} {event_type} with key {key} now; the event stays in the inbox{}",
                stored.provider,
                if stored.consumed_by.is_none() { " and is consumed when such a wait begins" } else { "" }
            )));
        };
        let event = Event {
            inbox_id: id,
            provider: stored.provider.clone(),
            event_id: stored.event_id.clone(),
            event_type,
            correlation_key: key,
            payload,
        };
        hand_event_to_saga(&mut tx, saga, &event).await?;
        let entry = HistoryEntry {
            kind: paysaga_core::HistoryKind::EventReplayed,
            step: None,
            attempt: None,
            error: None,
            detail: json!({"reason": reason, "inbox_id": id, "event_id": event.event_id}),
        };
        insert_history(&mut tx, saga, None, Some(actor), &[entry]).await?;
        notify(&mut tx).await?;
        tx.commit().await?;
        Ok(Delivery {
            inbox_id: id,
            duplicate: false,
            matched_saga: Some(saga),
        })
    }

    async fn operator_apply(&self, a: OperatorAction<'_>) -> Result<SagaRecord, Error> {
        self.operator_apply_with(a, OperatorChange::default()).await
    }

    async fn append_history(
        &self,
        saga: Uuid,
        actor: &str,
        entries: &[HistoryEntry],
    ) -> Result<(), Error> {
        let mut tx = self.pool.begin().await?;
        insert_history(&mut tx, saga, None, Some(actor), entries).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn stats(&self) -> Result<Stats, Error> {
        let by_status: Vec<(String, String, i64)> = sqlx::query_as(
            &format!(
                "SELECT workflow, CASE WHEN owner IS NOT NULL AND status IN {} THEN 'running' ELSE status END,
                        count(*)
                 FROM paysaga_sagas GROUP BY 1, 2 ORDER BY 1, 2",
                crate::HOLDABLE
            ),
        )
        .fetch_all(&self.pool)
        .await?;
        let by_step: Vec<(String, String, i64)> = sqlx::query_as(&format!(
            "SELECT s.workflow, coalesce(d.body->'steps'->s.step_index->>'name', '-'), count(*)
             FROM paysaga_sagas s JOIN paysaga_definitions d ON d.id = s.definition_id
             WHERE s.status IN {ACTIVE} GROUP BY 1, 2 ORDER BY 3 DESC"
        ))
        .fetch_all(&self.pool)
        .await?;
        let oldest_waiting: Option<(Uuid, String, DateTime<Utc>)> = sqlx::query_as(
            "SELECT id, workflow, (wait->>'since')::timestamptz FROM paysaga_sagas
             WHERE status = 'waiting' ORDER BY (wait->>'since')::timestamptz LIMIT 1",
        )
        .fetch_optional(&self.pool)
        .await?;
        let retries: Vec<(i32, i64)> = sqlx::query_as(&format!(
            "SELECT attempt, count(*) FROM paysaga_sagas WHERE status IN {ACTIVE} AND attempt > 1
             GROUP BY 1 ORDER BY 1"
        ))
        .fetch_all(&self.pool)
        .await?;
        let unmatched_events: Vec<(String, i64)> = sqlx::query_as(
            "SELECT provider, count(*) FROM paysaga_events WHERE consumed_by IS NULL GROUP BY 1 ORDER BY 1",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(Stats {
            by_status,
            by_step,
            oldest_waiting,
            retries,
            unmatched_events,
        })
    }

    async fn owned_sagas(&self, worker: Uuid) -> Result<Vec<(Uuid, i64)>, Error> {
        let rows: Vec<(Uuid, i64)> = sqlx::query_as(OWNED_SQL)
            .bind(worker)
            .fetch_all(&self.lease_pool)
            .await?;
        Ok(rows)
    }

    async fn db_now(&self) -> Result<DateTime<Utc>, Error> {
        let now: DateTime<Utc> = sqlx::query_scalar("SELECT now()")
            .fetch_one(&self.lease_pool)
            .await?;
        Ok(now)
    }

    async fn wakeups(&self) -> Result<WakeupsBox, Error> {
        PgWakeups::listen(&self.listen_pool, vec![WAKEUP_CHANNEL.to_string()]).await
    }

    async fn worker_wakeups(&self, listener: Uuid) -> Result<WakeupsBox, Error> {
        PgWakeups::listen(
            &self.listen_pool,
            vec![WAKEUP_CHANNEL.to_string(), worker_channel(listener)],
        )
        .await
    }

    async fn watch_end(&self, id: Uuid) -> Result<Option<crate::EndWatch>, Error> {
        // LISTEN before the mark: an end committed after the mark is then surely heard,
        // one committed before it is in the row the mark returns.
        let signal = self.end_signal(id).await?;
        let row = sqlx::query(&format!(
            "UPDATE paysaga_sagas SET awaited = true WHERE id = $1 RETURNING {SAGA_COLUMNS}"
        ))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        match row {
            Some(row) => Ok(Some(crate::EndWatch {
                saga: saga_from_row(&row)?,
                signal,
            })),
            None => Ok(None),
        }
    }

    async fn end_signal(&self, id: Uuid) -> Result<crate::EndSignal, Error> {
        self.ended.start();
        let mut signal = self.ended.signals.subscribe(id);
        signal.heard_within(LISTENER_READY_WITHIN).await;
        Ok(crate::EndSignal(signal))
    }

    async fn find_saga_by_key(
        &self,
        workflow: &str,
        key: &str,
    ) -> Result<Option<SagaRecord>, Error> {
        let row = sqlx::query(&format!(
            "SELECT {SAGA_COLUMNS} FROM paysaga_sagas WHERE workflow = $1 AND idempotency_key = $2"
        ))
        .bind(workflow)
        .bind(key)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(saga_from_row).transpose()
    }

    #[instrument(skip_all, fields(saga_id = %saga, provider = %e.provider, event_id = %e.event_id))]
    async fn deliver_to_saga(
        &self,
        saga: Uuid,
        e: NewEvent,
        actor: &str,
        entry: HistoryEntry,
    ) -> Result<Delivery, Error> {
        let (Some(key), Some(event_type), Some(payload)) =
            (&e.correlation_key, &e.event_type, &e.payload)
        else {
            return Err(Error::Refused(format!(
                "an event for saga {saga} needs a type, a correlation key and a body"
            )));
        };
        let mut tx = self.pool.begin().await?;
        // The lock order: correlation lock, saga row, wait row, inbox row.
        lock_correlation(&mut tx, &e.provider, key).await?;
        sqlx::query("SELECT 1 FROM paysaga_sagas WHERE id = $1 FOR UPDATE")
            .bind(saga)
            .execute(&mut *tx)
            .await?;
        let ended: Option<Uuid> = sqlx::query_scalar(
            "DELETE FROM paysaga_waits
             WHERE saga_id = $1 AND provider = $2 AND correlation_key = $3 AND $4 = ANY(event_types)
             RETURNING saga_id",
        )
        .bind(saga)
        .bind(&e.provider)
        .bind(key)
        .bind(event_type)
        .fetch_optional(&mut *tx)
        .await?;
        if ended.is_none() {
            tx.rollback().await?;
            return Err(Error::Refused(format!(
                "saga {saga} no longer waits for {} {event_type} with key {key}; nothing was delivered",
                e.provider
            )));
        }
        let inbox_id: i64 = sqlx::query_scalar(
            "INSERT INTO paysaga_events (provider, event_id, event_type, correlation_key, payload)
             VALUES ($1, $2, $3, $4, $5) RETURNING id",
        )
        .bind(&e.provider)
        .bind(&e.event_id)
        .bind(event_type)
        .bind(key)
        .bind(payload)
        .fetch_one(&mut *tx)
        .await?;
        let event = Event {
            inbox_id,
            provider: e.provider.clone(),
            event_id: e.event_id.clone(),
            event_type: event_type.clone(),
            correlation_key: key.clone(),
            payload: payload.clone(),
        };
        hand_event_to_saga(&mut tx, saga, &event).await?;
        insert_history(&mut tx, saga, None, Some(actor), &[entry]).await?;
        notify(&mut tx).await?;
        tx.commit().await?;
        Ok(Delivery {
            inbox_id,
            duplicate: false,
            matched_saga: Some(saga),
        })
    }
    #[instrument(skip_all, fields(document = %doc.id, size = doc.content.len()))]
    async fn put_document(&self, doc: &NewDocument) -> Result<DocumentRecord, Error> {
        let row = sqlx::query(&format!(
            "INSERT INTO paysaga_documents (id, content_type, size, sha256, content)
             VALUES ($1, $2, $3, $4, $5) RETURNING {DOCUMENT_COLUMNS}"
        ))
        .bind(doc.id.0)
        .bind(&doc.content_type)
        .bind(doc.content.len() as i64)
        .bind(&doc.sha256)
        .bind(&doc.content)
        .fetch_one(&self.pool)
        .await?;
        document_from_row(&row)
    }

    async fn document(&self, id: DocumentId) -> Result<Option<DocumentRecord>, Error> {
        let row = sqlx::query(&format!(
            "SELECT {DOCUMENT_COLUMNS} FROM paysaga_documents WHERE id = $1"
        ))
        .bind(id.0)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(document_from_row).transpose()
    }

    async fn document_content(&self, id: DocumentId) -> Result<Option<Vec<u8>>, Error> {
        let content: Option<Option<Vec<u8>>> =
            sqlx::query_scalar("SELECT content FROM paysaga_documents WHERE id = $1")
                .bind(id.0)
                .fetch_optional(&self.pool)
                .await?;
        Ok(content.flatten())
    }

    #[instrument(skip_all, fields(saga_id = %saga, documents = ids.len()))]
    async fn claim_documents(&self, saga: Uuid, ids: &[DocumentId]) -> Result<(), Error> {
        let mut tx = self.pool.begin().await?;
        claim_documents_on(&mut tx, saga, ids).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn release_documents(&self, saga: Uuid) -> Result<u64, Error> {
        let done = sqlx::query("UPDATE paysaga_documents SET saga_id = NULL WHERE saga_id = $1")
            .bind(saga)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected())
    }

    #[instrument(skip_all)]
    async fn delete_expired_documents(
        &self,
        retention: Duration,
        unclaimed_after: Duration,
        limit: i64,
    ) -> Result<u64, Error> {
        let done = sqlx::query(&expired_documents_sql())
            .bind(retention.as_secs_f64())
            .bind(unclaimed_after.as_secs_f64())
            .bind(limit)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected())
    }

    #[instrument(skip_all, fields(saga_id = %a.saga, actor = %a.actor))]
    async fn operator_apply_with(
        &self,
        a: OperatorAction<'_>,
        change: OperatorChange<'_>,
    ) -> Result<SagaRecord, Error> {
        let t = a.transition;
        let mut tx = self.pool.begin().await?;
        let row =
            sqlx::query("SELECT status, step_index, owner, key_generations FROM paysaga_sagas WHERE id = $1 FOR UPDATE")
                .bind(a.saga)
                .fetch_optional(&mut *tx)
                .await?
                .ok_or_else(|| Error::NotFound(format!("saga {}", a.saga)))?;
        let status: String = row.try_get("status")?;
        let step_index: i32 = row.try_get("step_index")?;
        if status != a.expect_status.as_str() || step_index as usize != a.expect_step_index {
            return Err(Error::Refused(format!(
                "saga {} changed while the action was prepared (now {status} at step #{}); look at it again and retry the action",
                a.saga,
                step_index + 1
            )));
        }
        let owner: Option<Uuid> = row.try_get("owner")?;
        let generations: Value = row.try_get("key_generations")?;
        let generations = crate::next_key_generations(a.saga, generations, &change)?;
        crate::check_operator_change(a.saga, t, owner, &change)?;
        let wait_json = t
            .wait
            .as_ref()
            .map(serde_json::to_value)
            .transpose()
            .map_err(|e| Error::Corrupt(e.to_string()))?;
        let (output_name, output_value) = match &t.output {
            Some((n, v)) => (Some(n.as_str()), Some(v)),
            None => (None, None),
        };
        let final_status = t.status.is_final();
        let row = sqlx::query(&format!(
            "UPDATE paysaga_sagas SET status = $2, step_index = $3, attempt = $4, step_started_at = $5,
                    run_at = $6, wait = $7,
                    wake_event = CASE WHEN $7::jsonb IS NULL THEN NULL ELSE wake_event END,
                    outputs = CASE WHEN $8::text IS NULL THEN outputs
                                   ELSE outputs || jsonb_build_object($8::text, $9::jsonb) END,
                    last_error = $10, owner = NULL, fence = fence + 1, updated_at = now(),
                    finished_at = CASE WHEN $11 THEN now() ELSE NULL END,
                    effect_possible = $12, closed_outcome = $13,
                    input = coalesce($14, input), key_generations = $15,
                    close_requested = CASE WHEN $2 IN ('compensating', 'needs_operator')
                                           THEN coalesce($16::jsonb, close_requested) END
             WHERE id = $1 RETURNING {SAGA_COLUMNS}"
        ))
        .bind(a.saga)
        .bind(t.status.as_str())
        .bind(t.step_index as i32)
        .bind(t.attempt as i32)
        .bind(t.step_started_at)
        .bind(if final_status { None } else { t.run_at })
        .bind(&wait_json)
        .bind(output_name)
        .bind(output_value)
        .bind(&t.last_error)
        .bind(final_status)
        .bind(t.effect_possible)
        .bind(change.closed_outcome.map(|o| o.as_str()))
        .bind(change.input)
        .bind(&generations)
        .bind(
            change
                .close_request
                .map(serde_json::to_value)
                .transpose()
                .map_err(|e| Error::Corrupt(e.to_string()))?,
        )
        .fetch_one(&mut *tx)
        .await?;
        if t.wait.is_none() {
            sqlx::query("DELETE FROM paysaga_waits WHERE saga_id = $1")
                .bind(a.saga)
                .execute(&mut *tx)
                .await?;
        }
        insert_history(&mut tx, a.saga, None, Some(a.actor), &t.history).await?;
        notify(&mut tx).await?;
        tx.commit().await?;
        let saga = saga_from_row(&row)?;
        if let (true, Some(c)) = (t.status.is_ended(), &saga.concurrency) {
            self.hand_over_slot(saga.id, &c.key).await;
        }
        if crate::operator_cascades(t, &change) {
            let why = format!("is {} after an action of {}", t.status, a.actor);
            self.cascade_to_children(saga.id, &why).await;
        }
        Ok(saga)
    }

    #[instrument(skip(self, detail), fields(saga_id = %id))]
    async fn request_cancel_with(
        &self,
        id: Uuid,
        actor: &str,
        detail: Value,
    ) -> Result<SagaRecord, Error> {
        let mut tx = self.pool.begin().await?;
        let row = sqlx::query(&format!(
            "SELECT {SAGA_COLUMNS} FROM paysaga_sagas WHERE id = $1 FOR UPDATE"
        ))
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?
        .ok_or_else(|| Error::NotFound(format!("saga {id}")))?;
        let saga = saga_from_row(&row)?;
        let refusal = if saga.status.is_final() {
            Err(Error::Refused(format!(
                "saga {id} is {} and cannot be cancelled{}",
                saga.status,
                crate::cancel_refusal_hint(saga.status)
            )))
        } else {
            crate::refuse_cancel_while_closing(&saga)
        };
        if let Err(refused) = refusal {
            // Release the row lock now: a dropped transaction rolls back only when its
            // connection is next used, and a claim meanwhile would skip the locked saga.
            tx.rollback().await?;
            return Err(refused);
        }
        // Make it runnable now (a retry backoff or a wait must not delay a cancel); the
        // holder, if any, applies it after its current step.
        let row = sqlx::query(&format!(
            "UPDATE paysaga_sagas SET cancel_requested = true, run_at = now(), updated_at = now()
             WHERE id = $1 RETURNING {SAGA_COLUMNS}"
        ))
        .bind(id)
        .fetch_one(&mut *tx)
        .await?;
        let entry = HistoryEntry {
            kind: paysaga_core::HistoryKind::CancelRequested,
            step: None,
            attempt: None,
            error: None,
            detail,
        };
        insert_history(&mut tx, id, None, Some(actor), &[entry]).await?;
        notify(&mut tx).await?;
        tx.commit().await?;
        // The children now, whether or not a worker serves the parent's workflow.
        self.cascade_to_children(id, &format!("was asked to cancel by {actor}"))
            .await;
        saga_from_row(&row)
    }

    async fn operator_history(&self, filter: &AuditFilter) -> Result<Vec<AuditRecord>, Error> {
        let rows = sqlx::query(OPERATOR_HISTORY_SQL)
            .bind(filter.since)
            .bind(&filter.actor)
            .bind(filter.limit.unwrap_or(100))
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|row| {
                let kind: String = row.try_get("kind")?;
                Ok(AuditRecord {
                    saga_id: row.try_get("saga_id")?,
                    workflow: row.try_get("workflow")?,
                    entry: HistoryRecord {
                        id: row.try_get("id")?,
                        at: row.try_get("at")?,
                        worker: row.try_get("worker")?,
                        actor: row.try_get("actor")?,
                        step: row.try_get("step")?,
                        attempt: row.try_get::<Option<i32>, _>("attempt")?.map(|a| a as u32),
                        kind: kind.parse().map_err(Error::Corrupt)?,
                        error: row.try_get("error")?,
                        detail: row.try_get("detail")?,
                    },
                })
            })
            .collect()
    }

    async fn saga_references(&self, saga: Uuid) -> Result<Vec<SagaReference>, Error> {
        let rows = sqlx::query(
            "SELECT step, name, value FROM paysaga_saga_refs WHERE saga_id = $1
             ORDER BY created_at, step, name, value",
        )
        .bind(saga)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(SagaReference {
                    step: r.try_get("step")?,
                    name: r.try_get("name")?,
                    value: r.try_get("value")?,
                })
            })
            .collect()
    }

    async fn live_worker_kinds(&self) -> Result<Vec<Vec<String>>, Error> {
        Ok(sqlx::query_scalar(
            "SELECT step_kinds FROM paysaga_workers
             WHERE stopped_at IS NULL AND lease_expires_at > now() ORDER BY started_at",
        )
        .fetch_all(&self.pool)
        .await?)
    }

    async fn sagas_no_live_worker_can_run(&self) -> Result<Vec<UnrunnableGroup>, Error> {
        let mut conn = self.pool.acquire().await?;
        unrunnable_on(&mut conn).await
    }
    async fn refresh_gauges(&self, req: GaugeRequest) -> Result<Option<GaugeSnapshot>, Error> {
        Ok(match self.gauge_turn(req).await? {
            GaugeTurn::Computed(snapshot) => Some(snapshot),
            GaugeTurn::Stored(_) => None,
        })
    }

    async fn gauge_turn(&self, req: GaugeRequest) -> Result<GaugeTurn, Error> {
        // One transaction either way: the lease attempt reads the stored snapshot too (the
        // turn of a worker that does not hold the lease), and the holder computes and stores
        // in the same transaction.
        let mut tx = self.pool.begin().await?;
        let turn = sqlx::query(
            "WITH held AS (
                 UPDATE paysaga_gauges SET holder = $1, held_until = now() + make_interval(secs => $2)
                 WHERE id = 1 AND (holder IS NULL OR holder = $1 OR held_until < now())
                 RETURNING now() AS db_now, started_until, started)
             SELECT held.db_now, held.started_until, held.started,
                    (SELECT snapshot FROM paysaga_gauges WHERE id = 1) AS snapshot
             FROM (SELECT 1) AS one LEFT JOIN held ON true",
        )
        .bind(req.instance)
        .bind(req.lease.as_secs_f64())
        .fetch_one(&mut *tx)
        .await?;
        let Some(now) = turn.try_get::<Option<DateTime<Utc>>, _>("db_now")? else {
            tx.commit().await?;
            let snapshot: Option<Value> = turn.try_get("snapshot")?;
            return Ok(GaugeTurn::Stored(snapshot.map(stored_gauges).transpose()?));
        };
        let from: Option<DateTime<Utc>> = turn.try_get("started_until")?;
        let mut started: std::collections::BTreeMap<String, i64> =
            serde_json::from_value(turn.try_get("started")?)
                .map_err(|e| Error::Corrupt(format!("paysaga_gauges.started: {e}")))?;
        let until = now - chrono::Duration::from_std(req.started_lag).unwrap_or_default();
        let from = from.unwrap_or(DateTime::<Utc>::UNIX_EPOCH);
        let until = until.max(from);
        let new: Vec<(String, i64)> = sqlx::query_as(STARTED_SQL)
            .bind(from)
            .bind(until)
            .fetch_all(&mut *tx)
            .await?;
        for (workflow, n) in new {
            *started.entry(workflow).or_default() += n;
        }
        let rows = sqlx::query(&gauges_sql())
            .bind(req.stuck_after.as_secs_f64())
            .bind(i32::try_from(req.stuck_attempts).unwrap_or(i32::MAX))
            .fetch_all(&mut *tx)
            .await?
            .iter()
            .map(|r| {
                Ok(crate::GaugeRow {
                    workflow: r.try_get("workflow")?,
                    status: r.try_get("observed")?,
                    sagas: r.try_get("sagas")?,
                    oldest_wait: r.try_get("oldest_wait")?,
                    past_deadline: r.try_get("past_deadline")?,
                    stuck: r.try_get("stuck")?,
                })
            })
            .collect::<Result<Vec<_>, Error>>()?;
        // Sagas no live worker can run: counted here, by the one gauge holder, not by every
        // worker on its own.
        let unrunnable = unrunnable_on(&mut tx).await?;
        let snapshot = crate::gauge_snapshot(now, &started, rows, unrunnable);
        sqlx::query(
            "UPDATE paysaga_gauges SET computed_at = $2, snapshot = $3, started_until = $4, started = $5
             WHERE id = 1 AND holder = $1",
        )
        .bind(req.instance)
        .bind(now)
        .bind(serde_json::to_value(&snapshot).map_err(|e| Error::Corrupt(e.to_string()))?)
        .bind(until)
        .bind(serde_json::to_value(&started).map_err(|e| Error::Corrupt(e.to_string()))?)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(GaugeTurn::Computed(snapshot))
    }

    async fn gauges(&self) -> Result<Option<GaugeSnapshot>, Error> {
        let snapshot: Option<Value> =
            sqlx::query_scalar("SELECT snapshot FROM paysaga_gauges WHERE id = 1")
                .fetch_optional(&self.pool)
                .await?
                .flatten();
        snapshot.map(stored_gauges).transpose()
    }

    async fn reap_expired_leases(&self, worker: Uuid) -> Result<Reaped, Error> {
        self.reap(Some(worker)).await
    }

    #[instrument(skip_all)]
    async fn prune_finished(&self, older_than: Duration, limit: i64) -> Result<Pruned, Error> {
        let mut tx = self.pool.begin().await?;
        let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_xact_lock($1, $2)")
            .bind(RETENTION_LOCK.0)
            .bind(RETENTION_LOCK.1)
            .fetch_one(&mut *tx)
            .await?;
        if !locked {
            tx.rollback().await?;
            return Ok(Pruned {
                busy: true,
                ..Pruned::default()
            });
        }
        let (sagas, history, waits, events, documents, _): (i64, i64, i64, i64, i64, i64) =
            sqlx::query_as(&prune_sql())
                .bind(older_than.as_secs_f64())
                .bind(crate::prunable_statuses())
                .bind(limit)
                .fetch_one(&mut *tx)
                .await?;
        tx.commit().await?;
        Ok(Pruned {
            sagas: sagas as u64,
            history: history as u64,
            waits: waits as u64,
            events: events as u64,
            documents: documents as u64,
            busy: false,
        })
    }

    async fn count_prunable(&self, older_than: Duration) -> Result<u64, Error> {
        let n: i64 = sqlx::query_scalar(&count_prunable_sql())
            .bind(older_than.as_secs_f64())
            .bind(crate::prunable_statuses())
            .fetch_one(&self.pool)
            .await?;
        Ok(n as u64)
    }

    #[instrument(skip(self, request), fields(provider = request.provider))]
    async fn reserve_request_slot(&self, request: &SlotRequest<'_>) -> Result<RequestSlot, Error> {
        loop {
            let row = sqlx::query(RESERVE_SLOT_SQL)
                .bind(request.provider)
                .bind(request.credential)
                .bind(request.interval.as_secs_f64())
                .bind(f64::from(request.burst.max(1)))
                .bind(request.max_wait.as_secs_f64())
                .fetch_optional(&self.pool)
                .await?;
            if let Some(row) = row {
                return Ok(RequestSlot {
                    at: row.try_get("at")?,
                    granted: row.try_get("granted")?,
                    slowed: row.try_get("slowed")?,
                    now: row.try_get("now")?,
                });
            }
            // First use of this budget: create it quiet (a whole burst free), then take a slot.
            sqlx::query(
                "INSERT INTO paysaga_request_budgets (provider, credential, next_free_at, slow_until)
                 VALUES ($1, $2, '-infinity', '-infinity')
                 ON CONFLICT (provider, credential) DO NOTHING",
            )
            .bind(request.provider)
            .bind(request.credential)
            .execute(&self.pool)
            .await?;
        }
    }

    #[instrument(skip(self, credential))]
    async fn throttle_requests(
        &self,
        provider: &str,
        credential: &str,
        pause: Duration,
        slow_for: Duration,
    ) -> Result<(), Error> {
        sqlx::query(
            "INSERT INTO paysaga_request_budgets AS b (provider, credential, next_free_at, slow_until)
             VALUES ($1, $2, now() + make_interval(secs => $3), now() + make_interval(secs => $4))
             ON CONFLICT (provider, credential) DO UPDATE SET
                 next_free_at = greatest(b.next_free_at, excluded.next_free_at),
                 slow_until = greatest(b.slow_until, excluded.slow_until)",
        )
        .bind(provider)
        .bind(credential)
        .bind(pause.as_secs_f64())
        .bind(slow_for.as_secs_f64())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn concurrency_holders(&self, key: &str) -> Result<Vec<Uuid>, Error> {
        Ok(sqlx::query_scalar(&holders_sql())
            .bind(key)
            .fetch_all(&self.pool)
            .await?)
    }

    #[instrument(skip_all)]
    async fn admit_queued(&self) -> Result<u64, Error> {
        let keys: Vec<String> = sqlx::query_scalar(&keys_with_free_slots_sql())
            .fetch_all(&self.pool)
            .await?;
        let mut admitted = 0;
        for key in keys {
            let mut tx = self.pool.begin().await?;
            admitted += admit_on(&mut tx, &key).await?;
            tx.commit().await?;
        }
        if admitted > 0 {
            tracing::info!(
                sagas = admitted,
                "gave free concurrency slots to queued sagas"
            );
        }
        Ok(admitted)
    }

    #[instrument(skip_all, fields(saga_id = %req.parent, step = %req.step, children = req.children.len()))]
    async fn start_children(&self, req: StartChildren<'_>) -> Result<u64, Error> {
        let mut tx = self.pool.begin().await?;
        // The parent's fence first (lock order: parent row, then its fan-out row).
        let held: Option<Uuid> = sqlx::query_scalar(
            "SELECT id FROM paysaga_sagas
             WHERE id = $1 AND owner = $2 AND fence = $3
               AND EXISTS (SELECT 1 FROM paysaga_workers w
                           WHERE w.id = $2 AND w.stopped_at IS NULL AND w.lease_expires_at > now())
             FOR UPDATE",
        )
        .bind(req.parent)
        .bind(req.worker)
        .bind(req.fence)
        .fetch_optional(&mut *tx)
        .await?;
        if held.is_none() {
            tx.rollback().await?;
            return Err(Error::LeaseLost { saga: req.parent });
        }
        let started = req.children.iter().map(|c| c.index + 1).max().unwrap_or(0);
        sqlx::query(
            "INSERT INTO paysaga_fan_outs AS f (parent_id, step, total, started)
             VALUES ($1, $2, $3, $4)
             ON CONFLICT (parent_id, step) DO UPDATE
                 SET total = excluded.total, started = greatest(f.started, excluded.started)",
        )
        .bind(req.parent)
        .bind(req.step)
        .bind(i64::try_from(req.total).unwrap_or(i64::MAX))
        .bind(i64::try_from(started).unwrap_or(i64::MAX))
        .execute(&mut *tx)
        .await?;
        let ids: Vec<Uuid> = req.children.iter().map(|c| c.id).collect();
        let keys: Vec<&str> = req
            .children
            .iter()
            .map(|c| c.idempotency_key.as_str())
            .collect();
        let inputs: Vec<&Value> = req.children.iter().map(|c| &c.input).collect();
        let indexes: Vec<i64> = req
            .children
            .iter()
            .map(|c| i64::try_from(c.index).unwrap_or(i64::MAX))
            .collect();
        let item_keys: Vec<&str> = req.children.iter().map(|c| c.key.as_str()).collect();
        let ckeys: Vec<Option<&str>> = req
            .children
            .iter()
            .map(|c| c.concurrency.as_ref().map(|k| k.key.as_str()))
            .collect();
        let climits: Vec<Option<i32>> = req
            .children
            .iter()
            .map(|c| {
                c.concurrency
                    .as_ref()
                    .map(|k| i32::try_from(k.limit).unwrap_or(i32::MAX))
            })
            .collect();
        let inserted: i64 = sqlx::query_scalar(START_CHILDREN_SQL)
            .bind(&ids)
            .bind(&keys)
            .bind(&inputs)
            .bind(&indexes)
            .bind(&item_keys)
            .bind(req.definition_id)
            .bind(req.workflow)
            .bind(req.version as i32)
            .bind(req.parent)
            .bind(req.step)
            .bind(&ckeys)
            .bind(&climits)
            .fetch_one(&mut *tx)
            .await?;
        // Children with a concurrency key were inserted queued: they take free slots of
        // their keys as any started saga (lock order: parent row, then each key's lock).
        let mut keys_seen: Vec<&str> = ckeys.iter().flatten().copied().collect();
        keys_seen.sort_unstable();
        keys_seen.dedup();
        for key in keys_seen {
            admit_on(&mut tx, key).await?;
        }
        notify(&mut tx).await?;
        tx.commit().await?;
        Ok(u64::try_from(inserted).unwrap_or(0))
    }

    async fn fan_out_progress(
        &self,
        parent: Uuid,
        step: &str,
    ) -> Result<Option<paysaga_core::FanOutProgress>, Error> {
        let row = sqlx::query(
            "SELECT total, started, ended FROM paysaga_fan_outs WHERE parent_id = $1 AND step = $2",
        )
        .bind(parent)
        .bind(step)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| {
            Ok(paysaga_core::FanOutProgress {
                total: u64::try_from(r.try_get::<i64, _>("total")?).unwrap_or(0),
                started: u64::try_from(r.try_get::<i64, _>("started")?).unwrap_or(0),
                ended: u64::try_from(r.try_get::<i64, _>("ended")?).unwrap_or(0),
            })
        })
        .transpose()
    }

    async fn child_sagas(
        &self,
        parent: Uuid,
        step: &str,
        with_outputs: bool,
    ) -> Result<Vec<ChildSaga>, Error> {
        let rows = sqlx::query(CHILD_SAGAS_SQL)
            .bind(parent)
            .bind(step)
            .bind(with_outputs)
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| {
                let status: String = r.try_get("status")?;
                Ok(ChildSaga {
                    id: r.try_get("id")?,
                    step: r.try_get("parent_step")?,
                    index: u64::try_from(r.try_get::<i64, _>("child_index")?).unwrap_or(0),
                    key: r.try_get("child_key")?,
                    status: status.parse().map_err(|e| Error::Corrupt(format!("{e}")))?,
                    held: r.try_get("held")?,
                    outputs: r
                        .try_get::<Option<Value>, _>("outputs")?
                        .unwrap_or(Value::Null),
                    last_error: r.try_get("last_error")?,
                })
            })
            .collect()
    }

    async fn child_counts(&self, parent: Uuid) -> Result<Vec<ChildCount>, Error> {
        let rows = sqlx::query(CHILD_COUNTS_SQL)
            .bind(parent)
            .fetch_all(&self.pool)
            .await?;
        let mut raw = Vec::with_capacity(rows.len());
        for r in &rows {
            let status: String = r.try_get("status")?;
            raw.push((
                r.try_get::<String, _>("parent_step")?,
                status
                    .parse::<SagaStatus>()
                    .map_err(|e| Error::Corrupt(format!("{e}")))?,
                r.try_get::<bool, _>("held")?,
                u64::try_from(r.try_get::<i64, _>("n")?).unwrap_or(0),
            ));
        }
        Ok(crate::child_counts_of(raw))
    }

    async fn list_children(
        &self,
        parent: Uuid,
        statuses: &[paysaga_core::ObservedStatus],
        limit: i64,
        offset: i64,
    ) -> Result<Vec<SagaRecord>, Error> {
        let columns: Vec<String> = SAGA_COLUMNS.split(", ").map(|c| format!("s.{c}")).collect();
        let statuses: Vec<&str> = statuses.iter().map(|st| st.as_str()).collect();
        let status_filter = crate::status_filter_sql(|x| format!("{x} = ANY($2)"));
        let rows = sqlx::query(&format!(
            "SELECT {} FROM paysaga_sagas s
             WHERE s.parent_id = $1 AND (cardinality($2::text[]) = 0 OR {status_filter})
             ORDER BY s.parent_step, s.child_index LIMIT $3 OFFSET $4",
            columns.join(", ")
        ))
        .bind(parent)
        .bind(&statuses)
        .bind(limit)
        .bind(offset)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(saga_from_row).collect()
    }

    #[instrument(skip(self, detail), fields(saga_id = %parent))]
    async fn cancel_children(
        &self,
        parent: Uuid,
        actor: &str,
        detail: Value,
    ) -> Result<u64, Error> {
        // Children only (never the parent's row): no lock order with a child's own commit,
        // which locks the child, then the parent.
        let n: i64 = sqlx::query_scalar(
            "WITH c AS (
                 UPDATE paysaga_sagas SET cancel_requested = true, run_at = now(), updated_at = now()
                 WHERE parent_id = $1 AND status IN ('scheduled', 'retrying', 'waiting')
                   AND NOT cancel_requested
                 RETURNING id),
             h AS (
                 INSERT INTO paysaga_history (saga_id, actor, kind, detail)
                 SELECT id, $2, 'cancel_requested', $3 FROM c RETURNING 1),
             w AS (SELECT pg_notify($4, '') WHERE EXISTS (SELECT 1 FROM c))
             SELECT (SELECT count(*) FROM h) + 0 * (SELECT count(*) FROM w)",
        )
        .bind(parent)
        .bind(actor)
        .bind(&detail)
        .bind(WAKEUP_CHANNEL)
        .fetch_one(&self.pool)
        .await?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    async fn cascade_cancels(&self) -> Result<u64, Error> {
        let n: i64 = sqlx::query_scalar(CASCADE_CANCELS_SQL)
            .bind(WAKEUP_CHANNEL)
            .fetch_one(&self.pool)
            .await?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    async fn wake_fan_in(&self, parent: Uuid) -> Result<bool, Error> {
        let n: i64 = sqlx::query_scalar(
            "WITH u AS (
                 UPDATE paysaga_sagas SET run_at = now()
                 WHERE id = $1 AND status = 'waiting' AND owner IS NULL AND run_at > now()
                 RETURNING 1),
             w AS (SELECT pg_notify($2, '') WHERE EXISTS (SELECT 1 FROM u))
             SELECT (SELECT count(*) FROM u) + 0 * (SELECT count(*) FROM w)",
        )
        .bind(parent)
        .bind(WAKEUP_CHANNEL)
        .fetch_one(&self.pool)
        .await?;
        Ok(n > 0)
    }

    async fn parent_of(&self, child: Uuid) -> Result<Option<ParentLink>, Error> {
        let row = sqlx::query(
            "SELECT parent_id, parent_step, child_index, child_key FROM paysaga_sagas
             WHERE id = $1 AND parent_id IS NOT NULL",
        )
        .bind(child)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| {
            Ok(ParentLink {
                parent: r.try_get("parent_id")?,
                step: r.try_get("parent_step")?,
                index: u64::try_from(r.try_get::<i64, _>("child_index")?).unwrap_or(0),
                key: r.try_get("child_key")?,
            })
        })
        .transpose()
    }

    async fn reconciliation_references(
        &self,
        names: &[&str],
        since: Option<DateTime<Utc>>,
    ) -> Result<Vec<ReconcileReference>, Error> {
        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        let rows = sqlx::query(
            "SELECT r.saga_id, s.workflow, s.status, s.closed_outcome, s.updated_at,
                    r.step, r.name, r.value
             FROM paysaga_saga_refs r JOIN paysaga_sagas s ON s.id = r.saga_id
             WHERE r.name = ANY($1) AND ($2::timestamptz IS NULL OR s.created_at >= $2)
             ORDER BY s.created_at, r.saga_id, r.step, r.name, r.value",
        )
        .bind(&names)
        .bind(since)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                let status: String = r.try_get("status")?;
                Ok(ReconcileReference {
                    saga_id: r.try_get("saga_id")?,
                    workflow: r.try_get("workflow")?,
                    status: status.parse().map_err(|e| Error::Corrupt(format!("{e}")))?,
                    closed_outcome: crate::closed_outcome(r.try_get("closed_outcome")?)?,
                    updated_at: r.try_get("updated_at")?,
                    step: r.try_get("step")?,
                    name: r.try_get("name")?,
                    value: r.try_get("value")?,
                })
            })
            .collect()
    }

    async fn reference_owners(&self, values: &[String]) -> Result<Vec<(String, Uuid)>, Error> {
        Ok(sqlx::query_as(
            "SELECT DISTINCT value, saga_id FROM paysaga_saga_refs WHERE value = ANY($1)
             ORDER BY value, saga_id",
        )
        .bind(values)
        .fetch_all(&self.pool)
        .await?)
    }

    async fn take_reconciler_lease(&self, instance: Uuid, lease: Duration) -> Result<bool, Error> {
        let taken = sqlx::query(
            "UPDATE paysaga_reconciler SET holder = $1, held_until = now() + make_interval(secs => $2)
             WHERE id = 1 AND (holder IS NULL OR holder = $1 OR held_until < now())",
        )
        .bind(instance)
        .bind(lease.as_secs_f64())
        .execute(&self.pool)
        .await?;
        Ok(taken.rows_affected() == 1)
    }

    async fn store_reconciliation(&self, run: &NewReconciliation) -> Result<i64, Error> {
        let mut tx = self.pool.begin().await?;
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO paysaga_reconciliations (started_at, providers, since, objects_checked, actor)
             VALUES ($1, $2, $3, $4, $5) RETURNING id",
        )
        .bind(run.started_at)
        .bind(&run.providers)
        .bind(run.since)
        .bind(run.objects_checked)
        .bind(&run.actor)
        .fetch_one(&mut *tx)
        .await?;
        for (seq, d) in run.findings.iter().enumerate() {
            sqlx::query(
                "INSERT INTO paysaga_drift (reconciliation_id, seq, kind, provider, saga_id,
                     object_id, currency, amount, detail, action)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
            )
            .bind(id)
            .bind(i32::try_from(seq).unwrap_or(i32::MAX))
            .bind(&d.kind)
            .bind(&d.provider)
            .bind(d.saga_id)
            .bind(&d.object_id)
            .bind(&d.currency)
            .bind(d.amount)
            .bind(&d.detail)
            .bind(&d.action)
            .execute(&mut *tx)
            .await?;
        }
        sqlx::query("DELETE FROM paysaga_reconciliations WHERE id <= $1 - $2")
            .bind(id)
            .bind(crate::RECONCILIATIONS_KEPT)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(id)
    }

    async fn last_reconciliation(&self) -> Result<Option<Reconciliation>, Error> {
        self.read_reconciliation(None).await
    }

    async fn reconciliation(&self, id: i64) -> Result<Option<Reconciliation>, Error> {
        self.read_reconciliation(Some(id)).await
    }
}

impl PgStore {
    /// Reconciliation run `id`, or the latest one (`None`), with its findings.
    async fn read_reconciliation(&self, id: Option<i64>) -> Result<Option<Reconciliation>, Error> {
        let Some(run) = sqlx::query(
            "SELECT id, started_at, finished_at, providers, since, objects_checked, actor
             FROM paysaga_reconciliations WHERE ($1::int8 IS NULL OR id = $1) ORDER BY id DESC LIMIT 1",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await?
        else {
            return Ok(None);
        };
        let id: i64 = run.try_get("id")?;
        let findings = sqlx::query(
            "SELECT kind, provider, saga_id, object_id, currency, amount, detail, action
             FROM paysaga_drift WHERE reconciliation_id = $1 ORDER BY seq",
        )
        .bind(id)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(|r| {
            Ok(DriftRecord {
                kind: r.try_get("kind")?,
                provider: r.try_get("provider")?,
                saga_id: r.try_get("saga_id")?,
                object_id: r.try_get("object_id")?,
                currency: r.try_get("currency")?,
                amount: r.try_get("amount")?,
                detail: r.try_get("detail")?,
                action: r.try_get("action")?,
            })
        })
        .collect::<Result<Vec<_>, Error>>()?;
        Ok(Some(Reconciliation {
            id,
            finished_at: run.try_get("finished_at")?,
            run: NewReconciliation {
                started_at: run.try_get("started_at")?,
                providers: run.try_get("providers")?,
                since: run.try_get("since")?,
                objects_checked: run.try_get("objects_checked")?,
                actor: run.try_get("actor")?,
                findings,
            },
        }))
    }
}

/// The children of `$1`'s fan-out step `$2` in item order, outputs if `$3` (the partial
/// index `paysaga_sagas_children`).
const CHILD_SAGAS_SQL: &str =
    "SELECT id, parent_step, child_index, child_key, status, owner IS NOT NULL AS held,
            CASE WHEN $3 THEN outputs END AS outputs, last_error
     FROM paysaga_sagas WHERE parent_id = $1 AND parent_step = $2
     ORDER BY child_index";

/// The children of `$1` counted by step, status and held (`paysaga_sagas_children`).
const CHILD_COUNTS_SQL: &str =
    "SELECT parent_step, status, owner IS NOT NULL AS held, count(*) AS n
     FROM paysaga_sagas WHERE parent_id = $1
     GROUP BY parent_step, status, owner IS NOT NULL ORDER BY parent_step, status";

/// The cancel cascade's safety net ([`Store::cascade_cancels`], `$1` the wake-up channel):
/// unfinished children not asked yet (the partial index `paysaga_sagas_open_children`) whose
/// parent unwinds or ended otherwise than completed (its primary key), at most 1000 a pass.
const CASCADE_CANCELS_SQL: &str = "
WITH c AS (
    UPDATE paysaga_sagas s SET cancel_requested = true, run_at = now(), updated_at = now()
    FROM (SELECT k.id, k.parent_id FROM paysaga_sagas k JOIN paysaga_sagas p ON p.id = k.parent_id
          WHERE k.parent_id IS NOT NULL AND k.status IN ('scheduled', 'retrying', 'waiting')
            AND NOT k.cancel_requested
            AND (p.cancel_requested OR p.close_requested IS NOT NULL
                 OR p.status IN ('compensating', 'compensated', 'cancelled', 'closed'))
          LIMIT 1000 FOR UPDATE OF k SKIP LOCKED) doomed
    WHERE s.id = doomed.id
    RETURNING s.id, s.parent_id),
h AS (
    INSERT INTO paysaga_history (saga_id, actor, kind, detail)
    SELECT c.id, 'parent ' || c.parent_id::text, 'cancel_requested',
           jsonb_build_object('reason', 'parent saga ' || c.parent_id::text
                                         || ' unwinds or has ended',
                              'parent', c.parent_id)
    FROM c RETURNING 1),
w AS (SELECT pg_notify($1, '') WHERE EXISTS (SELECT 1 FROM c))
SELECT (SELECT count(*) FROM h) + 0 * (SELECT count(*) FROM w)";

/// The children of one batch (`$1`.. `$5` arrays: ids, idempotency keys, inputs, indexes,
/// item keys; `$6`.. the definition, workflow, version, parent, step; `$11`, `$12` their
/// concurrency keys and limits, NULL for none: such a child starts queued), each with its
/// `saga_started` history row and the parent's trace context; a key that exists is skipped
/// (`ON CONFLICT DO NOTHING`).
const START_CHILDREN_SQL: &str = "
WITH ins AS (
    INSERT INTO paysaga_sagas (id, definition_id, workflow, version, idempotency_key, input,
                               status, run_at, parent_id, parent_step, child_index, child_key,
                               concurrency_key, concurrency_limit, trace_context)
    SELECT c.id, $6, $7, $8, c.ikey, c.input, 'scheduled',
           CASE WHEN c.ckey IS NULL THEN now() END, $9, $10, c.idx, c.key, c.ckey, c.climit,
           (SELECT p.trace_context FROM paysaga_sagas p WHERE p.id = $9)
    FROM UNNEST($1::uuid[], $2::text[], $3::jsonb[], $4::int8[], $5::text[], $11::text[],
                $12::int4[])
         WITH ORDINALITY AS c(id, ikey, input, idx, key, ckey, climit, n)
    ORDER BY c.n
    ON CONFLICT (workflow, idempotency_key) DO NOTHING
    RETURNING id, idempotency_key, child_key),
hist AS (
    INSERT INTO paysaga_history (saga_id, actor, kind, detail)
    SELECT ins.id, 'parent ' || $9::uuid::text, 'saga_started',
           jsonb_build_object('definition_id', $6::int8, 'version', $8::int4,
                              'idempotency_key', ins.idempotency_key,
                              'parent', $9::uuid, 'parent_step', $10::text, 'item_key', ins.child_key)
    FROM ins RETURNING 1)
SELECT count(*) + 0 * (SELECT count(*) FROM hist) FROM ins";

/// Sagas created in `[$1, $2)` by workflow (the `paysaga_sagas_created` index): the gauges'
/// started counts grow by it at each refresh.
const STARTED_SQL: &str = "SELECT workflow, count(*) FROM paysaga_sagas
     WHERE created_at >= $1 AND created_at < $2 GROUP BY workflow";

/// The gauges over open sagas only (`status IN OPEN`, the `paysaga_sagas_status_workflow`
/// index): by workflow and observed status, the oldest wait, waits past their deadline and
/// stuck sagas as `list --stuck-for` (`$1` seconds without progress, `$2` attempts).
fn gauges_sql() -> String {
    format!(
        "SELECT s.workflow,
                CASE WHEN s.owner IS NOT NULL AND s.status IN {} THEN 'running' ELSE s.status END
                    AS observed,
                count(*) AS sagas,
                min((s.wait->>'since')::timestamptz) FILTER (WHERE s.status = 'waiting') AS oldest_wait,
                count(*) FILTER (WHERE s.status = 'waiting'
                                   AND (s.wait->>'deadline')::timestamptz < now()) AS past_deadline,
                count(*) FILTER (WHERE s.status = 'needs_operator'
                    OR s.updated_at < now() - make_interval(secs => $1)
                    OR (s.wait IS NOT NULL AND (s.wait->>'deadline')::timestamptz < now())
                    OR s.attempt >= $2
                    OR (s.owner IS NOT NULL AND NOT EXISTS (
                        SELECT 1 FROM paysaga_workers w
                        WHERE w.id = s.owner AND w.stopped_at IS NULL AND w.lease_expires_at > now())))
                    AS stuck
         FROM paysaga_sagas s
         WHERE s.status IN {}
         GROUP BY 1, 2",
        crate::HOLDABLE,
        crate::OPEN,
    )
}

const DOCUMENT_COLUMNS: &str =
    "id, content_type, size, sha256, created_at, saga_id, content_deleted_at";

fn document_from_row(row: &PgRow) -> Result<DocumentRecord, Error> {
    Ok(DocumentRecord {
        id: DocumentId(row.try_get("id")?),
        content_type: row.try_get("content_type")?,
        size: row.try_get("size")?,
        sha256: row.try_get("sha256")?,
        created_at: row.try_get("created_at")?,
        saga_id: row.try_get("saga_id")?,
        content_deleted_at: row.try_get("content_deleted_at")?,
    })
}

/// The retention sweep (`$1` retention in seconds, `$2` how long an unclaimed document
/// keeps its content, `$3` batch size): documents that still hold content (the partial index
/// `paysaga_documents_with_content`, oldest first), whose saga finished (`finished_at` is
/// set exactly when the status is final) more than `$1` ago, or that no existing saga holds
/// and were stored more than `$2` ago. The content goes; id, type, size and hash stay.
fn expired_documents_sql() -> String {
    "WITH doomed AS (
         SELECT d.id FROM paysaga_documents d
         LEFT JOIN paysaga_sagas s ON s.id = d.saga_id
         WHERE d.content IS NOT NULL
           AND (s.finished_at < now() - make_interval(secs => $1)
                OR (s.id IS NULL AND d.created_at < now() - make_interval(secs => $2)))
         ORDER BY d.created_at
         LIMIT $3
         FOR UPDATE OF d SKIP LOCKED)
     UPDATE paysaga_documents SET content = NULL, content_deleted_at = now()
     FROM doomed WHERE paysaga_documents.id = doomed.id"
        .to_string()
}

/// Operator rows across sagas, newest first (`$1` since, `$2` actor, `$3` limit); served by
/// the partial index `paysaga_history_operator`.
const OPERATOR_HISTORY_SQL: &str =
    "SELECT h.id, h.saga_id, s.workflow, h.at, h.worker, h.actor, h.step, h.attempt, h.kind,
            h.error, h.detail
     FROM paysaga_history h JOIN paysaga_sagas s ON s.id = h.saga_id
     WHERE h.actor IS NOT NULL AND h.kind <> 'saga_started'
       AND h.at >= coalesce($1::timestamptz, '-infinity')
       AND ($2::text IS NULL OR h.actor = $2)
     ORDER BY h.at DESC, h.id DESC
     LIMIT $3";
/// Takes the next free slot of a request budget in one statement (`$1` provider, `$2`
/// credential, `$3` interval in seconds, `$4` burst, `$5` longest wait in seconds): the row is
/// locked, the slot is the later of `next_free_at` and `now - (burst - 1) * step` (step: the
/// interval, doubled while `slow_until` is ahead), and it is taken (`next_free_at` moves on by
/// one step) only if it is no further than `$5` away. No row: the budget does not exist yet.
const RESERVE_SLOT_SQL: &str = "
    WITH cur AS (
        SELECT next_free_at, slow_until > now() AS slowed
        FROM paysaga_request_budgets WHERE provider = $1 AND credential = $2
        FOR UPDATE),
    slot AS (
        SELECT greatest(cur.next_free_at,
                        now() - make_interval(secs => $3 * ($4 - 1) * CASE WHEN slowed THEN 2 ELSE 1 END)) AS at,
               make_interval(secs => $3 * CASE WHEN slowed THEN 2 ELSE 1 END) AS step,
               slowed
        FROM cur)
    UPDATE paysaga_request_budgets b
    SET next_free_at = CASE WHEN slot.at <= now() + make_interval(secs => $5)
                            THEN slot.at + slot.step ELSE b.next_free_at END
    FROM slot
    WHERE b.provider = $1 AND b.credential = $2
    RETURNING slot.at AS at, slot.at <= now() + make_interval(secs => $5) AS granted,
              slot.slowed AS slowed, now() AS now";

struct PgWakeups {
    /// `None` only between a lost connection and the next one (the pool may allow one).
    listener: Option<PgListener>,
    pool: PgPool,
    channels: Vec<String>,
}

impl PgWakeups {
    async fn connect(pool: &PgPool, channels: &[String]) -> Result<PgListener, Error> {
        let mut listener = PgListener::connect_with(pool).await?;
        listener
            .listen_all(channels.iter().map(String::as_str))
            .await?;
        Ok(listener)
    }

    async fn listen(pool: &PgPool, channels: Vec<String>) -> Result<WakeupsBox, Error> {
        Ok(Box::new(PgWakeups {
            listener: Some(PgWakeups::connect(pool, &channels).await?),
            pool: pool.clone(),
            channels,
        }))
    }
}

#[async_trait]
impl crate::Wakeups for PgWakeups {
    async fn recv(&mut self) -> Result<(), Error> {
        while self.next().await? == crate::Wakeup::Reconnected {}
        Ok(())
    }

    async fn next(&mut self) -> Result<crate::Wakeup, Error> {
        // `try_recv` answers `None` when the connection was lost. `Reconnected` is answered
        // once a new connection LISTENs again, so that a look for what was missed comes
        // after anything sent from then on is heard.
        let listener = match &mut self.listener {
            Some(listener) => listener,
            None => {
                let listener = PgWakeups::connect(&self.pool, &self.channels).await?;
                self.listener.insert(listener)
            }
        };
        Ok(match listener.try_recv().await? {
            None => {
                self.listener = None;
                self.listener = Some(PgWakeups::connect(&self.pool, &self.channels).await?);
                crate::Wakeup::Reconnected
            }
            Some(n) if n.channel() != WAKEUP_CHANNEL => match n.payload().parse::<Uuid>() {
                Ok(saga) => crate::Wakeup::Assigned { saga },
                Err(_) => crate::Wakeup::Runnable,
            },
            Some(_) => crate::Wakeup::Runnable,
        })
    }
}

/// The channel a worker registered with [`crate::Assignments`] keyed `listener` listens on
/// for the sagas handed to it (a name the column's CHECK accepts).
fn worker_channel(listener: Uuid) -> String {
    format!("paysaga_worker_{}", listener.simple())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    async fn plan(pool: &PgPool, sql: &str, kinds: &[String]) -> String {
        let rows: Vec<String> = sqlx::query_scalar(&format!("EXPLAIN {sql}"))
            .bind(kinds)
            .fetch_all(pool)
            .await
            .unwrap();
        rows.join("\n")
    }

    /// The hot path reuses the connections it keeps (no release to the pool, whose ping is a
    /// second round trip per statement), keeps one through an error the server answered, and
    /// gives up one the server ended: the statement after it gets a working connection.
    #[tokio::test]
    async fn a_kept_connection_is_reused_until_the_server_ends_it() {
        let db = paysaga_testkit::database().await;
        let store = PgStore::connect(db.url()).await.unwrap();
        let (pool, kept) = (store.pool(), &store.kept);
        let pid = |mut conn: kept::Taken| async move {
            let pid = sqlx::query_scalar::<_, i32>("SELECT pg_backend_pid()")
                .fetch_one(&mut *conn)
                .await;
            kept.give_back(conn, pid.as_ref().err());
            pid
        };
        let first = pid(kept.take(pool).await.unwrap()).await.unwrap();
        assert_eq!(kept.len(), 1);
        assert_eq!(pid(kept.take(pool).await.unwrap()).await.unwrap(), first);
        // A second one, kept while the first is in use.
        let in_use = kept.take(pool).await.unwrap();
        let second = pid(kept.take(pool).await.unwrap()).await.unwrap();
        assert_ne!(second, first);
        kept.give_back(in_use, None);
        assert_eq!(kept.len(), 2);

        // The server's answer to a bad statement: the connection is still sound.
        let mut conn = kept.take(pool).await.unwrap();
        let failed = sqlx::query("SELECT 1 / 0").execute(&mut *conn).await;
        assert!(
            matches!(failed, Err(sqlx::Error::Database(_))),
            "{failed:?}"
        );
        kept.give_back(conn, failed.as_ref().err());
        assert_eq!(kept.len(), 2);
        assert_eq!(pid(kept.take(pool).await.unwrap()).await.unwrap(), first);

        // The server ends that session: the next statement on it fails and it is let go.
        let ended: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1)")
            .bind(first)
            .fetch_one(pool)
            .await
            .unwrap();
        assert!(ended);
        let after = pid(kept.take(pool).await.unwrap()).await;
        assert!(after.is_err(), "a statement on an ended session: {after:?}");
        assert_eq!(
            kept.len(),
            0,
            "a connection the server ended is not kept, nor are the others"
        );
        let next = pid(kept.take(pool).await.unwrap()).await.unwrap();
        assert_ne!(next, first);
        assert_eq!(kept.len(), 1);

        // One unused for PING_WHEN_IDLE_FOR goes back to the pool (and its ping) at the next
        // take, even under one used since.
        let (a, b) = (
            kept.take(pool).await.unwrap(),
            kept.take(pool).await.unwrap(),
        );
        kept.give_back(a, None);
        tokio::time::sleep(PING_WHEN_IDLE_FOR + Duration::from_millis(100)).await;
        kept.give_back(b, None);
        assert_eq!(kept.len(), 2);
        let fresh = kept.take(pool).await.unwrap();
        assert_eq!(kept.len(), 0, "the idle one is no longer kept");
        kept.give_back(fresh, None);
        assert_eq!(kept.len(), 1);
    }

    /// Every hot-path query is served by an index, with many finished sagas in the table.
    #[tokio::test]
    async fn hot_path_queries_use_their_indexes() {
        let db = paysaga_testkit::database().await;
        let store = PgStore::connect(db.url()).await.unwrap();
        store.migrate().await.unwrap();
        let pool = store.pool().clone();
        sqlx::raw_sql(
            "INSERT INTO paysaga_definitions (name, version, content_hash, body, step_kinds)
                 VALUES ('noop', 1, 'h', '{}', '{noop.sleep}');
             INSERT INTO paysaga_sagas (id, definition_id, workflow, version, input, status, finished_at)
                 SELECT gen_random_uuid(), 1, 'noop', 1, '{}', 'completed', now()
                 FROM generate_series(1, 50000);
             INSERT INTO paysaga_sagas (id, definition_id, workflow, version, input, status, run_at)
                 SELECT gen_random_uuid(), 1, 'noop', 1, '{}', 'scheduled', now()
                 FROM generate_series(1, 20);
             INSERT INTO paysaga_history (saga_id, kind) SELECT id, 'saga_started' FROM paysaga_sagas;
             INSERT INTO paysaga_events (provider, event_id, event_type, correlation_key, payload, consumed_by)
                 SELECT 'lumanu', 'e' || g, 'payable.paid', 'payable:' || g, '{}', (SELECT id FROM paysaga_sagas LIMIT 1)
                 FROM generate_series(1, 50000) g;
             ANALYZE;",
        )
        .execute(&pool)
        .await
        .unwrap();
        let kinds = vec!["noop.sleep".to_string()];
        // The claim's parameters: EXPLAIN the statement with its placeholders bound.
        let claim = sqlx::query_scalar::<_, String>(&format!("EXPLAIN {}", claim_sql()))
            .bind(Uuid::new_v4())
            .bind(16_i64)
            .bind(&kinds)
            .fetch_all(&pool)
            .await
            .unwrap()
            .join("\n");
        assert!(
            claim.contains("paysaga_sagas_runnable"),
            "claim plan:\n{claim}"
        );
        let due = plan(&pool, &next_due_sql(), &kinds).await;
        // A deployment has a handful of definitions, where a scan is the planner's cheaper
        // choice; with scans priced out, the key serves it (as it will once there are many).
        let mut tx = pool.begin().await.unwrap();
        sqlx::query("SET LOCAL enable_seqscan = off")
            .execute(&mut *tx)
            .await
            .unwrap();
        let newer: Vec<String> = sqlx::query_scalar(&format!("EXPLAIN {NEWER_VERSION_SQL}"))
            .bind("flow")
            .bind(1_i32)
            .fetch_all(&mut *tx)
            .await
            .unwrap();
        tx.rollback().await.unwrap();
        assert!(
            newer
                .join("\n")
                .contains("paysaga_definitions_name_version_key"),
            "newer version plan: {newer:?}"
        );
        // The worker a start hands its saga to: among thousands of stopped workers, the live
        // ones by their partial index, the sagas each holds by the owner index.
        sqlx::raw_sql(
            "INSERT INTO paysaga_workers (id, name, hostname, pid, step_kinds, lease_expires_at,
                                          stopped_at, concurrency, wake_channel)
                 SELECT gen_random_uuid(), 'w', 'h', 1, '{noop.sleep}', now(), now(), 16,
                        'paysaga_worker_' || md5(g::text)
                 FROM generate_series(1, 5000) g;
             INSERT INTO paysaga_workers (id, name, hostname, pid, step_kinds, lease_expires_at,
                                          concurrency, wake_channel)
                 VALUES (gen_random_uuid(), 'live', 'h', 1, '{noop.sleep}',
                         now() + interval '1 minute', 16, 'paysaga_worker_' || md5('live'));
             ANALYZE paysaga_workers;",
        )
        .execute(&pool)
        .await
        .unwrap();
        let pick: Vec<String> =
            sqlx::query_scalar(&format!("EXPLAIN {}", pick_worker_sql("$1", "$2")))
                .bind(true)
                .bind(1_i64)
                .fetch_all(&pool)
                .await
                .unwrap();
        let pick = pick.join("\n");
        assert!(
            pick.contains("paysaga_workers_live")
                && pick.contains("paysaga_sagas_owner")
                && pick.contains("paysaga_sagas_runnable"),
            "worker pick plan:\n{pick}"
        );
        let owned: Vec<String> = sqlx::query_scalar(&format!("EXPLAIN {OWNED_SQL}"))
            .bind(Uuid::new_v4())
            .fetch_all(&pool)
            .await
            .unwrap();
        assert!(
            owned.join("\n").contains("paysaga_sagas_owner"),
            "owned sagas plan: {owned:?}"
        );
        assert!(
            due.contains("paysaga_sagas_runnable"),
            "next_due plan:\n{due}"
        );
        let history: Vec<String> = sqlx::query_scalar(
            "EXPLAIN SELECT id, at, worker, actor, step, attempt, kind, error, detail
             FROM paysaga_history WHERE saga_id = $1 ORDER BY id",
        )
        .bind(Uuid::new_v4())
        .fetch_all(&pool)
        .await
        .unwrap();
        assert!(
            history.join("\n").contains("paysaga_history_saga"),
            "{history:?}"
        );
        // The group commit, as a prepared statement's generic plan (what a connection
        // settles on after its first executions) and as a custom plan: both scans of
        // `paysaga_sagas` go through an index.
        let mut conn = pool.acquire().await.unwrap();
        sqlx::raw_sql(&format!(
            "PREPARE grouped(jsonb, jsonb, jsonb, text) AS {COMMIT_GROUP_SQL}"
        ))
        .execute(&mut *conn)
        .await
        .unwrap();
        let commit = |n: u32, status: &str| {
            json!({"id": Uuid::new_v4(), "worker": Uuid::new_v4(), "fence": 1, "status": status,
                   "step_index": 1, "attempt": 0, "keep": true, "final": false,
                   "token": Uuid::new_v4(), "effect_possible": false, "notify": false, "n": n})
        };
        let commits = json!([commit(1, "scheduled"), commit(2, "completed")]).to_string();
        let history = json!([{"c": 1, "step": "s1", "kind": "step_completed", "n": 0},
                             {"c": 2, "kind": "saga_completed", "n": 1}])
        .to_string();
        let refs =
            json!([{"c": 1, "step": "s1", "name": "payable_id", "value": "pay_1"}]).to_string();
        for mode in ["force_generic_plan", "force_custom_plan"] {
            let plan: Vec<String> = sqlx::raw_sql(&format!(
                "SET plan_cache_mode = {mode};
                 EXPLAIN EXECUTE grouped('{commits}', '{history}', '{refs}', 'paysaga_wakeup')"
            ))
            .fetch_all(&mut *conn)
            .await
            .unwrap()
            .iter()
            .map(|r| r.get::<String, _>(0))
            .collect();
            let plan = plan.join("\n");
            assert!(
                plan.contains("Update on paysaga_sagas")
                    && !plan.contains("Seq Scan on paysaga_sagas"),
                "group commit plan ({mode}):\n{plan}"
            );
        }
        // In the default mode the connection settles on the generic plan (a custom plan per
        // execution would cost more than the execution).
        sqlx::raw_sql("SET plan_cache_mode = auto")
            .execute(&mut *conn)
            .await
            .unwrap();
        for _ in 0..8 {
            sqlx::raw_sql(&format!(
                "EXECUTE grouped('{commits}', '{history}', '{refs}', 'paysaga_wakeup')"
            ))
            .execute(&mut *conn)
            .await
            .unwrap();
        }
        let (generic, custom): (i64, i64) = sqlx::query_as(
            "SELECT generic_plans, custom_plans FROM pg_prepared_statements WHERE name = 'grouped'",
        )
        .fetch_one(&mut *conn)
        .await
        .unwrap();
        assert!(
            generic >= 3 && custom <= 5,
            "{generic} generic plans, {custom} custom"
        );
        drop(conn);
        // `paysaga audit`: operator rows (a few among many) through their partial index.
        sqlx::raw_sql(
            "INSERT INTO paysaga_history (saga_id, kind, actor, detail)
                 SELECT id, 'operator_retry', 'ops:alice', '{\"reason\": \"r\"}'
                 FROM paysaga_sagas LIMIT 200;
             ANALYZE paysaga_history;",
        )
        .execute(&pool)
        .await
        .unwrap();
        for actor in [None, Some("ops:alice")] {
            let audit: Vec<String> = sqlx::query_scalar(&format!("EXPLAIN {OPERATOR_HISTORY_SQL}"))
                .bind(Some(Utc::now() - chrono::Duration::days(1)))
                .bind(actor)
                .bind(100_i64)
                .fetch_all(&pool)
                .await
                .unwrap();
            assert!(
                audit.join("\n").contains("paysaga_history_operator"),
                "audit plan:\n{}",
                audit.join("\n")
            );
        }
        let pending: Vec<String> = sqlx::query_scalar(
            "EXPLAIN SELECT id FROM paysaga_events
             WHERE provider = $1 AND correlation_key = $2 AND event_type = ANY($3) AND consumed_by IS NULL
               AND parse_error IS NULL ORDER BY id LIMIT 1",
        )
        .bind("lumanu")
        .bind("payable:1")
        .bind(vec!["payable.paid".to_string()])
        .fetch_all(&pool)
        .await
        .unwrap();
        assert!(
            pending.join("\n").contains("paysaga_events_pending"),
            "{pending:?}"
        );
        // A start with a key looks it up first (`find_saga_by_key`).
        let by_key: Vec<String> = sqlx::query_scalar(&format!(
            "EXPLAIN SELECT {SAGA_COLUMNS} FROM paysaga_sagas WHERE workflow = $1 AND idempotency_key = $2"
        ))
        .bind("noop")
        .bind("payout-1")
        .fetch_all(&pool)
        .await
        .unwrap();
        let by_key = by_key.join("\n");
        assert!(
            by_key.contains("Index") && by_key.contains("idempotency_key"),
            "{by_key}"
        );
        // The document retention sweep (run by every worker periodically): many documents
        // whose content is already gone, a few still holding it.
        sqlx::raw_sql(
            "INSERT INTO paysaga_documents (id, content_type, size, sha256, content, saga_id, content_deleted_at)
                 SELECT gen_random_uuid(), 'image/png', 3, repeat('a', 64), NULL, id, now()
                 FROM paysaga_sagas WHERE status = 'completed';
             INSERT INTO paysaga_documents (id, content_type, size, sha256, content, saga_id)
                 SELECT gen_random_uuid(), 'image/png', 3, repeat('a', 64), 'abc'::bytea, id
                 FROM paysaga_sagas WHERE status = 'scheduled';
             ANALYZE;",
        )
        .execute(&pool)
        .await
        .unwrap();
        let sweep: Vec<String> =
            sqlx::query_scalar(&format!("EXPLAIN {}", expired_documents_sql()))
                .bind(60.0_f64)
                .bind(86_400.0_f64)
                .bind(100_i64)
                .fetch_all(&pool)
                .await
                .unwrap();
        assert!(
            sweep.join("\n").contains("paysaga_documents_with_content"),
            "document retention plan:\n{}",
            sweep.join("\n")
        );
    }

    /// `list --ref VALUE` (a provider id from a support ticket) is served by the index on
    /// `paysaga_saga_refs.value`, with many sagas and references stored.
    #[tokio::test]
    async fn list_by_reference_and_the_unrunnable_count_use_their_indexes() {
        let db = paysaga_testkit::database().await;
        let store = PgStore::connect(db.url()).await.unwrap();
        store.migrate().await.unwrap();
        let pool = store.pool().clone();
        sqlx::raw_sql(
            "INSERT INTO paysaga_definitions (name, version, content_hash, body, step_kinds)
                 VALUES ('noop', 1, 'h', '{}', '{noop.sleep}');
             INSERT INTO paysaga_sagas (id, definition_id, workflow, version, input, status, finished_at)
                 SELECT gen_random_uuid(), 1, 'noop', 1, '{}', 'completed', now()
                 FROM generate_series(1, 50000);
             INSERT INTO paysaga_saga_refs (saga_id, step, name, value)
                 SELECT id, 'pay', 'payable_id', 'pay_' || id FROM paysaga_sagas;
             INSERT INTO paysaga_saga_refs (saga_id, step, name, value)
                 SELECT id, 'fund', 'funding_id', 'fund_' || id FROM paysaga_sagas;
             ANALYZE;",
        )
        .execute(&pool)
        .await
        .unwrap();
        let plan: Vec<String> =
            sqlx::query_scalar(&format!("EXPLAIN {}", list_sagas_sql("s.created_at DESC")))
                .bind(Vec::<String>::new())
                .bind(None::<String>)
                .bind(None::<String>)
                .bind(None::<String>)
                .bind(None::<String>)
                .bind(None::<DateTime<Utc>>)
                .bind(None::<DateTime<Utc>>)
                .bind(None::<DateTime<Utc>>)
                .bind(None::<DateTime<Utc>>)
                .bind(None::<DateTime<Utc>>)
                .bind(5_i32)
                .bind(100_i64)
                .bind(0_i64)
                .bind(false)
                .bind(Some("pay_0b0c".to_string()))
                .fetch_all(&pool)
                .await
                .unwrap();
        let plan = plan.join("\n");
        assert!(
            plan.contains("paysaga_saga_refs_value"),
            "list --ref plan:\n{plan}"
        );
        assert!(
            !plan.contains("Seq Scan on paysaga_sagas"),
            "list --ref plan:\n{plan}"
        );
        // The count of sagas no live worker can run (with the operator gauges, by one worker) reads only the
        // unfinished ones.
        sqlx::raw_sql(
            "INSERT INTO paysaga_sagas (id, definition_id, workflow, version, input, status, run_at)
                 SELECT gen_random_uuid(), 1, 'noop', 1, '{}', 'scheduled', now()
                 FROM generate_series(1, 20);
             ANALYZE;",
        )
        .execute(&pool)
        .await
        .unwrap();
        let plan: Vec<String> = sqlx::query_scalar(&format!("EXPLAIN {}", no_live_worker_sql()))
            .fetch_all(&pool)
            .await
            .unwrap();
        let plan = plan.join("\n");
        assert!(
            plan.contains("paysaga_sagas_runnable") && !plan.contains("Seq Scan on paysaga_sagas"),
            "unrunnable count plan:\n{plan}"
        );
    }

    /// The gauges read only open sagas and the sagas started since the last refresh, through
    /// indexes, however many sagas have finished.
    #[tokio::test]
    async fn gauge_queries_read_only_open_and_new_sagas_through_indexes() {
        let db = paysaga_testkit::database().await;
        let store = PgStore::connect(db.url()).await.unwrap();
        store.migrate().await.unwrap();
        let pool = store.pool().clone();
        sqlx::raw_sql(
            "INSERT INTO paysaga_definitions (name, version, content_hash, body, step_kinds)
                 VALUES ('noop', 1, 'h', '{}', '{noop.sleep}');
             INSERT INTO paysaga_sagas (id, definition_id, workflow, version, input, status, finished_at, created_at)
                 SELECT gen_random_uuid(), 1, 'noop', 1, '{}', 'completed', now(), now() - interval '30 days'
                 FROM generate_series(1, 50000);
             INSERT INTO paysaga_sagas (id, definition_id, workflow, version, input, status, run_at)
                 SELECT gen_random_uuid(), 1, 'noop', 1, '{}', 'scheduled', now()
                 FROM generate_series(1, 20);
             ANALYZE;",
        )
        .execute(&pool)
        .await
        .unwrap();
        let sql = gauges_sql();
        let gauges: Vec<String> = sqlx::query_scalar(&format!("EXPLAIN {sql}"))
            .bind(3600.0_f64)
            .bind(5_i32)
            .fetch_all(&pool)
            .await
            .unwrap();
        let gauges = gauges.join("\n");
        assert!(
            gauges.contains("paysaga_sagas_status_workflow")
                && !gauges.contains("Seq Scan on paysaga_sagas"),
            "gauge plan:\n{gauges}"
        );
        let sql = STARTED_SQL;
        let started: Vec<String> = sqlx::query_scalar(&format!("EXPLAIN {sql}"))
            .bind(Utc::now() - chrono::Duration::minutes(1))
            .bind(Utc::now())
            .fetch_all(&pool)
            .await
            .unwrap();
        let started = started.join("\n");
        assert!(
            started.contains("paysaga_sagas_created") && !started.contains("Seq Scan"),
            "started plan:\n{started}"
        );
    }

    /// The statements an idle worker runs periodically (the reaper, the next lease expiry)
    /// and the retention batch are served by indexes, with 50,000 finished sagas (each with
    /// history, a consumed event and a document) in the tables: none scans a table whose size
    /// grows with the sagas ever stored.
    #[tokio::test]
    async fn reaper_and_retention_queries_use_indexes_whatever_the_finished_sagas() {
        let db = paysaga_testkit::database().await;
        let store = PgStore::connect(db.url()).await.unwrap();
        store.migrate().await.unwrap();
        let pool = store.pool().clone();
        sqlx::raw_sql(
            "INSERT INTO paysaga_definitions (name, version, content_hash, body, step_kinds)
                 VALUES ('noop', 1, 'h', '{}', '{noop.sleep}');
             INSERT INTO paysaga_workers (id, name, hostname, pid, step_kinds, lease_expires_at, stopped_at)
                 SELECT gen_random_uuid(), 'w', 'h', 1, '{noop.sleep}', now(),
                        CASE WHEN g > 3 THEN now() END
                 FROM generate_series(1, 200) g;
             INSERT INTO paysaga_sagas (id, definition_id, workflow, version, input, status, finished_at)
                 SELECT gen_random_uuid(), 1, 'noop', 1, '{}', 'completed', now() - interval '1 day'
                 FROM generate_series(1, 50000);
             INSERT INTO paysaga_sagas (id, definition_id, workflow, version, input, status, run_at, owner)
                 SELECT gen_random_uuid(), 1, 'noop', 1, '{}', 'scheduled', now(),
                        (SELECT id FROM paysaga_workers WHERE stopped_at IS NULL LIMIT 1)
                 FROM generate_series(1, 20);
             INSERT INTO paysaga_history (saga_id, kind) SELECT id, 'saga_started' FROM paysaga_sagas;
             INSERT INTO paysaga_history (saga_id, kind) SELECT id, 'saga_completed' FROM paysaga_sagas;
             INSERT INTO paysaga_events (provider, event_id, event_type, correlation_key, payload, consumed_by)
                 SELECT 'lumanu', 'e' || id, 'payable.paid', 'payable:' || id, '{}', id
                 FROM paysaga_sagas;
             INSERT INTO paysaga_documents (id, content_type, size, sha256, content, saga_id, content_deleted_at)
                 SELECT gen_random_uuid(), 'image/png', 3, repeat('a', 64), NULL, id, now()
                 FROM paysaga_sagas;
             INSERT INTO paysaga_fan_outs (parent_id, step)
                 SELECT id, 'fan' FROM paysaga_sagas;
             ANALYZE;",
        )
        .execute(&pool)
        .await
        .unwrap();
        let explain = |sql: String| {
            let pool = pool.clone();
            async move {
                let rows: Vec<String> = sqlx::query_scalar(&format!("EXPLAIN {sql}"))
                    .bind(vec![Uuid::new_v4()])
                    .fetch_all(&pool)
                    .await
                    .unwrap();
                rows.join("\n")
            }
        };
        let reap = explain(REAP_SQL.to_string()).await;
        assert!(reap.contains("paysaga_sagas_owner"), "reaper plan:\n{reap}");
        assert!(
            !reap.contains("Seq Scan on paysaga_sagas"),
            "reaper plan:\n{reap}"
        );
        let expiry: Vec<String> = sqlx::query_scalar(&format!("EXPLAIN {NEXT_EXPIRY_SQL}"))
            .bind(Uuid::new_v4())
            .fetch_all(&pool)
            .await
            .unwrap();
        let expiry = expiry.join("\n");
        assert!(
            expiry.contains("paysaga_workers_live"),
            "next expiry plan:\n{expiry}"
        );
        // The retention batch (90 days: nothing to delete, as on most days; an hour: every
        // finished saga qualifies, a batch of 1,000) and its dry run.
        for older_than in [90.0 * 86_400.0_f64, 3600.0] {
            let prune: Vec<String> = sqlx::query_scalar(&format!("EXPLAIN {}", prune_sql()))
                .bind(older_than)
                .bind(crate::prunable_statuses())
                .bind(1000_i64)
                .fetch_all(&pool)
                .await
                .unwrap();
            let prune = prune.join("\n");
            assert!(
                prune.contains("paysaga_sagas_finished"),
                "prune plan:\n{prune}"
            );
            for table in [
                "paysaga_sagas",
                "paysaga_history",
                "paysaga_events",
                "paysaga_documents",
                "paysaga_fan_outs",
            ] {
                assert!(
                    !prune.contains(&format!("Seq Scan on {table}")),
                    "prune plan scans {table}:\n{prune}"
                );
            }
        }
        let count: Vec<String> = sqlx::query_scalar(&format!("EXPLAIN {}", count_prunable_sql()))
            .bind(90.0 * 86_400.0_f64)
            .bind(crate::prunable_statuses())
            .fetch_all(&pool)
            .await
            .unwrap();
        let count = count.join("\n");
        assert!(
            count.contains("paysaga_sagas_finished"),
            "dry run plan:\n{count}"
        );
    }

    /// The per-key concurrency queries (hand-over, sweep, holders) read only open keyed sagas
    /// through `paysaga_sagas_concurrency`, however many sagas have no key or have finished;
    /// `next_due` still goes through `paysaga_sagas_runnable`.
    #[tokio::test]
    async fn concurrency_queries_use_their_index_whatever_the_other_sagas() {
        let db = paysaga_testkit::database().await;
        let store = PgStore::connect(db.url()).await.unwrap();
        store.migrate().await.unwrap();
        let pool = store.pool().clone();
        sqlx::raw_sql(
            "INSERT INTO paysaga_definitions (name, version, content_hash, body, step_kinds)
                 VALUES ('noop', 1, 'h', '{}', '{noop.sleep}');
             INSERT INTO paysaga_sagas (id, definition_id, workflow, version, input, status, finished_at,
                                        concurrency_key, concurrency_limit, concurrency_held)
                 SELECT gen_random_uuid(), 1, 'noop', 1, '{}', 'completed', now() - interval '1 day',
                        CASE WHEN g % 2 = 0 THEN 'noop:' || (g % 1000) END,
                        CASE WHEN g % 2 = 0 THEN 1 END, g % 2 = 0
                 FROM generate_series(1, 50000) g;
             INSERT INTO paysaga_sagas (id, definition_id, workflow, version, input, status, run_at)
                 SELECT gen_random_uuid(), 1, 'noop', 1, '{}', 'scheduled', now() + interval '1 hour'
                 FROM generate_series(1, 20000);
             INSERT INTO paysaga_sagas (id, definition_id, workflow, version, input, status, run_at,
                                        concurrency_key, concurrency_limit, concurrency_held)
                 SELECT gen_random_uuid(), 1, 'noop', 1, '{}', 'scheduled',
                        CASE WHEN g <= 1000 THEN now() END,
                        'noop:' || (g % 1000), 1, g <= 1000
                 FROM generate_series(1, 5000) g;
             ANALYZE;",
        )
        .execute(&pool)
        .await
        .unwrap();
        for (name, sql, bind_key) in [
            ("hand-over", admit_sql(), true),
            ("holders", holders_sql(), true),
            ("sweep", keys_with_free_slots_sql(), false),
        ] {
            let query = format!("EXPLAIN {sql}");
            let mut q = sqlx::query_scalar::<_, String>(&query);
            if bind_key {
                q = q.bind("noop:7");
            }
            let plan = q.fetch_all(&pool).await.unwrap().join("\n");
            assert!(
                plan.contains("paysaga_sagas_concurrency"),
                "{name} plan:\n{plan}"
            );
            assert!(
                !plan.contains("Seq Scan on paysaga_sagas"),
                "{name} plan:\n{plan}"
            );
        }
        // (The claim's plan, with the same test on queued sagas: `hot_path_queries_use_their_indexes`.)
        let due = plan(&pool, &next_due_sql(), &["noop.sleep".to_string()]).await;
        assert!(
            due.contains("paysaga_sagas_runnable"),
            "next due plan:\n{due}"
        );
    }

    /// A group's statement never ends a child saga: ending children of two parents in one
    /// transaction locks their fan-out rows in an order of its own, and two such
    /// transactions deadlock. The group leaves each child's end out (its outcome is "alone")
    /// and commits the rest; the child's end, made alone, counts itself on its parent's
    /// fan-out row.
    #[tokio::test]
    async fn a_group_leaves_a_child_sagas_end_to_a_statement_of_its_own() {
        let db = paysaga_testkit::database().await;
        let store = PgStore::connect(db.url()).await.unwrap();
        store.migrate().await.unwrap();
        let pool = store.pool().clone();
        let worker = Uuid::new_v4();
        let (p1, p2, plain) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        let children = [
            Uuid::new_v4(),
            Uuid::new_v4(),
            Uuid::new_v4(),
            Uuid::new_v4(),
        ];
        sqlx::query(
            "INSERT INTO paysaga_definitions (name, version, content_hash, body, step_kinds)
                 VALUES ('noop', 1, 'h', '{}', '{noop.sleep}')",
        )
        .execute(&pool)
        .await
        .unwrap();
        let info = WorkerInfo {
            id: worker,
            name: "w".to_string(),
            hostname: "h".to_string(),
            pid: 1,
            step_kinds: vec!["noop.sleep".to_string()],
            assignments: None,
        };
        store
            .register_worker(&info, Duration::from_secs(3600))
            .await
            .unwrap();
        for parent in [p1, p2] {
            sqlx::query(
                "INSERT INTO paysaga_sagas (id, definition_id, workflow, version, input, status, run_at)
                     VALUES ($1, 1, 'noop', 1, '{}', 'waiting', now() + interval '1 day')",
            )
            .bind(parent)
            .execute(&pool)
            .await
            .unwrap();
            sqlx::query(
                "INSERT INTO paysaga_fan_outs (parent_id, step, total, started) VALUES ($1, 'pay', 2, 2)",
            )
            .bind(parent)
            .execute(&pool)
            .await
            .unwrap();
        }
        // Children of p1, p2, p1, p2 (the order two groups would end them in), and a saga
        // that is nobody's child.
        for (i, child) in children.iter().enumerate() {
            sqlx::query(
                "INSERT INTO paysaga_sagas (id, definition_id, workflow, version, input, status,
                                            run_at, owner, fence, parent_id, parent_step,
                                            child_index, child_key)
                     VALUES ($1, 1, 'noop', 1, '{}', 'scheduled', now(), $2, 1, $3, 'pay', $4, $5)",
            )
            .bind(child)
            .bind(worker)
            .bind(if i % 2 == 0 { p1 } else { p2 })
            .bind(i as i64 / 2)
            .bind(format!("k{i}"))
            .execute(&pool)
            .await
            .unwrap();
        }
        sqlx::query(
            "INSERT INTO paysaga_sagas (id, definition_id, workflow, version, input, status, run_at, owner, fence)
                 VALUES ($1, 1, 'noop', 1, '{}', 'scheduled', now(), $2, 1)",
        )
        .bind(plain)
        .bind(worker)
        .execute(&pool)
        .await
        .unwrap();
        let completed = paysaga_core::Transition {
            status: paysaga_core::SagaStatus::Completed,
            step_index: 1,
            attempt: 1,
            step_started_at: None,
            run_at: None,
            wait: None,
            output: None,
            last_error: None,
            history: Vec::new(),
            continue_now: false,
            effect_possible: false,
        };
        let commit = |saga: Uuid| Commit {
            saga,
            worker,
            fence: 1,
            prior_status: paysaga_core::SagaStatus::Scheduled,
            consumed_event: None,
            transition: &completed,
            token: Uuid::new_v4(),
            references: &[],
        };
        let ids: Vec<Uuid> = children.iter().copied().chain([plain]).collect();
        let batch: Vec<Arc<SimpleCommit>> = ids
            .iter()
            .map(|id| Arc::new(SimpleCommit::new(&commit(*id))))
            .collect();
        let outcomes = commit_many(store.hot(), &batch).await.unwrap();
        for (id, outcome) in ids.iter().zip(&outcomes) {
            match outcome {
                Grouped::Alone => assert!(children.contains(id), "{id} left out of the group"),
                Grouped::Applied(_) => assert_eq!(*id, plain, "a child's end in the group"),
                Grouped::Refused => panic!("{id} refused"),
            }
        }
        let count = |sql: &'static str| {
            let pool = pool.clone();
            async move {
                sqlx::query_scalar::<_, i64>(sql)
                    .fetch_one(&pool)
                    .await
                    .unwrap()
            }
        };
        assert_eq!(
            count("SELECT count(*) FROM paysaga_sagas WHERE status = 'completed'").await,
            1,
            "only the saga that is nobody's child ended in the group"
        );
        assert_eq!(
            count("SELECT coalesce(sum(ended), 0)::int8 FROM paysaga_fan_outs").await,
            0
        );
        // Through the store: each child's end is made alone and counted on its parent.
        let ends =
            futures::future::join_all(children.iter().map(|id| store.commit(commit(*id)))).await;
        for end in ends {
            end.unwrap();
        }
        assert_eq!(
            count("SELECT count(*) FROM paysaga_sagas WHERE status = 'completed'").await,
            5
        );
        assert_eq!(
            count("SELECT count(*) FROM paysaga_fan_outs WHERE ended = 2").await,
            2,
            "every child counted once on its own parent's fan-out row"
        );
    }

    /// A parent's children (its next step's `$.children`, `show`'s counts) are read through
    /// the partial index `paysaga_sagas_children`, however many other sagas are stored.
    #[tokio::test]
    async fn children_of_a_parent_are_read_through_their_index() {
        let db = paysaga_testkit::database().await;
        let store = PgStore::connect(db.url()).await.unwrap();
        store.migrate().await.unwrap();
        let pool = store.pool().clone();
        sqlx::raw_sql(
            "INSERT INTO paysaga_definitions (name, version, content_hash, body, step_kinds)
                 VALUES ('noop', 1, 'h', '{}', '{noop.sleep}');
             INSERT INTO paysaga_sagas (id, definition_id, workflow, version, input, status, finished_at)
                 SELECT gen_random_uuid(), 1, 'noop', 1, '{}', 'completed', now()
                 FROM generate_series(1, 50000);
             INSERT INTO paysaga_sagas (id, definition_id, workflow, version, input, status, run_at,
                                        parent_id, parent_step, child_index, child_key)
                 SELECT gen_random_uuid(), 1, 'noop', 1, '{}', 'scheduled', now(),
                        ('00000000-0000-0000-0000-00000000000' || (i % 2))::uuid, 'fan', i, 'k' || i
                 FROM generate_series(1, 2000) AS i;
             INSERT INTO paysaga_sagas (id, definition_id, workflow, version, input, status,
                                        finished_at, parent_id, parent_step, child_index, child_key)
                 SELECT gen_random_uuid(), 1, 'noop', 1, '{}', 'completed', now(),
                        ('00000000-0000-0000-0000-00000000001' || (i % 10))::uuid, 'fan', i, 'k' || i
                 FROM generate_series(1, 50000) AS i;
             ANALYZE;",
        )
        .execute(&pool)
        .await
        .unwrap();
        let parent = Uuid::from_u128(1);
        let plan: Vec<String> = sqlx::query_scalar(&format!("EXPLAIN {}", CHILD_SAGAS_SQL))
            .bind(parent)
            .bind("fan")
            .bind(true)
            .fetch_all(&pool)
            .await
            .unwrap();
        let plan = plan.join("\n");
        assert!(
            plan.contains("paysaga_sagas_children") && !plan.contains("Seq Scan"),
            "children plan:\n{plan}"
        );
        let plan: Vec<String> = sqlx::query_scalar(&format!("EXPLAIN {}", CHILD_COUNTS_SQL))
            .bind(parent)
            .fetch_all(&pool)
            .await
            .unwrap();
        let plan = plan.join("\n");
        assert!(
            plan.contains("paysaga_sagas_children") && !plan.contains("Seq Scan"),
            "child counts plan:\n{plan}"
        );
        // The cascade's safety net (each reaper pass) reads only the open children.
        let plan: Vec<String> = sqlx::query_scalar(&format!("EXPLAIN {CASCADE_CANCELS_SQL}"))
            .bind(WAKEUP_CHANNEL)
            .fetch_all(&pool)
            .await
            .unwrap();
        let plan = plan.join("\n");
        assert!(
            plan.contains("paysaga_sagas_open_children") && !plan.contains("Seq Scan"),
            "cascade plan:\n{plan}"
        );
    }
}
