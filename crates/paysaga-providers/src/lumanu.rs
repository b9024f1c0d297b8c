//! Lumanu REST client (pre-funding flow): funding invoices, wallet, payables.
//!
//! Amounts are integer cents (`amount_denomination: "us_cents"`) on Lumanu's side already.
//! Authentication is OAuth2 client credentials against `{auth_url}/oauth/token` (JSON body);
//! a 401 refreshes the token once and repeats the call.
//!
//! Lumanu has no idempotency key: before creating a payable again after an error for which
//! [`Error::may_have_taken_effect`](crate::Error::may_have_taken_effect) holds, call
//! [`LumanuClient::find_payable_by_description`] with the description (carrying the step's
//! reference) that was sent.

use serde::{Deserialize, Serialize};

use crate::config::HttpOptions;
use crate::error::Result;
use crate::string_enum;
use crate::token::{TokenCache, TokenRequest};
use crate::transport::{Auth, Core};
use crate::Provider;
use secrecy::SecretString;

/// What [`LumanuClient::new`] needs.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct LumanuConfig {
    /// API base, e.g. `https://api.demo.lumanu.link/api/rest` or `{sandbox}/lumanu/api/rest`.
    pub base_url: String,
    /// Auth base; the token is requested from `{auth_url}/oauth/token`.
    pub auth_url: String,
    /// OAuth client id.
    pub client_id: String,
    /// OAuth client secret.
    pub client_secret: SecretString,
    /// OAuth audience (Lumanu's Auth0 tenant needs it; omitted when `None`).
    pub audience: Option<String>,
    /// Timeouts.
    pub http: HttpOptions,
}

impl LumanuConfig {
    /// A configuration with default timeouts and no audience.
    pub fn new(
        base_url: impl Into<String>,
        auth_url: impl Into<String>,
        client_id: impl Into<String>,
        client_secret: SecretString,
    ) -> Self {
        Self {
            base_url: base_url.into(),
            auth_url: auth_url.into(),
            client_id: client_id.into(),
            client_secret,
            audience: None,
            http: HttpOptions::default(),
        }
    }

    /// The same with the OAuth audience `audience`.
    pub fn with_audience(mut self, audience: impl Into<String>) -> Self {
        self.audience = Some(audience.into());
        self
    }

    /// The same with timeouts `http`.
    pub fn with_http(mut self, http: HttpOptions) -> Self {
        self.http = http;
        self
    }
}

/// Lumanu API client. Cheap to clone; clones share the HTTP connection pool and token cache.
#[derive(Debug, Clone)]
pub struct LumanuClient {
    core: Core,
    tokens: TokenCache,
}

string_enum! {
    /// `payable_status`: the full lifecycle status of a payable.
    pub enum PayableStatus {
        /// Created, not approved yet.
        NotApproved => "not_approved",
        /// Approved by the payor.
        Approved => "approved",
        /// Payment scheduled.
        Scheduled => "scheduled",
        /// Approved, waiting for funds.
        AwaitingPayment => "awaiting_payment",
        /// The payee has not onboarded yet.
        AwaitingPayee => "awaiting_payee",
        /// Paid.
        Paid => "paid",
        /// Canceled.
        Canceled => "canceled",
        /// Payment reversed.
        Reversed => "reversed",
    }
}

string_enum! {
    /// `status`: the payor's approval intent on a payable (`null` right after creation).
    pub enum ApprovalStatus {
        /// Approved.
        Approved => "approved",
        /// Unapproved.
        Unapproved => "unapproved",
        /// Canceled.
        Canceled => "canceled",
        /// Will be paid.
        WillPay => "will_pay",
        /// Paid.
        Paid => "paid",
    }
}

string_enum! {
    /// Status of a funding.
    pub enum FundingStatus {
        /// Invoice sent, not paid/linked yet.
        Pending => "pending",
        /// Completed (deposit linked, or balance payment done).
        Completed => "completed",
    }
}

string_enum! {
    /// Status of a wallet transaction.
    pub enum WalletTransactionStatus {
        /// Not settled yet.
        Pending => "pending",
        /// Settled.
        Processed => "processed",
    }
}

