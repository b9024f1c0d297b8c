//! Child sagas (fan-out / fan-in, issue 15 item 1) end to end on PostgreSQL: a fan-out
//! keeps at most `max_in_flight` children unfinished, the fan-in waits for every child and
//! the next step reads their outputs through `$.children.<step>`, a worker killed with
//! `kill -9` in the middle of a fan-out starts no child twice, and a parent's cancel reaches
//! its unfinished children.
#![allow(clippy::unwrap_used)]

mod support;

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use paysaga_core::{Definition, StepContext, StepKind, StepOutcome};
use paysaga_runtime::{noop, Engine, Registry};
use paysaga_store::PgStore;
use serde_json::{json, Value};
use support::{fast_worker, harness, spawn_worker, Harness};
use uuid::Uuid;

const BIN: &str = env!("CARGO_BIN_EXE_paysaga");

/// Completes with its parameters as output: shows what a step after the fan-in was given.
#[derive(Debug)]
struct Echo;

#[async_trait]
impl StepKind for Echo {
    fn name(&self) -> &'static str {
        "test.echo"
    }
    async fn run(&self, _ctx: &StepContext, params: Value) -> StepOutcome {
        StepOutcome::Done(params)
    }
}

const CHILD: &str = r#"
name = "creator_payout"
version = 1
[[steps]]
name = "create"
kind = "noop.sleep"
params = { delay_ms = "$.input.delay_ms" }
[[steps]]
name = "approve"
kind = "noop.sleep"
params = { delay_ms = "$.input.delay_ms" }
"#;

fn campaign(max_in_flight: u32, with_echo: bool) -> String {
    let mut toml = format!(
        r#"
name = "campaign"
version = 1
[[steps]]
name = "payees"
poll_every = "5s"
fan_out = {{ workflow = "creator_payout", items = "$.input.creators", key = "$.id", input = {{ delay_ms = "$.input.delay_ms", creator = "$.item.id" }}, max_in_flight = {max_in_flight} }}
"#
    );
    if with_echo {
        toml.push_str(
            r#"
[[steps]]
name = "fund"
kind = "test.echo"
params = { slept = "$.children.payees[?@.status == 'completed'].steps.approve.slept_ms", keys = "$.children.payees[*].key", summary = "$.steps.payees" }
"#,
        );
    }
    toml
}

fn creators(n: usize) -> Value {
    Value::Array((0..n).map(|i| json!({"id": format!("c{i:03}")})).collect())
}

/// An engine with `noop.sleep` and `test.echo` on the harness's database.
async fn engine(h: &Harness) -> Engine {
    let mut registry = Registry::new();
    registry.register(noop::Sleep).register(Echo);
    let store = PgStore::connect(h.db.url()).await.unwrap();
    Engine::new(Arc::new(store), registry)
}

async fn submit(engine: &Engine, toml: &str) {
    engine
        .submit_definition(&Definition::from_toml(toml).unwrap())
        .await
        .unwrap();
}

/// (key, status, created, finished) as selected.
type ChildTuple = (String, String, DateTime<Utc>, Option<DateTime<Utc>>);

struct ChildRow {
    key: String,
    status: String,
    created_at: DateTime<Utc>,
    finished_at: Option<DateTime<Utc>>,
}

async fn children(h: &Harness, parent: Uuid) -> Vec<ChildRow> {
    let rows: Vec<ChildTuple> = sqlx::query_as(
        "SELECT child_key, status, created_at, finished_at FROM paysaga_sagas
         WHERE parent_id = $1 ORDER BY child_index",
    )
    .bind(parent)
    .fetch_all(&h.pool)
    .await
    .unwrap();
    rows.into_iter()
        .map(|(key, status, created_at, finished_at)| ChildRow {
            key,
            status,
            created_at,
            finished_at,
        })
        .collect()
}

