//! The three payout workflows end to end, across real processes: `paysaga sandbox` (the
//! providers, fault injection, signed webhooks, a money ledger), `paysaga worker` processes and
//! a real PostgreSQL. Sagas are started through the library call on the same database.
//!
//! What these tests protect (DESIGN.md invariants 1-3): no payout is lost, none is made twice,
//! whatever the providers and the workers do.
#![allow(clippy::unwrap_used)]

mod support;

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use paysaga_core::SagaStatus;
use paysaga_providers::lumanu::PayableQuery;
use paysaga_providers::{Clients, ProvidersConfig};
use paysaga_runtime::Engine;
use paysaga_store::SagaRecord;
use paysaga_testkit::TestDatabase;
use serde_json::Value;
use support::processes::{
    free_port, log_dir, paysaga_ok, provider_env, signal, Sandbox, WorkerProcess,
};
use support::workflows::{control_engine, input, lumanu_workspace, test_definition, WORKFLOWS};
use uuid::Uuid;

/// Postgres, a sandbox process, and an engine (for starting and reading sagas) that knows
/// every provider kind for validation only: steps run in the worker processes.
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

    /// A worker serving the webhook port the sandbox sends to.
    fn worker(&self, name: &str, extra_env: &[(&str, &str)]) -> WorkerProcess {
        WorkerProcess::start_with_env(
            self.db.url(),
            self.worker_port,
            self.sandbox.port,
            name,
            &self.logs.join(format!("{name}.log")),
            extra_env,
        )
    }

    /// A worker on a port of its own (webhooks go to the first one).
    fn extra_worker(&self, name: &str, extra_env: &[(&str, &str)]) -> WorkerProcess {
        WorkerProcess::start_with_env(
            self.db.url(),
            free_port(),
            self.sandbox.port,
            name,
            &self.logs.join(format!("{name}.log")),
            extra_env,
        )
    }

    async fn start(&self, workflow: &str, n: usize) -> Uuid {
        self.engine
            .start(
                workflow,
                input(&self.engine, workflow, &self.run, n).await,
                Some(&format!("{workflow}-{}-{n}", self.run)),
            )
            .await
            .unwrap_or_else(|e| panic!("cannot start {workflow} #{n}: {e}"))
            .saga_id
    }

    async fn saga(&self, id: Uuid) -> SagaRecord {
        self.engine.store().saga(id).await.unwrap().unwrap()
    }

    /// Waits until every saga is terminal; panics naming the stragglers and the logs.
    async fn wait_terminal(&self, ids: &[Uuid], within: Duration) -> Vec<SagaRecord> {
        let deadline = Instant::now() + within;
        loop {
            let mut sagas = Vec::new();
            for id in ids {
                sagas.push(self.saga(*id).await);
            }
            if sagas.iter().all(|s| s.status.is_final()) {
                return sagas;
            }
            if Instant::now() > deadline {
                let stuck: Vec<String> = sagas
                    .iter()
                    .filter(|s| !s.status.is_final())
                    .map(|s| {
                        format!(
                            "{} {} step #{} {} attempt {} error {:?}",
                            s.workflow,
                            s.id,
                            s.step_index + 1,
                            s.status,
                            s.attempt,
                            s.last_error
                        )
                    })
                    .collect();
                panic!(
                    "{} sagas not terminal after {within:?} (logs in {}):\n{}",
                    stuck.len(),
                    self.logs.display(),
                    stuck.join("\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Waits until the saga is at `step` (running or backing off there).
    async fn wait_at_step(&self, id: Uuid, step: &str, within: Duration) {
        let def = test_definition(&self.saga(id).await.workflow);
        let index = def.steps.iter().position(|s| s.name == step).unwrap();
        let deadline = Instant::now() + within;
        loop {
            let s = self.saga(id).await;
            if s.step_index == index {
                return;
            }
            assert!(
                s.step_index < index && !s.status.is_final(),
                "saga {id} passed or ended before {step}: {} at #{}",
                s.status,
                s.step_index + 1
            );
            assert!(Instant::now() < deadline, "saga {id} never reached {step}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The sandbox's money movements of one kind (`payment`, `payout`, ...).
    async fn ledger(&self, kind: &str) -> Vec<Value> {
        self.sandbox
            .ledger()
            .await
            .into_iter()
            .filter(|e| e["kind"] == kind)
            .collect()
    }

    /// Lumanu payables of saga `n`'s workspace whose description carries `text`.
    async fn lumanu_payables(
        &self,
        n: usize,
        text: &str,
    ) -> Vec<paysaga_providers::lumanu::Payable> {
        let client = self.clients.lumanu.as_ref().unwrap();
        let page = client
            .list_payables(&PayableQuery {
                workspace_id: Some(lumanu_workspace(&self.run, n)),
                limit: Some(100),
                ..PayableQuery::default()
            })
            .await
            .unwrap();
        page.data
            .into_iter()
            .filter(|p| p.description.as_deref().is_some_and(|d| d.contains(text)))
            .collect()
    }

    /// Blaaiz customers with this email (the raw list: duplicates included).
    async fn blaaiz_customers(&self, email: &str) -> Vec<Value> {
        let v: Value = reqwest::Client::new()
            .get(self.sandbox.url("/blaaiz/api/external/customer"))
            .query(&[("email", email)])
            .header("x-blaaiz-api-key", "sandbox-blaaiz-api-key")
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        match &v["data"] {
            Value::Array(items) => items
                .iter()
                .filter(|c| c["email"].as_str() == Some(email))
                .cloned()
                .collect(),
            Value::Object(_) => vec![v["data"].clone()],
            _ => Vec::new(),
        }
    }
}

/// The provider object whose ledger entry is the saga's payout.
fn payout_reference(saga: &SagaRecord) -> String {
    let out = &saga.outputs;
    let r = match saga.workflow.as_str() {
        "lumanu_prefund" => &out["create_payable"]["payable_id"],
        "blaaiz_kyc_payout" => &out["payout"]["transaction_id"],
        "lean_payout" | "lean_payout_manual" => &out["await_payment"]["payment_id"],
        other => panic!("unknown workflow {other}"),
    };
    r.as_str()
        .unwrap_or_else(|| panic!("saga {} output has no payout reference: {out}", saga.id))
        .to_string()
}

/// Every completed saga's payout is in the ledger exactly once, and the ledger holds no payout
/// that belongs to no saga.
async fn assert_each_payout_exactly_once(rig: &Rig, sagas: &[SagaRecord]) {
    let mut payouts: Vec<Value> = rig.ledger("payment").await;
    payouts.extend(rig.ledger("payout").await);
    let mut by_reference: HashMap<String, usize> = HashMap::new();
    for e in &payouts {
        assert_eq!(e["direction"], "debit", "{e}");
        *by_reference
            .entry(e["reference"].as_str().unwrap().to_string())
            .or_default() += 1;
    }
    for saga in sagas {
        assert_eq!(saga.status, SagaStatus::Completed, "saga {}", saga.id);
        let reference = payout_reference(saga);
        assert_eq!(
            by_reference.get(&reference).copied(),
            Some(1),
            "{} saga {}: payout {reference} must be in the ledger exactly once",
            saga.workflow,
            saga.id
        );
        let amount = match saga.workflow.as_str() {
            "blaaiz_kyc_payout" => &saga.input["payout"]["amount"],
            _ => &saga.input["amount"],
        };
        let entry = payouts
            .iter()
            .find(|e| e["reference"] == reference.as_str())
            .unwrap();
        assert_eq!(
            &entry["amount"], amount,
            "payout amount of saga {}",
            saga.id
        );
    }
    assert_eq!(
        payouts.len(),
        sagas.len(),
        "the ledger holds payouts that belong to no saga: {payouts:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_workflow_completes_against_the_sandbox_and_pays_once() {
    let rig = Rig::new("payouts-happy", "none").await;
    let _worker = rig.worker("w1", &[]);
    let mut ids = Vec::new();
    for workflow in WORKFLOWS {
        ids.push(rig.start(workflow, 0).await);
    }
    let sagas = rig.wait_terminal(&ids, Duration::from_secs(60)).await;
    assert_each_payout_exactly_once(&rig, &sagas).await;

    let lumanu = &sagas[0];
    let payables = rig
        .lumanu_payables(0, &format!("creator fee {}-0", rig.run))
        .await;
    assert_eq!(payables.len(), 1, "one payable: {payables:?}");
    assert_eq!(
        lumanu.outputs["await_payable_paid"]["payable_status"],
        "paid"
    );
    let blaaiz = &sagas[1];
    assert_eq!(
        rig.blaaiz_customers(&format!("kyc-{}-0@example.com", rig.run))
            .await
            .len(),
        1
    );
    assert!(
        blaaiz.outputs["upload_documents"]["files"].is_object()
            || blaaiz.outputs["upload_documents"]["files"].is_array(),
        "uploaded files recorded: {}",
        blaaiz.outputs
    );
    // Webhooks went through the worker's endpoint into the inbox (verified, deduplicated).
    let pool = sqlx::PgPool::connect(rig.db.url()).await.unwrap();
    let providers: Vec<String> =
        sqlx::query_scalar("SELECT DISTINCT provider FROM paysaga_events ORDER BY provider")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(providers, ["blaaiz", "lean", "lumanu"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_provider_faults_every_saga_completes_and_each_payout_is_in_the_ledger_once() {
    let seed: u64 = std::env::var("PAYSAGA_FAULT_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| u64::from(Uuid::new_v4().as_fields().0));
    let faults = format!(
        "error_rate=0.2,timeout_after_effect=0.05,hang_ms=4000,webhook_duplicate=0.3,\
         webhook_reorder=0.3,webhook_early=0.3,webhook_drop=0.05,webhook_delay_ms=0..300,seed={seed}"
    );
    eprintln!("fault spec: {faults} (replay with PAYSAGA_FAULT_SEED={seed})");
    let rig = Rig::new("payouts-faults", &faults).await;
    let _w1 = rig.worker("w1", &[]);
    let _w2 = rig.extra_worker("w2", &[]);
    let per_workflow = 8;
    let mut ids = Vec::new();
    for n in 0..per_workflow {
        for workflow in WORKFLOWS {
            ids.push(rig.start(workflow, n).await);
        }
    }
    let sagas = rig.wait_terminal(&ids, Duration::from_secs(240)).await;
    // The checks below read the sandbox through its APIs: no faults for them.
    rig.sandbox.set_faults("none").await;
    assert_each_payout_exactly_once(&rig, &sagas).await;
    for n in 0..per_workflow {
        let payables = rig
            .lumanu_payables(n, &format!("creator fee {}-{n} ", rig.run))
            .await;
        assert_eq!(payables.len(), 1, "saga #{n}: one payable: {payables:?}");
        let customers = rig
            .blaaiz_customers(&format!("kyc-{}-{n}@example.com", rig.run))
            .await;
        assert_eq!(customers.len(), 1, "saga #{n}: one Blaaiz customer");
    }
    // Injected faults really happened: sagas retried.
    let pool = sqlx::PgPool::connect(rig.db.url()).await.unwrap();
    let retries: i64 =
        sqlx::query_scalar("SELECT count(*) FROM paysaga_history WHERE kind = 'step_retrying'")
            .fetch_one(&pool)
            .await
            .unwrap();
    eprintln!("retries under faults: {retries}");
    assert!(retries > 0, "the injected faults caused no retry");
}

/// Kills the worker (`kill -9`) while the provider has applied `endpoint`'s effect but its
/// answer is held back (`timeout_after_effect`), so the step cannot have committed; a new
/// worker then finishes the saga.
async fn crash_after_effect(
    rig: &Rig,
    saga: Uuid,
    step: &str,
    endpoint: &str,
    worker: WorkerProcess,
    applied: impl AsyncFnOnce() -> bool,
    name: &str,
) -> WorkerProcess {
    rig.wait_at_step(saga, step, Duration::from_secs(60)).await;
    // The effect must be visible at the provider before the kill...
    assert!(
        applied().await,
        "the effect of {endpoint} never appeared at the sandbox"
    );
    // ...while the step has not committed (its answer is held back for a minute).
    let s = rig.saga(saga).await;
    assert_eq!(
        s.step_index,
        test_definition(&s.workflow)
            .steps
            .iter()
            .position(|d| d.name == step)
            .unwrap(),
        "the step {step} has not committed"
    );
    worker.kill();
    rig.sandbox.set_faults("none").await;
    rig.worker(name, &[])
}

/// Polls `f` until it is true (or 30 s).
async fn eventually(mut f: impl AsyncFnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if f().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

/// The worker waits this long for a provider's answer in the crash tests: longer than the
/// test takes to notice the effect and kill it.
const SLOW_CLIENT: [(&str, &str); 1] = [("PAYSAGA_PROVIDER_REQUEST_TIMEOUT_SECS", "60")];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lumanu_worker_killed_after_the_payable_was_created_leaves_one_payable_paid_once() {
    let rig = Rig::new(
        "crash-lumanu",
        "timeout_after_effect@POST:/lumanu/api/rest/payable=1,hang_ms=60000",
    )
    .await;
    let w1 = rig.worker("w1", &SLOW_CLIENT);
    let saga = rig.start("lumanu_prefund", 0).await;
    let description = format!("creator fee {}-0", rig.run);
    let _w2 = crash_after_effect(
        &rig,
        saga,
        "create_payable",
        "POST /payable",
        w1,
        async || eventually(async || !rig.lumanu_payables(0, &description).await.is_empty()).await,
        "w2",
    )
    .await;
    let sagas = rig.wait_terminal(&[saga], Duration::from_secs(60)).await;
    assert_each_payout_exactly_once(&rig, &sagas).await;
    let payables = rig.lumanu_payables(0, &description).await;
    assert_eq!(payables.len(), 1, "no duplicate payable: {payables:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blaaiz_worker_killed_after_customer_and_after_payout_creation_leaves_one_of_each() {
    let rig = Rig::new(
        "crash-blaaiz",
        "timeout_after_effect@POST:/blaaiz/api/external/customer=1,hang_ms=60000",
    )
    .await;
    let w1 = rig.worker("w1", &SLOW_CLIENT);
    let saga = rig.start("blaaiz_kyc_payout", 0).await;
    let email = format!("kyc-{}-0@example.com", rig.run);
    // Crash 1: the customer exists at Blaaiz, the step has not committed.
    let w2 = crash_after_effect(
        &rig,
        saga,
        "create_customer",
        "POST /customer",
        w1,
        async || eventually(async || !rig.blaaiz_customers(&email).await.is_empty()).await,
        "w2",
    )
    .await;
    // Crash 2: the payout exists (money left the wallet), the step has not committed.
    w2.kill();
    rig.sandbox
        .set_faults("timeout_after_effect@POST:/blaaiz/api/external/payout=1,hang_ms=60000")
        .await;
    let w3 = rig.worker("w3", &SLOW_CLIENT);
    let _w4 = crash_after_effect(
        &rig,
        saga,
        "payout",
        "POST /payout",
        w3,
        async || eventually(async || !rig.ledger("payout").await.is_empty()).await,
        "w4",
    )
    .await;
    let sagas = rig.wait_terminal(&[saga], Duration::from_secs(60)).await;
    assert_each_payout_exactly_once(&rig, &sagas).await;
    assert_eq!(
        rig.blaaiz_customers(&email).await.len(),
        1,
        "no duplicate customer"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lean_worker_killed_after_the_intent_was_created_pays_once() {
    let rig = Rig::new(
        "crash-lean",
        "timeout_after_effect@POST:/lean/payments/v1/intents=1,hang_ms=60000",
    )
    .await;
    let w1 = rig.worker("w1", &SLOW_CLIENT);
    let saga = rig.start("lean_payout", 0).await;
    // The sandbox's bank pays an intent on its own shortly after it is created: the payment
    // in the ledger proves the intent exists while our step still waits for its answer.
    let _w2 = crash_after_effect(
        &rig,
        saga,
        "create_intent",
        "POST /payments/v1/intents",
        w1,
        async || eventually(async || !rig.ledger("payment").await.is_empty()).await,
        "w2",
    )
    .await;
    let sagas = rig.wait_terminal(&[saga], Duration::from_secs(60)).await;
    assert_each_payout_exactly_once(&rig, &sagas).await;
    let destinations = rig
        .clients
        .lean
        .as_ref()
        .unwrap()
        .list_destinations()
        .await
        .unwrap();
    let iban = sagas[0].input["destination"]["iban"].as_str().unwrap();
    assert_eq!(
        destinations
            .iter()
            .filter(|d| d.iban.as_deref() == Some(iban))
            .count(),
        1,
        "no duplicate destination"
    );
}

/// Found by the chaos run in CI: a Blaaiz payout sent twice (Blaaiz has no idempotency key).
/// A worker whose lease lapsed while its payout request was in flight, sent but not yet
/// applied, and the worker that took the saga over both created one: the second looked before
/// the first had landed. Now the request is marked in the database before it leaves, and the
/// next worker does not send it again before that request has surely landed or failed; then
/// it looks again and finds it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blaaiz_payout_in_flight_from_a_frozen_worker_is_not_sent_again_by_the_next_one() {
    // The provider applies a payout 6 s after receiving it; everything else is quick.
    let rig = Rig::new(
        "frozen-blaaiz",
        "latency_ms@POST:/blaaiz/api/external/payout=6000",
    )
    .await;
    // 10 s request timeout: each worker's effect window is 1 s + 10 s + 5 s.
    let timeout = [("PAYSAGA_PROVIDER_REQUEST_TIMEOUT_SECS", "10")];
    let w1 = rig.worker("w1", &timeout);
    let saga = rig.start("blaaiz_kyc_payout", 0).await;
    let pool = sqlx::PgPool::connect(rig.db.url()).await.unwrap();
    let marked = async || {
        sqlx::query_scalar::<_, bool>(
            "SELECT effect_marked_at IS NOT NULL FROM paysaga_sagas WHERE id = $1",
        )
        .bind(saga)
        .fetch_one(&pool)
        .await
        .unwrap()
    };
    assert!(eventually(marked).await, "w1 never marked the payout");
    // w1 has sent the payout (the sandbox holds it for 6 s): freeze w1 past its 2 s lease.
    let w1_pid = w1.child.id();
    assert!(signal(w1_pid, "-STOP"));
    let w2 = rig.extra_worker("w2", &timeout);
    // w2 takes the saga over, finds no payout yet, and holds back instead of sending one.
    let held_back = async || {
        rig.engine
            .store()
            .history(saga)
            .await
            .unwrap()
            .iter()
            .any(|h| {
                h.error
                    .as_deref()
                    .is_some_and(|e| e.contains("may have sent its request"))
            })
    };
    assert!(
        eventually(held_back).await,
        "w2 did not hold the payout back"
    );
    assert!(rig.ledger("payout").await.len() <= 1);
    // Thaw w1: its answer arrives, its commit is fenced out.
    assert!(signal(w1_pid, "-CONT"));
    let sagas = rig.wait_terminal(&[saga], Duration::from_secs(90)).await;
    assert_each_payout_exactly_once(&rig, &sagas).await;
    assert_eq!(rig.ledger("payout").await.len(), 1, "one payout, not two");
    assert_eq!(
        sagas[0].outputs["payout"]["existing"],
        Value::Bool(true),
        "w2 found w1's payout: {}",
        sagas[0].outputs["payout"]
    );
    w1.kill();
    w2.kill();
}

/// Invoice fundings (`/_sandbox/lumanu/objects`) of a workspace.
async fn lumanu_invoices(rig: &Rig, workspace: &str) -> Vec<Value> {
    let v: Value = reqwest::get(rig.sandbox.url("/_sandbox/lumanu/objects"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    v["fundings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["workspace_id"] == workspace && f["method"] == "invoice")
        .cloned()
        .collect()
}

async fn alert_rows(rig: &Rig, id: Uuid) -> Vec<paysaga_store::HistoryRecord> {
    rig.engine
        .store()
        .history(id)
        .await
        .unwrap()
        .into_iter()
        .filter(|h| h.kind == paysaga_core::HistoryKind::SagaAlert)
        .collect()
}

/// Issue 11 item 9: timeouts after Lumanu created the funding invoice. Before the fix a retry
/// created a second invoice and the sandbox paid both (the workspace funded twice, the saga
/// completed silently). Now: deposits == invoices paid for each saga == 1, and any second
/// invoice is surfaced as an alert.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lumanu_funding_invoice_timeouts_fund_each_saga_once() {
    let rig = Rig::new(
        "payouts-invoice-timeouts",
        "timeout_after_effect@POST:/lumanu/api/rest/funding=0.5,hang_ms=4000,seed=7",
    )
    .await;
    let _worker = rig.worker("w1", &[]);
    let mut ids = Vec::new();
    for n in 0..6 {
        ids.push(rig.start("lumanu_prefund", n).await);
    }
    let sagas = rig.wait_terminal(&ids, Duration::from_secs(150)).await;
    assert_each_payout_exactly_once(&rig, &sagas).await;
    let deposits = rig.ledger("deposit").await;
    for (n, saga) in sagas.iter().enumerate() {
        assert_eq!(saga.status, SagaStatus::Completed, "{}", saga.id);
        let ws = lumanu_workspace(&rig.run, n);
        let invoices = lumanu_invoices(&rig, &ws).await;
        let paid = invoices
            .iter()
            .filter(|f| !f["deposit_transfer_id"].is_null())
            .count();
        let deposited = deposits.iter().filter(|d| d["account"] == ws).count();
        assert_eq!(deposited, paid, "saga {n}: deposits == invoices paid");
        let alerts = alert_rows(&rig, saga.id).await;
        assert_eq!(
            alerts.len(),
            deposited - 1,
            "saga {n}: every deposit beyond the first is surfaced: {invoices:?}"
        );
        assert_eq!(deposited, 1, "saga {n} funded once: {invoices:?}");
    }
}

/// A second invoice for the same saga that gets paid (a retried create whose look-up ran before
/// the first invoice was paid, here made by hand) is surfaced: a `saga_alert` history row in
/// the commit of the deposit step, `paysaga_saga_alerts_total`, and `list --alerts`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lumanu_second_invoice_paid_for_a_saga_is_an_alert_in_history_metrics_and_listing() {
    // Webhooks are dropped: the deposit step only polls, every 5 s (version 2 below).
    let rig = Rig::new("payouts-invoice-alert", "webhook_drop=1").await;
    let mut def = test_definition("lumanu_prefund");
    def.version = 2;
    def.steps[1].poll_every = Duration::from_secs(5);
    rig.engine.submit_definition(&def).await.unwrap();
    let _worker = rig.worker("w1", &[]);
    let id = rig.start("lumanu_prefund", 0).await;
    rig.wait_at_step(id, "await_deposit", Duration::from_secs(30))
        .await;
    let saga = rig.saga(id).await;
    let description = saga.outputs["fund_invoice"]["description"]
        .as_str()
        .unwrap()
        .to_owned();
    let ws = lumanu_workspace(&rig.run, 0);
    let second = rig
        .clients
        .lumanu
        .as_ref()
        .unwrap()
        .create_invoice_funding(paysaga_providers::lumanu::InvoiceFunding {
            workspace_id: ws.clone(),
            amount: 1000,
            amount_denomination: Some("us_cents".into()),
            description,
            recipient_email: "ap@brand.example".into(),
            bill_to: "Brand".into(),
            company_name: "Brand Inc".into(),
            company_address_one: "1 Main St".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let sagas = rig.wait_terminal(&[id], Duration::from_secs(90)).await;
    assert_eq!(sagas[0].status, SagaStatus::Completed);
    let deposits: Vec<Value> = rig
        .ledger("deposit")
        .await
        .into_iter()
        .filter(|d| d["account"] == ws.as_str())
        .collect();
    assert_eq!(deposits.len(), 2, "the sandbox paid both invoices");
    assert_eq!(lumanu_invoices(&rig, &ws).await.len(), 2);
    let alerts = alert_rows(&rig, id).await;
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    let detail = alerts[0].detail.clone().unwrap();
    assert_eq!(alerts[0].step.as_deref(), Some("await_deposit"));
    assert_eq!(detail["alert"], "duplicate_funding_deposit");
    assert_eq!(detail["other_funding_id"], second.id.as_str());
    let listed = rig
        .engine
        .store()
        .list_sagas(&paysaga_store::SagaFilter {
            alerts: true,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(listed.iter().map(|s| s.id).collect::<Vec<_>>(), [id]);
    let metrics = reqwest::get(format!("http://127.0.0.1:{}/metrics", rig.worker_port))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(
            "paysaga_saga_alerts_total{workflow=\"lumanu_prefund\",kind=\"duplicate_funding_deposit\"} 1"
        ),
        "{metrics}"
    );
}

/// Issue 11 item 12: an identifier that is a dot segment would change which endpoint the
/// client calls (`/workspace/../wallet`); `start` refuses it, naming the field, and stores
/// nothing.
#[tokio::test]
async fn start_with_a_dot_segment_identifier_is_refused_and_nothing_is_stored() {
    let db = paysaga_testkit::database().await;
    let engine = control_engine(db.url()).await;
    for bad in ["..", "."] {
        let mut v = input(&engine, "lumanu_prefund", "dots", 0).await;
        v["workspace_id"] = serde_json::json!(bad);
        let err = engine
            .start("lumanu_prefund", v, Some(&format!("dots-{bad}")))
            .await
            .expect_err("refused");
        let text = err.to_string();
        assert!(
            text.contains("workspace_id") && text.contains("must be an identifier"),
            "{text}"
        );
    }
    let listed = engine
        .store()
        .list_sagas(&paysaga_store::SagaFilter::default())
        .await
        .unwrap();
    assert!(listed.is_empty(), "nothing stored: {listed:?}");
}

// ---------------------------------------------------------------------------------------------
// Lean manual payout authorisation (issue 18 item 8): Lean queues the payment until a Financial
// Controller approves it in Lean's Application Dashboard, possibly days later.

impl Rig {
    /// Submits `workflows/lean_payout_manual.toml` at test timings, with `authorize_within`
    /// replaced when given; sets the sandbox's Lean account to manual authorisation.
    async fn lean_manual(&self, authorize_within: Option<&str>) {
        let mut def = test_definition("lean_payout_manual");
        if let Some(within) = authorize_within {
            let step = def
                .steps
                .iter_mut()
                .find(|s| s.name == "await_payment")
                .unwrap();
            step.params["authorize_within"] = serde_json::json!(within);
        }
        self.engine.submit_definition(&def).await.unwrap();
        let r = reqwest::Client::new()
            .put(self.sandbox.url("/_sandbox/lean/authorization"))
            .body("manual")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "sandbox switched to manual authorisation");
    }

    /// The sandbox's Lean payments of `intent_id`, as its control endpoint shows them.
    async fn lean_payments(&self, intent_id: &str) -> Vec<Value> {
        let v: Value = reqwest::Client::new()
            .get(self.sandbox.url("/_sandbox/lean/payments"))
            .query(&[("intent_id", intent_id)])
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        v.as_array().unwrap().clone()
    }

    /// Waits until the saga waits at `await_payment` for the payment's authorisation.
    async fn wait_for_authorization_wait(&self, id: Uuid) -> SagaRecord {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let s = self.saga(id).await;
            let awaiting = s
                .wait
                .as_ref()
                .is_some_and(|w| w.state["awaiting_authorization"] == true);
            if s.status == SagaStatus::Waiting && awaiting {
                return s;
            }
            assert!(
                !s.status.is_final() && Instant::now() < deadline,
                "saga {id} never waited for the authorisation: {} at #{} {:?} {:?}",
                s.status,
                s.step_index + 1,
                s.wait,
                s.last_error
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn wait_rows(&self, id: Uuid) -> i64 {
        let pool = sqlx::PgPool::connect(self.db.url()).await.unwrap();
        sqlx::query_scalar("SELECT count(*) FROM paysaga_waits WHERE saga_id = $1")
            .bind(id)
            .fetch_one(&pool)
            .await
            .unwrap()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lean_manual_authorization_saga_waits_for_the_financial_controller_then_pays_once() {
    let rig = Rig::new("lean-manual", "none").await;
    rig.lean_manual(None).await;
    let _w = rig.worker("w1", &[]);
    let id = rig.start("lean_payout_manual", 0).await;
    let waiting = rig.wait_for_authorization_wait(id).await;
    let intent_id = waiting.outputs["create_intent"]["intent_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let wait = waiting.wait.clone().unwrap();
    // The deadline is the definition's `authorize_within` (5 days) from the queued payment.
    let left = wait.deadline - chrono::Utc::now();
    assert!(
        left > chrono::Duration::days(4) && left <= chrono::Duration::days(5),
        "authorisation deadline {} is about 5 days away",
        wait.deadline
    );
    assert_eq!(
        wait.state["authorized_by"],
        "a Financial Controller in Lean's Application Dashboard"
    );
    // Operators see it awaits authorisation at Lean, and by whom.
    let shown = paysaga_ok(rig.db.url(), &["show", &id.to_string()]);
    assert!(
        shown.contains(
            "awaits    awaiting authorisation at Lean by a Financial Controller in Lean's \
             Application Dashboard"
        ),
        "{shown}"
    );

    // Several poll rounds later (the test definition polls every second) nothing has moved:
    // still waiting with its wait row, one queued payment, no money.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let s = rig.saga(id).await;
    assert_eq!(s.status, SagaStatus::Waiting);
    assert_eq!(s.step_index, 4, "at await_payment");
    assert_eq!(rig.wait_rows(id).await, 1, "the wait row exists");
    let payments = rig.lean_payments(&intent_id).await;
    assert_eq!(payments.len(), 1, "one payment: {payments:#?}");
    assert_eq!(payments[0]["status"], "CREATED");
    assert_eq!(payments[0]["awaiting_authorization"], true);
    assert!(rig.ledger("payment").await.is_empty(), "no money moved");

    // The Financial Controller authorises it.
    let payment_id = payments[0]["id"].as_str().unwrap().to_owned();
    let r = reqwest::Client::new()
        .post(
            rig.sandbox
                .url(&format!("/_sandbox/lean/payments/{payment_id}/authorize")),
        )
        .json(&serde_json::json!({"authorized_by": "fc@example.com"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let sagas = rig.wait_terminal(&[id], Duration::from_secs(60)).await;
    assert_eq!(
        sagas[0].status,
        SagaStatus::Completed,
        "{:?}",
        sagas[0].last_error
    );
    let out = &sagas[0].outputs["await_payment"];
    assert_eq!(out["status"], "ACCEPTED_BY_BANK");
    assert_eq!(out["payment_id"], payment_id.as_str());
    assert_eq!(rig.wait_rows(id).await, 0, "no wait row left");
    let payments = rig.lean_payments(&intent_id).await;
    assert_eq!(payments.len(), 1, "still one payment");
    assert_eq!(payments[0]["authorized_by"], "fc@example.com");
    let paid: Vec<Value> = rig
        .ledger("payment")
        .await
        .into_iter()
        .filter(|e| e["reference"] == payment_id.as_str())
        .collect();
    assert_eq!(paid.len(), 1, "paid once: {paid:#?}");
    assert_eq!(paid[0]["amount"], sagas[0].input["amount"]);
    assert_each_payout_exactly_once(&rig, &sagas).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lean_manual_payment_never_authorised_parks_the_saga_at_the_deadline_with_nothing_paid() {
    let rig = Rig::new("lean-manual-deadline", "none").await;
    rig.lean_manual(Some("3s")).await;
    let _w = rig.worker("w1", &[]);
    let id = rig.start("lean_payout_manual", 0).await;
    let waiting = rig.wait_for_authorization_wait(id).await;
    let intent_id = waiting.outputs["create_intent"]["intent_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let sagas = rig.wait_terminal(&[id], Duration::from_secs(60)).await;
    // Parked for an operator, not compensated: the queued payment may still be authorised at
    // Lean, and `create_intent` is irreversible.
    assert_eq!(sagas[0].status, SagaStatus::NeedsOperator);
    let error = sagas[0].last_error.clone().unwrap_or_default();
    assert!(
        error.contains("was not authorised within 3s by a Financial Controller")
            && error.contains("may yet be authorised there"),
        "{error}"
    );
    assert_eq!(rig.wait_rows(id).await, 0, "the wait ended");
    let payments = rig.lean_payments(&intent_id).await;
    assert_eq!(payments.len(), 1, "{payments:#?}");
    assert_eq!(payments[0]["status"], "CREATED", "still queued at Lean");
    assert!(rig.ledger("payment").await.is_empty(), "no money moved");
    let shown = paysaga_ok(rig.db.url(), &["show", &id.to_string()]);
    assert!(shown.contains("parked for an operator"), "{shown}");
}

/// The sandbox's recorded Blaaiz requests for an upload URL (one per document uploaded).
async fn blaaiz_upload_url_requests(rig: &Rig) -> usize {
    let v: Value = reqwest::get(rig.sandbox.url("/_sandbox/requests"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .filter(|x| {
            x["path"]
                .as_str()
                .is_some_and(|p| p.ends_with("/file/get-presigned-url"))
        })
        .count()
}

/// Issue 15 item 4: paying a creator whom Blaaiz already verified again skips the KYC steps
/// (`when` on the customer's verification status): no document is uploaded a second time,
/// history shows the three steps as skipped, and each payout is paid once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeat_blaaiz_payout_to_a_verified_customer_skips_kyc_and_uploads_no_documents() {
    let rig = Rig::new("blaaiz-repeat", "none").await;
    let _worker = rig.worker("w1", &[]);
    let on = reqwest::Client::new()
        .put(rig.sandbox.url("/_sandbox/requests/recording"))
        .body("on")
        .send()
        .await
        .unwrap();
    assert!(on.status().is_success());
    let workflow = "blaaiz_kyc_payout";
    let first = rig.start(workflow, 0).await;
    let first = rig
        .wait_terminal(&[first], Duration::from_secs(60))
        .await
        .remove(0);
    assert_eq!(
        first.status,
        SagaStatus::Completed,
        "{:?}",
        first.last_error
    );
    assert_eq!(first.outputs["create_customer"]["existing"], false);
    let documents = first.input["documents"].as_array().unwrap().len();
    assert!(documents > 0);
    assert_eq!(blaaiz_upload_url_requests(&rig).await, documents);

    // A month later: the same creator, another amount, no documents in the input.
    let mut input = support::workflows::input(&rig.engine, workflow, &rig.run, 0).await;
    input.as_object_mut().unwrap().remove("documents");
    input["payout"]["amount"] = serde_json::json!(25_000);
    let second = rig
        .engine
        .start(
            workflow,
            input,
            Some(&format!("{workflow}-{}-month-2", rig.run)),
        )
        .await
        .unwrap()
        .saga_id;
    let second = rig
        .wait_terminal(&[second], Duration::from_secs(60))
        .await
        .remove(0);
    assert_eq!(
        second.status,
        SagaStatus::Completed,
        "{:?}",
        second.last_error
    );
    assert_eq!(second.outputs["create_customer"]["existing"], true);
    assert_eq!(
        second.outputs["create_customer"]["customer_id"],
        first.outputs["create_customer"]["customer_id"]
    );
    assert_eq!(
        second.outputs["create_customer"]["verification_status"],
        "VERIFIED"
    );
    assert_eq!(
        blaaiz_upload_url_requests(&rig).await,
        documents,
        "the repeat payout uploaded documents again"
    );
    for step in ["upload_documents", "attach_files", "await_verification"] {
        assert!(
            second.outputs.get(step).is_none(),
            "{step} has an output: {}",
            second.outputs
        );
    }
    let history = rig.engine.store().history(second.id).await.unwrap();
    let skipped: Vec<(&str, &Value)> = history
        .iter()
        .filter(|h| h.kind == paysaga_core::HistoryKind::StepSkipped)
        .map(|h| {
            (
                h.step.as_deref().unwrap_or_default(),
                h.detail.as_ref().map_or(&Value::Null, |d| &d["value"]),
            )
        })
        .collect();
    let verified = Value::from("VERIFIED");
    assert_eq!(
        skipped,
        vec![
            ("upload_documents", &verified),
            ("attach_files", &verified),
            ("await_verification", &verified),
        ]
    );
    assert_eq!(
        rig.blaaiz_customers(&format!("kyc-{}-0@example.com", rig.run))
            .await
            .len(),
        1
    );
    assert_each_payout_exactly_once(&rig, &[first, second]).await;
}
