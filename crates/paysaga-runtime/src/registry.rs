//! The step kinds a process knows, by name.

use std::collections::BTreeMap;
use std::sync::Arc;

use paysaga_core::{StepKind, StepTraits};

/// Step kinds registered in code, by their stable names.
#[derive(Debug, Clone, Default)]
pub struct Registry {
    kinds: BTreeMap<String, Arc<dyn StepKind>>,
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers a kind under [`StepKind::name`]; a later kind with the same name replaces it.
    pub fn register(&mut self, kind: impl StepKind) -> &mut Self {
        self.kinds.insert(kind.name().to_string(), Arc::new(kind));
        self
    }

    /// Registers a shared kind.
    pub fn register_arc(&mut self, kind: Arc<dyn StepKind>) -> &mut Self {
        self.kinds.insert(kind.name().to_string(), kind);
        self
    }

    /// The kind registered under `name`.
    pub fn get(&self, name: &str) -> Option<&Arc<dyn StepKind>> {
        self.kinds.get(name)
    }

    /// What the kind registered under `name` says about undoing its effect.
    pub fn traits(&self, name: &str) -> Option<StepTraits> {
        self.kinds.get(name).map(|k| k.traits())
    }

    /// Whether `name` is registered.
    pub fn contains(&self, name: &str) -> bool {
        self.kinds.contains_key(name)
    }

    /// Registered names, sorted.
    pub fn names(&self) -> Vec<String> {
        self.kinds.keys().cloned().collect()
    }
}
