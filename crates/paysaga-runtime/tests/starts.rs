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
/// look for work is a minute away. (Sagas started while the worker has a free slot are
/// handed to it by the insert and claimed by no one; those started while it is full are
/// inserted free and claimed.)
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

    // Nothing waits: the saga is handed to the worker (no claim), its end makes none.
    let claims = stats.claims.load(Ordering::Relaxed);
    let a = start("a", 0).await;
    let ended = starter.wait_for_end(a, wait).await.unwrap();
    assert_eq!(ended.status, SagaStatus::Completed);
    settle().await;
    assert_eq!(stats.claims.load(Ordering::Relaxed), claims);
    assert_eq!(stats.assigned.load(Ordering::Relaxed), 1);
    assert_eq!(stats.claimed.load(Ordering::Relaxed), 0);

    // Both slots busy when two more come: they are inserted free (the worker holds as many
    // sagas as its concurrency) and run as soon as a slot frees, not at the next look for
    // work a minute later.
    let long = [start("long-1", 400).await, start("long-2", 400).await];
    while stats.assigned.load(Ordering::Relaxed) < 3 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let queued = [start("b", 0).await, start("c", 0).await];
    for id in queued {
        let held = starter.store().saga(id).await.unwrap().unwrap();
        assert_eq!(
            held.owner, None,
            "a saga started while every slot is taken is free"
        );
    }
    for id in long.into_iter().chain(queued) {
        let ended = starter.wait_for_end(id, wait).await.unwrap();
        assert_eq!(ended.status, SagaStatus::Completed);
    }
    // The waiter is woken by the end's commit, a moment before the worker counts it.
    let deadline = std::time::Instant::now() + wait;
    while stats.finished.load(Ordering::Relaxed) < 5 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(stats.assigned.load(Ordering::Relaxed), 3);
    assert_eq!(stats.claimed.load(Ordering::Relaxed), 2);
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

/// A worker of `engine` running until the sender is used or dropped, once its row is live.
async fn running_worker(
    engine: &Engine,
    pool: &sqlx::PgPool,
    config: WorkerConfig,
) -> (
    Arc<paysaga_runtime::WorkerStats>,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<Result<(), Error>>,
) {
    let live = || async {
        sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM paysaga_workers WHERE stopped_at IS NULL",
        )
        .fetch_one(pool)
        .await
        .unwrap()
    };
    let before = live().await;
    let worker = engine.worker(config);
    let stats = worker.stats();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(worker.run(async {
        let _ = stopped.await;
    }));
    while live().await == before {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    (stats, stop, running)
}

/// A noop saga started with `key`, inserted held by `worker` with `fence` in the start's own
/// transaction (no notification to the worker): its id.
async fn started_held_by(
    starter: &Engine,
    pool: &sqlx::PgPool,
    key: &str,
    worker: uuid::Uuid,
    fence: i64,
) -> uuid::Uuid {
    let mut tx = pool.begin().await.unwrap();
    let started = starter
        .start_in(
            &mut tx,
            paysaga_runtime::StartRequest {
                workflow: "noop".into(),
                version: None,
                input: json!({"delay_ms": 0}),
                idempotency_key: Some(key.into()),
                actor: "test".into(),
            },
        )
        .await
        .unwrap();
    let updated = sqlx::query("UPDATE paysaga_sagas SET owner = $1, fence = $2 WHERE id = $3")
        .bind(worker)
        .bind(fence)
        .bind(started.saga_id)
        .execute(&mut *tx)
        .await
        .unwrap();
    assert_eq!(updated.rows_affected(), 1);
    tx.commit().await.unwrap();
    started.saga_id
}

/// History rows of `kind` for `saga`.
async fn history_count(pool: &sqlx::PgPool, saga: uuid::Uuid, kind: &str) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM paysaga_history WHERE saga_id = $1 AND kind = $2")
        .bind(saga)
        .bind(kind)
        .fetch_one(pool)
        .await
        .unwrap()
}

