//! Operators find stuck sagas with `paysaga list --stuck-for` and move each kind on with
//! the CLI's actions; every action is in history with its reason.

#![allow(clippy::unwrap_used)]

mod support;

use std::process::{Command, Output};
use std::time::Duration;

use paysaga_store::WorkerInfo;
use serde_json::{json, Value};
use support::*;
use uuid::Uuid;

const BIN: &str = env!("CARGO_BIN_EXE_paysaga");

fn paysaga(db_url: &str, args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env("DATABASE_URL", db_url)
        .env("PAYSAGA_OPERATOR", "ops:alice")
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

async fn reason_of(h: &Harness, saga: Uuid, kind: &str) -> Option<(String, String)> {
    sqlx::query_as(
        "SELECT actor, detail->>'reason' FROM paysaga_history WHERE saga_id = $1 AND kind = $2 ORDER BY id DESC LIMIT 1",
    )
    .bind(saga)
    .bind(kind)
    .fetch_optional(&h.pool)
    .await
    .unwrap()
}

const FLOWS: [&str; 3] = [
    r#"
    name = "wait_flow"
    version = 1
    [[steps]]
    name = "effect"
    kind = "test.effect"
    [[steps]]
    name = "await"
    kind = "test.wait"
    params = { key = "$.input.key" }
    poll_every = "1h"
    deadline = "$DEADLINE"
    "#,
    r#"
    name = "flaky"
    version = 1
    [[steps]]
    name = "call"
    kind = "test.flaky"
    params = { failures = 1000 }
    retry = { initial_delay = "20ms", multiplier = 1.0, max_delay = "20ms", jitter = 0.0, max_attempts = "unlimited" }
    "#,
    r#"
    name = "sent_then_fail"
    version = 1
    [[steps]]
    name = "send"
    kind = "test.irreversible"
    [[steps]]
    name = "confirm"
    kind = "test.fail"
    [[steps]]
    name = "done"
    kind = "noop.sleep"
    "#,
];

#[tokio::test]
async fn stuck_sagas_are_found_and_each_action_moves_them_on() {
    let h = harness().await;
    let url = h.db.url().to_string();
    h.submit(&FLOWS[0].replace("$DEADLINE", "1s")).await;
    h.submit(
        &FLOWS[0]
            .replace("version = 1", "version = 2")
            .replace("$DEADLINE", "1h"),
    )
    .await;
    h.submit(FLOWS[1]).await;
    h.submit(FLOWS[2]).await;

    // Healthy sagas: a completed one, a fresh wait with a distant deadline.
    let done = h
        .engine
        .start("noop", json!({"delay_ms": 0}), None)
        .await
        .unwrap()
        .saga_id;
    // Stuck sagas of each kind.
    let past_deadline = h
        .engine
        .start_with(paysaga_runtime::StartRequest {
            workflow: "wait_flow".into(),
            version: Some(1),
            input: json!({"key": "k-late"}),
            idempotency_key: Some("late-payout".into()),
            actor: "test".into(),
        })
        .await
        .unwrap()
        .saga_id;
    let retrying = h
        .engine
        .start("flaky", json!({}), None)
        .await
        .unwrap()
        .saga_id;
    let parked = h
        .engine
        .start("sent_then_fail", json!({}), None)
        .await
        .unwrap()
        .saga_id;

    let w = spawn_worker(&h.engine, fast_worker("setup"));
    h.wait_status(done, "completed", Duration::from_secs(10))
        .await;
    h.wait_status(past_deadline, "waiting", Duration::from_secs(10))
        .await;
    h.wait_status(parked, "needs_operator", Duration::from_secs(10))
        .await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while sqlx::query_scalar::<_, i32>("SELECT attempt FROM paysaga_sagas WHERE id = $1")
        .bind(retrying)
        .fetch_one(&h.pool)
        .await
        .unwrap()
        < 4
    {
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    w.shutdown().await;
    // Healthy wait: started after the workers stopped, so it has just been updated.
    let fresh_wait = h
        .engine
        .start("wait_flow", json!({"key": "k-fresh"}), None)
        .await
        .unwrap()
        .saga_id;
    // A saga held by a worker that died (its lease expired, nobody reaped it yet).
    let held = h
        .engine
        .start("noop", json!({"delay_ms": 0}), None)
        .await
        .unwrap()
        .saga_id;
    let dead = Uuid::new_v4();
    let store = h.engine.store().clone();
    store
        .register_worker(
            &WorkerInfo {
                id: dead,
                name: "dead".into(),
                hostname: "h".into(),
                pid: 1,
                step_kinds: vec!["noop.sleep".into()],
                assignments: None,
            },
            Duration::from_millis(100),
        )
        .await
        .unwrap();
    // Claim exactly that saga.
    sqlx::query("UPDATE paysaga_sagas SET owner = $2, fence = fence + 1 WHERE id = $1")
        .bind(held)
        .bind(dead)
        .execute(&h.pool)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1200)).await; // lease and wait deadline pass

    // A live worker that could run every workflow here (it claims nothing): a saga no live
    // worker can run counts as stuck (see operator_visibility.rs).
    store
        .register_worker(
            &WorkerInfo {
                id: Uuid::new_v4(),
                name: "idle".into(),
                hostname: "h".into(),
                pid: 2,
                step_kinds: h.engine.registry().names(),
                assignments: None,
            },
            Duration::from_secs(3600),
        )
        .await
        .unwrap();

    // list --stuck-for finds exactly the stuck ones.
    let out = ok(&paysaga(
        &url,
        &[
            "list",
            "--stuck-for",
            "1h",
            "--stuck-attempts",
            "3",
            "--json",
        ],
    ));
    let listed: Vec<Value> = serde_json::from_str(&out).unwrap();
    let mut found: Vec<String> = listed
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_string())
        .collect();
    found.sort();
    let mut expected: Vec<String> = [past_deadline, retrying, parked, held]
        .iter()
        .map(Uuid::to_string)
        .collect();
    expected.sort();
    assert_eq!(
        found, expected,
        "fresh wait {fresh_wait} and completed {done} are not stuck"
    );
    // Filters narrow it: by business key, by workflow and step.
    let by_key: Vec<Value> = serde_json::from_str(&ok(&paysaga(
        &url,
        &["list", "--key", "late-payout", "--json"],
    )))
    .unwrap();
    assert_eq!(by_key.len(), 1);
    let by_step: Vec<Value> = serde_json::from_str(&ok(&paysaga(
        &url,
        &[
            "list",
            "--workflow",
            "sent_then_fail",
            "--step",
            "confirm",
            "--json",
        ],
    )))
    .unwrap();
    assert_eq!(by_step[0]["id"], parked.to_string());
    let table = ok(&paysaga(
        &url,
        &["list", "--stuck-for", "1h", "--stuck-attempts", "3"],
    ));
    assert!(
        table.contains(&retrying.to_string()) && table.contains("STATUS"),
        "{table}"
    );

    // Bulk dry run changes nothing.
    let out = ok(&paysaga(
        &url,
        &[
            "retry",
            "--stuck-for",
            "1h",
            "--stuck-attempts",
            "3",
            "--status",
            "retrying",
            "--reason",
            "x",
            "--dry-run",
        ],
    ));
    assert!(
        out.contains("would retry saga") && out.contains("nothing changed"),
        "{out}"
    );
    // Every action needs a reason and a target.
    let refused = paysaga(&url, &["retry", "--reason", "everything"]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("needs at least one filter"));
    // Refused when the state does not allow it.
    let refused = paysaga(&url, &["retry", &done.to_string(), "--reason", "again"]);
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("it is finished"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );

    // retry: backoff reset, attempt count back to 0.
    ok(&paysaga(
        &url,
        &[
            "retry",
            &retrying.to_string(),
            "--reason",
            "provider outage over",
        ],
    ));
    let attempt: i32 = sqlx::query_scalar("SELECT attempt FROM paysaga_sagas WHERE id = $1")
        .bind(retrying)
        .fetch_one(&h.pool)
        .await
        .unwrap();
    assert_eq!(attempt, 0);
    assert_eq!(
        reason_of(&h, retrying, "operator_retry").await,
        Some(("ops:alice".into(), "provider outage over".into()))
    );
    // cancel the retrying one too: cancel works during a backoff.
    ok(&paysaga(
        &url,
        &[
            "cancel",
            &retrying.to_string(),
            "--reason",
            "payee closed the account",
        ],
    ));
    // retry of the dead worker's saga: its lease is released (fencing it out).
    ok(&paysaga(
        &url,
        &["retry", &held.to_string(), "--reason", "worker host lost"],
    ));
    let (owner, fence): (Option<Uuid>, i64) =
        sqlx::query_as("SELECT owner, fence FROM paysaga_sagas WHERE id = $1")
            .bind(held)
            .fetch_one(&h.pool)
            .await
            .unwrap();
    assert_eq!(owner, None);
    assert_eq!(fence, 2);
    // skip the parked saga's failed step after checking the provider by hand.
    let refused = paysaga(
        &url,
        &[
            "skip",
            &parked.to_string(),
            "--step",
            "send",
            "--output",
            "{}",
            "--reason",
            "x",
        ],
    );
    assert!(String::from_utf8_lossy(&refused.stderr).contains("its current step is confirm"));
    ok(&paysaga(
        &url,
        &[
            "skip",
            &parked.to_string(),
            "--step",
            "confirm",
            "--output",
            r#"{"confirmed_by": "dashboard"}"#,
            "--reason",
            "payment visible on the bank statement",
        ],
    ));
    // deliver the event the late saga waits for.
    ok(&paysaga(
        &url,
        &[
            "deliver",
            &past_deadline.to_string(),
            "--event",
            "done",
            "--payload",
            r#"{"status": "paid"}"#,
            "--reason",
            "provider support confirmed by email",
        ],
    ));

    let w = spawn_worker(&h.engine, fast_worker("after"));
    h.wait_status(retrying, "cancelled", Duration::from_secs(10))
        .await;
    h.wait_status(held, "completed", Duration::from_secs(10))
        .await;
    h.wait_status(parked, "completed", Duration::from_secs(10))
        .await;
    h.wait_status(past_deadline, "completed", Duration::from_secs(10))
        .await;
    // resume: park one again, resume it; it fails again (test.fail) and is parked again.
    let parked2 = h
        .engine
        .start("sent_then_fail", json!({}), Some("second"))
        .await
        .unwrap()
        .saga_id;
    h.wait_status(parked2, "needs_operator", Duration::from_secs(10))
        .await;
    ok(&paysaga(
        &url,
        &[
            "resume",
            &parked2.to_string(),
            "--reason",
            "bank fixed the account",
        ],
    ));
    assert_eq!(
        reason_of(&h, parked2, "operator_resume").await,
        Some(("ops:alice".into(), "bank fixed the account".into()))
    );
    h.wait_status(parked2, "needs_operator", Duration::from_secs(10))
        .await;
    let step_failed: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM paysaga_history WHERE saga_id = $1 AND kind = 'step_failed'",
    )
    .bind(parked2)
    .fetch_one(&h.pool)
    .await
    .unwrap();
    assert_eq!(step_failed, 2, "the step ran again after resume");
    w.shutdown().await;

    for (saga, kind, reason) in [
        (retrying, "cancel_requested", "payee closed the account"),
        (held, "operator_retry", "worker host lost"),
        (
            parked,
            "operator_skip",
            "payment visible on the bank statement",
        ),
        (
            past_deadline,
            "operator_event",
            "provider support confirmed by email",
        ),
    ] {
        assert_eq!(
            reason_of(&h, saga, kind).await,
            Some(("ops:alice".to_string(), reason.to_string())),
            "{kind}"
        );
    }
    let out: Value = serde_json::from_str(&ok(&paysaga(
        &url,
        &["show", &parked.to_string(), "--json"],
    )))
    .unwrap();
    assert_eq!(
        out["outputs"]["confirm"],
        json!({"confirmed_by": "dashboard"})
    );
    // The manual event is in the inbox, consumed by the saga.
    let events: Vec<Value> =
        serde_json::from_str(&ok(&paysaga(&url, &["events", "list", "--json"]))).unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["consumed_by"], past_deadline.to_string());
    // Nothing is stuck any more but the re-parked saga.
    let listed: Vec<Value> = serde_json::from_str(&ok(&paysaga(
        &url,
        &["list", "--stuck-for", "1h", "--json"],
    )))
    .unwrap();
    let ids: Vec<&str> = listed.iter().map(|s| s["id"].as_str().unwrap()).collect();
    assert_eq!(ids, vec![parked2.to_string().as_str()]);
    let stats = ok(&paysaga(&url, &["stats"]));
    assert!(
        stats.contains("sent_then_fail") && stats.contains("needs_operator"),
        "{stats}"
    );
}

