//! One test per invariant of the design brief, each against a real PostgreSQL and each
//! asserting database state.
#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

use chrono::{DateTime, Utc};
use paysaga_core::{HistoryEntry, HistoryKind, SagaStatus, Transition};
use paysaga_runtime::{Error, IncomingEvent};
use paysaga_store::{Commit, WorkerInfo};
use serde_json::json;
use support::*;
use uuid::Uuid;

const EFFECT_THEN_NOOP: &str = r#"
    name = "effect_then_noop"
    version = 1
    [[steps]]
    name = "pay"
    kind = "test.effect"
    [[steps]]
    name = "after"
    kind = "noop.sleep"
"#;

/// (kind, step, attempt, worker) of a history row.
type HistoryRow = (String, Option<String>, Option<i32>, Option<Uuid>);

fn worker_info(id: Uuid) -> WorkerInfo {
    WorkerInfo {
        id,
        name: "w".into(),
        hostname: "test".into(),
        pid: 1,
        step_kinds: vec!["noop.sleep".into()],
        assignments: None,
    }
}

fn step_done(index: usize) -> Transition {
    Transition {
        status: SagaStatus::Scheduled,
        step_index: index + 1,
        attempt: 0,
        step_started_at: None,
        run_at: Some(Utc::now()),
        wait: None,
        output: Some((format!("sleep{}", index + 1), json!({"by": "test"}))),
        last_error: None,
        history: vec![HistoryEntry {
            kind: HistoryKind::StepCompleted,
            step: Some(format!("sleep{}", index + 1)),
            attempt: Some(1),
            error: None,
            detail: json!(null),
        }],
        continue_now: false,
        effect_possible: false,
    }
}

#[tokio::test]
async fn fenced_lease_worker_whose_lease_was_taken_over_cannot_commit() {
    let h = harness().await;
    let store = h.engine.store().clone();
    let saga = h
        .engine
        .start("noop", json!({"delay_ms": 0}), None)
        .await
        .unwrap()
        .saga_id;
    let kinds = vec!["noop.sleep".to_string()];

    let a = Uuid::new_v4();
    store
        .register_worker(&worker_info(a), Duration::from_secs(30))
        .await
        .unwrap();
    let claimed_a = store.claim(a, &kinds, 10).await.unwrap();
    assert_eq!(claimed_a.len(), 1);
    let fence_a = claimed_a[0].saga.fence;

    // A's lease expires (a paused process): even before anyone takes over, A cannot commit.
    sqlx::query(
        "UPDATE paysaga_workers SET lease_expires_at = now() - interval '1 second' WHERE id = $1",
    )
    .bind(a)
    .execute(&h.pool)
    .await
    .unwrap();
    let t = step_done(0);
    let commit_a = |fence| Commit {
        saga,
        worker: a,
        fence,
        prior_status: SagaStatus::Scheduled,
        consumed_event: None,
        transition: &t,
        token: Uuid::new_v4(),
        references: &[],
    };
    let err = store.commit(commit_a(fence_a)).await.unwrap_err();
    assert!(
        matches!(err, paysaga_store::Error::LeaseLost { .. }),
        "{err}"
    );

    // B takes over: the saga is released and re-claimed with a higher fencing token.
    assert_eq!(store.reap_expired_workers().await.unwrap(), 1);
    let b = Uuid::new_v4();
    store
        .register_worker(&worker_info(b), Duration::from_secs(30))
        .await
        .unwrap();
    let claimed_b = store.claim(b, &kinds, 10).await.unwrap();
    assert_eq!(claimed_b.len(), 1);
    assert!(claimed_b[0].saga.fence > fence_a);

    // A comes back to life with a fresh lease: its old token is still refused.
    sqlx::query("UPDATE paysaga_workers SET lease_expires_at = now() + interval '1 minute', stopped_at = NULL WHERE id = $1")
        .bind(a)
        .execute(&h.pool)
        .await
        .unwrap();
    let err = store.commit(commit_a(fence_a)).await.unwrap_err();
    assert!(
        matches!(err, paysaga_store::Error::LeaseLost { .. }),
        "{err}"
    );
    let (status, step_index, outputs): (String, i32, serde_json::Value) =
        sqlx::query_as("SELECT status, step_index, outputs FROM paysaga_sagas WHERE id = $1")
            .bind(saga)
            .fetch_one(&h.pool)
            .await
            .unwrap();
    assert_eq!(
        (status.as_str(), step_index, outputs),
        ("scheduled", 0, json!({}))
    );

    // A cannot give the saga back either; B could.
    assert!(!store.release(saga, a, fence_a).await.unwrap());

    // B, the holder, commits.
    store
        .commit(Commit {
            saga,
            worker: b,
            fence: claimed_b[0].saga.fence,
            prior_status: SagaStatus::Scheduled,
            consumed_event: None,
            transition: &t,
            token: Uuid::new_v4(),
            references: &[],
        })
        .await
        .unwrap();
    let completed: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM paysaga_history WHERE saga_id = $1 AND kind = 'step_completed' AND worker = $2",
    )
    .bind(saga)
    .bind(b)
    .fetch_one(&h.pool)
    .await
    .unwrap();
    assert_eq!(completed, 1);
    let by_a: Vec<String> =
        sqlx::query_scalar("SELECT kind FROM paysaga_history WHERE worker = $1 ORDER BY id")
            .bind(a)
            .fetch_all(&h.pool)
            .await
            .unwrap();
    assert_eq!(
        by_a,
        ["commit_refused", "commit_refused"],
        "the fenced-out worker wrote nothing; its two refused commits are on record"
    );
}

