//! Scenario 1 (throughput of the 5-step `noop` workflow), scenario 2 (the `pgbench`
//! ceiling on the same database at the same client count) and the worker memory during
//! scenario 1.
//!
//! Phases: **submit** N sagas through [`paysaga_runtime::Engine::start`] with no worker
//! running; **drain**: start W worker processes with concurrency C and measure until every
//! saga finished (commits, WAL and CPU counted over this phase only: the hot path);
//! **latency**: with the workers still running, start sagas at half the measured drain rate
//! for a few seconds and measure start-to-complete of each; then **pgbench**.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::Serialize;
use serde_json::json;
use tokio::task::JoinSet;
use uuid::Uuid;

use super::{stop_all, Setup};
use crate::child::Reports;
use crate::cluster::Server;
use crate::machine::{self, Counters, StatementStat};
use crate::stats::Percentiles;

/// Parameters.
#[derive(Debug, Clone)]
pub struct Config {
    /// Sagas in the drain phase.
    pub sagas: usize,
    /// Worker processes.
    pub workers: usize,
    /// Concurrency of each worker.
    pub concurrency: usize,
    /// Length of the latency phase.
    pub latency_secs: u64,
    /// Start rate of the latency phase (sagas/s); `None`: half the drain rate.
    pub latency_rate: Option<f64>,
    /// Length of the pgbench run.
    pub pgbench_secs: u64,
}

/// Submitting sagas through the engine (no worker running).
#[derive(Debug, Clone, Serialize)]
pub struct SubmitPhase {
    /// Seconds.
    pub seconds: f64,
    /// `Engine::start` calls per second (16 concurrent callers).
    pub starts_per_s: f64,
    /// Transactions that wrote, per start.
    pub write_xacts_per_start: f64,
    /// WAL bytes per start.
    pub wal_bytes_per_start: f64,
}

/// CPU time during the drain.
#[derive(Debug, Clone, Serialize)]
pub struct CpuSplit {
    /// Seconds of the drain (wall).
    pub wall_s: f64,
    /// Worker processes (user + system).
    pub workers_s: f64,
    /// PostgreSQL backends serving the benchmark database.
    pub postgres_backends_s: f64,
    /// This process (the benchmark's monitoring).
    pub bench_process_s: f64,
    /// All CPUs busy, machine-wide (includes other users of the machine).
    pub machine_busy_s: f64,
    /// CPU seconds available (cores x wall).
    pub machine_total_s: f64,
}

/// The drain: the throughput figures.
#[derive(Debug, Clone, Serialize)]
pub struct DrainPhase {
    /// Seconds from the first step a worker committed to the last saga completed (database
    /// clock).
    pub seconds: f64,
    /// Seconds from starting the workers to seeing every saga finished (this process).
    pub wall_seconds: f64,
    /// Sagas completed.
    pub completed: i64,
    /// Sagas that ended otherwise (failed, compensated, cancelled).
    pub not_completed: i64,
    /// Steps completed (history entries).
    pub steps: i64,
    /// Sagas per second.
    pub sagas_per_s: f64,
    /// Steps per second.
    pub steps_per_s: f64,
    /// Committed transactions per saga (`pg_stat_database.xact_commit`, read-only ones
    /// included, the benchmark's own progress queries excluded).
    pub commits_per_saga: f64,
    /// Transactions that wrote (and so waited for a WAL flush) per saga.
    pub write_xacts_per_saga: f64,
    /// Transactions that wrote per step, claims included.
    pub write_xacts_per_step: f64,
    /// Claims that returned sagas (write transactions; `paysaga_claim_batch_size_count` of
    /// the workers' metrics).
    pub claim_batches: u64,
    /// Worker-lease bookkeeping transactions (register, heartbeat, stop: rows written by
    /// `INSERT`/`UPDATE paysaga_workers`, from `pg_stat_statements`).
    pub lease_bookkeeping_xacts: i64,
    /// Write transactions per step other than claims and lease bookkeeping: the durable
    /// commits of the hot path (a step done and the next one run under the same lease), the
    /// target's figure.
    pub hot_path_commits_per_step: f64,
    /// Rolled-back transactions per saga.
    pub rollbacks_per_saga: f64,
    /// Statements executed per step (`pg_stat_statements`, 0 without it).
    pub statements_per_step: f64,
    /// WAL bytes per saga.
    pub wal_bytes_per_saga: f64,
    /// WAL bytes per step (WAL insert position before/after).
    pub wal_bytes_per_step: f64,
    /// WAL bytes per saga as `pg_stat_wal.wal_bytes` counts them (a cross-check).
    pub pg_stat_wal_bytes_per_saga: f64,
    /// WAL records per step.
    pub wal_records_per_step: f64,
    /// WAL flushes (fsync) per step.
    pub wal_syncs_per_step: f64,
    /// Share of `paysaga_sagas` updates that were HOT (touched no index), %.
    pub hot_update_pct: f64,
    /// CPU split.
    pub cpu: CpuSplit,
    /// Peak RSS of each worker process during the drain, MiB.
    pub worker_rss_peak_mib: Vec<f64>,
    /// Raw counter deltas.
    pub counters: Counters,
    /// Final counters the workers printed.
    pub worker_exits: Vec<String>,
}

