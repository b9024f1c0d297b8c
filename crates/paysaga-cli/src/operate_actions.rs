//! Operator actions that end or re-run a saga (`close`, `reset`) and the audit of every
//! operator action (`audit`), with who ran them: the operator name (`PAYSAGA_OPERATOR`) and
//! the OS user of the process.

use anyhow::{Context, Result};
use chrono::{DateTime, Utc};
use clap::{Args, ValueEnum};
use paysaga_core::{ClosedOutcome, ObservedStatus};
use paysaga_runtime::{CloseSaga, Engine, Expected, ResetSaga};
use paysaga_store::AuditFilter;
use serde_json::{json, Value};
use uuid::Uuid;

/// The outcome an operator declares with `close`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutcomeArg {
    /// The payee got the money (confirmed with the provider).
    Paid,
    /// No money reached the payee.
    NotPaid,
}

impl From<OutcomeArg> for ClosedOutcome {
    fn from(o: OutcomeArg) -> Self {
        match o {
            OutcomeArg::Paid => ClosedOutcome::Paid,
            OutcomeArg::NotPaid => ClosedOutcome::NotPaid,
        }
    }
}

/// Where the operator saw the saga; the action is refused if it moved since.
#[derive(Debug, Args, Clone, Default)]
pub struct ExpectArgs {
    /// Act only if the saga still has this status (as `show` prints it, e.g. needs_operator).
    #[arg(long, value_parser = parse_status)]
    pub expect_status: Option<ObservedStatus>,
    /// Act only if the saga is still at this step.
    #[arg(long)]
    pub expect_step: Option<String>,
}

fn parse_status(s: &str) -> Result<ObservedStatus, String> {
    s.parse()
        .map_err(|e: paysaga_core::saga::UnknownStatus| e.to_string())
}

impl ExpectArgs {
    fn expected(&self) -> Expected {
        Expected {
            status: self.expect_status,
            step: self.expect_step.clone(),
        }
    }
}

/// `paysaga close`.
#[derive(Debug, Args)]
pub struct CloseArgs {
    /// The saga.
    pub id: Uuid,
    /// What you checked at the provider: did the payee get the money?
    #[arg(long, value_enum)]
    pub outcome: OutcomeArg,
    /// Why (required; recorded in history with who and when).
    #[arg(long)]
    pub reason: String,
    /// Undo the completed steps first: workers run their compensations in reverse (status
    /// compensating, with retries) and the saga then ends closed with the outcome. Refused
    /// with --outcome paid after an irreversible step (the payout) acted: it cannot be undone
    /// and the steps it relied on must stay.
    #[arg(long)]
    pub compensate: bool,
    #[command(flatten)]
    pub expect: ExpectArgs,
    /// With --compensate --outcome not-paid: you checked at the provider that the irreversible
    /// steps that acted (or may have) did not pay, or that the money came back; required
    /// when one of them may have acted (it cannot be undone; the steps before it are).
    #[arg(long, requires = "compensate")]
    pub confirm_not_sent: bool,
}

/// `paysaga reset`.
#[derive(Debug, Args)]
pub struct ResetArgs {
    /// The saga.
    pub id: Uuid,
    /// The step to run again from (the current step or an earlier one).
    #[arg(long)]
    pub to_step: String,
    /// A JSON merge patch (RFC 7396) for the saga's input, e.g.
    /// '{"payout": {"account_number": "0123456789"}}'; validated as at start.
    #[arg(long)]
    pub input_patch: Option<String>,
    /// Why (required; recorded in history with who and when).
    #[arg(long)]
    pub reason: String,
    /// You checked at the provider that the irreversible steps to run again did not send
    /// money (or that it failed and came back): required when one of them may have acted.
    #[arg(long)]
    pub confirm_not_sent: bool,
    #[command(flatten)]
    pub expect: ExpectArgs,
}

/// `paysaga audit`.
#[derive(Debug, Args)]
pub struct AuditArgs {
    /// At or after: RFC 3339 time, or a duration meaning "ago" (e.g. 24h).
    #[arg(long)]
    pub since: Option<String>,
    /// Only this actor (e.g. ops:alice).
    #[arg(long)]
    pub actor: Option<String>,
    /// Maximum rows (newest first).
    #[arg(long, default_value_t = 100)]
    pub limit: u32,
    /// JSON output.
    #[arg(long)]
    pub json: bool,
}

/// The OS user running the command: `$USER`, else `$LOGNAME`, else `uid:N` of the process.
pub fn os_user() -> String {
    ["USER", "LOGNAME"]
        .iter()
        .find_map(|k| std::env::var(k).ok().filter(|v| !v.is_empty()))
        .or_else(|| uid().map(|u| format!("uid:{u}")))
        .unwrap_or_else(|| "unknown".to_string())
}