/// A start in a process without a worker of its own inserts the saga held by a live worker
/// of another process that has a free slot and every step kind, and wakes that worker alone:
/// it runs the saga without a claim. A worker without the kinds is never handed one, and
/// when the only worker with them holds as many sagas as its concurrency, the saga is
/// inserted free and claimed when a slot frees.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_in_another_process_hands_the_saga_to_a_live_worker_with_a_free_slot_and_every_kind(
) {
    let db = paysaga_testkit::database().await;
    let starter = engine(db.url()).await;
    let with_kinds = engine(db.url()).await;
    let without_kinds = {
        let store = PgStore::connect(db.url()).await.unwrap();
        Engine::new(Arc::new(store), Registry::new())
    };
    let pool = sqlx::PgPool::connect(db.url()).await.unwrap();
    let mut config = WorkerConfig::default();
    config.concurrency = 1;
    config.idle_poll = Duration::from_secs(60);
    let (stats, stop, running) = running_worker(&with_kinds, &pool, config.clone()).await;
    config.concurrency = 4;
    let (other_stats, other_stop, other_running) =
        running_worker(&without_kinds, &pool, config).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let claims = stats.claims.load(Ordering::Relaxed);
    let wait = Duration::from_secs(20);

    let a = starter
        .start("noop", json!({"delay_ms": 0}), Some("a"))
        .await
        .unwrap();
    let ended = starter.wait_for_end(a.saga_id, wait).await.unwrap();
    assert_eq!(ended.status, SagaStatus::Completed);
    assert_eq!(history_count(&pool, a.saga_id, "step_completed").await, 5);
    assert_eq!(stats.assigned.load(Ordering::Relaxed), 1);
    assert_eq!(stats.claims.load(Ordering::Relaxed), claims, "no claim ran");
    assert_eq!(stats.claimed.load(Ordering::Relaxed), 0);
    assert_eq!(history_count(&pool, a.saga_id, "saga_released").await, 0);

    // Its one slot busy: the next saga is inserted free (not held by the worker without the
    // kinds) and claimed when the slot frees.
    let long = starter
        .start("noop", json!({"delay_ms": 150}), Some("long"))
        .await
        .unwrap();
    let held = starter.store().saga(long.saga_id).await.unwrap().unwrap();
    assert!(held.owner.is_some(), "handed: {held:?}");
    let b = starter
        .start("noop", json!({"delay_ms": 0}), Some("b"))
        .await
        .unwrap();
    let free = starter.store().saga(b.saga_id).await.unwrap().unwrap();
    assert_eq!(free.owner, None);
    for id in [long.saga_id, b.saga_id] {
        let ended = starter.wait_for_end(id, wait).await.unwrap();
        assert_eq!(ended.status, SagaStatus::Completed);
    }
    assert_eq!(stats.assigned.load(Ordering::Relaxed), 2);
    assert_eq!(stats.claimed.load(Ordering::Relaxed), 1);
    assert_eq!(other_stats.assigned.load(Ordering::Relaxed), 0);
    assert_eq!(other_stats.claimed.load(Ordering::Relaxed), 0);
    for (stop, running) in [(stop, running), (other_stop, other_running)] {
        stop.send(()).unwrap();
        running.await.unwrap().unwrap();
    }
}

/// Sagas handed to a worker whose slots are all taken when their notifications come (the
/// starts counted free slots: here the worker's row claims more concurrency than it runs)
/// wait for its next free slot, held, and run before anything is claimed; beyond its
/// concurrency in number, the newest is given back at once, with a `saga_released` row
/// saying why, and claimed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sagas_handed_to_a_worker_with_every_slot_taken_wait_for_a_slot_and_the_excess_goes_back() {
    let db = paysaga_testkit::database().await;
    let starter = engine(db.url()).await;
    let engine = engine(db.url()).await;
    let pool = sqlx::PgPool::connect(db.url()).await.unwrap();
    let mut config = WorkerConfig::default();
    config.concurrency = 1;
    config.idle_poll = Duration::from_secs(60);
    let (stats, stop, running) = running_worker(&engine, &pool, config).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let wait = Duration::from_secs(20);
    let long = starter
        .start("noop", json!({"delay_ms": 150}), Some("long"))
        .await
        .unwrap();
    while stats.assigned.load(Ordering::Relaxed) < 1 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    sqlx::query("UPDATE paysaga_workers SET concurrency = 4 WHERE stopped_at IS NULL")
        .execute(&pool)
        .await
        .unwrap();
    let waits = starter
        .start("noop", json!({"delay_ms": 0}), Some("waits"))
        .await
        .unwrap();
    let excess = starter
        .start("noop", json!({"delay_ms": 0}), Some("excess"))
        .await
        .unwrap();
    for id in [long.saga_id, waits.saga_id, excess.saga_id] {
        let ended = starter.wait_for_end(id, wait).await.unwrap();
        assert_eq!(ended.status, SagaStatus::Completed);
        assert_eq!(history_count(&pool, id, "step_completed").await, 5);
    }
    let started_at = |id: uuid::Uuid| {
        let pool = pool.clone();
        async move {
            sqlx::query_scalar::<_, chrono::DateTime<chrono::Utc>>(
                "SELECT min(at) FROM paysaga_history WHERE saga_id = $1 AND kind = 'step_completed'",
            )
            .bind(id)
            .fetch_one(&pool)
            .await
            .unwrap()
        }
    };
    let long_ended: chrono::DateTime<chrono::Utc> = sqlx::query_scalar(
        "SELECT at FROM paysaga_history WHERE saga_id = $1 AND kind = 'saga_completed'",
    )
    .bind(long.saga_id)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert!(
        started_at(waits.saga_id).await > long_ended,
        "ran in the freed slot"
    );
    assert_eq!(
        history_count(&pool, waits.saga_id, "saga_released").await,
        0
    );
    let reason: String = sqlx::query_scalar(
        "SELECT detail->>'reason' FROM paysaga_history WHERE saga_id = $1 AND kind = 'saga_released'",
    )
    .bind(excess.saga_id)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert!(reason.contains("slots were all taken"), "{reason}");
    assert_eq!(history_count(&pool, long.saga_id, "saga_released").await, 0);
    assert_eq!(stats.assigned.load(Ordering::Relaxed), 2);
    assert_eq!(stats.claimed.load(Ordering::Relaxed), 1);
    stop.send(()).unwrap();
    running.await.unwrap().unwrap();
}

