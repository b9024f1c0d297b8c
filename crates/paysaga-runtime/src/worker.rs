//! The worker: claims runnable sagas, runs their steps, commits each result under a fenced
//! lease, and wakes on LISTEN/NOTIFY with polling as a fallback.
//!
//! Leases are per worker process (one heartbeat UPDATE per worker, whatever the number of
//! sagas it holds); a saga's fencing token increases at every claim. A step result is
//! committed only while the worker's lease is live and the token unchanged.

use std::collections::{HashSet, VecDeque};
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use chrono::{DateTime, Utc};
use futures::FutureExt;
use paysaga_core::{
    after_compensation, after_step, next_run, unstorable, NextRun, SagaStatus, StepContext,
    StepOutcome, Transition, Wake,
};
use paysaga_store::{Assignments, Commit, Committed, SagaRecord, Wakeup, WorkerInfo};
use serde_json::Value;
use tokio::sync::{mpsc, Notify, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tracing::{debug, error, info, info_span, warn, Instrument, Span};
use uuid::Uuid;

use crate::effect::StoreEffectGuard;
use crate::engine::LoadedDefinition;
use crate::lease::LeaseClock;
use crate::{Engine, Error};

/// Worker settings.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct WorkerConfig {
    /// A label for operators (the lease owner id is unique per process start).
    pub name: String,
    /// Steps run at once.
    pub concurrency: usize,
    /// Lease length; heartbeats renew it every third of it.
    pub lease_ttl: Duration,
    /// Longest sleep without a notification (polling fallback).
    pub idle_poll: Duration,
    /// The shortest time between two looks for expired leases of other workers. A worker
    /// does not look every `reap_every`: it looks when the next lease of another live worker
    /// expires (it learns when at each look), and at least every half `lease_ttl` (to see
    /// workers that registered meanwhile); a lease that lapsed is released within
    /// `reap_every` of its expiry.
    pub reap_every: Duration,
    /// Time in-flight steps get to finish after a shutdown signal.
    pub shutdown_grace: Duration,
    /// How long a request whose effect the provider cannot deduplicate may still land after
    /// it was marked (see [`paysaga_core::StepContext::begin_effect`]): no other attempt sends
    /// it again before. At least half the lease plus the provider request timeout plus a
    /// margin; every worker of a deployment uses the same.
    pub effect_window: Duration,
    /// A test hook: how far this process's clock is off (it reads `Utc::now()` plus this).
    /// The worker schedules with the database's clock anyway (it learns the offset at every
    /// heartbeat), so a skewed clock must change nothing; tests prove it with +/- minutes.
    pub clock_skew: chrono::TimeDelta,
    /// How long a saga's documents keep their content after the saga reached a final status
    /// (documents given to no saga keep it this long, and at least a day, after they were
    /// stored). The worker deletes expired content in batches, checking every minute (or
    /// every `document_retention`, if shorter).
    pub document_retention: Duration,
    /// The operator gauges this worker computes (when it holds their lease) and serves.
    pub gauges: crate::gauges::GaugeConfig,
    /// Automatic retention: sagas finished (completed, compensated, cancelled, closed; never parked
    /// ones) more than this long ago are deleted with their history, waits, consumed events
    /// and documents, in small batches, each its own transaction, looked at every minute; one
    /// worker prunes at a time (the store's retention lock). `None` (the default): off.
    pub retention: Option<Duration>,
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
            clock_skew: chrono::TimeDelta::zero(),
            document_retention: Duration::from_secs(7 * 24 * 3600),
            gauges: crate::gauges::GaugeConfig::default(),
            retention: None,
        }
    }
}

/// Counters a worker keeps (exposed on `/metrics` by the binary).
#[derive(Debug, Default)]
pub struct WorkerStats {
    /// Sagas claimed.
    pub claimed: AtomicU64,
    /// Claim statements run (those that found nothing included).
    pub claims: AtomicU64,
    /// Step runs (forward and compensation).
    pub steps_run: AtomicU64,
    /// Commits that failed because the lease was lost.
    pub lease_lost: AtomicU64,
    /// Sagas that reached a final status on this worker.
    pub finished: AtomicU64,
    /// Leases of dead workers released by this worker.
    pub takeovers: AtomicU64,
    /// Sagas this worker held without running them (a claim whose reply was lost), released.
    pub orphans_released: AtomicU64,
    /// Step runs that panicked (recorded as transient failures).
    pub panics: AtomicU64,
    /// Sagas parked because their results could not be stored.
    pub unstorable: AtomicU64,
    /// Commit tries that failed and were retried (database errors, pool time-outs).
    pub commit_retries: AtomicU64,
    /// Sagas `Engine::start` in this process inserted held by this worker and handed to it
    /// directly (no NOTIFY, no claim; counted apart from `claimed`).
    pub handed: AtomicU64,
    /// Sagas a start in another process inserted held by this worker and named on its own
    /// channel, taken with a free slot (no claim; counted apart from `claimed` and `handed`).
    pub assigned: AtomicU64,
}

/// A saga `Engine::start` inserted held by a worker of its process, with the permit (a slot
/// of the worker's concurrency) taken for it.
struct Handed {
    saga: SagaRecord,
    permit: OwnedSemaphorePermit,
}

/// A running worker of this process, as `Engine::start` sees it: it hands the worker new
/// sagas it inserted already held by it (see [`paysaga_store::Store::create_saga_for`]), so
/// their first step starts without the NOTIFY, the wake-up and the claim.
#[derive(Debug)]
pub(crate) struct LocalWorker {
    shared: Weak<Shared>,
    permits: Arc<Semaphore>,
    handoff: mpsc::UnboundedSender<Handed>,
}

