//! Signed webhook delivery with retries and webhook faults.
//!
//! Events raised while an API request is being handled are collected (task-local) and released
//! only once the response body has been written to the client, unless the fault plan makes them
//! "early", in which case the first delivery attempt completes before the response is returned. Events raised by scripted
//! progress (timers) are dispatched at once.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use secrecy::{ExposeSecret, SecretString};
use serde::Serialize;
use serde_json::Value;
use sha2::{Sha256, Sha512};
use tokio::sync::watch;

use crate::app::until_shutdown;
use crate::config::{Credentials, Timing};
use crate::faults::SharedFaults;
use crate::Provider;

tokio::task_local! {
    /// Events raised by the request being handled in this task.
    pub(crate) static SCOPE: Collector;
}

/// Events collected during one request.
#[derive(Debug, Clone, Default)]
pub(crate) struct Collector(Arc<Mutex<Vec<Event>>>);

impl Collector {
    pub(crate) fn take(&self) -> Vec<Event> {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

/// A webhook about to be sent: the exact bytes are fixed once, signatures are over them.
#[derive(Debug, Clone)]
pub(crate) struct Event {
    pub provider: Provider,
    pub event_id: String,
    pub event_type: String,
    pub body: Arc<Vec<u8>>,
    /// Where to send it when the business registered a URL for it (Blaaiz's
    /// `POST /api/external/webhook`); otherwise `{webhook_base}/webhooks/{provider}`.
    pub url: Option<String>,
}

impl Event {
    /// Serialises `body` once; `event_type` and `event_id` are for the delivery log.
    pub(crate) fn new(
        provider: Provider,
        event_id: String,
        event_type: &str,
        body: &Value,
    ) -> Self {
        let bytes = serde_json::to_vec(body).unwrap_or_else(|_| b"{}".to_vec());
        Self {
            provider,
            event_id,
            event_type: event_type.to_owned(),
            body: Arc::new(bytes),
            url: None,
        }
    }

    /// The same event sent to `url` (a registered webhook URL) when given.
    pub(crate) fn to(mut self, url: Option<String>) -> Self {
        self.url = url;
        self
    }
}

/// A request's event waiting for the request's response to be sent.
#[derive(Debug)]
pub(crate) struct Later {
    event: Event,
    delays: Vec<Duration>,
}

/// One entry of `GET /_sandbox/webhooks`.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Delivery {
    pub provider: Provider,
    pub event_id: String,
    pub event_type: String,
    /// 0 for the original, 1 for an injected duplicate.
    pub copy: usize,
    pub early: bool,
    pub dropped: bool,
    pub attempts: u32,
    pub delivered: bool,
    pub last_status: Option<u16>,
    pub last_error: Option<String>,
    pub body: Value,
    pub created_at: DateTime<Utc>,
}

/// Delivery attempts in flight at once.
const MAX_IN_FLIGHT: usize = 64;

/// The webhook dispatcher.
#[derive(Debug)]
pub(crate) struct Webhooks {
    client: reqwest::Client,
    /// Delivery attempts in flight at once, like a provider's delivery queue: a burst of
    /// events reuses a bounded set of keep-alive connections instead of opening one each.
    in_flight: tokio::sync::Semaphore,
    base: Option<String>,
    credentials: Credentials,
    timing: Timing,
    faults: SharedFaults,
    log: Mutex<Vec<Delivery>>,
    shutdown: watch::Receiver<bool>,
}

type HmacSha256 = Hmac<Sha256>;
type HmacSha512 = Hmac<Sha512>;

/// Hex HMAC-SHA256 of `data`.
pub(crate) fn hmac_sha256_hex(key: &SecretString, data: &[u8]) -> String {
    let mut mac = <HmacSha256 as Mac>::new_from_slice(key.expose_secret().as_bytes())
        .expect("HMAC accepts keys of any length");
    mac.update(data);
    hex::encode(mac.finalize().into_bytes())
}

/// Hex HMAC-SHA512 of `data`.
pub(crate) fn hmac_sha512_hex(key: &SecretString, data: &[u8]) -> String {
    let mut mac = <HmacSha512 as Mac>::new_from_slice(key.expose_secret().as_bytes())
        .expect("HMAC accepts keys of any length");
    mac.update(data);
    hex::encode(mac.finalize().into_bytes())
}

/// The signature headers a provider puts on `body` (Blaaiz's depend on the send time).
pub(crate) fn signature_headers(
    credentials: &Credentials,
    provider: Provider,
    body: &[u8],
    now: DateTime<Utc>,
) -> Vec<(&'static str, String)> {
    match provider {
        Provider::Lumanu => vec![(
            "X-Signature",
            hmac_sha256_hex(&credentials.lumanu.webhook_secret, body),
        )],
        Provider::Blaaiz => {
            let ts = now.timestamp().to_string();
            let mut signed = Vec::with_capacity(ts.len() + 1 + body.len());
            signed.extend_from_slice(ts.as_bytes());
            signed.push(b'.');
            signed.extend_from_slice(body);
            let sig = hmac_sha256_hex(&credentials.blaaiz.webhook_secret, &signed);
            vec![("x-blaaiz-timestamp", ts), ("x-blaaiz-signature", sig)]
        }
        Provider::Lean => vec![(
            "lean-signature",
            format!(
                "sha512={}",
                hmac_sha512_hex(&credentials.lean.webhook_secret, body)
            ),
        )],
    }
}

impl Webhooks {
    pub(crate) fn new(
        base: Option<String>,
        credentials: Credentials,
        timing: Timing,
        faults: SharedFaults,
        shutdown: watch::Receiver<bool>,
    ) -> Result<Self, reqwest::Error> {
        let client = reqwest::Client::builder()
            .timeout(timing.webhook_timeout)
            .pool_max_idle_per_host(MAX_IN_FLIGHT)
            .build()?;
        Ok(Self {
            client,
            in_flight: tokio::sync::Semaphore::new(MAX_IN_FLIGHT),
            base: base.map(|b| b.trim_end_matches('/').to_owned()),
            credentials,
            timing,
            faults,
            log: Mutex::new(Vec::new()),
            shutdown,
        })
    }

