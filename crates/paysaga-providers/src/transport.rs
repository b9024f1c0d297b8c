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
}

impl Core {
    pub fn new(provider: Provider, base_url: &str, http: reqwest::Client, auth: Auth) -> Self {
        Core {
            provider,
            base_url: base_url.trim_end_matches('/').to_owned(),
            http,
            auth,
            observer: observe::current(),
            token_reported: Arc::new(AtomicU64::new(0)),
        }
    }

    /// `base_url` + `path` (`path` starts with `/`; embed ids with [`seg`]).
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base_url, path)
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
            tracing::warn!(status = status.as_u16(), transient = err.is_transient(), error = %err, "provider call failed");
            self.report_error(endpoint, Some(status), &err, took);
            return Err(err);
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

/// Percent-encodes one path segment (an id taken from a provider or from saga input).
pub(crate) fn seg(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    for b in raw.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_are_encoded() {
        assert_eq!(seg("abc-123_x.y~z"), "abc-123_x.y~z");
        assert_eq!(seg("a/b c?d#"), "a%2Fb%20c%3Fd%23");
        assert_eq!(seg("ü"), "%C3%BC");
    }
}
