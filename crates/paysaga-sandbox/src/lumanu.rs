//! Lumanu: OAuth2 client credentials, pre-funding (invoice -> deposit -> link), payables,
//! paying approved payables from the workspace balance.
//!
//! No idempotency: a repeated `POST /payable` creates a second payable, as the real API does.

use std::collections::{BTreeMap, HashMap};

use axum::body::Bytes;
use axum::extract::{Path, Query, Request, State};
use axum::http::StatusCode;
use axum::middleware::{from_fn_with_state, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use serde_json::{json, Value};
use uuid::Uuid;

use crate::app::{after, App};
use crate::auth::{bearer, client_matches};
use crate::body::Body;
use crate::ledger::{Direction, Kind, Ledger, Movement};
use crate::webhooks::Event;
use crate::Provider;

/// Workspace that exists from the start (any other UUID is created on first use).
pub const DEFAULT_WORKSPACE_ID: &str = "0967198e-ec7b-4c6b-b4d3-f71244cadbe9";
const CURRENCY: &str = "USD";
const DENOMINATION: &str = "us_cents";

/// A Lumanu API error: `{"error":{"code","message","request_id"}}`.
#[derive(Debug)]
pub(crate) struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }

    fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request", message)
    }

    fn not_found(what: &str, id: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("{what} {id} not found"),
        )
    }

    fn conflict(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, code, message)
    }

    /// An injected fault in Lumanu's shape.
    pub(crate) fn injected(status: StatusCode) -> Self {
        match status {
            StatusCode::TOO_MANY_REQUESTS => Self::new(
                status,
                "rate_limited",
                "Rate limit exceeded (100 requests/min)",
            ),
            StatusCode::GATEWAY_TIMEOUT => Self::new(status, "timeout", "Upstream timed out"),
            _ => Self::new(status, "internal_error", "Internal server error"),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({"error": {
            "code": self.code,
            "message": self.message,
            "request_id": Uuid::new_v4().to_string(),
        }});
        (self.status, Json(body)).into_response()
    }
}

type ApiResult = Result<Json<Value>, ApiError>;

#[derive(Debug, Clone)]
struct Workspace {
    id: String,
    display_name: String,
    /// Deposits in the balance that are not yet linked to their funding (not available).
    unlinked: i64,
    created_at: DateTime<Utc>,
}

#[derive(Debug, Clone)]
struct Funding {
    id: String,
    workspace_id: String,
    method: &'static str,
    amount: i64,
    description: Option<String>,
    recipient_email: Option<String>,
    bill_to: Option<String>,
    company_name: Option<String>,
    company_address_one: Option<String>,
    due_date: Option<String>,
    po_number: Option<String>,
    additional_notes: Option<String>,
    invoice_number: i64,
    status: &'static str,
    payable_ids: Vec<String>,
    /// Wallet transaction created when the invoice was paid.
    deposit_transfer_id: Option<String>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

impl Funding {
    fn json(&self) -> Value {
        json!({
            "id": self.id,
            "workspace_id": self.workspace_id,
            "method": self.method,
            "amount": self.amount,
            "amount_denomination": DENOMINATION,
            "additional_notes": self.additional_notes,
            "bill_to": self.bill_to,
            "company_address_one": self.company_address_one,
            "company_name": self.company_name,
            "description": self.description,
            "due_date": self.due_date,
            "po_number": self.po_number,
            "recipient_email": self.recipient_email,
            "invoice_number": self.invoice_number,
            "payable_ids": self.payable_ids,
            "status": self.status,
            "base_amount": self.amount,
            "fee_amount": 0,
            "fee_percent": null,
            "is_fee_additive": null,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
        })
    }
}

#[derive(Debug, Clone)]
struct Payable {
    id: String,
    workspace_id: String,
    project_id: Option<String>,
    amount: i64,
    description: String,
    due_date: Option<String>,
    invoice_number: i64,
    vendor_email: Option<String>,
    payee_lumanu_id: Option<String>,
    status: Option<&'static str>,
    payable_status: &'static str,
    custom_fields: Value,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

impl Payable {
    fn json(&self) -> Value {
        let display = self
            .vendor_email
            .as_deref()
            .and_then(|e| e.split('@').next())
            .map(str::to_owned);
        let mut v = json!({
            "id": self.id,
            "workspace_id": self.workspace_id,
            "amount": self.amount,
            "amount_denomination": DENOMINATION,
            "description": self.description,
            "due_date": self.due_date,
            "invoice_number": self.invoice_number,
            "vendor_status": "verified",
            "vendor_display_name": display,
            "vendor_email": self.vendor_email,
            "payee_lumanu_id": self.payee_lumanu_id,
            "status": self.status,
            "payable_status": self.payable_status,
            "line_items": [{"amount": self.amount, "description": self.description}],
            "custom_fields": self.custom_fields,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
        });
        // The schema types `project_id` as a uuid string; the quickstart's payable has none:
        // present only when the payable has a project.
        if let (Some(obj), Some(project)) = (v.as_object_mut(), &self.project_id) {
            obj.insert("project_id".into(), json!(project));
        }
        v
    }

