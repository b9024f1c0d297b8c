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

/// One fan-out step of a parent: its children counted by observed status.
#[derive(Debug, Clone)]
pub struct FanOutTree {
    /// The fan-out step.
    pub step: String,
    /// Children started so far.
    pub started: u64,
    /// Elements in the list (once the step has read it).
    pub total: Option<u64>,
    /// Children per observed status, in the vocabulary's order (only those present).
    pub by_status: Vec<(ObservedStatus, u64)>,
}

/// A child that needs an operator, with its element's key and the start of its error.
#[derive(Debug, Clone)]
pub struct ParkedChild {
    /// The child saga.
    pub id: Uuid,
    /// Its element's key.
    pub key: String,
    /// Its last error, cut to 120 characters (ending in `…` when cut: `show ID` has it whole).
    pub error: String,
}

/// A saga's place in a campaign: its parent (for a child), its children per fan-out step and
/// the children that need an operator (at most 20): what `show` prints and the console draws.
#[derive(Debug, Clone, Default)]
pub struct Tree {
    /// The parent, for a child saga.
    pub parent: Option<paysaga_store::ParentLink>,
    /// The fan-out steps of a parent.
    pub fan_outs: Vec<FanOutTree>,
    /// Children needing an operator.
    pub parked: Vec<ParkedChild>,
}

impl Tree {
    /// Neither a child nor a parent.
    pub fn is_empty(&self) -> bool {
        self.parent.is_none() && self.fan_outs.is_empty()
    }
}

/// Reads saga `id`'s tree.
pub async fn tree(engine: &Engine, id: Uuid) -> Result<Tree> {
    let store = engine.store();
    let parent = store
        .parent_of(id)
        .await
        .with_context(|| format!("cannot read the parent of saga {id}"))?;
    let counts = store
        .child_counts(id)
        .await
        .with_context(|| format!("cannot count the children of saga {id}"))?;
    let mut tree = Tree {
        parent,
        ..Tree::default()
    };
    if counts.is_empty() {
        return Ok(tree);
    }
    let mut steps: Vec<&str> = counts.iter().map(|c| c.step.as_str()).collect();
    steps.dedup();
    for step in steps {
        let of_step: Vec<_> = counts.iter().filter(|c| c.step == step).collect();
        let by_status = ObservedStatus::ALL
            .iter()
            .filter_map(|st| {
                of_step
                    .iter()
                    .find(|c| c.status == *st)
                    .map(|c| (*st, c.count))
            })
            .collect();
        let progress = store
            .fan_out_progress(id, step)
            .await
            .with_context(|| format!("cannot read the fan-out {step} of saga {id}"))?;
        tree.fan_outs.push(FanOutTree {
            step: step.to_string(),
            started: of_step.iter().map(|c| c.count).sum(),
            total: progress.map(|p| p.total),
            by_status,
        });
    }
    let parked = store
        .list_children(id, &[ObservedStatus::NeedsOperator], PARKED_SHOWN, 0)
        .await
        .with_context(|| format!("cannot list the parked children of saga {id}"))?;
    for child in &parked {
        let link = store.parent_of(child.id).await?;
        tree.parked.push(ParkedChild {
            id: child.id,
            key: link.map(|l| l.key).unwrap_or_default(),
            error: cut(child.last_error.as_deref().unwrap_or(""), 120),
        });
    }
    Ok(tree)
}

/// `show`'s tree lines: `parent` for a child, `children` per fan-out step for a parent.
pub async fn print_tree(engine: &Engine, id: Uuid) -> Result<()> {
    let tree = tree(engine, id).await?;
    if let Some(link) = &tree.parent {
        println!(
            "parent    {} (fan-out step {}, element {} with key {})",
            link.parent, link.step, link.index, link.key
        );
    }
    for f in &tree.fan_outs {
        let by_status: Vec<String> = f
            .by_status
            .iter()
            .map(|(st, n)| format!("{} {n}", st.as_str()))
            .collect();
        let of_list = f
            .total
            .map(|t| format!(" of {t} element(s)"))
            .unwrap_or_default();
        println!(
            "children  step {}: {} started{of_list} ({}); `paysaga list --parent {id}`",
            f.step,
            f.started,
            by_status.join(", ")
        );
    }
    for child in &tree.parked {
        println!(
            "  needs operator: {} (key {}): {}",
            child.id, child.key, child.error
        );
    }
    Ok(())
}

/// `text` cut to `max` characters, with `…` at the end when something was cut.
fn cut(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::cut;

    #[test]
    fn a_cut_error_says_it_was_cut() {
        assert_eq!(cut("short", 120), "short");
        assert_eq!(cut("abcdef", 3), "abc…");
        assert_eq!(cut("ééé", 3), "ééé");
    }
}
