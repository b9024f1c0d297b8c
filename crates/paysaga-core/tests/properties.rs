//! Property tests of the pure core: whatever the step outcomes, events and cancels, the saga
//! stays in a legal state; retry schedules are monotone and bounded.

use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use paysaga_core::retry::{Attempts, RetryDecision, RetryPolicy};
use paysaga_core::{
    after_compensation, after_step, next_run, CompiledDefinition, Definition, Event, NextRun,
    SagaState, SagaStatus, StepDef, StepOutcome, StepTraits, Transition, WaitSpec, Wake,
};
use proptest::prelude::*;
use serde_json::json;
use uuid::Uuid;

#[derive(Debug, Clone)]
enum Input {
    Done,
    Wait,
    Retry,
    Fail,
    Event,
    Cancel,
    Later(u16),
}

fn input() -> impl Strategy<Value = Input> {
    prop_oneof![
        4 => Just(Input::Done),
        2 => Just(Input::Wait),
        3 => Just(Input::Retry),
        1 => Just(Input::Fail),
        2 => Just(Input::Event),
        1 => Just(Input::Cancel),
        2 => (1u16..5000).prop_map(Input::Later),
    ]
}

fn traits() -> impl Strategy<Value = StepTraits> {
    (any::<bool>(), prop::bool::weighted(0.15)).prop_map(|(compensable, irreversible)| StepTraits {
        compensable,
        irreversible,
    })
}

fn definition(traits: &[StepTraits]) -> CompiledDefinition {
    let def = Definition {
        name: "prop".into(),
        version: 1,
        description: None,
        steps: (0..traits.len())
            .map(|i| {
                let mut s = StepDef::new(format!("s{i}"), format!("k{i}"), json!({}));
                s.retry = RetryPolicy {
                    initial_delay: Duration::from_millis(10),
                    max_delay: Duration::from_secs(1),
                    max_attempts: Attempts::Limited(4),
                    ..RetryPolicy::default()
                };
                s.deadline = Duration::from_secs(30);
                s.poll_every = Duration::from_secs(5);
                s
            })
            .collect(),
        concurrency: None,
    };
    let kind = |k: &str| k[1..].parse::<usize>().ok().map(|i| traits[i]);
    def.compile(&kind, &[]).expect("valid definition")
}

fn apply(state: &mut SagaState, t: &Transition) {
    state.status = t.status;
    state.step_index = t.step_index;
    state.attempt = t.attempt;
    state.step_started_at = t.step_started_at;
    state.wait = t.wait.clone();
    state.last_error = t.last_error.clone();
    state.effect_possible = t.effect_possible;
}