    fn payee(&self) -> String {
        self.vendor_email
            .clone()
            .or_else(|| self.payee_lumanu_id.clone())
            .unwrap_or_default()
    }
}

#[derive(Debug, Clone)]
struct WalletTxn {
    id: String,
    workspace_id: String,
    description: String,
    kind: &'static str,
    amount: i64,
    balance_change: i64,
    ending_balance: i64,
    /// For deposits: the funding whose invoice produced it.
    funding_id: Option<String>,
    /// For deposits: linked to its funding.
    linked: bool,
    created_at: DateTime<Utc>,
}

impl WalletTxn {
    fn json(&self) -> Value {
        let mut v = self.listed();
        // [decided] A deposit names the funding whose invoice it paid, as `transfer.*`
        // webhooks do: the only way a client can find an invoice whose create answer it lost.
        if let (Some(funding_id), Some(map)) = (&self.funding_id, v.as_object_mut()) {
            map.insert("funding_id".to_owned(), json!(funding_id));
        }
        v
    }

    fn listed(&self) -> Value {
        json!({
            "id": self.id,
            "description": self.description,
            "created_at": self.created_at,
            "amount": self.amount,
            "amount_denomination": DENOMINATION,
            "balance_change": self.balance_change,
            "ending_balance": self.ending_balance,
            "status": "processed",
            "type": self.kind,
        })
    }
}

/// Lumanu's objects.
#[derive(Debug)]
pub(crate) struct Objects {
    workspaces: BTreeMap<String, Workspace>,
    fundings: Vec<Funding>,
    payables: Vec<Payable>,
    transactions: Vec<WalletTxn>,
    next_invoice: i64,
}

impl Objects {
    pub(crate) fn new() -> Self {
        let mut s = Self {
            workspaces: BTreeMap::new(),
            fundings: Vec::new(),
            payables: Vec::new(),
            transactions: Vec::new(),
            next_invoice: 1001,
        };
        s.workspace_mut(DEFAULT_WORKSPACE_ID);
        s
    }

    /// The workspace, created on first use (any UUID is a valid workspace id).
    fn workspace_mut(&mut self, id: &str) -> Option<&mut Workspace> {
        let id = Uuid::parse_str(id).ok()?.to_string();
        let n = self.workspaces.len() + 1;
        Some(
            self.workspaces
                .entry(id.clone())
                .or_insert_with(|| Workspace {
                    id,
                    display_name: format!("Sandbox Workspace {n}"),
                    unlinked: 0,
                    created_at: Utc::now(),
                }),
        )
    }

    fn invoice_number(&mut self) -> i64 {
        let n = self.next_invoice;
        self.next_invoice += 1;
        n
    }

    /// Every funding (with the deposit that paid it) and payable, for `GET
    /// /_sandbox/lumanu/objects`: what a check for stray or duplicate objects needs.
    pub(crate) fn objects_json(&self) -> Value {
        let fundings: Vec<Value> = self
            .fundings
            .iter()
            .map(|f| {
                let mut v = f.json();
                if let Some(map) = v.as_object_mut() {
                    map.insert(
                        "deposit_transfer_id".to_owned(),
                        json!(f.deposit_transfer_id),
                    );
                }
                v
            })
            .collect();
        let payables: Vec<Value> = self.payables.iter().map(Payable::json).collect();
        json!({"fundings": fundings, "payables": payables})
    }

    /// `(workspace id, balance, available balance)` of every workspace.
    pub(crate) fn balances(&self, ledger: &Ledger) -> Vec<(String, i64, i64)> {
        self.workspaces
            .values()
            .map(|w| {
                let balance = ledger.balance(Provider::Lumanu, &w.id, CURRENCY);
                (w.id.clone(), balance, balance - w.unlinked)
            })
            .collect()
    }
}

fn event(event_type: &str, data: Value) -> Event {
    let id = Uuid::new_v4().to_string();
    let body = json!({"id": id, "event_type": event_type, "data": data});
    Event::new(Provider::Lumanu, id, event_type, &body)
}

/// Lumanu's routes: `/oauth/token` and `/api/rest/...`.
pub(crate) fn router(app: &App) -> Router<App> {
    let api = Router::new()
        .route("/funding", post(create_funding))
        .route("/funding/{id}", get(get_funding))
        .route("/funding/{id}/link-deposit", post(link_deposit))
        .route("/workspace", get(list_workspaces))
        .route("/workspace/{id}", get(get_workspace))
        .route("/workspace/{id}/wallet", get(get_wallet))
        .route("/workspace/{id}/wallet/transaction", get(list_transactions))
        .route("/workspace/{id}/project", get(list_projects))
        .route("/workspace/{id}/project/{project_id}", get(get_project))
        .route("/workspace/{id}/partner", get(list_partners))
        .route("/workspace/{id}/partner/{partner_id}", get(get_partner))
        .route("/payable", post(create_payable).get(list_payables))
        // The quickstart creates a payable with `POST /api/rest/payables` and lists them with
        // `GET /api/rest/payouts`; the API reference says `/payable`: both are served.
        .route("/payables", post(create_payable))
        .route("/payouts", get(list_payables))
        .route("/payable/{id}", get(get_payable))
        .route("/payable/{id}/approve", post(approve_payable))
        .route("/payable/{id}/cancel", post(cancel_payable))
        .route_layer(from_fn_with_state(app.clone(), require_token));
    Router::new()
        .nest("/api/rest", api)
        .route("/oauth/token", post(token))
        .method_not_allowed_fallback(method_not_allowed)
        .fallback(not_found)
}

/// The path below `/lumanu`, as Lumanu would see it.
fn lumanu_path(uri: &axum::http::Uri) -> &str {
    let path = uri.path();
    path.strip_prefix("/lumanu").unwrap_or(path)
}

/// Unknown routes: 404 in Lumanu's documented error shape `{"error": {code, message,
/// request_id}}` (the reference shows 404s with a description only, no body).
async fn not_found(axum::extract::OriginalUri(uri): axum::extract::OriginalUri) -> Response {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        format!("No route {}", lumanu_path(&uri)),
    )
    .into_response()
}

/// A known route with another method: 405 in Lumanu's error shape.
async fn method_not_allowed(
    method: axum::http::Method,
    axum::extract::OriginalUri(uri): axum::extract::OriginalUri,
) -> Response {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("{method} is not supported for {}", lumanu_path(&uri)),
    )
    .into_response()
}

