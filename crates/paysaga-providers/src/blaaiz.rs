//! Blaaiz client: customers and KYC documents, then payouts.
//!
//! Authentication is OAuth2 client credentials (`POST {base}/oauth/token`, form-encoded, with
//! scopes; tokens live 900 s) or the legacy `x-blaaiz-api-key` header.
//!
//! Amounts are decimals in major units on the wire; [`CreatePayout`] takes minor units and
//! converts exactly, and [`Transaction::amount_minor`] converts back.
//!
//! Blaaiz has no idempotency key: before creating a customer again use
//! [`BlaaizClient::find_customer_by_email`]; before creating a payout again use
//! [`BlaaizClient::find_payout_by_reference`] with the reference sent in `note`.

use std::collections::BTreeMap;

use reqwest::header::HeaderName;
use secrecy::SecretString;
use serde::{Deserialize, Serialize};

use crate::config::HttpOptions;
use crate::error::{Error, Result};
use crate::money::{DecimalAmount, MoneyError};
use crate::string_enum;
use crate::token::{TokenCache, TokenRequest};
use crate::transport::{Auth, Core};
use crate::Provider;

/// Scopes requested when `PAYSAGA_BLAAIZ_SCOPE` is not set: the Blaaiz scopes (as its
/// official SDKs name them) of the endpoints this client calls.
pub const DEFAULT_SCOPE: &str =
    "customer:read customer:write file:upload payout:create transaction:read";

/// How the client authenticates.
#[derive(Debug, Clone)]
pub enum BlaaizAuth {
    /// OAuth2 client credentials (preferred).
    OAuth {
        /// Client id.
        client_id: String,
        /// Client secret.
        client_secret: SecretString,
        /// Space-separated scopes.
        scope: String,
    },
    /// Legacy `x-blaaiz-api-key` header.
    ApiKey(SecretString),
}

/// What [`BlaaizClient::new`] needs.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct BlaaizConfig {
    /// API base, e.g. `https://api-dev.blaaiz.com` or `{sandbox}/blaaiz`.
    pub base_url: String,
    /// Credentials.
    pub auth: BlaaizAuth,
    /// Timeouts.
    pub http: HttpOptions,
}

impl BlaaizConfig {
    /// A configuration with default timeouts.
    pub fn new(base_url: impl Into<String>, auth: BlaaizAuth) -> Self {
        Self {
            base_url: base_url.into(),
            auth,
            http: HttpOptions::default(),
        }
    }

    /// The same with timeouts `http`.
    pub fn with_http(mut self, http: HttpOptions) -> Self {
        self.http = http;
        self
    }
}

/// Blaaiz API client. Cheap to clone; clones share the connection pool and token cache.
#[derive(Debug, Clone)]
pub struct BlaaizClient {
    core: Core,
    tokens: Option<TokenCache>,
}

string_enum! {
    /// Customer KYC status.
    pub enum VerificationStatus {
        /// Created, documents missing or not reviewed.
        Pending => "PENDING",
        /// Under review.
        Processing => "PROCESSING",
        /// Verified: payouts allowed.
        Verified => "VERIFIED",
        /// Rejected.
        Rejected => "REJECTED",
    }
}

string_enum! {
    /// Customer type.
    pub enum CustomerType {
        /// A person.
        Individual => "individual",
        /// A company.
        Business => "business",
    }
}

string_enum! {
    /// Category of an uploaded document.
    pub enum FileCategory {
        /// Identity document (front); required for verification.
        Identity => "identity",
        /// Identity document (back).
        IdentityBack => "identity_back",
        /// Proof of address.
        ProofOfAddress => "proof_of_address",
        /// Liveness check.
        LivenessCheck => "liveness_check",
    }
}

string_enum! {
    /// Payout method.
    pub enum PayoutMethod {
        /// Local bank transfer.
        BankTransfer => "bank_transfer",
        /// Interac e-transfer (CAD).
        Interac => "interac",
        /// Crypto.
        Crypto => "crypto",
        /// Wire.
        Wire => "wire",
        /// ACH.
        Ach => "ach",
    }
}

