//! Blaaiz: OAuth2 (form) or legacy API key, customers with KYC review, pre-signed document
//! uploads, payouts from seeded business wallets, transactions.
//!
//! No idempotency: a repeated `POST /payout` is a second payout.

use std::collections::HashMap;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::{from_fn_with_state, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::app::{after, App};
use crate::auth::{bearer, client_matches, secret_eq};
use crate::body::Body;
use crate::ledger::{Direction, Kind, Ledger, Movement};
use crate::money::{json_amount, parse_minor};
use crate::webhooks::{hmac_sha256_hex, Event};
use crate::Provider;

/// The sandbox's Blaaiz business.
pub const BUSINESS_ID: &str = "9d46461e-f991-423e-9f23-1dbff4079119";

/// Seeded business wallets: (wallet id, currency, opening balance in minor units).
pub const WALLETS: &[(&str, &str, i64)] = &[
    (
        "b18ed308-5ac5-4e9e-bb16-8c03ec2d3c01",
        "NGN",
        10_000_000_000,
    ),
    ("b18ed308-5ac5-4e9e-bb16-8c03ec2d3c02", "USD", 100_000_000),
    ("b18ed308-5ac5-4e9e-bb16-8c03ec2d3c03", "CAD", 100_000_000),
    ("b18ed308-5ac5-4e9e-bb16-8c03ec2d3c04", "GBP", 100_000_000),
    ("b18ed308-5ac5-4e9e-bb16-8c03ec2d3c05", "EUR", 100_000_000),
    // Currencies with 0 and 3 decimals (minor units: yen, pesos, kronur, dong; fils).
    ("b18ed308-5ac5-4e9e-bb16-8c03ec2d3c06", "JPY", 100_000_000),
    ("b18ed308-5ac5-4e9e-bb16-8c03ec2d3c07", "CLP", 100_000_000),
    ("b18ed308-5ac5-4e9e-bb16-8c03ec2d3c08", "ISK", 100_000_000),
    ("b18ed308-5ac5-4e9e-bb16-8c03ec2d3c09", "VND", 100_000_000),
    ("b18ed308-5ac5-4e9e-bb16-8c03ec2d3c0a", "KWD", 100_000_000),
    ("b18ed308-5ac5-4e9e-bb16-8c03ec2d3c0b", "BHD", 100_000_000),
    ("b18ed308-5ac5-4e9e-bb16-8c03ec2d3c0c", "JOD", 100_000_000),
];

/// `account_number` that makes a payout fail (and be refunded).
pub const FAILING_ACCOUNT_NUMBER: &str = "0000000000";
/// `last_name` (or `business_name`) that makes a KYC review end `REJECTED`.
pub const REJECTED_LAST_NAME: &str = "Reject";

/// The OAuth scopes Blaaiz defines (the scope list of its official SDKs: Python 1.7.0,
/// Node.js, Laravel). A token request naming any other scope is refused (`invalid_scope`).
pub const SCOPES: &[&str] = &[
    "wallet:read",
    "currency:read",
    "bank:read",
    "customer:read",
    "customer:write",
    "beneficiary:read",
    "virtual-account:read",
    "virtual-account:create",
    "virtual-account:close",
    "collection:create",
    "collection:crypto:create",
    "collection:interac:accept",
    "payout:create",
    "swap:create",
    "transaction:read",
    "fees:read",
    "file:upload",
    "webhook:read",
    "webhook:write",
    "webhook:replay",
    "rates:read",
    "compliance-kyc:read",
    "compliance-kyc:create",
    "compliance-kyc:cancel",
    "compliance-kyc:pii:read",
];

/// The scope an OAuth token needs for `method` on `path` (the route below `/api/external`).
/// The legacy API key grants every scope.
pub(crate) fn required_scope(method: &axum::http::Method, path: &str) -> Option<&'static str> {
    use axum::http::Method;
    let path = path
        .find("/api/external")
        .map_or(path, |i| &path[i + "/api/external".len()..]);
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let scope = match (method, segments.as_slice()) {
        (&Method::POST, ["customer"]) | (&Method::POST, ["customer", _, "files"]) => {
            "customer:write"
        }
        (&Method::GET, ["customer"]) | (&Method::GET, ["customer", _]) => "customer:read",
        (&Method::POST, ["file", "get-presigned-url"]) => "file:upload",
        (&Method::POST, ["payout"]) => "payout:create",
        (&Method::POST, ["transaction"]) | (&Method::GET, ["transaction", _]) => "transaction:read",
        (&Method::GET, ["webhook"]) => "webhook:read",
        (&Method::POST, ["webhook"]) | (&Method::PUT, ["webhook", _]) => "webhook:write",
        (&Method::POST, ["webhook-replay"]) => "webhook:replay",
        (&Method::GET, ["wallet"]) | (&Method::GET, ["wallet", _]) => "wallet:read",
        (&Method::GET, ["currency"]) => "currency:read",
        (&Method::GET, ["bank"]) => "bank:read",
        (&Method::POST, ["fees", "breakdown"]) => "fees:read",
        _ => return None,
    };
    Some(scope)
}

/// Banks listed by `GET /api/external/bank`: (id, name, currency, country).
pub const BANKS: &[(&str, &str, &str, &str)] = &[
    ("1", "Access Bank", "NGN", "NG"),
    ("2", "Guaranty Trust Bank", "NGN", "NG"),
    ("3", "First Bank of Nigeria", "NGN", "NG"),
    ("4", "Zenith Bank", "NGN", "NG"),
];

/// A Blaaiz error: `{"status": false, "message": ...}` (customer and file endpoints) or
/// `{"message": ...}` (payout and transaction endpoints), as in Blaaiz's OpenAPI.
#[derive(Debug)]
pub(crate) struct ApiError {
    status: StatusCode,
    message: String,
    with_status_flag: bool,
    errors: Option<Value>,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            with_status_flag: true,
            errors: None,
        }
    }

    fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    /// A validation error naming the field (Laravel style `errors` map).
    fn invalid(field: &str, message: impl Into<String>) -> Self {
        let message = message.into();
        let mut e = Self::bad_request(message.clone());
        e.errors = Some(json!({ field: [message] }));
        e
    }

    fn plain(mut self) -> Self {
        self.with_status_flag = false;
        self
    }

    /// An injected fault in Blaaiz's shape.
    pub(crate) fn injected(status: StatusCode) -> Self {
        let message = match status {
            StatusCode::TOO_MANY_REQUESTS => "Too Many Attempts.",
            StatusCode::GATEWAY_TIMEOUT => "Gateway Timeout",
            _ => "Server Error",
        };
        Self::new(status, message).plain()
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = serde_json::Map::new();
        if self.with_status_flag {
            body.insert("status".into(), Value::Bool(false));
        }
        body.insert("message".into(), Value::String(self.message));
        if let Some(errors) = self.errors {
            body.insert("errors".into(), errors);
        }
        (self.status, Json(Value::Object(body))).into_response()
    }
}

