//! Lean client: payment destinations, customers, payment sources and payment intents.
//!
//! Authentication is the `lean-app-token` header or an OAuth2 client-credentials bearer token
//! (`scope=api`). Amounts are decimals in major units on the wire; [`CreatePaymentIntent`]
//! takes minor units and [`Payment::amount_minor`] converts back, exactly.
//!
//! Payment intents carry an `Idempotency-Key`; customers are unique per `app_user_id`
//! ([`LeanClient::ensure_customer`] turns Lean's 409 into the existing customer).

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

/// How the client authenticates.
#[derive(Debug, Clone)]
pub enum LeanAuth {
    /// Legacy `lean-app-token` header.
    AppToken(SecretString),
    /// OAuth2 client credentials with `scope=api`.
    OAuth {
        /// Client id.
        client_id: String,
        /// Client secret.
        client_secret: SecretString,
        /// Token URL (default `{base_url}/oauth2/token`).
        token_url: String,
    },
}

/// What [`LeanClient::new`] needs.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct LeanConfig {
    /// API base, e.g. `https://sandbox.leantech.me` or `{sandbox}/lean`.
    pub base_url: String,
    /// Credentials.
    pub auth: LeanAuth,
    /// Timeouts.
    pub http: HttpOptions,
}

impl LeanConfig {
    /// A configuration with default timeouts.
    pub fn new(base_url: impl Into<String>, auth: LeanAuth) -> Self {
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

/// Lean API client. Cheap to clone; clones share the connection pool and token cache.
#[derive(Debug, Clone)]
pub struct LeanClient {
    core: Core,
    tokens: Option<TokenCache>,
}

string_enum! {
    /// Status of a payment (initiation).
    pub enum PaymentStatus {
        /// Bank accepted and gave a reference (still reconcile).
        AcceptedByBank => "ACCEPTED_BY_BANK",
        /// Bank accepted without a reference: may settle later, needs reconciliation.
        PendingWithBank => "PENDING_WITH_BANK",
        /// Bank rejected.
        RejectedByBank => "REJECTED_BY_BANK",
        /// Failed.
        Failed => "FAILED",
        /// Waiting for the user's bank login/MFA.
        AwaitingLoginMfa => "AWAITING_LOGIN_MFA",
        /// Queued at Lean, not yet authorised (a payout awaiting manual authorisation; no
        /// interaction with the bank yet). The getting-started payouts guide names no status
        /// for a queued payment; `CREATED` is the one Lean's payment lifecycle documents.
        Created => "CREATED",
    }
}

impl PaymentStatus {
    /// The payment will not happen.
    pub fn is_failure(&self) -> bool {
        matches!(self, PaymentStatus::RejectedByBank | PaymentStatus::Failed)
    }
}

string_enum! {
    /// Status of a beneficiary (payment source -> destination link).
    pub enum BeneficiaryStatus {
        /// Created; the bank's cool-off period runs.
        AwaitingBeneficiaryCoolOff => "AWAITING_BENEFICIARY_COOL_OFF",
        /// Payments possible.
        Active => "ACTIVE",
    }
}

/// Body of `POST /payments/v1/destinations`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Default)]
pub struct CreateDestination {
    /// Name shown to the customer.
    pub display_name: String,
    /// Account holder name.
    pub name: String,
    /// Bank identifier (`ENBD_UAE`).
    pub bank_identifier: String,
    /// IBAN.
    pub iban: String,
    /// Account number.
    pub account_number: String,
    /// Address.
    pub address: String,
    /// City.
    pub city: String,
    /// Country.
    pub country: String,
    /// SWIFT code.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub swift_code: Option<String>,
}

/// A payment destination.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Destination {
    /// Destination id (`payment_destination_id`).
    pub id: String,
    /// Display name.
    #[serde(default)]
    pub display_name: Option<String>,
    /// Account holder name.
    #[serde(default)]
    pub name: Option<String>,
    /// Bank identifier.
    #[serde(default)]
    pub bank_identifier: Option<String>,
    /// IBAN.
    #[serde(default)]
    pub iban: Option<String>,
    /// Account number.
    #[serde(default)]
    pub account_number: Option<String>,
    /// Country.
    #[serde(default)]
    pub country: Option<String>,
    /// Status (`CONFIRMED`).
    #[serde(default)]
    pub status: Option<String>,
    /// Whether this is the app's default destination.
    #[serde(default)]
    pub default: Option<bool>,
}

/// A Lean customer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Customer {
    /// Lean's id.
    pub customer_id: String,
    /// Our id for the end user.
    pub app_user_id: String,
}

