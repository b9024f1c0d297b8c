//! The engine as a backend team embeds it: a saga started inside the application's own
//! transaction commits or rolls back with it (no saga, no history, no wake-up on rollback),
//! and `wait_for_end` returns the saga once it ended, woken by the end itself (one shared
//! LISTEN connection on PostgreSQL, an in-process signal on SQLite), not by its polling.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use paysaga_core::{Definition, SagaStatus, StepContext, StepDef, StepKind, StepOutcome};
use paysaga_runtime::{noop, Engine, Registry, StartRequest, WorkerConfig};
use paysaga_store::{PgStore, SagaRecord, SqliteStore, Store};
use serde_json::{json, Value};
use sqlx::postgres::PgListener;
use uuid::Uuid;

async fn engine(url: &str) -> Engine {
    let store = PgStore::connect(url).await.unwrap();
    store.migrate().await.unwrap();
    let mut registry = Registry::new();
    registry.register(noop::Sleep);
    let engine = Engine::new(Arc::new(store), registry);
    engine
        .submit_definition(&noop::noop_definition())
        .await
        .unwrap();
    engine
}

fn request(key: &str) -> StartRequest {
    StartRequest {
        workflow: "noop".to_string(),
        version: None,
        input: json!({"delay_ms": 0}),
        idempotency_key: Some(key.to_string()),
        actor: "payouts-api".to_string(),
    }
}

async fn count(pool: &sqlx::PgPool, sql: &str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(pool).await.unwrap()
}

#[tokio::test]
async fn a_saga_started_in_the_callers_transaction_exists_only_if_that_transaction_commits() {
    let db = paysaga_testkit::database().await;
    let engine = engine(db.url()).await;
    let pool = sqlx::PgPool::connect(db.url()).await.unwrap();
    sqlx::query("CREATE TABLE app_payouts (id text PRIMARY KEY, saga_id uuid NOT NULL)")
        .execute(&pool)
        .await
        .unwrap();
    let mut listener = PgListener::connect(db.url()).await.unwrap();
    listener.listen("paysaga_wakeup").await.unwrap();

    // Rolled back: neither the application's row nor anything of the saga, and no wake-up.
    let mut tx = pool.begin().await.unwrap();
    let started = engine.start_in(&mut tx, request("po-1")).await.unwrap();
    assert!(started.created);
    sqlx::query("INSERT INTO app_payouts (id, saga_id) VALUES ('po-1', $1)")
        .bind(started.saga_id)
        .execute(&mut *tx)
        .await
        .unwrap();
    // Before the commit, nobody else sees the saga (a worker could not claim it).
    assert_eq!(count(&pool, "SELECT count(*) FROM paysaga_sagas").await, 0);
    // The same key again in the same transaction returns the saga this transaction started.
    let again = engine.start_in(&mut tx, request("po-1")).await.unwrap();
    assert_eq!((again.saga_id, again.created), (started.saga_id, false));
    tx.rollback().await.unwrap();
    assert_eq!(count(&pool, "SELECT count(*) FROM app_payouts").await, 0);
    assert_eq!(count(&pool, "SELECT count(*) FROM paysaga_sagas").await, 0);
    assert_eq!(
        count(&pool, "SELECT count(*) FROM paysaga_history").await,
        0
    );
    let woken = tokio::time::timeout(Duration::from_millis(500), listener.recv()).await;
    assert!(
        woken.is_err(),
        "a rolled-back start woke the workers: {woken:?}"
    );
    assert!(matches!(
        engine.get(started.saga_id).await,
        Err(paysaga_runtime::Error::SagaNotFound(_))
    ));

    // Committed: both rows, one wake-up, and a worker runs the saga to its end.
    let mut tx = pool.begin().await.unwrap();
    let started = engine.start_in(&mut tx, request("po-2")).await.unwrap();
    sqlx::query("INSERT INTO app_payouts (id, saga_id) VALUES ('po-2', $1)")
        .bind(started.saga_id)
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), listener.recv())
        .await
        .expect("the committed start wakes the workers")
        .unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let worker = engine.worker(WorkerConfig::default());
    let running = tokio::spawn(worker.run(async {
        stopped.await.ok();
    }));
    let saga = engine
        .wait_for_end(started.saga_id, Duration::from_secs(20))
        .await
        .unwrap();
    assert_eq!(saga.status, SagaStatus::Completed);
    assert_eq!(saga.outputs["sleep5"], json!({"slept_ms": 0}));
    let linked: Uuid = sqlx::query_scalar("SELECT saga_id FROM app_payouts WHERE id = 'po-2'")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(linked, started.saga_id);
    // A plain start with the key of the committed saga returns it.
    let same = engine
        .start("noop", json!({"delay_ms": 0}), Some("po-2"))
        .await
        .unwrap();
    assert_eq!((same.saga_id, same.created), (started.saga_id, false));
    stop.send(()).unwrap();
    running.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_start_in_the_callers_transaction_refuses_a_bad_input_and_a_reused_key() {
    let db = paysaga_testkit::database().await;
    let engine = engine(db.url()).await;
    let pool = sqlx::PgPool::connect(db.url()).await.unwrap();
    let mut tx = pool.begin().await.unwrap();
    let bad = engine
        .start_in(
            &mut tx,
            StartRequest {
                input: json!({"delay_ms": "soon"}),
                ..request("po-3")
            },
        )
        .await
        .unwrap_err();
    assert!(
        matches!(bad, paysaga_runtime::Error::InvalidInput { .. }),
        "{bad}"
    );
    engine.start_in(&mut tx, request("po-4")).await.unwrap();
    let reused = engine
        .start_in(
            &mut tx,
            StartRequest {
                input: json!({"delay_ms": 5}),
                ..request("po-4")
            },
        )
        .await
        .unwrap_err();
    assert!(reused.to_string().contains("po-4"), "{reused}");
    tx.commit().await.unwrap();
    assert_eq!(count(&pool, "SELECT count(*) FROM paysaga_sagas").await, 1);
}