fn str_field(body: &Body, key: &str) -> Result<Option<String>, ApiError> {
    body.str(key).map_err(|m| ApiError::invalid(key, m))
}

fn req_field(body: &Body, key: &str) -> Result<String, ApiError> {
    body.req_str(key).map_err(|m| ApiError::invalid(key, m))
}

#[derive(Debug, Clone)]
struct Customer {
    id: String,
    kind: String,
    first_name: Option<String>,
    last_name: Option<String>,
    business_name: Option<String>,
    email: String,
    country: String,
    id_type: String,
    id_number: String,
    phone: Option<String>,
    dob: Option<String>,
    street: Option<String>,
    city: Option<String>,
    state: Option<String>,
    zip_code: Option<String>,
    verification_status: &'static str,
    comment: Option<String>,
    /// Attached files by field (`id_file`, ...): (file id, category, when).
    files: Vec<(String, String, DateTime<Utc>)>,
    review: u64,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

impl Customer {
    fn summary_json(&self) -> Value {
        json!({
            "id": self.id,
            "business_id": BUSINESS_ID,
            "first_name": self.first_name,
            "last_name": self.last_name,
            "business_name": self.business_name,
            "type": self.kind,
            "email": self.email,
            "country": self.country,
            "id_type": self.id_type,
            "id_number": self.id_number,
            "verification_status": self.verification_status,
        })
    }

    fn full_json(&self, public_url: &str) -> Value {
        let mut v = self.summary_json();
        let files: Vec<Value> = self
            .files
            .iter()
            .map(|(id, category, at)| {
                json!({
                    "id": id,
                    "category": category,
                    "url": format!("{public_url}/_sandbox/blaaiz/uploads/{id}"),
                    "uploaded_at": at,
                })
            })
            .collect();
        // Blaaiz's schema types phone_number, date_of_birth and the address fields as strings
        // (not nullable): a field the customer was created without is left out.
        let mut address = serde_json::Map::new();
        address.insert("country".into(), json!(self.country));
        for (k, val) in [
            ("street", &self.street),
            ("city", &self.city),
            ("state", &self.state),
            ("postal_code", &self.zip_code),
        ] {
            if let Some(val) = val {
                address.insert(k.into(), json!(val));
            }
        }
        if let Some(obj) = v.as_object_mut() {
            for (k, val) in [("phone_number", &self.phone), ("date_of_birth", &self.dob)] {
                if let Some(val) = val {
                    obj.insert(k.into(), json!(val));
                }
            }
            for (k, val) in [
                ("address", Value::Object(address)),
                ("files", Value::Array(files)),
                (
                    "status",
                    json!(self.verification_status.to_ascii_lowercase()),
                ),
                ("comment", json!(self.comment)),
                ("created_at", json!(self.created_at)),
                ("updated_at", json!(self.updated_at)),
            ] {
                obj.insert(k.to_owned(), val);
            }
        }
        v
    }

    fn rejected_by_trigger(&self) -> bool {
        [&self.last_name, &self.business_name].iter().any(|n| {
            n.as_deref()
                .is_some_and(|n| n.eq_ignore_ascii_case(REJECTED_LAST_NAME))
        })
    }
}

#[derive(Debug, Clone)]
struct FileRec {
    id: String,
    customer_id: String,
    category: String,
    /// (size in bytes, hex sha256) once uploaded; the bytes are not kept.
    uploaded: Option<(usize, String, DateTime<Utc>)>,
    /// The Content-Type the upload carried (empty when none).
    uploaded_content_type: String,
}

#[derive(Debug, Clone)]
struct Txn {
    id: String,
    wallet_id: String,
    customer_id: String,
    status: &'static str,
    reference: String,
    currency: String,
    amount: i64,
    method: String,
    account_number: Option<String>,
    account_name: Option<String>,
    bank_name: Option<String>,
    bank_code: Option<String>,
    email: Option<String>,
    routing_number: Option<String>,
    note: Option<String>,
    date: DateTime<Utc>,
    /// The last payout webhook raised for it (`POST /webhook-replay` sends it again).
    last_event: Option<Event>,
}

impl Txn {
    fn json(&self) -> Value {
        let amount = json_amount(self.amount, &self.currency);
        json!({
            "id": self.id,
            "business_id": BUSINESS_ID,
            "business_customer_id": self.customer_id,
            "business_wallet_id": self.wallet_id,
            "status": self.status,
            "type": "payout",
            "method": self.method,
            "reference": self.reference,
            "currency": self.currency,
            "amount": amount,
            "amount_without_fee": amount,
            "fee": 0,
            "rate": 1,
            "date": self.date,
            "note": self.note,
            "merchant_reference": self.note,
            "payee_collection_email": null,
            "source_information": {"collection_email": null},
            "recipient": self.recipient_json(&amount),
        })
    }

    /// Blaaiz's schema types `account_number`, `account_name`, `bank_name` and `bank_code`
    /// as strings (never null): a field the payout did not carry is left out.
    fn recipient_json(&self, amount: &Value) -> Value {
        let mut r = serde_json::Map::new();
        r.insert("id".into(), json!(format!("rcp_{}", &self.id[..8])));
        for (k, v) in [
            ("account_number", &self.account_number),
            ("account_name", &self.account_name),
            ("bank_name", &self.bank_name),
            ("bank_code", &self.bank_code),
        ] {
            if let Some(v) = v {
                r.insert(k.into(), json!(v));
            }
        }
        r.insert("amount".into(), amount.clone());
        r.insert("currency".into(), json!(self.currency));
        r.insert("status".into(), json!(self.status.to_ascii_lowercase()));
        r.insert("routing_number".into(), json!(self.routing_number));
        r.insert("email".into(), json!(self.email));
        Value::Object(r)
    }

    fn counterparty(&self) -> String {
        self.account_number
            .clone()
            .or_else(|| self.email.clone())
            .unwrap_or_else(|| format!("customer:{}", self.customer_id))
    }
}

/// URLs registered with `POST /api/external/webhook`.
#[derive(Debug, Clone)]
struct WebhookUrls {
    id: String,
    payout_url: String,
    collection_url: String,
    customer_url: Option<String>,
    virtual_account_url: Option<String>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

impl WebhookUrls {
    fn json(&self) -> Value {
        let mut v = json!({
            "id": self.id,
            "payout_url": self.payout_url,
            "collection_url": self.collection_url,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
        });
        if let Some(obj) = v.as_object_mut() {
            for (k, url) in [
                ("customer_url", &self.customer_url),
                ("virtual_account_url", &self.virtual_account_url),
            ] {
                if let Some(url) = url {
                    obj.insert(k.into(), json!(url));
                }
            }
        }
        v
    }
}

/// Blaaiz's objects.
#[derive(Debug, Default)]
pub(crate) struct Objects {
    customers: Vec<Customer>,
    files: HashMap<String, FileRec>,
    transactions: Vec<Txn>,
    webhook: Option<WebhookUrls>,
}

impl Objects {
    /// Where customer events go: the registered `customer_url`, else the `collection_url`
    /// (PROVIDERS.md: KYC events reach the collection URL); unregistered: the sandbox default.
    fn customer_url(&self) -> Option<String> {
        self.webhook.as_ref().map(|w| {
            w.customer_url
                .clone()
                .unwrap_or_else(|| w.collection_url.clone())
        })
    }

