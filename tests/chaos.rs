//! The chaos harness: paysaga attacked the way production will attack it, on real processes.
//!
//! A private PostgreSQL cluster (so that it can be crashed without disturbing anything else),
//! several `paysaga worker` processes and a `paysaga sandbox` injecting provider faults run a
//! mix of the three payout workflows while a seeded chaos monkey:
//! - `kill -9`s random workers and restarts them after a random pause;
//! - sends SIGTERM to workers (the graceful path: they must exit 0) and restarts them;
//! - crashes PostgreSQL (`pg_ctl restart -m immediate`) and takes it away for seconds;
//! - freezes a worker (SIGSTOP) past its lease, then thaws it (SIGCONT): its stale work must not
//!   commit (fencing).
//!
//! The sandbox meanwhile answers with 5xx and 429 + Retry-After, applies effects then times out,
//! answers slowly, and duplicates, reorders, delays, drops and sends early its webhooks.
//!
//! At the end it prints a table and asserts: every saga terminal (or parked for an operator with
//! a reason); each payout in the sandbox ledger at most once, and exactly once for each
//! completed saga; every account's balance equal to the sum of its movements; every webhook the
//! sandbox delivered (2xx) in the inbox; no history gap (each step of a completed saga
//! completed exactly once, in order); every SIGTERM answered by a clean exit.
//!
//! Parameters (environment): `PAYSAGA_CHAOS_SAGAS` (default 210), `PAYSAGA_CHAOS_RATE` of
//! saga starts per second (default 200), `PAYSAGA_CHAOS_SECONDS` of chaos (default 50), `PAYSAGA_CHAOS_WORKERS` (default 3), `PAYSAGA_CHAOS_SEED` (printed; set
//! it to replay the same chaos schedule), `PAYSAGA_CHAOS_FAULTS` (sandbox fault spec),
//! `PAYSAGA_CHAOS_SETTLE_SECONDS` (time allowed after the chaos, default 240). The long run is
//! `just chaos` (5,000 sagas); its table is recorded in docs/RELIABILITY.md.
#![allow(clippy::unwrap_used)]