impl LocalWorker {
    /// Reserves a slot of this worker for saga `id` about to be inserted, if the worker runs,
    /// is not stopping, has a free slot and has every step kind of the saga's definition.
    /// The id is marked running at once, so the worker's look for orphans (sagas it holds
    /// but runs no task for) does not give it back between the insert and the hand-off.
    pub(crate) fn reserve(&self, id: Uuid, step_kinds: &[String]) -> Option<LocalClaim> {
        let shared = self.shared.upgrade()?;
        if shared.stopping.load(Ordering::SeqCst)
            || !step_kinds.iter().all(|k| shared.kinds.contains(k))
        {
            return None;
        }
        let permit = self.permits.clone().try_acquire_owned().ok()?;
        let worker = shared.id();
        if worker.is_nil() {
            return None;
        }
        shared.running.lock().ok()?.insert(id);
        Some(LocalClaim {
            worker,
            saga: id,
            shared,
            permit: Some(permit),
            handoff: self.handoff.clone(),
        })
    }
}

/// A slot of a local worker reserved for one saga `Engine::start` inserts (see
/// [`LocalWorker::reserve`]). Dropped without [`LocalClaim::hand`], it frees the slot.
pub(crate) struct LocalClaim {
    worker: Uuid,
    saga: Uuid,
    shared: Arc<Shared>,
    permit: Option<OwnedSemaphorePermit>,
    handoff: mpsc::UnboundedSender<Handed>,
}

impl std::fmt::Debug for LocalClaim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalClaim")
            .field("worker", &self.worker)
            .field("saga", &self.saga)
            .finish()
    }
}

impl LocalClaim {
    /// The worker the saga is to be inserted held by.
    pub(crate) fn worker(&self) -> Uuid {
        self.worker
    }

    /// Hands `saga` (as the insert returned it) to the worker if the insert gave it to the
    /// worker; otherwise (a worker no longer live, an existing saga of the key) nothing: the
    /// insert woke the workers as for any start. A worker that stopped meanwhile gets
    /// nothing either: the saga is given back (its stop released it already if it stopped
    /// after the insert, and the fence makes a second release a no-op).
    pub(crate) async fn hand(mut self, saga: SagaRecord) {
        if saga.id != self.saga || saga.owner != Some(self.worker) {
            return;
        }
        let Some(permit) = self.permit.take() else {
            return;
        };
        let (id, fence) = (saga.id, saga.fence);
        if self.handoff.send(Handed { saga, permit }).is_ok() {
            // The worker's task for it takes it off the running set when it ends.
            self.saga = Uuid::nil();
            return;
        }
        match self
            .shared
            .engine
            .store
            .give_back(
                id,
                self.worker,
                fence,
                "handed to a worker of this process that stopped before running it",
            )
            .await
        {
            Ok(_) => {}
            Err(e) => {
                warn!(saga_id = %id, error = %e, "a new saga held by a worker that stopped could not be given back; the worker's stop or lease expiry releases it")
            }
        }
    }
}

impl Drop for LocalClaim {
    fn drop(&mut self) {
        if !self.saga.is_nil() {
            if let Ok(mut running) = self.shared.running.lock() {
                running.remove(&self.saga);
            }
        }
    }
}

/// Takes a worker off its engine's local workers when its run ends (or is dropped).
struct LocalRegistration {
    engine: Engine,
    shared: Weak<Shared>,
}

impl Drop for LocalRegistration {
    fn drop(&mut self) {
        if let Ok(mut local) = self.engine.local.lock() {
            local.retain(|w| !w.shared.ptr_eq(&self.shared));
        }
    }
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
    /// Sagas a task of this worker is running (the others it owns are orphans).
    running: Mutex<HashSet<Uuid>>,
    /// Database clock minus this process's clock, in milliseconds (learned at heartbeats).
    clock_offset_ms: AtomicI64,
    /// Runnable sagas may be waiting for a slot of this worker: a wake-up (a notification,
    /// a due time) came while every slot was taken, or the last claim filled every free
    /// slot. Cleared by a claim that found fewer sagas than it had slots for. A task whose
    /// saga finished wakes the claim loop only then: otherwise nothing it did made a saga
    /// runnable (whatever does notifies), and a claim would find nothing.
    backlog: AtomicBool,
    /// The key of this worker's own wake-up channel ([`paysaga_store::Assignments`]): a
    /// start in another process hands it new sagas there. The same under every worker id
    /// this process registers.
    listener: Uuid,
    /// How many sagas handed to this worker by starts in other processes wait for a slot: a
    /// task that ends wakes the claim loop while there are any.
    pending_assigned: AtomicUsize,
    /// Set by the LISTEN task when its connection came back: sagas handed to this worker
    /// meanwhile were not heard of, so the loop looks for sagas it holds without running them.
    relistened: AtomicBool,
}

impl Shared {
    fn id(&self) -> Uuid {
        self.worker_id.lock().map(|g| *g).unwrap_or_default()
    }

    /// This process's clock (with the test skew, if any).
    fn local_now(&self) -> DateTime<Utc> {
        Utc::now() + self.config.clock_skew
    }

    /// The database's clock as this worker knows it: every time the worker schedules (run_at,
    /// wait deadlines and polls, backoff, `max_total`) is measured with it, like leases and
    /// effect marks, whatever this machine's clock says.
    fn now(&self) -> DateTime<Utc> {
        self.local_now()
            + chrono::TimeDelta::milliseconds(self.clock_offset_ms.load(Ordering::Relaxed))
    }

