//! Real processes for end-to-end tests: `paysaga sandbox` and `paysaga worker`, wired to each
//! other with the sandbox's development credentials.
#![allow(dead_code, clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// The `paysaga` binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_paysaga");

/// Sends `sig` (e.g. `-STOP`, `-CONT`, `-TERM`) to process `pid`; `false` if `kill` failed
/// (e.g. the process is gone).
pub fn signal(pid: u32, sig: &str) -> bool {
    Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .unwrap()
        .success()
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A free TCP port below Linux's ephemeral range (32768-60999), for a server that is restarted
/// on the same port: an ephemeral port may meanwhile be taken by some outgoing connection.
pub fn stable_port() -> u16 {
    for _ in 0..1000 {
        let port = 20_000 + (rand::random::<u16>() % 12_000);
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port in 20000..32000");
}

/// A directory for this test's process logs.
pub fn log_dir(name: &str) -> PathBuf {
    let dir =
        std::env::temp_dir().join(format!("paysaga-{name}-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Provider configuration of a worker talking to the sandbox at `sandbox_port`
/// (the sandbox's well-known development credentials).
pub fn provider_env(sandbox_port: u16) -> Vec<(String, String)> {
    paysaga_providers::sandbox_env(&format!("http://127.0.0.1:{sandbox_port}"))
        .into_iter()
        .chain([("PAYSAGA_PROVIDER_REQUEST_TIMEOUT_SECS", "3".to_string())])
        .map(|(k, v)| (k.to_string(), v))
        .collect()
}

/// A running `paysaga sandbox`.
pub struct Sandbox {
    pub child: Child,
    pub port: u16,
}

impl Sandbox {
    /// Starts the sandbox sending webhooks to a worker on `webhook_port`.
    pub fn start(webhook_port: u16, faults: &str, log: &Path) -> Sandbox {
        let port = free_port();
        let child = Command::new(BIN)
            .args([
                "sandbox",
                "--addr",
                &format!("127.0.0.1:{port}"),
                "--dev-credentials",
            ])
            .args([
                "--webhook-base",
                &format!("http://127.0.0.1:{webhook_port}"),
                "--faults",
                faults,
            ])
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log).unwrap())
            .spawn()
            .unwrap();
        let sandbox = Sandbox { child, port };
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "sandbox did not start; log {}",
                log.display()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        sandbox
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// Every money movement the sandbox made.
    pub async fn ledger(&self) -> Vec<Value> {
        let v: Value = reqwest::get(self.url("/_sandbox/ledger"))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        match v {
            Value::Array(items) => items,
            Value::Object(mut o) => o
                .remove("entries")
                .and_then(|e| e.as_array().cloned())
                .unwrap_or_default(),
            _ => Vec::new(),
        }
    }

    /// Replaces the fault spec.
    pub async fn set_faults(&self, spec: &str) {
        let r = reqwest::Client::new()
            .put(self.url("/_sandbox/faults"))
            .body(spec.to_string())
            .send()
            .await
            .unwrap();
        assert!(
            r.status().is_success(),
            "cannot set faults {spec}: {}",
            r.status()
        );
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A running `paysaga worker` configured for the sandbox.
pub struct WorkerProcess {
    pub child: Child,
    pub port: u16,
}

impl WorkerProcess {
    pub fn start(
        db_url: &str,
        http_port: u16,
        sandbox_port: u16,
        name: &str,
        log: &Path,
    ) -> WorkerProcess {
        Self::start_with_env(db_url, http_port, sandbox_port, name, log, &[])
    }

    /// [`WorkerProcess::start`] with extra environment variables (they override the defaults).
    pub fn start_with_env(
        db_url: &str,
        http_port: u16,
        sandbox_port: u16,
        name: &str,
        log: &Path,
        extra_env: &[(&str, &str)],
    ) -> WorkerProcess {
        Self::start_in(db_url, http_port, sandbox_port, name, log, extra_env, None)
    }

    /// [`WorkerProcess::start_with_env`] in working directory `cwd` (default: the test's).
    pub fn start_in(
        db_url: &str,
        http_port: u16,
        sandbox_port: u16,
        name: &str,
        log: &Path,
        extra_env: &[(&str, &str)],
        cwd: Option<&Path>,
    ) -> WorkerProcess {
        let mut command = Command::new(BIN);
        if let Some(dir) = cwd {
            command.current_dir(dir);
        }
        let child = command
            .args([
                "worker",
                "--http-addr",
                &format!("127.0.0.1:{http_port}"),
                "--worker-id",
                name,
            ])
            .args([
                "--lease-ttl",
                "2s",
                "--idle-poll",
                "500ms",
                "--concurrency",
                "16",
                "--shutdown-grace",
                "5s",
            ])
            .env("DATABASE_URL", db_url)
            .env("RUST_LOG", "info")
            .envs(provider_env(sandbox_port))
            .envs(extra_env.iter().copied())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log).unwrap())
            .spawn()
            .unwrap();
        let mut child = child;
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect_timeout(
            &std::net::SocketAddr::from(([127, 0, 0, 1], http_port)),
            Duration::from_millis(500),
        )
        .is_err()
        {
            if let Ok(Some(status)) = child.try_wait() {
                let text = std::fs::read_to_string(log).unwrap_or_default();
                let error: Vec<&str> = text.lines().filter(|l| l.starts_with("Error")).collect();
                panic!(
                    "worker exited at start ({status}): {error:?}; log {}",
                    log.display()
                );
            }
            if Instant::now() >= deadline {
                // Not left behind as an orphan by the panic.
                let _ = child.kill();
                let _ = child.wait();
                panic!("worker did not start within 30 s; log {}", log.display());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        WorkerProcess {
            child,
            port: http_port,
        }
    }

    /// `kill -9`.
    pub fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// SIGTERM, then wait; returns whether it exited 0.
    pub fn terminate(mut self) -> bool {
        Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        self.child.wait().unwrap().success()
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `paysaga ARGS` against `db_url`; panics with stderr on failure.
pub fn paysaga_ok(db_url: &str, args: &[&str]) -> String {
    let out = Command::new(BIN)
        .args(args)
        .env("DATABASE_URL", db_url)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "paysaga {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}
