//! # paysaga-bench
//!
//! The benchmark suite of issue 6: starts from empty databases it creates (by default on a
//! private PostgreSQL cluster it starts and removes, see [`cluster`]), runs the scenarios,
//! prints a readable table with every target's pass/fail and writes the figures as JSON.
//!
//! 1. **throughput**: N sagas of the built-in 5-step `noop` workflow (`{"delay_ms": 0}`),
//!    W worker processes x C concurrency: sagas/s, steps/s, commits and WAL per saga and
//!    per step, CPU split, start-to-complete latency at half the measured rate;
//! 2. **ceiling**: `pgbench` with a one-row INSERT+COMMIT script on the same database at the
//!    same client count; paysaga's steps/s as a ratio of it;
//! 3. **wake latency**: signed Lumanu webhooks POSTed to the worker's real webhook
//!    endpoint for sagas waiting on them, from the HTTP 2xx to the next step starting
//!    (see [`scenarios::memory_wake`]);
//! 4. **claim cost at scale**: claim latency and plan with 1k, 100k and 1M finished sagas;
//! 5. **memory**: worker RSS with 100k sagas waiting on events, and during scenario 1;
//! 6. **single-saga latency**: one 5-step saga at a time;
//! 7. **idle cost**: transactions/s and sequential scans of idle workers with 1k and 1M
//!    finished sagas stored (see [`scenarios::idle`]);
//! 8. **retention**: throughput while pruning 1M finished sagas (see [`scenarios::prune`]).
//!
//! Every worker is a separate process (this binary run as `worker-child`), each its own
//! lease owner. Run `paysaga-bench --help` for the options; `--quick` is a CI-sized run.

mod child;
mod cluster;
mod delay_proxy;
mod kinds;
mod machine;
mod peer;
mod report;
mod scenarios;
mod stats;
mod webhook;

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use serde_json::json;

use crate::cluster::Server;
use crate::report::Report;

#[derive(Debug, Parser)]
#[command(
    name = "paysaga-bench",
    about = "paysaga's benchmark suite (issue 6)",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    opts: Opts,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Internal: one worker process (started by the benchmark).
    #[command(hide = true)]
    WorkerChild {
        /// Database URL.
        #[arg(long)]
        url: String,
        /// Worker name.
        #[arg(long)]
        name: String,
        /// Concurrency.
        #[arg(long)]
        concurrency: usize,
        /// Serve the webhook endpoint with this Lumanu webhook secret.
        #[arg(long, env = "PAYSAGA_BENCH_WEBHOOK_SECRET", hide_env_values = true)]
        webhook_secret: Option<String>,
    },
    /// Internal: one worker process of the peer engine, underway (started by `--peers`).
    #[command(hide = true)]
    UnderwayChild {
        /// Database URL.
        #[arg(long)]
        url: String,
        /// Worker name.
        #[arg(long)]
        name: String,
        /// Concurrency.
        #[arg(long)]
        concurrency: usize,
    },
}