    /// Where payout events go: the registered `payout_url`; unregistered: the sandbox default.
    fn payout_url(&self) -> Option<String> {
        self.webhook.as_ref().map(|w| w.payout_url.clone())
    }
}

impl Objects {
    /// Records the opening balance of each seeded wallet.
    pub(crate) fn new(ledger: &mut Ledger) -> Self {
        for (id, currency, amount) in WALLETS {
            // A credit cannot fail.
            let _ = ledger.record(
                Movement {
                    provider: Provider::Blaaiz,
                    account: id,
                    kind: Kind::Seed,
                    direction: Direction::Credit,
                    reference: "opening-balance",
                    counterparty: "sandbox",
                    amount: *amount,
                    currency,
                },
                0,
            );
        }
        Self::default()
    }

    /// `(wallet id, currency, balance)` of every wallet.
    pub(crate) fn balances(ledger: &Ledger) -> Vec<(&'static str, &'static str, i64)> {
        WALLETS
            .iter()
            .map(|(id, cur, _)| (*id, *cur, ledger.balance(Provider::Blaaiz, id, cur)))
            .collect()
    }
}

fn customer_event(
    url: Option<String>,
    customer_id: &str,
    old: &str,
    new: &str,
    comment: Option<&str>,
) -> Event {
    let event_id = Uuid::new_v4().to_string();
    let body = json!({
        "event_type": "customer.status_changed",
        "customer_id": customer_id,
        "old_status": old,
        "new_status": new,
        "comment": comment,
        "event_id": event_id,
        "type": "customer",
    });
    Event::new(Provider::Blaaiz, event_id, "customer.status_changed", &body).to(url)
}

fn payout_event(url: Option<String>, t: &Txn) -> Event {
    let event_id = Uuid::new_v4().to_string();
    let message = match t.status {
        "SUCCESSFUL" => "Payout completed successfully.",
        "FAILED" => "Payout failed.",
        _ => "Payout initiated.",
    };
    let body = json!({
        "message": message,
        "transaction_id": t.id,
        "transaction_reference": t.reference,
        "merchant_reference": t.note,
        "transaction_status": t.status,
        "transaction_amount": json_amount(t.amount, &t.currency),
        "transaction_currency": t.currency,
        "customer_id": t.customer_id,
        "event_id": event_id,
        "type": "payout",
    });
    Event::new(Provider::Blaaiz, event_id, "payout.status_changed", &body).to(url)
}

/// Blaaiz's routes: `/oauth/token` and `/api/external/...`.
pub(crate) fn router(app: &App) -> Router<App> {
    let api = Router::new()
        .route("/customer", post(create_customer).get(find_customers))
        .route("/customer/{id}", get(get_customer))
        .route("/customer/{id}/files", post(attach_files))
        .route("/file/get-presigned-url", post(presigned_url))
        .route("/payout", post(create_payout))
        .route("/transaction", post(list_transactions))
        .route("/transaction/{id}", get(get_transaction))
        .route("/webhook", post(register_webhook).get(get_webhook))
        .route("/webhook/{id}", put(update_webhook))
        .route("/webhook-replay", post(replay_webhook))
        .route("/wallet", get(list_wallets))
        .route("/wallet/{id}", get(get_wallet))
        .route("/currency", get(list_currencies))
        .route("/bank", get(list_banks))
        .route("/fees/breakdown", post(fee_breakdown))
        .route_layer(from_fn_with_state(app.clone(), require_auth))
        .method_not_allowed_fallback(method_not_allowed);
    Router::new()
        .nest("/api/external", api)
        .route("/oauth/token", post(token))
        .fallback(not_found)
}

/// Unknown routes answer as Blaaiz's (Laravel) API does: 404 `{"message": ...}`.
async fn not_found(axum::extract::OriginalUri(uri): axum::extract::OriginalUri) -> Response {
    let path = uri.path().trim_start_matches('/');
    let path = path.strip_prefix("blaaiz/").unwrap_or(path);
    ApiError::new(
        StatusCode::NOT_FOUND,
        format!("The route {path} could not be found."),
    )
    .plain()
    .into_response()
}

/// A known route with another method: 405 `{"message": ...}`.
async fn method_not_allowed(
    method: axum::http::Method,
    axum::extract::OriginalUri(uri): axum::extract::OriginalUri,
) -> Response {
    let path = uri.path().trim_start_matches('/');
    let path = path.strip_prefix("blaaiz/").unwrap_or(path);
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("The {method} method is not supported for route {path}."),
    )
    .plain()
    .into_response()
}

/// The pre-signed upload route, mounted under `/_sandbox/blaaiz/uploads/{file_id}`.
pub(crate) fn upload_router() -> Router<App> {
    Router::new()
        .route("/{file_id}", put(upload))
        .layer(DefaultBodyLimit::max(32 * 1024 * 1024))
}

/// API key (every scope) or a bearer token holding the route's scope
/// ([`required_scope`]); a token without it is 403, as Laravel Passport's scope check answers.
async fn require_auth(State(app): State<App>, req: Request, next: Next) -> Response {
    let creds = &app.credentials.blaaiz;
    let scopes = bearer(req.headers()).and_then(|t| app.tokens.scopes(Provider::Blaaiz, t));
    if let Some(scopes) = scopes {
        let path = req
            .extensions()
            .get::<axum::extract::MatchedPath>()
            .map_or_else(|| req.uri().path().to_owned(), |m| m.as_str().to_owned());
        let needed = required_scope(req.method(), &path);
        return if needed.is_some_and(|n| scopes.iter().any(|s| s == n)) {
            next.run(req).await
        } else {
            ApiError::new(StatusCode::FORBIDDEN, "Invalid scope(s) provided.")
                .plain()
                .into_response()
        };
    }
    let by_key = req
        .headers()
        .get("x-blaaiz-api-key")
        .and_then(|v| v.to_str().ok())
        .zip(creds.api_key.as_ref())
        .is_some_and(|(presented, expected)| secret_eq(presented, expected));
    if by_key {
        next.run(req).await
    } else {
        ApiError::new(StatusCode::UNAUTHORIZED, "Invalid or missing API key").into_response()
    }
}

/// `POST /oauth/token` (form-encoded client credentials).
async fn token(State(app): State<App>, bytes: Bytes) -> Response {
    let oauth_error = |status: StatusCode, error: &str, message: &str| {
        (
            status,
            Json(json!({"error": error, "error_description": message, "message": message})),
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
            "The authorization grant type is not supported by the authorization server.",
        );
    }
    if !client_matches(
        app.credentials.blaaiz.client.as_ref(),
        field("client_id").as_deref(),
        field("client_secret").as_deref(),
    ) {
        return oauth_error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "Client authentication failed",
        );
    }
    let scope = field("scope").unwrap_or_default();
    let scopes: Vec<String> = scope.split_whitespace().map(str::to_owned).collect();
    if let Some(unknown) = scopes.iter().find(|s| !SCOPES.contains(&s.as_str())) {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_scope",
            &format!("The requested scope is invalid, unknown, or malformed (hint: check the `{unknown}` scope)."),
        );
    }
    let ttl = app.timing.blaaiz_token_ttl;
    let token = app.tokens.issue_scoped(Provider::Blaaiz, ttl, scopes);
    Json(json!({
        "token_type": "Bearer",
        "expires_in": ttl.as_secs(),
        "access_token": token,
    }))
    .into_response()
}