    /// Raises an event: held until the response if raised inside a request, sent now otherwise.
    pub(crate) fn emit(self: &Arc<Self>, event: Event) {
        let mut event = Some(event);
        let collected = SCOPE.try_with(|c| {
            if let Some(ev) = event.take() {
                c.0.lock().unwrap_or_else(PoisonError::into_inner).push(ev);
            }
        });
        if collected.is_err() {
            if let Some(ev) = event {
                let plan = self.faults.decide_webhook(false);
                self.schedule(ev, plan.delays, false);
            }
        }
    }

    /// Decides the fate of the events a request raised. Early ones get their first delivery
    /// attempt now, before this returns (and so before the response); the others are returned,
    /// with their per-copy delays, for [`Webhooks::schedule_later`] once the response is sent.
    pub(crate) async fn release(self: &Arc<Self>, events: Vec<Event>) -> Vec<Later> {
        let mut later = Vec::new();
        for event in events {
            let plan = self.faults.decide_webhook(true);
            if plan.early && !plan.delays.is_empty() {
                let mut delays = plan.delays.into_iter();
                delays.next();
                let index = self.log_new(&event, 0, true, false);
                let delivered = self.attempt(&event, index, 1).await;
                if !delivered {
                    let me = Arc::clone(self);
                    let ev = event.clone();
                    tokio::spawn(async move { me.retry_loop(ev, index, 2).await });
                }
                let rest: Vec<Duration> = delays.collect();
                self.schedule_copies(event, rest, 1);
            } else {
                later.push(Later {
                    event,
                    delays: plan.delays,
                });
            }
        }
        later
    }

    /// Schedules events held back by [`Webhooks::release`].
    pub(crate) fn schedule_later(self: &Arc<Self>, later: Vec<Later>) {
        for l in later {
            self.schedule(l.event, l.delays, false);
        }
    }

    fn schedule(self: &Arc<Self>, event: Event, delays: Vec<Duration>, early: bool) {
        if delays.is_empty() {
            tracing::debug!(event_id = %event.event_id, event_type = %event.event_type, "webhook dropped (fault)");
            self.log_new(&event, 0, early, true);
            return;
        }
        self.schedule_copies(event, delays, 0);
    }

    fn schedule_copies(self: &Arc<Self>, event: Event, delays: Vec<Duration>, first_copy: usize) {
        for (i, delay) in delays.into_iter().enumerate() {
            let copy = first_copy + i;
            let index = self.log_new(&event, copy, false, false);
            let me = Arc::clone(self);
            let ev = event.clone();
            let shutdown = self.shutdown.clone();
            tokio::spawn(async move {
                tokio::select! {
                    () = tokio::time::sleep(delay) => me.retry_loop(ev, index, 1).await,
                    () = until_shutdown(shutdown) => {}
                }
            });
        }
    }

