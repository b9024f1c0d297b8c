//! The engine as a backend team embeds it: a saga started inside the application's own
//! transaction commits or rolls back with it (no saga, no history, no wake-up on rollback),
//! and `wait_for_end` returns the saga once it ended.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use paysaga_core::SagaStatus;
use paysaga_runtime::{noop, Engine, Registry, StartRequest, WorkerConfig};
use paysaga_store::{PgStore, Store};
use serde_json::json;
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
