//! Scenario 12, a Lumanu campaign at scale (issue 15): one `lumanu_campaign` saga of N
//! creators (default 10,000) run by one `paysaga worker` process (the real binary, next to this
//! one) against `paysaga sandbox --time-scale 0` (no scripted delays, no faults, no rate
//! limit). Measured: time from the start to the campaign completed (every creator paid), the
//! worker's RSS (peak and at the end), the database's growth per child saga, and the Lumanu
//! requests the run made (the look-before-create of each payable scans the workspace's
//! payables: Lumanu's list has no filter that finds one payable).

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
    /// Creators in the campaign.
    pub creators: usize,
    /// Concurrency of the worker.
    pub concurrency: usize,
    /// Give up after this long.
    pub timeout: Duration,
}

/// The figures.
#[derive(Debug, Clone, Serialize)]
pub struct CampaignRun {
    pub creators: usize,
    pub concurrency: usize,
    pub status: String,
    pub paid: i64,
    /// Start -> campaign completed (all paid).
    pub seconds: f64,
    /// Start -> the fan-out step done (every child ended).
    pub fan_out_seconds: Option<f64>,
    pub children_per_s: f64,
    pub worker_rss_peak_mib: f64,
    pub worker_rss_end_mib: f64,
    pub db_bytes_before: i64,
    pub db_bytes_after: i64,
    pub db_bytes_per_child: f64,
    pub sagas_table_bytes: i64,
    pub history_table_bytes: i64,
    pub history_rows: i64,
    pub lumanu_requests: u64,
    pub balance_fundings: usize,
    /// Payables of the campaign's workspace at Lumanu (the sandbox's objects), and how many
    /// of them are paid: each creator paid exactly once means both equal `creators`.
    pub payables: usize,
    pub payables_paid: usize,
}

/// A workflow file at bench timings (retries from 200 ms, waits polled every second).
fn definition(name: &str) -> Result<Definition> {
    let text = std::fs::read_to_string(repo().join(format!("workflows/{name}.toml")))?;
    let mut def = Definition::from_toml(&text)?;
    for step in &mut def.steps {
        step.retry.initial_delay = Duration::from_millis(200);
        step.retry.max_delay = Duration::from_secs(2);
        if let Attempts::Limited(n) = step.retry.max_attempts {
            step.retry.max_attempts = Attempts::Limited(n.max(30));
        }
        step.poll_every = Duration::from_secs(1);
    }
    Ok(def)
}

