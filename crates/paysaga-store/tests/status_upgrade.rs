//! The status vocabulary migration (20261126090101) keeps the meaning of every stored saga:
//! a deployment upgraded with sagas in flight finds `running` sagas `scheduled` (no failed
//! attempt) or `retrying` (backing off), parked `failed` ones `needs_operator`, their
//! `saga_failed` history rows `saga_parked`, and every other row unchanged; on PostgreSQL and
//! on the embedded SQLite store.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use paysaga_core::{HistoryKind, ObservedStatus, SagaStatus};
use paysaga_store::SagaFilter;
use sqlx::migrate::Migrator;
use uuid::Uuid;

const VOCABULARY: i64 = 20261126090101;

/// A directory holding the paysaga migrations of `dir` released before the new vocabulary.
fn migrations_before_vocabulary(dir: &str) -> PathBuf {
    let target = std::env::temp_dir().join(format!(
        "paysaga-status-upgrade-{}",
        Uuid::new_v4().simple()
    ));
    std::fs::create_dir_all(&target).unwrap();
    for e in std::fs::read_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join(dir)).unwrap() {
        let e = e.unwrap();
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(version) = name
            .strip_suffix(".sql")
            .and_then(|n| n.split('_').next())
            .and_then(|v| v.parse::<i64>().ok())
        else {
            continue;
        };
        if version < VOCABULARY {
            std::fs::copy(e.path(), target.join(&name)).unwrap();
        }
    }
    target
}

/// (id, status, attempt) of the sagas written by the earlier release.
fn old_sagas() -> Vec<(Uuid, &'static str, i32)> {
    vec![
        (Uuid::new_v4(), "running", 0),
        (Uuid::new_v4(), "running", 2),
        (Uuid::new_v4(), "failed", 1),
        (Uuid::new_v4(), "completed", 0),
        (Uuid::new_v4(), "waiting", 0),
    ]
}

fn expected(old: &str, attempt: i32) -> SagaStatus {
    match (old, attempt) {
        ("running", 0) => SagaStatus::Scheduled,
        ("running", _) => SagaStatus::Retrying,
        ("failed", _) => SagaStatus::NeedsOperator,
        ("completed", _) => SagaStatus::Completed,
        ("waiting", _) => SagaStatus::Waiting,
        other => panic!("no expectation for {other:?}"),
    }
}

