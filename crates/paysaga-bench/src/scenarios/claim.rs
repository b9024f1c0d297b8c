//! Scenario 4: claim cost with 1 thousand, 100 thousand and 1 million finished sagas in
//! the table (bulk-loaded with `generate_series`, then `VACUUM ANALYZE`), one database per
//! size, measured in interleaved rounds (so that noise from other users of the machine
//! falls on every size alike).
//!
//! At each size: 64 runnable sagas; `Store::claim(limit 1)` is timed until all 64 are
//! owned, then they are released, for several rounds; the claim when nothing is runnable
//! (an idle worker's poll) and `Store::next_due` are timed too. The claim statement's text
//! is read back from `pg_stat_activity` (so the plan is the plan of the SQL the store
//! really runs) and explained with `EXPLAIN (ANALYZE, BUFFERS)` in a rolled-back
//! transaction.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use paysaga_store::{PgStore, Store, WorkerInfo};
use serde::Serialize;
use sqlx::postgres::PgPoolOptions;
use sqlx::Row;
use uuid::Uuid;

use super::Setup;
use crate::cluster::Server;
use crate::stats::Percentiles;

/// Runnable sagas per round.
const RUNNABLE: usize = 64;

/// One table size.
#[derive(Debug, Clone, Serialize)]
pub struct ScalePoint {
    /// Finished sagas in the table.
    pub finished_sagas: u64,
    /// Seconds to load the rows (and VACUUM ANALYZE).
    pub load_seconds: f64,
    /// `claim(limit 1)` with runnable sagas present.
    pub claim: Option<Percentiles>,
    /// `claim` with nothing runnable.
    pub empty_claim: Option<Percentiles>,
    /// `next_due`.
    pub next_due: Option<Percentiles>,
    /// `EXPLAIN (ANALYZE, BUFFERS)` of the claim.
    pub plan: String,
    /// The plan reads the partial index `paysaga_sagas_runnable`.
    pub uses_runnable_index: bool,
    /// Shared buffers the claim touched (the plan's first `Buffers:` line).
    pub plan_buffers: String,
    /// Mean server execution time of the claim statement during the measured rounds
    /// (`pg_stat_statements`; empty claims included), ms.
    pub server_mean_ms: Option<f64>,
}

/// Scenario 4.
#[derive(Debug, Clone, Serialize)]
pub struct ClaimScale {
    /// The claim statement as the store runs it.
    pub claim_sql: String,
    /// One point per table size.
    pub points: Vec<ScalePoint>,
    /// Claim p50 at the largest size / p50 at the smallest.
    pub ratio_p50: Option<f64>,
    /// Same for p99.
    pub ratio_p99: Option<f64>,
}

/// Runs scenario 4 at `scales` (ascending).
pub async fn run(
    server: &Server,
    scales: &[u64],
    claims: usize,
    log_dir: &std::path::Path,
) -> Result<ClaimScale> {
    // One database per table size, measured in interleaved rounds so that the load other
    // users put on the machine (and on the disk) falls on every size alike.
    let mut dbs = Vec::new();
    let mut result = Ok(());
    for &scale in scales {
        match Setup::new(server, &format!("claim{scale}"), log_dir).await {
            Ok(s) => dbs.push((scale, s)),
            Err(e) => {
                result = Err(e);
                break;
            }
        }
    }
    let measured = match result {
        Ok(()) => run_in(&dbs, claims).await,
        Err(e) => Err(e),
    };
    for (_, setup) in dbs {
        setup.finish(server).await?;
    }
    measured
}

/// One table size under measurement.
struct Sized<'a> {
    scale: u64,
    setup: &'a Setup,
    worker: Uuid,
    load_seconds: f64,
    claim: Vec<u64>,
    empty: Vec<u64>,
    due: Vec<u64>,
    server_before: (i64, f64, i64),
}