#[tokio::test]
async fn crash_mid_step_resumes_on_another_worker_with_the_same_idempotency_key() {
    let h = harness().await;
    h.submit(EFFECT_THEN_NOOP).await;
    *h.provider.hang_after_effect.lock().unwrap() = true;
    let saga = h
        .engine
        .start("effect_then_noop", json!({}), None)
        .await
        .unwrap()
        .saga_id;

    let w1 = spawn_worker(&h.engine, fast_worker("w1"));
    tokio::time::timeout(
        Duration::from_secs(10),
        h.provider.effect_applied.notified(),
    )
    .await
    .unwrap();
    // The provider applied the effect; the worker dies before committing.
    w1.crash().await;
    *h.provider.hang_after_effect.lock().unwrap() = false;

    let engine2 = h.second_engine().await;
    let w2 = spawn_worker(&engine2, fast_worker("w2"));
    h.wait_status(saga, "completed", Duration::from_secs(15))
        .await;
    w2.shutdown().await;

    let calls: Vec<(String, i32)> = sqlx::query_as(
        "SELECT idempotency_key, worker_attempt FROM test_calls WHERE saga_id = $1 ORDER BY id",
    )
    .bind(saga)
    .fetch_all(&h.pool)
    .await
    .unwrap();
    assert_eq!(calls.len(), 2, "the step ran again after the crash");
    assert_eq!(
        calls[0].0, calls[1].0,
        "both runs used the same idempotency key"
    );
    let effects: i64 = sqlx::query_scalar("SELECT count(*) FROM test_effects WHERE saga_id = $1")
        .bind(saga)
        .fetch_one(&h.pool)
        .await
        .unwrap();
    assert_eq!(effects, 1, "the effect happened once");
    let kinds = h.history_kinds(saga).await;
    assert!(
        kinds.iter().any(|(k, _)| k == "lease_taken_over"),
        "{kinds:?}"
    );
    let pay_done = kinds
        .iter()
        .filter(|(k, s)| k == "step_completed" && s.as_deref() == Some("pay"))
        .count();
    assert_eq!(pay_done, 1);
}

