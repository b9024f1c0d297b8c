//! Operator commands: find stuck sagas, see why, and move them on. Read-only commands
//! (`list`, `show`, `stats`, `events list|show`) never write, so they work with a read-only
//! database role.

use std::io::IsTerminal;

use anyhow::{Context, Result};
use chrono::{DateTime, Utc};
use clap::builder::PossibleValue;
use clap::{Args, Subcommand, ValueEnum};
use paysaga_core::{ObservedStatus, SagaStatus};
use paysaga_runtime::{Engine, SagaView};
use paysaga_store::{EventFilter, SagaFilter};
use serde_json::Value;
use uuid::Uuid;

pub use crate::privacy::redact;

/// Filters shared by `list` and the bulk forms of the actions.
#[derive(Debug, Args, Clone, Default)]
pub struct FilterArgs {
    /// Only these statuses (repeatable), as `list` shows them.
    #[arg(long = "status", value_enum)]
    pub statuses: Vec<StatusArg>,
    /// Only this workflow.
    #[arg(long)]
    pub workflow: Option<String>,
    /// Only sagas whose current step has this name.
    #[arg(long)]
    pub step: Option<String>,
    /// Only workflows using this provider's step kinds (lumanu, blaaiz, lean).
    #[arg(long)]
    pub provider: Option<String>,
    /// Only this business key (the idempotency key given at start).
    #[arg(long)]
    pub key: Option<String>,
    /// Created at or after: RFC 3339 time, or a duration meaning "ago" (e.g. 2h).
    #[arg(long, value_parser = time_arg)]
    pub created_after: Option<DateTime<Utc>>,
    /// Created before: RFC 3339 time or a duration ago.
    #[arg(long, value_parser = time_arg)]
    pub created_before: Option<DateTime<Utc>>,
    /// Updated at or after: RFC 3339 time or a duration ago.
    #[arg(long, value_parser = time_arg)]
    pub updated_after: Option<DateTime<Utc>>,
    /// Updated before: RFC 3339 time or a duration ago.
    #[arg(long, value_parser = time_arg)]
    pub updated_before: Option<DateTime<Utc>>,
    /// Stuck: parked for an operator, or unfinished with no progress for this long, waiting
    /// past its deadline, held by a dead worker, or at --stuck-attempts attempts.
    #[arg(long)]
    pub stuck_for: Option<humantime::Duration>,
    /// Attempts that count as stuck with --stuck-for.
    #[arg(long, default_value_t = 5)]
    pub stuck_attempts: u32,
    /// Sort key.
    #[arg(long, value_enum, default_value_t = SortKey::Created)]
    pub sort: SortKey,
    /// Oldest first.
    #[arg(long)]
    pub asc: bool,
    /// Maximum rows (`list`: default 100). Bulk actions act on every match unless given.
    #[arg(long)]
    pub limit: Option<u32>,
    /// Rows to skip (`list` pagination).
    #[arg(long, default_value_t = 0)]
    pub offset: u32,
    /// Only sagas a step raised an alert on (any status, completed included): e.g. a duplicate
    /// Lumanu funding invoice that was paid. `show` prints the alert.
    #[arg(long)]
    pub alerts: bool,
    /// Only the saga one of whose steps returned this provider id (a transaction, payable,
    /// funding, intent, customer id... quoted in a support ticket); `show` lists them.
    #[arg(long = "ref", value_name = "ID")]
    pub reference: Option<String>,
    /// Only the child sagas this saga's fan-out steps started (`list` only; with --status,
    /// --limit, --offset), in step and item order.
    #[arg(long, value_name = "ID")]
    pub parent: Option<Uuid>,
}

/// Sort key of `list`.
#[derive(Debug, Clone, Copy, Default, ValueEnum)]
pub enum SortKey {
    /// Creation time.
    #[default]
    Created,
    /// Last change.
    Updated,
}

/// A status flag value: every [`ObservedStatus`], named as `list` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatusArg(pub ObservedStatus);

impl ValueEnum for StatusArg {
    fn value_variants<'a>() -> &'a [Self] {
        static ALL: std::sync::OnceLock<Vec<StatusArg>> = std::sync::OnceLock::new();
        ALL.get_or_init(|| ObservedStatus::ALL.iter().copied().map(StatusArg).collect())
    }

    fn to_possible_value(&self) -> Option<PossibleValue> {
        Some(PossibleValue::new(self.0.as_str()))
    }
}

impl FilterArgs {
    pub(crate) fn is_empty(&self) -> bool {
        self.statuses.is_empty()
            && self.workflow.is_none()
            && self.step.is_none()
            && self.provider.is_none()
            && self.key.is_none()
            && self.created_after.is_none()
            && self.created_before.is_none()
            && self.updated_after.is_none()
            && self.updated_before.is_none()
            && self.stuck_for.is_none()
            && !self.alerts
            && self.reference.is_none()
            && self.parent.is_none()
    }

