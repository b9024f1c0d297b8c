//! Provider rate limits held across every worker (issue 16 item 1): worker processes share a
//! per-provider request budget through the database, so that together they stay under the
//! limit the provider (the sandbox process, `--rate-limit`) enforces, and nearly nothing is
//! refused with a `429`.
#![allow(clippy::unwrap_used)]

mod support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use paysaga_core::SagaStatus;
use serde_json::Value;
use support::processes::{free_port, log_dir, Sandbox, WorkerProcess};
use support::workflows::{control_engine, input};
use uuid::Uuid;

const BIN: &str = env!("CARGO_BIN_EXE_paysaga");

/// `paysaga sandbox` with `--rate-limit SPEC`, sending webhooks to `webhook_port`.
fn sandbox_with_limit(webhook_port: u16, spec: &str, log: &std::path::Path) -> Sandbox {
    let port = free_port();
    let child = Command::new(BIN)
        .args(["sandbox", "--addr", &format!("127.0.0.1:{port}")])
        .args(["--dev-credentials", "--rate-limit", spec])
        .args([
            "--webhook-base",
            &format!("http://127.0.0.1:{webhook_port}"),
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

async fn lumanu_counts(sandbox: &Sandbox) -> (u64, u64) {
    let stats: Value = reqwest::get(sandbox.url("/_sandbox/stats"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let lumanu = &stats["providers"]["lumanu"];
    (
        lumanu["requests"].as_u64().unwrap(),
        lumanu["rejected"].as_u64().unwrap(),
    )
}

/// 2 worker processes (concurrency 16 each) run 30 Lumanu payouts (210 steps) against a
/// sandbox that accepts 20 requests/s: every saga completes, at most 1% of the requests are
/// refused, and together the workers never go faster than the limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_share_a_lumanu_limit_of_20_per_second_and_almost_nothing_is_refused() {
    let db = paysaga_testkit::database().await;
    let engine = control_engine(db.url()).await;
    let logs = log_dir("rate-limits");
    let webhook_port = free_port();
    let sandbox = sandbox_with_limit(webhook_port, "lumanu=20/s", &logs.join("sandbox.log"));
    let limit = [("PAYSAGA_LUMANU_RATE_LIMIT", "20/s")];
    let workers = [
        WorkerProcess::start_with_env(
            db.url(),
            webhook_port,
            sandbox.port,
            "w1",
            &logs.join("w1.log"),
            &limit,
        ),
        WorkerProcess::start_with_env(
            db.url(),
            free_port(),
            sandbox.port,
            "w2",
            &logs.join("w2.log"),
            &limit,
        ),
    ];
    let (before, _) = lumanu_counts(&sandbox).await;
    let run = Uuid::new_v4().simple().to_string()[..8].to_string();
    let started = Instant::now();
    let mut ids = Vec::new();
    for n in 0..30 {
        let saga = engine
            .start(
                "lumanu_prefund",
                input(&engine, "lumanu_prefund", &run, n).await,
                Some(&format!("rl-{run}-{n}")),
            )
            .await
            .unwrap();
        ids.push(saga.saga_id);
    }
    let deadline = Instant::now() + Duration::from_secs(180);
    let sagas = loop {
        let mut sagas = Vec::new();
        for id in &ids {
            sagas.push(engine.store().saga(*id).await.unwrap().unwrap());
        }
        if sagas.iter().all(|s| s.status.is_final()) {
            break sagas;
        }
        assert!(
            Instant::now() < deadline,
            "sagas not final after 180 s (logs in {}): {:?}",
            logs.display(),
            sagas
                .iter()
                .filter(|s| !s.status.is_final())
                .map(|s| (s.step_index, s.status, s.last_error.clone()))
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let elapsed = started.elapsed().as_secs_f64();
    let (requests, rejected) = lumanu_counts(&sandbox).await;
    let requests = requests - before;
    drop(workers);
    assert!(
        sagas.iter().all(|s| s.status == SagaStatus::Completed),
        "every payout completes: {:?} (logs in {})",
        sagas.iter().map(|s| s.status).collect::<Vec<_>>(),
        logs.display()
    );
    let rate = requests as f64 / elapsed;
    eprintln!(
        "lumanu requests {requests}, rejected {rejected} ({:.2}%), {elapsed:.1} s, {rate:.1} requests/s against 20/s",
        rejected as f64 * 100.0 / requests as f64
    );
    assert!(requests >= 210, "at least one request per step: {requests}");
    assert!(
        rejected * 100 <= requests,
        "at most 1% refused: {rejected} of {requests} (logs in {})",
        logs.display()
    );
    // One second's worth of burst at the sandbox, none at the workers: the average stays at
    // the limit.
    assert!(rate <= 21.0, "{rate:.1} requests/s over a limit of 20/s");
}

/// A step whose provider has no free request slot within the worker's longest wait is held
/// back, not attempted: the attempt count stays 0, history holds no retry or error, and
/// `paysaga show` says it is waiting for provider capacity.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_held_back_by_the_rate_limit_is_no_attempt_and_show_says_it_waits_for_capacity() {
    let db = paysaga_testkit::database().await;
    let engine = control_engine(db.url()).await;
    let logs = log_dir("rate-limits-held");
    let webhook_port = free_port();
    let sandbox = sandbox_with_limit(webhook_port, "none", &logs.join("sandbox.log"));
    // One Lumanu request a minute, no waiting for a slot.
    let _worker = WorkerProcess::start_with_env(
        db.url(),
        webhook_port,
        sandbox.port,
        "w1",
        &logs.join("w1.log"),
        &[
            ("PAYSAGA_LUMANU_RATE_LIMIT", "1/min"),
            ("PAYSAGA_RATE_LIMIT_MAX_WAIT", "0s"),
        ],
    );
    let run = Uuid::new_v4().simple().to_string()[..8].to_string();
    let id = engine
        .start(
            "lumanu_prefund",
            input(&engine, "lumanu_prefund", &run, 0).await,
            Some(&format!("held-{run}")),
        )
        .await
        .unwrap()
        .saga_id;
    let deadline = Instant::now() + Duration::from_secs(30);
    let saga = loop {
        let saga = engine.store().saga(id).await.unwrap().unwrap();
        if saga.owner.is_none()
            && saga
                .last_error
                .as_deref()
                .is_some_and(|e| e.contains("waiting for provider capacity"))
        {
            break saga;
        }
        assert!(
            Instant::now() < deadline,
            "never held back: {:?} {:?} (logs in {})",
            saga.status,
            saga.last_error,
            logs.display()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(saga.status, SagaStatus::Scheduled, "{saga:?}");
    assert_eq!(saga.attempt, 0, "not an attempt");
    let history = engine.store().history(id).await.unwrap();
    assert!(
        history.iter().all(|h| h.error.is_none()),
        "no error in history: {history:?}"
    );
    let show = support::processes::paysaga_ok(db.url(), &["show", &id.to_string()]);
    assert!(
        show.contains("waiting for provider capacity (the provider's rate limit shared by every worker; not an attempt)"),
        "{show}"
    );
}
