//! Command-line flags of the sandbox, shared by `paysaga-sandbox` and `paysaga sandbox`.

use std::net::SocketAddr;
use std::time::Duration;

use crate::{
    Credentials, FaultSpec, LeanAuthorization, LeanAuthorizationSetting, SandboxConfig, Timing,
};

/// Fake Lumanu, Blaaiz and Lean APIs with a money ledger, signed webhooks and fault injection.
#[derive(Debug, Clone, clap::Args)]
pub struct SandboxArgs {
    /// Address to listen on.
    #[arg(long, env = "PAYSAGA_SANDBOX_ADDR", default_value = "127.0.0.1:8099")]
    pub addr: SocketAddr,
    /// Base URL clients use to reach the sandbox (for pre-signed upload URLs).
    #[arg(long, env = "PAYSAGA_SANDBOX_PUBLIC_URL")]
    pub public_url: Option<String>,
    /// Webhooks are POSTed to {webhook_base}/webhooks/{provider}; none are sent if unset.
    #[arg(long, env = "PAYSAGA_SANDBOX_WEBHOOK_BASE")]
    pub webhook_base: Option<String>,
    /// Fault spec, e.g. "error_rate=0.2,webhook_delay_ms=0..2000,seed=42" (grammar in the
    /// crate docs).
    #[arg(long, env = "PAYSAGA_SANDBOX_FAULTS", default_value = "none")]
    pub faults: FaultSpec,
    /// Use the well-known development credentials instead of the PAYSAGA_* variables.
    /// Never in a reachable deployment.
    #[arg(long)]
    pub dev_credentials: bool,
    /// Multiply every scripted delay (invoice paid, KYC review, cool-off, ...) by this factor.
    #[arg(long, env = "PAYSAGA_SANDBOX_TIME_SCALE", default_value_t = 1.0)]
    pub time_scale: f64,
    /// How Lean authorises the payments it queues: `automatic` (at once) or `manual` (queued as
    /// `CREATED` until `POST /_sandbox/lean/payments/{id}/authorize`, or the delay below). An
    /// intent's `authorize_payment` overrides it per payment.
    #[arg(
        long,
        env = "PAYSAGA_SANDBOX_LEAN_AUTHORIZATION",
        default_value = "automatic"
    )]
    pub lean_authorization: LeanAuthorization,
    /// Manual mode: a simulated Financial Controller authorises each queued payment after this
    /// many milliseconds (not scaled by --time-scale); unset, only the control endpoint does.
    #[arg(long, env = "PAYSAGA_SANDBOX_LEAN_AUTHORIZE_AFTER_MS")]
    pub lean_authorize_after_ms: Option<u64>,
    /// Requests per second each provider accepts, e.g. `lumanu=20/s,blaaiz=2/s`; over it a
    /// request is answered `429` with `Retry-After` and counted (`GET /_sandbox/stats`).
    #[arg(long, env = "PAYSAGA_SANDBOX_RATE_LIMIT", default_value = "none")]
    pub rate_limit: crate::RateLimits,
}

impl SandboxArgs {
    /// The configuration these flags describe.
    pub fn config(&self) -> Result<SandboxConfig, String> {
        let credentials = if self.dev_credentials {
            tracing::warn!("using the well-known development credentials");
            Credentials::dev()
        } else {
            Credentials::from_env().map_err(|e| format!("{e} (or pass --dev-credentials)"))?
        };
        if !(self.time_scale.is_finite() && self.time_scale >= 0.0) {
            return Err("--time-scale must be a non-negative number".to_string());
        }
        let mut timing = Timing::default();
        for d in [
            &mut timing.invoice_paid,
            &mut timing.kyc_review,
            &mut timing.lean_link,
            &mut timing.cool_off,
            &mut timing.bank_settlement,
        ] {
            *d = Duration::try_from_secs_f64(d.as_secs_f64() * self.time_scale)
                .unwrap_or(Duration::MAX);
        }
        Ok(SandboxConfig {
            addr: self.addr,
            public_url: self.public_url.clone(),
            webhook_base: self.webhook_base.clone(),
            faults: self.faults.clone(),
            credentials,
            timing,
            lean_authorization: LeanAuthorizationSetting {
                mode: self.lean_authorization,
                authorize_after: self.lean_authorize_after_ms.map(Duration::from_millis),
            },
            rate_limits: self.rate_limit.clone(),
        })
    }
}
