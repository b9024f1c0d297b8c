//! `retry`, `cancel`, `resume` on one saga or on every saga a filter matches: the matches
//! are read first (paged by creation time, so acting cannot skip any), the total is printed,
//! a large action is confirmed, and progress is reported as it goes. `--dry-run` checks each
//! saga with the same pure transitions the action uses and reports those it would refuse.

use std::collections::HashSet;
use std::io::{BufRead, IsTerminal, Write};

use anyhow::{bail, Context, Result};
use paysaga_core::{operator, StepTraits};
use paysaga_runtime::Engine;
use paysaga_store::SagaRecord;
use uuid::Uuid;

use crate::exit::Refused;
use crate::listing::StepNames;
use crate::operate::{actor, Action, ActionArgs, FilterArgs};

/// Sagas read per page of the filter.
const PAGE: i64 = 100;
/// Above this many sagas a bulk action asks for confirmation (or `--yes`).
pub const CONFIRM_ABOVE: usize = 10;
/// Progress is reported every this many sagas.
const PROGRESS_EVERY: usize = 50;

/// Every saga matching the filter (at most `--limit` when given), oldest first. Paged by
/// creation time (a keyset: `created_at >=` the last one read, duplicates dropped), never by
/// offset, so sagas changing status meanwhile shift nothing.
pub async fn matching(engine: &Engine, args: &FilterArgs) -> Result<Vec<Uuid>> {
    let mut filter = args.to_filter()?;
    filter.sort_by_updated = false;
    filter.ascending = true;
    filter.offset = Some(0);
    let cap = args.limit.map(|l| l as usize);
    let mut page = PAGE;
    let mut seen = HashSet::new();
    let mut ids = Vec::new();
    loop {
        filter.limit = Some(page);
        let rows = engine
            .list(&filter)
            .await
            .context("cannot list the sagas matching the filter")?;
        let full = rows.len() as i64 == page;
        let last = rows.last().map(|r| r.created_at);
        let before = ids.len();
        for r in rows {
            if seen.insert(r.id) {
                ids.push(r.id);
            }
        }
        if cap.is_some_and(|c| ids.len() >= c) || !full {
            break;
        }
        if ids.len() == before {
            // A whole page created at one instant: read a larger page from there.
            page *= 2;
            continue;
        }
        filter.created_after = last;
    }
    if let Some(c) = cap {
        ids.truncate(c);
    }
    Ok(ids)
}

/// Whether the action would be accepted now: the pure transition the action applies (for
/// `cancel`, the store's rule: a final saga cannot be cancelled).
async fn check(
    engine: &Engine,
    action: Action,
    id: Uuid,
    reason: &str,
) -> Result<(SagaRecord, Result<(), String>)> {
    let saga = engine
        .store()
        .saga(id)
        .await?
        .ok_or(paysaga_runtime::Error::SagaNotFound(id))?;
    let record = engine
        .store()
        .definition(saga.definition_id)
        .await
        .with_context(|| format!("cannot read the definition of saga {id}"))?;
    // Operator transitions need step names only (as the engine's own check).
    let def = record
        .definition
        .compile(&|_| Some(StepTraits::default()), &[])
        .with_context(|| format!("cannot compile the definition of saga {id}"))?;
    let now = chrono::Utc::now();
    let state = saga.state();
    let verdict = match action {
        Action::Retry => operator::retry_now(&state, &def, reason, now)
            .map(drop)
            .map_err(|r| r.to_string()),
        // The phase (forward or compensation) changes where it resumes, not whether.
        Action::Resume => operator::resume(&state, &def, false, reason, now)
            .map(drop)
            .map_err(|r| r.to_string()),
        Action::Cancel if saga.status.is_final() => Err(format!(
            "saga {id} is {} and cannot be cancelled",
            saga.status
        )),
        Action::Cancel => Ok(()),
    };
    Ok((saga, verdict))
}

