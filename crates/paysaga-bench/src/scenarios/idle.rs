//! Scenario 7 (issue 14 item 2): what idle workers cost the database, with 1 thousand and
//! 1 million finished sagas stored (bulk-loaded in SQL, then `VACUUM ANALYZE`; `--quick`
//! uses 100 thousand for the second size).
//!
//! Per table size, W idle worker processes (default settings: `idle_poll` 5 s, lease 30 s)
//! run for a settling time, then for a measured window: transactions from
//! `pg_stat_database` (`xact_commit + xact_rollback` of the benchmark's database, less the
//! benchmark's own two snapshot transactions) and sequential scans of `paysaga_sagas` from
//! `pg_stat_user_tables`, as deltas over the window; the statements run, from
//! `pg_stat_statements`. PostgreSQL publishes a backend's counters when it goes idle, at
//! most 10 s late, so the window is long against that lag (60 s, quick 20 s).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use serde::Serialize;
use sqlx::PgPool;

use super::{stop_all, Setup};
use crate::child::Reports;
use crate::cluster::Server;

/// One table size.
#[derive(Debug, Clone, Serialize)]
pub struct IdlePoint {
    /// Finished sagas stored.
    pub finished_sagas: u64,
    /// Seconds to load them (and VACUUM ANALYZE).
    pub load_seconds: f64,
    /// The measured window, s.
    pub seconds: f64,
    /// Transactions in the window (all idle workers).
    pub xacts: i64,
    /// Transactions per second per idle worker.
    pub xacts_per_s_per_worker: f64,
    /// Sequential scans of `paysaga_sagas` in the window.
    pub seq_scans: i64,
    /// Statements per second per idle worker (`pg_stat_statements`), if available.
    pub statements_per_s_per_worker: Option<f64>,
    /// The statements run in the window: (calls, query).
    pub statements: Vec<(i64, String)>,
}

/// Scenario 7.
#[derive(Debug, Clone, Serialize)]
pub struct IdleCost {
    /// Idle worker processes.
    pub workers: usize,
    /// One point per table size.
    pub points: Vec<IdlePoint>,
}

/// Runs scenario 7 with `workers` idle workers at each of `scales`.
pub async fn run(
    server: &Server,
    scales: &[u64],
    workers: usize,
    window: Duration,
    log_dir: &std::path::Path,
) -> Result<IdleCost> {
    let mut points = Vec::new();
    for &scale in scales {
        let setup = Setup::new(server, &format!("idle{scale}"), log_dir).await?;
        let point = measure(&setup, scale, workers, window).await;
        setup.finish(server).await?;
        points.push(point?);
    }
    Ok(IdleCost { workers, points })
}

/// Loads `n` finished (completed) sagas as the engine leaves them, with a `saga_started` and
/// a `saga_completed` history row each, finished `age` ago; returns the seconds it took.
pub async fn load_finished(setup: &Setup, n: u64, age: Duration) -> Result<f64> {
    let t = Instant::now();
    let def = setup.definition_id("noop").await?;
    eprintln!("  loading {n} finished sagas...");
    sqlx::query(
        "INSERT INTO paysaga_sagas (id, definition_id, workflow, version, idempotency_key, input, status,
                                    step_index, attempt, outputs, created_at, updated_at, finished_at)
         SELECT gen_random_uuid(), $1, 'noop', 1, 'done-' || g, '{\"delay_ms\": 0}', 'completed', 5, 1,
                '{\"sleep1\": {\"slept_ms\": 0}, \"sleep2\": {\"slept_ms\": 0}, \"sleep3\": {\"slept_ms\": 0},
                  \"sleep4\": {\"slept_ms\": 0}, \"sleep5\": {\"slept_ms\": 0}}',
                now() - make_interval(secs => $3), now() - make_interval(secs => $3),
                now() - make_interval(secs => $3)
         FROM generate_series(1, $2::bigint) g",
    )
    .bind(def)
    .bind(n as i64)
    .bind(age.as_secs_f64())
    .execute(&setup.pool)
    .await?;
    sqlx::query(
        "INSERT INTO paysaga_history (saga_id, at, kind)
         SELECT id, created_at, k FROM paysaga_sagas, unnest(ARRAY['saga_started', 'saga_completed']) k
         WHERE status = 'completed'",
    )
    .execute(&setup.pool)
    .await?;
    sqlx::raw_sql("VACUUM ANALYZE").execute(&setup.pool).await?;
    Ok(t.elapsed().as_secs_f64())
}

/// (transactions, seq scans of paysaga_sagas) of this database so far.
async fn counters(pool: &PgPool) -> Result<(i64, i64)> {
    Ok(sqlx::query_as(
        "SELECT (SELECT xact_commit + xact_rollback FROM pg_stat_database
                 WHERE datname = current_database()),
                (SELECT coalesce(seq_scan, 0) FROM pg_stat_user_tables
                 WHERE relname = 'paysaga_sagas')",
    )
    .fetch_one(pool)
    .await?)
}

/// Calls per statement of this database (`pg_stat_statements`), if available.
async fn statements(pool: &PgPool) -> Option<HashMap<String, i64>> {
    let rows: Vec<(String, i64)> = sqlx::query_as(
        "SELECT regexp_replace(left(query, 110), '\\s+', ' ', 'g'), calls FROM pg_stat_statements
         WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())",
    )
    .fetch_all(pool)
    .await
    .ok()?;
    let mut by_query = HashMap::new();
    for (q, calls) in rows {
        *by_query.entry(q).or_insert(0) += calls;
    }
    Some(by_query)
}

async fn measure(setup: &Setup, scale: u64, workers: usize, window: Duration) -> Result<IdlePoint> {
    let load_seconds = load_finished(setup, scale, Duration::from_secs(86_400)).await?;
    let reports = Arc::new(Reports::default());
    let procs = setup.spawn_workers(workers, 16, &format!("idle{scale}"), &reports)?;
    // Start-up work (registration, the first looks, the first reap and document sweep) and
    // PostgreSQL's up-to-10 s lag in publishing counters fall before the window.
    tokio::time::sleep(Duration::from_secs(12)).await;
    eprintln!(
        "  idle: {workers} workers, {scale} finished sagas, measuring {} s...",
        window.as_secs()
    );
    let (x0, s0) = counters(&setup.pool).await?;
    let st0 = statements(&setup.pool).await;
    let t = Instant::now();
    tokio::time::sleep(window).await;
    let (x1, s1) = counters(&setup.pool).await?;
    let st1 = statements(&setup.pool).await;
    let seconds = t.elapsed().as_secs_f64();
    stop_all(procs).await?;
    // Less the benchmark's own snapshot transactions (the counters', the statements').
    let xacts = (x1 - x0 - 2).max(0);
    let mut statements = Vec::new();
    let mut statement_calls = None;
    if let (Some(a), Some(b)) = (st0, st1) {
        let mut total = 0;
        for (q, calls) in &b {
            let d = calls - a.get(q).copied().unwrap_or(0);
            let ours = q.contains("pg_stat_") || q.contains("pg_database");
            if d > 0 && !ours {
                total += d;
                statements.push((d, q.clone()));
            }
        }
        statements.sort_by_key(|s| std::cmp::Reverse(s.0));
        statement_calls = Some(total);
    }
    let per_worker = |n: i64| n as f64 / seconds / workers.max(1) as f64;
    Ok(IdlePoint {
        finished_sagas: scale,
        load_seconds,
        seconds,
        xacts,
        xacts_per_s_per_worker: per_worker(xacts),
        seq_scans: s1 - s0,
        statements_per_s_per_worker: statement_calls.map(per_worker),
        statements,
    })
}
