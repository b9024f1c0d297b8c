//! The HTTP plumbing shared by the three clients: authentication, the one 401 retry, error
//! classification, JSON decoding and the [`crate::observe`] records of every attempt.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::header::{HeaderName, HeaderValue, ACCEPT, AUTHORIZATION};
use reqwest::{RequestBuilder, StatusCode};
use secrecy::{ExposeSecret, SecretString};
use serde::de::DeserializeOwned;

use crate::budget::{self, Admission, BudgetSlot};
use crate::error::{Error, Result};
use crate::observe::{self, CallOutcome, CallRecord, ObserverSlot};
use crate::token::{AccessToken, TokenCache};
use crate::Provider;

/// How a client authenticates its API calls.
#[derive(Clone)]
pub(crate) enum Auth {
    /// `Authorization: Bearer <token>` from a token cache; a 401 refreshes once.
    OAuth(TokenCache),
    /// A static secret header (`x-blaaiz-api-key`, `lean-app-token`).
    Header {
        name: HeaderName,
        value: SecretString,
    },
}

impl fmt::Debug for Auth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Auth::OAuth(cache) => f.debug_tuple("OAuth").field(cache).finish(),
            Auth::Header { name, .. } => f
                .debug_struct("Header")
                .field("name", name)
                .field("value", &"[REDACTED]")
                .finish(),
        }
    }
}

/// A successful answer.
pub(crate) struct Answer {
    pub status: StatusCode,
    pub body: Vec<u8>,
}

#[derive(Clone, Debug)]
pub(crate) struct Core {
    pub provider: Provider,
    base_url: String,
    pub http: reqwest::Client,
    auth: Auth,
    /// Who hears about every attempt (set by [`observe::with_observer`] at construction).
    observer: ObserverSlot,
    /// The newest token generation already reported as a `token` call, so that a fetch is
    /// reported once even when concurrent callers waited for it. Shared by clones.
    token_reported: Arc<AtomicU64>,
    /// The request budget asked before every request (set by [`budget::with_budget`]).
    budget: BudgetSlot,
    /// Which credential's budget: the OAuth client id, or `key-` and the first 12 hex digits
    /// of the SHA-256 of a static key (never the secret).
    credential: Arc<str>,
}

impl Core {
    pub fn new(provider: Provider, base_url: &str, http: reqwest::Client, auth: Auth) -> Self {
        let credential = credential_id(&auth).into();
        Core {
            provider,
            base_url: base_url.trim_end_matches('/').to_owned(),
            http,
            auth,
            observer: observe::current(),
            token_reported: Arc::new(AtomicU64::new(0)),
            budget: budget::current(),
            credential,
        }
    }

    /// `base_url` + a constant `path` (starts with `/`). A path with identifiers in it is built
    /// with [`Core::url_with`].
    pub fn url(&self, path: &'static str) -> String {
        format!("{}{}", self.base_url, path)
    }

    /// `base_url` + `segments`, each one path segment (percent-encoded by the `url` crate, `/`
    /// and `%` included), so that an identifier never leaves its segment. An empty, `.` or `..`
    /// segment is refused ([`Error::InvalidRequest`]): it would name another endpoint.
    pub fn url_with(&self, endpoint: &'static str, segments: &[&str]) -> Result<String> {
        let invalid = |detail: String| Error::InvalidRequest {
            provider: self.provider,
            endpoint,
            detail,
        };
        if let Some(bad) = segments.iter().find(|s| s.is_empty() || is_dot_segment(s)) {
            return Err(invalid(format!(
                "{bad:?} cannot be a path segment: an identifier must not be empty, `.` or `..`"
            )));
        }
        let mut url = reqwest::Url::parse(&self.base_url)
            .map_err(|e| invalid(format!("the base URL does not parse: {e}")))?;
        url.path_segments_mut()
            .map_err(|()| invalid("the base URL cannot take a path".to_owned()))?
            .pop_if_empty()
            .extend(segments);
        Ok(url.into())
    }

    /// Sends the request `make` builds (called again for the retry after a 401) and decodes the
    /// JSON body of a 2xx answer into `T`, or returns the classified error.
    pub async fn json<T: DeserializeOwned>(
        &self,
        endpoint: &'static str,
        make: impl Fn(&reqwest::Client) -> RequestBuilder,
    ) -> Result<T> {
        let provider = self.provider;
        self.call(endpoint, None, make, |answer| {
            decode(provider, endpoint, &answer)
        })
        .await
    }

    /// Like [`Core::json`] for a request whose effect the provider cannot deduplicate: it is
    /// not sent (not even its retry after a 401) once `send_by` has passed
    /// ([`Error::NotSent`]).
    pub async fn json_before<T: DeserializeOwned>(
        &self,
        endpoint: &'static str,
        send_by: Instant,
        make: impl Fn(&reqwest::Client) -> RequestBuilder,
    ) -> Result<T> {
        let provider = self.provider;
        self.call(endpoint, Some(send_by), make, |answer| {
            decode(provider, endpoint, &answer)
        })
        .await
    }

