//! The machine and server the figures were measured on, database counters taken before and
//! after each measured phase, and per-process readings from `/proc`.

use anyhow::Result;
use serde::Serialize;
use sqlx::{Connection, PgConnection, Row};

/// Server settings reported with every run.
const SETTINGS: &[&str] = &[
    "shared_buffers",
    "synchronous_commit",
    "fsync",
    "wal_sync_method",
    "commit_delay",
    "full_page_writes",
    "wal_level",
    "max_wal_size",
    "checkpoint_timeout",
    "autovacuum",
    "work_mem",
    "max_connections",
    "shared_preload_libraries",
];

/// The machine and the server.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    /// Logical CPUs available to this process.
    pub cores: usize,
    /// CPU model.
    pub cpu_model: String,
    /// Memory in MiB.
    pub memory_mib: u64,
    /// Kernel release.
    pub kernel: String,
    /// 1/5/15-minute load averages when the run started (other users of the machine).
    pub load_average_at_start: String,
    /// `SELECT version()`.
    pub postgres_version: String,
    /// Private cluster started by the benchmark, or an existing server.
    pub server: String,
    /// Selected settings.
    pub settings: Vec<(String, String)>,
    /// `pgbench --version`.
    pub pgbench: String,
}

fn read(path: &str) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// Describes the machine and the server behind `url`.
pub async fn describe(url: &str, server: &str) -> Result<Machine> {
    let cpuinfo = read("/proc/cpuinfo");
    let cpu_model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_string())
        .unwrap_or_else(|| "unknown".to_string());
    let memory_mib = read("/proc/meminfo")
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<u64>().ok())
        .map(|kb| kb / 1024)
        .unwrap_or_default();
    let load = read("/proc/loadavg");
    let load_average_at_start = load
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ");
    let mut conn = PgConnection::connect(url).await?;
    let postgres_version: String = sqlx::query_scalar("SELECT version()")
        .fetch_one(&mut conn)
        .await?;
    let mut settings = Vec::new();
    for name in SETTINGS {
        let row =
            sqlx::query("SELECT setting, coalesce(unit, '') FROM pg_settings WHERE name = $1")
                .bind(name)
                .fetch_optional(&mut conn)
                .await?;
        if let Some(row) = row {
            let (value, unit): (String, String) = (row.try_get(0)?, row.try_get(1)?);
            settings.push((name.to_string(), format_setting(&value, &unit)));
        }
    }
    conn.close().await?;
    let pgbench = std::process::Command::new(crate::cluster::pg_bin("pgbench"))
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|e| format!("not found: {e}"));
    Ok(Machine {
        cores: std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
        cpu_model,
        memory_mib,
        kernel: read("/proc/sys/kernel/osrelease").trim().to_string(),
        load_average_at_start,
        postgres_version,
        server: server.to_string(),
        settings,
        pgbench,
    })
}

fn format_setting(value: &str, unit: &str) -> String {
    match (unit, value.parse::<u64>()) {
        ("8kB", Ok(n)) => format!("{}MB", n * 8 / 1024),
        ("kB", Ok(n)) if n >= 1024 => format!("{}MB", n / 1024),
        ("MB", Ok(n)) => format!("{n}MB"),
        ("s", Ok(n)) => format!("{n}s"),
        ("", _) => value.to_string(),
        (u, _) => format!("{value}{u}"),
    }
}

/// Database counters at one moment.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Counters {
    /// `pg_stat_database.xact_commit` of the benchmark database (all committed transactions,
    /// read-only ones included).
    pub xact_commit: i64,
    /// `pg_stat_database.xact_rollback`.
    pub xact_rollback: i64,
    /// Next transaction id: its advance counts transactions that wrote (cluster-wide).
    pub next_xid: i64,
    /// `pg_stat_wal.wal_records` (cluster-wide).
    pub wal_records: i64,
    /// WAL insert position in bytes (`pg_current_wal_insert_lsn()`, cluster-wide, exact).
    pub wal_bytes: i64,
    /// `pg_stat_wal.wal_bytes` (cluster-wide; counted by backends and flushed to the
    /// statistics when they report, so read after the workers exit).
    pub wal_bytes_stat: i64,
    /// `pg_stat_wal.wal_fpi` full-page images (cluster-wide).
    pub wal_fpi: i64,
    /// `pg_stat_wal.wal_sync`: WAL flushes to disk (cluster-wide; group commit makes it
    /// smaller than the number of commits).
    pub wal_sync: i64,
    /// `n_tup_upd` of `paysaga_sagas`.
    pub saga_updates: i64,
    /// `n_tup_hot_upd` of `paysaga_sagas` (updates that touched no index).
    pub saga_hot_updates: i64,
    /// Statement executions recorded by `pg_stat_statements` for this database (if loaded).
    pub statements: i64,
}