async fn check_upgraded(url: &str, sagas: &[(Uuid, &'static str, i32)], parked: Uuid) {
    let store = paysaga_store::connect(url).await.unwrap();
    store.migrate().await.unwrap();
    for (id, old, attempt) in sagas {
        let saga = store.saga(*id).await.unwrap().unwrap();
        assert_eq!(saga.status, expected(old, *attempt), "saga stored {old}");
        assert_eq!(saga.attempt, *attempt as u32);
        assert_eq!(saga.closed_outcome, None);
    }
    let history = store.history(parked).await.unwrap();
    assert_eq!(
        history.iter().map(|h| h.kind).collect::<Vec<_>>(),
        [HistoryKind::SagaStarted, HistoryKind::SagaParked]
    );
    let listed = store
        .list_sagas(&SagaFilter {
            statuses: vec![ObservedStatus::NeedsOperator],
            ..SagaFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(
        listed.iter().map(|s| s.id).collect::<Vec<_>>(),
        [parked],
        "the parked saga is listed as needs_operator"
    );
}

#[tokio::test]
async fn postgres_sagas_in_flight_keep_their_meaning_across_the_status_vocabulary_migration() {
    let db = paysaga_testkit::database().await;
    let pool = sqlx::PgPool::connect(db.url()).await.unwrap();
    // What the earlier release did: its migrations, recorded by sqlx's migrator.
    Migrator::new(migrations_before_vocabulary("../../migrations"))
        .await
        .unwrap()
        .run(&pool)
        .await
        .unwrap();
    let def: i64 = sqlx::query_scalar(
        "INSERT INTO paysaga_definitions (name, version, content_hash, body, step_kinds)
         VALUES ('flow', 1, 'h', '{\"name\":\"flow\",\"version\":1,\"steps\":[]}', '{noop.sleep}')
         RETURNING id",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    let sagas = old_sagas();
    for (id, status, attempt) in &sagas {
        let active = matches!(*status, "running" | "waiting");
        sqlx::query(
            "INSERT INTO paysaga_sagas (id, definition_id, workflow, version, input, status,
                 attempt, run_at, wait, finished_at)
             VALUES ($1, $2, 'flow', 1, '{}', $3, $4,
                 CASE WHEN $5 THEN now() END,
                 CASE WHEN $3 = 'waiting' THEN jsonb_build_object('provider', 'p',
                     'event_types', jsonb_build_array('e'), 'correlation_key', 'k',
                     'deadline', now() + interval '1 day', 'poll_at', now(), 'since', now()) END,
                 CASE WHEN NOT $5 THEN now() END)",
        )
        .bind(id)
        .bind(def)
        .bind(status)
        .bind(attempt)
        .bind(active)
        .execute(&pool)
        .await
        .unwrap();
        let kind = if *status == "failed" {
            "saga_failed"
        } else {
            "saga_completed"
        };
        sqlx::query(
            "INSERT INTO paysaga_history (saga_id, kind) VALUES ($1, 'saga_started'), ($1, $2)",
        )
        .bind(id)
        .bind(kind)
        .execute(&pool)
        .await
        .unwrap();
    }
    let parked = sagas[2].0;
    check_upgraded(db.url(), &sagas, parked).await;
}

#[tokio::test]
async fn sqlite_sagas_in_flight_keep_their_meaning_across_the_status_vocabulary_migration() {
    let dir = std::env::temp_dir().join(format!("paysaga-status-{}", Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let url = format!("sqlite://{}", dir.join("paysaga.db").display());
    let options = url
        .parse::<sqlx::sqlite::SqliteConnectOptions>()
        .unwrap()
        .create_if_missing(true)
        .foreign_keys(true);
    let pool = sqlx::SqlitePool::connect_with(options).await.unwrap();
    Migrator::new(migrations_before_vocabulary("../../migrations/sqlite"))
        .await
        .unwrap()
        .run(&pool)
        .await
        .unwrap();
    let now = "2026-11-26T10:00:00.000000Z";
    sqlx::query(
        "INSERT INTO paysaga_definitions (id, name, version, content_hash, body, step_kinds, created_at)
         VALUES (1, 'flow', 1, 'h', '{\"name\":\"flow\",\"version\":1,\"steps\":[]}', '[\"noop.sleep\"]', $1)",
    )
    .bind(now)
    .execute(&pool)
    .await
    .unwrap();
    let sagas = old_sagas();
    for (id, status, attempt) in &sagas {
        let active = matches!(*status, "running" | "waiting");
        let wait = (*status == "waiting").then(|| {
            format!(
                r#"{{"provider":"p","event_types":["e"],"correlation_key":"k","deadline":"{now}","poll_at":"{now}","since":"{now}"}}"#
            )
        });
        sqlx::query(
            "INSERT INTO paysaga_sagas (id, definition_id, workflow, version, input, status,
                 attempt, run_at, wait, wait_deadline, wait_since, created_at, updated_at,
                 finished_at)
             VALUES ($1, 1, 'flow', 1, '{}', $2, $3, $4, $5, $6, $6, $7, $7, $8)",
        )
        .bind(id.to_string())
        .bind(status)
        .bind(attempt)
        .bind(active.then_some(now))
        .bind(&wait)
        .bind(wait.as_ref().map(|_| now))
        .bind(now)
        .bind((!active).then_some(now))
        .execute(&pool)
        .await
        .unwrap();
        for kind in [
            "saga_started",
            if *status == "failed" {
                "saga_failed"
            } else {
                "saga_completed"
            },
        ] {
            sqlx::query("INSERT INTO paysaga_history (saga_id, at, kind) VALUES ($1, $2, $3)")
                .bind(id.to_string())
                .bind(now)
                .bind(kind)
                .execute(&pool)
                .await
                .unwrap();
        }
    }
    // A wait row references the saga: the rebuild of the sagas table keeps it valid.
    sqlx::query(
        "INSERT INTO paysaga_waits (saga_id, provider, event_types, correlation_key, deadline, created_at)
         VALUES ($1, 'p', '[\"e\"]', 'k', $2, $2)",
    )
    .bind(sagas[4].0.to_string())
    .bind(now)
    .execute(&pool)
    .await
    .unwrap();
    pool.close().await;
    let parked = sagas[2].0;
    check_upgraded(&url, &sagas, parked).await;
    let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
    let fk_on: i64 = sqlx::query_scalar("PRAGMA foreign_keys")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(fk_on, 1, "a fresh connection still enforces foreign keys");
    let broken: Vec<(String,)> = sqlx::query_as("SELECT \"table\" FROM pragma_foreign_key_check")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert!(broken.is_empty(), "dangling references: {broken:?}");
    let waits: i64 = sqlx::query_scalar("SELECT count(*) FROM paysaga_waits")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(waits, 1);
}
