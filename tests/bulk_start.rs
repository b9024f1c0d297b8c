//! `paysaga start WORKFLOW --input-file FILE` through the real binary: one saga per valid line,
//! a refused line reported with its number and reason (and exit 4) without stopping the
//! others, re-running the same file starts nothing new, `--json` gives the summary's shape, and
//! a CSV file's key column keys the sagas.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_paysaga");

fn paysaga(db_url: &str, args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env("DATABASE_URL", db_url)
        .env("RUST_LOG", "warn")
        .env_remove("RUST_BACKTRACE")
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

async fn sagas(pool: &sqlx::PgPool) -> Vec<(String, Value)> {
    sqlx::query_as("SELECT idempotency_key, input FROM paysaga_sagas ORDER BY idempotency_key")
        .fetch_all(pool)
        .await
        .unwrap()
}

fn temp_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("paysaga-bulk-start-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[tokio::test]
async fn a_file_starts_one_saga_per_valid_line_reports_the_bad_line_and_never_starts_twice() {
    let db = paysaga_testkit::database().await;
    assert!(paysaga(db.url(), &["migrate"]).status.success());
    let pool = sqlx::PgPool::connect(db.url()).await.unwrap();
    let dir = temp_dir();
    // 10 lines: line 4 is refused by noop.sleep's validation, line 7 is blank (skipped).
    let mut lines: Vec<String> = (1..=10)
        .map(|i| json!({"key": format!("po-{i}"), "delay_ms": 0}).to_string())
        .collect();
    lines[3] = json!({"key": "po-4", "delay_ms": "soon"}).to_string();
    lines[6] = String::new();
    let file = write(&dir, "payouts.jsonl", &(lines.join("\n") + "\n"));
    let file = file.to_str().unwrap();

    let first = paysaga(db.url(), &["start", "noop", "--input-file", file]);
    assert_eq!(
        first.status.code(),
        Some(4),
        "a refused line: exit 4 (refused)"
    );
    let text = stdout(&first);
    assert!(
        text.contains("started 8, already existed 0, refused 1"),
        "{text}"
    );
    assert!(text.contains("line 4 (key po-4):"), "{text}");
    assert!(
        text.contains("step sleep1") && text.contains("delay_ms"),
        "{text}"
    );
    let stored = sagas(&pool).await;
    assert_eq!(stored.len(), 8);
    assert!(stored.iter().all(|(key, _)| key != "po-4" && key != "po-7"));
    assert_eq!(
        stored[0],
        ("po-1".to_string(), json!({"key": "po-1", "delay_ms": 0}))
    );

    // The same file again, as JSON: nothing new; the same sagas answered, the bad line again.
    let again = paysaga(db.url(), &["start", "noop", "--input-file", file, "--json"]);
    assert_eq!(again.status.code(), Some(4));
    let summary: Value = serde_json::from_slice(&again.stdout).unwrap();
    assert_eq!(summary["workflow"], "noop");
    assert_eq!(summary["lines"], 9, "the blank line is no saga");
    assert_eq!(summary["started"], 0);
    assert_eq!(summary["existing"], 8);
    assert_eq!(summary["refused"].as_array().unwrap().len(), 1);
    assert_eq!(summary["refused"][0]["line"], 4);
    assert_eq!(summary["refused"][0]["key"], "po-4");
    assert!(summary["refused"][0]["reason"]
        .as_str()
        .unwrap()
        .contains("delay_ms"));
    let answered = summary["sagas"].as_array().unwrap();
    assert_eq!(answered.len(), 8);
    assert_eq!(answered[0]["line"], 1);
    assert_eq!(answered[0]["key"], "po-1");
    assert_eq!(answered[0]["created"], false);
    assert!(answered[0]["saga_id"].as_str().unwrap().len() == 36);
    assert_eq!(sagas(&pool).await.len(), 8, "re-running started nothing");

    // Fixed, the file starts only the line that was refused.
    let fixed = lines
        .join("\n")
        .replace(r#""delay_ms":"soon""#, r#""delay_ms":0"#);
    let fixed = write(&dir, "fixed.jsonl", &fixed);
    let out = paysaga(
        db.url(),
        &["start", "noop", "--input-file", fixed.to_str().unwrap()],
    );
    assert!(out.status.success(), "{}", stdout(&out));
    assert!(stdout(&out).contains("started 1, already existed 8, refused 0"));
    assert_eq!(sagas(&pool).await.len(), 9);
    std::fs::remove_dir_all(&dir).ok();
}

#[tokio::test]
async fn a_csv_file_keys_its_sagas_by_the_key_column_and_types_cells_by_the_header() {
    let db = paysaga_testkit::database().await;
    assert!(paysaga(db.url(), &["migrate"]).status.success());
    let pool = sqlx::PgPool::connect(db.url()).await.unwrap();
    let dir = temp_dir();
    let file = write(
        &dir,
        "payouts.csv",
        "payout_id,delay_ms:integer,note,meta.account\n\
         po-a,0,first,0012\n\
         po-b,1,,0013\n\
         ,0,no key,1\n\
         po-d,many,bad number,1\n",
    );
    let out = paysaga(
        db.url(),
        &[
            "start",
            "noop",
            "--input-file",
            file.to_str().unwrap(),
            "--key-column",
            "payout_id",
            "--json",
        ],
    );
    assert_eq!(out.status.code(), Some(4));
    let summary: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["started"], 2);
    let refused = summary["refused"].as_array().unwrap();
    assert_eq!(refused.len(), 2);
    assert_eq!(refused[0]["line"], 4);
    assert!(refused[0]["reason"].as_str().unwrap().contains("no key"));
    assert_eq!(refused[1]["line"], 5);
    assert_eq!(refused[1]["key"], "po-d");
    assert!(refused[1]["reason"].as_str().unwrap().contains("delay_ms"));
    assert_eq!(
        sagas(&pool).await,
        vec![
            (
                "po-a".to_string(),
                json!({"payout_id": "po-a", "delay_ms": 0, "note": "first", "meta": {"account": "0012"}})
            ),
            (
                "po-b".to_string(),
                json!({"payout_id": "po-b", "delay_ms": 1, "meta": {"account": "0013"}})
            ),
        ]
    );
    // A file without the key column is refused before anything starts.
    let out = paysaga(
        db.url(),
        &["start", "noop", "--input-file", file.to_str().unwrap()],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no key column \"key\""));
    assert_eq!(sagas(&pool).await.len(), 2);
    std::fs::remove_dir_all(&dir).ok();
}
