//! The operator CLI through the real binary: bulk actions act on every match (with the total
//! first, progress, confirmation and an honest dry run), personal data is redacted in every
//! output unless revealed (and the reveal is in history), and the CLI behaves as a Unix tool
//! (exit codes, broken pipes, typed flags, stable JSON).

#![allow(clippy::unwrap_used)]

mod support;

use std::io::Write;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use serde_json::{json, Value};
use support::*;
use uuid::Uuid;

const BIN: &str = env!("CARGO_BIN_EXE_paysaga");

fn command(db_url: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .env("DATABASE_URL", db_url)
        .env("PAYSAGA_OPERATOR", "ops:alice")
        .env("USER", "alice")
        .env("RUST_LOG", "warn")
        .env_remove("RUST_BACKTRACE")
        .env_remove("NO_COLOR")
        .stdin(Stdio::null());
    cmd
}

fn paysaga(db_url: &str, args: &[&str]) -> Output {
    command(db_url, args).output().unwrap()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "command failed ({:?}): {}",
        out.status.code(),
        stderr(out)
    );
    stdout(out)
}

fn code(out: &Output) -> i32 {
    out.status.code().expect("exited, not killed by a signal")
}

async fn count(h: &Harness, sql: &str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(&h.pool).await.unwrap()
}

const BULK_FLOW: &str = r#"
name = "bulk"
version = 1
[[steps]]
name = "first"
kind = "noop.sleep"
params = { delay_ms = 0 }
"#;

const PARKING_FLOW: &str = r#"
name = "parking"
version = 1
[[steps]]
name = "send"
kind = "test.irreversible"
[[steps]]
name = "confirm"
kind = "test.fail"
"#;

#[tokio::test]
async fn bulk_cancel_acts_on_all_113_matches_after_printing_the_total_and_confirmation() {
    let h = harness().await;
    let url = h.db.url().to_string();
    h.submit(BULK_FLOW).await;
    // No worker runs: all 113 stay scheduled. Two other sagas must not be touched.
    let mut ids = Vec::new();
    for _ in 0..113 {
        ids.push(
            h.engine
                .start("bulk", json!({}), None)
                .await
                .unwrap()
                .saga_id,
        );
    }
    let other = h
        .engine
        .start("noop", json!({"delay_ms": 0}), None)
        .await
        .unwrap()
        .saga_id;
    // The first 105 were created at the same instant (an import): more than a page (100)
    // shares one creation time, the keyset must still reach every saga.
    sqlx::query("UPDATE paysaga_sagas SET created_at = '2026-11-26T08:00:00Z' WHERE id = ANY($1)")
        .bind(&ids[..105])
        .execute(&h.pool)
        .await
        .unwrap();

    // Above the threshold without a terminal and without --yes: refused, nothing changed.
    let refused = paysaga(
        &url,
        &["cancel", "--workflow", "bulk", "--reason", "payee left"],
    );
    assert_eq!(code(&refused), 4, "{}", stderr(&refused));
    assert!(stdout(&refused).starts_with("113 saga(s) match"));
    assert!(stderr(&refused).contains("--yes"), "{}", stderr(&refused));
    assert_eq!(
        count(
            &h,
            "SELECT count(*) FROM paysaga_history WHERE kind = 'cancel_requested'"
        )
        .await,
        0
    );

    // Dry run: every saga checked, none refused, nothing changed.
    let dry = ok(&paysaga(
        &url,
        &[
            "cancel",
            "--workflow",
            "bulk",
            "--reason",
            "payee left",
            "--dry-run",
        ],
    ));
    assert!(dry.starts_with("113 saga(s) match"), "{dry}");
    assert_eq!(dry.matches("would cancel saga").count(), 113, "{dry}");
    assert!(dry.contains("step first"), "step names, not numbers: {dry}");
    assert!(
        dry.contains("113 saga(s) matched, 0 would be refused, nothing changed"),
        "{dry}"
    );
    assert_eq!(
        count(
            &h,
            "SELECT count(*) FROM paysaga_sagas WHERE cancel_requested"
        )
        .await,
        0
    );

    // --yes: every match is acted on (not the first 100), total first, progress on stderr.
    let out = paysaga(
        &url,
        &[
            "cancel",
            "--workflow",
            "bulk",
            "--reason",
            "payee left",
            "--yes",
        ],
    );
    let text = ok(&out);
    assert_eq!(text.lines().next(), Some("113 saga(s) match"));
    assert_eq!(text.matches("cancel: saga ").count(), 113);
    let progress = stderr(&out);
    for step in ["50/113", "100/113", "113/113 done, 0 refused"] {
        assert!(progress.contains(step), "{progress}");
    }
    let cancelled: Vec<Uuid> = sqlx::query_scalar(
        "SELECT s.id FROM paysaga_sagas s WHERE s.cancel_requested AND EXISTS (
             SELECT 1 FROM paysaga_history h WHERE h.saga_id = s.id AND h.kind = 'cancel_requested'
               AND h.actor = 'ops:alice' AND h.detail->>'reason' = 'payee left')
         ORDER BY s.created_at",
    )
    .fetch_all(&h.pool)
    .await
    .unwrap();
    let mut expected = ids.clone();
    expected.sort();
    let mut got = cancelled.clone();
    got.sort();
    assert_eq!(got, expected, "all 113, and only them");
    let untouched: bool =
        sqlx::query_scalar("SELECT cancel_requested FROM paysaga_sagas WHERE id = $1")
            .bind(other)
            .fetch_one(&h.pool)
            .await
            .unwrap();
    assert!(!untouched);
}

