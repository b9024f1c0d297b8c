//! The HTTP plumbing shared by the three clients: authentication, the one 401 retry, error
//! classification and JSON decoding.

use std::fmt;

use reqwest::header::{HeaderName, HeaderValue, ACCEPT, AUTHORIZATION};
use reqwest::{RequestBuilder, StatusCode};
use secrecy::{ExposeSecret, SecretString};
use serde::de::DeserializeOwned;

use crate::error::{Error, Result};
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
}

impl Core {
    pub fn new(provider: Provider, base_url: &str, http: reqwest::Client, auth: Auth) -> Self {
        Core {
            provider,
            base_url: base_url.trim_end_matches('/').to_owned(),
            http,
            auth,
        }
    }

    /// `base_url` + `path` (`path` starts with `/`; embed ids with [`seg`]).
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base_url, path)
    }

    /// Sends the request `make` builds (called again for the retry after a 401), returns the
    /// body of a 2xx answer or the classified error.
    pub async fn send(
        &self,
        endpoint: &'static str,
        make: impl Fn(&reqwest::Client) -> RequestBuilder,
    ) -> Result<Answer> {
        let mut refreshed = false;
        loop {
            let (request, token) = self.authorize(endpoint, make(&self.http)).await?;
            let response = request
                .header(ACCEPT, "application/json")
                .send()
                .await
                .map_err(|e| Error::from_reqwest(self.provider, endpoint, e))?;
            let status = response.status();
            tracing::debug!(status = status.as_u16(), "provider answered");
            if status == StatusCode::UNAUTHORIZED && !refreshed {
                if let (Auth::OAuth(cache), Some(token)) = (&self.auth, token.as_ref()) {
                    tracing::info!(
                        "401 from provider: refreshing the access token and retrying once"
                    );
                    cache.invalidate_if_current(token).await;
                    refreshed = true;
                    continue;
                }
            }
            let headers = response.headers().clone();
            let body = response
                .bytes()
                .await
                .map_err(|e| Error::from_reqwest(self.provider, endpoint, e))?;
            if status.is_success() {
                return Ok(Answer {
                    status,
                    body: body.to_vec(),
                });
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
            return Err(err);
        }
    }

    /// Like [`Core::send`], decoding the JSON body into `T`.
    pub async fn json<T: DeserializeOwned>(
        &self,
        endpoint: &'static str,
        make: impl Fn(&reqwest::Client) -> RequestBuilder,
    ) -> Result<T> {
        let answer = self.send(endpoint, make).await?;
        decode(self.provider, endpoint, &answer)
    }

    async fn authorize(
        &self,
        endpoint: &'static str,
        request: RequestBuilder,
    ) -> Result<(RequestBuilder, Option<AccessToken>)> {
        match &self.auth {
            Auth::OAuth(cache) => {
                let token = cache.get().await?;
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
