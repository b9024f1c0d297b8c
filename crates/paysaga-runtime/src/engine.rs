//! The engine handle: submit definitions, start sagas, query them, deliver events.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use paysaga_core::{CompiledDefinition, Definition, DocumentId, HistoryKind};
use paysaga_store::{
    DefinitionRecord, Delivery, DocumentRecord, EventFilter, EventRecord, HistoryRecord,
    NewDocument, NewEvent, NewSaga, SagaFilter, SagaRecord, SagaReference, Store,
};
use serde::Serialize;
use serde_json::{json, Value};
use tracing::{info, instrument, warn};
use uuid::Uuid;

use crate::metrics::{Metrics, SharedMetrics};
use crate::{Error, Registry, Worker, WorkerConfig};

/// A definition version compiled against this process's registry.
#[derive(Debug)]
pub(crate) struct LoadedDefinition {
    pub record: DefinitionRecord,
    pub compiled: CompiledDefinition,
}

/// What `start` returns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Started {
    /// The saga (new or existing for the idempotency key).
    pub saga_id: Uuid,
    /// `false` when the key already named a saga.
    pub created: bool,
}

/// A start request with every option.
#[derive(Debug, Clone)]
pub struct StartRequest {
    /// Workflow name.
    pub workflow: String,
    /// Version; the latest when `None`.
    pub version: Option<u32>,
    /// Input.
    pub input: Value,
    /// Idempotency key: a second start with the same key returns the first saga.
    pub idempotency_key: Option<String>,
    /// Who starts it (history).
    pub actor: String,
}

/// A saga with its history and current step name, as operators see it.
#[derive(Debug, Clone, Serialize)]
pub struct SagaView {
    /// The saga row.
    #[serde(flatten)]
    pub saga: SagaRecord,
    /// Name of the current step (or the step being compensated), if any.
    pub current_step: Option<String>,
    /// Step names in order.
    pub steps: Vec<String>,
    /// History, oldest first.
    pub history: Vec<HistoryRecord>,
    /// The provider object ids its steps returned (`paysaga list --ref` finds the saga by any).
    pub references: Vec<SagaReference>,
    /// Set when the saga is unfinished, no worker holds it, and no live worker can run it (no
    /// live worker has every step kind of its definition): it will not move until one starts.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unrunnable: Option<Unrunnable>,
    /// For a saga queued for a slot of its concurrency key: the sagas holding the key's slots
    /// now (it runs its first step once one of them ends).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub queued_behind: Vec<Uuid>,
}

/// Why no live worker can run a saga (see [`SagaView::unrunnable`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Unrunnable {
    /// The step kinds of its definition that no live worker has (empty when every kind is on
    /// some worker, but no single worker has them all).
    pub missing_kinds: Vec<String>,
    /// The providers of those kinds (the prefix of `provider.step`): start a worker with them
    /// configured.
    pub providers: Vec<String>,
    /// Live workers now.
    pub live_workers: usize,
    /// The current step's kind, when no live worker has it.
    pub step_kind: Option<String>,
}

impl Unrunnable {
    /// Whether a saga of a definition needing `kinds` can be run by none of the live workers
    /// whose step kinds are `live`.
    pub fn of(kinds: &[String], current: Option<&str>, live: &[Vec<String>]) -> Option<Unrunnable> {
        if live.iter().any(|w| kinds.iter().all(|k| w.contains(k))) {
            return None;
        }
        let mut missing: Vec<String> = kinds
            .iter()
            .filter(|k| !live.iter().any(|w| w.contains(k)))
            .cloned()
            .collect();
        missing.sort();
        missing.dedup();
        let mut providers: Vec<String> = missing
            .iter()
            .map(|k| k.split_once('.').map_or(k.as_str(), |(p, _)| p).to_string())
            .collect();
        providers.dedup();
        let step_kind = current
            .filter(|k| missing.iter().any(|m| m == k))
            .map(str::to_string);
        Some(Unrunnable {
            missing_kinds: missing,
            providers,
            live_workers: live.len(),
            step_kind,
        })
    }
}

/// An event to deliver (webhook ingestion or an operator's manual event).
#[derive(Debug, Clone)]
pub struct IncomingEvent {
    /// Provider name.
    pub provider: String,
    /// The provider's event id (dedup key).
    pub event_id: String,
    /// Event type.
    pub event_type: String,
    /// Correlation key that names the object (e.g. `payable:p_1`).
    pub correlation_key: Option<String>,
    /// Body.
    pub payload: Value,
}

/// The engine handle: cheap to clone, shared by the API, the HTTP server and workers.
#[derive(Debug, Clone)]
pub struct Engine {
    pub(crate) store: Arc<dyn Store>,
    pub(crate) registry: Arc<Registry>,
    pub(crate) metrics: SharedMetrics,
    definitions: Arc<Mutex<HashMap<i64, Arc<LoadedDefinition>>>>,
    max_document_size: usize,
    operator_detail: Option<Arc<serde_json::Map<String, Value>>>,
    wait_poll: Duration,
    /// The workers running in this process on this engine (or a clone of it): `start`
    /// hands them new sagas directly.
    pub(crate) local: Arc<Mutex<Vec<crate::worker::LocalWorker>>>,
    /// The latest version of each workflow this engine started, as last read (the insert
    /// refuses it once it is outdated; see [`Engine::start_with`]).
    latest: Arc<Mutex<HashMap<String, DefinitionRecord>>>,
}

/// How many times `start` resolves the latest version again after its insert found a newer
/// one (a version submitted between the look-up and the insert, each time).
const MAX_OUTDATED_RETRIES: u32 = 3;

/// The default largest document [`Engine::put_document`] stores: 10 MiB.
pub const DEFAULT_MAX_DOCUMENT_SIZE: usize = 10 * 1024 * 1024;

/// How often [`Engine::wait_for_end`] reads the saga again when no end was notified (the
/// fallback beside the notification): 2 s.
pub const DEFAULT_WAIT_FALLBACK_POLL: Duration = Duration::from_secs(2);

impl Engine {
    /// An engine over a store with the given step kinds.
    pub fn new(store: Arc<dyn Store>, registry: Registry) -> Engine {
        Engine {
            store,
            registry: Arc::new(registry),
            metrics: Arc::new(Metrics::new()),
            definitions: Default::default(),
            max_document_size: DEFAULT_MAX_DOCUMENT_SIZE,
            operator_detail: None,
            wait_poll: DEFAULT_WAIT_FALLBACK_POLL,
            local: Default::default(),
            latest: Default::default(),
        }
    }

    /// Forgets the remembered latest version of `workflow`.
    fn forget_latest(&self, workflow: &str) {
        if let Ok(mut latest) = self.latest.lock() {
            latest.remove(workflow);
        }
    }

    /// How often [`Engine::wait_for_end`] reads the saga again when no end was notified
    /// (default [`DEFAULT_WAIT_FALLBACK_POLL`]): the bound on how late a waiter learns of an
    /// end it was not told about (written by another process on SQLite, or while the
    /// PostgreSQL listener was reconnecting).
    pub fn with_wait_fallback_poll(mut self, every: Duration) -> Engine {
        self.wait_poll = every.max(Duration::from_millis(10));
        self
    }

