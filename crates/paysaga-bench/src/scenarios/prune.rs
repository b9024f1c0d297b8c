//! Scenario 8 (issue 14 item 5): retention at scale. N finished sagas (1 million, quick
//! 100 thousand; each with two history rows), finished 100 days ago, are pruned with
//! `Store::prune_finished(90 days, 500)` in a loop paced as a worker's automatic retention
//! (`--retention 90d`) paces it: after each batch, the pause of
//! [`paysaga_runtime::retention_pause`] (three times as long as the batch took), while W
//! workers drain a backlog of 5-step `noop` sagas.
//! (`paysaga prune` runs its batches back to back: on this 2-core machine that cost a
//! concurrent drain about 16%, see docs/PERFORMANCE.md.)
//!
//! Throughput is completed sagas per second over a window, measured three times on the same
//! database and backlog: without pruning (a window before), with pruning (from the first
//! batch to the last), without pruning (a window after); the cost is 1 - with / mean of the
//! two without.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use paysaga_store::{PgStore, Store};
use serde::Serialize;

use super::{stop_all, Setup};
use crate::child::Reports;
use crate::cluster::Server;

/// Scenario 8.
#[derive(Debug, Clone, Serialize)]
pub struct PruneCost {
    /// Finished sagas to prune.
    pub finished: u64,
    /// Seconds to load them.
    pub load_seconds: f64,
    /// Worker processes x concurrency of the throughput run.
    pub workers: usize,
    /// Concurrency of each worker.
    pub concurrency: usize,
    /// Runnable sagas in the backlog.
    pub backlog: u64,
    /// Sagas/s without pruning, before.
    pub without_before: f64,
    /// Sagas/s while pruning.
    pub with_pruning: f64,
    /// Sagas/s without pruning, after.
    pub without_after: f64,
    /// 1 - with / mean(without), in percent.
    pub cost_pct: f64,
    /// Sagas pruned (all of them: the loop ran until a batch was not full).
    pub pruned: u64,
    /// History rows pruned with them.
    pub history_pruned: u64,
    /// Batches.
    pub batches: u64,
    /// Batch size.
    pub batch: i64,
    /// Seconds pruning took.
    pub prune_seconds: f64,
}

/// Runs scenario 8.
pub async fn run(
    server: &Server,
    finished: u64,
    workers: usize,
    concurrency: usize,
    window: Duration,
    log_dir: &std::path::Path,
) -> Result<PruneCost> {
    let setup = Setup::new(server, "prune", log_dir).await?;
    let result = measure(&setup, finished, workers, concurrency, window).await;
    setup.finish(server).await?;
    result
}

/// Completed sagas per second over a window of a throughput run: `pruning` runs during the
/// window (which is then as long as it takes), else the window is `window`.
async fn rate(
    setup: &Setup,
    workers: usize,
    concurrency: usize,
    window: Duration,
    label: &str,
    pruning: Option<&PgStore>,
) -> Result<(f64, Option<(paysaga_store::Pruned, u64, f64)>)> {
    let reports = Arc::new(Reports::default());
    let procs = setup.spawn_workers(workers, concurrency, label, &reports)?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (f0, t0) = (reports.finished(), Instant::now());
    let pruned = match pruning {
        None => {
            tokio::time::sleep(window).await;
            None
        }
        Some(store) => {
            let mut total = paysaga_store::Pruned::default();
            let mut batches = 0;
            loop {
                let started = Instant::now();
                let p = store
                    .prune_finished(Duration::from_secs(90 * 86_400), BATCH)
                    .await?;
                batches += 1;
                total.sagas += p.sagas;
                total.history += p.history;
                if p.sagas < BATCH as u64 {
                    break;
                }
                tokio::time::sleep(paysaga_runtime::retention_pause(started.elapsed())).await;
            }
            Some((total, batches, t0.elapsed().as_secs_f64()))
        }
    };
    let (f1, seconds) = (reports.finished(), t0.elapsed().as_secs_f64());
    stop_all(procs).await?;
    Ok(((f1 - f0) as f64 / seconds, pruned))
}

/// The batch of the worker's automatic retention.
const BATCH: i64 = 500;

async fn measure(
    setup: &Setup,
    finished: u64,
    workers: usize,
    concurrency: usize,
    window: Duration,
) -> Result<PruneCost> {
    let load_seconds =
        super::idle::load_finished(setup, finished, Duration::from_secs(100 * 86_400)).await?;
    // A backlog the three windows cannot exhaust (checked at the end).
    let backlog: u64 = finished.max(150_000);
    let def = setup.definition_id("noop").await?;
    sqlx::query(
        "INSERT INTO paysaga_sagas (id, definition_id, workflow, version, idempotency_key, input, status, run_at)
         SELECT gen_random_uuid(), $1, 'noop', 1, 'run-' || g, '{\"delay_ms\": 0}', 'scheduled', now()
         FROM generate_series(1, $2::bigint) g",
    )
    .bind(def)
    .bind(backlog as i64)
    .execute(&setup.pool)
    .await?;
    sqlx::raw_sql("VACUUM ANALYZE paysaga_sagas")
        .execute(&setup.pool)
        .await?;
    let pruner = PgStore::connect(&setup.db.url).await?;
    eprintln!("  prune: throughput without pruning...");
    let (before, _) = rate(setup, workers, concurrency, window, "pa", None).await?;
    eprintln!("  prune: throughput while pruning {finished} finished sagas...");
    let (with, pruned) = rate(setup, workers, concurrency, window, "pb", Some(&pruner)).await?;
    eprintln!("  prune: throughput without pruning, again...");
    let (after, _) = rate(setup, workers, concurrency, window, "pc", None).await?;
    let left: i64 =
        sqlx::query_scalar("SELECT count(*) FROM paysaga_sagas WHERE status = 'scheduled'")
            .fetch_one(&setup.pool)
            .await?;
    if left == 0 {
        bail!("the backlog of {backlog} runnable sagas ran out: the windows' rates are not comparable");
    }
    let Some((p, batches, prune_seconds)) = pruned else {
        bail!("no pruning figures");
    };
    let without = (before + after) / 2.0;
    Ok(PruneCost {
        finished,
        load_seconds,
        workers,
        concurrency,
        backlog,
        without_before: before,
        with_pruning: with,
        without_after: after,
        cost_pct: if without > 0.0 {
            (1.0 - with / without) * 100.0
        } else {
            0.0
        },
        pruned: p.sagas,
        history_pruned: p.history,
        batches,
        batch: BATCH,
        prune_seconds,
    })
}