#[tokio::test]
async fn replay_matches_a_stored_event_to_a_wait_that_began_later() {
    let h = harness().await;
    let url = h.db.url().to_string();
    h.submit(&FLOWS[0].replace("$DEADLINE", "1h")).await;
    let saga = h
        .engine
        .start("wait_flow", json!({"key": "k-r"}), None)
        .await
        .unwrap()
        .saga_id;
    let w = spawn_worker(&h.engine, fast_worker("w"));
    h.wait_status(saga, "waiting", Duration::from_secs(10))
        .await;
    // An event stored under the wrong key (e.g. a mapping bug since fixed) stays unmatched.
    let d = h
        .engine
        .deliver_event(paysaga_runtime::IncomingEvent {
            provider: "test".into(),
            event_id: "evt-misrouted".into(),
            event_type: "done".into(),
            correlation_key: Some("k-wrong".into()),
            payload: json!({"status": "paid"}),
        })
        .await
        .unwrap();
    assert_eq!(d.matched_saga, None);
    let unmatched: Vec<Value> = serde_json::from_str(&ok(&paysaga(
        &url,
        &["events", "list", "--unmatched", "--json"],
    )))
    .unwrap();
    assert_eq!(unmatched.len(), 1);
    let refused = paysaga(
        &url,
        &[
            "events",
            "replay",
            &d.inbox_id.to_string(),
            "--reason",
            "try",
        ],
    );
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("no saga waits"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    // Re-keyed by the engine API (the CLI replays as stored).
    let d2 = h
        .engine
        .replay_event(
            d.inbox_id,
            Some(("done".into(), "k-r".into(), json!({"status": "paid"}))),
            "ops:bob",
            "fixed key mapping",
        )
        .await
        .unwrap();
    assert_eq!(d2.matched_saga, Some(saga));
    h.wait_status(saga, "completed", Duration::from_secs(10))
        .await;
    w.shutdown().await;
    assert_eq!(
        reason_of(&h, saga, "event_replayed").await,
        Some(("ops:bob".into(), "fixed key mapping".into()))
    );
}
