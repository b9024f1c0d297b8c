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

/// The 5-step job; `finished` counts the last step's runs.
pub async fn job(pool: PgPool, finished: Arc<AtomicU64>) -> Result<Job<Noop, ()>> {
    let job = Job::builder()
        .step(|_cx, n: Noop| async move { To::next(n) })
        .step(|_cx, n: Noop| async move { To::next(n) })
        .step(|_cx, n: Noop| async move { To::next(n) })
        .step(|_cx, n: Noop| async move { To::next(n) })
        .step(move |_cx, _n: Noop| {
            let finished = finished.clone();
            async move {
                finished.fetch_add(1, Ordering::Relaxed);
                To::done()
            }
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
/// `progress NAME FINISHED 0` lines and a final `exit finished=N`.
pub async fn run_child(url: &str, name: &str, concurrency: usize) -> Result<()> {
    let pool = PgPoolOptions::new()
        .max_connections(concurrency as u32 + 2)
        .connect(url)
        .await
        .context("underway child: connect")?;
    let finished = Arc::new(AtomicU64::new(0));
    let job = job(pool, finished.clone()).await?;
    let mut worker = job.worker();
    worker.set_concurrency_limit(concurrency);
    let stopper = worker.clone();
    let runner = tokio::spawn(async move { worker.run().await });
    let progress = {
        let finished = finished.clone();
        let name = name.to_string();
        tokio::spawn(async move {
            let mut last = u64::MAX;
            loop {
                let f = finished.load(Ordering::Relaxed);
                if f != last {
                    println!("progress {name} {f} 0");
                    last = f;
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
    println!("exit finished={}", finished.load(Ordering::Relaxed));
    Ok(())
}
