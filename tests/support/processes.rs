//! Real processes for end-to-end tests: `paysaga sandbox` and `paysaga worker`, wired to each
//! other with the sandbox's development credentials.
#![allow(dead_code, clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// The `paysaga` binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_paysaga");

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A directory for this test's process logs.
pub fn log_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("paysaga-{name}-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Provider configuration of a worker talking to the sandbox at `sandbox_port`
/// (the sandbox's well-known development credentials).
pub fn provider_env(sandbox_port: u16) -> Vec<(String, String)> {
    let base = format!("http://127.0.0.1:{sandbox_port}");
    [
        ("PAYSAGA_LUMANU_BASE_URL", format!("{base}/lumanu/api/rest")),
        ("PAYSAGA_LUMANU_AUTH_URL", format!("{base}/lumanu")),
        ("PAYSAGA_LUMANU_CLIENT_ID", "sandbox-lumanu-client".into()),
        ("PAYSAGA_LUMANU_CLIENT_SECRET", "sandbox-lumanu-secret".into()),
        ("PAYSAGA_LUMANU_WEBHOOK_SECRET", "sandbox-lumanu-webhook-secret".into()),
        ("PAYSAGA_BLAAIZ_BASE_URL", format!("{base}/blaaiz")),
        ("PAYSAGA_BLAAIZ_CLIENT_ID", "sandbox-blaaiz-client".into()),
        ("PAYSAGA_BLAAIZ_CLIENT_SECRET", "sandbox-blaaiz-secret".into()),
        ("PAYSAGA_BLAAIZ_WEBHOOK_SECRET", "sandbox-blaaiz-webhook-secret".into()),
        ("PAYSAGA_LEAN_BASE_URL", format!("{base}/lean")),
        ("PAYSAGA_LEAN_APP_TOKEN", "sandbox-lean-app-token".into()),
        ("PAYSAGA_LEAN_WEBHOOK_SECRET", "sandbox-lean-webhook-secret".into()),
        ("PAYSAGA_PROVIDER_REQUEST_TIMEOUT_SECS", "3".into()),
    ]
    .into_iter()
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
            .args(["sandbox", "--addr", &format!("127.0.0.1:{port}"), "--dev-credentials"])
            .args(["--webhook-base", &format!("http://127.0.0.1:{webhook_port}"), "--faults", faults])
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log).unwrap())
            .spawn()
            .unwrap();
        let sandbox = Sandbox { child, port };
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "sandbox did not start; log {}", log.display());
            std::thread::sleep(Duration::from_millis(50));
        }
        sandbox
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// Every money movement the sandbox made.
    pub async fn ledger(&self) -> Vec<Value> {
        let v: Value = reqwest::get(self.url("/_sandbox/ledger")).await.unwrap().json().await.unwrap();
        match v {
            Value::Array(items) => items,
            Value::Object(mut o) => o.remove("entries").and_then(|e| e.as_array().cloned()).unwrap_or_default(),
            _ => Vec::new(),
        }
    }

    /// Replaces the fault spec.
    pub async fn set_faults(&self, spec: &str) {
        let r = reqwest::Client::new().put(self.url("/_sandbox/faults")).body(spec.to_string()).send().await.unwrap();
        assert!(r.status().is_success(), "cannot set faults {spec}: {}", r.status());
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
    pub fn start(db_url: &str, http_port: u16, sandbox_port: u16, name: &str, log: &Path) -> WorkerProcess {
        let child = Command::new(BIN)
            .args(["worker", "--http-addr", &format!("127.0.0.1:{http_port}"), "--worker-id", name])
            .args(["--lease-ttl", "2s", "--idle-poll", "500ms", "--concurrency", "16", "--shutdown-grace", "5s"])
            .env("DATABASE_URL", db_url)
            .env("RUST_LOG", "info")
            .envs(provider_env(sandbox_port))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log).unwrap())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", http_port)).is_err() {
            assert!(Instant::now() < deadline, "worker did not start; log {}", log.display());
            std::thread::sleep(Duration::from_millis(50));
        }
        WorkerProcess { child, port: http_port }
    }

    /// `kill -9`.
    pub fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// SIGTERM, then wait; returns whether it exited 0.
    pub fn terminate(mut self) -> bool {
        Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status().unwrap();
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
    let out = Command::new(BIN).args(args).env("DATABASE_URL", db_url).env("RUST_LOG", "warn").output().unwrap();
    assert!(out.status.success(), "paysaga {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}