/// Start-to-complete latency at half the measured throughput.
#[derive(Debug, Clone, Serialize)]
pub struct LatencyPhase {
    /// Sagas started per second (open loop).
    pub rate_per_s: f64,
    /// Sagas measured.
    pub sagas: usize,
    /// From the `saga_started` history entry (inside the start transaction) to the
    /// `saga_completed` entry (inside the final commit), database clock.
    pub start_to_complete: Option<Percentiles>,
}

/// Scenario 2: pgbench on the same database.
#[derive(Debug, Clone, Serialize)]
pub struct Ceiling {
    /// Clients (= workers x concurrency).
    pub clients: usize,
    /// pgbench threads.
    pub threads: usize,
    /// Seconds.
    pub seconds: u64,
    /// The script.
    pub script: String,
    /// Transactions per second (without connection time).
    pub tps: f64,
    /// Average latency, ms.
    pub latency_avg_ms: f64,
    /// WAL bytes per transaction.
    pub wal_bytes_per_tx: f64,
    /// WAL flushes per transaction.
    pub wal_syncs_per_tx: f64,
    /// The same script with one client: the latency of one durable commit round trip
    /// (the floor under every sequential step), ms.
    pub one_client_latency_ms: Option<f64>,
    /// Transactions per second with one client.
    pub one_client_tps: Option<f64>,
}

/// Scenarios 1 and 2.
#[derive(Debug, Clone, Serialize)]
pub struct Throughput {
    /// Workers.
    pub workers: usize,
    /// Concurrency per worker.
    pub concurrency: usize,
    /// Sagas.
    pub sagas: usize,
    /// Submit phase.
    pub submit: SubmitPhase,
    /// Drain phase.
    pub drain: DrainPhase,
    /// Latency phase.
    pub latency: LatencyPhase,
    /// Top statements of the drain by server time.
    pub top_statements: Vec<StatementStat>,
    /// pgbench runs: before and after paysaga's phases.
    pub ceiling: Vec<Ceiling>,
    /// Mean tps of the pgbench runs.
    pub ceiling_mean_tps: Option<f64>,
    /// Why pgbench did not run, if it did not.
    pub ceiling_error: Option<String>,
    /// steps/s divided by the mean pgbench tps.
    pub ratio_to_ceiling: Option<f64>,
}

fn per(n: i64, d: f64) -> f64 {
    if d > 0.0 {
        n as f64 / d
    } else {
        0.0
    }
}

/// Runs scenarios 1 and 2.
pub async fn run(server: &Server, cfg: &Config, log_dir: &std::path::Path) -> Result<Throughput> {
    let setup = Setup::new(server, "throughput", log_dir).await?;
    let result = run_in(&setup, cfg).await;
    setup.finish(server).await?;
    result
}