string_enum! {
    /// Type of a wallet transaction.
    pub enum WalletTransactionType {
        /// Money in.
        Deposit => "deposit",
        /// Fee.
        Fee => "fee",
        /// A payment out.
        Payment => "payment",
        /// A withdrawal.
        Withdrawal => "withdrawal",
        /// An invoice.
        Invoice => "invoice",
    }
}

/// Body of `POST /funding`: `method` is `invoice` or `balance`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "method", rename_all = "lowercase")]
pub enum FundingRequest {
    /// Create a funding invoice (pre-funding).
    Invoice(InvoiceFunding),
    /// Pay approved payables from the wallet balance.
    Balance(BalanceFunding),
}

/// A funding invoice; Lumanu requires `recipient_email`, `bill_to`, `company_name` and
/// `company_address_one` for this method.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Default)]
pub struct InvoiceFunding {
    /// Workspace to fund.
    pub workspace_id: String,
    /// Amount in cents.
    pub amount: i64,
    /// Denomination (`us_cents`); the workspace's default when `None`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub amount_denomination: Option<String>,
    /// Description (required for invoices).
    pub description: String,
    /// Who receives the invoice.
    pub recipient_email: String,
    /// Billing recipient.
    pub bill_to: String,
    /// Company name for billing.
    pub company_name: String,
    /// Company billing address.
    pub company_address_one: String,
    /// Due date (RFC 3339).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub due_date: Option<String>,
    /// Purchase order number.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub po_number: Option<String>,
    /// Additional notes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub additional_notes: Option<String>,
}

/// Pay payables from the workspace balance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Default)]
pub struct BalanceFunding {
    /// Workspace.
    pub workspace_id: String,
    /// Approved payables to pay.
    pub payable_ids: Vec<String>,
}

/// A funding record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Funding {
    /// Funding id.
    pub id: String,
    /// Workspace.
    #[serde(default)]
    pub workspace_id: Option<String>,
    /// `invoice` or `balance`.
    #[serde(default)]
    pub method: Option<String>,
    /// Amount in cents.
    #[serde(default)]
    pub amount: Option<i64>,
    /// `us_cents`.
    #[serde(default)]
    pub amount_denomination: Option<String>,
    /// Status (`pending`, `completed`, ...).
    #[serde(default)]
    pub status: Option<FundingStatus>,
    /// Invoice number.
    #[serde(default)]
    pub invoice_number: Option<i64>,
    /// Description.
    #[serde(default)]
    pub description: Option<String>,
    /// Invoice recipient.
    #[serde(default)]
    pub recipient_email: Option<String>,
    /// Payables paid by a balance funding.
    #[serde(default)]
    pub payable_ids: Option<Vec<String>>,
    /// Amount before fees, in cents.
    #[serde(default)]
    pub base_amount: Option<i64>,
    /// Fee in cents.
    #[serde(default)]
    pub fee_amount: Option<i64>,
    /// Creation time.
    #[serde(default)]
    pub created_at: Option<String>,
    /// Last update.
    #[serde(default)]
    pub updated_at: Option<String>,
}

/// One custom field on a payable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct CustomField {
    /// Label.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    /// Type (`text`, ...).
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub field_type: Option<String>,
    /// Value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// Policy id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy_id: Option<String>,
}

/// Body of `POST /payable`. Give `payee_email` or `payee_lumanu_id`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Default)]
pub struct CreatePayable {
    /// Workspace paying.
    pub workspace_id: String,
    /// Payee by email.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub payee_email: Option<String>,
    /// Payee by Lumanu id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub payee_lumanu_id: Option<String>,
    /// Amount in cents.
    pub amount: i64,
    /// Description, visible to the payee; put the step's reference in it.
    pub description: String,
    /// Due date (RFC 3339).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub due_date: Option<String>,
    /// Custom fields.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub custom_fields: Option<Vec<CustomField>>,
}