/// Reads the counters on a fresh connection (closed at once, so its own statistics flush).
pub async fn counters(url: &str) -> Result<Counters> {
    let mut conn = PgConnection::connect(url).await?;
    let row = sqlx::query(
        "SELECT d.xact_commit, d.xact_rollback,
                pg_snapshot_xmax(pg_current_snapshot())::text::bigint AS next_xid,
                w.wal_records, pg_wal_lsn_diff(pg_current_wal_insert_lsn(), '0/0')::bigint AS wal_bytes, w.wal_fpi, w.wal_sync,
                w.wal_bytes::bigint AS wal_bytes_stat,
                coalesce((SELECT n_tup_upd FROM pg_stat_user_tables WHERE relname = 'paysaga_sagas'), 0) AS upd,
                coalesce((SELECT n_tup_hot_upd FROM pg_stat_user_tables WHERE relname = 'paysaga_sagas'), 0) AS hot
         FROM pg_stat_database d, pg_stat_wal w WHERE d.datname = current_database()",
    )
    .fetch_one(&mut conn)
    .await?;
    let statements: i64 = if has_statements(&mut conn).await {
        sqlx::query_scalar(
            "SELECT coalesce(sum(calls), 0)::bigint FROM pg_stat_statements
             WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())",
        )
        .fetch_one(&mut conn)
        .await?
    } else {
        0
    };
    let c = Counters {
        xact_commit: row.try_get(0)?,
        xact_rollback: row.try_get(1)?,
        next_xid: row.try_get(2)?,
        wal_records: row.try_get(3)?,
        wal_bytes: row.try_get(4)?,
        wal_fpi: row.try_get(5)?,
        wal_sync: row.try_get(6)?,
        wal_bytes_stat: row.try_get(7)?,
        saga_updates: row.try_get(8)?,
        saga_hot_updates: row.try_get(9)?,
        statements,
    };
    conn.close().await?;
    Ok(c)
}

impl Counters {
    /// `self - before`.
    pub fn since(&self, before: &Counters) -> Counters {
        Counters {
            xact_commit: self.xact_commit - before.xact_commit,
            xact_rollback: self.xact_rollback - before.xact_rollback,
            next_xid: self.next_xid - before.next_xid,
            wal_records: self.wal_records - before.wal_records,
            wal_bytes: self.wal_bytes - before.wal_bytes,
            wal_bytes_stat: self.wal_bytes_stat - before.wal_bytes_stat,
            wal_fpi: self.wal_fpi - before.wal_fpi,
            wal_sync: self.wal_sync - before.wal_sync,
            saga_updates: self.saga_updates - before.saga_updates,
            saga_hot_updates: self.saga_hot_updates - before.saga_hot_updates,
            statements: self.statements - before.statements,
        }
    }
}

async fn has_statements(conn: &mut PgConnection) -> bool {
    sqlx::query_scalar::<_, bool>(
        "SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'pg_stat_statements')",
    )
    .fetch_one(conn)
    .await
    .unwrap_or(false)
}