/// The most children unfinished at once: their [created, finished) intervals' overlap.
fn most_at_once(rows: &[ChildRow]) -> usize {
    let mut events: Vec<(DateTime<Utc>, i32)> = Vec::new();
    for r in rows {
        events.push((r.created_at, 1));
        events.push((r.finished_at.unwrap_or(DateTime::<Utc>::MAX_UTC), -1));
    }
    // At the same instant an end comes before a start.
    events.sort();
    let (mut now, mut most) = (0i32, 0i32);
    for (_, d) in events {
        now += d;
        most = most.max(now);
    }
    most as usize
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_fan_out_keeps_at_most_max_in_flight_children_and_the_fan_in_waits_for_every_child() {
    let h = harness().await;
    let engine = engine(&h).await;
    submit(&engine, CHILD).await;
    submit(&engine, &campaign(5, true)).await;
    let w1 = spawn_worker(&engine, fast_worker("w1"));
    let w2 = spawn_worker(&engine, fast_worker("w2"));
    let parent = engine
        .start(
            "campaign",
            json!({"creators": creators(50), "delay_ms": 20}),
            Some("campaign-1"),
        )
        .await
        .unwrap()
        .saga_id;
    h.wait_status(parent, "completed", Duration::from_secs(120))
        .await;
    w1.shutdown().await;
    w2.shutdown().await;

    let rows = children(&h, parent).await;
    assert_eq!(rows.len(), 50, "one child per creator");
    assert!(rows.iter().all(|r| r.status == "completed"));
    let most = most_at_once(&rows);
    assert!(
        (1..=5).contains(&most),
        "at most 5 children unfinished at once, saw {most}"
    );
    // The fan-in completed after the last child ended.
    let fan_in: DateTime<Utc> = sqlx::query_scalar(
        "SELECT at FROM paysaga_history WHERE saga_id = $1 AND kind = 'step_completed'
         AND step = 'payees'",
    )
    .bind(parent)
    .fetch_one(&h.pool)
    .await
    .unwrap();
    let last_child = rows.iter().filter_map(|r| r.finished_at).max().unwrap();
    assert!(fan_in >= last_child, "{fan_in} < {last_child}");
    // The summary, and the next step's view of the children's outputs.
    let outputs: Value = sqlx::query_scalar("SELECT outputs FROM paysaga_sagas WHERE id = $1")
        .bind(parent)
        .fetch_one(&h.pool)
        .await
        .unwrap();
    let summary = &outputs["payees"];
    assert_eq!(summary["children"], 50);
    assert_eq!(summary["completed"], 50);
    assert_eq!(summary["ended_otherwise"], 0);
    let fund = &outputs["fund"];
    assert_eq!(fund["slept"].as_array().unwrap().len(), 50);
    assert!(fund["slept"].as_array().unwrap().iter().all(|v| v == 20));
    assert_eq!(fund["keys"][0], "c000");
    assert_eq!(fund["keys"][49], "c049");
    assert_eq!(fund["summary"]["completed"], 50);
    // The parent's row holds no per-child data.
    assert!(
        outputs.to_string().len() < 2_000,
        "parent outputs grew with children: {} bytes",
        outputs.to_string().len()
    );
    // Operators: `show` prints the tree, `list --parent` the children.
    let shown = cli(h.db.url(), &["show", &parent.to_string()]);
    assert!(
        shown.contains("children  step payees: 50 started of 50 element(s) (completed 50)"),
        "{shown}"
    );
    let child_id: Uuid = sqlx::query_scalar(
        "SELECT id FROM paysaga_sagas WHERE parent_id = $1 AND child_key = 'c007'",
    )
    .bind(parent)
    .fetch_one(&h.pool)
    .await
    .unwrap();
    let shown = cli(h.db.url(), &["show", &child_id.to_string()]);
    assert!(
        shown.contains(&format!(
            "parent    {parent} (fan-out step payees, element 7 with key c007)"
        )),
        "{shown}"
    );
    let listed = cli(
        h.db.url(),
        &[
            "list",
            "--parent",
            &parent.to_string(),
            "--json",
            "--limit",
            "1000",
        ],
    );
    let listed: Value = serde_json::from_str(&listed).unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 50);
    assert_eq!(listed[7]["id"], json!(child_id));
}