#[derive(Debug, clap::Args)]
struct Opts {
    /// CI-sized run (well under a minute): fewer sagas, smaller tables, shorter phases.
    #[arg(long)]
    quick: bool,
    /// Where to write the JSON report.
    #[arg(long, default_value = "target/bench/latest.json")]
    json_out: PathBuf,
    /// Use this existing server (any database URL on it) instead of a private cluster.
    /// WAL and write-transaction figures are cluster-wide and then include other clients.
    #[arg(long)]
    server: Option<String>,
    /// Scenarios to run (comma-separated): throughput, wake, claim, single, idle, prune, ratelimit,
    /// peers, scale, campaign.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "throughput,wake,claim,single,idle,prune,scale"
    )]
    only: Vec<String>,
    /// Sagas in the throughput scenario [default: 10000, quick 1000].
    #[arg(long)]
    sagas: Option<usize>,
    /// Worker processes in the throughput scenario.
    #[arg(long, default_value_t = 2)]
    workers: usize,
    /// Concurrency of each worker (steps in flight).
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Sagas waiting on events in the memory / wake scenario [default: 100000, quick 5000].
    #[arg(long)]
    waiting: Option<usize>,
    /// Of the waiting sagas, how many the worker brings into their wait itself (the others
    /// are cloned from one of them in SQL).
    #[arg(long, default_value_t = 5000)]
    waiting_through_worker: usize,
    /// Events delivered in the wake scenario [default: 1000, quick 200].
    #[arg(long)]
    wake_events: Option<usize>,
    /// Events per second in the wake scenario.
    #[arg(long, default_value_t = 100.0)]
    wake_rate: f64,
    /// Finished-saga table sizes of the claim scenario [default: 1000,100000,1000000; quick
    /// 1000,10000,100000].
    #[arg(long, value_delimiter = ',')]
    claim_scales: Option<Vec<u64>>,
    /// Timed claims per table size [default: 512, quick 256].
    #[arg(long)]
    claims: Option<usize>,
    /// Sagas in the single-saga scenario [default: 200, quick 50].
    #[arg(long)]
    single: Option<usize>,
    /// Seconds of each pgbench run [default: 5, quick 2].
    #[arg(long)]
    pgbench_secs: Option<u64>,
    /// Seconds of the latency phase of the throughput scenario [default: 10, quick 2].
    #[arg(long)]
    latency_secs: Option<u64>,
    /// Open-loop start rate of the throughput scenario's latency phase, in sagas/s [default:
    /// half the measured drain rate]. A fixed rate compares builds under the same load.
    #[arg(long)]
    latency_rate: Option<f64>,
    /// Also run the peer engine (underway) with the same workflow, sizes and worker
    /// processes on the same cluster, and print the ratios (scenario `peers`).
    #[arg(long)]
    peers: bool,
    /// Sagas per cell of the scale-out table [default: 3000, quick 300].
    #[arg(long)]
    scale_sagas: Option<usize>,
    /// Round trip added between workers and database in the scale-out table's second
    /// grid, ms (0: no second grid).
    #[arg(long, default_value_t = 1.0)]
    scale_added_rtt_ms: f64,
    /// Keep the databases (and the private cluster) for inspection.
    #[arg(long)]
    keep: bool,
    /// Finished-saga table sizes of the idle scenario [default: 1000,1000000; quick
    /// 1000,100000].
    #[arg(long, value_delimiter = ',')]
    idle_scales: Option<Vec<u64>>,
    /// Idle worker processes in the idle scenario.
    #[arg(long, default_value_t = 2)]
    idle_workers: usize,
    /// Seconds of the idle scenario's measured window [default: 60, quick 20].
    #[arg(long)]
    idle_window_secs: Option<u64>,
    /// Finished sagas pruned in the retention scenario [default: 1000000, quick 100000].
    #[arg(long)]
    prune_finished: Option<u64>,
    /// Lumanu-bound steps of the rate-limit scenario (`--only ratelimit`; 4 worker processes
    /// x concurrency 32 against 50 requests/s) [default: 2000, quick 210].
    #[arg(long)]
    ratelimit_steps: Option<usize>,
    /// Creators of the campaign scenario (`--only campaign`) [default: 10000, quick 500].
    #[arg(long)]
    campaign_creators: Option<usize>,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    match cli.command {
        Some(Command::WorkerChild {
            url,
            name,
            concurrency,
            webhook_secret,
        }) => {
            paysaga_log::init("warn");
            rt.block_on(child::run_child(
                &url,
                &name,
                concurrency,
                webhook_secret.as_deref(),
            ))
        }
        Some(Command::UnderwayChild {
            url,
            name,
            concurrency,
        }) => {
            paysaga_log::init("warn");
            rt.block_on(peer::run_child(&url, &name, concurrency))
        }
        None => rt.block_on(bench(cli.opts)),
    }
}

