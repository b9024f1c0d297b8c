//! # paysaga-testkit
//!
//! Every paysaga test talks to a real PostgreSQL. [`database`] creates a fresh database for
//! one test (dropped when the handle is dropped) on the first server found in this order:
//! 1. `DATABASE_URL` (its database part is replaced),
//! 2. a server answering on `127.0.0.1:5432` (user `postgres`, trust auth),
//! 3. a throwaway cluster started from the installed PostgreSQL binaries (`initdb` and
//!    `pg_ctl` under `/usr/lib/postgresql/*/bin` or on `PATH`), run as user `postgres` when the
//!    tests run as root, kept under the system temp dir and reused by later test binaries.
//!    Stop it with `pg_ctl -D $TMPDIR/paysaga-test-pg stop`.
//!
//! Tools the tests run besides PostgreSQL (`kubernetes-validate`, `systemd-analyze`) are
//! installed by [`tools`] on first use.
//!
//! ```no_run
//! # async fn t() {
//! let db = paysaga_testkit::database().await;
//! let pool = sqlx::PgPool::connect(db.url()).await.unwrap();
//! # }
//! ```

pub mod tools;

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use sqlx::{Connection, Executor, PgConnection};

static SERVER: OnceLock<String> = OnceLock::new();

/// A database created for one test; dropped (with FORCE) when this handle drops.
#[derive(Debug)]
pub struct TestDatabase {
    url: String,
    admin_url: String,
    name: String,
}

impl TestDatabase {
    /// Connection URL of the test database.
    pub fn url(&self) -> &str {
        &self.url
    }
    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        if std::env::var_os("PAYSAGA_KEEP_TEST_DB").is_some() {
            eprintln!("keeping test database {}", self.url);
            return;
        }
        let admin = self.admin_url.clone();
        let name = self.name.clone();
        // Drop runs outside any runtime guarantee: use a private one on its own thread.
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                if let Ok(mut c) = PgConnection::connect(&admin).await {
                    let _ = c
                        .execute(
                            format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)").as_str(),
                        )
                        .await;
                }
            });
        })
        .join();
    }
}

/// URL of the server's maintenance database (`postgres`).
pub fn server_url() -> String {
    SERVER.get_or_init(find_or_start_server).clone()
}

/// Creates a fresh, empty database for one test.
pub async fn database() -> TestDatabase {
    let admin_url = server_url();
    let name = format!("paysaga_test_{}", uuid::Uuid::new_v4().simple());
    let mut admin = PgConnection::connect(&admin_url)
        .await
        .unwrap_or_else(|e| panic!("cannot connect to test server {admin_url}: {e}"));
    admin
        .execute(format!("CREATE DATABASE \"{name}\"").as_str())
        .await
        .unwrap_or_else(|e| panic!("cannot create test database {name}: {e}"));
    TestDatabase {
        url: with_database(&admin_url, &name),
        admin_url,
        name,
    }
}

fn with_database(url: &str, db: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, format!("?{q}")),
        None => (url, String::new()),
    };
    let scheme_end = base.find("://").map(|i| i + 3).unwrap_or(0);
    let base = match base[scheme_end..].find('/') {
        Some(i) => &base[..scheme_end + i],
        None => base,
    };
    format!("{base}/{db}{query}")
}

fn find_or_start_server() -> String {
    if let Ok(url) = std::env::var("DATABASE_URL") {
        if !url.trim().is_empty() && std::env::var_os("PAYSAGA_TEST_THROWAWAY").is_none() {
            return with_database(&url, "postgres");
        }
    }
    let local: SocketAddr = ([127, 0, 0, 1], 5432).into();
    if std::env::var_os("PAYSAGA_TEST_THROWAWAY").is_none()
        && TcpStream::connect_timeout(&local, Duration::from_millis(300)).is_ok()
    {
        return "postgres://postgres@127.0.0.1:5432/postgres".to_string();
    }
    start_throwaway_cluster()
}