fn cli(db_url: &str, args: &[&str]) -> String {
    let out = Command::new(BIN)
        .args(args)
        .env("DATABASE_URL", db_url)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "paysaga {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn spawn_process(db_url: &str, name: &str, log: &std::path::Path) -> Child {
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

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_dash_nine_during_a_fan_out_starts_no_child_twice() {
    let h = harness().await;
    let engine = engine(&h).await;
    submit(&engine, CHILD).await;
    submit(&engine, &campaign(10, false)).await;
    let url = h.db.url().to_string();
    let logs = std::env::temp_dir().join(format!("paysaga-children-{}", Uuid::new_v4().simple()));
    std::fs::create_dir_all(&logs).unwrap();
    let mut w1 = spawn_process(&url, "w1", &logs.join("w1.log"));
    let parent = engine
        .start(
            "campaign",
            json!({"creators": creators(60), "delay_ms": 40}),
            Some("campaign-kill"),
        )
        .await
        .unwrap()
        .saga_id;
    // Kill -9 the only worker once the fan-out is under way (some children started, most not).
    let start = Instant::now();
    loop {
        let started = children(&h, parent).await.len();
        if started >= 15 {
            assert!(started < 60, "the fan-out ended before the kill");
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "no fan-out progress; logs in {}",
            logs.display()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    w1.kill().unwrap();
    w1.wait().unwrap();
    let mut w2 = spawn_process(&url, "w2", &logs.join("w2.log"));
    h.wait_status(parent, "completed", Duration::from_secs(120))
        .await;
    let _ = Command::new("kill")
        .args(["-TERM", &w2.id().to_string()])
        .status();
    w2.wait().unwrap();

    let rows = children(&h, parent).await;
    assert_eq!(rows.len(), 60, "every child exactly once");
    let mut keys: Vec<&str> = rows.iter().map(|r| r.key.as_str()).collect();
    keys.dedup();
    assert_eq!(keys.len(), 60);
    assert!(rows.iter().all(|r| r.status == "completed"));
    let starts: Vec<(String, i64)> = sqlx::query_as(
        "SELECT s.child_key, count(*) FROM paysaga_history h JOIN paysaga_sagas s ON s.id = h.saga_id
         WHERE s.parent_id = $1 AND h.kind = 'saga_started' GROUP BY s.child_key",
    )
    .bind(parent)
    .fetch_all(&h.pool)
    .await
    .unwrap();
    assert_eq!(starts.len(), 60);
    assert!(starts.iter().all(|(_, n)| *n == 1), "{starts:?}");
    let most = most_at_once(&rows);
    assert!(most <= 10, "at most 10 unfinished at once, saw {most}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cancelling_the_parent_cancels_its_unfinished_children() {
    let h = harness().await;
    let engine = engine(&h).await;
    submit(&engine, CHILD).await;
    submit(&engine, &campaign(4, true)).await;
    let w1 = spawn_worker(&engine, fast_worker("w1"));
    let parent = engine
        .start(
            "campaign",
            json!({"creators": creators(20), "delay_ms": 1500}),
            Some("campaign-cancel"),
        )
        .await
        .unwrap()
        .saga_id;
    let start = Instant::now();
    while children(&h, parent).await.len() < 4 {
        assert!(start.elapsed() < Duration::from_secs(30), "no children");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    h.wait_status(parent, "waiting", Duration::from_secs(10))
        .await;
    engine
        .cancel(parent, "ops@example.com", "campaign withdrawn")
        .await
        .unwrap();
    h.wait_status(parent, "cancelled", Duration::from_secs(30))
        .await;
    let rows = children(&h, parent).await;
    for r in &rows {
        let id: Uuid = sqlx::query_scalar(
            "SELECT id FROM paysaga_sagas WHERE parent_id = $1 AND child_key = $2",
        )
        .bind(parent)
        .bind(&r.key)
        .fetch_one(&h.pool)
        .await
        .unwrap();
        h.wait_status(id, "cancelled", Duration::from_secs(30))
            .await;
        let asked: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM paysaga_history WHERE saga_id = $1 AND kind = 'cancel_requested'
             AND actor = $2",
        )
        .bind(id)
        .bind(format!("parent {parent}"))
        .fetch_one(&h.pool)
        .await
        .unwrap();
        assert_eq!(
            asked, 1,
            "child {} was asked to cancel by its parent",
            r.key
        );
    }
    // No child was started after the cancel.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(children(&h, parent).await.len(), rows.len());
    assert!(rows.len() <= 8, "{} children started", rows.len());
    w1.shutdown().await;
}

/// Starts a campaign of `n` children of `delay_ms` each, `max_in_flight` at a time, with a
/// worker that stops once the parent waits in its fan-in with its first children started:
/// afterwards no worker runs anything.
async fn campaign_left_without_worker(
    h: &Harness,
    engine: &Engine,
    key: &str,
    n: usize,
    max_in_flight: u32,
) -> Uuid {
    submit(engine, CHILD).await;
    submit(engine, &campaign(max_in_flight, false)).await;
    let w1 = spawn_worker(engine, fast_worker("w1"));
    let parent = engine
        .start(
            "campaign",
            json!({"creators": creators(n), "delay_ms": 5000}),
            Some(key),
        )
        .await
        .unwrap()
        .saga_id;
    let start = Instant::now();
    while children(h, parent).await.len() < max_in_flight as usize {
        assert!(start.elapsed() < Duration::from_secs(60), "no children");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    h.wait_status(parent, "waiting", Duration::from_secs(60))
        .await;
    w1.shutdown().await;
    parent
}

/// (key, status, cancel_requested, asked by the parent) of each child.
async fn asked_children(h: &Harness, parent: Uuid) -> Vec<(String, String, bool, i64)> {
    sqlx::query_as(
        "SELECT s.child_key, s.status, s.cancel_requested,
                (SELECT count(*) FROM paysaga_history h WHERE h.saga_id = s.id
                   AND h.kind = 'cancel_requested' AND h.actor = 'parent ' || s.parent_id::text)
         FROM paysaga_sagas s WHERE s.parent_id = $1 ORDER BY s.child_index",
    )
    .bind(parent)
    .fetch_all(&h.pool)
    .await
    .unwrap()
}

/// Waits until every child of `parent` has ended; returns their statuses.
async fn children_ended(h: &Harness, parent: Uuid, within: Duration) -> Vec<String> {
    let start = Instant::now();
    loop {
        let rows = children(h, parent).await;
        if rows.iter().all(|r| r.finished_at.is_some()) {
            return rows.into_iter().map(|r| r.status).collect();
        }
        let open: Vec<_> = rows
            .iter()
            .filter(|r| r.finished_at.is_none())
            .map(|r| (&r.key, &r.status))
            .collect();
        assert!(start.elapsed() < within, "children still open: {open:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_parent_cancelled_while_no_worker_runs_asks_its_children_to_cancel_at_once() {
    let h = harness().await;
    let engine = engine(&h).await;
    let parent = campaign_left_without_worker(&h, &engine, "campaign-no-worker", 20, 4).await;
    let before = children(&h, parent).await.len();
    engine
        .cancel(parent, "ops@example.com", "campaign withdrawn")
        .await
        .unwrap();
    // At once, before any worker runs the parent: every unfinished child is asked once.
    let rows = asked_children(&h, parent).await;
    assert_eq!(rows.len(), before);
    for (key, status, asked, rows_by_parent) in &rows {
        if matches!(status.as_str(), "scheduled" | "retrying" | "waiting") {
            assert!(
                *asked && *rows_by_parent == 1,
                "child {key} ({status}) not asked"
            );
        }
    }
    assert!(rows.iter().any(|r| r.2), "{rows:?}");
    // A worker then ends them cancelled, and the parent too; no child started after.
    let w2 = spawn_worker(&engine, fast_worker("w2"));
    h.wait_status(parent, "cancelled", Duration::from_secs(120))
        .await;
    let statuses = children_ended(&h, parent, Duration::from_secs(120)).await;
    assert_eq!(statuses.len(), before, "no child started after the cancel");
    assert!(
        statuses
            .iter()
            .all(|s| s == "cancelled" || s == "completed"),
        "{statuses:?}"
    );
    w2.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn closing_a_parent_cancels_its_unfinished_children() {
    use paysaga_runtime::{CloseSaga, Expected};
    let h = harness().await;
    let engine = engine(&h).await;
    let parent = campaign_left_without_worker(&h, &engine, "campaign-close", 20, 4).await;
    let before = children(&h, parent).await.len();
    let close = CloseSaga {
        outcome: paysaga_core::ClosedOutcome::NotPaid,
        compensate: false,
        expected: Expected {
            status: None,
            step: None,
        },
        confirm_not_sent: false,
    };
    let closed = engine
        .close(parent, &close, "ops@example.com", "campaign withdrawn")
        .await
        .unwrap();
    assert_eq!(closed.status.as_str(), "closed");
    let rows = asked_children(&h, parent).await;
    for (key, status, asked, rows_by_parent) in &rows {
        if matches!(status.as_str(), "scheduled" | "retrying" | "waiting") {
            assert!(
                *asked && *rows_by_parent == 1,
                "child {key} ({status}) not asked"
            );
        }
    }
    // Nothing runs the closed parent again: its children end (cancelled) by the cascade
    // alone, and none is started after the close.
    let w2 = spawn_worker(&engine, fast_worker("w2"));
    let statuses = children_ended(&h, parent, Duration::from_secs(120)).await;
    assert_eq!(statuses.len(), before, "no child started after the close");
    assert!(
        statuses
            .iter()
            .all(|s| s == "cancelled" || s == "completed"),
        "{statuses:?}"
    );
    assert!(statuses.iter().any(|s| s == "cancelled"), "{statuses:?}");
    h.wait_status(parent, "closed", Duration::from_secs(5))
        .await;
    w2.shutdown().await;
}

/// The child workflow with `[concurrency]`: one open saga per workspace.
const KEYED_CHILD: &str = r#"
name = "creator_payout"
version = 1
[concurrency]
key = "$.input.workspace"
limit = 1
[[steps]]
name = "create"
kind = "noop.sleep"
params = { delay_ms = "$.input.delay_ms" }
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn children_of_a_workflow_with_a_concurrency_key_take_its_slots() {
    let h = harness().await;
    let engine = engine(&h).await;
    submit(&engine, KEYED_CHILD).await;
    submit(
        &engine,
        r#"
name = "campaign"
version = 1
[[steps]]
name = "payees"
poll_every = "5s"
fan_out = { workflow = "creator_payout", items = "$.input.creators", key = "$.id", input = { delay_ms = "$.input.delay_ms", workspace = "$.input.workspace" }, max_in_flight = 6 }
"#,
    )
    .await;
    let w1 = spawn_worker(&engine, fast_worker("w1"));
    let w2 = spawn_worker(&engine, fast_worker("w2"));
    let parent = engine
        .start(
            "campaign",
            json!({"creators": creators(12), "delay_ms": 100, "workspace": "acme"}),
            Some("campaign-keyed"),
        )
        .await
        .unwrap()
        .saga_id;
    h.wait_status(parent, "completed", Duration::from_secs(120))
        .await;
    w1.shutdown().await;
    w2.shutdown().await;
    let rows = children(&h, parent).await;
    assert_eq!(rows.len(), 12);
    assert!(rows.iter().all(|r| r.status == "completed"));
    // Every child carried the key, and at most one ran at a time although six were
    // unfinished at once: each child's run (its step's start, the completion minus the time
    // it slept, to its `saga_completed` row) never overlaps another's.
    let keyed: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM paysaga_sagas WHERE parent_id = $1
         AND concurrency_key = 'creator_payout:acme' AND concurrency_limit = 1",
    )
    .bind(parent)
    .fetch_one(&h.pool)
    .await
    .unwrap();
    assert_eq!(keyed, 12);
    let runs: Vec<(DateTime<Utc>, DateTime<Utc>)> = sqlx::query_as(
        "SELECT (SELECT h.at FROM paysaga_history h WHERE h.saga_id = s.id AND h.step = 'create'
                   AND h.kind = 'step_completed' ORDER BY h.id LIMIT 1)
                  - make_interval(secs => (s.outputs -> 'create' ->> 'slept_ms')::float8 / 1000),
                (SELECT h.at FROM paysaga_history h WHERE h.saga_id = s.id
                   AND h.kind = 'saga_completed' ORDER BY h.id LIMIT 1)
         FROM paysaga_sagas s WHERE s.parent_id = $1 ORDER BY 1",
    )
    .bind(parent)
    .fetch_all(&h.pool)
    .await
    .unwrap();
    assert_eq!(runs.len(), 12);
    for pair in runs.windows(2) {
        assert!(
            pair[1].0 >= pair[0].1,
            "two children of one key ran at once: {pair:?}"
        );
    }
}