const ID_TYPES: &[&str] = &[
    "drivers_license",
    "passport",
    "id_card",
    "resident_permit",
    "certificate_of_incorporation",
];

/// `POST /api/external/customer`: always creates a new customer (no idempotency).
async fn create_customer(State(app): State<App>, bytes: Bytes) -> Result<Response, ApiError> {
    let body = Body::json(&bytes).map_err(ApiError::bad_request)?;
    let kind = req_field(&body, "type")?;
    if kind != "individual" && kind != "business" {
        return Err(ApiError::invalid("type", "The selected type is invalid."));
    }
    let email = req_field(&body, "email")?;
    if !email.contains('@') {
        return Err(ApiError::invalid(
            "email",
            "The email must be a valid email address.",
        ));
    }
    let country = req_field(&body, "country")?;
    let id_type = req_field(&body, "id_type")?;
    if !ID_TYPES.contains(&id_type.as_str())
        || (id_type == "certificate_of_incorporation" && kind != "business")
    {
        return Err(ApiError::invalid(
            "id_type",
            "The selected id type is invalid.",
        ));
    }
    let id_number = req_field(&body, "id_number")?;
    let first_name = str_field(&body, "first_name")?;
    let last_name = str_field(&body, "last_name")?;
    let business_name = str_field(&body, "business_name")?;
    if kind == "individual" {
        if first_name.is_none() {
            return Err(ApiError::invalid(
                "first_name",
                "The first name field is required when type is individual.",
            ));
        }
        if last_name.is_none() {
            return Err(ApiError::invalid(
                "last_name",
                "The last name field is required when type is individual.",
            ));
        }
    } else if business_name.is_none() {
        return Err(ApiError::invalid(
            "business_name",
            "The business name field is required when type is business.",
        ));
    }
    let now = Utc::now();
    let customer = Customer {
        id: Uuid::new_v4().to_string(),
        kind,
        first_name,
        last_name,
        business_name,
        email,
        country,
        id_type,
        id_number,
        phone: str_field(&body, "phone")?,
        dob: str_field(&body, "dob")?,
        street: str_field(&body, "street")?,
        city: str_field(&body, "city")?,
        state: str_field(&body, "state")?,
        zip_code: str_field(&body, "zip_code")?,
        verification_status: "PENDING",
        comment: None,
        files: Vec::new(),
        review: 0,
        created_at: now,
        updated_at: now,
    };
    let data = customer.summary_json();
    app.with(|w| w.blaaiz.customers.push(customer));
    Ok((
        StatusCode::CREATED,
        Json(json!({"message": "Customer created successfully.", "data": data})),
    )
        .into_response())
}

/// `GET /api/external/customer?email=...` (sandbox decision: Blaaiz publishes no customer
/// search; look-before-create needs one). Paginated with `page`/`per_page`.
async fn find_customers(
    State(app): State<App>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    let (page, per_page) = page_params(&q, None)?;
    let email = q.get("email").map(|e| e.to_ascii_lowercase());
    let items: Vec<Value> = app.with(|w| {
        w.blaaiz
            .customers
            .iter()
            .filter(|c| {
                email
                    .as_deref()
                    .is_none_or(|e| c.email.eq_ignore_ascii_case(e))
            })
            .map(|c| c.full_json(&app.public_url))
            .collect()
    });
    let (data, meta) = paginate(items, page, per_page);
    Ok(Json(json!({
        "status": true,
        "message": "Customers retrieved successfully",
        "data": data,
        "meta": meta,
    })))
}

async fn get_customer(
    State(app): State<App>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    app.with(|w| {
        w.blaaiz
            .customers
            .iter()
            .find(|c| c.id == id)
            .map(|c| {
                Json(json!({
                    "status": true,
                    "message": "Customer retrieved successfully",
                    "data": c.full_json(&app.public_url),
                }))
            })
            .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "Customer not found"))
    })
}

const FILE_CATEGORIES: &[&str] = &[
    "identity",
    "identity_back",
    "proof_of_address",
    "liveness_check",
];

/// The signature of a pre-signed URL: it covers the file, the expiry and, when the request
/// named a `file_type`, the Content-Type the upload must carry (S3's signed headers). The URL
/// carries its whole authority: the PUT needs nothing else (as Blaaiz's SDKs send it).
fn upload_signature(app: &App, file_id: &str, expires: i64, content_type: Option<&str>) -> String {
    let signed = match content_type {
        Some(ct) => format!("{file_id}:{expires}:content-type={ct}"),
        None => format!("{file_id}:{expires}"),
    };
    hmac_sha256_hex(&app.upload_key, signed.as_bytes())
}

/// `POST /api/external/file/get-presigned-url`. Blaaiz's OpenAPI file requires `file_name`
/// and `file_type`; its official SDKs send only `customer_id` and `file_category`: both forms
/// are accepted. A given `file_type` is signed into the URL and returned in `headers`.
async fn presigned_url(State(app): State<App>, bytes: Bytes) -> Result<Json<Value>, ApiError> {
    let body = Body::json(&bytes).map_err(ApiError::bad_request)?;
    let customer_id = req_field(&body, "customer_id")?;
    let category = req_field(&body, "file_category")?;
    if !FILE_CATEGORIES.contains(&category.as_str()) {
        return Err(ApiError::invalid(
            "file_category",
            "The selected file category is invalid.",
        ));
    }
    let _file_name = str_field(&body, "file_name")?;
    let content_type = str_field(&body, "file_type")?;
    let ttl = chrono::Duration::from_std(app.timing.upload_url_ttl)
        .unwrap_or_else(|_| chrono::Duration::minutes(15));
    let expires_at = Utc::now() + ttl;
    let file = FileRec {
        id: Uuid::new_v4().to_string(),
        customer_id: customer_id.clone(),
        category,
        uploaded: None,
        uploaded_content_type: String::new(),
    };
    let expires = expires_at.timestamp();
    let signed_headers = if content_type.is_some() {
        "content-type%3Bhost"
    } else {
        "host"
    };
    let url = format!(
        "{}/_sandbox/blaaiz/uploads/{}?X-Amz-Expires={expires}&X-Amz-SignedHeaders={signed_headers}&X-Amz-Signature={}",
        app.public_url,
        file.id,
        upload_signature(&app, &file.id, expires, content_type.as_deref())
    );
    let headers = match &content_type {
        Some(ct) => json!({ "Content-Type": ct }),
        None => json!({}),
    };
    let file_id = file.id.clone();
    app.with(|w| {
        if !w.blaaiz.customers.iter().any(|c| c.id == customer_id) {
            return Err(ApiError::new(StatusCode::NOT_FOUND, "Customer not found"));
        }
        w.blaaiz.files.insert(file.id.clone(), file);
        Ok(())
    })?;
    Ok(Json(json!({
        "message": "Upload URL generated successfully",
        "file_id": file_id,
        "url": url,
        "headers": headers,
        "data": {
            "file_id": file_id,
            "upload_url": url,
            "headers": headers,
            "expires_at": expires_at,
        },
    })))
}

