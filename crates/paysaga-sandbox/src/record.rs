//! The request log behind `/_sandbox/requests`: provider API exchanges (method, path, request
//! and response bodies, status), kept only while recording is switched on
//! (`PUT /_sandbox/requests/recording` with `on`), so that tests can check every request a
//! client sent and every answer the sandbox gave against the providers' published schemas.
//! Off by default: it costs nothing then.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, PoisonError};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::header::CONTENT_TYPE;
use axum::middleware::Next;
use axum::response::Response;
use serde::Serialize;
use serde_json::Value;

use crate::app::App;
use crate::Provider;

/// Bodies larger than this are not kept (document uploads).
const MAX_BODY: usize = 1024 * 1024;
/// At most this many exchanges are kept; older ones are dropped.
const MAX_EXCHANGES: usize = 20_000;

/// One provider API exchange.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Exchange {
    pub provider: Provider,
    pub method: String,
    /// Path below the provider's prefix, e.g. `/api/external/payout`.
    pub path: String,
    pub query: Option<String>,
    pub request_content_type: Option<String>,
    /// JSON body, or the fields of a form body; null otherwise.
    pub request: Value,
    pub status: u16,
    /// JSON body; null otherwise.
    pub response: Value,
}

/// The switch and the log.
#[derive(Debug, Default)]
pub(crate) struct Recorder {
    on: AtomicBool,
    log: Mutex<Vec<Exchange>>,
}

impl Recorder {
    pub(crate) fn set(&self, on: bool) {
        self.on.store(on, Ordering::SeqCst);
    }

    pub(crate) fn is_on(&self) -> bool {
        self.on.load(Ordering::SeqCst)
    }

    pub(crate) fn exchanges(&self) -> Vec<Exchange> {
        self.log
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    pub(crate) fn clear(&self) {
        self.log
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
    }

    fn push(&self, exchange: Exchange) {
        let mut log = self.log.lock().unwrap_or_else(PoisonError::into_inner);
        if log.len() >= MAX_EXCHANGES {
            log.remove(0);
        }
        log.push(exchange);
    }
}

fn parse_body(content_type: Option<&str>, bytes: &[u8]) -> Value {
    let ct = content_type.unwrap_or("").to_ascii_lowercase();
    if ct.starts_with("application/x-www-form-urlencoded") {
        let fields: serde_json::Map<String, Value> = url_decode_pairs(bytes);
        return Value::Object(fields);
    }
    serde_json::from_slice(bytes).unwrap_or(Value::Null)
}

fn url_decode_pairs(bytes: &[u8]) -> serde_json::Map<String, Value> {
    reqwest::Url::parse(&format!("http://form/?{}", String::from_utf8_lossy(bytes)))
        .map(|u| {
            u.query_pairs()
                .map(|(k, v)| (k.into_owned(), Value::String(v.into_owned())))
                .collect()
        })
        .unwrap_or_default()
}

/// Records provider API exchanges while recording is on; passes everything through untouched.
pub(crate) async fn middleware(State(app): State<App>, req: Request, next: Next) -> Response {
    let provider = Provider::from_path(req.uri().path());
    let (Some(provider), true) = (provider, app.recorder.is_on()) else {
        return next.run(req).await;
    };
    let method = req.method().to_string();
    let full = req.uri().path().to_owned();
    let path = full
        .strip_prefix(&format!("/{provider}"))
        .unwrap_or(&full)
        .to_owned();
    let query = req.uri().query().map(str::to_owned);
    let request_content_type = req
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let (parts, body) = req.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, MAX_BODY).await else {
        return Response::builder()
            .status(axum::http::StatusCode::PAYLOAD_TOO_LARGE)
            .body(Body::empty())
            .unwrap_or_default();
    };
    let request = parse_body(request_content_type.as_deref(), &bytes);
    let response = next
        .run(Request::from_parts(parts, Body::from(bytes)))
        .await;
    let status = response.status().as_u16();
    let (parts, body) = response.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, MAX_BODY).await else {
        return Response::from_parts(parts, Body::empty());
    };
    app.recorder.push(Exchange {
        provider,
        method,
        path,
        query,
        request_content_type,
        request,
        status,
        response: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    });
    Response::from_parts(parts, Body::from(bytes))
}