async fn require_token(State(app): State<App>, req: Request, next: Next) -> Response {
    match bearer(req.headers()) {
        Some(t) if app.tokens.valid(Provider::Lumanu, t) => next.run(req).await,
        Some(_) => ApiError::new(
            StatusCode::UNAUTHORIZED,
            "invalid_token",
            "The access token is invalid or has expired",
        )
        .into_response(),
        None => ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "Missing Authorization: Bearer token",
        )
        .into_response(),
    }
}

/// `POST /oauth/token` (JSON, Auth0-style errors).
async fn token(State(app): State<App>, bytes: Bytes) -> Response {
    let oauth_error = |status: StatusCode, error: &str, description: &str| {
        (
            status,
            Json(json!({"error": error, "error_description": description})),
        )
            .into_response()
    };
    let body = match Body::json(&bytes) {
        Ok(b) => b,
        Err(e) => return oauth_error(StatusCode::BAD_REQUEST, "invalid_request", &e),
    };
    let field = |k: &str| body.str(k).ok().flatten();
    if field("grant_type").as_deref() != Some("client_credentials") {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            "grant_type must be client_credentials",
        );
    }
    let creds = &app.credentials.lumanu;
    if !client_matches(
        Some(&creds.client),
        field("client_id").as_deref(),
        field("client_secret").as_deref(),
    ) {
        return oauth_error(StatusCode::UNAUTHORIZED, "access_denied", "Unauthorized");
    }
    if let Some(expected) = &creds.audience {
        if field("audience").as_deref() != Some(expected.as_str()) {
            return oauth_error(
                StatusCode::FORBIDDEN,
                "access_denied",
                "Service not enabled within domain",
            );
        }
    }
    let ttl = app.timing.lumanu_token_ttl;
    let token = app.tokens.issue(Provider::Lumanu, ttl);
    Json(json!({
        "access_token": token,
        "token_type": "Bearer",
        "expires_in": ttl.as_secs(),
    }))
    .into_response()
}

fn parse(bytes: &Bytes) -> Result<Body, ApiError> {
    Body::json(bytes).map_err(ApiError::bad_request)
}

fn positive_cents(body: &Body) -> Result<i64, ApiError> {
    match body.int("amount").map_err(ApiError::bad_request)? {
        Some(a) if a > 0 => Ok(a),
        Some(_) => Err(ApiError::bad_request(
            "amount must be a positive number of cents",
        )),
        None => Err(ApiError::bad_request("amount is required")),
    }
}

/// `POST /funding`: `method: invoice` creates an invoice; `method: balance` pays payables.
async fn create_funding(State(app): State<App>, bytes: Bytes) -> ApiResult {
    let body = parse(&bytes)?;
    let workspace_id = body
        .req_str("workspace_id")
        .map_err(ApiError::bad_request)?;
    match body
        .str("method")
        .map_err(ApiError::bad_request)?
        .as_deref()
    {
        Some("invoice") => create_invoice(&app, &body, &workspace_id),
        Some("balance") => pay_from_balance(&app, &body, &workspace_id),
        Some(other) => Err(ApiError::bad_request(format!(
            "method must be invoice or balance, not {other}"
        ))),
        None => Err(ApiError::bad_request("method is required")),
    }
}

fn create_invoice(app: &App, body: &Body, workspace_id: &str) -> ApiResult {
    let amount = positive_cents(body)?;
    let opt = |k: &str| body.str(k).map_err(ApiError::bad_request);
    let description = body.req_str("description").map_err(ApiError::bad_request)?;
    let recipient_email = body
        .req_str("recipient_email")
        .map_err(ApiError::bad_request)?;
    let now = Utc::now();
    let mut funding = Funding {
        id: Uuid::new_v4().to_string(),
        workspace_id: String::new(),
        method: "invoice",
        amount,
        description: Some(description),
        recipient_email: Some(recipient_email),
        bill_to: opt("bill_to")?,
        company_name: opt("company_name")?,
        company_address_one: opt("company_address_one")?,
        due_date: opt("due_date")?,
        po_number: opt("po_number")?,
        additional_notes: opt("additional_notes")?,
        invoice_number: 0,
        status: "pending",
        payable_ids: Vec::new(),
        deposit_transfer_id: None,
        created_at: now,
        updated_at: now,
    };
    let json = app.with(|w| {
        let ws = w
            .lumanu
            .workspace_mut(workspace_id)
            .ok_or_else(|| ApiError::not_found("workspace", workspace_id))?;
        funding.workspace_id = ws.id.clone();
        funding.invoice_number = w.lumanu.invoice_number();
        let json = funding.json();
        w.lumanu.fundings.push(funding.clone());
        Ok::<_, ApiError>(json)
    })?;
    let funding_id = funding.id;
    after(app, app.timing.invoice_paid, move |app| {
        let events = app.with(|w| pay_invoice(&mut w.lumanu, &mut w.ledger, &funding_id));
        app.emit(events);
    });
    Ok(Json(json))
}

