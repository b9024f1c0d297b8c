//! An axum service that starts a saga inside its own transaction and awaits the result.
//!
//! `payout_service DATABASE_URL ADDR`: `POST /payouts {"id", "amount", "currency"}` writes
//! the application's `app_payouts` row and starts the payout's saga in ONE transaction
//! (`Engine::start_in`): either both exist or neither. It then awaits the saga's end
//! (`Engine::wait_for_end`) and answers with its status and outputs. A retried request with
//! the same id returns the same saga. The same process runs a worker. `GET /metrics` is the
//! service's own Prometheus registry, with paysaga's metric families registered into it
//! (`Metrics::register_into`): no separate paysaga metrics endpoint. Prints
//! `listening on ADDR` once it accepts requests.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use paysaga_core::{Definition, StepDef};
use paysaga_examples::ReserveBudget;
use paysaga_runtime::{noop, Engine, Registry, StartRequest, WorkerConfig};
use serde::Deserialize;
use serde_json::{json, Value};

#[derive(Clone)]
struct App {
    pool: sqlx::PgPool,
    engine: Arc<Engine>,
    /// The service's metrics, paysaga's among them.
    metrics: Arc<prometheus_client::registry::Registry>,
}

/// `GET /metrics`: the service's registry in the Prometheus text format.
async fn metrics(State(app): State<App>) -> Result<String, StatusCode> {
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &app.metrics)
        .map_err(|_| StatusCode::INTERNAL_SERVER_ERROR)?;
    Ok(text)
}

#[derive(Deserialize)]
struct NewPayout {
    id: String,
    /// Minor units.
    amount: i64,
    currency: String,
}

async fn create_payout(
    State(app): State<App>,
    Json(req): Json<NewPayout>,
) -> Result<Json<Value>, (StatusCode, String)> {
    let internal = |e: &dyn std::fmt::Display| (StatusCode::INTERNAL_SERVER_ERROR, e.to_string());
    let mut tx = app.pool.begin().await.map_err(|e| internal(&e))?;
    let started = app
        .engine
        .start_in(
            &mut tx,
            StartRequest {
                workflow: "service_payout".to_string(),
                version: None,
                input: json!({"amount": req.amount, "currency": req.currency}),
                idempotency_key: Some(req.id.clone()),
                actor: "payout-service".to_string(),
            },
        )
        .await
        .map_err(|e| match e {
            paysaga_runtime::Error::InvalidInput { .. } => {
                (StatusCode::UNPROCESSABLE_ENTITY, e.to_string())
            }
            other => internal(&other),
        })?;
    sqlx::query(
        "INSERT INTO app_payouts (id, amount, currency, saga_id) VALUES ($1, $2, $3, $4)
         ON CONFLICT (id) DO NOTHING",
    )
    .bind(&req.id)
    .bind(req.amount)
    .bind(&req.currency)
    .bind(started.saga_id)
    .execute(&mut *tx)
    .await
    .map_err(|e| internal(&e))?;
    tx.commit().await.map_err(|e| internal(&e))?;
    let saga = app
        .engine
        .wait_for_end(started.saga_id, Duration::from_secs(20))
        .await
        .map_err(|e| (StatusCode::ACCEPTED, e.to_string()))?;
    Ok(Json(json!({
        "payout_id": req.id,
        "saga_id": saga.id,
        "created": started.created,
        "status": saga.observed_status(),
        "outputs": saga.outputs,
    })))
}

#[tokio::main]
async fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let usage = "usage: payout_service DATABASE_URL ADDR";
    let url = args.next().context(usage)?;
    let addr = args.next().context(usage)?;

    let store = paysaga_store::connect(&url)
        .await
        .context("cannot connect to the database")?;
    store.migrate().await.context("migrations failed")?;
    let pool = sqlx::PgPool::connect(&url)
        .await
        .context("cannot connect to the database")?;
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS app_payouts (
             id text PRIMARY KEY, amount bigint NOT NULL, currency text NOT NULL,
             saga_id uuid NOT NULL)",
    )
    .execute(&pool)
    .await?;

    let mut registry = Registry::new();
    registry.register(noop::Sleep);
    registry.register(paysaga_core::Typed(ReserveBudget));
    let engine = Arc::new(Engine::new(store, registry));
    engine
        .submit_definition(
            &Definition::builder("service_payout", 1)
                .step(StepDef::new(
                    "reserve",
                    "acme.reserve_budget",
                    json!({"amount": "$.input.amount", "currency": "$.input.currency"}),
                ))
                .step(StepDef::new("settle", "noop.sleep", json!({"delay_ms": 5})))
                .build(),
        )
        .await?;
    tokio::spawn(engine.worker(WorkerConfig::default()).run(async {
        tokio::signal::ctrl_c().await.ok();
    }));

    let mut service_metrics = prometheus_client::registry::Registry::default();
    engine.metrics().register_into(&mut service_metrics);
    let app = Router::new()
        .route("/payouts", post(create_payout))
        .route("/metrics", get(metrics))
        .with_state(App {
            pool,
            engine,
            metrics: Arc::new(service_metrics),
        });
    let listener = tokio::net::TcpListener::bind(&addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;
    println!("listening on {}", listener.local_addr()?);
    axum::serve(listener, app).await?;
    Ok(())
}
