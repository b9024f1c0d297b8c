//! The worker's side of fan-out steps (child sagas; the pure part is
//! `paysaga_core::fan_out`): start the next children under the parent's fence, wait for
//! them, complete the step with a summary when every child has ended, load the children
//! into the scope of a step that reads `$.children.<step>`, and cancel a cancelled parent's
//! unfinished children.

use chrono::{DateTime, Utc};
use paysaga_core::fan_out::{
    children_read_by, fan_out_deadline, fan_out_summary, fan_out_waiting, ChildOutcome,
};
use paysaga_core::{
    after_step, child_idempotency_key, FanOutPlan, FanOutProgress, Params, SagaState, SagaStatus,
    StepOutcome, Transition, Wake,
};
use paysaga_store::{NewChild, SagaRecord, StartChildren};
use serde_json::{json, Value};
use tracing::{debug, info};
use uuid::Uuid;

use crate::engine::LoadedDefinition;
use crate::{Engine, Error};

/// What a run of a fan-out step leads to.
pub(crate) enum FanOutRun {
    /// Commit this; if it is the fan-in wait, `ended` is the count it was decided on (a
    /// child that ended meanwhile may have found the parent held: the worker wakes it).
    Commit {
        transition: Box<Transition>,
        ended: Option<u64>,
    },
    /// The worker no longer holds the parent: nothing was started; drop the saga.
    LeaseLost,
}

/// The parameter scope of `saga`: input, step outputs, saga, and the children of the fan-out
/// steps `params` read (`$.children.<step>`), loaded from the store now.
pub(crate) async fn scope_for(
    engine: &Engine,
    saga: &SagaRecord,
    params: &Params,
) -> Result<Value, Error> {
    // Cloned, not serialized again (`json!` would): the input may hold a long item list.
    let mut scope = Value::Object(serde_json::Map::from_iter([
        ("input".to_string(), saga.input.clone()),
        ("steps".to_string(), saga.outputs.clone()),
        (
            "saga".to_string(),
            json!({"id": saga.id, "workflow": saga.workflow}),
        ),
    ]));
    let read = children_read_by(params);
    if read.is_empty() {
        return Ok(scope);
    }
    let mut children = serde_json::Map::new();
    for step in read {
        let list = engine.store.child_sagas(saga.id, &step, true).await?;
        let list: Vec<Value> = list
            .into_iter()
            .map(|c| {
                json!({"key": c.key, "index": c.index, "saga_id": c.id,
                       "status": c.status.as_str(), "steps": c.outputs})
            })
            .collect();
        children.insert(step, Value::Array(list));
    }
    scope["children"] = Value::Object(children);
    Ok(scope)
}