/// Result of [`LeanClient::ensure_customer`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EnsuredCustomer {
    /// Created by this call.
    Created(Customer),
    /// Existed already (Lean answered 409 `CUSTOMER_ALREADY_EXISTS`) and was fetched.
    Existing(Customer),
}

impl EnsuredCustomer {
    /// The customer, however obtained.
    pub fn customer(&self) -> &Customer {
        match self {
            EnsuredCustomer::Created(c) | EnsuredCustomer::Existing(c) => c,
        }
    }

    /// The customer, however obtained.
    pub fn into_customer(self) -> Customer {
        match self {
            EnsuredCustomer::Created(c) | EnsuredCustomer::Existing(c) => c,
        }
    }
}

/// A beneficiary: the link between a payment source and a destination.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Beneficiary {
    /// Beneficiary id.
    pub id: String,
    /// Destination.
    #[serde(default)]
    pub payment_destination_id: Option<String>,
    /// Status.
    #[serde(default)]
    pub status: Option<BeneficiaryStatus>,
    /// End of the cool-off period.
    #[serde(default)]
    pub beneficiary_cool_off_expiry: Option<String>,
}

/// One bank account of a payment source (balances deliberately not read).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceAccount {
    /// Id.
    pub id: String,
    /// Bank account id.
    #[serde(default)]
    pub account_id: Option<String>,
    /// Account name.
    #[serde(default)]
    pub account_name: Option<String>,
    /// IBAN.
    #[serde(default)]
    pub iban: Option<String>,
    /// Currency.
    #[serde(default)]
    pub currency: Option<String>,
}

/// A payment source (the end user's bank connection), with its beneficiaries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentSource {
    /// Id.
    pub id: String,
    /// Customer.
    #[serde(default)]
    pub customer_id: Option<String>,
    /// Bank identifier.
    #[serde(default)]
    pub bank_identifier: Option<String>,
    /// Status (legacy field).
    #[serde(default)]
    pub status: Option<String>,
    /// Beneficiaries.
    #[serde(default)]
    pub beneficiaries: Vec<Beneficiary>,
    /// Accounts.
    #[serde(default)]
    pub accounts: Vec<SourceAccount>,
}

impl PaymentSource {
    /// The beneficiary for `destination_id`, if any.
    pub fn beneficiary_for(&self, destination_id: &str) -> Option<&Beneficiary> {
        self.beneficiaries
            .iter()
            .find(|b| b.payment_destination_id.as_deref() == Some(destination_id))
    }
}

/// Body of `POST /payments/v1/intents`. Build with [`CreatePaymentIntent::new`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CreatePaymentIntent {
    /// Amount, major units.
    pub amount: DecimalAmount,
    /// Currency.
    pub currency: String,
    /// Destination.
    pub payment_destination_id: String,
    /// Customer.
    pub customer_id: String,
    /// Bank reference (Lean: at most 32 characters; some banks keep 12).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

impl CreatePaymentIntent {
    /// An intent for `amount_minor` units of `currency`.
    pub fn new(
        amount_minor: i64,
        currency: &str,
        payment_destination_id: &str,
        customer_id: &str,
        description: Option<&str>,
    ) -> std::result::Result<Self, MoneyError> {
        crate::money::validate_currency(currency)?;
        if amount_minor <= 0 {
            return Err(MoneyError::NotPositive(amount_minor));
        }
        Ok(CreatePaymentIntent {
            amount: DecimalAmount::from_minor(amount_minor, currency),
            currency: currency.to_ascii_uppercase(),
            payment_destination_id: payment_destination_id.to_owned(),
            customer_id: customer_id.to_owned(),
            description: description.map(str::to_owned),
        })
    }
}

/// A payment (initiation) made against an intent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Payment {
    /// Payment id.
    pub id: String,
    /// Intent (`payment_intent_id`, or `intent_id` in webhooks).
    #[serde(default, alias = "intent_id")]
    pub payment_intent_id: Option<String>,
    /// Customer.
    #[serde(default)]
    pub customer_id: Option<String>,
    /// Status.
    pub status: PaymentStatus,
    /// Amount, major units.
    pub amount: DecimalAmount,
    /// Currency.
    pub currency: String,
    /// Bank reference description.
    #[serde(default)]
    pub description: Option<String>,
    /// The bank's transaction reference (absent for `PENDING_WITH_BANK`).
    #[serde(default)]
    pub bank_transaction_reference: Option<String>,
}

impl Payment {
    /// `amount` in minor units of `currency`.
    pub fn amount_minor(&self) -> std::result::Result<i64, MoneyError> {
        self.amount.to_minor(&self.currency)
    }
}

