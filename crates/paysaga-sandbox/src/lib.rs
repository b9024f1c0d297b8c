//! # paysaga-sandbox
//!
//! A real HTTP server that imitates the three payout providers paysaga talks to — **Lumanu**,
//! **Blaaiz** and **Lean** — closely enough that their clients work against it with only the
//! base URL changed. It keeps a money ledger, moves objects through their lifecycle on a
//! timer (an invoice gets paid, a KYC review finishes, a bank beneficiary leaves its cool-off),
//! sends webhooks signed exactly as the providers sign them, and injects faults on demand.
//! State lives in memory; nothing survives a restart.
//!
//! The contract with the clients (paths, token endpoints, webhook bodies and signature headers,
//! environment variables) is `docs/PROVIDER-CONTRACTS.md`; decisions the sandbox had to make
//! itself are in its "Sandbox decisions" section.
//!
//! ## Routes
//! | prefix | what |
//! |---|---|
//! | `/lumanu/oauth/token`, `/lumanu/api/rest/...` | Lumanu: funding, wallet, payables |
//! | `/blaaiz/oauth/token`, `/blaaiz/api/external/...` | Blaaiz: customers, files, payouts, transactions |
//! | `/lean/oauth2/token`, `/lean/payments/v1/...`, `/lean/customers/v1/...` | Lean: destinations, customers, payment sources, intents |
//! | `/_sandbox/ledger` | every money movement (JSON array) |
//! | `/_sandbox/balances` | every account with its balance (always the sum of its ledger entries) |
//! | `/_sandbox/faults` | `GET` the active fault spec, `PUT` a new one (text body in the grammar below) |
//! | `/_sandbox/webhooks` | every webhook delivery attempted |
//! | `/_sandbox/reset` | `POST`: forget all objects and movements, re-seed the opening balances |
//! | `/_sandbox/requests` | `GET` the provider API exchanges recorded (method, path, request and response bodies, status), `DELETE` forgets them; `PUT /_sandbox/requests/recording` with `on` or `off` switches recording (off by default) |
//! | `/_sandbox/blaaiz/uploads/{file_id}` | the pre-signed `PUT` target for Blaaiz documents |
//! | `/_sandbox/lean/authorization` | `GET`/`PUT` Lean's payout authorisation mode (`automatic` or `manual`, optional `authorize_after_ms`) |
//! | `/_sandbox/lean/payments` | `GET` Lean payments (`?intent_id=`) with `awaiting_authorization`; `POST .../{payment_id}/authorize`: a Financial Controller authorises a queued payment |
//!
//! Provider endpoints (below each prefix, as the providers spell them):
//! * Lumanu `/api/rest`: `POST /funding` (`method` `invoice` or `balance`), `GET /funding/{id}`,
//!   `POST /funding/{id}/link-deposit`, `GET /workspace`, `GET /workspace/{id}`,
//!   `GET /workspace/{id}/wallet`, `GET /workspace/{id}/wallet/transaction`,
//!   `GET /workspace/{id}/project[/{id}]`, `GET /workspace/{id}/partner[/{id}]`,
//!   `POST|GET /payable`, `POST /payables` and `GET /payouts` (the quickstart's paths),
//!   `GET /payable/{id}`, `POST /payable/{id}/approve`, `POST /payable/{id}/cancel`.
//!   `POST /funding` with `method: balance` pays any number of approved payables at once
//!   (`payable_ids`; Lumanu documents no maximum). Sandbox convention: a payable to a
//!   `payee_email` at the reserved `.invalid` domain is refused (`422 invalid_payee`), the
//!   stand-in for a creator Lumanu cannot pay.
//! * Blaaiz `/api/external`: `POST /customer`, `GET /customer?email=`, `GET /customer/{id}`,
//!   `POST /customer/{id}/files`, `POST /file/get-presigned-url`, `POST /payout`,
//!   `POST /transaction` (list), `GET /transaction/{id}`, `POST|GET /webhook`,
//!   `PUT /webhook/{id}`, `POST /webhook-replay`, `GET /wallet[/{id}]`, `GET /currency`,
//!   `GET /bank`, `POST /fees/breakdown`; OAuth scopes enforced per endpoint; unknown routes
//!   404 `{"message"}`.
//! * Lean: `POST|GET /payments/v1/destinations`, `GET /payments/v1/destinations/{id}`,
//!   `POST /payments/v1/customer`, `POST /payments/v1/intents`, `GET /payments/v1/intents/{id}`,
//!   `GET /payments/v1/{payment_id}`, `GET /customers/v1/app-user-id/{app_user_id}`,
//!   `GET /customers/v1/{customer_id}`, `GET /customers/v1/{customer_id}/payment_sources[/{id}]`;
//!   unknown routes 404 in Lean's error shape (Lumanu's: in its own).
//!
//! Scripted progress (delays from [`Timing`]): a Lumanu invoice is paid (deposit +
//! `transfer.created`); a payable paid from the balance becomes `paid`; a Blaaiz customer with an
//! `id_file` attached is reviewed; a Blaaiz payout settles; a new Lean customer links a bank
//! (payment source + beneficiaries), beneficiaries leave their cool-off; a Lean intent becomes a
//! payment that the bank accepts (in manual authorisation mode, [`LeanAuthorization::Manual`],
//! the payment waits as `CREATED` until it is authorised).
//!
//! ## Fault spec grammar
//! A fault spec is a comma-separated list of `key=value` items (whitespace around items is
//! ignored; the empty string and `none` mean "no faults"):
//!
//! ```text
//! spec    = "none" | item *("," item)
//! item    = key "=" value
//! key     = "error_rate" | "timeout_after_effect"          ; probability per API request
//!         | "error_rate@" target | "timeout_after_effect@" target   ; per-endpoint override
//!         | "latency_ms"                                     ; range, added to every API request
//!         | "latency_ms@" target                             ; range, per-endpoint override
//!         | "rate_limit_share"                               ; share of injected errors that are 429 (default 0.25)
//!         | "retry_after_s"                                  ; Retry-After of injected 429s (default 1)
//!         | "hang_ms"                                        ; how long a timeout-after-effect hangs (default 30000)
//!         | "webhook_duplicate" | "webhook_reorder" | "webhook_drop" | "webhook_early"  ; probabilities per webhook
//!         | "webhook_delay_ms"                               ; range, added before each webhook delivery
//!         | "seed"                                           ; u64 seed of the fault RNG (random if absent)
//! target  = [METHOD ":"] path-prefix                         ; e.g. POST:/lumanu/api/rest/payable
//! range   = ms | ms ".." ms                                  ; e.g. 50 or 0..2000
//! ```
//!
//! Example: `error_rate=0.2,timeout_after_effect=0.1,latency_ms=50,webhook_duplicate=0.3,
//! webhook_delay_ms=0..2000,webhook_reorder=0.2,webhook_drop=0.1,webhook_early=0.3,seed=42,
//! error_rate@POST:/blaaiz/api/external/payout=0.5`.
//!
//! * An injected error answers without running the handler: a 5xx (500, 502 or 503) in the
//!   provider's error shape, or for `rate_limit_share` of them a 429 with `Retry-After`.
//! * `timeout_after_effect` runs the handler (the effect happens and its webhooks are sent),
//!   then holds the response for `hang_ms` before answering 504, so the client times out.
//! * A per-endpoint rule applies to requests whose path starts with its prefix (and whose method
//!   matches, if given); the longest matching prefix wins over the global rate.
//! * Global rates and latency never apply to token endpoints or `/_sandbox/*`; a per-endpoint
//!   rule naming a token endpoint (e.g. `error_rate@/lean/oauth2/token=1`) does apply.
//! * `webhook_reorder` holds an event back 300–800 ms so that later events overtake it;
//!   `webhook_early` sends an event caused by an API request before that request's response
//!   is returned (otherwise such events are released only once the response has been sent).
//!
//! ## Triggers for unhappy paths
//! * Blaaiz: a customer whose `last_name` (or `business_name`) is `Reject` is `REJECTED` after
//!   review; a payout to `account_number` `0000000000` ends `FAILED` and is refunded.
//! * Lean: an intent whose `description` contains `REJECTED_BY_BANK`, `FAILED` or
//!   `PENDING_WITH_BANK` ends in that status; a payment larger than the payer's account
//!   balance is `REJECTED_BY_BANK`.
//!
//! ## Use
//! ```no_run
//! # async fn demo() -> Result<(), paysaga_sandbox::Error> {
//! use paysaga_sandbox::{Credentials, SandboxConfig};
//! let mut config = SandboxConfig::new("127.0.0.1:0".parse().expect("addr"), Credentials::dev());
//! config.faults = "error_rate=0.1,seed=7".parse()?;
//! let sandbox = paysaga_sandbox::spawn(config).await?;
//! println!("sandbox at {}", sandbox.base_url());
//! sandbox.shutdown().await?;
//! # Ok(()) }
//! ```