    /// Attempts `first..=max` with doubling delays between them.
    async fn retry_loop(self: Arc<Self>, event: Event, index: usize, first: u32) {
        for attempt in first..=self.timing.webhook_attempts.max(1) {
            if attempt > 1 {
                let factor = 2u32.saturating_pow(attempt.saturating_sub(2));
                let wait = self.timing.webhook_retry_base.saturating_mul(factor);
                tokio::select! {
                    () = tokio::time::sleep(wait) => {}
                    () = until_shutdown(self.shutdown.clone()) => return,
                }
            }
            if self.attempt(&event, index, attempt).await {
                return;
            }
        }
        tracing::warn!(event_id = %event.event_id, provider = %event.provider, "webhook given up after all attempts");
    }

    /// One delivery attempt; true when the receiver answered 2xx (or nothing is configured).
    async fn attempt(&self, event: &Event, index: usize, attempt: u32) -> bool {
        let url = match (&event.url, &self.base) {
            (Some(url), _) => url.clone(),
            (None, Some(base)) => format!("{base}/webhooks/{}", event.provider),
            (None, None) => {
                tracing::debug!(event_id = %event.event_id, event_type = %event.event_type, "no webhook base configured; not sending");
                self.update(index, |d| d.attempts = attempt);
                return true;
            }
        };
        let Ok(_permit) = self.in_flight.acquire().await else {
            return false;
        };
        let mut request = self
            .client
            .post(&url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(event.body.as_ref().clone());
        for (name, value) in
            signature_headers(&self.credentials, event.provider, &event.body, Utc::now())
        {
            request = request.header(name, value);
        }
        match request.send().await {
            Ok(resp) => {
                let status = resp.status();
                self.update(index, |d| {
                    d.attempts = attempt;
                    d.last_status = Some(status.as_u16());
                    d.delivered = status.is_success();
                    d.last_error = None;
                });
                tracing::debug!(%url, event_id = %event.event_id, %status, attempt, "webhook attempt");
                status.is_success()
            }
            Err(err) => {
                self.update(index, |d| {
                    d.attempts = attempt;
                    d.last_error = Some(err.to_string());
                });
                tracing::debug!(%url, event_id = %event.event_id, %err, attempt, "webhook attempt failed");
                false
            }
        }
    }

    fn log_new(&self, event: &Event, copy: usize, early: bool, dropped: bool) -> usize {
        let mut log = self.log.lock().unwrap_or_else(PoisonError::into_inner);
        log.push(Delivery {
            provider: event.provider,
            event_id: event.event_id.clone(),
            event_type: event.event_type.clone(),
            copy,
            early,
            dropped,
            attempts: 0,
            delivered: false,
            last_status: None,
            last_error: None,
            body: serde_json::from_slice(&event.body).unwrap_or(Value::Null),
            created_at: Utc::now(),
        });
        log.len() - 1
    }

    fn update(&self, index: usize, f: impl FnOnce(&mut Delivery)) {
        let mut log = self.log.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(d) = log.get_mut(index) {
            f(d);
        }
    }

    /// The delivery log.
    pub(crate) fn deliveries(&self) -> Vec<Delivery> {
        self.log
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_match_known_vectors() {
        let creds = Credentials::dev();
        let body = br#"{"id":"e1"}"#;
        let headers = signature_headers(&creds, Provider::Lumanu, body, Utc::now());
        assert_eq!(headers[0].0, "X-Signature");
        assert_eq!(
            headers[0].1,
            hmac_sha256_hex(&SecretString::from("sandbox-lumanu-webhook-secret"), body)
        );
        let now = DateTime::from_timestamp(1_700_000_000, 0).expect("ts");
        let headers = signature_headers(&creds, Provider::Blaaiz, body, now);
        assert_eq!(headers[0], ("x-blaaiz-timestamp", "1700000000".to_owned()));
        let mut signed = b"1700000000.".to_vec();
        signed.extend_from_slice(body);
        assert_eq!(
            headers[1].1,
            hmac_sha256_hex(
                &SecretString::from("sandbox-blaaiz-webhook-secret"),
                &signed
            )
        );
        let headers = signature_headers(&creds, Provider::Lean, body, now);
        assert!(headers[0].1.starts_with("sha512="));
        assert_eq!(headers[0].1.len(), "sha512=".len() + 128);
        // RFC 4231 test case 2.
        assert_eq!(
            hmac_sha256_hex(&SecretString::from("Jefe"), b"what do ya want for nothing?"),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
