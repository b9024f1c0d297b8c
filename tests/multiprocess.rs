//! End-to-end tests across processes: real `paysaga` binaries against a real PostgreSQL.
#![allow(clippy::unwrap_used)]

mod support;

use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::harness;
use uuid::Uuid;

const BIN: &str = env!("CARGO_BIN_EXE_paysaga");

fn paysaga(db_url: &str, args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env("DATABASE_URL", db_url)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap()
}

fn spawn_worker(db_url: &str, name: &str, log: &std::path::Path) -> Child {
    let log = std::fs::File::create(log).unwrap();
    Command::new(BIN)
        .args([
            "worker",
            "--http-addr",
            "127.0.0.1:0",
            "--concurrency",
            "8",
            "--lease-ttl",
            "2s",
            "--idle-poll",
            "500ms",
        ])
        .args([
            "--worker-id",
            name,
            "--shutdown-grace",
            "5s",
            "--no-migrate",
        ])
        .env("DATABASE_URL", db_url)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap()
}

async fn count(pool: &sqlx::PgPool, sql: &str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(pool).await.unwrap()
}

fn log_dir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("paysaga-mp-{}", Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[tokio::test]
async fn kill_dash_nine_under_load_loses_no_saga_and_commits_no_step_twice() {
    let h = harness().await;
    let url = h.db.url().to_string();
    let logs = log_dir();
    let mut w1 = spawn_worker(&url, "w1", &logs.join("w1.log"));
    let mut w2 = spawn_worker(&url, "w2", &logs.join("w2.log"));

    let mut ids = Vec::new();
    for i in 0..200 {
        let s = h
            .engine
            .start("noop", json!({"delay_ms": 25}), Some(&format!("mp-{i}")))
            .await
            .unwrap();
        ids.push(s.saga_id);
    }
    // Let the run get going, then kill -9 one worker mid-flight.
    let start = Instant::now();
    while count(
        &h.pool,
        "SELECT count(*) FROM paysaga_sagas WHERE status = 'completed'",
    )
    .await
        < 40
    {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "workers made no progress; logs in {}",
            logs.display()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let w1_id: Uuid = sqlx::query_scalar("SELECT id FROM paysaga_workers WHERE name = 'w1'")
        .fetch_one(&h.pool)
        .await
        .unwrap();
    let held_at_kill: i64 =
        sqlx::query_scalar("SELECT count(*) FROM paysaga_sagas WHERE owner = $1")
            .bind(w1_id)
            .fetch_one(&h.pool)
            .await
            .unwrap();
    w1.kill().unwrap(); // SIGKILL
    let killed_at = Instant::now();
    w1.wait().unwrap();
    // A restarted process gets a new lease owner id, not the dead one's leases.
    let mut w3 = spawn_worker(&url, "w1", &logs.join("w1-restarted.log"));

    let deadline = Instant::now() + Duration::from_secs(90);
    let mut takeover_seen = None;
    loop {
        if takeover_seen.is_none()
            && count(
                &h.pool,
                "SELECT count(*) FROM paysaga_history WHERE kind = 'lease_taken_over'",
            )
            .await
                > 0
        {
            takeover_seen = Some(killed_at.elapsed());
        }
        if count(
            &h.pool,
            "SELECT count(*) FROM paysaga_sagas WHERE status = 'completed'",
        )
        .await
            == 200
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not every saga completed; logs in {}",
            logs.display()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for w in [&mut w2, &mut w3] {
        send_sigterm(w.id());
    }
    for w in [&mut w2, &mut w3] {
        let status = w.wait().unwrap();
        assert!(status.success(), "worker exited with {status}");
    }

    // Every saga completed exactly once: 5 step completions, one per step, and one end.
    let dupes = count(
        &h.pool,
        "SELECT count(*) FROM (SELECT saga_id, step FROM paysaga_history WHERE kind = 'step_completed'
                               GROUP BY saga_id, step HAVING count(*) > 1) d",
    )
    .await;
    assert_eq!(dupes, 0, "a step was committed twice");
    assert_eq!(
        count(
            &h.pool,
            "SELECT count(*) FROM paysaga_history WHERE kind = 'step_completed'"
        )
        .await,
        1000
    );
    assert_eq!(
        count(
            &h.pool,
            "SELECT count(*) FROM paysaga_history WHERE kind = 'saga_completed'"
        )
        .await,
        200
    );
    assert_eq!(
        count(
            &h.pool,
            "SELECT count(DISTINCT saga_id) FROM paysaga_history WHERE kind = 'saga_completed'"
        )
        .await,
        200
    );
    let restarted: Vec<Uuid> =
        sqlx::query_scalar("SELECT id FROM paysaga_workers WHERE name = 'w1' ORDER BY started_at")
            .fetch_all(&h.pool)
            .await
            .unwrap();
    assert_eq!(
        restarted.len(),
        2,
        "the restarted process registered a new lease owner"
    );
    assert_ne!(restarted[0], restarted[1]);
    assert!(
        held_at_kill > 0,
        "the killed worker held sagas when it died"
    );
    let took = takeover_seen.expect("the dead worker's sagas were taken over");
    // Lease 2s, reaping every second: resumed within lease expiry + 1s (+ scheduling slack).
    assert!(
        took <= Duration::from_millis(3500),
        "takeover took {took:?}"
    );
    assert_eq!(
        count(
            &h.pool,
            "SELECT count(*) FROM paysaga_sagas WHERE owner IS NOT NULL"
        )
        .await,
        0
    );
}

/// Sends SIGTERM (via the `kill` command: no unsafe code in this workspace).
fn send_sigterm(pid: u32) {
    let status = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

#[tokio::test]
async fn cli_migrate_worker_start_show_round_trip() {
    let db = paysaga_testkit::database().await;
    let url = db.url().to_string();
    let out = paysaga(&url, &["migrate"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let logs = log_dir();
    let mut worker = spawn_worker(&url, "cli", &logs.join("cli.log"));

    let out = paysaga(
        &url,
        &[
            "start",
            "noop",
            "--input",
            r#"{"delay_ms": 0}"#,
            "--key",
            "smoke-1",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let id = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let saga: Uuid = id.parse().unwrap();
    // Idempotent: same key, same id.
    let again = paysaga(
        &url,
        &[
            "start",
            "noop",
            "--input",
            r#"{"delay_ms": 0}"#,
            "--key",
            "smoke-1",
        ],
    );
    assert_eq!(String::from_utf8(again.stdout).unwrap().trim(), id);

    let deadline = Instant::now() + Duration::from_secs(20);
    let shown = loop {
        let out = paysaga(&url, &["show", &id, "--json"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        if v["status"] == "completed" {
            break v;
        }
        assert!(
            Instant::now() < deadline,
            "saga {saga} did not complete: {v}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(shown["id"], id);
    let kinds: Vec<&str> = shown["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds.first(), Some(&"saga_started"));
    assert_eq!(kinds.last(), Some(&"saga_completed"));
    assert_eq!(kinds.iter().filter(|k| **k == "step_completed").count(), 5);

    // Errors name what is wrong and exit non-zero; nothing is stored.
    let bad = paysaga(
        &url,
        &["start", "noop", "--input", r#"{"delay_ms": "soon"}"#],
    );
    assert!(!bad.status.success());
    let msg = String::from_utf8_lossy(&bad.stderr);
    assert!(
        msg.contains("step sleep1") && msg.contains("delay_ms"),
        "{msg}"
    );
    let list = paysaga(&url, &["list", "--json"]);
    let listed: Value = serde_json::from_slice(&list.stdout).unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 1);

    send_sigterm(worker.id());
    assert!(worker.wait().unwrap().success());
}

#[tokio::test]
async fn sigterm_drains_in_flight_steps_and_exits_zero() {
    let h = harness().await;
    let url = h.db.url().to_string();
    let logs = log_dir();
    let mut w = spawn_worker(&url, "drain", &logs.join("drain.log"));
    let mut ids = Vec::new();
    for _ in 0..16 {
        ids.push(
            h.engine
                .start("noop", json!({"delay_ms": 300}), None)
                .await
                .unwrap()
                .saga_id,
        );
    }
    // Wait until steps are in flight.
    let start = Instant::now();
    while count(
        &h.pool,
        "SELECT count(*) FROM paysaga_sagas WHERE owner IS NOT NULL",
    )
    .await
        == 0
    {
        assert!(start.elapsed() < Duration::from_secs(20));
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let sent = Instant::now();
    send_sigterm(w.id());
    let status = w.wait().unwrap();
    assert!(status.success(), "exit status {status}");
    assert!(
        sent.elapsed() < Duration::from_secs(5),
        "exited within the grace period"
    );
    assert_eq!(
        count(
            &h.pool,
            "SELECT count(*) FROM paysaga_sagas WHERE owner IS NOT NULL"
        )
        .await,
        0,
        "leases released"
    );
    let stopped = count(
        &h.pool,
        "SELECT count(*) FROM paysaga_workers WHERE stopped_at IS NOT NULL",
    )
    .await;
    assert_eq!(stopped, 1);
    // No step is half committed: each completed step has exactly one entry, and another
    // worker finishes every saga.
    let w2 = support::spawn_worker(&h.engine, support::fast_worker("after"));
    for id in &ids {
        h.wait_status(*id, "completed", Duration::from_secs(30))
            .await;
    }
    w2.shutdown().await;
    let dupes = count(
        &h.pool,
        "SELECT count(*) FROM (SELECT saga_id, step FROM paysaga_history WHERE kind = 'step_completed'
                               GROUP BY saga_id, step HAVING count(*) > 1) d",
    )
    .await;
    assert_eq!(dupes, 0);
}

#[tokio::test]
async fn worker_refuses_a_schema_newer_than_it_knows_and_reads_database_url_from_a_file() {
    let db = paysaga_testkit::database().await;
    let url = db.url().to_string();
    // The URL from a file (Kubernetes secret / systemd credential), not the environment.
    let file = std::env::temp_dir().join(format!("paysaga-db-url-{}", Uuid::new_v4().simple()));
    std::fs::write(&file, format!("{url}\n")).unwrap();
    let migrate = Command::new(BIN)
        .arg("migrate")
        .env_remove("DATABASE_URL")
        .env("DATABASE_URL_FILE", &file)
        .output()
        .unwrap();
    assert!(
        migrate.status.success(),
        "{}",
        String::from_utf8_lossy(&migrate.stderr)
    );
    // A newer release migrated the database.
    let pool = sqlx::PgPool::connect(&url).await.unwrap();
    sqlx::query(
        "INSERT INTO paysaga_migrations (version, description, success, checksum, execution_time)
         VALUES (29991231000000, 'from the future', true, '\\x00'::bytea, 0)",
    )
    .execute(&pool)
    .await
    .unwrap();
    let out = Command::new(BIN)
        .args(["worker", "--http-addr", "127.0.0.1:0", "--no-migrate"])
        .env("DATABASE_URL", &url)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("newer than this build knows"), "{err}");
    std::fs::remove_file(file).ok();
}

/// `paysaga prune`: a dry run counts, the run deletes exactly the finished sagas older than
/// the cut-off with their history, in batches; a parked (failed) and a newer finished saga
/// stay.
#[tokio::test]
async fn cli_prune_deletes_finished_sagas_older_than_the_cut_off_in_batches() {
    let db = paysaga_testkit::database().await;
    let url = db.url().to_string();
    let out = paysaga(&url, &["migrate"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pool = sqlx::PgPool::connect(&url).await.unwrap();
    sqlx::raw_sql(
        "INSERT INTO paysaga_sagas (id, definition_id, workflow, version, input, status, finished_at)
             SELECT gen_random_uuid(), (SELECT min(id) FROM paysaga_definitions), 'noop', 1, '{}',
                    s, now() - interval '100 days'
             FROM generate_series(1, 5), unnest(ARRAY['completed', 'compensated', 'cancelled', 'needs_operator']) s;
         INSERT INTO paysaga_sagas (id, definition_id, workflow, version, input, status, finished_at)
             SELECT gen_random_uuid(), (SELECT min(id) FROM paysaga_definitions), 'noop', 1, '{}',
                    'completed', now() - interval '10 days'
             FROM generate_series(1, 3);
         INSERT INTO paysaga_history (saga_id, kind) SELECT id, 'saga_started' FROM paysaga_sagas;",
    )
    .execute(&pool)
    .await
    .unwrap();
    let out = paysaga(&url, &["prune", "--finished-before", "90d", "--dry-run"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("dry run: 15 "),
        "{text}"
    );
    assert_eq!(count(&pool, "SELECT count(*) FROM paysaga_sagas").await, 23);
    let out = paysaga(&url, &["prune", "--finished-before", "90d", "--batch", "4"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("deleted 15 sagas") && text.contains("4 batches"),
        "{text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM paysaga_sagas WHERE status = 'needs_operator'"
        )
        .await,
        5,
        "parked sagas stay"
    );
    assert_eq!(count(&pool, "SELECT count(*) FROM paysaga_sagas").await, 8);
    assert_eq!(
        count(&pool, "SELECT count(*) FROM paysaga_history").await,
        8
    );
}
