//! Starting sagas from Rust values and in bulk through the library: `start_typed` stores the
//! serialized input, `start_many` answers one result per item in order, a refused item does
//! not stop the others, and the same items again start nothing new.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use std::sync::atomic::Ordering;
use std::time::Duration;

use paysaga_core::SagaStatus;
use paysaga_runtime::{noop, Engine, Error, Registry, WorkerConfig};
use paysaga_store::{PgStore, Store};
use serde_json::json;

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

#[tokio::test]
async fn bulk_starts_answer_each_item_in_order_and_a_second_run_starts_nothing_new() {
    let db = paysaga_testkit::database().await;
    let engine = engine(db.url()).await;
    let pool = sqlx::PgPool::connect(db.url()).await.unwrap();

    #[derive(serde::Serialize)]
    struct NoopInput {
        delay_ms: u64,
    }
    let typed = engine
        .start_typed("noop", &NoopInput { delay_ms: 3 }, Some("typed-1"))
        .await
        .unwrap();
    assert!(typed.created);
    let input: serde_json::Value =
        sqlx::query_scalar("SELECT input FROM paysaga_sagas WHERE id = $1")
            .bind(typed.saga_id)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(input, json!({"delay_ms": 3}));

    let items: Vec<(String, serde_json::Value)> = (1..=20)
        .map(|i| {
            let delay = if i == 7 { json!("soon") } else { json!(0) };
            (format!("po-{i}"), json!({"delay_ms": delay}))
        })
        .collect();
    let first = engine.start_many("noop", "batch", items.clone()).await;
    assert_eq!(first.len(), 20);
    for (i, r) in first.iter().enumerate() {
        if i == 6 {
            assert!(
                matches!(r, Err(Error::InvalidInput { step, .. }) if step == "sleep1"),
                "{r:?}"
            );
        } else {
            assert!(r.as_ref().unwrap().created, "item {i}: {r:?}");
        }
    }
    let count = || async {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM paysaga_sagas")
            .fetch_one(&pool)
            .await
            .unwrap()
    };
    assert_eq!(count().await, 1 + 19);

    let again = engine.start_many("noop", "batch", items).await;
    for (i, (a, b)) in first.iter().zip(&again).enumerate() {
        match (a, b) {
            (Ok(a), Ok(b)) => assert_eq!((a.saga_id, b.created), (b.saga_id, false), "item {i}"),
            (Err(_), Err(_)) => {}
            other => panic!("item {i}: {other:?}"),
        }
    }
    assert_eq!(count().await, 1 + 19, "nothing new");
}