/// The invoice recipient pays: a processed deposit lands in the wallet (balance, not available).
fn pay_invoice(state: &mut Objects, ledger: &mut Ledger, funding_id: &str) -> Option<Event> {
    let funding = state
        .fundings
        .iter_mut()
        .find(|f| f.id == funding_id && f.status == "pending" && f.deposit_transfer_id.is_none())?;
    let txn_id = Uuid::new_v4().to_string();
    let entry = ledger
        .record(
            Movement {
                provider: Provider::Lumanu,
                account: &funding.workspace_id,
                kind: Kind::Deposit,
                direction: Direction::Credit,
                reference: &txn_id,
                counterparty: funding
                    .recipient_email
                    .as_deref()
                    .unwrap_or("invoice payer"),
                amount: funding.amount,
                currency: CURRENCY,
            },
            0,
        )
        .ok()?;
    let ending_balance = entry.balance_after;
    funding.deposit_transfer_id = Some(txn_id.clone());
    funding.updated_at = Utc::now();
    let txn = WalletTxn {
        id: txn_id.clone(),
        workspace_id: funding.workspace_id.clone(),
        description: format!(
            "Deposit for funding invoice #{} ({})",
            funding.invoice_number,
            funding.description.as_deref().unwrap_or("")
        ),
        kind: "deposit",
        amount: funding.amount,
        balance_change: funding.amount,
        ending_balance,
        funding_id: Some(funding.id.clone()),
        linked: false,
        created_at: Utc::now(),
    };
    let funding_id = funding.id.clone();
    let workspace_id = funding.workspace_id.clone();
    if let Some(ws) = state.workspaces.get_mut(&workspace_id) {
        ws.unlinked += txn.amount;
    }
    state.transactions.push(txn);
    Some(event(
        "transfer.created",
        json!({"id": txn_id, "funding_id": funding_id}),
    ))
}

fn pay_from_balance(app: &App, body: &Body, workspace_id: &str) -> ApiResult {
    let ids = body
        .str_array("payable_ids")
        .map_err(ApiError::bad_request)?
        .filter(|ids| !ids.is_empty())
        .ok_or_else(|| ApiError::bad_request("payable_ids is required for method balance"))?;
    let mut seen = std::collections::HashSet::new();
    if !ids.iter().all(|id| seen.insert(id.as_str())) {
        return Err(ApiError::bad_request("payable_ids contains duplicates"));
    }
    let now = Utc::now();
    let (json, events, paid_ids) = app.with(|w| {
        let lumanu = &mut w.lumanu;
        let ws = lumanu
            .workspace_mut(workspace_id)
            .ok_or_else(|| ApiError::not_found("workspace", workspace_id))?;
        let ws_id = ws.id.clone();
        let unlinked = ws.unlinked;
        let mut total: i64 = 0;
        for id in &ids {
            let p = lumanu
                .payables
                .iter()
                .find(|p| &p.id == id)
                .ok_or_else(|| ApiError::not_found("payable", id))?;
            if p.workspace_id != ws_id {
                return Err(ApiError::bad_request(format!(
                    "payable {id} belongs to another workspace"
                )));
            }
            if p.payable_status != "approved" {
                return Err(ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "payable_not_payable",
                    format!(
                        "payable {id} is {}, only approved payables can be paid",
                        p.payable_status
                    ),
                ));
            }
            total += p.amount;
        }
        let available = w.ledger.balance(Provider::Lumanu, &ws_id, CURRENCY) - unlinked;
        if available < total {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "insufficient_balance",
                format!("available balance {available} is less than the {total} needed"),
            ));
        }
        let mut events = Vec::new();
        for id in &ids {
            let Some(p) = lumanu.payables.iter_mut().find(|p| &p.id == id) else {
                continue;
            };
            let entry = w
                .ledger
                .record(
                    Movement {
                        provider: Provider::Lumanu,
                        account: &ws_id,
                        kind: Kind::Payment,
                        direction: Direction::Debit,
                        reference: &p.id,
                        counterparty: &p.payee(),
                        amount: p.amount,
                        currency: CURRENCY,
                    },
                    unlinked,
                )
                .map_err(|e| {
                    ApiError::new(
                        StatusCode::UNPROCESSABLE_ENTITY,
                        "insufficient_balance",
                        e.to_string(),
                    )
                })?;
            let txn = WalletTxn {
                id: Uuid::new_v4().to_string(),
                workspace_id: ws_id.clone(),
                description: format!(
                    "Payment for payable #{}: {}",
                    p.invoice_number, p.description
                ),
                kind: "payment",
                amount: p.amount,
                balance_change: -p.amount,
                ending_balance: entry.balance_after,
                funding_id: None,
                linked: false,
                created_at: now,
            };
            p.status = Some("will_pay");
            p.payable_status = "awaiting_payment";
            p.updated_at = now;
            events.push(event("transfer.created", json!({"id": txn.id})));
            events.push(event("payable.updated", json!({"id": p.id})));
            lumanu.transactions.push(txn);
        }
        let funding = Funding {
            id: Uuid::new_v4().to_string(),
            workspace_id: ws_id,
            method: "balance",
            amount: total,
            description: body.str("description").ok().flatten(),
            recipient_email: None,
            bill_to: None,
            company_name: None,
            company_address_one: None,
            due_date: None,
            po_number: None,
            additional_notes: None,
            invoice_number: 0,
            status: "completed",
            payable_ids: ids.clone(),
            deposit_transfer_id: None,
            created_at: now,
            updated_at: now,
        };
        let json = funding.json();
        lumanu.fundings.push(funding);
        Ok((json, events, ids.clone()))
    })?;
    app.emit(events);
    after(app, app.timing.bank_settlement, move |app| {
        let events = app.with(|w| {
            let mut events = Vec::new();
            for p in w
                .lumanu
                .payables
                .iter_mut()
                .filter(|p| paid_ids.contains(&p.id) && p.payable_status == "awaiting_payment")
            {
                p.status = Some("paid");
                p.payable_status = "paid";
                p.updated_at = Utc::now();
                events.push(event("payable.paid", json!({"id": p.id})));
            }
            events
        });
        app.emit(events);
    });
    Ok(Json(json))
}