    /// The store filter.
    pub fn to_filter(&self) -> Result<SagaFilter> {
        if self.parent.is_some() {
            anyhow::bail!("--parent works with `list` only (to stop a parent's children, cancel the parent: its unfinished children are cancelled)");
        }
        let statuses = self.statuses.iter().map(|s| s.0).collect();
        let stuck_since = self.stuck_for.map(|d| ago(d.into())).transpose()?;
        Ok(SagaFilter {
            statuses,
            workflow: self.workflow.clone(),
            step: self.step.clone(),
            provider: self.provider.clone(),
            key: self.key.clone(),
            created_after: self.created_after,
            created_before: self.created_before,
            updated_after: self.updated_after,
            updated_before: self.updated_before,
            stuck_since,
            stuck_attempts: Some(self.stuck_attempts),
            sort_by_updated: matches!(self.sort, SortKey::Updated),
            ascending: self.asc,
            limit: Some(i64::from(self.limit.unwrap_or(100))),
            offset: Some(i64::from(self.offset)),
            alerts: self.alerts,
            reference: self.reference.clone(),
        })
    }
}

fn ago(d: std::time::Duration) -> Result<DateTime<Utc>> {
    Ok(Utc::now() - chrono::Duration::from_std(d).context("duration too long")?)
}

/// A time flag: an RFC 3339 time, or a duration meaning that long ago (clap's parser: a bad
/// value is a usage error).
fn time_arg(s: &str) -> Result<DateTime<Utc>, String> {
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&Utc));
    }
    let d = humantime::parse_duration(s).map_err(|_| {
        format!("{s:?} is neither an RFC 3339 time (2026-11-26T10:00:00Z) nor a duration like 2h")
    })?;
    ago(d).map_err(|e| e.to_string())
}

/// Which sagas an action applies to.
#[derive(Debug, Args)]
pub struct ActionArgs {
    /// The saga; omit it to act on every saga matching the filter flags.
    pub id: Option<Uuid>,
    /// Why (required; recorded in history with who and when).
    #[arg(long)]
    pub reason: String,
    /// Change nothing: check each saga's preconditions and report those the action would
    /// refuse, with the reason.
    #[arg(long)]
    pub dry_run: bool,
    #[command(flatten)]
    pub filter: FilterArgs,
    /// Act on more than 10 sagas without asking (scripts); without it, a bulk action over
    /// 10 sagas asks on a terminal and is refused otherwise.
    #[arg(long)]
    pub yes: bool,
}

/// The actions that take a saga or a filter.
#[derive(Debug, Clone, Copy)]
pub enum Action {
    /// Run the current step now.
    Retry,
    /// Cancel (compensations run).
    Cancel,
    /// Resume a parked saga.
    Resume,
}

impl Action {
    pub(crate) fn verb(self) -> &'static str {
        match self {
            Action::Retry => "retry",
            Action::Cancel => "cancel",
            Action::Resume => "resume",
        }
    }
}

/// `events ...`.
#[derive(Debug, Subcommand)]
pub enum EventsCommand {
    /// Inbox events, newest first.
    List {
        /// Only events no saga consumed.
        #[arg(long)]
        unmatched: bool,
        /// Only events whose body could not be parsed.
        #[arg(long)]
        unparseable: bool,
        /// Only this provider.
        #[arg(long)]
        provider: Option<String>,
        /// Maximum rows.
        #[arg(long, default_value_t = 50)]
        limit: u32,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// One event with its body.
    Show {
        /// Inbox id.
        id: i64,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Match a stored event again against the waits that exist now.
    Replay {
        /// Inbox id.
        id: i64,
        /// Why (recorded in history).
        #[arg(long)]
        reason: String,
    },
}

/// Who runs the command: `PAYSAGA_OPERATOR`, else `cli:` and the OS user (history rows
/// record the OS user as well, see [`crate::operate_actions::os_user`]).
pub fn actor() -> String {
    std::env::var("PAYSAGA_OPERATOR")
        .ok()
        .filter(|a| !a.trim().is_empty())
        .unwrap_or_else(|| format!("cli:{}", crate::operate_actions::os_user()))
}

fn colour(status: ObservedStatus) -> &'static str {
    match status {
        ObservedStatus::Completed => "\x1b[32m",
        ObservedStatus::NeedsOperator => "\x1b[31m",
        ObservedStatus::Compensating
        | ObservedStatus::Compensated
        | ObservedStatus::Cancelled
        | ObservedStatus::Closed
        | ObservedStatus::Retrying => "\x1b[33m",
        ObservedStatus::Waiting => "\x1b[36m",
        ObservedStatus::Scheduled | ObservedStatus::Running => "",
    }
}

/// Colours on a terminal unless `NO_COLOR` is set (no-color.org).
pub(crate) fn status_cell(status: ObservedStatus, width: usize) -> String {
    let text = format!("{:<width$}", status.as_str());
    let c = colour(status);
    let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
    if std::io::stdout().is_terminal() && !no_color && !c.is_empty() {
        format!("{c}{text}\x1b[0m")
    } else {
        text
    }
}

/// `show`.
pub async fn show(
    engine: &Engine,
    id: Uuid,
    json: bool,
    reveal: Option<&crate::privacy::Reveal>,
) -> Result<()> {
    let view = engine
        .get(id)
        .await
        .with_context(|| format!("cannot show saga {id}"))?;
    let view = match reveal {
        Some(r) => {
            r.record(engine, &[id], if json { "show --json" } else { "show" })
                .await?;
            view
        }
        None => crate::privacy::redact_view(view),
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&view)?);
    } else {
        print_saga(&view);
        crate::children::print_tree(engine, id).await?;
    }
    Ok(())
}