async fn prepare<'a>(scale: u64, setup: &'a Setup) -> Result<Sized<'a>> {
    let store = setup.engine.store().clone();
    let kinds = setup.engine.registry().names();
    let def = setup.definition_id("noop").await?;
    let worker = Uuid::new_v4();
    store
        .register_worker(
            &WorkerInfo {
                id: worker,
                name: "bench-claim".to_string(),
                hostname: "bench".to_string(),
                pid: std::process::id(),
                step_kinds: kinds.clone(),
                assignments: None,
            },
            Duration::from_secs(3600),
        )
        .await?;
    eprintln!("  claim: loading {scale} finished sagas...");
    let t = Instant::now();
    // Finished sagas as the engine leaves them: completed, unowned, not runnable, with
    // five step outputs.
    sqlx::query(
        "INSERT INTO paysaga_sagas (id, definition_id, workflow, version, idempotency_key, input, status,
                                    step_index, attempt, outputs, created_at, updated_at, finished_at)
         SELECT gen_random_uuid(), $1, 'noop', 1, 'done-' || g, '{\"delay_ms\": 0}', 'completed', 5, 1,
                '{\"sleep1\": {\"slept_ms\": 0}, \"sleep2\": {\"slept_ms\": 0}, \"sleep3\": {\"slept_ms\": 0},
                  \"sleep4\": {\"slept_ms\": 0}, \"sleep5\": {\"slept_ms\": 0}}',
                now() - interval '1 day', now() - interval '1 day', now() - interval '1 day'
         FROM generate_series(1, $2::bigint) g",
    )
    .bind(def)
    .bind(scale as i64)
    .execute(&setup.pool)
    .await?;
    sqlx::query(
        "INSERT INTO paysaga_sagas (id, definition_id, workflow, version, idempotency_key, input, status, run_at)
         SELECT gen_random_uuid(), $1, 'noop', 1, 'runnable-' || g, '{\"delay_ms\": 0}', 'scheduled',
                now() - interval '1 second'
         FROM generate_series(1, $2::int) g",
    )
    .bind(def)
    .bind(RUNNABLE as i32)
    .execute(&setup.pool)
    .await?;
    sqlx::raw_sql("VACUUM ANALYZE paysaga_sagas")
        .execute(&setup.pool)
        .await?;
    Ok(Sized {
        scale,
        setup,
        worker,
        load_seconds: t.elapsed().as_secs_f64(),
        claim: Vec::new(),
        empty: Vec::new(),
        due: Vec::new(),
        server_before: (0, 0.0, 0),
    })
}

