//! Conditional steps (issue 15 item 2) end to end: a real worker on PostgreSQL runs a
//! definition whose steps carry `when` conditions on the input (a routing rule); the steps
//! whose conditions fail never reach the provider, are `step_skipped` in history, store no
//! output, and an unwind compensates only the steps that ran.
#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

use paysaga_core::{Definition, DefinitionError};
use serde_json::json;
use support::*;
use uuid::Uuid;

/// Reserve, then pay through route A or route B by the caller's rule, an optional check that
/// refuses, then a last step.
const ROUTED: &str = r#"
    name = "routed"
    version = 1
    [[steps]]
    name = "reserve"
    kind = "test.effect"
    [[steps]]
    name = "route_a"
    kind = "test.effect"
    when = { path = "$.input.route", equals = "a" }
    [[steps]]
    name = "route_b"
    kind = "test.effect"
    when = { path = "$.input.route", equals = "b" }
    [[steps]]
    name = "check"
    kind = "test.fail"
    when = { path = "$.input.strict", exists = true }
    [[steps]]
    name = "done"
    kind = "noop.sleep"
"#;

async fn effect_steps(h: &Harness, saga: Uuid) -> Vec<String> {
    sqlx::query_scalar("SELECT step FROM test_effects WHERE saga_id = $1 ORDER BY applied_at")
        .bind(saga)
        .fetch_all(&h.pool)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn steps_whose_condition_fails_never_reach_the_provider_and_are_skipped_in_history() {
    let h = harness().await;
    h.submit(ROUTED).await;
    let worker = spawn_worker(&h.engine, fast_worker("w"));
    let id = h
        .engine
        .start("routed", json!({"route": "b"}), Some("routed-b"))
        .await
        .unwrap()
        .saga_id;
    h.wait_status(id, "completed", Duration::from_secs(20))
        .await;
    worker.shutdown().await;

    assert_eq!(effect_steps(&h, id).await, ["reserve", "route_b"]);
    let saga = h.engine.store().saga(id).await.unwrap().unwrap();
    let mut ran: Vec<&String> = saga.outputs.as_object().unwrap().keys().collect();
    ran.sort();
    assert_eq!(
        ran,
        ["done", "reserve", "route_b"],
        "skipped steps have no output"
    );
    let step = |s: &str| Some(s.to_string());
    assert_eq!(
        h.history_kinds(id).await,
        vec![
            ("saga_started".to_string(), None),
            ("step_completed".to_string(), step("reserve")),
            ("step_skipped".to_string(), step("route_a")),
            ("step_completed".to_string(), step("route_b")),
            ("step_skipped".to_string(), step("check")),
            ("step_completed".to_string(), step("done")),
            ("saga_completed".to_string(), None),
        ]
    );
    let details: Vec<serde_json::Value> = sqlx::query_scalar(
        "SELECT detail FROM paysaga_history WHERE saga_id = $1 AND kind = 'step_skipped' ORDER BY id",
    )
    .bind(id)
    .fetch_all(&h.pool)
    .await
    .unwrap();
    assert_eq!(
        details,
        vec![
            json!({"when": {"path": "$.input.route", "equals": "a"}, "value": "b", "found": true}),
            json!({"when": {"path": "$.input.strict", "exists": true}, "value": null, "found": false}),
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unwind_compensates_only_the_steps_that_ran_not_the_skipped_ones() {
    let h = harness().await;
    h.submit(ROUTED).await;
    let worker = spawn_worker(&h.engine, fast_worker("w"));
    let id = h
        .engine
        .start("routed", json!({"route": "a", "strict": true}), None)
        .await
        .unwrap()
        .saga_id;
    h.wait_status(id, "compensated", Duration::from_secs(20))
        .await;
    worker.shutdown().await;

    assert_eq!(effect_steps(&h, id).await, ["reserve", "route_a"]);
    let compensated: Vec<String> = h
        .provider
        .compensations
        .lock()
        .unwrap()
        .iter()
        .filter(|(saga, _)| *saga == id)
        .map(|(_, step)| step.clone())
        .collect();
    assert_eq!(
        compensated,
        ["route_a", "reserve"],
        "route_b was skipped: nothing to undo"
    );
    let kinds = h.history_kinds(id).await;
    assert!(kinds.contains(&("step_skipped".to_string(), Some("route_b".to_string()))));
    assert!(!kinds.contains(&("step_compensated".to_string(), Some("route_b".to_string()))));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_definition_reading_a_conditional_steps_output_from_an_unconditional_step_is_refused() {
    let h = harness().await;
    let text = ROUTED.replace(
        "name = \"done\"\n    kind = \"noop.sleep\"",
        "name = \"done\"\n    kind = \"noop.sleep\"\n    params = { delay_ms = \"$.steps.route_a.key\" }",
    );
    let def = Definition::from_toml(&text).unwrap();
    let err = h.engine.submit_definition(&def).await.unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("step done") && text.contains("no output when skipped"),
        "{text}"
    );
    assert!(
        matches!(
            err,
            paysaga_runtime::Error::Definition(DefinitionError::BadReference { .. })
        ),
        "{err:?}"
    );
    assert!(h
        .engine
        .store()
        .find_definition("routed", None)
        .await
        .unwrap()
        .is_none());
}
