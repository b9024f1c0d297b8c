//! A worker process with a custom step kind next to the built-in ones.
//!
//! `custom_step_worker DATABASE_URL`: migrates, submits the `budgeted_noop` workflow (built in
//! Rust), starts one saga (idempotent on its key), runs a worker until the saga ends, prints
//! the saga's outputs as JSON on stdout and exits 0 if it completed.

use std::time::Duration;

use anyhow::{bail, Context, Result};
use paysaga_core::{Definition, SagaStatus, StepDef};
use paysaga_examples::ReserveBudget;
use paysaga_runtime::{noop, Engine, Registry, WorkerConfig};
use serde_json::json;

#[tokio::main]
async fn main() -> Result<()> {
    let url = std::env::args()
        .nth(1)
        .context("usage: custom_step_worker DATABASE_URL")?;
    let store = paysaga_store::connect(&url)
        .await
        .context("cannot connect to the database")?;
    store.migrate().await.context("migrations failed")?;

    let mut registry = Registry::new();
    registry.register(noop::Sleep);
    registry.register(paysaga_core::Typed(ReserveBudget));
    let engine = Engine::new(store, registry);

    let workflow = Definition::builder("budgeted_noop", 1)
        .description("reserve a budget, then sleep")
        .step(StepDef::new(
            "reserve",
            "acme.reserve_budget",
            json!({"amount": "$.input.amount", "currency": "$.input.currency"}),
        ))
        .step(StepDef::new("sleep", "noop.sleep", json!({"delay_ms": 10})))
        .build();
    engine.submit_definition(&workflow).await?;
    let started = engine
        .start(
            "budgeted_noop",
            json!({"amount": 12_500, "currency": "EUR"}),
            Some("campaign-7"),
        )
        .await?;

    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let worker = engine.worker(WorkerConfig::default());
    let running = tokio::spawn(worker.run(async {
        stopped.await.ok();
    }));
    let saga = engine
        .wait_for_end(started.saga_id, Duration::from_secs(30))
        .await?;
    stop.send(()).ok();
    running.await??;
    println!("{}", serde_json::to_string(&saga.outputs)?);
    if saga.status != SagaStatus::Completed {
        bail!(
            "saga {} ended {}: {:?}",
            saga.id,
            saga.status,
            saga.last_error
        );
    }
    Ok(())
}
