//! The Lumanu campaign (`workflows/lumanu_campaign.toml`) end to end across real processes:
//! `paysaga sandbox`, `paysaga worker` processes and PostgreSQL. One invoice funds the
//! campaign; one child saga per creator creates and approves a payable; the parent pays them
//! from the balance in batches and waits until all are paid.
//!
//! What these tests protect: each creator is paid exactly once (also under provider faults
//! and a worker killed mid-fan-out), the campaign is funded once, a creator that cannot be
//! paid is excluded and reported, and the money adds up: paid = deposit - what is left.
#![allow(clippy::unwrap_used)]

mod support;

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use paysaga_core::SagaStatus;
use paysaga_providers::{Clients, ProvidersConfig};
use paysaga_runtime::Engine;
use paysaga_store::SagaRecord;
use paysaga_testkit::TestDatabase;
use serde_json::{json, Value};
use support::processes::{free_port, log_dir, provider_env, Sandbox, WorkerProcess};
use support::workflows::{control_engine, lumanu_workspace, repo, test_definition};
use uuid::Uuid;

struct Rig {
    db: TestDatabase,
    engine: Engine,
    sandbox: Sandbox,
    worker_port: u16,
    logs: PathBuf,
    clients: Clients,
    run: String,
}

impl Rig {
    async fn new(name: &str, faults: &str) -> Rig {
        let db = paysaga_testkit::database().await;
        let engine = control_engine(db.url()).await;
        for workflow in ["lumanu_campaign_payee", "lumanu_campaign"] {
            engine
                .submit_definition(&test_definition(workflow))
                .await
                .unwrap();
        }
        let logs = log_dir(name);
        let worker_port = free_port();
        let sandbox = Sandbox::start(worker_port, faults, &logs.join("sandbox.log"));
        let env: HashMap<String, String> = provider_env(sandbox.port).into_iter().collect();
        let clients = ProvidersConfig::from_lookup(|k| env.get(k).cloned())
            .unwrap()
            .clients();
        Rig {
            db,
            engine,
            sandbox,
            worker_port,
            logs,
            clients,
            run: Uuid::new_v4().simple().to_string()[..8].to_string(),
        }
    }

    /// A worker; the first one (`webhooks`) serves the port the sandbox sends webhooks to.
    fn worker(&self, name: &str, webhooks: bool) -> WorkerProcess {
        let port = if webhooks {
            self.worker_port
        } else {
            free_port()
        };
        WorkerProcess::start_with_env(
            self.db.url(),
            port,
            self.sandbox.port,
            name,
            &self.logs.join(format!("{name}.log")),
            &[],
        )
    }

    fn workspace(&self) -> String {
        lumanu_workspace(&self.run, 0)
    }

    /// A campaign of `n` creators (amounts 1000 + i cents); the creators in `unpayable` get
    /// an address at the `.invalid` domain, which the sandbox refuses as a payee. The invoice
    /// is for every creator's amount.
    fn input(&self, n: usize, unpayable: &[usize]) -> Value {
        let text = std::fs::read_to_string(repo().join("workflows/examples/lumanu_campaign.json"))
            .unwrap();
        let mut v: Value = serde_json::from_str(&text).unwrap();
        let creators: Vec<Value> = (0..n)
            .map(|i| {
                let domain = if unpayable.contains(&i) {
                    "nobody.invalid"
                } else {
                    "creators.example"
                };
                json!({
                    "id": format!("c{i}"),
                    "amount": 1000 + i as i64,
                    "email": format!("creator-{}-{i}@{domain}", self.run),
                })
            })
            .collect();
        v["workspace_id"] = json!(self.workspace());
        v["total"] = json!((0..n).map(|i| 1000 + i as i64).sum::<i64>());
        v["description"] = json!(format!("campaign {}", self.run));
        v["creators"] = Value::Array(creators);
        v
    }

    async fn start(&self, input: Value) -> Uuid {
        self.engine
            .start(
                "lumanu_campaign",
                input,
                Some(&format!("campaign-{}", self.run)),
            )
            .await
            .unwrap()
            .saga_id
    }

    async fn saga(&self, id: Uuid) -> SagaRecord {
        self.engine.store().saga(id).await.unwrap().unwrap()
    }

