//! OAuth2 client-credentials token cache shared by the clients.
//!
//! * The token is fetched on first use and cached.
//! * It is refreshed before it expires: `expires_in` minus a margin of 20 % of the lifetime,
//!   at most 60 s (a 900 s Blaaiz token is refreshed after 840 s, a 24 h Lumanu token 60 s
//!   before expiry). A response without `expires_in` counts as 3600 s.
//! * Concurrent callers needing a new token wait for one fetch (single flight, under a
//!   `tokio::sync::Mutex`).
//! * [`TokenCache::invalidate_if_current`] implements "on 401, refresh once and retry": it drops
//!   the token only if it is still the one that was rejected, so a burst of 401s causes one
//!   refresh, not one per request.
//!
//! Clones share the same cache.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use tokio::sync::Mutex;
use tokio::time::Instant;

use crate::error::{Error, Result};
use crate::Provider;

/// How to ask for a token.
#[derive(Clone)]
pub enum TokenRequest {
    /// `POST url` with a JSON body `{client_id, client_secret, audience, grant_type}` (Lumanu,
    /// an Auth0 tenant).
    Json {
        /// Full token URL.
        url: String,
        /// OAuth client id.
        client_id: String,
        /// OAuth client secret.
        client_secret: SecretString,
        /// Audience of the token; omitted from the request when `None`.
        audience: Option<String>,
    },
    /// `POST url` with a form body `grant_type=client_credentials&client_id&client_secret&scope`
    /// (Blaaiz, Lean).
    Form {
        /// Full token URL.
        url: String,
        /// OAuth client id.
        client_id: String,
        /// OAuth client secret.
        client_secret: SecretString,
        /// Space-separated scopes, if any.
        scope: Option<String>,
    },
}

impl fmt::Debug for TokenRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TokenRequest::Json {
                url,
                client_id,
                audience,
                ..
            } => f
                .debug_struct("Json")
                .field("url", url)
                .field("client_id", client_id)
                .field("client_secret", &"[REDACTED]")
                .field("audience", audience)
                .finish(),
            TokenRequest::Form {
                url,
                client_id,
                scope,
                ..
            } => f
                .debug_struct("Form")
                .field("url", url)
                .field("client_id", client_id)
                .field("client_secret", &"[REDACTED]")
                .field("scope", scope)
                .finish(),
        }
    }
}

/// An access token handed out by the cache.
#[derive(Clone)]
pub struct AccessToken {
    secret: SecretString,
    generation: u64,
}

impl AccessToken {
    /// The bearer token, for the `Authorization` header.
    pub fn secret(&self) -> &SecretString {
        &self.secret
    }

    /// Increases with every fetch: identifies which token a request used.
    pub fn generation(&self) -> u64 {
        self.generation
    }
}

impl fmt::Debug for AccessToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AccessToken")
            .field("secret", &"[REDACTED]")
            .field("generation", &self.generation)
            .finish()
    }
}

struct Cached {
    token: AccessToken,
    refresh_at: Instant,
}

struct Inner {
    provider: Provider,
    http: reqwest::Client,
    request: TokenRequest,
    state: Mutex<Option<Cached>>,
    generation: AtomicU64,
}

/// Caches one OAuth2 client-credentials token; cheap to clone (clones share the cache).
#[derive(Clone)]
pub struct TokenCache {
    inner: Arc<Inner>,
}

impl fmt::Debug for TokenCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenCache")
            .field("provider", &self.inner.provider)
            .field("request", &self.inner.request)
            .field("fetches", &self.fetch_count())
            .finish()
    }
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: SecretString,
    #[serde(default)]
    expires_in: Option<serde_json::Value>,
}

/// Lifetime assumed when the token response has no `expires_in`.
const DEFAULT_LIFETIME: Duration = Duration::from_secs(3600);
/// Longest margin kept before expiry.
const MAX_MARGIN: Duration = Duration::from_secs(60);

/// When to refresh a token that lives `lifetime`: 20 % of the lifetime early, at most 60 s.
pub fn refresh_after(lifetime: Duration) -> Duration {
    let margin = (lifetime / 5).min(MAX_MARGIN);
    lifetime.saturating_sub(margin)
}

impl TokenCache {
    /// The OAuth client id this cache asks tokens for (not a secret): names the credential's
    /// request budget.
    pub(crate) fn client_id(&self) -> &str {
        match &self.inner.request {
            TokenRequest::Json { client_id, .. } | TokenRequest::Form { client_id, .. } => {
                client_id
            }
        }
    }

    /// A cache for `provider` fetching tokens with `request` over `http`.
    pub fn new(provider: Provider, http: reqwest::Client, request: TokenRequest) -> Self {
        TokenCache {
            inner: Arc::new(Inner {
                provider,
                http,
                request,
                state: Mutex::new(None),
                generation: AtomicU64::new(0),
            }),
        }
    }

