//! Scenario 10 (`--peers`): the peer engine ([`crate::peer`], underway) with the same
//! 5-step no-op workflow on the same private cluster, in the same run, measured as
//! scenarios 1 and 6 measure paysaga: **drain** (N jobs enqueued with no worker running,
//! then W worker processes x concurrency C until every job finished; database clock from
//! the first task attempt to the last task completed) and **single** (one job at a time on
//! one idle worker process; enqueue call -> last step's task seen succeeded, polled every
//! millisecond). The report prints the ratios next to paysaga's and pgbench's.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::Serialize;
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;
use tokio::task::JoinSet;

use super::stop_all;
use crate::child::{Reports, WorkerProc};
use crate::cluster::Server;
use crate::machine;
use crate::peer::{self, Noop};
use crate::stats::Percentiles;
use underway::Job;

/// Parameters (those of scenarios 1 and 6).
#[derive(Debug, Clone)]
pub struct Config {
    /// Jobs in the drain.
    pub jobs: usize,
    /// Worker processes.
    pub workers: usize,
    /// Concurrency of each.
    pub concurrency: usize,
    /// Jobs measured one at a time (after 10 warm-up jobs).
    pub single: usize,
}

/// The peer's figures.
#[derive(Debug, Clone, Serialize)]
pub struct PeerRun {
    /// Engine and version.
    pub engine: String,
    /// Worker processes.
    pub workers: usize,
    /// Concurrency of each.
    pub concurrency: usize,
    /// Jobs.
    pub jobs: usize,
    /// `Job::enqueue` calls per second (16 concurrent callers, no worker running).
    pub enqueue_per_s: f64,
    /// Seconds of the drain (database clock).
    pub drain_seconds: f64,
    /// Jobs whose last step succeeded.
    pub completed: i64,
    /// Step tasks that succeeded.
    pub steps: i64,
    /// Jobs per second.
    pub jobs_per_s: f64,
    /// Steps per second.
    pub steps_per_s: f64,
    /// Transactions that wrote, per step (xid advance during the drain).
    pub write_xacts_per_step: f64,
    /// Committed transactions per step (read-only included).
    pub commits_per_step: f64,
    /// WAL bytes per step.
    pub wal_bytes_per_step: f64,
    /// Worker processes' CPU seconds during the drain.
    pub workers_cpu_s: f64,
    /// PostgreSQL backends' CPU seconds during the drain.
    pub postgres_backends_cpu_s: f64,
    /// Single job on an empty queue (before the drain, as paysaga's scenario 6 runs on a
    /// database of its own): the comparison with paysaga's single saga.
    pub single: Option<PeerSingle>,
    /// Single job again after the drain, with the drain's tasks retained (underway keeps
    /// succeeded tasks for 14 days by default and its dequeue reads them all).
    pub single_after_drain: Option<PeerSingle>,
}

/// One job at a time on one idle worker process.
#[derive(Debug, Clone, Serialize)]
pub struct PeerSingle {
    /// Task rows in the queue when the phase began.
    pub tasks_in_queue: i64,
    /// Enqueue call -> last step seen succeeded (polled every millisecond: a tokio sleep
    /// of 1 ms lasts 1-2 ms, so this is up to ~2 ms late).
    pub end_to_end: Option<Percentiles>,
    /// First task created -> last task completed (database clock; no polling in it).
    pub in_database: Option<Percentiles>,
    /// The `Job::enqueue` call alone.
    pub enqueue_call: Option<Percentiles>,
}

fn per(n: i64, d: f64) -> f64 {
    if d > 0.0 {
        n as f64 / d
    } else {
        0.0
    }
}

/// Runs scenario 10.
pub async fn run(server: &Server, cfg: &Config, log_dir: &std::path::Path) -> Result<PeerRun> {
    let db = server.create_database("peers").await?;
    let result = run_in(&db.url, &db.name, cfg, log_dir).await;
    server.drop_database(&db).await?;
    result
}