/// The "why" line of `show`: why the saga is where it is and what moves it next (empty once
/// it ended). The console prints the same text.
pub fn why(v: &SagaView) -> String {
    let s = &v.saga;
    match (s.status, &s.wait, s.run_at) {
        _ if crate::operate_visibility::unrunnable_why(v).is_some() => {
            crate::operate_visibility::unrunnable_why(v).unwrap_or_default()
        }
        (SagaStatus::Waiting, Some(w), _) => format!(
            "waiting for {} {} with key {} until {} (polls the provider at {})",
            w.provider,
            w.event_types.join("/"),
            w.correlation_key,
            w.deadline.format("%Y-%m-%d %H:%M:%S"),
            w.poll_at.format("%Y-%m-%d %H:%M:%S")
        ),
        // A step held back by a provider's shared rate limit (`StepOutcome::Held`): no attempt.
        (SagaStatus::Scheduled | SagaStatus::Retrying, _, Some(at))
            if s.owner.is_none()
                && at > Utc::now()
                && s.last_error
                    .as_deref()
                    .is_some_and(|e| e.contains("waiting for provider capacity")) =>
        {
            format!(
                "waiting for provider capacity (the provider's rate limit shared by every worker; not an attempt); runs at {}",
                at.format("%Y-%m-%d %H:%M:%S%.3f")
            )
        }
        (SagaStatus::Retrying | SagaStatus::Compensating, _, Some(at))
            if s.owner.is_none() && s.attempt > 0 && at > Utc::now() =>
        {
            format!(
                "backing off after a transient failure; next attempt at {}",
                at.format("%Y-%m-%d %H:%M:%S%.3f")
            )
        }
        (SagaStatus::NeedsOperator, _, _) => {
            "parked for an operator (see error): close, reset, resume or skip".to_string()
        }
        (status, _, _) if !status.is_final() && s.owner.is_some() => {
            "running: a worker holds it and is running its current step (see lease)".to_string()
        }
        (status, _, Some(_)) if !status.is_final() => "runnable: a worker picks it up".to_string(),
        _ => String::new(),
    }
}

