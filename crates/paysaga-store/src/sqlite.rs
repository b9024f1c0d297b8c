//! The embedded store: paysaga on one SQLite file. All of its SQL lives in this file and its
//! schema in `migrations/sqlite/`.
//!
//! ## What it is for
//! Running paysaga on a laptop with nothing installed but Rust: the demo, developing and
//! testing a workflow, a single-node tool. Select it with a `sqlite://` URL
//! (`sqlite://paysaga.db`, relative to the working directory, or `sqlite:///abs/path.db`);
//! the file is created if missing. [`crate::connect`] picks it by the URL scheme.
//!
//! ## What it keeps
//! Every invariant one node can keep, with the same meaning as the PostgreSQL store (the
//! conformance suite in `tests/conformance.rs` runs the same tests against both):
//! - fenced leases: [`Store::commit`] checks owner, fencing token and the worker's live lease
//!   in the transaction that writes the step's result;
//! - inbox first: [`Store::deliver_event`] stores the event (dedup on provider + event id)
//!   and ends a matching wait in one transaction; a wait that begins later consumes a stored
//!   event in the transaction that would store the wait;
//! - durable retries (attempt, first attempt time and next run time are stored), idempotent
//!   submit and start, history rows written with each transition.
//!
//! Every write transaction starts with `BEGIN IMMEDIATE` on the pool's single writer
//! connection, so writes are serialised in this process and, through SQLite's file lock
//! (with a busy timeout), across processes: a read-then-write can never interleave with
//! another writer. Reads use a few more connections (WAL mode lets them run beside the
//! writer).
//!
//! ## What it is not
//! - **Not for several workers.** One live worker per file: [`Store::register_worker`]
//!   refuses a second one with [`Error::WorkerAlreadyRunning`], naming the live worker. CLI
//!   commands (`start`, `list`, `retry`, ...) from other processes are fine. Use PostgreSQL to
//!   run several workers or several hosts.
//! - **No LISTEN/NOTIFY.** [`Store::wakeups`] hears writes of the same process at once and
//!   notices other processes' writes by polling `PRAGMA data_version` every
//!   [`CROSS_PROCESS_POLL`] (a webhook delivered by another process wakes the worker within
//!   that time).
//! - Not on a network file system (SQLite's locking needs a local disk), and no read-only
//!   roles: anyone who can read the file can change it.
//!
//! ## Storage formats
//! UUIDs are lowercase hyphenated text; timestamps are UTC text in one fixed format
//! (`2026-11-23T10:00:00.000000Z`) written by the store, so that text order is time order;
//! JSON is text. Inspect with `sqlite3 paysaga.db 'SELECT id, status, run_at FROM paysaga_sagas'`.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, NaiveDateTime, Utc};
use paysaga_core::{ActiveWait, Definition, Event, HistoryEntry, HistoryKind, SagaStatus};
use serde::Serialize;
use serde_json::{json, Value};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};
use sqlx::{Connection, Row, Sqlite, SqliteConnection, Transaction};
use tokio::sync::broadcast;
use tracing::instrument;
use uuid::Uuid;

use crate::ended::EndSignals;
use crate::SagaReference;
use crate::{budget_slot, budget_step, RequestSlot, SlotRequest};
use crate::{AuditFilter, AuditRecord, OperatorChange};
use crate::{ChildCount, ChildSaga, ParentLink, StartChildren};
use crate::{
    ClaimedSaga, Commit, Committed, DefinitionRecord, Delivery, EffectMark, EffectMarkRequest,
    Error, EventFilter, EventRecord, HistoryRecord, NewEvent, NewSaga, OperatorAction, SagaFilter,
    SagaRecord, Stats, Store, UnrunnableGroup, WakeupsBox, WorkerInfo,
};
use crate::{DocumentRecord, NewDocument};
use crate::{DriftRecord, NewReconciliation, ReconcileReference, Reconciliation};
use crate::{GaugeRequest, GaugeSnapshot};
use crate::{Pruned, Reaped};
use paysaga_core::DocumentId;

/// The migrations in `migrations/sqlite/`, embedded at build time.
static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations/sqlite");

/// How often [`Store::wakeups`] checks whether another process wrote to the file.
pub const CROSS_PROCESS_POLL: Duration = Duration::from_millis(250);

/// How long a statement waits for another process's write lock before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

const SAGA_COLUMNS: &str = "id, definition_id, workflow, version, idempotency_key, input, status, \
    step_index, attempt, step_started_at, run_at, owner, fence, outputs, wait, wake_event, \
    last_error, cancel_requested, created_at, updated_at, finished_at, effect_possible, effect_step, \
    closed_outcome, key_generations, close_requested, concurrency_key, concurrency_limit, concurrency_held, trace_context";

const ACTIVE: &str = "('scheduled', 'retrying', 'waiting', 'compensating')";
/// First line of a migration that must run with foreign keys off (a table rebuild).
const FOREIGN_KEYS_OFF: &str = "-- paysaga:foreign-keys-off";

/// The claim: unowned runnable sagas whose step kinds the worker has (`$3`, a JSON array),
/// oldest due first; served by the partial index `paysaga_sagas_runnable` (forced with
/// `INDEXED BY`: the planner has no statistics on a fresh file). One statement, so
/// atomic without an explicit transaction. `$1` worker, `$2` limit, `$4` now.
const CLAIM_SQL: &str = "
UPDATE paysaga_sagas SET owner = $1, fence = fence + 1
WHERE id IN (
    SELECT id FROM paysaga_sagas INDEXED BY paysaga_sagas_runnable
    WHERE owner IS NULL AND status IN ('scheduled', 'retrying', 'waiting', 'compensating')
      AND run_at <= $4
      AND (concurrency_key IS NULL OR concurrency_held = 1 OR cancel_requested = 1)
      AND definition_id IN (
          SELECT d.id FROM paysaga_definitions d
          WHERE NOT EXISTS (SELECT 1 FROM json_each(d.step_kinds) k
                            WHERE k.value NOT IN (SELECT value FROM json_each($3))))
      AND EXISTS (SELECT 1 FROM paysaga_workers
                  WHERE id = $1 AND stopped_at IS NULL AND lease_expires_at > $4)
    ORDER BY run_at
    LIMIT $2)
RETURNING id, definition_id, workflow, version, idempotency_key, input, status, step_index,
    attempt, step_started_at, run_at, owner, fence, outputs, wait, wake_event, last_error,
    cancel_requested, created_at, updated_at, finished_at, effect_possible, effect_step, closed_outcome,
    key_generations, close_requested, concurrency_key, concurrency_limit, concurrency_held, trace_context";

/// Operator rows across sagas, newest first (`$1` since, `$2` actor, `$3` limit); served by
/// the partial index `paysaga_history_operator` (forced: no statistics on a fresh file).
const OPERATOR_HISTORY_SQL: &str = "
SELECT h.id, h.saga_id, s.workflow, h.at, h.worker, h.actor, h.step, h.attempt, h.kind, h.error,
    h.detail
FROM paysaga_history h INDEXED BY paysaga_history_operator
JOIN paysaga_sagas s ON s.id = h.saga_id
WHERE h.actor IS NOT NULL AND h.kind <> 'saga_started'
  AND h.at >= coalesce($1, '')
  AND ($2 IS NULL OR h.actor = $2)
ORDER BY h.at DESC, h.id DESC
LIMIT $3";

/// When the next unowned saga the worker can run becomes due (`$1` its kinds, JSON array).
const NEXT_DUE_SQL: &str = "
SELECT run_at FROM paysaga_sagas INDEXED BY paysaga_sagas_runnable
WHERE owner IS NULL AND status IN ('scheduled', 'retrying', 'waiting', 'compensating')
  AND run_at IS NOT NULL
  AND (concurrency_key IS NULL OR concurrency_held = 1 OR cancel_requested = 1)
  AND definition_id IN (
      SELECT d.id FROM paysaga_definitions d
      WHERE NOT EXISTS (SELECT 1 FROM json_each(d.step_kinds) k
                        WHERE k.value NOT IN (SELECT value FROM json_each($1))))
ORDER BY run_at LIMIT 1";

/// Gives the free slots of concurrency key `$1` to its oldest queued sagas (`$2` now): the
/// key's limit is the smallest among its open sagas. Inside a write transaction (serialised);
/// served by `paysaga_sagas_concurrency`.
const ADMIT_SQL: &str = "
UPDATE paysaga_sagas SET concurrency_held = 1, run_at = $2, updated_at = $2
WHERE id IN (
    SELECT id FROM paysaga_sagas INDEXED BY paysaga_sagas_concurrency
    WHERE concurrency_key = $1 AND concurrency_held = 0
      AND status IN ('scheduled', 'retrying', 'waiting', 'compensating', 'needs_operator')
      AND status IN ('scheduled', 'retrying', 'waiting', 'compensating')
    ORDER BY created_at, id
    LIMIT (SELECT max(coalesce(min(concurrency_limit), 0) - coalesce(sum(concurrency_held), 0), 0)
           FROM paysaga_sagas INDEXED BY paysaga_sagas_concurrency
           WHERE concurrency_key = $1
             AND status IN ('scheduled', 'retrying', 'waiting', 'compensating', 'needs_operator')))
RETURNING id";

/// Keys with a queued saga and fewer holders than slots (the sweep of `admit_queued`).
const KEYS_WITH_FREE_SLOTS_SQL: &str = "
SELECT concurrency_key FROM paysaga_sagas INDEXED BY paysaga_sagas_concurrency
WHERE concurrency_key IS NOT NULL
  AND status IN ('scheduled', 'retrying', 'waiting', 'compensating', 'needs_operator')
GROUP BY concurrency_key
HAVING sum(concurrency_held = 0 AND status <> 'needs_operator') > 0
   AND sum(concurrency_held) < min(concurrency_limit)
LIMIT 1000";

/// The holders of concurrency key `$1`, oldest first.
const HOLDERS_SQL: &str = "
SELECT id FROM paysaga_sagas INDEXED BY paysaga_sagas_concurrency
WHERE concurrency_key = $1 AND concurrency_held = 1
  AND status IN ('scheduled', 'retrying', 'waiting', 'compensating', 'needs_operator')
ORDER BY created_at, id";

/// Gives the free slots of concurrency `key` to its oldest queued sagas inside `tx`.
/// Gives the documents `ids` to `saga` in `tx` (a write transaction): all or none, checked
/// by [`crate::check_document_claim`].
async fn claim_documents_in(
    tx: &mut Transaction<'static, Sqlite>,
    saga: Uuid,
    ids: &[DocumentId],
) -> Result<(), Error> {
    for id in ids {
        let row = sqlx::query(
            "SELECT saga_id, content IS NULL AS deleted FROM paysaga_documents WHERE id = $1",
        )
        .bind(id.0.to_string())
        .fetch_optional(&mut **tx)
        .await?;
        let found = match row {
            Some(row) => Some((get_opt_uuid(&row, "saga_id")?, row.try_get("deleted")?)),
            None => None,
        };
        crate::check_document_claim(saga, *id, found)?;
        sqlx::query("UPDATE paysaga_documents SET saga_id = $1 WHERE id = $2 AND saga_id IS NULL")
            .bind(saga.to_string())
            .bind(id.0.to_string())
            .execute(&mut **tx)
            .await?;
    }
    Ok(())
}

/// The saga holding `new`'s idempotency key, read in `tx` (none without a key).
async fn saga_of_key_in(
    tx: &mut Transaction<'static, Sqlite>,
    new: &NewSaga,
) -> Result<Option<SagaRecord>, Error> {
    let Some(key) = &new.idempotency_key else {
        return Ok(None);
    };
    let row = sqlx::query(&format!(
        "SELECT {SAGA_COLUMNS} FROM paysaga_sagas WHERE workflow = $1 AND idempotency_key = $2"
    ))
    .bind(&new.workflow)
    .bind(key)
    .fetch_optional(&mut **tx)
    .await?;
    row.as_ref().map(saga_from_row).transpose()
}

async fn admit_in(tx: &mut Transaction<'static, Sqlite>, key: &str) -> Result<u64, Error> {
    Ok(sqlx::query(ADMIT_SQL)
        .bind(key)
        .bind(ts(Utc::now()))
        .execute(&mut **tx)
        .await?
        .rows_affected())
}