async fn run_in(setup: &Setup, cfg: &Config) -> Result<Throughput> {
    let url = setup.db.url.clone();
    // The ceiling is measured before and after paysaga's phases (the machine is shared:
    // the ratio uses the mean of both).
    let clients = cfg.workers * cfg.concurrency;
    eprintln!("  pgbench ceiling (before), {clients} clients...");
    let ceiling_before = pgbench(setup, clients, cfg.pgbench_secs).await;

    // Submit.
    eprintln!("  submitting {} sagas (no worker running)...", cfg.sagas);
    let before = machine::counters(&url).await?;
    let t = Instant::now();
    let callers = 16.min(cfg.sagas.max(1));
    let mut set = JoinSet::new();
    for c in 0..callers {
        let engine = setup.engine.clone();
        let n = cfg.sagas;
        set.spawn(async move {
            let mut i = c;
            while i < n {
                engine
                    .start("noop", json!({"delay_ms": 0}), Some(&format!("bench-{i}")))
                    .await?;
                i += callers;
            }
            Ok::<_, paysaga_runtime::Error>(())
        });
    }
    while let Some(r) = set.join_next().await {
        r??;
    }
    let submit_s = t.elapsed().as_secs_f64();
    let d = machine::counters(&url).await?.since(&before);
    let submit = SubmitPhase {
        seconds: submit_s,
        starts_per_s: cfg.sagas as f64 / submit_s,
        write_xacts_per_start: per(d.next_xid, cfg.sagas as f64),
        wal_bytes_per_start: per(d.wal_bytes, cfg.sagas as f64),
    };

    // Drain.
    eprintln!(
        "  draining with {} worker processes x concurrency {}...",
        cfg.workers, cfg.concurrency
    );
    sqlx::query("CHECKPOINT").execute(&setup.pool).await.ok();
    machine::reset_statements(&url).await.ok();
    let before = machine::counters(&url).await?;
    let cpu_before = machine::machine_cpu();
    let self_before = machine::cpu_seconds(std::process::id()).unwrap_or(0.0);
    let reports = Arc::new(Reports::default());
    let start = Instant::now();
    let workers = setup.spawn_workers(cfg.workers, cfg.concurrency, "tp", &reports)?;
    let mut peaks = vec![0.0_f64; workers.len()];
    // Progress comes from the workers' own counters (stdout), not from polling the
    // database, so that the measurement adds no load to the server.
    reports
        .wait_finished(cfg.sagas as u64, Duration::from_secs(180), || {
            for (peak, w) in peaks.iter_mut().zip(&workers) {
                if let Some((_, hwm)) = w.rss_mib() {
                    *peak = peak.max(hwm);
                }
            }
        })
        .await?;
    let wall = start.elapsed().as_secs_f64();
    let workers_cpu: f64 = workers.iter().map(|w| w.cpu_seconds()).sum();
    let backends_cpu = machine::backend_cpu_seconds(&url, &setup.db.name).await;
    let cpu_after = machine::machine_cpu();
    let self_after = machine::cpu_seconds(std::process::id()).unwrap_or(0.0);
    let top_statements = machine::top_statements(&url, 12).await.unwrap_or_else(|e| {
        eprintln!("  (no statement statistics: {e:#})");
        Vec::new()
    });
    let (completed, not_completed, steps, seconds): (i64, i64, i64, f64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM paysaga_sagas WHERE status = 'completed'),
                (SELECT count(*) FROM paysaga_sagas WHERE finished_at IS NOT NULL AND status <> 'completed'),
                (SELECT count(*) FROM paysaga_history WHERE kind = 'step_completed'),
                (SELECT extract(epoch FROM max(at) FILTER (WHERE kind = 'saga_completed')
                                         - min(at) FILTER (WHERE worker IS NOT NULL))::float8
                 FROM paysaga_history)",
    )
    .fetch_one(&setup.pool)
    .await?;

    // The workers' backends flush their statistics when they exit: stop them, then read.
    stop_all(workers).await?;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let d = machine::counters(&url).await?.since(&before);
    let sagas_per_s = per(completed, seconds);
    let worker_exits = reports.exits.lock().map(|e| e.clone()).unwrap_or_default();
    let claim_batches = reports.exit_sum("claim_batches");
    // Lease bookkeeping (register, heartbeats, stop): one write transaction per row written.
    let mut bookkeeping = 0;
    for prefix in ["INSERT INTO paysaga_workers", "UPDATE paysaga_workers"] {
        bookkeeping += machine::statement_totals(&url, prefix)
            .await
            .map(|t| t.2)
            .unwrap_or(0);
    }
    let n = completed.max(1) as f64;
    let s = steps.max(1) as f64;
    let drain = DrainPhase {
        seconds,
        wall_seconds: wall,
        completed,
        not_completed,
        steps,
        sagas_per_s,
        steps_per_s: per(steps, seconds),
        commits_per_saga: per(d.xact_commit, n),
        write_xacts_per_saga: per(d.next_xid, n),
        write_xacts_per_step: per(d.next_xid, s),
        claim_batches,
        lease_bookkeeping_xacts: bookkeeping,
        hot_path_commits_per_step: per(d.next_xid - claim_batches as i64 - bookkeeping, s),
        rollbacks_per_saga: per(d.xact_rollback, n),
        statements_per_step: per(d.statements, s),
        wal_bytes_per_saga: per(d.wal_bytes, n),
        wal_bytes_per_step: per(d.wal_bytes, s),
        pg_stat_wal_bytes_per_saga: per(d.wal_bytes_stat, n),
        wal_records_per_step: per(d.wal_records, s),
        wal_syncs_per_step: per(d.wal_sync, s),
        hot_update_pct: per(d.saga_hot_updates * 100, d.saga_updates as f64),
        cpu: CpuSplit {
            wall_s: wall,
            workers_s: workers_cpu,
            postgres_backends_s: backends_cpu,
            bench_process_s: self_after - self_before,
            machine_busy_s: match (cpu_before, cpu_after) {
                (Some(b), Some(a)) => a.0 - b.0,
                _ => 0.0,
            },
            machine_total_s: match (cpu_before, cpu_after) {
                (Some(b), Some(a)) => a.1 - b.1,
                _ => 0.0,
            },
        },
        worker_rss_peak_mib: peaks,
        counters: d,
        worker_exits,
    };

    // Latency at half the measured rate, on fresh workers.
    let rate = cfg.latency_rate.unwrap_or(sagas_per_s * 0.5).max(1.0);
    let count = ((rate * cfg.latency_secs as f64) as usize).max(10);
    eprintln!("  latency: starting {count} sagas at {rate:.0}/s...");
    let lat_reports = Arc::new(Reports::default());
    let workers = setup.spawn_workers(cfg.workers, cfg.concurrency, "lat", &lat_reports)?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    // One second of warm-up sagas first: a fresh worker opens its pool's connections and
    // prepares its statements during its first second (production workers are long-lived).
    let warmup = (rate as usize).max(10);
    paced_starts(setup, rate, warmup, "lat-warmup").await?;
    let ids = paced_starts(setup, rate, count, "lat").await?;
    lat_reports
        .wait_finished((warmup + count) as u64, Duration::from_secs(180), || {})
        .await?;
    stop_all(workers).await?;
    let lat: Vec<f64> = sqlx::query_scalar(
        "SELECT extract(epoch FROM c.at - s.at)::float8 * 1e6
         FROM paysaga_history s JOIN paysaga_history c ON c.saga_id = s.saga_id AND c.kind = 'saga_completed'
         WHERE s.kind = 'saga_started' AND s.saga_id = ANY($1)",
    )
    .bind(&ids)
    .fetch_all(&setup.pool)
    .await?;
    let latency = LatencyPhase {
        rate_per_s: rate,
        sagas: count,
        start_to_complete: Percentiles::from_micros(
            lat.iter().map(|v| v.max(0.0) as u64).collect(),
        ),
    };

    // Ceiling, again.
    eprintln!("  pgbench ceiling (after), {clients} clients...");
    let ceiling_after = pgbench(setup, clients, cfg.pgbench_secs).await;
    let mut ceiling_error = None;
    let mut runs = Vec::new();
    for r in [ceiling_before, ceiling_after] {
        match r {
            Ok(c) => runs.push(c),
            Err(e) => ceiling_error = Some(format!("{e:#}")),
        }
    }
    let mean_tps = if runs.is_empty() {
        None
    } else {
        Some(runs.iter().map(|c| c.tps).sum::<f64>() / runs.len() as f64)
    };
    let ratio_to_ceiling = mean_tps.map(|tps| drain.steps_per_s / tps);
    Ok(Throughput {
        workers: cfg.workers,
        concurrency: cfg.concurrency,
        sagas: cfg.sagas,
        submit,
        drain,
        latency,
        top_statements,
        ceiling: runs,
        ceiling_mean_tps: mean_tps,
        ceiling_error,
        ratio_to_ceiling,
    })
}

