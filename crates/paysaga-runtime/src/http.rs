//! The worker's HTTP server: health and readiness probes. Webhook routes are added by the
//! binary, which knows the providers' signature schemes.

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;

use crate::Engine;

/// `GET /healthz` (process alive) and `GET /readyz` (database reachable).
pub fn probes(engine: Engine) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .with_state(engine)
}

async fn readyz(State(engine): State<Engine>) -> (StatusCode, String) {
    match engine.store().list_definitions().await {
        Ok(_) => (StatusCode::OK, "ready".to_string()),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {e}")),
    }
}
