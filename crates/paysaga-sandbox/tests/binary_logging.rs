//! The `paysaga-sandbox` binary logs as every paysaga binary does (`paysaga-log`): JSON lines
//! on stderr when stderr is not a terminal, nothing on stdout.
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader, Read};
use std::process::{Command, Stdio};
use std::time::Duration;

#[test]
fn the_sandbox_binary_logs_json_to_stderr_and_nothing_to_stdout() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_paysaga-sandbox"))
        .args(["--addr", "127.0.0.1:0", "--dev-credentials"])
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut lines = Vec::new();
    let listening = loop {
        match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(line) => {
                let listening = line.contains("listening");
                lines.push(line);
                if listening {
                    break true;
                }
            }
            Err(_) => break false,
        }
    };
    let _ = child.kill();
    let _ = child.wait();
    let mut stdout = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut stdout)
        .unwrap();
    assert!(
        listening,
        "no 'listening' log line on stderr: {lines:?}; stdout: {stdout}"
    );
    for line in &lines {
        let event: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("stderr line is not JSON ({e}): {line}"));
        assert!(event["level"].is_string(), "{line}");
    }
    let last: serde_json::Value = serde_json::from_str(lines.last().unwrap()).unwrap();
    assert_eq!(last["message"], "paysaga sandbox listening", "{last}");
    assert!(stdout.is_empty(), "the sandbox wrote to stdout: {stdout}");
}