#[tokio::test]
async fn durable_retry_schedule_survives_restart() {
    let h = harness().await;
    h.submit(
        r#"
        name = "flaky"
        version = 1
        [[steps]]
        name = "call"
        kind = "test.flaky"
        params = { failures = 2 }
        retry = { initial_delay = "1500ms", multiplier = 1.0, max_delay = "1500ms", jitter = 0.0, max_attempts = 5 }
    "#,
    )
    .await;
    let saga = h
        .engine
        .start("flaky", json!({}), None)
        .await
        .unwrap()
        .saga_id;
    let w1 = spawn_worker(&h.engine, fast_worker("w1"));
    // Wait for the first failure to be scheduled, then stop the worker ("restart").
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let (attempt, run_at) = loop {
        let row: (i32, Option<DateTime<Utc>>) =
            sqlx::query_as("SELECT attempt, run_at FROM paysaga_sagas WHERE id = $1")
                .bind(saga)
                .fetch_one(&h.pool)
                .await
                .unwrap();
        if row.0 >= 1 {
            break row;
        }
        assert!(tokio::time::Instant::now() < deadline, "no retry scheduled");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    w1.shutdown().await;
    assert_eq!(attempt, 1);
    let run_at = run_at.unwrap();
    let stored: (i32, Option<DateTime<Utc>>) =
        sqlx::query_as("SELECT attempt, run_at FROM paysaga_sagas WHERE id = $1")
            .bind(saga)
            .fetch_one(&h.pool)
            .await
            .unwrap();
    assert_eq!(
        stored,
        (1, Some(run_at)),
        "attempt count and next attempt time survive the stop"
    );

    let w2 = spawn_worker(&h.second_engine().await, fast_worker("w2"));
    h.wait_status(saga, "completed", Duration::from_secs(15))
        .await;
    w2.shutdown().await;
    let rows: Vec<(String, Option<i32>, DateTime<Utc>)> =
        sqlx::query_as("SELECT kind, attempt, at FROM paysaga_history WHERE saga_id = $1 AND step = 'call' ORDER BY id")
            .bind(saga)
            .fetch_all(&h.pool)
            .await
            .unwrap();
    let attempts: Vec<(&str, Option<i32>)> =
        rows.iter().map(|(k, a, _)| (k.as_str(), *a)).collect();
    assert_eq!(
        attempts,
        vec![
            ("step_retrying", Some(1)),
            ("step_retrying", Some(2)),
            ("step_completed", Some(3))
        ],
        "attempts continue from the stored count"
    );
    assert!(
        rows[1].2 >= run_at,
        "the second attempt did not run before its scheduled time"
    );
}

const WAIT_FLOW: &str = r#"
    name = "wait_flow"
    version = 1
    [[steps]]
    name = "effect"
    kind = "test.effect"
    [[steps]]
    name = "await"
    kind = "test.wait"
    params = { key = "$.input.key" }
    poll_every = "300ms"
    deadline = "1h"
"#;

fn done_event(event_id: &str, key: &str) -> IncomingEvent {
    IncomingEvent {
        provider: "test".into(),
        event_id: event_id.into(),
        event_type: "done".into(),
        correlation_key: Some(key.into()),
        payload: json!({"status": "paid", "event": event_id}),
    }
}

#[tokio::test]
async fn event_before_wait_is_kept_and_consumed_when_the_wait_begins() {
    let h = harness().await;
    h.submit(&WAIT_FLOW.replace("300ms", "1h")).await;
    let delivery = h
        .engine
        .deliver_event(done_event("evt-early", "order-1"))
        .await
        .unwrap();
    assert_eq!(delivery.matched_saga, None, "nobody waits yet");
    let saga = h
        .engine
        .start("wait_flow", json!({"key": "order-1"}), None)
        .await
        .unwrap()
        .saga_id;
    let w = spawn_worker(&h.engine, fast_worker("w"));
    h.wait_status(saga, "completed", Duration::from_secs(10))
        .await;
    w.shutdown().await;
    let consumed_by: Option<Uuid> =
        sqlx::query_scalar("SELECT consumed_by FROM paysaga_events WHERE event_id = 'evt-early'")
            .fetch_one(&h.pool)
            .await
            .unwrap();
    assert_eq!(consumed_by, Some(saga));
    let output: serde_json::Value =
        sqlx::query_scalar("SELECT outputs->'await' FROM paysaga_sagas WHERE id = $1")
            .bind(saga)
            .fetch_one(&h.pool)
            .await
            .unwrap();
    assert_eq!(output["via"], "event");
    assert_eq!(output["payload"]["event"], "evt-early");
}

#[tokio::test]
async fn duplicate_event_is_acknowledged_and_ignored() {
    let h = harness().await;
    h.submit(&WAIT_FLOW.replace("300ms", "1h")).await;
    let saga = h
        .engine
        .start("wait_flow", json!({"key": "order-2"}), None)
        .await
        .unwrap()
        .saga_id;
    let w = spawn_worker(&h.engine, fast_worker("w"));
    h.wait_status(saga, "waiting", Duration::from_secs(10))
        .await;
    let first = h
        .engine
        .deliver_event(done_event("evt-1", "order-2"))
        .await
        .unwrap();
    let second = h
        .engine
        .deliver_event(done_event("evt-1", "order-2"))
        .await
        .unwrap();
    assert_eq!(first.matched_saga, Some(saga));
    assert!(!first.duplicate);
    assert!(second.duplicate);
    assert_eq!(second.inbox_id, first.inbox_id);
    h.wait_status(saga, "completed", Duration::from_secs(10))
        .await;
    w.shutdown().await;
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM paysaga_events")
        .fetch_one(&h.pool)
        .await
        .unwrap();
    assert_eq!(rows, 1);
    let received = h
        .history_kinds(saga)
        .await
        .iter()
        .filter(|(k, _)| k == "event_received")
        .count();
    assert_eq!(received, 1);
}

#[tokio::test]
async fn wait_deadline_with_poll_fallback() {
    let h = harness().await;
    h.submit(WAIT_FLOW).await;
    // No webhook ever comes, but the provider's GET answers: the poll completes the wait.
    let saga = h
        .engine
        .start("wait_flow", json!({"key": "order-3"}), None)
        .await
        .unwrap()
        .saga_id;
    let w = spawn_worker(&h.engine, fast_worker("w"));
    h.wait_status(saga, "waiting", Duration::from_secs(10))
        .await;
    h.provider
        .objects
        .lock()
        .unwrap()
        .insert("order-3".into(), json!({"status": "paid"}));
    h.wait_status(saga, "completed", Duration::from_secs(10))
        .await;
    let output: serde_json::Value =
        sqlx::query_scalar("SELECT outputs->'await' FROM paysaga_sagas WHERE id = $1")
            .bind(saga)
            .fetch_one(&h.pool)
            .await
            .unwrap();
    assert_eq!(output["via"], "poll");

    // Nothing ever comes: the deadline ends the wait and the completed effect is compensated.
    h.submit(
        &WAIT_FLOW
            .replace("version = 1", "version = 2")
            .replace("deadline = \"1h\"", "deadline = \"1s\""),
    )
    .await;
    let saga = h
        .engine
        .start("wait_flow", json!({"key": "order-never"}), None)
        .await
        .unwrap()
        .saga_id;
    h.wait_status(saga, "compensated", Duration::from_secs(10))
        .await;
    w.shutdown().await;
    let last_error: String =
        sqlx::query_scalar("SELECT last_error FROM paysaga_sagas WHERE id = $1")
            .bind(saga)
            .fetch_one(&h.pool)
            .await
            .unwrap();
    assert!(last_error.contains("wait deadline passed"), "{last_error}");
    assert_eq!(
        h.provider.compensations.lock().unwrap().clone(),
        vec![(saga, "effect".to_string())]
    );
    let waits: i64 = sqlx::query_scalar("SELECT count(*) FROM paysaga_waits")
        .fetch_one(&h.pool)
        .await
        .unwrap();
    assert_eq!(waits, 0, "no wait row is left behind");
}

#[tokio::test]
async fn compensation_runs_in_reverse_order() {
    let h = harness().await;
    h.submit(
        r#"
        name = "three_then_fail"
        version = 1
        [[steps]]
        name = "a"
        kind = "test.effect"
        [[steps]]
        name = "b"
        kind = "test.effect"
        compensate = false
        [[steps]]
        name = "c"
        kind = "test.effect"
        [[steps]]
        name = "d"
        kind = "test.fail"
    "#,
    )
    .await;
    let saga = h
        .engine
        .start("three_then_fail", json!({}), None)
        .await
        .unwrap()
        .saga_id;
    let w = spawn_worker(&h.engine, fast_worker("w"));
    h.wait_status(saga, "compensated", Duration::from_secs(10))
        .await;
    let order: Vec<String> = h
        .provider
        .compensations
        .lock()
        .unwrap()
        .iter()
        .map(|(_, s)| s.clone())
        .collect();
    assert_eq!(
        order,
        vec!["c", "a"],
        "reverse order, skipping the step that opted out"
    );
    let kinds = h.history_kinds(saga).await;
    let tail: Vec<&str> = kinds
        .iter()
        .rev()
        .take(5)
        .rev()
        .map(|(k, _)| k.as_str())
        .collect();
    assert_eq!(
        tail,
        vec![
            "step_failed",
            "compensation_started",
            "step_compensated",
            "step_compensated",
            "saga_compensated"
        ]
    );

    // After an irreversible step, a failure parks the saga for an operator instead.
    h.submit(
        r#"
        name = "sent_then_fail"
        version = 1
        [[steps]]
        name = "a"
        kind = "test.effect"
        [[steps]]
        name = "send"
        kind = "test.irreversible"
        [[steps]]
        name = "d"
        kind = "test.fail"
    "#,
    )
    .await;
    let saga = h
        .engine
        .start("sent_then_fail", json!({}), None)
        .await
        .unwrap()
        .saga_id;
    h.wait_status(saga, "needs_operator", Duration::from_secs(10))
        .await;
    w.shutdown().await;
    let last_error: String =
        sqlx::query_scalar("SELECT last_error FROM paysaga_sagas WHERE id = $1")
            .bind(saga)
            .fetch_one(&h.pool)
            .await
            .unwrap();
    assert!(
        last_error.contains("send") && last_error.contains("cannot be undone"),
        "{last_error}"
    );
    assert!(!h
        .provider
        .compensations
        .lock()
        .unwrap()
        .iter()
        .any(|(s, _)| *s == saga));
}

#[tokio::test]
async fn idempotent_concurrent_start_creates_one_saga() {
    let h = harness().await;
    let mut starts = Vec::new();
    for _ in 0..100 {
        let engine = h.engine.clone();
        starts.push(tokio::spawn(async move {
            engine
                .start(
                    "noop",
                    json!({"delay_ms": 0}),
                    Some("payout-2026-11-23-001"),
                )
                .await
                .unwrap()
        }));
    }
    let mut ids = Vec::new();
    for s in starts {
        ids.push(s.await.unwrap());
    }
    let created = ids.iter().filter(|s| s.created).count();
    assert_eq!(created, 1);
    assert!(ids.iter().all(|s| s.saga_id == ids[0].saga_id));
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM paysaga_sagas")
        .fetch_one(&h.pool)
        .await
        .unwrap();
    assert_eq!(rows, 1);
    // Same key, different input: refused, nothing stored.
    let err = h
        .engine
        .start(
            "noop",
            json!({"delay_ms": 5}),
            Some("payout-2026-11-23-001"),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::Store(paysaga_store::Error::KeyReused { .. })),
        "{err}"
    );
}

