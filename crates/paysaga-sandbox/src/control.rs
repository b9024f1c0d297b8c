//! `/_sandbox/*`: ledger, balances, Lumanu objects, faults, webhook log, reset, and the Blaaiz
//! upload target.
//! No authentication and never subject to faults.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};

use crate::app::App;
use crate::faults::FaultSpec;
use crate::{blaaiz, lumanu, Provider};

pub(crate) fn router() -> Router<App> {
    Router::new()
        .route("/ledger", get(ledger))
        .route("/balances", get(balances))
        .route("/faults", get(get_faults).put(put_faults))
        .route("/webhooks", get(webhooks))
        .route("/reset", post(reset))
        .route("/lumanu/objects", get(lumanu_objects))
        .route("/requests", get(requests).delete(forget_requests))
        .route("/requests/recording", axum::routing::put(recording))
        .nest("/blaaiz/uploads", blaaiz::upload_router())
        .route("/blaaiz/files/{file_id}", get(blaaiz::uploaded_file))
}

/// `GET /_sandbox/requests`: the provider API exchanges recorded, oldest first.
async fn requests(State(app): State<App>) -> Json<Value> {
    Json(json!(app.recorder.exchanges()))
}

/// `DELETE /_sandbox/requests`.
async fn forget_requests(State(app): State<App>) -> StatusCode {
    app.recorder.clear();
    StatusCode::NO_CONTENT
}

/// `PUT /_sandbox/requests/recording` with body `on` or `off`.
async fn recording(State(app): State<App>, body: Bytes) -> Response {
    match String::from_utf8_lossy(&body).trim() {
        "on" => app.recorder.set(true),
        "off" => app.recorder.set(false),
        other => {
            return (
                StatusCode::BAD_REQUEST,
                format!("expected `on` or `off`, not {other:?}"),
            )
                .into_response()
        }
    }
    StatusCode::NO_CONTENT.into_response()
}

/// `GET /_sandbox/ledger`: every money movement, oldest first.
async fn ledger(State(app): State<App>) -> Json<Value> {
    Json(app.with(|w| json!(w.ledger.entries())))
}

/// `GET /_sandbox/balances`: every account the sandbox knows, with its balance (the sum of its
/// ledger entries) and, for Lumanu workspaces, the available balance (minus unlinked deposits).
async fn balances(State(app): State<App>) -> Json<Value> {
    Json(app.with(|w| {
        let mut out: Vec<Value> = Vec::new();
        for (id, balance, available) in w.lumanu.balances(&w.ledger) {
            out.push(json!({
                "provider": Provider::Lumanu, "account": id, "account_type": "workspace_wallet",
                "currency": "USD", "balance": balance, "available_balance": available,
            }));
        }
        for (id, currency, balance) in blaaiz::Objects::balances(&w.ledger) {
            out.push(json!({
                "provider": Provider::Blaaiz, "account": id, "account_type": "business_wallet",
                "currency": currency, "balance": balance, "available_balance": balance,
                "business_id": blaaiz::BUSINESS_ID,
            }));
        }
        for (id, currency, owner) in w.lean.accounts() {
            let balance = w.ledger.balance(Provider::Lean, &id, currency);
            out.push(json!({
                "provider": Provider::Lean, "account": id, "account_type": "payer_bank_account",
                "currency": currency, "balance": balance, "available_balance": balance,
                "owner": owner,
            }));
        }
        // Anything else that ever moved (none today; keeps the listing complete by construction).
        for (provider, account, currency, balance) in w.ledger.accounts() {
            let listed = out.iter().any(|a| {
                a["provider"] == json!(provider)
                    && a["account"] == account
                    && a["currency"] == currency
            });
            if !listed {
                out.push(json!({
                    "provider": provider, "account": account, "account_type": "other",
                    "currency": currency, "balance": balance, "available_balance": balance,
                }));
            }
        }
        json!({
            "accounts": out,
            "lumanu_default_workspace_id": lumanu::DEFAULT_WORKSPACE_ID,
            "lean_default_destination_id": crate::lean::DEFAULT_DESTINATION_ID,
        })
    }))
}

/// `GET /_sandbox/lumanu/objects`: every Lumanu funding (invoice or balance, with
/// `deposit_transfer_id` once an invoice was paid) and payable, oldest first.
async fn lumanu_objects(State(app): State<App>) -> Json<Value> {
    Json(app.with(|w| w.lumanu.objects_json()))
}

async fn get_faults(State(app): State<App>) -> Json<Value> {
    let spec = app.faults.spec();
    Json(json!({"spec": spec.to_string()}))
}

/// `PUT /_sandbox/faults`: body is the spec text, or `{"spec": "..."}`.
async fn put_faults(State(app): State<App>, bytes: Bytes) -> Response {
    let text = String::from_utf8_lossy(&bytes).into_owned();
    let text = match serde_json::from_str::<Value>(&text) {
        Ok(Value::Object(map)) => match map.get("spec").and_then(Value::as_str) {
            Some(s) => s.to_owned(),
            None => {
                return (
                    StatusCode::BAD_REQUEST,
                    Json(json!({"error": "expected {\"spec\": \"...\"} or a plain-text spec"})),
                )
                    .into_response()
            }
        },
        _ => text,
    };
    match text.parse::<FaultSpec>() {
        Ok(spec) => {
            app.faults.replace(spec);
            Json(json!({"spec": app.faults.spec().to_string()})).into_response()
        }
        Err(e) => (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": e.to_string()})),
        )
            .into_response(),
    }
}

async fn webhooks(State(app): State<App>) -> Json<Value> {
    Json(json!(app.webhooks.deliveries()))
}

async fn reset(State(app): State<App>) -> StatusCode {
    app.reset();
    StatusCode::NO_CONTENT
}
