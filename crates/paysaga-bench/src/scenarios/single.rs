//! Scenario 6: one 5-step `noop` saga at a time on an otherwise idle worker, in two
//! deployments: the worker in a process of its own (the saga reaches it by NOTIFY and its
//! claim), and the worker in the process that starts the saga (`Engine::start` inserts the
//! saga held by that worker and hands it over in-process: no NOTIFY, no claim).
//!
//! Two figures per saga: **end to end**, measured here from calling `Engine::start` to
//! seeing the saga finished (polled every millisecond, so it includes up to ~1 ms of
//! polling delay), and **in the database**, from the `saga_started` history entry (written
//! in the start transaction) to the `saga_completed` entry (written in the last commit).

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use paysaga_runtime::WorkerConfig;
use serde::Serialize;
use serde_json::json;
use uuid::Uuid;

use super::{stop_all, Setup};
use crate::child::Reports;
use crate::cluster::Server;
use crate::stats::Percentiles;

/// Scenario 6.
#[derive(Debug, Clone, Serialize)]
pub struct Single {
    /// Sagas measured per phase (after 10 warm-up sagas).
    pub sagas: usize,
    /// The worker in a process of its own (woken by NOTIFY, claims the saga).
    pub worker_process: SinglePhase,
    /// The worker in the process that calls `Engine::start` (handed the saga in-process).
    pub in_process: Option<SinglePhase>,
    /// Of the in-process phase's sagas (warm-up included), how many were handed over.
    pub handed: Option<u64>,
}

/// One deployment's figures.
#[derive(Debug, Clone, Serialize)]
pub struct SinglePhase {
    /// Start call to finished seen.
    pub end_to_end: Option<Percentiles>,
    /// `saga_started` to `saga_completed` (database clock).
    pub in_database: Option<Percentiles>,
    /// The `Engine::start` call alone.
    pub start_call: Option<Percentiles>,
    /// Where the time goes (history times, database clock, `clock_timestamp()`):
    /// `saga_started` (inside the start's statement) -> first `step_completed` (the
    /// start's commit, then the NOTIFY to the worker and its claim or the in-process
    /// hand-off, the step and its commit statement).
    pub started_to_first_step: Option<Percentiles>,
    /// One `step_completed` -> the next (one step: its run and its one-statement commit,
    /// including the previous commit's WAL flush).
    pub step_to_step: Option<Percentiles>,
    /// End to end less (start call + in the database): the start's return after its
    /// insert, the last commit's flush and reply, and the 1 ms polling.
    pub outside_database_p50_ms: Option<f64>,
    /// Statements of the measured phase (`pg_stat_statements`, by total server time), to
    /// count round trips per saga.
    pub statements: Vec<crate::machine::StatementStat>,
}

/// Runs scenario 6.
pub async fn run(
    server: &Server,
    sagas: usize,
    concurrency: usize,
    log_dir: &std::path::Path,
) -> Result<Single> {
    let setup = Setup::new(server, "single", log_dir).await?;
    let result = run_in(&setup, sagas, concurrency).await;
    setup.finish(server).await?;
    result
}

async fn run_in(setup: &Setup, sagas: usize, concurrency: usize) -> Result<Single> {
    let reports = Arc::new(Reports::default());
    let workers = setup.spawn_workers(1, concurrency, "single", &reports)?;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let worker_process = measure(setup, sagas, "single").await;
    stop_all(workers).await?;
    let worker_process = worker_process?;
    // The same with the worker in this process, on the engine that starts the sagas.
    let mut config = WorkerConfig::default();
    config.name = "single-in-process".to_string();
    config.concurrency = concurrency;
    let worker = setup.engine.worker(config);
    let stats = worker.stats();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(worker.run(async {
        let _ = stopped.await;
    }));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let in_process = measure(setup, sagas, "single-local").await;
    let _ = stop.send(());
    running
        .await
        .context("in-process worker task")?
        .context("in-process worker")?;
    let in_process = in_process?;
    // A start during the worker's claim round trip (its free slot held) goes the usual way:
    // most, not all, are handed over.
    let handed = stats.handed.load(std::sync::atomic::Ordering::Relaxed);
    if handed < sagas as u64 / 2 {
        bail!(
            "the in-process worker was handed {handed} of {} sagas: the hand-off did not happen",
            sagas + 10
        );
    }
    Ok(Single {
        sagas,
        worker_process,
        in_process: Some(in_process),
        handed: Some(handed),
    })
}

