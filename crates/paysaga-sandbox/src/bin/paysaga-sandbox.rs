//! `paysaga-sandbox`: runs the provider sandbox as its own process (same as `paysaga sandbox`).
//!
//! ```text
//! paysaga-sandbox --addr 127.0.0.1:8099 --webhook-base http://127.0.0.1:8080 \
//!     --faults "error_rate=0.1,webhook_duplicate=0.2,seed=1"
//! ```
//! Credentials come from the `PAYSAGA_*` environment variables (see
//! `docs/PROVIDER-CONTRACTS.md`), or from the well-known development set with
//! `--dev-credentials`.

use std::process::ExitCode;

use clap::Parser;
use paysaga_sandbox::cli::SandboxArgs;

#[derive(Debug, Parser)]
#[command(name = "paysaga-sandbox", version)]
struct Args {
    #[command(flatten)]
    sandbox: SandboxArgs,
}

#[tokio::main]
async fn main() -> ExitCode {
    // Logs on stderr (JSON unless a terminal), as every paysaga binary.
    paysaga_log::init("info");
    let config = match Args::parse().sandbox.config() {
        Ok(c) => c,
        Err(err) => {
            eprintln!("paysaga-sandbox: {err}");
            return ExitCode::from(2);
        }
    };
    match paysaga_sandbox::serve(config).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("paysaga-sandbox: {err}");
            ExitCode::FAILURE
        }
    }
}