    /// Sends the request (again after a 401 on an OAuth call), then `finish`es a 2xx answer;
    /// reports every attempt to the observer (an answer `finish` refuses counts as failed, with
    /// its status).
    async fn call<T>(
        &self,
        endpoint: &'static str,
        send_by: Option<Instant>,
        make: impl Fn(&reqwest::Client) -> RequestBuilder,
        finish: impl FnOnce(Answer) -> Result<T>,
    ) -> Result<T> {
        let mut refreshed = false;
        loop {
            let (request, token) = self.authorize(endpoint, make(&self.http)).await?;
            if send_by.is_some_and(|by| Instant::now() >= by) {
                tracing::warn!("send-by time passed before the request could leave: not sending");
                return Err(Error::NotSent {
                    provider: self.provider,
                    endpoint,
                });
            }
            self.admit(endpoint).await?;
            if send_by.is_some_and(|by| Instant::now() >= by) {
                tracing::warn!(
                    "send-by time passed while waiting for provider capacity: not sending"
                );
                return Err(Error::NotSent {
                    provider: self.provider,
                    endpoint,
                });
            }
            let started = Instant::now();
            let response = match request.header(ACCEPT, "application/json").send().await {
                Ok(response) => response,
                Err(e) => {
                    let err = Error::from_reqwest(self.provider, endpoint, e);
                    self.report_error(endpoint, None, &err, started.elapsed());
                    return Err(err);
                }
            };
            let status = response.status();
            tracing::debug!(status = status.as_u16(), "provider answered");
            if status == StatusCode::UNAUTHORIZED && !refreshed {
                if let (Auth::OAuth(cache), Some(token)) = (&self.auth, token.as_ref()) {
                    tracing::info!(
                        "401 from provider: refreshing the access token and retrying once"
                    );
                    self.report(
                        endpoint,
                        Some(status.as_u16()),
                        CallOutcome::Permanent,
                        started.elapsed(),
                    );
                    cache.invalidate_if_current(token).await;
                    refreshed = true;
                    continue;
                }
            }
            let headers = response.headers().clone();
            let body = match response.bytes().await {
                Ok(body) => body,
                Err(e) => {
                    let err = Error::from_reqwest(self.provider, endpoint, e);
                    self.report_error(endpoint, Some(status), &err, started.elapsed());
                    return Err(err);
                }
            };
            let took = started.elapsed();
            if status.is_success() {
                let done = finish(Answer {
                    status,
                    body: body.to_vec(),
                });
                match &done {
                    Ok(_) => self.report(endpoint, Some(status.as_u16()), CallOutcome::Ok, took),
                    Err(err) => self.report_error(endpoint, Some(status), err, took),
                }
                return done;
            }
            let err = Error::from_response(
                self.provider,
                endpoint,
                status,
                &headers,
                &body,
                chrono::Utc::now(),
            );
            if status == StatusCode::TOO_MANY_REQUESTS {
                if let Some(budget) = self.budget.get() {
                    budget
                        .throttled(self.provider, &self.credential, err.retry_after())
                        .await;
                }
            }
            tracing::warn!(status = status.as_u16(), transient = err.is_transient(), error = %err, "provider call failed");
            self.report_error(endpoint, Some(status), &err, took);
            return Err(err);
        }
    }

    /// Waits for a slot of the request budget, if there is one; no slot within the budget's
    /// longest wait: [`Error::NoCapacity`], nothing sent.
    async fn admit(&self, endpoint: &'static str) -> Result<()> {
        let Some(budget) = self.budget.get() else {
            return Ok(());
        };
        match budget.acquire(self.provider, &self.credential).await {
            Admission::Go => Ok(()),
            Admission::Later(retry_after) => Err(Error::NoCapacity {
                provider: self.provider,
                endpoint,
                retry_after,
            }),
        }
    }

    fn report(
        &self,
        endpoint: &'static str,
        status: Option<u16>,
        outcome: CallOutcome,
        duration: Duration,
    ) {
        self.observer.observe(CallRecord {
            provider: self.provider,
            endpoint,
            status,
            outcome,
            duration,
        });
    }

    /// Reports a failed attempt; `answered` is the status of the answer, if one arrived.
    fn report_error(
        &self,
        endpoint: &'static str,
        answered: Option<StatusCode>,
        err: &Error,
        duration: Duration,
    ) {
        let status = err.status().or(answered.map(|s| s.as_u16()));
        self.report(endpoint, status, CallOutcome::of_error(err), duration);
    }

