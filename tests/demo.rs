//! `paysaga demo` end to end: the real binary runs one saga of each payout workflow against
//! its in-process sandbox, on a fresh test database, and prints progress, a summary and the
//! sandbox ledger.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;
use std::time::{Duration, Instant};

/// The workflows the demo runs (the campaign starts 25 `lumanu_campaign_payee` children).
const WORKFLOWS: [&str; 4] = [
    "lumanu_prefund",
    "blaaiz_kyc_payout",
    "lean_payout",
    "lumanu_campaign",
];

/// The line the demo ends with when every saga completed.
const ALL_COMPLETED: &str =
    "all 4 sagas completed: lumanu_prefund, blaaiz_kyc_payout, lean_payout, lumanu_campaign";

/// The example workspaces (ledger ACCOUNT column, cut to 22 characters).
const PREFUND_ACCOUNT: &str = "0967198e-ec7b-4c6b-...";
const CAMPAIGN_ACCOUNT: &str = "7a3c2e10-5d4b-4c8e-...";

/// Ledger rows the demo prints: `provider kind side amount currency ...`.
fn ledger_rows(stdout: &str) -> Vec<Vec<String>> {
    stdout
        .lines()
        .skip_while(|l| !l.starts_with("sandbox ledger:"))
        .skip(2) // the title and the column header
        .take_while(|l| l.starts_with("  "))
        .map(|l| l.split_whitespace().map(str::to_string).collect())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_runs_the_three_payout_workflows_to_completion_and_prints_the_ledger() {
    let db = paysaga_testkit::database().await;
    let url = db.url().to_string();
    let begun = Instant::now();
    let output = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_paysaga"))
            .arg("demo")
            .env("DATABASE_URL", &url)
            .env_remove("DATABASE_URL_FILE")
            .env("RUST_LOG", "warn")
            // Any working directory: everything the demo needs is embedded in the binary.
            .current_dir(std::env::temp_dir())
            .output()
            .expect("paysaga demo runs")
    })
    .await
    .unwrap();
    let elapsed = begun.elapsed();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(
        output.status.success(),
        "demo failed ({}):\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        output.status
    );
    assert!(
        elapsed < Duration::from_secs(60),
        "the demo took {elapsed:?}"
    );

    // Progress and the end of each saga.
    assert!(stdout.contains(ALL_COMPLETED), "{stdout}");
    for wf in WORKFLOWS {
        assert!(
            stdout
                .lines()
                .any(|l| l.contains(wf) && l.contains("COMPLETED in")),
            "no completion line for {wf}:\n{stdout}"
        );
        assert!(
            stdout.lines().any(|l| l.starts_with(&format!("{wf} v"))
                && l.contains(" saga ")
                && l.contains(": completed")),
            "no summary for {wf}:\n{stdout}"
        );
    }
    // Waits were ended by the sandbox's signed webhooks, through the worker's endpoint.
    assert!(stdout.contains("woken by lumanu event"), "{stdout}");
    assert!(stdout.contains("woken by blaaiz event"), "{stdout}");
    assert!(stdout.contains("woken by lean event"), "{stdout}");

    // The ledger: exactly one payout per provider, of the example inputs' amounts.
    let rows = ledger_rows(&stdout);
    // Lumanu rows are told apart by workspace: the prefund's, the campaign's.
    let is = |r: &Vec<String>, provider: &str, kind: &str| {
        r.len() >= 6
            && r[0] == provider
            && r[1] == kind
            && (provider != "lumanu" || r[5] == PREFUND_ACCOUNT)
    };
    let count = |provider: &str, kind: &str| rows.iter().filter(|r| is(r, provider, kind)).count();
    let row = |provider: &str, kind: &str| {
        rows.iter()
            .find(|r| is(r, provider, kind))
            .unwrap_or_else(|| panic!("no {provider} {kind} in the ledger:\n{stdout}"))
            .clone()
    };
    assert_eq!(count("lumanu", "payment"), 1, "{stdout}");
    assert_eq!(count("blaaiz", "payout"), 1, "{stdout}");
    assert_eq!(count("lean", "payment"), 1, "{stdout}");
    let lumanu = row("lumanu", "payment");
    assert_eq!(lumanu[2..5], ["debit", "125000", "USD"], "{stdout}");
    let blaaiz = row("blaaiz", "payout");
    assert_eq!(blaaiz[2..5], ["debit", "5000000", "NGN"], "{stdout}");
    let lean = row("lean", "payment");
    assert_eq!(lean[2..5], ["debit", "150000", "AED"], "{stdout}");
    // The Lumanu payable was paid from the deposit of the funding invoice.
    let deposit = row("lumanu", "deposit");
    assert_eq!(deposit[2..5], ["credit", "125000", "USD"], "{stdout}");
    // The campaign: one deposit of the 25 creators' total, 25 payments of their amounts.
    let campaign = |kind: &str| -> Vec<i64> {
        rows.iter()
            .filter(|r| {
                r.len() >= 6 && r[0] == "lumanu" && r[1] == kind && r[5] == CAMPAIGN_ACCOUNT
            })
            .map(|r| r[3].parse().unwrap())
            .collect()
    };
    let mut paid = campaign("payment");
    paid.sort_unstable();
    let expected: Vec<i64> = (0..25).map(|i| 10_000 + 100 * i).collect();
    assert_eq!(paid, expected, "{stdout}");
    assert_eq!(
        campaign("deposit"),
        [expected.iter().sum::<i64>()],
        "{stdout}"
    );
    assert!(
        stdout
            .contains("campaign: 25 creator(s) paid 280000 USD cents from 1 deposit(s) of 280000"),
        "{stdout}"
    );
    // No secret reaches the output.
    for secret in [
        "sandbox-lumanu-secret",
        "webhook-secret",
        "sandbox-lean-app-token",
    ] {
        assert!(!stdout.contains(secret) && !stderr.contains(secret));
    }

    // The database agrees: one completed saga per workflow, 25 completed campaign children.
    let pool = sqlx::PgPool::connect(db.url()).await.unwrap();
    let rows: Vec<(String, String, i64)> = sqlx::query_as(
        "SELECT workflow, status, count(*) FROM paysaga_sagas GROUP BY workflow, status \
         ORDER BY workflow",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    let mut expected: Vec<(String, String, i64)> = WORKFLOWS
        .iter()
        .map(|w| (w.to_string(), "completed".to_string(), 1))
        .chain([(
            "lumanu_campaign_payee".to_string(),
            "completed".to_string(),
            25,
        )])
        .collect();
    expected.sort();
    assert_eq!(rows, expected);
    pool.close().await;
}