/// Issue 11 item 11: a start retried after a new definition version was validated against
/// the new version before its key was looked up, so a retry of a start that had succeeded
/// (same key, same input) was refused as invalid input. The key is looked up first; the
/// input is compared as a value (`0e0` is `0`).
#[tokio::test]
async fn start_retried_after_a_new_definition_version_returns_the_first_saga() {
    let h = harness().await;
    let v1 = r#"
        name = "pay_flow"
        version = 1
        [[steps]]
        name = "sleep"
        kind = "noop.sleep"
        params = { delay_ms = "$.input.delay_ms" }
    "#;
    h.submit(v1).await;
    let first = h
        .engine
        .start("pay_flow", json!({"delay_ms": 0}), Some("payout-9"))
        .await
        .unwrap();
    assert!(first.created);
    // Version 2 needs an input field the first start did not have.
    let v2_step = r#"
        [[steps]]
        name = "await"
        kind = "test.wait"
        params = { key = "$.input.key" }
    "#;
    h.submit(&format!(
        "{}{v2_step}",
        v1.replace("version = 1", "version = 2")
    ))
    .await;
    // The same input, and the same input written differently (which version 1's step
    // would not even accept as it is written).
    for input in [
        json!({"delay_ms": 0}),
        serde_json::from_str(r#"{"delay_ms": 0e0}"#).unwrap(),
    ] {
        let retried = h
            .engine
            .start("pay_flow", input.clone(), Some("payout-9"))
            .await
            .unwrap_or_else(|e| panic!("the retried start {input} was refused: {e}"));
        assert_eq!(
            retried,
            paysaga_runtime::Started {
                saga_id: first.saga_id,
                created: false
            }
        );
    }
    // Another input under the same key is still a reused key, not a validation error.
    let err = h
        .engine
        .start("pay_flow", json!({"delay_ms": 5}), Some("payout-9"))
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::Store(paysaga_store::Error::KeyReused { .. })),
        "{err}"
    );
    // A new key starts on version 2 and is validated against it.
    let err = h
        .engine
        .start("pay_flow", json!({"delay_ms": 0}), Some("payout-10"))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("$.input.key"), "{err}");
    let rows: Vec<(Uuid, i32)> =
        sqlx::query_as("SELECT id, version FROM paysaga_sagas WHERE workflow = 'pay_flow'")
            .fetch_all(&h.pool)
            .await
            .unwrap();
    assert_eq!(rows, [(first.saga_id, 1)]);
}