mod app;
mod auth;
mod blaaiz;
mod body;
pub mod cli;
mod config;
mod control;
mod faults;
mod lean;
mod ledger;
mod lumanu;
mod money;
mod rate_limit;
mod record;
mod webhooks;

use std::net::SocketAddr;

use serde::Serialize;
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use config::{
    BlaaizCredentials, ClientCredentials, Credentials, LeanCredentials, LumanuCredentials, Timing,
};
pub use faults::{EndpointFault, EndpointRule, FaultSpec, FaultSpecError, MsRange};
pub use lean::{AuthorizationSetting as LeanAuthorizationSetting, LeanAuthorization};
pub use rate_limit::RateLimits;

/// Ids of the objects that exist from the start (also listed by `GET /_sandbox/balances`).
pub mod seeds {
    pub use crate::blaaiz::{
        BUSINESS_ID as BLAAIZ_BUSINESS_ID, FAILING_ACCOUNT_NUMBER as BLAAIZ_FAILING_ACCOUNT_NUMBER,
        REJECTED_LAST_NAME as BLAAIZ_REJECTED_LAST_NAME, WALLETS as BLAAIZ_WALLETS,
    };
    pub use crate::lean::{
        DEFAULT_DESTINATION_ID as LEAN_DEFAULT_DESTINATION_ID,
        PAYER_ACCOUNTS as LEAN_PAYER_ACCOUNTS, QUEUED_STATUS as LEAN_QUEUED_STATUS,
    };
    pub use crate::lumanu::DEFAULT_WORKSPACE_ID as LUMANU_WORKSPACE_ID;
}

