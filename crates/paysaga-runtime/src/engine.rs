//! The engine handle: submit definitions, start sagas, query them, deliver events.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use paysaga_core::{CompiledDefinition, Definition, DocumentId, HistoryKind};
use paysaga_store::{
    DefinitionRecord, Delivery, DocumentRecord, EventFilter, EventRecord, HistoryRecord,
    NewDocument, NewEvent, NewSaga, SagaFilter, SagaRecord, Store,
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
}

/// The default largest document [`Engine::put_document`] stores: 10 MiB.
pub const DEFAULT_MAX_DOCUMENT_SIZE: usize = 10 * 1024 * 1024;

impl Engine {
    /// An engine over a store with the given step kinds.
    pub fn new(store: Arc<dyn Store>, registry: Registry) -> Engine {
        Engine {
            store,
            registry: Arc::new(registry),
            metrics: Arc::new(Metrics::new()),
            definitions: Default::default(),
            max_document_size: DEFAULT_MAX_DOCUMENT_SIZE,
        }
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

    /// A worker for this engine.
    pub fn worker(&self, config: WorkerConfig) -> Worker {
        Worker::new(self.clone(), config)
    }

    /// Validates a definition against the registered kinds and stores it (versioned by
    /// name + version + content hash; the same content again is a no-op).
    #[instrument(skip_all, fields(workflow = %def.name, version = def.version))]
    pub async fn submit_definition(&self, def: &Definition) -> Result<DefinitionRecord, Error> {
        def.compile(&|k| self.registry.traits(k), &self.registry.names())?;
        let record = self.store.put_definition(def).await?;
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
    #[instrument(skip_all, fields(workflow = %req.workflow))]
    pub async fn start_with(&self, req: StartRequest) -> Result<Started, Error> {
        // The key first: a retried start returns its saga (the same input, compared as
        // values) even if a newer definition version would now refuse that input.
        if let Some(key) = &req.idempotency_key {
            if let Some(existing) = self.store.find_saga_by_key(&req.workflow, key).await? {
                if !paysaga_store::same_input(&existing.input, &req.input) {
                    return Err(paysaga_store::Error::KeyReused {
                        workflow: req.workflow,
                        key: key.clone(),
                        saga: existing.id,
                    }
                    .into());
                }
                return Ok(Started {
                    saga_id: existing.id,
                    created: false,
                });
            }
        }
        let record = self
            .store
            .find_definition(&req.workflow, req.version)
            .await?
            .ok_or_else(|| Error::UnknownWorkflow {
                workflow: req.workflow.clone(),
                version: req.version,
            })?;
        let loaded = self.load(record.id).await?;
        let documents = self.validate_input(&loaded, &req.input)?;
        let id = Uuid::new_v4();
        let claimed = self.claim_documents(&req, id, &documents).await?;
        let created = self
            .store
            .create_saga(NewSaga {
                id,
                definition_id: record.id,
                workflow: record.name.clone(),
                version: record.version,
                idempotency_key: req.idempotency_key,
                input: req.input,
                actor: req.actor,
            })
            .await;
        // Surely not inserted (the key named a saga already): give the documents back. After
        // another error the insert may have committed: they stay with the id (if no saga has
        // it, retention treats them as given to none).
        let not_inserted = matches!(&created, Ok((saga, _)) if saga.id != id)
            || matches!(&created, Err(paysaga_store::Error::KeyReused { .. }));
        if claimed && not_inserted {
            if let Err(e) = self.store.release_documents(id).await {
                warn!(error = %e, "could not give back the documents of a saga that was not inserted; they go with retention");
            }
        }
        let (saga, created) = created?;
        if created {
            // `paysaga_sagas_started_total` is counted from the database by the operator
            // gauges (crate::gauges): starts happen in processes that export no metrics.
            info!(saga_id = %saga.id, version = record.version, "saga started");
        }
        Ok(Started {
            saga_id: saga.id,
            created,
        })
    }

    /// Checks the input against every step; returns the documents the steps reference.
    fn validate_input(
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
            let params = step
                .params
                .resolve_input_only(&scope)
                .map_err(|e| invalid(e.to_string()))?;
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

    /// Gives the documents an input references to the saga about to be inserted, all or
    /// none; refused (nothing stored) with the step and the document named. `false` when
    /// there was nothing to give (no documents, or the idempotency key names a saga that
    /// already holds them).
    async fn claim_documents(
        &self,
        req: &StartRequest,
        saga: Uuid,
        documents: &[(String, DocumentId)],
    ) -> Result<bool, Error> {
        if documents.is_empty() {
            return Ok(false);
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
            return Ok(false);
        }
        let ids: Vec<DocumentId> = documents.iter().map(|(_, id)| *id).collect();
        self.store
            .claim_documents(saga, &ids)
            .await
            .map_err(|e| match e {
                paysaga_store::Error::NotFound(_) | paysaga_store::Error::Refused(_) => {
                    Error::Refused(format!("workflow {}: {e}", req.workflow))
                }
                other => other.into(),
            })?;
        Ok(true)
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
        Ok(SagaView {
            saga,
            current_step,
            steps,
            history,
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
        Ok(self.store.request_cancel(id, actor, reason).await?)
    }

    /// Runs the saga's current step (or poll, or compensation) now, resetting its backoff.
    pub async fn retry_now(
        &self,
        id: Uuid,
        actor: &str,
        reason: &str,
    ) -> Result<SagaRecord, Error> {
        let (saga, loaded) = self.saga_and_definition(id).await?;
        let t =
            paysaga_core::operator::retry_now(&saga.state(), &loaded, reason, chrono::Utc::now())?;
        self.apply_operator(&saga, &t, actor).await
    }

    /// Resumes a saga parked for an operator (status `failed`): the step that failed (or
    /// the compensation that failed) runs again with a fresh retry budget.
    pub async fn resume(&self, id: Uuid, actor: &str, reason: &str) -> Result<SagaRecord, Error> {
        let (saga, loaded) = self.saga_and_definition(id).await?;
        let history = self.store.history(id).await?;
        let in_compensation = history
            .iter()
            .rev()
            .find_map(|h| match h.kind {
                HistoryKind::CompensationFailed => Some(true),
                HistoryKind::StepFailed => Some(false),
                _ => None,
            })
            .unwrap_or(false);
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

    /// Delivers an event by hand to a waiting saga (for its wait's provider and key).
    pub async fn deliver_manual(
        &self,
        id: Uuid,
        event_type: &str,
        payload: Value,
        actor: &str,
        reason: &str,
    ) -> Result<Delivery, Error> {
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
            detail: json!({"reason": reason, "event_id": event_id, "event_type": event_type}),
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
        let record = self
            .store
            .operator_apply(paysaga_store::OperatorAction {
                saga: saga.id,
                expect_status: saga.status,
                expect_step_index: saga.step_index,
                transition: t,
                actor,
            })
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
