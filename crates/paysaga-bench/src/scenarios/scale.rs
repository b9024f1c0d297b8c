//! Scenario 11 (`scale`): the scale-out curve of issue 14 item 4. For 1, 2 and 4 worker
//! processes x concurrency 8, 16 and 32, N `noop` sagas are started with no worker
//! running, then drained; steps/s on the database clock (first step a worker wrote to the
//! last saga completed, this cell's sagas only), machine CPU busy during the drain and the
//! PostgreSQL backends' CPU per step show where the server saturates. The same grid runs
//! again with the workers connecting through [`crate::delay_proxy`] (+1 ms round trip:
//! 0.5 ms each way), what a network between worker and database costs.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde::Serialize;
use serde_json::json;
use sqlx::{Connection, PgConnection};
use tokio::task::JoinSet;
use uuid::Uuid;

use super::{stop_all, Setup};
use crate::child::{Reports, WorkerProc};
use crate::cluster::Server;
use crate::delay_proxy::{self, DelayProxy};
use crate::machine;
use crate::stats::Percentiles;

/// Parameters.
#[derive(Debug, Clone)]
pub struct Config {
    /// Sagas per cell.
    pub sagas: usize,
    /// Worker process counts.
    pub workers: Vec<usize>,
    /// Concurrencies.
    pub concurrency: Vec<usize>,
    /// One-way delays added between workers and the database (0 = direct).
    pub one_way_delays: Vec<Duration>,
}

/// One cell of the table.
#[derive(Debug, Clone, Serialize)]
pub struct Cell {
    /// Round trip added by the proxy, ms (0: direct).
    pub added_rtt_ms: f64,
    /// Worker processes.
    pub workers: usize,
    /// Concurrency of each.
    pub concurrency: usize,
    /// Sagas drained.
    pub sagas: i64,
    /// Seconds (database clock).
    pub seconds: f64,
    /// Steps per second.
    pub steps_per_s: f64,
    /// Machine CPU busy during the drain, % of all cores (other users included).
    pub machine_busy_pct: f64,
    /// PostgreSQL backends' CPU per step, ms.
    pub backend_cpu_ms_per_step: f64,
    /// Worker processes' CPU per step, ms.
    pub worker_cpu_ms_per_step: f64,
}

/// The table.
#[derive(Debug, Clone, Serialize)]
pub struct ScaleOut {
    /// Sagas per cell.
    pub sagas_per_cell: usize,
    /// `SELECT 1` round trip direct, over 200 queries.
    pub direct_rtt: Option<Percentiles>,
    /// `SELECT 1` round trip through the delay proxy (if a delay ran).
    pub proxied_rtt: Option<Percentiles>,
    /// The cells, direct first.
    pub cells: Vec<Cell>,
    /// How the latency was added, and why not with `tc netem`.
    pub method: String,
}

/// Runs scenario 11.
pub async fn run(server: &Server, cfg: &Config, log_dir: &std::path::Path) -> Result<ScaleOut> {
    let setup = Setup::new(server, "scale", log_dir).await?;
    let result = run_in(&setup, cfg).await;
    setup.finish(server).await?;
    result
}

async fn rtt(url: &str) -> Result<Option<Percentiles>> {
    let mut conn = PgConnection::connect(url).await?;
    let mut v = Vec::new();
    for i in 0..220 {
        let t = Instant::now();
        sqlx::query("SELECT 1").execute(&mut conn).await?;
        if i >= 20 {
            v.push(t.elapsed().as_micros() as u64);
        }
    }
    conn.close().await?;
    Ok(Percentiles::from_micros(v))
}

