//! paysaga in the application's own database: the application's sqlx migrations and
//! paysaga's keep separate records (`_sqlx_migrations` and `paysaga_migrations`), on
//! PostgreSQL and on the embedded SQLite store, and a deployment whose paysaga migrations
//! were recorded in `_sqlx_migrations` moves them over.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use sqlx::migrate::Migrator;

/// A directory of the application's migration files (version 1, and 2 when `both`).
fn app_migrations(root: &Path, both: bool) -> PathBuf {
    let dir = root.join(if both { "v2" } else { "v1" });
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("1_app_customers.sql"),
        "CREATE TABLE app_customers (id BIGINT PRIMARY KEY, name TEXT NOT NULL);",
    )
    .unwrap();
    if both {
        std::fs::write(
            dir.join("2_app_orders.sql"),
            "CREATE TABLE app_orders (id BIGINT PRIMARY KEY, customer BIGINT NOT NULL);",
        )
        .unwrap();
    }
    dir
}

fn scratch() -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "paysaga-shared-db-{}",
        uuid::Uuid::new_v4().simple()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The versions paysaga's build knows, from the migration files.
fn paysaga_versions(dir: &str) -> Vec<i64> {
    let mut versions: Vec<i64> = std::fs::read_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join(dir))
        .unwrap()
        .filter_map(|e| {
            let name = e.unwrap().file_name().to_string_lossy().into_owned();
            name.strip_suffix(".sql")?.split('_').next()?.parse().ok()
        })
        .collect();
    versions.sort();
    versions
}

#[tokio::test]
async fn an_application_migrates_its_own_tables_before_and_after_paysaga_in_the_same_postgres_database(
) {
    let db = paysaga_testkit::database().await;
    let root = scratch();
    let pool = sqlx::PgPool::connect(db.url()).await.unwrap();

    // The application first, then paysaga, then the application's next release.
    Migrator::new(app_migrations(&root, false))
        .await
        .unwrap()
        .run(&pool)
        .await
        .unwrap();
    let store = paysaga_store::connect(db.url()).await.unwrap();
    store.migrate().await.unwrap();
    Migrator::new(app_migrations(&root, true))
        .await
        .unwrap()
        .run(&pool)
        .await
        .unwrap();
    // paysaga again (a restart of its worker), and the application again.
    store.migrate().await.unwrap();
    Migrator::new(app_migrations(&root, true))
        .await
        .unwrap()
        .run(&pool)
        .await
        .unwrap();

    let app: Vec<i64> = sqlx::query_scalar("SELECT version FROM _sqlx_migrations ORDER BY 1")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(app, vec![1, 2]);
    let ours: Vec<i64> = sqlx::query_scalar("SELECT version FROM paysaga_migrations ORDER BY 1")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(ours, paysaga_versions("../../migrations"));
    let (applied, known) = store.schema_versions().await.unwrap();
    assert_eq!(applied, Some(known));
    let tables: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_tables WHERE tablename IN ('app_customers', 'app_orders', 'paysaga_sagas')",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(tables, 3);
    std::fs::remove_dir_all(root).ok();
}

#[tokio::test]
async fn a_deployment_that_recorded_paysaga_migrations_in_sqlx_migrations_moves_them_to_paysaga_migrations(
) {
    let db = paysaga_testkit::database().await;
    let pool = sqlx::PgPool::connect(db.url()).await.unwrap();
    // What earlier paysaga releases did: sqlx's migrator, records in `_sqlx_migrations`.
    sqlx::migrate!("../../migrations").run(&pool).await.unwrap();
    let before: Vec<(i64, Vec<u8>)> =
        sqlx::query_as("SELECT version, checksum FROM _sqlx_migrations ORDER BY 1")
            .fetch_all(&pool)
            .await
            .unwrap();
    sqlx::query("INSERT INTO paysaga_definitions (name, version, content_hash, body, step_kinds) VALUES ('kept', 1, 'h', '{}', '{}')")
        .execute(&pool)
        .await
        .unwrap();

    let store = paysaga_store::connect(db.url()).await.unwrap();
    store.migrate().await.unwrap();
    store.migrate().await.unwrap();

    let after: Vec<(i64, Vec<u8>)> =
        sqlx::query_as("SELECT version, checksum FROM paysaga_migrations ORDER BY 1")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(after, before, "the records moved as they were");
    let legacy: Option<String> = sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations')::text")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(
        legacy, None,
        "nothing of paysaga's is left in _sqlx_migrations"
    );
    let kept: i64 =
        sqlx::query_scalar("SELECT count(*) FROM paysaga_definitions WHERE name = 'kept'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(kept, 1, "the data is untouched");
    let (applied, known) = store.schema_versions().await.unwrap();
    assert_eq!(applied, Some(known));

    // Now an application can start its own sqlx migrations in this database.
    let root = scratch();
    Migrator::new(app_migrations(&root, true))
        .await
        .unwrap()
        .run(&pool)
        .await
        .unwrap();
    store.migrate().await.unwrap();
    std::fs::remove_dir_all(root).ok();
}

#[tokio::test]
async fn an_application_and_the_embedded_store_share_a_sqlite_file() {
    let root = scratch();
    let url = format!("sqlite://{}", root.join("shared.db").display());
    let store = paysaga_store::connect(&url).await.unwrap();
    let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
    Migrator::new(app_migrations(&root, false))
        .await
        .unwrap()
        .run(&pool)
        .await
        .unwrap();
    store.migrate().await.unwrap();
    Migrator::new(app_migrations(&root, true))
        .await
        .unwrap()
        .run(&pool)
        .await
        .unwrap();
    store.migrate().await.unwrap();
    let app: Vec<i64> = sqlx::query_scalar("SELECT version FROM _sqlx_migrations ORDER BY 1")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(app, vec![1, 2]);
    let ours: Vec<i64> = sqlx::query_scalar("SELECT version FROM paysaga_migrations ORDER BY 1")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(ours, paysaga_versions("../../migrations/sqlite"));
    pool.close().await;
    drop(store);
    std::fs::remove_dir_all(root).ok();
}

/// `--max-connections` (`ConnectOptions::max_connections`) sizes the PostgreSQL pool, and no
/// more connections than that are opened however many queries wait.
#[tokio::test]
async fn the_postgres_pool_size_is_configurable_and_bounds_the_connections() {
    let db = paysaga_testkit::database().await;
    let options = paysaga_store::ConnectOptions::default().max_connections(3);
    let store = paysaga_store::PgStore::connect_with(db.url(), &options)
        .await
        .unwrap();
    assert_eq!(store.pool().options().get_max_connections(), 3);
    // Ten concurrent sleeps on a pool of three: never more than three sessions at once.
    let sleeps: Vec<_> = (0..10)
        .map(|_| {
            let pool = store.pool().clone();
            tokio::spawn(async move {
                sqlx::query("SELECT pg_sleep(0.2)")
                    .execute(&pool)
                    .await
                    .unwrap();
            })
        })
        .collect();
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let observer = sqlx::PgPool::connect(db.url()).await.unwrap();
    let sessions: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()",
    )
    .fetch_one(&observer)
    .await
    .unwrap();
    assert_eq!(sessions, 3);
    for s in sleeps {
        s.await.unwrap();
    }
    assert_eq!(
        paysaga_store::ConnectOptions::default().max_connections,
        16,
        "the documented default"
    );
}
