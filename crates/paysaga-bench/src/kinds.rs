//! The benchmark's own step kinds and the `bench_wait` workflow used by the wake-latency and
//! memory scenarios.
//!
//! Worker child processes report when a woken step starts by printing a line on stdout
//! (`resumed <saga> <unix ns>` and `next <saga> <unix ns>`); the parent process compares
//! those wall-clock times (same machine, same clock) with the time each delivery was
//! acknowledged.

use std::sync::mpsc::Sender;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use paysaga_core::{Definition, StepContext, StepDef, StepKind, StepOutcome, WaitSpec, Wake};
use serde_json::{json, Value};

/// Provider of the events that end the benchmark's waits: Lumanu, so that they arrive
/// through the real webhook endpoint with Lumanu's real signature (see [`crate::webhook`]).
pub const PROVIDER: &str = "lumanu";
/// Event type that ends the wait (a Lumanu event type whose correlation key is
/// `payable:{data.id}`).
pub const EVENT_TYPE: &str = "payable.paid";

/// The correlation key a saga with input `{"key": key}` waits on.
pub fn wait_key(key: &str) -> String {
    format!("payable:{key}")
}

static REPORT: OnceLock<Mutex<Sender<String>>> = OnceLock::new();

/// Routes step reports to `tx` (set once, in worker child processes).
pub fn set_reporter(tx: Sender<String>) {
    let _ = REPORT.set(Mutex::new(tx));
}

fn report(line: String) {
    if let Some(tx) = REPORT.get() {
        if let Ok(tx) = tx.lock() {
            let _ = tx.send(line);
        }
    }
}

/// Wall-clock time in nanoseconds since the Unix epoch.
pub fn unix_nanos() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default()
}

/// `bench.wait`: waits for a Lumanu `payable.paid` event with key `payable:{params.key}`;
/// when woken by the event it reports the time it started and completes.
#[derive(Debug, Clone, Copy, Default)]
pub struct WaitForEvent;

#[async_trait]
impl StepKind for WaitForEvent {
    fn name(&self) -> &'static str {
        "bench.wait"
    }

    fn validate(&self, params: &Value) -> Result<(), String> {
        match params.get("key") {
            Some(Value::String(s)) if !s.is_empty() => Ok(()),
            _ => Err("params.key (from input field `key`) must be a non-empty string".into()),
        }
    }

    async fn run(&self, ctx: &StepContext, params: Value) -> StepOutcome {
        let started = unix_nanos();
        match &ctx.wake {
            Wake::Event(_) => {
                report(format!("resumed {} {started}", ctx.saga_id));
                StepOutcome::Done(json!({"resumed_at_ns": started.to_string()}))
            }
            _ => {
                let key = params
                    .get("key")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                StepOutcome::Wait(WaitSpec::new(PROVIDER, EVENT_TYPE, wait_key(key)))
            }
        }
    }
}

/// `bench.mark`: reports the time it started and completes (the step after the wait).
#[derive(Debug, Clone, Copy, Default)]
pub struct Mark;

#[async_trait]
impl StepKind for Mark {
    fn name(&self) -> &'static str {
        "bench.mark"
    }

    async fn run(&self, ctx: &StepContext, _params: Value) -> StepOutcome {
        report(format!("next {} {}", ctx.saga_id, unix_nanos()));
        StepOutcome::Done(Value::Null)
    }
}

/// `bench_wait` v1: `await` (`bench.wait`, key from `$.input.key`, no polling within the
/// run: `poll_every` 1 h, deadline 2 h) then `after` (`bench.mark`).
pub fn wait_definition() -> Definition {
    let mut wait = StepDef::new("await", "bench.wait", json!({"key": "$.input.key"}));
    wait.poll_every = Duration::from_secs(3600);
    wait.deadline = Duration::from_secs(7200);
    Definition {
        name: "bench_wait".to_string(),
        version: 1,
        description: Some(
            "Benchmark: wait for a Lumanu payable.paid webhook, then one more step.".to_string(),
        ),
        steps: vec![wait, StepDef::new("after", "bench.mark", json!({}))],
        concurrency: None,
    }
}
