//! `list` and `stats`: tables for people, and JSON of a documented, stable shape for
//! scripts (named fields, statuses as operators see them, step names; no lease internals
//! and no saga input: `show` prints that, redacted).

use std::collections::hash_map::Entry;
use std::collections::HashMap;

use anyhow::{Context, Result};
use chrono::{DateTime, Utc};
use paysaga_core::{ClosedOutcome, ObservedStatus};
use paysaga_runtime::Engine;
use paysaga_store::SagaRecord;
use serde::Serialize;
use uuid::Uuid;

use crate::operate::{status_cell, FilterArgs};

/// One saga of `list --json` (see the README, "JSON output").
#[derive(Debug, Serialize)]
pub struct SagaSummary {
    /// Saga id.
    pub id: Uuid,
    /// Workflow name.
    pub workflow: String,
    /// Definition version.
    pub version: u32,
    /// Status as operators see it (`running` while a worker holds it).
    pub status: ObservedStatus,
    /// Name of the current step (or the step being compensated); null once ended.
    pub step: Option<String>,
    /// Attempts made of the current step.
    pub attempt: u32,
    /// Idempotency (business) key given at start.
    pub key: Option<String>,
    /// Created.
    pub created_at: DateTime<Utc>,
    /// Last change.
    pub updated_at: DateTime<Utc>,
    /// When a worker runs it next, if it is due to run.
    pub run_at: Option<DateTime<Utc>>,
    /// Last error shown to operators.
    pub last_error: Option<String>,
    /// The outcome an operator declared when closing it (`paid`, `not_paid`).
    pub closed_outcome: Option<ClosedOutcome>,
    /// An operator asked to cancel; compensations run next.
    pub cancel_requested: bool,
}

/// Step names of each definition, read once per definition.
#[derive(Debug, Default)]
pub struct StepNames {
    by_definition: HashMap<i64, Vec<String>>,
}

impl StepNames {
    /// The saga's current step's name (none once it ended).
    pub async fn current(&mut self, engine: &Engine, saga: &SagaRecord) -> Result<Option<String>> {
        if saga.status.is_ended() {
            return Ok(None);
        }
        let names = match self.by_definition.entry(saga.definition_id) {
            Entry::Occupied(known) => known.into_mut(),
            Entry::Vacant(slot) => {
                let def = engine
                    .store()
                    .definition(saga.definition_id)
                    .await
                    .with_context(|| {
                        format!(
                            "cannot read definition {} of saga {}",
                            saga.definition_id, saga.id
                        )
                    })?;
                slot.insert(
                    def.definition
                        .steps
                        .iter()
                        .map(|s| s.name.clone())
                        .collect(),
                )
            }
        };
        Ok(names.get(saga.step_index).cloned())
    }

    /// The summary `list --json` prints.
    pub async fn summary(&mut self, engine: &Engine, s: &SagaRecord) -> Result<SagaSummary> {
        Ok(SagaSummary {
            id: s.id,
            workflow: s.workflow.clone(),
            version: s.version,
            status: s.observed_status(),
            step: self.current(engine, s).await?,
            attempt: s.attempt,
            key: s.idempotency_key.clone(),
            created_at: s.created_at,
            updated_at: s.updated_at,
            run_at: s.run_at,
            last_error: s.last_error.clone(),
            closed_outcome: s.closed_outcome,
            cancel_requested: s.cancel_requested,
        })
    }
}