mod support;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use paysaga_core::SagaStatus;
use paysaga_testkit::Cluster;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::Value;
use sqlx::Connection;
use support::processes::{log_dir, signal, stable_port, Sandbox, WorkerProcess};
use support::workflows::{control_engine, input, test_definition, WORKFLOWS};
use uuid::Uuid;

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The worker processes; worker 0 listens on the port the sandbox sends webhooks to (like a
/// Service with one endpoint: while it is down, webhooks fail and are retried or dropped).
struct Fleet {
    db_url: String,
    sandbox_port: u16,
    ports: Vec<u16>,
    workers: Vec<Option<WorkerProcess>>,
    generation: usize,
    logs: std::path::PathBuf,
}

impl Fleet {
    fn start(&mut self, i: usize) {
        self.generation += 1;
        let name = format!("w{i}-{}", self.generation);
        // Provider calls wait up to 10 s: under the long run's load the sandbox answers
        // slowly, and a 3 s timeout turns slowness into retry storms.
        self.workers[i] = Some(WorkerProcess::start_with_env(
            &self.db_url,
            self.ports[i],
            self.sandbox_port,
            &name,
            &self.logs.join(format!("{name}.log")),
            &[("PAYSAGA_PROVIDER_REQUEST_TIMEOUT_SECS", "10")],
        ));
    }

    fn pid(&self, i: usize) -> Option<u32> {
        self.workers[i].as_ref().map(|w| w.child.id())
    }
}

#[derive(Debug, Default)]
struct Injected {
    kills: u32,
    terms: u32,
    unclean_term_exits: u32,
    pg_crashes: u32,
    pg_outages: u32,
    pauses: u32,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_loses_no_saga_and_pays_no_payout_twice() {
    let sagas_wanted: usize = env_or("PAYSAGA_CHAOS_SAGAS", 210);
    let chaos_for = Duration::from_secs(env_or("PAYSAGA_CHAOS_SECONDS", 50));
    let settle = Duration::from_secs(env_or("PAYSAGA_CHAOS_SETTLE_SECONDS", 240));
    let worker_count: usize = env_or("PAYSAGA_CHAOS_WORKERS", 3).max(2);
    let seed: u64 = env_or(
        "PAYSAGA_CHAOS_SEED",
        u64::from(Uuid::new_v4().as_fields().0),
    );
    let faults = std::env::var("PAYSAGA_CHAOS_FAULTS").unwrap_or_else(|_| {
        format!(
            "error_rate=0.1,rate_limit_share=0.3,retry_after_s=1,timeout_after_effect=0.03,\
             hang_ms=4000,latency_ms=0..40,webhook_duplicate=0.2,webhook_reorder=0.2,\
             webhook_early=0.2,webhook_drop=0.05,webhook_delay_ms=0..500,seed={seed}"
        )
    });
    eprintln!(
        "chaos: seed {seed} (replay with PAYSAGA_CHAOS_SEED={seed}), {sagas_wanted} sagas, \
         {worker_count} workers, {chaos_for:?} of chaos, sandbox faults: {faults}"
    );
    let mut rng = StdRng::seed_from_u64(seed);

    // A private cluster: the chaos crashes it.
    let cluster = Cluster::start("chaos");
    {
        let mut admin = sqlx::PgConnection::connect(&cluster.url("postgres"))
            .await
            .unwrap();
        sqlx::raw_sql("CREATE DATABASE chaos")
            .execute(&mut admin)
            .await
            .unwrap();
    }
    let db_url = cluster.url("chaos");
    let engine = control_engine(&db_url).await;

    let logs = log_dir("chaos");
    eprintln!("chaos: process logs in {}", logs.display());
    let ports: Vec<u16> = (0..worker_count).map(|_| stable_port()).collect();
    let sandbox = Sandbox::start(ports[0], &faults, &logs.join("sandbox.log"));
    let mut fleet = Fleet {
        db_url: db_url.clone(),
        sandbox_port: sandbox.port,
        ports,
        workers: (0..worker_count).map(|_| None).collect(),
        generation: 0,
        logs: logs.clone(),
    };
    for i in 0..worker_count {
        fleet.start(i);
    }

    // Sagas are started while the chaos runs; a start that meets a crashed database is retried
    // with the same idempotency key (so it is started once).
    let run = format!("{seed:x}");
    // Arrival rate: all at once for the CI-sized run; paced for long runs, as payouts arrive
    // in production (5,000 at once would only measure the sandbox's queueing).
    let rate: f64 = env_or("PAYSAGA_CHAOS_RATE", 200.0);
    let pace = Duration::from_secs_f64(1.0 / rate.max(0.1));
    let starter = {
        let engine = engine.clone();
        let run = run.clone();
        tokio::spawn(async move {
            let mut ids = Vec::with_capacity(sagas_wanted);
            for n in 0..sagas_wanted {
                let workflow = WORKFLOWS[n % WORKFLOWS.len()];
                let key = format!("chaos-{run}-{n}");
                // Once: a start retried after a lost answer must repeat the same input.
                let input = input(&engine, workflow, &run, n).await;
                let mut failures = 0u32;
                loop {
                    match engine.start(workflow, input.clone(), Some(&key)).await {
                        Ok(s) => {
                            ids.push(s.saga_id);
                            break;
                        }
                        Err(e) => {
                            failures += 1;
                            // A crashed database refuses for a few seconds; longer means the
                            // start itself is refused: say why instead of retrying silently.
                            if failures.is_multiple_of(50) {
                                eprintln!(
                                    "start of {key} still refused after {failures} tries: {e}"
                                );
                            }
                            assert!(failures < 600, "start of {key} refused for 2 minutes: {e}");
                            tokio::time::sleep(Duration::from_millis(200)).await
                        }
                    }
                }
                if n % 10 == 9 {
                    tokio::time::sleep(pace * 10).await;
                }
            }
            ids
        })
    };

    // The monkey.
    let mut injected = Injected::default();
    let chaos_end = Instant::now() + chaos_for;
    while Instant::now() < chaos_end {
        tokio::time::sleep(Duration::from_millis(rng.gen_range(500..2500))).await;
        let roll: u32 = rng.gen_range(0..100);
        let i = rng.gen_range(0..worker_count);
        match roll {
            0..=29 => {
                if let Some(w) = fleet.workers[i].take() {
                    w.kill();
                    injected.kills += 1;
                    tokio::time::sleep(Duration::from_millis(rng.gen_range(200..2000))).await;
                }
                fleet.start(i);
            }
            30..=44 => {
                if let Some(w) = fleet.workers[i].take() {
                    injected.terms += 1;
                    let clean = tokio::task::spawn_blocking(move || w.terminate())
                        .await
                        .unwrap();
                    if !clean {
                        injected.unclean_term_exits += 1;
                    }
                }
                fleet.start(i);
            }
            45..=59 => {
                cluster.restart_immediate();
                injected.pg_crashes += 1;
            }
            60..=69 => {
                cluster.stop_immediate();
                injected.pg_outages += 1;
                tokio::time::sleep(Duration::from_millis(rng.gen_range(1000..5000))).await;
                cluster.resume();
            }
            70..=84 => {
                if let Some(pid) = fleet.pid(i) {
                    signal(pid, "-STOP");
                    injected.pauses += 1;
                    // Past the 2 s lease: another worker may take the saga over meanwhile.
                    tokio::time::sleep(Duration::from_millis(rng.gen_range(2500..5000))).await;
                    signal(pid, "-CONT");
                }
            }
            _ => {}
        }
    }
    eprintln!("chaos: over ({injected:?}); letting the sagas settle");
    for i in 0..worker_count {
        if fleet.workers[i].is_none() {
            fleet.start(i);
        }
    }
    let ids = starter.await.unwrap();
    assert_eq!(ids.len(), sagas_wanted);
    assert_eq!(
        ids.iter().collect::<HashSet<_>>().len(),
        sagas_wanted,
        "one saga per idempotency key"
    );

    // Settle: every saga reaches a final status.
    let settle_end = Instant::now() + settle;
    let records = loop {
        let mut records = Vec::with_capacity(ids.len());
        let mut all_final = true;
        for id in &ids {
            let s = engine.store().saga(*id).await.unwrap().unwrap();
            all_final &= s.status.is_final();
            records.push(s);
        }
        if all_final || Instant::now() > settle_end {
            break records;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    // The checks read the sandbox's APIs: no more faults.
    sandbox.set_faults("none").await;

    let mut table: Vec<(String, bool, String)> = Vec::new();
    let mut by_status: BTreeMap<String, usize> = BTreeMap::new();
    for s in &records {
        *by_status.entry(s.status.to_string()).or_default() += 1;
    }
    let unfinished: Vec<String> = records
        .iter()
        .filter(|s| !s.status.is_final())
        .map(|s| {
            format!(
                "{} {} #{} {} {:?}",
                s.workflow,
                s.id,
                s.step_index + 1,
                s.status,
                s.last_error
            )
        })
        .collect();
    table.push((
        "every saga terminal".into(),
        unfinished.is_empty(),
        format!("{by_status:?}"),
    ));
    let parked_without_reason = records
        .iter()
        .filter(|s| s.status.is_final() && s.status != SagaStatus::Completed)
        .filter(|s| s.last_error.as_deref().unwrap_or("").is_empty())
        .count();
    table.push((
        "parked sagas say why".into(),
        parked_without_reason == 0,
        format!("{parked_without_reason} without a reason"),
    ));

    // Ledger: payouts at most once, exactly once per completed saga.
    let ledger = sandbox.ledger().await;
    let payouts: Vec<&Value> = ledger
        .iter()
        .filter(|e| e["kind"] == "payment" || e["kind"] == "payout")
        .collect();
    let mut per_reference: HashMap<&str, usize> = HashMap::new();
    for e in &payouts {
        *per_reference
            .entry(e["reference"].as_str().unwrap())
            .or_default() += 1;
    }
    let twice = per_reference.values().filter(|n| **n > 1).count();
    table.push((
        "no payout twice".into(),
        twice == 0,
        format!("{} payouts, {twice} references paid twice", payouts.len()),
    ));
    let completed: Vec<_> = records
        .iter()
        .filter(|s| s.status == SagaStatus::Completed)
        .collect();
    let missing: Vec<String> = completed
        .iter()
        .filter_map(|s| {
            let reference = match s.workflow.as_str() {
                "lumanu_prefund" => &s.outputs["create_payable"]["payable_id"],
                "blaaiz_kyc_payout" => &s.outputs["payout"]["transaction_id"],
                _ => &s.outputs["await_payment"]["payment_id"],
            };
            let reference = reference.as_str().unwrap_or("?");
            (per_reference.get(reference) != Some(&1)).then(|| format!("{} {}", s.workflow, s.id))
        })
        .collect();
    table.push((
        "each completed saga paid exactly once".into(),
        missing.is_empty() && payouts.len() <= records.len(),
        format!(
            "{} completed, {} not paid exactly once, {} payouts for {} sagas",
            completed.len(),
            missing.len(),
            payouts.len(),
            records.len()
        ),
    ));

    // Lumanu objects: each deposit paid the invoice of exactly one completed saga, each
    // completed Lumanu saga was funded exactly once, and no invoice or payable is stray (not the
    // one object of exactly one completed saga: a duplicate from a retried create).
    let objects: Value = reqwest::get(sandbox.url("/_sandbox/lumanu/objects"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let lumanu_completed: Vec<_> = completed
        .iter()
        .filter(|s| s.workflow == "lumanu_prefund")
        .collect();
    let owners = |step: &str, field: &str| {
        let mut owners: HashMap<String, usize> = HashMap::new();
        for s in &lumanu_completed {
            if let Some(id) = s.outputs[step][field].as_str() {
                *owners.entry(id.to_owned()).or_default() += 1;
            }
        }
        owners
    };
    let funding_owners = owners("fund_invoice", "funding_id");
    let payable_owners = owners("create_payable", "payable_id");
    let deposit_owners = owners("await_deposit", "transfer_id");
    let listed = |key: &str| objects[key].as_array().cloned().unwrap_or_default();
    let invoices: Vec<Value> = listed("fundings")
        .into_iter()
        .filter(|f| f["method"] == "invoice")
        .collect();
    let payables = listed("payables");
    let stray: Vec<String> = invoices
        .iter()
        .map(|f| ("invoice", f))
        .chain(payables.iter().map(|p| ("payable", p)))
        .filter(|(what, o)| {
            let owners = if *what == "invoice" {
                &funding_owners
            } else {
                &payable_owners
            };
            owners.get(o["id"].as_str().unwrap_or("")) != Some(&1)
        })
        .map(|(what, o)| format!("{what} {} {}", o["id"], o["description"]))
        .collect();
    table.push((
        "no stray invoice or payable".into(),
        stray.is_empty(),
        format!(
            "{} invoices, {} payables for {} completed Lumanu sagas, {} stray",
            invoices.len(),
            payables.len(),
            lumanu_completed.len(),
            stray.len()
        ),
    ));
    let deposits: Vec<&Value> = ledger.iter().filter(|e| e["kind"] == "deposit").collect();
    let stray_deposits: Vec<String> = deposits
        .iter()
        .filter(|d| deposit_owners.get(d["reference"].as_str().unwrap_or("")) != Some(&1))
        .map(|d| {
            format!(
                "deposit {} of {} into {}",
                d["reference"], d["amount"], d["account"]
            )
        })
        .collect();
    let unfunded = lumanu_completed
        .iter()
        .filter(|s| {
            let transfer = s.outputs["await_deposit"]["transfer_id"]
                .as_str()
                .unwrap_or("?");
            deposits
                .iter()
                .filter(|d| d["reference"] == transfer)
                .count()
                != 1
        })
        .count();
    table.push((
        "each completed Lumanu saga funded exactly once".into(),
        stray_deposits.is_empty() && unfunded == 0,
        format!(
            "{} deposits for {} completed Lumanu sagas, {} not its saga's one deposit, {} sagas \
             not funded exactly once",
            deposits.len(),
            lumanu_completed.len(),
            stray_deposits.len(),
            unfunded
        ),
    ));
    let alert_rows: Vec<(Uuid, Option<Value>)> = sqlx::query_as(
        "SELECT saga_id, detail FROM paysaga_history WHERE kind = 'saga_alert' ORDER BY id",
    )
    .fetch_all(&sqlx::PgPool::connect(&db_url).await.unwrap())
    .await
    .unwrap();
    table.push((
        "no saga alert (a duplicate would raise one)".into(),
        alert_rows.is_empty(),
        format!("{} alerts", alert_rows.len()),
    ));
    let stray_alerts: Vec<String> = alert_rows
        .iter()
        .map(|(saga, detail)| format!("{saga}: {detail:?}"))
        .collect();

    // Balances add up.
    let balances: Value = reqwest::get(sandbox.url("/_sandbox/balances"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let mut sums: HashMap<(String, String, String), i64> = HashMap::new();
    for e in &ledger {
        let signed = match e["direction"].as_str() {
            Some("credit") => e["amount"].as_i64().unwrap(),
            _ => -e["amount"].as_i64().unwrap(),
        };
        *sums
            .entry((
                e["provider"].as_str().unwrap().to_string(),
                e["account"].as_str().unwrap().to_string(),
                e["currency"].as_str().unwrap().to_string(),
            ))
            .or_default() += signed;
    }
    let accounts = balances["accounts"].as_array().cloned().unwrap_or_default();
    let off: Vec<String> = accounts
        .iter()
        .filter(|b| {
            let key = (
                b["provider"].as_str().unwrap_or("").to_string(),
                b["account"].as_str().unwrap_or("").to_string(),
                b["currency"].as_str().unwrap_or("").to_string(),
            );
            b["balance"].as_i64() != Some(sums.get(&key).copied().unwrap_or(0))
        })
        .map(|b| b.to_string())
        .collect();
    table.push((
        "balances = sum of movements".into(),
        off.is_empty() && !accounts.is_empty(),
        format!("{} accounts, {} off", accounts.len(), off.len()),
    ));

    // Every webhook the sandbox saw acknowledged is in the inbox.
    let pool = sqlx::PgPool::connect(&db_url).await.unwrap();
    let deliveries: Value = reqwest::get(sandbox.url("/_sandbox/webhooks"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let deliveries = match deliveries {
        Value::Array(a) => a,
        Value::Object(mut o) => o
            .remove("deliveries")
            .and_then(|d| d.as_array().cloned())
            .unwrap_or_default(),
        _ => Vec::new(),
    };
    let inbox: HashSet<(String, String)> =
        sqlx::query_as::<_, (String, String)>("SELECT provider, event_id FROM paysaga_events")
            .fetch_all(&pool)
            .await
            .unwrap()
            .into_iter()
            .collect();
    let acknowledged: Vec<&Value> = deliveries
        .iter()
        .filter(|d| d["delivered"] == true)
        .collect();
    let lost: Vec<String> = acknowledged
        .iter()
        .filter(|d| {
            !inbox.contains(&(
                d["provider"].as_str().unwrap_or("").to_string(),
                d["event_id"].as_str().unwrap_or("").to_string(),
            ))
        })
        .map(|d| format!("{} {}", d["provider"], d["event_id"]))
        .collect();
    table.push((
        "every acknowledged webhook in the inbox".into(),
        lost.is_empty() && !acknowledged.is_empty(),
        format!(
            "{} deliveries, {} acknowledged, {} missing",
            deliveries.len(),
            acknowledged.len(),
            lost.len()
        ),
    ));

    // History: each step of a completed saga completed exactly once, in order.
    let rows: Vec<(Uuid, String)> = sqlx::query_as(
        "SELECT saga_id, step FROM paysaga_history WHERE kind = 'step_completed' ORDER BY id",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    let mut steps_of: HashMap<Uuid, Vec<String>> = HashMap::new();
    for (saga, step) in rows {
        steps_of.entry(saga).or_default().push(step);
    }
    let mut gaps = Vec::new();
    for s in &completed {
        let expected: Vec<String> = test_definition(&s.workflow)
            .steps
            .iter()
            .map(|d| d.name.clone())
            .collect();
        if steps_of.get(&s.id) != Some(&expected) {
            gaps.push(format!(
                "{} {}: {:?}",
                s.workflow,
                s.id,
                steps_of.get(&s.id)
            ));
        }
    }
    table.push((
        "no history gap or repeat".into(),
        gaps.is_empty(),
        format!(
            "{} completed sagas checked, {} off",
            completed.len(),
            gaps.len()
        ),
    ));
    table.push((
        "SIGTERM exits cleanly".into(),
        injected.unclean_term_exits == 0,
        format!(
            "{} SIGTERMs, {} unclean",
            injected.terms, injected.unclean_term_exits
        ),
    ));

    println!("\nchaos run: seed {seed}, {sagas_wanted} sagas, {worker_count} workers, {chaos_for:?} of chaos");
    println!(
        "injected: {} kill -9, {} SIGTERM, {} PostgreSQL crashes, {} PostgreSQL outages, {} SIGSTOP pauses; sandbox: {faults}",
        injected.kills, injected.terms, injected.pg_crashes, injected.pg_outages, injected.pauses
    );
    println!("| check | result | figures |\n|---|---|---|");
    for (check, ok, figures) in &table {
        println!(
            "| {check} | {} | {figures} |",
            if *ok { "pass" } else { "FAIL" }
        );
    }
    for (label, items) in [
        ("unfinished", &unfinished),
        ("not paid exactly once", &missing),
        ("balances off", &off),
        ("webhooks missing from the inbox", &lost),
        ("history off", &gaps),
        ("stray provider object", &stray),
        ("stray deposit", &stray_deposits),
        ("saga alert", &stray_alerts),
    ] {
        for item in items.iter().take(10) {
            println!("{label}: {item}");
        }
    }
    if !table.iter().all(|(_, ok, _)| *ok) {
        // What the database was doing: sessions stuck in a transaction hold saga rows.
        let sessions: Vec<(Option<String>, Option<String>, Option<String>)> = sqlx::query_as(
            "SELECT state, backend_xid::text, left(query, 120) FROM pg_stat_activity \
             WHERE datname = current_database() AND pid <> pg_backend_pid() AND state <> 'idle'",
        )
        .fetch_all(&pool)
        .await
        .unwrap_or_default();
        for s in sessions {
            println!("session: {s:?}");
        }
    }
    assert!(
        table.iter().all(|(_, ok, _)| *ok),
        "chaos checks failed (seed {seed}, logs in {})",
        logs.display()
    );
}