string_enum! {
    /// Transaction status (Blaaiz uses both upper- and lowercase spellings).
    pub enum TransactionStatus {
        /// Not final.
        Pending => "PENDING",
        /// Not final.
        Processing => "PROCESSING",
        /// Paid.
        Successful => "SUCCESSFUL",
        /// Paid (list/get spelling).
        Completed => "COMPLETED",
        /// Failed.
        Failed => "FAILED",
        /// Cancelled.
        Cancelled => "CANCELLED",
        /// Reversed after success.
        Reversed => "REVERSED",
    }
}

impl TransactionStatus {
    /// The money reached the recipient.
    pub fn is_success(&self) -> bool {
        matches!(
            self,
            TransactionStatus::Successful | TransactionStatus::Completed
        )
    }

    /// The payout will not be paid.
    pub fn is_failure(&self) -> bool {
        matches!(
            self,
            TransactionStatus::Failed | TransactionStatus::Cancelled | TransactionStatus::Reversed
        )
    }

    /// No further change is expected.
    pub fn is_final(&self) -> bool {
        self.is_success() || self.is_failure()
    }
}

/// Body of `POST /api/external/customer`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CreateCustomer {
    /// `individual` or `business`.
    #[serde(rename = "type")]
    pub customer_type: CustomerType,
    /// Email (also the look-up key for [`BlaaizClient::find_customer_by_email`]).
    pub email: String,
    /// Country code (`NG`, `CA`, `US`).
    pub country: String,
    /// `drivers_license`, `passport`, `id_card`, `resident_permit`, `certificate_of_incorporation`.
    pub id_type: String,
    /// Document number.
    pub id_number: String,
    /// Required for individuals.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_name: Option<String>,
    /// Required for individuals.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_name: Option<String>,
    /// Required for businesses.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub business_name: Option<String>,
    /// Phone number.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub phone: Option<String>,
    /// Tax id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tin: Option<String>,
    /// Date of birth (`YYYY-MM-DD`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dob: Option<String>,
    /// Street.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub street: Option<String>,
    /// City.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub city: Option<String>,
    /// State.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    /// Postal code.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub zip_code: Option<String>,
    /// ID expiry (`YYYY-MM-DD`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id_expiry_date: Option<String>,
    /// ID issue date (`YYYY-MM-DD`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id_issue_date: Option<String>,
}

/// A customer as returned by create, get and find.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Customer {
    /// Customer id.
    pub id: String,
    /// Owning business.
    #[serde(default)]
    pub business_id: Option<String>,
    /// `individual` or `business`.
    #[serde(default, rename = "type")]
    pub customer_type: Option<CustomerType>,
    /// First name.
    #[serde(default)]
    pub first_name: Option<String>,
    /// Last name.
    #[serde(default)]
    pub last_name: Option<String>,
    /// Business name.
    #[serde(default)]
    pub business_name: Option<String>,
    /// Email.
    #[serde(default)]
    pub email: Option<String>,
    /// Country.
    #[serde(default)]
    pub country: Option<String>,
    /// ID type.
    #[serde(default)]
    pub id_type: Option<String>,
    /// KYC status as sent by create (and by the sandbox everywhere).
    #[serde(default)]
    pub verification_status: Option<VerificationStatus>,
    /// KYC status as spelled by the documented get endpoint.
    #[serde(default)]
    pub status: Option<VerificationStatus>,
    /// Creation time.
    #[serde(default)]
    pub created_at: Option<String>,
    /// The reviewer's comment (the rejection reason of a `REJECTED` customer).
    #[serde(default)]
    pub comment: Option<String>,
}

impl Customer {
    /// The KYC status: `verification_status`, else `status`, else `PENDING`.
    pub fn verification(&self) -> VerificationStatus {
        self.verification_status
            .clone()
            .or_else(|| self.status.clone())
            .unwrap_or(VerificationStatus::Pending)
    }
}

#[derive(Deserialize)]
struct DataEnvelope<T> {
    data: T,
}

/// Body of `POST /api/external/file/get-presigned-url`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PresignedUrlRequest {
    /// Customer the file belongs to.
    pub customer_id: String,
    /// What the file is.
    pub file_category: FileCategory,
    /// File name with extension.
    pub file_name: String,
    /// MIME type.
    pub file_type: String,
}

