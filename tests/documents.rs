//! Documents without a shared disk: the KYC documents of a Blaaiz saga are stored in the
//! database by the starter (`paysaga documents put` and `Engine::put_document`), and a
//! `paysaga worker` process whose working directory and temp dir differ from the starter's
//! (and which could not read the starter's files: they are deleted before it runs) uploads
//! them to the `paysaga sandbox` process. The sandbox must receive the exact bytes; the
//! content must be gone once the saga is final plus the retention; a start naming a missing
//! document is refused with nothing stored.
#![allow(clippy::unwrap_used)]

mod support;

use std::collections::HashMap;
use std::process::Command;
use std::time::{Duration, Instant};

use paysaga_core::{DocumentId, SagaStatus};
use paysaga_runtime::Error;
use paysaga_store::{SagaFilter, Store};
use serde_json::{json, Value};
use support::processes::{free_port, log_dir, Sandbox, WorkerProcess};
use support::workflows::{control_engine, example_document, input, repo};
use uuid::Uuid;

const BIN: &str = env!("CARGO_BIN_EXE_paysaga");

/// What the sandbox's pre-signed upload received for a Blaaiz file id.
async fn sandbox_file(sandbox: &Sandbox, file_id: &str) -> Value {
    reqwest::get(sandbox.url(&format!("/_sandbox/blaaiz/files/{file_id}")))
        .await
        .unwrap()
        .error_for_status()
        .unwrap()
        .json()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blaaiz_documents_reach_the_sandbox_from_a_worker_without_the_starters_disk_and_are_deleted_after_retention(
) {
    let db = paysaga_testkit::database().await;
    let engine = control_engine(db.url()).await;
    let logs = log_dir("documents");
    let worker_port = free_port();
    let sandbox = Sandbox::start(worker_port, "none", &logs.join("sandbox.log"));
    let run = Uuid::new_v4().simple().to_string()[..8].to_string();

    // The starter: its own working directory and temp dir; the identity document is a file
    // there, stored with the CLI. Bytes unique to this run (every byte value, NULs included).
    let starter = logs.join("starter");
    std::fs::create_dir_all(starter.join("tmp")).unwrap();
    let mut front: Vec<u8> = (0..=255u8).cycle().take(300 * 1024).collect();
    front.extend_from_slice(run.as_bytes());
    let front_file = starter.join("passport-front.png");
    std::fs::write(&front_file, &front).unwrap();
    let put = Command::new(BIN)
        .args(["documents", "put", "passport-front.png"])
        .current_dir(&starter)
        .env("TMPDIR", starter.join("tmp"))
        .env("DATABASE_URL", db.url())
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    assert!(
        put.status.success(),
        "documents put: {}",
        String::from_utf8_lossy(&put.stderr)
    );
    let front_id: DocumentId = String::from_utf8(put.stdout)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let stored = engine.document(front_id).await.unwrap().unwrap();
    assert_eq!(
        (
            stored.size,
            stored.content_type.as_str(),
            stored.sha256.clone()
        ),
        (
            front.len() as i64,
            "image/png",
            paysaga_core::sha256_hex(&front)
        )
    );
    // `documents show` prints metadata, never the content.
    let show = Command::new(BIN)
        .args(["documents", "show", &front_id.to_string()])
        .env("DATABASE_URL", db.url())
        .output()
        .unwrap();
    let shown = String::from_utf8_lossy(&show.stdout);
    assert!(
        show.status.success() && shown.contains(&stored.sha256),
        "{shown}"
    );
    assert!(!shown.contains(&run), "no content on the terminal: {shown}");

    // The other documents through the library call (`input` puts the example files).
    let mut saga_input = input(&engine, "blaaiz_kyc_payout", &run, 0).await;
    let mut expected: HashMap<String, (DocumentId, Vec<u8>)> = HashMap::new();
    for doc in saga_input["documents"].as_array_mut().unwrap() {
        let category = doc["file_category"].as_str().unwrap().to_owned();
        if category == "identity" {
            doc["document_id"] = json!(front_id);
            expected.insert(category, (front_id, front.clone()));
        } else {
            let (file, _) = example_document(&category);
            let bytes =
                std::fs::read(repo().join("workflows/examples/documents").join(file)).unwrap();
            let id: DocumentId = doc["document_id"].as_str().unwrap().parse().unwrap();
            expected.insert(category, (id, bytes));
        }
    }
    // The starter's file is gone before any worker runs: only the database holds it.
    std::fs::remove_file(&front_file).unwrap();
    let started = engine
        .start(
            "blaaiz_kyc_payout",
            saga_input,
            Some(&format!("docs-{run}")),
        )
        .await
        .unwrap();
    for (id, _) in expected.values() {
        assert_eq!(
            engine.document(*id).await.unwrap().unwrap().saga_id,
            Some(started.saga_id),
            "start gives the documents to the saga"
        );
    }

    // The worker: another working directory and temp dir, a tiny retention.
    let worker_dir = logs.join("worker-cwd");
    let worker_tmp = logs.join("worker-tmp");
    std::fs::create_dir_all(&worker_dir).unwrap();
    std::fs::create_dir_all(&worker_tmp).unwrap();
    let _worker = WorkerProcess::start_in(
        db.url(),
        worker_port,
        sandbox.port,
        "docs",
        &logs.join("worker.log"),
        &[
            ("TMPDIR", worker_tmp.to_str().unwrap()),
            ("PAYSAGA_DOCUMENT_RETENTION", "2s"),
        ],
        Some(&worker_dir),
    );

    let deadline = Instant::now() + Duration::from_secs(60);
    let saga = loop {
        let saga = engine.store().saga(started.saga_id).await.unwrap().unwrap();
        if saga.status.is_final() {
            break saga;
        }
        assert!(
            Instant::now() < deadline,
            "saga not final in 60 s: {} at step {} ({:?}); logs in {}",
            saga.status,
            saga.step_index,
            saga.last_error,
            logs.display()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(
        saga.status,
        SagaStatus::Completed,
        "{:?}; logs in {}",
        saga.last_error,
        logs.display()
    );

    // The sandbox received exactly the stored bytes, with the stored content type.
    let files = saga.outputs["upload_documents"]["files"]
        .as_array()
        .unwrap();
    assert_eq!(files.len(), expected.len());
    for file in files {
        let category = file["file_category"].as_str().unwrap();
        let (id, bytes) = &expected[category];
        assert_eq!(file["document_id"], json!(id));
        let received = sandbox_file(&sandbox, file["file_id"].as_str().unwrap()).await;
        assert_eq!(received["uploaded"], true, "{category}: {received}");
        assert_eq!(
            received["sha256"],
            json!(paysaga_core::sha256_hex(bytes)),
            "{category}: the sandbox received other bytes"
        );
        assert_eq!(received["size"], json!(bytes.len()), "{category}");
        let content_type = engine.document(*id).await.unwrap().unwrap().content_type;
        assert_eq!(received["content_type"], json!(content_type), "{category}");
    }

    // Final + retention (2 s): the worker deletes the content; metadata and hash stay.
    let deadline = Instant::now() + Duration::from_secs(30);
    for (category, (id, bytes)) in &expected {
        loop {
            let doc = engine.document(*id).await.unwrap().unwrap();
            if let Some(deleted_at) = doc.content_deleted_at {
                assert_eq!(engine.document_content(*id).await.unwrap(), None);
                assert_eq!(doc.sha256, paysaga_core::sha256_hex(bytes), "{category}");
                assert_eq!(doc.size, bytes.len() as i64, "{category}");
                assert!(deleted_at >= saga.finished_at.unwrap());
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{category} document content still stored 30 s after the saga finished; logs in {}",
                logs.display()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    let log = std::fs::read_to_string(logs.join("worker.log")).unwrap();
    assert!(
        log.contains("document content deleted after retention"),
        "the worker logs the deletion"
    );
}

/// A start naming a document that does not exist, whose content retention deleted, or that
/// another saga holds is refused with the document named, and stores nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_naming_a_missing_or_taken_document_is_refused_and_stores_nothing() {
    let db = paysaga_testkit::database().await;
    let engine = control_engine(db.url()).await;
    let run = Uuid::new_v4().simple().to_string()[..8].to_string();
    let base = input(&engine, "blaaiz_kyc_payout", &run, 0).await;
    let sagas = || async { engine.list(&SagaFilter::default()).await.unwrap().len() };

    let missing = DocumentId::new();
    let mut bad = base.clone();
    bad["documents"][1]["document_id"] = json!(missing);
    match engine.start("blaaiz_kyc_payout", bad, Some("k1")).await {
        Err(e @ Error::InvalidInput { .. }) => {
            let m = e.to_string();
            assert!(
                m.contains(&missing.to_string())
                    && m.contains("upload_documents")
                    && m.contains("documents put"),
                "{m}"
            );
        }
        other => panic!("expected InvalidInput, got {other:?}"),
    }
    assert_eq!(sagas().await, 0, "nothing stored");
    // The documents that do exist were not given to anyone.
    let first: DocumentId = base["documents"][0]["document_id"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(engine.document(first).await.unwrap().unwrap().saga_id, None);

    // A path instead of an id is refused at start, never read.
    let mut path = base.clone();
    path["documents"][0] = json!({"file_category": "identity", "path": "/etc/passwd"});
    assert!(matches!(
        engine.start("blaaiz_kyc_payout", path, Some("k2")).await,
        Err(Error::InvalidInput { .. })
    ));

    // The same input twice with one key: one saga; with another key: the documents are taken.
    let a = engine
        .start("blaaiz_kyc_payout", base.clone(), Some("k3"))
        .await
        .unwrap();
    let again = engine
        .start("blaaiz_kyc_payout", base.clone(), Some("k3"))
        .await
        .unwrap();
    assert_eq!((again.saga_id, again.created), (a.saga_id, false));
    match engine.start("blaaiz_kyc_payout", base, Some("k4")).await {
        Err(e @ Error::InvalidInput { .. }) => {
            assert!(e.to_string().contains(&a.saga_id.to_string()), "{e}")
        }
        other => panic!("expected InvalidInput, got {other:?}"),
    }
    assert_eq!(sagas().await, 1);

    // Too large: refused with the limit named, nothing stored.
    match engine
        .clone()
        .with_max_document_size(1024)
        .put_document(vec![0; 1025], "image/png")
        .await
    {
        Err(e @ Error::DocumentTooLarge { .. }) => {
            assert!(e.to_string().contains("1024"), "{e}")
        }
        other => panic!("expected DocumentTooLarge, got {other:?}"),
    }
}

/// A start of an earlier version (documents claimed in a commit of their own) that lost its
/// database before its insert committed left them with a saga id no saga has; the same
/// request retried takes them back and starts (before: refused for good, "belongs to saga
/// ..."), while a document a stored saga holds stays refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_retried_after_its_insert_failed_takes_back_the_documents_its_first_try_claimed() {
    let db = paysaga_testkit::database().await;
    let engine = control_engine(db.url()).await;
    let store = paysaga_store::PgStore::connect(db.url()).await.unwrap();
    let run = Uuid::new_v4().simple().to_string()[..8].to_string();
    let base = input(&engine, "blaaiz_kyc_payout", &run, 0).await;
    let ids = document_ids(&base);
    // What the first try left: its documents claimed for its id, no saga inserted.
    let orphan = Uuid::new_v4();
    store.claim_documents(orphan, &ids).await.unwrap();
    let started = engine
        .start("blaaiz_kyc_payout", base.clone(), Some("k1"))
        .await
        .expect("the retried start takes its documents back");
    assert!(started.created);
    for id in &ids {
        assert_eq!(
            engine.document(*id).await.unwrap().unwrap().saga_id,
            Some(started.saga_id)
        );
    }
    // Held by a stored saga: still refused, with that saga named.
    match engine.start("blaaiz_kyc_payout", base, Some("k2")).await {
        Err(e @ Error::InvalidInput { .. }) => {
            assert!(e.to_string().contains(&started.saga_id.to_string()), "{e}")
        }
        other => panic!("expected InvalidInput, got {other:?}"),
    }
    assert_eq!(engine.list(&SagaFilter::default()).await.unwrap().len(), 1);
}

/// The documents a `blaaiz_kyc_payout` input names.
fn document_ids(input: &Value) -> Vec<DocumentId> {
    input["documents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["document_id"].as_str().unwrap().parse().unwrap())
        .collect()
}

/// Sessions of the test's database waiting for a lock.
async fn lock_waiters(pool: &sqlx::PgPool) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity
         WHERE datname = current_database() AND wait_event_type = 'Lock'",
    )
    .fetch_one(pool)
    .await
    .unwrap()
}

/// Two starts (different keys) name the same documents; the first one's insert is still in
/// flight when the second one looks at them. The documents stay the first saga's and the
/// second start is refused with that saga named. Before, the first start claimed them in a
/// commit of its own: the second found them held by an id no saga had, took them back as
/// a dead start's, and both sagas were stored, the first without its documents.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_whose_insert_is_in_flight_keeps_its_documents_from_another_start() {
    let db = paysaga_testkit::database().await;
    let engine = control_engine(db.url()).await;
    let pool = sqlx::PgPool::connect(db.url()).await.unwrap();
    let run = Uuid::new_v4().simple().to_string()[..8].to_string();
    let base = input(&engine, "blaaiz_kyc_payout", &run, 0).await;
    let ids = document_ids(&base);
    // Inserts into the sagas table wait while this transaction holds its lock; reads do not.
    let mut blocker = pool.begin().await.unwrap();
    sqlx::query("LOCK TABLE paysaga_sagas IN EXCLUSIVE MODE")
        .execute(&mut *blocker)
        .await
        .unwrap();
    let wait_for_waiters = |n: i64| {
        let pool = pool.clone();
        async move {
            let deadline = Instant::now() + Duration::from_secs(30);
            while lock_waiters(&pool).await < n {
                assert!(Instant::now() < deadline, "{n} starts never waited");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    };
    let start = |key: &'static str| {
        let (engine, input) = (engine.clone(), base.clone());
        tokio::spawn(async move { engine.start("blaaiz_kyc_payout", input, Some(key)).await })
    };
    let first = start("first");
    wait_for_waiters(1).await;
    let second = start("second");
    wait_for_waiters(2).await;
    blocker.commit().await.unwrap();

    let first = first.await.unwrap().expect("the first start");
    assert!(first.created);
    match second.await.unwrap() {
        Err(e @ (Error::Refused(_) | Error::InvalidInput { .. })) => {
            assert!(e.to_string().contains(&first.saga_id.to_string()), "{e}")
        }
        other => panic!("expected the second start refused, got {other:?}"),
    }
    for id in &ids {
        assert_eq!(
            engine.document(*id).await.unwrap().unwrap().saga_id,
            Some(first.saga_id),
            "document {id} stays the first saga's"
        );
    }
    assert_eq!(engine.list(&SagaFilter::default()).await.unwrap().len(), 1);
}

/// A step kind that reads the document its input names (as `blaaiz.upload_documents` does)
/// and outputs its size and SHA-256.
#[derive(Debug)]
struct ReadDocument;

#[async_trait::async_trait]
impl paysaga_core::StepKind for ReadDocument {
    fn name(&self) -> &'static str {
        "test.read_document"
    }
    fn documents(&self, params: &Value) -> Vec<DocumentId> {
        params["document_id"]
            .as_str()
            .and_then(|s| s.parse().ok())
            .into_iter()
            .collect()
    }
    async fn run(
        &self,
        ctx: &paysaga_core::StepContext,
        params: Value,
    ) -> paysaga_core::StepOutcome {
        let id: DocumentId = params["document_id"].as_str().unwrap().parse().unwrap();
        match ctx.documents.read(ctx, id).await {
            Ok(doc) => paysaga_core::StepOutcome::Done(json!({
                "size": doc.content.len(),
                "sha256": paysaga_core::sha256_hex(&doc.content),
            })),
            Err(e) => paysaga_core::StepOutcome::fail(e.to_string()),
        }
    }
}

/// The worker reads a step's document from the store and checks it against the SHA-256
/// recorded when it was stored: a document whose stored bytes changed fails the step.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_reads_documents_from_the_store_and_refuses_content_that_does_not_match_its_hash() {
    let db = paysaga_testkit::database().await;
    let store = paysaga_store::PgStore::connect(db.url()).await.unwrap();
    paysaga_store::Store::migrate(&store).await.unwrap();
    let pool = store.pool().clone();
    let mut registry = paysaga_runtime::Registry::new();
    registry.register(ReadDocument);
    let engine = paysaga_runtime::Engine::new(std::sync::Arc::new(store), registry);
    engine
        .submit_definition(
            &paysaga_core::Definition::from_toml(
                r#"
name = "read_doc"
version = 1
[[steps]]
name = "read"
kind = "test.read_document"
params = { document_id = "$.input.document_id" }
retry = { max_attempts = 1 }
"#,
            )
            .unwrap(),
        )
        .await
        .unwrap();
    let good_bytes = b"passport scan \x00\xff".to_vec();
    let good = engine
        .put_document(good_bytes.clone(), "image/png")
        .await
        .unwrap();
    let tampered = engine
        .put_document(b"utility bill".to_vec(), "application/pdf")
        .await
        .unwrap();
    let a = engine
        .start("read_doc", json!({"document_id": good}), None)
        .await
        .unwrap();
    let b = engine
        .start("read_doc", json!({"document_id": tampered}), None)
        .await
        .unwrap();
    // Same size, other bytes: only the hash can tell.
    sqlx::query("UPDATE paysaga_documents SET content = 'UTILITY BILL'::bytea WHERE id = $1")
        .bind(tampered.0)
        .execute(&pool)
        .await
        .unwrap();
    let worker = support::spawn_worker(&engine, support::fast_worker("docs"));
    let deadline = Instant::now() + Duration::from_secs(30);
    let final_of = |id: Uuid| {
        let engine = engine.clone();
        async move {
            loop {
                let s = engine.store().saga(id).await.unwrap().unwrap();
                if s.status.is_final() {
                    return s;
                }
                assert!(Instant::now() < deadline, "saga {id} not final: {s:?}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    let a = final_of(a.saga_id).await;
    assert_eq!(a.status, SagaStatus::Completed, "{:?}", a.last_error);
    assert_eq!(
        a.outputs["read"],
        json!({"size": good_bytes.len(), "sha256": paysaga_core::sha256_hex(&good_bytes)})
    );
    let b = final_of(b.saga_id).await;
    assert_ne!(b.status, SagaStatus::Completed);
    let error = b.last_error.unwrap_or_default();
    assert!(
        error.contains(&tampered.to_string()) && error.contains("SHA-256"),
        "{error}"
    );
    worker.shutdown().await;
}
