//! Lean: OAuth2 or `lean-app-token`, payment destinations, customers, payment sources with
//! beneficiaries (created by a simulated LinkSDK user), payment intents with `Idempotency-Key`,
//! and payments that debit the payer's simulated bank account.

use std::collections::HashMap;

use axum::body::Bytes;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::{from_fn_with_state, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use serde_json::{json, Value};
use uuid::Uuid;

use crate::app::{after, App};
use crate::auth::{bearer, client_matches, secret_eq};
use crate::body::Body;
use crate::ledger::{Direction, Kind, Ledger, Movement};
use crate::money::{json_amount, parse_minor};
use crate::webhooks::Event;
use crate::Provider;

/// The default destination Lean creates for every application.
pub const DEFAULT_DESTINATION_ID: &str = "266733cc-6f46-4e87-af7e-9bb46b99601d";
/// Opening balances of each simulated payer bank account: (currency, minor units).
pub const PAYER_ACCOUNTS: &[(&str, i64)] = &[
    ("AED", 100_000_000),
    ("SAR", 100_000_000),
    ("USD", 10_000_000),
];
const APP_ID: &str = "2c9280887230f322017231b408cf0007";
const MAX_DESCRIPTION: usize = 32;

/// A Lean error: `{"status": "<CODE>", "message", "timestamp"}`.
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

    fn invalid(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "INVALID_PARAMETERS", message)
    }

    fn not_found(what: &str, id: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "RESOURCE_NOT_FOUND",
            format!("{what} {id} not found"),
        )
    }

    /// An injected fault in Lean's shape.
    pub(crate) fn injected(status: StatusCode) -> Self {
        match status {
            StatusCode::TOO_MANY_REQUESTS => {
                Self::new(status, "RATE_LIMIT_EXCEEDED", "Rate limit exceeded")
            }
            StatusCode::GATEWAY_TIMEOUT => Self::new(status, "GATEWAY_TIMEOUT", "Gateway timeout"),
            _ => Self::new(status, "INTERNAL_SERVER_ERROR", "Internal server error"),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({"status": self.code, "message": self.message, "timestamp": Utc::now()});
        (self.status, Json(body)).into_response()
    }
}

type ApiResult = Result<Json<Value>, ApiError>;

#[derive(Debug, Clone)]
struct Destination {
    id: String,
    fields: serde_json::Map<String, Value>,
    default: bool,
    created_at: DateTime<Utc>,
}

impl Destination {
    fn json(&self) -> Value {
        let mut v = self.fields.clone();
        v.insert("id".into(), json!(self.id));
        v.insert("default".into(), json!(self.default));
        v.insert("created_at".into(), json!(self.created_at));
        Value::Object(v)
    }

    fn counterparty(&self) -> String {
        ["iban", "account_number"]
            .iter()
            .filter_map(|k| self.fields.get(*k).and_then(Value::as_str))
            .find(|s| !s.is_empty())
            .map_or_else(|| format!("destination:{}", self.id), str::to_owned)
    }
}

#[derive(Debug, Clone)]
struct Customer {
    customer_id: String,
    app_user_id: String,
    created_at: DateTime<Utc>,
}

impl Customer {
    fn json(&self) -> Value {
        json!({"customer_id": self.customer_id, "app_user_id": self.app_user_id, "created_at": self.created_at})
    }
}

#[derive(Debug, Clone)]
struct Beneficiary {
    id: String,
    payment_destination_id: String,
    status: &'static str,
    cool_off_expiry: DateTime<Utc>,
}

#[derive(Debug, Clone)]
struct BankAccount {
    id: String,
    account_number: String,
    currency: &'static str,
}

#[derive(Debug, Clone)]
struct PaymentSource {
    id: String,
    customer_id: String,
    beneficiaries: Vec<Beneficiary>,
    accounts: Vec<BankAccount>,
}

