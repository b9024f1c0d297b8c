//! The scenarios, each on a fresh database of its own.

pub mod campaign;
pub mod claim;
mod cli_processes;
pub mod idle;
pub mod memory_wake;
pub mod peers;
pub mod prune;
pub mod rate_limit;
pub mod scale;
pub mod single;
pub mod throughput;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use paysaga_runtime::{noop, Engine};
use paysaga_store::{PgStore, Store};
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;

use crate::child::{registry, Reports, WorkerProc};
use crate::cluster::{BenchDb, Server};
use crate::kinds;

/// A migrated database with the `noop` and `bench_wait` definitions, an engine (the
/// "API" side, in this process) and a pool for the benchmark's own queries.
#[derive(Debug)]
pub struct Setup {
    /// The database.
    pub db: BenchDb,
    /// Engine handle used to start sagas and deliver events.
    pub engine: Engine,
    /// Pool for measurement queries (2 connections).
    pub pool: PgPool,
    /// Where worker logs go.
    pub log_dir: PathBuf,
}

impl Setup {
    /// Creates the database and applies migrations.
    pub async fn new(server: &Server, label: &str, log_dir: &std::path::Path) -> Result<Setup> {
        let db = server.create_database(label).await?;
        let store = PgStore::connect(&db.url)
            .await
            .context("connect to the benchmark database")?;
        store
            .migrate()
            .await
            .context("migrate the benchmark database")?;
        crate::machine::enable_statements(&db.url).await;
        let engine = Engine::new(Arc::new(store), registry());
        engine.submit_definition(&noop::noop_definition()).await?;
        engine.submit_definition(&kinds::wait_definition()).await?;
        let pool = PgPoolOptions::new()
            .max_connections(2)
            .connect(&db.url)
            .await?;
        Ok(Setup {
            db,
            engine,
            pool,
            log_dir: log_dir.to_path_buf(),
        })
    }

    /// Starts `n` worker child processes with `concurrency` each.
    pub fn spawn_workers(
        &self,
        n: usize,
        concurrency: usize,
        label: &str,
        reports: &Arc<Reports>,
    ) -> Result<Vec<WorkerProc>> {
        (0..n)
            .map(|i| {
                WorkerProc::spawn(
                    &self.db.url,
                    &format!("{label}-w{i}"),
                    concurrency,
                    None,
                    &self.log_dir,
                    reports.clone(),
                )
            })
            .collect()
    }

    /// Starts one worker child that also serves the webhook endpoint with `secret`.
    pub fn spawn_http_worker(
        &self,
        concurrency: usize,
        label: &str,
        secret: &str,
        reports: &Arc<Reports>,
    ) -> Result<WorkerProc> {
        WorkerProc::spawn(
            &self.db.url,
            &format!("{label}-w0"),
            concurrency,
            Some(secret),
            &self.log_dir,
            reports.clone(),
        )
    }

    /// The definition id of a workflow.
    pub async fn definition_id(&self, workflow: &str) -> Result<i64> {
        let def = self.engine.store().find_definition(workflow, None).await?;
        def.map(|d| d.id)
            .with_context(|| format!("definition {workflow} missing"))
    }

    /// Waits until `sql` (a scalar count) reaches `target`; `polls` counts the queries made.
    pub async fn wait_count(
        &self,
        sql: &str,
        target: i64,
        every: Duration,
        timeout: Duration,
        mut each: impl FnMut(),
    ) -> Result<u64> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut polls = 0;
        loop {
            let n: i64 = sqlx::query_scalar(sql).fetch_one(&self.pool).await?;
            polls += 1;
            each();
            if n >= target {
                return Ok(polls);
            }
            if tokio::time::Instant::now() > deadline {
                let stuck: Vec<(String, Option<String>, i64)> = sqlx::query_as(
                    "SELECT status, last_error, count(*) FROM paysaga_sagas GROUP BY 1, 2 ORDER BY 3 DESC LIMIT 5",
                )
                .fetch_all(&self.pool)
                .await
                .unwrap_or_default();
                bail!("timed out after {timeout:?} waiting for `{sql}` to reach {target} (now {n}); sagas by status: {stuck:?}");
            }
            tokio::time::sleep(every).await;
        }
    }

    /// Drops the database.
    pub async fn finish(self, server: &Server) -> Result<()> {
        self.pool.close().await;
        server.drop_database(&self.db).await
    }
}

/// Stops worker children; returns the first error after trying them all.
pub async fn stop_all(workers: Vec<WorkerProc>) -> Result<()> {
    let mut first = Ok(());
    for w in workers {
        if let Err(e) = w.stop().await {
            if first.is_ok() {
                first = Err(e);
            }
        }
    }
    first
}