/// Issue 7: with no `DATABASE_URL` the demo needs no database server at all: it runs on a
/// SQLite file of its own (the embedded store) and removes it after a successful run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_without_a_database_url_runs_on_an_embedded_sqlite_file() {
    let output = tokio::task::spawn_blocking(|| {
        Command::new(env!("CARGO_BIN_EXE_paysaga"))
            .arg("demo")
            .env_remove("DATABASE_URL")
            .env_remove("DATABASE_URL_FILE")
            // Any PostgreSQL the environment points at must not matter.
            .env("PGHOST", "/nonexistent")
            .env("PGPORT", "1")
            .env("RUST_LOG", "warn")
            .current_dir(std::env::temp_dir())
            .output()
            .expect("paysaga demo runs")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(
        output.status.success(),
        "demo failed ({}):\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        output.status
    );
    let db_line = stdout
        .lines()
        .find(|l| l.contains("sqlite://"))
        .unwrap_or_else(|| panic!("the demo does not say it uses SQLite:\n{stdout}"));
    assert!(stdout.contains(ALL_COMPLETED), "{stdout}");
    let rows = ledger_rows(&stdout);
    for (provider, kind, n) in [
        ("lumanu", "payment", 26),
        ("blaaiz", "payout", 1),
        ("lean", "payment", 1),
    ] {
        assert_eq!(
            rows.iter()
                .filter(|r| r.len() >= 5 && r[0] == provider && r[1] == kind)
                .count(),
            n,
            "{provider} {kind}:\n{stdout}"
        );
    }
    // The run's file is gone after success.
    let path = db_line
        .split("sqlite://")
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_string();
    assert!(
        !std::path::Path::new(&path).exists(),
        "{path} was not removed"
    );
}
