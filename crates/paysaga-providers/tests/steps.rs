//! The provider step kinds run against the real sandbox server, in-process on port 0.
//!
//! Each test drives the steps the way the worker does (same `StepContext` on a repeat, `Start`
//! then `Poll` wakes while waiting) and checks the providers' state through their APIs and the
//! sandbox ledger: nothing is created or paid twice.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod openapi;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use paysaga_core::{Definition, Event, StepContext, StepKind, StepOutcome, Wake};
use paysaga_providers::steps::{self, BLAAIZ_KINDS, LEAN_KINDS, LUMANU_KINDS};
use paysaga_providers::{Clients, ProvidersConfig};
use paysaga_sandbox::{Credentials, RunningSandbox, SandboxConfig};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use uuid::Uuid;

struct Env {
    sandbox: RunningSandbox,
    clients: Clients,
    kinds: HashMap<&'static str, Arc<dyn StepKind>>,
    http: reqwest::Client,
}

async fn env() -> Env {
    let config = SandboxConfig::new("127.0.0.1:0".parse().unwrap(), Credentials::dev());
    let sandbox = paysaga_sandbox::spawn(config)
        .await
        .expect("sandbox starts");
    let base = sandbox.base_url().to_owned();
    // Record every exchange: the flow tests check them against the providers' OpenAPI files.
    let recording = reqwest::Client::new()
        .put(format!("{base}/_sandbox/requests/recording"))
        .body("on")
        .send()
        .await
        .expect("recording switched on");
    assert_eq!(recording.status(), 204);
    // The sandbox's development credentials, Lean by OAuth client credentials here (the
    // binary's tests use its app token); a short timeout, so that an injected "effect, then no
    // answer" times the client out quickly.
    let vars: HashMap<String, String> = paysaga_providers::sandbox_env(&base)
        .into_iter()
        .filter(|(k, _)| *k != "PAYSAGA_LEAN_APP_TOKEN")
        .chain([
            ("PAYSAGA_LEAN_CLIENT_ID", "sandbox-lean-client".to_string()),
            (
                "PAYSAGA_LEAN_CLIENT_SECRET",
                "sandbox-lean-secret".to_string(),
            ),
            ("PAYSAGA_PROVIDER_REQUEST_TIMEOUT_SECS", "2".to_string()),
        ])
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
    let config = ProvidersConfig::from_lookup(|name| vars.get(name).cloned()).expect("config");
    let clients = config.clients();
    let kinds = steps::step_kinds(&clients)
        .into_iter()
        .map(|k| (k.name(), k))
        .collect();
    Env {
        sandbox,
        clients,
        kinds,
        http: reqwest::Client::new(),
    }
}