pub async fn run(server: &Server, cfg: &Config, log_dir: &Path) -> Result<CampaignRun> {
    let bin = std::env::current_exe()?.with_file_name("paysaga");
    if !bin.exists() {
        bail!(
            "{} is missing: build it in the same profile (`cargo build -p paysaga-cli --features dev`)",
            bin.display()
        );
    }
    std::fs::create_dir_all(log_dir)?;
    let db = server.create_database("campaign").await?;
    let store = PgStore::connect(&db.url).await?;
    store.migrate().await?;
    let mut registry = Registry::new();
    for kind in paysaga_providers::steps::validation_kinds() {
        registry.register_arc(kind);
    }
    let engine = Engine::new(Arc::new(store), registry);
    for name in ["lumanu_campaign_payee", "lumanu_campaign"] {
        engine.submit_definition(&definition(name)?).await?;
    }

    let sandbox_port = free_port()?;
    let webhook_port = free_port()?;
    let base = format!("http://127.0.0.1:{sandbox_port}");
    let log = |name: &str| std::fs::File::create(log_dir.join(format!("campaign-{name}.log")));
    let mut children = Kill(Vec::new());
    children.0.push(
        Command::new(&bin)
            .args(["sandbox", "--addr", &format!("127.0.0.1:{sandbox_port}")])
            .args(["--dev-credentials", "--time-scale", "0"])
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
    let worker = Command::new(&bin)
        .args([
            "worker",
            "--http-addr",
            &format!("127.0.0.1:{webhook_port}"),
        ])
        .args(["--worker-id", "campaign-0", "--no-migrate"])
        .args(["--concurrency", &cfg.concurrency.to_string()])
        .env("DATABASE_URL", &db.url)
        .envs(paysaga_providers::sandbox_env(&base))
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(log("worker")?)
        .spawn()
        .context("start paysaga worker")?;
    let worker_pid = worker.id();
    children.0.push(worker);
    wait_port(webhook_port, "the worker")?;

    let pool = sqlx::PgPool::connect(&db.url).await?;
    let db_size = || async {
        sqlx::query_scalar::<_, i64>("SELECT pg_database_size(current_database())")
            .fetch_one(&pool)
            .await
    };
    let db_bytes_before = db_size().await?;
    let requests = || async {
        let stats: Value = reqwest::get(format!("{base}/_sandbox/stats"))
            .await?
            .json()
            .await?;
        Ok::<_, anyhow::Error>(
            stats["providers"]["lumanu"]["requests"]
                .as_u64()
                .unwrap_or(0),
        )
    };
    let requests_before = requests().await?;

    let mut input: Value = serde_json::from_str(&std::fs::read_to_string(
        repo().join("workflows/examples/lumanu_campaign.json"),
    )?)?;
    let run = uuid::Uuid::new_v4().simple().to_string();
    let workspace = uuid::Uuid::new_v4().to_string();
    let creators: Vec<Value> = (0..cfg.creators)
        .map(|i| {
            json!({
                "id": format!("c{i}"),
                "amount": 1000 + (i % 1000) as i64,
                "email": format!("creator-{i}@creators.example"),
            })
        })
        .collect();
    let total: i64 = creators.iter().filter_map(|c| c["amount"].as_i64()).sum();
    input["workspace_id"] = json!(workspace);
    input["description"] = json!(format!("bench campaign {run}"));
    input["total"] = json!(total);
    input["creators"] = Value::Array(creators);
    let started = Instant::now();
    let id = engine
        .start("lumanu_campaign", input, Some(&format!("campaign-{run}")))
        .await?
        .saga_id;
    let mut rss_peak_kib = 0u64;
    let mut fan_out_seconds = None;
    let saga = loop {
        if let Some((rss, hwm)) = crate::machine::rss_kib(worker_pid) {
            rss_peak_kib = rss_peak_kib.max(rss).max(hwm);
        }
        let saga = engine
            .store()
            .saga(id)
            .await?
            .context("the campaign saga vanished")?;
        if fan_out_seconds.is_none() && saga.outputs.get("creators").is_some() {
            fan_out_seconds = Some(started.elapsed().as_secs_f64());
        }
        if saga.status.is_final() || started.elapsed() > cfg.timeout {
            break saga;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let seconds = started.elapsed().as_secs_f64();
    let rss_end_kib = crate::machine::rss_kib(worker_pid).map_or(0, |(rss, _)| rss);
    let lumanu_requests = requests().await?.saturating_sub(requests_before);
    let objects: Value = reqwest::get(format!("{base}/_sandbox/lumanu/objects"))
        .await?
        .json()
        .await?;
    let balance_fundings = objects["fundings"].as_array().map_or(0, |f| {
        f.iter()
            .filter(|f| f["workspace_id"] == workspace.as_str() && f["method"] == "balance")
            .count()
    });
    let (payables, payables_paid) = objects["payables"].as_array().map_or((0, 0), |p| {
        let mine: Vec<&Value> = p
            .iter()
            .filter(|p| p["workspace_id"] == workspace.as_str())
            .collect();
        let paid = mine
            .iter()
            .filter(|p| p["payable_status"] == "paid")
            .count();
        (mine.len(), paid)
    });
    drop(children);
    // Sizes after a checkpoint-free ANALYZE: pg_database_size counts allocated pages.
    let db_bytes_after = db_size().await?;
    let relation = |name: &'static str| {
        let pool = pool.clone();
        async move {
            sqlx::query_scalar::<_, i64>("SELECT pg_total_relation_size($1::regclass)")
                .bind(name)
                .fetch_one(&pool)
                .await
        }
    };
    let sagas_table_bytes = relation("paysaga_sagas").await?;
    let history_table_bytes = relation("paysaga_history").await?;
    let history_rows: i64 = sqlx::query_scalar("SELECT count(*) FROM paysaga_history")
        .fetch_one(&pool)
        .await?;
    pool.close().await;
    server.drop_database(&db).await?;
    let paid = saga.outputs["await_paid"]["paid_count"]
        .as_i64()
        .unwrap_or(0);
    Ok(CampaignRun {
        creators: cfg.creators,
        concurrency: cfg.concurrency,
        status: saga.status.to_string(),
        paid,
        seconds,
        fan_out_seconds,
        children_per_s: cfg.creators as f64 / fan_out_seconds.unwrap_or(seconds),
        worker_rss_peak_mib: rss_peak_kib as f64 / 1024.0,
        worker_rss_end_mib: rss_end_kib as f64 / 1024.0,
        db_bytes_before,
        db_bytes_after,
        db_bytes_per_child: (db_bytes_after - db_bytes_before) as f64 / cfg.creators as f64,
        sagas_table_bytes,
        history_table_bytes,
        history_rows,
        lumanu_requests,
        balance_fundings,
        payables,
        payables_paid,
    })
}