/// One round over every table size, interleaved claim by claim (so that bursts of load
/// from other users of the machine fall on every size alike): claim every runnable saga one
/// by one, try 8 claims with nothing runnable, release them all, time 8 `next_due`.
async fn round(sized: &mut [Sized<'_>], measure: bool) -> Result<()> {
    for _ in 0..RUNNABLE {
        for s in sized.iter_mut() {
            let store = s.setup.engine.store().clone();
            let kinds = s.setup.engine.registry().names();
            let t = Instant::now();
            let got = store.claim(s.worker, &kinds, 1).await?;
            let us = t.elapsed().as_micros() as u64;
            if measure && got.len() == 1 {
                s.claim.push(us);
            }
        }
    }
    for _ in 0..8 {
        for s in sized.iter_mut() {
            let store = s.setup.engine.store().clone();
            let kinds = s.setup.engine.registry().names();
            let t = Instant::now();
            let got = store.claim(s.worker, &kinds, 1).await?;
            if measure && got.is_empty() {
                s.empty.push(t.elapsed().as_micros() as u64);
            }
        }
    }
    for s in sized.iter_mut() {
        release(s.setup, s.worker).await?;
    }
    for _ in 0..8 {
        for s in sized.iter_mut() {
            let store = s.setup.engine.store().clone();
            let kinds = s.setup.engine.registry().names();
            let t = Instant::now();
            store.next_due(&kinds).await?;
            if measure {
                s.due.push(t.elapsed().as_micros() as u64);
            }
        }
    }
    Ok(())
}

async fn run_in(dbs: &[(u64, Setup)], claims: usize) -> Result<ClaimScale> {
    let mut sized = Vec::new();
    for (scale, setup) in dbs {
        sized.push(prepare(*scale, setup).await?);
    }
    let first = sized.first().context("no table size given")?;
    let kinds = first.setup.engine.registry().names();
    let claim_sql = capture_claim_sql(first.setup, first.worker, &kinds).await?;
    release(first.setup, first.worker).await?;
    eprintln!("  claim: timing {claims} claims per size in interleaved rounds...");
    // pg_stat_statements stores the text with constants replaced: match on the part before
    // the first literal.
    let stat_prefix: String = claim_sql
        .split('\'')
        .next()
        .unwrap_or_default()
        .chars()
        .take(100)
        .collect();
    // A warm-up round, then the measured rounds.
    let rounds = claims.div_ceil(RUNNABLE).max(1);
    for r in 0..=rounds {
        if r == 1 {
            for s in sized.iter_mut() {
                s.server_before = crate::machine::statement_totals(&s.setup.db.url, &stat_prefix)
                    .await
                    .unwrap_or((0, 0.0, 0));
            }
        }
        round(&mut sized, r > 0).await?;
    }
    let mut points = Vec::new();
    for s in sized {
        let after = crate::machine::statement_totals(&s.setup.db.url, &stat_prefix)
            .await
            .unwrap_or((0, 0.0, 0));
        let calls = after.0 - s.server_before.0;
        let server_mean_ms = (calls > 0).then(|| (after.1 - s.server_before.1) / calls as f64);
        let plan = explain(s.setup, &claim_sql, s.worker, &kinds)
            .await
            .unwrap_or_else(|e| format!("plan unavailable: {e:#}"));
        // The top node's line: the buffers of the whole statement (planning excluded).
        let plan_buffers = plan
            .lines()
            .find_map(|l| l.trim().strip_prefix("Buffers: "))
            .unwrap_or("-")
            .to_string();
        let claimed_in_plan = plan
            .lines()
            .next()
            .is_some_and(|l| l.contains("rows=1 loops"));
        if !claimed_in_plan {
            eprintln!(
                "  claim: the explained claim at {} claimed nothing; see the plan",
                s.scale
            );
        }
        points.push(ScalePoint {
            finished_sagas: s.scale,
            load_seconds: s.load_seconds,
            claim: Percentiles::from_micros(s.claim),
            empty_claim: Percentiles::from_micros(s.empty),
            next_due: Percentiles::from_micros(s.due),
            uses_runnable_index: plan.contains("paysaga_sagas_runnable"),
            plan_buffers,
            server_mean_ms,
            plan,
        });
    }
    let ratio = |f: fn(&Percentiles) -> f64| -> Option<f64> {
        let first = points.first()?.claim.as_ref()?;
        let last = points.last()?.claim.as_ref()?;
        Some(f(last) / f(first))
    };
    Ok(ClaimScale {
        claim_sql,
        ratio_p50: ratio(|p| p.p50_ms),
        ratio_p99: ratio(|p| p.p99_ms),
        points,
    })
}

async fn release(setup: &Setup, worker: Uuid) -> Result<()> {
    sqlx::query("UPDATE paysaga_sagas SET owner = NULL WHERE owner = $1")
        .bind(worker)
        .execute(&setup.pool)
        .await?;
    Ok(())
}

/// Runs one claim through a one-connection store and reads the statement it ran back from
/// `pg_stat_activity` (which shows an idle backend's last statement).
async fn capture_claim_sql(setup: &Setup, worker: Uuid, kinds: &[String]) -> Result<String> {
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .connect(&setup.db.url)
        .await?;
    let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(&pool)
        .await?;
    let store = PgStore::from_pool(pool.clone());
    store.claim(worker, kinds, 1).await?;
    let sql: String = sqlx::query_scalar("SELECT query FROM pg_stat_activity WHERE pid = $1")
        .bind(pid)
        .fetch_one(&setup.pool)
        .await
        .context("read the claim statement from pg_stat_activity")?;
    pool.close().await;
    Ok(sql)
}

/// `EXPLAIN (ANALYZE, BUFFERS)` of the claim by `worker` (registered, live lease) in a
/// rolled-back transaction.
async fn explain(setup: &Setup, sql: &str, worker: Uuid, kinds: &[String]) -> Result<String> {
    let mut tx = setup.pool.begin().await?;
    let rows = sqlx::query(&format!("EXPLAIN (ANALYZE, BUFFERS) {sql}"))
        .bind(worker)
        .bind(1_i64)
        .bind(kinds)
        .fetch_all(&mut *tx)
        .await
        .context("EXPLAIN the claim (its text may be cut by track_activity_query_size)")?;
    tx.rollback().await?;
    let lines: Vec<String> = rows
        .iter()
        .map(|r| r.try_get::<String, _>(0))
        .collect::<Result<_, _>>()?;
    Ok(lines.join("\n"))
}