fn s3_error(status: StatusCode, code: &str, message: &str) -> Response {
    (
        status,
        [(axum::http::header::CONTENT_TYPE, "application/xml")],
        format!("<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>{code}</Code><Message>{message}</Message></Error>"),
    )
        .into_response()
}

/// `PUT /_sandbox/blaaiz/uploads/{file_id}?X-Amz-Expires&X-Amz-SignedHeaders&X-Amz-Signature`:
/// checks the URL signature (over the Content-Type too when it was signed) and the expiry;
/// keeps size and sha256 only.
async fn upload(
    State(app): State<App>,
    Path(file_id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
    bytes: Bytes,
) -> Response {
    let expires: i64 = q
        .get("X-Amz-Expires")
        .and_then(|e| e.parse().ok())
        .unwrap_or(0);
    let content_type_signed = q
        .get("X-Amz-SignedHeaders")
        .is_some_and(|h| h.split(';').any(|h| h.eq_ignore_ascii_case("content-type")));
    let content_type = headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let signed_type = if content_type_signed {
        Some(content_type.as_deref().unwrap_or(""))
    } else {
        None
    };
    let signature_ok = q.get("X-Amz-Signature").is_some_and(|s| {
        secret_eq(
            s,
            &upload_signature(&app, &file_id, expires, signed_type).into(),
        )
    });
    if !signature_ok {
        return s3_error(
            StatusCode::FORBIDDEN,
            "SignatureDoesNotMatch",
            "The request signature we calculated does not match the signature you provided. Check your key and signing method.",
        );
    }
    if Utc::now().timestamp() > expires {
        return s3_error(StatusCode::FORBIDDEN, "AccessDenied", "Request has expired");
    }
    let digest = hex::encode(Sha256::digest(&bytes));
    let size = bytes.len();
    let result = app.with(|w| {
        let Some(file) = w.blaaiz.files.get_mut(&file_id) else {
            return Err((
                StatusCode::NOT_FOUND,
                "NoSuchKey",
                "The specified key does not exist.",
            ));
        };
        file.uploaded = Some((size, digest.clone(), Utc::now()));
        file.uploaded_content_type = content_type.clone().unwrap_or_default();
        Ok(())
    });
    match result {
        Ok(()) => (
            StatusCode::OK,
            [(axum::http::header::ETAG, format!("\"{}\"", &digest[..32]))],
        )
            .into_response(),
        Err((status, code, message)) => s3_error(status, code, message),
    }
}

/// `POST /api/external/customer/{id}/files`: attaching `id_file` starts the KYC review.
async fn attach_files(
    State(app): State<App>,
    Path(id): Path<String>,
    bytes: Bytes,
) -> Result<Json<Value>, ApiError> {
    let body = Body::json(&bytes).map_err(ApiError::bad_request)?;
    let fields = [
        ("id_file", "identity"),
        ("id_file_back", "identity_back"),
        ("proof_of_address_file", "proof_of_address"),
        ("liveness_check_file", "liveness_check"),
    ];
    let mut given = Vec::new();
    for (field, category) in fields {
        if let Some(file_id) = str_field(&body, field)? {
            given.push((field, category, file_id));
        }
    }
    if given.is_empty() {
        return Err(ApiError::bad_request("At least one file is required."));
    }
    let (events, review) = app.with(|w| {
        let state = &mut w.blaaiz;
        let hook = state.customer_url();
        for (field, category, file_id) in &given {
            let file = state
                .files
                .get(file_id)
                .filter(|f| f.customer_id == id)
                .ok_or_else(|| {
                    ApiError::invalid(field, format!("The selected {field} is invalid."))
                })?;
            if file.category != *category {
                return Err(ApiError::invalid(
                    field,
                    format!(
                        "The {field} must be a file of category {category}, not {}.",
                        file.category
                    ),
                ));
            }
            if file.uploaded.is_none() {
                return Err(ApiError::invalid(
                    field,
                    format!("The {field} has not been uploaded."),
                ));
            }
        }
        let customer = state
            .customers
            .iter_mut()
            .find(|c| c.id == id)
            .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "Customer not found"))?;
        let now = Utc::now();
        for (_, category, file_id) in &given {
            customer.files.retain(|(_, c, _)| c != category);
            customer
                .files
                .push((file_id.clone(), (*category).to_owned(), now));
        }
        customer.updated_at = now;
        let starts_review = given.iter().any(|(f, _, _)| *f == "id_file")
            && matches!(customer.verification_status, "PENDING" | "REJECTED");
        if !starts_review {
            return Ok((Vec::new(), None));
        }
        let old = customer.verification_status;
        customer.verification_status = "PROCESSING";
        customer.comment = None;
        customer.review += 1;
        Ok((
            vec![customer_event(hook, &customer.id, old, "PROCESSING", None)],
            Some(customer.review),
        ))
    })?;
    app.emit(events);
    if let Some(review) = review {
        let delay: Duration = app.timing.kyc_review;
        let customer_id = id.clone();
        after(&app, delay, move |app| {
            let event = app.with(|w| {
                let hook = w.blaaiz.customer_url();
                let c = w
                    .blaaiz
                    .customers
                    .iter_mut()
                    .find(|c| c.id == customer_id && c.review == review && c.verification_status == "PROCESSING")?;
                let (new, comment) = if c.rejected_by_trigger() {
                    (
                        "REJECTED",
                        Some("Identity document could not be verified (sandbox trigger: last_name=Reject)".to_owned()),
                    )
                } else {
                    ("VERIFIED", None)
                };
                c.verification_status = new;
                c.comment = comment.clone();
                c.updated_at = Utc::now();
                Some(customer_event(hook, &c.id, "PROCESSING", new, comment.as_deref()))
            });
            app.emit(event);
        });
    }
    Ok(Json(
        json!({"message": "Customer files uploaded successfully"}),
    ))
}

