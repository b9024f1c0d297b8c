//! Shared support for the end-to-end tests: an engine on a fresh database, and test step
//! kinds whose effects are recorded in a table of the test database, as a provider would.
#![allow(dead_code, clippy::unwrap_used)]

pub mod processes;
pub mod workflows;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use paysaga_core::{Definition, StepContext, StepKind, StepOutcome, WaitSpec, Wake};
use paysaga_runtime::{noop, Engine, Registry, WorkerConfig};
use paysaga_store::{PgStore, Store};
use paysaga_testkit::TestDatabase;
use serde_json::{json, Value};
use sqlx::PgPool;
use tokio::sync::Notify;
use uuid::Uuid;

/// An engine on a fresh, migrated database, plus a pool for assertions.
pub struct Harness {
    pub db: TestDatabase,
    pub pool: PgPool,
    pub engine: Engine,
    pub provider: FakeProvider,
}

/// A stand-in for a provider: effects keyed by idempotency key, in the test database.
#[derive(Debug, Clone)]
pub struct FakeProvider {
    pub pool: PgPool,
    /// Objects a poll can find (correlation key -> state).
    pub objects: Arc<Mutex<HashMap<String, Value>>>,
    /// Transient failures left per (saga, step).
    pub failures_left: Arc<Mutex<HashMap<(Uuid, String), u32>>>,
    /// Compensations in the order they ran: (saga, step).
    pub compensations: Arc<Mutex<Vec<(Uuid, String)>>>,
    /// When set, `test.effect` stops after applying its effect (to simulate a crash
    /// between the provider's answer and our commit) and notifies `effect_applied`.
    pub hang_after_effect: Arc<Mutex<bool>>,
    pub effect_applied: Arc<Notify>,
}

impl FakeProvider {
    async fn new(pool: PgPool) -> Self {
        sqlx::raw_sql(
            "CREATE TABLE test_effects (idempotency_key text PRIMARY KEY, saga_id uuid NOT NULL,
                 step text NOT NULL, applied_at timestamptz NOT NULL DEFAULT clock_timestamp());
             CREATE TABLE test_calls (id bigserial PRIMARY KEY, idempotency_key text NOT NULL,
                 saga_id uuid NOT NULL, step text NOT NULL, worker_attempt int NOT NULL);",
        )
        .execute(&pool)
        .await
        .unwrap();
        FakeProvider {
            pool,
            objects: Default::default(),
            failures_left: Default::default(),
            compensations: Default::default(),
            hang_after_effect: Default::default(),
            effect_applied: Arc::new(Notify::new()),
        }
    }

    /// Applies an effect at most once per idempotency key (like a provider honouring
    /// `Idempotency-Key`); every call is recorded.
    pub async fn apply(&self, ctx: &StepContext) -> bool {
        let key = ctx.idempotency_key();
        sqlx::query("INSERT INTO test_calls (idempotency_key, saga_id, step, worker_attempt) VALUES ($1, $2, $3, $4)")
            .bind(&key)
            .bind(ctx.saga_id)
            .bind(&ctx.step)
            .bind(ctx.attempt as i32)
            .execute(&self.pool)
            .await
            .unwrap();
        sqlx::query("INSERT INTO test_effects (idempotency_key, saga_id, step) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING")
            .bind(&key)
            .bind(ctx.saga_id)
            .bind(&ctx.step)
            .execute(&self.pool)
            .await
            .unwrap()
            .rows_affected()
            == 1
    }
}

/// `test.effect`: applies an effect through the fake provider; compensable.
#[derive(Debug, Clone)]
pub struct Effect(pub FakeProvider);

#[async_trait]
impl StepKind for Effect {
    fn name(&self) -> &'static str {
        "test.effect"
    }
    async fn run(&self, ctx: &StepContext, _params: Value) -> StepOutcome {
        let fresh = self.0.apply(ctx).await;
        let hang = { *self.0.hang_after_effect.lock().unwrap() };
        if hang {
            self.0.effect_applied.notify_one();
            std::future::pending::<()>().await;
        }
        StepOutcome::Done(json!({"key": ctx.idempotency_key(), "fresh": fresh}))
    }
    fn compensable(&self) -> bool {
        true
    }
    async fn compensate(&self, ctx: &StepContext, _params: Value) -> StepOutcome {
        self.0
            .compensations
            .lock()
            .unwrap()
            .push((ctx.saga_id, ctx.step.clone()));
        StepOutcome::Done(Value::Null)
    }
}

/// `test.irreversible`: an effect that cannot be undone (money sent).
#[derive(Debug, Clone)]
pub struct Irreversible;

#[async_trait]
impl StepKind for Irreversible {
    fn name(&self) -> &'static str {
        "test.irreversible"
    }
    async fn run(&self, _ctx: &StepContext, _params: Value) -> StepOutcome {
        StepOutcome::Done(json!({"sent": true}))
    }
    fn irreversible(&self) -> bool {
        true
    }
}

/// `test.flaky`: fails transiently `failures` times (param), then completes.
#[derive(Debug, Clone)]
pub struct Flaky(pub FakeProvider);

#[async_trait]
impl StepKind for Flaky {
    fn name(&self) -> &'static str {
        "test.flaky"
    }
    async fn run(&self, ctx: &StepContext, params: Value) -> StepOutcome {
        let failures = params["failures"].as_u64().unwrap_or(1) as u32;
        let mut left = self.0.failures_left.lock().unwrap();
        let n = left
            .entry((ctx.saga_id, ctx.step.clone()))
            .or_insert(failures);
        if *n > 0 {
            *n -= 1;
            return StepOutcome::retry(format!("provider returned 503 (attempt {})", ctx.attempt));
        }
        StepOutcome::Done(json!({"attempt": ctx.attempt}))
    }
}