/// A worker running in the starting process is handed the new saga by `Engine::start`
/// itself (inserted held by it: no NOTIFY, no claim) and runs each step once; when its one
/// slot is busy, or once it stopped, a start goes the usual way (unowned, woken, claimed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_hands_the_saga_to_a_worker_of_its_process_and_goes_the_usual_way_when_it_cannot_take_it(
) {
    let db = paysaga_testkit::database().await;
    let engine = engine(db.url()).await;
    let pool = sqlx::PgPool::connect(db.url()).await.unwrap();
    let mut config = WorkerConfig::default();
    config.concurrency = 1;
    config.idle_poll = Duration::from_millis(200);
    let worker = engine.worker(config.clone());
    let stats = worker.stats();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(worker.run(async {
        let _ = stopped.await;
    }));
    let live = || async {
        sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM paysaga_workers WHERE stopped_at IS NULL",
        )
        .fetch_one(&pool)
        .await
        .unwrap()
    };
    while live().await == 0 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The worker claims at its start (and after a task ends when sagas may wait for its
    // slot), holding its free slots for that round trip; a start meanwhile is not handed (it
    // goes the usual way, by design). The hand-offs below start when the worker is idle.
    let settle = || tokio::time::sleep(Duration::from_millis(300));
    settle().await;
    let count = |kind: &'static str, saga: uuid::Uuid| {
        let pool = pool.clone();
        async move {
            sqlx::query_scalar::<_, i64>(
                "SELECT count(*) FROM paysaga_history WHERE saga_id = $1 AND kind = $2",
            )
            .bind(saga)
            .bind(kind)
            .fetch_one(&pool)
            .await
            .unwrap()
        }
    };
    let wait = Duration::from_secs(20);

    let a = engine
        .start("noop", json!({"delay_ms": 0}), Some("a"))
        .await
        .unwrap();
    let ended = engine.wait_for_end(a.saga_id, wait).await.unwrap();
    assert_eq!(ended.status, SagaStatus::Completed);
    assert_eq!(stats.handed.load(Ordering::Relaxed), 1);
    assert_eq!(stats.claimed.load(Ordering::Relaxed), 0);
    assert_eq!(count("step_completed", a.saga_id).await, 5);
    assert_eq!(count("saga_completed", a.saga_id).await, 1);

    // The one slot busy: the next start is not handed; the worker claims it afterwards.
    settle().await;
    let long = engine
        .start("noop", json!({"delay_ms": 100}), Some("long"))
        .await
        .unwrap();
    let b = engine
        .start("noop", json!({"delay_ms": 0}), Some("b"))
        .await
        .unwrap();
    assert_eq!(stats.handed.load(Ordering::Relaxed), 2);
    for id in [long.saga_id, b.saga_id] {
        let ended = engine.wait_for_end(id, wait).await.unwrap();
        assert_eq!(ended.status, SagaStatus::Completed);
        assert_eq!(count("step_completed", id).await, 5);
    }
    assert_eq!(stats.claimed.load(Ordering::Relaxed), 1);

    // Stopped: a start is left to whichever worker claims it.
    stop.send(()).unwrap();
    running.await.unwrap().unwrap();
    let c = engine
        .start("noop", json!({"delay_ms": 0}), Some("c"))
        .await
        .unwrap();
    let held = engine.store().saga(c.saga_id).await.unwrap().unwrap();
    assert_eq!((held.owner, held.status), (None, SagaStatus::Scheduled));
    let next = engine.worker(config);
    let next_stats = next.stats();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(next.run(async {
        let _ = stopped.await;
    }));
    let ended = engine.wait_for_end(c.saga_id, wait).await.unwrap();
    assert_eq!(ended.status, SagaStatus::Completed);
    assert_eq!(stats.handed.load(Ordering::Relaxed), 2);
    assert_eq!(next_stats.claimed.load(Ordering::Relaxed), 1);
    stop.send(()).unwrap();
    running.await.unwrap().unwrap();
}

/// A saga that finishes frees its slot without a claim when nothing waits for it (nothing
/// it did made a saga runnable), and a worker whose every slot was taken when sagas came
/// claims them as soon as a slot frees: their notifications came while it was full, and its
/// look for work is a minute away.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_finished_saga_wakes_the_claim_only_when_sagas_wait_for_a_slot() {
    let db = paysaga_testkit::database().await;
    // The sagas are started by an engine without a worker (as another process would).
    let starter = engine(db.url()).await;
    let engine = engine(db.url()).await;
    let pool = sqlx::PgPool::connect(db.url()).await.unwrap();
    let mut config = WorkerConfig::default();
    config.concurrency = 2;
    config.idle_poll = Duration::from_secs(60);
    let worker = engine.worker(config);
    let stats = worker.stats();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(worker.run(async {
        let _ = stopped.await;
    }));
    while sqlx::query_scalar::<_, i64>(
        "SELECT count(*) FROM paysaga_workers WHERE stopped_at IS NULL",
    )
    .fetch_one(&pool)
    .await
    .unwrap()
        == 0
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let settle = || tokio::time::sleep(Duration::from_millis(500));
    settle().await;
    let wait = Duration::from_secs(10);
    let start = |key: &'static str, delay_ms: u64| {
        let starter = starter.clone();
        async move {
            starter
                .start("noop", json!({ "delay_ms": delay_ms }), Some(key))
                .await
                .unwrap()
                .saga_id
        }
    };

    // Nothing waits: the saga's notification makes one claim, its end none.
    let claims = stats.claims.load(Ordering::Relaxed);
    let a = start("a", 0).await;
    let ended = starter.wait_for_end(a, wait).await.unwrap();
    assert_eq!(ended.status, SagaStatus::Completed);
    settle().await;
    assert_eq!(stats.claims.load(Ordering::Relaxed), claims + 1);
    assert_eq!(stats.claimed.load(Ordering::Relaxed), 1);

    // Both slots busy when two more come: they run as soon as a slot frees, not at the
    // next look for work a minute later.
    let long = [start("long-1", 400).await, start("long-2", 400).await];
    while stats.claimed.load(Ordering::Relaxed) < 3 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let queued = [start("b", 0).await, start("c", 0).await];
    for id in long.into_iter().chain(queued) {
        let ended = starter.wait_for_end(id, wait).await.unwrap();
        assert_eq!(ended.status, SagaStatus::Completed);
    }
    assert_eq!(stats.claimed.load(Ordering::Relaxed), 5);
    assert_eq!(stats.finished.load(Ordering::Relaxed), 5);
    stop.send(()).unwrap();
    running.await.unwrap().unwrap();
}

