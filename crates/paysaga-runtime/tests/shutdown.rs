//! A worker's stop when its database has just restarted: the stop is recorded once the
//! database answers again, so the sagas it held are released at once, not when its lease
//! expires, and the worker exits cleanly (a SIGTERM during a database crash in the chaos run
//! used to end in "worker failed").
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use paysaga_runtime::{noop, Engine, Registry, WorkerConfig};
use paysaga_store::{ConnectOptions, PgStore, Store};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_stopping_just_after_its_database_restarted_records_its_stop_and_releases_its_sagas(
) {
    let cluster = Arc::new(paysaga_testkit::Cluster::start("shutdown"));
    let url = cluster.url("postgres");
    // Two pooled connections (none kept aside for the hot path): both are used in the
    // moments before the restart, so the stop meets a dead one (connections used within the
    // last seconds are not pinged before a statement).
    let store = PgStore::connect_with(&url, &ConnectOptions::default().max_connections(2))
        .await
        .unwrap();
    store.migrate().await.unwrap();
    let mut registry = Registry::new();
    registry.register(noop::Sleep);
    let engine = Engine::new(Arc::new(store), registry);
    engine
        .submit_definition(&noop::noop_definition())
        .await
        .unwrap();
    let mut config = WorkerConfig::default();
    config.lease_ttl = Duration::from_secs(120);
    config.shutdown_grace = Duration::from_millis(100);
    let worker = engine.worker(config);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(worker.run(async {
        let _ = stopped.await;
    }));
    // A saga whose step outlasts the grace: the worker holds it until its stop releases it.
    let started = engine
        .start("noop", json!({"delay_ms": 600_000}), Some("long"))
        .await
        .unwrap();
    let check = sqlx::PgPool::connect(&url).await.unwrap();
    let owner = || async {
        sqlx::query_scalar::<_, Option<uuid::Uuid>>("SELECT owner FROM paysaga_sagas WHERE id = $1")
            .bind(started.saga_id)
            .fetch_one(&check)
            .await
            .unwrap()
    };
    let held_by = loop {
        if let Some(w) = owner().await {
            break w;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    check.close().await;
    let (a, b) = tokio::join!(
        engine.store().find_saga_by_key("noop", "long"),
        engine.store().find_saga_by_key("noop", "long"),
    );
    assert!(a.unwrap().is_some() && b.unwrap().is_some());
    let restarting = cluster.clone();
    tokio::task::spawn_blocking(move || restarting.restart_immediate())
        .await
        .unwrap();
    stop.send(()).unwrap();
    let result = tokio::time::timeout(Duration::from_secs(30), running)
        .await
        .expect("the worker did not exit within 30 s")
        .unwrap();
    assert!(
        result.is_ok(),
        "the worker's stop failed after the restart: {result:?}"
    );
    let check = sqlx::PgPool::connect(&url).await.unwrap();
    let (stopped_at, owner, fence): (
        Option<chrono::DateTime<chrono::Utc>>,
        Option<uuid::Uuid>,
        i64,
    ) = sqlx::query_as(
        "SELECT w.stopped_at, s.owner, s.fence FROM paysaga_workers w, paysaga_sagas s
             WHERE w.id = $1 AND s.id = $2",
    )
    .bind(held_by)
    .bind(started.saga_id)
    .fetch_one(&check)
    .await
    .unwrap();
    assert!(stopped_at.is_some(), "the stop was not recorded");
    assert_eq!(owner, None, "the saga is still held by the stopped worker");
    let released: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM paysaga_history
         WHERE saga_id = $1 AND kind = 'saga_released' AND worker = $2",
    )
    .bind(started.saga_id)
    .bind(held_by)
    .fetch_one(&check)
    .await
    .unwrap();
    assert_eq!(
        released, 1,
        "one release of the saga by the stop (fence {fence})"
    );
}