fn pg_bin(name: &str) -> PathBuf {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    versions.sort();
    for v in versions.iter().rev() {
        let candidate = v.join("bin").join(name);
        if candidate.exists() {
            return candidate;
        }
    }
    PathBuf::from(name)
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// Runs a PostgreSQL binary, as user `postgres` when we are root.
fn run_pg(bin: &Path, args: &[&str]) -> std::process::Output {
    let mut cmd = if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(bin);
        c
    } else {
        Command::new(bin)
    };
    cmd.args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", bin.display()))
}

fn start_throwaway_cluster() -> String {
    let root = std::env::temp_dir().join("paysaga-test-pg");
    let data = root.join("data");
    let port_file = root.join("port");
    std::fs::create_dir_all(&root)
        .unwrap_or_else(|e| panic!("cannot create {}: {e}", root.display()));
    // Several test binaries may race here (nextest): serialise with a file lock.
    let lock =
        std::fs::File::create(root.join("lock")).unwrap_or_else(|e| panic!("lock file: {e}"));
    lock.lock().unwrap_or_else(|e| panic!("lock: {e}"));
    if is_root() {
        let _ = Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(&root)
            .status();
    }
    if let Ok(port) = std::fs::read_to_string(&port_file) {
        let port: u16 = port.trim().parse().unwrap_or(0);
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        if port > 0 && TcpStream::connect_timeout(&addr, Duration::from_millis(300)).is_ok() {
            return format!("postgres://postgres@127.0.0.1:{port}/postgres");
        }
    }
    if !data.join("PG_VERSION").exists() {
        let out = run_pg(
            &pg_bin("initdb"),
            &[
                "-D",
                &data.to_string_lossy(),
                "-U",
                "postgres",
                "--auth=trust",
                "--no-sync",
                "-E",
                "UTF8",
            ],
        );
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(55432);
    let opts = format!(
        "-p {port} -c listen_addresses=127.0.0.1 -k {} -c fsync=off -c max_connections=300",
        root.to_string_lossy()
    );
    let log = root.join("server.log");
    let out = run_pg(
        &pg_bin("pg_ctl"),
        &[
            "-D",
            &data.to_string_lossy(),
            "-o",
            &opts,
            "-l",
            &log.to_string_lossy(),
            "-w",
            "start",
        ],
    );
    assert!(
        out.status.success(),
        "pg_ctl start failed: {} (log: {})",
        String::from_utf8_lossy(&out.stderr),
        log.display()
    );
    std::fs::write(&port_file, port.to_string()).unwrap_or_else(|e| panic!("port file: {e}"));
    eprintln!(
        "paysaga-testkit: started throwaway PostgreSQL on 127.0.0.1:{port} ({})",
        data.display()
    );
    format!("postgres://postgres@127.0.0.1:{port}/postgres")
}

/// A private PostgreSQL cluster (own data directory and port) that a test may restart, stop
/// and start at will: for chaos tests that must not disturb the shared server. Removed on drop.
#[derive(Debug)]
pub struct Cluster {
    root: PathBuf,
    port: u16,
}

impl Cluster {
    /// Initialises and starts a cluster under the system temp dir on a free port.
    pub fn start(name: &str) -> Cluster {
        let cluster = Cluster::init(name);
        cluster.pg_ctl(&["start"]);
        cluster
    }

    /// Like [`Cluster::start`], with `ssl = on` and the given server certificate (chain) and
    /// key (PEM), and TCP connections accepted over TLS only (`hostssl` in `pg_hba.conf`).
    pub fn start_tls(name: &str, cert_pem: &str, key_pem: &str) -> Cluster {
        let cluster = Cluster::init(name);
        let data = cluster.data();
        let write = |file: &str, text: &str, mode: u32| {
            use std::os::unix::fs::PermissionsExt;
            let path = data.join(file);
            std::fs::write(&path, text)
                .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))
                .unwrap_or_else(|e| panic!("chmod {}: {e}", path.display()));
        };
        write("server.crt", cert_pem, 0o644);
        write("server.key", key_pem, 0o600);
        write(
            "pg_hba.conf",
            "local all all trust\nhostssl all all 127.0.0.1/32 trust\nhostssl all all ::1/128 trust\n",
            0o600,
        );
        let conf = data.join("postgresql.conf");
        let mut text = std::fs::read_to_string(&conf)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", conf.display()));
        text.push_str("\nssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n");
        write("postgresql.conf", &text, 0o600);
        if is_root() {
            let _ = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(&data)
                .status();
        }
        cluster.pg_ctl(&["start"]);
        cluster
    }

    /// Creates the data directory (not started).
    fn init(name: &str) -> Cluster {
        let root = std::env::temp_dir().join(format!(
            "paysaga-cluster-{name}-{}",
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(&root)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", root.display()));
        if is_root() {
            let _ = Command::new("chown")
                .args(["postgres:postgres"])
                .arg(&root)
                .status();
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .unwrap_or_else(|e| panic!("no free port: {e}"));
        let cluster = Cluster { root, port };
        let out = run_pg(
            &pg_bin("initdb"),
            &[
                "-D",
                &cluster.data().to_string_lossy(),
                "-U",
                "postgres",
                "--auth=trust",
                "--no-sync",
                "-E",
                "UTF8",
            ],
        );
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        cluster
    }

    fn data(&self) -> PathBuf {
        self.root.join("data")
    }

    fn pg_ctl(&self, action: &[&str]) {
        let opts = format!(
            "-p {} -c listen_addresses=127.0.0.1 -k {} -c fsync=off -c max_connections=200",
            self.port,
            self.root.to_string_lossy()
        );
        let log = self.root.join("server.log");
        let mut args = vec![
            "-D".to_string(),
            self.data().to_string_lossy().into_owned(),
            "-o".to_string(),
            opts,
            "-l".to_string(),
            log.to_string_lossy().into_owned(),
            "-w".to_string(),
        ];
        args.extend(action.iter().map(|a| a.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = run_pg(&pg_bin("pg_ctl"), &args);
        assert!(
            out.status.success(),
            "pg_ctl {action:?} failed: {} (log: {})",
            String::from_utf8_lossy(&out.stderr),
            log.display()
        );
    }

    /// Its port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// URL of database `db` on this cluster.
    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    /// `pg_ctl restart -m immediate`: every connection dies, as in a crash of the server.
    pub fn restart_immediate(&self) {
        self.pg_ctl(&["-m", "immediate", "restart"]);
    }

    /// Stops the server at once (`-m immediate`): unreachable until [`Cluster::resume`].
    pub fn stop_immediate(&self) {
        self.pg_ctl(&["-m", "immediate", "stop"]);
    }

    /// Starts a stopped server again.
    pub fn resume(&self) {
        self.pg_ctl(&["start"]);
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = run_pg(
            &pg_bin("pg_ctl"),
            &[
                "-D",
                &self.data().to_string_lossy(),
                "-m",
                "immediate",
                "stop",
            ],
        );
        if std::env::var_os("PAYSAGA_KEEP_TEST_DB").is_none() {
            let _ = std::fs::remove_dir_all(&self.root);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_part_of_url_is_replaced() {
        assert_eq!(
            with_database("postgres://u@h:1/x?sslmode=disable", "t"),
            "postgres://u@h:1/t?sslmode=disable"
        );
        assert_eq!(with_database("postgres://u@h:1", "t"), "postgres://u@h:1/t");
    }

    #[tokio::test]
    async fn each_test_gets_its_own_empty_database() {
        let a = database().await;
        let b = database().await;
        assert_ne!(a.name(), b.name());
        let mut c = PgConnection::connect(a.url()).await.expect("connect");
        let n: i64 =
            sqlx::query_scalar("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'")
                .fetch_one(&mut c)
                .await
                .expect("query");
        assert_eq!(n, 0);
    }
}