/// Issue 11 item 10: a worker stopping after its grace period aborted the attempt in flight
/// and released the saga without a trace in its history. The release now records why, which
/// worker and at which step and attempt, in the transaction that releases it.
#[tokio::test]
async fn an_attempt_aborted_at_shutdown_is_recorded_in_history() {
    let h = harness().await;
    let saga = h
        .engine
        .start("noop", json!({"delay_ms": 60_000}), None)
        .await
        .unwrap()
        .saga_id;
    let mut config = fast_worker("stopping");
    config.shutdown_grace = Duration::from_millis(200);
    let w = spawn_worker(&h.engine, config);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let owner: Option<Uuid> =
            sqlx::query_scalar("SELECT owner FROM paysaga_sagas WHERE id = $1")
                .bind(saga)
                .fetch_one(&h.pool)
                .await
                .unwrap();
        if owner.is_some() {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "never claimed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    w.shutdown().await;
    let rows: Vec<(String, Option<Uuid>, Option<i32>)> = sqlx::query_as(
        "SELECT detail->>'reason', worker, (detail->>'step_index')::int4 FROM paysaga_history
         WHERE saga_id = $1 AND kind = 'saga_released'",
    )
    .bind(saga)
    .fetch_all(&h.pool)
    .await
    .unwrap();
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert!(rows[0].0.contains("grace period over"), "{rows:?}");
    assert!(rows[0].1.is_some(), "names the worker");
    assert_eq!(rows[0].2, Some(0), "at the first step");
    let owner: Option<Uuid> = sqlx::query_scalar("SELECT owner FROM paysaga_sagas WHERE id = $1")
        .bind(saga)
        .fetch_one(&h.pool)
        .await
        .unwrap();
    assert_eq!(owner, None);
}

#[tokio::test]
async fn history_is_complete() {
    let h = harness().await;
    let saga = h
        .engine
        .start("noop", json!({"delay_ms": 1}), None)
        .await
        .unwrap()
        .saga_id;
    let w = spawn_worker(&h.engine, fast_worker("w"));
    h.wait_status(saga, "completed", Duration::from_secs(10))
        .await;
    w.shutdown().await;
    let rows: Vec<HistoryRow> = sqlx::query_as(
        "SELECT kind, step, attempt, worker FROM paysaga_history WHERE saga_id = $1 ORDER BY id",
    )
    .bind(saga)
    .fetch_all(&h.pool)
    .await
    .unwrap();
    let kinds: Vec<(&str, Option<&str>)> = rows
        .iter()
        .map(|r| (r.0.as_str(), r.1.as_deref()))
        .collect();
    assert_eq!(
        kinds,
        vec![
            ("saga_started", None),
            ("step_completed", Some("sleep1")),
            ("step_completed", Some("sleep2")),
            ("step_completed", Some("sleep3")),
            ("step_completed", Some("sleep4")),
            ("step_completed", Some("sleep5")),
            ("saga_completed", None),
        ]
    );
    assert!(
        rows[1..].iter().all(|r| r.3.is_some()),
        "every transition names its worker"
    );
    assert!(
        rows[1..6].iter().all(|r| r.2 == Some(1)),
        "every step entry names its attempt"
    );
    let view = h.engine.get(saga).await.unwrap();
    assert_eq!(view.saga.status, SagaStatus::Completed);
    assert_eq!(view.saga.outputs["sleep5"], json!({"slept_ms": 1}));
}

#[tokio::test]
async fn definition_versioning_pins_running_sagas() {
    let h = harness().await;
    let v1 = h.submit(WAIT_FLOW).await;
    let saga = h
        .engine
        .start("wait_flow", json!({"key": "order-v"}), None)
        .await
        .unwrap()
        .saga_id;
    let w = spawn_worker(&h.engine, fast_worker("w"));
    h.wait_status(saga, "waiting", Duration::from_secs(10))
        .await;

    // Same content again: a no-op. Different content under v1: refused.
    let again = h.engine.submit_definition(&v1).await.unwrap();
    assert_eq!(again.version, 1);
    let mut changed = v1.clone();
    changed.steps[1].poll_every = Duration::from_secs(9);
    let err = h.engine.submit_definition(&changed).await.unwrap_err();
    assert!(
        err.to_string()
            .contains("already exists with different content"),
        "{err}"
    );

    // v2 drops the effect step and adds a final noop.
    h.submit(
        r#"
        name = "wait_flow"
        version = 2
        [[steps]]
        name = "await"
        kind = "test.wait"
        params = { key = "$.input.key" }
        [[steps]]
        name = "finish"
        kind = "noop.sleep"
    "#,
    )
    .await;
    h.engine
        .deliver_event(done_event("evt-v", "order-v"))
        .await
        .unwrap();
    h.wait_status(saga, "completed", Duration::from_secs(10))
        .await;
    let (version, outputs): (i32, serde_json::Value) =
        sqlx::query_as("SELECT version, outputs FROM paysaga_sagas WHERE id = $1")
            .bind(saga)
            .fetch_one(&h.pool)
            .await
            .unwrap();
    assert_eq!(version, 1);
    let mut keys: Vec<&String> = outputs.as_object().unwrap().keys().collect();
    keys.sort();
    assert_eq!(
        keys,
        vec!["await", "effect"],
        "the saga finished on v1's steps"
    );

    let new_saga = h
        .engine
        .start("wait_flow", json!({"key": "order-w"}), None)
        .await
        .unwrap()
        .saga_id;
    let version: i32 = sqlx::query_scalar("SELECT version FROM paysaga_sagas WHERE id = $1")
        .bind(new_saga)
        .fetch_one(&h.pool)
        .await
        .unwrap();
    assert_eq!(version, 2, "new sagas start on the latest version");
    w.shutdown().await;
}

#[tokio::test]
async fn nothing_is_stored_on_bad_input_or_bad_definition() {
    let h = harness().await;
    h.submit(WAIT_FLOW).await;
    let err = h
        .engine
        .start("wait_flow", json!({"kee": "typo"}), None)
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("step await") && msg.contains("$.input.key"),
        "{msg}"
    );
    let err = h
        .engine
        .start("noop", json!({"delay_ms": -3}), None)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("delay_ms"), "{err}");
    let err = h
        .engine
        .start("no_such_flow", json!({}), None)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::UnknownWorkflow { .. }), "{err}");
    let sagas: i64 = sqlx::query_scalar("SELECT count(*) FROM paysaga_sagas")
        .fetch_one(&h.pool)
        .await
        .unwrap();
    assert_eq!(sagas, 0);

    let bad = paysaga_core::Definition::from_toml(
        "name = 'bad'\nversion = 1\n[[steps]]\nname = 'x'\nkind = 'lumanu.unknown'",
    )
    .unwrap();
    let err = h.engine.submit_definition(&bad).await.unwrap_err();
    assert!(
        err.to_string()
            .contains("unknown step kind \"lumanu.unknown\""),
        "{err}"
    );
    let defs: i64 =
        sqlx::query_scalar("SELECT count(*) FROM paysaga_definitions WHERE name = 'bad'")
            .fetch_one(&h.pool)
            .await
            .unwrap();
    assert_eq!(defs, 0);
}