/// `list`.
pub async fn list(engine: &Engine, filter: &FilterArgs, json: bool) -> Result<()> {
    let sagas = match filter.parent {
        Some(parent) => crate::children::list_children(engine, parent, filter).await?,
        None => engine.list(&filter.to_filter()?).await?,
    };
    let mut names = StepNames::default();
    let mut rows = Vec::with_capacity(sagas.len());
    for s in &sagas {
        rows.push(names.summary(engine, s).await?);
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    println!(
        "{:<36}  {:<20} {:<14} {:<20} {:>7}  {:<19}  LAST ERROR",
        "ID", "WORKFLOW", "STATUS", "STEP", "ATTEMPT", "UPDATED"
    );
    for s in &rows {
        println!(
            "{:<36}  {:<20} {} {:<20} {:>7}  {:<19}  {}",
            s.id,
            format!("{} v{}", s.workflow, s.version),
            status_cell(s.status, 14),
            s.step.as_deref().unwrap_or("-"),
            s.attempt,
            s.updated_at.format("%Y-%m-%d %H:%M:%S"),
            s.last_error
                .as_deref()
                .unwrap_or("")
                .chars()
                .take(100)
                .collect::<String>()
        );
    }
    eprintln!("{} saga(s)", rows.len());
    Ok(())
}

/// `stats --json` (see the README, "JSON output").
#[derive(Debug, Serialize)]
pub struct StatsOutput {
    /// Sagas by workflow and status.
    pub by_status: Vec<StatusCount>,
    /// Unfinished sagas by workflow and current step.
    pub by_step: Vec<StepCount>,
    /// The saga waiting longest, if any.
    pub oldest_waiting: Option<OldestWaiting>,
    /// Unfinished sagas by attempts made of their current step (more than one).
    pub retries: Vec<RetryCount>,
    /// Inbox events no saga consumed, by provider.
    pub unmatched_events: Vec<UnmatchedEvents>,
}

/// Sagas of a workflow in a status.
#[derive(Debug, Serialize)]
pub struct StatusCount {
    /// Workflow.
    pub workflow: String,
    /// Status.
    pub status: String,
    /// Sagas.
    pub sagas: i64,
}

/// Unfinished sagas of a workflow at a step.
#[derive(Debug, Serialize)]
pub struct StepCount {
    /// Workflow.
    pub workflow: String,
    /// Current step's name.
    pub step: String,
    /// Sagas.
    pub sagas: i64,
}

/// The saga waiting longest.
#[derive(Debug, Serialize)]
pub struct OldestWaiting {
    /// Saga id.
    pub id: Uuid,
    /// Workflow.
    pub workflow: String,
    /// Waiting since.
    pub since: DateTime<Utc>,
}

/// Sagas at a number of attempts.
#[derive(Debug, Serialize)]
pub struct RetryCount {
    /// Attempts made.
    pub attempts: i32,
    /// Sagas.
    pub sagas: i64,
}

/// Unconsumed inbox events of a provider.
#[derive(Debug, Serialize)]
pub struct UnmatchedEvents {
    /// Provider.
    pub provider: String,
    /// Events.
    pub events: i64,
}

/// `stats`.
pub async fn stats(engine: &Engine, json: bool) -> Result<()> {
    let stats = engine.stats().await?;
    if json {
        let out = StatsOutput {
            by_status: stats
                .by_status
                .iter()
                .map(|(workflow, status, sagas)| StatusCount {
                    workflow: workflow.clone(),
                    status: status.clone(),
                    sagas: *sagas,
                })
                .collect(),
            by_step: stats
                .by_step
                .iter()
                .map(|(workflow, step, sagas)| StepCount {
                    workflow: workflow.clone(),
                    step: step.clone(),
                    sagas: *sagas,
                })
                .collect(),
            oldest_waiting: stats.oldest_waiting.as_ref().map(|(id, workflow, since)| {
                OldestWaiting {
                    id: *id,
                    workflow: workflow.clone(),
                    since: *since,
                }
            }),
            retries: stats
                .retries
                .iter()
                .map(|(attempts, sagas)| RetryCount {
                    attempts: *attempts,
                    sagas: *sagas,
                })
                .collect(),
            unmatched_events: stats
                .unmatched_events
                .iter()
                .map(|(provider, events)| UnmatchedEvents {
                    provider: provider.clone(),
                    events: *events,
                })
                .collect(),
        };
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    println!("{:<24} {:<14} {:>8}", "WORKFLOW", "STATUS", "SAGAS");
    for (w, s, n) in &stats.by_status {
        println!("{w:<24} {s:<14} {n:>8}");
    }
    println!(
        "\n{:<24} {:<24} {:>8}",
        "WORKFLOW", "CURRENT STEP (unfinished)", "SAGAS"
    );
    for (w, s, n) in &stats.by_step {
        println!("{w:<24} {s:<24} {n:>8}");
    }
    match &stats.oldest_waiting {
        Some((id, w, since)) => println!(
            "\noldest waiting: {id} ({w}) since {}",
            since.format("%Y-%m-%d %H:%M:%S")
        ),
        None => println!("\noldest waiting: none"),
    }
    if !stats.retries.is_empty() {
        println!("\n{:>8} {:>8}", "ATTEMPTS", "SAGAS");
        for (a, n) in &stats.retries {
            println!("{a:>8} {n:>8}");
        }
    }
    for (p, n) in &stats.unmatched_events {
        println!("unmatched inbox events from {p}: {n}");
    }
    Ok(())
}