/// Runs fan-out step `index` of `saga` (held by `worker` under `saga.fence`).
#[allow(clippy::too_many_arguments)]
pub(crate) async fn run_fan_out(
    engine: &Engine,
    saga: &SagaRecord,
    loaded: &LoadedDefinition,
    state: &SagaState,
    index: usize,
    attempt: u32,
    worker: Uuid,
    now: DateTime<Utc>,
) -> FanOutRun {
    let compiled = &loaded.compiled;
    let step = &compiled.steps[index];
    let name = step.def.name.as_str();
    let done = |outcome: StepOutcome| FanOutRun::Commit {
        transition: Box::new(after_step(
            state,
            compiled,
            index,
            attempt,
            &Wake::Start,
            outcome,
            now,
        )),
        ended: None,
    };
    let Some(fan) = step.fan_out.as_ref() else {
        return done(StepOutcome::fail(format!(
            "step {name} is not a fan-out step"
        )));
    };
    let mut scope = match scope_for(engine, saga, &fan.items).await {
        Ok(s) => s,
        Err(e) => return done(StepOutcome::retry(format!("reading the children: {e}"))),
    };
    let progress = match engine.store.fan_out_progress(saga.id, name).await {
        Ok(p) => p.unwrap_or_default(),
        Err(e) => {
            return done(StepOutcome::retry(format!(
                "reading the fan-out's progress: {e}"
            )))
        }
    };
    let plan = match fan.plan(&mut scope, progress) {
        Ok(p) => p,
        Err(reason) => return done(StepOutcome::fail(format!("fan-out {name}: {reason}"))),
    };
    let total = match &plan {
        FanOutPlan::Done { .. } => {
            return match engine.store.child_sagas(saga.id, name, false).await {
                Ok(children) => {
                    let outcomes: Vec<ChildOutcome> = children
                        .into_iter()
                        .map(|c| ChildOutcome {
                            key: c.key,
                            status: c.status,
                        })
                        .collect();
                    info!(step = %name, children = outcomes.len(), "every child ended; fan-in done");
                    done(StepOutcome::Done(fan_out_summary(
                        &fan.def.workflow,
                        &outcomes,
                    )))
                }
                Err(e) => done(StepOutcome::retry(format!("reading the children: {e}"))),
            };
        }
        FanOutPlan::Start { total, .. } | FanOutPlan::Wait { total } => *total,
    };
    if now >= fan_out_deadline(state, compiled, index, now) {
        return done(StepOutcome::fail(format!(
            "fan-out deadline passed: {} of {total} children ended ({} started); the unfinished ones are cancelled",
            progress.ended, progress.started
        )));
    }
    let mut started_now = 0;
    let mut after = progress;
    if let FanOutPlan::Start { total, children } = plan {
        let record = match engine.store.find_definition(&fan.def.workflow, None).await {
            Ok(Some(r)) => r,
            Ok(None) => {
                return done(StepOutcome::fail(format!(
                    "fan-out {name}: workflow {} is not defined: submit its definition (`paysaga definitions submit FILE`), then `resume` or `reset` this saga",
                    fan.def.workflow
                )))
            }
            Err(e) => return done(StepOutcome::retry(format!("reading workflow {}: {e}", fan.def.workflow))),
        };
        let child_def = match engine.load(record.id).await {
            Ok(l) => l,
            Err(e) => {
                return done(StepOutcome::fail(format!(
                    "fan-out {name}: workflow {} cannot run here: {e}",
                    fan.def.workflow
                )))
            }
        };
        let mut new = Vec::with_capacity(children.len());
        for child in children {
            if let Err(e) = engine.validate_input(&child_def, &child.input) {
                return done(StepOutcome::fail(format!(
                    "fan-out {name}: the input of child {:?} (element {}) is refused: {e}",
                    child.key, child.index
                )));
            }
            // A child of a workflow with `[concurrency]` takes a slot of its key like any
            // saga started with `Engine::start`.
            let concurrency = match &record.definition.concurrency {
                None => None,
                Some(c) => match c.key_for(&record.name, &child.input) {
                    Ok(key) => Some(paysaga_store::SagaConcurrency {
                        key,
                        limit: c.limit,
                        holds_slot: false,
                    }),
                    Err(reason) => {
                        return done(StepOutcome::fail(format!(
                        "fan-out {name}: child {:?} (element {}) has no concurrency key: {reason}",
                        child.key, child.index
                    )))
                    }
                },
            };
            new.push(NewChild {
                concurrency,
                id: Uuid::new_v4(),
                index: child.index,
                idempotency_key: child_idempotency_key(saga.id, name, &child.key),
                key: child.key,
                input: child.input,
            });
        }
        let started = engine
            .store
            .start_children(StartChildren {
                parent: saga.id,
                worker,
                fence: saga.fence,
                step: name,
                total,
                definition_id: record.id,
                workflow: &record.name,
                version: record.version,
                children: &new,
            })
            .await;
        match started {
            Ok(inserted) => {
                debug!(step = %name, inserted, batch = new.len(), "children started");
                started_now = new.len();
                after.started = new.last().map(|c| c.index + 1).unwrap_or(after.started);
                after.total = total;
            }
            Err(paysaga_store::Error::LeaseLost { .. }) => return FanOutRun::LeaseLost,
            Err(e) => return done(StepOutcome::retry(format!("starting children: {e}"))),
        }
    }
    FanOutRun::Commit {
        transition: Box::new(fan_out_waiting(
            state,
            compiled,
            index,
            attempt,
            total,
            started_now,
            after,
            now,
        )),
        ended: Some(progress.ended),
    }
}

/// After the fan-in wait is committed: a child that ended after the progress was read may
/// have found the parent held and not woken it; wake it now.
pub(crate) async fn wake_if_ended_meanwhile(
    engine: &Engine,
    parent: Uuid,
    step: &str,
    ended: u64,
) -> Result<(), Error> {
    let now: Option<FanOutProgress> = engine.store.fan_out_progress(parent, step).await?;
    if now.is_some_and(|p| p.ended != ended) {
        engine.store.wake_fan_in(parent).await?;
    }
    Ok(())
}

/// A parent with fan-out steps that starts to unwind (a cancel, a failed step): its
/// unfinished children are asked to cancel (each runs its compensations), before the
/// parent's transition is committed (run again if the commit does not happen).
pub(crate) async fn cancel_children_if_unwinding(
    engine: &Engine,
    saga: &SagaRecord,
    loaded: &LoadedDefinition,
    prior_status: SagaStatus,
    transition: &Transition,
) -> Result<u64, Error> {
    let has_fan_out = loaded.compiled.steps.iter().any(|s| s.fan_out.is_some());
    let unwinding = match transition.status {
        SagaStatus::Compensating | SagaStatus::Compensated | SagaStatus::Cancelled => true,
        SagaStatus::NeedsOperator => saga.cancel_requested,
        SagaStatus::Scheduled
        | SagaStatus::Retrying
        | SagaStatus::Waiting
        | SagaStatus::Completed
        | SagaStatus::Closed => false,
    };
    if !has_fan_out || !unwinding || prior_status == SagaStatus::Compensating {
        return Ok(0);
    }
    let reason = transition
        .last_error
        .clone()
        .unwrap_or_else(|| "the parent saga ended".into());
    let n = engine
        .store
        .cancel_children(
            saga.id,
            &format!("parent {}", saga.id),
            json!({"reason": format!("parent saga {} unwinds: {reason}", saga.id), "parent": saga.id}),
        )
        .await?;
    if n > 0 {
        info!(
            children = n,
            "parent unwinds: unfinished children asked to cancel"
        );
    }
    Ok(n)
}