impl PaymentSource {
    fn json(&self, ledger: &Ledger) -> Value {
        let beneficiaries: Vec<Value> = self
            .beneficiaries
            .iter()
            .map(|b| {
                json!({
                    "id": b.id,
                    "payment_destination_id": b.payment_destination_id,
                    "status": b.status,
                    "beneficiary_cool_off_expiry": b.cool_off_expiry,
                })
            })
            .collect();
        let accounts: Vec<Value> = self
            .accounts
            .iter()
            .map(|a| {
                let balance = ledger.balance(Provider::Lean, &a.id, a.currency);
                json!({
                    "id": a.id,
                    "account_id": a.id,
                    "account_name": format!("CURRENT ACCOUNT {}", a.currency),
                    "account_number": a.account_number,
                    "iban": format!("AE07033{}", a.account_number),
                    "balance": json_amount(balance, a.currency),
                    "currency": a.currency,
                    "balance_last_updated": Utc::now(),
                })
            })
            .collect();
        json!({
            "id": self.id,
            "customer_id": self.customer_id,
            "app_id": APP_ID,
            "bank_identifier": "ENBD_UAE",
            "bank_name": "Emirates NBD",
            "beneficiaries": beneficiaries,
            "accounts": accounts,
        })
    }
}

#[derive(Debug, Clone)]
struct Intent {
    id: String,
    customer_id: String,
    amount: i64,
    currency: String,
    destination_id: String,
    description: Option<String>,
    created_at: DateTime<Utc>,
}

#[derive(Debug, Clone)]
struct Payment {
    id: String,
    intent_id: String,
    customer_id: String,
    status: &'static str,
    amount: i64,
    currency: String,
    bank_transaction_reference: Option<String>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

impl Payment {
    fn json(&self) -> Value {
        json!({
            "id": self.id,
            "intent_id": self.intent_id,
            "customer_id": self.customer_id,
            "status": self.status,
            "amount": json_amount(self.amount, &self.currency),
            "currency": self.currency,
            "bank_transaction_reference": self.bank_transaction_reference,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
        })
    }

    fn payload(&self) -> Value {
        json!({
            "id": self.id,
            "customer_id": self.customer_id,
            "intent_id": self.intent_id,
            "status": self.status,
            "amount": json_amount(self.amount, &self.currency),
            "currency": self.currency,
        })
    }
}

/// Lean's objects.
#[derive(Debug)]
pub(crate) struct Objects {
    destinations: Vec<Destination>,
    customers: Vec<Customer>,
    sources: Vec<PaymentSource>,
    intents: Vec<Intent>,
    /// Idempotency-Key -> (request fingerprint, intent id).
    idempotency: HashMap<String, (String, String)>,
    payments: Vec<Payment>,
}

impl Objects {
    pub(crate) fn new() -> Self {
        let mut fields = serde_json::Map::new();
        for (k, v) in [
            ("display_name", "Default destination"),
            ("name", "Sandbox App Ltd"),
            ("bank_identifier", "ENBD_UAE"),
            ("account_number", "1015528734001"),
            ("iban", "AE340260001015528734001"),
            ("address", ""),
            ("city", "Dubai"),
            ("country", "ARE"),
        ] {
            fields.insert(k.into(), json!(v));
        }
        Self {
            destinations: vec![Destination {
                id: DEFAULT_DESTINATION_ID.into(),
                fields,
                default: true,
                created_at: Utc::now(),
            }],
            customers: Vec::new(),
            sources: Vec::new(),
            intents: Vec::new(),
            idempotency: HashMap::new(),
            payments: Vec::new(),
        }
    }