/// Where and how to upload one file.
#[derive(Clone, PartialEq, Eq, Serialize)]
pub struct PresignedUpload {
    /// The id to attach with [`BlaaizClient::attach_files`].
    pub file_id: String,
    /// Pre-signed URL (its query is a credential: never log it).
    pub upload_url: String,
    /// Headers to send with the PUT.
    pub headers: BTreeMap<String, String>,
    /// When the URL expires.
    pub expires_at: Option<String>,
}

impl std::fmt::Debug for PresignedUpload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let without_query = self.upload_url.split('?').next().unwrap_or_default();
        f.debug_struct("PresignedUpload")
            .field("file_id", &self.file_id)
            .field("upload_url", &format_args!("{without_query}?[REDACTED]"))
            .field("headers", &self.headers)
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

impl<'de> Deserialize<'de> for PresignedUpload {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        #[derive(Deserialize)]
        struct Flat {
            file_id: Option<String>,
            url: Option<String>,
            upload_url: Option<String>,
            #[serde(default)]
            headers: Option<BTreeMap<String, String>>,
            expires_at: Option<String>,
            data: Option<Box<Flat>>,
        }
        // OpenAPI: `{message, data:{file_id, upload_url, headers, expires_at}}`;
        // PROVIDERS.md: `{message, file_id, url, headers}`.
        let mut flat = Flat::deserialize(d)?;
        if let Some(inner) = flat.data.take() {
            flat = *inner;
        }
        let missing =
            |f: &str| serde::de::Error::custom(format!("pre-signed URL response lacks {f}"));
        Ok(PresignedUpload {
            file_id: flat.file_id.ok_or_else(|| missing("file_id"))?,
            upload_url: flat
                .upload_url
                .or(flat.url)
                .ok_or_else(|| missing("upload_url"))?,
            headers: flat.headers.unwrap_or_default(),
            expires_at: flat.expires_at,
        })
    }
}

/// Body of `POST /api/external/customer/{id}/files`: file ids from pre-signed uploads.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Default, schemars::JsonSchema)]
pub struct AttachFiles {
    /// Identity document (starts review).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id_file: Option<String>,
    /// Back of the identity document.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id_file_back: Option<String>,
    /// Proof of address.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub proof_of_address_file: Option<String>,
    /// Liveness check.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub liveness_check_file: Option<String>,
}

/// A message-only answer.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct MessageResponse {
    /// The provider's message.
    #[serde(default)]
    pub message: Option<String>,
}

/// Which side of the payout the amount fixes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PayoutAmount {
    /// Amount the business sends, in minor units of `from_currency`.
    From(i64),
    /// Amount the recipient receives, in minor units of `to_currency`.
    To(i64),
}

/// Body of `POST /api/external/payout`. Build with [`CreatePayout::new`], then set the bank
/// fields the method and currency need.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Default)]
pub struct CreatePayout {
    /// Business wallet paying.
    pub wallet_id: String,
    /// Customer receiving.
    pub customer_id: String,
    /// Method.
    pub method: String,
    /// Amount sent, major units (set by [`CreatePayout::new`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from_amount: Option<DecimalAmount>,
    /// Amount received, major units (set by [`CreatePayout::new`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub to_amount: Option<DecimalAmount>,
    /// Currency paid with (code or Blaaiz id).
    pub from_currency_id: String,
    /// Currency received (code or Blaaiz id).
    pub to_currency_id: String,
    /// The step's reference (narration); found again by [`BlaaizClient::find_payout_by_reference`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// `individual` or `business` (ach/wire).
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub recipient_type: Option<String>,
    /// Phone number.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub phone_number: Option<String>,
    /// Email (interac).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    /// Interac first name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub interac_first_name: Option<String>,
    /// Interac last name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub interac_last_name: Option<String>,
    /// Bank id (NGN bank transfer).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bank_id: Option<String>,
    /// Account number.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub account_number: Option<String>,
    /// Account name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub account_name: Option<String>,
    /// `checking` or `savings`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub account_type: Option<String>,
    /// Bank name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bank_name: Option<String>,
    /// Routing number.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub routing_number: Option<String>,
    /// SWIFT code.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub swift_code: Option<String>,
    /// Sort code (GBP).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sort_code: Option<String>,
    /// IBAN (EUR).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub iban: Option<String>,
    /// BIC (EUR).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bic_code: Option<String>,
    /// Country.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub country: Option<String>,
    /// State.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    /// Street.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub street: Option<String>,
    /// City.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub city: Option<String>,
    /// Postal code.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub zip_code: Option<String>,
}

