//! Operators bring every saga to an honest end (issue 13 items 1, 2, 4, 10): `close` a parked
//! saga with the outcome checked at the provider, `reset` it to a step (input patched), a
//! `skip` that cannot break the saga, reasons required, and `audit` of every action with who
//! ran it. Through the real binary, against a real PostgreSQL, the sandbox process failing
//! payouts on purpose and a `paysaga worker` process.
#![allow(clippy::unwrap_used)]

mod support;

use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use paysaga_runtime::Engine;
use paysaga_store::SagaRecord;
use paysaga_testkit::TestDatabase;
use serde_json::{json, Value};
use support::processes::{free_port, log_dir, Sandbox, WorkerProcess};
use support::workflows::{control_engine, input};
use uuid::Uuid;

const BIN: &str = env!("CARGO_BIN_EXE_paysaga");

/// PostgreSQL, the sandbox and one worker process; an engine to start and read sagas.
struct Rig {
    db: TestDatabase,
    engine: Engine,
    sandbox: Sandbox,
    _worker: WorkerProcess,
    logs: PathBuf,
    run: String,
}

impl Rig {
    async fn new(name: &str) -> Rig {
        let db = paysaga_testkit::database().await;
        let engine = control_engine(db.url()).await;
        let logs = log_dir(name);
        let port = free_port();
        let sandbox = Sandbox::start(port, "none", &logs.join("sandbox.log"));
        let worker = WorkerProcess::start(db.url(), port, sandbox.port, "w1", &logs.join("w1.log"));
        Rig {
            db,
            engine,
            sandbox,
            _worker: worker,
            logs,
            run: Uuid::new_v4().simple().to_string()[..8].to_string(),
        }
    }

    /// Starts saga `n` of `workflow` with its example input changed by `edit`.
    async fn start(&self, workflow: &str, n: usize, edit: impl FnOnce(&mut Value)) -> Uuid {
        let mut v = input(&self.engine, workflow, &self.run, n).await;
        edit(&mut v);
        self.engine
            .start(workflow, v, Some(&format!("{workflow}-{}-{n}", self.run)))
            .await
            .unwrap()
            .saga_id
    }

    async fn saga(&self, id: Uuid) -> SagaRecord {
        self.engine.store().saga(id).await.unwrap().unwrap()
    }

