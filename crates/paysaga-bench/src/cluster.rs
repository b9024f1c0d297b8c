//! Where the benchmark's databases live.
//!
//! By default the benchmark starts a **private PostgreSQL cluster** (`initdb` + `pg_ctl` from
//! the installed server binaries, stock settings: `fsync` and `synchronous_commit` on) on a
//! free port, with `pg_stat_statements` preloaded, and removes it at the end. A private
//! cluster is what makes the cluster-wide counters (`pg_stat_wal`, transaction ids) mean
//! "paysaga's own work"; on a shared server they include every other client's writes.
//! `--server URL` uses an existing server instead (WAL and xid figures are then marked
//! as cluster-wide).

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use sqlx::{Connection, Executor, PgConnection};

/// A PostgreSQL server the benchmark uses.
#[derive(Debug)]
pub struct Server {
    /// URL of the maintenance database (`postgres`).
    pub admin_url: String,
    /// The private cluster's data directory, when the benchmark started one.
    private: Option<PathBuf>,
    /// Keep the cluster and databases at the end (debugging).
    keep: bool,
}

/// Finds a server binary under `/usr/lib/postgresql/*/bin` (newest) or on `PATH`.
pub fn pg_bin(name: &str) -> PathBuf {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    versions.sort();
    for v in versions.iter().rev() {
        let candidate = v.join("bin").join(name);
        if candidate.exists() {
            return candidate;
        }
    }
    PathBuf::from(name)
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// Runs a server binary as user `postgres` when we are root (initdb refuses root).
fn run_pg(bin: &Path, args: &[&str]) -> Result<()> {
    let mut cmd = if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(bin);
        c
    } else {
        Command::new(bin)
    };
    let out = cmd
        .args(args)
        .output()
        .with_context(|| format!("cannot run {}", bin.display()))?;
    if !out.status.success() {
        bail!(
            "{} {} failed: {}{}",
            bin.display(),
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

impl Server {
    /// Uses an existing server (its database part is replaced by `postgres`).
    pub fn external(url: &str, keep: bool) -> Server {
        Server {
            admin_url: with_database(url, "postgres"),
            private: None,
            keep,
        }
    }

    /// Starts a private cluster with stock settings (plus `pg_stat_statements`).
    pub fn start_private(keep: bool) -> Result<Server> {
        let root = std::env::temp_dir().join(format!(
            "paysaga-bench-pg-{}",
            uuid::Uuid::new_v4().simple()
        ));
        let data = root.join("data");
        std::fs::create_dir_all(&root).with_context(|| format!("create {}", root.display()))?;
        if is_root() {
            let status = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(&root)
                .status()?;
            if !status.success() {
                bail!("chown {} to postgres failed", root.display());
            }
        }
        let data_s = data.to_string_lossy().to_string();
        run_pg(&pg_bin("initdb"), &["-D", &data_s, "-U", "postgres", "--auth=trust", "-E", "UTF8"])
            .context("initdb for the private benchmark cluster (is the PostgreSQL server package installed?)")?;
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let opts = format!(
            "-p {port} -c listen_addresses=127.0.0.1 -k {} -c shared_preload_libraries=pg_stat_statements \
             -c pg_stat_statements.track=top -c pg_stat_statements.track_planning=on -c track_activity_query_size=8192 -c max_connections=200",
            root.to_string_lossy()
        );
        let log = root.join("server.log").to_string_lossy().to_string();
        let server = Server {
            admin_url: format!("postgres://postgres@127.0.0.1:{port}/postgres"),
            private: Some(root),
            keep,
        };
        run_pg(
            &pg_bin("pg_ctl"),
            &["-D", &data_s, "-o", &opts, "-l", &log, "-w", "start"],
        )
        .context("start the private benchmark cluster")?;
        Ok(server)
    }

    /// Whether cluster-wide counters are ours alone.
    pub fn is_private(&self) -> bool {
        self.private.is_some()
    }

    /// Creates a fresh database `paysaga_bench_<random>_<label>`.
    pub async fn create_database(&self, label: &str) -> Result<BenchDb> {
        let name = format!(
            "paysaga_bench_{}_{label}",
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        );
        let mut admin = PgConnection::connect(&self.admin_url)
            .await
            .with_context(|| format!("connect to {}", self.admin_url))?;
        admin
            .execute(format!("CREATE DATABASE \"{name}\"").as_str())
            .await?;
        admin.close().await?;
        Ok(BenchDb {
            url: with_database(&self.admin_url, &name),
            name,
        })
    }

    /// Drops a database created by [`Server::create_database`] (unless `--keep`).
    pub async fn drop_database(&self, db: &BenchDb) -> Result<()> {
        if self.keep {
            eprintln!("keeping database {}", db.url);
            return Ok(());
        }
        let mut admin = PgConnection::connect(&self.admin_url).await?;
        admin
            .execute(format!("DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)", db.name).as_str())
            .await?;
        admin.close().await?;
        Ok(())
    }

    /// Stops and removes the private cluster (unless `--keep`).
    pub fn stop(&self) {
        let Some(root) = &self.private else { return };
        if self.keep {
            eprintln!(
                "keeping private cluster in {} ({})",
                root.display(),
                self.admin_url
            );
            return;
        }
        let data = root.join("data").to_string_lossy().to_string();
        if let Err(e) = run_pg(
            &pg_bin("pg_ctl"),
            &["-D", &data, "-m", "fast", "-w", "stop"],
        ) {
            eprintln!("warning: could not stop the private cluster: {e:#}");
        }
        let _ = std::fs::remove_dir_all(root);
    }
}

/// A database created for one scenario.
#[derive(Debug, Clone)]
pub struct BenchDb {
    /// Connection URL.
    pub url: String,
    /// Name.
    pub name: String,
}

/// `url` with its database replaced by `db`.
pub fn with_database(url: &str, db: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, format!("?{q}")),
        None => (url, String::new()),
    };
    let scheme_end = base.find("://").map(|i| i + 3).unwrap_or(0);
    let base = match base[scheme_end..].find('/') {
        Some(i) => &base[..scheme_end + i],
        None => base,
    };
    format!("{base}/{db}{query}")
}
