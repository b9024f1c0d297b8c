//! No secret leaves the process that holds it: provider client secrets, webhook secrets, the
//! Lean app token, the OAuth access tokens the providers issue (the sandbox's start with
//! `sbx_`), and a database password never appear in a worker's logs, in any CLI output (human
//! or `--json`, success or error), nor anywhere in the database.
//!
//! Real processes: a `paysaga sandbox` (the providers) and `paysaga worker`s configured with
//! its development credentials. The three workflows are submitted with `paysaga definitions
//! submit`, started with `paysaga start`, and run to completion; then a worker with wrong
//! credentials makes every provider refuse it (errors logged and stored), and the CLI is fed
//! bad input. Everything observable is then searched for each secret, plain and encoded.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use sqlx::{Connection, PgConnection};
use support::processes::{free_port, log_dir, Sandbox, WorkerProcess, BIN};

const WORKFLOWS: [&str; 3] = ["lumanu_prefund", "blaaiz_kyc_payout", "lean_payout"];

/// Credentials a worker holds that must never be shown (the sandbox's development ones, the
/// wrong ones of the misconfigured worker, a database password).
const WRONG_LUMANU_SECRET: &str = "wrong-lumanu-secret-5d1c9e";
const WRONG_BLAAIZ_SECRET: &str = "wrong-blaaiz-secret-0a7f3b";
const WRONG_LEAN_TOKEN: &str = "wrong-lean-app-token-8e2d41";
const DB_PASSWORD: &str = "hunter2-db-password-77c3";

fn secrets() -> Vec<&'static str> {
    vec![
        "sandbox-lumanu-secret",
        "sandbox-blaaiz-secret",
        "sandbox-lean-app-token",
        "sandbox-blaaiz-api-key",
        "sandbox-lumanu-webhook-secret",
        "sandbox-blaaiz-webhook-secret",
        "sandbox-lean-webhook-secret",
        WRONG_LUMANU_SECRET,
        WRONG_BLAAIZ_SECRET,
        WRONG_LEAN_TOKEN,
        DB_PASSWORD,
    ]
}

