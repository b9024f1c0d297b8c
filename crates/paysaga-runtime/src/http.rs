//! The worker's HTTP server: `POST /webhooks/{provider}` (inbox first: verify, store, then
//! answer), `GET /healthz`, `GET /readyz`, `GET /metrics`.
//!
//! Signature schemes are the providers' business: the binary plugs in one
//! [`WebhookVerifier`] per configured provider.
//!
//! [`serve`] runs a router with the limits a public endpoint needs (`axum::serve` has none):
//! a client must send its request head within [`ServeConfig::header_read_timeout`] (else the
//! connection is closed), a whole request (body included) must be read and answered within
//! [`ServeConfig::request_timeout`] (else 408), and at most
//! [`ServeConfig::max_connections`] connections are served at once.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

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

/// Webhooks stored at once. The store's pool (16 connections) also serves the worker's claims
/// and step commits: a burst of webhooks may use a quarter of it, never all of it.
pub const WEBHOOK_STORE_CONCURRENCY: usize = 4;

/// How long a webhook waits for a turn to be stored before it is answered 503 (the provider
/// retries it later); shorter than the request timeout.
pub const WEBHOOK_STORE_WAIT: Duration = Duration::from_secs(5);

/// Limits of [`serve`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ServeConfig {
    /// Time a client has to send a whole request head (and, on a kept-alive connection, the
    /// next one). Past it the connection is closed without an answer (slow-loris headers).
    pub header_read_timeout: Duration,
    /// Time a request has from its head to its answer, reading the body included. Past it the
    /// answer is 408 (slow-loris bodies). Longer than the database's acquire timeout, so a
    /// database outage still answers 503.
    pub request_timeout: Duration,
    /// Connections served at once; more wait in the listen backlog.
    pub max_connections: usize,
    /// Time in-flight requests get after the shutdown signal.
    pub shutdown_grace: Duration,
}

impl Default for ServeConfig {
    fn default() -> Self {
        ServeConfig {
            header_read_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(20),
            max_connections: 1024,
            shutdown_grace: Duration::from_secs(20),
        }
    }
}

/// Serves `app` on `listener` (HTTP/1.1) until `shutdown` completes, with the limits of
/// `config`; then lets in-flight requests finish for up to `config.shutdown_grace`.
///
/// Errors accepting a connection (e.g. out of file descriptors) are logged and retried; they
/// never stop the server.
pub async fn serve<F>(
    listener: tokio::net::TcpListener,
    app: Router,
    config: ServeConfig,
    shutdown: F,
) -> std::io::Result<()>
where
    F: Future<Output = ()> + Send,
{
    use hyper_util::rt::{TokioIo, TokioTimer};
    use hyper_util::server::graceful::GracefulShutdown;
    use hyper_util::service::TowerToHyperService;

    let app = app.layer(tower_http::timeout::TimeoutLayer::with_status_code(
        StatusCode::REQUEST_TIMEOUT,
        config.request_timeout,
    ));
    let mut http1 = hyper::server::conn::http1::Builder::new();
    http1
        .timer(TokioTimer::new())
        .header_read_timeout(config.header_read_timeout);
    let permits = Arc::new(tokio::sync::Semaphore::new(config.max_connections.max(1)));
    let graceful = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
            () = shutdown.as_mut() => break,
        };
        let (stream, remote) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning or exiting.
                    warn!(error = %e, "cannot accept an HTTP connection; retrying");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = shutdown.as_mut() => break,
        };
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(app.clone());
        let conn = http1.serve_connection(TokioIo::new(stream), service);
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                if e.is_timeout() {
                    // Also how every idle keep-alive connection ends (a provider's connection
                    // pool keeps them open): routine, so not at info.
                    tracing::debug!(%remote, "HTTP connection closed: request head not received in time");
                } else {
                    tracing::debug!(%remote, error = %e, "HTTP connection ended with an error");
                }
            }
            drop(permit);
        });
    }
    drop(listener);
    if tokio::time::timeout(config.shutdown_grace, graceful.shutdown())
        .await
        .is_err()
    {
        warn!(grace = ?config.shutdown_grace, "HTTP connections still open after the grace period; dropping them");
    }
    Ok(())
}

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
    /// Turns to store webhooks ([`WEBHOOK_STORE_CONCURRENCY`]).
    store_turns: Arc<tokio::sync::Semaphore>,
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
        .layer(axum::middleware::from_fn_with_state(
            body_limit,
            refuse_announced_oversize,
        ))
        .with_state(AppState {
            engine,
            verifiers: Arc::new(verifiers),
            store_turns: Arc::new(tokio::sync::Semaphore::new(WEBHOOK_STORE_CONCURRENCY)),
        })
}

