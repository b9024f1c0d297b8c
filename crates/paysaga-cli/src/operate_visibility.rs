//! What operators see of a saga beyond its row (issue 13 items 6, 7, 13): the provider ids its
//! steps returned (references), what the provider last said per step, whether any live worker
//! can run it, the live timeline (`show --follow`) and what a step did with a delivered event.

use std::time::Duration;

use anyhow::{Context, Result};
use paysaga_core::HistoryKind;
use paysaga_runtime::{Engine, SagaView};
use paysaga_store::HistoryRecord;
use serde_json::Value;
use uuid::Uuid;

/// How often `show --follow` and `deliver` read the history again.
const POLL_EVERY: Duration = Duration::from_millis(500);

/// The "why" line of a saga no live worker can run, if it is one.
pub fn unrunnable_why(v: &SagaView) -> Option<String> {
    let u = v.unrunnable.as_ref()?;
    let workers = match u.live_workers {
        0 => "no worker is live".to_string(),
        1 => "1 worker is live".to_string(),
        n => format!("{n} workers are live"),
    };
    Some(if u.missing_kinds.is_empty() {
        format!(
            "no live worker can run it: each of its step kinds is on some worker but none has them all ({workers}); start a worker with every provider of workflow {} configured",
            v.saga.workflow
        )
    } else {
        let kind = u
            .step_kind
            .as_ref()
            .or(u.missing_kinds.first())
            .cloned()
            .unwrap_or_default();
        let others = match u.missing_kinds.len() - 1 {
            0 => String::new(),
            n => format!(", nor {n} other kind(s) of its workflow"),
        };
        format!(
            "no live worker can run step kind {kind}{others} ({workers}); start a worker with provider {} configured",
            u.providers.join(", ")
        )
    })
}

/// The lines `show` prints after the saga's error: its references and what the provider last
/// said per step.
pub fn print_details(v: &SagaView) {
    if !v.references.is_empty() {
        println!(
            "refs      (provider ids its steps returned; `paysaga list --ref ID` finds the saga)"
        );
        for r in &v.references {
            println!("  {:<20} {:<24} {}", r.step, r.name, r.value);
        }
    }
    let answers = provider_answers(v);
    if !answers.is_empty() {
        println!("provider  (last answer per step)");
        for (step, h, text) in answers {
            println!(
                "  {:<20} {}  {:<10} {}",
                step,
                h.at.format("%Y-%m-%d %H:%M:%S"),
                h.attempt
                    .map(|a| format!("attempt {a}"))
                    .unwrap_or_default(),
                text
            );
        }
    }
}

/// What the provider last said per step (`show`'s "provider" lines, the console's table): the
/// step, the history row it said it in, and the text.
pub fn provider_answers(v: &SagaView) -> Vec<(String, &HistoryRecord, String)> {
    v.steps
        .iter()
        .filter_map(|step| {
            let h = v
                .history
                .iter()
                .rev()
                .find(|h| h.step.as_deref() == Some(step.as_str()) && answer(h, v).is_some())?;
            Some((step.clone(), h, answer(h, v)?))
        })
        .collect()
}