impl CreatePayout {
    /// A payout of `amount` from `from_currency` to `to_currency` (ISO codes: they decide the
    /// decimals of the amount), carrying `reference` in `note`.
    pub fn new(
        wallet_id: &str,
        customer_id: &str,
        method: PayoutMethod,
        amount: PayoutAmount,
        from_currency: &str,
        to_currency: &str,
        reference: &str,
    ) -> std::result::Result<Self, MoneyError> {
        crate::money::validate_currency(from_currency)?;
        crate::money::validate_currency(to_currency)?;
        let minor = match amount {
            PayoutAmount::From(m) | PayoutAmount::To(m) => m,
        };
        if minor <= 0 {
            return Err(MoneyError::NotPositive(minor));
        }
        let (from_amount, to_amount) = match amount {
            PayoutAmount::From(minor) => {
                (Some(DecimalAmount::from_minor(minor, from_currency)), None)
            }
            PayoutAmount::To(minor) => (None, Some(DecimalAmount::from_minor(minor, to_currency))),
        };
        Ok(CreatePayout {
            wallet_id: wallet_id.to_owned(),
            customer_id: customer_id.to_owned(),
            method: method.as_str().to_owned(),
            from_amount,
            to_amount,
            from_currency_id: from_currency.to_ascii_uppercase(),
            to_currency_id: to_currency.to_ascii_uppercase(),
            note: Some(reference.to_owned()),
            ..CreatePayout::default()
        })
    }
}

/// A transaction (payout or collection).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transaction {
    /// Transaction id (the payout webhook's `transaction_id`).
    pub id: String,
    /// Status.
    pub status: TransactionStatus,
    /// `payout` or `collection`.
    #[serde(default, rename = "type")]
    pub transaction_type: Option<String>,
    /// Blaaiz's reference.
    #[serde(default)]
    pub reference: Option<String>,
    /// Our reference (the `note` sent on create), where Blaaiz returns it.
    #[serde(default)]
    pub merchant_reference: Option<String>,
    /// The narration, where returned.
    #[serde(default)]
    pub note: Option<String>,
    /// Currency code of `amount`.
    pub currency: String,
    /// Total amount, major units.
    pub amount: DecimalAmount,
    /// Amount without fee, major units.
    #[serde(default)]
    pub amount_without_fee: Option<DecimalAmount>,
    /// Fee, major units.
    #[serde(default)]
    pub fee: Option<DecimalAmount>,
    /// Business.
    #[serde(default)]
    pub business_id: Option<String>,
    /// Customer.
    #[serde(default)]
    pub business_customer_id: Option<String>,
    /// Wallet.
    #[serde(default)]
    pub business_wallet_id: Option<String>,
    /// Date.
    #[serde(default)]
    pub date: Option<String>,
}

impl Transaction {
    /// `amount` in minor units of `currency`.
    pub fn amount_minor(&self) -> std::result::Result<i64, MoneyError> {
        self.amount.to_minor(&self.currency)
    }

    /// `true` if this transaction carries `reference` (in `merchant_reference` or `note`).
    pub fn has_reference(&self, reference: &str) -> bool {
        self.merchant_reference.as_deref() == Some(reference)
            || self.note.as_deref() == Some(reference)
    }
}

/// Answer of `POST /api/external/payout`; the transaction may already be final.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct PayoutResponse {
    /// The provider's message.
    #[serde(default)]
    pub message: Option<String>,
    /// The payout transaction.
    pub transaction: Transaction,
}

