//! Scenario 8 (issue 14 item 5): retention at scale. N finished sagas (1 million, quick
//! 100 thousand; each with two history rows), finished 100 days ago, are pruned with
//! `Store::prune_finished(90 days, 500)` in a loop paced as a worker's automatic retention
//! (`--retention 90d`) paces it: after each batch, the pause of
//! [`paysaga_runtime::retention_pause`] (five times as long as the batch took), while W
//! workers drain a backlog of 5-step `noop` sagas.
//! (`paysaga prune` runs its batches back to back: on this 2-core machine that cost a
//! concurrent drain about 16%, see docs/PERFORMANCE.md.)
//!
//! The same workers drain throughout; pruning runs in segments that alternate with segments
//! without it (without, with, without, ..., with, without: `window` with pruning, half of it
//! without), until every finished saga is pruned. Throughput is completed sagas per second
//! from the workers' own counters. The cost is 1 - (the rate over the segments with pruning)
//! / (the rate over those without). Alternating, rather than a window before and one after,
//! takes the drift of a long run out of the comparison (the database warming up, autovacuum
//! finishing, the backlog and the tables changing): both rates sample the whole run.

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
    /// Sagas/s over the segments without pruning.
    pub without_pruning: f64,
    /// Sagas/s over the segments with pruning.
    pub with_pruning: f64,
    /// 1 - with / without, in percent.
    pub cost_pct: f64,
    /// Each segment with pruning against the mean of the two without it around it (percent):
    /// lowest, median, highest.
    pub segment_costs_pct: [f64; 3],
    /// Segments with pruning (each `window` long, the last one shorter).
    pub segments_with: usize,
    /// Segments without pruning (each half `window`).
    pub segments_without: usize,
    /// Sagas pruned (all of them: the loop ran until a batch was not full).
    pub pruned: u64,
    /// History rows pruned with them.
    pub history_pruned: u64,
    /// Batches.
    pub batches: u64,
    /// Batch size.
    pub batch: i64,
    /// Seconds spent in the segments with pruning (batches and their pauses).
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

/// One segment of the run: with pruning or not, its seconds and the sagas completed in it.
#[derive(Debug, Clone, Copy)]
struct Segment {
    pruning: bool,
    seconds: f64,
    completed: u64,
}

impl Segment {
    fn rate(&self) -> f64 {
        self.completed as f64 / self.seconds.max(1e-9)
    }
}

/// Segments with and without pruning, alternating (see the module's documentation), until
/// `pruner` has pruned every finished saga older than 90 days.
async fn alternate(
    reports: &Reports,
    pruner: &PgStore,
    window: Duration,
) -> Result<(Vec<Segment>, paysaga_store::Pruned, u64)> {
    let mut segments = Vec::new();
    let mut total = paysaga_store::Pruned::default();
    let mut batches = 0;
    let mut done = false;
    let measure = |pruning: bool, f0: u64, t0: Instant| Segment {
        pruning,
        seconds: t0.elapsed().as_secs_f64(),
        completed: reports.finished() - f0,
    };
    loop {
        let (f0, t0) = (reports.finished(), Instant::now());
        tokio::time::sleep(window / 2).await;
        segments.push(measure(false, f0, t0));
        if done {
            return Ok((segments, total, batches));
        }
        let (f0, t0) = (reports.finished(), Instant::now());
        let end = t0 + window;
        while Instant::now() < end {
            let started = Instant::now();
            let p = pruner
                .prune_finished(Duration::from_secs(90 * 86_400), BATCH)
                .await?;
            batches += 1;
            total.sagas += p.sagas;
            total.history += p.history;
            if p.sagas < BATCH as u64 {
                done = true;
                break;
            }
            let pause = paysaga_runtime::retention_pause(started.elapsed());
            tokio::time::sleep(pause.min(end.saturating_duration_since(Instant::now()))).await;
        }
        segments.push(measure(true, f0, t0));
    }
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
    // A backlog the run cannot exhaust (checked at the end): pruning paced as retention goes
    // at 1,400-1,700 sagas/s here, the segments without it add half, and 2 x 16 workers
    // drain up to ~1,900 sagas/s: up to ~1.7 drained per pruned.
    let backlog: u64 = (finished * 2).max(200_000);
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
    eprintln!(
        "  prune: {workers} workers drain while {finished} finished sagas are pruned in segments of {} s (and {} s without)",
        window.as_secs_f64(),
        window.as_secs_f64() / 2.0
    );
    let reports = Arc::new(Reports::default());
    let procs = setup.spawn_workers(workers, concurrency, "prune", &reports)?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let alternated = alternate(&reports, &pruner, window).await;
    stop_all(procs).await?;
    let (segments, p, batches) = alternated?;
    let left: i64 =
        sqlx::query_scalar("SELECT count(*) FROM paysaga_sagas WHERE status = 'scheduled'")
            .fetch_one(&setup.pool)
            .await?;
    if left == 0 {
        bail!("the backlog of {backlog} runnable sagas ran out: the segments' rates are not comparable");
    }
    let sum = |pruning: bool| {
        segments
            .iter()
            .filter(|s| s.pruning == pruning)
            .fold((0u64, 0f64, 0usize), |(c, t, n), s| {
                (c + s.completed, t + s.seconds, n + 1)
            })
    };
    let ((on_c, on_t, on_n), (off_c, off_t, off_n)) = (sum(true), sum(false));
    let (with, without) = (on_c as f64 / on_t.max(1e-9), off_c as f64 / off_t.max(1e-9));
    // Each segment with pruning against the two without it around it.
    let mut pairs: Vec<f64> = segments
        .windows(3)
        .filter(|w| w[1].pruning && !w[0].pruning && !w[2].pruning)
        .map(|w| {
            let around = (w[0].rate() + w[2].rate()) / 2.0;
            (1.0 - w[1].rate() / around.max(1e-9)) * 100.0
        })
        .collect();
    pairs.sort_by(f64::total_cmp);
    let segment_costs_pct = match (pairs.first(), pairs.last()) {
        (Some(lo), Some(hi)) => [*lo, pairs[pairs.len() / 2], *hi],
        _ => [0.0; 3],
    };
    Ok(PruneCost {
        finished,
        load_seconds,
        workers,
        concurrency,
        backlog,
        without_pruning: without,
        with_pruning: with,
        cost_pct: if without > 0.0 {
            (1.0 - with / without) * 100.0
        } else {
            0.0
        },
        segment_costs_pct,
        segments_with: on_n,
        segments_without: off_n,
        pruned: p.sagas,
        history_pruned: p.history,
        batches,
        batch: BATCH,
        prune_seconds: on_t,
    })
}
