//! # paysaga-core
//!
//! The pure model of paysaga: workflow definitions (data), the step-kind trait, retry
//! policies and the saga state machine. Nothing here does I/O; the store persists what the
//! state machine decides and the runtime runs the step kinds.
//!
//! ## Glossary
//! - **saga**: one run of a workflow definition for one input (one payout).
//! - **definition**: a named, versioned list of steps ([`Definition`]); sagas pin the version
//!   they started on.
//! - **step kind**: Rust code registered under a stable name ([`StepKind`]); a step names a kind.
//! - **attempt**: one run of a step; transient failures lead to another attempt later.
//! - **wait**: a step waiting for an event (with a deadline and a polling fallback).
//! - **event**: a provider webhook (or an operator's manual event) stored in the inbox.
//! - **compensation**: undoing a completed step's effect after a later step failed.
//! - **transition**: what the state machine decides after a run ([`Transition`]); the store
//!   applies it in one transaction.
//! - **typed step kind**: a [`Step`] names Rust types for its parameters and output and is
//!   registered as [`Typed`]`(step)`; its [`KindSchema`] is derived from them (see [`typed`]).
//!
//! ## Example
//! ```
//! use paysaga_core::{Definition, SagaStatus, StepTraits};
//!
//! let def = Definition::from_toml(r#"
//!     name = "noop"
//!     version = 1
//!     [[steps]]
//!     name = "first"
//!     kind = "noop.sleep"
//!     params = { delay_ms = "$.input.delay_ms" }
//! "#).unwrap();
//! let compiled = def.compile(&|kind| (kind == "noop.sleep").then(StepTraits::default), &["noop.sleep".into()]).unwrap();
//! let scope = serde_json::json!({ "input": { "delay_ms": 5 } });
//! assert_eq!(compiled.steps[0].params.resolve(&scope).unwrap(), serde_json::json!({ "delay_ms": 5 }));
//! assert!(SagaStatus::Completed.is_final());
//! ```

#![warn(missing_docs)]

pub mod concurrency;
pub mod condition;
pub mod definition;
pub mod document;
pub mod fan_out;
pub mod operator;
pub mod retry;
pub mod saga;
pub mod schema;
pub mod step;
pub mod typed;

pub use concurrency::Concurrency;
pub use condition::{CompiledCondition, Condition, Verdict};
pub use definition::FanOut;
pub use definition::{
    CompiledDefinition, CompiledStep, Definition, DefinitionBuilder, DefinitionError, Params,
    StepDef,
};
pub use document::{
    sha256_hex, BadDocumentId, Document, DocumentError, DocumentId, DocumentSource,
    InMemoryDocuments,
};
pub use fan_out::{child_idempotency_key, CompiledFanOut, FanOutPlan, FanOutProgress};
pub use retry::{Attempts, RetryDecision, RetryPolicy};
pub use saga::alert_entries;
pub use saga::unstorable;
pub use saga::CloseRequest;
pub use saga::{
    after_compensation, after_step, next_run, ActiveWait, ClosedOutcome, HistoryEntry, HistoryKind,
    NextRun, ObservedStatus, SagaState, SagaStatus, StepTraits, Transition,
};
pub use schema::{FieldSpec, FieldType, KindSchema};
pub use step::output_references;
pub use step::ALERTS_FIELD;
pub use step::{
    alert, compensation_key, idempotency_key, EffectGuard, EffectPermit, Event, StepContext,
    StepKind, StepOutcome, Unguarded, WaitSpec, Wake,
};
pub use typed::{from_params, Step, Typed};