/// A payable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Payable {
    /// Payable id.
    pub id: String,
    /// Workspace.
    #[serde(default)]
    pub workspace_id: Option<String>,
    /// Amount in cents.
    pub amount: i64,
    /// `us_cents`.
    #[serde(default)]
    pub amount_denomination: Option<String>,
    /// Description as sent.
    #[serde(default)]
    pub description: Option<String>,
    /// Invoice number.
    #[serde(default)]
    pub invoice_number: Option<i64>,
    /// Vendor onboarding status (free text, e.g. "Awaiting signup").
    #[serde(default)]
    pub vendor_status: Option<String>,
    /// Vendor email.
    #[serde(default)]
    pub vendor_email: Option<String>,
    /// Vendor display name.
    #[serde(default)]
    pub vendor_display_name: Option<String>,
    /// Payee's Lumanu id.
    #[serde(default)]
    pub payee_lumanu_id: Option<String>,
    /// Payor approval intent (`null` after creation).
    #[serde(default)]
    pub status: Option<ApprovalStatus>,
    /// Full lifecycle status.
    #[serde(default)]
    pub payable_status: Option<PayableStatus>,
    /// Due date.
    #[serde(default)]
    pub due_date: Option<String>,
    /// Custom fields.
    #[serde(default)]
    pub custom_fields: Option<Vec<CustomField>>,
    /// Creation time.
    #[serde(default)]
    pub created_at: Option<String>,
    /// Last update.
    #[serde(default)]
    pub updated_at: Option<String>,
}

/// A page of a Lumanu list: `{data, total, limit, offset}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Page<T> {
    /// Items.
    pub data: Vec<T>,
    /// Total number of items.
    #[serde(default)]
    pub total: Option<u64>,
    /// Page size used.
    #[serde(default)]
    pub limit: Option<u64>,
    /// Offset used.
    #[serde(default)]
    pub offset: Option<u64>,
}

/// Sort direction of a list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SortDirection {
    /// Ascending.
    Asc,
    /// Descending.
    Desc,
}

/// Query of `GET /payable`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Default)]
pub struct PayableQuery {
    /// Filter by workspace.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub workspace_id: Option<String>,
    /// Filter by project.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub project_id: Option<String>,
    /// Page size (Lumanu's default 25).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
    /// Items to skip.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub offset: Option<u32>,
    /// Field to order by.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub order_by: Option<String>,
    /// Order direction.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub order_by_direction: Option<SortDirection>,
}

/// Query of `GET /workspace/{id}/wallet/transaction`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Default)]
pub struct WalletTransactionQuery {
    /// Page size (default 25).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
    /// Items to skip.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub offset: Option<u32>,
    /// Field to order by.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub order_by: Option<String>,
    /// Order direction.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub order_by_direction: Option<SortDirection>,
    /// Filter by type (`deposit`, `payment`, `withdrawal`, `fee`).
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub transaction_type: Option<WalletTransactionType>,
}

/// A wallet transaction (deposits are what a funding invoice's payment produces).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WalletTransaction {
    /// Transaction id (the `transfer_id` for [`LumanuClient::link_deposit`]).
    pub id: String,
    /// Description.
    #[serde(default)]
    pub description: Option<String>,
    /// Creation time.
    #[serde(default)]
    pub created_at: Option<String>,
    /// Amount in cents.
    pub amount: i64,
    /// `us_cents`.
    #[serde(default)]
    pub amount_denomination: Option<String>,
    /// Signed change of the balance, in cents.
    #[serde(default)]
    pub balance_change: Option<i64>,
    /// Balance after the transaction, in cents.
    #[serde(default)]
    pub ending_balance: Option<i64>,
    /// `pending` or `processed`.
    #[serde(default)]
    pub status: Option<WalletTransactionStatus>,
    /// Type.
    #[serde(default, rename = "type")]
    pub transaction_type: Option<WalletTransactionType>,
    /// For a deposit that paid a funding invoice: that funding (the sandbox gives it, as on
    /// `transfer.*` webhooks; [decided], see docs/PROVIDER-CONTRACTS.md). `None` when absent.
    #[serde(default)]
    pub funding_id: Option<String>,
}

/// A workspace wallet (`GET /workspace/{id}/wallet`), amounts in cents.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Default)]
pub struct Wallet {
    /// Account id, when given.
    pub id: Option<String>,
    /// Display name.
    pub display_name: Option<String>,
    /// Denomination (`us_cents`).
    pub denomination: Option<String>,
    /// Balance available for payments.
    pub available_balance: Option<i64>,
    /// Total balance (including pending).
    pub balance: Option<i64>,
}

