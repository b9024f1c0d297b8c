//! The worker: claims runnable sagas, runs their steps, commits each result under a fenced
//! lease, and wakes on LISTEN/NOTIFY with polling as a fallback.
//!
//! Leases are per worker process (one heartbeat UPDATE per worker, whatever the number of
//! sagas it holds); a saga's fencing token increases at every claim. A step result is
//! committed only while the worker's lease is live and the token unchanged.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use chrono::Utc;
use paysaga_core::{
    after_compensation, after_step, next_run, NextRun, SagaStatus, StepContext, StepOutcome,
    Transition, Wake,
};
use paysaga_store::{Commit, Committed, SagaRecord, WorkerInfo};
use serde_json::{json, Value};
use tokio::sync::{Notify, Semaphore};
use tokio::task::JoinSet;
use tracing::{debug, error, info, info_span, warn, Instrument};
use uuid::Uuid;

use crate::effect::StoreEffectGuard;
use crate::engine::LoadedDefinition;
use crate::lease::LeaseClock;
use crate::{Engine, Error};

/// Worker settings.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// A label for operators (the lease owner id is unique per process start).
    pub name: String,
    /// Steps run at once.
    pub concurrency: usize,
    /// Lease length; heartbeats renew it every third of it.
    pub lease_ttl: Duration,
    /// Longest sleep without a notification (polling fallback).
    pub idle_poll: Duration,
    /// How often expired leases of other workers are released.
    pub reap_every: Duration,
    /// Time in-flight steps get to finish after a shutdown signal.
    pub shutdown_grace: Duration,
    /// How long a request whose effect the provider cannot deduplicate may still land after
    /// it was marked (see [`paysaga_core::StepContext::begin_effect`]): no other attempt sends
    /// it again before. At least half the lease plus the provider request timeout plus a
    /// margin; every worker of a deployment uses the same.
    pub effect_window: Duration,
    /// How long a saga's documents keep their content after the saga reached a final status
    /// (documents given to no saga keep it this long, and at least a day, after they were
    /// stored). The worker deletes expired content in batches, checking every minute (or
    /// every `document_retention`, if shorter).
    pub document_retention: Duration,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        WorkerConfig {
            name: "worker".to_string(),
            concurrency: 16,
            lease_ttl: Duration::from_secs(30),
            idle_poll: Duration::from_secs(5),
            reap_every: Duration::from_secs(1),
            shutdown_grace: Duration::from_secs(30),
            effect_window: Duration::from_secs(60),
            document_retention: Duration::from_secs(7 * 24 * 3600),
        }
    }
}

/// Counters a worker keeps (exposed on `/metrics` by the binary).
#[derive(Debug, Default)]
pub struct WorkerStats {
    /// Sagas claimed.
    pub claimed: AtomicU64,
    /// Step runs (forward and compensation).
    pub steps_run: AtomicU64,
    /// Commits that failed because the lease was lost.
    pub lease_lost: AtomicU64,
    /// Sagas that reached a final status on this worker.
    pub finished: AtomicU64,
    /// Leases of dead workers released by this worker.
    pub takeovers: AtomicU64,
}

/// A worker bound to an engine. Run it with [`Worker::run`].
#[derive(Debug)]
pub struct Worker {
    engine: Engine,
    config: WorkerConfig,
    stats: Arc<WorkerStats>,
}

struct Shared {
    engine: Engine,
    config: WorkerConfig,
    kinds: Vec<String>,
    worker_id: Mutex<Uuid>,
    stopping: AtomicBool,
    wake: Notify,
    stats: Arc<WorkerStats>,
    /// Sagas whose result could not be committed (database unreachable): given back as soon
    /// as the database answers again, so they do not stay held by a live worker.
    to_release: Mutex<Vec<(Uuid, Uuid, i64)>>,
    /// This process's view of its lease.
    lease: Arc<LeaseClock>,
}

impl Shared {
    fn id(&self) -> Uuid {
        self.worker_id.lock().map(|g| *g).unwrap_or_default()
    }

    /// Gives the saga back (as soon as the database answers) instead of running it.
    fn give_back(&self, saga: &SagaRecord, worker: Uuid) {
        if let Ok(mut list) = self.to_release.lock() {
            list.push((saga.id, worker, saga.fence));
        }
    }
}

impl Worker {
    pub(crate) fn new(engine: Engine, config: WorkerConfig) -> Worker {
        Worker {
            engine,
            config,
            stats: Arc::default(),
        }
    }

    /// The worker's counters.
    pub fn stats(&self) -> Arc<WorkerStats> {
        self.stats.clone()
    }

