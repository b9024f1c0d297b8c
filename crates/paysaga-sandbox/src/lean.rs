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
/// Status of a payment queued for manual authorisation. Lean's getting-started payouts guide
/// says payments are "queued" and authorised later but names no status; `CREATED` is the one
/// Lean's payment lifecycle documents for "a transaction record exists, no interaction with the
/// bank yet ... progress within the approval flow" (docs/PROVIDER-CONTRACTS.md, Lean).
pub const QUEUED_STATUS: &str = "CREATED";

/// How Lean authorises the payments it queues from the connected account (the getting-started
/// payouts guide: manual authorisation by a Financial Controller in the Application Dashboard or
/// the bank portal, automatic, or on demand).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LeanAuthorization {
    /// Lean authorises at once (the sandbox's behaviour before manual mode existed).
    #[default]
    Automatic,
    /// The payment waits in [`QUEUED_STATUS`] until a Financial Controller authorises it
    /// (`POST /_sandbox/lean/payments/{id}/authorize`, or the scripted delay).
    Manual,
}

impl LeanAuthorization {
    /// `automatic` or `manual`.
    pub fn as_str(self) -> &'static str {
        match self {
            LeanAuthorization::Automatic => "automatic",
            LeanAuthorization::Manual => "manual",
        }
    }
}

impl std::fmt::Display for LeanAuthorization {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for LeanAuthorization {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "automatic" => Ok(LeanAuthorization::Automatic),
            "manual" => Ok(LeanAuthorization::Manual),
            other => Err(format!(
                "unknown Lean authorisation mode {other:?} (expected automatic or manual)"
            )),
        }
    }
}

/// The sandbox's Lean authorisation setting: the mode of intents that do not choose one
/// (`authorize_payment`), and, in manual mode, an optional scripted approval delay.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AuthorizationSetting {
    /// Mode of intents without `authorize_payment`.
    pub mode: LeanAuthorization,
    /// Manual mode: a simulated Financial Controller authorises each queued payment this long
    /// after it was queued; `None`: only the control endpoint authorises.
    pub authorize_after: Option<std::time::Duration>,
}

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
    /// Queued for manual authorisation rather than authorised at once.
    manual: bool,
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
    /// Who authorised a manually authorised payment, and when (sandbox control view only).
    authorized: Option<(String, DateTime<Utc>)>,
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
        .method_not_allowed_fallback(method_not_allowed)
        .fallback(not_found)
}

/// The path below `/lean`, as Lean would see it.
fn lean_path(uri: &axum::http::Uri) -> &str {
    let path = uri.path();
    path.strip_prefix("/lean").unwrap_or(path)
}

/// Unknown routes: 404 in Lean's error shape. Lean documents no 404 body; its error shape
/// `{status, message, timestamp}` with the sandbox's `RESOURCE_NOT_FOUND` is the closest.
async fn not_found(axum::extract::OriginalUri(uri): axum::extract::OriginalUri) -> Response {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "RESOURCE_NOT_FOUND",
        format!("No endpoint {}", lean_path(&uri)),
    )
    .into_response()
}