impl<'de> Deserialize<'de> for Wallet {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        // The reference documents `{balance:{available_balance,balance},display_name,denomination}`
        // and shows `{account:{account:{id,display_name,balance,balance_denomination}}}`: accept both.
        let mut v = serde_json::Value::deserialize(d)?;
        while let Some(inner) = v.get("account").filter(|a| a.is_object()).cloned() {
            v = inner;
        }
        if !v.is_object() {
            return Err(serde::de::Error::custom("wallet is not an object"));
        }
        let s =
            |v: &serde_json::Value, k: &str| v.get(k).and_then(|x| x.as_str()).map(str::to_owned);
        let (available_balance, balance) = match v.get("balance") {
            Some(b) if b.is_object() => (
                b.get("available_balance").and_then(|x| x.as_i64()),
                b.get("balance").and_then(|x| x.as_i64()),
            ),
            Some(b) => (
                v.get("available_balance").and_then(|x| x.as_i64()),
                b.as_i64(),
            ),
            None => (v.get("available_balance").and_then(|x| x.as_i64()), None),
        };
        Ok(Wallet {
            id: s(&v, "id"),
            display_name: s(&v, "display_name"),
            denomination: s(&v, "denomination").or_else(|| s(&v, "balance_denomination")),
            available_balance,
            balance,
        })
    }
}

#[derive(Serialize)]
struct LinkDeposit<'a> {
    transfer_id: &'a str,
}

/// Page size used when scanning lists.
const SCAN_PAGE: u32 = 100;
/// Most pages scanned by a `find_*` helper.
const SCAN_MAX_PAGES: u32 = 100;

impl LumanuClient {
    /// A client for `config`. Nothing is sent until the first call.
    pub fn new(config: LumanuConfig) -> Self {
        let http = config.http.build_client();
        let tokens = TokenCache::new(
            Provider::Lumanu,
            http.clone(),
            TokenRequest::Json {
                url: format!("{}/oauth/token", config.auth_url.trim_end_matches('/')),
                client_id: config.client_id,
                client_secret: config.client_secret,
                audience: config.audience,
            },
        );
        let core = Core::new(
            Provider::Lumanu,
            &config.base_url,
            http,
            Auth::OAuth(tokens.clone()),
        );
        LumanuClient { core, tokens }
    }

    /// The token cache (shared by clones of this client).
    pub fn token_cache(&self) -> &TokenCache {
        &self.tokens
    }

    /// `POST /funding` with either method.
    #[tracing::instrument(skip_all, fields(provider = "lumanu", endpoint = "create_funding"))]
    pub async fn create_funding(&self, request: &FundingRequest) -> Result<Funding> {
        let url = self.core.url("/funding");
        self.core
            .json("create_funding", |c| c.post(&url).json(request))
            .await
    }

    /// `POST /funding` with `method: "invoice"`: creates a funding invoice.
    pub async fn create_invoice_funding(&self, invoice: InvoiceFunding) -> Result<Funding> {
        self.create_funding(&FundingRequest::Invoice(invoice)).await
    }

    /// [`LumanuClient::create_invoice_funding`] under an effect permit: Lumanu cannot
    /// deduplicate it, so it is not sent (not even its retry after a 401) once `send_by` has
    /// passed ([`crate::Error::NotSent`]).
    #[tracing::instrument(skip_all, fields(provider = "lumanu", endpoint = "create_funding"))]
    pub async fn create_invoice_funding_before(
        &self,
        invoice: InvoiceFunding,
        send_by: std::time::Instant,
    ) -> Result<Funding> {
        let url = self.core.url("/funding");
        let request = FundingRequest::Invoice(invoice);
        self.core
            .json_before("create_funding", send_by, |c| c.post(&url).json(&request))
            .await
    }

    /// `POST /funding` with `method: "balance"`: pays approved payables from the balance.
    /// Insufficient balance is a permanent 4xx error.
    pub async fn pay_from_balance(
        &self,
        workspace_id: &str,
        payable_ids: &[String],
    ) -> Result<Funding> {
        self.create_funding(&FundingRequest::Balance(BalanceFunding {
            workspace_id: workspace_id.to_owned(),
            payable_ids: payable_ids.to_vec(),
        }))
        .await
    }