/// One of the simulated providers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Provider {
    /// Lumanu (creator payments, pre-funding).
    Lumanu,
    /// Blaaiz (KYC then payout).
    Blaaiz,
    /// Lean (bank payments, UAE/KSA).
    Lean,
}

impl Provider {
    /// Lower-case name, as used in URL prefixes and `/webhooks/{provider}`.
    pub fn as_str(self) -> &'static str {
        match self {
            Provider::Lumanu => "lumanu",
            Provider::Blaaiz => "blaaiz",
            Provider::Lean => "lean",
        }
    }

    /// The provider whose API a request path belongs to.
    pub(crate) fn from_path(path: &str) -> Option<Self> {
        let first = path.trim_start_matches('/').split('/').next()?;
        match first {
            "lumanu" => Some(Provider::Lumanu),
            "blaaiz" => Some(Provider::Blaaiz),
            "lean" => Some(Provider::Lean),
            _ => None,
        }
    }
}

impl std::fmt::Display for Provider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Everything the sandbox needs to run.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct SandboxConfig {
    /// Address to bind (port 0 picks a free port).
    pub addr: SocketAddr,
    /// Base URL clients reach the sandbox at, used in pre-signed upload URLs.
    /// Default `http://{bound address}` (with `127.0.0.1` for an unspecified address).
    pub public_url: Option<String>,
    /// Webhooks go to `{webhook_base}/webhooks/{lumanu|blaaiz|lean}`; none are sent if unset.
    pub webhook_base: Option<String>,
    /// Faults to inject (replaceable at run time through `PUT /_sandbox/faults`).
    pub faults: FaultSpec,
    /// Credentials clients must present, and webhook signing secrets.
    pub credentials: Credentials,
    /// Delays of the scripted progress and webhook retries.
    pub timing: Timing,
    /// How Lean authorises queued payments (default automatic; replaceable at run time through
    /// `PUT /_sandbox/lean/authorization`).
    pub lean_authorization: LeanAuthorizationSetting,
    /// Requests per second each provider accepts before answering `429` (none by default);
    /// counts at `GET /_sandbox/stats`.
    pub rate_limits: RateLimits,
}