/// Starts `count` sagas at `rate` per second (open loop); returns their ids.
async fn paced_starts(setup: &Setup, rate: f64, count: usize, prefix: &str) -> Result<Vec<Uuid>> {
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut set = JoinSet::new();
    for i in 0..count {
        tick.tick().await;
        let engine = setup.engine.clone();
        let key = format!("{prefix}-{i}");
        set.spawn(async move {
            engine
                .start("noop", json!({"delay_ms": 0}), Some(&key))
                .await
        });
    }
    let mut ids = Vec::with_capacity(count);
    while let Some(r) = set.join_next().await {
        ids.push(r??.saga_id);
    }
    Ok(ids)
}

/// pgbench with a one-row INSERT per transaction on the scenario's database.
async fn pgbench(setup: &Setup, clients: usize, secs: u64) -> Result<Ceiling> {
    sqlx::query("CREATE TABLE IF NOT EXISTS bench_ceiling (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, v integer NOT NULL)")
        .execute(&setup.pool)
        .await?;
    let script = "\\set v random(1, 1000000)\nINSERT INTO bench_ceiling (v) VALUES (:v);\n";
    let dir = std::env::temp_dir().join(format!("paysaga-bench-{}", Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("insert.sql");
    std::fs::write(&path, script)?;
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let threads = clients.min(cores).max(1);
    let before = machine::counters(&setup.db.url).await?;
    let out = run_pgbench(&setup.db.url, &path, clients, threads, secs).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let d = machine::counters(&setup.db.url).await?.since(&before);
    let one = run_pgbench(&setup.db.url, &path, 1, 1, secs.min(3)).await;
    let _ = std::fs::remove_dir_all(&dir);
    let out = out?;
    let one = one.ok();
    let processed = out.processed.unwrap_or(out.tps * secs as f64);
    Ok(Ceiling {
        clients,
        threads,
        seconds: secs,
        script: script
            .replace('\n', "; ")
            .trim_end_matches("; ")
            .to_string(),
        tps: out.tps,
        latency_avg_ms: out.latency_ms.unwrap_or(0.0),
        wal_bytes_per_tx: per(d.wal_bytes, processed),
        wal_syncs_per_tx: per(d.wal_sync, processed),
        one_client_latency_ms: one.as_ref().and_then(|o| o.latency_ms),
        one_client_tps: one.map(|o| o.tps),
    })
}

/// What one pgbench run printed.
#[derive(Debug)]
struct PgbenchOut {
    tps: f64,
    latency_ms: Option<f64>,
    processed: Option<f64>,
}

async fn run_pgbench(
    url: &str,
    script: &std::path::Path,
    clients: usize,
    threads: usize,
    secs: u64,
) -> Result<PgbenchOut> {
    let out = tokio::process::Command::new(crate::cluster::pg_bin("pgbench"))
        .args([
            "-n",
            "-M",
            "prepared",
            "-c",
            &clients.to_string(),
            "-j",
            &threads.to_string(),
        ])
        .args(["-T", &secs.to_string(), "-f"])
        .arg(script)
        .arg(url)
        .output()
        .await
        .context("run pgbench (installed with the PostgreSQL server)")?;
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    if !out.status.success() {
        bail!(
            "pgbench failed: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let field = |prefix: &str| -> Option<f64> {
        stdout
            .lines()
            .find(|l| l.trim_start().starts_with(prefix))
            .and_then(|l| l.split(['=', ':']).nth(1))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
    };
    Ok(PgbenchOut {
        tps: field("tps").with_context(|| format!("no tps in pgbench output: {stdout}"))?,
        latency_ms: field("latency average"),
        processed: field("number of transactions actually processed"),
    })
}
