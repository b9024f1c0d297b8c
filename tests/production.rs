//! What a real deployment needs from the `paysaga` binary: PostgreSQL over verified TLS, and
//! (built without the `dev` feature, as deploy/ documents) no fake providers and no
//! development credentials. Real binaries against real PostgreSQL clusters.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_paysaga");

fn paysaga(url: &str, args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env("DATABASE_URL", url)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap()
}

fn text(out: &Output) -> String {
    format!(
        "status {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A scratch directory removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Scratch {
        let dir =
            std::env::temp_dir().join(format!("paysaga-{name}-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| {
            panic!("the TLS test makes its certificates with the openssl CLI (apt-get install openssl): {e}")
        });
    assert!(out.status.success(), "openssl {args:?}: {}", text(&out));
}

/// A CA (`{name}-ca.crt`, `{name}-ca.key`) made in `dir`.
fn make_ca(dir: &Path, name: &str) -> PathBuf {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            &format!("{name}-ca.key"),
            "-out",
            &format!("{name}-ca.crt"),
            "-days",
            "2",
            "-subj",
            &format!("/CN=paysaga test CA {name}"),
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ],
    );
    dir.join(format!("{name}-ca.crt"))
}

/// A server certificate for `localhost` signed by CA `ca`: (certificate PEM, key PEM).
fn make_server_cert(dir: &Path, ca: &str) -> (String, String) {
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=localhost",
        ],
    );
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n\
         keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            &format!("{ca}-ca.crt"),
            "-CAkey",
            &format!("{ca}-ca.key"),
            "-CAcreateserial",
            "-out",
            "server.crt",
            "-days",
            "2",
            "-extfile",
            "server.ext",
        ],
    );
    (
        std::fs::read_to_string(dir.join("server.crt")).unwrap(),
        std::fs::read_to_string(dir.join("server.key")).unwrap(),
    )
}