    /// `GET /funding/{id}`.
    #[tracing::instrument(skip_all, fields(provider = "lumanu", endpoint = "get_funding"))]
    pub async fn get_funding(&self, funding_id: &str) -> Result<Funding> {
        let url = self
            .core
            .url_with("get_funding", &["funding", funding_id])?;
        self.core.json("get_funding", |c| c.get(&url)).await
    }

    /// `POST /funding/{id}/link-deposit {transfer_id}`: allocates a deposit to the funding.
    #[tracing::instrument(skip_all, fields(provider = "lumanu", endpoint = "link_deposit"))]
    pub async fn link_deposit(&self, funding_id: &str, transfer_id: &str) -> Result<Funding> {
        let url = self
            .core
            .url_with("link_deposit", &["funding", funding_id, "link-deposit"])?;
        let body = LinkDeposit { transfer_id };
        self.core
            .json("link_deposit", |c| c.post(&url).json(&body))
            .await
    }

    /// [`LumanuClient::link_deposit`], safe to repeat: a `409` (the link was already made, e.g.
    /// by an attempt whose answer was lost) is success if the funding is now `completed`.
    pub async fn ensure_deposit_linked(
        &self,
        funding_id: &str,
        transfer_id: &str,
    ) -> Result<Funding> {
        match self.link_deposit(funding_id, transfer_id).await {
            Ok(funding) => Ok(funding),
            Err(err) if err.is_conflict() => {
                let funding = self.get_funding(funding_id).await?;
                if funding.status == Some(FundingStatus::Completed) {
                    Ok(funding)
                } else {
                    Err(err)
                }
            }
            Err(err) => Err(err),
        }
    }

    /// `GET /workspace/{id}/wallet`.
    #[tracing::instrument(skip_all, fields(provider = "lumanu", endpoint = "get_wallet"))]
    pub async fn get_wallet(&self, workspace_id: &str) -> Result<Wallet> {
        let url = self
            .core
            .url_with("get_wallet", &["workspace", workspace_id, "wallet"])?;
        self.core.json("get_wallet", |c| c.get(&url)).await
    }