/// A known route with another method: 405 in Lean's error shape.
async fn method_not_allowed(
    method: axum::http::Method,
    axum::extract::OriginalUri(uri): axum::extract::OriginalUri,
) -> Response {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "METHOD_NOT_ALLOWED",
        format!("{method} is not supported for {}", lean_path(&uri)),
    )
    .into_response()
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
    // Lean's Payouts API chooses the flow per payment with `authorize_payment` (false: manual
    // or on-demand authorisation, true: automatic); absent, the sandbox's setting decides.
    let manual = match body.value("authorize_payment") {
        None | Some(Value::Null) => app.lean_authorization().mode == LeanAuthorization::Manual,
        Some(Value::Bool(authorize)) => !authorize,
        Some(_) => return Err(ApiError::invalid("authorize_payment must be a boolean")),
    };
    let key = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .filter(|k| !k.is_empty());
    let fingerprint = format!(
        "{amount}|{currency}|{customer_id}|{destination_id}|{}|{:?}",
        description.as_deref().unwrap_or(""),
        body.value("authorize_payment").and_then(Value::as_bool)
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
            manual,
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

/// The simulated end user authorises the intent: a payment is created with the bank. A manual
/// intent's payment is queued in [`QUEUED_STATUS`] until it is authorised ([`authorize`]).
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
        } else if intent.manual {
            QUEUED_STATUS
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
            authorized: None,
        };
        let ev = event(
            "payment.created",
            "A payment object has been created.",
            payment.payload(),
        );
        let continues = status == "PENDING_WITH_BANK" && !description.contains("PENDING_WITH_BANK");
        let queued = status == QUEUED_STATUS;
        let id = payment.id.clone();
        lean.payments.push(payment);
        Some((ev, continues.then(|| id.clone()), queued.then_some(id)))
    });
    let Some((ev, next, queued)) = outcome else {
        return;
    };
    app.emit([ev]);
    if let Some(payment_id) = next {
        schedule_settlement(app, payment_id);
    }
    if let (Some(payment_id), Some(delay)) = (queued, app.lean_authorization().authorize_after) {
        after(app, delay, move |app| {
            let _ = authorize(app, &payment_id, "sandbox scripted Financial Controller");
        });
    }
}

fn schedule_settlement(app: &App, payment_id: String) {
    after(app, app.timing.bank_settlement, move |app| {
        let ev = app.with(|w| settle_payment(&mut w.lean, &mut w.ledger, &payment_id));
        app.emit(ev);
    });
}

/// Why a queued payment cannot be authorised.
#[derive(Debug)]
pub(crate) enum AuthorizeError {
    /// No payment with this id.
    Unknown,
    /// The payment is not queued for authorisation (its status).
    NotQueued(&'static str),
}

/// A Financial Controller authorises a queued payment: it goes to the bank
/// (`payment.updated` `PENDING_WITH_BANK`) and then proceeds as an automatic one.
pub(crate) fn authorize(app: &App, payment_id: &str, by: &str) -> Result<Value, AuthorizeError> {
    let (json, ev, continues) = app.with(|w| {
        let lean = &mut w.lean;
        let payment = lean
            .payments
            .iter_mut()
            .find(|p| p.id == payment_id)
            .ok_or(AuthorizeError::Unknown)?;
        if payment.status != QUEUED_STATUS {
            return Err(AuthorizeError::NotQueued(payment.status));
        }
        let now = Utc::now();
        payment.status = "PENDING_WITH_BANK";
        payment.updated_at = now;
        payment.authorized = Some((by.to_owned(), now));
        let ev = event(
            "payment.updated",
            "A payment object has been updated.",
            payment.payload(),
        );
        let payment = payment.clone();
        let stays_pending = lean
            .intents
            .iter()
            .find(|i| i.id == payment.intent_id)
            .and_then(|i| i.description.as_deref())
            .is_some_and(|d| d.contains("PENDING_WITH_BANK"));
        Ok((control_json(&payment), ev, !stays_pending))
    })?;
    app.emit([ev]);
    if continues {
        schedule_settlement(app, payment_id.to_owned());
    }
    Ok(json)
}

/// A payment as the sandbox's control endpoints show it: the API object plus the
/// authorisation (`awaiting_authorization`, `authorized_by`, `authorized_at`).
fn control_json(p: &Payment) -> Value {
    let mut v = p.json();
    v["awaiting_authorization"] = json!(p.status == QUEUED_STATUS);
    if let Some((by, at)) = &p.authorized {
        v["authorized_by"] = json!(by);
        v["authorized_at"] = json!(at);
    }
    v
}

/// Every payment, oldest first, for `GET /_sandbox/lean/payments` (`intent_id` filters).
pub(crate) fn payments_json(app: &App, intent_id: Option<&str>) -> Value {
    app.with(|w| {
        Value::Array(
            w.lean
                .payments
                .iter()
                .filter(|p| intent_id.is_none_or(|i| p.intent_id == i))
                .map(control_json)
                .collect(),
        )
    })
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