    /// A valid token: the cached one, or a freshly fetched one if none is cached or it is due
    /// for refresh. Concurrent callers share one fetch.
    pub async fn get(&self) -> Result<AccessToken> {
        let mut state = self.inner.state.lock().await;
        if let Some(cached) = state.as_ref() {
            if Instant::now() < cached.refresh_at {
                return Ok(cached.token.clone());
            }
        }
        let (secret, lifetime) = self.fetch().await?;
        let generation = self.inner.generation.fetch_add(1, Ordering::SeqCst) + 1;
        let token = AccessToken { secret, generation };
        *state = Some(Cached {
            token: token.clone(),
            refresh_at: Instant::now() + refresh_after(lifetime),
        });
        Ok(token)
    }

    /// Drops the cached token unconditionally; the next [`TokenCache::get`] fetches a new one.
    pub async fn invalidate(&self) {
        *self.inner.state.lock().await = None;
    }

    /// Drops the cached token if it is still `rejected` (the token a request was refused with).
    pub async fn invalidate_if_current(&self, rejected: &AccessToken) {
        let mut state = self.inner.state.lock().await;
        if state
            .as_ref()
            .is_some_and(|c| c.token.generation == rejected.generation)
        {
            *state = None;
        }
    }

    /// How many tokens have been fetched so far.
    pub fn fetch_count(&self) -> u64 {
        self.inner.generation.load(Ordering::SeqCst)
    }

    #[tracing::instrument(skip_all, fields(provider = %self.inner.provider, endpoint = "token"))]
    async fn fetch(&self) -> Result<(SecretString, Duration)> {
        const ENDPOINT: &str = "token";
        let provider = self.inner.provider;
        let request = match &self.inner.request {
            TokenRequest::Json {
                url,
                client_id,
                client_secret,
                audience,
            } => {
                let mut body = serde_json::json!({
                    "client_id": client_id,
                    "client_secret": client_secret.expose_secret(),
                    "grant_type": "client_credentials",
                });
                if let (Some(audience), Some(map)) = (audience, body.as_object_mut()) {
                    map.insert(
                        "audience".to_owned(),
                        serde_json::Value::from(audience.as_str()),
                    );
                }
                self.inner.http.post(url).json(&body)
            }
            TokenRequest::Form {
                url,
                client_id,
                client_secret,
                scope,
            } => {
                let mut form: Vec<(&str, &str)> = vec![
                    ("grant_type", "client_credentials"),
                    ("client_id", client_id),
                    ("client_secret", client_secret.expose_secret()),
                ];
                if let Some(scope) = scope.as_deref() {
                    form.push(("scope", scope));
                }
                self.inner.http.post(url).form(&form)
            }
        };
        let response = request
            .header(reqwest::header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(|e| Error::from_reqwest(provider, ENDPOINT, e))?;
        let status = response.status();
        let headers = response.headers().clone();
        let body = response
            .bytes()
            .await
            .map_err(|e| Error::from_reqwest(provider, ENDPOINT, e))?;
        tracing::debug!(status = status.as_u16(), "token endpoint answered");
        if !status.is_success() {
            return Err(Error::from_response(
                provider,
                ENDPOINT,
                status,
                &headers,
                &body,
                chrono::Utc::now(),
            ));
        }
        // Never include serde's message here: it could quote the token.
        let parsed: TokenResponse = serde_json::from_slice(&body).map_err(|_| {
            Error::decode(
                provider,
                ENDPOINT,
                status.as_u16(),
                "token response is not JSON with a string access_token",
            )
        })?;
        let lifetime = match parsed.expires_in {
            None | Some(serde_json::Value::Null) => DEFAULT_LIFETIME,
            Some(serde_json::Value::Number(n)) => n
                .as_u64()
                .map(Duration::from_secs)
                .unwrap_or(DEFAULT_LIFETIME),
            Some(serde_json::Value::String(s)) => s
                .trim()
                .parse::<u64>()
                .map(Duration::from_secs)
                .unwrap_or(DEFAULT_LIFETIME),
            Some(_) => DEFAULT_LIFETIME,
        };
        if parsed.access_token.expose_secret().is_empty() {
            return Err(Error::decode(
                provider,
                ENDPOINT,
                status.as_u16(),
                "token response has an empty access_token",
            ));
        }
        Ok((parsed.access_token, lifetime))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refresh_schedule() {
        assert_eq!(
            refresh_after(Duration::from_secs(900)),
            Duration::from_secs(840)
        );
        assert_eq!(
            refresh_after(Duration::from_secs(86_400)),
            Duration::from_secs(86_340)
        );
        assert_eq!(
            refresh_after(Duration::from_secs(100)),
            Duration::from_secs(80)
        );
        assert_eq!(
            refresh_after(Duration::from_secs(1)),
            Duration::from_millis(800)
        );
        assert_eq!(refresh_after(Duration::ZERO), Duration::ZERO);
    }
}