impl Env {
    /// Every request the clients sent and every answer the sandbox gave so far validate against
    /// the providers' OpenAPI files (see `openapi/mod.rs` for the allow-lists); `min` bodies of
    /// each side at least were checked.
    async fn assert_openapi_conformance(&self, min_requests: usize, min_responses: usize) {
        let exchanges = self.exchanges().await;
        let (requests, responses) = openapi::check(
            &openapi::Specs::load(&PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/openapi")),
            &exchanges,
        );
        assert!(
            requests >= min_requests && responses >= min_responses,
            "checked {requests} request and {responses} response bodies of {} exchanges",
            exchanges.len()
        );
    }

    /// Every Lean webhook the sandbox raised so far validates against the seeds' webhook
    /// examples (`openapi/lean/openapi.json`, `webhooks`); at least `min` were checked.
    async fn assert_lean_webhooks_match_the_seeds(&self, min: usize) {
        let url = format!("{}/_sandbox/webhooks", self.sandbox.base_url());
        let deliveries: Vec<Value> = self
            .http
            .get(url)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let checked = openapi::check_webhooks(
            &openapi::Specs::load(&PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/openapi")),
            &deliveries,
        );
        assert!(checked >= min, "checked {checked} Lean webhooks");
    }

    fn kind(&self, name: &str) -> Arc<dyn StepKind> {
        self.kinds.get(name).cloned().expect("kind registered")
    }

    async fn ledger(&self) -> Vec<Value> {
        let url = format!("{}/_sandbox/ledger", self.sandbox.base_url());
        let v: Value = self
            .http
            .get(url)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        v.as_array().cloned().expect("ledger is an array")
    }

    /// Ledger entries of `provider` of `kind` (payment, payout, deposit, ...).
    async fn movements(&self, provider: &str, kind: &str) -> Vec<Value> {
        self.ledger()
            .await
            .into_iter()
            .filter(|e| e["provider"] == provider && e["kind"] == kind)
            .collect()
    }

    async fn faults(&self, spec: &str) {
        let url = format!("{}/_sandbox/faults", self.sandbox.base_url());
        let r = self
            .http
            .put(url)
            .body(spec.to_owned())
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "fault spec {spec:?} accepted");
    }

    /// Runs `kind` with `Wake::Start`.
    async fn start(&self, kind: &str, ctx: &StepContext, params: &Value) -> StepOutcome {
        self.kind(kind).run(ctx, params.clone()).await
    }

    /// Runs `kind` the way the worker does: start, then while it waits, poll every 50 ms
    /// (at most 10 s) until it is done or fails. Returns the first `Wait` (if any) and the end.
    async fn until_done(
        &self,
        kind: &str,
        ctx: &StepContext,
        params: &Value,
    ) -> (Option<paysaga_core::WaitSpec>, StepOutcome) {
        let k = self.kind(kind);
        let mut outcome = k.run(ctx, params.clone()).await;
        let mut first_wait = None;
        let mut ctx = ctx.clone();
        for _ in 0..200 {
            let StepOutcome::Wait(spec) = &outcome else {
                break;
            };
            if first_wait.is_none() {
                first_wait = Some(spec.clone());
            }
            ctx.wait_state = Some(spec.state.clone()).filter(|s| !s.is_null());
            ctx.wake = Wake::Poll {
                deadline_passed: false,
            };
            tokio::time::sleep(Duration::from_millis(50)).await;
            outcome = k.run(&ctx, params.clone()).await;
        }
        (first_wait, outcome)
    }
}

fn ctx(saga: Uuid, workflow: &str, step: &str) -> StepContext {
    StepContext {
        saga_id: saga,
        workflow: workflow.into(),
        step: step.into(),
        attempt: 1,
        wake: Wake::Start,
        wait_state: None,
        output: None,
        now: Utc::now(),
        effects: std::sync::Arc::new(paysaga_core::Unguarded),
        documents: std::sync::Arc::new(DOCUMENTS.clone()),
        key_generation: 0,
    }
}

#[track_caller]
fn done(outcome: StepOutcome) -> Value {
    match outcome {
        StepOutcome::Done(v) => v,
        other => panic!("expected Done, got {other:?}"),
    }
}

#[track_caller]
fn failed(outcome: StepOutcome) -> String {
    match outcome {
        StepOutcome::Fail { error } => error,
        other => panic!("expected Fail, got {other:?}"),
    }
}

fn s(v: &Value, key: &str) -> String {
    v[key]
        .as_str()
        .unwrap_or_else(|| panic!("{key} in {v}"))
        .to_owned()
}

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn document_path(name: &str) -> PathBuf {
    repo_root().join("workflows/examples/documents").join(name)
}

/// The documents steps read in these tests (the worker reads them from the engine's store).
static DOCUMENTS: std::sync::LazyLock<paysaga_core::InMemoryDocuments> =
    std::sync::LazyLock::new(Default::default);

/// Stores an example document and returns its id.
fn document(name: &str) -> String {
    let content_type = if name.ends_with(".pdf") {
        "application/pdf"
    } else {
        "image/png"
    };
    DOCUMENTS
        .put(std::fs::read(document_path(name)).unwrap(), content_type)
        .to_string()
}

// ---------------------------------------------------------------------------------------------
// Lumanu

#[tokio::test]
async fn lumanu_prefund_steps_pay_the_payable_exactly_once() {
    let env = env().await;
    let saga = Uuid::new_v4();
    let wf = "lumanu_prefund";
    let ws = Uuid::new_v4().to_string();
    let amount = 125_000;

    let fund = done(
        env.start(
            "lumanu.fund_invoice",
            &ctx(saga, wf, "fund_invoice"),
            &json!({"workspace_id": ws, "amount": amount, "currency": "USD",
                    "description": "Creator fee",
                    "invoice": {"recipient_email": "ap@brand.example", "bill_to": "Brand",
                                "company_name": "Brand Inc", "company_address_one": "1 Main St"}}),
        )
        .await,
    );
    let funding_id = s(&fund, "funding_id");
    assert_eq!(fund["amount"], amount);
    assert!(s(&fund, "description").contains(&format!(
        "[ps-{}]",
        paysaga_core::idempotency_key(saga, "fund_invoice")
    )));

    // Deposit wait: waits on funding:{id}, completes on a poll once the invoice is paid.
    let dep_params = json!({"workspace_id": ws, "funding_id": funding_id});
    let (wait, outcome) = env
        .until_done(
            "lumanu.await_deposit",
            &ctx(saga, wf, "await_deposit"),
            &dep_params,
        )
        .await;
    let wait = wait.expect("the deposit arrives after the invoice: the step waits first");
    assert_eq!(wait.provider, "lumanu");
    assert_eq!(wait.correlation_key, format!("funding:{funding_id}"));
    assert!(wait.event_types.contains(&"transfer.created".to_owned()));
    let deposit = done(outcome);
    assert_eq!(deposit["amount"], amount);
    let transfer_id = s(&deposit, "transfer_id");
    assert_eq!(env.movements("lumanu", "deposit").await.len(), 1);

    let link = json!({"funding_id": funding_id, "transfer_id": transfer_id});
    let c = ctx(saga, wf, "link_deposit");
    assert_eq!(
        done(env.start("lumanu.link_deposit", &c, &link).await)["status"],
        "completed"
    );
    // A repeat (the answer was lost) is a 409 that counts as done.
    assert_eq!(
        done(env.start("lumanu.link_deposit", &c, &link).await)["status"],
        "completed"
    );

    // Payable: a second run with the same context finds the first payable.
    let pay_params = json!({"workspace_id": ws, "amount": amount, "currency": "USD",
                            "description": "Creator fee", "payee": {"email": "creator@example.com"}});
    let c = ctx(saga, wf, "create_payable");
    let first = done(env.start("lumanu.create_payable", &c, &pay_params).await);
    let again = done(env.start("lumanu.create_payable", &c, &pay_params).await);
    let payable_id = s(&first, "payable_id");
    assert_eq!(first["existing"], false);
    assert_eq!(again["existing"], true);
    assert_eq!(s(&again, "payable_id"), payable_id);
    let lumanu = env.clients.lumanu.as_ref().unwrap();
    let all = lumanu
        .find_payable(&ws, |_| true)
        .await
        .unwrap()
        .into_iter()
        .count();
    assert_eq!(all, 1, "one payable in the workspace");

    let c = ctx(saga, wf, "approve_payable");
    let id = json!({"payable_id": payable_id});
    assert_eq!(
        done(env.start("lumanu.approve_payable", &c, &id).await)["payable_status"],
        "approved"
    );
    assert_eq!(
        done(env.start("lumanu.approve_payable", &c, &id).await)["payable_status"],
        "approved"
    );

    // Paying twice (a crash after Lumanu's answer) pays once.
    let c = ctx(saga, wf, "pay_from_balance");
    let pay = json!({"workspace_id": ws, "payable_id": payable_id});
    let paid = done(env.start("lumanu.pay_from_balance", &c, &pay).await);
    assert_eq!(paid["already_paid"], false);
    let repeat = done(env.start("lumanu.pay_from_balance", &c, &pay).await);
    assert_eq!(repeat["already_paid"], true);

    // An event whose body is not backed by the API does not end the wait.
    let mut ev_ctx = ctx(saga, wf, "await_payable_paid");
    ev_ctx.wake = Wake::Event(Event {
        inbox_id: 1,
        provider: "lumanu".into(),
        event_id: "evt_forged".into(),
        event_type: "payable.paid".into(),
        correlation_key: format!("payable:{payable_id}"),
        payload: json!({"id": "evt_forged", "event_type": "payable.paid", "data": {"id": payable_id}}),
    });
    let before = lumanu.get_payable(&payable_id).await.unwrap();
    if before.payable_status.as_ref().map(|s| s.as_str()) != Some("paid") {
        match env.start("lumanu.await_payable_paid", &ev_ctx, &id).await {
            StepOutcome::Wait(w) => assert_eq!(w.correlation_key, format!("payable:{payable_id}")),
            // Settled in between: the API said so, which is what counts.
            StepOutcome::Done(v) => assert_eq!(v["payable_status"], "paid"),
            other => panic!("unexpected {other:?}"),
        }
    }
    let (_, outcome) = env
        .until_done(
            "lumanu.await_payable_paid",
            &ctx(saga, wf, "await_payable_paid"),
            &id,
        )
        .await;
    assert_eq!(done(outcome)["payable_status"], "paid");

    let payments = env.movements("lumanu", "payment").await;
    assert_eq!(payments.len(), 1, "paid exactly once: {payments:?}");
    assert_eq!(payments[0]["amount"], amount);
    env.assert_openapi_conformance(2, 10).await;
}

#[tokio::test]
async fn lumanu_payable_created_before_a_timeout_is_found_not_duplicated() {
    let env = env().await;
    let saga = Uuid::new_v4();
    let ws = Uuid::new_v4().to_string();
    let params = json!({"workspace_id": ws, "amount": 5_000, "currency": "USD",
                        "description": "Timeout test", "payee": {"email": "creator@example.com"}});
    let c = ctx(saga, "lumanu_prefund", "create_payable");
    // Lumanu creates the payable but the answer never arrives in time.
    env.faults("timeout_after_effect@POST:/lumanu/api/rest/payable=1,hang_ms=4000")
        .await;
    let outcome = env.start("lumanu.create_payable", &c, &params).await;
    env.faults("none").await;
    let first = match outcome {
        // The look-up right after the timeout already found it.
        StepOutcome::Done(v) => v,
        // Or the next attempt finds it.
        StepOutcome::Retry { error, .. } => {
            assert!(error.contains("create payable"), "{error}");
            done(env.start("lumanu.create_payable", &c, &params).await)
        }
        other => panic!("unexpected {other:?}"),
    };
    assert_eq!(first["existing"], true, "found, not created again");
    let again = done(env.start("lumanu.create_payable", &c, &params).await);
    assert_eq!(again["payable_id"], first["payable_id"]);
    let lumanu = env.clients.lumanu.as_ref().unwrap();
    let count = lumanu
        .list_payables(&paysaga_providers::lumanu::PayableQuery {
            workspace_id: Some(ws.clone()),
            limit: Some(100),
            ..Default::default()
        })
        .await
        .unwrap()
        .data
        .len();
    assert_eq!(count, 1, "one payable despite the timeout and the repeat");
}

/// Found by the long chaos run: two attempts of `pay_from_balance` in flight at once (a worker
/// whose lease was taken over while its call was still at Lumanu, and the new holder) both read
/// the payable as approved; Lumanu pays it for the first and refuses the second (422), which
/// then failed the step and compensated a paid payout. Both attempts must end done, paid once.
#[tokio::test]
async fn lumanu_concurrent_attempts_to_pay_end_done_and_pay_once() {
    let env = env().await;
    let saga = Uuid::new_v4();
    let wf = "lumanu_prefund";
    let ws = Uuid::new_v4().to_string();
    let amount = 7_000;
    let fund = done(
        env.start(
            "lumanu.fund_invoice",
            &ctx(saga, wf, "fund_invoice"),
            &json!({"workspace_id": ws, "amount": amount, "currency": "USD",
                    "description": "Concurrent pay",
                    "invoice": {"recipient_email": "ap@brand.example", "bill_to": "Brand",
                                "company_name": "Brand Inc", "company_address_one": "1 Main St"}}),
        )
        .await,
    );
    let funding_id = s(&fund, "funding_id");
    let (_, deposit) = env
        .until_done(
            "lumanu.await_deposit",
            &ctx(saga, wf, "await_deposit"),
            &json!({"workspace_id": ws, "funding_id": funding_id}),
        )
        .await;
    let transfer_id = s(&done(deposit), "transfer_id");
    done(
        env.start(
            "lumanu.link_deposit",
            &ctx(saga, wf, "link_deposit"),
            &json!({"funding_id": funding_id, "transfer_id": transfer_id}),
        )
        .await,
    );
    let payable = done(
        env.start(
            "lumanu.create_payable",
            &ctx(saga, wf, "create_payable"),
            &json!({"workspace_id": ws, "amount": amount, "currency": "USD",
                    "description": "Concurrent pay", "payee": {"email": "creator@example.com"}}),
        )
        .await,
    );
    let id = json!({"payable_id": s(&payable, "payable_id")});
    // Every request takes 300 ms: both attempts read "approved" before either pays.
    env.faults("latency_ms=300").await;
    let c = ctx(saga, wf, "approve_payable");
    let (a, b) = tokio::join!(
        env.start("lumanu.approve_payable", &c, &id),
        env.start("lumanu.approve_payable", &c, &id)
    );
    done(a);
    done(b);
    let c = ctx(saga, wf, "pay_from_balance");
    let pay = json!({"workspace_id": ws, "payable_id": id["payable_id"]});
    let (a, b) = tokio::join!(
        env.start("lumanu.pay_from_balance", &c, &pay),
        env.start("lumanu.pay_from_balance", &c, &pay)
    );
    env.faults("none").await;
    let (a, b) = (done(a), done(b));
    assert_eq!(
        [a["already_paid"].clone(), b["already_paid"].clone()]
            .iter()
            .filter(|v| **v == json!(true))
            .count(),
        1,
        "one attempt paid, the other found it paid: {a} {b}"
    );
    let payments = env.movements("lumanu", "payment").await;
    assert_eq!(payments.len(), 1, "paid exactly once: {payments:?}");
}

#[tokio::test]
async fn lumanu_create_payable_compensation_cancels_it() {
    let env = env().await;
    let saga = Uuid::new_v4();
    let ws = Uuid::new_v4().to_string();
    let params = json!({"workspace_id": ws, "amount": 700, "currency": "USD",
                        "description": "To be undone", "payee": {"lumanu_id": "lum_123"}});
    let kind = env.kind("lumanu.create_payable");
    assert!(kind.compensable());
    let out = done(
        kind.run(
            &ctx(saga, "lumanu_prefund", "create_payable"),
            params.clone(),
        )
        .await,
    );
    let mut comp = ctx(saga, "lumanu_prefund", "create_payable");
    comp.wake = Wake::Compensate;
    comp.output = Some(out.clone());
    let undone = done(kind.compensate(&comp, params.clone()).await);
    assert_eq!(undone["canceled"], true);
    // Compensating again is harmless.
    assert_eq!(done(kind.compensate(&comp, params).await)["canceled"], true);
    let p = env
        .clients
        .lumanu
        .as_ref()
        .unwrap()
        .get_payable(&s(&out, "payable_id"))
        .await
        .unwrap();
    assert_eq!(p.payable_status.unwrap().as_str(), "canceled");
}

// ---------------------------------------------------------------------------------------------
// Blaaiz

fn blaaiz_customer(email: &str, last_name: &str) -> Value {
    json!({"customer": {"type": "individual", "email": email, "country": "NG",
                        "id_type": "passport", "id_number": "A123", "first_name": "Ada",
                        "last_name": last_name}})
}

async fn verified_customer(
    env: &Env,
    saga: Uuid,
    email: &str,
    last_name: &str,
) -> (String, StepOutcome) {
    let wf = "blaaiz_kyc_payout";
    let cust = done(
        env.start(
            "blaaiz.create_customer",
            &ctx(saga, wf, "create_customer"),
            &blaaiz_customer(email, last_name),
        )
        .await,
    );
    let customer_id = s(&cust, "customer_id");
    let upload = done(
        env.start(
            "blaaiz.upload_documents",
            &ctx(saga, wf, "upload_documents"),
            &json!({"customer_id": customer_id, "documents": [
                {"file_category": "identity", "document_id": document("passport-front.png")}]}),
        )
        .await,
    );
    done(
        env.start(
            "blaaiz.attach_files",
            &ctx(saga, wf, "attach_files"),
            &json!({"customer_id": customer_id, "files": upload["files"]}),
        )
        .await,
    );
    let (_, outcome) = env
        .until_done(
            "blaaiz.await_verification",
            &ctx(saga, wf, "await_verification"),
            &json!({"customer_id": customer_id}),
        )
        .await;
    (customer_id, outcome)
}

#[tokio::test]
async fn blaaiz_kyc_and_payout_steps_create_each_object_once() {
    let env = env().await;
    let saga = Uuid::new_v4();
    let wf = "blaaiz_kyc_payout";
    let email = format!("ada.{}@example.com", Uuid::new_v4().simple());

    // Customer: looked up by email, so a repeat finds the first one.
    let c = ctx(saga, wf, "create_customer");
    let params = blaaiz_customer(&email, "Obi");
    let first = done(env.start("blaaiz.create_customer", &c, &params).await);
    let again = done(env.start("blaaiz.create_customer", &c, &params).await);
    let customer_id = s(&first, "customer_id");
    assert_eq!(first["existing"], false);
    assert_eq!(again["existing"], true);
    assert_eq!(s(&again, "customer_id"), customer_id);
    let blaaiz = env.clients.blaaiz.as_ref().unwrap();
    assert_eq!(
        blaaiz
            .find_customer_by_email(&email)
            .await
            .unwrap()
            .unwrap()
            .id,
        customer_id
    );

    // Documents: file ids and hashes out, never bytes.
    let front = document("passport-front.png");
    let bill = document("utility-bill.pdf");
    let upload = done(
        env.start(
            "blaaiz.upload_documents",
            &ctx(saga, wf, "upload_documents"),
            &json!({"customer_id": customer_id, "documents": [
                {"file_category": "identity", "document_id": front},
                {"file_category": "proof_of_address", "document_id": bill}]}),
        )
        .await,
    );
    let files = upload["files"].as_array().unwrap();
    assert_eq!(files.len(), 2);
    let bytes = std::fs::read(document_path("passport-front.png")).unwrap();
    assert_eq!(files[0]["file_category"], "identity");
    assert_eq!(files[0]["document_id"], json!(front));
    assert_eq!(files[0]["content_type"], "image/png");
    assert_eq!(files[0]["sha256"], hex::encode(Sha256::digest(&bytes)));
    assert_eq!(files[0]["size"], bytes.len());
    assert!(!files[0]["file_id"].as_str().unwrap().is_empty());
    assert!(
        !upload.to_string().contains("PNG"),
        "no document bytes in the output"
    );

    let attached = done(
        env.start(
            "blaaiz.attach_files",
            &ctx(saga, wf, "attach_files"),
            &json!({"customer_id": customer_id, "files": upload["files"]}),
        )
        .await,
    );
    assert_eq!(attached["verification_status"], "PROCESSING");

    let (wait, outcome) = env
        .until_done(
            "blaaiz.await_verification",
            &ctx(saga, wf, "await_verification"),
            &json!({"customer_id": customer_id}),
        )
        .await;
    let wait = wait.expect("review takes a moment: the step waits first");
    assert_eq!(wait.correlation_key, format!("customer:{customer_id}"));
    assert_eq!(wait.event_types, vec!["customer.status_changed".to_owned()]);
    assert_eq!(done(outcome)["verification_status"], "VERIFIED");

    // Payout twice with the same context: one payout, one debit.
    let wallet = paysaga_sandbox::seeds::BLAAIZ_WALLETS[0].0;
    let payout_params = json!({"customer_id": customer_id, "payout": {
        "wallet_id": wallet, "method": "bank_transfer", "amount": 5_000_000, "currency": "NGN",
        "bank_id": "058", "account_number": "0123456789", "account_name": "Ada Obi"}});
    let kind = env.kind("blaaiz.payout");
    assert!(kind.irreversible());
    let c = ctx(saga, wf, "payout");
    let p1 = done(env.start("blaaiz.payout", &c, &payout_params).await);
    let p2 = done(env.start("blaaiz.payout", &c, &payout_params).await);
    assert_eq!(p1["existing"], false);
    assert_eq!(p2["existing"], true);
    assert_eq!(p1["transaction_id"], p2["transaction_id"]);
    assert_eq!(p1["amount"], 5_000_000);
    let transaction_id = s(&p1, "transaction_id");
    assert_eq!(
        s(&p1, "reference"),
        format!("ps-{}", paysaga_core::idempotency_key(saga, "payout"))
    );

    let (wait, outcome) = env
        .until_done(
            "blaaiz.await_payout",
            &ctx(saga, wf, "await_payout"),
            &json!({"transaction_id": transaction_id}),
        )
        .await;
    if let Some(w) = wait {
        assert_eq!(w.correlation_key, format!("transaction:{transaction_id}"));
        assert_eq!(w.event_types, vec!["payout.status_changed".to_owned()]);
    }
    assert_eq!(done(outcome)["status"], "SUCCESSFUL");
    let payouts = env.movements("blaaiz", "payout").await;
    assert_eq!(payouts.len(), 1, "one payout debit: {payouts:?}");
    assert_eq!(payouts[0]["amount"], 5_000_000);
    env.assert_openapi_conformance(3, 5).await;
}

#[tokio::test]
async fn blaaiz_payout_created_before_a_timeout_is_found_not_duplicated() {
    let env = env().await;
    let saga = Uuid::new_v4();
    let email = format!("t.{}@example.com", Uuid::new_v4().simple());
    let (customer_id, outcome) = verified_customer(&env, saga, &email, "Obi").await;
    done(outcome);
    let wallet = paysaga_sandbox::seeds::BLAAIZ_WALLETS[1].0; // USD
    let params = json!({"customer_id": customer_id, "payout": {
        "wallet_id": wallet, "method": "ach", "amount": 12_345, "currency": "USD",
        "account_number": "987654321", "routing_number": "021000021", "account_name": "Ada Obi",
        "account_type": "checking", "recipient_type": "individual"}});
    let c = ctx(saga, "blaaiz_kyc_payout", "payout");
    env.faults("timeout_after_effect@POST:/blaaiz/api/external/payout=1,hang_ms=4000")
        .await;
    let outcome = env.start("blaaiz.payout", &c, &params).await;
    env.faults("none").await;
    let found = match outcome {
        StepOutcome::Done(v) => v,
        StepOutcome::Retry { .. } => done(env.start("blaaiz.payout", &c, &params).await),
        other => panic!("unexpected {other:?}"),
    };
    assert_eq!(found["existing"], true);
    let again = done(env.start("blaaiz.payout", &c, &params).await);
    assert_eq!(again["transaction_id"], found["transaction_id"]);
    let payouts = env.movements("blaaiz", "payout").await;
    assert_eq!(
        payouts.len(),
        1,
        "one payout despite the timeout: {payouts:?}"
    );
}

#[tokio::test]
async fn payouts_in_zero_and_three_decimal_currencies_reach_the_ledger_in_minor_units() {
    // The client and the sandbox read one ISO 4217 table: before, the sandbox took CLP, ISK
    // and VND for 2-decimal currencies and debited 100 times the amount sent.
    let env = env().await;
    let email = format!("fx.{}@example.com", Uuid::new_v4().simple());
    let (customer_id, outcome) = verified_customer(&env, Uuid::new_v4(), &email, "Obi").await;
    done(outcome);
    let cases: [(&str, i64, &str); 7] = [
        ("JPY", 1_500, "1500"),
        ("CLP", 25_000, "25000"),
        ("ISK", 1_500, "1500"),
        ("VND", 250_000, "250000"),
        ("KWD", 12_345, "12.345"),
        ("BHD", 5_005, "5.005"),
        ("JOD", 1_001, "1.001"),
    ];
    for (currency, minor, major) in cases {
        assert_eq!(
            paysaga_providers::money::minor_to_decimal(minor, currency),
            major
        );
        let wallet = paysaga_sandbox::seeds::BLAAIZ_WALLETS
            .iter()
            .find(|(_, c, _)| *c == currency)
            .map(|(id, _, _)| *id)
            .expect("a seeded wallet in the currency");
        let params = json!({"customer_id": customer_id, "payout": {
            "wallet_id": wallet, "method": "bank_transfer", "amount": minor,
            "currency": currency, "account_number": "987654321", "account_name": "Ada Obi"}});
        let c = ctx(Uuid::new_v4(), "blaaiz_kyc_payout", "payout");
        let out = done(env.start("blaaiz.payout", &c, &params).await);
        assert_eq!(out["amount"], minor, "{currency}: the client reads it back");
        let payouts: Vec<Value> = env
            .movements("blaaiz", "payout")
            .await
            .into_iter()
            .filter(|e| e["currency"] == currency)
            .collect();
        assert_eq!(payouts.len(), 1, "{currency}: {payouts:?}");
        assert_eq!(
            payouts[0]["amount"], minor,
            "{currency}: the ledger holds the minor units sent ({major} {currency})"
        );
    }
}

#[tokio::test]
async fn blaaiz_rejected_kyc_fails_with_the_reviewers_comment_and_failed_payout_fails() {
    let env = env().await;
    let email = format!("r.{}@example.com", Uuid::new_v4().simple());
    let (_, outcome) = verified_customer(&env, Uuid::new_v4(), &email, "Reject").await;
    let error = failed(outcome);
    assert!(error.contains("rejected"), "{error}");
    assert!(
        !error.contains("no comment given"),
        "the comment is shown: {error}"
    );

    let saga = Uuid::new_v4();
    let email = format!("f.{}@example.com", Uuid::new_v4().simple());
    let (customer_id, outcome) = verified_customer(&env, saga, &email, "Obi").await;
    done(outcome);
    let wallet = paysaga_sandbox::seeds::BLAAIZ_WALLETS[0].0;
    let payout = done(
        env.start(
            "blaaiz.payout",
            &ctx(saga, "blaaiz_kyc_payout", "payout"),
            &json!({"customer_id": customer_id, "payout": {
                "wallet_id": wallet, "method": "bank_transfer", "amount": 10000, "currency": "NGN",
                "bank_id": "058", "account_number": "0000000000", "account_name": "Ada Obi"}}),
        )
        .await,
    );
    let (_, outcome) = env
        .until_done(
            "blaaiz.await_payout",
            &ctx(saga, "blaaiz_kyc_payout", "await_payout"),
            &json!({"transaction_id": payout["transaction_id"]}),
        )
        .await;
    assert!(failed(outcome).contains("FAILED"));
}

// ---------------------------------------------------------------------------------------------
// Lean

fn lean_destination(name: &str, iban: &str) -> Value {
    json!({"destination": {"display_name": "Acme Payouts", "name": name,
        "bank_identifier": "ENBD_UAE", "iban": iban, "account_number": "1234567890123456",
        "address": "Business Bay", "city": "Dubai", "country": "ARE"}})
}

/// Destination, customer and an ACTIVE beneficiary; returns (customer_id, destination_id).
async fn lean_ready(env: &Env, saga: Uuid, app_user_id: &str) -> (String, String) {
    let wf = "lean_payout";
    let iban = format!("AE07{:019}", Uuid::new_v4().as_u128() % 10u128.pow(19));
    let d = done(
        env.start(
            "lean.create_destination",
            &ctx(saga, wf, "create_destination"),
            &lean_destination("Acme Trading LLC", &iban),
        )
        .await,
    );
    let c = done(
        env.start(
            "lean.ensure_customer",
            &ctx(saga, wf, "ensure_customer"),
            &json!({"app_user_id": app_user_id}),
        )
        .await,
    );
    let (customer_id, destination_id) = (s(&c, "customer_id"), s(&d, "destination_id"));
    let (_, outcome) = env
        .until_done(
            "lean.await_beneficiary",
            &ctx(saga, wf, "await_beneficiary"),
            &json!({"customer_id": customer_id, "destination_id": destination_id}),
        )
        .await;
    assert_eq!(done(outcome)["status"], "ACTIVE");
    (customer_id, destination_id)
}

#[tokio::test]
async fn lean_payout_steps_reuse_objects_and_dedupe_the_intent() {
    let env = env().await;
    let saga = Uuid::new_v4();
    let wf = "lean_payout";
    let iban = "AE07 0331 2345 6789 0123 456";

    // Destination: found by IBAN + holder name on a repeat (even from another saga).
    let params = lean_destination("Acme Trading LLC", iban);
    let d1 = done(
        env.start(
            "lean.create_destination",
            &ctx(saga, wf, "create_destination"),
            &params,
        )
        .await,
    );
    let d2 = done(
        env.start(
            "lean.create_destination",
            &ctx(Uuid::new_v4(), wf, "create_destination"),
            &lean_destination("ACME trading  llc", "AE070331234567890123456"),
        )
        .await,
    );
    assert_eq!(d1["existing"], false);
    assert_eq!(d2["existing"], true);
    assert_eq!(d1["destination_id"], d2["destination_id"]);
    let destination_id = s(&d1, "destination_id");
    let lean = env.clients.lean.as_ref().unwrap();
    let same_iban = lean
        .list_destinations()
        .await
        .unwrap()
        .into_iter()
        .filter(|d| {
            d.iban.as_deref().map(|i| i.replace(' ', "")) == Some("AE070331234567890123456".into())
        })
        .count();
    assert_eq!(same_iban, 1);

    // Customer: the 409 on a repeat is the existing customer.
    let app_user_id = format!("user-{}", Uuid::new_v4().simple());
    let c = ctx(saga, wf, "ensure_customer");
    let cu1 = done(
        env.start(
            "lean.ensure_customer",
            &c,
            &json!({"app_user_id": app_user_id}),
        )
        .await,
    );
    let cu2 = done(
        env.start(
            "lean.ensure_customer",
            &c,
            &json!({"app_user_id": app_user_id}),
        )
        .await,
    );
    assert_eq!(cu1["existing"], false);
    assert_eq!(cu2["existing"], true);
    assert_eq!(cu1["customer_id"], cu2["customer_id"]);
    let customer_id = s(&cu1, "customer_id");

    // Beneficiary: waits on beneficiary:{customer}:{destination}, done once ACTIVE.
    let (wait, outcome) = env
        .until_done(
            "lean.await_beneficiary",
            &ctx(saga, wf, "await_beneficiary"),
            &json!({"customer_id": customer_id, "destination_id": destination_id}),
        )
        .await;
    let wait = wait.expect("the LinkSDK simulation takes a moment: the step waits first");
    assert_eq!(
        wait.correlation_key,
        format!("beneficiary:{customer_id}:{destination_id}")
    );
    assert_eq!(
        wait.event_types,
        vec![
            "payment_source.beneficiary.created".to_owned(),
            "payment_source.beneficiary.updated".to_owned()
        ]
    );
    assert_eq!(done(outcome)["status"], "ACTIVE");

    // Intent: the same context sends the same Idempotency-Key and gets the same intent.
    let intent_params = json!({"customer_id": customer_id, "destination_id": destination_id,
                               "amount": 150_000, "currency": "AED", "description": "Invoice 42"});
    let kind = env.kind("lean.create_intent");
    assert!(kind.irreversible());
    let c = ctx(saga, wf, "create_intent");
    let i1 = done(env.start("lean.create_intent", &c, &intent_params).await);
    let i2 = done(env.start("lean.create_intent", &c, &intent_params).await);
    assert_eq!(i1["intent_id"], i2["intent_id"]);
    assert_eq!(i1["amount"], 150_000);
    let intent_id = s(&i1, "intent_id");
    // Another saga is another key: another intent.
    let other = done(
        env.start(
            "lean.create_intent",
            &ctx(Uuid::new_v4(), wf, "create_intent"),
            &intent_params,
        )
        .await,
    );
    assert_ne!(other["intent_id"], i1["intent_id"]);

    let (wait, outcome) = env
        .until_done(
            "lean.await_payment",
            &ctx(saga, wf, "await_payment"),
            &json!({"intent_id": intent_id, "reconcile_for": "2d"}),
        )
        .await;
    let wait = wait.expect("the bank answers later: the step waits first");
    assert_eq!(wait.correlation_key, format!("intent:{intent_id}"));
    assert_eq!(
        wait.event_types,
        vec!["payment.created".to_owned(), "payment.updated".to_owned()]
    );
    let paid = done(outcome);
    assert_eq!(paid["status"], "ACCEPTED_BY_BANK");
    assert_eq!(paid["amount"], 150_000);
    // Let the other saga's intent settle too, then count: two intents, two payments, and the
    // repeated create added none.
    let (_, outcome) = env
        .until_done(
            "lean.await_payment",
            &ctx(Uuid::new_v4(), wf, "await_payment"),
            &json!({"intent_id": other["intent_id"]}),
        )
        .await;
    done(outcome);
    let payments = env.movements("lean", "payment").await;
    assert_eq!(payments.len(), 2, "{payments:?}");
    // Lean publishes no OpenAPI file: requests, responses and webhooks are checked against the
    // document assembled from the seeds' examples (`openapi/lean/openapi.json`).
    env.assert_openapi_conformance(5, 12).await;
    // payment_source.created, beneficiary created/updated for each destination, and
    // payment.created/updated for both intents.
    env.assert_lean_webhooks_match_the_seeds(7).await;
}

#[tokio::test]
async fn lean_intent_after_a_timeout_is_the_same_intent() {
    let env = env().await;
    let saga = Uuid::new_v4();
    let (customer_id, destination_id) =
        lean_ready(&env, saga, &format!("user-{}", Uuid::new_v4().simple())).await;
    let params = json!({"customer_id": customer_id, "destination_id": destination_id,
                        "amount": 9_900, "currency": "AED", "description": "Timeout"});
    let c = ctx(saga, "lean_payout", "create_intent");
    env.faults("timeout_after_effect@POST:/lean/payments/v1/intents=1,hang_ms=4000")
        .await;
    let outcome = env.start("lean.create_intent", &c, &params).await;
    env.faults("none").await;
    assert!(
        matches!(outcome, StepOutcome::Retry { .. }),
        "a timeout is transient: {outcome:?}"
    );
    let intent = done(env.start("lean.create_intent", &c, &params).await);
    let (_, outcome) = env
        .until_done(
            "lean.await_payment",
            &ctx(saga, "lean_payout", "await_payment"),
            &json!({"intent_id": intent["intent_id"]}),
        )
        .await;
    done(outcome);
    let payments = env.movements("lean", "payment").await;
    assert_eq!(
        payments.len(),
        1,
        "one payment despite the timeout: {payments:?}"
    );
}

#[tokio::test]
async fn lean_pending_with_bank_becomes_a_reconciliation_wait_set_once_and_rejection_fails() {
    let env = env().await;
    let saga = Uuid::new_v4();
    let (customer_id, destination_id) =
        lean_ready(&env, saga, &format!("user-{}", Uuid::new_v4().simple())).await;
    let intent = done(
        env.start(
            "lean.create_intent",
            &ctx(saga, "lean_payout", "create_intent"),
            &json!({"customer_id": customer_id, "destination_id": destination_id,
                    "amount": 1_000, "currency": "AED", "description": "PENDING_WITH_BANK"}),
        )
        .await,
    );
    let params = json!({"intent_id": intent["intent_id"], "reconcile_for": "36h"});
    let kind = env.kind("lean.await_payment");
    let mut c = ctx(saga, "lean_payout", "await_payment");
    // Poll until the payment exists and is pending with the bank.
    let mut reconciling = None;
    for _ in 0..200 {
        match kind.run(&c, params.clone()).await {
            StepOutcome::Wait(w) if w.new_deadline.is_some() => {
                reconciling = Some(w);
                break;
            }
            StepOutcome::Wait(_) => {
                c.wake = Wake::Poll {
                    deadline_passed: false,
                };
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    let w = reconciling.expect("PENDING_WITH_BANK starts a reconciliation wait");
    assert_eq!(w.new_deadline, Some(Duration::from_secs(36 * 3600)));
    assert_eq!(w.state["reconciling"], true);
    assert_eq!(
        w.correlation_key,
        format!("intent:{}", s(&intent, "intent_id"))
    );
    // The next poll keeps waiting without moving the deadline again.
    c.wait_state = Some(w.state.clone());
    match kind.run(&c, params.clone()).await {
        StepOutcome::Wait(again) => {
            assert_eq!(again.new_deadline, None);
            assert_eq!(again.state["reconciling"], true);
        }
        other => panic!("unexpected {other:?}"),
    }

    let rejected = done(
        env.start(
            "lean.create_intent",
            &ctx(saga, "lean_payout", "create_intent_2"),
            &json!({"customer_id": customer_id, "destination_id": destination_id,
                    "amount": 1_000, "currency": "AED", "description": "REJECTED_BY_BANK"}),
        )
        .await,
    );
    let (_, outcome) = env
        .until_done(
            "lean.await_payment",
            &ctx(saga, "lean_payout", "await_payment_2"),
            &json!({"intent_id": rejected["intent_id"]}),
        )
        .await;
    assert!(failed(outcome).contains("REJECTED_BY_BANK"));
}

/// Issue 18 item 8: a Lean account with manual authorisation queues the payment (`CREATED`)
/// until a Financial Controller approves it; the step waits for it with its own deadline, says
/// by whom, and fails at the deadline saying the payment may still be authorised.
#[tokio::test]
async fn lean_manual_authorization_wait_names_the_authoriser_sets_its_deadline_once_and_fails_after_it(
) {
    let env = env().await;
    let put = env
        .http
        .put(format!(
            "{}/_sandbox/lean/authorization",
            env.sandbox.base_url()
        ))
        .json(&json!({"mode": "manual"}))
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), 200);
    let saga = Uuid::new_v4();
    let (customer_id, destination_id) =
        lean_ready(&env, saga, &format!("user-{}", Uuid::new_v4().simple())).await;
    let intent = done(
        env.start(
            "lean.create_intent",
            &ctx(saga, "lean_payout_manual", "create_intent"),
            &json!({"customer_id": customer_id, "destination_id": destination_id,
                    "amount": 25_000, "currency": "AED", "description": "Manual 1"}),
        )
        .await,
    );
    let intent_id = s(&intent, "intent_id");
    let params = json!({"intent_id": intent_id, "authorization": "manual",
                        "authorize_within": "3d", "authorized_by": "Treasury (Lean dashboard)"});
    let kind = env.kind("lean.await_payment");
    let mut c = ctx(saga, "lean_payout_manual", "await_payment");
    let mut awaiting = None;
    for _ in 0..200 {
        match kind.run(&c, params.clone()).await {
            StepOutcome::Wait(w) if w.new_deadline.is_some() => {
                awaiting = Some(w);
                break;
            }
            StepOutcome::Wait(_) => {
                c.wake = Wake::Poll {
                    deadline_passed: false,
                };
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    let w = awaiting.expect("a queued payment starts an authorisation wait");
    // A definition for automatic authorisation keeps its deadline but says what it sees.
    match kind
        .run(
            &ctx(saga, "lean_payout", "await_payment"),
            json!({"intent_id": intent_id}),
        )
        .await
    {
        StepOutcome::Wait(auto) => {
            assert_eq!(auto.new_deadline, None);
            let d = auto.state["description"].as_str().unwrap();
            assert!(
                d.contains("queued at Lean (status CREATED)")
                    && d.contains("expected to be authorised by Lean (automatic authorisation)"),
                "{d}"
            );
        }
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(w.new_deadline, Some(Duration::from_secs(3 * 24 * 3600)));
    assert_eq!(w.state["awaiting_authorization"], true);
    assert_eq!(w.state["authorized_by"], "Treasury (Lean dashboard)");
    let description = w.state["description"].as_str().unwrap();
    assert!(
        description.starts_with("awaiting authorisation at Lean by Treasury (Lean dashboard)")
            && description.contains(" AED)"),
        "{description}"
    );
    // Polls keep waiting without moving the deadline.
    c.wait_state = Some(w.state.clone());
    match kind.run(&c, params.clone()).await {
        StepOutcome::Wait(again) => {
            assert_eq!(again.new_deadline, None);
            assert_eq!(again.state, w.state);
        }
        other => panic!("unexpected {other:?}"),
    }
    // The deadline passes: the step fails, saying the payment may still be authorised.
    c.wake = Wake::Poll {
        deadline_passed: true,
    };
    let error = failed(kind.run(&c, params.clone()).await);
    assert!(
        error.contains("was not authorised within 3days by Treasury (Lean dashboard)")
            && error.contains("may yet be authorised there"),
        "{error}"
    );
    assert!(env.movements("lean", "payment").await.is_empty());

    // Authorised (late, from the dashboard): the payment goes to the bank and is paid once;
    // a second authorisation is refused.
    let payment_id = match env
        .clients
        .lean
        .as_ref()
        .unwrap()
        .get_payment_intent(&intent_id)
        .await
    {
        Ok(i) => i.latest_payment().unwrap().id.clone(),
        Err(e) => panic!("{e}"),
    };
    let authorize = || {
        env.http
            .post(format!(
                "{}/_sandbox/lean/payments/{payment_id}/authorize",
                env.sandbox.base_url()
            ))
            .send()
    };
    assert_eq!(authorize().await.unwrap().status(), 200);
    assert_eq!(authorize().await.unwrap().status(), 409);
    let (_, outcome) = env
        .until_done(
            "lean.await_payment",
            &ctx(saga, "lean_payout_manual", "await_payment_again"),
            &params,
        )
        .await;
    assert_eq!(done(outcome)["status"], "ACCEPTED_BY_BANK");
    assert_eq!(env.movements("lean", "payment").await.len(), 1);
    // The queued payment's answers and webhooks validate against the seeds' shapes, `CREATED`
    // being the one allowed difference (openapi/mod.rs).
    env.assert_openapi_conformance(3, 8).await;
    env.assert_lean_webhooks_match_the_seeds(5).await;
}

#[test]
fn lean_document_assembled_from_the_seeds_validates_its_own_seed_examples() {
    let specs =
        openapi::Specs::load(&PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/openapi"));
    // Destination request and response, customer request, payment source, intent request,
    // payment, and both seeds' payment_source.created.
    assert!(openapi::check_lean_examples(&specs) >= 8);
}

// ---------------------------------------------------------------------------------------------
// Validation

#[tokio::test]
async fn validation_errors_name_the_field() {
    let env = env().await;
    let v = |kind: &str, params: Value| env.kind(kind).validate(&params);
    let err = |kind: &str, params: Value| {
        v(kind, params).expect_err("invalid params are refused at start")
    };

    let fund = json!({"workspace_id": "w", "amount": 100, "currency": "USD", "description": "d",
        "invoice": {"recipient_email": "ap@brand.example", "bill_to": "b", "company_name": "c",
                    "company_address_one": "a"}});
    assert_eq!(v("lumanu.fund_invoice", fund.clone()), Ok(()));
    let with = |mut base: Value, path: &[&str], value: Value| {
        let mut at = &mut base;
        for p in &path[..path.len() - 1] {
            at = at.get_mut(*p).unwrap();
        }
        at[path[path.len() - 1]] = value;
        base
    };
    for (amount, why) in [
        (json!(10.5), "fraction"),
        (json!(0), "zero"),
        (json!(-5), "negative"),
        (json!("100"), "string"),
    ] {
        let e = err(
            "lumanu.fund_invoice",
            with(fund.clone(), &["amount"], amount),
        );
        assert!(
            e.contains("amount") && e.contains("minor units"),
            "{why}: {e}"
        );
    }
    let e = err(
        "lumanu.fund_invoice",
        with(fund.clone(), &["currency"], json!("US")),
    );
    assert!(e.contains("currency"), "{e}");
    let e = err(
        "lumanu.fund_invoice",
        with(fund.clone(), &["currency"], json!("EUR")),
    );
    assert!(e.contains("currency") && e.contains("USD"), "{e}");
    let e = err(
        "lumanu.fund_invoice",
        with(
            fund.clone(),
            &["invoice", "recipient_email"],
            json!("ap@brand"),
        ),
    );
    assert!(e.contains("invoice.recipient_email"), "{e}");
    let e = err(
        "lumanu.fund_invoice",
        with(fund.clone(), &["workspace_id"], json!("")),
    );
    assert!(e.contains("workspace_id"), "{e}");

    // References into earlier steps are null at start and accepted; the input is checked.
    let payable = json!({"workspace_id": "w", "amount": 100, "currency": "USD",
                         "description": "d", "payee": {"email": "a@b.co"}});
    assert_eq!(v("lumanu.create_payable", payable.clone()), Ok(()));
    let e = err(
        "lumanu.create_payable",
        with(payable.clone(), &["payee"], json!({"email": "nope"})),
    );
    assert!(e.contains("payee.email"), "{e}");
    let e = err(
        "lumanu.create_payable",
        with(payable, &["payee"], json!({})),
    );
    assert!(e.contains("payee"), "{e}");
    assert_eq!(
        v("lumanu.approve_payable", json!({"payable_id": null})),
        Ok(())
    );
    let e = err("lumanu.approve_payable", json!({"payable_id": ""}));
    assert!(e.contains("payable_id"), "{e}");

    let cust = blaaiz_customer("ada@example.com", "Obi");
    assert_eq!(v("blaaiz.create_customer", cust.clone()), Ok(()));
    let e = err(
        "blaaiz.create_customer",
        with(
            cust.clone(),
            &["customer", "email"],
            json!("ada.example.com"),
        ),
    );
    assert!(e.contains("customer.email"), "{e}");
    let e = err(
        "blaaiz.create_customer",
        with(
            cust.clone(),
            &["customer", "email"],
            json!("ada@x@example.com"),
        ),
    );
    assert!(e.contains("customer.email"), "{e}");
    let e = err(
        "blaaiz.create_customer",
        with(cust, &["customer", "type"], json!("robot")),
    );
    assert!(e.contains("customer.type"), "{e}");

    let docs = |id: &str| json!({"customer_id": null, "documents": [{"file_category": "identity", "document_id": id}]});
    assert_eq!(
        v(
            "blaaiz.upload_documents",
            docs(&document("passport-front.png"))
        ),
        Ok(())
    );
    let e = err("blaaiz.upload_documents", docs("passport-front.png"));
    assert!(
        e.contains("documents[0].document_id") && e.contains("paysaga documents put"),
        "{e}"
    );
    // A file path is refused, not read: the worker reads nothing from its own disk.
    let e = err(
        "blaaiz.upload_documents",
        json!({"customer_id": null, "documents": [{"file_category": "identity", "path": "/etc/passwd"}]}),
    );
    assert!(
        e.contains("documents[0].path") && e.contains("documents put"),
        "{e}"
    );
    let e = err(
        "blaaiz.upload_documents",
        json!({"customer_id": null, "documents": [{"file_category": "selfie", "document_id": document("passport-front.png")}]}),
    );
    assert!(e.contains("documents[0].file_category"), "{e}");
    let e = err(
        "blaaiz.upload_documents",
        json!({"customer_id": null, "documents": [{"file_category": "proof_of_address", "document_id": document("utility-bill.pdf")}]}),
    );
    assert!(e.contains("identity"), "{e}");

    let payout = json!({"customer_id": null, "payout": {"wallet_id": "w", "method": "bank_transfer",
        "amount": 100, "currency": "NGN", "account_number": "1"}});
    assert_eq!(v("blaaiz.payout", payout.clone()), Ok(()));
    let e = err(
        "blaaiz.payout",
        with(payout.clone(), &["payout", "amount"], json!(1.5)),
    );
    assert!(e.contains("payout.amount"), "{e}");
    let e = err(
        "blaaiz.payout",
        with(payout.clone(), &["payout", "currency"], json!("NAIRA")),
    );
    assert!(e.contains("payout.currency"), "{e}");
    let e = err(
        "blaaiz.payout",
        with(payout, &["payout", "method"], json!("pigeon")),
    );
    assert!(e.contains("payout.method"), "{e}");

    let dest = lean_destination("Acme", "AE07");
    assert_eq!(v("lean.create_destination", dest.clone()), Ok(()));
    let e = err(
        "lean.create_destination",
        with(dest, &["destination", "iban"], json!("")),
    );
    assert!(e.contains("destination.iban"), "{e}");
    let intent = json!({"customer_id": null, "destination_id": null, "amount": 100,
                        "currency": "AED", "description": "ok"});
    assert_eq!(v("lean.create_intent", intent.clone()), Ok(()));
    let e = err(
        "lean.create_intent",
        with(intent.clone(), &["description"], json!("x".repeat(33))),
    );
    assert!(e.contains("description") && e.contains("32"), "{e}");
    let e = err(
        "lean.create_intent",
        with(intent, &["currency"], json!("A3D")),
    );
    assert!(e.contains("currency"), "{e}");
    let e = err(
        "lean.await_payment",
        json!({"intent_id": null, "reconcile_for": "soon"}),
    );
    assert!(e.contains("reconcile_for"), "{e}");
    let e = err("lean.ensure_customer", json!({"app_user_id": 42}));
    assert!(e.contains("app_user_id"), "{e}");
}

// ---------------------------------------------------------------------------------------------
// Workflow files

#[tokio::test]
async fn workflow_files_compile_against_the_registered_kinds_and_accept_their_examples() {
    let env = env().await;
    let all: Vec<String> = env.kinds.keys().map(|k| k.to_string()).collect();
    let mut expected: Vec<&str> = LUMANU_KINDS
        .iter()
        .chain(BLAAIZ_KINDS.iter())
        .chain(LEAN_KINDS.iter())
        .copied()
        .collect();
    expected.sort();
    let mut names: Vec<&str> = all.iter().map(String::as_str).collect();
    names.sort();
    assert_eq!(names, expected, "every provider's kinds are registered");
    let traits = |k: &str| env.kinds.get(k).map(|kind| kind.traits());

    let root = repo_root();
    for (file, irreversible, compensable) in [
        (
            "lumanu_prefund",
            vec!["pay_from_balance"],
            vec!["create_payable"],
        ),
        ("blaaiz_kyc_payout", vec!["payout"], vec![]),
        ("lean_payout", vec!["create_intent"], vec![]),
        ("lean_payout_manual", vec!["create_intent"], vec![]),
    ] {
        let text = std::fs::read_to_string(root.join(format!("workflows/{file}.toml"))).unwrap();
        let def = Definition::from_toml(&text).unwrap_or_else(|e| panic!("{file}: {e}"));
        assert_eq!(def.name, file);
        let compiled = def
            .compile(&traits, &all)
            .unwrap_or_else(|e| panic!("{file}: {e}"));
        for step in &compiled.steps {
            assert_eq!(
                step.traits.irreversible,
                irreversible.contains(&step.def.name.as_str()),
                "{file}/{}",
                step.def.name
            );
            assert_eq!(
                step.traits.compensable,
                compensable.contains(&step.def.name.as_str()),
                "{file}/{}",
                step.def.name
            );
            // Waits end: every waiting step's retries outlast its deadline.
            if step.def.kind.contains(".await_") {
                assert!(
                    step.def.retry.max_total > step.def.deadline,
                    "{file}/{}",
                    step.def.name
                );
                assert!(step.def.poll_every < step.def.deadline);
            }
        }

        // The example input passes every step's validation.
        let input: Value = serde_json::from_str(
            // lean_payout_manual takes lean_payout's input (only the authorisation differs).
            &std::fs::read_to_string(root.join(format!(
                "workflows/examples/{}.json",
                file.strip_suffix("_manual").unwrap_or(file)
            )))
            .unwrap(),
        )
        .unwrap();
        let scope =
            json!({"input": input, "steps": {}, "saga": {"id": Uuid::nil(), "workflow": file}});
        for step in &compiled.steps {
            let params = step
                .params
                .resolve_input_only(&scope)
                .unwrap_or_else(|e| panic!("{file}/{}: {e}", step.def.name));
            env.kinds[step.def.kind.as_str()]
                .validate(&params)
                .unwrap_or_else(|e| panic!("{file}/{}: {e}", step.def.name));
        }
        // And a broken input is refused by some step, naming the field.
        let mut bad = input.clone();
        bad["amount"] = json!(12.5);
        if let Some(p) = bad.get_mut("payout") {
            p["amount"] = json!(12.5);
        }
        let scope =
            json!({"input": bad, "steps": {}, "saga": {"id": Uuid::nil(), "workflow": file}});
        let refused: Vec<String> = compiled
            .steps
            .iter()
            .filter_map(|step| {
                let params = step.params.resolve_input_only(&scope).ok()?;
                env.kinds[step.def.kind.as_str()].validate(&params).err()
            })
            .collect();
        assert!(
            refused.iter().any(|e| e.contains("amount")),
            "{file}: {refused:?}"
        );
    }
}

#[tokio::test]
async fn only_configured_providers_contribute_kinds() {
    let env = env().await;
    let only_lean = Clients {
        lumanu: None,
        blaaiz: None,
        lean: env.clients.lean.clone(),
    };
    let names: Vec<&str> = steps::step_kinds(&only_lean)
        .iter()
        .map(|k| k.name())
        .collect();
    assert_eq!(names, LEAN_KINDS.to_vec());
    assert!(steps::step_kinds(&Clients::default()).is_empty());
}

/// Records what a step asked of its effect guard.
#[derive(Debug, Default)]
struct RecordingGuard {
    calls: std::sync::Mutex<Vec<&'static str>>,
}

#[async_trait::async_trait]
impl paysaga_core::EffectGuard for RecordingGuard {
    async fn begin(&self, ctx: &StepContext) -> Result<paysaga_core::EffectPermit, StepOutcome> {
        self.calls.lock().unwrap().push("begin");
        paysaga_core::Unguarded.begin(ctx).await
    }
    async fn not_sent(&self, _ctx: &StepContext) {
        self.calls.lock().unwrap().push("not_sent");
    }
}

/// The payout is created only under the effect guard; a create Blaaiz refused before acting
/// (429) withdraws the mark, a create that may have taken effect (timeout) keeps it.
#[tokio::test]
async fn blaaiz_payout_marks_before_sending_and_withdraws_only_when_refused() {
    let env = env().await;
    let saga = Uuid::new_v4();
    let email = format!("t.{}@example.com", Uuid::new_v4().simple());
    let (customer_id, outcome) = verified_customer(&env, saga, &email, "Eze").await;
    done(outcome);
    let wallet = paysaga_sandbox::seeds::BLAAIZ_WALLETS[1].0; // USD
    let params = json!({"customer_id": customer_id, "payout": {
        "wallet_id": wallet, "method": "ach", "amount": 4_321, "currency": "USD",
        "account_number": "987654321", "routing_number": "021000021", "account_name": "Eze Obi",
        "account_type": "checking", "recipient_type": "individual"}});
    let guard = std::sync::Arc::new(RecordingGuard::default());
    let mut c = ctx(saga, "blaaiz_kyc_payout", "payout");
    c.effects = guard.clone();
    env.faults("error_rate@POST:/blaaiz/api/external/payout=1,rate_limit_share=1")
        .await;
    let refused = env.start("blaaiz.payout", &c, &params).await;
    assert!(matches!(refused, StepOutcome::Retry { .. }), "{refused:?}");
    assert_eq!(*guard.calls.lock().unwrap(), ["begin", "not_sent"]);
    guard.calls.lock().unwrap().clear();
    env.faults("timeout_after_effect@POST:/blaaiz/api/external/payout=1,hang_ms=4000")
        .await;
    let _ = env.start("blaaiz.payout", &c, &params).await;
    env.faults("none").await;
    assert_eq!(
        *guard.calls.lock().unwrap(),
        ["begin"],
        "a timeout keeps the mark"
    );
    assert_eq!(env.movements("blaaiz", "payout").await.len(), 1);
}

/// An effect guard that answers [`StepContext::earlier_send_possible`] with a set value.
#[derive(Debug)]
struct EarlierSendGuard(bool);

#[async_trait::async_trait]
impl paysaga_core::EffectGuard for EarlierSendGuard {
    async fn begin(&self, ctx: &StepContext) -> Result<paysaga_core::EffectPermit, StepOutcome> {
        paysaga_core::Unguarded.begin(ctx).await
    }
    async fn earlier_send_possible(&self, _ctx: &StepContext) -> Result<bool, StepOutcome> {
        Ok(self.0)
    }
}

impl Env {
    /// Every provider API exchange the sandbox recorded so far (`GET /_sandbox/requests`).
    async fn exchanges(&self) -> Vec<Value> {
        let url = format!("{}/_sandbox/requests", self.sandbox.base_url());
        self.http
            .get(url)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// How many `GET /payable` (list) requests the sandbox answered so far.
    async fn payable_lists(&self) -> usize {
        self.exchanges()
            .await
            .iter()
            .filter(|e| e["method"] == "GET" && e["path"] == "/api/rest/payable")
            .count()
    }

    /// The payables of workspace `ws` at Lumanu.
    async fn payables_of(&self, ws: &str) -> Vec<Value> {
        self.lumanu_objects().await["payables"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| p["workspace_id"] == ws)
            .cloned()
            .collect()
    }
}

/// Lumanu lists payables only by workspace, so the look-up before a create reads every page of
/// the workspace: it runs only when an earlier attempt of the step may have sent the create
/// (else a campaign of n creators costs n^2/100 list requests), and then still finds it.
#[tokio::test]
async fn lumanu_create_payable_looks_up_only_when_an_earlier_attempt_may_have_sent() {
    let env = env().await;
    let saga = Uuid::new_v4();
    let ws = Uuid::new_v4().to_string();
    let params = json!({"workspace_id": ws, "amount": 2_500, "currency": "USD",
                        "description": "Campaign fee", "payee": {"email": "creator@example.com"}});
    let mut c = ctx(saga, "lumanu_campaign_creator", "create_payable");
    c.effects = Arc::new(EarlierSendGuard(false));
    let first = done(env.start("lumanu.create_payable", &c, &params).await);
    assert_eq!(first["existing"], false);
    assert_eq!(
        env.payable_lists().await,
        0,
        "a first attempt does not list the workspace"
    );

    // An earlier attempt marked a send (its answer was lost): the next one looks, finds it.
    c.effects = Arc::new(EarlierSendGuard(true));
    c.attempt = 2;
    let again = done(env.start("lumanu.create_payable", &c, &params).await);
    assert_eq!(again["existing"], true);
    assert_eq!(again["payable_id"], first["payable_id"]);
    assert!(env.payable_lists().await >= 1, "the look-up ran");
    let payables = env.payables_of(&ws).await;
    assert_eq!(payables.len(), 1, "one payable: {payables:?}");
}

/// An effect guard that, while it grants the mark, lets an earlier attempt's create land at
/// Lumanu (the request that attempt sent just before its window closed).
#[derive(Debug)]
struct LateLandingGuard {
    lumanu: paysaga_providers::lumanu::LumanuClient,
    request: paysaga_providers::lumanu::CreatePayable,
}

#[async_trait::async_trait]
impl paysaga_core::EffectGuard for LateLandingGuard {
    async fn begin(&self, ctx: &StepContext) -> Result<paysaga_core::EffectPermit, StepOutcome> {
        self.lumanu
            .create_payable(&self.request)
            .await
            .expect("the earlier attempt's create lands");
        paysaga_core::Unguarded.begin(ctx).await
    }
}

/// The look-up of an earlier attempt's payable runs after this attempt's mark is granted: a
/// create of the earlier attempt that landed while the mark was being taken (its window
/// closing) is found, not created a second time.
#[tokio::test]
async fn lumanu_create_payable_looks_up_after_its_mark_so_a_late_earlier_create_is_found() {
    let env = env().await;
    let saga = Uuid::new_v4();
    let ws = Uuid::new_v4().to_string();
    let params = json!({"workspace_id": ws, "amount": 3_100, "currency": "USD",
                        "description": "Late fee", "payee": {"email": "creator@example.com"}});
    let mut c = ctx(saga, "lumanu_campaign_creator", "create_payable");
    let reference = format!("ps-{}", c.idempotency_key());
    let lumanu = env.clients.lumanu.clone().unwrap();
    let request = paysaga_providers::lumanu::CreatePayable {
        workspace_id: ws.clone(),
        payee_email: Some("creator@example.com".into()),
        payee_lumanu_id: None,
        amount: 3_100,
        description: format!("Late fee [{reference}]"),
        due_date: None,
        custom_fields: None,
    };
    c.effects = Arc::new(LateLandingGuard { lumanu, request });
    c.attempt = 2;
    let out = done(env.start("lumanu.create_payable", &c, &params).await);
    assert_eq!(
        out["existing"], true,
        "found the earlier attempt's payable: {out}"
    );
    let payables = env.payables_of(&ws).await;
    assert_eq!(payables.len(), 1, "one payable: {payables:?}");
}

// ---------------------------------------------------------------------------------------------
// Lumanu funding invoices (issue 11 item 9)

fn fund_params(ws: &str, amount: i64) -> Value {
    json!({"workspace_id": ws, "amount": amount, "currency": "USD", "description": "Prefund",
           "invoice": {"recipient_email": "ap@brand.example", "bill_to": "Brand",
                       "company_name": "Brand Inc", "company_address_one": "1 Main St"}})
}

impl Env {
    /// `GET /_sandbox/lumanu/objects`: every funding and payable.
    async fn lumanu_objects(&self) -> Value {
        let url = format!("{}/_sandbox/lumanu/objects", self.sandbox.base_url());
        self.http
            .get(url)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// Invoice fundings of workspace `ws`.
    async fn invoices(&self, ws: &str) -> Vec<Value> {
        self.lumanu_objects().await["fundings"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|f| f["workspace_id"] == ws && f["method"] == "invoice")
            .cloned()
            .collect()
    }

    /// Deposits into workspace `ws` in the ledger.
    async fn deposits(&self, ws: &str) -> Vec<Value> {
        self.movements("lumanu", "deposit")
            .await
            .into_iter()
            .filter(|e| e["account"] == ws)
            .collect()
    }
}

/// Lumanu creates the invoice but the answer is lost (timeout): before the fix the retry created
/// a second invoice, which the sandbox's finance team paid too (the workspace funded twice).
/// Now the retry finds the first invoice by the deposit carrying its reference.
#[tokio::test]
async fn lumanu_funding_invoice_created_before_a_timeout_is_found_not_invoiced_twice() {
    let env = env().await;
    let saga = Uuid::new_v4();
    let ws = Uuid::new_v4().to_string();
    let params = fund_params(&ws, 70_000);
    let guard = std::sync::Arc::new(RecordingGuard::default());
    let mut c = ctx(saga, "lumanu_prefund", "fund_invoice");
    c.effects = guard.clone();
    env.faults("timeout_after_effect@POST:/lumanu/api/rest/funding=1,hang_ms=4000")
        .await;
    let outcome = env.start("lumanu.fund_invoice", &c, &params).await;
    env.faults("none").await;
    match &outcome {
        StepOutcome::Retry { error, .. } => assert!(error.contains("funding invoice"), "{error}"),
        other => panic!("a timeout after the effect retries, got {other:?}"),
    }
    assert_eq!(
        *guard.calls.lock().unwrap(),
        ["begin"],
        "marked before sending; a timeout keeps the mark"
    );
    assert_eq!(env.invoices(&ws).await.len(), 1);
    // The finance team pays the invoice (the sandbox's `invoice_paid`, 200 ms).
    tokio::time::sleep(Duration::from_millis(600)).await;
    let found = done(env.start("lumanu.fund_invoice", &c, &params).await);
    assert_eq!(
        found["existing"], true,
        "found, not invoiced again: {found}"
    );
    let invoices = env.invoices(&ws).await;
    assert_eq!(invoices.len(), 1, "one invoice: {invoices:?}");
    assert_eq!(found["funding_id"], invoices[0]["id"]);
    assert_eq!(
        *guard.calls.lock().unwrap(),
        ["begin"],
        "nothing sent again"
    );
    // The saga goes on with that funding: one deposit, no alert.
    let (_, outcome) = env
        .until_done(
            "lumanu.await_deposit",
            &ctx(saga, "lumanu_prefund", "await_deposit"),
            &json!({"workspace_id": ws, "funding_id": found["funding_id"]}),
        )
        .await;
    let deposit = done(outcome);
    assert!(deposit.get("alerts").is_none(), "{deposit}");
    let deposits = env.deposits(&ws).await;
    assert_eq!(deposits.len(), 1, "deposits == invoices paid: {deposits:?}");
    assert_eq!(deposits[0]["amount"], 70_000);
}

/// An earlier attempt's invoice that was not paid yet cannot be found (Lumanu lists no
/// fundings), so a retry may create a second one; when both are paid, the deposit step reports
/// the other deposit as an alert instead of completing silently.
#[tokio::test]
async fn lumanu_second_funding_invoice_paid_for_the_same_saga_is_surfaced_as_an_alert() {
    let env = env().await;
    let saga = Uuid::new_v4();
    let ws = Uuid::new_v4().to_string();
    let params = fund_params(&ws, 33_000);
    let c = ctx(saga, "lumanu_prefund", "fund_invoice");
    let first = done(env.start("lumanu.fund_invoice", &c, &params).await);
    assert_eq!(first["existing"], false);
    // What a retried create leaves when its look-up ran before the first invoice was paid:
    // a second invoice with the same description (the same reference).
    let lumanu = env.clients.lumanu.as_ref().unwrap();
    let second = lumanu
        .create_invoice_funding(paysaga_providers::lumanu::InvoiceFunding {
            workspace_id: ws.clone(),
            amount: 33_000,
            amount_denomination: Some("us_cents".into()),
            description: s(&first, "description"),
            recipient_email: "ap@brand.example".into(),
            bill_to: "Brand".into(),
            company_name: "Brand Inc".into(),
            company_address_one: "1 Main St".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(600)).await;
    let (_, outcome) = env
        .until_done(
            "lumanu.await_deposit",
            &ctx(saga, "lumanu_prefund", "await_deposit"),
            &json!({"workspace_id": ws, "funding_id": first["funding_id"]}),
        )
        .await;
    let deposit = done(outcome);
    let deposits = env.deposits(&ws).await;
    assert_eq!(deposits.len(), 2, "the sandbox paid both invoices");
    let alerts = deposit["alerts"].as_array().expect("an alert").clone();
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    assert_eq!(alerts[0]["kind"], "duplicate_funding_deposit");
    assert_eq!(alerts[0]["detail"]["other_funding_id"], json!(second.id));
    assert_eq!(alerts[0]["detail"]["amount"], 33_000);
    let other = deposits
        .iter()
        .find(|d| d["reference"] != deposit["transfer_id"])
        .unwrap();
    assert_eq!(alerts[0]["detail"]["transfer_id"], other["reference"]);
    assert!(alerts[0]["message"]
        .as_str()
        .unwrap()
        .contains("funded twice"));
    // The engine turns each alert into a `saga_alert` history row.
    let entries = paysaga_core::alert_entries("await_deposit", 1, &deposit);
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].kind, paysaga_core::HistoryKind::SagaAlert);
    assert_eq!(entries[0].detail["alert"], "duplicate_funding_deposit");
}

/// A refused create (429, before Lumanu acted) withdraws the effect mark.
#[tokio::test]
async fn lumanu_fund_invoice_refused_before_acting_withdraws_its_mark() {
    let env = env().await;
    let ws = Uuid::new_v4().to_string();
    let guard = std::sync::Arc::new(RecordingGuard::default());
    let mut c = ctx(Uuid::new_v4(), "lumanu_prefund", "fund_invoice");
    c.effects = guard.clone();
    env.faults("error_rate@POST:/lumanu/api/rest/funding=1,rate_limit_share=1")
        .await;
    let refused = env
        .start("lumanu.fund_invoice", &c, &fund_params(&ws, 1_000))
        .await;
    env.faults("none").await;
    assert!(matches!(refused, StepOutcome::Retry { .. }), "{refused:?}");
    assert_eq!(*guard.calls.lock().unwrap(), ["begin", "not_sent"]);
    assert!(env.invoices(&ws).await.is_empty());
}

// ---------------------------------------------------------------------------------------------
// Identifiers in URLs (issue 11 item 12)

/// `workspace_id: ".."` made the client call `/workspace/../wallet` (= `/wallet`), another
/// endpoint. Every step kind refuses `.`/`..` identifiers at validation (so `start` refuses the
/// input before storing anything), and at run time.
#[tokio::test]
async fn dot_segment_identifiers_are_refused_before_any_request() {
    let env = env().await;
    let cases: [(&str, Value); 5] = [
        ("lumanu.fund_invoice", fund_params("..", 1_000)),
        (
            "lumanu.await_deposit",
            json!({"workspace_id": ".", "funding_id": null}),
        ),
        ("lumanu.approve_payable", json!({"payable_id": ".."})),
        ("blaaiz.await_verification", json!({"customer_id": ".."})),
        (
            "lean.create_intent",
            json!({"customer_id": "..", "destination_id": null, "amount": 100,
                   "currency": "SAR", "description": "x"}),
        ),
    ];
    for (kind, params) in cases {
        let Some(k) = env.kinds.get(kind) else {
            panic!("{kind} registered")
        };
        let err = k.validate(&params).expect_err(kind);
        assert!(err.contains("must be an identifier"), "{kind}: {err}");
    }
    // At run time too (a value from an earlier step's output), with no request sent.
    let before = env.lumanu_objects().await;
    let out = env
        .start(
            "lumanu.approve_payable",
            &ctx(Uuid::new_v4(), "lumanu_prefund", "approve_payable"),
            &json!({"payable_id": ".."}),
        )
        .await;
    assert!(failed(out).contains("must be an identifier"));
    assert_eq!(env.lumanu_objects().await, before);
    // The client itself never builds a path outside the identifier's segment.
    let lumanu = env.clients.lumanu.as_ref().unwrap();
    let err = lumanu.get_wallet("..").await.expect_err("refused");
    assert!(
        matches!(err, paysaga_providers::Error::InvalidRequest { .. }),
        "{err:?}"
    );
    let err = lumanu.get_payable("../funding").await.expect_err("404");
    assert_eq!(err.status(), Some(404), "stays one segment: {err:?}");
}
