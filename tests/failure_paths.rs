//! Money-safe failure paths (issue 11): each test is named after a scenario that went wrong
//! before, runs a real worker against a real PostgreSQL, and asserts the database state and
//! how many times the step (the "provider call") ran.
#![allow(clippy::unwrap_used)]

mod support;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use paysaga_core::{Definition, StepContext, StepKind, StepOutcome, WaitSpec, Wake};
use paysaga_runtime::http::{Rejection, VerifiedEvent, WebhookVerifier};
use paysaga_runtime::{Engine, WorkerConfig};
use paysaga_store::PgStore;
use serde_json::{json, Value};
use support::*;
use uuid::Uuid;

/// Calls per step kind name, shared by the test kinds below.
#[derive(Debug, Clone, Default)]
struct Calls(Arc<Mutex<HashMap<&'static str, u32>>>);

impl Calls {
    fn hit(&self, kind: &'static str) -> u32 {
        let mut m = self.0.lock().unwrap();
        let n = m.entry(kind).or_default();
        *n += 1;
        *n
    }
    fn get(&self, kind: &str) -> u32 {
        self.0.lock().unwrap().get(kind).copied().unwrap_or(0)
    }
}

/// `fp.ambiguous_pay`: irreversible; attempt 1 times out after sending (the money may have
/// gone), later attempts succeed.
#[derive(Debug, Clone)]
struct AmbiguousPay(Calls);

#[async_trait]
impl StepKind for AmbiguousPay {
    fn name(&self) -> &'static str {
        "fp.ambiguous_pay"
    }
    fn irreversible(&self) -> bool {
        true
    }
    async fn run(&self, _ctx: &StepContext, _params: Value) -> StepOutcome {
        if self.0.hit(self.name()) == 1 {
            StepOutcome::retry("create payout: timed out after the request was sent")
        } else {
            StepOutcome::Done(json!({"payout": "p_1"}))
        }
    }
}

/// `fp.nul_answer`: the provider's answer holds NUL characters (in a value and a key).
#[derive(Debug, Clone)]
struct NulAnswer(Calls);

#[async_trait]
impl StepKind for NulAnswer {
    fn name(&self) -> &'static str {
        "fp.nul_answer"
    }
    async fn run(&self, ctx: &StepContext, _params: Value) -> StepOutcome {
        self.0.hit(self.name());
        if ctx.attempt == 1 {
            // The error text too: it is stored in history and last_error.
            return StepOutcome::retry("provider said: bad\u{0}gateway");
        }
        StepOutcome::Done(json!({"name": "ACME\u{0}Ltd", "k\u{0}ey": ["x\u{0}"]}))
    }
}

/// `fp.counted`: completes, counting its calls (its result is refused by a test trigger).
#[derive(Debug, Clone)]
struct Counted(Calls);

#[async_trait]
impl StepKind for Counted {
    fn name(&self) -> &'static str {
        "fp.counted"
    }
    async fn run(&self, _ctx: &StepContext, _params: Value) -> StepOutcome {
        self.0.hit(self.name());
        StepOutcome::Done(json!({"ok": true}))
    }
}

/// `fp.panics`: panics on its first attempt.
#[derive(Debug, Clone)]
struct Panics(Calls);

#[async_trait]
impl StepKind for Panics {
    fn name(&self) -> &'static str {
        "fp.panics"
    }
    async fn run(&self, ctx: &StepContext, _params: Value) -> StepOutcome {
        self.0.hit(self.name());
        if ctx.attempt == 1 {
            panic!("boom: index out of range in a provider parser");
        }
        StepOutcome::Done(json!({"attempt": ctx.attempt}))
    }
}

/// `fp.retry_in_centuries`: a provider answering 429 with a `Retry-After` of centuries.
#[derive(Debug, Clone)]
struct RetryInCenturies(Calls);

#[async_trait]
impl StepKind for RetryInCenturies {
    fn name(&self) -> &'static str {
        "fp.retry_in_centuries"
    }
    async fn run(&self, _ctx: &StepContext, _params: Value) -> StepOutcome {
        self.0.hit(self.name());
        StepOutcome::Retry {
            error: "429 Too Many Requests".into(),
            after: Some(Duration::from_secs(u64::MAX / 4)),
        }
    }
}