fn b64(bytes: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for c in bytes.chunks(3) {
        let n = (c[0] as u32) << 16
            | (*c.get(1).unwrap_or(&0) as u32) << 8
            | *c.get(2).unwrap_or(&0) as u32;
        for i in 0..=c.len() {
            out.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    out
}

/// Every form in which a secret could show up: plain, hex, base64 (at each alignment, minus
/// the edge characters that depend on neighbours), and HTTP Basic `client_id:secret`.
fn needles() -> Vec<(String, String)> {
    let mut out = Vec::new();
    for s in secrets() {
        out.push((s.to_string(), s.to_string()));
        out.push((format!("hex({s})"), hex::encode(s)));
        for pad in 0..3 {
            let mut shifted = vec![b'x'; pad];
            shifted.extend_from_slice(s.as_bytes());
            let enc = b64(&shifted);
            // Drop the characters mixing in the padding before and the unknown bytes after.
            let skip = if pad == 0 { 0 } else { (pad * 4).div_ceil(3) };
            let core = &enc[skip..enc.len().saturating_sub(3)];
            if core.len() >= 12 {
                out.push((format!("base64({s})@{pad}"), core.to_string()));
            }
        }
    }
    for (id, secret) in [
        ("sandbox-lumanu-client", "sandbox-lumanu-secret"),
        ("sandbox-blaaiz-client", "sandbox-blaaiz-secret"),
        ("sandbox-lumanu-client", WRONG_LUMANU_SECRET),
        ("sandbox-blaaiz-client", WRONG_BLAAIZ_SECRET),
    ] {
        let basic = b64(format!("{id}:{secret}").as_bytes());
        out.push((format!("basic({id}:{secret})"), basic));
    }
    // Access tokens issued by the sandbox: `sbx_{provider}_{48 hex}` (crates/paysaga-sandbox/src/auth.rs).
    out.push(("sandbox access token".into(), "sbx_".into()));
    out
}

/// Panics naming every needle found in `haystack` (what, where, and the line around it).
fn assert_clean(label: &str, haystack: &str) {
    let lower = haystack.to_lowercase();
    let mut found = Vec::new();
    for (what, needle) in needles() {
        let hit = if what.starts_with("hex(") {
            lower.find(&needle)
        } else {
            haystack.find(&needle)
        };
        if let Some(at) = hit {
            let start = haystack[..at].rfind('\n').map_or(0, |i| i + 1);
            let end = haystack[at..].find('\n').map_or(haystack.len(), |i| at + i);
            let line: String = haystack[start..end].chars().take(400).collect();
            found.push(format!("{what} in {label}: {line}"));
        }
    }
    assert!(found.is_empty(), "secrets leaked:\n{}", found.join("\n"));
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

/// Output of one CLI run.
struct Run {
    ok: bool,
    stdout: String,
    stderr: String,
}

/// Runs `paysaga ARGS` (from the repository root) and appends everything it printed to the
/// transcript.
fn cli(transcript: &mut String, db_url: &str, args: &[&str]) -> Run {
    let out = Command::new(BIN)
        .args(args)
        .current_dir(repo())
        .env("DATABASE_URL", db_url)
        .env("RUST_LOG", "info")
        .output()
        .unwrap();
    let run = Run {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    transcript.push_str(&format!(
        "\n$ paysaga {}\n[exit ok={}]\n{}\n{}",
        // The command line is ours, not the program's output.
        args.join(" ").replace(DB_PASSWORD, "<password>"),
        run.ok,
        run.stdout,
        run.stderr
    ));
    run
}

fn cli_ok(transcript: &mut String, db_url: &str, args: &[&str]) -> String {
    let run = cli(transcript, db_url, args);
    assert!(run.ok, "paysaga {args:?} failed: {}", run.stderr);
    run.stdout
}

fn cli_err(transcript: &mut String, db_url: &str, args: &[&str]) -> String {
    let run = cli(transcript, db_url, args);
    assert!(!run.ok, "paysaga {args:?} should fail: {}", run.stdout);
    assert!(
        !run.stderr.trim().is_empty(),
        "paysaga {args:?} failed without saying why"
    );
    run.stderr
}

/// The example input of `workflow`, with its documents stored (`paysaga documents put`) and
/// the fields that must be unique per saga suffixed with `tag`; written to `dir`. Returns the
/// file's path.
fn input_file(
    transcript: &mut String,
    db_url: &str,
    dir: &Path,
    workflow: &str,
    tag: &str,
) -> String {
    let text = std::fs::read_to_string(repo().join(format!("workflows/examples/{workflow}.json")))
        .unwrap();
    let mut v: Value = serde_json::from_str(&text).unwrap();
    match workflow {
        "lumanu_prefund" => {
            v["description"] = json!(format!("creator fee {tag}"));
            v["payee"] = json!({"email": format!("creator-{tag}@example.com")});
        }
        "blaaiz_kyc_payout" => {
            v["customer"]["email"] = json!(format!("kyc-{tag}@example.com"));
            for doc in v["documents"].as_array_mut().unwrap() {
                let file = match doc["file_category"].as_str().unwrap() {
                    "identity" => "passport-front.png",
                    "identity_back" => "passport-back.png",
                    _ => "utility-bill.pdf",
                };
                let path = repo().join("workflows/examples/documents").join(file);
                let id = cli_ok(
                    transcript,
                    db_url,
                    &["documents", "put", path.to_str().unwrap()],
                );
                doc["document_id"] = json!(id.trim());
            }
        }
        "lean_payout" => {
            v["app_user_id"] = json!(format!("user-{tag}"));
            v["description"] = json!(format!("invoice {tag}"));
        }
        other => panic!("unknown workflow {other}"),
    }
    let path = dir.join(format!("{workflow}-{tag}.json"));
    std::fs::write(&path, serde_json::to_vec_pretty(&v).unwrap()).unwrap();
    path.to_str().unwrap().to_string()
}

fn show_json(transcript: &mut String, db_url: &str, id: &str) -> Value {
    serde_json::from_str(&cli_ok(transcript, db_url, &["show", id, "--json"])).unwrap()
}

/// Polls `paysaga show --json` until `done` holds for every saga (panics after `within`).
fn wait_all(
    db_url: &str,
    ids: &[String],
    within: Duration,
    what: &str,
    done: impl Fn(&Value) -> bool,
) {
    let deadline = Instant::now() + within;
    loop {
        // Polling output is not kept in the transcript (the final `show`s are).
        let mut scratch = String::new();
        let views: Vec<Value> = ids
            .iter()
            .map(|id| show_json(&mut scratch, db_url, id))
            .collect();
        if views.iter().all(&done) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "sagas not {what} within {within:?}: {:?}",
            views
                .iter()
                .map(|v| (
                    &v["workflow"],
                    &v["status"],
                    &v["current_step"],
                    &v["last_error"]
                ))
                .collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Every row of every table of the database, as text: jsonb as JSON text, bytea in hex (which
/// the hex needles catch).
async fn database_contents(db_url: &str) -> String {
    let mut conn = PgConnection::connect(db_url).await.unwrap();
    sqlx::query("SET xmlbinary = 'hex'")
        .execute(&mut conn)
        .await
        .unwrap();
    let tables: Vec<(String, String)> = sqlx::query_as(
        "SELECT table_name::text, query_to_xml(format('SELECT * FROM %I.%I', table_schema, table_name), true, false, '')::text
         FROM information_schema.tables WHERE table_schema = 'public' AND table_type = 'BASE TABLE'",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap();
    assert!(
        tables.iter().any(|(t, _)| t == "paysaga_sagas")
            && tables.iter().any(|(t, _)| t == "paysaga_events"),
        "every table was read: {:?}",
        tables.iter().map(|t| &t.0).collect::<Vec<_>>()
    );
    let mut out = String::new();
    for (table, xml) in tables {
        out.push_str(&format!("\n== {table}\n{xml}"));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_and_access_tokens_never_reach_logs_cli_output_or_the_database() {
    let db = paysaga_testkit::database().await;
    let url = db.url().to_string();
    let logs = log_dir("secrets");
    let inputs = logs.join("inputs");
    std::fs::create_dir_all(&inputs).unwrap();
    let mut t = String::new();

    cli_ok(&mut t, &url, &["migrate"]);
    let worker_port = free_port();
    let sandbox = Sandbox::start(worker_port, "none", &logs.join("sandbox.log"));
    // The detector knows what a sandbox access token looks like.
    let token: Value = reqwest::Client::new()
        .post(sandbox.url("/lumanu/oauth/token"))
        .json(
            &json!({"grant_type": "client_credentials", "client_id": "sandbox-lumanu-client",
            "client_secret": "sandbox-lumanu-secret"}),
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let sample = token["access_token"].as_str().unwrap_or_default();
    assert!(
        sample.starts_with("sbx_"),
        "sandbox tokens start with sbx_: {token}"
    );

    let worker = WorkerProcess::start(
        &url,
        worker_port,
        sandbox.port,
        "good",
        &logs.join("worker-good.log"),
    );
    let files: Vec<String> = WORKFLOWS
        .iter()
        .map(|w| repo().join(format!("workflows/{w}.toml")))
        .map(|p| p.to_str().unwrap().to_string())
        .collect();
    let mut submit = vec!["definitions", "submit"];
    submit.extend(files.iter().map(String::as_str));
    cli_ok(&mut t, &url, &submit);

    // The three workflows, to completion.
    let mut ids = Vec::new();
    for w in WORKFLOWS {
        let file = input_file(&mut t, &url, &inputs, w, "ok");
        let id = cli_ok(
            &mut t,
            &url,
            &[
                "start",
                w,
                "--input",
                &format!("@{file}"),
                "--key",
                &format!("{w}-ok"),
            ],
        );
        ids.push(id.trim().to_string());
    }
    wait_all(&url, &ids, Duration::from_secs(180), "completed", |v| {
        v["status"] == "completed"
    });
    assert!(!sandbox.ledger().await.is_empty(), "money moved");
    assert!(worker.terminate(), "the good worker stops cleanly");

    // A worker every provider refuses: wrong client secrets and app token.
    let bad = WorkerProcess::start_with_env(
        &url,
        free_port(),
        sandbox.port,
        "misconfigured",
        &logs.join("worker-bad.log"),
        &[
            ("PAYSAGA_LUMANU_CLIENT_SECRET", WRONG_LUMANU_SECRET),
            ("PAYSAGA_BLAAIZ_CLIENT_SECRET", WRONG_BLAAIZ_SECRET),
            ("PAYSAGA_LEAN_APP_TOKEN", WRONG_LEAN_TOKEN),
            ("RUST_LOG", "debug"),
        ],
    );
    let mut refused = Vec::new();
    for w in WORKFLOWS {
        let file = input_file(&mut t, &url, &inputs, w, "refused");
        let id = cli_ok(
            &mut t,
            &url,
            &[
                "start",
                w,
                "--input",
                &format!("@{file}"),
                "--key",
                &format!("{w}-refused"),
            ],
        );
        refused.push(id.trim().to_string());
    }
    wait_all(
        &url,
        &refused,
        Duration::from_secs(60),
        "refused by the provider",
        |v| v["last_error"].is_string() || v["status"] == "needs_operator",
    );
    drop(bad);

    // Bad CLI input, and a database URL with a password that cannot connect.
    let bad_toml = inputs.join("bad.toml");
    std::fs::write(
        &bad_toml,
        "name = \"x\"\nversion = \"one\"\n[[steps]]\nkind = 3\n",
    )
    .unwrap();
    let unknown_kind = inputs.join("unknown_kind.toml");
    std::fs::write(
        &unknown_kind,
        "name = \"x\"\nversion = 1\n[[steps]]\nname = \"a\"\nkind = \"lumanu.nope\"\n",
    )
    .unwrap();
    let missing = inputs.join("missing.json");
    for args in [
        vec![
            "start",
            "lumanu_prefund",
            "--input",
            "{\"amount\": \"lots\"}",
            "--key",
            "bad-1",
        ],
        vec!["start", "lumanu_prefund", "--input", "not json at all"],
        vec![
            "start",
            "lumanu_prefund",
            "--input",
            &format!("@{}", missing.display()),
        ],
        vec!["start", "no_such_workflow", "--input", "{}"],
        vec![
            "start",
            "lean_payout",
            "--input",
            "{\"amount\": 1, \"app_user_id\": \"a\\u0000b\"}",
        ],
        vec!["definitions", "submit", bad_toml.to_str().unwrap()],
        vec!["definitions", "submit", unknown_kind.to_str().unwrap()],
        vec!["show", "00000000-0000-0000-0000-000000000000"],
        vec!["events", "show", "999999999"],
        vec![
            "deliver",
            &ids[0],
            "--event",
            "payable.paid",
            "--payload",
            "{nope",
            "--reason",
            "r",
        ],
        vec!["retry", &ids[0], "--reason", "already done"],
    ] {
        cli_err(&mut t, &url, &args);
    }
    let with_password = format!("postgres://postgres:{DB_PASSWORD}@127.0.0.1:1/paysaga");
    let err = cli_err(&mut t, &with_password, &["list"]);
    assert!(err.contains("***"), "the password is masked: {err}");
    let err = cli_err(
        &mut t,
        "postgres://postgres@127.0.0.1:5432/postgres",
        &["--database-url", &with_password, "show", &ids[0]],
    );
    assert!(!err.is_empty());

    // Everything an operator can print.
    for id in ids.iter().chain(&refused) {
        cli_ok(&mut t, &url, &["show", id]);
        cli_ok(&mut t, &url, &["show", id, "--json"]);
    }
    for args in [
        vec!["list"],
        vec!["list", "--json"],
        vec!["list", "--stuck-for", "0s", "--json"],
        vec!["stats"],
        vec!["stats", "--json"],
        vec!["definitions", "list"],
        vec!["definitions", "list", "--json"],
        vec!["events", "list", "--limit", "1000"],
        vec!["events", "list", "--limit", "1000", "--json"],
        vec!["events", "list", "--unmatched"],
        vec!["events", "list", "--unparseable"],
    ] {
        cli_ok(&mut t, &url, &args);
    }
    let events: Value = serde_json::from_str(&cli_ok(
        &mut t,
        &url,
        &["events", "list", "--limit", "1000", "--json"],
    ))
    .unwrap();
    let events = events.as_array().cloned().unwrap_or_default();
    assert!(
        events.len() >= 3,
        "webhooks of the completed sagas are in the inbox: {events:?}"
    );
    for e in &events {
        let id = e["id"].to_string();
        cli_ok(&mut t, &url, &["events", "show", &id]);
        cli_ok(&mut t, &url, &["events", "show", &id, "--json"]);
    }

    // The errors were stored where operators see them (and so were searched).
    let stored_errors: Vec<String> = refused
        .iter()
        .map(|id| show_json(&mut t, &url, id))
        .map(|v| {
            let mut errs = vec![v["last_error"].as_str().unwrap_or_default().to_string()];
            for h in v["history"].as_array().into_iter().flatten() {
                errs.push(h.to_string());
            }
            errs.join("\n")
        })
        .collect();
    assert!(
        stored_errors.iter().all(|e| !e.trim().is_empty()),
        "provider refusals are stored: {stored_errors:?}"
    );

    let good_log = std::fs::read_to_string(logs.join("worker-good.log")).unwrap();
    let bad_log = std::fs::read_to_string(logs.join("worker-bad.log")).unwrap();
    assert!(
        good_log.contains("webhook stored"),
        "the good worker's log is the real thing"
    );
    assert!(
        bad_log.to_lowercase().contains("401")
            || bad_log.to_lowercase().contains("unauthorized")
            || bad_log.contains("invalid_client"),
        "the misconfigured worker logged the refusals"
    );
    assert_clean("the worker log", &good_log);
    assert_clean("the misconfigured worker's debug log", &bad_log);
    assert_clean("CLI output", &t);
    let contents = database_contents(&url).await;
    assert!(
        contents.contains("lumanu_prefund") && contents.contains("paysaga_history"),
        "the database dump has the data"
    );
    assert_clean("the database", &contents);
    if let Ok(out) = Command::new("pg_dump").args(["--data-only", &url]).output() {
        if out.status.success() {
            assert_clean("pg_dump --data-only", &String::from_utf8_lossy(&out.stdout));
        }
    }
    std::fs::write(logs.join("cli-transcript.txt"), &t).unwrap();
}