    /// `(account id, currency, owner description)` of every simulated payer bank account.
    pub(crate) fn accounts(&self) -> Vec<(String, &'static str, String)> {
        self.sources
            .iter()
            .flat_map(|s| {
                s.accounts.iter().map(|a| {
                    (
                        a.id.clone(),
                        a.currency,
                        format!("customer {} payment source {}", s.customer_id, s.id),
                    )
                })
            })
            .collect()
    }
}

fn event(event_type: &str, message: &str, payload: Value) -> Event {
    let event_id = Uuid::new_v4().to_string();
    let body = json!({
        "type": event_type,
        "payload": payload,
        "message": message,
        "timestamp": Utc::now(),
        "event_id": event_id,
    });
    Event::new(Provider::Lean, event_id, event_type, &body)
}

fn beneficiary_event(event_type: &str, source: &PaymentSource, b: &Beneficiary) -> Event {
    let message = if event_type.ends_with("created") {
        "A beneficiary was added for a payment source."
    } else {
        "A beneficiary was updated for a payment source."
    };
    event(
        event_type,
        message,
        json!({
            "id": b.id,
            "customer_id": source.customer_id,
            "payment_source_id": source.id,
            "payment_destination_id": b.payment_destination_id,
            "status": b.status,
        }),
    )
}

/// Lean's routes: `/oauth2/token`, `/payments/v1/...`, `/customers/v1/...`.
pub(crate) fn router(app: &App) -> Router<App> {
    Router::new()
        .route(
            "/payments/v1/destinations",
            post(create_destination).get(list_destinations),
        )
        .route("/payments/v1/destinations/{id}", get(get_destination))
        .route("/payments/v1/customer", post(create_customer))
        .route("/payments/v1/intents", post(create_intent))
        .route("/payments/v1/intents/{id}", get(get_intent))
        .route("/payments/v1/payments/{id}", get(get_payment))
        .route("/payments/v1/{id}", get(get_payment))
        .route(
            "/customers/v1/app-user-id/{app_user_id}",
            get(get_customer_by_app_user_id),
        )
        .route("/customers/v1/{customer_id}", get(get_customer))
        .route(
            "/customers/v1/{customer_id}/payment_sources",
            get(list_payment_sources),
        )
        .route(
            "/customers/v1/{customer_id}/payment_sources/{id}",
            get(get_payment_source),
        )
        .route_layer(from_fn_with_state(app.clone(), require_auth))
        .route("/oauth2/token", post(token))
}

async fn require_auth(State(app): State<App>, req: Request, next: Next) -> Response {
    let by_token = bearer(req.headers()).is_some_and(|t| app.tokens.valid(Provider::Lean, t));
    let by_app_token = req
        .headers()
        .get("lean-app-token")
        .and_then(|v| v.to_str().ok())
        .zip(app.credentials.lean.app_token.as_ref())
        .is_some_and(|(presented, expected)| secret_eq(presented, expected));
    if by_token || by_app_token {
        next.run(req).await
    } else {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "UNAUTHORIZED",
            "Missing or invalid credentials",
        )
        .into_response()
    }
}

/// `POST /oauth2/token` (form-encoded client credentials, `scope=api`).
async fn token(State(app): State<App>, bytes: Bytes) -> Response {
    let oauth_error = |status: StatusCode, error: &str, description: &str| {
        (
            status,
            Json(json!({"error": error, "error_description": description})),
        )
            .into_response()
    };
    let body = match Body::form_or_json(&bytes) {
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
    if !client_matches(
        app.credentials.lean.client.as_ref(),
        field("client_id").as_deref(),
        field("client_secret").as_deref(),
    ) {
        return oauth_error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "Bad client credentials",
        );
    }
    if field("scope").is_some_and(|s| !s.split(' ').any(|s| s == "api")) {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_scope",
            "scope must be api",
        );
    }
    let ttl = app.timing.lean_token_ttl;
    let token = app.tokens.issue(Provider::Lean, ttl);
    Json(json!({
        "access_token": token,
        "token_type": "Bearer",
        "expires_in": ttl.as_secs(),
        "scope": "api",
    }))
    .into_response()
}

fn parse(bytes: &Bytes) -> Result<Body, ApiError> {
    Body::json(bytes).map_err(ApiError::invalid)
}

/// `POST /payments/v1/destinations`; every existing payment source gets a beneficiary for it.
async fn create_destination(State(app): State<App>, bytes: Bytes) -> ApiResult {
    let body = parse(&bytes)?;
    for k in ["display_name", "name", "bank_identifier"] {
        body.req_str(k).map_err(ApiError::invalid)?;
    }
    let mut fields = serde_json::Map::new();
    for k in [
        "display_name",
        "name",
        "bank_identifier",
        "iban",
        "account_number",
        "swift_code",
        "address",
        "city",
        "country",
    ] {
        let v = match body.value(k) {
            None => String::new(),
            Some(Value::String(s)) => s.clone(),
            Some(_) => return Err(ApiError::invalid(format!("{k} must be a string"))),
        };
        fields.insert(k.into(), Value::String(v));
    }
    let destination = Destination {
        id: Uuid::new_v4().to_string(),
        fields,
        default: false,
        created_at: Utc::now(),
    };
    let json = destination.json();
    let destination_id = destination.id.clone();
    app.with(|w| w.lean.destinations.push(destination));
    after(&app, app.timing.lean_link, move |app| {
        let (events, added) = app.with(|w| {
            let mut events = Vec::new();
            let mut added = Vec::new();
            for source in &mut w.lean.sources {
                if source
                    .beneficiaries
                    .iter()
                    .any(|b| b.payment_destination_id == destination_id)
                {
                    continue;
                }
                let b = new_beneficiary(&destination_id, app.timing.cool_off);
                events.push(beneficiary_event(
                    "payment_source.beneficiary.created",
                    source,
                    &b,
                ));
                added.push(b.id.clone());
                source.beneficiaries.push(b);
            }
            (events, added)
        });
        app.emit(events);
        schedule_cool_off(app, added);
    });
    Ok(Json(json))
}