/// What the provider last said, as a history row of a step shows it (`None`: the row is not a
/// step's result).
fn answer(h: &HistoryRecord, v: &SagaView) -> Option<String> {
    let detail = |k: &str| {
        h.detail
            .as_ref()
            .and_then(|d| d.get(k))
            .and_then(Value::as_str)
            .map(str::to_owned)
    };
    let error = h.error.clone().unwrap_or_default();
    Some(match h.kind {
        HistoryKind::StepRetrying => format!("retrying after: {error}"),
        HistoryKind::StepFailed => format!("failed: {error}"),
        HistoryKind::CompensationRetrying => format!("compensation retrying after: {error}"),
        HistoryKind::CompensationFailed => format!("compensation failed: {error}"),
        HistoryKind::StepCompensated => "compensated (undone at the provider)".to_string(),
        HistoryKind::StepWaiting if h.error.is_some() => {
            format!("still waiting; the last poll failed: {error}")
        }
        HistoryKind::StepWaiting => match detail("provider_status") {
            Some(status) => format!("waiting: {status}"),
            None => format!(
                "waiting for {} event {} ({})",
                detail("provider").unwrap_or_default(),
                h.detail
                    .as_ref()
                    .and_then(|d| d.get("event_types"))
                    .and_then(Value::as_array)
                    .map(|t| t
                        .iter()
                        .filter_map(Value::as_str)
                        .collect::<Vec<_>>()
                        .join("/"))
                    .unwrap_or_default(),
                detail("correlation_key").unwrap_or_default()
            ),
        },
        HistoryKind::StepCompleted => {
            let step = h.step.as_deref().unwrap_or_default();
            let statuses: Vec<String> = v
                .saga
                .outputs
                .get(step)
                .and_then(Value::as_object)
                .map(|o| {
                    o.iter()
                        .filter(|(k, v)| k.ends_with("status") && v.is_string())
                        .map(|(k, v)| format!("{k} {}", v.as_str().unwrap_or_default()))
                        .collect()
                })
                .unwrap_or_default();
            if statuses.is_empty() {
                "completed".to_string()
            } else {
                format!("completed: {}", statuses.join(", "))
            }
        }
        _ => return None,
    })
}

/// One history row as a timeline line.
fn history_line(h: &HistoryRecord) -> String {
    let who = h
        .actor
        .clone()
        .or(h.worker.map(|w| format!("worker {}", &w.to_string()[..8])))
        .unwrap_or_default();
    let detail = |k: &str| {
        h.detail
            .as_ref()
            .and_then(|d| d.get(k))
            .and_then(Value::as_str)
    };
    let note = match (detail("reason"), detail("provider_status")) {
        (Some(r), _) => format!("reason: {r}"),
        (None, Some(s)) => format!("provider: {s}"),
        (None, None) => String::new(),
    };
    let note = match (h.kind, &h.detail) {
        (HistoryKind::StepSkipped, Some(d)) => {
            format!("when {} did not hold (value: {})", d["when"], d["value"])
        }
        _ => note,
    };
    format!(
        "  {} {:<22} {:<18} {:<10} {:<16} {}{}",
        h.at.format("%Y-%m-%d %H:%M:%S%.3f"),
        h.kind.as_str(),
        h.step.as_deref().unwrap_or("-"),
        h.attempt
            .map(|a| format!("attempt {a}"))
            .unwrap_or_default(),
        who,
        h.error.as_deref().unwrap_or(""),
        note
    )
}

/// The id of the saga's newest history row (0 when it has none).
pub async fn last_history_id(engine: &Engine, id: Uuid) -> Result<i64> {
    Ok(engine
        .store()
        .history(id)
        .await
        .with_context(|| format!("cannot read the history of saga {id}"))?
        .last()
        .map_or(0, |h| h.id))
}

/// `show --follow`: the saga as `show` prints it, then every new history row as it is
/// written (read every 500 ms), until no worker will move the saga any more (it ended, or it
/// waits for an operator) or Ctrl-C.
pub async fn follow(engine: &Engine, id: Uuid) -> Result<()> {
    crate::operate::show(engine, id, false, None).await?;
    let mut last = last_history_id(engine, id).await?;
    let mut warned_unrunnable = false;
    loop {
        let view = engine
            .get(id)
            .await
            .with_context(|| format!("cannot follow saga {id}"))?;
        let seen = last;
        for h in view.history.iter().filter(|h| h.id > seen) {
            println!("{}", history_line(h));
            last = h.id;
        }
        if view.saga.status.is_final() {
            println!(
                "saga {id} is {}{}",
                view.saga.observed_status(),
                if view.saga.status.is_ended() {
                    ""
                } else {
                    ": no worker moves it until an operator acts"
                }
            );
            return Ok(());
        }
        match (unrunnable_why(&view), warned_unrunnable) {
            (Some(why), false) => {
                println!("  (waiting) {why}");
                warned_unrunnable = true;
            }
            (None, _) => warned_unrunnable = false,
            _ => {}
        }
        tokio::time::sleep(POLL_EVERY).await;
    }
}