async fn run_in(setup: &Setup, cfg: &Config) -> Result<ScaleOut> {
    let url = setup.db.url.clone();
    let direct_rtt = rtt(&url).await?;
    let mut proxied_rtt = None;
    let mut cells = Vec::new();
    let mut batch = 0;
    for &delay in &cfg.one_way_delays {
        let proxy = if delay.is_zero() {
            None
        } else {
            let p = DelayProxy::start(delay_proxy::target_of(&url)?, delay)?;
            proxied_rtt = rtt(&p.url(&url)).await?;
            Some(p)
        };
        let worker_url = proxy.as_ref().map_or(url.clone(), |p| p.url(&url));
        for &w in &cfg.workers {
            for &c in &cfg.concurrency {
                batch += 1;
                eprintln!(
                    "  scale: {w} worker processes x concurrency {c}, +{:.1} ms round trip",
                    delay.as_secs_f64() * 2000.0
                );
                let cell = drain_cell(setup, &worker_url, cfg.sagas, w, c, batch)
                    .await
                    .with_context(|| format!("scale cell {w} x {c}, one-way delay {delay:?}"))?;
                cells.push(Cell {
                    added_rtt_ms: delay.as_secs_f64() * 2000.0,
                    ..cell
                });
            }
        }
    }
    Ok(ScaleOut {
        sagas_per_cell: cfg.sagas,
        direct_rtt,
        proxied_rtt,
        cells,
        method: "latency added by a user-space TCP delay proxy on loopback (half each way): \
                 this kernel has no netem qdisc (`tc qdisc add .. netem` answers \
                 \"Specified qdisc kind is unknown\")"
            .into(),
    })
}

async fn drain_cell(
    setup: &Setup,
    worker_url: &str,
    sagas: usize,
    workers: usize,
    concurrency: usize,
    batch: usize,
) -> Result<Cell> {
    let callers = 16.min(sagas.max(1));
    let mut set = JoinSet::new();
    for c in 0..callers {
        let engine = setup.engine.clone();
        set.spawn(async move {
            let mut ids = Vec::new();
            let mut i = c;
            while i < sagas {
                let id = engine
                    .start(
                        "noop",
                        json!({"delay_ms": 0}),
                        Some(&format!("scale-{batch}-{i}")),
                    )
                    .await?
                    .saga_id;
                ids.push(id);
                i += callers;
            }
            Ok::<_, paysaga_runtime::Error>(ids)
        });
    }
    let mut ids: Vec<Uuid> = Vec::new();
    while let Some(r) = set.join_next().await {
        ids.extend(r??);
    }
    let backends_before = machine::backend_cpu_seconds(&setup.db.url, &setup.db.name).await;
    let cpu_before = machine::machine_cpu();
    let reports = Arc::new(Reports::default());
    let procs = (0..workers)
        .map(|i| {
            WorkerProc::spawn(
                worker_url,
                &format!("scale-{batch}-w{i}"),
                concurrency,
                None,
                &setup.log_dir,
                reports.clone(),
            )
        })
        .collect::<Result<Vec<_>>>()?;
    reports
        .wait_finished(sagas as u64, Duration::from_secs(180), || {})
        .await?;
    let cpu_after = machine::machine_cpu();
    let backends =
        machine::backend_cpu_seconds(&setup.db.url, &setup.db.name).await - backends_before;
    let workers_cpu: f64 = procs.iter().map(|w| w.cpu_seconds()).sum();
    stop_all(procs).await?;
    let (done, steps, seconds): (i64, i64, f64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE kind = 'saga_completed'),
                count(*) FILTER (WHERE kind = 'step_completed'),
                coalesce(extract(epoch FROM max(at) FILTER (WHERE kind = 'saga_completed')
                                      - min(at) FILTER (WHERE worker IS NOT NULL))::float8, 0)
         FROM paysaga_history WHERE saga_id = ANY($1)",
    )
    .bind(&ids)
    .fetch_one(&setup.pool)
    .await?;
    let s = steps.max(1) as f64;
    let busy = match (cpu_before, cpu_after) {
        (Some(b), Some(a)) if a.1 > b.1 => 100.0 * (a.0 - b.0) / (a.1 - b.1),
        _ => 0.0,
    };
    Ok(Cell {
        added_rtt_ms: 0.0,
        workers,
        concurrency,
        sagas: done,
        seconds,
        steps_per_s: if seconds > 0.0 {
            steps as f64 / seconds
        } else {
            0.0
        },
        machine_busy_pct: busy,
        backend_cpu_ms_per_step: backends * 1000.0 / s,
        worker_cpu_ms_per_step: workers_cpu * 1000.0 / s,
    })
}