    /// The largest document [`Engine::put_document`] stores (default
    /// [`DEFAULT_MAX_DOCUMENT_SIZE`]).
    pub fn with_max_document_size(mut self, bytes: usize) -> Engine {
        self.max_document_size = bytes;
        self
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// This process's metrics.
    pub fn metrics(&self) -> &SharedMetrics {
        &self.metrics
    }

    /// The registered step kinds.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// A worker for this engine. While it runs, [`Engine::start`] on this engine (or a clone)
    /// gives it each new saga it has a free slot and every step kind for, in the insert's own
    /// commit (PostgreSQL), and hands it over in-process: the first step starts without the
    /// NOTIFY, the wake-up and the claim a worker in another process needs.
    pub fn worker(&self, config: WorkerConfig) -> Worker {
        Worker::new(self.clone(), config)
    }

    /// Validates a definition against the registered kinds and stores it (versioned by
    /// name + version + content hash; the same content again is a no-op).
    #[instrument(skip_all, fields(workflow = %def.name, version = def.version))]
    pub async fn submit_definition(&self, def: &Definition) -> Result<DefinitionRecord, Error> {
        def.compile(&|k| self.registry.traits(k), &self.registry.names())?;
        let record = self.store.put_definition(def).await?;
        self.forget_latest(&def.name);
        info!(hash = %record.content_hash, "definition stored");
        Ok(record)
    }

    /// Starts the latest version of `workflow` (idempotent on `idempotency_key`).
    pub async fn start(
        &self,
        workflow: &str,
        input: Value,
        idempotency_key: Option<&str>,
    ) -> Result<Started, Error> {
        self.start_with(StartRequest {
            workflow: workflow.to_string(),
            version: None,
            input,
            idempotency_key: idempotency_key.map(str::to_string),
            actor: "api".to_string(),
        })
        .await
    }

    /// Starts a saga. The input is checked against every step's parameters first; a bad
    /// input is refused with the step and field named, and nothing is stored.
    ///
    /// The latest version of a workflow is remembered by this engine (no look-up per start);
    /// the insert itself refuses it once a newer version is stored, and the start is then
    /// made again with that one.
    #[instrument(skip_all, fields(workflow = %req.workflow))]
    pub async fn start_with(&self, req: StartRequest) -> Result<Started, Error> {
        let (saga, created) = self.start_as(req, Uuid::new_v4(), false).await?;
        Ok(Started {
            saga_id: saga.id,
            created,
        })
    }

    /// Starts a saga and waits for its end, at most `timeout`: [`Engine::start_with`] and
    /// [`Engine::wait_for_end`] in one call, and cheaper than the two. The insert marks the
    /// saga awaited (the wait's own mark is a second write), and when a worker of this
    /// process runs the saga (see [`Engine::worker`]: a worker with a free slot is handed the
    /// new saga in the insert's commit) its last commit wakes the caller at once, without the
    /// end's notification going through the database. Returns the saga as stored at its end
    /// (`completed` with its outputs, `compensated`, `cancelled`, `closed`, or
    /// `needs_operator`); [`Error::WaitTimedOut`], naming the saga, if it still moves after
    /// `timeout` (it goes on; [`Engine::wait_for_end`] waits again). An idempotency key that
    /// names an existing saga waits for that one, as [`Engine::wait_for_end`] does.
    ///
    /// ```no_run
    /// # async fn demo(engine: paysaga_runtime::Engine) -> Result<(), paysaga_runtime::Error> {
    /// let saga = engine
    ///     .start_and_wait(
    ///         paysaga_runtime::StartRequest {
    ///             workflow: "noop".into(),
    ///             version: None,
    ///             input: serde_json::json!({"delay_ms": 0}),
    ///             idempotency_key: Some("order-42".into()),
    ///             actor: "orders-api".into(),
    ///         },
    ///         std::time::Duration::from_secs(30),
    ///     )
    ///     .await?;
    /// assert_eq!(saga.status, paysaga_core::SagaStatus::Completed);
    /// # Ok(()) }
    /// ```
    #[instrument(skip_all, fields(workflow = %req.workflow))]
    pub async fn start_and_wait(
        &self,
        req: StartRequest,
        timeout: Duration,
    ) -> Result<SagaRecord, Error> {
        let deadline = tokio::time::Instant::now() + timeout;
        let id = Uuid::new_v4();
        // Subscribed before the insert: an end committed as soon as the insert is (by this
        // process's worker) is not missed. Making sure ends are heard is not waited for
        // past the caller's deadline (then only the polling finds the end).
        let mut signal = tokio::time::timeout_at(deadline, self.store.end_signal(id))
            .await
            .ok()
            .transpose()?;
        let (saga, _) = self.start_as(req, id, true).await?;
        if saga.id != id {
            // The idempotency key named another saga: wait for that one.
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            return self.wait_for_end(saga.id, left).await;
        }
        self.until_final(saga, signal.as_mut(), deadline, timeout)
            .await
    }

    /// [`Engine::start_with`] with the new saga's id and whether its caller awaits its end.
    async fn start_as(
        &self,
        req: StartRequest,
        id: Uuid,
        awaited: bool,
    ) -> Result<(SagaRecord, bool), Error> {
        let mut tries = 0;
        loop {
            match self.start_once(req.clone(), id, awaited).await {
                Err(Error::Store(paysaga_store::Error::DefinitionOutdated { .. }))
                    if tries < MAX_OUTDATED_RETRIES =>
                {
                    tries += 1;
                    self.forget_latest(&req.workflow);
                }
                other => return other,
            }
        }
    }

    async fn start_once(
        &self,
        req: StartRequest,
        id: Uuid,
        awaited: bool,
    ) -> Result<(SagaRecord, bool), Error> {
        // A retried start returns its saga (the same input, compared as values) even if a
        // newer definition version would now refuse that input: the key is looked up when the
        // input is refused, and before documents are taken (they may be the saga's already);
        // otherwise the store's insert finds the saga holding the key (one round trip less
        // on the hot path).
        let check = || async {
            self.checked_input(&req, true)
                .await
                .and_then(|(record, documents)| {
                    let concurrency = concurrency_of(&record, &req.input)?;
                    Ok((record, documents, concurrency))
                })
        };
        let remembered = req.version.is_none()
            && self
                .latest
                .lock()
                .is_ok_and(|latest| latest.contains_key(&req.workflow));
        let mut checked = check().await;
        if checked.is_err() && remembered {
            // The remembered latest version may be outdated: refuse only what the latest
            // stored version refuses.
            self.forget_latest(&req.workflow);
            checked = check().await;
        }
        let look_up_key_first = checked
            .as_ref()
            .map_or(true, |(_, documents, _)| !documents.is_empty());
        if let (Some(key), true) = (&req.idempotency_key, look_up_key_first) {
            if let Some(existing) = self.store.find_saga_by_key(&req.workflow, key).await? {
                return existing_for_key(existing, &req, key).map(|saga| (saga, false));
            }
        }
        let (record, documents, concurrency) = checked?;
        let taken = self.documents_to_take(&req, &documents).await?;
        let latest = req.version.is_none();
        let workflow = req.workflow.clone();
        let mut new = new_saga(id, &record, req, concurrency, latest);
        new.awaited = awaited;
        // Taken in the insert's own commit: a start whose insert fails leaves them free.
        new.documents = taken;
        let takes_documents = !new.documents.is_empty();
        // A worker of this process with a free slot takes the new saga in the insert's own
        // commit and runs it at once (no NOTIFY, wake-up and claim before its first step).
        let local = self.reserve_local_worker(id, &record.step_kinds);
        let created = match &local {
            Some(slot) => self.store.create_saga_for(new, slot.worker()).await,
            None => self.store.create_saga(new).await,
        };
        if let (Some(slot), Ok((saga, true))) = (local, &created) {
            slot.hand(saga.clone()).await;
        }
        let (saga, created) = match created {
            Err(e) if takes_documents => return Err(document_refusal(&workflow, e)),
            other => other?,
        };
        if created {
            // `paysaga_sagas_started_total` is counted from the database by the operator
            // gauges (crate::gauges): starts happen in processes that export no metrics.
            info!(saga_id = %saga.id, version = record.version, "saga started");
        }
        Ok((saga, created))
    }

    /// A slot of a worker running in this process for new saga `id`, if one is free and
    /// has `step_kinds`.
    fn reserve_local_worker(
        &self,
        id: Uuid,
        step_kinds: &[String],
    ) -> Option<crate::worker::LocalClaim> {
        let local = self.local.lock().ok()?;
        local.iter().find_map(|w| w.reserve(id, step_kinds))
    }

    /// Starts a saga inside the caller's own PostgreSQL transaction, so that the
    /// application's row (e.g. its payout) and the saga commit or roll back together: nothing
    /// of the saga (row, history, documents taken, worker wake-up) is visible before the
    /// caller commits, and nothing is left if it rolls back. The input is checked as by
    /// [`Engine::start_with`]; the same idempotency key returns the existing saga (also one
    /// this transaction started). `conn` must be a connection to the database of this engine's
    /// store (a PostgreSQL store, migrated); `sqlx::Transaction<'_, Postgres>` derefs to it.
    ///
    /// ```no_run
    /// # async fn demo(engine: paysaga_runtime::Engine, pool: sqlx::PgPool) -> Result<(), Box<dyn std::error::Error>> {
    /// let mut tx = pool.begin().await?;
    /// sqlx::query("INSERT INTO payouts (id, amount) VALUES ($1, $2)")
    ///     .bind("po_42")
    ///     .bind(12_500_i64)
    ///     .execute(&mut *tx)
    ///     .await?;
    /// let started = engine
    ///     .start_in(&mut tx, paysaga_runtime::StartRequest {
    ///         workflow: "lean_payout".into(),
    ///         version: None,
    ///         input: serde_json::json!({"amount": 12_500, "currency": "AED"}),
    ///         idempotency_key: Some("po_42".into()),
    ///         actor: "payouts-api".into(),
    ///     })
    ///     .await?;
    /// tx.commit().await?; // the saga becomes visible to workers only now
    /// # let _ = started; Ok(()) }
    /// ```
    #[instrument(skip_all, fields(workflow = %req.workflow))]
    pub async fn start_in(
        &self,
        conn: &mut paysaga_store::PgConnection,
        req: StartRequest,
    ) -> Result<Started, Error> {
        if let Some(key) = &req.idempotency_key {
            if let Some(existing) =
                paysaga_store::PgStore::find_saga_by_key_in(conn, &req.workflow, key).await?
            {
                return existing_for_key(existing, &req, key).map(|saga| Started {
                    saga_id: saga.id,
                    created: false,
                });
            }
        }
        let (record, documents) = self.checked_input(&req, false).await?;
        let concurrency = concurrency_of(&record, &req.input)?;
        let workflow = req.workflow.clone();
        // Resolved just now, in the caller's transaction (documents it takes are held there
        // under this id): as before, the version read is pinned (`latest: false`).
        let mut new = new_saga(Uuid::new_v4(), &record, req, concurrency, false);
        new.documents = documents.iter().map(|(_, id)| *id).collect();
        let (saga, created) = paysaga_store::PgStore::create_saga_in(conn, new)
            .await
            .map_err(|e| document_refusal(&workflow, e))?;
        if created {
            // `paysaga_sagas_started_total` counts it from the database once committed.
            info!(saga_id = %saga.id, version = record.version, "saga started in the caller's transaction");
        }
        Ok(Started {
            saga_id: saga.id,
            created,
        })
    }

    /// Waits until saga `id` stops moving on its own, at most `timeout`, and returns it as
    /// stored then: ended (`completed` with its outputs, `compensated` or `cancelled` with
    /// the error, `closed` with the declared outcome) or `needs_operator` (parked, with the
    /// reason in `last_error`). [`Error::WaitTimedOut`] if it is still moving after
    /// `timeout` (the saga goes on; waiting again is fine); [`Error::SagaNotFound`] if there
    /// is no such saga.
    ///
    /// It wakes on the saga's end, whichever process ends it: on PostgreSQL the store's one
    /// shared LISTEN connection hears a notification sent by the end's own commit (only for
    /// sagas someone awaits: the wait marks its saga first, so sagas nobody awaits notify
    /// nothing), on SQLite the store signals ends it commits in this process
    /// ([`paysaga_store::Store::watch_end`]). Besides, it reads the saga again every
    /// [`DEFAULT_WAIT_FALLBACK_POLL`] ([`Engine::with_wait_fallback_poll`]): an end written
    /// by another SQLite process, or while the listener reconnects, is seen that late at most.
    /// Many concurrent waiters cost one connection in all, not one each.
    ///
    /// ```no_run
    /// # async fn demo(engine: paysaga_runtime::Engine) -> Result<(), paysaga_runtime::Error> {
    /// let started = engine.start("noop", serde_json::json!({"delay_ms": 0}), Some("order-42")).await?;
    /// let saga = engine.wait_for_end(started.saga_id, std::time::Duration::from_secs(30)).await?;
    /// assert_eq!(saga.status, paysaga_core::SagaStatus::Completed);
    /// println!("outputs {}", saga.outputs);
    /// # Ok(()) }
    /// ```
    pub async fn wait_for_end(&self, id: Uuid, timeout: Duration) -> Result<SagaRecord, Error> {
        let deadline = tokio::time::Instant::now() + timeout;
        // Making sure ends are heard may take a connection; never longer than the caller waits
        // (past the deadline: the saga as it is now, ended or timed out).
        let watch = match tokio::time::timeout_at(deadline, self.store.watch_end(id)).await {
            Ok(watch) => watch?.ok_or(Error::SagaNotFound(id))?,
            Err(_) => {
                let saga = self.store.saga(id).await?.ok_or(Error::SagaNotFound(id))?;
                return self.until_final(saga, None, deadline, timeout).await;
            }
        };
        let paysaga_store::EndWatch { saga, mut signal } = watch;
        self.until_final(saga, Some(&mut signal), deadline, timeout)
            .await
    }

    /// Reads `saga` again each time `signal` says it may have ended, and at least every
    /// fallback poll, until its status is final (returned) or `deadline` passes
    /// ([`Error::WaitTimedOut`], reporting `waited`).
    async fn until_final(
        &self,
        mut saga: SagaRecord,
        mut signal: Option<&mut paysaga_store::EndSignal>,
        deadline: tokio::time::Instant,
        waited: Duration,
    ) -> Result<SagaRecord, Error> {
        let id = saga.id;
        loop {
            if saga.status.is_final() {
                return Ok(saga);
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Err(Error::WaitTimedOut {
                    saga: id,
                    status: saga.observed_status(),
                    waited,
                });
            }
            let poll = (now + self.wait_poll).min(deadline);
            let changed = async {
                match signal.as_deref_mut() {
                    Some(signal) => signal.changed().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = changed => {}
                _ = tokio::time::sleep_until(poll) => {}
            }
            saga = self.store.saga(id).await?.ok_or(Error::SagaNotFound(id))?;
        }
    }

    /// The definition `req` names (the latest version from this engine's memory when
    /// `remembered` and no version is asked for; see [`Engine::start_with`]) and the
    /// documents its input references.
    async fn checked_input(
        &self,
        req: &StartRequest,
        remembered: bool,
    ) -> Result<(DefinitionRecord, Vec<(String, DocumentId)>), Error> {
        let known = match (remembered, req.version) {
            (true, None) => self
                .latest
                .lock()
                .ok()
                .and_then(|latest| latest.get(&req.workflow).cloned()),
            _ => None,
        };
        let record = match known {
            Some(record) => record,
            None => {
                let record = self
                    .store
                    .find_definition(&req.workflow, req.version)
                    .await?
                    .ok_or_else(|| Error::UnknownWorkflow {
                        workflow: req.workflow.clone(),
                        version: req.version,
                    })?;
                if req.version.is_none() {
                    if let Ok(mut latest) = self.latest.lock() {
                        latest.insert(req.workflow.clone(), record.clone());
                    }
                }
                record
            }
        };
        let loaded = self.load(record.id).await?;
        let documents = self.validate_input(&loaded, &req.input)?;
        Ok((record, documents))
    }

    /// Checks the input against every step; returns the documents the steps reference.
    pub(crate) fn validate_input(
        &self,
        loaded: &LoadedDefinition,
        input: &Value,
    ) -> Result<Vec<(String, DocumentId)>, Error> {
        let mut documents = Vec::new();
        let scope =
            json!({"input": input, "saga": {"id": Uuid::nil(), "workflow": loaded.record.name}});
        for step in &loaded.compiled.steps {
            let invalid = |reason: String| Error::InvalidInput {
                workflow: loaded.record.name.clone(),
                step: step.def.name.clone(),
                reason,
            };
            if let Some(fan) = &step.fan_out {
                // No kind: the children's inputs are checked when they start. A list read
                // from the input must be one, with unique keys.
                if fan.def.items.starts_with("$.input") {
                    fan.items(&scope).map_err(&invalid)?;
                }
                continue;
            }
            let params = match step.params.resolve_input_only(&scope) {
                Ok(params) => params,
                // A conditional step may be skipped: the input need not give what only it
                // reads (e.g. KYC documents for a customer already verified). What the input
                // gives is checked; a step that runs without it fails with the missing path.
                Err(_) if step.when.is_some() => continue,
                Err(e) => return Err(invalid(e.to_string())),
            };
            let kind = self.registry.get(&step.def.kind).ok_or_else(|| {
                invalid(format!(
                    "step kind {} is not registered in this process",
                    step.def.kind
                ))
            })?;
            if let Some(schema) = kind.schema() {
                schema.check(&params).map_err(&invalid)?;
            }
            kind.validate(&params).map_err(invalid)?;
            for doc in kind.documents(&params) {
                documents.push((step.def.name.clone(), doc));
            }
        }
        Ok(documents)
    }

    /// The documents an input references that the saga about to be inserted takes (in its
    /// insert's commit: [`paysaga_store::NewSaga::documents`]); refused (nothing stored) with
    /// the step and the document named when one is missing, deleted or another saga's. None
    /// when there is nothing to take (no documents, or the idempotency key names a saga that
    /// already holds them).
    async fn documents_to_take(
        &self,
        req: &StartRequest,
        documents: &[(String, DocumentId)],
    ) -> Result<Vec<DocumentId>, Error> {
        if documents.is_empty() {
            return Ok(Vec::new());
        }
        let refused = |step: &str, reason: String| Error::InvalidInput {
            workflow: req.workflow.clone(),
            step: step.to_string(),
            reason,
        };
        let existing = match &req.idempotency_key {
            Some(key) => self
                .store
                .list_sagas(&SagaFilter {
                    workflow: Some(req.workflow.clone()),
                    key: Some(key.clone()),
                    limit: Some(1),
                    ..Default::default()
                })
                .await?
                .into_iter()
                .next()
                .map(|s| s.id),
            None => None,
        };
        for (step, id) in documents {
            let record = self.store.document(*id).await?.ok_or_else(|| {
                refused(step, paysaga_core::DocumentError::NotFound(*id).to_string())
            })?;
            if record.content_deleted_at.is_some() {
                return Err(refused(
                    step,
                    paysaga_core::DocumentError::Deleted(*id).to_string(),
                ));
            }
            match record.saga_id {
                Some(holder) if Some(holder) == existing => {}
                // Given to a saga id that no saga has: left by a start of a version before
                // the documents were taken in the insert's own commit, that claimed them and
                // then lost its database before its insert committed. This start (the same
                // request retried, as a client does after such an error) takes them back.
                Some(holder) if self.store.saga(holder).await?.is_none() => {
                    let released = self.store.release_documents(holder).await?;
                    warn!(document = %id, orphan = %holder, released,
                          "documents were held by a start that never inserted its saga; given to this start");
                }
                Some(holder) => {
                    return Err(refused(
                        step,
                        paysaga_core::DocumentError::OtherSaga {
                            id: *id,
                            saga: holder,
                        }
                        .to_string(),
                    ))
                }
                None => {}
            }
        }
        if existing.is_some() {
            // A repeated start: `create_saga` returns that saga (or refuses another input).
            return Ok(Vec::new());
        }
        Ok(documents.iter().map(|(_, id)| *id).collect())
    }

    /// Stores a document (e.g. a KYC scan) durably in the engine's database and returns its
    /// id, which saga inputs reference as `{"document_id": "doc_..."}`; refused when larger
    /// than the limit ([`Engine::with_max_document_size`]) or when `content_type` is not a
    /// MIME type. The worker reads it from the database (no shared disk), checks its SHA-256,
    /// and deletes the content once its saga is final for the retention
    /// ([`crate::WorkerConfig::document_retention`]).
    ///
    /// ```no_run
    /// # async fn demo(engine: paysaga_runtime::Engine) -> Result<(), paysaga_runtime::Error> {
    /// let bytes = std::fs::read("passport-front.png").expect("readable");
    /// let id = engine.put_document(bytes, "image/png").await?;
    /// let input = serde_json::json!({
    ///     "documents": [{"file_category": "identity", "document_id": id}],
    ///     // customer, payout ...
    /// });
    /// engine.start("blaaiz_kyc_payout", input, Some("payout-42")).await?;
    /// # Ok(()) }
    /// ```
    #[instrument(skip_all, fields(size = content.len()))]
    pub async fn put_document(
        &self,
        content: Vec<u8>,
        content_type: &str,
    ) -> Result<DocumentId, Error> {
        if content.len() > self.max_document_size {
            return Err(Error::DocumentTooLarge {
                size: content.len(),
                limit: self.max_document_size,
            });
        }
        if !is_mime_type(content_type) {
            return Err(Error::Refused(format!(
                "content type {content_type:?} is not a MIME type (type/subtype, e.g. image/png or application/pdf)"
            )));
        }
        let doc = NewDocument {
            id: DocumentId::new(),
            content_type: content_type.to_ascii_lowercase(),
            sha256: paysaga_core::sha256_hex(&content),
            content,
        };
        let record = self.store.put_document(&doc).await?;
        info!(document = %record.id, size = record.size, sha256 = %record.sha256, "document stored");
        Ok(record.id)
    }

    /// A document's metadata (never its content).
    pub async fn document(&self, id: DocumentId) -> Result<Option<DocumentRecord>, Error> {
        Ok(self.store.document(id).await?)
    }

    /// A document's content, checked against its recorded SHA-256; `None` when there is no
    /// such document or retention deleted its content.
    pub async fn document_content(&self, id: DocumentId) -> Result<Option<Vec<u8>>, Error> {
        let Some(record) = self.store.document(id).await? else {
            return Ok(None);
        };
        let Some(content) = self.store.document_content(id).await? else {
            return Ok(None);
        };
        if paysaga_core::sha256_hex(&content) != record.sha256 {
            return Err(Error::Refused(
                paysaga_core::DocumentError::Corrupt(id).to_string(),
            ));
        }
        Ok(Some(content))
    }

    /// A saga with its history.
    pub async fn get(&self, id: Uuid) -> Result<SagaView, Error> {
        let saga = self.store.saga(id).await?.ok_or(Error::SagaNotFound(id))?;
        let history = self.store.history(id).await?;
        let def = self.store.definition(saga.definition_id).await?;
        let steps: Vec<String> = def
            .definition
            .steps
            .iter()
            .map(|s| s.name.clone())
            .collect();
        let current_step = if saga.status.is_ended() {
            None
        } else {
            steps.get(saga.step_index).cloned()
        };
        let references = self.store.saga_references(id).await?;
        let unrunnable = if saga.status.is_final() || saga.owner.is_some() {
            None
        } else {
            let current = def.definition.steps.get(saga.step_index);
            Unrunnable::of(
                &def.step_kinds,
                current.map(|s| s.kind.as_str()),
                &self.store.live_worker_kinds().await?,
            )
        };
        let queued_behind = match &saga.concurrency {
            Some(c) if saga.is_queued() => self.store.concurrency_holders(&c.key).await?,
            _ => Vec::new(),
        };
        Ok(SagaView {
            saga,
            current_step,
            steps,
            history,
            references,
            unrunnable,
            queued_behind,
        })
    }

    /// Sagas matching a filter.
    pub async fn list(&self, filter: &SagaFilter) -> Result<Vec<SagaRecord>, Error> {
        Ok(self.store.list_sagas(filter).await?)
    }

    /// Stores an event in the inbox (dedup on provider + event id) and wakes the saga
    /// waiting for it, now or when its wait begins later.
    #[instrument(skip_all, fields(provider = %event.provider, event_id = %event.event_id, event_type = %event.event_type))]
    pub async fn deliver_event(&self, event: IncomingEvent) -> Result<Delivery, Error> {
        let provider = event.provider.clone();
        let delivery = self
            .store
            .deliver_event(NewEvent {
                provider: event.provider,
                event_id: event.event_id,
                event_type: Some(event.event_type),
                correlation_key: event.correlation_key,
                payload: Some(event.payload),
                raw_body: None,
                parse_error: None,
            })
            .await?;
        let result = match (delivery.duplicate, delivery.matched_saga) {
            (true, _) => "duplicate",
            (false, Some(_)) => "matched",
            (false, None) => "stored",
        };
        self.metrics.inbox(&provider, result);
        Ok(delivery)
    }

    /// Stores an event whose body verified but could not be parsed, for operators.
    pub async fn store_unparseable(
        &self,
        provider: &str,
        event_id: &str,
        raw_body: Vec<u8>,
        reason: &str,
    ) -> Result<Delivery, Error> {
        self.metrics.inbox(provider, "unparseable");
        Ok(self
            .store
            .deliver_event(NewEvent {
                provider: provider.to_string(),
                event_id: event_id.to_string(),
                event_type: None,
                correlation_key: None,
                payload: None,
                raw_body: Some(raw_body),
                parse_error: Some(reason.to_string()),
            })
            .await?)
    }

    /// Inbox events.
    pub async fn events(&self, filter: &EventFilter) -> Result<Vec<EventRecord>, Error> {
        Ok(self.store.list_events(filter).await?)
    }

    /// Asks for a saga to be cancelled (compensations run); works in every non-final state.
    pub async fn cancel(&self, id: Uuid, actor: &str, reason: &str) -> Result<SagaRecord, Error> {
        let r = async {
            need_reason("cancel", id, reason)?;
            let detail = self.operator_detail_with(json!({ "reason": reason }));
            Ok(self.store.request_cancel_with(id, actor, detail).await?)
        }
        .await;
        self.audit_refusal(id, actor, "cancel", reason, r).await
    }

    /// Runs the saga's current step (or poll, or compensation) now, resetting its backoff.
    pub async fn retry_now(
        &self,
        id: Uuid,
        actor: &str,
        reason: &str,
    ) -> Result<SagaRecord, Error> {
        let r = async {
            let (saga, loaded) = self.saga_and_definition(id).await?;
            let t = paysaga_core::operator::retry_now(
                &saga.state(),
                &loaded,
                reason,
                chrono::Utc::now(),
            )?;
            self.apply_operator(&saga, &t, actor).await
        }
        .await;
        self.audit_refusal(id, actor, "retry", reason, r).await
    }

    /// Resumes a saga parked for an operator (status `failed`): the step that failed (or
    /// the compensation that failed) runs again with a fresh retry budget.
    pub async fn resume(&self, id: Uuid, actor: &str, reason: &str) -> Result<SagaRecord, Error> {
        let r = self.resume_saga(id, actor, reason).await;
        self.audit_refusal(id, actor, "resume", reason, r).await
    }

    async fn resume_saga(&self, id: Uuid, actor: &str, reason: &str) -> Result<SagaRecord, Error> {
        let (saga, loaded) = self.saga_and_definition(id).await?;
        let in_compensation = self.parked_in_compensation(id).await?;
        let t = paysaga_core::operator::resume(
            &saga.state(),
            &loaded,
            in_compensation,
            reason,
            chrono::Utc::now(),
        )?;
        self.apply_operator(&saga, &t, actor).await
    }

    /// Records that `step`'s effect happened (checked by an operator at the provider) with
    /// `output`, and moves the saga to its next step.
    pub async fn skip(
        &self,
        id: Uuid,
        step: &str,
        output: Value,
        actor: &str,
        reason: &str,
    ) -> Result<SagaRecord, Error> {
        let r = async {
            let (saga, loaded) = self.saga_and_definition(id).await?;
            let t = paysaga_core::operator::skip(
                &saga.state(),
                &loaded,
                step,
                output,
                reason,
                chrono::Utc::now(),
            )?;
            self.apply_operator(&saga, &t, actor).await
        }
        .await;
        self.audit_refusal(id, actor, "skip", reason, r).await
    }

    /// Delivers an event by hand to a waiting saga (for its wait's provider and key).
    pub async fn deliver_manual(
        &self,
        id: Uuid,
        event_type: &str,
        payload: Value,
        actor: &str,
        reason: &str,
    ) -> Result<Delivery, Error> {
        let r = self
            .deliver_to_waiting(id, event_type, payload, actor, reason)
            .await;
        self.audit_refusal(id, actor, "deliver", reason, r).await
    }

    async fn deliver_to_waiting(
        &self,
        id: Uuid,
        event_type: &str,
        payload: Value,
        actor: &str,
        reason: &str,
    ) -> Result<Delivery, Error> {
        need_reason("deliver an event to", id, reason)?;
        let saga = self.store.saga(id).await?.ok_or(Error::SagaNotFound(id))?;
        let wait = match (&saga.status, &saga.wait) {
            (paysaga_core::SagaStatus::Waiting, Some(w)) => w.clone(),
            (status, _) => {
                return Err(Error::Refused(format!(
                    "cannot deliver an event to saga {id}: it is {status}, not waiting for an event"
                )))
            }
        };
        if !wait.event_types.iter().any(|t| t == event_type) {
            return Err(Error::Refused(format!(
                "saga {id} waits for {} event(s) {}, not {event_type}",
                wait.provider,
                wait.event_types.join("/")
            )));
        }
        let event_id = format!("manual:{}", Uuid::new_v4());
        let entry = paysaga_core::HistoryEntry {
            kind: HistoryKind::OperatorEvent,
            step: self.get(id).await?.current_step,
            attempt: None,
            error: None,
            detail: self.operator_detail_with(
                json!({"reason": reason, "event_id": event_id, "event_type": event_type}),
            ),
        };
        // To this saga only, with the operator's entry, in one transaction.
        let provider = wait.provider.clone();
        let delivery = self
            .store
            .deliver_to_saga(
                id,
                NewEvent {
                    provider: wait.provider,
                    event_id,
                    event_type: Some(event_type.to_string()),
                    correlation_key: Some(wait.correlation_key),
                    payload: Some(payload),
                    raw_body: None,
                    parse_error: None,
                },
                actor,
                entry,
            )
            .await?;
        self.metrics.inbox(&provider, "matched");
        Ok(delivery)
    }

    /// Matches a stored inbox event again against the waits that exist now; `fields`
    /// (type, correlation key, payload) replaces what was stored, e.g. after a re-parse.
    pub async fn replay_event(
        &self,
        inbox_id: i64,
        fields: Option<(String, String, Value)>,
        actor: &str,
        reason: &str,
    ) -> Result<Delivery, Error> {
        Ok(self
            .store
            .replay_event(inbox_id, fields, actor, reason)
            .await?)
    }

    /// Counts for operators.
    pub async fn stats(&self) -> Result<paysaga_store::Stats, Error> {
        Ok(self.store.stats().await?)
    }

    /// Whether a parked saga stopped in its unwind (its last failure was a compensation's):
    /// its current step is then the next one to undo.
    async fn parked_in_compensation(&self, id: Uuid) -> Result<bool, Error> {
        let history = self.store.history(id).await?;
        Ok(history
            .iter()
            .rev()
            .find_map(|h| match h.kind {
                HistoryKind::CompensationFailed => Some(true),
                HistoryKind::StepFailed => Some(false),
                _ => None,
            })
            .unwrap_or(false))
    }

    /// The saga and its definition for an operator action. Operator transitions need step
    /// names only, so this works in a process (e.g. the CLI) that does not register the
    /// saga's step kinds; the result is not cached with the workers' compiled definitions.
    async fn saga_and_definition(
        &self,
        id: Uuid,
    ) -> Result<(SagaRecord, CompiledDefinition), Error> {
        let saga = self.store.saga(id).await?.ok_or(Error::SagaNotFound(id))?;
        let record = self.store.definition(saga.definition_id).await?;
        let compiled = record
            .definition
            .compile(&|_| Some(paysaga_core::StepTraits::default()), &[])?;
        Ok((saga, compiled))
    }

    async fn apply_operator(
        &self,
        saga: &SagaRecord,
        t: &paysaga_core::Transition,
        actor: &str,
    ) -> Result<SagaRecord, Error> {
        self.apply_operator_with(saga, t, actor, paysaga_store::OperatorChange::default())
            .await
    }

    async fn apply_operator_with(
        &self,
        saga: &SagaRecord,
        t: &paysaga_core::Transition,
        actor: &str,
        change: paysaga_store::OperatorChange<'_>,
    ) -> Result<SagaRecord, Error> {
        let mut t = t.clone();
        for h in &mut t.history {
            h.detail = self.operator_detail_with(std::mem::take(&mut h.detail));
        }
        let record = self
            .store
            .operator_apply_with(
                paysaga_store::OperatorAction {
                    saga: saga.id,
                    expect_status: saga.status,
                    expect_step_index: saga.step_index,
                    transition: &t,
                    actor,
                },
                change,
            )
            .await?;
        info!(saga_id = %saga.id, %actor, status = %record.status, "operator action applied");
        Ok(record)
    }

    /// The compiled definition for a stored version (cached).
    pub(crate) async fn load(&self, definition_id: i64) -> Result<Arc<LoadedDefinition>, Error> {
        if let Some(hit) = self.cached(definition_id) {
            return Ok(hit);
        }
        let record = self.store.definition(definition_id).await?;
        let compiled = record
            .definition
            .compile(&|k| self.registry.traits(k), &self.registry.names())?;
        let loaded = Arc::new(LoadedDefinition { record, compiled });
        if let Ok(mut cache) = self.definitions.lock() {
            cache.insert(definition_id, loaded.clone());
        }
        Ok(loaded)
    }

    fn cached(&self, definition_id: i64) -> Option<Arc<LoadedDefinition>> {
        self.definitions
            .lock()
            .ok()
            .and_then(|c| c.get(&definition_id).cloned())
    }
}

/// `type/subtype` with optional parameters, printable ASCII, at most 255 characters.
fn is_mime_type(s: &str) -> bool {
    let essence = s.split(';').next().unwrap_or_default().trim();
    let token = |t: &str| {
        !t.is_empty()
            && t.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$&^_.+-".contains(&b))
    };
    s.len() <= 255
        && s.bytes().all(|b| (0x20..0x7f).contains(&b))
        && essence
            .split_once('/')
            .is_some_and(|(t, sub)| token(t) && token(sub))
}

/// Where the operator saw the saga (`show`, `list`): an action is refused if it moved since.
#[derive(Debug, Clone, Default)]
pub struct Expected {
    /// The status seen (as operators see it: `running` when a worker held it).
    pub status: Option<paysaga_core::ObservedStatus>,
    /// The current step seen.
    pub step: Option<String>,
}

/// `close`: end a saga with the outcome the operator declares.
#[derive(Debug, Clone)]
pub struct CloseSaga {
    /// Did the payee get the money?
    pub outcome: paysaga_core::ClosedOutcome,
    /// Undo the completed steps first (the workers run the compensations, in reverse, with
    /// their retries); the saga ends closed with the outcome when they are undone.
    pub compensate: bool,
    /// Where the operator saw it.
    pub expected: Expected,
    /// With `compensate`: the irreversible steps that acted (or may have) did not pay, or the
    /// money came back (checked at the provider); required to close as not paid after one.
    pub confirm_not_sent: bool,
}

/// `reset`: run a saga again from a step.
#[derive(Debug, Clone)]
pub struct ResetSaga {
    /// The step to run again from.
    pub step: String,
    /// RFC 7396 merge patch for the input.
    pub input_patch: Option<Value>,
    /// The irreversible steps to run again surely did not act (checked at the provider).
    pub confirm_not_sent: bool,
    /// Where the operator saw it.
    pub expected: Expected,
}

impl Expected {
    /// The "still where you saw it" check of `close` and `reset`, for callers that check before
    /// another action (the operator console): refused when the saga's observed status or
    /// current step (`current_step`, its definition's step at `step_index`) is no longer the
    /// one expected.
    pub fn check(&self, saga: &SagaRecord, current_step: Option<&str>) -> Result<(), Error> {
        Engine::check_expected(saga, current_step, self)
    }
}

/// A refusal of an operator action (an operator must see why and act differently).
fn is_refusal(e: &Error) -> bool {
    matches!(
        e,
        Error::Refusal(_)
            | Error::Refused(_)
            | Error::InvalidInput { .. }
            | Error::Store(paysaga_store::Error::Refused(_))
    )
}

fn need_reason(action: &str, id: Uuid, reason: &str) -> Result<(), Error> {
    if reason.trim().is_empty() {
        return Err(Error::Refused(format!(
            "cannot {action} saga {id}: --reason must say why (it is recorded in the saga's history with who and when)"
        )));
    }
    Ok(())
}

impl Engine {
    /// Who runs operator commands besides the actor name (e.g. `{"os_user": "alice"}`):
    /// merged into the detail of every history row an operator action of this engine writes.
    pub fn with_operator_detail(mut self, detail: serde_json::Map<String, Value>) -> Engine {
        self.operator_detail = Some(Arc::new(detail));
        self
    }

    /// `detail` (an object, or null) with the operator detail added.
    fn operator_detail_with(&self, detail: Value) -> Value {
        let mut map = match detail {
            Value::Object(m) => m,
            Value::Null => serde_json::Map::new(),
            other => {
                let mut m = serde_json::Map::new();
                m.insert("value".into(), other);
                m
            }
        };
        if let Some(extra) = &self.operator_detail {
            for (k, v) in extra.iter() {
                map.entry(k.clone()).or_insert_with(|| v.clone());
            }
        }
        Value::Object(map)
    }

    /// Records a refused operator action on an existing saga (`operator_refused`: the action,
    /// the reason given and the refusal) and returns the result unchanged.
    async fn audit_refusal<T>(
        &self,
        id: Uuid,
        actor: &str,
        action: &str,
        reason: &str,
        result: Result<T, Error>,
    ) -> Result<T, Error> {
        if let Err(e) = &result {
            if is_refusal(e) {
                let entry = paysaga_core::HistoryEntry {
                    kind: HistoryKind::OperatorRefused,
                    step: None,
                    attempt: None,
                    error: Some(e.to_string()),
                    detail: self.operator_detail_with(json!({"action": action, "reason": reason})),
                };
                if let Ok(Some(_)) = self.store.saga(id).await {
                    if let Err(write) = self.store.append_history(id, actor, &[entry]).await {
                        warn!(saga_id = %id, error = %write, "the refused action could not be recorded in history");
                    }
                }
            }
        }
        result
    }

    fn check_expected(
        saga: &SagaRecord,
        current_step: Option<&str>,
        expected: &Expected,
    ) -> Result<(), Error> {
        let status = saga.observed_status();
        let status_moved = expected.status.is_some_and(|s| s != status);
        let step_moved = expected
            .step
            .as_deref()
            .is_some_and(|s| Some(s) != current_step);
        if status_moved || step_moved {
            return Err(Error::Refused(format!(
                "saga {} is no longer where you saw it: it is now {status} at step {} (you expected {}{}); look at it again with `paysaga show {}` and act on what it shows",
                saga.id,
                current_step.unwrap_or("-"),
                expected.status.map(|s| s.to_string()).unwrap_or_else(|| "any status".into()),
                expected.step.as_deref().map(|s| format!(" at step {s}")).unwrap_or_default(),
                saga.id
            )));
        }
        Ok(())
    }

    /// Refused while a worker holds the saga: an operator acts on a saga no worker runs.
    fn check_unheld(saga: &SagaRecord, action: &str) -> Result<(), Error> {
        match saga.owner {
            Some(worker) if !saga.status.is_final() => Err(Error::Refused(format!(
                "cannot {action} saga {}: it is running (worker {worker} holds it and is running its current step); wait until it lets go (`paysaga show {}` no longer shows a lease), then act again",
                saga.id, saga.id
            ))),
            _ => Ok(()),
        }
    }

    /// Ends a saga that is not over (parked, or moving while no worker holds it) with the
    /// outcome the operator declares: status `closed`, a `saga_closed` history row, nothing
    /// undone. With `req.compensate` its completed steps are undone first: status
    /// `compensating` with the request stored (a `close_requested` row), and the unwind ends
    /// `closed` with the outcome (or at once when there is nothing to undo); this needs the
    /// saga's step kinds registered (their traits say what can be undone). Refused on ended
    /// sagas, while a worker holds the saga, when it moved since the operator saw it, and
    /// (see [`paysaga_core::operator::close`]) when an irreversible step acted.
    pub async fn close(
        &self,
        id: Uuid,
        req: &CloseSaga,
        actor: &str,
        reason: &str,
    ) -> Result<SagaRecord, Error> {
        let r = async {
            let (saga, def) = if req.compensate {
                let saga = self.store.saga(id).await?.ok_or(Error::SagaNotFound(id))?;
                let loaded = self.load(saga.definition_id).await?;
                (saga, loaded.compiled.clone())
            } else {
                self.saga_and_definition(id).await?
            };
            let current = def.steps.get(saga.step_index).map(|s| s.def.name.as_str());
            Self::check_expected(&saga, current, &req.expected)?;
            let in_compensation = req.compensate
                && saga.status == paysaga_core::SagaStatus::NeedsOperator
                && self.parked_in_compensation(id).await?;
            let now = chrono::Utc::now();
            let t = paysaga_core::operator::close(
                &saga.state(),
                &def,
                paysaga_core::operator::CloseAction {
                    outcome: req.outcome,
                    compensate: req.compensate,
                    in_compensation,
                    confirm_not_sent: req.confirm_not_sent,
                },
                reason,
                now,
            )?;
            Self::check_unheld(&saga, "close")?;
            let request = paysaga_core::CloseRequest {
                outcome: req.outcome,
                actor: actor.to_string(),
                reason: reason.to_string(),
                requested_at: now,
            };
            let closed = t.status == paysaga_core::SagaStatus::Closed;
            self.apply_operator_with(
                &saga,
                &t,
                actor,
                paysaga_store::OperatorChange {
                    closed_outcome: closed.then_some(req.outcome),
                    require_unheld: true,
                    close_request: (!closed).then_some(&request),
                    ..Default::default()
                },
            )
            .await
        }
        .await;
        self.audit_refusal(id, actor, "close", reason, r).await
    }

    /// Runs a saga again from `req.step` (at or before its current step) with a fresh attempt
    /// count, earlier outputs kept and the input patched (RFC 7396) and validated as at
    /// start; the steps run again get new idempotency keys. Refused without
    /// `confirm_not_sent` when an irreversible step to run again may already have acted.
    /// Needs the saga's step kinds registered (their traits say which steps are
    /// irreversible; validation kinds suffice).
    pub async fn reset(
        &self,
        id: Uuid,
        req: &ResetSaga,
        actor: &str,
        reason: &str,
    ) -> Result<SagaRecord, Error> {
        let r = async {
            let saga = self.store.saga(id).await?.ok_or(Error::SagaNotFound(id))?;
            let loaded = self.load(saga.definition_id).await?;
            let def = &loaded.compiled;
            let current = def.steps.get(saga.step_index).map(|s| s.def.name.as_str());
            Self::check_expected(&saga, current, &req.expected)?;
            let state = saga.state();
            let t = paysaga_core::operator::reset(
                &state,
                def,
                paysaga_core::operator::ResetRequest {
                    step: &req.step,
                    input_patch: req.input_patch.as_ref(),
                    confirm_not_sent: req.confirm_not_sent,
                },
                reason,
                chrono::Utc::now(),
            )?;
            Self::check_unheld(&saga, "reset")?;
            let input = match &req.input_patch {
                Some(patch) => {
                    let mut input = saga.input.clone();
                    paysaga_core::operator::merge_patch(&mut input, patch);
                    let documents = self.validate_input(&loaded, &input)?;
                    let ids: Vec<DocumentId> = documents.iter().map(|(_, d)| *d).collect();
                    if !ids.is_empty() {
                        self.store.claim_documents(id, &ids).await?;
                    }
                    Some(input)
                }
                None => None,
            };
            let steps = paysaga_core::operator::reset_steps(&state, def, &req.step);
            self.apply_operator_with(
                &saga,
                &t,
                actor,
                paysaga_store::OperatorChange {
                    input: input.as_ref(),
                    new_key_generation: &steps,
                    require_unheld: true,
                    ..Default::default()
                },
            )
            .await
        }
        .await;
        self.audit_refusal(id, actor, "reset", reason, r).await
    }

    /// Operator actions across sagas (refused ones included), newest first.
    pub async fn audit(
        &self,
        filter: &paysaga_store::AuditFilter,
    ) -> Result<Vec<paysaga_store::AuditRecord>, Error> {
        Ok(self.store.operator_history(filter).await?)
    }
}

/// A start whose idempotency key names `existing`: that saga when the input is the same
/// value (key order and number spelling aside), else [`paysaga_store::Error::KeyReused`].
fn existing_for_key(
    existing: SagaRecord,
    req: &StartRequest,
    key: &str,
) -> Result<SagaRecord, Error> {
    if !paysaga_store::same_input(&existing.input, &req.input) {
        return Err(paysaga_store::Error::KeyReused {
            workflow: req.workflow.clone(),
            key: key.to_string(),
            saga: existing.id,
        }
        .into());
    }
    Ok(existing)
}

/// The concurrency key of a saga of `record` with `input` (its definition's `[concurrency]`
/// table, see `paysaga_core::concurrency`): refused, with nothing stored, when the key's path
/// matches nothing (or not one string or integer) in the input.
fn concurrency_of(
    record: &DefinitionRecord,
    input: &Value,
) -> Result<Option<paysaga_store::SagaConcurrency>, Error> {
    let Some(c) = &record.definition.concurrency else {
        return Ok(None);
    };
    let key = c.key_for(&record.name, input).map_err(|reason| {
        Error::Refused(format!(
            "workflow {} version {}: {reason}; nothing was stored",
            record.name, record.version
        ))
    })?;
    Ok(Some(paysaga_store::SagaConcurrency {
        key,
        limit: c.limit,
        holds_slot: false,
    }))
}

/// The saga `req` starts as `id`, of definition `record`.
fn new_saga(
    id: Uuid,
    record: &DefinitionRecord,
    req: StartRequest,
    concurrency: Option<paysaga_store::SagaConcurrency>,
    latest: bool,
) -> NewSaga {
    NewSaga {
        id,
        definition_id: record.id,
        workflow: record.name.clone(),
        version: record.version,
        idempotency_key: req.idempotency_key,
        input: req.input,
        actor: req.actor,
        concurrency,
        trace_context: crate::trace_context::current(),
        latest,
        awaited: false,
        documents: Vec::new(),
    }
}

/// A store error of a start that takes documents: a document missing, deleted or another
/// saga's is the caller's refusal, named with the workflow; anything else as it is.
fn document_refusal(workflow: &str, e: paysaga_store::Error) -> Error {
    match e {
        paysaga_store::Error::NotFound(_) | paysaga_store::Error::Refused(_) => {
            Error::Refused(format!("workflow {workflow}: {e}"))
        }
        other => other.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::Unrunnable;

    fn kinds(k: &[&str]) -> Vec<String> {
        k.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_saga_is_unrunnable_unless_one_live_worker_has_every_kind_of_its_definition() {
        let def = kinds(&["lumanu.fund_invoice", "blaaiz.payout", "noop.sleep"]);
        let all = kinds(&["lumanu.fund_invoice", "blaaiz.payout", "noop.sleep", "x.y"]);
        assert_eq!(Unrunnable::of(&def, None, std::slice::from_ref(&all)), None);
        let none = Unrunnable::of(&def, Some("blaaiz.payout"), &[]).unwrap();
        assert_eq!(none.live_workers, 0);
        assert_eq!(none.providers, ["blaaiz", "lumanu", "noop"]);
        let no_blaaiz = kinds(&["lumanu.fund_invoice", "noop.sleep"]);
        let u = Unrunnable::of(
            &def,
            Some("blaaiz.payout"),
            std::slice::from_ref(&no_blaaiz),
        )
        .unwrap();
        assert_eq!(u.missing_kinds, ["blaaiz.payout"]);
        assert_eq!(u.providers, ["blaaiz"]);
        assert_eq!(u.step_kind.as_deref(), Some("blaaiz.payout"));
        // The current step's kind is on a worker; another step's is not.
        let u = Unrunnable::of(&def, Some("noop.sleep"), std::slice::from_ref(&no_blaaiz)).unwrap();
        assert_eq!(u.step_kind, None);
        // Every kind on some worker, none with all: still unrunnable (a worker claims only
        // sagas whose every kind it has).
        let split = Unrunnable::of(&def, None, &[no_blaaiz, kinds(&["blaaiz.payout"])]).unwrap();
        assert!(split.missing_kinds.is_empty());
        assert_eq!(split.live_workers, 2);
    }
}
