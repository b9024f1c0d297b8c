//! The peer engine run next to paysaga (`--peers`): [underway](https://docs.rs/underway)
//! 0.2, a durable step-function engine on PostgreSQL, with the same 5-step no-op workflow
//! (input `{"delay_ms": 0}`, each step returns the next step's input, the last one is
//! done). underway runs each step as a task row: the worker locks the task in a
//! transaction, runs the step, enqueues the next step's task and marks its own task
//! succeeded in that transaction.
//!
//! Its workers run as separate OS processes too (this binary re-run as `underway-child`),
//! with a pool of `concurrency + 2` connections (paysaga's worker: 16 + its lease and
//! listener connections) and the same progress lines as paysaga's worker children.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;
use tokio::io::AsyncReadExt;
use underway::{Job, To};

/// The queue (and job) name of the peer workflow.
pub const QUEUE: &str = "bench_noop";

/// The input of every step (paysaga's `noop` input; `n` names a job of the single-job
/// phase so that the benchmark can find its tasks).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Noop {
    /// Always 0 here.
    pub delay_ms: u64,
    /// The single-job phase's name of the job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n: Option<String>,
}

/// What an underway worker process counts: jobs finished (its last step's runs) and steps
/// run. underway queues tasks in creation order, so a drain runs most first steps before
/// any job's last one: the step count is what shows it moving.
#[derive(Debug, Default)]
pub struct Counts {
    /// Last steps run.
    pub finished: AtomicU64,
    /// Steps run, the last ones included.
    pub steps: AtomicU64,
}

/// The 5-step job, counting into `counts`.
pub async fn job(pool: PgPool, counts: Arc<Counts>) -> Result<Job<Noop, ()>> {
    let step = |counts: &Arc<Counts>| {
        let counts = counts.clone();
        move |_cx, n: Noop| {
            counts.steps.fetch_add(1, Ordering::Relaxed);
            async move { To::next(n) }
        }
    };
    let job = Job::builder()
        .step(step(&counts))
        .step(step(&counts))
        .step(step(&counts))
        .step(step(&counts))
        .step(move |_cx, _n: Noop| {
            counts.steps.fetch_add(1, Ordering::Relaxed);
            counts.finished.fetch_add(1, Ordering::Relaxed);
            async move { To::done() }
        })
        .name(QUEUE)
        .pool(pool)
        .build()
        .await
        .context("build the underway job")?;
    Ok(job)
}

/// Creates underway's schema and queue in the database at `url`.
pub async fn prepare(url: &str) -> Result<()> {
    let pool = PgPoolOptions::new().max_connections(1).connect(url).await?;
    underway::run_migrations(&pool)
        .await
        .context("underway migrations")?;
    job(pool.clone(), Arc::default()).await?;
    pool.close().await;
    Ok(())
}

/// Entry point of an underway worker child process: runs until its stdin closes, prints
/// `progress NAME FINISHED STEPS` lines (the second counter is paysaga's claims: work taken)
/// and a final `exit finished=N`.
pub async fn run_child(url: &str, name: &str, concurrency: usize) -> Result<()> {
    let pool = PgPoolOptions::new()
        .max_connections(concurrency as u32 + 2)
        .connect(url)
        .await
        .context("underway child: connect")?;
    let counts = Arc::new(Counts::default());
    let job = job(pool, counts.clone()).await?;
    let mut worker = job.worker();
    worker.set_concurrency_limit(concurrency);
    let stopper = worker.clone();
    let runner = tokio::spawn(async move { worker.run().await });
    let progress = {
        let counts = counts.clone();
        let name = name.to_string();
        tokio::spawn(async move {
            let mut last = (u64::MAX, u64::MAX);
            loop {
                let now = (
                    counts.finished.load(Ordering::Relaxed),
                    counts.steps.load(Ordering::Relaxed),
                );
                if now != last {
                    println!("progress {name} {} {}", now.0, now.1);
                    last = now;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    let mut stdin = tokio::io::stdin();
    let mut buf = [0u8; 64];
    while let Ok(n) = stdin.read(&mut buf).await {
        if n == 0 {
            break;
        }
    }
    stopper.shutdown();
    runner
        .await
        .context("underway child: join the worker")?
        .context("underway child: worker")?;
    progress.abort();
    println!("exit finished={}", counts.finished.load(Ordering::Relaxed));
    Ok(())
}