impl SandboxConfig {
    /// A configuration with no faults, no webhook target and the default (short) timing.
    pub fn new(addr: SocketAddr, credentials: Credentials) -> Self {
        Self {
            addr,
            public_url: None,
            webhook_base: None,
            faults: FaultSpec::default(),
            credentials,
            timing: Timing::default(),
            lean_authorization: LeanAuthorizationSetting::default(),
            rate_limits: RateLimits::default(),
        }
    }
}

/// Errors starting or running the sandbox.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A required environment variable is not set.
    #[error("environment variable {0} (or {0}_FILE) is not set")]
    MissingEnv(String),
    /// A `*_FILE` variable names a file that cannot be read.
    #[error("cannot read {var} from {path}: {source}")]
    EnvFile {
        /// The variable naming the file.
        var: String,
        /// The file.
        path: String,
        /// Why it failed.
        source: std::io::Error,
    },
    /// Credentials are incomplete (e.g. a client id without its secret).
    #[error("invalid credentials: {0}")]
    Credentials(String),
    /// The fault spec does not parse.
    #[error(transparent)]
    FaultSpec(#[from] FaultSpecError),
    /// The listening socket cannot be bound.
    #[error("cannot bind {addr}: {source}")]
    Bind {
        /// Requested address.
        addr: SocketAddr,
        /// Why it failed.
        source: std::io::Error,
    },
    /// The HTTP server failed.
    #[error("sandbox server failed: {0}")]
    Serve(#[source] std::io::Error),
    /// The webhook HTTP client could not be built.
    #[error("cannot build the webhook HTTP client: {0}")]
    HttpClient(#[source] reqwest::Error),
    /// The server task panicked or was cancelled.
    #[error("sandbox server task ended abnormally: {0}")]
    Join(#[source] tokio::task::JoinError),
}

/// A sandbox running in the background (see [`spawn`]). Dropping the handle also stops it.
#[derive(Debug)]
pub struct RunningSandbox {
    local_addr: SocketAddr,
    base_url: String,
    shutdown: watch::Sender<bool>,
    task: Option<JoinHandle<Result<(), Error>>>,
}

impl RunningSandbox {
    /// The address the server is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// `http://{local_addr}` (or the configured public URL), without a trailing slash.
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// Stops accepting requests, cancels scripted progress and pending webhooks, and waits
    /// for the server to finish.
    pub async fn shutdown(mut self) -> Result<(), Error> {
        let _ = self.shutdown.send(true);
        match self.task.take() {
            Some(task) => task.await.map_err(Error::Join)?,
            None => Ok(()),
        }
    }
}

impl Drop for RunningSandbox {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
    }
}

/// Binds `config.addr` and serves in a background task; returns once the socket is bound.
pub async fn spawn(config: SandboxConfig) -> Result<RunningSandbox, Error> {
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let bound = app::bind(config, shutdown_rx).await?;
    let local_addr = bound.local_addr;
    let base_url = bound.public_url.clone();
    let task = tokio::spawn(bound.run());
    Ok(RunningSandbox {
        local_addr,
        base_url,
        shutdown: shutdown_tx,
        task: Some(task),
    })
}

/// Runs the sandbox in the current task until SIGINT or SIGTERM, then shuts down gracefully.
pub async fn serve(config: SandboxConfig) -> Result<(), Error> {
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let bound = app::bind(config, shutdown_rx).await?;
    tracing::info!(addr = %bound.local_addr, url = %bound.public_url, "paysaga sandbox listening");
    let server = bound.run();
    tokio::pin!(server);
    tokio::select! {
        res = &mut server => res,
        () = stop_signal() => {
            tracing::info!("stop signal received, shutting down");
            let _ = shutdown_tx.send(true);
            server.await
        }
    }
}

async fn stop_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(err) => {
                tracing::warn!(%err, "cannot listen for SIGTERM; only Ctrl-C stops the sandbox");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
