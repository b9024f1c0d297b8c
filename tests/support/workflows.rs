//! The three payout workflows as the end-to-end tests run them: the definition files of
//! `workflows/` at test-scale timings, and per-saga inputs made from the example inputs.
#![allow(dead_code, clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use paysaga_core::{Attempts, Definition};
use serde_json::{json, Value};

/// The example document file (under `workflows/examples/documents/`) and content type of a
/// Blaaiz `file_category`.
pub fn example_document(category: &str) -> (&'static str, &'static str) {
    match category {
        "identity" => ("passport-front.png", "image/png"),
        "identity_back" => ("passport-back.png", "image/png"),
        "proof_of_address" => ("utility-bill.pdf", "application/pdf"),
        other => panic!("no example document for {other}"),
    }
}

/// The Lumanu workspace of saga `n` of run `run`.
pub fn lumanu_workspace(run: &str, n: usize) -> String {
    uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, format!("{run}-{n}").as_bytes()).to_string()
}

/// An engine on `url` (migrated) that starts and reads sagas of the three workflows, submitted
/// at test-scale timings; it knows every provider kind for validation only: steps run in the
/// worker processes.
pub async fn control_engine(url: &str) -> paysaga_runtime::Engine {
    use paysaga_store::Store;
    let store = paysaga_store::PgStore::connect(url).await.unwrap();
    store.migrate().await.unwrap();
    let mut registry = paysaga_runtime::Registry::new();
    registry.register(paysaga_runtime::noop::Sleep);
    for kind in paysaga_providers::steps::validation_kinds() {
        registry.register_arc(kind);
    }
    let engine = paysaga_runtime::Engine::new(std::sync::Arc::new(store), registry);
    for workflow in WORKFLOWS {
        engine
            .submit_definition(&test_definition(workflow))
            .await
            .unwrap();
    }
    engine
}

/// The shipped payout workflows.
pub const WORKFLOWS: [&str; 3] = ["lumanu_prefund", "blaaiz_kyc_payout", "lean_payout"];

pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

/// A workflow file with test-scale timings: the same steps, kinds and parameters, but retries
/// start at 200 ms (capped at 2 s) and waits poll every second, so that a dropped webhook or a
/// run of injected errors costs seconds, not the production minutes. (Changing timings by
/// editing the definition is what a payments team does too.)
pub fn test_definition(workflow: &str) -> Definition {
    let text = std::fs::read_to_string(repo().join(format!("workflows/{workflow}.toml"))).unwrap();
    let mut def = Definition::from_toml(&text).unwrap();
    for step in &mut def.steps {
        step.retry.initial_delay = Duration::from_millis(200);
        step.retry.max_delay = Duration::from_secs(2);
        if let Attempts::Limited(n) = step.retry.max_attempts {
            step.retry.max_attempts = Attempts::Limited(n.max(30));
        }
        step.poll_every = Duration::from_secs(1);
    }
    def
}

/// The input of saga `n` of `workflow`: the example input with fields made unique per saga
/// (emails, user ids, accounts, descriptions), small amounts; the Blaaiz KYC documents are
/// stored in `engine` first (one set per saga; retried while the database is away).
pub async fn input(engine: &paysaga_runtime::Engine, workflow: &str, run: &str, n: usize) -> Value {
    // lean_payout_manual takes lean_payout's input (same steps; only the authorisation differs).
    let example = match workflow {
        "lean_payout_manual" => "lean_payout",
        other => other,
    };
    let text =
        std::fs::read_to_string(repo().join(format!("workflows/examples/{example}.json"))).unwrap();
    let mut v: Value = serde_json::from_str(&text).unwrap();
    match workflow {
        "lumanu_prefund" => {
            // A workspace per saga (the sandbox opens one on first use): the look-before-create
            // scans a workspace's payables, and one shared workspace makes a long run quadratic.
            v["workspace_id"] = json!(lumanu_workspace(run, n));
            v["amount"] = json!(1000 + n as i64);
            v["description"] = json!(format!("creator fee {run}-{n}"));
            v["payee"] = json!({"email": format!("creator-{run}-{n}@example.com")});
        }
        "blaaiz_kyc_payout" => {
            v["customer"]["email"] = json!(format!("kyc-{run}-{n}@example.com"));
            for doc in v["documents"].as_array_mut().unwrap() {
                let (file, content_type) = example_document(doc["file_category"].as_str().unwrap());
                let bytes =
                    std::fs::read(repo().join("workflows/examples/documents").join(file)).unwrap();
                let mut failures = 0u32;
                let id = loop {
                    match engine.put_document(bytes.clone(), content_type).await {
                        Ok(id) => break id,
                        Err(e) => {
                            failures += 1;
                            assert!(failures < 600, "put_document refused for 2 minutes: {e}");
                            tokio::time::sleep(Duration::from_millis(200)).await
                        }
                    }
                };
                doc["document_id"] = json!(id);
            }
            v["payout"]["amount"] = json!(10_000 + n as i64);
            v["payout"]["account_number"] = json!(format!("{:010}", 1_000_000 + n));
        }
        "lean_payout" | "lean_payout_manual" => {
            v["app_user_id"] = json!(format!("user-{run}-{n}"));
            // Twenty payees: Lean links every destination to every customer's bank account
            // (as the sandbox does), so a destination per saga would grow quadratically.
            let payee = n % 20;
            v["destination"]["iban"] = json!(format!("AE0703312345678{:08}", payee));
            v["destination"]["account_number"] = json!(format!("99{:014}", payee));
            v["destination"]["name"] = json!(format!("Payee {payee} LLC"));
            v["amount"] = json!(2_000 + n as i64);
            v["description"] = json!(format!("invoice {run}-{n}"));
        }
        other => panic!("unknown workflow {other}"),
    }
    v
}