/// Probes only (`/healthz`, `/readyz`, `/metrics`), for processes without webhooks.
pub fn probes(engine: Engine) -> Router {
    router(engine, Vec::new(), DEFAULT_BODY_LIMIT)
}

/// 413 at once for a `Content-Length` above the limit, instead of waiting for a body that
/// will be refused anyway (or that never comes).
async fn refuse_announced_oversize(
    State(limit): State<usize>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let announced = request
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    match announced {
        Some(n) if n > limit as u64 => reply(
            StatusCode::PAYLOAD_TOO_LARGE,
            json!({"error": format!("body of {n} bytes is over the limit of {limit} bytes")}),
        ),
        _ => next.run(request).await,
    }
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
        // What prometheus-client writes: OpenMetrics text (ends with `# EOF`).
        [(
            "content-type",
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        app.engine.metrics().render(),
    )
        .into_response()
}

/// Runs store work to its end even if the request is dropped meanwhile (client gone, request
/// timeout): a transaction cancelled half way, above all during its `BEGIN`, can leave a pooled
/// connection inside an open transaction whose locks then stall every worker on the database.
/// Found by the long chaos run.
async fn to_completion<T: Send + 'static>(
    work: impl std::future::Future<Output = Result<T, crate::Error>> + Send + 'static,
) -> Result<T, String> {
    use tracing::Instrument;
    match tokio::spawn(work.in_current_span()).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(e.to_string()),
        Err(e) => Err(format!("the store task failed: {e}")),
    }
}

/// A turn to use the store, to be held by the store work to its end (also if the request is
/// dropped): a burst of webhooks cannot take every pooled connection from step commits. No turn
/// within [`WEBHOOK_STORE_WAIT`]: 503 with `Retry-After`, so the provider sends it again.
async fn store_turn(
    app: &AppState,
    provider: &str,
) -> Result<tokio::sync::OwnedSemaphorePermit, Response> {
    match tokio::time::timeout(WEBHOOK_STORE_WAIT, app.store_turns.clone().acquire_owned()).await {
        Ok(Ok(turn)) => Ok(turn),
        _ => {
            app.engine.metrics().inbox(provider, "busy");
            warn!(%provider, "too many webhooks being stored at once; answering 503 so the provider retries");
            Err((
                StatusCode::SERVICE_UNAVAILABLE,
                [(axum::http::header::RETRY_AFTER, "1")],
                Json(json!({"error": "busy: event not stored; retry later"})),
            )
                .into_response())
        }
    }
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
            let turn = match store_turn(&app, &provider).await {
                Ok(turn) => turn,
                Err(busy) => return busy,
            };
            let event_id = event.event_id.clone();
            let incoming = IncomingEvent {
                provider: provider.clone(),
                event_id: event.event_id,
                event_type: event.event_type,
                correlation_key: event.correlation_key,
                payload: event.payload,
            };
            let delivering = engine.clone();
            match to_completion(async move {
                let delivered = delivering.deliver_event(incoming).await;
                drop(turn);
                delivered
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
                    engine.metrics().inbox(&provider, "not_stored");
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
            let turn = match store_turn(&app, &provider).await {
                Ok(turn) => turn,
                Err(busy) => return busy,
            };
            let storing = engine.clone();
            let (p, id, raw, why) = (
                provider.clone(),
                event_id.clone(),
                body.to_vec(),
                reason.clone(),
            );
            match to_completion(async move {
                let stored = storing.store_unparseable(&p, &id, raw, &why).await;
                drop(turn);
                stored
            })
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
                    engine.metrics().inbox(&provider, "not_stored");
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A request dropped while its store work runs (client gone, request timeout) must not
    /// cancel that work half way: it finishes on its own task.
    #[tokio::test]
    async fn store_work_runs_to_completion_when_the_request_is_dropped() {
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        let request = to_completion(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let _ = done_tx.send(());
            Ok::<_, crate::Error>(())
        });
        // The request is dropped long before its work ends.
        assert!(tokio::time::timeout(Duration::from_millis(1), request)
            .await
            .is_err());
        tokio::time::timeout(Duration::from_secs(5), done_rx)
            .await
            .expect("the work went on after the request was dropped")
            .expect("and finished");
    }
}