    /// Learns the database clock's offset (one round trip; the answer is taken as of its
    /// middle).
    async fn sync_clock(&self) {
        let before = self.local_now();
        match self.engine.store.db_now().await {
            Ok(db) => {
                let after = self.local_now();
                let middle = before + (after - before) / 2;
                let offset = (db - middle).num_milliseconds();
                let old = self.clock_offset_ms.swap(offset, Ordering::Relaxed);
                if (offset - old).abs() > 1_000 {
                    warn!(offset_ms = offset, "this machine's clock differs from the database's; scheduling with the database's clock");
                }
            }
            Err(e) => warn!(error = %e, "cannot read the database clock; keeping the last offset"),
        }
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
            running: Mutex::new(HashSet::new()),
            clock_offset_ms: AtomicI64::new(0),
            backlog: AtomicBool::new(false),
            listener: Uuid::new_v4(),
            relistened: AtomicBool::new(false),
            pending_assigned: AtomicUsize::new(0),
        });
        let permits = Arc::new(Semaphore::new(self.config.concurrency.max(1)));
        // `Engine::start` in this process hands new sagas straight to this worker, from the
        // moment its registration is stored (a saga handed before the loop below runs waits
        // in the channel).
        let (handoff, mut handed) = mpsc::unbounded_channel::<Handed>();
        if let Ok(mut local) = self.engine.local.lock() {
            local.push(LocalWorker {
                shared: Arc::downgrade(&shared),
                permits: permits.clone(),
                handoff,
            });
        }
        let registration = LocalRegistration {
            engine: self.engine.clone(),
            shared: Arc::downgrade(&shared),
        };
        // Listening before the registration makes the worker a candidate for sagas handed
        // by other processes: none is sent before it hears them.
        let (assigned_tx, mut assigned) = mpsc::unbounded_channel::<Uuid>();
        let listening = match self.engine.store.worker_wakeups(shared.listener).await {
            Ok(w) => Some(w),
            Err(e) => {
                warn!(error = %e, "cannot LISTEN yet; polling until it works");
                None
            }
        };
        register(&shared).await?;
        shared.sync_clock().await;
        for group in self.engine.store.sagas_needing_other_kinds(&kinds).await? {
            warn!(
                workflow = %group.workflow, version = group.version, sagas = group.sagas,
                missing = ?group.missing_kinds,
                "unfinished sagas need step kinds this worker does not have; leaving them to a worker that has them"
            );
        }
        // Aborted when this future is dropped too, so a dropped worker stops heartbeating.
        let background = AbortOnDrop(spawn_background(shared.clone(), listening, assigned_tx));
        let _gauges = AbortOnDrop(crate::gauges::spawn(
            self.engine.clone(),
            self.config.gauges.clone(),
        ));
        let mut tasks = JoinSet::new();
        tokio::pin!(shutdown);
        // Periodic work runs when due, not every second: an idle worker costs the database
        // a look for work every `idle_poll`, a heartbeat every third of the lease, and a few
        // index-backed statements per lease (docs/PERFORMANCE.md, "Idle cost").
        let start = tokio::time::Instant::now();
        let orphan_check_every = self.config.lease_ttl;
        let mut next_reap = start;
        let mut next_orphan_check = start + orphan_check_every;
        let document_sweep_every = self
            .config
            .document_retention
            .clamp(self.config.reap_every, Duration::from_secs(60));
        let mut next_document_sweep = start;
        // Claim after a notification (or a task's end) or when the known next due time came;
        // else only ask when the next saga is due, `idle_poll` after the last look (the
        // fallback for a notification this worker missed: a due saga found then is claimed at
        // once).
        let mut woken = true;
        // Sagas starts in other processes inserted held by this worker, waiting for a slot
        // (the start counted one free, but the slot is taken for a claim's round trip or by a
        // task about to end). They run before anything is claimed.
        let mut pending: VecDeque<Uuid> = VecDeque::new();
        let mut known_due: Option<DateTime<Utc>> = None;
        let mut last_look = start;
        let mut look_every = self.config.idle_poll;
        loop {
            while let Some(done) = tasks.try_join_next() {
                if let Err(e) = done {
                    error!(error = %e, "saga task panicked");
                }
            }
            release_abandoned(&shared).await;
            if shared.relistened.swap(false, Ordering::SeqCst) {
                // Sagas handed to this worker while it did not listen are held and not run.
                next_orphan_check = tokio::time::Instant::now();
            }
            // No claim is in flight here (claims run in this loop): a saga the store says we
            // own that no task runs was claimed by a claim whose reply was lost.
            if tokio::time::Instant::now() >= next_orphan_check {
                let checked = release_orphans(&shared).await;
                next_orphan_check = tokio::time::Instant::now()
                    + if checked {
                        orphan_check_every
                    } else {
                        self.config.reap_every
                    };
            }
            if tokio::time::Instant::now() >= next_reap {
                next_reap = tokio::time::Instant::now() + reap(&shared).await;
            }
            if tokio::time::Instant::now() >= next_document_sweep {
                next_document_sweep = tokio::time::Instant::now() + document_sweep_every;
                delete_expired_documents(&shared).await;
            }
            while !pending.is_empty() {
                let Ok(permit) = permits.clone().try_acquire_owned() else {
                    break;
                };
                if let Some(saga) = pending.pop_front() {
                    shared.stats.assigned.fetch_add(1, Ordering::Relaxed);
                    shared.engine.metrics.sagas_assigned.inc();
                    spawn_saga(&mut tasks, &shared, Taken::Assigned(saga), permit);
                }
            }
            // Many more than its slots: starts raced for its last ones. The newest go back
            // to be claimed by a worker with a free slot.
            while pending.len() > self.config.concurrency.max(1) {
                if let Some(saga) = pending.pop_back() {
                    give_back_assigned(&mut tasks, &shared, saga);
                }
            }
            shared
                .pending_assigned
                .store(pending.len(), Ordering::SeqCst);
            let claim_now =
                std::mem::take(&mut woken) || known_due.is_some_and(|at| at <= shared.now());
            let free = permits.available_permits();
            // With every slot taken nothing could be claimed: when the next saga is due can
            // wait until a task ends (it wakes this loop). Under load this is the pass right
            // after a claim that filled the last slots, one statement per claim otherwise.
            let look = (claim_now && free > 0) || last_look.elapsed() >= look_every;
            let mut claimed_all = false;
            // The slots are taken before the claim: a start handing a saga to this worker
            // meanwhile cannot leave a claimed saga held while it waits for a slot.
            let slots = if claim_now && free > 0 {
                permits.clone().try_acquire_many_owned(free as u32).ok()
            } else {
                None
            };
            if claim_now && free > 0 && slots.is_none() {
                // A start took a slot since `free` was read: count again.
                woken = true;
                continue;
            }
            if claim_now && free == 0 {
                // Claimed when a task ends. Counted again after the mark: a task that freed
                // its slot before the mark was seen may not have woken this loop.
                shared.backlog.store(true, Ordering::SeqCst);
                if permits.available_permits() > 0 {
                    woken = true;
                    continue;
                }
            }
            if let Some(mut slots) = slots {
                shared.stats.claims.fetch_add(1, Ordering::Relaxed);
                match self
                    .engine
                    .store
                    .claim(shared.id(), &kinds, free as i64)
                    .await
                {
                    Ok(batch) => {
                        claimed_all = batch.len() == free;
                        shared.backlog.store(claimed_all, Ordering::SeqCst);
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
                            // Handed to this worker, given back by a look for orphans before
                            // its notification came, and claimed now: the claim's task runs it,
                            // not the hand-off's as well.
                            pending.retain(|handed| *handed != claimed.saga.id);
                            // At most `free` sagas come back, one slot each.
                            let Some(permit) = slots.split(1) else {
                                shared.give_back(&claimed.saga, shared.id());
                                continue;
                            };
                            spawn_saga(
                                &mut tasks,
                                &shared,
                                Taken::Record(Box::new(claimed.saga)),
                                permit,
                            );
                        }
                    }
                    Err(e) => {
                        // The claim may have committed with its reply lost: look for sagas
                        // held without running them as soon as the database answers.
                        next_orphan_check = tokio::time::Instant::now();
                        warn!(error = %e, "claim failed (database unreachable?); retrying in 1s");
                        tokio::select! {
                            _ = &mut shutdown => break,
                            _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                        }
                    }
                }
            }
            if claimed_all {
                woken = true;
                continue;
            }
            if look {
                last_look = tokio::time::Instant::now();
                match self.engine.store.next_due(&kinds).await {
                    Ok(due) => {
                        known_due = due;
                        look_every = self.config.idle_poll;
                    }
                    Err(_) => {
                        known_due = None;
                        look_every = self.config.idle_poll.min(Duration::from_secs(1));
                    }
                }
            }
            let until_due = known_due
                .map(|at| (at - shared.now()).to_std().unwrap_or_default())
                .unwrap_or(Duration::MAX);
            let periodic = next_reap.min(next_orphan_check).min(next_document_sweep);
            let sleep_for = until_due
                .min(look_every.saturating_sub(last_look.elapsed()))
                .min(periodic.saturating_duration_since(tokio::time::Instant::now()));
            // A saga handed over by `Engine::start` comes with its slot: run it at once.
            let busy = until_due.is_zero() && free == 0;
            tokio::select! {
                _ = &mut shutdown => break,
                _ = shared.wake.notified() => woken = true,
                Some(h) = handed.recv() => {
                    shared.stats.handed.fetch_add(1, Ordering::Relaxed);
                    spawn_saga(&mut tasks, &shared, Taken::Record(Box::new(h.saga)), h.permit);
                }
                Some(saga) = assigned.recv() => {
                    // Marked before the slot is looked for (at the loop's top): a task ending
                    // after the mark wakes the loop, one ending before it freed the slot.
                    // Held and about to run: not an orphan for the look for those.
                    let fresh = shared
                        .running
                        .lock()
                        .map(|mut running| running.insert(saga))
                        .unwrap_or(true);
                    if fresh {
                        pending.push_back(saga);
                        shared.pending_assigned.store(pending.len(), Ordering::SeqCst);
                    } else {
                        // A task of this worker runs it already (a look for orphans gave it
                        // back before this notification came, and a claim took it again; or
                        // the notification came twice): a second task would run it twice.
                        debug!(saga_id = %saga, "a saga handed to this worker runs already; notification ignored");
                    }
                }
                // Everything busy: wait for a task to finish (it wakes this loop).
                _ = tokio::time::sleep(sleep_for), if !busy => {}
            }
        }
        // No new sagas from `Engine::start`; those handed but not taken are released by the
        // stop below with the others this worker holds.
        drop(registration);
        handed.close();
        assigned.close();
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
        let reason = if drained.is_err() {
            "worker stopping: grace period over, the attempt in flight (if any) was aborted; the step runs again with the same idempotency key"
        } else {
            "worker stopping"
        };
        // The database may have restarted as the signal came (its crash, a deploy of both):
        // the pool's connections used in the last seconds are not pinged, so the stop may
        // meet a dead one. It is tried again for up to 10 s (each failure closes a dead
        // connection; it writes the same whatever the number of tries), within the 15 s
        // systemd allows beyond the grace. Unrecorded, the sagas held here would wait for the
        // lease to expire.
        let stop = || async {
            self.engine
                .store
                .stop_worker_because(shared.id(), reason)
                .await
        };
        let released = stop
            .retry(
                ExponentialBuilder::default()
                    .with_min_delay(Duration::from_millis(100))
                    .with_max_delay(Duration::from_secs(2))
                    .without_max_times()
                    .with_total_delay(Some(Duration::from_secs(10)))
                    .with_jitter(),
            )
            .when(|e| matches!(e, paysaga_store::Error::Database(_)))
            .notify(|e, after| {
                warn!(error = %e, retry_in = ?after, "could not record the stop; retrying")
            })
            .await
            .inspect_err(|e| {
                error!(error = %e, lease_ttl = ?self.config.lease_ttl,
                    "could not record the stop: the sagas this worker holds are released when its lease expires")
            })?;
        info!(released, "worker stopped");
        Ok(())
    }
}