    /// Runs until `shutdown` completes, then stops claiming, gives in-flight steps the
    /// grace period, releases every lease and returns.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send) -> Result<(), Error> {
        let kinds = self.engine.registry.names();
        let shared = Arc::new(Shared {
            engine: self.engine.clone(),
            config: self.config.clone(),
            kinds: kinds.clone(),
            worker_id: Mutex::new(Uuid::nil()),
            stopping: AtomicBool::new(false),
            wake: Notify::new(),
            stats: self.stats.clone(),
            to_release: Mutex::new(Vec::new()),
            lease: Arc::new(LeaseClock::new(self.config.lease_ttl)),
        });
        register(&shared).await?;
        for group in self.engine.store.sagas_needing_other_kinds(&kinds).await? {
            warn!(
                workflow = %group.workflow, version = group.version, sagas = group.sagas,
                missing = ?group.missing_kinds,
                "unfinished sagas need step kinds this worker does not have; leaving them to a worker that has them"
            );
        }
        // Aborted when this future is dropped too, so a dropped worker stops heartbeating.
        let background = AbortOnDrop(spawn_background(shared.clone()));
        let mut tasks = JoinSet::new();
        let permits = Arc::new(Semaphore::new(self.config.concurrency.max(1)));
        tokio::pin!(shutdown);
        let mut last_reap = tokio::time::Instant::now();
        let document_sweep_every = self
            .config
            .document_retention
            .clamp(self.config.reap_every, Duration::from_secs(60));
        let mut last_document_sweep = tokio::time::Instant::now()
            .checked_sub(document_sweep_every)
            .unwrap_or_else(tokio::time::Instant::now);
        loop {
            while let Some(done) = tasks.try_join_next() {
                if let Err(e) = done {
                    error!(error = %e, "saga task panicked");
                }
            }
            release_abandoned(&shared).await;
            if last_reap.elapsed() >= self.config.reap_every {
                last_reap = tokio::time::Instant::now();
                match self.engine.store.reap_expired_workers().await {
                    Ok(0) => {}
                    Ok(n) => {
                        shared.stats.takeovers.fetch_add(n, Ordering::Relaxed);
                        shared.engine.metrics.lease_takeovers.inc_by(n);
                    }
                    Err(e) => warn!(error = %e, "could not release expired leases; will retry"),
                }
            }
            if last_document_sweep.elapsed() >= document_sweep_every {
                last_document_sweep = tokio::time::Instant::now();
                delete_expired_documents(&shared).await;
            }
            let free = permits.available_permits();
            let mut claimed_all = false;
            if free > 0 {
                match self
                    .engine
                    .store
                    .claim(shared.id(), &kinds, free as i64)
                    .await
                {
                    Ok(batch) => {
                        claimed_all = batch.len() == free;
                        if !batch.is_empty() {
                            shared
                                .engine
                                .metrics
                                .claim_batch
                                .observe(batch.len() as f64);
                        }
                        shared
                            .stats
                            .claimed
                            .fetch_add(batch.len() as u64, Ordering::Relaxed);
                        for claimed in batch {
                            let Ok(permit) = permits.clone().acquire_owned().await else {
                                break;
                            };
                            let shared = shared.clone();
                            let saga = claimed.saga;
                            let span =
                                info_span!("saga", saga_id = %saga.id, workflow = %saga.workflow);
                            tasks.spawn(
                                async move {
                                    run_saga(&shared, saga).await;
                                    drop(permit);
                                    shared.wake.notify_one();
                                }
                                .instrument(span),
                            );
                        }
                    }
                    Err(e) => {
                        warn!(error = %e, "claim failed (database unreachable?); retrying in 1s");
                        tokio::select! {
                            _ = &mut shutdown => break,
                            _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                        }
                    }
                }
            }
            if claimed_all {
                continue;
            }
            let sleep_for = match self.engine.store.next_due(&kinds).await {
                Ok(Some(at)) => (at - Utc::now())
                    .to_std()
                    .unwrap_or_default()
                    .min(self.config.idle_poll),
                Ok(None) => self.config.idle_poll,
                Err(_) => Duration::from_secs(1),
            }
            .min(self.config.reap_every);
            if sleep_for.is_zero() && free == 0 {
                // Everything is busy: wait for a task to finish.
                tokio::select! {
                    _ = &mut shutdown => break,
                    _ = shared.wake.notified() => {}
                }
                continue;
            }
            tokio::select! {
                _ = &mut shutdown => break,
                _ = shared.wake.notified() => {}
                _ = tokio::time::sleep(sleep_for) => {}
            }
        }
        // Drain.
        info!(in_flight = tasks.len(), grace = ?self.config.shutdown_grace, "stopping: no new claims; draining in-flight steps");
        shared.stopping.store(true, Ordering::SeqCst);
        let drained = tokio::time::timeout(self.config.shutdown_grace, async {
            while tasks.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            warn!(aborted = tasks.len(), "grace period over: abandoning in-flight steps (their leases are released; another worker re-runs them with the same idempotency keys)");
            tasks.abort_all();
            while tasks.join_next().await.is_some() {}
        }
        drop(background);
        let released = self.engine.store.stop_worker(shared.id()).await?;
        info!(released, "worker stopped");
        Ok(())
    }
}