    /// `GET /workspace/{id}/wallet/transaction` (one page).
    #[tracing::instrument(
        skip_all,
        fields(provider = "lumanu", endpoint = "list_wallet_transactions")
    )]
    pub async fn list_wallet_transactions(
        &self,
        workspace_id: &str,
        query: &WalletTransactionQuery,
    ) -> Result<Page<WalletTransaction>> {
        let url = self.core.url_with(
            "list_wallet_transactions",
            &["workspace", workspace_id, "wallet", "transaction"],
        )?;
        self.core
            .json("list_wallet_transactions", |c| c.get(&url).query(query))
            .await
    }

    /// Scans the wallet's transactions of `transaction_type` (newest first) for the first one
    /// `matches` accepts: the polling fallback for a deposit.
    pub async fn find_wallet_transaction(
        &self,
        workspace_id: &str,
        transaction_type: Option<WalletTransactionType>,
        matches: impl Fn(&WalletTransaction) -> bool,
    ) -> Result<Option<WalletTransaction>> {
        for page in 0..SCAN_MAX_PAGES {
            let query = WalletTransactionQuery {
                limit: Some(SCAN_PAGE),
                offset: Some(page * SCAN_PAGE),
                order_by: Some("created_at".to_owned()),
                order_by_direction: Some(SortDirection::Desc),
                transaction_type: transaction_type.clone(),
            };
            let result = self.list_wallet_transactions(workspace_id, &query).await?;
            let count = result.data.len();
            if let Some(found) = result.data.into_iter().find(|t| matches(t)) {
                return Ok(Some(found));
            }
            if last_page(count, page, result.total) {
                break;
            }
        }
        Ok(None)
    }

    /// Every wallet transaction of `transaction_type` (newest first) that `matches` accepts,
    /// scanning at most the helpers' page limit.
    pub async fn wallet_transactions_matching(
        &self,
        workspace_id: &str,
        transaction_type: Option<WalletTransactionType>,
        matches: impl Fn(&WalletTransaction) -> bool,
    ) -> Result<Vec<WalletTransaction>> {
        let mut out = Vec::new();
        for page in 0..SCAN_MAX_PAGES {
            let query = WalletTransactionQuery {
                limit: Some(SCAN_PAGE),
                offset: Some(page * SCAN_PAGE),
                order_by: Some("created_at".to_owned()),
                order_by_direction: Some(SortDirection::Desc),
                transaction_type: transaction_type.clone(),
            };
            let result = self.list_wallet_transactions(workspace_id, &query).await?;
            let count = result.data.len();
            out.extend(result.data.into_iter().filter(|t| matches(t)));
            if last_page(count, page, result.total) {
                break;
            }
        }
        Ok(out)
    }

    /// `POST /payable`. Not idempotent: see the module docs.
    #[tracing::instrument(skip_all, fields(provider = "lumanu", endpoint = "create_payable"))]
    pub async fn create_payable(&self, request: &CreatePayable) -> Result<Payable> {
        let url = self.core.url("/payable");
        self.core
            .json("create_payable", |c| c.post(&url).json(request))
            .await
    }

    /// [`LumanuClient::create_payable`] under an effect permit: Lumanu cannot deduplicate it,
    /// so it is not sent (not even its retry after a 401) once `send_by` has passed
    /// ([`crate::Error::NotSent`]).
    #[tracing::instrument(skip_all, fields(provider = "lumanu", endpoint = "create_payable"))]
    pub async fn create_payable_before(
        &self,
        request: &CreatePayable,
        send_by: std::time::Instant,
    ) -> Result<Payable> {
        let url = self.core.url("/payable");
        self.core
            .json_before("create_payable", send_by, |c| c.post(&url).json(request))
            .await
    }

    /// `GET /payable/{id}`.
    #[tracing::instrument(skip_all, fields(provider = "lumanu", endpoint = "get_payable"))]
    pub async fn get_payable(&self, payable_id: &str) -> Result<Payable> {
        let url = self
            .core
            .url_with("get_payable", &["payable", payable_id])?;
        self.core.json("get_payable", |c| c.get(&url)).await
    }

    /// `GET /payable` (one page).
    #[tracing::instrument(skip_all, fields(provider = "lumanu", endpoint = "list_payables"))]
    pub async fn list_payables(&self, query: &PayableQuery) -> Result<Page<Payable>> {
        let url = self.core.url("/payable");
        self.core
            .json("list_payables", |c| c.get(&url).query(query))
            .await
    }

    /// Scans the workspace's payables (newest first) for the first one `matches` accepts.
    pub async fn find_payable(
        &self,
        workspace_id: &str,
        matches: impl Fn(&Payable) -> bool,
    ) -> Result<Option<Payable>> {
        for page in 0..SCAN_MAX_PAGES {
            let query = PayableQuery {
                workspace_id: Some(workspace_id.to_owned()),
                limit: Some(SCAN_PAGE),
                offset: Some(page * SCAN_PAGE),
                order_by: Some("created_at".to_owned()),
                order_by_direction: Some(SortDirection::Desc),
                ..PayableQuery::default()
            };
            let result = self.list_payables(&query).await?;
            let count = result.data.len();
            if let Some(found) = result.data.into_iter().find(|p| matches(p)) {
                return Ok(Some(found));
            }
            if last_page(count, page, result.total) {
                break;
            }
        }
        Ok(None)
    }

    /// The payable of `workspace_id` whose description is exactly `description`, if any: the
    /// look-up before (re)creating a payable.
    pub async fn find_payable_by_description(
        &self,
        workspace_id: &str,
        description: &str,
    ) -> Result<Option<Payable>> {
        self.find_payable(workspace_id, |p| {
            p.description.as_deref() == Some(description)
        })
        .await
    }

    /// `POST /payable/{id}/approve`.
    #[tracing::instrument(skip_all, fields(provider = "lumanu", endpoint = "approve_payable"))]
    pub async fn approve_payable(&self, payable_id: &str) -> Result<Payable> {
        let url = self
            .core
            .url_with("approve_payable", &["payable", payable_id, "approve"])?;
        self.core.json("approve_payable", |c| c.post(&url)).await
    }

    /// `POST /payable/{id}/cancel` (compensation before payment).
    #[tracing::instrument(skip_all, fields(provider = "lumanu", endpoint = "cancel_payable"))]
    pub async fn cancel_payable(&self, payable_id: &str) -> Result<Payable> {
        let url = self
            .core
            .url_with("cancel_payable", &["payable", payable_id, "cancel"])?;
        self.core.json("cancel_payable", |c| c.post(&url)).await
    }
}