/// A saga a worker took: as the claim or the insert returned it, or only its id (a start in
/// another process inserted it held by this worker and named it on the worker's channel).
enum Taken {
    Record(Box<SagaRecord>),
    Assigned(Uuid),
}

/// Gives back a saga a start in another process inserted held by this worker (fence 1, the
/// insert's) without running it, so that a worker with a free slot claims it.
fn give_back_assigned(tasks: &mut JoinSet<()>, shared: &Arc<Shared>, saga: Uuid) {
    let (shared, worker) = (shared.clone(), shared.id());
    tasks.spawn(async move {
        let reason = "handed to a worker whose slots were all taken; a worker with a free slot claims it";
        let given = shared.engine.store.give_back(saga, worker, 1, reason).await;
        if let Ok(mut running) = shared.running.lock() {
            running.remove(&saga);
        }
        match given {
            Ok(_) => info!(saga_id = %saga, "more sagas were handed to this worker than it has slots; gave one back for another worker to claim"),
            Err(e) => {
                warn!(saga_id = %saga, error = %e, "cannot give back a saga handed to this worker beyond its slots; retrying");
                if let Ok(mut list) = shared.to_release.lock() {
                    list.push((saga, worker, 1));
                }
            }
        }
    });
}

/// Runs `saga` (claimed, handed by `Engine::start` in this process, or inserted held by this
/// worker by a start in another process) in a task of its own holding `permit` until it
/// waits, backs off, finishes or the lease is lost.
fn spawn_saga(
    tasks: &mut JoinSet<()>,
    shared: &Arc<Shared>,
    saga: Taken,
    permit: OwnedSemaphorePermit,
) {
    let shared = shared.clone();
    let (id, record_span) = match &saga {
        Taken::Record(saga) => {
            let span = info_span!("saga", saga_id = %saga.id, workflow = %saga.workflow);
            // Its steps join the trace of its start (feature `otel`).
            crate::trace_context::continue_in(&span, saga.trace_context.as_deref());
            (saga.id, Some(span))
        }
        Taken::Assigned(id) => (*id, None),
    };
    // Marked running before anything else: the look for orphans (sagas held without a task)
    // must not give it back.
    if let Ok(mut running) = shared.running.lock() {
        running.insert(id);
    }
    tasks.spawn(async move {
        let worker = shared.id();
        let (saga, span) = match saga {
            Taken::Record(saga) => (Some(*saga), record_span.unwrap_or_else(Span::none)),
            Taken::Assigned(id) => {
                // Read before its span is made: a span joins the trace of the saga's start
                // only if its parent is set before it is first entered.
                let saga = assigned_saga(&shared, id, worker).await;
                let workflow = saga.as_ref().map_or("", |s| s.workflow.as_str());
                let span = info_span!("saga", saga_id = %id, workflow = %workflow);
                if let Some(saga) = &saga {
                    crate::trace_context::continue_in(&span, saga.trace_context.as_deref());
                }
                (saga, span)
            }
        };
        let finished = async {
            match saga {
                Some(saga) => {
                    let fence = saga.fence;
                    let run = AssertUnwindSafe(run_saga(&shared, saga));
                    match run.catch_unwind().await {
                        Ok(finished) => finished,
                        Err(panic) => {
                            // Outside a step (a step's panic is caught in run_step): give the
                            // saga back rather than hold it.
                            error!(panic = %panic_message(&*panic), "saga task panicked; giving the saga back");
                            if let Ok(mut list) = shared.to_release.lock() {
                                list.push((id, worker, fence));
                            }
                            false
                        }
                    }
                }
                None => false,
            }
        }
        .instrument(span)
        .await;
        if let Ok(mut running) = shared.running.lock() {
            running.remove(&id);
        }
        drop(permit);
        // A saga given back, waiting or retrying later: the loop claims (the slot) and
        // learns its due time. A finished saga made nothing runnable: the loop is woken
        // only if sagas may wait for the slot (see `Shared::backlog`).
        if !finished
            || shared.backlog.load(Ordering::SeqCst)
            || shared.pending_assigned.load(Ordering::SeqCst) > 0
        {
            shared.wake.notify_one();
        }
    });
}