const PAYOUT_METHODS: &[&str] = &["bank_transfer", "interac", "crypto", "wire", "ach"];

/// `POST /api/external/payout`: debits the wallet now; the transaction settles later.
async fn create_payout(State(app): State<App>, bytes: Bytes) -> Result<Json<Value>, ApiError> {
    let plain = |e: ApiError| e.plain();
    let body = Body::json(&bytes).map_err(|m| ApiError::bad_request(m).plain())?;
    let wallet_id = req_field(&body, "wallet_id").map_err(plain)?;
    let customer_id = req_field(&body, "customer_id").map_err(plain)?;
    let method = req_field(&body, "method").map_err(plain)?;
    if !PAYOUT_METHODS.contains(&method.as_str()) {
        return Err(ApiError::invalid("method", "The selected method is invalid.").plain());
    }
    let from_currency = req_field(&body, "from_currency_id")
        .map_err(plain)?
        .to_ascii_uppercase();
    let to_currency = req_field(&body, "to_currency_id")
        .map_err(plain)?
        .to_ascii_uppercase();
    let amount_value = match (body.value("from_amount"), body.value("to_amount")) {
        (Some(v), None) | (None, Some(v)) => v.clone(),
        (Some(_), Some(_)) => {
            return Err(
                ApiError::bad_request("Provide either from_amount or to_amount, not both.").plain(),
            )
        }
        (None, None) => {
            return Err(ApiError::invalid(
                "from_amount",
                "The from amount field is required when to amount is not present.",
            )
            .plain())
        }
    };
    let amount = parse_minor(&amount_value, &from_currency)
        .map_err(|e| ApiError::invalid("from_amount", format!("Invalid amount: {e}.")).plain())?;
    let (wallet, wallet_currency, _) = WALLETS
        .iter()
        .copied()
        .find(|(id, _, _)| *id == wallet_id)
        .ok_or_else(|| ApiError::bad_request("Wallet not found.").plain())?;
    if wallet_currency != from_currency {
        return Err(ApiError::bad_request(format!(
            "The wallet holds {wallet_currency}, not {from_currency}."
        ))
        .plain());
    }
    if from_currency != to_currency {
        return Err(
            ApiError::bad_request("Currency conversion is not available in the sandbox.").plain(),
        );
    }
    let opt = |k: &str| str_field(&body, k).map_err(plain);
    let account_number = opt("account_number")?;
    let email = opt("email")?;
    match method.as_str() {
        "interac" => {
            for k in ["email", "interac_first_name", "interac_last_name"] {
                req_field(&body, k).map_err(plain)?;
            }
        }
        "crypto" => {
            for k in ["wallet_address", "wallet_token", "wallet_network"] {
                req_field(&body, k).map_err(plain)?;
            }
        }
        _ if from_currency == "NGN" => {
            for k in ["account_number", "bank_id"] {
                req_field(&body, k).map_err(plain)?;
            }
        }
        _ if from_currency == "EUR" => {
            req_field(&body, "iban").map_err(plain)?;
        }
        _ if from_currency != "CAD" => {
            req_field(&body, "account_number").map_err(plain)?;
        }
        _ => {}
    }
    let txn = Txn {
        id: Uuid::new_v4().to_string(),
        wallet_id: wallet.to_owned(),
        customer_id: customer_id.clone(),
        status: "PENDING",
        reference: Uuid::new_v4().to_string(),
        currency: from_currency.clone(),
        amount,
        method,
        account_number: account_number.or_else(|| opt("iban").ok().flatten()),
        account_name: opt("account_name")?,
        bank_name: opt("bank_name")?.or_else(|| {
            let bank_id = opt("bank_id").ok().flatten()?;
            BANKS
                .iter()
                .find(|(id, ..)| *id == bank_id)
                .map(|(_, name, ..)| (*name).to_owned())
        }),
        bank_code: opt("bank_id")?,
        email,
        routing_number: opt("routing_number")?,
        note: opt("note")?,
        date: Utc::now(),
        last_event: None,
    };
    let json = app.with(|w| {
        let customer = w
            .blaaiz
            .customers
            .iter()
            .find(|c| c.id == customer_id)
            .ok_or_else(|| ApiError::bad_request("Customer not found.").plain())?;
        if customer.verification_status != "VERIFIED" {
            return Err(ApiError::bad_request(format!(
                "Customer is not verified (status {}).",
                customer.verification_status
            ))
            .plain());
        }
        w.ledger
            .record(
                Movement {
                    provider: Provider::Blaaiz,
                    account: &txn.wallet_id,
                    kind: Kind::Payout,
                    direction: Direction::Debit,
                    reference: &txn.id,
                    counterparty: &txn.counterparty(),
                    amount: txn.amount,
                    currency: &txn.currency,
                },
                0,
            )
            .map_err(|_| ApiError::bad_request("Insufficient funds.").plain())?;
        let json = txn.json();
        w.blaaiz.transactions.push(txn.clone());
        Ok(json)
    })?;
    let txn_id = txn.id;
    after(&app, app.timing.bank_settlement, move |app| {
        let event = app.with(|w| settle_payout(&mut w.blaaiz, &mut w.ledger, &txn_id));
        app.emit(event);
    });
    Ok(Json(
        json!({"message": "Payout Initiated Successfully.", "transaction": json}),
    ))
}

/// PENDING -> SUCCESSFUL, or FAILED with a refund for the failing account number.
fn settle_payout(state: &mut Objects, ledger: &mut Ledger, txn_id: &str) -> Option<Event> {
    let hook = state.payout_url();
    let t = state
        .transactions
        .iter_mut()
        .find(|t| t.id == txn_id && t.status == "PENDING")?;
    if t.account_number.as_deref() == Some(FAILING_ACCOUNT_NUMBER) {
        let _ = ledger.record(
            Movement {
                provider: Provider::Blaaiz,
                account: &t.wallet_id,
                kind: Kind::Reversal,
                direction: Direction::Credit,
                reference: &t.id,
                counterparty: &t.counterparty(),
                amount: t.amount,
                currency: &t.currency,
            },
            0,
        );
        t.status = "FAILED";
    } else {
        t.status = "SUCCESSFUL";
    }
    let event = payout_event(hook, t);
    t.last_event = Some(event.clone());
    Some(event)
}

async fn get_transaction(
    State(app): State<App>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    app.with(|w| {
        w.blaaiz
            .transactions
            .iter()
            .find(|t| t.id == id)
            .map(|t| {
                Json(json!({"message": "Transaction retrieved successfully", "data": t.json()}))
            })
            .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "Transaction not found").plain())
    })
}