async fn list_destinations(State(app): State<App>) -> ApiResult {
    Ok(Json(Value::Array(app.with(|w| {
        w.lean.destinations.iter().map(Destination::json).collect()
    }))))
}

async fn get_destination(State(app): State<App>, Path(id): Path<String>) -> ApiResult {
    app.with(|w| {
        w.lean
            .destinations
            .iter()
            .find(|d| d.id == id)
            .map(|d| Json(d.json()))
            .ok_or_else(|| ApiError::not_found("destination", &id))
    })
}

fn new_beneficiary(destination_id: &str, cool_off: std::time::Duration) -> Beneficiary {
    let expiry = Utc::now() + chrono::Duration::from_std(cool_off).unwrap_or_default();
    Beneficiary {
        id: Uuid::new_v4().to_string().to_ascii_uppercase(),
        payment_destination_id: destination_id.to_owned(),
        status: "AWAITING_BENEFICIARY_COOL_OFF",
        cool_off_expiry: expiry,
    }
}

/// After the cool-off, the beneficiaries become `ACTIVE`.
fn schedule_cool_off(app: &App, beneficiary_ids: Vec<String>) {
    if beneficiary_ids.is_empty() {
        return;
    }
    after(app, app.timing.cool_off, move |app| {
        let events = app.with(|w| {
            let mut events = Vec::new();
            for source in &mut w.lean.sources {
                let mut changed = Vec::new();
                for b in &mut source.beneficiaries {
                    if beneficiary_ids.contains(&b.id) && b.status != "ACTIVE" {
                        b.status = "ACTIVE";
                        changed.push(b.clone());
                    }
                }
                for b in changed {
                    events.push(beneficiary_event(
                        "payment_source.beneficiary.updated",
                        source,
                        &b,
                    ));
                }
            }
            events
        });
        app.emit(events);
    });
}

/// `POST /payments/v1/customer {app_user_id}`; 409 `CUSTOMER_ALREADY_EXISTS` on a repeat.
/// Afterwards the simulated end user links a bank through LinkSDK.
async fn create_customer(State(app): State<App>, bytes: Bytes) -> ApiResult {
    let body = parse(&bytes)?;
    let app_user_id = body.req_str("app_user_id").map_err(ApiError::invalid)?;
    let customer = app.with(|w| {
        if w.lean
            .customers
            .iter()
            .any(|c| c.app_user_id == app_user_id)
        {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "CUSTOMER_ALREADY_EXISTS",
                format!("A customer with app_user_id {app_user_id} already exists"),
            ));
        }
        let c = Customer {
            customer_id: Uuid::new_v4().to_string(),
            app_user_id: app_user_id.clone(),
            created_at: Utc::now(),
        };
        w.lean.customers.push(c.clone());
        Ok(c)
    })?;
    let customer_id = customer.customer_id.clone();
    after(&app, app.timing.lean_link, move |app| {
        link_sdk(app, &customer_id)
    });
    Ok(Json(
        json!({"customer_id": customer.customer_id, "app_user_id": customer.app_user_id}),
    ))
}

