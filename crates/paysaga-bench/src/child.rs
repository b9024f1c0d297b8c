//! Worker processes. Each of the W workers is a separate OS process (this binary re-run as
//! `paysaga-bench worker-child`), so that each is its own lease owner with its own
//! connection pool, as in production, and its memory can be read from `/proc`.
//!
//! A child runs one [`paysaga_runtime::Worker`] with the built-in `noop.sleep` kind and the
//! benchmark's kinds, stops gracefully when its stdin closes, and prints one line per
//! reported step start (see [`crate::kinds`]) and a final `exit` line with its counters.
//! Given a webhook secret it also serves the runtime's HTTP surface (`POST
//! /webhooks/lumanu`, probes, metrics) on a free local port, as `paysaga worker` does, and
//! prints `http <addr>`.

use std::collections::HashMap;
use std::process::Stdio;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use paysaga_runtime::{noop, Engine, Registry, WorkerConfig};
use paysaga_store::PgStore;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use uuid::Uuid;

use crate::kinds;

/// The registry every benchmark process uses.
pub fn registry() -> Registry {
    let mut r = Registry::new();
    r.register(noop::Sleep)
        .register(kinds::WaitForEvent)
        .register(kinds::Mark);
    r
}

/// Entry point of a worker child process.
pub async fn run_child(
    url: &str,
    name: &str,
    concurrency: usize,
    webhook_secret: Option<&str>,
) -> Result<()> {
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    kinds::set_reporter(tx);
    std::thread::spawn(move || {
        use std::io::Write;
        let stdout = std::io::stdout();
        for line in rx {
            let mut out = stdout.lock();
            let _ = writeln!(out, "{line}");
            let _ = out.flush();
        }
    });
    let store = PgStore::connect(url)
        .await
        .context("worker child: connect")?;
    let engine = Engine::new(Arc::new(store), registry());
    let http = match webhook_secret {
        Some(secret) => {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .context("worker child: listen")?;
            let addr = listener.local_addr()?;
            let verifiers: Vec<Arc<dyn paysaga_runtime::http::WebhookVerifier>> =
                vec![Arc::new(paysaga_providers::endpoint::ProviderWebhook::new(
                    crate::webhook::PROVIDER,
                    secret.to_string().into(),
                ))];
            let app = paysaga_runtime::http::router(
                engine.clone(),
                verifiers,
                paysaga_runtime::http::DEFAULT_BODY_LIMIT,
            );
            // The runtime's own server loop with its default limits, as `paysaga worker`.
            let server = tokio::spawn(paysaga_runtime::http::serve(
                listener,
                app,
                paysaga_runtime::http::ServeConfig::default(),
                std::future::pending::<()>(),
            ));
            println!("http {addr}");
            Some(server)
        }
        None => None,
    };
    let mut config = WorkerConfig::default();
    config.name = name.to_string();
    config.concurrency = concurrency;
    let worker = engine.worker(config);
    let stats = worker.stats();
    let shutdown = async {
        // The parent closes our stdin to stop us.
        let mut stdin = tokio::io::stdin();
        let mut buf = [0u8; 64];
        while let Ok(n) = stdin.read(&mut buf).await {
            if n == 0 {
                break;
            }
        }
    };
    // Progress for the parent (so that it need not poll the database while measuring).
    let progress = {
        let stats = stats.clone();
        let name = name.to_string();
        tokio::spawn(async move {
            let mut last = u64::MAX;
            loop {
                let finished = stats.finished.load(Ordering::Relaxed);
                let claimed = stats.claimed.load(Ordering::Relaxed);
                if finished != last {
                    println!("progress {name} {finished} {claimed}");
                    last = finished;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    worker.run(shutdown).await.context("worker child: run")?;
    progress.abort();
    if let Some(server) = http {
        server.abort();
    }
    // Claims that returned sagas (each one a write transaction), from the worker's metrics.
    let claim_batches = engine
        .metrics()
        .render()
        .lines()
        .find(|l| l.starts_with("paysaga_claim_batch_size_count"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0);
    println!(
        "exit claimed={} assigned={} steps_run={} finished={} lease_lost={} claim_batches={claim_batches}",
        stats.claimed.load(Ordering::Relaxed),
        stats.assigned.load(Ordering::Relaxed),
        stats.steps_run.load(Ordering::Relaxed),
        stats.finished.load(Ordering::Relaxed),
        stats.lease_lost.load(Ordering::Relaxed),
    );
    Ok(())
}

/// Step start times reported by the children, by saga.
#[derive(Debug, Default)]
pub struct Reports {
    /// `bench.wait` runs woken by an event: saga -> unix ns.
    pub resumed: Mutex<HashMap<Uuid, u128>>,
    /// `bench.mark` runs: saga -> unix ns.
    pub next: Mutex<HashMap<Uuid, u128>>,
    /// `exit` lines.
    pub exits: Mutex<Vec<String>>,
    /// Latest (finished, claimed) counters by worker name.
    pub progress: Mutex<HashMap<String, (u64, u64)>>,
    /// Address of the HTTP server of a child started with a webhook secret.
    pub http_addr: Mutex<Option<String>>,
}

impl Reports {
    fn take_line(&self, line: &str) {
        let mut parts = line.split_whitespace();
        let (Some(kind), Some(a), b) = (parts.next(), parts.next(), parts.next()) else {
            return;
        };
        let entry = match (Uuid::parse_str(a), b.and_then(|b| b.parse::<u128>().ok())) {
            (Ok(saga), Some(at)) => Some((saga, at)),
            _ => None,
        };
        match (kind, entry) {
            ("resumed", Some((saga, at))) => {
                if let Ok(mut m) = self.resumed.lock() {
                    m.insert(saga, at);
                }
            }
            ("next", Some((saga, at))) => {
                if let Ok(mut m) = self.next.lock() {
                    m.insert(saga, at);
                }
            }
            ("progress", _) => {
                let (Some(f), Some(c)) = (
                    b.and_then(|b| b.parse().ok()),
                    parts.next().and_then(|c| c.parse().ok()),
                ) else {
                    return;
                };
                if let Ok(mut p) = self.progress.lock() {
                    p.insert(a.to_string(), (f, c));
                }
            }
            ("http", _) => {
                if let Ok(mut h) = self.http_addr.lock() {
                    *h = Some(a.to_string());
                }
            }
            ("exit", _) => {
                if let Ok(mut e) = self.exits.lock() {
                    e.push(line.to_string());
                }
            }
            _ => {}
        }
    }

    /// Sagas finished by all workers reporting here.
    pub fn finished(&self) -> u64 {
        self.progress
            .lock()
            .map(|p| p.values().map(|v| v.0).sum())
            .unwrap_or(0)
    }

    /// Sagas finished plus work taken (paysaga: claims; underway: steps run) by all workers
    /// reporting here: what moves while they work.
    fn activity(&self) -> u64 {
        self.progress
            .lock()
            .map(|p| p.values().map(|v| v.0 + v.1).sum())
            .unwrap_or(0)
    }

    /// Waits until the workers reporting here finished `target` sagas. It gives up only when
    /// they did nothing for `stall` (no saga finished, no work taken): a slow machine or a
    /// peer that slows down as its queue grows still finishes, a stuck one fails with the
    /// count it reached.
    pub async fn wait_finished(
        &self,
        target: u64,
        stall: Duration,
        mut each: impl FnMut(),
    ) -> Result<()> {
        let start = tokio::time::Instant::now();
        let mut seen = self.activity();
        let mut moved = start;
        while self.finished() < target {
            let now = tokio::time::Instant::now();
            if now - moved > stall {
                anyhow::bail!(
                    "no progress for {stall:?}: workers finished {} of {target} sagas in {:.0?}",
                    self.finished(),
                    now - start
                );
            }
            each();
            tokio::time::sleep(Duration::from_millis(20)).await;
            let a = self.activity();
            if a != seen {
                seen = a;
                moved = tokio::time::Instant::now();
            }
        }
        Ok(())
    }

    /// Waits for a child's `http <addr>` line.
    pub async fn wait_http(&self, timeout: Duration) -> Result<String> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(a) = self.http_addr.lock().ok().and_then(|h| h.clone()) {
                return Ok(a);
            }
            if tokio::time::Instant::now() > deadline {
                anyhow::bail!(
                    "the worker child did not report its HTTP address within {timeout:?}"
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Sum of a `key=value` counter over the `exit` lines.
    pub fn exit_sum(&self, key: &str) -> u64 {
        let prefix = format!("{key}=");
        self.exits
            .lock()
            .map(|e| {
                e.iter()
                    .flat_map(|l| l.split_whitespace())
                    .filter_map(|f| f.strip_prefix(&prefix)?.parse::<u64>().ok())
                    .sum()
            })
            .unwrap_or(0)
    }

    /// How many `resumed` reports arrived.
    pub fn resumed_count(&self) -> usize {
        self.resumed.lock().map(|m| m.len()).unwrap_or(0)
    }
}

/// A running worker child.
#[derive(Debug)]
pub struct WorkerProc {
    child: Child,
    stdin: Option<ChildStdin>,
    /// Its process id.
    pub pid: u32,
}

impl WorkerProc {
    /// Starts `paysaga-bench worker-child` with `concurrency` (and the webhook endpoint when
    /// `webhook_secret` is given); its stderr (warnings) goes to `log_dir/<name>.log`, its
    /// reports into `reports`.
    pub fn spawn(
        url: &str,
        name: &str,
        concurrency: usize,
        webhook_secret: Option<&str>,
        log_dir: &std::path::Path,
        reports: Arc<Reports>,
    ) -> Result<WorkerProc> {
        let mut cmd = Command::new(std::env::current_exe()?);
        if let Some(secret) = webhook_secret {
            // Through the environment, not the command line (visible in `ps`).
            cmd.env("PAYSAGA_BENCH_WEBHOOK_SECRET", secret);
        }
        Self::spawn_child(
            cmd,
            "worker-child",
            url,
            name,
            concurrency,
            log_dir,
            reports,
        )
    }

    /// Starts `paysaga-bench underway-child`: the peer engine's worker (see [`crate::peer`]),
    /// with the same progress lines and the same stop (stdin closed).
    pub fn spawn_underway(
        url: &str,
        name: &str,
        concurrency: usize,
        log_dir: &std::path::Path,
        reports: Arc<Reports>,
    ) -> Result<WorkerProc> {
        let cmd = Command::new(std::env::current_exe()?);
        Self::spawn_child(
            cmd,
            "underway-child",
            url,
            name,
            concurrency,
            log_dir,
            reports,
        )
    }

    fn spawn_child(
        mut cmd: Command,
        subcommand: &str,
        url: &str,
        name: &str,
        concurrency: usize,
        log_dir: &std::path::Path,
        reports: Arc<Reports>,
    ) -> Result<WorkerProc> {
        std::fs::create_dir_all(log_dir)?;
        let log = std::fs::File::create(log_dir.join(format!("{name}.log")))?;
        cmd.args([
            subcommand,
            "--url",
            url,
            "--name",
            name,
            "--concurrency",
            &concurrency.to_string(),
        ]);
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .kill_on_drop(true)
            .spawn()
            .context("spawn worker child")?;
        let pid = child.id().context("worker child has no pid")?;
        let stdin = child.stdin.take();
        if let Some(stdout) = child.stdout.take() {
            tokio::spawn(async move {
                let mut lines = BufReader::new(stdout).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    reports.take_line(&line);
                }
            });
        }
        Ok(WorkerProc { child, stdin, pid })
    }

    /// Current and peak resident set size in MiB.
    pub fn rss_mib(&self) -> Option<(f64, f64)> {
        crate::machine::rss_kib(self.pid)
            .map(|(rss, hwm)| (rss as f64 / 1024.0, hwm as f64 / 1024.0))
    }

    /// CPU seconds used so far.
    pub fn cpu_seconds(&self) -> f64 {
        crate::machine::cpu_seconds(self.pid).unwrap_or(0.0)
    }

    /// Graceful stop (stdin closed); killed after 40 s.
    pub async fn stop(mut self) -> Result<()> {
        drop(self.stdin.take());
        match tokio::time::timeout(Duration::from_secs(40), self.child.wait()).await {
            Ok(status) => {
                let status = status?;
                if !status.success() {
                    anyhow::bail!("worker child {} exited with {status} (see its log under target/bench/logs)", self.pid);
                }
            }
            Err(_) => {
                self.child.kill().await?;
                anyhow::bail!("worker child {} did not stop within 40 s; killed", self.pid);
            }
        }
        Ok(())
    }
}