#[tokio::test]
async fn wait_for_end_times_out_on_a_saga_no_worker_runs_and_says_where_it_is() {
    let db = paysaga_testkit::database().await;
    let engine = engine(db.url()).await;
    let started = engine
        .start("noop", json!({"delay_ms": 0}), None)
        .await
        .unwrap();
    let err = engine
        .wait_for_end(started.saga_id, Duration::from_millis(100))
        .await
        .unwrap_err();
    match err {
        paysaga_runtime::Error::WaitTimedOut { saga, status, .. } => {
            assert_eq!(saga, started.saga_id);
            assert_eq!(status, paysaga_core::ObservedStatus::Scheduled);
        }
        other => panic!("{other}"),
    }
}

/// A fallback poll so long that a waiter returning within seconds was woken by the end.
const NO_POLL: Duration = Duration::from_secs(60);

/// A worker of `engine` running in this process until [`Running::stop`].
struct Running {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<(), paysaga_runtime::Error>>,
}

fn run_worker(engine: &Engine) -> Running {
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(engine.worker(WorkerConfig::default()).run(async {
        stopped.await.ok();
    }));
    Running { stop, task }
}

impl Running {
    async fn stop(self) {
        self.stop.send(()).unwrap();
        self.task.await.unwrap().unwrap();
    }
}

/// How long after the saga's recorded end the waiter had it back.
fn late_by(saga: &SagaRecord) -> Duration {
    let finished = saga.finished_at.unwrap_or(saga.updated_at);
    (chrono::Utc::now() - finished).to_std().unwrap_or_default()
}

/// The waiter learnt of the end well before any fallback poll (the tests set it to 60 s).
#[track_caller]
fn assert_woken_promptly(saga: &SagaRecord) {
    let late = late_by(saga);
    assert!(
        late < Duration::from_secs(2),
        "woken {late:?} after the end"
    );
}