fn page_params(
    q: &HashMap<String, String>,
    body: Option<&Body>,
) -> Result<(usize, usize), ApiError> {
    let get = |k: &str, default: usize| -> Result<usize, ApiError> {
        let from_body = body.and_then(|b| b.value(k)).map(|v| match v {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        });
        match q.get(k).cloned().or(from_body) {
            None => Ok(default),
            Some(v) => v
                .parse::<usize>()
                .map_err(|_| ApiError::invalid(k, format!("The {k} must be an integer.")).plain()),
        }
    };
    Ok((get("page", 1)?.max(1), get("per_page", 10)?.clamp(1, 100)))
}

fn paginate(items: Vec<Value>, page: usize, per_page: usize) -> (Vec<Value>, Value) {
    let total = items.len();
    let last_page = total.div_ceil(per_page).max(1);
    let start = (page - 1) * per_page;
    let data: Vec<Value> = items.into_iter().skip(start).take(per_page).collect();
    let mut meta = json!({
        "current_page": page, "last_page": last_page, "path": "",
        "per_page": per_page, "total": total,
    });
    // `from`/`to` are numbers in Blaaiz's schema: an empty page has neither.
    if !data.is_empty() {
        meta["from"] = json!(start + 1);
        meta["to"] = json!(start + data.len());
    }
    (data, meta)
}

/// Maps the list filter's lower-case statuses onto the transaction statuses.
fn status_matches(filter: &str, status: &str) -> bool {
    match filter.to_ascii_lowercase().as_str() {
        "pending" | "processing" => status == "PENDING",
        "completed" | "successful" => status == "SUCCESSFUL",
        "failed" => status == "FAILED",
        other => other.eq_ignore_ascii_case(status),
    }
}

/// `POST /api/external/transaction`: filters from the JSON body; `page`/`per_page` from the
/// query string or the body.
async fn list_transactions(
    State(app): State<App>,
    Query(q): Query<HashMap<String, String>>,
    bytes: Bytes,
) -> Result<Json<Value>, ApiError> {
    let body = Body::json(&bytes).map_err(|m| ApiError::bad_request(m).plain())?;
    let (page, per_page) = page_params(&q, Some(&body))?;
    let filter = |k: &str| str_field(&body, k).map_err(|e| e.plain());
    let (start, end) = (filter("start_date")?, filter("end_date")?);
    let (wallet_id, kind, status, customer_id) = (
        filter("wallet_id")?,
        filter("type")?,
        filter("status")?,
        filter("customer_id")?,
    );
    let items: Vec<Value> = app.with(|w| {
        w.blaaiz
            .transactions
            .iter()
            .rev()
            .filter(|t| {
                let day = t.date.format("%Y-%m-%d").to_string();
                start.as_deref().is_none_or(|s| day.as_str() >= s)
                    && end.as_deref().is_none_or(|e| day.as_str() <= e)
                    && wallet_id.as_deref().is_none_or(|id| t.wallet_id == id)
                    && kind.as_deref().is_none_or(|k| k == "payout")
                    && status
                        .as_deref()
                        .is_none_or(|s| status_matches(s, t.status))
                    && customer_id.as_deref().is_none_or(|c| t.customer_id == c)
            })
            .map(Txn::json)
            .collect()
    });
    let (data, meta) = paginate(items, page, per_page);
    Ok(Json(json!({
        "message": "Transactions retrieved successfully",
        "data": data,
        "links": {},
        "meta": meta,
    })))
}

/// `GET /_sandbox/blaaiz/files/{file_id}` (control API, for tests): what the pre-signed upload
/// received: `{file_id, customer_id, category, content_type, uploaded, size, sha256,
/// uploaded_at}` (the bytes are not kept); 404 for an unknown file id.
pub(crate) async fn uploaded_file(State(app): State<App>, Path(file_id): Path<String>) -> Response {
    let found = app.with(|w| w.blaaiz.files.get(&file_id).cloned());
    match found {
        Some(f) => Json(json!({
            "file_id": f.id,
            "customer_id": f.customer_id,
            "category": f.category,
            "content_type": f.uploaded.as_ref().map(|_| f.uploaded_content_type.clone()),
            "uploaded": f.uploaded.is_some(),
            "size": f.uploaded.as_ref().map(|u| u.0),
            "sha256": f.uploaded.as_ref().map(|u| u.1.clone()),
            "uploaded_at": f.uploaded.as_ref().map(|u| u.2),
        }))
        .into_response(),
        None => (
            StatusCode::NOT_FOUND,
            Json(json!({"message": format!("no file {file_id}")})),
        )
            .into_response(),
    }
}
/// A webhook URL Blaaiz would accept: an absolute `https` URL. The sandbox also takes `http`
/// to a loopback host (a receiver on the test machine has no certificate).
fn webhook_url(body: &Body, key: &str, required: bool) -> Result<Option<String>, ApiError> {
    let value = str_field(body, key)?;
    let Some(url) = value else {
        if required {
            return Err(ApiError::invalid(
                key,
                format!("The {key} field is required."),
            ));
        }
        return Ok(None);
    };
    let ok = match reqwest::Url::parse(&url) {
        Ok(u) if u.scheme() == "https" && u.host().is_some() => true,
        Ok(u) if u.scheme() == "http" => {
            matches!(u.host_str(), Some("127.0.0.1" | "localhost" | "[::1]"))
        }
        _ => false,
    };
    if ok {
        Ok(Some(url))
    } else {
        Err(ApiError::invalid(key, "Invalid webhook URL format"))
    }
}

struct WebhookFields {
    payout_url: String,
    collection_url: String,
    customer_url: Option<String>,
    virtual_account_url: Option<String>,
}

fn webhook_fields(bytes: &[u8]) -> Result<WebhookFields, ApiError> {
    let body = Body::json(bytes).map_err(ApiError::bad_request)?;
    let required = |k: &str| -> Result<String, ApiError> {
        webhook_url(&body, k, true)?
            .ok_or_else(|| ApiError::invalid(k, format!("The {k} field is required.")))
    };
    Ok(WebhookFields {
        payout_url: required("payout_url")?,
        collection_url: required("collection_url")?,
        customer_url: webhook_url(&body, "customer_url", false)?,
        virtual_account_url: webhook_url(&body, "virtual_account_url", false)?,
    })
}

/// `POST /api/external/webhook`: registers (or replaces) the business's webhook URLs; later
/// Blaaiz webhooks go there instead of the sandbox's default target.
async fn register_webhook(State(app): State<App>, bytes: Bytes) -> Result<Json<Value>, ApiError> {
    let f = webhook_fields(&bytes)?;
    let data = app.with(|w| {
        let now = Utc::now();
        let (id, created_at) = w.blaaiz.webhook.as_ref().map_or_else(
            || (Uuid::new_v4().to_string(), now),
            |h| (h.id.clone(), h.created_at),
        );
        let urls = WebhookUrls {
            id,
            payout_url: f.payout_url,
            collection_url: f.collection_url,
            customer_url: f.customer_url,
            virtual_account_url: f.virtual_account_url,
            created_at,
            updated_at: now,
        };
        let data = urls.json();
        w.blaaiz.webhook = Some(urls);
        data
    });
    Ok(Json(json!({
        "status": true,
        "message": "Webhook URLs registered successfully",
        "data": data,
    })))
}