/// `fp.wait`: waits for `test`/`done` with key `params.key`; a poll finds nothing.
#[derive(Debug, Clone)]
struct WaitLong(Calls);

#[async_trait]
impl StepKind for WaitLong {
    fn name(&self) -> &'static str {
        "fp.wait"
    }
    async fn run(&self, ctx: &StepContext, params: Value) -> StepOutcome {
        self.0.hit(self.name());
        match &ctx.wake {
            Wake::Event(_) => StepOutcome::Done(json!({"via": "event"})),
            _ => StepOutcome::Wait(WaitSpec::new(
                "test",
                "done",
                params["key"].as_str().unwrap_or("k"),
            )),
        }
    }
}

/// The test worker with a lease long enough for a loaded test machine: a lease lost mid-step
/// would run a step twice and blur the call counts these tests assert.
fn steady_worker() -> WorkerConfig {
    let mut config = fast_worker("fp");
    config.lease_ttl = Duration::from_secs(6);
    config
}

/// An engine on the harness's database with the support kinds and the kinds above.
async fn engine(h: &Harness, calls: &Calls) -> Engine {
    let store = PgStore::connect(h.db.url()).await.unwrap();
    let mut r = registry(&h.provider);
    r.register(AmbiguousPay(calls.clone()))
        .register(NulAnswer(calls.clone()))
        .register(Counted(calls.clone()))
        .register(Panics(calls.clone()))
        .register(RetryInCenturies(calls.clone()))
        .register(WaitLong(calls.clone()));
    Engine::new(Arc::new(store), r)
}

async fn submit(engine: &Engine, toml: &str) {
    engine
        .submit_definition(&Definition::from_toml(toml).unwrap())
        .await
        .unwrap();
}

async fn row(h: &Harness, id: Uuid) -> (String, i32, Option<String>, bool) {
    sqlx::query_as(
        "SELECT status, attempt, last_error, cancel_requested FROM paysaga_sagas WHERE id = $1",
    )
    .bind(id)
    .fetch_one(&h.pool)
    .await
    .unwrap()
}

// ---------------------------------------------------------------------------------------------
// Item 1

/// A payout whose attempt timed out (the money may have gone) is cancelled by an operator:
/// before, the saga compensated the earlier steps and ended `cancelled` ("nothing happened");
/// now it parks for an operator saying so, and the cancel request does not stay set, so that
/// `resume` moves on instead of parking again.
#[tokio::test]
async fn cancel_after_an_irreversible_payout_timed_out_parks_instead_of_cancelling() {
    let h = harness().await;
    let calls = Calls::default();
    let engine = engine(&h, &calls).await;
    submit(
        &engine,
        r#"
        name = "fp_cancel"
        version = 1
        [[steps]]
        name = "reserve"
        kind = "test.effect"
        [[steps]]
        name = "pay"
        kind = "fp.ambiguous_pay"
        retry = { initial_delay = "1h", max_delay = "1h" }
    "#,
    )
    .await;
    let worker = spawn_worker(&engine, steady_worker());
    let id = engine
        .start("fp_cancel", json!({}), None)
        .await
        .unwrap()
        .saga_id;
    // Attempt 1 of `pay` timed out; the saga backs off for an hour.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while row(&h, id).await.1 < 1 {
        assert!(tokio::time::Instant::now() < deadline, "pay never ran");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    engine
        .cancel(id, "cli:alice", "payee withdrew")
        .await
        .unwrap();
    h.wait_status(id, "needs_operator", Duration::from_secs(10))
        .await;
    let (_, attempt, last_error, cancel_requested) = row(&h, id).await;
    let last_error = last_error.unwrap();
    assert!(
        last_error.contains("pay is irreversible")
            && last_error.contains("may have reached the provider"),
        "{last_error}"
    );
    assert_eq!(attempt, 1, "the attempt made is kept");
    assert!(!cancel_requested, "the cancel was acted on: reset");
    assert!(
        h.provider.compensations.lock().unwrap().is_empty(),
        "nothing may be undone while the payout may have gone"
    );
    let kinds: Vec<String> = h.history_kinds(id).await.into_iter().map(|k| k.0).collect();
    assert!(kinds.contains(&"saga_parked".to_string()), "{kinds:?}");
    assert!(!kinds.contains(&"saga_cancelled".to_string()), "{kinds:?}");
    assert!(
        !kinds.contains(&"step_compensated".to_string()),
        "{kinds:?}"
    );
    assert_eq!(calls.get("fp.ambiguous_pay"), 1);

    // The operator checked the provider and resumes: the step runs again (the provider
    // deduplicates it) and the saga completes instead of parking again.
    engine
        .resume(id, "cli:alice", "payout p_1 seen at the provider")
        .await
        .unwrap();
    h.wait_status(id, "completed", Duration::from_secs(10))
        .await;
    assert_eq!(calls.get("fp.ambiguous_pay"), 2);
    worker.shutdown().await;
}