    /// A token from `cache`, reporting the fetch (endpoint `token`) if one was needed: every
    /// failed fetch (each is its caller's own), and each new token once.
    async fn token(&self, cache: &TokenCache) -> Result<AccessToken> {
        const ENDPOINT: &str = "token";
        if !self.observer.is_set() {
            return cache.get().await;
        }
        let known = cache.fetch_count();
        let started = Instant::now();
        match cache.get().await {
            Ok(token) => {
                let generation = token.generation();
                if generation > known
                    && self.token_reported.fetch_max(generation, Ordering::SeqCst) < generation
                {
                    self.report(ENDPOINT, None, CallOutcome::Ok, started.elapsed());
                }
                Ok(token)
            }
            Err(err) => {
                self.report_error(ENDPOINT, None, &err, started.elapsed());
                Err(err)
            }
        }
    }

    async fn authorize(
        &self,
        endpoint: &'static str,
        request: RequestBuilder,
    ) -> Result<(RequestBuilder, Option<AccessToken>)> {
        match &self.auth {
            Auth::OAuth(cache) => {
                let token = self.token(cache).await?;
                let value = sensitive(
                    &format!("Bearer {}", token.secret().expose_secret()),
                    self.provider,
                    endpoint,
                )?;
                Ok((request.header(AUTHORIZATION, value), Some(token)))
            }
            Auth::Header { name, value } => {
                let value = sensitive(value.expose_secret(), self.provider, endpoint)?;
                Ok((request.header(name.clone(), value), None))
            }
        }
    }
}

/// The id of the credential `auth` uses, for its request budget: never the secret.
fn credential_id(auth: &Auth) -> String {
    use sha2::Digest;
    match auth {
        Auth::OAuth(cache) => cache.client_id().to_owned(),
        Auth::Header { value, .. } => {
            let digest = sha2::Sha256::digest(value.expose_secret().as_bytes());
            format!("key-{}", &hex::encode(digest)[..12])
        }
    }
}

fn sensitive(value: &str, provider: Provider, endpoint: &'static str) -> Result<HeaderValue> {
    let mut v = HeaderValue::from_str(value).map_err(|_| Error::InvalidRequest {
        provider,
        endpoint,
        detail: "credential contains characters not allowed in an HTTP header".to_owned(),
    })?;
    v.set_sensitive(true);
    Ok(v)
}

pub(crate) fn decode<T: DeserializeOwned>(
    provider: Provider,
    endpoint: &'static str,
    answer: &Answer,
) -> Result<T> {
    serde_json::from_slice(&answer.body)
        .map_err(|e| Error::decode(provider, endpoint, answer.status.as_u16(), e.to_string()))
}

/// `.` or `..`: a path segment that names another endpoint (refused as an identifier).
pub(crate) fn is_dot_segment(segment: &str) -> bool {
    matches!(segment, "." | "..")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn core(base: &str) -> Core {
        Core::new(
            Provider::Lumanu,
            base,
            reqwest::Client::new(),
            Auth::Header {
                name: HeaderName::from_static("x-test"),
                value: SecretString::from("k"),
            },
        )
    }

    #[test]
    fn segments_are_encoded() -> Result<()> {
        let c = core("http://h:1/lumanu/api/rest/");
        assert_eq!(
            c.url_with("t", &["payable", "abc-123_x.y~z", "approve"])?,
            "http://h:1/lumanu/api/rest/payable/abc-123_x.y~z/approve"
        );
        assert_eq!(
            c.url_with("t", &["payable", "a/b c?d#"])?,
            "http://h:1/lumanu/api/rest/payable/a%2Fb%20c%3Fd%23"
        );
        assert_eq!(
            c.url_with("t", &["payable", "\u{fc}"])?,
            "http://h:1/lumanu/api/rest/payable/%C3%BC"
        );
        Ok(())
    }

    #[test]
    fn an_identifier_never_escapes_its_path_segment() -> Result<()> {
        // `workspace_id: ".."` made `/workspace/../wallet` = `/wallet`; the url crate alone
        // drops dot segments (`/workspace/wallet`): both name another endpoint.
        let c = core("http://h:1/lumanu/api/rest");
        for bad in [".", "..", ""] {
            let err = c
                .url_with("get_wallet", &["workspace", bad, "wallet"])
                .expect_err("refused");
            assert!(
                matches!(
                    err,
                    Error::InvalidRequest {
                        endpoint: "get_wallet",
                        ..
                    }
                ),
                "{err:?}"
            );
        }
        for tricky in [
            "../payable",
            "%2e%2e",
            ".%2E",
            "..%2F..",
            "a/../../b",
            "?x=1",
            "#f",
        ] {
            let url = c.url_with("get_wallet", &["workspace", tricky, "wallet"])?;
            let parsed = reqwest::Url::parse(&url).expect("a URL");
            let segments: Vec<&str> = parsed.path_segments().expect("segments").collect();
            assert_eq!(segments.len(), 6, "{tricky:?} stays one segment: {url}");
            assert_eq!((segments[3], segments[5]), ("workspace", "wallet"), "{url}");
            assert!(
                parsed.query().is_none() && parsed.fragment().is_none(),
                "{url}"
            );
        }
        Ok(())
    }
}