/// After `deliver`: waits (at most `within`) for a worker to handle the event delivered after
/// history row `before`, and says what the step did with it: moved on, waits again (the
/// provider disagrees), retries or failed.
pub async fn report_delivery(
    engine: &Engine,
    id: Uuid,
    before: i64,
    within: Duration,
) -> Result<()> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let view = engine
            .get(id)
            .await
            .with_context(|| format!("cannot read saga {id} after the delivery"))?;
        let rows: Vec<&HistoryRecord> = view.history.iter().filter(|h| h.id > before).collect();
        let event_id = rows
            .iter()
            .find(|h| h.kind == HistoryKind::OperatorEvent)
            .and_then(|h| {
                h.detail
                    .as_ref()?
                    .get("event_id")?
                    .as_str()
                    .map(str::to_owned)
            });
        let received = rows.iter().position(|h| {
            h.kind == HistoryKind::EventReceived
                && h.detail
                    .as_ref()
                    .and_then(|d| d.get("event_id"))
                    .and_then(Value::as_str)
                    .is_some_and(|e| Some(e) == event_id.as_deref())
        });
        if let Some(at) = received {
            let step = rows[at].step.clone();
            let outcome = rows[at + 1..].iter().find(|h| {
                h.step == step
                    && matches!(
                        h.kind,
                        HistoryKind::StepCompleted
                            | HistoryKind::StepWaiting
                            | HistoryKind::StepRetrying
                            | HistoryKind::StepFailed
                    )
            });
            if let Some(h) = outcome {
                print_outcome(&view, h);
                return Ok(());
            }
        }
        if let Some(why) = unrunnable_why(&view) {
            println!("not handled yet: {why}; the event is stored and handled when one starts");
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            println!(
                "no worker handled the event within {}: the saga is {} (is a worker running? follow it with `paysaga show {id} --follow`)",
                humantime::format_duration(within),
                view.saga.observed_status()
            );
            return Ok(());
        }
        tokio::time::sleep(POLL_EVERY / 2).await;
    }
}

fn print_outcome(view: &SagaView, h: &HistoryRecord) {
    let step = h.step.as_deref().unwrap_or("-");
    let now = match &view.current_step {
        Some(current) if current != step => format!(
            "; the saga is now {} at step {current}",
            view.saga.observed_status()
        ),
        _ => format!("; the saga is now {}", view.saga.observed_status()),
    };
    let text = answer(h, view).unwrap_or_default();
    match h.kind {
        HistoryKind::StepCompleted => {
            println!("woke and moved on: step {step} {text}{now}")
        }
        HistoryKind::StepWaiting => {
            println!("the provider disagrees: step {step} checked and waits again ({text}){now}")
        }
        HistoryKind::StepRetrying => {
            println!("step {step} could not check with the provider and retries: {text}{now}")
        }
        _ => println!("step {step} {text}{now}"),
    }
}

/// The line `show` prints for a saga of a definition with a concurrency key: queued behind
/// the sagas holding the key's slots, or holding one.
pub fn concurrency_line(v: &SagaView) -> Option<String> {
    let c = v.saga.concurrency.as_ref()?;
    if v.saga.is_queued() {
        let behind: Vec<String> = v.queued_behind.iter().map(Uuid::to_string).collect();
        Some(if behind.is_empty() {
            format!(
                "slot      queued for a slot of concurrency key {} (limit {}): a slot is free, the next hand-over gives it (within a reaper interval)",
                c.key, c.limit
            )
        } else {
            format!(
                "slot      queued behind saga {} (concurrency key {}, limit {}): it runs its first step when a holder ends",
                behind.join(", saga "),
                c.key,
                c.limit
            )
        })
    } else if c.holds_slot && !v.saga.status.is_ended() {
        Some(format!(
            "slot      holds one of the {} slot(s) of concurrency key {} until it ends",
            c.limit, c.key
        ))
    } else {
        None
    }
}