/// A payout that times out and then is refused (4xx) on a later attempt: the refusal is
/// definite for that attempt only, the first may have paid. Before, the saga compensated and
/// ended `compensated`; now it parks.
#[tokio::test]
async fn payout_refused_after_an_earlier_timeout_parks_instead_of_compensating() {
    let h = harness().await;
    let calls = Calls::default();
    let engine = engine(&h, &calls).await;
    submit(
        &engine,
        r#"
        name = "fp_refused"
        version = 1
        [[steps]]
        name = "reserve"
        kind = "test.effect"
        [[steps]]
        name = "pay"
        kind = "fp.ambiguous_pay"
        retry = { initial_delay = "50ms", max_attempts = 1 }
    "#,
    )
    .await;
    let worker = spawn_worker(&engine, steady_worker());
    let id = engine
        .start("fp_refused", json!({}), None)
        .await
        .unwrap()
        .saga_id;
    // One attempt allowed: it times out, the retries are exhausted.
    h.wait_status(id, "needs_operator", Duration::from_secs(10))
        .await;
    let (_, _, last_error, _) = row(&h, id).await;
    assert!(
        last_error
            .as_deref()
            .unwrap_or_default()
            .contains("may have reached the provider"),
        "{last_error:?}"
    );
    assert!(h.provider.compensations.lock().unwrap().is_empty());
    assert_eq!(calls.get("fp.ambiguous_pay"), 1);
    worker.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// Item 2

/// A provider answer (and error) holding NUL, which PostgreSQL `text`/`jsonb` refuse: before,
/// every commit failed and the step ran again every ~10 s forever. Now the text is made
/// storable before the commit: the saga completes and the step ran twice (one transient
/// failure, one success).
#[tokio::test]
async fn a_provider_answer_with_nul_characters_is_stored_and_the_step_is_not_rerun() {
    let h = harness().await;
    let calls = Calls::default();
    let engine = engine(&h, &calls).await;
    submit(
        &engine,
        r#"
        name = "fp_nul"
        version = 1
        [[steps]]
        name = "fetch"
        kind = "fp.nul_answer"
        retry = { initial_delay = "50ms" }
    "#,
    )
    .await;
    let worker = spawn_worker(&engine, steady_worker());
    let id = engine
        .start("fp_nul", json!({}), None)
        .await
        .unwrap()
        .saga_id;
    h.wait_status(id, "completed", Duration::from_secs(15))
        .await;
    let output: Value =
        sqlx::query_scalar("SELECT outputs->'fetch' FROM paysaga_sagas WHERE id = $1")
            .bind(id)
            .fetch_one(&h.pool)
            .await
            .unwrap();
    assert_eq!(output["name"], json!("ACME\u{FFFD}Ltd"));
    assert_eq!(output["k\u{FFFD}ey"], json!(["x\u{FFFD}"]));
    let retry_error: Option<String> = sqlx::query_scalar(
        "SELECT error FROM paysaga_history WHERE saga_id = $1 AND kind = 'step_retrying'",
    )
    .bind(id)
    .fetch_one(&h.pool)
    .await
    .unwrap();
    assert_eq!(
        retry_error.as_deref(),
        Some("provider said: bad\u{FFFD}gateway")
    );
    assert_eq!(calls.get("fp.nul_answer"), 2);
    worker.shutdown().await;
}

/// A result the database refuses for good (here a constraint a trigger enforces): before,
/// the saga was given back with its attempt unchanged and the step re-ran every ~10 s forever.
/// Now, after a bounded number of commit tries, the saga parks with the database's error and
/// the attempt counted; the step ran once.
#[tokio::test]
async fn a_result_the_database_always_refuses_parks_the_saga_after_bounded_tries() {
    let h = harness().await;
    let calls = Calls::default();
    let engine = engine(&h, &calls).await;
    submit(
        &engine,
        r#"
        name = "fp_poison"
        version = 1
        [[steps]]
        name = "poison"
        kind = "fp.counted"
    "#,
    )
    .await;
    sqlx::raw_sql(
        "CREATE FUNCTION refuse_poison() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
             IF NEW.step = 'poison' AND NEW.kind = 'step_completed' THEN
                 RAISE EXCEPTION 'refused by the test constraint' USING ERRCODE = '23514';
             END IF;
             RETURN NEW;
         END $$;
         CREATE TRIGGER refuse_poison BEFORE INSERT ON paysaga_history
             FOR EACH ROW EXECUTE FUNCTION refuse_poison();",
    )
    .execute(&h.pool)
    .await
    .unwrap();
    let worker = spawn_worker(&engine, steady_worker());
    let id = engine
        .start("fp_poison", json!({}), None)
        .await
        .unwrap()
        .saga_id;
    h.wait_status(id, "needs_operator", Duration::from_secs(40))
        .await;
    let (_, attempt, last_error, _) = row(&h, id).await;
    let last_error = last_error.unwrap();
    assert!(
        last_error.contains("could not be stored")
            && last_error.contains("refused by the test constraint"),
        "{last_error}"
    );
    assert_eq!(
        attempt, 1,
        "the attempt is counted although its result was not stored"
    );
    // Let a few more claim cycles pass: the parked saga is not run again.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(calls.get("fp.counted"), 1);
    let owner: Option<Uuid> = sqlx::query_scalar("SELECT owner FROM paysaga_sagas WHERE id = $1")
        .bind(id)
        .fetch_one(&h.pool)
        .await
        .unwrap();
    assert_eq!(owner, None);
    worker.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// Item 3

/// A step that panics: before, the task died, the JoinError was logged and the worker kept
/// renewing the lease of a saga nothing ran. Now the panic is a transient failure of that
/// attempt (its message in history) and the saga goes on.
#[tokio::test]
async fn a_panicking_step_is_a_transient_failure_and_the_saga_is_not_held() {
    let h = harness().await;
    let calls = Calls::default();
    let engine = engine(&h, &calls).await;
    submit(
        &engine,
        r#"
        name = "fp_panic"
        version = 1
        [[steps]]
        name = "parse"
        kind = "fp.panics"
        retry = { initial_delay = "50ms" }
    "#,
    )
    .await;
    let worker = spawn_worker(&engine, steady_worker());
    let id = engine
        .start("fp_panic", json!({}), None)
        .await
        .unwrap()
        .saga_id;
    h.wait_status(id, "completed", Duration::from_secs(10))
        .await;
    let error: Option<String> = sqlx::query_scalar(
        "SELECT error FROM paysaga_history WHERE saga_id = $1 AND kind = 'step_retrying'",
    )
    .bind(id)
    .fetch_one(&h.pool)
    .await
    .unwrap();
    assert_eq!(
        error.as_deref(),
        Some("step panicked: boom: index out of range in a provider parser")
    );
    assert_eq!(calls.get("fp.panics"), 2);
    worker.shutdown().await;
}

/// A `Retry-After` of centuries used to overflow the retry arithmetic (a panic that held the
/// saga); a `deadline = "300000y"` overflowed the wait arithmetic. Now the first exhausts
/// the retry policy and the second is refused at submit.
#[tokio::test]
async fn a_retry_after_of_centuries_ends_the_retries_and_a_300000_year_deadline_is_refused() {
    let h = harness().await;
    let calls = Calls::default();
    let engine = engine(&h, &calls).await;
    submit(
        &engine,
        r#"
        name = "fp_centuries"
        version = 1
        [[steps]]
        name = "call"
        kind = "fp.retry_in_centuries"
    "#,
    )
    .await;
    let worker = spawn_worker(&engine, steady_worker());
    let id = engine
        .start("fp_centuries", json!({}), None)
        .await
        .unwrap()
        .saga_id;
    h.wait_status(id, "compensated", Duration::from_secs(10))
        .await;
    let (_, _, last_error, _) = row(&h, id).await;
    assert!(
        last_error
            .as_deref()
            .unwrap_or_default()
            .contains("retries exhausted after 1"),
        "{last_error:?}"
    );
    assert_eq!(calls.get("fp.retry_in_centuries"), 1);
    worker.shutdown().await;

    let far = Definition::from_toml(
        r#"
        name = "fp_far"
        version = 1
        [[steps]]
        name = "w"
        kind = "fp.wait"
        deadline = "300000y"
    "#,
    )
    .unwrap();
    let refused = engine
        .submit_definition(&far)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        refused.contains("deadline") && refused.contains("longest allowed"),
        "{refused}"
    );
    let stored: i64 =
        sqlx::query_scalar("SELECT count(*) FROM paysaga_definitions WHERE name = 'fp_far'")
            .fetch_one(&h.pool)
            .await
            .unwrap();
    assert_eq!(stored, 0);
}

// ---------------------------------------------------------------------------------------------
// Item 4

/// A claim whose reply was lost (the connection died after the claim's UPDATE committed): the
/// saga is owned by a live worker that does not run it. Before, it stayed so until that worker
/// stopped; now the worker notices and releases it, and it runs.
#[tokio::test]
async fn a_saga_claimed_by_a_claim_whose_reply_was_lost_is_released_and_run() {
    let h = harness().await;
    let calls = Calls::default();
    let engine = engine(&h, &calls).await;
    submit(
        &engine,
        r#"
        name = "fp_lost_claim"
        version = 1
        [[steps]]
        name = "once"
        kind = "fp.counted"
    "#,
    )
    .await;
    let id = engine
        .start("fp_lost_claim", json!({}), None)
        .await
        .unwrap()
        .saga_id;
    // Not due yet, so that the worker does not claim it itself.
    sqlx::query("UPDATE paysaga_sagas SET run_at = now() + interval '1 hour' WHERE id = $1")
        .bind(id)
        .execute(&h.pool)
        .await
        .unwrap();
    let worker = spawn_worker(&engine, steady_worker());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let worker_id: Uuid = loop {
        let live: Option<Uuid> =
            sqlx::query_scalar("SELECT id FROM paysaga_workers WHERE stopped_at IS NULL")
                .fetch_optional(&h.pool)
                .await
                .unwrap();
        if let Some(w) = live {
            break w;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "worker never registered"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    // What a claim does, with its reply lost on the way back.
    sqlx::query(
        "UPDATE paysaga_sagas SET owner = $2, fence = fence + 1, run_at = now() WHERE id = $1",
    )
    .bind(id)
    .bind(worker_id)
    .execute(&h.pool)
    .await
    .unwrap();
    h.wait_status(id, "completed", Duration::from_secs(10))
        .await;
    assert_eq!(calls.get("fp.counted"), 1);
    let owner: Option<Uuid> = sqlx::query_scalar("SELECT owner FROM paysaga_sagas WHERE id = $1")
        .bind(id)
        .fetch_one(&h.pool)
        .await
        .unwrap();
    assert_eq!(owner, None);
    worker.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// Item 5

/// A worker whose clock is `skew` off: its backoff must hold (not collapse, not grow by the
/// skew) and a wait's deadline and poll time must be on the database's clock.
async fn worker_clock_off_by(skew: chrono::TimeDelta) {
    let h = harness().await;
    let calls = Calls::default();
    let engine = engine(&h, &calls).await;
    submit(
        &engine,
        r#"
        name = "fp_clock_retry"
        version = 1
        [[steps]]
        name = "flaky"
        kind = "test.flaky"
        params = { failures = 1 }
        retry = { initial_delay = "2s", max_delay = "2s", jitter = 0.0 }
    "#,
    )
    .await;
    submit(
        &engine,
        r#"
        name = "fp_clock_wait"
        version = 1
        [[steps]]
        name = "wait"
        kind = "fp.wait"
        params = { key = "$.input.key" }
        deadline = "5m"
        poll_every = "500ms"
    "#,
    )
    .await;
    let worker = spawn_worker(&engine, {
        let mut config = steady_worker();
        config.clock_skew = skew;
        config
    });
    let retried = engine
        .start("fp_clock_retry", json!({}), None)
        .await
        .unwrap()
        .saga_id;
    let waiting = engine
        .start("fp_clock_wait", json!({"key": "w1"}), None)
        .await
        .unwrap()
        .saga_id;
    h.wait_status(retried, "completed", Duration::from_secs(20))
        .await;
    let times: Vec<(String, DateTime<Utc>)> = sqlx::query_as(
        "SELECT kind, at FROM paysaga_history WHERE saga_id = $1
           AND kind IN ('step_retrying', 'step_completed') ORDER BY id",
    )
    .bind(retried)
    .fetch_all(&h.pool)
    .await
    .unwrap();
    assert_eq!(times.len(), 2, "{times:?}");
    let gap = times[1].1 - times[0].1;
    assert!(
        gap >= chrono::TimeDelta::milliseconds(1_900),
        "backoff of 2s collapsed to {gap} with a clock {skew} off"
    );

    // The wait polls every 500ms and its 5-minute deadline is on the database's clock: it is
    // still waiting after several polls, its deadline about 5 minutes from the database's now.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (status, deadline, db_now): (String, DateTime<Utc>, DateTime<Utc>) = sqlx::query_as(
        "SELECT status, (wait->>'deadline')::timestamptz, now() FROM paysaga_sagas WHERE id = $1",
    )
    .bind(waiting)
    .fetch_one(&h.pool)
    .await
    .unwrap();
    assert_eq!(
        status, "waiting",
        "the wait expired early with a clock {skew} off"
    );
    let left = deadline - db_now;
    assert!(
        left > chrono::TimeDelta::minutes(4) && left <= chrono::TimeDelta::minutes(5),
        "wait deadline {left} from the database's now with a clock {skew} off"
    );
    assert!(
        calls.get("fp.wait") >= 3,
        "the wait was not polled on the database's clock ({} runs) with a clock {skew} off",
        calls.get("fp.wait")
    );
    worker.shutdown().await;
}

#[tokio::test]
async fn a_worker_clock_ten_minutes_behind_keeps_backoff_and_waits() {
    worker_clock_off_by(chrono::TimeDelta::minutes(-10)).await;
}

#[tokio::test]
async fn a_worker_clock_ten_minutes_ahead_keeps_backoff_and_waits() {
    worker_clock_off_by(chrono::TimeDelta::minutes(10)).await;
}

// ---------------------------------------------------------------------------------------------
// Item 7

/// Accepts every webhook; the body is `{"id": ..., "key": ...}`.
#[derive(Debug)]
struct TrustingVerifier;

impl WebhookVerifier for TrustingVerifier {
    fn provider(&self) -> &str {
        "test"
    }
    fn verify(
        &self,
        _headers: &reqwest::header::HeaderMap,
        body: &[u8],
        _now: DateTime<Utc>,
    ) -> Result<VerifiedEvent, Rejection> {
        let v: Value = serde_json::from_slice(body).map_err(|e| Rejection::Unauthorized {
            reason: e.to_string(),
        })?;
        Ok(VerifiedEvent {
            event_id: v["id"].as_str().unwrap_or_default().to_string(),
            event_type: "other".to_string(),
            correlation_key: v["key"].as_str().map(str::to_string),
            payload: v,
        })
    }
}

/// A burst of 2,000 webhooks while 200 sagas run on the same process: before, up to 1,024
/// webhook store tasks and the LISTEN connection shared the 16-connection pool with claims and
/// commits, so commits timed out. Now webhook store work has its own bound: every saga
/// completes with no commit retried, and every webhook is either stored or answered 503
/// (never lost silently).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_burst_of_2000_webhooks_while_200_sagas_run_starves_no_commit() {
    let h = harness().await;
    let engine = h.engine.clone();
    submit(
        &engine,
        r#"
        name = "fp_steps"
        version = 1
        [[steps]]
        name = "a"
        kind = "noop.sleep"
        params = { delay_ms = 0 }
        [[steps]]
        name = "b"
        kind = "noop.sleep"
        params = { delay_ms = 0 }
        [[steps]]
        name = "c"
        kind = "noop.sleep"
        params = { delay_ms = 0 }
    "#,
    )
    .await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = paysaga_runtime::http::router(
        engine.clone(),
        vec![Arc::new(TrustingVerifier) as Arc<dyn WebhookVerifier>],
        paysaga_runtime::http::DEFAULT_BODY_LIMIT,
    );
    let (stop_http, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(paysaga_runtime::http::serve(
        listener,
        app,
        paysaga_runtime::http::ServeConfig::default(),
        async move {
            let _ = stopped.await;
        },
    ));
    // A production-like lease: this test is about the pool, not about lease renewal on a
    // loaded test machine.
    let mut config = fast_worker("burst");
    config.concurrency = 16;
    config.lease_ttl = Duration::from_secs(10);
    let worker = engine.worker(config);
    let stats = worker.stats();
    let (stop, rx) = tokio::sync::oneshot::channel::<()>();
    let worker = tokio::spawn(worker.run(async move {
        let _ = rx.await;
    }));

    let mut ids = Vec::new();
    for _ in 0..200 {
        ids.push(
            engine
                .start("fp_steps", json!({}), None)
                .await
                .unwrap()
                .saga_id,
        );
    }
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let answered = Arc::new(Mutex::new(HashMap::<u16, u32>::new()));
    let ok_ids = Arc::new(Mutex::new(Vec::<String>::new()));
    let sent = AtomicU32::new(0);
    let mut burst = tokio::task::JoinSet::new();
    for i in 0..2_000 {
        let (client, answered, ok_ids) = (client.clone(), answered.clone(), ok_ids.clone());
        sent.fetch_add(1, Ordering::Relaxed);
        burst.spawn(async move {
            let event_id = format!("evt-{i}");
            // A request that got no answer at all (connection refused or reset by a loaded
            // machine) is sent again, as a provider does; its final answer counts.
            let mut status = 0;
            for _ in 0..3 {
                status = client
                    .post(format!("http://{addr}/webhooks/test"))
                    .json(&json!({"id": event_id, "key": format!("k{i}")}))
                    .send()
                    .await
                    .map(|r| r.status().as_u16())
                    .unwrap_or(0);
                if status != 0 {
                    break;
                }
            }
            *answered.lock().unwrap().entry(status).or_default() += 1;
            if status == 200 {
                ok_ids.lock().unwrap().push(event_id);
            }
        });
    }
    while burst.join_next().await.is_some() {}
    for id in &ids {
        h.wait_status(*id, "completed", Duration::from_secs(60))
            .await;
    }
    let answered = answered.lock().unwrap().clone();
    assert!(
        answered.keys().all(|s| *s == 200 || *s == 503),
        "webhooks answered {answered:?}"
    );
    assert_eq!(answered.values().sum::<u32>(), sent.load(Ordering::Relaxed));
    let ok_ids = ok_ids.lock().unwrap().clone();
    let stored: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM paysaga_events WHERE provider = 'test' AND event_id = ANY($1)",
    )
    .bind(&ok_ids)
    .fetch_one(&h.pool)
    .await
    .unwrap();
    assert_eq!(
        stored,
        ok_ids.len() as i64,
        "a webhook answered 200 was not stored"
    );
    assert!(!ok_ids.is_empty());
    assert_eq!(
        stats.commit_retries.load(Ordering::Relaxed),
        0,
        "step commits failed (pool starved?) during the burst"
    );
    assert_eq!(stats.lease_lost.load(Ordering::Relaxed), 0);
    let _ = stop.send(());
    worker.await.unwrap().unwrap();
    let _ = stop_http.send(());
    server.await.unwrap().unwrap();
}