/// Filter of `POST /api/external/transaction`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Default)]
pub struct TransactionFilter {
    /// `YYYY-MM-DD`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub start_date: Option<String>,
    /// `YYYY-MM-DD`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub end_date: Option<String>,
    /// Wallet.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wallet_id: Option<String>,
    /// `collection` or `payout`.
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub transaction_type: Option<String>,
    /// `pending`, `processing`, `completed`, `failed`, `cancelled`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    /// Customer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub customer_id: Option<String>,
}

/// Pagination of a transaction list.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Default)]
pub struct PageMeta {
    /// Current page (1-based).
    #[serde(default)]
    pub current_page: Option<u64>,
    /// Last page.
    #[serde(default)]
    pub last_page: Option<u64>,
    /// Page size.
    #[serde(default)]
    pub per_page: Option<u64>,
    /// Total items.
    #[serde(default)]
    pub total: Option<u64>,
}

/// One page of transactions.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct TransactionPage {
    /// Items.
    pub data: Vec<Transaction>,
    /// Pagination, if given.
    #[serde(default)]
    pub meta: Option<PageMeta>,
}

/// Most pages scanned by [`BlaaizClient::find_payout_by_reference`].
pub(crate) const SCAN_MAX_PAGES: u64 = 100;

impl BlaaizClient {
    /// A client for `config`. Nothing is sent until the first call.
    pub fn new(config: BlaaizConfig) -> Self {
        let http = config.http.build_client();
        let base = config.base_url.trim_end_matches('/').to_owned();
        let (auth, tokens) = match config.auth {
            BlaaizAuth::OAuth {
                client_id,
                client_secret,
                scope,
            } => {
                let cache = TokenCache::new(
                    Provider::Blaaiz,
                    http.clone(),
                    TokenRequest::Form {
                        url: format!("{base}/oauth/token"),
                        client_id,
                        client_secret,
                        scope: Some(scope),
                    },
                );
                (Auth::OAuth(cache.clone()), Some(cache))
            }
            BlaaizAuth::ApiKey(key) => (
                Auth::Header {
                    name: HeaderName::from_static("x-blaaiz-api-key"),
                    value: key,
                },
                None,
            ),
        };
        BlaaizClient {
            core: Core::new(Provider::Blaaiz, &base, http, auth),
            tokens,
        }
    }

    /// The token cache, in OAuth mode.
    pub fn token_cache(&self) -> Option<&TokenCache> {
        self.tokens.as_ref()
    }

    /// `POST /api/external/customer`. Not idempotent: look up by email first.
    #[tracing::instrument(skip_all, fields(provider = "blaaiz", endpoint = "create_customer"))]
    pub async fn create_customer(&self, request: &CreateCustomer) -> Result<Customer> {
        let url = self.core.url("/api/external/customer");
        let env: DataEnvelope<Customer> = self
            .core
            .json("create_customer", |c| c.post(&url).json(request))
            .await?;
        Ok(env.data)
    }

    /// `GET /api/external/customer/{id}`: the polling fallback for verification.
    #[tracing::instrument(skip_all, fields(provider = "blaaiz", endpoint = "get_customer"))]
    pub async fn get_customer(&self, customer_id: &str) -> Result<Customer> {
        let url = self.core.url_with(
            "get_customer",
            &["api", "external", "customer", customer_id],
        )?;
        let env: DataEnvelope<Customer> = self.core.json("get_customer", |c| c.get(&url)).await?;
        Ok(env.data)
    }