/// The simulated LinkSDK `createPaymentSource()`: a payment source with funded accounts and one
/// beneficiary per existing destination.
fn link_sdk(app: &App, customer_id: &str) {
    let (events, beneficiaries) = app.with(|w| {
        if !w
            .lean
            .customers
            .iter()
            .any(|c| c.customer_id == customer_id)
            || w.lean.sources.iter().any(|s| s.customer_id == customer_id)
        {
            return (Vec::new(), Vec::new());
        }
        let accounts: Vec<BankAccount> = PAYER_ACCOUNTS
            .iter()
            .map(|(currency, _)| BankAccount {
                id: Uuid::new_v4().to_string(),
                account_number: format!("{:013}", rand::random::<u64>() % 10_000_000_000_000),
                currency,
            })
            .collect();
        for (account, (_, opening)) in accounts.iter().zip(PAYER_ACCOUNTS) {
            let _ = w.ledger.record(
                Movement {
                    provider: Provider::Lean,
                    account: &account.id,
                    kind: Kind::Seed,
                    direction: Direction::Credit,
                    reference: "opening-balance",
                    counterparty: "sandbox",
                    amount: *opening,
                    currency: account.currency,
                },
                0,
            );
        }
        let source = PaymentSource {
            id: Uuid::new_v4().to_string(),
            customer_id: customer_id.to_owned(),
            beneficiaries: w
                .lean
                .destinations
                .iter()
                .map(|d| new_beneficiary(&d.id, app.timing.cool_off))
                .collect(),
            accounts,
        };
        let mut events = vec![event(
            "payment_source.created",
            "A payment source was pre-authorized by your customer.",
            json!({
                "id": source.id,
                "customer_id": source.customer_id,
                "status": "AWAITING_BENEFICIARY_COOL_OFF",
                "bank_identifier": "ENBD_UAE",
                "bank_name": "Emirates NBD",
                "end_user_id": end_user_id(&source.customer_id),
            }),
        )];
        for b in &source.beneficiaries {
            events.push(beneficiary_event(
                "payment_source.beneficiary.created",
                &source,
                b,
            ));
        }
        let ids = source.beneficiaries.iter().map(|b| b.id.clone()).collect();
        w.lean.sources.push(source);
        (events, ids)
    });
    app.emit(events);
    schedule_cool_off(app, beneficiaries);
}

/// The Lean end user behind a customer's payment source (the getting-started seed's
/// `payment_source.created` carries one): a stable UUID derived from the customer id.
fn end_user_id(customer_id: &str) -> String {
    const NAMESPACE: Uuid = Uuid::from_u128(0x6c65_616e_0000_0000_0000_656e_6475_7372);
    Uuid::new_v5(&NAMESPACE, customer_id.as_bytes()).to_string()
}

async fn get_customer_by_app_user_id(
    State(app): State<App>,
    Path(app_user_id): Path<String>,
) -> ApiResult {
    app.with(|w| {
        w.lean
            .customers
            .iter()
            .find(|c| c.app_user_id == app_user_id)
            .map(|c| Json(c.json()))
            .ok_or_else(|| ApiError::not_found("customer with app_user_id", &app_user_id))
    })
}

async fn get_customer(State(app): State<App>, Path(customer_id): Path<String>) -> ApiResult {
    app.with(|w| {
        w.lean
            .customers
            .iter()
            .find(|c| c.customer_id == customer_id)
            .map(|c| Json(c.json()))
            .ok_or_else(|| ApiError::not_found("customer", &customer_id))
    })
}

async fn list_payment_sources(
    State(app): State<App>,
    Path(customer_id): Path<String>,
) -> ApiResult {
    app.with(|w| {
        if !w
            .lean
            .customers
            .iter()
            .any(|c| c.customer_id == customer_id)
        {
            return Err(ApiError::not_found("customer", &customer_id));
        }
        Ok(Json(Value::Array(
            w.lean
                .sources
                .iter()
                .filter(|s| s.customer_id == customer_id)
                .map(|s| s.json(&w.ledger))
                .collect(),
        )))
    })
}

async fn get_payment_source(
    State(app): State<App>,
    Path((customer_id, id)): Path<(String, String)>,
) -> ApiResult {
    app.with(|w| {
        w.lean
            .sources
            .iter()
            .find(|s| s.customer_id == customer_id && s.id == id)
            .map(|s| Json(s.json(&w.ledger)))
            .ok_or_else(|| ApiError::not_found("payment source", &id))
    })
}

fn intent_json(intent: &Intent, lean: &Objects) -> Value {
    let payments: Vec<Value> = lean
        .payments
        .iter()
        .filter(|p| p.intent_id == intent.id)
        .map(Payment::json)
        .collect();
    let destination = lean
        .destinations
        .iter()
        .find(|d| d.id == intent.destination_id)
        .map(Destination::json);
    json!({
        "payment_intent_id": intent.id,
        "customer_id": intent.customer_id,
        "amount": json_amount(intent.amount, &intent.currency),
        "currency": intent.currency,
        "payment_destination_id": intent.destination_id,
        "payment_destination": destination,
        "description": intent.description,
        "created_at": intent.created_at,
        "payments": payments,
    })
}