#[tokio::test]
async fn worker_without_a_step_kind_leaves_those_sagas_alone() {
    let h = harness().await;
    h.submit(EFFECT_THEN_NOOP).await;
    let saga = h
        .engine
        .start("effect_then_noop", json!({}), None)
        .await
        .unwrap()
        .saga_id;
    let plain = h
        .engine
        .start("noop", json!({"delay_ms": 0}), None)
        .await
        .unwrap()
        .saga_id;
    // A process that only knows noop.sleep.
    let store = paysaga_store::PgStore::connect(h.db.url()).await.unwrap();
    let mut registry = paysaga_runtime::Registry::new();
    registry.register(paysaga_runtime::noop::Sleep);
    let limited = paysaga_runtime::Engine::new(std::sync::Arc::new(store), registry);
    let missing = limited
        .store()
        .sagas_needing_other_kinds(&limited.registry().names())
        .await
        .unwrap();
    assert_eq!(missing.len(), 1);
    assert_eq!(missing[0].missing_kinds, vec!["test.effect".to_string()]);
    let w = spawn_worker(&limited, fast_worker("limited"));
    h.wait_status(plain, "completed", Duration::from_secs(10))
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let status: String = sqlx::query_scalar("SELECT status FROM paysaga_sagas WHERE id = $1")
        .bind(saga)
        .fetch_one(&h.pool)
        .await
        .unwrap();
    assert_eq!(status, "scheduled");
    w.shutdown().await;
    let w = spawn_worker(&h.engine, fast_worker("full"));
    h.wait_status(saga, "completed", Duration::from_secs(10))
        .await;
    w.shutdown().await;
}