/// Gives back sagas whose commit failed for good.
async fn release_abandoned(shared: &Shared) {
    let pending: Vec<(Uuid, Uuid, i64)> = match shared.to_release.lock() {
        Ok(mut list) => std::mem::take(&mut *list),
        Err(_) => return,
    };
    for (saga, worker, fence) in pending {
        match shared.engine.store.release(saga, worker, fence).await {
            Ok(_) => info!(saga_id = %saga, "gave back a saga whose result could not be committed"),
            Err(e) => {
                warn!(saga_id = %saga, error = %e, "cannot give the saga back yet; retrying");
                if let Ok(mut list) = shared.to_release.lock() {
                    list.push((saga, worker, fence));
                }
            }
        }
    }
}

/// Aborts a background task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn register(shared: &Shared) -> Result<(), Error> {
    let id = Uuid::new_v4();
    let sent = std::time::Instant::now();
    let info = WorkerInfo {
        id,
        name: shared.config.name.clone(),
        hostname: std::env::var("HOSTNAME").unwrap_or_else(|_| "unknown".to_string()),
        pid: std::process::id(),
        step_kinds: shared.kinds.clone(),
    };
    shared
        .engine
        .store
        .register_worker(&info, shared.config.lease_ttl)
        .await?;
    if let Ok(mut g) = shared.worker_id.lock() {
        *g = id;
    }
    shared.lease.renewed(sent);
    info!(worker_id = %id, name = %shared.config.name, kinds = ?shared.kinds, "worker registered");
    Ok(())
}