#[tokio::test]
async fn bulk_confirmation_on_a_terminal_acts_only_on_yes() {
    let h = harness().await;
    let url = h.db.url().to_string();
    h.submit(BULK_FLOW).await;
    for _ in 0..12 {
        h.engine.start("bulk", json!({}), None).await.unwrap();
    }
    // `script` gives the command a terminal; the answer comes through it.
    let run = |answer: &str| {
        let line = format!(
            "{BIN} cancel --workflow bulk --reason 'asked on a terminal'; echo \"exit=$?\""
        );
        let mut child = command(&url, &[])
            .env("DATABASE_URL", &url)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn_script(&line);
        // Answer once the prompt is there (the command connects first).
        std::thread::sleep(Duration::from_millis(1500));
        child
            .stdin
            .take()
            .unwrap()
            .write_all(format!("{answer}\n").as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let no = run("no");
    assert!(no.contains("Type yes to go on"), "{no}");
    assert!(no.contains("exit=4"), "{no}");
    assert_eq!(
        count(
            &h,
            "SELECT count(*) FROM paysaga_sagas WHERE cancel_requested"
        )
        .await,
        0
    );
    let yes = run("yes");
    assert!(yes.contains("exit=0"), "{yes}");
    assert_eq!(
        count(
            &h,
            "SELECT count(*) FROM paysaga_sagas WHERE cancel_requested"
        )
        .await,
        12
    );
}

/// Runs a shell line under `script`, which gives it a terminal.
trait SpawnScript {
    fn spawn_script(&mut self, line: &str) -> std::process::Child;
}

impl SpawnScript for Command {
    fn spawn_script(&mut self, line: &str) -> std::process::Child {
        let mut script = Command::new("script");
        script.args(["-q", "-e", "-c", line, "/dev/null"]);
        for (k, v) in self.get_envs() {
            match v {
                Some(v) => script.env(k, v),
                None => script.env_remove(k),
            };
        }
        script
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }
}

#[tokio::test]
async fn bulk_dry_run_reports_the_sagas_the_real_run_refuses_with_the_reason() {
    let h = harness().await;
    let url = h.db.url().to_string();
    h.submit(PARKING_FLOW).await;
    let mut parked = Vec::new();
    for _ in 0..12 {
        parked.push(
            h.engine
                .start("parking", json!({}), None)
                .await
                .unwrap()
                .saga_id,
        );
    }
    let w = spawn_worker(&h.engine, fast_worker("park"));
    for id in &parked {
        h.wait_status(*id, "needs_operator", Duration::from_secs(20))
            .await;
    }
    w.shutdown().await;
    // Started after the worker stopped: scheduled, so `resume` refuses them.
    let scheduled: Vec<Uuid> = {
        let mut v = Vec::new();
        for _ in 0..3 {
            v.push(
                h.engine
                    .start("parking", json!({}), None)
                    .await
                    .unwrap()
                    .saga_id,
            );
        }
        v
    };
    let dry = ok(&paysaga(
        &url,
        &[
            "resume",
            "--workflow",
            "parking",
            "--reason",
            "bank fixed it",
            "--dry-run",
        ],
    ));
    assert!(dry.starts_with("15 saga(s) match"), "{dry}");
    for id in &scheduled {
        let line = dry
            .lines()
            .find(|l| l.contains(&id.to_string()))
            .unwrap_or_else(|| panic!("{id} not reported: {dry}"));
        assert!(
            line.starts_with("would refuse saga")
                && line.contains("it is scheduled")
                && line.contains("only sagas parked for an operator"),
            "{line}"
        );
    }
    for id in &parked {
        assert!(
            dry.contains(&format!(
                "would resume saga {id} (parking needs_operator, step confirm)"
            )),
            "{dry}"
        );
    }
    assert!(dry.contains("15 saga(s) matched, 3 would be refused, nothing changed"));
    assert_eq!(
        count(
            &h,
            "SELECT count(*) FROM paysaga_history WHERE kind = 'operator_resume'"
        )
        .await,
        0
    );

    // The real run refuses exactly those, acts on the others, and exits 4.
    let out = paysaga(
        &url,
        &[
            "resume",
            "--workflow",
            "parking",
            "--reason",
            "bank fixed it",
            "--yes",
        ],
    );
    assert_eq!(code(&out), 4, "{}", stderr(&out));
    assert!(stderr(&out).contains("3 of 15 saga(s) refused the resume"));
    let resumed: Vec<Uuid> = sqlx::query_scalar(
        "SELECT saga_id FROM paysaga_history WHERE kind = 'operator_resume' AND actor = 'ops:alice'",
    )
    .fetch_all(&h.pool)
    .await
    .unwrap();
    let mut resumed = resumed;
    resumed.sort();
    let mut expected = parked.clone();
    expected.sort();
    assert_eq!(resumed, expected);
}

#[tokio::test]
async fn account_numbers_are_redacted_in_every_output_unless_revealed_and_the_reveal_is_in_history()
{
    let h = harness().await;
    let url = h.db.url().to_string();
    let iban = "GB33BUKB20201555555555";
    let account = "31926819";
    // `--input -` reads the input from stdin.
    let mut child = command(&url, &["start", "noop", "--input", "-", "--key", "pii-1"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(
            json!({"delay_ms": 0, "payee": {"iban": iban, "accountNumber": account, "name": "Ada"}})
                .to_string()
                .as_bytes(),
        )
        .unwrap();
    let started = child.wait_with_output().unwrap();
    let id: Uuid = ok(&started).trim().parse().unwrap();
    // A step output and an operator's history detail carry them too.
    h.engine
        .skip(
            id,
            "sleep1",
            json!({"paid_to": {"iban": iban, "account_number": account}}),
            "test",
            "checked on the bank statement",
        )
        .await
        .unwrap();

    // An inbox event carrying them.
    let inbox = h
        .engine
        .deliver_event(paysaga_runtime::IncomingEvent {
            provider: "test".into(),
            event_id: "ev-pii".into(),
            event_type: "done".into(),
            correlation_key: Some("nobody-waits".into()),
            payload: json!({"beneficiary": {"iban": iban}}),
        })
        .await
        .unwrap()
        .inbox_id;

    let leaks = |text: &str| text.contains(iban) || text.contains(account);
    for args in [
        vec!["events", "list", "--json"],
        vec!["events", "show", &inbox.to_string() as &str, "--json"],
        vec!["events", "show", &inbox.to_string()],
    ] {
        let out = ok(&paysaga(&url, &args));
        assert!(!leaks(&out), "{args:?} leaks: {out}");
        assert!(out.contains("***"), "{args:?}: {out}");
    }
    for args in [
        vec!["show", &id.to_string() as &str],
        vec!["show", &id.to_string(), "--json"],
        vec!["list", "--json"],
        vec!["list"],
    ] {
        let out = ok(&paysaga(&url, &args));
        assert!(!leaks(&out), "{args:?} leaks: {out}");
    }
    let shown: Value =
        serde_json::from_str(&ok(&paysaga(&url, &["show", &id.to_string(), "--json"]))).unwrap();
    assert_eq!(shown["input"]["payee"]["iban"], "***");
    assert_eq!(shown["input"]["payee"]["accountNumber"], "***");
    assert_eq!(shown["input"]["payee"]["name"], "Ada");
    assert_eq!(
        shown["outputs"]["sleep1"]["paid_to"]["account_number"],
        "***"
    );
    assert_eq!(
        count(
            &h,
            "SELECT count(*) FROM paysaga_history WHERE kind = 'data_revealed'"
        )
        .await,
        0,
        "reading is not revealing"
    );

    // --reveal needs a reason (usage error), and an empty one is refused.
    let no_reason = paysaga(&url, &["show", &id.to_string(), "--reveal"]);
    assert_eq!(code(&no_reason), 2, "{}", stderr(&no_reason));
    let blank = paysaga(
        &url,
        &["show", &id.to_string(), "--reveal", "--reason", " "],
    );
    assert_eq!(code(&blank), 4, "{}", stderr(&blank));
    let revealed = ok(&paysaga(
        &url,
        &[
            "show",
            &id.to_string(),
            "--json",
            "--reveal",
            "--reason",
            "ticket 4711: payee disputes the account",
        ],
    ));
    let revealed: Value = serde_json::from_str(&revealed).unwrap();
    assert_eq!(revealed["input"]["payee"]["iban"], iban);
    assert_eq!(
        revealed["outputs"]["sleep1"]["paid_to"]["account_number"],
        account
    );
    let rows: Vec<(Option<String>, Value)> = sqlx::query_as(
        "SELECT actor, detail FROM paysaga_history WHERE saga_id = $1 AND kind = 'data_revealed'",
    )
    .bind(id)
    .fetch_all(&h.pool)
    .await
    .unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].0.as_deref(), Some("ops:alice"));
    assert_eq!(
        rows[0].1["reason"],
        "ticket 4711: payee disputes the account"
    );
    assert_eq!(rows[0].1["os_user"], "alice");
    assert_eq!(rows[0].1["output"], "show --json");
    // The text view reveals too, and records it again.
    let text = ok(&paysaga(
        &url,
        &[
            "show",
            &id.to_string(),
            "--reveal",
            "--reason",
            "ticket 4711 again",
        ],
    ));
    assert!(text.contains(iban), "{text}");
    assert_eq!(
        count(
            &h,
            "SELECT count(*) FROM paysaga_history WHERE kind = 'data_revealed'"
        )
        .await,
        2
    );
}

#[tokio::test]
async fn list_and_stats_json_have_the_documented_shape_with_step_names() {
    let h = harness().await;
    let url = h.db.url().to_string();
    h.submit(PARKING_FLOW).await;
    let parked = h
        .engine
        .start("parking", json!({}), Some("order-7"))
        .await
        .unwrap()
        .saga_id;
    let w = spawn_worker(&h.engine, fast_worker("shape"));
    h.wait_status(parked, "needs_operator", Duration::from_secs(20))
        .await;
    w.shutdown().await;
    let listed: Vec<Value> =
        serde_json::from_str(&ok(&paysaga(&url, &["list", "--json"]))).unwrap();
    assert_eq!(listed.len(), 1);
    let row = listed[0].as_object().unwrap();
    let mut keys: Vec<&str> = row.keys().map(String::as_str).collect();
    keys.sort();
    assert_eq!(
        keys,
        vec![
            "attempt",
            "cancel_requested",
            "closed_outcome",
            "created_at",
            "id",
            "key",
            "last_error",
            "run_at",
            "status",
            "step",
            "updated_at",
            "version",
            "workflow"
        ],
        "no fence, owner or input"
    );
    assert_eq!(row["id"], parked.to_string());
    assert_eq!(row["status"], "needs_operator");
    assert_eq!(row["step"], "confirm");
    assert_eq!(row["key"], "order-7");
    assert_eq!(row["closed_outcome"], Value::Null);
    // The table shows the step's name.
    let table = ok(&paysaga(&url, &["list", "--status", "needs_operator"]));
    let line = table
        .lines()
        .find(|l| l.contains(&parked.to_string()))
        .unwrap();
    assert!(line.contains(" confirm "), "{line}");

    let stats: Value = serde_json::from_str(&ok(&paysaga(&url, &["stats", "--json"]))).unwrap();
    let by_status = stats["by_status"].as_array().unwrap();
    assert!(
        by_status.iter().any(|r| r["workflow"] == "parking"
            && r["status"] == "needs_operator"
            && r["sagas"] == 1),
        "{stats}"
    );
    for key in ["by_step", "oldest_waiting", "retries", "unmatched_events"] {
        assert!(stats.get(key).is_some(), "{key} in {stats}");
    }
}

#[tokio::test]
async fn exit_codes_tell_usage_not_found_refused_and_unreachable_apart() {
    let h = harness().await;
    let url = h.db.url().to_string();
    let done = h
        .engine
        .start("noop", json!({"delay_ms": 0}), None)
        .await
        .unwrap()
        .saga_id;
    let w = spawn_worker(&h.engine, fast_worker("codes"));
    h.wait_status(done, "completed", Duration::from_secs(20))
        .await;
    w.shutdown().await;

    // Usage (2): statuses are a closed list (shown in --help), times and limits are typed.
    let help = ok(&paysaga(&url, &["list", "--help"]));
    for status in [
        "scheduled",
        "running",
        "retrying",
        "needs_operator",
        "closed",
    ] {
        assert!(help.contains(status), "{status} in {help}");
    }
    let top_help = ok(&paysaga(&url, &["--help"]));
    assert!(top_help.contains("Exit codes") && top_help.contains("3 not found"));
    for args in [
        vec!["list", "--status", "failed"],
        vec!["list", "--created-after", "last tuesday"],
        vec!["list", "--limit", "-1"],
        vec!["worker", "--concurrency", "0"],
    ] {
        let out = paysaga(&url, &args);
        assert_eq!(code(&out), 2, "{args:?}: {}", stderr(&out));
    }
    assert!(stderr(&paysaga(&url, &["list", "--status", "failed"])).contains("needs_operator"));
    let filtered: Vec<Value> = serde_json::from_str(&ok(&paysaga(
        &url,
        &[
            "list",
            "--status",
            "completed",
            "--created-after",
            "1h",
            "--json",
        ],
    )))
    .unwrap();
    assert_eq!(filtered.len(), 1);

    // Not found (3).
    let missing = paysaga(&url, &["show", &Uuid::new_v4().to_string()]);
    assert_eq!(code(&missing), 3, "{}", stderr(&missing));
    let missing = paysaga(
        &url,
        &["cancel", &Uuid::new_v4().to_string(), "--reason", "x"],
    );
    assert_eq!(code(&missing), 3, "{}", stderr(&missing));
    let missing = paysaga(&url, &["events", "show", "999999"]);
    assert_eq!(code(&missing), 3, "{}", stderr(&missing));
    // Refused (4).
    let refused = paysaga(&url, &["retry", &done.to_string(), "--reason", "again"]);
    assert_eq!(code(&refused), 4, "{}", stderr(&refused));
    assert!(stderr(&refused).contains("it is finished"));
    let refused = paysaga(&url, &["cancel", &done.to_string(), "--reason", "again"]);
    assert_eq!(code(&refused), 4, "{}", stderr(&refused));
    // Unreachable (5), with the real cause, quickly.
    let port = free_port();
    let started = std::time::Instant::now();
    let down = paysaga(
        &format!("postgres://postgres@127.0.0.1:{port}/nothing"),
        &["list"],
    );
    assert_eq!(code(&down), 5, "{}", stderr(&down));
    assert!(
        stderr(&down).to_lowercase().contains("connection refused")
            && !stderr(&down).contains("pool timed out"),
        "{}",
        stderr(&down)
    );
    assert!(started.elapsed() < Duration::from_secs(8));
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test]
async fn the_cli_refuses_a_database_schema_older_or_newer_than_it_knows() {
    // A database nobody migrated.
    let empty = paysaga_testkit::database().await;
    let out = paysaga(empty.url(), &["list"]);
    assert_eq!(code(&out), 6, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("run `paysaga migrate` first"),
        "{}",
        stderr(&out)
    );
    ok(&paysaga(empty.url(), &["migrate"]));
    ok(&paysaga(empty.url(), &["list"]));

    // A database a newer paysaga migrated.
    let h = harness().await;
    sqlx::query(
        "INSERT INTO paysaga_migrations (version, description, success, checksum, execution_time)
         VALUES (99991231000000, 'from the future', true, '\\x00', 0)",
    )
    .execute(&h.pool)
    .await
    .unwrap();
    let out = paysaga(h.db.url(), &["list"]);
    assert_eq!(code(&out), 6, "{}", stderr(&out));
    assert!(stderr(&out).contains("newer than this build knows"));
}

#[tokio::test]
async fn a_closed_pipe_ends_list_quietly_and_no_color_turns_colours_off() {
    let h = harness().await;
    let url = h.db.url().to_string();
    h.submit(BULK_FLOW).await;
    let mut last = None;
    for _ in 0..50 {
        last = Some(
            h.engine
                .start("bulk", json!({}), None)
                .await
                .unwrap()
                .saga_id,
        );
    }
    let w = spawn_worker(&h.engine, fast_worker("pipe"));
    h.wait_status(last.unwrap(), "completed", Duration::from_secs(20))
        .await;
    w.shutdown().await;
    // `paysaga list | head -1`: the reader is gone before the command writes.
    let mut child = command(&url, &["list"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(!stderr(&out).contains("panicked"), "{}", stderr(&out));
    let piped = Command::new("sh")
        .args(["-c", &format!("{BIN} list | head -1")])
        .env("DATABASE_URL", &url)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    assert!(stdout(&piped).starts_with("ID "), "{}", stdout(&piped));
    assert!(!stderr(&piped).contains("panicked"), "{}", stderr(&piped));

    // On a terminal the status is coloured, unless NO_COLOR is set.
    let coloured = {
        let mut child =
            command(&url, &[]).spawn_script(&format!("{BIN} list --status completed --limit 1"));
        drop(child.stdin.take());
        String::from_utf8_lossy(&child.wait_with_output().unwrap().stdout).into_owned()
    };
    assert!(coloured.contains("\x1b[32mcompleted"), "{coloured:?}");
    let plain = {
        let mut child = command(&url, &[])
            .env("NO_COLOR", "1")
            .spawn_script(&format!("{BIN} list --status completed --limit 1"));
        drop(child.stdin.take());
        String::from_utf8_lossy(&child.wait_with_output().unwrap().stdout).into_owned()
    };
    assert!(plain.contains("completed"), "{plain}");
    assert!(!plain.contains("\x1b["), "{plain:?}");
}
