//! Child sagas in the operator commands: `list --parent ID`, and the tree `show` prints
//! (the parent of a child; a parent's children counted by status per fan-out step, and the
//! children that need an operator).

use anyhow::{Context, Result};
use paysaga_core::ObservedStatus;
use paysaga_runtime::Engine;
use paysaga_store::SagaRecord;
use uuid::Uuid;

use crate::operate::FilterArgs;

/// At most this many children needing an operator are printed by `show`.
const PARKED_SHOWN: i64 = 20;

/// The children of `parent` matching `list`'s status, limit and offset flags.
pub async fn list_children(
    engine: &Engine,
    parent: Uuid,
    filter: &FilterArgs,
) -> Result<Vec<SagaRecord>> {
    let statuses: Vec<ObservedStatus> = filter.statuses.iter().map(|s| s.0).collect();
    engine
        .store()
        .list_children(
            parent,
            &statuses,
            i64::from(filter.limit.unwrap_or(100)),
            i64::from(filter.offset),
        )
        .await
        .with_context(|| format!("cannot list the children of saga {parent}"))
}

/// `show`'s tree lines: `parent` for a child, `children` per fan-out step for a parent.
pub async fn print_tree(engine: &Engine, id: Uuid) -> Result<()> {
    let store = engine.store();
    if let Some(link) = store
        .parent_of(id)
        .await
        .with_context(|| format!("cannot read the parent of saga {id}"))?
    {
        println!(
            "parent    {} (fan-out step {}, element {} with key {})",
            link.parent, link.step, link.index, link.key
        );
    }
    let counts = store
        .child_counts(id)
        .await
        .with_context(|| format!("cannot count the children of saga {id}"))?;
    if counts.is_empty() {
        return Ok(());
    }
    let mut steps: Vec<&str> = counts.iter().map(|c| c.step.as_str()).collect();
    steps.dedup();
    for step in steps {
        let of_step: Vec<_> = counts.iter().filter(|c| c.step == step).collect();
        let total: u64 = of_step.iter().map(|c| c.count).sum();
        let by_status: Vec<String> = ObservedStatus::ALL
            .iter()
            .filter_map(|st| {
                of_step
                    .iter()
                    .find(|c| c.status == *st)
                    .map(|c| format!("{} {}", st.as_str(), c.count))
            })
            .collect();
        let progress = store
            .fan_out_progress(id, step)
            .await
            .with_context(|| format!("cannot read the fan-out {step} of saga {id}"))?;
        let of_list = progress
            .map(|p| format!(" of {} element(s)", p.total))
            .unwrap_or_default();
        println!(
            "children  step {step}: {total} started{of_list} ({}); `paysaga list --parent {id}`",
            by_status.join(", ")
        );
    }
    let parked = store
        .list_children(id, &[ObservedStatus::NeedsOperator], PARKED_SHOWN, 0)
        .await
        .with_context(|| format!("cannot list the parked children of saga {id}"))?;
    for child in &parked {
        let link = store.parent_of(child.id).await?;
        println!(
            "  needs operator: {} (key {}): {}",
            child.id,
            link.map(|l| l.key).unwrap_or_default(),
            child
                .last_error
                .as_deref()
                .unwrap_or("")
                .chars()
                .take(120)
                .collect::<String>()
        );
    }
    Ok(())
}
