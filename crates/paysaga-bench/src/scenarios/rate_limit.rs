//! Scenario 7, provider rate limits across workers (issue 16 item 1): `paysaga worker`
//! processes (the real binary, next to this one) run Lumanu payouts (`lumanu_prefund`, 7
//! steps) against `paysaga sandbox --rate-limit lumanu=R/s`, the workers configured with
//! `PAYSAGA_LUMANU_RATE_LIMIT=R/s` (one budget in the database). Measured: the requests the
//! sandbox refused (share of all), and the accepted rate while the run is busy (between 10% and
//! 90% of its accepted requests, sampled every 250 ms), against the limit.

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use paysaga_core::{Attempts, Definition};
use paysaga_runtime::{Engine, Registry};
use paysaga_store::{PgStore, Store};
use serde::Serialize;
use serde_json::{json, Value};

use super::cli_processes::{free_port, repo, wait_port, Kill};
use crate::cluster::Server;

/// What to run.
#[derive(Debug, Clone)]
pub struct Config {
    /// Lumanu-bound steps (sagas = steps / 7, rounded up).
    pub steps: usize,
    /// Worker processes.
    pub workers: usize,
    /// Concurrency of each.
    pub concurrency: usize,
    /// The sandbox's and the workers' limit, requests per second.
    pub limit: f64,
}

/// The figures.
#[derive(Debug, Clone, Serialize)]
pub struct RateLimitRun {
    pub sagas: usize,
    pub steps: usize,
    pub workers: usize,
    pub concurrency: usize,
    pub limit_per_s: f64,
    pub completed: i64,
    pub not_completed: i64,
    pub seconds: f64,
    pub requests: u64,
    pub rejected: u64,
    pub rejected_pct: f64,
    /// Accepted requests per second over the whole run (includes the tail of webhook waits).
    pub accepted_per_s_overall: f64,
    /// Accepted requests per second while busy (10%..90% of the accepted requests).
    pub accepted_per_s_busy: f64,
    pub achieved_pct_of_limit: f64,
}

async fn counts(base: &str) -> Result<(u64, u64)> {
    let stats: Value = reqwest::get(format!("{base}/_sandbox/stats"))
        .await?
        .json()
        .await?;
    let l = &stats["providers"]["lumanu"];
    Ok((
        l["requests"].as_u64().unwrap_or(0),
        l["rejected"].as_u64().unwrap_or(0),
    ))
}