/// `sslmode=verify-full` against a cluster that accepts TLS connections only: `migrate`,
/// `start`, `worker` and `list` work, and a root certificate that did not sign the server's
/// certificate is refused with an error that says so.
#[tokio::test]
async fn postgres_over_verified_tls_runs_migrate_start_worker_and_list_and_refuses_a_wrong_root() {
    let scratch = Scratch::new("tls");
    let dir = &scratch.0;
    let ca = make_ca(dir, "right");
    let wrong_ca = make_ca(dir, "wrong");
    let (cert, key) = make_server_cert(dir, "right");
    let cluster = paysaga_testkit::Cluster::start_tls("tls", &cert, &key);
    let base = format!("postgres://postgres@localhost:{}/postgres", cluster.port());
    let url = format!(
        "{base}?sslmode=verify-full&sslrootcert={}",
        ca.to_string_lossy()
    );

    // The server takes TLS only: a clear-text connection is turned away.
    let clear = paysaga(&format!("{base}?sslmode=disable"), &["list"]);
    assert!(!clear.status.success(), "{}", text(&clear));

    let migrate = paysaga(&url, &["migrate"]);
    assert!(migrate.status.success(), "migrate: {}", text(&migrate));
    let start = paysaga(
        &url,
        &[
            "start",
            "noop",
            "--input",
            r#"{"delay_ms": 0}"#,
            "--key",
            "tls-1",
        ],
    );
    assert!(start.status.success(), "start: {}", text(&start));
    let saga_id = String::from_utf8_lossy(&start.stdout).trim().to_string();

    let log = dir.join("worker.log");
    let mut worker = Command::new(BIN)
        .args([
            "worker",
            "--http-addr",
            "127.0.0.1:0",
            "--idle-poll",
            "200ms",
        ])
        .env("DATABASE_URL", &url)
        .env("RUST_LOG", "warn")
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let status = loop {
        let list = paysaga(&url, &["list", "--json"]);
        assert!(list.status.success(), "list: {}", text(&list));
        let sagas: serde_json::Value = serde_json::from_slice(&list.stdout).unwrap();
        let status = sagas
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["id"] == saga_id.as_str())
            .map(|s| s["status"].as_str().unwrap_or_default().to_string())
            .unwrap_or_default();
        if status == "completed" || std::time::Instant::now() > deadline {
            break status;
        }
        assert!(
            worker.try_wait().unwrap().is_none(),
            "the worker exited: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    };
    let _ = worker.kill();
    let _ = worker.wait();
    assert_eq!(
        status,
        "completed",
        "saga {saga_id} over TLS; worker log: {}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );

    // Every connection of the worker went over TLS: the server allows nothing else, and the
    // test's own verified connection sees its session encrypted.
    let pool = sqlx::PgPool::connect(&url).await.unwrap();
    let ssl: bool = sqlx::query_scalar("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(ssl);
    pool.close().await;

    // A root certificate that did not sign the server's: refused, and the error says why.
    let wrong = format!(
        "{base}?sslmode=verify-full&sslrootcert={}",
        wrong_ca.to_string_lossy()
    );
    let out = paysaga(&wrong, &["list"]);
    assert!(!out.status.success(), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("TLS to the database failed"), "{err}");
    assert!(err.contains("sslrootcert"), "{err}");
    // rustls's own words for the problem, after ours.
    assert!(
        err.contains("invalid peer certificate: UnknownIssuer"),
        "the certificate problem is named: {err}"
    );
    eprintln!("wrong root certificate: {err}");
    drop(cluster);
}

/// The production build (`--no-default-features`, as deploy/ documents): no `sandbox` or
/// `demo` command, and a worker given the sandbox's development credentials refuses to start.
#[cfg(not(feature = "dev"))]
#[tokio::test]
async fn production_build_has_no_sandbox_and_its_worker_refuses_development_credentials() {
    for command in ["sandbox", "demo"] {
        let out = Command::new(BIN)
            .args([command, "--help"])
            .output()
            .unwrap();
        assert!(!out.status.success(), "{command}: {}", text(&out));
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("unrecognized subcommand"),
            "{command}: {}",
            text(&out)
        );
    }
    let db = paysaga_testkit::database().await;
    let mut worker = Command::new(BIN)
        .args(["worker", "--http-addr", "127.0.0.1:0"])
        .env("DATABASE_URL", db.url())
        .env("RUST_LOG", "warn")
        .envs(paysaga_providers::sandbox_env("http://127.0.0.1:9"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // A worker that accepted the credentials would run until stopped.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while worker.try_wait().unwrap().is_none() && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let _ = worker.kill();
    let out = worker.wait_with_output().unwrap();
    assert!(!out.status.success(), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("refusing to start"), "{err}");
    assert!(err.contains("development credentials"), "{err}");
    assert!(err.contains("PAYSAGA_LUMANU_CLIENT_SECRET"), "{err}");
}

/// The development build (the default features) has the sandbox the README's demo and the
/// tests use.
#[cfg(feature = "dev")]
#[test]
fn development_build_has_the_sandbox_and_demo_commands() {
    for command in ["sandbox", "demo"] {
        let out = Command::new(BIN)
            .args([command, "--help"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{command}: {}", text(&out));
    }
}

/// The license the manifests declare ships as a LICENSE file with its text.
#[test]
fn the_repository_ships_the_license_its_manifests_declare() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let manifest = std::fs::read_to_string(root.join("Cargo.toml")).unwrap();
    assert!(
        manifest.contains("license = \"Apache-2.0\""),
        "workspace license changed: update LICENSE and this test"
    );
    let license = std::fs::read_to_string(root.join("LICENSE")).expect("a LICENSE file");
    assert!(
        license.contains("Apache License"),
        "LICENSE is not Apache-2.0"
    );
    assert!(license.contains("Version 2.0, January 2004"));
    assert!(license.contains("TERMS AND CONDITIONS FOR USE, REPRODUCTION, AND DISTRIBUTION"));
}