/// Heartbeat and LISTEN tasks.
fn spawn_background(shared: Arc<Shared>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let hb = {
            let shared = shared.clone();
            async move {
                let every = shared.config.lease_ttl / 3;
                loop {
                    tokio::time::sleep(every).await;
                    let sent = std::time::Instant::now();
                    match shared
                        .engine
                        .store
                        .heartbeat(shared.id(), shared.config.lease_ttl)
                        .await
                    {
                        Ok(true) => shared.lease.renewed(sent),
                        Ok(false) => {
                            // Our lease expired (paused process, long outage): the sagas we held
                            // may already run elsewhere and our commits are refused. Start a new
                            // lease life under a new id.
                            error!(worker_id = %shared.id(), "lease lost; re-registering under a new worker id");
                            if let Err(e) = register(&shared).await {
                                warn!(error = %e, "re-registration failed; retrying");
                            }
                        }
                        Err(e) => warn!(error = %e, "heartbeat failed (database unreachable?)"),
                    }
                }
            }
        };
        let listen = {
            let shared = shared.clone();
            async move {
                loop {
                    match shared.engine.store.wakeups().await {
                        Ok(mut w) => loop {
                            match w.recv().await {
                                Ok(()) => shared.wake.notify_one(),
                                Err(e) => {
                                    warn!(error = %e, "LISTEN connection lost; reconnecting");
                                    break;
                                }
                            }
                        },
                        Err(e) => warn!(error = %e, "cannot LISTEN; polling until it works"),
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        };
        tokio::join!(hb, listen);
    })
}

/// Runs a claimed saga until it waits, backs off, finishes, or the lease is lost.
async fn run_saga(shared: &Shared, mut saga: SagaRecord) {
    let worker = shared.id();
    let mut wake_event = saga.wake_event.take();
    loop {
        let loaded = match shared.engine.load(saga.definition_id).await {
            Ok(l) => l,
            Err(e) => {
                error!(error = %e, "cannot load the saga's definition; releasing it");
                shared.give_back(&saga, worker);
                return;
            }
        };
        let now = Utc::now();
        let state = saga.state();
        let prior_status = saga.status;
        let next = next_run(&state, &loaded.compiled, wake_event.take(), now);
        let (transition, consumed) = match next {
            NextRun::Step {
                index,
                wake,
                attempt,
            } => {
                let consumed = match &wake {
                    Wake::Event(ev) => Some(ev.inbox_id),
                    _ => None,
                };
                if loaded.compiled.steps[index].traits.irreversible && !shared.lease.fresh() {
                    warn!(step = %loaded.compiled.steps[index].def.name,
                          "the lease may be about to lapse (a pause or a slow database): not starting an irreversible step; giving the saga back");
                    shared.give_back(&saga, worker);
                    return;
                }
                let outcome =
                    run_step(shared, &saga, &loaded, index, attempt, wake.clone(), false).await;
                let t = after_step(
                    &state,
                    &loaded.compiled,
                    index,
                    attempt,
                    &wake,
                    outcome,
                    Utc::now(),
                );
                (t, consumed)
            }
            NextRun::Compensate { index, attempt } => {
                let outcome = run_step(
                    shared,
                    &saga,
                    &loaded,
                    index,
                    attempt,
                    Wake::Compensate,
                    true,
                )
                .await;
                (
                    after_compensation(
                        &state,
                        &loaded.compiled,
                        index,
                        attempt,
                        outcome,
                        Utc::now(),
                    ),
                    None,
                )
            }
            NextRun::Apply(t) => (*t, None),
        };
        let committed =
            commit_with_retry(shared, &saga, worker, prior_status, consumed, &transition).await;
        let committed = match committed {
            Ok(c) => c,
            Err(Error::Store(paysaga_store::Error::LeaseLost { .. })) => {
                shared.stats.lease_lost.fetch_add(1, Ordering::Relaxed);
                shared.engine.metrics.lease_lost.inc();
                warn!(step = ?loaded.compiled.steps.get(saga.step_index).map(|s| &s.def.name),
                      "lease lost before commit: result discarded; the saga's new holder re-runs the step with the same idempotency key");
                return;
            }
            Err(e) => {
                error!(error = %e, "could not commit the step result; the saga is given back when the database answers and the step re-runs with the same idempotency key");
                if let Ok(mut list) = shared.to_release.lock() {
                    list.push((saga.id, worker, saga.fence));
                }
                return;
            }
        };
        record_transition(shared, &saga.workflow, &transition);
        if transition.status.is_final() {
            shared.stats.finished.fetch_add(1, Ordering::Relaxed);
            info!(status = %transition.status, error = ?transition.last_error, "saga finished");
        }
        if !committed.kept {
            return;
        }
        apply_locally(&mut saga, &transition, &committed);
        wake_event = committed.wake_event;
        if shared.stopping.load(Ordering::SeqCst) {
            debug!("shutting down: leaving the saga for the next holder");
            return;
        }
    }
}

fn record_transition(shared: &Shared, workflow: &str, t: &Transition) {
    use crate::metrics::{FinishLabels, WorkflowLabels};
    use paysaga_core::HistoryKind;
    let m = &shared.engine.metrics;
    let wf = || WorkflowLabels {
        workflow: workflow.to_string(),
    };
    for h in &t.history {
        match h.kind {
            HistoryKind::StepRetrying | HistoryKind::CompensationRetrying => {
                m.retries.get_or_create(&wf()).inc()
            }
            HistoryKind::StepFailed
                if h.error
                    .as_deref()
                    .is_some_and(|e| e.contains("wait deadline passed")) =>
            {
                m.waits_past_deadline.get_or_create(&wf()).inc()
            }
            _ => 0,
        };
    }
    if t.status.is_final() {
        m.sagas_finished
            .get_or_create(&FinishLabels {
                workflow: workflow.to_string(),
                status: t.status.as_str().to_string(),
            })
            .inc();
    }
}

fn apply_locally(saga: &mut SagaRecord, t: &Transition, c: &Committed) {
    saga.status = t.status;
    saga.step_index = t.step_index;
    saga.attempt = t.attempt;
    saga.step_started_at = t.step_started_at;
    saga.wait = t.wait.clone();
    saga.last_error = t.last_error.clone();
    saga.cancel_requested = c.cancel_requested;
    if let (Some((name, value)), Value::Object(map)) = (&t.output, &mut saga.outputs) {
        map.insert(name.clone(), value.clone());
    }
}

async fn commit_with_retry(
    shared: &Shared,
    saga: &SagaRecord,
    worker: Uuid,
    prior_status: SagaStatus,
    consumed_event: Option<i64>,
    transition: &Transition,
) -> Result<Committed, Error> {
    // One token for every try: a try applied whose answer was lost is not applied again.
    let token = Uuid::new_v4();
    let attempt = || async {
        shared
            .engine
            .store
            .commit(Commit {
                saga: saga.id,
                worker,
                fence: saga.fence,
                prior_status,
                consumed_event,
                transition,
                token,
            })
            .await
    };
    attempt
        .retry(
            ExponentialBuilder::default()
                .with_min_delay(Duration::from_millis(100))
                .with_max_delay(Duration::from_secs(2))
                .with_max_times(8)
                .with_jitter(),
        )
        .when(|e| matches!(e, paysaga_store::Error::Database(_)))
        .notify(|e, after| warn!(error = %e, retry_in = ?after, "commit failed; retrying"))
        .await
        .map_err(Error::from)
}

#[allow(clippy::too_many_arguments)]
async fn run_step(
    shared: &Shared,
    saga: &SagaRecord,
    loaded: &LoadedDefinition,
    index: usize,
    attempt: u32,
    wake: Wake,
    compensating: bool,
) -> StepOutcome {
    let step = &loaded.compiled.steps[index];
    let name = step.def.name.as_str();
    let span = info_span!("step", step = %name, kind = %step.def.kind, attempt, compensating);
    async move {
        let Some(kind) = shared.engine.registry.get(&step.def.kind) else {
            return StepOutcome::fail(format!(
                "step kind {} is not registered on this worker",
                step.def.kind
            ));
        };
        let scope = json!({
            "input": saga.input,
            "steps": saga.outputs,
            "saga": {"id": saga.id, "workflow": saga.workflow},
        });
        let params = match step.params.resolve(&scope) {
            Ok(p) => p,
            Err(e) => return StepOutcome::fail(format!("step {name}: {e}")),
        };
        let ctx = StepContext {
            saga_id: saga.id,
            workflow: saga.workflow.clone(),
            step: name.to_string(),
            attempt,
            wake,
            wait_state: saga.wait.as_ref().map(|w| w.state.clone()),
            output: saga.outputs.get(name).cloned(),
            now: Utc::now(),
            effects: Arc::new(StoreEffectGuard {
                store: shared.engine.store.clone(),
                lease: shared.lease.clone(),
                worker: shared.id(),
                saga: saga.id,
                fence: saga.fence,
                step: i32::try_from(index).unwrap_or(i32::MAX),
                window: shared.config.effect_window,
            }),
            documents: Arc::new(crate::documents::StoreDocuments {
                store: shared.engine.store.clone(),
            }),
        };
        shared.stats.steps_run.fetch_add(1, Ordering::Relaxed);
        let started = std::time::Instant::now();
        let run = async {
            if compensating {
                kind.compensate(&ctx, params).await
            } else {
                kind.run(&ctx, params).await
            }
        };
        let outcome = match tokio::time::timeout(step.def.timeout, run).await {
            Ok(outcome) => outcome,
            Err(_) => StepOutcome::retry(format!("attempt timed out after {:?}", step.def.timeout)),
        };
        let label = match &outcome {
            StepOutcome::Done(_) => "done",
            StepOutcome::Wait(_) => "wait",
            StepOutcome::Retry { .. } => "retry",
            StepOutcome::Fail { .. } => "fail",
        };
        shared
            .engine
            .metrics
            .step(&saga.workflow, &step.def.kind, label, started.elapsed());
        match &outcome {
            StepOutcome::Done(_) => debug!("step done"),
            StepOutcome::Wait(w) => debug!(key = %w.correlation_key, "step waits"),
            StepOutcome::Retry { error, .. } => warn!(%error, "step failed transiently"),
            StepOutcome::Fail { error } => warn!(%error, "step failed permanently"),
        }
        outcome
    }
    .instrument(span)
    .await
}

/// Deletes the content of documents whose retention is over, in batches (at most ten per
/// sweep, the rest at the next sweep); metadata and hashes stay.
async fn delete_expired_documents(shared: &Shared) {
    const BATCH: i64 = 100;
    let retention = shared.config.document_retention;
    let unclaimed_after = retention.max(Duration::from_secs(24 * 3600));
    for _ in 0..10 {
        match shared
            .engine
            .store
            .delete_expired_documents(retention, unclaimed_after, BATCH)
            .await
        {
            Ok(n) => {
                if n > 0 {
                    info!(documents = n, "document content deleted after retention");
                }
                if n < BATCH as u64 {
                    return;
                }
            }
            Err(e) => {
                warn!(error = %e, "could not delete expired document content; will retry");
                return;
            }
        }
    }
}