/// A saga handed to a worker while it did not hear it (here: inserted held by the worker
/// with no notification, as when its LISTEN connection was down) is found as soon as the
/// connection is back: the worker releases it as held without running it and it runs, long
/// before the periodic look for such sagas (a lease, 60 s here).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saga_handed_while_the_worker_did_not_listen_runs_once_its_listen_connection_is_back() {
    let db = paysaga_testkit::database().await;
    let starter = engine(db.url()).await;
    let engine = engine(db.url()).await;
    let pool = sqlx::PgPool::connect(db.url()).await.unwrap();
    let mut config = WorkerConfig::default();
    config.concurrency = 2;
    config.idle_poll = Duration::from_secs(60);
    config.lease_ttl = Duration::from_secs(60);
    let (stats, stop, running) = running_worker(&engine, &pool, config).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Inserted held by the worker without a word to it (its own channel): the start's
    // transaction gives the new saga to the worker before it commits. The workers' common
    // wake-up it sends makes a claim that finds nothing free.
    let worker: uuid::Uuid =
        sqlx::query_scalar("SELECT id FROM paysaga_workers WHERE stopped_at IS NULL")
            .fetch_one(&pool)
            .await
            .unwrap();
    let lost = started_held_by(&starter, &pool, "lost", worker, 1).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let held = starter.store().saga(lost).await.unwrap().unwrap();
    assert_eq!(
        (held.owner, held.status),
        (Some(worker), SagaStatus::Scheduled)
    );
    let killed: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity
                               WHERE datname = current_database() AND pid <> pg_backend_pid()
                                 AND query LIKE 'LISTEN %paysaga_worker_%') k",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(killed, 1, "the worker's LISTEN connection");
    let ended = starter
        .wait_for_end(lost, Duration::from_secs(15))
        .await
        .unwrap();
    assert_eq!(ended.status, SagaStatus::Completed);
    assert_eq!(stats.orphans_released.load(Ordering::Relaxed), 1);
    assert_eq!(history_count(&pool, lost, "saga_released").await, 1);
    stop.send(()).unwrap();
    running.await.unwrap().unwrap();
}

/// A notification naming a saga this worker runs already (a look for orphans gave the handed
/// saga back before its notification came and a claim took it again; or the notification
/// came twice) starts no second task for it, and one naming a saga held by this worker with
/// a fence past the hand-off's (claimed again since) does not run it: one task per saga.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handed_saga_runs_in_one_task_whatever_notifications_name_it() {
    let db = paysaga_testkit::database().await;
    let starter = engine(db.url()).await;
    let engine = engine(db.url()).await;
    let pool = sqlx::PgPool::connect(db.url()).await.unwrap();
    let mut config = WorkerConfig::default();
    config.concurrency = 4;
    config.idle_poll = Duration::from_secs(60);
    config.lease_ttl = Duration::from_secs(60);
    let (stats, stop, running) = running_worker(&engine, &pool, config).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (worker, channel): (uuid::Uuid, String) =
        sqlx::query_as("SELECT id, wake_channel FROM paysaga_workers WHERE stopped_at IS NULL")
            .fetch_one(&pool)
            .await
            .unwrap();
    let notify = |saga: uuid::Uuid| {
        let (pool, channel) = (pool.clone(), channel.clone());
        async move {
            sqlx::query("SELECT pg_notify($1, $2)")
                .bind(channel)
                .bind(saga.to_string())
                .execute(&pool)
                .await
                .unwrap();
        }
    };

    // Handed and running (each step sleeps): the same notification again.
    let a = starter
        .start("noop", json!({"delay_ms": 200}), Some("a"))
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while history_count(&pool, a.saga_id, "step_completed").await == 0 {
        assert!(std::time::Instant::now() < deadline, "saga a never ran");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    notify(a.saga_id).await;
    let ended = starter
        .wait_for_end(a.saga_id, Duration::from_secs(20))
        .await
        .unwrap();
    assert_eq!(ended.status, SagaStatus::Completed);
    assert_eq!(history_count(&pool, a.saga_id, "step_completed").await, 5);
    assert_eq!(
        stats.assigned.load(Ordering::Relaxed),
        1,
        "one hand-off taken"
    );

    // Held by this worker with fence 2 (as a claim after a give-back leaves it) and run by no
    // task of it: the notification does not run it.
    let b = started_held_by(&starter, &pool, "b", worker, 2).await;
    notify(b).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while stats.assigned.load(Ordering::Relaxed) < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "the notification never came"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(history_count(&pool, b, "step_completed").await, 0);
    let held = starter.store().saga(b).await.unwrap().unwrap();
    assert_eq!(
        (held.owner, held.fence, held.status),
        (Some(worker), 2, SagaStatus::Scheduled)
    );
    stop.send(()).unwrap();
    running.await.unwrap().unwrap();
}