/// An engine remembers a workflow's latest version instead of reading it at every start, and
/// never starts an outdated one: a version submitted by another process is picked up by the
/// next start (the insert refuses the remembered one; the start is made again), and an input
/// the remembered version refuses is checked against the latest stored one before it is
/// refused.
#[tokio::test]
async fn a_start_uses_a_version_another_process_submitted_since_the_engine_last_looked() {
    let db = paysaga_testkit::database().await;
    let engine = engine(db.url()).await;
    let other = engine_without_definitions(db.url()).await;
    let pool = sqlx::PgPool::connect(db.url()).await.unwrap();
    let version_of = |id: uuid::Uuid| {
        let pool = pool.clone();
        async move {
            sqlx::query_scalar::<_, i32>("SELECT version FROM paysaga_sagas WHERE id = $1")
                .bind(id)
                .fetch_one(&pool)
                .await
                .unwrap()
        }
    };
    let constant = |version: u32| {
        let mut def = noop::noop_definition();
        def.version = version;
        def.steps.truncate(1);
        def.steps[0].params = json!({"delay_ms": 0});
        def
    };

    let first = engine
        .start("noop", json!({"delay_ms": 0}), Some("one"))
        .await
        .unwrap();
    assert_eq!(version_of(first.saga_id).await, 1);
    // Version 1 refuses an input without delay_ms; version 2 (another process) takes any.
    let pinned = engine
        .start_with(paysaga_runtime::StartRequest {
            workflow: "noop".into(),
            version: Some(1),
            input: json!({}),
            idempotency_key: Some("pinned".into()),
            actor: "test".into(),
        })
        .await;
    assert!(
        matches!(pinned, Err(Error::InvalidInput { .. })),
        "{pinned:?}"
    );
    other.submit_definition(&constant(2)).await.unwrap();
    let second = engine.start("noop", json!({}), Some("two")).await.unwrap();
    assert_eq!(version_of(second.saga_id).await, 2);
    // Version 3 (another process) while this engine remembers version 2, which would take
    // the input too: the insert refuses version 2 and the start is made with version 3.
    other.submit_definition(&constant(3)).await.unwrap();
    let third = engine
        .start("noop", json!({"delay_ms": 0}), Some("three"))
        .await
        .unwrap();
    assert!(third.created);
    assert_eq!(version_of(third.saga_id).await, 3);
    let sagas: i64 = sqlx::query_scalar("SELECT count(*) FROM paysaga_sagas")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(sagas, 3);
}

async fn engine_without_definitions(url: &str) -> Engine {
    let store = PgStore::connect(url).await.unwrap();
    let mut registry = Registry::new();
    registry.register(noop::Sleep);
    Engine::new(Arc::new(store), registry)
}