/// A payment intent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentIntent {
    /// Intent id.
    pub payment_intent_id: String,
    /// Customer.
    #[serde(default)]
    pub customer_id: Option<String>,
    /// Amount, major units.
    pub amount: DecimalAmount,
    /// Currency.
    pub currency: String,
    /// Payments made against it (at most one today).
    #[serde(default)]
    pub payments: Vec<Payment>,
    /// Destination.
    #[serde(default)]
    pub payment_destination: Option<Destination>,
    /// Description.
    #[serde(default)]
    pub description: Option<String>,
}

impl PaymentIntent {
    /// `amount` in minor units of `currency`.
    pub fn amount_minor(&self) -> std::result::Result<i64, MoneyError> {
        self.amount.to_minor(&self.currency)
    }

    /// The latest payment, if one was made.
    pub fn latest_payment(&self) -> Option<&Payment> {
        self.payments.last()
    }
}

#[derive(Serialize)]
struct CreateCustomerBody<'a> {
    app_user_id: &'a str,
}

impl LeanClient {
    /// A client for `config`. Nothing is sent until the first call.
    pub fn new(config: LeanConfig) -> Self {
        let http = config.http.build_client();
        let (auth, tokens) = match config.auth {
            LeanAuth::OAuth {
                client_id,
                client_secret,
                token_url,
            } => {
                let cache = TokenCache::new(
                    Provider::Lean,
                    http.clone(),
                    TokenRequest::Form {
                        url: token_url,
                        client_id,
                        client_secret,
                        scope: Some("api".to_owned()),
                    },
                );
                (Auth::OAuth(cache.clone()), Some(cache))
            }
            LeanAuth::AppToken(token) => (
                Auth::Header {
                    name: HeaderName::from_static("lean-app-token"),
                    value: token,
                },
                None,
            ),
        };
        LeanClient {
            core: Core::new(Provider::Lean, &config.base_url, http, auth),
            tokens,
        }
    }

    /// The token cache, in OAuth mode.
    pub fn token_cache(&self) -> Option<&TokenCache> {
        self.tokens.as_ref()
    }

    /// `POST /payments/v1/destinations`.
    #[tracing::instrument(skip_all, fields(provider = "lean", endpoint = "create_destination"))]
    pub async fn create_destination(&self, request: &CreateDestination) -> Result<Destination> {
        let url = self.core.url("/payments/v1/destinations");
        self.core
            .json("create_destination", |c| c.post(&url).json(request))
            .await
    }

    /// `GET /payments/v1/destinations`.
    #[tracing::instrument(skip_all, fields(provider = "lean", endpoint = "list_destinations"))]
    pub async fn list_destinations(&self) -> Result<Vec<Destination>> {
        let url = self.core.url("/payments/v1/destinations");
        self.core.json("list_destinations", |c| c.get(&url)).await
    }

    /// `POST /payments/v1/customer {app_user_id}`. A second call for the same `app_user_id`
    /// fails with a 409 ([`Error::is_conflict`], code `CUSTOMER_ALREADY_EXISTS`); prefer
    /// [`LeanClient::ensure_customer`].
    #[tracing::instrument(skip_all, fields(provider = "lean", endpoint = "create_customer"))]
    pub async fn create_customer(&self, app_user_id: &str) -> Result<Customer> {
        let url = self.core.url("/payments/v1/customer");
        let body = CreateCustomerBody { app_user_id };
        self.core
            .json("create_customer", |c| c.post(&url).json(&body))
            .await
    }