pub async fn run(server: &Server, cfg: &Config, log_dir: &Path) -> Result<RateLimitRun> {
    let bin = std::env::current_exe()?.with_file_name("paysaga");
    if !bin.exists() {
        bail!(
            "{} is missing: build it in the same profile (`cargo build -p paysaga-cli`)",
            bin.display()
        );
    }
    std::fs::create_dir_all(log_dir)?;
    let db = server.create_database("ratelimit").await?;
    let store = PgStore::connect(&db.url).await?;
    store.migrate().await?;
    let mut registry = Registry::new();
    for kind in paysaga_providers::steps::validation_kinds() {
        registry.register_arc(kind);
    }
    let engine = Engine::new(Arc::new(store), registry);
    let text = std::fs::read_to_string(repo().join("workflows/lumanu_prefund.toml"))?;
    let mut def = Definition::from_toml(&text)?;
    for step in &mut def.steps {
        step.retry.initial_delay = Duration::from_millis(200);
        step.retry.max_delay = Duration::from_secs(2);
        if let Attempts::Limited(n) = step.retry.max_attempts {
            step.retry.max_attempts = Attempts::Limited(n.max(30));
        }
        step.poll_every = Duration::from_secs(1);
    }
    let steps_per_saga = def.steps.len();
    engine.submit_definition(&def).await?;

    let limit = format!("{}/s", cfg.limit);
    let sandbox_port = free_port()?;
    let webhook_port = free_port()?;
    let base = format!("http://127.0.0.1:{sandbox_port}");
    let log = |name: &str| std::fs::File::create(log_dir.join(format!("ratelimit-{name}.log")));
    let mut children = Kill(Vec::new());
    children.0.push(
        Command::new(&bin)
            .args(["sandbox", "--addr", &format!("127.0.0.1:{sandbox_port}")])
            .args([
                "--dev-credentials",
                "--rate-limit",
                &format!("lumanu={limit}"),
            ])
            .args([
                "--webhook-base",
                &format!("http://127.0.0.1:{webhook_port}"),
            ])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(log("sandbox")?)
            .spawn()
            .context("start paysaga sandbox")?,
    );
    wait_port(sandbox_port, "the sandbox")?;
    for i in 0..cfg.workers {
        let port = if i == 0 { webhook_port } else { free_port()? };
        children.0.push(
            Command::new(&bin)
                .args(["worker", "--http-addr", &format!("127.0.0.1:{port}")])
                .args(["--worker-id", &format!("rl-{i}"), "--no-migrate"])
                .args(["--concurrency", &cfg.concurrency.to_string()])
                .env("DATABASE_URL", &db.url)
                .env("PAYSAGA_LUMANU_RATE_LIMIT", &limit)
                .envs(paysaga_providers::sandbox_env(&base))
                .env("RUST_LOG", "warn")
                .stdout(Stdio::null())
                .stderr(log(&format!("worker-{i}"))?)
                .spawn()
                .context("start paysaga worker")?,
        );
        wait_port(port, "a worker")?;
    }

    let sagas = cfg.steps.div_ceil(steps_per_saga);
    let example: Value = serde_json::from_str(&std::fs::read_to_string(
        repo().join("workflows/examples/lumanu_prefund.json"),
    )?)?;
    let (before_requests, before_rejected) = counts(&base).await?;
    let started = Instant::now();
    let run = uuid::Uuid::new_v4().simple().to_string();
    for n in 0..sagas {
        let mut input = example.clone();
        input["workspace_id"] = json!(uuid::Uuid::new_v4().to_string());
        input["amount"] = json!(1000 + n as i64);
        input["description"] = json!(format!("bench {run} {n}"));
        input["payee"] = json!({"email": format!("creator-{run}-{n}@example.com")});
        engine
            .start("lumanu_prefund", input, Some(&format!("rl-{run}-{n}")))
            .await?;
    }
    let pool = sqlx::PgPool::connect(&db.url).await?;
    let mut samples: Vec<(f64, u64)> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(900);
    loop {
        let (r, j) = counts(&base).await?;
        samples.push((
            started.elapsed().as_secs_f64(),
            (r - before_requests) - (j - before_rejected),
        ));
        let open: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM paysaga_sagas WHERE status IN ('scheduled', 'retrying', 'waiting', 'compensating')",
        )
        .fetch_one(&pool)
        .await?;
        if open == 0 || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let seconds = started.elapsed().as_secs_f64();
    let (r, j) = counts(&base).await?;
    drop(children);
    let requests = r - before_requests;
    let rejected = j - before_rejected;
    let completed: i64 =
        sqlx::query_scalar("SELECT count(*) FROM paysaga_sagas WHERE status = 'completed'")
            .fetch_one(&pool)
            .await?;
    pool.close().await;
    server.drop_database(&db).await?;
    let accepted = requests - rejected;
    let at = |share: f64| {
        samples
            .iter()
            .find(|(_, n)| *n as f64 >= share * accepted as f64)
            .copied()
            .unwrap_or((seconds, accepted))
    };
    let (t10, n10) = at(0.1);
    let (t90, n90) = at(0.9);
    let busy = if t90 > t10 {
        (n90 - n10) as f64 / (t90 - t10)
    } else {
        0.0
    };
    Ok(RateLimitRun {
        sagas,
        steps: sagas * steps_per_saga,
        workers: cfg.workers,
        concurrency: cfg.concurrency,
        limit_per_s: cfg.limit,
        completed,
        not_completed: sagas as i64 - completed,
        seconds,
        requests,
        rejected,
        rejected_pct: rejected as f64 * 100.0 / requests.max(1) as f64,
        accepted_per_s_overall: accepted as f64 / seconds,
        accepted_per_s_busy: busy,
        achieved_pct_of_limit: busy * 100.0 / cfg.limit,
    })
}