/// Starts `sagas` sagas one at a time (after 10 warm-up ones), each after the previous one
/// finished, and measures them.
async fn measure(setup: &Setup, sagas: usize, label: &str) -> Result<SinglePhase> {
    let mut e2e = Vec::new();
    let mut start_call = Vec::new();
    let mut ids = Vec::new();
    let warmup = 10;
    for i in 0..warmup + sagas {
        if i == warmup {
            crate::machine::reset_statements(&setup.db.url).await.ok();
        }
        let t = Instant::now();
        let id = setup
            .engine
            .start(
                "noop",
                json!({"delay_ms": 0}),
                Some(&format!("{label}-{i}")),
            )
            .await?
            .saga_id;
        let started = t.elapsed();
        let deadline = t + Duration::from_secs(30);
        loop {
            let done: bool = sqlx::query_scalar(
                "SELECT finished_at IS NOT NULL FROM paysaga_sagas WHERE id = $1",
            )
            .bind(id)
            .fetch_one(&setup.pool)
            .await?;
            if done {
                break;
            }
            if Instant::now() > deadline {
                bail!("saga {id} did not finish within 30 s");
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        if i >= warmup {
            e2e.push(t.elapsed().as_micros() as u64);
            start_call.push(started.as_micros() as u64);
            ids.push(id);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let statements = crate::machine::top_statements(&setup.db.url, 14)
        .await
        .unwrap_or_default();
    // Gaps between consecutive history entries of each saga.
    let gaps: Vec<(String, String, f64)> = sqlx::query_as(
        "SELECT coalesce(lag(kind) OVER w, ''), kind,
                coalesce(extract(epoch FROM at - lag(at) OVER w)::float8 * 1e6, 0)
         FROM paysaga_history WHERE saga_id = ANY($1)
         WINDOW w AS (PARTITION BY saga_id ORDER BY id)",
    )
    .bind(&ids as &[Uuid])
    .fetch_all(&setup.pool)
    .await
    .unwrap_or_default();
    let first: Vec<u64> = gaps
        .iter()
        .filter(|g| g.0 == "saga_started" && g.1 == "step_completed")
        .map(|g| g.2.max(0.0) as u64)
        .collect();
    let steps: Vec<u64> = gaps
        .iter()
        .filter(|g| g.0 == "step_completed" && g.1 == "step_completed")
        .map(|g| g.2.max(0.0) as u64)
        .collect();
    let db: Vec<f64> = sqlx::query_scalar(
        "SELECT extract(epoch FROM c.at - s.at)::float8 * 1e6
         FROM paysaga_history s JOIN paysaga_history c ON c.saga_id = s.saga_id AND c.kind = 'saga_completed'
         WHERE s.kind = 'saga_started' AND s.saga_id = ANY($1)",
    )
    .bind(&ids as &[Uuid])
    .fetch_all(&setup.pool)
    .await?;
    let end_to_end = Percentiles::from_micros(e2e);
    let in_database = Percentiles::from_micros(db.iter().map(|v| v.max(0.0) as u64).collect());
    let start_call = Percentiles::from_micros(start_call);
    let outside_database_p50_ms = match (&end_to_end, &in_database, &start_call) {
        (Some(e), Some(d), Some(s)) => Some(e.p50_ms - d.p50_ms - s.p50_ms),
        _ => None,
    };
    Ok(SinglePhase {
        end_to_end,
        in_database,
        start_call,
        started_to_first_step: Percentiles::from_micros(first),
        step_to_step: Percentiles::from_micros(steps),
        outside_database_p50_ms,
        statements,
    })
}