/// Asks on the terminal; refused without a terminal.
fn confirm(action: Action, total: usize) -> Result<()> {
    let verb = action.verb();
    if !std::io::stdin().is_terminal() {
        return Err(Refused(format!(
            "refusing to {verb} {total} sagas without confirmation: stdin is not a terminal. \
             Pass --yes to confirm, narrow the filter, or see first with --dry-run"
        ))
        .into());
    }
    eprint!("{verb} {total} sagas? Type yes to go on: ");
    std::io::stderr().flush()?;
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer)?;
    if matches!(answer.trim().to_ascii_lowercase().as_str(), "y" | "yes") {
        Ok(())
    } else {
        Err(Refused(format!("not confirmed: no saga was asked to {verb}")).into())
    }
}

/// `retry`, `cancel`, `resume`: one saga, or every saga matching the filter.
pub async fn act(engine: &Engine, action: Action, args: &ActionArgs) -> Result<()> {
    let verb = action.verb();
    if args.reason.trim().is_empty() {
        bail!("--reason must say why (it is recorded in the saga's history)");
    }
    let (targets, bulk) = match args.id {
        Some(id) => {
            if !args.filter.is_empty() {
                bail!("give either a saga id or filter flags, not both");
            }
            (vec![id], false)
        }
        None => {
            if args.filter.is_empty() {
                bail!("bulk {verb} needs at least one filter (e.g. --status, --workflow, --stuck-for); refusing to act on every saga");
            }
            (matching(engine, &args.filter).await?, true)
        }
    };
    let total = targets.len();
    if bulk {
        println!("{total} saga(s) match");
        if total == 0 {
            return Ok(());
        }
        if !args.dry_run && total > CONFIRM_ABOVE && !args.yes {
            confirm(action, total)?;
        }
    }
    let who = actor();
    let mut names = StepNames::default();
    let mut refused = 0;
    for (done, id) in targets.iter().enumerate() {
        if args.dry_run {
            let (saga, verdict) = check(engine, action, *id, &args.reason).await?;
            match verdict {
                Ok(()) => println!(
                    "would {verb} saga {id} ({} {}, step {})",
                    saga.workflow,
                    saga.observed_status(),
                    names
                        .current(engine, &saga)
                        .await?
                        .unwrap_or_else(|| "-".into())
                ),
                Err(why) => {
                    refused += 1;
                    println!("would refuse saga {id}: {why}");
                }
            }
        } else {
            let result = match action {
                Action::Retry => engine.retry_now(*id, &who, &args.reason).await,
                Action::Cancel => engine.cancel(*id, &who, &args.reason).await,
                Action::Resume => engine.resume(*id, &who, &args.reason).await,
            };
            match result {
                Ok(s) => println!("{verb}: saga {} is now {}", s.id, s.observed_status()),
                Err(e) if !bulk => {
                    return Err(anyhow::Error::from(e).context(format!("cannot {verb} saga {id}")))
                }
                Err(e) => {
                    let e = anyhow::Error::from(e);
                    if crate::exit::code(&e) != crate::exit::REFUSED {
                        // Not this saga's state (e.g. the database went away): stop here.
                        return Err(e.context(format!(
                            "{verb} stopped at saga {id} after {done} of {total} saga(s); \
                             the rest were not acted on (run the command again)"
                        )));
                    }
                    refused += 1;
                    eprintln!("{verb}: saga {id}: {e}");
                }
            }
        }
        let done = done + 1;
        if bulk && (done % PROGRESS_EVERY == 0 || done == total) {
            eprintln!("{verb}: {done}/{total} done, {refused} refused");
        }
    }
    if args.dry_run {
        println!("dry run: {total} saga(s) matched, {refused} would be refused, nothing changed");
        return Ok(());
    }
    if refused > 0 {
        return Err(Refused(format!(
            "{refused} of {total} saga(s) refused the {verb} (see above); the others were acted on"
        ))
        .into());
    }
    Ok(())
}
