//! The providers' webhook schemes behind the runtime's webhook endpoint (feature `runtime`):
//! [`ProviderWebhook`] implements `paysaga_runtime::http::WebhookVerifier` with
//! [`webhook::verify_and_parse`], and [`verifiers`] builds one per configured provider.
//!
//! ```
//! use paysaga_providers::endpoint::ProviderWebhook;
//! use paysaga_providers::Provider;
//! use paysaga_runtime::http::WebhookVerifier;
//!
//! let lumanu = ProviderWebhook::new(Provider::Lumanu, "whsec_example".to_string().into());
//! assert_eq!(lumanu.provider(), "lumanu");
//! assert!(!format!("{lumanu:?}").contains("whsec_example"));
//! ```

use std::sync::Arc;

use chrono::{DateTime, Utc};
use http::HeaderMap;
use paysaga_runtime::http::{Rejection, VerifiedEvent, WebhookVerifier};
use secrecy::SecretString;

use crate::webhook::{self, WebhookError};
use crate::{Provider, ProvidersConfig};

/// One provider's webhook secret and signature scheme. `Debug` never shows the secret.
pub struct ProviderWebhook {
    provider: Provider,
    secret: SecretString,
}

impl ProviderWebhook {
    /// A verifier of `provider`'s webhooks signed with `secret`.
    pub fn new(provider: Provider, secret: SecretString) -> ProviderWebhook {
        ProviderWebhook { provider, secret }
    }
}

impl std::fmt::Debug for ProviderWebhook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProviderWebhook")
            .field("provider", &self.provider.as_str())
            .finish_non_exhaustive()
    }
}

impl WebhookVerifier for ProviderWebhook {
    fn provider(&self) -> &str {
        self.provider.as_str()
    }

    fn verify(
        &self,
        headers: &HeaderMap,
        body: &[u8],
        now: DateTime<Utc>,
    ) -> Result<VerifiedEvent, Rejection> {
        match webhook::verify_and_parse(self.provider, headers, body, &self.secret, now) {
            Ok(e) => Ok(VerifiedEvent {
                event_id: e.event_id,
                event_type: e.event_type,
                correlation_key: e.correlation_key,
                payload: e.payload,
            }),
            Err(WebhookError::Unparseable {
                reason,
                fallback_event_id,
            }) => Err(Rejection::Unparseable {
                event_id: fallback_event_id,
                reason,
            }),
            Err(other) => Err(Rejection::Unauthorized {
                reason: other.to_string(),
            }),
        }
    }
}

/// A verifier for every provider whose webhook secret is configured.
pub fn verifiers(config: &ProvidersConfig) -> Vec<Arc<dyn WebhookVerifier>> {
    config
        .configured()
        .into_iter()
        .filter_map(|p| {
            config
                .webhook_secret(p)
                .map(|s| Arc::new(ProviderWebhook::new(p, s.clone())) as Arc<dyn WebhookVerifier>)
        })
        .collect()
}