#[cfg(unix)]
fn uid() -> Option<u32> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").ok().map(|m| m.uid())
}

#[cfg(not(unix))]
fn uid() -> Option<u32> {
    None
}

/// What every operator history row of this process records besides the actor.
pub fn operator_detail() -> serde_json::Map<String, Value> {
    let mut m = serde_json::Map::new();
    m.insert("os_user".into(), json!(os_user()));
    if let Some(u) = uid() {
        m.insert("uid".into(), json!(u));
    }
    m
}

/// `close`.
pub async fn close(engine: &Engine, args: &CloseArgs) -> Result<()> {
    let outcome: ClosedOutcome = args.outcome.into();
    let saga = engine
        .close(
            args.id,
            &CloseSaga {
                outcome,
                compensate: args.compensate,
                expected: args.expect.expected(),
                confirm_not_sent: args.confirm_not_sent,
            },
            &crate::operate::actor(),
            &args.reason,
        )
        .await
        .with_context(|| format!("cannot close saga {}", args.id))?;
    if saga.status == paysaga_core::SagaStatus::Closed {
        let undone = if args.compensate {
            "there was nothing to undo"
        } else {
            "nothing was undone"
        };
        println!(
            "closed: saga {} is now {} (outcome {outcome}); {undone}",
            saga.id, saga.status
        );
    } else {
        println!(
            "closing: saga {} is now {}: workers undo its completed steps in reverse, then it ends closed (outcome {outcome}); follow it with `paysaga show {}`",
            saga.id, saga.status, saga.id
        );
    }
    Ok(())
}

/// `reset`.
pub async fn reset(engine: &Engine, args: &ResetArgs) -> Result<()> {
    let input_patch = args
        .input_patch
        .as_deref()
        .map(serde_json::from_str::<Value>)
        .transpose()
        .context("--input-patch is not valid JSON")?;
    let saga = engine
        .reset(
            args.id,
            &ResetSaga {
                step: args.to_step.clone(),
                input_patch,
                confirm_not_sent: args.confirm_not_sent,
                expected: args.expect.expected(),
            },
            &crate::operate::actor(),
            &args.reason,
        )
        .await
        .with_context(|| format!("cannot reset saga {} to step {}", args.id, args.to_step))?;
    println!(
        "reset: saga {} is now {} at step {} (step #{}); a worker runs it again",
        saga.id,
        saga.status,
        args.to_step,
        saga.step_index + 1
    );
    Ok(())
}

fn time_arg(s: &str) -> Result<DateTime<Utc>> {
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&Utc));
    }
    let d = humantime::parse_duration(s)
        .with_context(|| format!("{s:?} is neither an RFC 3339 time nor a duration like 24h"))?;
    Ok(Utc::now() - chrono::Duration::from_std(d).context("duration too long")?)
}

/// `audit`.
pub async fn audit(engine: &Engine, args: &AuditArgs) -> Result<()> {
    let rows = engine
        .audit(&AuditFilter {
            since: args.since.as_deref().map(time_arg).transpose()?,
            actor: args.actor.clone(),
            limit: Some(i64::from(args.limit)),
        })
        .await
        .context("cannot read the operator history")?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    println!(
        "{:<23}  {:<16} {:<10} {:<16} {:<36} {:<18} {:<16} REASON / REFUSAL",
        "AT", "ACTOR", "OS USER", "ACTION", "SAGA", "WORKFLOW", "STEP"
    );
    // Oldest first, as a log reads.
    for r in rows.iter().rev() {
        let field = |k: &str| {
            r.entry
                .detail
                .as_ref()
                .and_then(|d| d.get(k))
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string()
        };
        let action = match r.entry.kind {
            paysaga_core::HistoryKind::OperatorRefused => format!("refused {}", field("action")),
            kind => kind.as_str().to_string(),
        };
        let mut text = field("reason");
        if let Some(outcome) = r.entry.detail.as_ref().and_then(|d| d.get("outcome")) {
            text = format!("{text} (outcome {})", outcome.as_str().unwrap_or_default());
        }
        if let Some(e) = &r.entry.error {
            text = format!("{text} -- {e}");
        }
        println!(
            "{:<23}  {:<16} {:<10} {:<16} {:<36} {:<18} {:<16} {}",
            r.entry.at.format("%Y-%m-%d %H:%M:%S%.3f"),
            r.entry.actor.as_deref().unwrap_or("-"),
            field("os_user"),
            action,
            r.saga_id,
            r.workflow,
            r.entry.step.as_deref().unwrap_or("-"),
            text
        );
    }
    eprintln!("{} operator action(s)", rows.len());
    Ok(())
}