    async fn wait_status(&self, id: Uuid, status: &str, within: Duration) -> SagaRecord {
        let deadline = Instant::now() + within;
        loop {
            let s = self.saga(id).await;
            if s.status.as_str() == status {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "saga {id} is {} at step #{} (error {:?}), not {status}, after {within:?}; logs in {}",
                s.status,
                s.step_index + 1,
                s.last_error,
                self.logs.display()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn paysaga(&self, args: &[&str]) -> Output {
        paysaga(self.db.url(), args)
    }

    /// The sandbox's money movements of one kind with this reference.
    async fn ledger(&self, kind: &str, reference: &str) -> Vec<Value> {
        self.sandbox
            .ledger()
            .await
            .into_iter()
            .filter(|e| e["kind"] == kind && e["reference"] == reference)
            .collect()
    }

    /// The history rows of one kind, oldest first: (actor, step, error, detail).
    async fn history(
        &self,
        id: Uuid,
        kind: &str,
    ) -> Vec<(Option<String>, Option<String>, Option<String>, Value)> {
        self.engine
            .store()
            .history(id)
            .await
            .unwrap()
            .into_iter()
            .filter(|h| h.kind.as_str() == kind)
            .map(|h| (h.actor, h.step, h.error, h.detail.unwrap_or(Value::Null)))
            .collect()
    }
}

fn paysaga(db_url: &str, args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env("DATABASE_URL", db_url)
        .env("PAYSAGA_OPERATOR", "ops:alice")
        .env("USER", "alice-os")
        .env("RUST_LOG", "warn")
        .output()
        .unwrap()
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "command failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).unwrap()
}

/// The command failed; its stderr.
fn refused(out: &Output) -> String {
    assert!(
        !out.status.success(),
        "command should have been refused; stdout: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8(out.stderr.clone()).unwrap()
}

const FAILING_ACCOUNT: &str = "0000000000";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parked_lean_rejected_by_bank_and_blaaiz_failed_payouts_end_closed_with_the_declared_outcome(
) {
    let rig = Rig::new("ops-close").await;
    let run = rig.run.clone();
    let lean = rig
        .start("lean_payout", 0, |v| {
            // Lean's limit: 32 characters.
            v["description"] = json!(format!("REJECTED_BY_BANK {run}"));
        })
        .await;
    let blaaiz = rig
        .start("blaaiz_kyc_payout", 1, |v| {
            v["payout"]["account_number"] = json!(FAILING_ACCOUNT);
        })
        .await;
    let lean_parked = rig
        .wait_status(lean, "needs_operator", Duration::from_secs(90))
        .await;
    let blaaiz_parked = rig
        .wait_status(blaaiz, "needs_operator", Duration::from_secs(90))
        .await;

    // The stored error and `show` name the same actions, close first.
    for (id, parked) in [(lean, &lean_parked), (blaaiz, &blaaiz_parked)] {
        let error = parked.last_error.clone().unwrap();
        assert!(
            error.contains("`close`") && error.contains("`reset`"),
            "{error}"
        );
        let shown = ok(&rig.paysaga(&["show", &id.to_string()]));
        assert!(
            shown.contains("parked for an operator (see error): close, reset, resume or skip"),
            "{shown}"
        );
        // `cancel` is refused and says what to do instead.
        let err = refused(&rig.paysaga(&["cancel", &id.to_string(), "--reason", "payee gone"]));
        assert!(err.contains("`close`"), "{err}");
    }

    // The operator looked at the saga when it was parked at await_payment; a stale view
    // (here: a status it does not have) is refused.
    let err = refused(&rig.paysaga(&[
        "close",
        &lean.to_string(),
        "--outcome",
        "not-paid",
        "--reason",
        "bank rejected",
        "--expect-status",
        "waiting",
    ]));
    assert!(err.contains("no longer where you saw it"), "{err}");
    // A close without a reason, and one with --compensate (unconfirmed), are refused.
    let err = refused(&rig.paysaga(&[
        "close",
        &lean.to_string(),
        "--outcome",
        "not-paid",
        "--reason",
        " ",
    ]));
    assert!(err.contains("--reason must say why"), "{err}");
    let err = refused(&rig.paysaga(&[
        "close",
        &lean.to_string(),
        "--outcome",
        "not-paid",
        "--reason",
        "x",
        "--compensate",
    ]));
    // create_intent (irreversible) completed: it cannot be undone, so declaring not paid and
    // undoing what came before needs the operator's confirmation that nothing was paid.
    assert!(
        err.contains("--confirm-not-sent")
            && err.contains("irreversible step create_intent completed"),
        "{err}"
    );
    assert_eq!(rig.saga(lean).await.status.as_str(), "needs_operator");

    let out = ok(&rig.paysaga(&[
        "close",
        &lean.to_string(),
        "--outcome",
        "not-paid",
        "--reason",
        "REJECTED_BY_BANK confirmed with Lean, ticket 42",
        "--expect-status",
        "needs_operator",
        "--expect-step",
        "await_payment",
    ]));
    assert!(out.contains("closed"), "{out}");
    ok(&rig.paysaga(&[
        "close",
        &blaaiz.to_string(),
        "--outcome",
        "not-paid",
        "--reason",
        "payout FAILED and refunded, checked on the Blaaiz dashboard",
        "--expect-status",
        "needs_operator",
    ]));

    for (id, reason) in [
        (lean, "REJECTED_BY_BANK confirmed with Lean, ticket 42"),
        (
            blaaiz,
            "payout FAILED and refunded, checked on the Blaaiz dashboard",
        ),
    ] {
        let s = rig.saga(id).await;
        assert_eq!(s.status.as_str(), "closed");
        assert_eq!(s.closed_outcome, Some(paysaga_core::ClosedOutcome::NotPaid));
        assert!(s.run_at.is_none() && s.owner.is_none() && s.finished_at.is_some());
        let closed = rig.history(id, "saga_closed").await;
        assert_eq!(closed.len(), 1);
        let (actor, _, _, detail) = &closed[0];
        assert_eq!(actor.as_deref(), Some("ops:alice"));
        assert_eq!(detail["reason"], reason);
        assert_eq!(detail["outcome"], "not_paid");
        assert_eq!(detail["compensate"], false);
        assert_eq!(detail["from_status"], "needs_operator");
        assert_eq!(detail["os_user"], "alice-os");
        let shown = ok(&rig.paysaga(&["show", &id.to_string()]));
        assert!(
            shown.contains("closed (outcome declared by the operator: not_paid)"),
            "{shown}"
        );
        // Ended: closing again is refused, and says why.
        let err = refused(&rig.paysaga(&[
            "close",
            &id.to_string(),
            "--outcome",
            "paid",
            "--reason",
            "again",
        ]));
        assert!(err.contains("already ended"), "{err}");
    }
    assert_eq!(
        rig.saga(lean).await.closed_outcome.map(|o| o.as_str()),
        Some("not_paid")
    );

    // The ledger agrees with the declared outcome: the bank debited nothing for the Lean
    // payment; the Blaaiz payout left the wallet and came back.
    let payment_id = lean_parked.outputs["create_intent"]["intent_id"]
        .as_str()
        .map(str::to_string);
    assert!(payment_id.is_some(), "{}", lean_parked.outputs);
    let all = rig.sandbox.ledger().await;
    assert!(
        all.iter().all(|e| e["kind"] != "payment"),
        "a rejected Lean payment moved money: {all:#?}"
    );
    let txn = blaaiz_parked.outputs["payout"]["transaction_id"]
        .as_str()
        .unwrap();
    assert_eq!(rig.ledger("payout", txn).await.len(), 1, "{all:#?}");
    assert_eq!(rig.ledger("reversal", txn).await.len(), 1, "{all:#?}");

    // The audit lists the closes and the refused actions, with who ran them.
    let audit: Vec<Value> =
        serde_json::from_str(&ok(&rig.paysaga(&["audit", "--json", "--since", "1h"]))).unwrap();
    let of = |saga: Uuid, kind: &str| -> Vec<&Value> {
        audit
            .iter()
            .filter(|r| r["saga_id"] == saga.to_string() && r["kind"] == kind)
            .collect()
    };
    assert_eq!(of(lean, "saga_closed").len(), 1, "{audit:#?}");
    assert_eq!(of(blaaiz, "saga_closed").len(), 1, "{audit:#?}");
    let lean_refused = of(lean, "operator_refused");
    let actions: Vec<&str> = lean_refused
        .iter()
        .map(|r| r["detail"]["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions.iter().filter(|a| **a == "close").count(),
        4,
        "{lean_refused:#?}"
    );
    assert!(actions.contains(&"cancel"), "{lean_refused:#?}");
    assert!(lean_refused
        .iter()
        .all(|r| r["actor"] == "ops:alice" && r["detail"]["os_user"] == "alice-os"));
    assert!(lean_refused.iter().any(|r| r["error"]
        .as_str()
        .unwrap()
        .contains("no longer where you saw it")));
    assert!(audit.iter().all(|r| r["kind"] != "saga_started"));
    let text = ok(&rig.paysaga(&["audit", "--actor", "ops:alice"]));
    assert!(
        text.contains("refused close") && text.contains("saga_closed") && text.contains("alice-os"),
        "{text}"
    );
    let none: Vec<Value> =
        serde_json::from_str(&ok(&rig.paysaga(&["audit", "--json", "--actor", "ops:bob"])))
            .unwrap();
    assert!(none.is_empty(), "{none:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_runs_the_failed_blaaiz_payout_again_with_a_patched_account_after_confirm_not_sent() {
    let rig = Rig::new("ops-reset").await;
    let id = rig
        .start("blaaiz_kyc_payout", 0, |v| {
            v["payout"]["account_number"] = json!(FAILING_ACCOUNT);
        })
        .await;
    let parked = rig
        .wait_status(id, "needs_operator", Duration::from_secs(90))
        .await;
    let first_txn = parked.outputs["payout"]["transaction_id"]
        .as_str()
        .unwrap()
        .to_string();
    let sid = id.to_string();
    let patch = r#"{"payout": {"account_number": "1234567890"}}"#;

    // The payout completed (money left, then came back): running it again needs the operator
    // to confirm, and the refusal says which step and what may have been sent.
    let err = refused(&rig.paysaga(&[
        "reset",
        &sid,
        "--to-step",
        "payout",
        "--input-patch",
        patch,
        "--reason",
        "account corrected",
    ]));
    assert!(
        err.contains("irreversible step payout completed") && err.contains("--confirm-not-sent"),
        "{err}"
    );
    // A patch the workflow's validation refuses is refused too (amount must be an integer).
    let err = refused(&rig.paysaga(&[
        "reset",
        &sid,
        "--to-step",
        "payout",
        "--input-patch",
        r#"{"payout": {"amount": "lots"}}"#,
        "--reason",
        "x",
        "--confirm-not-sent",
    ]));
    assert!(err.contains("invalid input"), "{err}");
    let err = refused(&rig.paysaga(&["reset", &sid, "--to-step", "payout", "--reason", ""]));
    assert!(err.contains("--reason must say why"), "{err}");
    assert_eq!(
        rig.saga(id).await.input["payout"]["account_number"],
        FAILING_ACCOUNT
    );

    let out = ok(&rig.paysaga(&[
        "reset",
        &sid,
        "--to-step",
        "payout",
        "--input-patch",
        patch,
        "--reason",
        "payee corrected the bank account; first payout FAILED and was refunded",
        "--confirm-not-sent",
        "--expect-status",
        "needs_operator",
    ]));
    assert!(out.contains("reset"), "{out}");
    let done = rig
        .wait_status(id, "completed", Duration::from_secs(60))
        .await;

    // The patched input, a new payout (new reference), earlier outputs kept.
    assert_eq!(done.input["payout"]["account_number"], "1234567890");
    assert_eq!(
        done.input["payout"]["amount"],
        parked.input["payout"]["amount"]
    );
    assert_eq!(
        done.outputs["create_customer"],
        parked.outputs["create_customer"]
    );
    let second_txn = done.outputs["payout"]["transaction_id"].as_str().unwrap();
    assert_ne!(second_txn, first_txn);
    assert_eq!(
        done.outputs["await_payout"]["status"]
            .as_str()
            .map(str::to_uppercase)
            .as_deref(),
        Some("SUCCESSFUL")
    );
    assert_eq!(done.key_generation("payout"), 1);
    assert_eq!(done.key_generation("create_customer"), 0);
    // Ledger: the first payout and its refund, then the second payout, once.
    assert_eq!(rig.ledger("payout", &first_txn).await.len(), 1);
    assert_eq!(rig.ledger("reversal", &first_txn).await.len(), 1);
    assert_eq!(rig.ledger("payout", second_txn).await.len(), 1);
    assert!(rig.ledger("reversal", second_txn).await.is_empty());

    // History: the reset with its step, patch and reason; the refused tries before it.
    let resets = rig.history(id, "operator_reset").await;
    assert_eq!(resets.len(), 1);
    let (actor, step, _, detail) = &resets[0];
    assert_eq!(
        (actor.as_deref(), step.as_deref()),
        (Some("ops:alice"), Some("payout"))
    );
    assert_eq!(
        detail["input_patch"],
        serde_json::from_str::<Value>(patch).unwrap()
    );
    assert_eq!(detail["confirm_not_sent"], true);
    assert_eq!(detail["from_step"], "await_payout");
    assert_eq!(detail["os_user"], "alice-os");
    assert!(detail["reason"].as_str().unwrap().contains("corrected"));
    let refusals = rig.history(id, "operator_refused").await;
    assert_eq!(refusals.len(), 3, "{refusals:#?}");
    assert!(refusals[0]
        .2
        .as_deref()
        .unwrap()
        .contains("--confirm-not-sent"));
    let completed_after_reset = rig.history(id, "step_completed").await;
    assert_eq!(
        completed_after_reset
            .iter()
            .filter(|(_, s, _, _)| s.as_deref() == Some("payout"))
            .count(),
        2,
        "payout ran again"
    );
    // A completed saga cannot be reset.
    let err = refused(&rig.paysaga(&[
        "reset",
        &sid,
        "--to-step",
        "payout",
        "--reason",
        "again",
        "--confirm-not-sent",
    ]));
    assert!(err.contains("it has ended"), "{err}");
}

const TWO_STEPS: &str = r#"
name = "two_steps"
version = 1
[[steps]]
name = "first"
kind = "noop.sleep"
params = { delay_ms = "$.input.delay_ms" }
[[steps]]
name = "second"
kind = "noop.sleep"
params = { delay_ms = "$.steps.first.slept_ms" }
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skip_with_an_output_missing_a_referenced_field_and_actions_without_a_reason_are_refused() {
    let db = paysaga_testkit::database().await;
    let engine = control_engine(db.url()).await;
    engine
        .submit_definition(&paysaga_core::Definition::from_toml(TWO_STEPS).unwrap())
        .await
        .unwrap();
    // No worker runs: the saga stays scheduled at its first step.
    let id = engine
        .start("two_steps", json!({"delay_ms": 0}), None)
        .await
        .unwrap()
        .saga_id;
    let sid = id.to_string();
    let url = db.url();

    let err = refused(&paysaga(
        url,
        &[
            "skip",
            &sid,
            "--step",
            "first",
            "--output",
            "{}",
            "--reason",
            "done by hand",
        ],
    ));
    assert!(
        err.contains("step second params.delay_ms: $.steps.first.slept_ms"),
        "{err}"
    );
    let s = engine.store().saga(id).await.unwrap().unwrap();
    assert_eq!((s.status.as_str(), s.step_index), ("scheduled", 0));

    // Every action needs a reason: skip, deliver, retry, resume, cancel, close, reset.
    for args in [
        vec![
            "skip",
            &sid,
            "--step",
            "first",
            "--output",
            r#"{"slept_ms": 0}"#,
            "--reason",
            "",
        ],
        vec!["deliver", &sid, "--event", "x", "--reason", " "],
        vec!["retry", &sid, "--reason", ""],
        vec!["resume", &sid, "--reason", ""],
        vec!["cancel", &sid, "--reason", ""],
        vec!["close", &sid, "--outcome", "paid", "--reason", ""],
        vec!["reset", &sid, "--to-step", "first", "--reason", ""],
    ] {
        let err = refused(&paysaga(url, &args));
        assert!(err.contains("--reason must say why"), "{args:?}: {err}");
    }
    let s = engine.store().saga(id).await.unwrap().unwrap();
    assert_eq!((s.status.as_str(), s.step_index), ("scheduled", 0));

    // An output with what the next step reads is accepted.
    ok(&paysaga(
        url,
        &[
            "skip",
            &sid,
            "--step",
            "first",
            "--output",
            r#"{"slept_ms": 0}"#,
            "--reason",
            "ran by hand",
        ],
    ));
    let s = engine.store().saga(id).await.unwrap().unwrap();
    assert_eq!((s.status.as_str(), s.step_index), ("scheduled", 1));
    assert_eq!(s.outputs["first"], json!({"slept_ms": 0}));

    // The refused skip and the refusals without a reason that reached the engine are audited.
    let audit: Vec<Value> = serde_json::from_str(&ok(&paysaga(url, &["audit", "--json"]))).unwrap();
    let refused_actions: Vec<&str> = audit
        .iter()
        .filter(|r| r["kind"] == "operator_refused")
        .map(|r| r["detail"]["action"].as_str().unwrap())
        .collect();
    for action in ["skip", "deliver", "close", "reset"] {
        assert!(refused_actions.contains(&action), "{action}: {audit:#?}");
    }
    assert!(audit
        .iter()
        .any(|r| r["kind"] == "operator_skip" && r["detail"]["reason"] == "ran by hand"));
}

/// Runs `args` until it is not refused because a worker holds the saga right now (an attempt
/// of its step is running), at most 30 s.
fn paysaga_when_unheld(rig: &Rig, args: &[&str]) -> Output {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = rig.paysaga(args);
        let err = String::from_utf8_lossy(&out.stderr).to_string();
        if out.status.success() || !err.contains("running") || Instant::now() > deadline {
            return out;
        }
        std::thread::sleep(Duration::from_millis(150));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_with_compensate_cancels_the_payable_at_the_provider_then_ends_closed_with_the_outcome(
) {
    let rig = Rig::new("ops-close-compensate").await;
    // Approving (and cancelling) payables fails at the provider: the saga retries approve.
    rig.sandbox
        .set_faults("error_rate@POST:/lumanu/api/rest/payable/=1")
        .await;
    let id = rig.start("lumanu_prefund", 0, |_| {}).await;
    let deadline = Instant::now() + Duration::from_secs(90);
    let retrying = loop {
        let s = rig.saga(id).await;
        if s.status.as_str() == "retrying" && s.step_index == 4 {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "saga {id} is {} at step #{} ({:?}), not retrying approve_payable; logs in {}",
            s.status,
            s.step_index + 1,
            s.last_error,
            rig.logs.display()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let payable = retrying.outputs["create_payable"]["payable_id"]
        .as_str()
        .unwrap()
        .to_string();
    let ids = id.to_string();

    // A stale view is refused (exit 4) and nothing changes.
    let out = rig.paysaga(&[
        "close",
        &ids,
        "--outcome",
        "not-paid",
        "--reason",
        "payee withdrew",
        "--compensate",
        "--expect-step",
        "pay_from_balance",
    ]);
    assert_eq!(out.status.code(), Some(4));
    assert!(refused(&out).contains("no longer where you saw it"));
    // --confirm-not-sent goes with --compensate only (a usage error).
    let out = rig.paysaga(&[
        "close",
        &ids,
        "--outcome",
        "not-paid",
        "--reason",
        "x",
        "--confirm-not-sent",
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", refused(&out));

    let out = ok(&paysaga_when_unheld(
        &rig,
        &[
            "close",
            &ids,
            "--outcome",
            "not-paid",
            "--reason",
            "payee withdrew, ticket 7",
            "--compensate",
            "--expect-step",
            "approve_payable",
        ],
    ));
    assert!(
        out.contains("closing:") && out.contains("compensating"),
        "{out}"
    );
    // The cancel fails at the provider too: the compensation retries, the request stays.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let s = rig.saga(id).await;
        if s.status.as_str() == "compensating" && s.attempt >= 1 {
            assert_eq!(s.step_index, 3, "create_payable is undone");
            let req = s.close_requested.clone().unwrap();
            assert_eq!(
                (req.actor.as_str(), req.outcome.as_str()),
                ("ops:alice", "not_paid")
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "saga {id} is {} ({:?}); logs in {}",
            s.status,
            s.last_error,
            rig.logs.display()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let shown = ok(&rig.paysaga(&["show", &ids]));
    assert!(
        shown.contains("closing   ops:alice asked")
            && shown.contains("to close it as not_paid once its completed steps are undone"),
        "{shown}"
    );
    // Cancel and a second close request are refused and say what to do instead.
    let out = rig.paysaga(&["cancel", &ids, "--reason", "stop"]);
    assert_eq!(out.status.code(), Some(4));
    let err = refused(&out);
    assert!(
        err.contains("nothing to cancel") && err.contains("without --compensate"),
        "{err}"
    );
    let out = rig.paysaga(&[
        "close",
        &ids,
        "--outcome",
        "paid",
        "--reason",
        "y",
        "--compensate",
    ]);
    assert_eq!(out.status.code(), Some(4));
    assert!(refused(&out).contains("already asked for it"));

    // The provider recovers: the payable is cancelled and the saga ends closed.
    let http = reqwest::Client::new();
    let on = http
        .put(rig.sandbox.url("/_sandbox/requests/recording"))
        .body("on")
        .send()
        .await
        .unwrap();
    assert!(on.status().is_success());
    rig.sandbox.set_faults("none").await;
    let closed = rig.wait_status(id, "closed", Duration::from_secs(60)).await;
    assert_eq!(
        closed.closed_outcome,
        Some(paysaga_core::ClosedOutcome::NotPaid)
    );
    assert!(closed.close_requested.is_none() && closed.finished_at.is_some());
    let requested = rig.history(id, "close_requested").await;
    assert_eq!(requested.len(), 1);
    let (actor, step, _, detail) = &requested[0];
    assert_eq!(actor.as_deref(), Some("ops:alice"));
    assert_eq!(step.as_deref(), Some("approve_payable"));
    assert_eq!(detail["outcome"], "not_paid");
    assert_eq!(detail["compensate"], true);
    assert_eq!(detail["undo"], json!(["create_payable"]));
    assert_eq!(detail["reason"], "payee withdrew, ticket 7");
    assert_eq!(detail["os_user"], "alice-os");
    let compensated = rig.history(id, "step_compensated").await;
    assert_eq!(compensated.len(), 1);
    assert_eq!(compensated[0].1.as_deref(), Some("create_payable"));
    let ended = rig.history(id, "saga_closed").await;
    assert_eq!(ended.len(), 1);
    let (actor, _, _, detail) = &ended[0];
    assert_eq!(
        *actor, None,
        "written by the worker that finished the unwind"
    );
    assert_eq!(
        (
            &detail["outcome"],
            &detail["compensate"],
            &detail["requested_by"]
        ),
        (&json!("not_paid"), &json!(true), &json!("ops:alice"))
    );
    assert!(rig.history(id, "saga_compensated").await.is_empty());
    // At the provider: the payable was cancelled, nothing was paid.
    let exchanges: Vec<Value> = http
        .get(rig.sandbox.url("/_sandbox/requests"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let cancel = format!("/payable/{payable}/cancel");
    assert!(
        exchanges.iter().any(|x| x["method"] == "POST"
            && x["path"].as_str().is_some_and(|p| p.ends_with(&cancel))
            && x["status"].as_u64().is_some_and(|c| c < 300)),
        "no successful cancel of payable {payable}: {exchanges:#?}"
    );
    let all = rig.sandbox.ledger().await;
    assert!(
        all.iter().all(|e| e["kind"] != "payment"),
        "a closed, not paid saga paid: {all:#?}"
    );
    let shown = ok(&rig.paysaga(&["show", &ids]));
    assert!(
        shown.contains("closed (outcome declared by the operator: not_paid)")
            && !shown.contains("closing   "),
        "{shown}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_with_compensate_after_a_payout_acted_is_refused_as_paid_and_needs_confirmation_as_not_paid(
) {
    let rig = Rig::new("ops-close-compensate-payout").await;
    let id = rig
        .start("blaaiz_kyc_payout", 0, |v| {
            v["payout"]["account_number"] = json!(FAILING_ACCOUNT);
        })
        .await;
    rig.wait_status(id, "needs_operator", Duration::from_secs(90))
        .await;
    let ids = id.to_string();
    let out = rig.paysaga(&[
        "close",
        &ids,
        "--outcome",
        "paid",
        "--reason",
        "r",
        "--compensate",
        "--confirm-not-sent",
    ]);
    assert_eq!(out.status.code(), Some(4));
    let err = refused(&out);
    assert!(
        err.contains("irreversible step payout completed")
            && err.contains("as paid without --compensate"),
        "{err}"
    );
    let out = rig.paysaga(&[
        "close",
        &ids,
        "--outcome",
        "not-paid",
        "--reason",
        "r",
        "--compensate",
    ]);
    assert_eq!(out.status.code(), Some(4));
    assert!(refused(&out).contains("--confirm-not-sent"));
    assert_eq!(rig.saga(id).await.status.as_str(), "needs_operator");
    // Confirmed: no step of this workflow can be undone, so it is closed at once.
    let out = ok(&rig.paysaga(&[
        "close",
        &ids,
        "--outcome",
        "not-paid",
        "--reason",
        "payout FAILED and refunded",
        "--compensate",
        "--confirm-not-sent",
        "--expect-status",
        "needs_operator",
    ]));
    assert!(out.contains("there was nothing to undo"), "{out}");
    let s = rig.saga(id).await;
    assert_eq!(
        (s.status.as_str(), s.closed_outcome),
        ("closed", Some(paysaga_core::ClosedOutcome::NotPaid))
    );
    let closed = rig.history(id, "saga_closed").await;
    assert_eq!(closed.len(), 1);
    assert_eq!(closed[0].3["compensate"], true);
    assert_eq!(closed[0].3["confirm_not_sent"], true);
    assert_eq!(rig.history(id, "operator_refused").await.len(), 2);
}
