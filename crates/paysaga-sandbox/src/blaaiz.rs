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

const UPLOAD_TOKEN_HEADER: &str = "x-amz-meta-upload-token";

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
        if let Some(obj) = v.as_object_mut() {
            for (k, val) in [
                ("phone_number", json!(self.phone)),
                ("date_of_birth", json!(self.dob)),
                (
                    "address",
                    json!({
                        "street": self.street, "city": self.city, "state": self.state,
                        "country": self.country, "postal_code": self.zip_code,
                    }),
                ),
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
    content_type: String,
    upload_token: String,
    expires_at: DateTime<Utc>,
    /// (size in bytes, hex sha256) once uploaded; the bytes are not kept.
    uploaded: Option<(usize, String, DateTime<Utc>)>,
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
            "recipient": {
                "id": format!("rcp_{}", &self.id[..8]),
                "account_number": self.account_number,
                "account_name": self.account_name,
                "amount": amount,
                "currency": self.currency,
                "bank_name": self.bank_name,
                "bank_code": self.bank_code,
                "status": self.status.to_ascii_lowercase(),
                "routing_number": self.routing_number,
                "email": self.email,
            },
        })
    }

    fn counterparty(&self) -> String {
        self.account_number
            .clone()
            .or_else(|| self.email.clone())
            .unwrap_or_else(|| format!("customer:{}", self.customer_id))
    }
}

/// Blaaiz's objects.
#[derive(Debug, Default)]
pub(crate) struct Objects {
    customers: Vec<Customer>,
    files: HashMap<String, FileRec>,
    transactions: Vec<Txn>,
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

fn customer_event(customer_id: &str, old: &str, new: &str, comment: Option<&str>) -> Event {
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
    Event::new(Provider::Blaaiz, event_id, "customer.status_changed", &body)
}

fn payout_event(t: &Txn) -> Event {
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
    Event::new(Provider::Blaaiz, event_id, "payout.status_changed", &body)
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
        .route_layer(from_fn_with_state(app.clone(), require_auth));
    Router::new()
        .nest("/api/external", api)
        .route("/oauth/token", post(token))
}

/// The pre-signed upload route, mounted under `/_sandbox/blaaiz/uploads/{file_id}`.
pub(crate) fn upload_router() -> Router<App> {
    Router::new()
        .route("/{file_id}", put(upload))
        .layer(DefaultBodyLimit::max(32 * 1024 * 1024))
}

async fn require_auth(State(app): State<App>, req: Request, next: Next) -> Response {
    let creds = &app.credentials.blaaiz;
    let by_token = bearer(req.headers()).is_some_and(|t| app.tokens.valid(Provider::Blaaiz, t));
    let by_key = req
        .headers()
        .get("x-blaaiz-api-key")
        .and_then(|v| v.to_str().ok())
        .zip(creds.api_key.as_ref())
        .is_some_and(|(presented, expected)| secret_eq(presented, expected));
    if by_token || by_key {
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
    let ttl = app.timing.blaaiz_token_ttl;
    let token = app.tokens.issue(Provider::Blaaiz, ttl);
    Json(json!({
        "token_type": "Bearer",
        "expires_in": ttl.as_secs(),
        "access_token": token,
        "scope": field("scope").unwrap_or_default(),
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

fn upload_signature(app: &App, file_id: &str, expires: i64) -> String {
    hmac_sha256_hex(&app.upload_key, format!("{file_id}:{expires}").as_bytes())
}

/// `POST /api/external/file/get-presigned-url`.
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
    let _file_name = req_field(&body, "file_name")?;
    let content_type = req_field(&body, "file_type")?;
    let ttl = chrono::Duration::from_std(app.timing.upload_url_ttl)
        .unwrap_or_else(|_| chrono::Duration::minutes(15));
    let expires_at = Utc::now() + ttl;
    let file = FileRec {
        id: Uuid::new_v4().to_string(),
        customer_id: customer_id.clone(),
        category,
        content_type: content_type.clone(),
        upload_token: hex::encode(rand::random::<[u8; 16]>()),
        expires_at,
        uploaded: None,
    };
    let expires = expires_at.timestamp();
    let url = format!(
        "{}/_sandbox/blaaiz/uploads/{}?X-Amz-Expires={expires}&X-Amz-Signature={}",
        app.public_url,
        file.id,
        upload_signature(&app, &file.id, expires)
    );
    let headers = json!({"Content-Type": content_type, UPLOAD_TOKEN_HEADER: file.upload_token});
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

/// `PUT /_sandbox/blaaiz/uploads/{file_id}?X-Amz-Expires&X-Amz-Signature`: checks the URL
/// signature, expiry and the headers `get-presigned-url` returned; keeps size and sha256 only.
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
    let signature_ok = q
        .get("X-Amz-Signature")
        .is_some_and(|s| secret_eq(s, &upload_signature(&app, &file_id, expires).into()));
    if !signature_ok {
        return s3_error(
            StatusCode::FORBIDDEN,
            "SignatureDoesNotMatch",
            "The request signature we calculated does not match the signature you provided.",
        );
    }
    if Utc::now().timestamp() > expires {
        return s3_error(StatusCode::FORBIDDEN, "AccessDenied", "Request has expired");
    }
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
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
        if header("content-type").as_deref() != Some(file.content_type.as_str()) {
            return Err((
                StatusCode::FORBIDDEN,
                "SignatureDoesNotMatch",
                "Content-Type does not match the signed headers.",
            ));
        }
        if header(UPLOAD_TOKEN_HEADER).as_deref() != Some(file.upload_token.as_str()) {
            return Err((
                StatusCode::FORBIDDEN,
                "SignatureDoesNotMatch",
                "Signed header x-amz-meta-upload-token is missing or wrong.",
            ));
        }
        if file.expires_at < Utc::now() {
            return Err((StatusCode::FORBIDDEN, "AccessDenied", "Request has expired"));
        }
        file.uploaded = Some((size, digest.clone(), Utc::now()));
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
            vec![customer_event(&customer.id, old, "PROCESSING", None)],
            Some(customer.review),
        ))
    })?;
    app.emit(events);
    if let Some(review) = review {
        let delay: Duration = app.timing.kyc_review;
        let customer_id = id.clone();
        after(&app, delay, move |app| {
            let event = app.with(|w| {
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
                Some(customer_event(&c.id, "PROCESSING", new, comment.as_deref()))
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
        bank_name: opt("bank_name")?,
        bank_code: opt("bank_id")?,
        email,
        routing_number: opt("routing_number")?,
        note: opt("note")?,
        date: Utc::now(),
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
    Some(payout_event(t))
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
    let from = if data.is_empty() {
        Value::Null
    } else {
        json!(start + 1)
    };
    let to = if data.is_empty() {
        Value::Null
    } else {
        json!(start + data.len())
    };
    let meta = json!({
        "current_page": page, "from": from, "last_page": last_page, "path": "",
        "per_page": per_page, "to": to, "total": total,
    });
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
            "content_type": f.content_type,
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