/// Creates `pg_stat_statements` in the database when the server preloads it; `false` when
/// it is not available.
pub async fn enable_statements(url: &str) -> bool {
    let Ok(mut conn) = PgConnection::connect(url).await else {
        return false;
    };
    let preloaded: bool = sqlx::query_scalar(
        "SELECT current_setting('shared_preload_libraries') LIKE '%pg_stat_statements%'",
    )
    .fetch_one(&mut conn)
    .await
    .unwrap_or(false);
    let ok = preloaded
        && sqlx::query("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
            .execute(&mut conn)
            .await
            .is_ok();
    let _ = conn.close().await;
    ok
}

/// Resets `pg_stat_statements` (all databases; only used on the private cluster).
pub async fn reset_statements(url: &str) -> Result<()> {
    let mut conn = PgConnection::connect(url).await?;
    if has_statements(&mut conn).await {
        sqlx::query("SELECT pg_stat_statements_reset()")
            .execute(&mut conn)
            .await?;
    }
    conn.close().await?;
    Ok(())
}

/// One statement's totals from `pg_stat_statements`.
#[derive(Debug, Clone, Serialize)]
pub struct StatementStat {
    /// Normalised text, whitespace collapsed and cut to 140 characters.
    pub query: String,
    /// Executions.
    pub calls: i64,
    /// Total execution time inside the server, ms.
    pub total_ms: f64,
    /// Mean execution time, ms.
    pub mean_ms: f64,
    /// Rows returned or affected.
    pub rows: i64,
    /// WAL bytes it generated.
    pub wal_bytes: i64,
    /// Times it was planned (0 unless the server tracks planning, as the private cluster
    /// does): a prepared statement run on a generic plan is planned once per connection.
    pub plans: i64,
    /// Total planning time, ms (same condition).
    pub plan_ms: f64,
}

/// The statements of this database by total execution time (top `limit`).
pub async fn top_statements(url: &str, limit: i64) -> Result<Vec<StatementStat>> {
    let mut conn = PgConnection::connect(url).await?;
    if !has_statements(&mut conn).await {
        conn.close().await?;
        return Ok(Vec::new());
    }
    let rows = sqlx::query(
        "SELECT query, calls, total_exec_time, mean_exec_time, rows, wal_bytes::bigint,
                plans, total_plan_time
         FROM pg_stat_statements
         WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())
           AND query NOT ILIKE '%pg_stat_statements%' AND query NOT ILIKE '%pg_stat_database%'
         ORDER BY total_exec_time DESC LIMIT $1",
    )
    .bind(limit)
    .fetch_all(&mut conn)
    .await?;
    conn.close().await?;
    rows.iter()
        .map(|r| {
            let q: String = r.try_get(0)?;
            let q = q.split_whitespace().collect::<Vec<_>>().join(" ");
            Ok(StatementStat {
                query: q.chars().take(140).collect(),
                calls: r.try_get(1)?,
                total_ms: r.try_get(2)?,
                mean_ms: r.try_get(3)?,
                rows: r.try_get(4)?,
                wal_bytes: r.try_get(5)?,
                plans: r.try_get(6)?,
                plan_ms: r.try_get(7)?,
            })
        })
        .collect()
}

/// Resident set size and its peak (`VmRSS`, `VmHWM`) of a process, in KiB.
pub fn rss_kib(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

/// CPU seconds (user + system) a process has used.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may contain spaces) start at ") ".
    let rest = stat.rsplit_once(") ")?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / clock_ticks())
}

fn clock_ticks() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .trim()
                .parse::<f64>()
                .ok()
        })
        .unwrap_or(100.0)
}

/// Machine-wide CPU time (busy, total) in seconds from `/proc/stat`.
pub fn machine_cpu() -> Option<(f64, f64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().next()?;
    let v: Vec<f64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let total: f64 = v.iter().take(8).sum();
    let idle = v.get(3).copied().unwrap_or(0.0) + v.get(4).copied().unwrap_or(0.0);
    let hz = clock_ticks();
    Some(((total - idle) / hz, total / hz))
}

/// CPU seconds used by the server backends serving `db` (read from `/proc`; works when the
/// server runs on this machine).
pub async fn backend_cpu_seconds(url: &str, db: &str) -> f64 {
    let Ok(mut conn) = PgConnection::connect(url).await else {
        return 0.0;
    };
    let pids: Vec<i32> = sqlx::query_scalar(
        "SELECT pid FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
    )
    .bind(db)
    .fetch_all(&mut conn)
    .await
    .unwrap_or_default();
    let _ = conn.close().await;
    pids.iter().filter_map(|p| cpu_seconds(*p as u32)).sum()
}

/// Calls, total server time (ms) and rows of the statements of this database whose text is
/// `prefix` or starts with it (`pg_stat_statements`; zeros without it).
pub async fn statement_totals(url: &str, prefix: &str) -> Result<(i64, f64, i64)> {
    let mut conn = PgConnection::connect(url).await?;
    if !has_statements(&mut conn).await {
        conn.close().await?;
        return Ok((0, 0.0, 0));
    }
    let row = sqlx::query(
        "SELECT coalesce(sum(calls), 0)::bigint, coalesce(sum(total_exec_time), 0)::float8,
                coalesce(sum(rows), 0)::bigint
         FROM pg_stat_statements
         WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())
           AND starts_with(query, $1)",
    )
    .bind(prefix)
    .fetch_one(&mut conn)
    .await?;
    let r = (row.try_get(0)?, row.try_get(1)?, row.try_get(2)?);
    conn.close().await?;
    Ok(r)
}
