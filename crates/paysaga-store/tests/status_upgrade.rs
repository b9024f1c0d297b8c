//! The status vocabulary migration (20261126090101) keeps the meaning of every stored saga:
//! a deployment upgraded with sagas in flight finds `running` sagas `scheduled` (no failed
//! attempt) or `retrying` (backing off), parked `failed` ones `needs_operator`, their
//! `saga_failed` history rows `saga_parked`, and every other row unchanged; on PostgreSQL and
//! on the embedded SQLite store. The later rewrite of the commit path's checks as array
//! constants (20261128040101, PostgreSQL) validates the rows already stored and accepts
//! exactly the statuses and history kinds the engine writes. The same migration closed two
//! NULL holes (a closed saga without its outcome, a close request without one); the SQLite
//! store closes them with triggers (20261128090101), and its upgrade stops on a stored row of
//! either shape.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use paysaga_core::{HistoryKind, ObservedStatus, SagaStatus};
use paysaga_store::SagaFilter;
use sqlx::migrate::Migrator;
use uuid::Uuid;

const VOCABULARY: i64 = 20261126090101;

/// A directory holding the paysaga migrations of `dir` released before `version`.
fn migrations_before(dir: &str, version: i64) -> PathBuf {
    let target = std::env::temp_dir().join(format!(
        "paysaga-upgrade-{version}-{}",
        Uuid::new_v4().simple()
    ));
    std::fs::create_dir_all(&target).unwrap();
    for e in std::fs::read_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join(dir)).unwrap() {
        let e = e.unwrap();
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(v) = name
            .strip_suffix(".sql")
            .and_then(|n| n.split('_').next())
            .and_then(|v| v.parse::<i64>().ok())
        else {
            continue;
        };
        if v < version {
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
    Migrator::new(migrations_before("../../migrations", VOCABULARY))
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
    let (url, pool) = sqlite_file("status").await;
    Migrator::new(migrations_before("../../migrations/sqlite", VOCABULARY))
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

const ARRAY_CHECKS: i64 = 20261128040101;

/// The checks and trigger conditions every step commit evaluates, with the size of the
/// expression tree PostgreSQL reads back at each statement (`conbin`, `tgqual` as text).
async fn commit_path_expressions(pool: &sqlx::PgPool) -> Vec<(String, bool, i32)> {
    sqlx::query_as(
        "SELECT conname::text, convalidated, octet_length(conbin::text)
           FROM pg_constraint
          WHERE conname IN ('paysaga_history_kind_check', 'paysaga_sagas_status_check',
                            'paysaga_sagas_final_check', 'paysaga_sagas_closed_outcome_check',
                            'paysaga_sagas_close_requested_check')
         UNION ALL
         SELECT tgname::text, true, octet_length(tgqual::text)
           FROM pg_trigger WHERE tgname IN ('paysaga_child_ended', 'paysaga_saga_ended')
         ORDER BY 1",
    )
    .fetch_all(pool)
    .await
    .unwrap()
}

/// The SQLSTATE of a refused statement (`None`: it was accepted).
async fn refused(pool: &sqlx::PgPool, sql: &str, id: Uuid, text: &str) -> Option<String> {
    match sqlx::query(sql).bind(id).bind(text).execute(pool).await {
        Ok(_) => None,
        Err(sqlx::Error::Database(e)) => e.code().map(|c| c.into_owned()),
        Err(e) => panic!("{sql}: {e}"),
    }
}

#[tokio::test]
async fn postgres_commit_path_checks_accept_every_status_and_kind_the_engine_writes_and_no_other() {
    let db = paysaga_testkit::database().await;
    let store = paysaga_store::connect(db.url()).await.unwrap();
    store.migrate().await.unwrap();
    let pool = sqlx::PgPool::connect(db.url()).await.unwrap();
    sqlx::query(
        "INSERT INTO paysaga_definitions (name, version, content_hash, body, step_kinds)
         VALUES ('flow', 1, 'h', '{\"name\":\"flow\",\"version\":1,\"steps\":[]}', '{noop.sleep}')",
    )
    .execute(&pool)
    .await
    .unwrap();
    let insert = "INSERT INTO paysaga_sagas (id, definition_id, workflow, version, input, status,
             run_at, closed_outcome)
         SELECT $1, id, 'flow', 1, '{}', $2,
             CASE WHEN $2 IN ('scheduled', 'retrying', 'waiting', 'compensating') THEN now() END,
             CASE WHEN $2 = 'closed' THEN 'paid' END
         FROM paysaga_definitions WHERE name = 'flow'";
    let mut ids = Vec::new();
    for status in SagaStatus::ALL {
        let id = Uuid::new_v4();
        assert_eq!(
            refused(&pool, insert, id, status.as_str()).await,
            None,
            "{status:?}"
        );
        ids.push(id);
    }
    assert_eq!(
        refused(&pool, insert, Uuid::new_v4(), "running")
            .await
            .as_deref(),
        Some("23514"),
        "`running` is derived, never stored"
    );
    let history = "INSERT INTO paysaga_history (saga_id, kind) VALUES ($1, $2)";
    for kind in HistoryKind::ALL {
        assert_eq!(
            refused(&pool, history, ids[0], kind.as_str()).await,
            None,
            "{kind:?}"
        );
    }
    assert_eq!(
        refused(&pool, history, ids[0], "saga_failed")
            .await
            .as_deref(),
        Some("23514"),
        "a kind the engine no longer writes"
    );
    // The other conditions of the rewritten checks still hold.
    let completed = ids[4];
    let cases = [
        ("UPDATE paysaga_sagas SET run_at = now() WHERE id = $1 AND $2 <> ''", completed, "a final saga is never runnable"),
        ("UPDATE paysaga_sagas SET closed_outcome = $2 WHERE id = $1", completed, "only a closed saga has an outcome"),
        ("UPDATE paysaga_sagas SET closed_outcome = NULL WHERE id = $1 AND $2 <> ''", ids[8], "a closed saga has its outcome"),
        ("UPDATE paysaga_sagas SET close_requested = jsonb_build_object('outcome', $2) WHERE id = $1", ids[6], "a close request names paid or not_paid"),
        ("UPDATE paysaga_sagas SET close_requested = jsonb_build_object('note', $2) WHERE id = $1", ids[6], "a close request names its outcome"),
        ("UPDATE paysaga_sagas SET close_requested = jsonb_build_object('outcome', 'paid') WHERE id = $1 AND $2 <> ''", ids[0], "only an unwinding or parked saga has a close request"),
    ];
    for (sql, id, what) in cases {
        assert_eq!(
            refused(&pool, sql, id, "paid!").await.as_deref(),
            Some("23514"),
            "{what}"
        );
    }
    assert_eq!(
        refused(&pool, "UPDATE paysaga_sagas SET close_requested = jsonb_build_object('outcome', $2) WHERE id = $1", ids[6], "not_paid").await,
        None
    );
}

#[tokio::test]
async fn postgres_upgrade_to_array_checks_validates_stored_rows_and_shrinks_what_each_commit_reads()
{
    let db = paysaga_testkit::database().await;
    let pool = sqlx::PgPool::connect(db.url()).await.unwrap();
    Migrator::new(migrations_before("../../migrations", ARRAY_CHECKS))
        .await
        .unwrap()
        .run(&pool)
        .await
        .unwrap();
    let before = commit_path_expressions(&pool).await;
    assert_eq!(before.len(), 7, "{before:?}");
    let def: i64 = sqlx::query_scalar(
        "INSERT INTO paysaga_definitions (name, version, content_hash, body, step_kinds)
         VALUES ('flow', 1, 'h', '{\"name\":\"flow\",\"version\":1,\"steps\":[]}', '{noop.sleep}')
         RETURNING id",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    let (open, closed) = (Uuid::new_v4(), Uuid::new_v4());
    sqlx::query(
        "INSERT INTO paysaga_sagas (id, definition_id, workflow, version, input, status, run_at,
             closed_outcome)
         VALUES ($1, $3, 'flow', 1, '{}', 'retrying', now(), NULL),
                ($2, $3, 'flow', 1, '{}', 'closed', NULL, 'not_paid')",
    )
    .bind(open)
    .bind(closed)
    .bind(def)
    .execute(&pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO paysaga_history (saga_id, kind) VALUES ($1, 'saga_started'),
             ($1, 'step_retrying'), ($2, 'saga_started'), ($2, 'saga_closed')",
    )
    .bind(open)
    .bind(closed)
    .execute(&pool)
    .await
    .unwrap();
    let rows = "SELECT s.id, s.status, s.closed_outcome, array_agg(h.kind ORDER BY h.id)::text
                  FROM paysaga_sagas s JOIN paysaga_history h ON h.saga_id = s.id
                 GROUP BY 1, 2, 3 ORDER BY 1";
    type Row = (Uuid, String, Option<String>, String);
    let stored: Vec<Row> = sqlx::query_as(rows).fetch_all(&pool).await.unwrap();

    let store = paysaga_store::connect(db.url()).await.unwrap();
    store.migrate().await.unwrap();

    let after: Vec<Row> = sqlx::query_as(rows).fetch_all(&pool).await.unwrap();
    assert_eq!(after, stored, "every stored row kept as it was");
    let now = commit_path_expressions(&pool).await;
    assert_eq!(
        now.iter().map(|(n, _, _)| n).collect::<Vec<_>>(),
        before.iter().map(|(n, _, _)| n).collect::<Vec<_>>(),
        "the same checks and triggers, by name"
    );
    for (name, valid, _) in &now {
        assert!(*valid, "{name} is validated against the stored rows");
    }
    let total = |rows: &[(String, bool, i32)]| rows.iter().map(|r| r.2).sum::<i32>();
    assert!(
        total(&now) * 3 < total(&before) * 2,
        "read per status update: {} bytes, {} before",
        total(&now),
        total(&before)
    );
    let kind = |rows: &[(String, bool, i32)]| {
        rows.iter()
            .find(|(n, _, _)| n == "paysaga_history_kind_check")
            .map(|r| r.2)
            .unwrap()
    };
    assert!(
        kind(&now) * 2 < kind(&before),
        "the history kinds are one constant, not one node per kind: {} bytes, {} before",
        kind(&now),
        kind(&before)
    );
}

const OUTCOME_REQUIRED: i64 = 20261128090101;

/// A new SQLite database file, in a directory of its own under the temp dir, with its URL
/// and a pool on it.
async fn sqlite_file(name: &str) -> (String, sqlx::SqlitePool) {
    let dir = std::env::temp_dir().join(format!("paysaga-{name}-{}", Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let url = format!("sqlite://{}", dir.join("paysaga.db").display());
    let options = url
        .parse::<sqlx::sqlite::SqliteConnectOptions>()
        .unwrap()
        .create_if_missing(true)
        .foreign_keys(true);
    (url, sqlx::SqlitePool::connect_with(options).await.unwrap())
}

/// Inserts a saga of `status` (runnable when active, an outcome when `outcome` is given) on
/// a one-definition SQLite database, and returns whether SQLite accepted it.
async fn sqlite_insert(
    pool: &sqlx::SqlitePool,
    id: Uuid,
    status: &str,
    outcome: Option<&str>,
) -> Result<(), String> {
    let now = "2026-11-28T10:00:00.000000Z";
    let active = matches!(
        status,
        "scheduled" | "retrying" | "waiting" | "compensating"
    );
    sqlx::query(
        "INSERT INTO paysaga_sagas (id, definition_id, workflow, version, input, status,
             run_at, closed_outcome, created_at, updated_at)
         VALUES ($1, 1, 'flow', 1, '{}', $2, $3, $4, $5, $5)",
    )
    .bind(id.to_string())
    .bind(status)
    .bind(active.then_some(now))
    .bind(outcome)
    .bind(now)
    .execute(pool)
    .await
    .map(|_| ())
    .map_err(|e| e.to_string())
}

async fn sqlite_definition(pool: &sqlx::SqlitePool) {
    sqlx::query(
        "INSERT INTO paysaga_definitions (id, name, version, content_hash, body, step_kinds, created_at)
         VALUES (1, 'flow', 1, 'h', '{\"name\":\"flow\",\"version\":1,\"steps\":[]}', '[\"noop.sleep\"]',
                 '2026-11-28T10:00:00.000000Z')",
    )
    .execute(pool)
    .await
    .unwrap();
}

#[tokio::test]
async fn sqlite_refuses_a_closed_saga_without_its_outcome_and_a_close_request_without_one() {
    let (url, pool) = sqlite_file("outcome").await;
    let store = paysaga_store::connect(&url).await.unwrap();
    store.migrate().await.unwrap();
    sqlite_definition(&pool).await;
    for status in SagaStatus::ALL {
        let outcome = (status == SagaStatus::Closed).then_some("paid");
        sqlite_insert(&pool, Uuid::new_v4(), status.as_str(), outcome)
            .await
            .unwrap_or_else(|e| panic!("{status:?}: {e}"));
    }
    let refused = sqlite_insert(&pool, Uuid::new_v4(), "closed", None).await;
    assert!(
        refused
            .as_ref()
            .is_err_and(|e| e.contains("a closed saga carries its outcome")),
        "a closed saga without its outcome: {refused:?}"
    );
    let (closed, unwinding) = (Uuid::new_v4(), Uuid::new_v4());
    sqlite_insert(&pool, closed, "closed", Some("not_paid"))
        .await
        .unwrap();
    sqlite_insert(&pool, unwinding, "compensating", None)
        .await
        .unwrap();
    let update = |sql: &'static str, id: Uuid| {
        let pool = pool.clone();
        async move {
            sqlx::query(sql)
                .bind(id.to_string())
                .execute(&pool)
                .await
                .map(|_| ())
                .map_err(|e| match e {
                    sqlx::Error::Database(db) => db.code().unwrap_or_default().into_owned(),
                    other => panic!("{sql}: {other}"),
                })
        }
    };
    // Refused with a constraint error (SQLITE_CONSTRAINT and its extended codes), which the
    // engine treats as a result that cannot be stored, as it does a CHECK's.
    let constraint =
        |r: Result<(), String>| r.is_err_and(|c| c.parse::<i64>().unwrap() & 0xff == 19);
    let cases = [
        (
            "UPDATE paysaga_sagas SET closed_outcome = NULL WHERE id = $1",
            closed,
            "a closed saga keeps its outcome",
        ),
        (
            "UPDATE paysaga_sagas SET close_requested = '{\"note\": \"x\"}' WHERE id = $1",
            unwinding,
            "a close request names its outcome",
        ),
        (
            "UPDATE paysaga_sagas SET close_requested = '{\"outcome\": null}' WHERE id = $1",
            unwinding,
            "a close request's outcome is not null",
        ),
        (
            "UPDATE paysaga_sagas SET close_requested = '{\"outcome\": \"maybe\"}' WHERE id = $1",
            unwinding,
            "a close request names paid or not_paid",
        ),
    ];
    for (sql, id, what) in cases {
        assert!(constraint(update(sql, id).await), "{what}");
    }
    update(
        "UPDATE paysaga_sagas SET close_requested = '{\"outcome\": \"not_paid\"}' WHERE id = $1",
        unwinding,
    )
    .await
    .unwrap();
    let stored: (Option<String>, Option<String>) = sqlx::query_as(
        "SELECT (SELECT closed_outcome FROM paysaga_sagas WHERE id = $1),
                (SELECT json_extract(close_requested, '$.outcome') FROM paysaga_sagas WHERE id = $2)",
    )
    .bind(closed.to_string())
    .bind(unwinding.to_string())
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(stored, (Some("not_paid".into()), Some("not_paid".into())));
}

#[tokio::test]
async fn sqlite_upgrade_stops_on_a_stored_closed_saga_without_outcome_and_goes_on_once_it_has_one()
{
    let (url, pool) = sqlite_file("outcome-upgrade").await;
    Migrator::new(migrations_before(
        "../../migrations/sqlite",
        OUTCOME_REQUIRED,
    ))
    .await
    .unwrap()
    .run(&pool)
    .await
    .unwrap();
    sqlite_definition(&pool).await;
    let (closed, open) = (Uuid::new_v4(), Uuid::new_v4());
    sqlite_insert(&pool, closed, "closed", None)
        .await
        .expect("the earlier schema let it through");
    sqlite_insert(&pool, open, "retrying", None).await.unwrap();
    let store = paysaga_store::connect(&url).await.unwrap();
    let stopped = store.migrate().await;
    assert!(
        stopped.as_ref().is_err_and(|e| e
            .to_string()
            .contains("sagas_closed_without_outcome_or_with_an_outcome_less_close_request")),
        "the upgrade names what stops it: {stopped:?}"
    );
    let triggers: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM sqlite_master WHERE name LIKE 'paysaga_sagas_outcome_%'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(triggers, 0, "nothing of the stopped migration stays");
    // The operator gives the saga its outcome; the upgrade then goes through.
    sqlx::query("UPDATE paysaga_sagas SET closed_outcome = 'paid' WHERE id = $1")
        .bind(closed.to_string())
        .execute(&pool)
        .await
        .unwrap();
    store.migrate().await.unwrap();
    assert!(sqlite_insert(&pool, Uuid::new_v4(), "closed", None)
        .await
        .is_err());
    let kept: Vec<(String, String, Option<String>)> =
        sqlx::query_as("SELECT id, status, closed_outcome FROM paysaga_sagas ORDER BY status")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(
        kept,
        vec![
            (closed.to_string(), "closed".into(), Some("paid".into())),
            (open.to_string(), "retrying".into(), None),
        ]
    );
}
