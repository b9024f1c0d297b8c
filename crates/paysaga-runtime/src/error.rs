//! Runtime errors: what failed, for which workflow/saga/step, and what to do.

use uuid::Uuid;

/// Errors of the engine handle and the worker.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The store failed (database unreachable, lease lost, conflicts...).
    #[error(transparent)]
    Store(#[from] paysaga_store::Error),
    /// A definition was refused.
    #[error("definition refused: {0}")]
    Definition(#[from] paysaga_core::DefinitionError),
    /// No such workflow (or version) has been submitted.
    #[error("unknown workflow {workflow}{}: submit its definition first (`paysaga definitions submit FILE`)", .version.map(|v| format!(" version {v}")).unwrap_or_default())]
    UnknownWorkflow {
        /// Name.
        workflow: String,
        /// Version asked for.
        version: Option<u32>,
    },
    /// The saga input is invalid; nothing was stored.
    #[error("invalid input for workflow {workflow}, step {step}: {reason}")]
    InvalidInput {
        /// Workflow.
        workflow: String,
        /// The step whose parameters are wrong.
        step: String,
        /// What is wrong (names the field).
        reason: String,
    },
    /// An operator action is not allowed in the saga's state.
    #[error(transparent)]
    Refusal(#[from] paysaga_core::operator::Refusal),
    /// An action was refused for another reason (said in the message).
    #[error("{0}")]
    Refused(String),
    /// No such saga.
    #[error("saga {0} not found")]
    SagaNotFound(Uuid),
    /// A stored saga needs a step kind this process does not register.
    #[error("saga {saga}: step kind {kind:?} is not registered in this process; run it on a worker that has it")]
    MissingKind {
        /// Saga.
        saga: Uuid,
        /// Kind.
        kind: String,
    },
    /// A document is larger than the engine's limit; nothing was stored.
    #[error("the document is {size} bytes, over the limit of {limit} bytes; nothing was stored (raise the limit with --max-document-size / PAYSAGA_MAX_DOCUMENT_SIZE if such documents are expected)")]
    DocumentTooLarge {
        /// Its size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// [`crate::Engine::wait_for_end`] gave up; the saga goes on.
    #[error("saga {saga} is still {status} after {waited:?}; it goes on (wait again, or look at it with `paysaga show {saga}`)")]
    WaitTimedOut {
        /// Saga.
        saga: Uuid,
        /// Its status when the wait ended.
        status: paysaga_core::ObservedStatus,
        /// How long the caller waited.
        waited: std::time::Duration,
    },
    /// [`crate::Engine::start_typed`]: the input has no JSON form (a map with non-string
    /// keys, a failing `Serialize`); nothing was stored.
    #[error("cannot start workflow {workflow}: the input does not serialize to JSON ({reason}); fix the input type's Serialize")]
    InputNotSerializable {
        /// Workflow.
        workflow: String,
        /// serde_json's error.
        reason: String,
    },
}