async fn get_funding(State(app): State<App>, Path(id): Path<String>) -> ApiResult {
    app.with(|w| {
        w.lumanu
            .fundings
            .iter()
            .find(|f| f.id == id)
            .map(|f| Json(f.json()))
            .ok_or_else(|| ApiError::not_found("funding", &id))
    })
}

/// `POST /funding/{id}/link-deposit {transfer_id}`: the deposit becomes available balance.
async fn link_deposit(State(app): State<App>, Path(id): Path<String>, bytes: Bytes) -> ApiResult {
    let body = parse(&bytes)?;
    let transfer_id = body.req_str("transfer_id").map_err(ApiError::bad_request)?;
    app.with(|w| {
        let lumanu = &mut w.lumanu;
        let funding = lumanu
            .fundings
            .iter_mut()
            .find(|f| f.id == id)
            .ok_or_else(|| ApiError::not_found("funding", &id))?;
        if funding.method != "invoice" {
            return Err(ApiError::bad_request(
                "only invoice fundings take a deposit",
            ));
        }
        let txn = lumanu
            .transactions
            .iter_mut()
            .find(|t| t.id == transfer_id && t.workspace_id == funding.workspace_id)
            .ok_or_else(|| ApiError::not_found("transfer", &transfer_id))?;
        if txn.kind != "deposit" {
            return Err(ApiError::bad_request(format!(
                "transfer {transfer_id} is a {}, not a deposit",
                txn.kind
            )));
        }
        if txn.linked {
            return Err(ApiError::conflict(
                "transfer_already_linked",
                format!("transfer {transfer_id} is already linked to a funding"),
            ));
        }
        if funding.status == "completed" {
            return Err(ApiError::conflict(
                "funding_already_linked",
                format!("funding {id} already has its deposit linked"),
            ));
        }
        if txn.funding_id.as_deref() != Some(funding.id.as_str()) {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "transfer_funding_mismatch",
                format!("transfer {transfer_id} is not the deposit for funding {id}"),
            ));
        }
        txn.linked = true;
        let amount = txn.amount;
        funding.status = "completed";
        funding.updated_at = Utc::now();
        let json = funding.json();
        if let Some(ws) = lumanu.workspaces.get_mut(&funding.workspace_id) {
            ws.unlinked -= amount;
        }
        Ok(Json(json))
    })
}

fn workspace_json(w: &Workspace) -> Value {
    json!({
        "id": w.id,
        "display_name": w.display_name,
        "created_at": w.created_at,
        "updated_at": w.created_at,
    })
}

/// Namespace of the sandbox's derived project and partner ids.
const ID_NAMESPACE: Uuid = Uuid::from_u128(0x6c75_6d61_6e75_0000_0000_7061_7973_6167);

/// The project every workspace has (`{name}` "Default project"), plus one per `project_id`
/// its payables named: (json, 0, created_at) for [`Page::apply`].
fn projects(objects: &mut Objects, ws_id: &str) -> Option<Vec<(Value, i64, DateTime<Utc>)>> {
    let ws = objects.workspace_mut(ws_id)?.clone();
    let default = Uuid::new_v5(&ID_NAMESPACE, format!("project:{}", ws.id).as_bytes()).to_string();
    let mut out = vec![(default, "Default project".to_owned(), ws.created_at)];
    for p in objects.payables.iter().filter(|p| p.workspace_id == ws.id) {
        if let Some(id) = &p.project_id {
            if !out.iter().any(|(o, _, _)| o == id) {
                out.push((
                    id.clone(),
                    format!("Project {}", &id[..8.min(id.len())]),
                    p.created_at,
                ));
            }
        }
    }
    Some(
        out.into_iter()
            .map(|(id, name, at)| {
                let json = json!({
                    "id": id,
                    "name": name,
                    "alias": name.to_ascii_lowercase().replace(' ', "-"),
                    "description": name,
                    "po_number": "",
                    "budget_amount": null,
                    "budget_denomination": null,
                    "archived": false,
                    "created_at": at,
                    "updated_at": at,
                });
                (json, 0, at)
            })
            .collect(),
    )
}

/// One partner per payee of the workspace's payables.
fn partners(objects: &mut Objects, ws_id: &str) -> Option<Vec<(Value, i64, DateTime<Utc>)>> {
    let ws = objects.workspace_mut(ws_id)?.id.clone();
    let mut out: Vec<(Value, i64, DateTime<Utc>)> = Vec::new();
    for p in objects.payables.iter().filter(|p| p.workspace_id == ws) {
        let payee = p.payee();
        let id =
            Uuid::new_v5(&ID_NAMESPACE, format!("partner:{ws}:{payee}").as_bytes()).to_string();
        if let Some((v, count, _)) = out.iter_mut().find(|(v, _, _)| v["id"] == id.as_str()) {
            *count += 1;
            v["payables_count"] = json!(*count);
            continue;
        }
        let name = payee.split('@').next().unwrap_or_default().to_owned();
        let lumanu_id = p
            .payee_lumanu_id
            .clone()
            .unwrap_or_else(|| format!("LUM{}", &id[..6].to_ascii_uppercase()));
        let mut v = json!({
            "id": id,
            "name": name,
            "lumanu_id": lumanu_id,
            "status": "completed_w9",
            "tax_origin_country": "US",
            "tags": [],
            "notes": "",
            "has_approval_grant": false,
            "created_at": p.created_at,
            "updated_at": p.created_at,
            "payables_count": 1,
        });
        if let Some(email) = &p.vendor_email {
            v["email"] = json!(email);
        }
        out.push((v, 1, p.created_at));
    }
    Some(out)
}

