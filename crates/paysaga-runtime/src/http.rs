//! The worker's HTTP server: `POST /webhooks/{provider}` (inbox first: verify, store, then
//! answer), `GET /healthz`, `GET /readyz`, `GET /metrics`.
//!
//! Signature schemes are the providers' business: the binary plugs in one
//! [`WebhookVerifier`] per configured provider.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use serde_json::{json, Value};
use tracing::{error, info, warn};

use crate::{Engine, IncomingEvent};

/// Default largest webhook body accepted (413 above it).
pub const DEFAULT_BODY_LIMIT: usize = 256 * 1024;

/// A webhook that passed its signature check.
#[derive(Debug, Clone)]
pub struct VerifiedEvent {
    /// The provider's event id (dedup key).
    pub event_id: String,
    /// Event type.
    pub event_type: String,
    /// Correlation key naming the object, when the body has one.
    pub correlation_key: Option<String>,
    /// The parsed body.
    pub payload: Value,
}

/// Why a webhook is not accepted as an event.
#[derive(Debug, Clone)]
pub enum Rejection {
    /// Missing or wrong signature, or a stale timestamp: 401, nothing stored.
    Unauthorized {
        /// Safe to log (no secrets, no signature values).
        reason: String,
    },
    /// The signature is valid but the body cannot be parsed: stored for operators, 400.
    Unparseable {
        /// A stable id for deduplication (e.g. a hash of the body).
        event_id: String,
        /// What is wrong.
        reason: String,
    },
}

/// Verifies and parses one provider's webhooks.
pub trait WebhookVerifier: Send + Sync + std::fmt::Debug + 'static {
    /// The provider name in the path (`lumanu`, `blaaiz`, `lean`).
    fn provider(&self) -> &str;
    /// Checks the signature over the raw body, then parses it.
    fn verify(
        &self,
        headers: &HeaderMap,
        body: &[u8],
        now: DateTime<Utc>,
    ) -> Result<VerifiedEvent, Rejection>;
}

#[derive(Clone, Debug)]
struct AppState {
    engine: Engine,
    verifiers: Arc<HashMap<String, Arc<dyn WebhookVerifier>>>,
}

/// The whole HTTP surface of a worker.
pub fn router(
    engine: Engine,
    verifiers: Vec<Arc<dyn WebhookVerifier>>,
    body_limit: usize,
) -> Router {
    let verifiers = verifiers
        .into_iter()
        .map(|v| (v.provider().to_string(), v))
        .collect();
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/webhooks/{provider}", post(webhook))
        .layer(DefaultBodyLimit::max(body_limit))
        .with_state(AppState {
            engine,
            verifiers: Arc::new(verifiers),
        })
}

/// Probes only (`/healthz`, `/readyz`, `/metrics`), for processes without webhooks.
pub fn probes(engine: Engine) -> Router {
    router(engine, Vec::new(), DEFAULT_BODY_LIMIT)
}

async fn readyz(State(app): State<AppState>) -> (StatusCode, String) {
    match app.engine.store().schema_versions().await {
        Ok((Some(applied), known)) if applied == known => (StatusCode::OK, "ready".to_string()),
        Ok((applied, known)) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: database schema at {applied:?}, this build expects {known}; run `paysaga migrate`"),
        ),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {e}")),
    }
}

async fn metrics(State(app): State<AppState>) -> Response {
    (
        [("content-type", "text/plain; version=0.0.4; charset=utf-8")],
        app.engine.metrics().render(),
    )
        .into_response()
}

fn reply(status: StatusCode, body: Value) -> Response {
    (status, Json(body)).into_response()
}

async fn webhook(
    State(app): State<AppState>,
    Path(provider): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some(verifier) = app.verifiers.get(&provider) else {
        return reply(
            StatusCode::NOT_FOUND,
            json!({"error": format!("no webhook endpoint for provider {provider:?} on this worker")}),
        );
    };
    let engine = &app.engine;
    match verifier.verify(&headers, &body, Utc::now()) {
        Ok(event) => {
            let event_id = event.event_id.clone();
            match engine
                .deliver_event(IncomingEvent {
                    provider: provider.clone(),
                    event_id: event.event_id,
                    event_type: event.event_type,
                    correlation_key: event.correlation_key,
                    payload: event.payload,
                })
                .await
            {
                Ok(d) => {
                    info!(%provider, %event_id, inbox_id = d.inbox_id, duplicate = d.duplicate, matched = ?d.matched_saga, "webhook stored");
                    reply(
                        StatusCode::OK,
                        json!({"status": if d.duplicate { "duplicate" } else { "stored" }, "inbox_id": d.inbox_id}),
                    )
                }
                Err(e) => {
                    // Not stored: the provider must retry, so no 2xx.
                    error!(%provider, %event_id, error = %e, "webhook could not be stored; answering 503 so the provider retries");
                    reply(
                        StatusCode::SERVICE_UNAVAILABLE,
                        json!({"error": "event not stored; retry later"}),
                    )
                }
            }
        }
        Err(Rejection::Unauthorized { reason }) => {
            engine.metrics().inbox(&provider, "rejected");
            warn!(%provider, %reason, "webhook refused: bad signature");
            reply(StatusCode::UNAUTHORIZED, json!({"error": reason}))
        }
        Err(Rejection::Unparseable { event_id, reason }) => {
            match engine
                .store_unparseable(&provider, &event_id, body.to_vec(), &reason)
                .await
            {
                Ok(d) => {
                    warn!(%provider, %event_id, inbox_id = d.inbox_id, %reason, "webhook verified but unparseable; stored for operators");
                    reply(
                        StatusCode::BAD_REQUEST,
                        json!({"error": reason, "stored": true, "inbox_id": d.inbox_id}),
                    )
                }
                Err(e) => {
                    error!(%provider, error = %e, "unparseable webhook could not be stored");
                    reply(
                        StatusCode::SERVICE_UNAVAILABLE,
                        json!({"error": "event not stored; retry later"}),
                    )
                }
            }
        }
    }
}