fn concurrency_from_row(row: &SqliteRow) -> Result<Option<crate::SagaConcurrency>, Error> {
    let key: Option<String> = row.try_get("concurrency_key")?;
    let limit: Option<i64> = row.try_get("concurrency_limit")?;
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

/// SQLite implementation of [`Store`] for one node (see the module docs).
#[derive(Debug, Clone)]
pub struct SqliteStore {
    /// One connection: every write goes through it (`BEGIN IMMEDIATE`).
    writer: SqlitePool,
    /// Readers (WAL lets them run beside the writer); the writer itself for `:memory:`.
    reader: SqlitePool,
    /// Options for the wake-up poller's own connection; `None` for an in-memory database,
    /// which no other process can write.
    poll_options: Option<SqliteConnectOptions>,
    /// Wake-ups of writes made through this store in this process.
    wake: broadcast::Sender<()>,
    /// This process's waiters of saga ends ([`Store::watch_end`]), signalled by the store's
    /// own commits and operator actions (the only writes that change a saga's status).
    ended: Arc<EndSignals>,
}

impl SqliteStore {
    /// Opens (and creates if missing) the database at a `sqlite://` URL, in WAL mode with a
    /// busy timeout and a single writer connection.
    pub async fn connect(url: &str) -> Result<SqliteStore, Error> {
        let in_memory = url.contains(":memory:") || url.contains("mode=memory");
        let options = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .foreign_keys(true)
            .busy_timeout(BUSY_TIMEOUT);
        let options = if in_memory {
            options
        } else {
            options
                .journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Full)
        };
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(if in_memory { 1 } else { 0 })
            .idle_timeout(None)
            .max_lifetime(None)
            .acquire_timeout(Duration::from_secs(30))
            .connect_with(options.clone())
            .await?;
        let reader = if in_memory {
            writer.clone()
        } else {
            SqlitePoolOptions::new()
                .max_connections(4)
                .acquire_timeout(Duration::from_secs(30))
                .connect_with(options.clone())
                .await?
        };
        let (wake, _) = broadcast::channel(16);
        Ok(SqliteStore {
            writer,
            reader,
            poll_options: (!in_memory).then_some(options),
            wake,
            // Heard in-process from the first waiter on: nothing to connect, nothing lost.
            ended: EndSignals::new(Some(1)),
        })
    }

    /// A write transaction holding the database's write lock from its first statement.
    async fn write_tx(&self) -> Result<Transaction<'static, Sqlite>, Error> {
        Ok(self.writer.begin_with("BEGIN IMMEDIATE").await?)
    }

    /// Tells this process's wake-up streams that runnable work may exist.
    fn notify(&self) {
        // No receiver is fine: nobody listens.
        let _ = self.wake.send(());
    }

    /// Records a commit the fence refused (see `Store::commit`), after the refusal.
    async fn record_refused_commit(&self, c: &Commit<'_>) -> Result<(), Error> {
        let entry = crate::refused_commit_entry(c);
        let mut tx = self.write_tx().await?;
        if self.saga_in(&mut tx, c.saga).await?.is_some() {
            insert_history(&mut tx, c.saga, Some(c.worker), None, &[entry]).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn saga_in(
        &self,
        tx: &mut Transaction<'static, Sqlite>,
        id: Uuid,
    ) -> Result<Option<SagaRecord>, Error> {
        let row = sqlx::query(&format!(
            "SELECT {SAGA_COLUMNS} FROM paysaga_sagas WHERE id = $1"
        ))
        .bind(id.to_string())
        .fetch_optional(&mut **tx)
        .await?;
        row.as_ref().map(saga_from_row).transpose()
    }
}

// ---------------------------------------------------------------------------------------
// Conversions

/// The one timestamp format: fixed width, so that text order is time order.
fn ts(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()
}

fn parse_ts(text: &str) -> Result<DateTime<Utc>, Error> {
    NaiveDateTime::parse_from_str(text, "%Y-%m-%dT%H:%M:%S%.fZ")
        .map(|n| n.and_utc())
        .or_else(|_| DateTime::parse_from_rfc3339(text).map(|t| t.with_timezone(&Utc)))
        .map_err(|e| Error::Corrupt(format!("timestamp {text:?}: {e}")))
}

fn get_ts(row: &SqliteRow, column: &str) -> Result<DateTime<Utc>, Error> {
    parse_ts(&row.try_get::<String, _>(column)?)
}

fn get_opt_ts(row: &SqliteRow, column: &str) -> Result<Option<DateTime<Utc>>, Error> {
    row.try_get::<Option<String>, _>(column)?
        .as_deref()
        .map(parse_ts)
        .transpose()
}

fn parse_uuid(text: &str) -> Result<Uuid, Error> {
    Uuid::parse_str(text).map_err(|e| Error::Corrupt(format!("uuid {text:?}: {e}")))
}

fn get_uuid(row: &SqliteRow, column: &str) -> Result<Uuid, Error> {
    parse_uuid(&row.try_get::<String, _>(column)?)
}

fn get_opt_uuid(row: &SqliteRow, column: &str) -> Result<Option<Uuid>, Error> {
    row.try_get::<Option<String>, _>(column)?
        .as_deref()
        .map(parse_uuid)
        .transpose()
}

fn to_json<T: Serialize + ?Sized>(value: &T) -> Result<String, Error> {
    serde_json::to_string(value).map_err(|e| Error::Corrupt(e.to_string()))
}

fn parse_json(text: &str, what: &str) -> Result<Value, Error> {
    serde_json::from_str(text).map_err(|e| Error::Corrupt(format!("{what}: {e}")))
}

fn get_json(row: &SqliteRow, column: &str) -> Result<Value, Error> {
    parse_json(&row.try_get::<String, _>(column)?, column)
}

fn get_opt_json(row: &SqliteRow, column: &str) -> Result<Option<Value>, Error> {
    row.try_get::<Option<String>, _>(column)?
        .map(|t| parse_json(&t, column))
        .transpose()
}

fn get_u32(row: &SqliteRow, column: &str) -> Result<u32, Error> {
    let v: i64 = row.try_get(column)?;
    u32::try_from(v).map_err(|_| Error::Corrupt(format!("{column} = {v}")))
}

fn saga_from_row(row: &SqliteRow) -> Result<SagaRecord, Error> {
    let status: String = row.try_get("status")?;
    Ok(SagaRecord {
        id: get_uuid(row, "id")?,
        definition_id: row.try_get("definition_id")?,
        workflow: row.try_get("workflow")?,
        version: get_u32(row, "version")?,
        idempotency_key: row.try_get("idempotency_key")?,
        input: get_json(row, "input")?,
        status: status.parse().map_err(|e| Error::Corrupt(format!("{e}")))?,
        step_index: get_u32(row, "step_index")? as usize,
        attempt: get_u32(row, "attempt")?,
        step_started_at: get_opt_ts(row, "step_started_at")?,
        run_at: get_opt_ts(row, "run_at")?,
        owner: get_opt_uuid(row, "owner")?,
        fence: row.try_get("fence")?,
        outputs: get_json(row, "outputs")?,
        wait: get_opt_json(row, "wait")?
            .map(serde_json::from_value::<ActiveWait>)
            .transpose()
            .map_err(|e| Error::Corrupt(format!("saga wait: {e}")))?,
        wake_event: get_opt_json(row, "wake_event")?
            .map(serde_json::from_value::<Event>)
            .transpose()
            .map_err(|e| Error::Corrupt(format!("saga wake_event: {e}")))?,
        last_error: row.try_get("last_error")?,
        cancel_requested: row.try_get("cancel_requested")?,
        created_at: get_ts(row, "created_at")?,
        updated_at: get_ts(row, "updated_at")?,
        finished_at: get_opt_ts(row, "finished_at")?,
        effect_possible: row.try_get::<bool, _>("effect_possible")?
            || row.try_get::<Option<i64>, _>("effect_step")?
                == Some(row.try_get::<i64, _>("step_index")?),
        closed_outcome: crate::closed_outcome(row.try_get("closed_outcome")?)?,
        key_generations: serde_json::from_value(get_json(row, "key_generations")?)
            .map_err(|e| Error::Corrupt(format!("saga key_generations: {e}")))?,
        close_requested: crate::close_request(get_opt_json(row, "close_requested")?)?,
        concurrency: concurrency_from_row(row)?,
        trace_context: row.try_get("trace_context")?,
    })
}

fn string_list(text: &str, what: &str) -> Result<Vec<String>, Error> {
    serde_json::from_str(text).map_err(|e| Error::Corrupt(format!("{what}: {e}")))
}

fn definition_from_row(row: &SqliteRow) -> Result<DefinitionRecord, Error> {
    Ok(DefinitionRecord {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        version: get_u32(row, "version")?,
        content_hash: row.try_get("content_hash")?,
        definition: serde_json::from_value(get_json(row, "body")?)
            .map_err(|e| Error::Corrupt(format!("definition body: {e}")))?,
        step_kinds: string_list(&row.try_get::<String, _>("step_kinds")?, "step_kinds")?,
        created_at: get_ts(row, "created_at")?,
    })
}

fn event_from_row(row: &SqliteRow) -> Result<EventRecord, Error> {
    Ok(EventRecord {
        id: row.try_get("id")?,
        provider: row.try_get("provider")?,
        event_id: row.try_get("event_id")?,
        event_type: row.try_get("event_type")?,
        correlation_key: row.try_get("correlation_key")?,
        payload: get_opt_json(row, "payload")?,
        parse_error: row.try_get("parse_error")?,
        raw_body: row.try_get("raw_body")?,
        received_at: get_ts(row, "received_at")?,
        consumed_by: get_opt_uuid(row, "consumed_by")?,
        consumed_at: get_opt_ts(row, "consumed_at")?,
    })
}

/// `outputs` with `output` set (the PostgreSQL store's `outputs || {name: value}`).
fn merged_outputs(outputs: &str, output: &Option<(String, Value)>) -> Result<String, Error> {
    let mut outputs = parse_json(outputs, "outputs")?;
    if let Some((name, value)) = output {
        match outputs.as_object_mut() {
            Some(map) => {
                map.insert(name.clone(), value.clone());
            }
            None => outputs = json!({ name: value }),
        }
    }
    to_json(&outputs)
}

async fn insert_history(
    tx: &mut Transaction<'static, Sqlite>,
    saga: Uuid,
    worker: Option<Uuid>,
    actor: Option<&str>,
    entries: &[HistoryEntry],
) -> Result<(), Error> {
    for e in entries {
        let detail = match &e.detail {
            Value::Null => None,
            d => Some(to_json(d)?),
        };
        sqlx::query(
            "INSERT INTO paysaga_history (saga_id, at, worker, actor, step, attempt, kind, error, detail)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(saga.to_string())
        .bind(ts(Utc::now()))
        .bind(worker.map(|w| w.to_string()))
        .bind(actor)
        .bind(&e.step)
        .bind(e.attempt.map(i64::from))
        .bind(e.kind.as_str())
        .bind(&e.error)
        .bind(detail)
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}

/// Ends the oldest wait matching an event (`None` when nothing waits for it): deletes the
/// wait, marks the event consumed and makes the saga due with the event to handle.
async fn end_matching_wait(
    tx: &mut Transaction<'static, Sqlite>,
    event: &Event,
    now: &str,
) -> Result<Option<Uuid>, Error> {
    let waiting: Option<String> = sqlx::query_scalar(
        "SELECT saga_id FROM paysaga_waits
         WHERE provider = $1 AND correlation_key = $2
           AND $3 IN (SELECT value FROM json_each(event_types))
         ORDER BY created_at, rowid LIMIT 1",
    )
    .bind(&event.provider)
    .bind(&event.correlation_key)
    .bind(&event.event_type)
    .fetch_optional(&mut **tx)
    .await?;
    let Some(saga) = waiting else {
        return Ok(None);
    };
    sqlx::query("DELETE FROM paysaga_waits WHERE saga_id = $1")
        .bind(&saga)
        .execute(&mut **tx)
        .await?;
    let saga = parse_uuid(&saga)?;
    hand_event_to_saga(tx, saga, event, now).await?;
    Ok(Some(saga))
}

/// Hands an event to a saga (run now) and marks it consumed: saga row, then inbox row, the
/// lock order of the PostgreSQL store (writes are serialised here anyway).
async fn hand_event_to_saga(
    tx: &mut Transaction<'static, Sqlite>,
    saga: Uuid,
    event: &Event,
    now: &str,
) -> Result<(), Error> {
    sqlx::query(
        "UPDATE paysaga_sagas SET wake_event = $2, run_at = $3, updated_at = $3 WHERE id = $1",
    )
    .bind(saga.to_string())
    .bind(to_json(event)?)
    .bind(now)
    .execute(&mut **tx)
    .await?;
    sqlx::query("UPDATE paysaga_events SET consumed_by = $2, consumed_at = $3 WHERE id = $1")
        .bind(event.inbox_id)
        .bind(saga.to_string())
        .bind(now)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Releases the sagas `worker` holds (`only`: just that one, under `fence`) with a
/// `saga_released` history row each; returns the sagas released.
async fn release_sagas(
    tx: &mut Transaction<'static, Sqlite>,
    worker: Uuid,
    only: Option<(Uuid, i64)>,
    reason: &str,
    now: &str,
) -> Result<Vec<Uuid>, Error> {
    // A released saga is due now unless it was due earlier (`LEAST(run_at, now)`).
    let rows = sqlx::query(
        "UPDATE paysaga_sagas
         SET owner = NULL, updated_at = $2,
             run_at = CASE WHEN run_at IS NULL OR run_at > $2 THEN $2 ELSE run_at END
         WHERE owner = $1 AND ($3 IS NULL OR (id = $3 AND fence = $4))
         RETURNING id, fence, status, step_index, attempt",
    )
    .bind(worker.to_string())
    .bind(now)
    .bind(only.map(|o| o.0.to_string()))
    .bind(only.map(|o| o.1))
    .fetch_all(&mut **tx)
    .await?;
    let mut released = Vec::with_capacity(rows.len());
    for row in &rows {
        let id = get_uuid(row, "id")?;
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

#[async_trait]
impl Store for SqliteStore {
    /// As the PostgreSQL store: records in `paysaga_migrations` (sqlx's `_sqlx_migrations`
    /// stays the application's), earlier records moved over, one write transaction (the
    /// file's write lock) per migration with its record.
    async fn migrate(&self) -> Result<(), Error> {
        let mut tx = self.write_tx().await?;
        sqlx::Executor::execute(
            &mut *tx,
            "CREATE TABLE IF NOT EXISTS paysaga_migrations (
                 version INTEGER PRIMARY KEY,
                 description TEXT NOT NULL,
                 installed_on TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP,
                 success BOOLEAN NOT NULL,
                 checksum BLOB NOT NULL,
                 execution_time INTEGER NOT NULL)",
        )
        .await?;
        let legacy: Option<String> = sqlx::query_scalar(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name = '_sqlx_migrations'",
        )
        .fetch_optional(&mut *tx)
        .await?;
        if legacy.is_some() {
            for m in MIGRATOR.iter() {
                sqlx::query(
                    "INSERT OR IGNORE INTO paysaga_migrations
                         (version, description, installed_on, success, checksum, execution_time)
                     SELECT version, description, installed_on, success, checksum, execution_time
                     FROM _sqlx_migrations WHERE version = $1 AND checksum = $2",
                )
                .bind(m.version)
                .bind(m.checksum.as_ref())
                .execute(&mut *tx)
                .await?;
                sqlx::query("DELETE FROM _sqlx_migrations WHERE version = $1 AND checksum = $2")
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
        }
        let applied: Vec<(i64, Vec<u8>, bool)> = sqlx::query_as(
            "SELECT version, checksum, success FROM paysaga_migrations ORDER BY version",
        )
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        crate::check_applied_migrations(&MIGRATOR, &applied)?;
        for m in MIGRATOR.iter() {
            if applied.iter().any(|(v, _, _)| *v == m.version) {
                continue;
            }
            let started = std::time::Instant::now();
            // A migration that rebuilds a table other tables reference (SQLite cannot alter a
            // CHECK constraint) runs with foreign keys off, as SQLite's documented procedure
            // says, on the writer connection; every reference is checked before the commit.
            let rebuild = m.sql.starts_with(FOREIGN_KEYS_OFF);
            let mut conn = self.writer.acquire().await?;
            if rebuild {
                sqlx::Executor::execute(&mut *conn, "PRAGMA foreign_keys = OFF").await?;
            }
            let mut tx = sqlx::Connection::begin_with(&mut *conn, "BEGIN IMMEDIATE").await?;
            sqlx::Executor::execute(&mut *tx, m.sql.as_ref())
                .await
                .map_err(|e| sqlx::migrate::MigrateError::ExecuteMigration(e, m.version))?;
            if rebuild {
                let broken: Vec<(String,)> =
                    sqlx::query_as("SELECT \"table\" FROM pragma_foreign_key_check")
                        .fetch_all(&mut *tx)
                        .await?;
                if let Some((table,)) = broken.first() {
                    return Err(Error::Migrate(sqlx::migrate::MigrateError::Execute(
                        sqlx::Error::Protocol(format!(
                            "migration {} left {} rows with a dangling reference (first in {table}); nothing was changed",
                            m.version,
                            broken.len()
                        )),
                    )));
                }
            }
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
            if rebuild {
                sqlx::Executor::execute(&mut *conn, "PRAGMA foreign_keys = ON").await?;
            }
        }
        Ok(())
    }

    async fn schema_versions(&self) -> Result<(Option<i64>, i64), Error> {
        let known = MIGRATOR.iter().map(|m| m.version).max().unwrap_or(0);
        let table: Option<String> = sqlx::query_scalar(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name = 'paysaga_migrations'",
        )
        .fetch_optional(&self.reader)
        .await?;
        if table.is_none() {
            return Ok((None, known));
        }
        let applied: Option<i64> =
            sqlx::query_scalar("SELECT max(version) FROM paysaga_migrations WHERE success")
                .fetch_one(&self.reader)
                .await?;
        Ok((applied, known))
    }

    #[instrument(skip_all, fields(workflow = %def.name, version = def.version))]
    async fn put_definition(&self, def: &Definition) -> Result<DefinitionRecord, Error> {
        let hash = def.content_hash();
        let inserted = sqlx::query(
            "INSERT INTO paysaga_definitions (name, version, content_hash, body, step_kinds, created_at)
             VALUES ($1, $2, $3, $4, $5, $6)
             ON CONFLICT (name, version) DO NOTHING
             RETURNING id, name, version, content_hash, body, step_kinds, created_at",
        )
        .bind(&def.name)
        .bind(i64::from(def.version))
        .bind(&hash)
        .bind(to_json(def)?)
        .bind(to_json(&def.step_kinds())?)
        .bind(ts(Utc::now()))
        .fetch_optional(&self.writer)
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
        .fetch_optional(&self.reader)
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
             WHERE name = $1 AND ($2 IS NULL OR version = $2)
             ORDER BY version DESC LIMIT 1",
        )
        .bind(name)
        .bind(version.map(i64::from))
        .fetch_optional(&self.reader)
        .await?;
        row.as_ref().map(definition_from_row).transpose()
    }

    async fn list_definitions(&self) -> Result<Vec<DefinitionRecord>, Error> {
        let rows = sqlx::query(
            "SELECT id, name, version, content_hash, body, step_kinds, created_at
             FROM paysaga_definitions ORDER BY name, version DESC",
        )
        .fetch_all(&self.reader)
        .await?;
        rows.iter().map(definition_from_row).collect()
    }

    #[instrument(skip_all, fields(workflow = %new.workflow, saga_id = %new.id))]
    async fn create_saga(&self, new: NewSaga) -> Result<(SagaRecord, bool), Error> {
        // The key first: a retried start returns its saga without writing.
        if let Some(key) = &new.idempotency_key {
            if let Some(existing) = self.find_saga_by_key(&new.workflow, key).await? {
                return crate::existing_for_key(existing, new);
            }
        }
        let now = ts(Utc::now());
        let mut tx = self.write_tx().await?;
        if new.latest {
            let newer: bool = sqlx::query_scalar(
                "SELECT EXISTS (SELECT 1 FROM paysaga_definitions WHERE name = $1 AND version > $2)",
            )
            .bind(&new.workflow)
            .bind(i64::from(new.version))
            .fetch_one(&mut *tx)
            .await?;
            if newer {
                tx.rollback().await?;
                return Err(Error::DefinitionOutdated {
                    workflow: new.workflow.clone(),
                    version: new.version,
                });
            }
        }
        if !new.documents.is_empty() {
            // Under the write lock: a saga of the key committed since the look-up above is
            // this start's (the documents are its own); else the documents are taken in the
            // insert's transaction, all or none.
            if let Some(existing) = saga_of_key_in(&mut tx, &new).await? {
                tx.rollback().await?;
                return crate::existing_for_key(existing, new);
            }
            claim_documents_in(&mut tx, new.id, &new.documents).await?;
        }
        // A saga with a concurrency key is inserted queued (no run_at), then given a free slot
        // of its key if there is one (the oldest queued saga of the key first).
        let key = new.concurrency.as_ref().map(|c| c.key.clone());
        let inserted = sqlx::query(&format!(
            "INSERT INTO paysaga_sagas (id, definition_id, workflow, version, idempotency_key,
                                        input, status, run_at, created_at, updated_at,
                                        concurrency_key, concurrency_limit, trace_context)
             VALUES ($1, $2, $3, $4, $5, $6, 'scheduled', CASE WHEN $8 IS NULL THEN $7 END,
                     $7, $7, $8, $9, $10)
             ON CONFLICT (workflow, idempotency_key) DO NOTHING
             RETURNING {SAGA_COLUMNS}"
        ))
        .bind(new.id.to_string())
        .bind(new.definition_id)
        .bind(&new.workflow)
        .bind(i64::from(new.version))
        .bind(&new.idempotency_key)
        .bind(to_json(&new.input)?)
        .bind(&now)
        .bind(&key)
        .bind(new.concurrency.as_ref().map(|c| i64::from(c.limit)))
        .bind(&new.trace_context)
        .fetch_optional(&mut *tx)
        .await?;
        if let Some(row) = inserted {
            let mut saga = saga_from_row(&row)?;
            if let Some(key) = &key {
                admit_in(&mut tx, key).await?;
                if let Some(admitted) = self.saga_in(&mut tx, saga.id).await? {
                    saga = admitted;
                }
            }
            let entry = crate::saga_started_entry(&new);
            insert_history(&mut tx, saga.id, None, Some(&new.actor), &[entry]).await?;
            tx.commit().await?;
            self.notify();
            return Ok((saga, true));
        }
        // The key exists: read it in the same transaction (writes are serialised, so it is
        // committed and cannot change under us).
        let existing = saga_of_key_in(&mut tx, &new).await?;
        tx.rollback().await?;
        crate::existing_for_key(existing.ok_or(sqlx::Error::RowNotFound)?, new)
    }

    async fn saga(&self, id: Uuid) -> Result<Option<SagaRecord>, Error> {
        let row = sqlx::query(&format!(
            "SELECT {SAGA_COLUMNS} FROM paysaga_sagas WHERE id = $1"
        ))
        .bind(id.to_string())
        .fetch_optional(&self.reader)
        .await?;
        row.as_ref().map(saga_from_row).transpose()
    }

    async fn list_sagas(&self, filter: &SagaFilter) -> Result<Vec<SagaRecord>, Error> {
        let statuses: Vec<&str> = filter.statuses.iter().map(|st| st.as_str()).collect();
        let columns: Vec<String> = SAGA_COLUMNS.split(", ").map(|c| format!("s.{c}")).collect();
        let order = match (filter.sort_by_updated, filter.ascending) {
            (false, false) => "s.created_at DESC, s.rowid DESC",
            (false, true) => "s.created_at ASC, s.rowid ASC",
            (true, false) => "s.updated_at DESC, s.rowid DESC",
            (true, true) => "s.updated_at ASC, s.rowid ASC",
        };
        let status_filter =
            crate::status_filter_sql(|x| format!("{x} IN (SELECT value FROM json_each($1))"));
        let rows = sqlx::query(&format!(
            "SELECT {} FROM paysaga_sagas s JOIN paysaga_definitions d ON d.id = s.definition_id
             WHERE (json_array_length($1) = 0 OR {status_filter})
               AND ($2 IS NULL OR s.workflow = $2)
               AND ($3 IS NULL OR json_extract(d.body, '$.steps[' || s.step_index || '].name') = $3)
               AND ($4 IS NULL OR EXISTS (SELECT 1 FROM json_each(d.step_kinds) k
                                          WHERE substr(k.value, 1, length($4) + 1) = $4 || '.'))
               AND ($5 IS NULL OR s.idempotency_key = $5)
               AND ($6 IS NULL OR s.created_at >= $6)
               AND ($7 IS NULL OR s.created_at < $7)
               AND ($8 IS NULL OR s.updated_at >= $8)
               AND ($9 IS NULL OR s.updated_at < $9)
               AND ($10 IS NULL OR s.status = 'needs_operator'
                    OR (s.status IN {ACTIVE} AND (
                        s.updated_at < $10
                        OR (s.wait_deadline IS NOT NULL AND s.wait_deadline < $14)
                        OR s.attempt >= $11
                        OR (s.owner IS NOT NULL AND NOT EXISTS (
                            SELECT 1 FROM paysaga_workers w
                            WHERE w.id = s.owner AND w.stopped_at IS NULL AND w.lease_expires_at > $14))
                        OR (s.owner IS NULL AND NOT EXISTS (
                            SELECT 1 FROM paysaga_workers w
                            WHERE w.stopped_at IS NULL AND w.lease_expires_at > $14
                              AND NOT EXISTS (SELECT 1 FROM json_each(d.step_kinds) k
                                              WHERE k.value NOT IN (SELECT value FROM json_each(w.step_kinds))))))))
               AND ($15 = 0 OR EXISTS (SELECT 1 FROM paysaga_history h
                                      WHERE h.saga_id = s.id AND h.kind = 'saga_alert'))
               AND ($16 IS NULL OR s.id IN (SELECT r.saga_id FROM paysaga_saga_refs r
                                           WHERE r.value = $16))
             ORDER BY {order}
             LIMIT $12 OFFSET $13",
            columns.join(", ")
        ))
        .bind(to_json(&statuses)?)
        .bind(&filter.workflow)
        .bind(&filter.step)
        .bind(&filter.provider)
        .bind(&filter.key)
        .bind(filter.created_after.map(ts))
        .bind(filter.created_before.map(ts))
        .bind(filter.updated_after.map(ts))
        .bind(filter.updated_before.map(ts))
        .bind(filter.stuck_since.map(ts))
        .bind(i64::from(filter.stuck_attempts.unwrap_or(5)))
        .bind(filter.limit.unwrap_or(100))
        .bind(filter.offset.unwrap_or(0))
        .bind(ts(Utc::now()))
        .bind(i64::from(filter.alerts))
        .bind(&filter.reference)
        .fetch_all(&self.reader)
        .await?;
        rows.iter().map(saga_from_row).collect()
    }

    async fn history(&self, id: Uuid) -> Result<Vec<HistoryRecord>, Error> {
        let rows = sqlx::query(
            "SELECT id, at, worker, actor, step, attempt, kind, error, detail
             FROM paysaga_history WHERE saga_id = $1 ORDER BY id",
        )
        .bind(id.to_string())
        .fetch_all(&self.reader)
        .await?;
        rows.iter()
            .map(|row| {
                let kind: String = row.try_get("kind")?;
                Ok(HistoryRecord {
                    id: row.try_get("id")?,
                    at: get_ts(row, "at")?,
                    worker: get_opt_uuid(row, "worker")?,
                    actor: row.try_get("actor")?,
                    step: row.try_get("step")?,
                    attempt: row.try_get::<Option<i64>, _>("attempt")?.map(|a| a as u32),
                    kind: kind.parse().map_err(Error::Corrupt)?,
                    error: row.try_get("error")?,
                    detail: get_opt_json(row, "detail")?,
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
        let now = Utc::now();
        let expires = now + chrono::Duration::from_std(ttl).unwrap_or(chrono::Duration::MAX);
        let mut tx = self.write_tx().await?;
        // One node, one worker: a second live worker would share the file's single writer
        // and, worse, make "this worker is the only one" assumptions of operators wrong.
        let live = sqlx::query(
            "SELECT id, name, hostname, pid, lease_expires_at FROM paysaga_workers
             WHERE stopped_at IS NULL AND lease_expires_at > $1 AND id <> $2
             ORDER BY lease_expires_at DESC LIMIT 1",
        )
        .bind(ts(now))
        .bind(w.id.to_string())
        .fetch_optional(&mut *tx)
        .await?;
        if let Some(row) = live {
            let err = Error::WorkerAlreadyRunning {
                worker: get_uuid(&row, "id")?,
                name: row.try_get("name")?,
                hostname: row.try_get("hostname")?,
                pid: get_u32(&row, "pid")?,
                lease_expires_at: get_ts(&row, "lease_expires_at")?,
            };
            tx.rollback().await?;
            return Err(err);
        }
        sqlx::query(
            "INSERT INTO paysaga_workers (id, name, hostname, pid, step_kinds, started_at,
                                          heartbeat_at, lease_expires_at)
             VALUES ($1, $2, $3, $4, $5, $6, $6, $7)",
        )
        .bind(w.id.to_string())
        .bind(&w.name)
        .bind(&w.hostname)
        .bind(i64::from(w.pid))
        .bind(to_json(&w.step_kinds)?)
        .bind(ts(now))
        .bind(ts(expires))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn heartbeat(&self, worker: Uuid, ttl: Duration) -> Result<bool, Error> {
        let now = Utc::now();
        let expires = now + chrono::Duration::from_std(ttl).unwrap_or(chrono::Duration::MAX);
        let updated = sqlx::query(
            "UPDATE paysaga_workers SET heartbeat_at = $2, lease_expires_at = $3
             WHERE id = $1 AND stopped_at IS NULL AND lease_expires_at > $2",
        )
        .bind(worker.to_string())
        .bind(ts(now))
        .bind(ts(expires))
        .execute(&self.writer)
        .await?;
        Ok(updated.rows_affected() == 1)
    }

    async fn stop_worker_because(&self, worker: Uuid, reason: &str) -> Result<u64, Error> {
        let now = ts(Utc::now());
        let mut tx = self.write_tx().await?;
        sqlx::query(
            "UPDATE paysaga_workers SET stopped_at = $2, lease_expires_at = $2 WHERE id = $1",
        )
        .bind(worker.to_string())
        .bind(&now)
        .execute(&mut *tx)
        .await?;
        let released = release_sagas(&mut tx, worker, None, reason, &now)
            .await?
            .len() as u64;
        tx.commit().await?;
        if released > 0 {
            self.notify();
        }
        Ok(released)
    }

    async fn reap_expired_workers(&self) -> Result<u64, Error> {
        let now = ts(Utc::now());
        // Called by every worker at each lease expiry it learns of: look first without taking the
        // write lock.
        let any: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM paysaga_workers
                            WHERE stopped_at IS NULL AND lease_expires_at < $1)",
        )
        .bind(&now)
        .fetch_one(&self.reader)
        .await?;
        if !any {
            return Ok(0);
        }
        let mut tx = self.write_tx().await?;
        let dead: Vec<String> = sqlx::query_scalar(
            "UPDATE paysaga_workers SET stopped_at = $1
             WHERE stopped_at IS NULL AND lease_expires_at < $1
             RETURNING id",
        )
        .bind(&now)
        .fetch_all(&mut *tx)
        .await?;
        if dead.is_empty() {
            tx.rollback().await?;
            return Ok(0);
        }
        let released: Vec<String> = sqlx::query_scalar(
            "UPDATE paysaga_sagas
             SET owner = NULL, updated_at = $2,
                 run_at = CASE WHEN run_at IS NULL OR run_at > $2 THEN $2 ELSE run_at END
             WHERE owner IN (SELECT value FROM json_each($1)) RETURNING id",
        )
        .bind(to_json(&dead)?)
        .bind(&now)
        .fetch_all(&mut *tx)
        .await?;
        let dead_ids = dead
            .iter()
            .map(|d| parse_uuid(d))
            .collect::<Result<Vec<_>, _>>()?;
        for saga in &released {
            let entry = HistoryEntry {
                kind: HistoryKind::LeaseTakenOver,
                step: None,
                attempt: None,
                error: None,
                detail: json!({"expired_workers": dead_ids}),
            };
            insert_history(&mut tx, parse_uuid(saga)?, None, None, &[entry]).await?;
        }
        tx.commit().await?;
        self.notify();
        if !released.is_empty() {
            tracing::warn!(workers = ?dead_ids, sagas = released.len(), "released sagas of workers whose lease expired");
        }
        Ok(released.len() as u64)
    }

    async fn sagas_needing_other_kinds(
        &self,
        kinds: &[String],
    ) -> Result<Vec<UnrunnableGroup>, Error> {
        let rows = sqlx::query(&format!(
            "SELECT d.name, d.version, d.step_kinds, count(*) AS sagas
             FROM paysaga_sagas s JOIN paysaga_definitions d ON d.id = s.definition_id
             WHERE s.status IN {ACTIVE}
               AND EXISTS (SELECT 1 FROM json_each(d.step_kinds) k
                           WHERE k.value NOT IN (SELECT value FROM json_each($1)))
             GROUP BY d.id, d.name, d.version, d.step_kinds
             ORDER BY d.name, d.version"
        ))
        .bind(to_json(kinds)?)
        .fetch_all(&self.reader)
        .await?;
        rows.iter()
            .map(|r| {
                let mut missing: Vec<String> =
                    string_list(&r.try_get::<String, _>("step_kinds")?, "step_kinds")?
                        .into_iter()
                        .filter(|k| !kinds.contains(k))
                        .collect();
                missing.sort();
                missing.dedup();
                Ok(UnrunnableGroup {
                    workflow: r.try_get("name")?,
                    version: get_u32(r, "version")?,
                    sagas: r.try_get("sagas")?,
                    missing_kinds: missing,
                })
            })
            .collect()
    }

    async fn claim(
        &self,
        worker: Uuid,
        kinds: &[String],
        limit: i64,
    ) -> Result<Vec<ClaimedSaga>, Error> {
        let rows = sqlx::query(CLAIM_SQL)
            .bind(worker.to_string())
            .bind(limit)
            .bind(to_json(kinds)?)
            .bind(ts(Utc::now()))
            .fetch_all(&self.writer)
            .await?;
        let mut claimed = rows
            .iter()
            .map(|r| {
                Ok(ClaimedSaga {
                    saga: saga_from_row(r)?,
                })
            })
            .collect::<Result<Vec<_>, Error>>()?;
        claimed.sort_by_key(|c| c.saga.run_at);
        Ok(claimed)
    }

    async fn next_due(&self, kinds: &[String]) -> Result<Option<DateTime<Utc>>, Error> {
        let due: Option<String> = sqlx::query_scalar(NEXT_DUE_SQL)
            .bind(to_json(kinds)?)
            .fetch_optional(&self.reader)
            .await?;
        due.as_deref().map(parse_ts).transpose()
    }

    #[instrument(skip_all, fields(saga_id = %m.saga, step = m.step))]
    async fn mark_effect(&self, m: EffectMarkRequest<'_>) -> Result<EffectMark, Error> {
        let now_t = Utc::now();
        let now = ts(now_t);
        let saga_id = m.saga.to_string();
        let window = chrono::Duration::from_std(m.window).unwrap_or(chrono::TimeDelta::MAX);
        let mut tx = self.write_tx().await?;
        let row = sqlx::query(
            "SELECT effect_step, effect_marked_at, effect_until FROM paysaga_sagas
             WHERE id = $1 AND owner = $2 AND fence = $3
               AND EXISTS (SELECT 1 FROM paysaga_workers w
                           WHERE w.id = $2 AND w.stopped_at IS NULL AND w.lease_expires_at > $4)",
        )
        .bind(&saga_id)
        .bind(m.worker.to_string())
        .bind(m.fence)
        .bind(&now)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else {
            tx.rollback().await?;
            return Err(Error::LeaseLost { saga: m.saga });
        };
        let earlier = get_opt_ts(&row, "effect_marked_at")?;
        if let (Some(s), Some(marked_at)) = (row.try_get::<Option<i32>, _>("effect_step")?, earlier)
        {
            // Held back until the later of the end the marking worker stored and the mark's
            // time plus this worker's own window.
            let own = marked_at
                .checked_add_signed(window)
                .unwrap_or(DateTime::<Utc>::MAX_UTC);
            let closes = get_opt_ts(&row, "effect_until")?.map_or(own, |until| until.max(own));
            if s == m.step && closes > now_t {
                tx.rollback().await?;
                return Ok(EffectMark::Wait {
                    marked_at,
                    remaining: (closes - now_t).to_std().unwrap_or_default(),
                });
            }
        }
        let until = now_t
            .checked_add_signed(window)
            .unwrap_or(DateTime::<Utc>::MAX_UTC);
        sqlx::query(
            "UPDATE paysaga_sagas SET effect_step = $2, effect_marked_at = $3, effect_until = $4
             WHERE id = $1",
        )
        .bind(&saga_id)
        .bind(m.step)
        .bind(&now)
        .bind(ts(until))
        .execute(&mut *tx)
        .await?;
        let entry = crate::effect_marked_entry(&m, now_t, until);
        insert_history(&mut tx, m.saga, Some(m.worker), None, &[entry]).await?;
        tx.commit().await?;
        Ok(EffectMark::Marked)
    }

    #[instrument(skip_all, fields(saga_id = %m.saga, step = m.step))]
    async fn clear_effect_mark(&self, m: EffectMarkRequest<'_>) -> Result<bool, Error> {
        let mut tx = self.write_tx().await?;
        let cleared = sqlx::query(
            "UPDATE paysaga_sagas SET effect_step = NULL, effect_marked_at = NULL, effect_until = NULL
             WHERE id = $1 AND owner = $2 AND fence = $3 AND effect_step = $4",
        )
        .bind(m.saga.to_string())
        .bind(m.worker.to_string())
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
        let now = ts(Utc::now());
        let mut tx = self.write_tx().await?;
        let released = !release_sagas(&mut tx, worker, Some((saga, fence)), reason, &now)
            .await?
            .is_empty();
        tx.commit().await?;
        if released {
            self.notify();
        }
        Ok(released)
    }

    #[instrument(skip_all, fields(saga_id = %c.saga, status = %c.transition.status))]
    async fn commit(&self, c: Commit<'_>) -> Result<Committed, Error> {
        let t = c.transition;
        let now_t = Utc::now();
        let now = ts(now_t);
        let saga_id = c.saga.to_string();
        let mut tx = self.write_tx().await?;
        // Fenced lease: owner, fencing token and the worker's live lease, checked in the
        // transaction that writes the result (which holds the database's write lock).
        let row = sqlx::query(
            "SELECT wake_event, cancel_requested, outputs, concurrency_key FROM paysaga_sagas
             WHERE id = $1 AND owner = $2 AND fence = $3 AND last_commit IS NOT $5
               AND EXISTS (SELECT 1 FROM paysaga_workers w
                           WHERE w.id = $2 AND w.stopped_at IS NULL AND w.lease_expires_at > $4)",
        )
        .bind(&saga_id)
        .bind(c.worker.to_string())
        .bind(c.fence)
        .bind(&now)
        .bind(c.token.to_string())
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else {
            // Lease lost, or an earlier try of this commit was applied but not acknowledged
            // (the saga carries its token): then write nothing twice and give the saga back.
            let applied: Option<bool> =
                sqlx::query_scalar("SELECT last_commit IS $2 FROM paysaga_sagas WHERE id = $1")
                    .bind(&saga_id)
                    .bind(c.token.to_string())
                    .fetch_optional(&mut *tx)
                    .await?;
            if applied != Some(true) {
                tx.rollback().await?;
                // Recorded after the refusal, in a small transaction of its own (the refused
                // one wrote nothing). Best effort: the refusal stands either way.
                if let Err(e) = self.record_refused_commit(&c).await {
                    tracing::warn!(saga_id = %c.saga, error = %e, "could not record the refused commit in history");
                }
                return Err(Error::LeaseLost { saga: c.saga });
            }
            sqlx::query(
                "UPDATE paysaga_sagas SET owner = NULL, updated_at = $4,
                        run_at = CASE WHEN run_at IS NULL OR run_at > $4 THEN $4 ELSE run_at END
                 WHERE id = $1 AND owner = $2 AND fence = $3",
            )
            .bind(&saga_id)
            .bind(c.worker.to_string())
            .bind(c.fence)
            .bind(&now)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            self.notify();
            return Ok(Committed {
                kept: false,
                wake_event: None,
                cancel_requested: false,
            });
        };
        let cancel_requested: bool = row.try_get("cancel_requested")?;
        let outputs: String = row.try_get("outputs")?;
        let mut pending: Option<Event> = get_opt_json(&row, "wake_event")?
            .map(serde_json::from_value::<Event>)
            .transpose()
            .map_err(|e| Error::Corrupt(format!("saga {} wake_event: {e}", c.saga)))?
            .filter(|ev| Some(ev.inbox_id) != c.consumed_event);

        let mut keep = t.continue_now;
        let mut run_at = t.run_at;
        let mut wait_json: Option<String> = None;
        // The wait row before any inbox row (the lock order of the PostgreSQL store): the
        // step's old wait ends here; a new one is inserted below, keeping the old one's place
        // in the queue for its key, unless a stored event ends it at once.
        let mut waiting_since: Option<String> = None;
        if t.wait.is_some() || c.prior_status == SagaStatus::Waiting {
            waiting_since = sqlx::query_scalar(
                "DELETE FROM paysaga_waits WHERE saga_id = $1 RETURNING created_at",
            )
            .bind(&saga_id)
            .fetch_optional(&mut *tx)
            .await?;
        }
        if let Some(wait) = &t.wait {
            if pending.is_none() {
                // Inbox first: an event that arrived before the wait was stored ends it now.
                let found = sqlx::query(
                    "SELECT id, provider, event_id, event_type, correlation_key, payload
                     FROM paysaga_events
                     WHERE provider = $1 AND correlation_key = $2
                       AND event_type IN (SELECT value FROM json_each($3))
                       AND consumed_by IS NULL AND parse_error IS NULL
                     ORDER BY id LIMIT 1",
                )
                .bind(&wait.provider)
                .bind(&wait.correlation_key)
                .bind(to_json(&wait.event_types)?)
                .fetch_optional(&mut *tx)
                .await?;
                if let Some(r) = found {
                    let event = Event {
                        inbox_id: r.try_get("id")?,
                        provider: r.try_get("provider")?,
                        event_id: r.try_get("event_id")?,
                        event_type: r
                            .try_get::<Option<String>, _>("event_type")?
                            .unwrap_or_default(),
                        correlation_key: r
                            .try_get::<Option<String>, _>("correlation_key")?
                            .unwrap_or_default(),
                        payload: get_opt_json(&r, "payload")?.unwrap_or(Value::Null),
                    };
                    sqlx::query(
                        "UPDATE paysaga_events SET consumed_by = $2, consumed_at = $3 WHERE id = $1",
                    )
                    .bind(event.inbox_id)
                    .bind(&saga_id)
                    .bind(&now)
                    .execute(&mut *tx)
                    .await?;
                    pending = Some(event);
                }
            }
            wait_json = Some(to_json(wait)?);
            if pending.is_some() {
                keep = true;
                run_at = Some(now_t);
            } else {
                sqlx::query(
                    "INSERT INTO paysaga_waits (saga_id, provider, event_types, correlation_key,
                                                deadline, created_at)
                     VALUES ($1, $2, $3, $4, $5, $6)",
                )
                .bind(&saga_id)
                .bind(&wait.provider)
                .bind(to_json(&wait.event_types)?)
                .bind(&wait.correlation_key)
                .bind(ts(wait.deadline))
                .bind(waiting_since.as_deref().unwrap_or(&now))
                .execute(&mut *tx)
                .await?;
            }
        } else {
            // The step left its wait (or never waited): no stale event or wait may remain
            // (the wait row was deleted above).
            pending = None;
        }
        let wake_json = pending.as_ref().map(to_json).transpose()?;
        let final_status = t.status.is_final();
        if final_status {
            keep = false;
            run_at = None;
        }
        sqlx::query(
            "UPDATE paysaga_sagas SET status = $2, step_index = $3, attempt = $4,
                    step_started_at = $5, run_at = CASE WHEN $13 THEN run_at ELSE $6 END,
                    wait = $7, wait_deadline = $8,
                    wait_since = $9, wake_event = $10, outputs = $11, last_error = $12,
                    owner = CASE WHEN $13 THEN owner ELSE NULL END,
                    updated_at = $14,
                    finished_at = CASE WHEN $15 THEN $14 ELSE NULL END,
                    last_commit = $16, effect_possible = $17,
                    cancel_requested = cancel_requested AND NOT $15,
                    closed_outcome = CASE WHEN $2 = 'closed'
                                          THEN json_extract(close_requested, '$.outcome') END,
                    close_requested = CASE WHEN $2 IN ('compensating', 'needs_operator')
                                           THEN close_requested END
             WHERE id = $1",
        )
        .bind(&saga_id)
        .bind(t.status.as_str())
        .bind(t.step_index as i64)
        .bind(i64::from(t.attempt))
        .bind(t.step_started_at.map(ts))
        .bind(run_at.map(ts))
        .bind(&wait_json)
        .bind(t.wait.as_ref().map(|w| ts(w.deadline)))
        .bind(t.wait.as_ref().map(|w| ts(w.since)))
        .bind(&wake_json)
        .bind(merged_outputs(&outputs, &t.output)?)
        .bind(&t.last_error)
        .bind(keep)
        .bind(&now)
        .bind(final_status)
        .bind(c.token.to_string())
        .bind(t.effect_possible)
        .execute(&mut *tx)
        .await?;
        insert_history(&mut tx, c.saga, Some(c.worker), None, &t.history).await?;
        for r in c.references {
            sqlx::query(
                "INSERT INTO paysaga_saga_refs (saga_id, step, name, value, created_at)
                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
            )
            .bind(&saga_id)
            .bind(&r.step)
            .bind(&r.name)
            .bind(&r.value)
            .bind(&now)
            .execute(&mut *tx)
            .await?;
        }
        // An ended saga hands its concurrency slot on in the same transaction.
        let concurrency_key: Option<String> = row.try_get("concurrency_key")?;
        let mut handed = 0;
        if let (true, Some(key)) = (t.status.is_ended(), &concurrency_key) {
            handed = admit_in(&mut tx, key).await?;
        }
        tx.commit().await?;
        if handed > 0 || !keep && run_at.is_some_and(|at| at <= Utc::now()) {
            self.notify();
        }
        if t.status.is_final() {
            self.ended.signal(c.saga);
        }
        Ok(Committed {
            kept: keep,
            wake_event: pending,
            cancel_requested,
        })
    }

    #[instrument(skip_all, fields(provider = %e.provider, event_id = %e.event_id))]
    async fn deliver_event(&self, e: NewEvent) -> Result<Delivery, Error> {
        let now = ts(Utc::now());
        let payload = e.payload.as_ref().map(to_json).transpose()?;
        let mut tx = self.write_tx().await?;
        let inserted: Option<i64> = sqlx::query_scalar(
            "INSERT INTO paysaga_events (provider, event_id, event_type, correlation_key, payload,
                                         raw_body, parse_error, received_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
             ON CONFLICT (provider, event_id) DO NOTHING
             RETURNING id",
        )
        .bind(&e.provider)
        .bind(&e.event_id)
        .bind(&e.event_type)
        .bind(&e.correlation_key)
        .bind(&payload)
        .bind(&e.raw_body)
        .bind(&e.parse_error)
        .bind(&now)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(inbox_id) = inserted else {
            let id: i64 = sqlx::query_scalar(
                "SELECT id FROM paysaga_events WHERE provider = $1 AND event_id = $2",
            )
            .bind(&e.provider)
            .bind(&e.event_id)
            .fetch_one(&mut *tx)
            .await?;
            tx.rollback().await?;
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
            let event = Event {
                inbox_id,
                provider: e.provider.clone(),
                event_id: e.event_id.clone(),
                event_type: event_type.clone(),
                correlation_key: key.clone(),
                payload: e.payload.clone().unwrap_or(Value::Null),
            };
            matched_saga = end_matching_wait(&mut tx, &event, &now).await?;
        }
        tx.commit().await?;
        if matched_saga.is_some() {
            self.notify();
        }
        Ok(Delivery {
            inbox_id,
            duplicate: false,
            matched_saga,
        })
    }

    async fn list_events(&self, filter: &EventFilter) -> Result<Vec<EventRecord>, Error> {
        let rows = sqlx::query(
            "SELECT id, provider, event_id, event_type, correlation_key, payload, parse_error,
                    NULL AS raw_body, received_at, consumed_by, consumed_at
             FROM paysaga_events
             WHERE (NOT $1 OR consumed_by IS NULL) AND ($2 IS NULL OR provider = $2)
               AND (NOT $4 OR parse_error IS NOT NULL)
             ORDER BY id DESC LIMIT $3",
        )
        .bind(filter.unmatched)
        .bind(&filter.provider)
        .bind(filter.limit.unwrap_or(100))
        .bind(filter.unparseable)
        .fetch_all(&self.reader)
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
        .fetch_optional(&self.reader)
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
        let now = ts(Utc::now());
        let mut tx = self.write_tx().await?;
        let event = Event {
            inbox_id: id,
            provider: stored.provider.clone(),
            event_id: stored.event_id.clone(),
            event_type,
            correlation_key: key,
            payload,
        };
        // The saga and its wait before the inbox row (the lock order of the PostgreSQL store).
        let matched = end_matching_wait(&mut tx, &event, &now).await?;
        sqlx::query(
            "UPDATE paysaga_events SET event_type = $2, correlation_key = $3, payload = $4,
                    parse_error = NULL
             WHERE id = $1",
        )
        .bind(id)
        .bind(&event.event_type)
        .bind(&event.correlation_key)
        .bind(to_json(&event.payload)?)
        .execute(&mut *tx)
        .await?;
        let Some(saga) = matched else {
            tx.commit().await?;
            return Err(Error::Refused(format!(
                "no saga waits for {} {} with key {} now; the event stays in the inbox{}",
                stored.provider,
                event.event_type,
                event.correlation_key,
                if stored.consumed_by.is_none() {
                    " and is consumed when such a wait begins"
                } else {
                    ""
                }
            )));
        };
        let entry = HistoryEntry {
            kind: HistoryKind::EventReplayed,
            step: None,
            attempt: None,
            error: None,
            detail: json!({"reason": reason, "inbox_id": id, "event_id": event.event_id}),
        };
        insert_history(&mut tx, saga, None, Some(actor), &[entry]).await?;
        tx.commit().await?;
        self.notify();
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
        let mut tx = self.write_tx().await?;
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
        .fetch_all(&self.reader)
        .await?;
        let by_step: Vec<(String, String, i64)> = sqlx::query_as(&format!(
            "SELECT s.workflow,
                    coalesce(json_extract(d.body, '$.steps[' || s.step_index || '].name'), '-'),
                    count(*)
             FROM paysaga_sagas s JOIN paysaga_definitions d ON d.id = s.definition_id
             WHERE s.status IN {ACTIVE} GROUP BY 1, 2 ORDER BY 3 DESC, 1, 2"
        ))
        .fetch_all(&self.reader)
        .await?;
        let oldest: Option<(String, String, String)> = sqlx::query_as(
            "SELECT id, workflow, wait_since FROM paysaga_sagas
             WHERE status = 'waiting' AND wait_since IS NOT NULL ORDER BY wait_since LIMIT 1",
        )
        .fetch_optional(&self.reader)
        .await?;
        let oldest_waiting = oldest
            .map(|(id, workflow, since)| {
                Ok::<_, Error>((parse_uuid(&id)?, workflow, parse_ts(&since)?))
            })
            .transpose()?;
        let retries: Vec<(i64, i64)> = sqlx::query_as(&format!(
            "SELECT attempt, count(*) FROM paysaga_sagas WHERE status IN {ACTIVE} AND attempt > 1
             GROUP BY 1 ORDER BY 1"
        ))
        .fetch_all(&self.reader)
        .await?;
        let unmatched_events: Vec<(String, i64)> = sqlx::query_as(
            "SELECT provider, count(*) FROM paysaga_events WHERE consumed_by IS NULL
             GROUP BY 1 ORDER BY 1",
        )
        .fetch_all(&self.reader)
        .await?;
        Ok(Stats {
            by_status,
            by_step,
            oldest_waiting,
            retries: retries
                .into_iter()
                .map(|(attempt, n)| (attempt as i32, n))
                .collect(),
            unmatched_events,
        })
    }

    async fn owned_sagas(&self, worker: Uuid) -> Result<Vec<(Uuid, i64)>, Error> {
        let rows: Vec<(String, i64)> = sqlx::query_as(
            "SELECT id, fence FROM paysaga_sagas INDEXED BY paysaga_sagas_owner WHERE owner = $1",
        )
        .bind(worker.to_string())
        .fetch_all(&self.reader)
        .await?;
        rows.into_iter()
            .map(|(id, fence)| Ok((parse_uuid(&id)?, fence)))
            .collect()
    }

    async fn db_now(&self) -> Result<DateTime<Utc>, Error> {
        // The embedded store stamps every time with this process's clock.
        Ok(Utc::now())
    }

    async fn wakeups(&self) -> Result<WakeupsBox, Error> {
        let receiver = self.wake.subscribe();
        let poller = match &self.poll_options {
            Some(options) => {
                let mut conn = SqliteConnection::connect_with(options).await?;
                let version: i64 = sqlx::query_scalar("PRAGMA data_version")
                    .fetch_one(&mut conn)
                    .await?;
                Some((conn, version))
            }
            None => None,
        };
        Ok(Box::new(SqliteWakeups { receiver, poller }))
    }

    async fn watch_end(&self, id: Uuid) -> Result<Option<crate::EndWatch>, Error> {
        // Subscribe before reading: an end committed after the read is signalled to it.
        // No `awaited` column here: every end this process commits is signalled (a map
        // look-up when nobody waits); another process's are found by the caller's polling.
        let signal = self.end_signal(id).await?;
        Ok(self
            .saga(id)
            .await?
            .map(|saga| crate::EndWatch { saga, signal }))
    }

    async fn end_signal(&self, id: Uuid) -> Result<crate::EndSignal, Error> {
        Ok(crate::EndSignal(self.ended.subscribe(id)))
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
        .fetch_optional(&self.reader)
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
        let now = ts(Utc::now());
        let mut tx = self.write_tx().await?;
        // Saga and wait row, then the inbox row (the lock order of the PostgreSQL store).
        let ended: Option<String> = sqlx::query_scalar(
            "DELETE FROM paysaga_waits
             WHERE saga_id = $1 AND provider = $2 AND correlation_key = $3
               AND $4 IN (SELECT value FROM json_each(event_types))
             RETURNING saga_id",
        )
        .bind(saga.to_string())
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
            "INSERT INTO paysaga_events (provider, event_id, event_type, correlation_key, payload,
                                         received_at)
             VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
        )
        .bind(&e.provider)
        .bind(&e.event_id)
        .bind(event_type)
        .bind(key)
        .bind(to_json(payload)?)
        .bind(&now)
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
        hand_event_to_saga(&mut tx, saga, &event, &now).await?;
        insert_history(&mut tx, saga, None, Some(actor), &[entry]).await?;
        tx.commit().await?;
        self.notify();
        Ok(Delivery {
            inbox_id,
            duplicate: false,
            matched_saga: Some(saga),
        })
    }

    #[instrument(skip_all, fields(document = %doc.id, size = doc.content.len()))]
    async fn put_document(&self, doc: &NewDocument) -> Result<DocumentRecord, Error> {
        let row = sqlx::query(&format!(
            "INSERT INTO paysaga_documents (id, content_type, size, sha256, content, created_at)
             VALUES ($1, $2, $3, $4, $5, $6) RETURNING {DOCUMENT_COLUMNS}"
        ))
        .bind(doc.id.0.to_string())
        .bind(&doc.content_type)
        .bind(doc.content.len() as i64)
        .bind(&doc.sha256)
        .bind(&doc.content)
        .bind(ts(Utc::now()))
        .fetch_one(&self.writer)
        .await?;
        document_from_row(&row)
    }

    async fn document(&self, id: DocumentId) -> Result<Option<DocumentRecord>, Error> {
        let row = sqlx::query(&format!(
            "SELECT {DOCUMENT_COLUMNS} FROM paysaga_documents WHERE id = $1"
        ))
        .bind(id.0.to_string())
        .fetch_optional(&self.reader)
        .await?;
        row.as_ref().map(document_from_row).transpose()
    }

    async fn document_content(&self, id: DocumentId) -> Result<Option<Vec<u8>>, Error> {
        let content: Option<Option<Vec<u8>>> =
            sqlx::query_scalar("SELECT content FROM paysaga_documents WHERE id = $1")
                .bind(id.0.to_string())
                .fetch_optional(&self.reader)
                .await?;
        Ok(content.flatten())
    }

    #[instrument(skip_all, fields(saga_id = %saga, documents = ids.len()))]
    async fn claim_documents(&self, saga: Uuid, ids: &[DocumentId]) -> Result<(), Error> {
        let mut tx = self.write_tx().await?;
        claim_documents_in(&mut tx, saga, ids).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn release_documents(&self, saga: Uuid) -> Result<u64, Error> {
        let done = sqlx::query("UPDATE paysaga_documents SET saga_id = NULL WHERE saga_id = $1")
            .bind(saga.to_string())
            .execute(&self.writer)
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
        let now = Utc::now();
        let before = |d: Duration| {
            ts(now - chrono::Duration::from_std(d).unwrap_or(chrono::TimeDelta::MAX / 2))
        };
        let done = sqlx::query(EXPIRED_DOCUMENTS_SQL)
            .bind(before(retention))
            .bind(before(unclaimed_after))
            .bind(limit)
            .bind(ts(now))
            .execute(&self.writer)
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
        let now = ts(Utc::now());
        let saga_id = a.saga.to_string();
        let mut tx = self.write_tx().await?;
        let row =
            sqlx::query("SELECT status, step_index, outputs, owner, key_generations FROM paysaga_sagas WHERE id = $1")
                .bind(&saga_id)
                .fetch_optional(&mut *tx)
                .await?
                .ok_or_else(|| Error::NotFound(format!("saga {}", a.saga)))?;
        let status: String = row.try_get("status")?;
        let step_index: i64 = row.try_get("step_index")?;
        if status != a.expect_status.as_str() || step_index as usize != a.expect_step_index {
            tx.rollback().await?;
            return Err(Error::Refused(format!(
                "saga {} changed while the action was prepared (now {status} at step #{}); look at it again and retry the action",
                a.saga,
                step_index + 1
            )));
        }
        let owner = get_opt_uuid(&row, "owner")?;
        let generations = get_json(&row, "key_generations")?;
        let generations = crate::next_key_generations(a.saga, generations, &change)?;
        if let Err(e) = crate::check_operator_change(a.saga, t, owner, &change) {
            tx.rollback().await?;
            return Err(e);
        }
        let input = change.input.map(to_json).transpose()?;
        let outputs: String = row.try_get("outputs")?;
        let wait_json = t.wait.as_ref().map(to_json).transpose()?;
        let final_status = t.status.is_final();
        let row = sqlx::query(&format!(
            "UPDATE paysaga_sagas SET status = $2, step_index = $3, attempt = $4,
                    step_started_at = $5, run_at = $6, wait = $7, wait_deadline = $8,
                    wait_since = $9,
                    wake_event = CASE WHEN $7 IS NULL THEN NULL ELSE wake_event END,
                    outputs = $10, last_error = $11, owner = NULL, fence = fence + 1,
                    updated_at = $12,
                    finished_at = CASE WHEN $13 THEN $12 ELSE NULL END,
                    effect_possible = $14, closed_outcome = $15,
                    input = coalesce($16, input), key_generations = $17,
                    close_requested = CASE WHEN $2 IN ('compensating', 'needs_operator')
                                           THEN coalesce($18, close_requested) END
             WHERE id = $1 RETURNING {SAGA_COLUMNS}"
        ))
        .bind(&saga_id)
        .bind(t.status.as_str())
        .bind(t.step_index as i64)
        .bind(i64::from(t.attempt))
        .bind(t.step_started_at.map(ts))
        .bind(if final_status { None } else { t.run_at.map(ts) })
        .bind(&wait_json)
        .bind(t.wait.as_ref().map(|w| ts(w.deadline)))
        .bind(t.wait.as_ref().map(|w| ts(w.since)))
        .bind(merged_outputs(&outputs, &t.output)?)
        .bind(&t.last_error)
        .bind(&now)
        .bind(final_status)
        .bind(t.effect_possible)
        .bind(change.closed_outcome.map(|o| o.as_str()))
        .bind(&input)
        .bind(to_json(&generations)?)
        .bind(change.close_request.map(to_json).transpose()?)
        .fetch_one(&mut *tx)
        .await?;
        if t.wait.is_none() {
            sqlx::query("DELETE FROM paysaga_waits WHERE saga_id = $1")
                .bind(&saga_id)
                .execute(&mut *tx)
                .await?;
        }
        insert_history(&mut tx, a.saga, None, Some(a.actor), &t.history).await?;
        let saga = saga_from_row(&row)?;
        if let (true, Some(c)) = (t.status.is_ended(), &saga.concurrency) {
            admit_in(&mut tx, &c.key).await?;
        }
        if crate::operator_cascades(t, &change) {
            let why = format!("is {} after an action of {}", t.status, a.actor);
            let detail = crate::cascade_detail(saga.id, &why);
            cancel_children_in(&mut tx, saga.id, &crate::parent_actor(saga.id), &detail).await?;
        }
        tx.commit().await?;
        self.notify();
        self.ended.signal(saga.id);
        Ok(saga)
    }

    #[instrument(skip(self, detail), fields(saga_id = %id))]
    async fn request_cancel_with(
        &self,
        id: Uuid,
        actor: &str,
        detail: Value,
    ) -> Result<SagaRecord, Error> {
        let now = ts(Utc::now());
        let mut tx = self.write_tx().await?;
        let saga = self
            .saga_in(&mut tx, id)
            .await?
            .ok_or_else(|| Error::NotFound(format!("saga {id}")))?;
        if saga.status.is_final() {
            return Err(Error::Refused(format!(
                "saga {id} is {} and cannot be cancelled{}",
                saga.status,
                crate::cancel_refusal_hint(saga.status)
            )));
        }
        crate::refuse_cancel_while_closing(&saga)?;
        // Make it runnable now (a retry backoff or a wait must not delay a cancel); the
        // holder, if any, applies it after its current step.
        let row = sqlx::query(&format!(
            "UPDATE paysaga_sagas SET cancel_requested = 1, run_at = $2, updated_at = $2
             WHERE id = $1 RETURNING {SAGA_COLUMNS}"
        ))
        .bind(id.to_string())
        .bind(&now)
        .fetch_one(&mut *tx)
        .await?;
        let entry = HistoryEntry {
            kind: HistoryKind::CancelRequested,
            step: None,
            attempt: None,
            error: None,
            detail,
        };
        insert_history(&mut tx, id, None, Some(actor), &[entry]).await?;
        // The children in the same transaction, whether or not a worker serves the parent.
        let detail = crate::cascade_detail(id, &format!("was asked to cancel by {actor}"));
        cancel_children_in(&mut tx, id, &crate::parent_actor(id), &detail).await?;
        tx.commit().await?;
        self.notify();
        saga_from_row(&row)
    }

    async fn operator_history(&self, filter: &AuditFilter) -> Result<Vec<AuditRecord>, Error> {
        let rows = sqlx::query(OPERATOR_HISTORY_SQL)
            .bind(filter.since.map(ts))
            .bind(&filter.actor)
            .bind(filter.limit.unwrap_or(100))
            .fetch_all(&self.reader)
            .await?;
        rows.iter()
            .map(|row| {
                let kind: String = row.try_get("kind")?;
                Ok(AuditRecord {
                    saga_id: get_uuid(row, "saga_id")?,
                    workflow: row.try_get("workflow")?,
                    entry: HistoryRecord {
                        id: row.try_get("id")?,
                        at: get_ts(row, "at")?,
                        worker: get_opt_uuid(row, "worker")?,
                        actor: row.try_get("actor")?,
                        step: row.try_get("step")?,
                        attempt: row.try_get::<Option<i64>, _>("attempt")?.map(|a| a as u32),
                        kind: kind.parse().map_err(Error::Corrupt)?,
                        error: row.try_get("error")?,
                        detail: get_opt_json(row, "detail")?,
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
        .bind(saga.to_string())
        .fetch_all(&self.reader)
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
        let rows: Vec<String> = sqlx::query_scalar(
            "SELECT step_kinds FROM paysaga_workers
             WHERE stopped_at IS NULL AND lease_expires_at > $1 ORDER BY started_at",
        )
        .bind(ts(Utc::now()))
        .fetch_all(&self.reader)
        .await?;
        rows.iter()
            .map(|text| string_list(text, "step_kinds"))
            .collect()
    }

    async fn sagas_no_live_worker_can_run(&self) -> Result<Vec<UnrunnableGroup>, Error> {
        let live = self.live_worker_kinds().await?;
        let rows = sqlx::query(&format!(
            "SELECT d.name, d.version, d.step_kinds, count(*) AS sagas
             FROM paysaga_sagas s JOIN paysaga_definitions d ON d.id = s.definition_id
             WHERE s.status IN {ACTIVE} AND s.owner IS NULL
             GROUP BY d.id, d.name, d.version, d.step_kinds
             ORDER BY d.name, d.version"
        ))
        .fetch_all(&self.reader)
        .await?;
        let mut groups = Vec::new();
        for r in &rows {
            let kinds = string_list(&r.try_get::<String, _>("step_kinds")?, "step_kinds")?;
            if live.iter().any(|w| kinds.iter().all(|k| w.contains(k))) {
                continue;
            }
            let mut missing: Vec<String> = kinds
                .into_iter()
                .filter(|k| !live.iter().any(|w| w.contains(k)))
                .collect();
            missing.sort();
            missing.dedup();
            groups.push(UnrunnableGroup {
                workflow: r.try_get("name")?,
                version: get_u32(r, "version")?,
                sagas: r.try_get("sagas")?,
                missing_kinds: missing,
            });
        }
        Ok(groups)
    }
    async fn refresh_gauges(&self, req: GaugeRequest) -> Result<Option<GaugeSnapshot>, Error> {
        let now = Utc::now();
        let later = |d: std::time::Duration| {
            ts(now + chrono::Duration::from_std(d).unwrap_or(chrono::TimeDelta::MAX / 2))
        };
        let earlier = |d: std::time::Duration| {
            now - chrono::Duration::from_std(d).unwrap_or(chrono::TimeDelta::MAX / 2)
        };
        let held: Option<(Option<String>, String)> = sqlx::query_as(
            "UPDATE paysaga_gauges SET holder = $1, held_until = $2
             WHERE id = 1 AND (holder IS NULL OR holder = $1 OR held_until < $3)
             RETURNING started_until, started",
        )
        .bind(req.instance.to_string())
        .bind(later(req.lease))
        .bind(ts(now))
        .fetch_optional(&self.writer)
        .await?;
        let Some((from, started)) = held else {
            return Ok(None);
        };
        let mut started: std::collections::BTreeMap<String, i64> =
            serde_json::from_str(&started)
                .map_err(|e| Error::Corrupt(format!("paysaga_gauges.started: {e}")))?;
        let from = from
            .as_deref()
            .map(parse_ts)
            .transpose()?
            .unwrap_or(DateTime::<Utc>::UNIX_EPOCH);
        let until = earlier(req.started_lag).max(from);
        let new: Vec<(String, i64)> = sqlx::query_as(STARTED_SQL)
            .bind(ts(from))
            .bind(ts(until))
            .fetch_all(&self.reader)
            .await?;
        for (workflow, n) in new {
            *started.entry(workflow).or_default() += n;
        }
        let rows = sqlx::query(&gauges_sql())
            .bind(ts(earlier(req.stuck_after)))
            .bind(i64::from(req.stuck_attempts))
            .bind(ts(now))
            .fetch_all(&self.reader)
            .await?
            .iter()
            .map(|r| {
                Ok(crate::GaugeRow {
                    workflow: r.try_get("workflow")?,
                    status: r.try_get("observed")?,
                    sagas: r.try_get("sagas")?,
                    oldest_wait: get_opt_ts(r, "oldest_wait")?,
                    past_deadline: r.try_get("past_deadline")?,
                    stuck: r.try_get("stuck")?,
                })
            })
            .collect::<Result<Vec<_>, Error>>()?;
        // Sagas no live worker can run: counted here, by the one gauge holder, not by every
        // worker on its own.
        let unrunnable = self.sagas_no_live_worker_can_run().await?;
        let snapshot = crate::gauge_snapshot(now, &started, rows, unrunnable);
        let stored = sqlx::query(
            "UPDATE paysaga_gauges SET computed_at = $2, snapshot = $3, started_until = $4, started = $5
             WHERE id = 1 AND holder = $1",
        )
        .bind(req.instance.to_string())
        .bind(ts(now))
        .bind(serde_json::to_string(&snapshot).map_err(|e| Error::Corrupt(e.to_string()))?)
        .bind(ts(until))
        .bind(serde_json::to_string(&started).map_err(|e| Error::Corrupt(e.to_string()))?)
        .execute(&self.writer)
        .await?;
        Ok((stored.rows_affected() == 1).then_some(snapshot))
    }

    async fn gauges(&self) -> Result<Option<GaugeSnapshot>, Error> {
        let snapshot: Option<String> =
            sqlx::query_scalar("SELECT snapshot FROM paysaga_gauges WHERE id = 1")
                .fetch_optional(&self.reader)
                .await?
                .flatten();
        snapshot
            .map(|v| {
                serde_json::from_str(&v)
                    .map_err(|e| Error::Corrupt(format!("paysaga_gauges.snapshot: {e}")))
            })
            .transpose()
    }

    async fn reap_expired_leases(&self, worker: Uuid) -> Result<Reaped, Error> {
        let sagas = self.reap_expired_workers().await?;
        let next: Option<String> = sqlx::query_scalar(
            "SELECT min(lease_expires_at) FROM paysaga_workers
             WHERE stopped_at IS NULL AND id <> $1",
        )
        .bind(worker.to_string())
        .fetch_one(&self.reader)
        .await?;
        Ok(Reaped {
            sagas,
            next_expiry: next.as_deref().map(parse_ts).transpose()?,
        })
    }

    #[instrument(skip_all)]
    async fn prune_finished(&self, older_than: Duration, limit: i64) -> Result<Pruned, Error> {
        let mut tx = self.write_tx().await?;
        let ids: Vec<String> = sqlx::query_scalar(PRUNABLE_SQL)
            .bind(prunable_before(older_than))
            .bind(to_json(&crate::prunable_statuses())?)
            .bind(limit)
            .fetch_all(&mut *tx)
            .await?;
        if ids.is_empty() {
            tx.rollback().await?;
            return Ok(Pruned::default());
        }
        let ids: Vec<String> = sqlx::query_scalar(PRUNABLE_TREES_SQL)
            .bind(to_json(&ids)?)
            .bind(prunable_before(older_than))
            .bind(to_json(&crate::prunable_statuses())?)
            .fetch_all(&mut *tx)
            .await?;
        let ids = to_json(&ids)?;
        let mut deleted = [0_u64; 6];
        // Children first: the foreign keys are checked per statement.
        for (n, sql) in [
            "DELETE FROM paysaga_history WHERE saga_id IN (SELECT value FROM json_each($1))",
            "DELETE FROM paysaga_waits WHERE saga_id IN (SELECT value FROM json_each($1))",
            "DELETE FROM paysaga_events WHERE consumed_by IN (SELECT value FROM json_each($1))",
            "DELETE FROM paysaga_documents WHERE saga_id IN (SELECT value FROM json_each($1))",
            "DELETE FROM paysaga_fan_outs WHERE parent_id IN (SELECT value FROM json_each($1))",
            "DELETE FROM paysaga_sagas WHERE id IN (SELECT value FROM json_each($1))",
        ]
        .into_iter()
        .enumerate()
        {
            deleted[n] = sqlx::query(sql)
                .bind(&ids)
                .execute(&mut *tx)
                .await?
                .rows_affected();
        }
        tx.commit().await?;
        let [history, waits, events, documents, _fan_outs, sagas] = deleted;
        Ok(Pruned {
            sagas,
            history,
            waits,
            events,
            documents,
            busy: false,
        })
    }

    async fn count_prunable(&self, older_than: Duration) -> Result<u64, Error> {
        let n: i64 = sqlx::query_scalar(&format!(
            "SELECT (SELECT count(*) FROM ({PRUNABLE_SQL}))
                  + (SELECT count(*) FROM paysaga_sagas INDEXED BY paysaga_sagas_children
                     WHERE parent_id IN ({PRUNABLE_SQL}))"
        ))
        .bind(prunable_before(older_than))
        .bind(to_json(&crate::prunable_statuses())?)
        .bind(-1_i64)
        .fetch_one(&self.reader)
        .await?;
        Ok(n as u64)
    }

    #[instrument(skip(self, request), fields(provider = request.provider))]
    async fn reserve_request_slot(&self, request: &SlotRequest<'_>) -> Result<RequestSlot, Error> {
        let mut tx = self.write_tx().await?;
        // The stored precision, so that a slot read back is the slot handed out.
        let now = chrono::SubsecRound::trunc_subsecs(Utc::now(), 6);
        let row = sqlx::query(
            "SELECT next_free_at, slow_until FROM paysaga_request_budgets
             WHERE provider = ?1 AND credential = ?2",
        )
        .bind(request.provider)
        .bind(request.credential)
        .fetch_optional(&mut *tx)
        .await?;
        let (next_free, slowed) = match row {
            Some(row) => (
                Some(get_ts(&row, "next_free_at")?),
                get_ts(&row, "slow_until")? > now,
            ),
            None => (None, false),
        };
        let slot = budget_slot(request, next_free, slowed, now);
        if slot.granted {
            let step = budget_step(request.interval, slowed);
            sqlx::query(
                "INSERT INTO paysaga_request_budgets (provider, credential, next_free_at, slow_until)
                 VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (provider, credential) DO UPDATE SET next_free_at = excluded.next_free_at",
            )
            .bind(request.provider)
            .bind(request.credential)
            .bind(ts(slot.at + step))
            .bind(ts(now))
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(slot)
    }

    #[instrument(skip(self, credential))]
    async fn throttle_requests(
        &self,
        provider: &str,
        credential: &str,
        pause: Duration,
        slow_for: Duration,
    ) -> Result<(), Error> {
        let now = Utc::now();
        let span = |d: Duration| chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX);
        // Fixed-width text: `max` over text is max over time.
        sqlx::query(
            "INSERT INTO paysaga_request_budgets (provider, credential, next_free_at, slow_until)
             VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (provider, credential) DO UPDATE SET
                 next_free_at = max(next_free_at, excluded.next_free_at),
                 slow_until = max(slow_until, excluded.slow_until)",
        )
        .bind(provider)
        .bind(credential)
        .bind(ts(now.checked_add_signed(span(pause)).unwrap_or(now)))
        .bind(ts(now.checked_add_signed(span(slow_for)).unwrap_or(now)))
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    async fn concurrency_holders(&self, key: &str) -> Result<Vec<Uuid>, Error> {
        let ids: Vec<String> = sqlx::query_scalar(HOLDERS_SQL)
            .bind(key)
            .fetch_all(&self.reader)
            .await?;
        ids.iter().map(|id| parse_uuid(id)).collect()
    }

    #[instrument(skip_all)]
    async fn admit_queued(&self) -> Result<u64, Error> {
        let keys: Vec<String> = sqlx::query_scalar(KEYS_WITH_FREE_SLOTS_SQL)
            .fetch_all(&self.reader)
            .await?;
        if keys.is_empty() {
            return Ok(0);
        }
        let mut tx = self.write_tx().await?;
        let mut admitted = 0;
        for key in &keys {
            admitted += admit_in(&mut tx, key).await?;
        }
        tx.commit().await?;
        if admitted > 0 {
            self.notify();
            tracing::info!(
                sagas = admitted,
                "gave free concurrency slots to queued sagas"
            );
        }
        Ok(admitted)
    }

    #[instrument(skip_all, fields(saga_id = %req.parent, step = %req.step, children = req.children.len()))]
    async fn start_children(&self, req: StartChildren<'_>) -> Result<u64, Error> {
        let now = ts(Utc::now());
        let mut tx = self.write_tx().await?;
        let held: Option<String> = sqlx::query_scalar(
            "SELECT id FROM paysaga_sagas
             WHERE id = $1 AND owner = $2 AND fence = $3
               AND EXISTS (SELECT 1 FROM paysaga_workers w
                           WHERE w.id = $2 AND w.stopped_at IS NULL AND w.lease_expires_at > $4)",
        )
        .bind(req.parent.to_string())
        .bind(req.worker.to_string())
        .bind(req.fence)
        .bind(&now)
        .fetch_optional(&mut *tx)
        .await?;
        if held.is_none() {
            tx.rollback().await?;
            return Err(Error::LeaseLost { saga: req.parent });
        }
        let started = req.children.iter().map(|c| c.index + 1).max().unwrap_or(0);
        sqlx::query(
            "INSERT INTO paysaga_fan_outs AS f (parent_id, step, total, started, created_at)
             VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (parent_id, step) DO UPDATE
                 SET total = excluded.total, started = max(f.started, excluded.started)",
        )
        .bind(req.parent.to_string())
        .bind(req.step)
        .bind(i64::try_from(req.total).unwrap_or(i64::MAX))
        .bind(i64::try_from(started).unwrap_or(i64::MAX))
        .bind(&now)
        .execute(&mut *tx)
        .await?;
        let mut inserted = 0u64;
        for child in req.children {
            let id: Option<String> = sqlx::query_scalar(
                "INSERT INTO paysaga_sagas (id, definition_id, workflow, version, idempotency_key,
                                            input, status, run_at, created_at, updated_at,
                                            parent_id, parent_step, child_index, child_key,
                                            concurrency_key, concurrency_limit, trace_context)
                 VALUES ($1, $2, $3, $4, $5, $6, 'scheduled', CASE WHEN $12 IS NULL THEN $7 END,
                         $7, $7, $8, $9, $10, $11, $12, $13,
                         (SELECT p.trace_context FROM paysaga_sagas p WHERE p.id = $8))
                 ON CONFLICT (workflow, idempotency_key) DO NOTHING
                 RETURNING id",
            )
            .bind(child.id.to_string())
            .bind(req.definition_id)
            .bind(req.workflow)
            .bind(i64::from(req.version))
            .bind(&child.idempotency_key)
            .bind(to_json(&child.input)?)
            .bind(&now)
            .bind(req.parent.to_string())
            .bind(req.step)
            .bind(i64::try_from(child.index).unwrap_or(i64::MAX))
            .bind(&child.key)
            .bind(child.concurrency.as_ref().map(|c| c.key.as_str()))
            .bind(child.concurrency.as_ref().map(|c| i64::from(c.limit)))
            .fetch_optional(&mut *tx)
            .await?;
            if id.is_some() {
                inserted += 1;
                let entry = HistoryEntry {
                    kind: HistoryKind::SagaStarted,
                    step: None,
                    attempt: None,
                    error: None,
                    detail: json!({"definition_id": req.definition_id, "version": req.version,
                                   "idempotency_key": child.idempotency_key,
                                   "parent": req.parent, "parent_step": req.step,
                                   "item_key": child.key}),
                };
                let actor = format!("parent {}", req.parent);
                insert_history(&mut tx, child.id, None, Some(&actor), &[entry]).await?;
            }
        }
        // Children with a concurrency key were inserted queued: they take free slots of
        // their keys as any started saga.
        let mut keys: Vec<&str> = req
            .children
            .iter()
            .filter_map(|c| c.concurrency.as_ref().map(|k| k.key.as_str()))
            .collect();
        keys.sort_unstable();
        keys.dedup();
        for key in keys {
            admit_in(&mut tx, key).await?;
        }
        tx.commit().await?;
        self.notify();
        Ok(inserted)
    }

    async fn fan_out_progress(
        &self,
        parent: Uuid,
        step: &str,
    ) -> Result<Option<paysaga_core::FanOutProgress>, Error> {
        let row = sqlx::query(
            "SELECT total, started, ended FROM paysaga_fan_outs WHERE parent_id = $1 AND step = $2",
        )
        .bind(parent.to_string())
        .bind(step)
        .fetch_optional(&self.reader)
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
        let rows = sqlx::query(
            "SELECT id, parent_step, child_index, child_key, status, owner IS NOT NULL AS held,
                    CASE WHEN $3 THEN outputs END AS outputs, last_error
             FROM paysaga_sagas WHERE parent_id = $1 AND parent_step = $2
             ORDER BY child_index",
        )
        .bind(parent.to_string())
        .bind(step)
        .bind(with_outputs)
        .fetch_all(&self.reader)
        .await?;
        rows.iter()
            .map(|r| {
                let status: String = r.try_get("status")?;
                Ok(ChildSaga {
                    id: get_uuid(r, "id")?,
                    step: r.try_get("parent_step")?,
                    index: u64::try_from(r.try_get::<i64, _>("child_index")?).unwrap_or(0),
                    key: r.try_get("child_key")?,
                    status: status.parse().map_err(|e| Error::Corrupt(format!("{e}")))?,
                    held: r.try_get("held")?,
                    outputs: get_opt_json(r, "outputs")?.unwrap_or(Value::Null),
                    last_error: r.try_get("last_error")?,
                })
            })
            .collect()
    }

    async fn child_counts(&self, parent: Uuid) -> Result<Vec<ChildCount>, Error> {
        let rows = sqlx::query(
            "SELECT parent_step, status, owner IS NOT NULL AS held, count(*) AS n
             FROM paysaga_sagas WHERE parent_id = $1
             GROUP BY parent_step, status, owner IS NOT NULL ORDER BY parent_step, status",
        )
        .bind(parent.to_string())
        .fetch_all(&self.reader)
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
        let status_filter =
            crate::status_filter_sql(|x| format!("{x} IN (SELECT value FROM json_each($2))"));
        let rows = sqlx::query(&format!(
            "SELECT {} FROM paysaga_sagas s
             WHERE s.parent_id = $1 AND (json_array_length($2) = 0 OR {status_filter})
             ORDER BY s.parent_step, s.child_index LIMIT $3 OFFSET $4",
            columns.join(", ")
        ))
        .bind(parent.to_string())
        .bind(to_json(&statuses)?)
        .bind(limit)
        .bind(offset)
        .fetch_all(&self.reader)
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
        let mut tx = self.write_tx().await?;
        let n = cancel_children_in(&mut tx, parent, actor, &detail).await?;
        tx.commit().await?;
        if n > 0 {
            self.notify();
        }
        Ok(n)
    }

    async fn cascade_cancels(&self) -> Result<u64, Error> {
        let now = ts(Utc::now());
        let mut tx = self.write_tx().await?;
        let rows: Vec<(String, String)> = sqlx::query_as(CASCADE_CANCELS_SQL)
            .bind(&now)
            .fetch_all(&mut *tx)
            .await?;
        for (id, parent) in &rows {
            let parent = parse_uuid(parent)?;
            let entry = HistoryEntry {
                kind: HistoryKind::CancelRequested,
                step: None,
                attempt: None,
                error: None,
                detail: crate::cascade_detail(parent, "unwinds or has ended"),
            };
            let actor = crate::parent_actor(parent);
            insert_history(&mut tx, parse_uuid(id)?, None, Some(&actor), &[entry]).await?;
        }
        tx.commit().await?;
        if !rows.is_empty() {
            self.notify();
        }
        Ok(rows.len() as u64)
    }

    async fn wake_fan_in(&self, parent: Uuid) -> Result<bool, Error> {
        let now = ts(Utc::now());
        let mut tx = self.write_tx().await?;
        let n = sqlx::query(
            "UPDATE paysaga_sagas SET run_at = $2
             WHERE id = $1 AND status = 'waiting' AND owner IS NULL AND run_at > $2",
        )
        .bind(parent.to_string())
        .bind(&now)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        tx.commit().await?;
        if n > 0 {
            self.notify();
        }
        Ok(n > 0)
    }

    async fn parent_of(&self, child: Uuid) -> Result<Option<ParentLink>, Error> {
        let row = sqlx::query(
            "SELECT parent_id, parent_step, child_index, child_key FROM paysaga_sagas
             WHERE id = $1 AND parent_id IS NOT NULL",
        )
        .bind(child.to_string())
        .fetch_optional(&self.reader)
        .await?;
        row.map(|r| {
            Ok(ParentLink {
                parent: get_uuid(&r, "parent_id")?,
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
        let names = serde_json::to_string(names).map_err(|e| Error::Corrupt(e.to_string()))?;
        let rows = sqlx::query(
            "SELECT r.saga_id, s.workflow, s.status, s.closed_outcome, s.updated_at,
                    r.step, r.name, r.value
             FROM paysaga_saga_refs r JOIN paysaga_sagas s ON s.id = r.saga_id
             WHERE r.name IN (SELECT value FROM json_each($1))
               AND ($2 IS NULL OR s.created_at >= $2)
             ORDER BY s.created_at, r.saga_id, r.step, r.name, r.value",
        )
        .bind(names)
        .bind(since.map(ts))
        .fetch_all(&self.reader)
        .await?;
        rows.iter()
            .map(|r| {
                let status: String = r.try_get("status")?;
                Ok(ReconcileReference {
                    saga_id: get_uuid(r, "saga_id")?,
                    workflow: r.try_get("workflow")?,
                    status: status.parse().map_err(|e| Error::Corrupt(format!("{e}")))?,
                    closed_outcome: crate::closed_outcome(r.try_get("closed_outcome")?)?,
                    updated_at: get_ts(r, "updated_at")?,
                    step: r.try_get("step")?,
                    name: r.try_get("name")?,
                    value: r.try_get("value")?,
                })
            })
            .collect()
    }

    async fn reference_owners(&self, values: &[String]) -> Result<Vec<(String, Uuid)>, Error> {
        let values = serde_json::to_string(values).map_err(|e| Error::Corrupt(e.to_string()))?;
        let rows: Vec<(String, String)> = sqlx::query_as(
            "SELECT DISTINCT value, saga_id FROM paysaga_saga_refs
             WHERE value IN (SELECT value FROM json_each($1)) ORDER BY value, saga_id",
        )
        .bind(values)
        .fetch_all(&self.reader)
        .await?;
        rows.into_iter()
            .map(|(value, saga)| Ok((value, parse_uuid(&saga)?)))
            .collect()
    }

    async fn take_reconciler_lease(&self, instance: Uuid, lease: Duration) -> Result<bool, Error> {
        let now = Utc::now();
        let until = now
            .checked_add_signed(chrono::Duration::from_std(lease).unwrap_or(chrono::Duration::MAX))
            .unwrap_or(now);
        let taken = sqlx::query(
            "UPDATE paysaga_reconciler SET holder = $1, held_until = $2
             WHERE id = 1 AND (holder IS NULL OR holder = $1 OR held_until < $3)",
        )
        .bind(instance.to_string())
        .bind(ts(until))
        .bind(ts(now))
        .execute(&self.writer)
        .await?;
        Ok(taken.rows_affected() == 1)
    }

    async fn store_reconciliation(&self, run: &NewReconciliation) -> Result<i64, Error> {
        let mut tx = self.write_tx().await?;
        let providers =
            serde_json::to_string(&run.providers).map_err(|e| Error::Corrupt(e.to_string()))?;
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO paysaga_reconciliations (started_at, finished_at, providers, since,
                 objects_checked, actor)
             VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
        )
        .bind(ts(run.started_at))
        .bind(ts(Utc::now()))
        .bind(providers)
        .bind(run.since.map(ts))
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
            .bind(i64::try_from(seq).unwrap_or(i64::MAX))
            .bind(&d.kind)
            .bind(&d.provider)
            .bind(d.saga_id.map(|u| u.to_string()))
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

impl SqliteStore {
    /// Reconciliation run `id`, or the latest one (`None`), with its findings.
    async fn read_reconciliation(&self, id: Option<i64>) -> Result<Option<Reconciliation>, Error> {
        let Some(run) = sqlx::query(
            "SELECT id, started_at, finished_at, providers, since, objects_checked, actor
             FROM paysaga_reconciliations WHERE ($1 IS NULL OR id = $1) ORDER BY id DESC LIMIT 1",
        )
        .bind(id)
        .fetch_optional(&self.reader)
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
        .fetch_all(&self.reader)
        .await?
        .iter()
        .map(|r| {
            Ok(DriftRecord {
                kind: r.try_get("kind")?,
                provider: r.try_get("provider")?,
                saga_id: get_opt_uuid(r, "saga_id")?,
                object_id: r.try_get("object_id")?,
                currency: r.try_get("currency")?,
                amount: r.try_get("amount")?,
                detail: r.try_get("detail")?,
                action: r.try_get("action")?,
            })
        })
        .collect::<Result<Vec<_>, Error>>()?;
        let providers: String = run.try_get("providers")?;
        Ok(Some(Reconciliation {
            id,
            finished_at: get_ts(&run, "finished_at")?,
            run: NewReconciliation {
                started_at: get_ts(&run, "started_at")?,
                providers: serde_json::from_str(&providers).map_err(|e| {
                    Error::Corrupt(format!("paysaga_reconciliations.providers: {e}"))
                })?,
                since: get_opt_ts(&run, "since")?,
                objects_checked: run.try_get("objects_checked")?,
                actor: run.try_get("actor")?,
                findings,
            },
        }))
    }
}

/// The cancel cascade's safety net ([`Store::cascade_cancels`], `$1` now): unfinished
/// children not asked yet (`paysaga_sagas_open_children`) whose parent unwinds or ended
/// otherwise than completed, at most 1000 a pass; returns (child, parent).
const CASCADE_CANCELS_SQL: &str = "
UPDATE paysaga_sagas SET cancel_requested = 1, run_at = $1, updated_at = $1
WHERE id IN (
    SELECT k.id FROM paysaga_sagas k INDEXED BY paysaga_sagas_open_children
    JOIN paysaga_sagas p ON p.id = k.parent_id
    WHERE k.parent_id IS NOT NULL AND k.status IN ('scheduled', 'retrying', 'waiting')
      AND k.cancel_requested = 0
      AND (p.cancel_requested = 1 OR p.close_requested IS NOT NULL
           OR p.status IN ('compensating', 'compensated', 'cancelled', 'closed'))
    LIMIT 1000)
RETURNING id, parent_id";

/// Asks `parent`'s unfinished children (scheduled, retrying, waiting; not asked yet) to
/// cancel inside `tx`: a `cancel_requested` history row each; returns how many.
async fn cancel_children_in(
    tx: &mut Transaction<'static, Sqlite>,
    parent: Uuid,
    actor: &str,
    detail: &Value,
) -> Result<u64, Error> {
    let now = ts(Utc::now());
    let ids: Vec<String> = sqlx::query_scalar(
        "UPDATE paysaga_sagas SET cancel_requested = 1, run_at = $2, updated_at = $2
         WHERE parent_id = $1 AND status IN ('scheduled', 'retrying', 'waiting')
           AND cancel_requested = 0
         RETURNING id",
    )
    .bind(parent.to_string())
    .bind(&now)
    .fetch_all(&mut **tx)
    .await?;
    for id in &ids {
        let entry = HistoryEntry {
            kind: HistoryKind::CancelRequested,
            step: None,
            attempt: None,
            error: None,
            detail: detail.clone(),
        };
        insert_history(tx, parse_uuid(id)?, None, Some(actor), &[entry]).await?;
    }
    Ok(ids.len() as u64)
}

/// The roots of the campaigns retention may delete (`$1` finished before, `$2` the prunable
/// statuses as a JSON array, `$3` batch size, -1 for all), oldest first (the partial index
/// `paysaga_sagas_finished`): prunable sagas that are not children of a saga still stored (a
/// child goes with its parent) and whose children are all prunable too.
const PRUNABLE_SQL: &str = "SELECT r.id FROM paysaga_sagas r INDEXED BY paysaga_sagas_finished
     WHERE r.finished_at IS NOT NULL AND r.finished_at < $1
       AND r.status IN (SELECT value FROM json_each($2))
       AND (r.parent_id IS NULL
            OR NOT EXISTS (SELECT 1 FROM paysaga_sagas p WHERE p.id = r.parent_id))
       AND NOT EXISTS (
           SELECT 1 FROM paysaga_sagas c INDEXED BY paysaga_sagas_children
           WHERE c.parent_id = r.id
             AND NOT (c.finished_at IS NOT NULL AND c.finished_at < $1
                      AND c.status IN (SELECT value FROM json_each($2))))
     ORDER BY r.finished_at LIMIT $3";

/// The sagas of the campaigns rooted at `$1` (a JSON array of ids): each root with its
/// descendants (`paysaga_sagas_children`), unless one of those is not prunable (`$2`, `$3`
/// as [`PRUNABLE_SQL`]'s `$1`, `$2`).
const PRUNABLE_TREES_SQL: &str = "WITH RECURSIVE tree (root, id) AS (
         SELECT value, value FROM json_each($1)
         UNION ALL
         SELECT t.root, c.id FROM tree t
         JOIN paysaga_sagas c INDEXED BY paysaga_sagas_children ON c.parent_id = t.id),
     blocked AS (
         SELECT DISTINCT t.root FROM tree t JOIN paysaga_sagas b ON b.id = t.id
         WHERE NOT (b.finished_at IS NOT NULL AND b.finished_at < $2
                    AND b.status IN (SELECT value FROM json_each($3))))
     SELECT id FROM tree WHERE root NOT IN (SELECT root FROM blocked)";

/// The cut-off of retention: now minus `older_than`.
fn prunable_before(older_than: Duration) -> String {
    let now = Utc::now();
    ts(chrono::Duration::from_std(older_than)
        .ok()
        .and_then(|d| now.checked_sub_signed(d))
        .unwrap_or(DateTime::<Utc>::MIN_UTC))
}

/// Sagas created in `[$1, $2)` by workflow (the `paysaga_sagas_created` index).
const STARTED_SQL: &str = "SELECT workflow, count(*) FROM paysaga_sagas
     WHERE created_at >= $1 AND created_at < $2 GROUP BY workflow";

/// The gauges over open sagas only (searched by status in `paysaga_sagas_status_updated`): `$1` no
/// progress since (stuck), `$2` attempts (stuck), `$3` now.
fn gauges_sql() -> String {
    format!(
        "SELECT s.workflow,
                CASE WHEN s.owner IS NOT NULL AND s.status IN {} THEN 'running' ELSE s.status END
                    AS observed,
                count(*) AS sagas,
                min(CASE WHEN s.status = 'waiting' THEN s.wait_since END) AS oldest_wait,
                sum(CASE WHEN s.status = 'waiting' AND s.wait_deadline < $3 THEN 1 ELSE 0 END)
                    AS past_deadline,
                sum(CASE WHEN s.status = 'needs_operator'
                    OR s.updated_at < $1
                    OR (s.wait_deadline IS NOT NULL AND s.wait_deadline < $3)
                    OR s.attempt >= $2
                    OR (s.owner IS NOT NULL AND NOT EXISTS (
                        SELECT 1 FROM paysaga_workers w
                        WHERE w.id = s.owner AND w.stopped_at IS NULL AND w.lease_expires_at > $3))
                    THEN 1 ELSE 0 END) AS stuck
         FROM paysaga_sagas s
         WHERE s.status IN {}
         GROUP BY 1, 2",
        crate::HOLDABLE,
        crate::OPEN,
    )
}

const DOCUMENT_COLUMNS: &str =
    "id, content_type, size, sha256, created_at, saga_id, content_deleted_at";

fn document_from_row(row: &SqliteRow) -> Result<DocumentRecord, Error> {
    Ok(DocumentRecord {
        id: DocumentId(get_uuid(row, "id")?),
        content_type: row.try_get("content_type")?,
        size: row.try_get("size")?,
        sha256: row.try_get("sha256")?,
        created_at: get_ts(row, "created_at")?,
        saga_id: get_opt_uuid(row, "saga_id")?,
        content_deleted_at: get_opt_ts(row, "content_deleted_at")?,
    })
}

/// The retention sweep (`$1` finished before, `$2` unclaimed documents stored before, `$3`
/// batch size, `$4` now): documents that still hold content (the partial index
/// `paysaga_documents_with_content`, oldest first) whose saga finished before `$1`, or that
/// no existing saga holds and were stored before `$2`. The content goes; the rest stays.
const EXPIRED_DOCUMENTS_SQL: &str =
    "UPDATE paysaga_documents SET content = NULL, content_deleted_at = $4
     WHERE id IN (
         SELECT d.id FROM paysaga_documents d
         LEFT JOIN paysaga_sagas s ON s.id = d.saga_id
         WHERE d.content IS NOT NULL
           AND (s.finished_at < $1 OR (s.id IS NULL AND d.created_at < $2))
         ORDER BY d.created_at
         LIMIT $3)";

/// Wake-ups: this process's writes at once, other processes' writes by polling
/// `PRAGMA data_version` (which changes when another connection commits).
struct SqliteWakeups {
    receiver: broadcast::Receiver<()>,
    poller: Option<(SqliteConnection, i64)>,
}

#[async_trait]
impl crate::Wakeups for SqliteWakeups {
    async fn recv(&mut self) -> Result<(), Error> {
        loop {
            tokio::select! {
                received = self.receiver.recv() => {
                    return match received {
                        // Lagged: several wake-ups folded into one, which is what callers want.
                        Ok(()) | Err(broadcast::error::RecvError::Lagged(_)) => Ok(()),
                        // The store is gone (callers hold it while they listen).
                        Err(broadcast::error::RecvError::Closed) => {
                            Err(Error::Refused("the store was closed".to_string()))
                        }
                    };
                }
                _ = tokio::time::sleep(CROSS_PROCESS_POLL), if self.poller.is_some() => {
                    if let Some((conn, seen)) = &mut self.poller {
                        let version: i64 = sqlx::query_scalar("PRAGMA data_version")
                            .fetch_one(&mut *conn)
                            .await?;
                        if version != *seen {
                            *seen = version;
                            return Ok(());
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn timestamps_sort_as_text_in_time_order_and_read_back_exactly() {
        let a = DateTime::parse_from_rfc3339("2026-11-23T09:59:59.999999Z")
            .unwrap()
            .with_timezone(&Utc);
        let b = DateTime::parse_from_rfc3339("2026-11-23T10:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        assert!(ts(a) < ts(b));
        assert_eq!(ts(b), "2026-11-23T10:00:00.000000Z");
        assert_eq!(parse_ts(&ts(a)).unwrap(), a);
    }

    /// The claim and the next-due query are served by the runnable index, not a table scan.
    #[tokio::test]
    async fn hot_path_queries_use_their_indexes() {
        let store = SqliteStore::connect("sqlite::memory:").await.unwrap();
        store.migrate().await.unwrap();
        for (sql, kinds_param) in [(CLAIM_SQL, 3), (NEXT_DUE_SQL, 1)] {
            // EXPLAIN of a constant query.
            let explain = format!("EXPLAIN QUERY PLAN {sql}");
            let mut q = sqlx::query_as::<_, (i64, i64, i64, String)>(&explain);
            for i in 1..=4 {
                q = if i == kinds_param {
                    q.bind("[\"noop.sleep\"]")
                } else {
                    q.bind(i.to_string())
                };
            }
            let plan: Vec<String> = q
                .fetch_all(&store.reader)
                .await
                .unwrap()
                .into_iter()
                .map(|r| r.3)
                .collect();
            assert!(
                plan.iter().any(|l| l.contains("paysaga_sagas_runnable")),
                "plan of {sql}:\n{}",
                plan.join("\n")
            );
        }
    }

    /// `paysaga audit` reads operator rows through their partial index, not the history.
    #[tokio::test]
    async fn the_audit_query_uses_the_operator_history_index() {
        let store = SqliteStore::connect("sqlite::memory:").await.unwrap();
        store.migrate().await.unwrap();
        let explain = format!("EXPLAIN QUERY PLAN {OPERATOR_HISTORY_SQL}");
        let plan: Vec<String> = sqlx::query_as::<_, (i64, i64, i64, String)>(&explain)
            .bind(Option::<String>::None)
            .bind("ops:alice")
            .bind(100_i64)
            .fetch_all(&store.reader)
            .await
            .unwrap()
            .into_iter()
            .map(|r| r.3)
            .collect();
        assert!(
            plan.iter().any(|l| l.contains("paysaga_history_operator")),
            "audit plan:\n{}",
            plan.join("\n")
        );
    }

    /// The gauges count open sagas through the status index (a search by status, never a
    /// scan of finished sagas), and the
    /// sagas started since the last refresh through `paysaga_sagas_created`.
    #[tokio::test]
    async fn gauge_queries_use_their_indexes() {
        let store = SqliteStore::connect("sqlite::memory:").await.unwrap();
        store.migrate().await.unwrap();
        let sql = gauges_sql();
        let plan: Vec<(i64, i64, i64, String)> =
            sqlx::query_as(&format!("EXPLAIN QUERY PLAN {sql}"))
                .bind("a")
                .bind(5_i64)
                .bind("b")
                .fetch_all(&store.reader)
                .await
                .unwrap();
        let plan: Vec<String> = plan.into_iter().map(|r| r.3).collect();
        assert!(
            plan.iter()
                .any(|l| l
                    .starts_with("SEARCH s USING INDEX paysaga_sagas_status_updated (status=?)")),
            "{plan:?}"
        );
        let sql = STARTED_SQL;
        let plan: Vec<(i64, i64, i64, String)> =
            sqlx::query_as(&format!("EXPLAIN QUERY PLAN {sql}"))
                .bind("a")
                .bind("b")
                .fetch_all(&store.reader)
                .await
                .unwrap();
        assert!(
            plan.iter().any(|r| r.3.contains("paysaga_sagas_created")
                || r.3.contains("paysaga_sagas_workflow_created")),
            "{plan:?}"
        );
    }
}
