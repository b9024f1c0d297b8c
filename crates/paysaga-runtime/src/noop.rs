//! The built-in `noop` workflow: five `noop.sleep` steps, used by smoke tests, the chaos
//! suite and benchmarks. Available without any submission.

use std::time::Duration;

use async_trait::async_trait;
use paysaga_core::{Definition, StepContext, StepDef, StepKind, StepOutcome};
use serde_json::{json, Value};

/// Sleeps `delay_ms` milliseconds (0 = no I/O at all) and completes.
#[derive(Debug, Clone, Copy, Default)]
pub struct Sleep;

/// The longest sleep accepted (one hour).
const MAX_DELAY_MS: u64 = 3_600_000;

fn delay_ms(params: &Value) -> Result<u64, String> {
    match params.get("delay_ms") {
        None | Some(Value::Null) => Ok(0),
        Some(v) => v.as_u64().filter(|ms| *ms <= MAX_DELAY_MS).ok_or_else(|| {
            format!("delay_ms must be an integer between 0 and {MAX_DELAY_MS}, got {v}")
        }),
    }
}

#[async_trait]
impl StepKind for Sleep {
    fn name(&self) -> &'static str {
        "noop.sleep"
    }

    fn validate(&self, params: &Value) -> Result<(), String> {
        delay_ms(params).map(|_| ())
    }

    fn schema(&self) -> Option<paysaga_core::KindSchema> {
        use paysaga_core::{FieldSpec, FieldType};
        Some(paysaga_core::KindSchema {
            description:
                "Sleeps delay_ms milliseconds, then completes (built in; for tests and benchmarks).",
            params: vec![FieldSpec::optional(
                "delay_ms",
                FieldType::Integer,
                "milliseconds to sleep, 0 to 3600000 (default 0)",
            )],
            outputs: vec![FieldSpec::required(
                "slept_ms",
                FieldType::Integer,
                "milliseconds slept",
            )],
        })
    }

    async fn run(&self, _ctx: &StepContext, params: Value) -> StepOutcome {
        match delay_ms(&params) {
            Ok(0) => StepOutcome::Done(json!({"slept_ms": 0})),
            Ok(ms) => {
                tokio::time::sleep(Duration::from_millis(ms)).await;
                StepOutcome::Done(json!({"slept_ms": ms}))
            }
            Err(e) => StepOutcome::fail(e),
        }
    }
}

/// The `noop` workflow definition (version 1): five `noop.sleep` steps reading
/// `delay_ms` from the input (`{"delay_ms": 0}`).
pub fn noop_definition() -> Definition {
    Definition {
        name: "noop".to_string(),
        version: 1,
        description: Some("Five noop.sleep steps; input {\"delay_ms\": N}. Built in.".to_string()),
        steps: (1..=5)
            .map(|i| {
                let mut step = StepDef::new(
                    format!("sleep{i}"),
                    "noop.sleep",
                    json!({"delay_ms": "$.input.delay_ms"}),
                );
                step.retry.initial_delay = Duration::from_millis(100);
                step.retry.max_delay = Duration::from_secs(5);
                step
            })
            .collect(),
        concurrency: None,
    }
}