/// `GET /api/external/webhook`: the registered URLs (404 when none are).
async fn get_webhook(State(app): State<App>) -> Result<Json<Value>, ApiError> {
    let data = app
        .with(|w| w.blaaiz.webhook.as_ref().map(WebhookUrls::json))
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "No webhook URLs registered."))?;
    Ok(Json(json!({
        "status": true,
        "message": "Webhook retrieved successfully",
        "data": data,
    })))
}

/// `PUT /api/external/webhook/{id}`: replaces the registered URLs of that record.
async fn update_webhook(
    State(app): State<App>,
    Path(id): Path<String>,
    bytes: Bytes,
) -> Result<Json<Value>, ApiError> {
    let f = webhook_fields(&bytes)?;
    let data = app.with(|w| {
        let urls = w
            .blaaiz
            .webhook
            .as_mut()
            .filter(|h| h.id == id)
            .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "Webhook not found."))?;
        urls.payout_url = f.payout_url;
        urls.collection_url = f.collection_url;
        urls.customer_url = f.customer_url;
        urls.virtual_account_url = f.virtual_account_url;
        urls.updated_at = Utc::now();
        Ok::<_, ApiError>(urls.json())
    })?;
    Ok(Json(json!({
        "status": true,
        "message": "Webhook URLs updated successfully",
        "data": data,
    })))
}

/// `POST /api/external/webhook-replay {transaction_id}`: sends the payout webhook of a
/// successful transaction again (same body and `event_id`, freshly signed) to the URL
/// registered now.
async fn replay_webhook(State(app): State<App>, bytes: Bytes) -> Result<Json<Value>, ApiError> {
    let body = Body::json(&bytes).map_err(|m| ApiError::bad_request(m).plain())?;
    let id = req_field(&body, "transaction_id").map_err(ApiError::plain)?;
    let event = app.with(|w| {
        let hook = w.blaaiz.payout_url();
        let t = w
            .blaaiz
            .transactions
            .iter()
            .find(|t| t.id == id)
            .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "Transaction not found").plain())?;
        match (&t.last_event, t.status) {
            (Some(event), "SUCCESSFUL") => Ok(event.clone().to(hook)),
            _ => Err(ApiError::bad_request(format!(
                "Only a successful transaction's webhook can be replayed (status {}).",
                t.status
            ))
            .plain()),
        }
    })?;
    app.emit([event]);
    Ok(Json(json!({"message": "Webhook replayed successfully"})))
}

fn wallet_json(app: &App, id: &str, currency: &str) -> Value {
    let balance = app.with(|w| w.ledger.balance(Provider::Blaaiz, id, currency));
    json!({
        "id": id,
        "business_id": BUSINESS_ID,
        "currency": currency,
        "balance": json_amount(balance, currency),
    })
}

/// `GET /api/external/wallet`: the business's wallets with their ledger balances.
async fn list_wallets(State(app): State<App>) -> Json<Value> {
    let data: Vec<Value> = WALLETS
        .iter()
        .map(|(id, currency, _)| wallet_json(&app, id, currency))
        .collect();
    Json(json!({"message": "Wallets retrieved successfully", "data": data}))
}

/// `GET /api/external/wallet/{id}`.
async fn get_wallet(
    State(app): State<App>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let (wallet, currency, _) = WALLETS
        .iter()
        .find(|(w, _, _)| *w == id)
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "Wallet not found.").plain())?;
    Ok(Json(json!({
        "message": "Wallet retrieved successfully",
        "data": wallet_json(&app, wallet, currency),
    })))
}

fn currency_name(code: &str) -> &'static str {
    match code {
        "NGN" => "Nigerian Naira",
        "USD" => "US Dollar",
        "CAD" => "Canadian Dollar",
        "GBP" => "British Pound",
        "EUR" => "Euro",
        _ => "",
    }
}

/// `GET /api/external/currency`: the currencies of the seeded wallets (ids are the codes,
/// which `from_currency_id`/`to_currency_id` accept).
async fn list_currencies() -> Json<Value> {
    let data: Vec<Value> = WALLETS
        .iter()
        .map(|(_, code, _)| json!({"id": code, "code": code, "name": currency_name(code)}))
        .collect();
    Json(json!({"message": "Currencies retrieved successfully", "data": data}))
}

/// `GET /api/external/bank?currency=&country=&country_id=`.
async fn list_banks(Query(q): Query<HashMap<String, String>>) -> Json<Value> {
    let data: Vec<Value> = BANKS
        .iter()
        .filter(|(_, _, currency, country)| {
            q.get("currency")
                .is_none_or(|c| c.eq_ignore_ascii_case(currency))
                && q.get("country")
                    .or_else(|| q.get("country_id"))
                    .is_none_or(|c| c.eq_ignore_ascii_case(country))
        })
        .map(|(id, name, currency, country)| {
            json!({"id": id, "name": name, "code": id, "currency": currency, "country": country})
        })
        .collect();
    Json(json!({"message": "Banks retrieved successfully", "data": data}))
}

/// `POST /api/external/fees/breakdown {from_currency_id, to_currency_id, from_amount|to_amount}`:
/// the sandbox charges no fee and converts at 1 (same-currency payouts only, as `/payout`).
async fn fee_breakdown(bytes: Bytes) -> Result<Json<Value>, ApiError> {
    let body = Body::json(&bytes).map_err(|m| ApiError::bad_request(m).plain())?;
    let from = req_field(&body, "from_currency_id")
        .map_err(ApiError::plain)?
        .to_ascii_uppercase();
    let to = req_field(&body, "to_currency_id")
        .map_err(ApiError::plain)?
        .to_ascii_uppercase();
    let value = body
        .value("from_amount")
        .or_else(|| body.value("to_amount"))
        .cloned()
        .ok_or_else(|| {
            ApiError::invalid(
                "from_amount",
                "The from amount field is required when to amount is not present.",
            )
            .plain()
        })?;
    for code in [&from, &to] {
        if !WALLETS.iter().any(|(_, c, _)| c == code) {
            return Err(
                ApiError::bad_request(format!("Currency {code} is not supported.")).plain(),
            );
        }
    }
    if from != to {
        return Err(
            ApiError::bad_request("Currency conversion is not available in the sandbox.").plain(),
        );
    }
    let amount = parse_minor(&value, &from)
        .map_err(|e| ApiError::invalid("from_amount", format!("Invalid amount: {e}.")).plain())?;
    let amount = json_amount(amount, &from);
    Ok(Json(json!({
        "message": "Fee breakdown retrieved successfully",
        "data": {
            "from_currency": from,
            "to_currency": to,
            "you_send": amount,
            "recipient_gets": amount,
            "our_fee": 0,
            "payout_fees": 0,
            "total_fees": 0,
            "rate": 1,
        },
    })))
}