    async fn wait_terminal(&self, id: Uuid, within: Duration) -> SagaRecord {
        let deadline = Instant::now() + within;
        loop {
            let s = self.saga(id).await;
            if s.status.is_final() {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "campaign {id} not over after {within:?}: {} at step #{} attempt {} error {:?} \
                 (logs in {})",
                s.status,
                s.step_index + 1,
                s.attempt,
                s.last_error,
                self.logs.display()
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Lumanu movements of the campaign's workspace of one kind.
    async fn ledger(&self, kind: &str) -> Vec<Value> {
        let ws = self.workspace();
        self.sandbox
            .ledger()
            .await
            .into_iter()
            .filter(|e| e["kind"] == kind && e["account"] == ws.as_str())
            .collect()
    }

    /// Funding invoices and balance fundings of the workspace (`/_sandbox/lumanu/objects`).
    async fn fundings(&self, method: &str) -> Vec<Value> {
        let v: Value = reqwest::get(self.sandbox.url("/_sandbox/lumanu/objects"))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let ws = self.workspace();
        v["fundings"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|f| f["workspace_id"] == ws.as_str() && f["method"] == method)
            .cloned()
            .collect()
    }

    /// Every payable of the workspace.
    async fn payables(&self) -> Vec<paysaga_providers::lumanu::Payable> {
        self.clients
            .lumanu
            .as_ref()
            .unwrap()
            .all_payables(&self.workspace())
            .await
            .unwrap()
    }
}

/// The campaign ended completed; each payable creator is paid exactly once with their amount,
/// the unpayable ones are reported and never paid; one invoice and one deposit funded it all;
/// the payments add up to the deposit minus what is left in the balance.
async fn assert_campaign_paid_once(rig: &Rig, saga: &SagaRecord, n: usize, unpayable: &[usize]) {
    assert_eq!(
        saga.status,
        SagaStatus::Completed,
        "campaign {}: {:?} (logs in {})",
        saga.id,
        saga.last_error,
        rig.logs.display()
    );
    let invoices = rig.fundings("invoice").await;
    assert_eq!(invoices.len(), 1, "one funding invoice: {invoices:#?}");
    let deposits = rig.ledger("deposit").await;
    assert_eq!(deposits.len(), 1, "one deposit: {deposits:#?}");
    let deposit = deposits[0]["amount"].as_i64().unwrap();
    assert_eq!(deposit, saga.input["total"].as_i64().unwrap());

    let payments = rig.ledger("payment").await;
    let payables = rig.payables().await;
    let by_id: HashMap<&str, &paysaga_providers::lumanu::Payable> =
        payables.iter().map(|p| (p.id.as_str(), p)).collect();
    let mut paid_per_creator: HashMap<String, (usize, i64)> = HashMap::new();
    for e in &payments {
        assert_eq!(e["direction"], "debit", "{e}");
        let payable = by_id
            .get(e["reference"].as_str().unwrap())
            .unwrap_or_else(|| panic!("payment {e} pays no payable of the workspace"));
        let creator = payable.vendor_email.clone().unwrap_or_default();
        let slot = paid_per_creator.entry(creator).or_default();
        slot.0 += 1;
        slot.1 += e["amount"].as_i64().unwrap();
    }
    for i in 0..n {
        let email = format!(
            "creator-{}-{i}@{}",
            rig.run,
            if unpayable.contains(&i) {
                "nobody.invalid"
            } else {
                "creators.example"
            }
        );
        let paid = paid_per_creator.get(&email).copied();
        if unpayable.contains(&i) {
            assert_eq!(paid, None, "unpayable creator c{i} must not be paid");
        } else {
            assert_eq!(
                paid,
                Some((1, 1000 + i as i64)),
                "creator c{i} must be paid exactly once, their amount (paid: \
                 {paid_per_creator:?})"
            );
        }
    }
    let paid_total: i64 = payments.iter().map(|e| e["amount"].as_i64().unwrap()).sum();
    let wallet = rig
        .clients
        .lumanu
        .as_ref()
        .unwrap()
        .get_wallet(&rig.workspace())
        .await
        .unwrap();
    assert_eq!(
        paid_total,
        deposit - wallet.balance.unwrap(),
        "payments = deposit - what is left in the balance"
    );
    // Every payable of the workspace belongs to a creator and is paid (no stray duplicates).
    assert_eq!(payables.len(), n - unpayable.len(), "{payables:#?}");
    assert!(payables
        .iter()
        .all(|p| p.payable_status == Some(paysaga_providers::lumanu::PayableStatus::Paid)));
    // The saga says the same.
    let pay = &saga.outputs["pay"];
    assert_eq!(pay["paid_count"], json!(n - unpayable.len()), "{pay}");
    assert_eq!(pay["total"], json!(paid_total));
    assert_eq!(pay["excluded_count"], json!(unpayable.len()), "{pay}");
    let mut excluded: Vec<String> = pay["excluded"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["key"].as_str().unwrap().to_owned())
        .collect();
    excluded.sort();
    let mut expected: Vec<String> = unpayable.iter().map(|i| format!("c{i}")).collect();
    expected.sort();
    assert_eq!(excluded, expected);
    assert_eq!(
        saga.outputs["await_paid"]["paid_count"],
        json!(n - unpayable.len())
    );
    // Batches: no more balance fundings than the documented default allows.
    let batches = rig.fundings("balance").await;
    let most = (n - unpayable.len()).div_ceil(100);
    assert!(
        !batches.is_empty() && batches.len() <= most,
        "{} balance fundings for {} payables (at most {most})",
        batches.len(),
        n - unpayable.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn campaign_pays_each_creator_once_from_one_deposit_and_reports_the_unpayable_one() {
    let rig = Rig::new("campaign-small", "none").await;
    let _w = rig.worker("w1", true);
    let (n, unpayable) = (5, [3]);
    let id = rig.start(rig.input(n, &unpayable)).await;
    let saga = rig.wait_terminal(id, Duration::from_secs(120)).await;
    assert_campaign_paid_once(&rig, &saga, n, &unpayable).await;
    // The unpayable creator's child saga failed at create_payable and was compensated.
    let children = rig
        .engine
        .store()
        .child_sagas(id, "creators", true)
        .await
        .unwrap();
    assert_eq!(children.len(), n);
    let bad = children.iter().find(|c| c.key == "c3").unwrap();
    assert_ne!(bad.status, SagaStatus::Completed, "{bad:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn campaign_of_200_under_faults_and_a_worker_killed_mid_fan_out_pays_each_creator_once() {
    let seed: u64 = std::env::var("PAYSAGA_FAULT_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| u64::from(Uuid::new_v4().as_fields().0));
    let faults = format!(
        "error_rate=0.1,timeout_after_effect=0.03,hang_ms=3000,webhook_duplicate=0.2,\
         webhook_reorder=0.2,webhook_drop=0.05,webhook_delay_ms=0..200,seed={seed}"
    );
    eprintln!("fault spec: {faults} (replay with PAYSAGA_FAULT_SEED={seed})");
    let rig = Rig::new("campaign-200", &faults).await;
    let w1 = rig.worker("w1", true);
    let (n, unpayable) = (200, [17, 150]);
    let id = rig.start(rig.input(n, &unpayable)).await;
    // Kill -9 the worker once the fan-out is under way: some children ended, not all.
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let progress = rig
            .engine
            .store()
            .fan_out_progress(id, "creators")
            .await
            .unwrap();
        if let Some(p) = progress.filter(|p| p.ended >= 20) {
            assert!(
                p.ended < n as u64,
                "the fan-out ended before the kill: {p:?}"
            );
            eprintln!("killing w1 with {} of {n} children ended", p.ended);
            break;
        }
        let s = rig.saga(id).await;
        assert!(
            !s.status.is_final(),
            "campaign ended before the fan-out: {:?}",
            s.last_error
        );
        assert!(
            Instant::now() < deadline,
            "fan-out not under way (logs in {})",
            rig.logs.display()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    w1.kill();
    let _w2 = rig.worker("w2", true);
    let _w3 = rig.worker("w3", false);
    let saga = rig.wait_terminal(id, Duration::from_secs(400)).await;
    rig.sandbox.set_faults("none").await;
    assert_campaign_paid_once(&rig, &saga, n, &unpayable).await;
    // The injected faults really happened: steps retried.
    let pool = sqlx::PgPool::connect(rig.db.url()).await.unwrap();
    let retries: i64 =
        sqlx::query_scalar("SELECT count(*) FROM paysaga_history WHERE kind = 'step_retrying'")
            .fetch_one(&pool)
            .await
            .unwrap();
    eprintln!("retries under faults: {retries}");
    assert!(retries > 0, "the injected faults caused no retry");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn campaign_whose_payables_exceed_the_deposit_pays_nothing() {
    let rig = Rig::new("campaign-underfunded", "none").await;
    let _w = rig.worker("w1", true);
    let mut input = rig.input(4, &[]);
    // Invoiced one cent short of what the creators are owed.
    input["total"] = json!(input["total"].as_i64().unwrap() - 1);
    let id = rig.start(input).await;
    let deadline = Instant::now() + Duration::from_secs(120);
    let saga = loop {
        let s = rig.saga(id).await;
        if s.status.is_final() || s.status == SagaStatus::NeedsOperator {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "campaign {id} still {} (logs in {})",
            s.status,
            rig.logs.display()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert_ne!(saga.status, SagaStatus::Completed);
    let error = saga.last_error.clone().unwrap_or_default();
    assert!(
        error.contains("more than the") && error.contains("nothing paid"),
        "{error}"
    );
    assert!(rig.ledger("payment").await.is_empty(), "nothing is paid");
    assert!(rig.fundings("balance").await.is_empty());
}
