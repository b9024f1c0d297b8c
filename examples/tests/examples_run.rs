//! The examples build and run against a real PostgreSQL: the custom step kind's worker runs
//! its saga to the end, and the axum service starts a saga in the request's transaction,
//! returns its result, and answers a retried request with the same saga.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use serde_json::{json, Value};

#[tokio::test]
async fn the_custom_step_worker_example_runs_its_saga_to_completion() {
    let db = paysaga_testkit::database().await;
    let out = Command::new(env!("CARGO_BIN_EXE_custom_step_worker"))
        .arg(db.url())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let outputs: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(outputs["reserve"]["amount"], 12_500);
    assert_eq!(outputs["reserve"]["currency"], "EUR");
    assert_eq!(outputs["sleep"]["slept_ms"], 10);
    // Run again: the same key, the same saga, nothing new.
    let again = Command::new(env!("CARGO_BIN_EXE_custom_step_worker"))
        .arg(db.url())
        .output()
        .unwrap();
    assert!(again.status.success());
    let pool = sqlx::PgPool::connect(db.url()).await.unwrap();
    let sagas: i64 = sqlx::query_scalar("SELECT count(*) FROM paysaga_sagas")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(sagas, 1);
}

struct Service(std::process::Child);

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn the_payout_service_example_starts_the_saga_in_its_transaction_and_returns_the_result() {
    let db = paysaga_testkit::database().await;
    let mut child = Command::new(env!("CARGO_BIN_EXE_payout_service"))
        .args([db.url(), "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let service = Service(child);
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).unwrap();
    let addr = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_string();
    let http = reqwest::Client::new();
    let post = |body: Value| {
        let http = http.clone();
        let url = format!("http://{addr}/payouts");
        async move { http.post(url).json(&body).send().await.unwrap() }
    };

    let first = post(json!({"id": "po-1", "amount": 4_200, "currency": "EUR"})).await;
    assert_eq!(first.status(), 200);
    let first: Value = first.json().await.unwrap();
    assert_eq!(first["status"], "completed");
    assert_eq!(first["created"], true);
    assert_eq!(first["outputs"]["reserve"]["amount"], 4_200);

    // The retried request finds the same saga; one payout row, one saga.
    let retried: Value = post(json!({"id": "po-1", "amount": 4_200, "currency": "EUR"}))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(retried["saga_id"], first["saga_id"]);
    assert_eq!(retried["created"], false);

    // A refused input stores neither the payout nor a saga.
    let refused = post(json!({"id": "po-2", "amount": -5, "currency": "EUR"})).await;
    assert_eq!(refused.status(), 422);

    let pool = sqlx::PgPool::connect(db.url()).await.unwrap();
    let rows: Vec<(String, String)> = sqlx::query_as(
        "SELECT p.id, s.status FROM app_payouts p JOIN paysaga_sagas s ON s.id = p.saga_id",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(rows, [("po-1".to_string(), "completed".to_string())]);
    let sagas: i64 = sqlx::query_scalar("SELECT count(*) FROM paysaga_sagas")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(sagas, 1);

    // The service's own /metrics exposes paysaga's families (registered into its registry).
    let metrics = http
        .get(format!("http://{addr}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(
            r#"paysaga_sagas_finished_total{workflow="service_payout",status="completed"} 1"#
        ),
        "{metrics}"
    );
    drop(service);
}
