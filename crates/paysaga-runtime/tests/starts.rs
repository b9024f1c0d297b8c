//! Starting sagas from Rust values and in bulk through the library: `start_typed` stores the
//! serialized input, `start_many` answers one result per item in order, a refused item does
//! not stop the others, and the same items again start nothing new.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use paysaga_runtime::{noop, Engine, Error, Registry};
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