async fn run_in(
    url: &str,
    dbname: &str,
    cfg: &Config,
    log_dir: &std::path::Path,
) -> Result<PeerRun> {
    peer::prepare(url).await?;
    crate::machine::enable_statements(url).await;
    let pool = PgPoolOptions::new()
        .max_connections(18)
        .connect(url)
        .await?;
    let job = peer::job(pool.clone(), Arc::default()).await?;
    // The lookup of the single-job phases' tasks (the benchmark's, not underway's).
    sqlx::query("CREATE INDEX bench_task_n ON underway.task ((input->'step_input'->>'n'))")
        .execute(&pool)
        .await?;
    // Single jobs on the empty queue first (paysaga's scenario 6 runs on a database of its
    // own too), then the drain, then single jobs again with the drain's tasks retained.
    let single_empty = single(&job, &pool, url, cfg, log_dir, "empty").await?;

    // Enqueue, no worker running.
    eprintln!(
        "  underway: enqueueing {} jobs (no worker running)...",
        cfg.jobs
    );
    let t = Instant::now();
    let callers = 16.min(cfg.jobs.max(1));
    let mut set = JoinSet::new();
    for c in 0..callers {
        let job = job.clone();
        let n = cfg.jobs;
        set.spawn(async move {
            let mut i = c;
            while i < n {
                job.enqueue(&Noop {
                    delay_ms: 0,
                    n: None,
                })
                .await?;
                i += callers;
            }
            Ok::<_, underway::job::Error>(())
        });
    }
    while let Some(r) = set.join_next().await {
        r?.context("underway: enqueue")?;
    }
    let enqueue_per_s = cfg.jobs as f64 / t.elapsed().as_secs_f64();

    // Drain.
    eprintln!(
        "  underway: draining with {} worker processes x concurrency {}...",
        cfg.workers, cfg.concurrency
    );
    sqlx::query("CHECKPOINT").execute(&pool).await.ok();
    let before = machine::counters(url).await?;
    let reports = Arc::new(Reports::default());
    let workers = (0..cfg.workers)
        .map(|i| {
            WorkerProc::spawn_underway(
                url,
                &format!("uw-w{i}"),
                cfg.concurrency,
                log_dir,
                reports.clone(),
            )
        })
        .collect::<Result<Vec<_>>>()?;
    reports
        .wait_finished(cfg.jobs as u64, Duration::from_secs(180), || {})
        .await
        .context("underway drain")?;
    let workers_cpu_s: f64 = workers.iter().map(|w| w.cpu_seconds()).sum();
    let postgres_backends_cpu_s = machine::backend_cpu_seconds(url, dbname).await;
    let (completed, steps, drain_seconds): (i64, i64, f64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE t.input->>'step_index' = '4'),
                count(*),
                (SELECT extract(epoch FROM max(t.completed_at) - (
                     SELECT min(a.started_at) FROM underway.task_attempt a
                     JOIN underway.task d ON d.id = a.task_id
                     WHERE d.input->'step_input'->>'n' IS NULL))::float8)
         FROM underway.task t
         WHERE t.state = 'succeeded' AND t.input->'step_input'->>'n' IS NULL",
    )
    .fetch_one(&pool)
    .await?;
    stop_all(workers).await?;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let d = machine::counters(url).await?.since(&before);
    let s = steps.max(1) as f64;

    // The same single-job phase with the drain's tasks retained.
    let single_after_drain = single(&job, &pool, url, cfg, log_dir, "after").await?;
    pool.close().await;
    Ok(PeerRun {
        engine: "underway 0.2.0".into(),
        workers: cfg.workers,
        concurrency: cfg.concurrency,
        jobs: cfg.jobs,
        enqueue_per_s,
        drain_seconds,
        completed,
        steps,
        jobs_per_s: per(completed, drain_seconds),
        steps_per_s: per(steps, drain_seconds),
        write_xacts_per_step: per(d.next_xid, s),
        commits_per_step: per(d.xact_commit, s),
        wal_bytes_per_step: per(d.wal_bytes, s),
        workers_cpu_s,
        postgres_backends_cpu_s,
        single: Some(single_empty),
        single_after_drain: Some(single_after_drain),
    })
}

