//! Blaaiz's official Python SDK (`blaaiz-python-sdk` 1.7.0, pinned by hash in
//! `tests/official_sdk/requirements.txt`) drives the sandbox unchanged, its base URL pointed at
//! it: OAuth and API-key auth, scopes, customers, the SDK's complete upload, verification,
//! `create_complete_payout`, transactions, webhook register/get/replay, and every webhook
//! checked with the SDK's own `verify_signature` (`tests/official_sdk/blaaiz_sdk_conformance.py`).
//!
//! The SDK is installed on first use into its own virtual environment under
//! `target/paysaga-tools/` (needs `python3` with `venv`, and PyPI reachable once); nothing to
//! set up by hand.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use paysaga_sandbox::{Credentials, SandboxConfig};
use serde_json::Value;

/// The providers' OpenAPI files and their checker live with the client tests.
#[path = "../../paysaga-providers/tests/openapi/mod.rs"]
mod openapi;

const SDK_DIR: &str = "blaaiz-python-sdk-1.7.0";

fn tests_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/official_sdk")
}

fn run(cmd: &mut Command, what: &str) -> Result<String, String> {
    let out = cmd
        .output()
        .map_err(|e| format!("{what}: cannot run {cmd:?}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "{what} failed ({}):\n{}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// `python3 -m venv` works here, or (as root on Debian/Ubuntu) after installing python3-venv.
fn make_venv(dir: &Path) -> Result<(), String> {
    let venv = || {
        run(
            Command::new("python3")
                .args(["-m", "venv", "--clear"])
                .arg(dir),
            "python3 -m venv",
        )
    };
    match venv() {
        Ok(_) => Ok(()),
        Err(first) => {
            let root = run(Command::new("id").arg("-u"), "id -u").is_ok_and(|u| u.trim() == "0");
            if !root {
                return Err(format!(
                    "{first}\ninstall python3-venv (e.g. `sudo apt-get install -y python3-venv`)"
                ));
            }
            run(
                Command::new("apt-get")
                    .args(["install", "-y", "python3-venv"])
                    .env("DEBIAN_FRONTEND", "noninteractive"),
                "apt-get install -y python3-venv",
            )?;
            venv().map(|_| ())
        }
    }
}

/// The virtual environment's python with the pinned SDK, installing it on first use. The
/// environment is built beside its final place and renamed into it, so a half-built one is
/// never used.
fn sdk_python() -> Result<PathBuf, String> {
    let tools = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .expect("CARGO_TARGET_TMPDIR is target/tmp")
        .join("paysaga-tools");
    let dir = tools.join(SDK_DIR);
    let python = dir.join("bin/python");
    let ready = dir.join(".installed");
    if ready.exists() {
        return Ok(python);
    }
    std::fs::create_dir_all(&tools).map_err(|e| format!("create {}: {e}", tools.display()))?;
    let building = tools.join(format!("{SDK_DIR}.building-{}", std::process::id()));
    make_venv(&building)?;
    run(
        Command::new(building.join("bin/python"))
            .args([
                "-m",
                "pip",
                "install",
                "--disable-pip-version-check",
                "--no-input",
                "--no-deps",
                "--only-binary=:all:",
                "--require-hashes",
                "-r",
            ])
            .arg(tests_dir().join("requirements.txt")),
        "pip install blaaiz-python-sdk==1.7.0",
    )?;
    std::fs::write(building.join(".installed"), "blaaiz-python-sdk==1.7.0\n")
        .map_err(|e| format!("mark {}: {e}", building.display()))?;
    // A venv's scripts name its path: rebuild in place is not possible, so a concurrent
    // installer that won the race leaves ours to be removed.
    if std::fs::rename(&building, &dir).is_err() {
        let _ = std::fs::remove_dir_all(&building);
        if !ready.exists() {
            return Err(format!(
                "cannot move the SDK environment into {}",
                dir.display()
            ));
        }
    }
    Ok(python)
}

#[tokio::test(flavor = "multi_thread")]
async fn blaaiz_official_python_sdk_runs_every_flow_against_the_sandbox() {
    let python = tokio::task::spawn_blocking(sdk_python)
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("cannot install Blaaiz's official Python SDK: {e}"));
    let config = SandboxConfig::new("127.0.0.1:0".parse().unwrap(), Credentials::dev());
    let sandbox = paysaga_sandbox::spawn(config).await.unwrap();
    let http = reqwest::Client::new();
    let recording = http
        .put(format!(
            "{}/_sandbox/requests/recording",
            sandbox.base_url()
        ))
        .body("on")
        .send()
        .await
        .unwrap();
    assert_eq!(recording.status(), 204);
    let base = format!("{}/blaaiz", sandbox.base_url());
    let wallet = paysaga_sandbox::seeds::BLAAIZ_WALLETS[0].0;
    let script = tests_dir().join("blaaiz_sdk_conformance.py");
    let child = tokio::process::Command::new(&python)
        .arg(&script)
        .env("BLAAIZ_BASE_URL", &base)
        .env("BLAAIZ_CLIENT_ID", "sandbox-blaaiz-client")
        .env("BLAAIZ_CLIENT_SECRET", "sandbox-blaaiz-secret")
        .env("BLAAIZ_API_KEY", "sandbox-blaaiz-api-key")
        .env("BLAAIZ_WEBHOOK_SECRET", "sandbox-blaaiz-webhook-secret")
        .env("BLAAIZ_NGN_WALLET", wallet)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(120), child)
        .await
        .expect("the SDK script finishes within 120 s")
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "SDK script failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    let summary: Value = serde_json::from_str(stdout.lines().last().unwrap_or("")).unwrap();
    assert_eq!(summary["sdk_version"], "1.7.0");
    assert_eq!(summary["scopes_enforced"], true);
    assert_eq!(summary["uploads"], 2);
    // Customer: PROCESSING and VERIFIED; payout: SUCCESSFUL and its replay.
    assert_eq!(summary["webhooks_verified"], 4, "{summary}");
    assert_eq!(
        summary["webhook_paths"],
        serde_json::json!(["/customer", "/payout"])
    );

    // Every request the SDK sent and every answer it got, against Blaaiz's OpenAPI files.
    let exchanges: Vec<Value> = http
        .get(format!("{}/_sandbox/requests", sandbox.base_url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let specs = openapi::Specs::load(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("../paysaga-providers/tests/openapi"),
    );
    let (requests, responses) = openapi::check(&specs, &exchanges);
    assert!(
        requests >= 5 && responses >= 10,
        "checked {requests} requests, {responses} responses"
    );

    // The sandbox's side: one payout of 1500.25 NGN from the seeded wallet, every webhook
    // delivered to the registered URLs.
    let ledger: Vec<Value> = http
        .get(format!("{}/_sandbox/ledger", sandbox.base_url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let payouts: Vec<&Value> = ledger.iter().filter(|e| e["kind"] == "payout").collect();
    assert_eq!(payouts.len(), 1, "{ledger:#?}");
    assert_eq!(payouts[0]["amount"], 150_025);
    assert_eq!(payouts[0]["account"], wallet);
    assert_eq!(payouts[0]["reference"], summary["transaction_id"]);
    let deliveries: Vec<Value> = http
        .get(format!("{}/_sandbox/webhooks", sandbox.base_url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(deliveries.len(), 4, "{deliveries:#?}");
    assert!(
        deliveries.iter().all(|d| d["delivered"] == true),
        "{deliveries:#?}"
    );
    sandbox.shutdown().await.unwrap();
}
