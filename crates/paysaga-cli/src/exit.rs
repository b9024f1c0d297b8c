//! Exit codes a script can tell apart (documented in the README and in `paysaga --help`).
//! Errors carry what happened; [`code`] reads it from the error chain.

use std::fmt;

/// Success.
pub const OK: u8 = 0;
/// Any other failure (the message says what failed).
pub const FAILED: u8 = 1;
// 2: usage, a bad flag or value (clap exits with it before any command runs).
/// The saga, workflow, event or document does not exist.
pub const NOT_FOUND: u8 = 3;
/// Refused: the saga's state does not allow the action (or, in bulk, at least one saga
/// refused it), or the command would not go on without confirmation.
pub const REFUSED: u8 = 4;
/// The database could not be reached (refused, unknown host, authentication, TLS, timeout).
pub const UNREACHABLE: u8 = 5;
/// The database schema is older or newer than this build (run `paysaga migrate`, or a
/// matching paysaga).
pub const SCHEMA_MISMATCH: u8 = 6;
/// `paysaga reconcile` found drift between the sagas and the providers (the findings are
/// printed and stored).
pub const DRIFT: u8 = 7;

/// The text `paysaga --help` ends with.
pub const HELP: &str = "Exit codes: 0 ok, 1 other failure, 2 usage (bad flag or value), \
3 not found, 4 refused (state does not allow the action, or not confirmed), \
5 database unreachable, 6 database schema older or newer than this build, \
7 drift found by `paysaga reconcile`.
NO_COLOR=1 turns colours off.";

/// Context: opening the database failed.
#[derive(Debug)]
pub struct Unreachable(pub String);

impl fmt::Display for Unreachable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Unreachable {}

/// The database schema does not match this build.
#[derive(Debug)]
pub struct SchemaMismatch(pub String);

impl fmt::Display for SchemaMismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for SchemaMismatch {}

/// The command refused to act (the message says why and what to do).
#[derive(Debug)]
pub struct Refused(pub String);

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Refused {}

/// The object asked for does not exist (for errors that are not the engine's own).
#[derive(Debug)]
pub struct NotFound(pub String);

impl fmt::Display for NotFound {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for NotFound {}

/// `paysaga reconcile` found drift.
#[derive(Debug)]
pub struct DriftFound(pub String);

impl fmt::Display for DriftFound {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for DriftFound {}

/// The exit code for an error.
pub fn code(err: &anyhow::Error) -> u8 {
    if err.downcast_ref::<DriftFound>().is_some() {
        return DRIFT;
    }
    if err.downcast_ref::<SchemaMismatch>().is_some() {
        return SCHEMA_MISMATCH;
    }
    if err.downcast_ref::<Unreachable>().is_some() {
        return UNREACHABLE;
    }
    if err.downcast_ref::<Refused>().is_some() {
        return REFUSED;
    }
    if err.downcast_ref::<NotFound>().is_some() {
        return NOT_FOUND;
    }
    if let Some(e) = err.downcast_ref::<paysaga_runtime::Error>() {
        return runtime_code(e);
    }
    if let Some(e) = err.downcast_ref::<paysaga_store::Error>() {
        return store_code(e);
    }
    if err
        .downcast_ref::<paysaga_core::operator::Refusal>()
        .is_some()
    {
        return REFUSED;
    }
    FAILED
}

fn runtime_code(e: &paysaga_runtime::Error) -> u8 {
    use paysaga_runtime::Error;
    match e {
        Error::SagaNotFound(_) | Error::UnknownWorkflow { .. } => NOT_FOUND,
        Error::Refusal(_) | Error::Refused(_) => REFUSED,
        Error::Store(s) => store_code(s),
        _ => FAILED,
    }
}

fn store_code(e: &paysaga_store::Error) -> u8 {
    use paysaga_store::Error;
    match e {
        Error::NotFound(_) => NOT_FOUND,
        Error::Refused(_) => REFUSED,
        Error::Database(db) if unreachable(db) => UNREACHABLE,
        _ => FAILED,
    }
}

/// Whether a database error means the server could not be reached (rather than a query
/// it refused).
fn unreachable(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        // Class 08: connection exception; 57P0x: the server is shutting down.
        sqlx::Error::Database(db) => db
            .code()
            .is_some_and(|c| c.starts_with("08") || c.starts_with("57P0")),
        _ => false,
    }
}

/// A closed stdout (`paysaga list | head -1`) ends the command quietly with exit 0, as
/// Unix tools do, instead of the panic `println!` raises on a broken pipe.
pub fn quiet_on_broken_pipe() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let payload = info.payload();
        let message = payload
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| payload.downcast_ref::<&str>().copied())
            .unwrap_or_default();
        if message.starts_with("failed printing to stdout") && message.contains("Broken pipe") {
            std::process::exit(i32::from(OK));
        }
        default(info)
    }));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_failure_has_its_own_code() {
        let id = uuid::Uuid::nil();
        let not_found = anyhow::Error::from(paysaga_runtime::Error::SagaNotFound(id))
            .context("cannot show saga");
        assert_eq!(code(&not_found), NOT_FOUND);
        let refused = anyhow::Error::from(paysaga_runtime::Error::Store(
            paysaga_store::Error::Refused("no".into()),
        ))
        .context("cannot cancel");
        assert_eq!(code(&refused), REFUSED);
        let down = anyhow::Error::from(paysaga_store::Error::Database(sqlx::Error::PoolTimedOut));
        assert_eq!(code(&down), UNREACHABLE);
        let opening = anyhow::anyhow!("x").context(Unreachable("cannot open".into()));
        assert_eq!(code(&opening), UNREACHABLE);
        assert_eq!(code(&anyhow::anyhow!("other")), FAILED);
        assert_eq!(
            code(&anyhow::Error::from(SchemaMismatch("old".into())).context("more")),
            SCHEMA_MISMATCH
        );
    }
}