    /// `GET /api/external/customer?email=...`: the customer with this email (case-insensitive),
    /// if any. A 404 counts as none.
    #[tracing::instrument(
        skip_all,
        fields(provider = "blaaiz", endpoint = "find_customer_by_email")
    )]
    pub async fn find_customer_by_email(&self, email: &str) -> Result<Option<Customer>> {
        let url = self.core.url("/api/external/customer");
        let result: Result<DataEnvelope<CustomerList>> = self
            .core
            .json("find_customer_by_email", |c| {
                c.get(&url).query(&[("email", email)])
            })
            .await;
        match result {
            Ok(env) => Ok(env.data.into_vec().into_iter().find(|c| {
                c.email
                    .as_deref()
                    .is_some_and(|e| e.eq_ignore_ascii_case(email))
            })),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// `POST /api/external/file/get-presigned-url`.
    #[tracing::instrument(skip_all, fields(provider = "blaaiz", endpoint = "get_presigned_url"))]
    pub async fn get_presigned_url(
        &self,
        request: &PresignedUrlRequest,
    ) -> Result<PresignedUpload> {
        let url = self.core.url("/api/external/file/get-presigned-url");
        self.core
            .json("get_presigned_url", |c| c.post(&url).json(request))
            .await
    }

    /// `PUT`s `bytes` to the pre-signed URL with the returned headers and no credentials.
    /// Any 2xx is success.
    #[tracing::instrument(skip_all, fields(provider = "blaaiz", endpoint = "upload_file"))]
    pub async fn upload_file(&self, upload: &PresignedUpload, bytes: Vec<u8>) -> Result<()> {
        const ENDPOINT: &str = "upload_file";
        let provider = Provider::Blaaiz;
        let mut request = self.core.http.put(&upload.upload_url);
        for (name, value) in &upload.headers {
            let name =
                HeaderName::from_bytes(name.as_bytes()).map_err(|_| Error::InvalidRequest {
                    provider,
                    endpoint: ENDPOINT,
                    detail: format!("pre-signed upload header name {name:?} is invalid"),
                })?;
            request = request.header(name, value.as_str());
        }
        let response = request
            .body(bytes)
            .send()
            .await
            .map_err(|e| Error::from_reqwest(provider, ENDPOINT, e))?;
        let status = response.status();
        tracing::debug!(status = status.as_u16(), "upload answered");
        if status.is_success() {
            return Ok(());
        }
        let headers = response.headers().clone();
        let body = response
            .bytes()
            .await
            .map_err(|e| Error::from_reqwest(provider, ENDPOINT, e))?;
        Err(Error::from_response(
            provider,
            ENDPOINT,
            status,
            &headers,
            &body,
            chrono::Utc::now(),
        ))
    }

    /// `POST /api/external/customer/{id}/files`: attaching `id_file` starts the review.
    #[tracing::instrument(skip_all, fields(provider = "blaaiz", endpoint = "attach_files"))]
    pub async fn attach_files(
        &self,
        customer_id: &str,
        files: &AttachFiles,
    ) -> Result<MessageResponse> {
        let url = self.core.url_with(
            "attach_files",
            &["api", "external", "customer", customer_id, "files"],
        )?;
        self.core
            .json("attach_files", |c| c.post(&url).json(files))
            .await
    }

    /// `POST /api/external/payout`. Not idempotent: look up by reference first, and pass the
    /// instant after which the request must not leave (`paysaga_core::EffectPermit::send_by`
    /// in a step; [`Error::NotSent`](crate::Error::NotSent) past it). A business refusal
    /// (e.g. "Insufficient funds.") is a permanent 400.
    #[tracing::instrument(skip_all, fields(provider = "blaaiz", endpoint = "create_payout"))]
    pub async fn create_payout(
        &self,
        request: &CreatePayout,
        send_by: std::time::Instant,
    ) -> Result<PayoutResponse> {
        let url = self.core.url("/api/external/payout");
        self.core
            .json_before("create_payout", send_by, |c| c.post(&url).json(request))
            .await
    }

    /// `GET /api/external/transaction/{id}`: the polling fallback for a payout.
    #[tracing::instrument(skip_all, fields(provider = "blaaiz", endpoint = "get_transaction"))]
    pub async fn get_transaction(&self, transaction_id: &str) -> Result<Transaction> {
        let url = self.core.url_with(
            "get_transaction",
            &["api", "external", "transaction", transaction_id],
        )?;
        let env: DataEnvelope<Transaction> =
            self.core.json("get_transaction", |c| c.get(&url)).await?;
        Ok(env.data)
    }

    /// `POST /api/external/transaction?page=N` (one page, 1-based).
    #[tracing::instrument(skip_all, fields(provider = "blaaiz", endpoint = "list_transactions"))]
    pub async fn list_transactions(
        &self,
        filter: &TransactionFilter,
        page: u64,
    ) -> Result<TransactionPage> {
        let url = self.core.url("/api/external/transaction");
        self.core
            .json("list_transactions", |c| {
                c.post(&url).query(&[("page", page)]).json(filter)
            })
            .await
    }

    /// The customer's payout carrying `reference` (see [`Transaction::has_reference`]), if any:
    /// the look-up before (re)creating a payout.
    pub async fn find_payout_by_reference(
        &self,
        customer_id: &str,
        reference: &str,
    ) -> Result<Option<Transaction>> {
        let filter = TransactionFilter {
            customer_id: Some(customer_id.to_owned()),
            transaction_type: Some("payout".to_owned()),
            ..TransactionFilter::default()
        };
        for page in 1..=SCAN_MAX_PAGES {
            let result = self.list_transactions(&filter, page).await?;
            let empty = result.data.is_empty();
            if let Some(found) = result.data.into_iter().find(|t| t.has_reference(reference)) {
                return Ok(Some(found));
            }
            let last = result
                .meta
                .as_ref()
                .and_then(|m| m.last_page)
                .unwrap_or(page);
            if empty || page >= last {
                break;
            }
        }
        Ok(None)
    }
}

/// `data` of the customer look-up: a list, or a single object.
#[derive(Deserialize)]
#[serde(untagged)]
enum CustomerList {
    Many(Vec<Customer>),
    One(Box<Customer>),
}

impl CustomerList {
    fn into_vec(self) -> Vec<Customer> {
        match self {
            CustomerList::Many(v) => v,
            CustomerList::One(c) => vec![*c],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presigned_both_shapes() -> std::result::Result<(), serde_json::Error> {
        let a: PresignedUpload = serde_json::from_str(
            r#"{"message":"ok","data":{"file_id":"f1","upload_url":"https://s3/x?sig=1","headers":{"Content-Type":"image/jpeg"},"expires_at":"2024-01-15T11:30:00Z"}}"#,
        )?;
        assert_eq!(
            (a.file_id.as_str(), a.upload_url.as_str()),
            ("f1", "https://s3/x?sig=1")
        );
        assert!(!format!("{a:?}").contains("sig=1"));
        let b: PresignedUpload = serde_json::from_str(
            r#"{"message":"ok","file_id":"f2","url":"https://s3/y","headers":{}}"#,
        )?;
        assert_eq!(
            (b.file_id.as_str(), b.upload_url.as_str()),
            ("f2", "https://s3/y")
        );
        assert!(serde_json::from_str::<PresignedUpload>(r#"{"message":"ok"}"#).is_err());
        Ok(())
    }

    #[test]
    fn payout_body_uses_exact_decimals() -> std::result::Result<(), Box<dyn std::error::Error>> {
        let p = CreatePayout::new(
            "w",
            "c",
            PayoutMethod::BankTransfer,
            PayoutAmount::From(10_050),
            "ngn",
            "NGN",
            "ps-1",
        )?;
        let body = serde_json::to_string(&p)?;
        assert!(body.contains(r#""from_amount":100.5"#), "{body}");
        assert!(!body.contains("to_amount"));
        assert!(body.contains(r#""note":"ps-1""#));
        let negative = CreatePayout::new(
            "w",
            "c",
            PayoutMethod::Ach,
            PayoutAmount::To(-1),
            "USD",
            "USD",
            "r",
        );
        assert_eq!(negative, Err(MoneyError::NotPositive(-1)));
        assert!(CreatePayout::new(
            "w",
            "c",
            PayoutMethod::Ach,
            PayoutAmount::To(1),
            "USD",
            "uuid-not-code",
            "r"
        )
        .is_err());
        Ok(())
    }

    #[test]
    fn transaction_amounts_and_status() -> std::result::Result<(), Box<dyn std::error::Error>> {
        let t: Transaction = serde_json::from_str(
            r#"{"id":"t","status":"completed","type":"payout","reference":"r","currency":"NGN","amount":50000.5,"amount_without_fee":49500,"fee":500.5,"rate":null,"recipient":null}"#,
        )?;
        assert_eq!(t.amount_minor()?, 5_000_050);
        assert!(t.status.is_success() && t.status.is_final());
        let c: Customer = serde_json::from_str(
            r#"{"id":"c","type":"individual","email":"a@b","status":"verified"}"#,
        )?;
        assert_eq!(c.verification(), VerificationStatus::Verified);
        Ok(())
    }
}