#[tokio::test]
async fn cancel_works_while_waiting_and_runs_compensations() {
    let h = harness().await;
    h.submit(&WAIT_FLOW.replace("300ms", "1h")).await;
    let saga = h
        .engine
        .start("wait_flow", json!({"key": "order-c"}), None)
        .await
        .unwrap()
        .saga_id;
    let w = spawn_worker(&h.engine, fast_worker("w"));
    h.wait_status(saga, "waiting", Duration::from_secs(10))
        .await;
    h.engine
        .cancel(saga, "test:ops", "customer withdrew the request")
        .await
        .unwrap();
    h.wait_status(saga, "cancelled", Duration::from_secs(10))
        .await;
    w.shutdown().await;
    assert_eq!(
        h.provider.compensations.lock().unwrap().clone(),
        vec![(saga, "effect".to_string())]
    );
    let reason: serde_json::Value = sqlx::query_scalar(
        "SELECT detail FROM paysaga_history WHERE saga_id = $1 AND kind = 'cancel_requested' AND actor = 'test:ops'",
    )
    .bind(saga)
    .fetch_one(&h.pool)
    .await
    .unwrap();
    assert_eq!(reason["reason"], "customer withdrew the request");
    let err = h
        .engine
        .cancel(saga, "test:ops", "again")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("cannot be cancelled"), "{err}");
}

