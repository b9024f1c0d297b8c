//! A host application exposes paysaga's metrics from its own Prometheus registry
//! (`Metrics::register_into`), next to its own metrics, instead of a separate `/metrics`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use paysaga_core::SagaStatus;
use paysaga_runtime::{noop, Engine, Registry, WorkerConfig};
use paysaga_store::{PgStore, Store};
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use serde_json::json;

#[tokio::test]
async fn the_host_registry_exposes_the_step_and_saga_metrics_of_a_saga_that_ran() {
    let db = paysaga_testkit::database().await;
    let store = PgStore::connect(db.url()).await.unwrap();
    store.migrate().await.unwrap();
    let mut kinds = Registry::new();
    kinds.register(noop::Sleep);
    let engine = Engine::new(Arc::new(store), kinds);
    engine
        .submit_definition(&noop::noop_definition())
        .await
        .unwrap();

    // The host's registry, with a metric of its own.
    let mut host = prometheus_client::registry::Registry::default();
    let orders = Counter::<u64>::default();
    host.register("shop_orders", "Orders taken", orders.clone());
    orders.inc();
    engine.metrics().register_into(&mut host);

    let started = engine
        .start("noop", json!({"delay_ms": 0}), Some("order-1"))
        .await
        .unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    // The operator gauges (`paysaga_sagas_started` among them) come from the database, computed
    // by one worker every `gauges.every`: soon, and counting the saga at once.
    let mut config = WorkerConfig::default();
    config.gauges.every = Duration::from_millis(200);
    config.gauges.started_lag = Duration::ZERO;
    let worker = engine.worker(config);
    let running = tokio::spawn(worker.run(async {
        stopped.await.ok();
    }));
    let saga = engine
        .wait_for_end(started.saga_id, Duration::from_secs(20))
        .await
        .unwrap();
    assert_eq!(saga.status, SagaStatus::Completed);
    // Until the gauges were computed after the start (the worker's first computation may
    // have run before it), and the worker counted the end it committed (the waiter is woken
    // by the commit itself, a moment before the worker's task counts it).
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let text = loop {
        let mut text = String::new();
        encode(&mut text, &host).unwrap();
        if text.contains(r#"paysaga_sagas_started_total{workflow="noop"} 1"#)
            && text.contains("paysaga_sagas_finished_total")
        {
            break text;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no started count: {text}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    stop.send(()).unwrap();
    running.await.unwrap().unwrap();
    assert!(text.contains("shop_orders_total 1"), "{text}");
    // The five noop steps ran and the saga completed, as the host's exposition shows.
    assert!(
        text.contains(
            r#"paysaga_step_duration_seconds_count{workflow="noop",kind="noop.sleep",outcome="done"} 5"#
        ),
        "{text}"
    );
    assert!(
        text.contains(r#"paysaga_sagas_finished_total{workflow="noop",status="completed"} 1"#),
        "{text}"
    );
    // The other families are there too (labelled ones once they have a series), once.
    for family in [
        "# TYPE paysaga_sagas_started counter",
        "# TYPE paysaga_claim_batch_size histogram",
        "# TYPE paysaga_lease_takeovers counter",
        "# TYPE paysaga_sagas_needs_operator gauge",
    ] {
        assert_eq!(text.matches(family).count(), 1, "{family} in {text}");
    }
    // The engine's own exposition (a worker's `GET /metrics`) is unchanged: the same values.
    assert!(engine
        .metrics()
        .render()
        .contains(r#"paysaga_sagas_finished_total{workflow="noop",status="completed"} 1"#));
}
