//! # paysaga-log
//!
//! The logging setup every paysaga binary uses (`paysaga`, `paysaga-sandbox`,
//! `paysaga-bench`), so they all log alike: to **stderr** (stdout is left to a command's
//! output), filtered by `RUST_LOG` (else the binary's default filter), as JSON lines (one
//! object per event, with the current span's fields) when stderr is not a terminal, as text
//! when it is.
//!
//! ```no_run
//! paysaga_log::init("info,sqlx=warn");
//! ```

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// Installs the global subscriber; `default_filter` applies when `RUST_LOG` is not set (or
/// does not parse). Does nothing if a subscriber is already installed.
pub fn init(default_filter: &str) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // `try_init`: a second call (a test, an embedding program) keeps the first subscriber.
    let _ = if std::io::stderr().is_terminal() {
        builder.try_init()
    } else {
        builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .try_init()
    };
}