/// `query` on the test database's pool until it returns `want` (at most 10 s).
async fn until_count(pool: &sqlx::PgPool, sql: &str, want: i64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let n = count(pool, sql).await;
        if n == want {
            return;
        }
        assert!(Instant::now() < deadline, "{sql}: {n}, expected {want}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Connections of the test database listening for saga ends.
const END_LISTENERS: &str = "SELECT count(*) FROM pg_stat_activity
     WHERE datname = current_database() AND query ILIKE 'LISTEN%paysaga_saga_ended%'";

#[tokio::test]
async fn a_waiter_is_woken_by_the_sagas_end_not_by_its_fallback_poll() {
    let db = paysaga_testkit::database().await;
    let engine = engine(db.url()).await.with_wait_fallback_poll(NO_POLL);
    let worker = run_worker(&engine);
    // Five steps of 60 ms: the saga ends about 300 ms after it starts, while its waiter waits.
    let started = engine
        .start("noop", json!({"delay_ms": 60}), None)
        .await
        .unwrap();
    let begun = Instant::now();
    let saga = engine
        .wait_for_end(started.saga_id, Duration::from_secs(30))
        .await
        .unwrap();
    let waited = begun.elapsed();
    assert_eq!(saga.status, SagaStatus::Completed);
    assert!(waited >= Duration::from_millis(250), "{waited:?}");
    assert!(
        late_by(&saga) < Duration::from_secs(2) && waited < Duration::from_secs(10),
        "the waiter came back {:?} after the end ({waited:?} in all): polling, not the end, woke it",
        late_by(&saga)
    );
    worker.stop().await;
}

/// Pays (irreversible, like money sent), then the next step fails for good after 300 ms:
/// the saga parks for an operator.
#[derive(Debug)]
struct Pay;

#[async_trait]
impl StepKind for Pay {
    fn name(&self) -> &'static str {
        "test.pay"
    }
    fn irreversible(&self) -> bool {
        true
    }
    async fn run(&self, _ctx: &StepContext, _params: Value) -> StepOutcome {
        StepOutcome::Done(json!({"paid": true}))
    }
}

#[derive(Debug)]
struct FailLater;

#[async_trait]
impl StepKind for FailLater {
    fn name(&self) -> &'static str {
        "test.fail_later"
    }
    async fn run(&self, _ctx: &StepContext, _params: Value) -> StepOutcome {
        tokio::time::sleep(Duration::from_millis(300)).await;
        StepOutcome::fail("the provider refused the confirmation")
    }
}

