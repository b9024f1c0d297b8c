//! `/_sandbox/*`: ledger, balances, Lumanu objects, faults, webhook log, reset, the Blaaiz
//! upload target, and Lean's payout authorisation (mode, queued payments, authorise).
//! No authentication and never subject to faults.

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};

use crate::app::App;
use crate::faults::FaultSpec;
use crate::{blaaiz, lean, lumanu, Provider};

pub(crate) fn router() -> Router<App> {
    Router::new()
        .route("/ledger", get(ledger))
        .route("/stats", get(stats))
        .route("/balances", get(balances))
        .route("/faults", get(get_faults).put(put_faults))
        .route("/webhooks", get(webhooks))
        .route("/reset", post(reset))
        .route("/lumanu/objects", get(lumanu_objects))
        .route("/requests", get(requests).delete(forget_requests))
        .route("/requests/recording", axum::routing::put(recording))
        .nest("/blaaiz/uploads", blaaiz::upload_router())
        .route("/blaaiz/files/{file_id}", get(blaaiz::uploaded_file))
        .route(
            "/lean/authorization",
            get(get_lean_authorization).put(put_lean_authorization),
        )
        .route("/lean/payments", get(lean_payments))
        .route(
            "/lean/payments/{payment_id}/authorize",
            post(authorize_lean_payment),
        )
        .route(
            "/drift/lumanu/payables/{id}/reverse",
            post(reverse_lumanu_payable),
        )
        .route("/drift/lumanu/stray", post(lumanu_stray))
}

/// `POST /_sandbox/drift/lumanu/payables/{id}/reverse`: a paid payable is reversed later, its
/// webhook dropped (drift for `paysaga reconcile`). 200 with the payable; 409 when it is not
/// paid or unknown.
async fn reverse_lumanu_payable(State(app): State<App>, Path(id): Path<String>) -> Response {
    match lumanu::reverse_paid_payable(&app, &id) {
        Ok(payable) => Json(payable).into_response(),
        Err(e) => (StatusCode::CONFLICT, Json(json!({"error": e}))).into_response(),
    }
}

/// `POST /_sandbox/drift/lumanu/stray`: a stray payable or an unlinked deposit, without a
/// webhook (see `lumanu::create_stray`). 200 with the object; 400 for a bad body.
async fn lumanu_stray(State(app): State<App>, bytes: Bytes) -> Response {
    let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    match lumanu::create_stray(&app, &body) {
        Ok(object) => Json(object).into_response(),
        Err(e) => (StatusCode::BAD_REQUEST, Json(json!({"error": e}))).into_response(),
    }
}

/// `GET /_sandbox/lean/authorization`: `{"mode": "automatic"|"manual", "authorize_after_ms"}`.
async fn get_lean_authorization(State(app): State<App>) -> Json<Value> {
    let s = app.lean_authorization();
    Json(json!({
        "mode": s.mode.as_str(),
        "authorize_after_ms": s.authorize_after.map(|d| d.as_millis() as u64),
    }))
}

/// `PUT /_sandbox/lean/authorization`: `{"mode", "authorize_after_ms"?}` or a plain-text mode.
/// Applies to intents created afterwards; queued payments stay queued.
async fn put_lean_authorization(State(app): State<App>, bytes: Bytes) -> Response {
    let text = String::from_utf8_lossy(&bytes).into_owned();
    let parsed = match serde_json::from_str::<Value>(&text) {
        Ok(Value::Object(map)) => {
            let mode = map
                .get("mode")
                .and_then(Value::as_str)
                .ok_or_else(|| "expected {\"mode\": \"automatic\"|\"manual\"}".to_owned())
                .and_then(str::parse::<lean::LeanAuthorization>);
            let after = match map.get("authorize_after_ms") {
                None | Some(Value::Null) => Ok(None),
                Some(v) => v
                    .as_u64()
                    .map(|ms| Some(std::time::Duration::from_millis(ms)))
                    .ok_or_else(|| "authorize_after_ms must be a non-negative integer".to_owned()),
            };
            mode.and_then(|mode| {
                after.map(|authorize_after| lean::AuthorizationSetting {
                    mode,
                    authorize_after,
                })
            })
        }
        _ => text
            .parse::<lean::LeanAuthorization>()
            .map(|mode| lean::AuthorizationSetting {
                mode,
                authorize_after: None,
            }),
    };
    match parsed {
        Ok(setting) => {
            app.set_lean_authorization(setting);
            get_lean_authorization(State(app)).await.into_response()
        }
        Err(e) => (StatusCode::BAD_REQUEST, Json(json!({"error": e}))).into_response(),
    }
}

/// `GET /_sandbox/lean/payments[?intent_id=]`: every Lean payment, oldest first, with
/// `awaiting_authorization` and, once authorised, `authorized_by` / `authorized_at`.
async fn lean_payments(
    State(app): State<App>,
    Query(q): Query<std::collections::HashMap<String, String>>,
) -> Json<Value> {
    Json(lean::payments_json(
        &app,
        q.get("intent_id").map(String::as_str),
    ))
}

/// `POST /_sandbox/lean/payments/{payment_id}/authorize` (body optional `{"authorized_by"}`):
/// a Financial Controller approves a queued payment in Lean's Application Dashboard. 200 with
/// the payment; 404 unknown; 409 when it is not awaiting authorisation.
async fn authorize_lean_payment(
    State(app): State<App>,
    Path(payment_id): Path<String>,
    bytes: Bytes,
) -> Response {
    let by = serde_json::from_slice::<Value>(&bytes)
        .ok()
        .and_then(|v| {
            v.get("authorized_by")
                .and_then(Value::as_str)
                .map(str::to_owned)
        })
        .unwrap_or_else(|| "Financial Controller (sandbox control endpoint)".to_owned());
    match lean::authorize(&app, &payment_id, &by) {
        Ok(payment) => Json(payment).into_response(),
        Err(lean::AuthorizeError::Unknown) => (
            StatusCode::NOT_FOUND,
            Json(json!({"error": format!("no Lean payment {payment_id}")})),
        )
            .into_response(),
        Err(lean::AuthorizeError::NotQueued(status)) => (
            StatusCode::CONFLICT,
            Json(json!({"error": format!(
                "Lean payment {payment_id} is {status}, not awaiting authorisation"
            )})),
        )
            .into_response(),
    }
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

/// `GET /_sandbox/stats`: requests and rate-limit rejections per provider.
async fn stats(State(app): State<App>) -> Json<Value> {
    Json(app.rate_limiter.stats())
}