fn check(
    state: &SagaState,
    t: &Transition,
    def: &CompiledDefinition,
    now: DateTime<Utc>,
) -> Result<(), TestCaseError> {
    let n = def.steps.len();
    prop_assert!(
        t.step_index <= n,
        "cursor {} beyond {n} steps",
        t.step_index
    );
    match t.status {
        SagaStatus::Completed => {
            prop_assert_eq!(t.step_index, n);
            prop_assert!(t.run_at.is_none());
        }
        SagaStatus::Compensated | SagaStatus::Cancelled | SagaStatus::NeedsOperator => {
            prop_assert!(t.run_at.is_none(), "final saga with a run time");
            prop_assert!(t.wait.is_none(), "final saga with a wait");
            prop_assert!(
                t.last_error.is_some() || t.status == SagaStatus::Cancelled,
                "no reason recorded"
            );
        }
        SagaStatus::Waiting => {
            let w = t.wait.as_ref();
            prop_assert!(w.is_some(), "waiting without a wait");
            let w = w.expect("checked");
            prop_assert!(w.poll_at <= w.deadline, "poll after deadline");
            prop_assert_eq!(t.run_at, Some(w.poll_at));
            prop_assert!(t.step_index < n);
        }
        SagaStatus::Scheduled => {
            prop_assert!(
                t.run_at.is_some_and(|at| at >= now),
                "runnable saga without a run time"
            );
            prop_assert!(t.step_index < n);
        }
        SagaStatus::Retrying => {
            prop_assert!(
                t.run_at.is_some_and(|at| at >= now),
                "saga backing off without a next attempt time"
            );
            prop_assert!(t.attempt > 0, "retrying without a failed attempt");
            prop_assert!(t.step_index < n);
        }
        SagaStatus::Closed => {
            prop_assert!(false, "no transition of the state machine closes a saga");
        }
        SagaStatus::Compensating => {
            prop_assert!(t.run_at.is_some());
            prop_assert!(
                t.step_index < state.step_index.max(1) || state.status == SagaStatus::Compensating
            );
            prop_assert!(
                def.steps[t.step_index].traits.compensable,
                "compensating a step that cannot be undone"
            );
        }
    }
    prop_assert!(!t.history.is_empty(), "a transition without history");
    // A step's retry policy bounds its attempts outside a wait; inside one, failed polls and
    // failed event handling go on until the wait's deadline (they count only for backoff).
    let in_wait = t.status == SagaStatus::Waiting || state.status == SagaStatus::Waiting;
    if let (false, Attempts::Limited(max)) = (
        in_wait,
        def.steps[state.step_index.min(n - 1)]
            .def
            .retry
            .max_attempts,
    ) {
        prop_assert!(
            t.attempt <= max + 1,
            "attempts {} beyond policy {max}",
            t.attempt
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn any_sequence_of_outcomes_leads_to_a_legal_state(
        step_traits in prop::collection::vec(traits(), 1..6),
        inputs in prop::collection::vec(input(), 1..60),
    ) {
        let def = definition(&step_traits);
        let mut now = Utc.with_ymd_and_hms(2026, 11, 23, 12, 0, 0).single().expect("valid time");
        let mut state = SagaState {
            id: Uuid::from_u128(7),
            status: SagaStatus::Scheduled,
            step_index: 0,
            attempt: 0,
            step_started_at: None,
            wait: None,
            cancel_requested: false,
            last_error: None,
            effect_possible: false,
            close_requested: None,
            steps_with_output: Default::default(),
        };
        // Irreversible steps an attempt of which may have reached the provider.
        let mut maybe_acted: Vec<usize> = Vec::new();
        let mut compensated: Vec<usize> = Vec::new();
        let mut completed_steps: Vec<usize> = Vec::new();
        for input in inputs {
            if state.status.is_final() {
                break;
            }
            match input {
                Input::Cancel => { state.cancel_requested = true; continue; }
                Input::Later(ms) => { now += chrono::Duration::milliseconds(i64::from(ms) * 100); continue; }
                _ => {}
            }
            let event = matches!(input, Input::Event).then(|| Event {
                inbox_id: 1, provider: "p".into(), event_id: "e".into(), event_type: "t".into(),
                correlation_key: "k".into(), payload: json!({}),
            });
            if matches!(input, Input::Event) && state.status != SagaStatus::Waiting {
                continue;
            }
            let outcome = match input {
                Input::Done | Input::Event => StepOutcome::Done(json!({})),
                Input::Wait => StepOutcome::Wait(WaitSpec::new("p", "t", "k")),
                Input::Retry => StepOutcome::retry("transient"),
                _ => StepOutcome::fail("permanent"),
            };
            let before = state.clone();
            let t = match next_run(&state, &def, event, &serde_json::Value::Null, now) {
                NextRun::Step { index, wake, attempt } => {
                    prop_assert_eq!(index, state.step_index);
                    if let Wake::Event(_) = wake { prop_assert_eq!(state.status, SagaStatus::Waiting); }
                    let t = after_step(&state, &def, index, attempt, &wake, outcome.clone(), now);
                    if t.output.is_some() { completed_steps.push(index); }
                    if def.steps[index].traits.irreversible
                        && matches!(outcome, StepOutcome::Retry { .. } | StepOutcome::Wait(_))
                    {
                        maybe_acted.push(index);
                    }
                    t
                }
                NextRun::Compensate { index, attempt } => {
                    let t = after_compensation(&state, &def, index, attempt, outcome.clone(), now);
                    if t.history.iter().any(|h| h.kind == paysaga_core::HistoryKind::StepCompensated) {
                        compensated.push(index);
                    }
                    t
                }
                NextRun::Apply(t) => *t,
            };
            check(&before, &t, &def, now)?;
            apply(&mut state, &t);
        }
        // Compensations run in strictly decreasing step order, only for completed steps.
        prop_assert!(compensated.windows(2).all(|w| w[0] > w[1]), "compensation order {compensated:?}");
        prop_assert!(compensated.iter().all(|i| completed_steps.contains(i)), "compensated a step that never completed");
        // Steps complete in order, each once.
        prop_assert!(completed_steps.windows(2).all(|w| w[0] < w[1]), "steps completed out of order {completed_steps:?}");
        if state.status == SagaStatus::Cancelled {
            prop_assert!(state.cancel_requested);
        }
        // Money safety: a saga one of whose irreversible steps may have acted never ends
        // saying nothing happened.
        if matches!(state.status, SagaStatus::Cancelled | SagaStatus::Compensated) {
            prop_assert!(maybe_acted.is_empty(), "ended {} although irreversible step(s) {maybe_acted:?} may have acted", state.status);
        }
    }

    #[test]
    fn retry_schedules_are_monotone_and_bounded(
        initial_ms in 1u64..10_000,
        factor in 1.0f64..5.0,
        max_ms in 10_000u64..600_000,
        jitter in 0.0f64..1.0,
        seed in any::<u64>(),
        hint_ms in prop::option::of(0u64..120_000),
    ) {
        let p = RetryPolicy {
            initial_delay: Duration::from_millis(initial_ms),
            multiplier: factor,
            max_delay: Duration::from_millis(max_ms),
            max_attempts: Attempts::Limited(30),
            max_total: Duration::from_secs(24 * 3600),
            jitter,
        };
        prop_assert!(p.validate().is_ok());
        let hint = hint_ms.map(Duration::from_millis);
        let mut last = Duration::ZERO;
        let mut elapsed = Duration::ZERO;
        for attempt in 1..40u32 {
            let base = p.base_delay(attempt);
            prop_assert!(base >= last, "base delay shrank at attempt {attempt}");
            prop_assert!(base <= p.max_delay);
            last = base;
            match p.decide(attempt, elapsed, seed ^ u64::from(attempt), hint) {
                RetryDecision::RetryAfter(d) => {
                    prop_assert!(attempt < 30, "retried beyond max_attempts");
                    let floor = Duration::from_secs_f64(base.as_secs_f64() * (1.0 - jitter) * 0.999);
                    prop_assert!(d >= floor.min(base), "delay {d:?} below the jitter floor of {base:?}");
                    prop_assert!(d <= base.max(hint.unwrap_or_default()) + Duration::from_millis(1));
                    elapsed += d;
                    prop_assert!(elapsed <= p.max_total, "retries beyond max_total");
                }
                RetryDecision::Exhausted => break,
            }
        }
    }
}