    /// `GET /customers/v1/app-user-id/{app_user_id}`.
    #[tracing::instrument(
        skip_all,
        fields(provider = "lean", endpoint = "get_customer_by_app_user_id")
    )]
    pub async fn get_customer_by_app_user_id(&self, app_user_id: &str) -> Result<Customer> {
        let url = self.core.url_with(
            "get_customer_by_app_user_id",
            &["customers", "v1", "app-user-id", app_user_id],
        )?;
        self.core
            .json("get_customer_by_app_user_id", |c| c.get(&url))
            .await
    }

    /// Creates the customer, or fetches it if Lean says it already exists: safe to repeat.
    pub async fn ensure_customer(&self, app_user_id: &str) -> Result<EnsuredCustomer> {
        match self.create_customer(app_user_id).await {
            Ok(c) => Ok(EnsuredCustomer::Created(c)),
            Err(e) if e.is_conflict() => {
                tracing::debug!(
                    code = e.code().unwrap_or(""),
                    "customer exists; fetching it"
                );
                self.get_customer_by_app_user_id(app_user_id)
                    .await
                    .map(EnsuredCustomer::Existing)
            }
            Err(e) => Err(e),
        }
    }

    /// `GET /customers/v1/{customer_id}/payment_sources`.
    #[tracing::instrument(skip_all, fields(provider = "lean", endpoint = "list_payment_sources"))]
    pub async fn list_payment_sources(&self, customer_id: &str) -> Result<Vec<PaymentSource>> {
        let url = self.core.url_with(
            "list_payment_sources",
            &["customers", "v1", customer_id, "payment_sources"],
        )?;
        self.core
            .json("list_payment_sources", |c| c.get(&url))
            .await
    }

    /// `GET /customers/v1/{customer_id}/payment_sources/{id}`.
    #[tracing::instrument(skip_all, fields(provider = "lean", endpoint = "get_payment_source"))]
    pub async fn get_payment_source(
        &self,
        customer_id: &str,
        payment_source_id: &str,
    ) -> Result<PaymentSource> {
        let url = self.core.url_with(
            "get_payment_source",
            &[
                "customers",
                "v1",
                customer_id,
                "payment_sources",
                payment_source_id,
            ],
        )?;
        self.core.json("get_payment_source", |c| c.get(&url)).await
    }

    /// The beneficiary linking one of the customer's payment sources to `destination_id`, if
    /// any: the polling fallback for the beneficiary wait.
    pub async fn find_beneficiary(
        &self,
        customer_id: &str,
        destination_id: &str,
    ) -> Result<Option<Beneficiary>> {
        let sources = self.list_payment_sources(customer_id).await?;
        Ok(sources
            .iter()
            .find_map(|s| s.beneficiary_for(destination_id).cloned()))
    }

    /// `POST /payments/v1/intents` with `Idempotency-Key: idempotency_key` (derive it from the
    /// saga id and step name: the same key with the same body returns the same intent; the same
    /// key with a different body is a permanent 409).
    #[tracing::instrument(
        skip_all,
        fields(provider = "lean", endpoint = "create_payment_intent")
    )]
    pub async fn create_payment_intent(
        &self,
        request: &CreatePaymentIntent,
        idempotency_key: &str,
    ) -> Result<PaymentIntent> {
        const ENDPOINT: &str = "create_payment_intent";
        if idempotency_key.is_empty()
            || reqwest::header::HeaderValue::from_str(idempotency_key).is_err()
        {
            return Err(Error::InvalidRequest {
                provider: Provider::Lean,
                endpoint: ENDPOINT,
                detail: "idempotency key must be a non-empty header-safe string".to_owned(),
            });
        }
        let url = self.core.url("/payments/v1/intents");
        self.core
            .json(ENDPOINT, |c| {
                c.post(&url)
                    .header("Idempotency-Key", idempotency_key)
                    .json(request)
            })
            .await
    }

    /// `GET /payments/v1/intents/{intent_id}`: the intent with its payments (status polling).
    #[tracing::instrument(skip_all, fields(provider = "lean", endpoint = "get_payment_intent"))]
    pub async fn get_payment_intent(&self, intent_id: &str) -> Result<PaymentIntent> {
        let url = self.core.url_with(
            "get_payment_intent",
            &["payments", "v1", "intents", intent_id],
        )?;
        self.core.json("get_payment_intent", |c| c.get(&url)).await
    }

    /// `GET /payments/v1/{payment_id}`.
    #[tracing::instrument(skip_all, fields(provider = "lean", endpoint = "get_payment"))]
    pub async fn get_payment(&self, payment_id: &str) -> Result<Payment> {
        let url = self
            .core
            .url_with("get_payment", &["payments", "v1", payment_id])?;
        self.core.json("get_payment", |c| c.get(&url)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intent_body_and_payment_amounts() -> std::result::Result<(), Box<dyn std::error::Error>> {
        let req = CreatePaymentIntent::new(100_050, "aed", "dest", "cust", Some("ps-1"))?;
        assert_eq!(
            serde_json::to_string(&req)?,
            r#"{"amount":1000.5,"currency":"AED","payment_destination_id":"dest","customer_id":"cust","description":"ps-1"}"#
        );
        assert_eq!(
            CreatePaymentIntent::new(0, "AED", "d", "c", None),
            Err(MoneyError::NotPositive(0))
        );
        let p: Payment = serde_json::from_str(
            r#"{"id":"p","customer_id":"c","intent_id":"i","status":"ACCEPTED_BY_BANK","amount":10.12,"currency":"AED"}"#,
        )?;
        assert_eq!(
            (p.amount_minor()?, p.payment_intent_id.as_deref()),
            (1012, Some("i"))
        );
        assert_eq!(p.status, PaymentStatus::AcceptedByBank);
        let intent: PaymentIntent = serde_json::from_str(
            r#"{"payment_intent_id":"i","customer_id":"c","amount":1000.00,"currency":"AED","payments":[],"payment_destination":{"id":"d","default":true}}"#,
        )?;
        assert_eq!(intent.amount_minor()?, 100_000);
        Ok(())
    }
}