/// One job at a time on one idle worker process (10 warm-up jobs, then `cfg.single`): the
/// enqueue call, the end seen by polling every millisecond, and the database's own times.
async fn single(
    job: &Job<Noop, ()>,
    pool: &PgPool,
    url: &str,
    cfg: &Config,
    log_dir: &std::path::Path,
    phase: &str,
) -> Result<PeerSingle> {
    eprintln!("  underway: {} jobs one at a time ({phase})...", cfg.single);
    let tasks_in_queue: i64 = sqlx::query_scalar("SELECT count(*) FROM underway.task")
        .fetch_one(pool)
        .await?;
    let reports = Arc::new(Reports::default());
    let worker = WorkerProc::spawn_underway(
        url,
        &format!("uw-single-{phase}"),
        cfg.concurrency,
        log_dir,
        reports,
    )?;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // From a task of the runtime, as paysaga's calls in scenario 6 (see `single::measure`).
    let (job, pool_for_calls, phase_name, jobs) =
        (job.clone(), pool.clone(), phase.to_string(), cfg.single);
    let (e2e, calls, measured) =
        tokio::spawn(async move { one_at_a_time(&job, &pool_for_calls, &phase_name, jobs).await })
            .await
            .context("underway: the task making the calls")??;
    stop_all(vec![worker]).await?;
    let db: Vec<f64> = sqlx::query_scalar(
        "SELECT extract(epoch FROM max(completed_at) - min(created_at))::float8 * 1e6
         FROM underway.task WHERE input->'step_input'->>'n' = ANY($1)
         GROUP BY input->'step_input'->>'n'",
    )
    .bind(&measured)
    .fetch_all(pool)
    .await?;
    Ok(PeerSingle {
        tasks_in_queue,
        end_to_end: Percentiles::from_micros(e2e),
        in_database: Percentiles::from_micros(db.iter().map(|v| v.max(0.0) as u64).collect()),
        enqueue_call: Percentiles::from_micros(calls),
    })
}

/// `jobs` jobs one at a time (after 10 warm-up jobs), each polled until its last step's task
/// succeeded: end-to-end and enqueue-call times (µs) and the measured jobs' names.
async fn one_at_a_time(
    job: &Job<Noop, ()>,
    pool: &PgPool,
    phase: &str,
    jobs: usize,
) -> Result<(Vec<u64>, Vec<u64>, Vec<String>)> {
    let warmup = 10;
    let mut e2e = Vec::new();
    let mut calls = Vec::new();
    let mut measured = Vec::new();
    for i in 0..warmup + jobs {
        let n = format!("single-{phase}-{i}");
        let t = Instant::now();
        job.enqueue(&Noop {
            delay_ms: 0,
            n: Some(n.clone()),
        })
        .await
        .context("underway: enqueue")?;
        let call = t.elapsed();
        let deadline = t + Duration::from_secs(30);
        loop {
            let done: bool = sqlx::query_scalar(
                "SELECT EXISTS (SELECT 1 FROM underway.task WHERE input->'step_input'->>'n' = $1
                   AND input->>'step_index' = '4' AND state = 'succeeded')",
            )
            .bind(&n)
            .fetch_one(pool)
            .await?;
            if done {
                break;
            }
            if Instant::now() > deadline {
                bail!("underway job {n} did not finish within 30 s");
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        if i >= warmup {
            e2e.push(t.elapsed().as_micros() as u64);
            calls.push(call.as_micros() as u64);
            measured.push(n);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok((e2e, calls, measured))
}
