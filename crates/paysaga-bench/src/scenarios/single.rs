//! Scenario 6: one 5-step `noop` saga at a time on an otherwise idle worker, in two
//! deployments: the worker in a process of its own (the start inserts the saga held by that
//! worker, which has a free slot, and the NOTIFY on the worker's own channel names it: the
//! worker reads it and runs it, no claim), and the worker in the process that starts the
//! saga (`Engine::start` inserts the saga held by that worker and hands it over in-process:
//! no NOTIFY, no claim).
//!
//! Each saga is run with `Engine::start_and_wait`, the library's call for "start this and
//! give me its end": the insert marks the saga awaited, and its end wakes the caller (the
//! end's NOTIFY from another process, or the last commit of this process's worker). Figures
//! per saga: **end to end**, the call to its return with the ended saga; **in the
//! database**, from the `saga_started` history entry (written in the start's statement) to
//! the `saga_completed` entry (written in the last commit); and the two ends outside it,
//! from the call to `saga_started` and from `saga_completed` to the return. The database
//! runs on this machine (the benchmark's private cluster), so its `clock_timestamp()` and
//! this process's clock are the same clock.

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
    /// The worker in a process of its own (the start inserts the saga held by it and
    /// notifies it alone, on its own channel; no claim).
    pub worker_process: SinglePhase,
    /// The worker in the process that calls `Engine::start` (handed the saga in-process).
    pub in_process: Option<SinglePhase>,
    /// Of the in-process phase's sagas (warm-up included), how many were handed over.
    pub handed: Option<u64>,
    /// Of the own-process phase's sagas (warm-up included), how many the worker was handed
    /// by their insert (the others it claimed).
    pub assigned: Option<u64>,
}

/// One deployment's figures.
#[derive(Debug, Clone, Serialize)]
pub struct SinglePhase {
    /// Start call to finished seen.
    pub end_to_end: Option<Percentiles>,
    /// `saga_started` to `saga_completed` (database clock).
    pub in_database: Option<Percentiles>,
    /// The call -> `saga_started` (the start's checks and its statement up to its history
    /// row): the database's clock against this process's, the same machine's clock.
    pub call_to_started: Option<Percentiles>,
    /// `saga_completed` -> the call's return (the rest of the last commit, its WAL flush and
    /// reply, the wake-up of the caller and its read of the ended saga).
    pub completed_to_return: Option<Percentiles>,
    /// Where the time goes (history times, database clock, `clock_timestamp()`):
    /// `saga_started` (inside the start's statement) -> first `step_completed` (the
    /// start's commit, then the NOTIFY to the worker and its claim or the in-process
    /// hand-off, the step and its commit statement).
    pub started_to_first_step: Option<Percentiles>,
    /// One `step_completed` -> the next (one step: its run and its one-statement commit,
    /// including the previous commit's WAL flush).
    pub step_to_step: Option<Percentiles>,
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
    let assigned = reports.exit_sum("assigned");
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
        assigned: Some(assigned),
    })
}

/// Runs `sagas` sagas one at a time with `Engine::start_and_wait` (after 10 warm-up ones),
/// each after the previous one ended, and measures them.
async fn measure(setup: &Setup, sagas: usize, label: &str) -> Result<SinglePhase> {
    // The calls are made from a task of the runtime, as a service's request handlers make
    // them. From `block_on`'s thread (not one of the runtime's) every hand-over to the
    // worker's task and every wake-up of the caller crosses threads: an inject queue, a
    // futex wake and the I/O driver's eventfd, ~0.1 ms per hop (docs/PERFORMANCE.md).
    let (engine, url, label) = (
        setup.engine.clone(),
        setup.db.url.clone(),
        label.to_string(),
    );
    let (e2e, ids, called_returned) =
        tokio::spawn(async move { calls(&engine, &url, sagas, &label).await })
            .await
            .context("the task making the calls")??;
    measured(setup, e2e, ids, called_returned).await
}

/// Per saga: the call and the return, on this process's clock.
type CalledReturned = Vec<(
    Uuid,
    chrono::DateTime<chrono::Utc>,
    chrono::DateTime<chrono::Utc>,
)>;

/// Makes the calls of [`measure`]: end-to-end times, saga ids, call and return times.
async fn calls(
    engine: &paysaga_runtime::Engine,
    url: &str,
    sagas: usize,
    label: &str,
) -> Result<(Vec<u64>, Vec<Uuid>, CalledReturned)> {
    let mut e2e = Vec::new();
    let mut ids = Vec::new();
    let mut called_returned = Vec::new();
    let warmup = 10;
    for i in 0..warmup + sagas {
        if i == warmup {
            crate::machine::reset_statements(url).await.ok();
        }
        let (called, t) = (chrono::Utc::now(), Instant::now());
        let saga = engine
            .start_and_wait(
                paysaga_runtime::StartRequest {
                    workflow: "noop".to_string(),
                    version: None,
                    input: json!({"delay_ms": 0}),
                    idempotency_key: Some(format!("{label}-{i}")),
                    actor: "bench".to_string(),
                },
                Duration::from_secs(30),
            )
            .await
            .with_context(|| format!("saga {label}-{i}"))?;
        let took = t.elapsed();
        let returned = chrono::Utc::now();
        if saga.status != paysaga_core::SagaStatus::Completed {
            bail!("saga {} ended {}", saga.id, saga.status.as_str());
        }
        if i >= warmup {
            e2e.push(took.as_micros() as u64);
            ids.push(saga.id);
            called_returned.push((saga.id, called, returned));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok((e2e, ids, called_returned))
}

/// The figures of [`measure`] from its calls and the sagas' history.
async fn measured(
    setup: &Setup,
    e2e: Vec<u64>,
    ids: Vec<Uuid>,
    called_returned: CalledReturned,
) -> Result<SinglePhase> {
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
    // Per saga: `saga_started` -> `saga_completed` (in the database), and the two ends
    // outside it: the call -> `saga_started`, `saga_completed` -> the return.
    let ends: Vec<(
        Uuid,
        chrono::DateTime<chrono::Utc>,
        chrono::DateTime<chrono::Utc>,
    )> = sqlx::query_as(
        "SELECT s.saga_id, s.at, c.at
             FROM paysaga_history s
             JOIN paysaga_history c ON c.saga_id = s.saga_id AND c.kind = 'saga_completed'
             WHERE s.kind = 'saga_started' AND s.saga_id = ANY($1)",
    )
    .bind(&ids as &[Uuid])
    .fetch_all(&setup.pool)
    .await?;
    let ends: std::collections::HashMap<_, _> =
        ends.into_iter().map(|(id, s, c)| (id, (s, c))).collect();
    let micros = |d: chrono::TimeDelta| d.num_microseconds().unwrap_or(0).max(0) as u64;
    let (mut before, mut inside, mut after) = (Vec::new(), Vec::new(), Vec::new());
    for (id, called, returned) in &called_returned {
        if let Some((started, completed)) = ends.get(id) {
            before.push(micros(*started - *called));
            inside.push(micros(*completed - *started));
            after.push(micros(*returned - *completed));
        }
    }
    Ok(SinglePhase {
        end_to_end: Percentiles::from_micros(e2e),
        in_database: Percentiles::from_micros(inside),
        call_to_started: Percentiles::from_micros(before),
        completed_to_return: Percentiles::from_micros(after),
        started_to_first_step: Percentiles::from_micros(first),
        step_to_step: Percentiles::from_micros(steps),
        statements,
    })
}
