//! What an operator sees of a saga, through the real binary against `paysaga sandbox` and
//! `paysaga worker` processes (issue 13 items 6, 7, 13): a saga is found from any provider id
//! its steps returned (`list --ref`); `show` prints what the provider last said per step and
//! `show --follow` streams the timeline; `deliver` says what the step did with the event; a
//! saga no live worker can run is reported by `show`, `list --stuck-for` and a metric.
#![allow(clippy::unwrap_used)]

mod support;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use paysaga_runtime::Engine;
use paysaga_store::SagaRecord;
use paysaga_testkit::TestDatabase;
use support::processes::{free_port, log_dir, Sandbox, WorkerProcess, BIN};
use support::workflows::{control_engine, input, test_definition, WORKFLOWS};
use uuid::Uuid;

/// PostgreSQL, a sandbox process (with its own fault spec and time scale) and an engine that
/// starts and reads sagas; steps run in worker processes.
struct Rig {
    db: TestDatabase,
    engine: Engine,
    sandbox: Sandbox,
    worker_port: u16,
    logs: PathBuf,
    run: String,
}

/// `paysaga sandbox` with `faults` and every scripted delay multiplied by `time_scale`.
fn sandbox(webhook_port: u16, faults: &str, time_scale: f64, log: &Path) -> Sandbox {
    let port = free_port();
    let child = Command::new(BIN)
        .args([
            "sandbox",
            "--addr",
            &format!("127.0.0.1:{port}"),
            "--dev-credentials",
            "--webhook-base",
            &format!("http://127.0.0.1:{webhook_port}"),
            "--faults",
            faults,
            "--time-scale",
            &time_scale.to_string(),
        ])
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap();
    let sandbox = Sandbox { child, port };
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "sandbox did not start; log {}",
            log.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    sandbox
}