/// `test.fail`: fails permanently.
#[derive(Debug, Clone)]
pub struct Fail;

#[async_trait]
impl StepKind for Fail {
    fn name(&self) -> &'static str {
        "test.fail"
    }
    async fn run(&self, _ctx: &StepContext, _params: Value) -> StepOutcome {
        StepOutcome::fail("provider refused: 400 invalid account")
    }
}

/// `test.wait`: waits for `test`/`done` with key `params.key`; a poll finds the object in
/// `FakeProvider::objects` when the test put it there.
#[derive(Debug, Clone)]
pub struct Wait(pub FakeProvider);

#[async_trait]
impl StepKind for Wait {
    fn name(&self) -> &'static str {
        "test.wait"
    }
    fn validate(&self, params: &Value) -> Result<(), String> {
        match params.get("key") {
            Some(Value::String(s)) if !s.is_empty() => Ok(()),
            _ => Err("params.key (from input field `key`) must be a non-empty string".into()),
        }
    }
    async fn run(&self, ctx: &StepContext, params: Value) -> StepOutcome {
        let key = params["key"].as_str().unwrap_or_default().to_string();
        match &ctx.wake {
            Wake::Event(ev) => StepOutcome::Done(json!({"via": "event", "payload": ev.payload})),
            Wake::Poll { .. } => match self.0.objects.lock().unwrap().get(&key) {
                Some(v) => StepOutcome::Done(json!({"via": "poll", "payload": v})),
                None => StepOutcome::Wait(WaitSpec::new("test", "done", key)),
            },
            _ => StepOutcome::Wait(WaitSpec::new("test", "done", key)),
        }
    }
}

/// Registry with `noop.sleep` and the test kinds.
pub fn registry(provider: &FakeProvider) -> Registry {
    let mut r = Registry::new();
    r.register(noop::Sleep)
        .register(Effect(provider.clone()))
        .register(Irreversible)
        .register(Flaky(provider.clone()))
        .register(Fail)
        .register(Wait(provider.clone()));
    r
}

/// A fresh database, migrated, with the noop definition submitted.
pub async fn harness() -> Harness {
    let db = paysaga_testkit::database().await;
    let pool = PgPool::connect(db.url()).await.unwrap();
    let provider = FakeProvider::new(pool.clone()).await;
    let store = PgStore::connect(db.url()).await.unwrap();
    store.migrate().await.unwrap();
    let engine = Engine::new(Arc::new(store), registry(&provider));
    engine
        .submit_definition(&noop::noop_definition())
        .await
        .unwrap();
    Harness {
        db,
        pool,
        engine,
        provider,
    }
}

impl Harness {
    /// Another engine on the same database (another "process"), same kinds.
    pub async fn second_engine(&self) -> Engine {
        let store = PgStore::connect(self.db.url()).await.unwrap();
        Engine::new(Arc::new(store), registry(&self.provider))
    }

    pub async fn submit(&self, toml: &str) -> Definition {
        let def = Definition::from_toml(toml).unwrap();
        self.engine.submit_definition(&def).await.unwrap();
        def
    }

    /// Waits until the saga reaches `status` (panics after `within`).
    pub async fn wait_status(&self, id: Uuid, status: &str, within: Duration) {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let s: String = sqlx::query_scalar("SELECT status FROM paysaga_sagas WHERE id = $1")
                .bind(id)
                .fetch_one(&self.pool)
                .await
                .unwrap();
            if s == status {
                return;
            }
            if tokio::time::Instant::now() > deadline {
                let last_error: Option<String> =
                    sqlx::query_scalar("SELECT last_error FROM paysaga_sagas WHERE id = $1")
                        .bind(id)
                        .fetch_one(&self.pool)
                        .await
                        .unwrap();
                panic!("saga {id} is {s}, expected {status} within {within:?} (last error: {last_error:?})");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn history_kinds(&self, id: Uuid) -> Vec<(String, Option<String>)> {
        sqlx::query_as("SELECT kind, step FROM paysaga_history WHERE saga_id = $1 ORDER BY id")
            .bind(id)
            .fetch_all(&self.pool)
            .await
            .unwrap()
    }
}

/// A worker config for tests: short lease and poll.
pub fn fast_worker(name: &str) -> WorkerConfig {
    WorkerConfig {
        name: name.to_string(),
        concurrency: 8,
        lease_ttl: Duration::from_millis(900),
        idle_poll: Duration::from_millis(200),
        reap_every: Duration::from_millis(200),
        shutdown_grace: Duration::from_secs(5),
        effect_window: Duration::from_secs(5),
        ..WorkerConfig::default()
    }
}

/// Runs a worker in the background; dropping the handle's sender stops it gracefully.
pub struct RunningWorker {
    pub stop: tokio::sync::oneshot::Sender<()>,
    pub task: tokio::task::JoinHandle<Result<(), paysaga_runtime::Error>>,
}

pub fn spawn_worker(engine: &Engine, config: WorkerConfig) -> RunningWorker {
    let (stop, rx) = tokio::sync::oneshot::channel::<()>();
    let worker = engine.worker(config);
    let task = tokio::spawn(worker.run(async move {
        let _ = rx.await;
    }));
    RunningWorker { stop, task }
}

impl RunningWorker {
    /// Graceful stop.
    pub async fn shutdown(self) {
        let _ = self.stop.send(());
        self.task.await.unwrap().unwrap();
    }
    /// Simulates a crash: the worker's futures are dropped mid-flight, nothing is released.
    pub async fn crash(self) {
        self.task.abort();
        let _ = self.task.await;
    }
}