/// `GET /workspace/{id}/project`: `include_archived` accepted (the sandbox archives none).
async fn list_projects(
    State(app): State<App>,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult {
    let page = Page::from_query(&q)?;
    let items = app
        .with(|w| projects(&mut w.lumanu, &id))
        .ok_or_else(|| ApiError::not_found("workspace", &id))?;
    Ok(Json(page.apply(items)))
}

/// `GET /workspace/{id}/project/{project_id}`: ProjectDetail (no dedicated wallet: `balance` null).
async fn get_project(
    State(app): State<App>,
    Path((id, project_id)): Path<(String, String)>,
) -> ApiResult {
    let items = app
        .with(|w| projects(&mut w.lumanu, &id))
        .ok_or_else(|| ApiError::not_found("workspace", &id))?;
    let (mut v, _, _) = items
        .into_iter()
        .find(|(v, _, _)| v["id"] == project_id.as_str())
        .ok_or_else(|| ApiError::not_found("project", &project_id))?;
    v["balance"] = Value::Null;
    Ok(Json(v))
}

/// `GET /workspace/{id}/partner`: `search` (name, email or Lumanu id) and `tag` filters.
async fn list_partners(
    State(app): State<App>,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult {
    let page = Page::from_query(&q)?;
    let items = app
        .with(|w| partners(&mut w.lumanu, &id))
        .ok_or_else(|| ApiError::not_found("workspace", &id))?;
    let search = q.get("search").map(|s| s.to_ascii_lowercase());
    let items: Vec<_> = items
        .into_iter()
        .filter(|(v, _, _)| {
            search.as_deref().is_none_or(|s| {
                ["name", "email", "lumanu_id"].iter().any(|k| {
                    v[*k]
                        .as_str()
                        .is_some_and(|f| f.to_ascii_lowercase().contains(s))
                })
            }) && !q.contains_key("tag")
        })
        .map(|(mut v, _, at)| {
            if let Some(obj) = v.as_object_mut() {
                obj.remove("payables_count");
            }
            (v, 0, at)
        })
        .collect();
    Ok(Json(page.apply(items)))
}

/// `GET /workspace/{id}/partner/{partner_id}`: PartnerDetail.
async fn get_partner(
    State(app): State<App>,
    Path((id, partner_id)): Path<(String, String)>,
) -> ApiResult {
    let items = app
        .with(|w| partners(&mut w.lumanu, &id))
        .ok_or_else(|| ApiError::not_found("workspace", &id))?;
    let (mut v, _, _) = items
        .into_iter()
        .find(|(v, _, _)| v["id"] == partner_id.as_str())
        .ok_or_else(|| ApiError::not_found("partner", &partner_id))?;
    let email = v["email"].clone();
    if let Some(obj) = v.as_object_mut() {
        obj.insert("description".into(), json!(""));
        obj.insert("features".into(), json!([]));
        obj.insert(
            "emails".into(),
            if email.is_null() {
                json!([])
            } else {
                json!([email])
            },
        );
        obj.insert("has_wallet".into(), json!(true));
    }
    Ok(Json(v))
}

async fn list_workspaces(State(app): State<App>) -> ApiResult {
    let data: Vec<Value> = app.with(|w| w.lumanu.workspaces.values().map(workspace_json).collect());
    let total = data.len();
    Ok(Json(
        json!({"data": data, "total": total, "limit": total, "offset": 0}),
    ))
}

async fn get_workspace(State(app): State<App>, Path(id): Path<String>) -> ApiResult {
    app.with(|w| {
        w.lumanu
            .workspace_mut(&id)
            .map(|ws| Json(workspace_json(ws)))
            .ok_or_else(|| ApiError::not_found("workspace", &id))
    })
}

/// `GET /workspace/{id}/wallet`: the Account schema of the OpenAPI.
async fn get_wallet(State(app): State<App>, Path(id): Path<String>) -> ApiResult {
    app.with(|w| {
        let ws = w
            .lumanu
            .workspace_mut(&id)
            .ok_or_else(|| ApiError::not_found("workspace", &id))?
            .clone();
        let balance = w.ledger.balance(Provider::Lumanu, &ws.id, CURRENCY);
        Ok(Json(json!({
            "id": ws.id,
            "display_name": ws.display_name,
            "role": "wallet",
            "denomination": DENOMINATION,
            "balance": {"available_balance": balance - ws.unlinked, "balance": balance},
            "created_at": ws.created_at,
            "updated_at": Utc::now(),
        })))
    })
}

/// Pagination and ordering shared by the list endpoints.
struct Page {
    limit: usize,
    offset: usize,
    order_by: String,
    descending: bool,
}

impl Page {
    fn from_query(q: &HashMap<String, String>) -> Result<Self, ApiError> {
        let num = |k: &str, default: usize| match q.get(k) {
            None => Ok(default),
            Some(v) => v
                .parse::<usize>()
                .map_err(|_| ApiError::bad_request(format!("{k} must be a non-negative integer"))),
        };
        let descending = match q.get("order_by_direction").map(String::as_str) {
            None | Some("desc") => true,
            Some("asc") => false,
            Some(other) => {
                return Err(ApiError::bad_request(format!(
                    "order_by_direction must be asc or desc, not {other}"
                )))
            }
        };
        Ok(Self {
            limit: num("limit", 25)?.clamp(1, 100),
            offset: num("offset", 0)?,
            order_by: q
                .get("order_by")
                .cloned()
                .unwrap_or_else(|| "created_at".into()),
            descending,
        })
    }

    fn apply(&self, items: Vec<(Value, i64, DateTime<Utc>)>) -> Value {
        self.apply_with(items, |v| v)
    }

    /// [`Page::apply`] rendering only the page's items (a long list is sorted by its keys, not
    /// rendered whole for every page).
    fn apply_with<T>(
        &self,
        mut items: Vec<(T, i64, DateTime<Utc>)>,
        render: impl Fn(T) -> Value,
    ) -> Value {
        // (item, amount, created_at); creation order breaks ties.
        match self.order_by.as_str() {
            "amount" => items.sort_by_key(|(_, a, _)| *a),
            _ => items.sort_by_key(|(_, _, c)| *c),
        }
        if self.descending {
            items.reverse();
        }
        let total = items.len();
        let data: Vec<Value> = items
            .into_iter()
            .skip(self.offset)
            .take(self.limit)
            .map(|(v, _, _)| render(v))
            .collect();
        json!({"data": data, "total": total, "limit": self.limit, "offset": self.offset})
    }
}

async fn list_transactions(
    State(app): State<App>,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult {
    let page = Page::from_query(&q)?;
    let items = app.with(|w| {
        let ws_id = w
            .lumanu
            .workspace_mut(&id)
            .ok_or_else(|| ApiError::not_found("workspace", &id))?
            .id
            .clone();
        Ok::<_, ApiError>(
            w.lumanu
                .transactions
                .iter()
                .filter(|t| t.workspace_id == ws_id)
                .filter(|t| q.get("type").is_none_or(|k| k == t.kind))
                .map(|t| (t.json(), t.amount, t.created_at))
                .collect::<Vec<_>>(),
        )
    })?;
    Ok(Json(page.apply(items)))
}

/// `POST /payable`: always creates a new payable (no idempotency, like the real API).
async fn create_payable(State(app): State<App>, bytes: Bytes) -> ApiResult {
    let body = parse(&bytes)?;
    let workspace_id = body
        .req_str("workspace_id")
        .map_err(ApiError::bad_request)?;
    let amount = positive_cents(&body)?;
    let description = body.req_str("description").map_err(ApiError::bad_request)?;
    let vendor_email = body.str("payee_email").map_err(ApiError::bad_request)?;
    let payee_lumanu_id = body.str("payee_lumanu_id").map_err(ApiError::bad_request)?;
    if vendor_email.is_none() && payee_lumanu_id.is_none() {
        return Err(ApiError::bad_request(
            "one of payee_email or payee_lumanu_id is required",
        ));
    }
    if vendor_email.as_deref().is_some_and(|e| !e.contains('@')) {
        return Err(ApiError::bad_request("payee_email is not an email address"));
    }
    // Sandbox convention (like a test card number): a payee at the reserved `.invalid` domain
    // (RFC 2606) stands for one Lumanu cannot pay, refused every time.
    if vendor_email
        .as_deref()
        .is_some_and(|e| e.to_ascii_lowercase().ends_with(".invalid"))
    {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_payee",
            "payee_email cannot receive payments (sandbox: the .invalid domain)",
        ));
    }
    let custom_fields = body.value("custom_fields").cloned().unwrap_or(json!([]));
    let now = Utc::now();
    let json = app.with(|w| {
        let ws_id = w
            .lumanu
            .workspace_mut(&workspace_id)
            .ok_or_else(|| ApiError::not_found("workspace", &workspace_id))?
            .id
            .clone();
        let payable = Payable {
            id: Uuid::new_v4().to_string(),
            workspace_id: ws_id,
            project_id: body.str("project_id").ok().flatten(),
            amount,
            description,
            due_date: body.str("due_date").ok().flatten(),
            invoice_number: w.lumanu.invoice_number(),
            vendor_email,
            payee_lumanu_id,
            status: None,
            payable_status: "not_approved",
            custom_fields,
            created_at: now,
            updated_at: now,
        };
        let json = payable.json();
        w.lumanu.payables.push(payable);
        Ok::<_, ApiError>(json)
    })?;
    app.emit([event("payable.created", json!({"id": json["id"]}))]);
    Ok(Json(json))
}

async fn get_payable(State(app): State<App>, Path(id): Path<String>) -> ApiResult {
    app.with(|w| {
        w.lumanu
            .payables
            .iter()
            .find(|p| p.id == id)
            .map(|p| Json(p.json()))
            .ok_or_else(|| ApiError::not_found("payable", &id))
    })
}

/// `GET /payable`: filters `workspace_id`, `project_id`, and (sandbox extensions)
/// `description` (exact), `payee_email`, `payable_status`.
async fn list_payables(
    State(app): State<App>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult {
    let page = Page::from_query(&q)?;
    let matches =
        |key: &str, value: Option<&str>| q.get(key).is_none_or(|want| Some(want.as_str()) == value);
    let json = app.with(|w| {
        let items = w
            .lumanu
            .payables
            .iter()
            .filter(|p| {
                matches("workspace_id", Some(&p.workspace_id))
                    && matches("project_id", p.project_id.as_deref())
                    && matches("description", Some(&p.description))
                    && matches("payee_email", p.vendor_email.as_deref())
                    && matches("payable_status", Some(p.payable_status))
            })
            .map(|p| (p, p.amount, p.created_at))
            .collect::<Vec<_>>();
        page.apply_with(items, Payable::json)
    });
    Ok(Json(json))
}

async fn approve_payable(State(app): State<App>, Path(id): Path<String>) -> ApiResult {
    transition(&app, &id, "approve")
}

async fn cancel_payable(State(app): State<App>, Path(id): Path<String>) -> ApiResult {
    transition(&app, &id, "cancel")
}

/// Approve or cancel. Repeating a transition already made is a no-op that returns the payable.
fn transition(app: &App, id: &str, action: &str) -> ApiResult {
    let (json, event_type) = app.with(|w| {
        let p = w
            .lumanu
            .payables
            .iter_mut()
            .find(|p| p.id == id)
            .ok_or_else(|| ApiError::not_found("payable", id))?;
        let (target_status, target, event_type, allowed): (_, _, _, &[&str]) = match action {
            "approve" => (
                "approved",
                "approved",
                "payable.approved",
                &["not_approved"],
            ),
            _ => (
                "canceled",
                "canceled",
                "payable.canceled",
                &["not_approved", "approved"],
            ),
        };
        if p.payable_status == target {
            return Ok((p.json(), None));
        }
        if !allowed.contains(&p.payable_status) {
            return Err(ApiError::conflict(
                "invalid_payable_state",
                format!("cannot {action} a payable that is {}", p.payable_status),
            ));
        }
        p.status = Some(target_status);
        p.payable_status = target;
        p.updated_at = Utc::now();
        Ok((p.json(), Some(event_type)))
    })?;
    if let Some(t) = event_type {
        app.emit([event(t, json!({"id": id}))]);
    }
    Ok(Json(json))
}

/// Drift on purpose (`POST /_sandbox/drift/lumanu/payables/{id}/reverse`): a paid payable is
/// reversed later and its webhook is dropped (none is sent), so only a reconciliation sees it.
/// `Err` names why not (unknown, or not paid).
pub(crate) fn reverse_paid_payable(app: &App, id: &str) -> Result<Value, String> {
    app.with(|w| {
        let p = w
            .lumanu
            .payables
            .iter_mut()
            .find(|p| p.id == id)
            .ok_or_else(|| format!("no Lumanu payable {id}"))?;
        if p.payable_status != "paid" {
            return Err(format!(
                "Lumanu payable {id} is {}, only a paid payable is reversed",
                p.payable_status
            ));
        }
        p.payable_status = "reversed";
        p.status = Some("reversed");
        p.updated_at = Utc::now();
        Ok(p.json())
    })
}

/// Drift on purpose (`POST /_sandbox/drift/lumanu/stray`): an object no saga created through
/// its steps, sending no webhook. `{"type": "payable", "workspace_id", "amount",
/// "description", "payee_email"?}` is a second payable as a retried create leaves it;
/// `{"type": "deposit", "workspace_id", "amount", "description"}` a processed deposit in the
/// wallet that no funding links (booked in the ledger, not available until linked).
pub(crate) fn create_stray(app: &App, body: &Value) -> Result<Value, String> {
    let kind = body["type"].as_str().unwrap_or_default().to_owned();
    let workspace_id = body["workspace_id"]
        .as_str()
        .ok_or("workspace_id is required")?
        .to_owned();
    let amount = body["amount"]
        .as_i64()
        .filter(|a| *a > 0)
        .ok_or("amount must be a positive integer (cents)")?;
    let description = body["description"]
        .as_str()
        .ok_or("description is required")?
        .to_owned();
    let now = Utc::now();
    app.with(|w| {
        let ws_id = w
            .lumanu
            .workspace_mut(&workspace_id)
            .ok_or_else(|| format!("workspace_id {workspace_id} is not a UUID"))?
            .id
            .clone();
        match kind.as_str() {
            "payable" => {
                let payable = Payable {
                    id: Uuid::new_v4().to_string(),
                    workspace_id: ws_id,
                    project_id: None,
                    amount,
                    description,
                    due_date: None,
                    invoice_number: w.lumanu.invoice_number(),
                    vendor_email: Some(
                        body["payee_email"]
                            .as_str()
                            .unwrap_or("stray@example.com")
                            .to_owned(),
                    ),
                    payee_lumanu_id: None,
                    status: None,
                    payable_status: "not_approved",
                    custom_fields: json!([]),
                    created_at: now,
                    updated_at: now,
                };
                let json = payable.json();
                w.lumanu.payables.push(payable);
                Ok(json)
            }
            "deposit" => {
                let txn_id = Uuid::new_v4().to_string();
                let entry = w
                    .ledger
                    .record(
                        Movement {
                            provider: Provider::Lumanu,
                            account: &ws_id,
                            kind: Kind::Deposit,
                            direction: Direction::Credit,
                            reference: &txn_id,
                            counterparty: "stray payer",
                            amount,
                            currency: CURRENCY,
                        },
                        0,
                    )
                    .map_err(|e| e.to_string())?;
                let txn = WalletTxn {
                    id: txn_id,
                    workspace_id: ws_id.clone(),
                    description,
                    kind: "deposit",
                    amount,
                    balance_change: amount,
                    ending_balance: entry.balance_after,
                    funding_id: None,
                    linked: false,
                    created_at: now,
                };
                if let Some(ws) = w.lumanu.workspaces.get_mut(&ws_id) {
                    ws.unlinked += amount;
                }
                let json = txn.json();
                w.lumanu.transactions.push(txn);
                Ok(json)
            }
            other => Err(format!(
                "type must be \"payable\" or \"deposit\", not {other:?}"
            )),
        }
    })
}