impl Rig {
    async fn new(name: &str, faults: &str, time_scale: f64) -> Rig {
        let db = paysaga_testkit::database().await;
        let engine = control_engine(db.url()).await;
        let logs = log_dir(name);
        let worker_port = free_port();
        let sandbox = sandbox(worker_port, faults, time_scale, &logs.join("sandbox.log"));
        Rig {
            db,
            engine,
            sandbox,
            worker_port,
            logs,
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

    /// Waits until `done(saga)`; panics with the saga and the logs' directory.
    async fn wait_for(
        &self,
        id: Uuid,
        what: &str,
        within: Duration,
        done: impl Fn(&SagaRecord) -> bool,
    ) {
        let deadline = Instant::now() + within;
        loop {
            let s = self.saga(id).await;
            if done(&s) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "saga {id} is not {what} after {within:?}: {} at step #{} attempt {} error {:?} (logs in {})",
                s.status,
                s.step_index + 1,
                s.attempt,
                s.last_error,
                self.logs.display()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// `paysaga ARGS` against the rig's database.
    fn paysaga(&self, args: &[&str]) -> Output {
        Command::new(BIN)
            .args(args)
            .env("DATABASE_URL", self.db.url())
            .env("PAYSAGA_OPERATOR", "ops:alice")
            .env("RUST_LOG", "warn")
            .output()
            .unwrap()
    }

    /// `paysaga ARGS`, which must succeed; its stdout.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.paysaga(args);
        assert!(
            out.status.success(),
            "paysaga {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }
}

/// The saga ids `paysaga list` printed (first column of each row after the header).
fn listed(stdout: &str) -> Vec<String> {
    stdout
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

fn output_id(saga: &SagaRecord, step: &str, field: &str) -> String {
    saga.outputs[step][field]
        .as_str()
        .unwrap_or_else(|| panic!("saga {} has no {step}.{field}: {}", saga.id, saga.outputs))
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_completed_saga_is_found_by_list_ref_with_each_provider_id_it_returned() {
    let rig = Rig::new("visibility-refs", "none", 1.0).await;
    let _worker = rig.worker("w1", &[]);
    let mut ids = Vec::new();
    for workflow in WORKFLOWS {
        ids.push(rig.start(workflow, 0).await);
    }
    for id in &ids {
        rig.wait_for(*id, "completed", Duration::from_secs(90), |s| {
            s.status == paysaga_core::SagaStatus::Completed
        })
        .await;
    }
    for id in &ids {
        let saga = rig.saga(*id).await;
        let expected: Vec<(&str, &str)> = match saga.workflow.as_str() {
            "lumanu_prefund" => vec![
                ("fund_invoice", "funding_id"),
                ("await_deposit", "transfer_id"),
                ("create_payable", "payable_id"),
            ],
            "blaaiz_kyc_payout" => vec![
                ("create_customer", "customer_id"),
                ("payout", "transaction_id"),
            ],
            "lean_payout" => vec![
                ("create_destination", "destination_id"),
                ("ensure_customer", "customer_id"),
                ("await_beneficiary", "beneficiary_id"),
                ("create_intent", "intent_id"),
                ("await_payment", "payment_id"),
            ],
            other => panic!("unknown workflow {other}"),
        };
        let show = rig.ok(&["show", &id.to_string()]);
        assert!(show.contains("refs "), "show lists the references:\n{show}");
        for (step, field) in expected {
            let value = output_id(&saga, step, field);
            let found = rig.ok(&["list", "--ref", &value]);
            assert_eq!(
                listed(&found),
                [id.to_string()],
                "{} saga: list --ref {value} ({step}.{field}) finds exactly it:\n{found}",
                saga.workflow
            );
            assert!(
                show.lines()
                    .any(|l| l.contains(step) && l.contains(field) && l.contains(&value)),
                "show lists {step} {field} {value}:\n{show}"
            );
        }
        // The JSON view carries them too.
        let json: serde_json::Value =
            serde_json::from_str(&rig.ok(&["show", &id.to_string(), "--json"])).unwrap();
        assert!(
            json["references"].as_array().is_some_and(|r| r.len() >= 2),
            "{}",
            json["references"]
        );
    }
    // An id no step returned finds nothing.
    assert!(listed(&rig.ok(&["list", "--ref", "pay_does_not_exist"])).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn show_prints_the_last_provider_answer_of_a_retrying_step_and_follow_streams_until_the_end()
{
    // Every Lean customer creation fails with an injected 5xx until the faults are lifted.
    let rig = Rig::new(
        "visibility-follow",
        "error_rate@POST:/lean/payments/v1/customer=1.0,rate_limit_share=0",
        1.0,
    )
    .await;
    let _worker = rig.worker("w1", &[]);
    let id = rig.start("lean_payout", 0).await;
    rig.wait_for(
        id,
        "retrying ensure_customer",
        Duration::from_secs(60),
        |s| s.step_index == 1 && s.attempt >= 2,
    )
    .await;
    let show = rig.ok(&["show", &id.to_string()]);
    let answers: Vec<&str> = show
        .lines()
        .skip_while(|l| !l.starts_with("provider  (last answer per step)"))
        .skip(1)
        .take_while(|l| l.starts_with("  ") && !l.starts_with("input"))
        .collect();
    let customer = answers
        .iter()
        .find(|l| l.trim_start().starts_with("ensure_customer"))
        .unwrap_or_else(|| panic!("no provider answer for ensure_customer:\n{show}"));
    assert!(
        customer.contains("retrying after:") && customer.contains("HTTP 5"),
        "the last answer of ensure_customer is the provider's 5xx: {customer}\n{show}"
    );
    assert!(
        answers
            .iter()
            .any(|l| l.trim_start().starts_with("create_destination") && l.contains("completed")),
        "create_destination's last answer: {answers:#?}"
    );

    // Follow it live while the provider recovers: the rows stream in and the command exits
    // when the saga ends.
    let mut follow = Command::new(BIN)
        .args(["show", &id.to_string(), "--follow"])
        .env("DATABASE_URL", rig.db.url())
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    rig.sandbox.set_faults("none").await;
    let deadline = Instant::now() + Duration::from_secs(90);
    let status = loop {
        if let Some(status) = follow.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = follow.kill();
            let _ = follow.wait();
            panic!(
                "show --follow did not exit after the saga ended (logs in {})",
                rig.logs.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let mut out = String::new();
    follow
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    assert!(status.success(), "show --follow failed:\n{out}");
    assert_eq!(
        rig.saga(id).await.status,
        paysaga_core::SagaStatus::Completed
    );
    // The part after the first `show` is the live stream.
    let history_at = out.find("\nhistory\n").unwrap();
    let streamed: Vec<&str> = out[history_at..]
        .lines()
        .filter(|l| l.contains("step_completed") || l.contains("saga_completed"))
        .collect();
    for step in [
        "ensure_customer",
        "await_beneficiary",
        "create_intent",
        "await_payment",
    ] {
        assert!(
            streamed
                .iter()
                .any(|l| l.contains("step_completed") && l.contains(step)),
            "follow streamed the completion of {step}:\n{out}"
        );
    }
    assert!(
        streamed.iter().any(|l| l.contains("saga_completed")),
        "{out}"
    );
    assert!(
        out.trim_end().ends_with(&format!("saga {id} is completed")),
        "follow ends by saying the saga ended:\n{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliver_reports_whether_the_step_moved_on_or_waits_again() {
    // No webhooks reach the worker and waits poll once an hour: only the operator's event
    // wakes the deposit wait. The invoice is paid 8 s after it is created.
    let rig = Rig::new("visibility-deliver", "webhook_drop=1.0", 40.0).await;
    let mut def = test_definition("lumanu_prefund");
    def.name = "lumanu_prefund_manual".to_string();
    for step in &mut def.steps {
        step.poll_every = Duration::from_secs(3600);
    }
    rig.engine.submit_definition(&def).await.unwrap();
    let _worker = rig.worker("w1", &[]);
    let input = input(&rig.engine, "lumanu_prefund", &rig.run, 0).await;
    let id = rig
        .engine
        .start("lumanu_prefund_manual", input, None)
        .await
        .unwrap()
        .saga_id;
    rig.wait_for(
        id,
        "waiting for the deposit",
        Duration::from_secs(30),
        |s| s.step_index == 1 && s.status == paysaga_core::SagaStatus::Waiting,
    )
    .await;
    let deliver = |reason: &str| {
        rig.ok(&[
            "deliver",
            &id.to_string(),
            "--event",
            "transfer.created",
            "--payload",
            "{}",
            "--reason",
            reason,
        ])
    };
    // Too early: the step asks Lumanu, which has no deposit yet.
    let early = deliver("customer says the invoice is paid");
    assert!(
        early.contains("the provider disagrees: step await_deposit checked and waits again")
            && early.contains("no deposit for invoice"),
        "{early}"
    );
    assert_eq!(rig.saga(id).await.status, paysaga_core::SagaStatus::Waiting);
    // Once the deposit is there, the same event moves the saga on.
    let deadline = Instant::now() + Duration::from_secs(40);
    let later = loop {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let out = deliver("the bank confirms the deposit");
        if !out.contains("the provider disagrees") {
            break out;
        }
        assert!(
            Instant::now() < deadline,
            "the deposit never arrived: {out}"
        );
    };
    assert!(
        later.contains("woke and moved on: step await_deposit completed"),
        "{later}"
    );
    let saga = rig.saga(id).await;
    assert!(
        saga.step_index > 1,
        "the saga moved past await_deposit: {}",
        saga.step_index
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saga_no_live_worker_can_run_is_reported_by_show_list_stuck_for_and_the_metric() {
    let rig = Rig::new("visibility-unrunnable", "none", 1.0).await;
    // The only worker has no Blaaiz credentials: it registers no blaaiz.* step kind.
    let no_blaaiz = [
        ("PAYSAGA_BLAAIZ_BASE_URL", ""),
        ("PAYSAGA_BLAAIZ_CLIENT_ID", ""),
        ("PAYSAGA_BLAAIZ_CLIENT_SECRET", ""),
        ("PAYSAGA_BLAAIZ_API_KEY", ""),
        ("PAYSAGA_BLAAIZ_WEBHOOK_SECRET", ""),
    ];
    // The gauges (the unrunnable count among them) every second instead of every 15.
    let mut env = no_blaaiz.to_vec();
    env.push(("PAYSAGA_GAUGE_EVERY", "1s"));
    let worker = rig.worker("w-no-blaaiz", &env);
    let id = rig.start("blaaiz_kyc_payout", 0).await;

    let show = rig.ok(&["show", &id.to_string()]);
    let why = show
        .lines()
        .find(|l| l.starts_with("why "))
        .unwrap_or_else(|| panic!("no why line:\n{show}"));
    assert!(
        why.contains("no live worker can run step kind blaaiz.create_customer")
            && why.contains("start a worker with provider blaaiz configured"),
        "{why}"
    );
    assert!(!show.contains("a worker picks it up"), "{show}");
    // Just started, no attempt made: stuck only because no worker can run it.
    let stuck = rig.ok(&["list", "--stuck-for", "1h"]);
    assert_eq!(listed(&stuck), [id.to_string()], "{stuck}");

    let metrics_url = format!("http://127.0.0.1:{}/metrics", worker.port);
    let metric = |n: u32| format!("paysaga_unrunnable_sagas{{workflow=\"blaaiz_kyc_payout\"}} {n}");
    let wait_metric = |n: u32| {
        let url = metrics_url.clone();
        let line = metric(n);
        async move {
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                let text = reqwest::get(&url).await.unwrap().text().await.unwrap();
                if text.lines().any(|l| l == line) {
                    return;
                }
                assert!(
                    Instant::now() < deadline,
                    "no `{line}` in /metrics:\n{text}"
                );
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        }
    };
    wait_metric(1).await;

    // A worker with Blaaiz configured starts: the saga runs, and no longer counts.
    let _full = WorkerProcess::start_with_env(
        rig.db.url(),
        free_port(),
        rig.sandbox.port,
        "w-all",
        &rig.logs.join("w-all.log"),
        &[("PAYSAGA_GAUGE_EVERY", "1s")],
    );
    rig.wait_for(id, "completed", Duration::from_secs(90), |s| {
        s.status == paysaga_core::SagaStatus::Completed
    })
    .await;
    wait_metric(0).await;
    assert!(listed(&rig.ok(&["list", "--stuck-for", "1h"])).is_empty());
}