fn print_saga(v: &SagaView) {
    let s = &v.saga;
    println!("saga      {}", s.id);
    println!("workflow  {} v{}", s.workflow, s.version);
    match s.closed_outcome {
        Some(outcome) => println!(
            "status    {} (outcome declared by the operator: {outcome})",
            status_cell(s.observed_status(), 0)
        ),
        None => println!("status    {}", status_cell(s.observed_status(), 0)),
    }
    if let Some(key) = &s.idempotency_key {
        println!("key       {key}");
    }
    if let Some(step) = &v.current_step {
        println!(
            "step      {step} (#{} of {}, {} attempt(s) made)",
            s.step_index + 1,
            v.steps.len(),
            s.attempt
        );
    }
    let why = why(v);
    if !why.is_empty() {
        println!("why       {why}");
    }
    if let Some(line) = crate::operate_visibility::concurrency_line(v) {
        println!("{line}");
    }
    // What the waiting step says it waits for (e.g. Lean's manual authorisation: by whom).
    if let Some(description) = s
        .wait
        .as_ref()
        .and_then(|w| w.state.get("description"))
        .and_then(Value::as_str)
    {
        println!("awaits    {description}");
    }
    if let Some(owner) = s.owner {
        println!(
            "lease     held by worker {owner} (fencing token {})",
            s.fence
        );
    }
    if let Some(e) = &s.last_error {
        println!("error     {e}");
    }
    if let Some(req) = &s.close_requested {
        println!(
            "closing   {} asked at {} to close it as {} once its completed steps are undone (reason: {}); it ends closed when they are",
            req.actor,
            req.requested_at.format("%Y-%m-%d %H:%M:%S"),
            req.outcome,
            req.reason
        );
    }
    crate::operate_visibility::print_details(v);
    for h in v
        .history
        .iter()
        .filter(|h| h.kind == paysaga_core::HistoryKind::SagaAlert)
    {
        let field = |k: &str| {
            h.detail
                .as_ref()
                .and_then(|d| d.get(k))
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned()
        };
        println!(
            "ALERT     {} (step {}, {}): {}",
            field("alert"),
            h.step.as_deref().unwrap_or("-"),
            h.at.format("%Y-%m-%d %H:%M:%S"),
            field("message")
        );
    }
    println!("input     {}", s.input);
    println!("outputs   {}", s.outputs);
    println!("history");
    let mut prev: Option<DateTime<Utc>> = None;
    for h in &v.history {
        let delta = prev.map(|p| {
            format!(
                "+{:.1}ms",
                (h.at - p).num_microseconds().unwrap_or(0) as f64 / 1000.0
            )
        });
        prev = Some(h.at);
        let who = h
            .actor
            .clone()
            .or(h.worker.map(|w| format!("worker {}", &w.to_string()[..8])))
            .unwrap_or_default();
        let reason = h
            .detail
            .as_ref()
            .and_then(|d| d.get("reason"))
            .and_then(Value::as_str);
        println!(
            "  {} {:>10}  {:<22} {:<18} {:<10} {:<16} {}{}",
            h.at.format("%Y-%m-%d %H:%M:%S%.3f"),
            delta.unwrap_or_default(),
            h.kind.as_str(),
            h.step.as_deref().unwrap_or("-"),
            h.attempt
                .map(|a| format!("attempt {a}"))
                .unwrap_or_default(),
            who,
            h.error.as_deref().unwrap_or(""),
            reason.map(|r| format!("reason: {r}")).unwrap_or_default()
        );
    }
}

/// `events ...`.
pub async fn events(engine: &Engine, cmd: EventsCommand) -> Result<()> {
    match cmd {
        EventsCommand::List {
            unmatched,
            unparseable,
            provider,
            limit,
            json,
        } => {
            let events = engine
                .events(&EventFilter {
                    unmatched,
                    unparseable,
                    provider,
                    limit: Some(i64::from(limit)),
                })
                .await?;
            if json {
                let events: Vec<_> = events
                    .into_iter()
                    .map(crate::privacy::redact_event)
                    .collect();
                println!("{}", serde_json::to_string_pretty(&events)?);
                return Ok(());
            }
            println!(
                "{:>8}  {:<8} {:<36} {:<32} {:<32} {:<36} RECEIVED",
                "ID", "PROVIDER", "EVENT ID", "TYPE", "KEY", "CONSUMED BY"
            );
            for e in events {
                println!(
                    "{:>8}  {:<8} {:<36} {:<32} {:<32} {:<36} {}",
                    e.id,
                    e.provider,
                    e.event_id,
                    e.event_type
                        .as_deref()
                        .unwrap_or(if e.parse_error.is_some() {
                            "(unparseable)"
                        } else {
                            "-"
                        }),
                    e.correlation_key.as_deref().unwrap_or("-"),
                    e.consumed_by
                        .map(|s| s.to_string())
                        .unwrap_or_else(|| "-".into()),
                    e.received_at.format("%Y-%m-%d %H:%M:%S")
                );
            }
        }
        EventsCommand::Show { id, json } => {
            let e = engine
                .store()
                .event(id)
                .await?
                .ok_or_else(|| crate::exit::NotFound(format!("inbox event {id} not found")))?;
            if json {
                let e = crate::privacy::redact_event(e);
                println!("{}", serde_json::to_string_pretty(&e)?);
            } else {
                println!("event     {} ({} {})", e.id, e.provider, e.event_id);
                println!("type      {}", e.event_type.as_deref().unwrap_or("-"));
                println!("key       {}", e.correlation_key.as_deref().unwrap_or("-"));
                println!("received  {}", e.received_at);
                println!(
                    "consumed  {}",
                    e.consumed_by
                        .map(|s| format!("by saga {s} at {:?}", e.consumed_at))
                        .unwrap_or_else(|| "no".into())
                );
                if let Some(err) = &e.parse_error {
                    println!("unparseable: {err}");
                    if let Some(raw) = &e.raw_body {
                        println!(
                            "raw body ({} bytes): {}",
                            raw.len(),
                            String::from_utf8_lossy(raw)
                        );
                    }
                }
                if let Some(p) = &e.payload {
                    println!("payload   {}", serde_json::to_string_pretty(&redact(p))?);
                }
            }
        }
        EventsCommand::Replay { id, reason } => {
            let d = engine.replay_event(id, None, &actor(), &reason).await?;
            match d.matched_saga {
                Some(s) => println!("event {id} delivered to saga {s}"),
                None => println!("event {id} matched no wait"),
            }
        }
    }
    Ok(())
}