#[tokio::test]
async fn a_saga_that_parks_wakes_its_waiter_with_needs_operator() {
    let db = paysaga_testkit::database().await;
    let store = PgStore::connect(db.url()).await.unwrap();
    store.migrate().await.unwrap();
    let mut registry = Registry::new();
    registry.register(Pay).register(FailLater);
    let engine = Engine::new(Arc::new(store), registry).with_wait_fallback_poll(NO_POLL);
    engine
        .submit_definition(&Definition {
            name: "pay_then_confirm".to_string(),
            version: 1,
            description: None,
            steps: vec![
                StepDef::new("pay", "test.pay", json!({})),
                StepDef::new("confirm", "test.fail_later", json!({})),
            ],
            concurrency: None,
        })
        .await
        .unwrap();
    let worker = run_worker(&engine);
    let started = engine
        .start("pay_then_confirm", json!({}), None)
        .await
        .unwrap();
    let saga = engine
        .wait_for_end(started.saga_id, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(saga.status, SagaStatus::NeedsOperator, "{saga:?}");
    assert_woken_promptly(&saga);
    worker.stop().await;
}

#[tokio::test]
async fn a_saga_nobody_awaits_notifies_nothing_when_it_ends() {
    let db = paysaga_testkit::database().await;
    let engine = engine(db.url()).await.with_wait_fallback_poll(NO_POLL);
    let mut listener = PgListener::connect(db.url()).await.unwrap();
    listener.listen("paysaga_saga_ended").await.unwrap();
    let worker = run_worker(&engine);

    // Nobody awaits it: it ends without a notification.
    let quiet = engine
        .start("noop", json!({"delay_ms": 0}), None)
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !engine
        .get(quiet.saga_id)
        .await
        .unwrap()
        .saga
        .status
        .is_final()
    {
        assert!(Instant::now() < deadline, "the saga did not end");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let heard = tokio::time::timeout(Duration::from_millis(500), listener.recv()).await;
    assert!(
        heard.is_err(),
        "an end nobody awaits was notified: {heard:?}"
    );

    // Awaited: its end is notified once, with its id.
    let awaited = engine
        .start("noop", json!({"delay_ms": 50}), None)
        .await
        .unwrap();
    engine
        .wait_for_end(awaited.saga_id, Duration::from_secs(20))
        .await
        .unwrap();
    let heard = tokio::time::timeout(Duration::from_secs(2), listener.recv())
        .await
        .expect("an awaited saga's end is notified")
        .unwrap();
    assert_eq!(heard.payload(), awaited.saga_id.to_string());
    let again = tokio::time::timeout(Duration::from_millis(300), listener.recv()).await;
    assert!(again.is_err(), "notified twice: {again:?}");
    worker.stop().await;
}

#[tokio::test]
async fn fifty_concurrent_waiters_share_one_listen_connection_and_all_return() {
    let db = paysaga_testkit::database().await;
    let engine = engine(db.url()).await.with_wait_fallback_poll(NO_POLL);
    let pool = sqlx::PgPool::connect(db.url()).await.unwrap();
    let mut ids = Vec::new();
    for _ in 0..50 {
        let started = engine
            .start("noop", json!({"delay_ms": 0}), None)
            .await
            .unwrap();
        ids.push(started.saga_id);
    }
    let waiters: Vec<_> = ids
        .iter()
        .map(|id| {
            let (engine, id) = (engine.clone(), *id);
            tokio::spawn(async move { engine.wait_for_end(id, Duration::from_secs(20)).await })
        })
        .collect();
    // Every waiter has marked its saga (so it listens already): one connection for them all.
    until_count(
        &pool,
        "SELECT count(*) FROM paysaga_sagas WHERE awaited",
        50,
    )
    .await;
    assert_eq!(count(&pool, END_LISTENERS).await, 1);
    let connections = count(
        &pool,
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()",
    )
    .await;
    assert!(connections < 25, "{connections} connections for 50 waiters");
    let begun = Instant::now();
    let worker = run_worker(&engine);
    for waiter in waiters {
        let saga = waiter.await.unwrap().unwrap();
        assert_eq!(saga.status, SagaStatus::Completed);
    }
    assert!(
        begun.elapsed() < Duration::from_secs(30),
        "{:?}: woken by polling",
        begun.elapsed()
    );
    assert_eq!(count(&pool, END_LISTENERS).await, 1);
    worker.stop().await;
}

#[tokio::test]
async fn a_waiter_still_hears_the_end_after_its_listen_connection_was_killed() {
    let db = paysaga_testkit::database().await;
    let engine = engine(db.url()).await.with_wait_fallback_poll(NO_POLL);
    let pool = sqlx::PgPool::connect(db.url()).await.unwrap();
    let started = engine
        .start("noop", json!({"delay_ms": 0}), None)
        .await
        .unwrap();
    let waiter = {
        let engine = engine.clone();
        tokio::spawn(async move {
            engine
                .wait_for_end(started.saga_id, Duration::from_secs(60))
                .await
        })
    };
    until_count(&pool, "SELECT count(*) FROM paysaga_sagas WHERE awaited", 1).await;
    let pid: i32 = sqlx::query_scalar(&END_LISTENERS.replace("count(*)", "pid"))
        .fetch_one(&pool)
        .await
        .unwrap();
    let killed: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1)")
        .bind(pid)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(killed);
    // The listener comes back on a new connection...
    until_count(&pool, &format!("{END_LISTENERS} AND pid <> {pid}"), 1).await;
    // ...and the end after it is heard.
    let worker = run_worker(&engine);
    let saga = tokio::time::timeout(Duration::from_secs(20), waiter)
        .await
        .expect("the waiter was not woken after its listener came back")
        .unwrap()
        .unwrap();
    assert_eq!(saga.status, SagaStatus::Completed);
    assert_woken_promptly(&saga);
    worker.stop().await;
}

#[tokio::test]
async fn a_waiter_on_the_embedded_sqlite_store_is_woken_by_the_end() {
    let store = SqliteStore::connect("sqlite::memory:").await.unwrap();
    store.migrate().await.unwrap();
    let mut registry = Registry::new();
    registry.register(noop::Sleep);
    let engine = Engine::new(Arc::new(store), registry).with_wait_fallback_poll(NO_POLL);
    engine
        .submit_definition(&noop::noop_definition())
        .await
        .unwrap();
    let worker = run_worker(&engine);
    let started = engine
        .start("noop", json!({"delay_ms": 60}), None)
        .await
        .unwrap();
    let saga = engine
        .wait_for_end(started.saga_id, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(saga.status, SagaStatus::Completed);
    assert_woken_promptly(&saga);
    // A saga that does not exist is said so, on either store.
    assert!(matches!(
        engine
            .wait_for_end(Uuid::new_v4(), Duration::from_secs(1))
            .await,
        Err(paysaga_runtime::Error::SagaNotFound(_))
    ));
    worker.stop().await;
}

/// `Engine::start_and_wait` marks its saga awaited in the insert itself (no second write) and
/// returns the saga at its end, woken by the end and not by its fallback poll: by the last
/// commit of this process's worker, and by the end's notification when another process's
/// worker runs it. The key of a saga that exists waits for that saga; a saga no worker runs
/// times out, named and left as it is.
#[tokio::test]
async fn start_and_wait_marks_its_saga_in_the_insert_and_is_woken_by_the_end_wherever_it_runs() {
    let db = paysaga_testkit::database().await;
    let engine = engine(db.url()).await.with_wait_fallback_poll(NO_POLL);
    let pool = sqlx::PgPool::connect(db.url()).await.unwrap();
    let wait = Duration::from_secs(30);

    // No worker: the wait times out, naming the saga, which stays scheduled and awaited.
    let err = engine
        .start_and_wait(request("po-10"), Duration::from_millis(200))
        .await
        .unwrap_err();
    let parked = match err {
        paysaga_runtime::Error::WaitTimedOut { saga, status, .. } => {
            assert_eq!(status, paysaga_core::ObservedStatus::Scheduled);
            saga
        }
        other => panic!("{other}"),
    };
    let awaited: bool = sqlx::query_scalar("SELECT awaited FROM paysaga_sagas WHERE id = $1")
        .bind(parked)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(awaited, "the insert marks the saga awaited");

    // This process's worker (handed the saga by the start): its last commit wakes the caller.
    let worker = run_worker(&engine);
    let saga = engine.start_and_wait(request("po-11"), wait).await.unwrap();
    assert_eq!(saga.status, SagaStatus::Completed);
    assert_eq!(saga.outputs["sleep5"], json!({"slept_ms": 0}));
    assert_woken_promptly(&saga);
    // The key of the saga that timed out: that saga, now run to its end by the worker.
    let again = engine.start_and_wait(request("po-10"), wait).await.unwrap();
    assert_eq!((again.id, again.status), (parked, SagaStatus::Completed));
    worker.stop().await;

    // Another process's worker (an engine of its own): the end's notification wakes the caller.
    let mut listener = PgListener::connect(db.url()).await.unwrap();
    listener.listen("paysaga_saga_ended").await.unwrap();
    let other = self::engine(db.url()).await;
    let worker = run_worker(&other);
    let saga = engine
        .start_and_wait(
            StartRequest {
                input: json!({"delay_ms": 20}),
                ..request("po-12")
            },
            wait,
        )
        .await
        .unwrap();
    assert_eq!(saga.status, SagaStatus::Completed);
    assert_woken_promptly(&saga);
    let heard = tokio::time::timeout(Duration::from_secs(2), listener.recv())
        .await
        .expect("the end of a saga started awaited is notified")
        .unwrap();
    assert_eq!(heard.payload(), saga.id.to_string());
    worker.stop().await;
}