/// Crash recovery time: an idle worker no longer looks for expired leases every
/// `reap_every` but when the next lease of another worker expires; a crashed worker's saga
/// must still be released within `reap_every` (plus scheduling slack) of its lease's expiry.
#[tokio::test]
async fn a_crashed_workers_saga_is_released_within_reap_every_of_its_lease_expiry() {
    let h = harness().await;
    h.submit(EFFECT_THEN_NOOP).await;
    *h.provider.hang_after_effect.lock().unwrap() = true;
    let saga = h
        .engine
        .start("effect_then_noop", json!({}), None)
        .await
        .unwrap()
        .saga_id;
    let w1 = spawn_worker(&h.engine, fast_worker("w1"));
    tokio::time::timeout(
        Duration::from_secs(10),
        h.provider.effect_applied.notified(),
    )
    .await
    .unwrap();
    // The second worker is up (and has looked at the leases) before the first one dies.
    let engine2 = h.second_engine().await;
    let config = fast_worker("w2");
    let reap_every = config.reap_every;
    let w2 = spawn_worker(&engine2, config);
    tokio::time::sleep(Duration::from_millis(700)).await;
    let dead: Uuid = sqlx::query_scalar("SELECT owner FROM paysaga_sagas WHERE id = $1")
        .bind(saga)
        .fetch_one(&h.pool)
        .await
        .unwrap();
    w1.crash().await;
    *h.provider.hang_after_effect.lock().unwrap() = false;
    h.wait_status(saga, "completed", Duration::from_secs(15))
        .await;
    w2.shutdown().await;
    let expired: DateTime<Utc> =
        sqlx::query_scalar("SELECT lease_expires_at FROM paysaga_workers WHERE id = $1")
            .bind(dead)
            .fetch_one(&h.pool)
            .await
            .unwrap();
    let released: DateTime<Utc> = sqlx::query_scalar(
        "SELECT at FROM paysaga_history WHERE saga_id = $1 AND kind = 'lease_taken_over'",
    )
    .bind(saga)
    .fetch_one(&h.pool)
    .await
    .unwrap();
    let delay = (released - expired).to_std().unwrap_or_default();
    eprintln!("released {delay:?} after the lease expired (reap_every {reap_every:?})");
    assert!(released > expired, "not released before the lease expired");
    assert!(
        delay <= reap_every + Duration::from_millis(400),
        "released {delay:?} after the lease expired; reap_every is {reap_every:?}"
    );
}
