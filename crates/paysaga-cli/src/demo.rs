//! `paysaga demo`: runs sagas end to end in one process and prints what happened.
//!
//! Database: `DATABASE_URL` if set, else a server on 127.0.0.1:5432, else a throwaway
//! cluster started from the installed PostgreSQL binaries (see `paysaga-testkit`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use paysaga_runtime::{Engine, WorkerConfig};
use paysaga_store::{PgStore, Store};
use serde_json::json;
use sqlx::Connection;
use uuid::Uuid;

/// Runs the demo.
pub async fn run(url: Option<&str>) -> Result<()> {
    let url = match url {
        Some(u) => u.to_string(),
        None => {
            let server = tokio::task::spawn_blocking(paysaga_testkit::server_url).await?;
            ensure_database(&server, "paysaga_demo").await?
        }
    };
    println!("database: {}", crate::redact_url(&url));
    let store = PgStore::connect(&url)
        .await
        .context("cannot connect to the demo database")?;
    store.migrate().await.context("migrations failed")?;
    let engine = Engine::new(Arc::new(store), crate::registry());
    crate::ensure_builtins(&engine).await?;

    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let worker = engine.worker(WorkerConfig {
        name: "demo".into(),
        concurrency: 8,
        ..WorkerConfig::default()
    });
    let worker = tokio::spawn(worker.run(async move {
        let _ = stop_rx.await;
    }));

    let run_id = Uuid::new_v4().simple().to_string();
    let mut sagas = Vec::new();
    for (i, delay) in [0u64, 20, 50].into_iter().enumerate() {
        let started = engine
            .start(
                "noop",
                json!({"delay_ms": delay}),
                Some(&format!("demo-{run_id}-{i}")),
            )
            .await?;
        println!("started noop saga {} (delay_ms {delay})", started.saga_id);
        sagas.push(started.saga_id);
    }
    let begun = Instant::now();
    loop {
        let mut line = Vec::new();
        let mut done = 0;
        for id in &sagas {
            let view = engine.get(*id).await?;
            if view.saga.status.is_final() {
                done += 1;
            }
            line.push(format!("{}:{}", &id.to_string()[..8], view.saga.status));
        }
        println!(
            "  [{:>5} ms] {}",
            begun.elapsed().as_millis(),
            line.join("  ")
        );
        if done == sagas.len() {
            break;
        }
        anyhow::ensure!(
            begun.elapsed() < Duration::from_secs(60),
            "demo sagas did not finish within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let _ = stop_tx.send(());
    worker.await?.context("worker failed")?;

    println!("\nsummary");
    for id in &sagas {
        let view = engine.get(*id).await?;
        println!(
            "saga {} {} v{}: {}",
            id, view.saga.workflow, view.saga.version, view.saga.status
        );
        let mut prev = view.history.first().map(|h| h.at);
        for h in &view.history {
            let ms = prev
                .map(|p| (h.at - p).num_microseconds().unwrap_or(0) as f64 / 1000.0)
                .unwrap_or(0.0);
            prev = Some(h.at);
            println!(
                "  {:<16} {:<10} +{:>8.2} ms",
                h.kind.as_str(),
                h.step.as_deref().unwrap_or("-"),
                ms
            );
        }
    }
    Ok(())
}

/// Creates `name` on the server if missing; returns its URL.
async fn ensure_database(server: &str, name: &str) -> Result<String> {
    let mut admin = sqlx::PgConnection::connect(server)
        .await
        .with_context(|| format!("cannot connect to {}", crate::redact_url(server)))?;
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(name)
            .fetch_one(&mut admin)
            .await?;
    if !exists {
        sqlx::raw_sql(&format!("CREATE DATABASE \"{name}\""))
            .execute(&mut admin)
            .await?;
    }
    Ok(server
        .rsplit_once('/')
        .map(|(base, _)| format!("{base}/{name}"))
        .unwrap_or_else(|| server.to_string()))
}