/// A workspace as `GET /workspace` lists it (the fields reconciliation reads).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Workspace {
    /// Workspace id.
    pub id: String,
    /// Display name.
    #[serde(default)]
    pub display_name: Option<String>,
}

impl LumanuClient {
    /// `GET /workspace` (one page; `limit`, `offset` as every Lumanu list).
    #[tracing::instrument(skip_all, fields(provider = "lumanu", endpoint = "list_workspaces"))]
    pub async fn list_workspaces(&self, limit: u32, offset: u32) -> Result<Page<Workspace>> {
        let url = self.core.url("/workspace");
        self.core
            .json("list_workspaces", |c| {
                c.get(&url).query(&[("limit", limit), ("offset", offset)])
            })
            .await
    }

    /// Every workspace the credentials see (at most the helpers' page limit).
    pub async fn all_workspaces(&self) -> Result<Vec<Workspace>> {
        let mut out = Vec::new();
        for page in 0..SCAN_MAX_PAGES {
            let result = self.list_workspaces(SCAN_PAGE, page * SCAN_PAGE).await?;
            let count = result.data.len();
            out.extend(result.data);
            if last_page(count, page, result.total) {
                break;
            }
        }
        Ok(out)
    }

    /// Every payable of `workspace_id` (newest first, at most the helpers' page limit).
    pub async fn all_payables(&self, workspace_id: &str) -> Result<Vec<Payable>> {
        let mut out = Vec::new();
        for page in 0..SCAN_MAX_PAGES {
            let query = PayableQuery {
                workspace_id: Some(workspace_id.to_owned()),
                limit: Some(SCAN_PAGE),
                offset: Some(page * SCAN_PAGE),
                order_by: Some("created_at".to_owned()),
                order_by_direction: Some(SortDirection::Desc),
                ..PayableQuery::default()
            };
            let result = self.list_payables(&query).await?;
            let count = result.data.len();
            out.extend(result.data);
            if last_page(count, page, result.total) {
                break;
            }
        }
        Ok(out)
    }
}

fn last_page(count: usize, page: u32, total: Option<u64>) -> bool {
    let seen = u64::from(page) * u64::from(SCAN_PAGE) + count as u64;
    count == 0
        || total.is_some_and(|t| seen >= t)
        || (total.is_none() && count < SCAN_PAGE as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wallet_shapes() -> std::result::Result<(), serde_json::Error> {
        let a: Wallet = serde_json::from_str(
            r#"{"balance":{"available_balance":100000,"balance":100431},"display_name":"Org","denomination":"us_cents"}"#,
        )?;
        assert_eq!(
            (a.available_balance, a.balance),
            (Some(100_000), Some(100_431))
        );
        let b: Wallet = serde_json::from_str(
            r#"{"account":{"account":{"id":"w1","display_name":"Company A","role":"wallet","balance":150000,"balance_denomination":"us_cents"}}}"#,
        )?;
        assert_eq!(
            (b.id.as_deref(), b.balance, b.denomination.as_deref()),
            (Some("w1"), Some(150_000), Some("us_cents"))
        );
        Ok(())
    }

    #[test]
    fn funding_request_is_tagged_by_method() -> std::result::Result<(), serde_json::Error> {
        let v = serde_json::to_value(FundingRequest::Balance(BalanceFunding {
            workspace_id: "w".into(),
            payable_ids: vec!["p1".into()],
        }))?;
        assert_eq!(
            v,
            serde_json::json!({"method":"balance","workspace_id":"w","payable_ids":["p1"]})
        );
        Ok(())
    }
}
