//! Per-key concurrency across real worker processes (issue 16 item 2): sagas sharing a
//! concurrency key with limit 1 never run at the same time, whichever of two `paysaga worker`
//! processes runs them (history times prove it), `show` says which saga a queued one waits
//! behind, and sagas on distinct keys run in parallel.
#![allow(clippy::unwrap_used)]

mod support;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde_json::json;
use support::harness;
use uuid::Uuid;

const BIN: &str = env!("CARGO_BIN_EXE_paysaga");

/// Two `noop.sleep` steps, at most `limit` sagas at once per `$.input.customer`.
fn workflow(name: &str, limit: u32) -> String {
    format!(
        r#"
name = "{name}"
version = 1

[[steps]]
name = "debit"
kind = "noop.sleep"
params = {{ delay_ms = "$.input.delay_ms" }}

[[steps]]
name = "credit"
kind = "noop.sleep"
params = {{ delay_ms = "$.input.delay_ms" }}

[concurrency]
key = "$.input.customer"
limit = {limit}
"#
    )
}

fn spawn_worker(db_url: &str, name: &str, log: &std::path::Path) -> Child {
    Command::new(BIN)
        .args(["worker", "--http-addr", "127.0.0.1:0", "--concurrency", "8"])
        .args([
            "--lease-ttl",
            "2s",
            "--idle-poll",
            "500ms",
            "--worker-id",
            name,
        ])
        .args(["--shutdown-grace", "5s", "--no-migrate"])
        .env("DATABASE_URL", db_url)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap()
}

fn log_dir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("paysaga-ck-{}", Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Waits until every saga of `workflow` completed (at most `within`).
async fn wait_completed(pool: &sqlx::PgPool, workflow: &str, n: i64, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let done: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM paysaga_sagas WHERE workflow = $1 AND status = 'completed'",
        )
        .bind(workflow)
        .fetch_one(pool)
        .await
        .unwrap();
        if done == n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{done} of {n} sagas of {workflow} completed after {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Each saga's run from history: from its first step's start (the first step's completion
/// minus the time it slept: the step began at least that long before its result was
/// committed) to its `saga_completed` row. The true run contains this interval.
async fn runs(pool: &sqlx::PgPool, workflow: &str) -> Vec<(Uuid, DateTime<Utc>, DateTime<Utc>)> {
    let rows: Vec<(Uuid, DateTime<Utc>, DateTime<Utc>)> = sqlx::query_as(
        "SELECT s.id,
                (SELECT h.at FROM paysaga_history h WHERE h.saga_id = s.id AND h.step = 'debit'
                   AND h.kind = 'step_completed' ORDER BY h.id LIMIT 1)
                  - make_interval(secs => (s.outputs -> 'debit' ->> 'slept_ms')::float8 / 1000),
                (SELECT h.at FROM paysaga_history h WHERE h.saga_id = s.id
                   AND h.kind = 'saga_completed' ORDER BY h.id LIMIT 1)
         FROM paysaga_sagas s WHERE s.workflow = $1 ORDER BY 2",
    )
    .bind(workflow)
    .fetch_all(pool)
    .await
    .unwrap();
    rows
}

#[tokio::test]
async fn sagas_sharing_a_key_with_limit_one_never_overlap_across_two_worker_processes() {
    let h = harness().await;
    let url = h.db.url().to_string();
    h.submit(&workflow("customer_payout", 1)).await;

    // A start whose input has no value at the key's path is refused, nothing stored.
    let refused = h
        .engine
        .start("customer_payout", json!({"delay_ms": 1}), None)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        refused.contains("$.input.customer matched nothing"),
        "{refused}"
    );

    let mut ids = Vec::new();
    for _ in 0..50 {
        let started = h
            .engine
            .start(
                "customer_payout",
                json!({"customer": "cust_42", "delay_ms": 20}),
                None,
            )
            .await
            .unwrap();
        ids.push(started.saga_id);
    }
    // Before any worker runs: the first holds the slot, the second is queued behind it.
    let show = Command::new(BIN)
        .args(["show", &ids[1].to_string()])
        .env("DATABASE_URL", &url)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&show.stdout);
    assert!(show.status.success(), "{text}");
    assert!(
        text.contains(&format!("queued behind saga {}", ids[0])),
        "{text}"
    );

    let logs = log_dir();
    let mut w1 = spawn_worker(&url, "w1", &logs.join("w1.log"));
    let mut w2 = spawn_worker(&url, "w2", &logs.join("w2.log"));
    wait_completed(&h.pool, "customer_payout", 50, Duration::from_secs(120)).await;
    for w in [&mut w1, &mut w2] {
        w.kill().unwrap();
        w.wait().unwrap();
    }

    let runs = runs(&h.pool, "customer_payout").await;
    assert_eq!(runs.len(), 50);
    for pair in runs.windows(2) {
        let (a, _, a_end) = pair[0];
        let (b, b_start, _) = pair[1];
        assert!(
            b_start >= a_end,
            "saga {b} started its first step at {b_start} before saga {a} ended at {a_end}"
        );
    }
    // Oldest first: the sagas ran in the order they were started.
    let order: Vec<Uuid> = runs.iter().map(|r| r.0).collect();
    assert_eq!(order, ids);
    // Both workers took part (the slot moves between processes).
    let workers: Vec<Uuid> = sqlx::query_scalar(
        "SELECT DISTINCT h.worker FROM paysaga_history h JOIN paysaga_sagas s ON s.id = h.saga_id
         WHERE s.workflow = 'customer_payout' AND h.worker IS NOT NULL",
    )
    .fetch_all(&h.pool)
    .await
    .unwrap();
    assert_eq!(workers.len(), 2, "logs in {}", logs.display());
}

#[tokio::test]
async fn sagas_on_distinct_keys_run_in_parallel() {
    let h = harness().await;
    let url = h.db.url().to_string();
    h.submit(&workflow("workspace_funding", 1)).await;
    let delay_ms = 100;
    for i in 0..50 {
        h.engine
            .start(
                "workspace_funding",
                json!({"customer": format!("ws_{i}"), "delay_ms": delay_ms}),
                None,
            )
            .await
            .unwrap();
    }
    let held: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM paysaga_sagas WHERE workflow = 'workspace_funding' AND concurrency_held",
    )
    .fetch_one(&h.pool)
    .await
    .unwrap();
    assert_eq!(held, 50, "every key has a free slot");

    let logs = log_dir();
    let mut w1 = spawn_worker(&url, "w1", &logs.join("w1.log"));
    let mut w2 = spawn_worker(&url, "w2", &logs.join("w2.log"));
    wait_completed(&h.pool, "workspace_funding", 50, Duration::from_secs(120)).await;
    for w in [&mut w1, &mut w2] {
        w.kill().unwrap();
        w.wait().unwrap();
    }

    let runs = runs(&h.pool, "workspace_funding").await;
    let first = runs.iter().map(|r| r.1).min().unwrap();
    let last = runs.iter().map(|r| r.2).max().unwrap();
    let total = (last - first).to_std().unwrap();
    // One after the other they would take 50 x 2 steps x 100 ms = 10 s at least.
    let serial = Duration::from_millis(50 * 2 * delay_ms);
    assert!(
        total * 3 < serial,
        "50 sagas on 50 keys took {total:?}, serial would be {serial:?}"
    );
    let overlapping = runs
        .iter()
        .filter(|(id, start, end)| {
            runs.iter()
                .any(|(other, s, e)| other != id && s < end && start < e)
        })
        .count();
    assert!(
        overlapping >= 40,
        "only {overlapping} sagas ran beside another"
    );
}