async fn bench(o: Opts) -> Result<()> {
    let q = o.quick;
    let sagas = o.sagas.unwrap_or(if q { 1000 } else { 10_000 });
    let waiting = o.waiting.unwrap_or(if q { 5000 } else { 100_000 });
    let wake_events = o.wake_events.unwrap_or(if q { 200 } else { 1000 });
    let mut scales = o.claim_scales.clone().unwrap_or_else(|| {
        if q {
            vec![1000, 10_000, 100_000]
        } else {
            vec![1000, 100_000, 1_000_000]
        }
    });
    scales.sort_unstable();
    let single = o.single.unwrap_or(if q { 50 } else { 200 });
    let pgbench_secs = o.pgbench_secs.unwrap_or(if q { 2 } else { 5 });
    let latency_secs = o.latency_secs.unwrap_or(if q { 2 } else { 10 });
    let idle_secs = if q { 2 } else { 10 };
    let claims = o.claims.unwrap_or(if q { 256 } else { 512 });
    let log_dir = o
        .json_out
        .parent()
        .map(|p| p.join("logs"))
        .unwrap_or_else(|| PathBuf::from("logs"));
    let run = |name: &str| o.only.iter().any(|s| s == name) || (name == "peers" && o.peers);

    let started_at = chrono::Utc::now()
        .format("%Y-%m-%d %H:%M:%S UTC")
        .to_string();
    let t0 = Instant::now();
    eprintln!("paysaga-bench: preparing the server...");
    let server = match &o.server {
        Some(url) => Server::external(url, o.keep),
        None => {
            tokio::task::spawn_blocking({
                let keep = o.keep;
                move || Server::start_private(keep)
            })
            .await??
        }
    };
    let server_desc = if server.is_private() {
        "private cluster started by the benchmark (stock settings + pg_stat_statements); counters are this run's alone".to_string()
    } else {
        "existing server (--server); WAL and write-transaction counts are cluster-wide and include other clients".to_string()
    };
    let result = async {
        let machine = machine::describe(&server.admin_url, &server_desc).await?;
        let mut report = Report {
            started_at,
            duration_s: 0.0,
            quick: q,
            parameters: json!({
                "sagas": sagas, "workers": o.workers, "concurrency": o.concurrency, "waiting": waiting,
                "waiting_through_worker": o.waiting_through_worker, "wake_events": wake_events, "wake_rate": o.wake_rate, "claim_scales": scales, "claims": claims,
                "single": single, "pgbench_secs": pgbench_secs, "latency_secs": latency_secs, "idle_secs": idle_secs,
                "worker_model": "each worker is its own OS process (paysaga-bench worker-child), its own lease owner and pool",
            }),
            machine,
            throughput: None,
            memory_wake: None,
            claim: None,
            single: None,
            errors: Vec::new(),
            targets: Vec::new(),
            idle: None,
            prune: None,
            rate_limit: None,
            peers: None,
            scale: None,
            campaign: None,
        };
        if run("throughput") {
            eprintln!("[1,2] throughput and pgbench ceiling");
            let cfg = scenarios::throughput::Config { sagas, workers: o.workers, concurrency: o.concurrency, latency_secs, latency_rate: o.latency_rate, pgbench_secs };
            match scenarios::throughput::run(&server, &cfg, &log_dir).await {
                Ok(x) => report.throughput = Some(x),
                Err(e) => report.errors.push(format!("throughput: {e:#}")),
            }
        }
        if run("wake") {
            eprintln!("[5,3] memory with waiting sagas, wake latency");
            let cfg = scenarios::memory_wake::Config { waiting, events: wake_events, rate: o.wake_rate, concurrency: o.concurrency, idle_secs, through_worker: o.waiting_through_worker };
            match scenarios::memory_wake::run(&server, &cfg, &log_dir).await {
                Ok(x) => report.memory_wake = Some(x),
                Err(e) => report.errors.push(format!("memory/wake: {e:#}")),
            }
        }
        if run("claim") {
            eprintln!("[4] claim cost at scale");
            match scenarios::claim::run(&server, &scales, claims, &log_dir).await {
                Ok(x) => report.claim = Some(x),
                Err(e) => report.errors.push(format!("claim: {e:#}")),
            }
        }
        if run("single") {
            eprintln!("[6] single-saga latency");
            match scenarios::single::run(&server, single, o.concurrency, &log_dir).await {
                Ok(x) => report.single = Some(x),
                Err(e) => report.errors.push(format!("single: {e:#}")),
            }
        }
        if run("peers") {
            eprintln!("[10] peer engine: underway, same workflow and sizes");
            let cfg = scenarios::peers::Config { jobs: sagas, workers: o.workers, concurrency: o.concurrency, single };
            match scenarios::peers::run(&server, &cfg, &log_dir).await {
                Ok(x) => report.peers = Some(x),
                Err(e) => report.errors.push(format!("peers: {e:#}")),
            }
        }
        if run("scale") {
            eprintln!("[11] scale-out: 1/2/4 worker processes x concurrency 8/16/32");
            let mut one_way_delays = vec![std::time::Duration::ZERO];
            if o.scale_added_rtt_ms > 0.0 {
                one_way_delays.push(std::time::Duration::from_secs_f64(o.scale_added_rtt_ms / 2000.0));
            }
            let cfg = scenarios::scale::Config { sagas: o.scale_sagas.unwrap_or(if q { 300 } else { 3000 }), workers: vec![1, 2, 4], concurrency: vec![8, 16, 32], one_way_delays };
            match scenarios::scale::run(&server, &cfg, &log_dir).await {
                Ok(x) => report.scale = Some(x),
                Err(e) => report.errors.push(format!("scale: {e:#}")),
            }
        }
        if run("idle") {
            let scales = o.idle_scales.clone().unwrap_or_else(|| {
                if q { vec![1000, 100_000] } else { vec![1000, 1_000_000] }
            });
            let window = std::time::Duration::from_secs(o.idle_window_secs.unwrap_or(if q { 20 } else { 60 }));
            eprintln!("[7] idle cost");
            match scenarios::idle::run(&server, &scales, o.idle_workers, window, &log_dir).await {
                Ok(x) => report.idle = Some(x),
                Err(e) => report.errors.push(format!("idle: {e:#}")),
            }
        }
        if run("prune") {
            let finished = o.prune_finished.unwrap_or(if q { 100_000 } else { 1_000_000 });
            let window = std::time::Duration::from_secs(if q { 5 } else { 15 });
            eprintln!("[8] retention: pruning while a throughput run goes on");
            match scenarios::prune::run(&server, finished, o.workers, o.concurrency, window, &log_dir).await {
                Ok(x) => report.prune = Some(x),
                Err(e) => report.errors.push(format!("prune: {e:#}")),
            }
        }

        if run("ratelimit") {
            eprintln!("[9] provider rate limit across worker processes");
            let cfg = scenarios::rate_limit::Config { steps: o.ratelimit_steps.unwrap_or(if q { 210 } else { 2000 }), workers: 4, concurrency: 32, limit: 50.0 };
            match scenarios::rate_limit::run(&server, &cfg, &log_dir).await {
                Ok(x) => report.rate_limit = Some(x),
                Err(e) => report.errors.push(format!("ratelimit: {e:#}")),
            }
        }
        if run("campaign") {
            eprintln!("[10] Lumanu campaign of many creators");
            let cfg = scenarios::campaign::Config { creators: o.campaign_creators.unwrap_or(if q { 500 } else { 10_000 }), concurrency: 32, timeout: std::time::Duration::from_secs(3600) };
            match scenarios::campaign::run(&server, &cfg, &log_dir).await {
                Ok(x) => report.campaign = Some(x),
                Err(e) => report.errors.push(format!("campaign: {e:#}")),
            }
        }
        report.duration_s = t0.elapsed().as_secs_f64();
        report.evaluate();
        Ok::<_, anyhow::Error>(report)
    }
    .await;
    tokio::task::spawn_blocking(move || server.stop()).await?;
    let report = result?;
    println!("{}", report.render());
    if let Some(dir) = o.json_out.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    }
    std::fs::write(&o.json_out, serde_json::to_vec_pretty(&report)?)
        .with_context(|| format!("write {}", o.json_out.display()))?;
    println!("JSON written to {}", o.json_out.display());
    if !report.errors.is_empty() {
        anyhow::bail!(
            "{} scenario(s) failed; see ERROR lines above",
            report.errors.len()
        );
    }
    Ok(())
}