/// `POST /payments/v1/intents`, deduplicated by `Idempotency-Key`: the same key with the same
/// body returns the original intent (`200`, header `Idempotent-Replayed: true`); the same key
/// with a different body is `409 IDEMPOTENCY_KEY_REUSED`.
async fn create_intent(State(app): State<App>, headers: HeaderMap, bytes: Bytes) -> Response {
    match create_intent_inner(&app, &headers, &bytes) {
        Ok((json, replayed)) => {
            let mut resp = Json(json).into_response();
            if replayed {
                resp.headers_mut().insert(
                    "idempotent-replayed",
                    axum::http::HeaderValue::from_static("true"),
                );
            }
            resp
        }
        Err(e) => e.into_response(),
    }
}

fn create_intent_inner(
    app: &App,
    headers: &HeaderMap,
    bytes: &Bytes,
) -> Result<(Value, bool), ApiError> {
    let body = parse(bytes)?;
    let currency = body
        .req_str("currency")
        .map_err(ApiError::invalid)?
        .to_ascii_uppercase();
    if currency.len() != 3 || !currency.bytes().all(|b| b.is_ascii_alphabetic()) {
        return Err(ApiError::invalid("currency must be an ISO 4217 code"));
    }
    let amount_value = body
        .value("amount")
        .ok_or_else(|| ApiError::invalid("amount is required"))?;
    let amount = parse_minor(amount_value, &currency)
        .map_err(|e| ApiError::invalid(format!("amount: {e}")))?;
    let customer_id = body.req_str("customer_id").map_err(ApiError::invalid)?;
    let destination_id = body
        .str("payment_destination_id")
        .map_err(ApiError::invalid)?
        .unwrap_or_else(|| DEFAULT_DESTINATION_ID.to_owned());
    let description = body.str("description").map_err(ApiError::invalid)?;
    if description
        .as_deref()
        .is_some_and(|d| d.chars().count() > MAX_DESCRIPTION)
    {
        return Err(ApiError::invalid(format!(
            "description must be at most {MAX_DESCRIPTION} characters"
        )));
    }
    let key = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .filter(|k| !k.is_empty());
    let fingerprint = format!(
        "{amount}|{currency}|{customer_id}|{destination_id}|{}",
        description.as_deref().unwrap_or("")
    );
    let (json, created) = app.with(|w| {
        let lean = &mut w.lean;
        if let Some(key) = &key {
            if let Some((fp, intent_id)) = lean.idempotency.get(key) {
                if *fp != fingerprint {
                    return Err(ApiError::new(
                        StatusCode::CONFLICT,
                        "IDEMPOTENCY_KEY_REUSED",
                        "This Idempotency-Key was used with a different request body",
                    ));
                }
                let intent = lean
                    .intents
                    .iter()
                    .find(|i| &i.id == intent_id)
                    .ok_or_else(|| ApiError::injected(StatusCode::INTERNAL_SERVER_ERROR))?;
                return Ok((intent_json(intent, lean), None));
            }
        }
        if !lean.customers.iter().any(|c| c.customer_id == customer_id) {
            return Err(ApiError::invalid(format!(
                "customer {customer_id} does not exist"
            )));
        }
        if !lean.destinations.iter().any(|d| d.id == destination_id) {
            return Err(ApiError::invalid(format!(
                "payment destination {destination_id} does not exist"
            )));
        }
        let intent = Intent {
            id: Uuid::new_v4().to_string(),
            customer_id: customer_id.clone(),
            amount,
            currency: currency.clone(),
            destination_id: destination_id.clone(),
            description: description.clone(),
            created_at: Utc::now(),
        };
        if let Some(key) = key {
            lean.idempotency
                .insert(key, (fingerprint.clone(), intent.id.clone()));
        }
        lean.intents.push(intent.clone());
        let json = intent_json(&intent, lean);
        Ok((json, Some(intent.id)))
    })?;
    let replayed = created.is_none();
    if let Some(intent_id) = created {
        after(app, app.timing.bank_settlement, move |app| {
            initiate_payment(app, &intent_id);
        });
    }
    Ok((json, replayed))
}