/// Saga `id`, handed to this worker by a start in another process, as stored: `None` if it
/// is no longer as the hand-off left it (held by this worker with fence 1: a look for orphans
/// gave it back before the notification came, and it may have been claimed since, by this
/// worker too, whose claim's task runs it) or it cannot be read (then it is given back when
/// the database answers).
async fn assigned_saga(shared: &Shared, id: Uuid, worker: Uuid) -> Option<SagaRecord> {
    match shared.engine.store.saga(id).await {
        Ok(Some(saga))
            if saga.owner == Some(worker) && saga.fence == 1 && !saga.status.is_final() =>
        {
            Some(saga)
        }
        Ok(_) => {
            debug!(saga_id = %id, "a saga handed to this worker is no longer as the hand-off left it; nothing to run");
            None
        }
        Err(e) => {
            warn!(saga_id = %id, error = %e, "cannot read a saga handed to this worker; giving it back when the database answers");
            if let Ok(mut list) = shared.to_release.lock() {
                list.push((id, worker, 1));
            }
            None
        }
    }
}

/// Gives back sagas whose commit failed for good.
async fn release_abandoned(shared: &Shared) {
    let pending: Vec<(Uuid, Uuid, i64)> = match shared.to_release.lock() {
        Ok(mut list) => std::mem::take(&mut *list),
        Err(_) => return,
    };
    for (saga, worker, fence) in pending {
        let reason = "given back without a result: its step was not started (lease doubt, definition not loadable) or its result could not be committed; the step runs again with the same idempotency key";
        match shared
            .engine
            .store
            .give_back(saga, worker, fence, reason)
            .await
        {
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

/// A margin after a lease's expiry before looking (the reaper releases leases that expired
/// strictly before the database's `now()`, and this process knows that clock to a few ms).
const REAP_MARGIN: Duration = Duration::from_millis(50);

/// Releases the sagas of workers whose lease expired; returns how long until the next look:
/// just after the next lease of another live worker expires, within `reap_every` and half
/// the lease (a worker that registers later expires at the earliest a lease after it
/// registered, so a look every half lease sees it before it can expire).
async fn reap(shared: &Shared) -> Duration {
    let every = shared.config.reap_every;
    let longest = (shared.config.lease_ttl / 2).max(every);
    match shared.engine.store.reap_expired_leases(shared.id()).await {
        Ok(reaped) => {
            if reaped.sagas > 0 {
                shared
                    .stats
                    .takeovers
                    .fetch_add(reaped.sagas, Ordering::Relaxed);
                shared.engine.metrics.lease_takeovers.inc_by(reaped.sagas);
            }
            reaped
                .next_expiry
                .map(|at| (at - shared.now()).to_std().unwrap_or_default() + REAP_MARGIN)
                .unwrap_or(longest)
                .clamp(every, longest)
        }
        Err(e) => {
            warn!(error = %e, "could not release expired leases; will retry");
            every
        }
    }
}

/// The safety nets of work a crash can leave undone, run by the one worker that holds the
/// operator gauges' lease, at each of its turns ([`crate::gauges`]), not by every worker:
/// - per-key concurrency: slots a hand-over lost (a crash between a saga's end and the
///   hand-over) go to the queued sagas;
/// - the cancel cascade: children of a cancelled or closed parent that a crash (or a
///   grandparent's cascade) left unasked are asked to cancel.
pub(crate) async fn run_safety_nets(engine: &crate::Engine) {
    if let Err(e) = engine.store.admit_queued().await {
        warn!(error = %e, "could not give free concurrency slots to queued sagas; will retry");
    }
    match engine.store.cascade_cancels().await {
        Ok(n) if n > 0 => info!(
            children = n,
            "children of an unwinding or ended parent asked to cancel"
        ),
        Ok(_) => {}
        Err(e) => warn!(error = %e, "could not cascade cancels to children; will retry"),
    }
}

/// Releases (fenced) the sagas the store says this worker holds but no task of it runs: the
/// claim that took them committed but its reply never arrived (connection lost), so nothing
/// would run them before this worker stops. `false` when the store could not be asked.
async fn release_orphans(shared: &Shared) -> bool {
    let worker = shared.id();
    let owned = match shared.engine.store.owned_sagas(worker).await {
        Ok(owned) => owned,
        Err(e) => {
            warn!(error = %e, "cannot list the sagas this worker holds; checking again later");
            return false;
        }
    };
    let orphans: Vec<(Uuid, i64)> = match shared.running.lock() {
        Ok(running) => owned
            .into_iter()
            .filter(|(id, _)| !running.contains(id))
            .collect(),
        Err(_) => return false,
    };
    for (saga, fence) in orphans {
        match shared
            .engine
            .store
            .give_back(
                saga,
                worker,
                fence,
                "lost claim: held by this worker without running it",
            )
            .await
        {
            Ok(true) => {
                shared
                    .stats
                    .orphans_released
                    .fetch_add(1, Ordering::Relaxed);
                warn!(saga_id = %saga, "released a saga this worker held without running it (a claim whose reply was lost)");
            }
            Ok(false) => {}
            Err(e) => {
                warn!(saga_id = %saga, error = %e, "cannot release a saga held without running it; retrying later")
            }
        }
    }
    true
}

/// The text of a panic's payload.
fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic without a message".to_string()
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
        assignments: Some(Assignments {
            concurrency: u32::try_from(shared.config.concurrency.max(1)).unwrap_or(u32::MAX),
            listener: shared.listener,
        }),
    };
    // The id first: a start that reads it before the row is stored only finds the worker
    // not live (and wakes workers instead of handing it the saga); one that finds the row
    // finds the id too.
    if let Ok(mut g) = shared.worker_id.lock() {
        *g = id;
    }
    shared
        .engine
        .store
        .register_worker(&info, shared.config.lease_ttl)
        .await?;
    shared.lease.renewed(sent);
    info!(worker_id = %id, name = %shared.config.name, kinds = ?shared.kinds, "worker registered");
    Ok(())
}

/// Heartbeat and LISTEN tasks. `listening`: the LISTEN connection made before the worker
/// registered, if it could be made; sagas handed to this worker go to `assigned`.
fn spawn_background(
    shared: Arc<Shared>,
    listening: Option<paysaga_store::WakeupsBox>,
    assigned: mpsc::UnboundedSender<Uuid>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let hb = {
            let shared = shared.clone();
            async move {
                let every = shared.config.lease_ttl / 3;
                let mut beats = 0_u32;
                loop {
                    tokio::time::sleep(every).await;
                    let sent = std::time::Instant::now();
                    match shared
                        .engine
                        .store
                        .heartbeat(shared.id(), shared.config.lease_ttl)
                        .await
                    {
                        Ok(true) => {
                            shared.lease.renewed(sent);
                            // The clock offset moves slowly: learn it again every lease.
                            beats = beats.wrapping_add(1);
                            if beats.is_multiple_of(3) {
                                shared.sync_clock().await;
                            }
                        }
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
                let mut listening = listening;
                loop {
                    let connected = match listening.take() {
                        Some(w) => Ok(w),
                        None => {
                            let connected =
                                shared.engine.store.worker_wakeups(shared.listener).await;
                            if connected.is_ok() {
                                // Not listening until now: sagas handed meanwhile went unheard.
                                shared.relistened.store(true, Ordering::SeqCst);
                                shared.wake.notify_one();
                            }
                            connected
                        }
                    };
                    match connected {
                        Ok(mut w) => loop {
                            match w.next().await {
                                Ok(Wakeup::Runnable) => shared.wake.notify_one(),
                                Ok(Wakeup::Assigned { saga }) => {
                                    if assigned.send(saga).is_err() {
                                        // The loop ended: the stop releases the saga.
                                        return;
                                    }
                                }
                                Ok(Wakeup::Reconnected) => {
                                    warn!("LISTEN connection lost and back; looking for sagas handed to this worker meanwhile");
                                    shared.relistened.store(true, Ordering::SeqCst);
                                    shared.wake.notify_one();
                                }
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
        let retention = {
            let shared = shared.clone();
            async move {
                if let Some(older_than) = shared.config.retention {
                    prune_finished(&shared, older_than).await;
                }
            }
        };
        tokio::join!(hb, listen, retention);
    })
}

/// Runs a claimed saga until it waits, backs off, finishes, or the lease is lost.
/// Runs `saga`'s steps while this worker keeps it; true if its last commit ended it for
/// good (a final status).
async fn run_saga(shared: &Shared, mut saga: SagaRecord) -> bool {
    let worker = shared.id();
    let mut wake_event = saga.wake_event.take();
    loop {
        let loaded = match shared.engine.load(saga.definition_id).await {
            Ok(l) => l,
            Err(e) => {
                error!(error = %e, "cannot load the saga's definition; releasing it");
                shared.give_back(&saga, worker);
                return false;
            }
        };
        let now = shared.now();
        let state = saga.state();
        let prior_status = saga.status;
        let scope = serde_json::json!({
            "input": saga.input,
            "steps": saga.outputs,
            "saga": {"id": saga.id, "workflow": saga.workflow},
        });
        let next = next_run(&state, &loaded.compiled, wake_event.take(), &scope, now);
        let mut references: Vec<paysaga_store::SagaReference> = Vec::new();
        let mut fan_in_ended: Option<u64> = None;
        let (transition, consumed, ran) = match next {
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
                    return false;
                }
                if loaded.compiled.steps[index].fan_out.is_some() {
                    match crate::children::run_fan_out(
                        &shared.engine,
                        &saga,
                        &loaded,
                        &state,
                        index,
                        attempt,
                        worker,
                        shared.now(),
                    )
                    .await
                    {
                        crate::children::FanOutRun::Commit { transition, ended } => {
                            fan_in_ended = ended;
                            (*transition, consumed, Some(attempt))
                        }
                        crate::children::FanOutRun::LeaseLost => {
                            warn!("lease lost while starting children: nothing started; the saga's new holder goes on");
                            return false;
                        }
                    }
                } else {
                    let outcome =
                        run_step(shared, &saga, &loaded, index, attempt, wake.clone(), false).await;
                    let t = after_step(
                        &state,
                        &loaded.compiled,
                        index,
                        attempt,
                        &wake,
                        outcome,
                        shared.now(),
                    );
                    references = step_references(shared, &loaded, index, &t);
                    (t, consumed, Some(attempt))
                }
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
                        shared.now(),
                    ),
                    None,
                    Some(attempt),
                )
            }
            NextRun::Apply(t) => (*t, None, None),
        };
        let mut transition = transition;
        make_storable(&mut transition);
        if let Err(e) = crate::children::cancel_children_if_unwinding(
            &shared.engine,
            &saga,
            &loaded,
            prior_status,
            &transition,
        )
        .await
        {
            error!(error = %e, "could not ask the children to cancel; giving the saga back to unwind later");
            shared.give_back(&saga, worker);
            return false;
        }
        let mut committed = commit_with_retry(
            shared,
            &saga,
            worker,
            prior_status,
            consumed,
            &transition,
            &references,
        )
        .await;
        if let (Err(Error::Store(e)), Some(attempt)) = (&committed, ran) {
            if e.is_unstorable() {
                // The database refuses this result for good (a constraint, a value it cannot
                // hold): park with its error, the attempt counted, instead of giving the saga
                // back to run the step (and its provider call) again and again.
                let mut park = unstorable(
                    &state,
                    &loaded.compiled,
                    attempt,
                    &e.to_string(),
                    shared.now(),
                );
                make_storable(&mut park);
                error!(error = %e, attempt, "the step's result cannot be stored; parking the saga for an operator");
                shared.stats.unstorable.fetch_add(1, Ordering::Relaxed);
                committed =
                    commit_with_retry(shared, &saga, worker, prior_status, None, &park, &[]).await;
                transition = park;
            }
        }
        let committed = match committed {
            Ok(c) => c,
            Err(Error::Store(paysaga_store::Error::LeaseLost { .. })) => {
                shared.stats.lease_lost.fetch_add(1, Ordering::Relaxed);
                shared.engine.metrics.lease_lost.inc();
                warn!(step = ?loaded.compiled.steps.get(saga.step_index).map(|s| &s.def.name),
                      "lease lost before commit: result discarded; the saga's new holder re-runs the step with the same idempotency key");
                return false;
            }
            Err(e) => {
                error!(error = %e, "could not commit the step result; the saga is given back when the database answers and the step re-runs with the same idempotency key");
                if let Ok(mut list) = shared.to_release.lock() {
                    list.push((saga.id, worker, saga.fence));
                }
                return false;
            }
        };
        record_transition(shared, &saga.workflow, &transition);
        if let (Some(ended), Some(step)) = (
            fan_in_ended.filter(|_| transition.status == SagaStatus::Waiting),
            loaded.compiled.steps.get(transition.step_index),
        ) {
            if let Err(e) = crate::children::wake_if_ended_meanwhile(
                &shared.engine,
                saga.id,
                &step.def.name,
                ended,
            )
            .await
            {
                warn!(error = %e, "could not look for children that ended meanwhile; the fan-in looks again at its poll time");
            }
        }
        let step = loaded.compiled.steps.get(transition.step_index);
        let attempt = ran.unwrap_or(transition.attempt);
        crate::gauges::log_parked(
            saga.id,
            &saga.workflow,
            step.map(|s| s.def.name.as_str()),
            attempt,
            &transition,
        );
        if transition.status.is_final() {
            shared.stats.finished.fetch_add(1, Ordering::Relaxed);
            info!(status = %transition.status, error = ?transition.last_error, "saga finished");
        }
        if !committed.kept {
            return transition.status.is_final();
        }
        apply_locally(&mut saga, &transition, &committed);
        wake_event = committed.wake_event;
        if shared.stopping.load(Ordering::SeqCst) {
            debug!("shutting down: leaving the saga for the next holder");
            return false;
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
            HistoryKind::SagaAlert => {
                let kind = h
                    .detail
                    .get("alert")
                    .and_then(serde_json::Value::as_str)
                    .unwrap_or("unspecified");
                warn!(alert = kind, step = ?h.step, detail = %h.detail, "saga alert: an operator must look at this saga");
                m.saga_alerts
                    .get_or_create(&crate::metrics::AlertLabels {
                        workflow: workflow.to_string(),
                        kind: kind.to_string(),
                    })
                    .inc()
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
    saga.effect_possible = t.effect_possible;
    if let (Some((name, value)), Value::Object(map)) = (&t.output, &mut saga.outputs) {
        map.insert(name.clone(), value.clone());
    }
}

/// Makes provider text storable: PostgreSQL `text` and `jsonb` refuse the NUL character, which
/// a provider's answer or error may hold. Every NUL in the transition's strings (outputs, object
/// keys, errors, history details, wait state) becomes U+FFFD.
fn make_storable(t: &mut Transition) {
    fn text(s: &mut String) {
        if s.contains('\0') {
            *s = s.replace('\0', "\u{FFFD}");
        }
    }
    fn value(v: &mut Value) {
        match v {
            Value::String(s) => text(s),
            Value::Array(items) => items.iter_mut().for_each(value),
            Value::Object(map) => {
                if map.keys().any(|k| k.contains('\0')) {
                    let old = std::mem::take(map);
                    for (mut k, v) in old {
                        text(&mut k);
                        map.insert(k, v);
                    }
                }
                map.values_mut().for_each(value);
            }
            Value::Null | Value::Bool(_) | Value::Number(_) => {}
        }
    }
    if let Some((name, output)) = &mut t.output {
        text(name);
        value(output);
    }
    if let Some(e) = &mut t.last_error {
        text(e);
    }
    for h in &mut t.history {
        if let Some(e) = &mut h.error {
            text(e);
        }
        value(&mut h.detail);
    }
    if let Some(w) = &mut t.wait {
        text(&mut w.provider);
        text(&mut w.correlation_key);
        w.event_types.iter_mut().for_each(text);
        value(&mut w.state);
    }
}

/// The references (provider object ids) a completed run of step `index` returned, as its kind
/// declares them (`StepKind::references`): stored in the commit of the step's result.
fn step_references(
    shared: &Shared,
    loaded: &LoadedDefinition,
    index: usize,
    t: &Transition,
) -> Vec<paysaga_store::SagaReference> {
    let step = &loaded.compiled.steps[index].def;
    let (Some((name, output)), Some(kind)) = (&t.output, shared.engine.registry.get(&step.kind))
    else {
        return Vec::new();
    };
    if name != &step.name {
        return Vec::new();
    }
    kind.references(output)
        .into_iter()
        .map(|(field, value)| paysaga_store::SagaReference {
            step: step.name.clone(),
            name: field.replace('\0', "\u{FFFD}"),
            value: value.replace('\0', "\u{FFFD}"),
        })
        .collect()
}

#[allow(clippy::too_many_arguments)]
async fn commit_with_retry(
    shared: &Shared,
    saga: &SagaRecord,
    worker: Uuid,
    prior_status: SagaStatus,
    consumed_event: Option<i64>,
    transition: &Transition,
    references: &[paysaga_store::SagaReference],
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
                references,
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
        .notify(|e, after| {
            shared.stats.commit_retries.fetch_add(1, Ordering::Relaxed);
            warn!(error = %e, retry_in = ?after, "commit failed; retrying")
        })
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
        let scope = match crate::children::scope_for(&shared.engine, saga, &step.params).await {
            Ok(scope) => scope,
            Err(e) => return StepOutcome::retry(format!("step {name}: reading its children: {e}")),
        };
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
            now: shared.now(),
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
            key_generation: saga.key_generation(name),
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
        // A panicking step is a transient failure of this attempt, with the panic's message in
        // history; the saga is committed (or given back) as after any failure, never held.
        let run = AssertUnwindSafe(run).catch_unwind();
        let outcome = match tokio::time::timeout(step.def.timeout, run).await {
            Ok(Ok(outcome)) => outcome,
            Ok(Err(panic)) => {
                shared.stats.panics.fetch_add(1, Ordering::Relaxed);
                let message = panic_message(&*panic);
                error!(panic = %message, "step panicked");
                StepOutcome::retry(format!("step panicked: {message}"))
            }
            Err(_) => StepOutcome::retry(format!("attempt timed out after {:?}", step.def.timeout)),
        };
        let label = match &outcome {
            StepOutcome::Done(_) => "done",
            StepOutcome::Wait(_) => "wait",
            StepOutcome::Retry { .. } => "retry",
            StepOutcome::Fail { .. } => "fail",
            StepOutcome::Held { .. } => "held",
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
            StepOutcome::Held { reason, after } => {
                debug!(%reason, after_ms = after.as_millis() as u64, "step held back")
            }
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

/// The pause automatic retention takes after a batch that took `took`: five times as long,
/// at least 20 ms, so retention uses at most a sixth of one connection's time. Background
/// deletes compete with the step commits for the database's CPU and WAL. Measured with
/// `paysaga-bench --only prune` (docs/PERFORMANCE.md, "Retention cost"): a quarter of the
/// time cost a concurrent drain 10%, a sixth 6-7%, while batches of 500 still deleted
/// 1,400-1,700 sagas/s on a 2-core database, more than such a database finishes.
pub fn retention_pause(took: Duration) -> Duration {
    (took * 5).max(Duration::from_millis(20))
}

/// Automatic retention (`WorkerConfig::retention`): every minute, deletes finished sagas
/// older than `older_than` in batches, each its own short transaction, pausing between
/// batches as [`retention_pause`] says; a worker that finds the retention lock taken leaves
/// the round to the worker holding it.
async fn prune_finished(shared: &Shared, older_than: Duration) {
    const BATCH: i64 = 500;
    const EVERY: Duration = Duration::from_secs(60);
    loop {
        tokio::time::sleep(EVERY).await;
        let mut deleted = 0_u64;
        while !shared.stopping.load(Ordering::SeqCst) {
            let started = tokio::time::Instant::now();
            match shared.engine.store.prune_finished(older_than, BATCH).await {
                Ok(p) if p.busy => break,
                Ok(p) => {
                    deleted += p.sagas;
                    if p.sagas < BATCH as u64 {
                        break;
                    }
                }
                Err(e) => {
                    warn!(error = %e, "retention: could not delete finished sagas; will retry");
                    break;
                }
            }
            tokio::time::sleep(retention_pause(started.elapsed())).await;
        }
        if deleted > 0 {
            info!(
                sagas = deleted,
                ?older_than,
                "retention: deleted finished sagas with their history, waits, events and documents"
            );
        }
    }
}
