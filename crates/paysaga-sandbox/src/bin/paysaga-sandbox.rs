//! `paysaga-sandbox`: runs the provider sandbox as its own process.
//!
//! ```text
//! paysaga-sandbox --addr 127.0.0.1:8099 --webhook-base http://127.0.0.1:8080 \
//!     --faults "error_rate=0.1,webhook_duplicate=0.2,seed=1"
//! ```
//! Credentials come from the `PAYSAGA_*` environment variables (see
//! `docs/PROVIDER-CONTRACTS.md`), or from the well-known development set with
//! `--dev-credentials`.

use std::net::SocketAddr;
use std::process::ExitCode;

use clap::Parser;
use paysaga_sandbox::{Credentials, FaultSpec, SandboxConfig, Timing};

/// Fake Lumanu, Blaaiz and Lean APIs with a money ledger, signed webhooks and fault injection.
#[derive(Debug, Parser)]
#[command(name = "paysaga-sandbox", version)]
struct Args {
    /// Address to listen on.
    #[arg(long, env = "PAYSAGA_SANDBOX_ADDR", default_value = "127.0.0.1:8099")]
    addr: SocketAddr,
    /// Base URL clients use to reach the sandbox (for pre-signed upload URLs).
    #[arg(long, env = "PAYSAGA_SANDBOX_PUBLIC_URL")]
    public_url: Option<String>,
    /// Webhooks are POSTed to {webhook_base}/webhooks/{provider}; none are sent if unset.
    #[arg(long, env = "PAYSAGA_SANDBOX_WEBHOOK_BASE")]
    webhook_base: Option<String>,
    /// Fault spec, e.g. "error_rate=0.2,webhook_delay_ms=0..2000,seed=42" (grammar in the
    /// crate docs).
    #[arg(long, env = "PAYSAGA_SANDBOX_FAULTS", default_value = "none")]
    faults: FaultSpec,
    /// Use the well-known development credentials instead of the PAYSAGA_* variables.
    /// Never in a reachable deployment.
    #[arg(long)]
    dev_credentials: bool,
    /// Multiply every scripted delay (invoice paid, KYC review, cool-off, ...) by this factor.
    #[arg(long, env = "PAYSAGA_SANDBOX_TIME_SCALE", default_value_t = 1.0)]
    time_scale: f64,
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let args = Args::parse();
    let credentials = if args.dev_credentials {
        tracing::warn!("using the well-known development credentials");
        Credentials::dev()
    } else {
        match Credentials::from_env() {
            Ok(c) => c,
            Err(err) => {
                eprintln!("paysaga-sandbox: {err} (or pass --dev-credentials)");
                return ExitCode::from(2);
            }
        }
    };
    if !(args.time_scale.is_finite() && args.time_scale >= 0.0) {
        eprintln!("paysaga-sandbox: --time-scale must be a non-negative number");
        return ExitCode::from(2);
    }
    let mut timing = Timing::default();
    for d in [
        &mut timing.invoice_paid,
        &mut timing.kyc_review,
        &mut timing.lean_link,
        &mut timing.cool_off,
        &mut timing.bank_settlement,
    ] {
        *d = std::time::Duration::try_from_secs_f64(d.as_secs_f64() * args.time_scale)
            .unwrap_or(std::time::Duration::MAX);
    }
    let config = SandboxConfig {
        addr: args.addr,
        public_url: args.public_url,
        webhook_base: args.webhook_base,
        faults: args.faults,
        credentials,
        timing,
    };
    match paysaga_sandbox::serve(config).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("paysaga-sandbox: {err}");
            ExitCode::FAILURE
        }
    }
}