/// The simulated end user authorises the intent: a payment is created with the bank.
fn initiate_payment(app: &App, intent_id: &str) {
    let outcome = app.with(|w| {
        let lean = &mut w.lean;
        let intent = lean.intents.iter().find(|i| i.id == intent_id)?.clone();
        let description = intent.description.clone().unwrap_or_default();
        let active = lean.sources.iter().any(|s| {
            s.customer_id == intent.customer_id
                && s.beneficiaries.iter().any(|b| {
                    b.payment_destination_id == intent.destination_id && b.status == "ACTIVE"
                })
        });
        let status = if !active || description.contains("FAILED") {
            "FAILED"
        } else {
            "PENDING_WITH_BANK"
        };
        let now = Utc::now();
        let payment = Payment {
            id: Uuid::new_v4().to_string(),
            intent_id: intent.id.clone(),
            customer_id: intent.customer_id.clone(),
            status,
            amount: intent.amount,
            currency: intent.currency.clone(),
            bank_transaction_reference: None,
            created_at: now,
            updated_at: now,
        };
        let ev = event(
            "payment.created",
            "A payment object has been created.",
            payment.payload(),
        );
        let continues = status == "PENDING_WITH_BANK" && !description.contains("PENDING_WITH_BANK");
        let id = payment.id.clone();
        lean.payments.push(payment);
        Some((ev, continues.then_some(id)))
    });
    let Some((ev, next)) = outcome else { return };
    app.emit([ev]);
    if let Some(payment_id) = next {
        after(app, app.timing.bank_settlement, move |app| {
            let ev = app.with(|w| settle_payment(&mut w.lean, &mut w.ledger, &payment_id));
            app.emit(ev);
        });
    }
}

/// The bank answers: the payer's account is debited (`ACCEPTED_BY_BANK`) or the payment is
/// `REJECTED_BY_BANK` (trigger in the description, or insufficient balance).
fn settle_payment(lean: &mut Objects, ledger: &mut Ledger, payment_id: &str) -> Option<Event> {
    let payment = lean
        .payments
        .iter_mut()
        .find(|p| p.id == payment_id && p.status == "PENDING_WITH_BANK")?;
    let intent = lean.intents.iter().find(|i| i.id == payment.intent_id)?;
    let account = lean
        .sources
        .iter()
        .filter(|s| s.customer_id == payment.customer_id)
        .flat_map(|s| s.accounts.iter())
        .find(|a| a.currency == payment.currency);
    let counterparty = lean
        .destinations
        .iter()
        .find(|d| d.id == intent.destination_id)
        .map_or_else(|| intent.destination_id.clone(), Destination::counterparty);
    let rejected_by_trigger = intent
        .description
        .as_deref()
        .is_some_and(|d| d.contains("REJECTED_BY_BANK"));
    let debited = match account {
        Some(a) if !rejected_by_trigger => ledger
            .record(
                Movement {
                    provider: Provider::Lean,
                    account: &a.id,
                    kind: Kind::Payment,
                    direction: Direction::Debit,
                    reference: &payment.id,
                    counterparty: &counterparty,
                    amount: payment.amount,
                    currency: &payment.currency,
                },
                0,
            )
            .is_ok(),
        _ => false,
    };
    if debited {
        payment.status = "ACCEPTED_BY_BANK";
        payment.bank_transaction_reference =
            Some(format!("FT{}", &Uuid::new_v4().simple().to_string()[..12]).to_ascii_uppercase());
    } else {
        payment.status = "REJECTED_BY_BANK";
    }
    payment.updated_at = Utc::now();
    Some(event(
        "payment.updated",
        "A payment object has been updated.",
        payment.payload(),
    ))
}

async fn get_intent(State(app): State<App>, Path(id): Path<String>) -> ApiResult {
    app.with(|w| {
        w.lean
            .intents
            .iter()
            .find(|i| i.id == id)
            .map(|i| Json(intent_json(i, &w.lean)))
            .ok_or_else(|| ApiError::not_found("payment intent", &id))
    })
}

async fn get_payment(State(app): State<App>, Path(id): Path<String>) -> ApiResult {
    app.with(|w| {
        w.lean
            .payments
            .iter()
            .find(|p| p.id == id)
            .map(|p| Json(p.json()))
            .ok_or_else(|| ApiError::not_found("payment", &id))
    })
}
