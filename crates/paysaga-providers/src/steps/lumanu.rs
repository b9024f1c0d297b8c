//! Lumanu step kinds: the pre-funding flow (`workflows/lumanu_prefund.toml`).
//!
//! fund (invoice) -> wait for its deposit -> link the deposit -> create payable -> approve ->
//! pay from balance -> wait for `payable.paid`. Amounts are integer US cents; Lumanu pays in
//! USD only, so `currency` must be `USD` ([`Usd`]).
//!
//! Each kind is a typed [`Step`]: its parameters and output are the structs below, whose value
//! types ([`super::parameters`], [`Usd`], [`Children`], [`PayablesPerFunding`]) check their
//! rules when deserialized, at start for the values the input gives and at every run; the
//! payee rule of `lumanu.create_payable` (an email or a Lumanu id, not both) is checked by
//! [`Step::validate`] at start and again when the step runs.

use std::sync::Arc;

use std::borrow::Cow;

use async_trait::async_trait;
use paysaga_core::{Step, StepContext, StepKind, StepOutcome, Typed, WaitSpec, Wake};
use schemars::{json_schema, JsonSchema, Schema, SchemaGenerator};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{json, Value};

use super::common::{outcome_for, reference, retry_unknown_effect, tagged};
use super::parameters::{Amount, Currency, Email, Id, Text};
use crate::lumanu::{
    ApprovalStatus, CreatePayable, Funding, FundingStatus, InvoiceFunding, LumanuClient, Payable,
    PayableStatus, WalletTransaction, WalletTransactionStatus, WalletTransactionType,
};

const PROVIDER: &str = "lumanu";

/// The Lumanu step kinds, sharing `client`.
pub fn kinds(client: &LumanuClient) -> Vec<Arc<dyn StepKind>> {
    vec![
        Arc::new(Typed(FundInvoice(client.clone()))),
        Arc::new(Typed(AwaitDeposit(client.clone()))),
        Arc::new(Typed(LinkDeposit(client.clone()))),
        Arc::new(Typed(CreatePayableStep(client.clone()))),
        Arc::new(Typed(ApprovePayable(client.clone()))),
        Arc::new(Typed(PayFromBalance(client.clone()))),
        Arc::new(Typed(AwaitPayablePaid(client.clone()))),
        Arc::new(Typed(PayCampaign(client.clone()))),
        Arc::new(Typed(AwaitCampaignPaid(client.clone()))),
    ]
}

/// The currency of a Lumanu amount: `USD` (any case; Lumanu pays in US cents only).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Usd;

impl<'de> Deserialize<'de> for Usd {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let code = Currency::deserialize(d)?;
        if code.as_str() == "USD" {
            Ok(Usd)
        } else {
            Err(serde::de::Error::custom(format!(
                "must be USD: Lumanu pays in US cents (got {})",
                code.as_str()
            )))
        }
    }
}

impl JsonSchema for Usd {
    fn schema_name() -> Cow<'static, str> {
        Cow::Borrowed("Usd")
    }
    fn inline_schema() -> bool {
        true
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({"type": "string", "pattern": "^[Uu][Ss][Dd]$"})
    }
}

// ---------------------------------------------------------------------------------------------

/// `lumanu.fund_invoice`: creates a funding invoice for the amount the payout needs.
///
/// Params: `workspace_id`, `amount` (cents), `currency` (`USD`), `description`, `invoice`
/// `{recipient_email, bill_to, company_name, company_address_one, due_date?, po_number?}`.
/// Output: `{funding_id, invoice_number, amount, currency, status, description, existing}`.
///
/// The invoice's description carries the step's reference (`[ps-{idempotency key}]`). Lumanu
/// has no idempotency key and cannot list fundings, so every run first looks for an earlier
/// attempt's invoice the only way Lumanu shows one: a deposit in the workspace's wallet whose
/// description carries the reference (an invoice that was paid; the deposit names its funding).
/// Then it sends only under [`StepContext::begin_effect`] (a fenced mark: no other attempt
/// sends within the effect window, so a look-up never races a request still in flight); a
/// create Lumanu refused before acting withdraws the mark. An earlier invoice that was not
/// paid yet cannot be found: the retry creates a second one, and `lumanu.await_deposit`
/// raises an alert if that one is paid too.
#[derive(Debug, Clone)]
pub struct FundInvoice(pub LumanuClient);

/// Parameters of `lumanu.fund_invoice`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
pub struct FundParams {
    /// Lumanu workspace id
    pub workspace_id: Id,
    /// amount in minor units (US cents)
    pub amount: Amount,
    /// USD
    pub currency: Usd,
    /// invoice description
    pub description: Text,
    /// who the invoice is for
    pub invoice: InvoiceParams,
}

/// Who a funding invoice is for.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
pub struct InvoiceParams {
    /// email address
    pub recipient_email: Email,
    /// bill to
    pub bill_to: Text,
    /// company name
    pub company_name: Text,
    /// company address
    pub company_address_one: Text,
    /// due date
    pub due_date: Option<Text>,
    /// purchase order number
    pub po_number: Option<Text>,
}

/// Output of `lumanu.fund_invoice`.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct FundOutput {
    /// Lumanu funding id
    pub funding_id: String,
    /// invoice number
    pub invoice_number: Option<i64>,
    /// amount in US cents
    pub amount: i64,
    /// USD
    pub currency: String,
    /// funding status
    pub status: Option<String>,
    /// Lumanu workspace id
    pub workspace_id: String,
    /// the invoice's description (with the step's reference)
    pub description: String,
    /// found instead of created
    pub existing: bool,
}

#[async_trait]
impl Step for FundInvoice {
    type Params = FundParams;
    type Output = FundOutput;
    const NAME: &'static str = "lumanu.fund_invoice";
    const DESCRIPTION: &'static str =
        "Creates (or finds) a Lumanu funding invoice for the workspace balance.";

    async fn run(&self, ctx: &StepContext, params: FundParams) -> Result<FundOutput, StepOutcome> {
        let workspace_id = params.workspace_id.0;
        let amount = params.amount.get();
        let inv = params.invoice;
        let reference = reference(ctx);
        let description = tagged(params.description.as_str(), &reference);
        let output = |funding: &Funding, existing: bool| FundOutput {
            funding_id: funding.id.clone(),
            invoice_number: funding.invoice_number,
            amount: funding.amount.unwrap_or(amount),
            currency: "USD".to_owned(),
            status: funding.status.as_ref().map(|s| s.to_string()),
            workspace_id: workspace_id.clone(),
            description: description.clone(),
            existing,
        };
        // Look first: an earlier attempt's invoice, once paid, shows as a deposit carrying the
        // reference.
        let tag = format!("[{reference}]");
        let earlier = self
            .0
            .find_wallet_transaction(&workspace_id, Some(WalletTransactionType::Deposit), |t| {
                t.description.as_deref().is_some_and(|d| d.contains(&tag))
            })
            .await;
        match earlier {
            Ok(Some(deposit)) => {
                let Some(funding_id) = deposit.funding_id.clone() else {
                    return Err(StepOutcome::fail(format!(
                        "an earlier attempt's funding invoice {description:?} was paid (deposit \
                         {}, {} cents) but Lumanu does not say which funding it paid: not \
                         invoicing again; an operator links the deposit by hand and skips this \
                         step with its funding_id",
                        deposit.id, deposit.amount
                    )));
                };
                let funding = match self.0.get_funding(&funding_id).await {
                    Ok(f) => f,
                    Err(e) => return Err(outcome_for("get the earlier attempt's funding", &e)),
                };
                if funding.amount.is_some_and(|a| a != amount) {
                    return Err(StepOutcome::fail(format!(
                        "funding {funding_id} carries this step's reference but is {} cents, not \
                         {}",
                        funding.amount.unwrap_or_default(),
                        amount
                    )));
                }
                return Ok(output(&funding, true));
            }
            Ok(None) => {}
            Err(e) => return Err(outcome_for("look for an earlier invoice's deposit", &e)),
        }
        let invoice = InvoiceFunding {
            workspace_id: workspace_id.clone(),
            amount,
            amount_denomination: Some("us_cents".to_owned()),
            description: description.clone(),
            recipient_email: inv.recipient_email.0,
            bill_to: inv.bill_to.0,
            company_name: inv.company_name.0,
            company_address_one: inv.company_address_one.0,
            due_date: inv.due_date.map(|t| t.0),
            po_number: inv.po_number.map(|t| t.0),
            additional_notes: None,
        };
        // Lumanu cannot deduplicate the create: mark the attempt durably before sending.
        let permit = ctx.begin_effect().await?;
        match self
            .0
            .create_invoice_funding_before(invoice, permit.send_by())
            .await
        {
            Ok(funding) => Ok(output(&funding, false)),
            Err(e) if e.may_have_taken_effect() => Err(retry_unknown_effect(
                &format!(
                    "create funding invoice (an invoice described {description:?} may exist; \
                     a second one is surfaced as an alert if it is paid)"
                ),
                &e,
            )),
            Err(e) => {
                // Refused before Lumanu acted (4xx, 429, no connection, not sent).
                ctx.effect_not_sent().await;
                Err(outcome_for("create funding invoice", &e))
            }
        }
    }

    fn references(&self, output: &Value) -> Vec<(String, String)> {
        paysaga_core::output_references(output, &["funding_id", "invoice_number"])
    }
}

// ---------------------------------------------------------------------------------------------

/// `lumanu.await_deposit`: waits until the funding invoice is paid into the wallet.
///
/// Params: `workspace_id`, `funding_id`. Waits for `transfer.created`/`transfer.updated` with
/// key `funding:{funding_id}`; every run (start, event, poll) re-reads the funding and the
/// wallet's deposits and accepts a processed deposit that is the one named by the event and
/// carries this invoice's number (`#{invoice_number}`) in its description, with the
/// funding's amount. Output: `{transfer_id, amount, funding_id, alerts?}`: deposits that paid
/// *other* invoices carrying the same reference (a second invoice from a retried create) are
/// reported as `duplicate_funding_deposit` alerts (history row, metric, `list --alerts`).
#[derive(Debug, Clone)]
pub struct AwaitDeposit(pub LumanuClient);

/// Parameters of `lumanu.await_deposit`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
pub struct DepositParams {
    /// Lumanu workspace id
    pub workspace_id: Id,
    /// Lumanu funding id
    pub funding_id: Id,
}

/// Output of `lumanu.await_deposit`.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct DepositOutput {
    /// deposit transfer id
    pub transfer_id: String,
    /// amount in US cents
    pub amount: i64,
    /// Lumanu funding id
    pub funding_id: String,
    /// the funding was already completed
    pub already_linked: bool,
    /// `duplicate_funding_deposit` alerts: deposits that paid other invoices carrying this
    /// saga's reference (absent when there are none)
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub alerts: Vec<Value>,
}

fn deposit_matches(t: &WalletTransaction, invoice_tag: Option<&str>, event_id: &str) -> bool {
    if t.transaction_type != Some(WalletTransactionType::Deposit) {
        return false;
    }
    match invoice_tag {
        // The deposit of an invoice carries its number; the event's transfer id alone could
        // name a transfer that is not ours.
        Some(tag) => t
            .description
            .as_deref()
            .is_some_and(|d| contains_tag(d, tag)),
        // Without an invoice number, only the transfer the correlated event names.
        None => !event_id.is_empty() && t.id == event_id,
    }
}

/// `#123` in `description`, not followed by another digit (so `#12` does not match `#123`).
fn contains_tag(description: &str, tag: &str) -> bool {
    description.match_indices(tag).any(|(i, _)| {
        !description[i + tag.len()..]
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_digit())
    })
}

#[async_trait]
impl Step for AwaitDeposit {
    type Params = DepositParams;
    type Output = DepositOutput;
    const NAME: &'static str = "lumanu.await_deposit";
    const DESCRIPTION: &'static str = "Waits for the deposit that pays the funding invoice.";

    async fn run(
        &self,
        ctx: &StepContext,
        params: DepositParams,
    ) -> Result<DepositOutput, StepOutcome> {
        let (workspace_id, funding_id) = (params.workspace_id.0, params.funding_id.0);
        let wait = |said: String| {
            let mut spec = WaitSpec::new(
                PROVIDER,
                "transfer.created",
                format!("funding:{funding_id}"),
            )
            .provider_status(said);
            spec.event_types.push("transfer.updated".to_owned());
            StepOutcome::Wait(spec)
        };
        let funding = match self.0.get_funding(&funding_id).await {
            Ok(f) => f,
            Err(e) => return Err(outcome_for("get funding", &e)),
        };
        // The event only says where to look: its transfer id, checked against the wallet.
        let event_transfer = match &ctx.wake {
            Wake::Event(ev) => ev
                .payload
                .pointer("/data/id")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned(),
            _ => String::new(),
        };
        let tag = funding.invoice_number.map(|n| format!("#{n}"));
        let funding_status = funding
            .status
            .as_ref()
            .map_or_else(|| "unknown".to_owned(), |s| s.to_string());
        if tag.is_none() && event_transfer.is_empty() {
            // Nothing to recognise the deposit by yet.
            return Err(wait(format!(
                "funding {funding_id} is {funding_status}, without an invoice number yet"
            )));
        }
        let found = self
            .0
            .find_wallet_transaction(&workspace_id, Some(WalletTransactionType::Deposit), |t| {
                deposit_matches(t, tag.as_deref(), &event_transfer)
            })
            .await;
        let deposit = match found {
            Ok(Some(t)) => t,
            Ok(None) => {
                return Err(wait(format!(
                    "funding {funding_id} is {funding_status}; no deposit for invoice {} yet",
                    tag.as_deref().unwrap_or("(no number)")
                )))
            }
            Err(e) => return Err(outcome_for("list wallet deposits", &e)),
        };
        if deposit.status != Some(WalletTransactionStatus::Processed) {
            return Err(wait(format!(
                "deposit {} is {}, not processed yet",
                deposit.id,
                deposit
                    .status
                    .as_ref()
                    .map_or_else(|| "unknown".to_owned(), |s| s.to_string())
            )));
        }
        if let Some(expected) = funding.amount {
            if deposit.amount != expected {
                return Err(StepOutcome::fail(format!(
                    "deposit {} for funding {funding_id} is {} cents, the invoice is {expected} \
                     cents: an operator must decide how to proceed",
                    deposit.id, deposit.amount
                )));
            }
        }
        // Other invoices carrying this saga's reference (a create retried after a timeout)
        // that were paid too: the workspace is funded twice. Surface each for an operator.
        let alerts = match reference_tag(funding.description.as_deref()) {
            Some(tag) => {
                let others = self
                    .0
                    .wallet_transactions_matching(
                        &workspace_id,
                        Some(WalletTransactionType::Deposit),
                        |t| {
                            t.id != deposit.id
                                && t.description.as_deref().is_some_and(|d| d.contains(tag))
                        },
                    )
                    .await;
                match others {
                    Ok(others) => others
                        .iter()
                        .map(|t| duplicate_alert(t, &workspace_id, &funding_id, tag))
                        .collect(),
                    Err(e) => {
                        return Err(outcome_for("look for deposits of duplicate invoices", &e))
                    }
                }
            }
            None => Vec::new(),
        };
        Ok(DepositOutput {
            transfer_id: deposit.id,
            amount: deposit.amount,
            funding_id,
            already_linked: funding.status == Some(FundingStatus::Completed),
            alerts,
        })
    }

    fn references(&self, output: &Value) -> Vec<(String, String)> {
        paysaga_core::output_references(output, &["transfer_id", "funding_id"])
    }
}

/// The `[ps-…]` reference a funding's description carries (see `lumanu.fund_invoice`).
fn reference_tag(description: Option<&str>) -> Option<&str> {
    let d = description?;
    let start = d.rfind("[ps-")?;
    let end = start + d[start..].find(']')?;
    Some(&d[start..=end])
}

/// The alert for a deposit that paid another invoice carrying the saga's reference.
fn duplicate_alert(
    t: &WalletTransaction,
    workspace_id: &str,
    funding_id: &str,
    tag: &str,
) -> Value {
    paysaga_core::alert(
        "duplicate_funding_deposit",
        format!(
            "deposit {} of {} cents paid another funding invoice carrying this saga's reference \
             {tag} into workspace {workspace_id} (the saga uses funding {funding_id}): the \
             workspace was funded twice; an operator refunds or reallocates the surplus",
            t.id, t.amount
        ),
        json!({
            "transfer_id": t.id,
            "amount": t.amount,
            "currency": "USD",
            "workspace_id": workspace_id,
            "other_funding_id": t.funding_id,
            "funding_id": funding_id,
            "reference": tag,
        }),
    )
}

// ---------------------------------------------------------------------------------------------

/// `lumanu.link_deposit`: links the deposit to its funding, making the balance available.
///
/// Params: `funding_id`, `transfer_id`. A repeat (409) counts as done when the funding is
/// `completed`. Output: `{funding_id, transfer_id, status}`.
#[derive(Debug, Clone)]
pub struct LinkDeposit(pub LumanuClient);

/// Parameters of `lumanu.link_deposit`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
pub struct LinkParams {
    /// Lumanu funding id
    pub funding_id: Id,
    /// deposit transfer id
    pub transfer_id: Id,
}

/// Output of `lumanu.link_deposit`.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct LinkOutput {
    /// Lumanu funding id
    pub funding_id: String,
    /// deposit transfer id
    pub transfer_id: String,
    /// funding status
    pub status: Option<String>,
}

#[async_trait]
impl Step for LinkDeposit {
    type Params = LinkParams;
    type Output = LinkOutput;
    const NAME: &'static str = "lumanu.link_deposit";
    const DESCRIPTION: &'static str = "Links the deposit to the funding invoice.";

    async fn run(&self, _ctx: &StepContext, params: LinkParams) -> Result<LinkOutput, StepOutcome> {
        let (funding_id, transfer_id) = (params.funding_id.0, params.transfer_id.0);
        match self
            .0
            .ensure_deposit_linked(&funding_id, &transfer_id)
            .await
        {
            Ok(funding) => Ok(LinkOutput {
                funding_id,
                transfer_id,
                status: funding.status.map(|s| s.to_string()),
            }),
            Err(e) => Err(outcome_for("link deposit", &e)),
        }
    }

    fn references(&self, output: &Value) -> Vec<(String, String)> {
        paysaga_core::output_references(output, &["funding_id", "transfer_id"])
    }
}

// ---------------------------------------------------------------------------------------------

/// `lumanu.create_payable`: creates the payable, at most once per saga.
///
/// Params: `workspace_id`, `amount` (cents), `currency` (`USD`), `description`, `payee`
/// `{email}` or `{lumanu_id}`, optional `due_date`. The description sent is
/// `"{description} [ps-{idempotency key}]"`; a run whose earlier attempt may have sent the
/// create ([`StepContext::earlier_send_possible`]) looks for a payable of the workspace with
/// exactly that description, before its own effect mark and again once the mark is granted
/// (after every earlier attempt's window), and sends only if there is none. Output: `{payable_id, amount, currency,
/// description, payable_status, existing}`.
///
/// Compensation cancels the payable (allowed while it is not approved or approved; a payable
/// already being paid cannot be cancelled and the compensation fails for an operator).
#[derive(Debug, Clone)]
pub struct CreatePayableStep(pub LumanuClient);

/// Parameters of `lumanu.create_payable`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
pub struct PayableParams {
    /// Lumanu workspace id
    pub workspace_id: Id,
    /// amount in minor units (US cents)
    pub amount: Amount,
    /// USD
    pub currency: Usd,
    /// payable description
    pub description: Text,
    /// the payee: an email or a lumanu_id
    pub payee: Payee,
    /// due date
    pub due_date: Option<Text>,
}

/// The payee of a Lumanu payable: exactly one of `email` and `lumanu_id`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
pub struct Payee {
    /// payee email
    pub email: Option<Email>,
    /// payee Lumanu id
    pub lumanu_id: Option<Id>,
}

/// The payee names exactly one of an email and a Lumanu id.
fn payee_rule(email: bool, lumanu_id: bool) -> Result<(), String> {
    match (email, lumanu_id) {
        (false, false) => Err("payee needs an email or a lumanu_id".to_owned()),
        (true, true) => Err("payee must have an email or a lumanu_id, not both".to_owned()),
        _ => Ok(()),
    }
}

impl PayableParams {
    fn request(self) -> Result<CreatePayable, String> {
        payee_rule(self.payee.email.is_some(), self.payee.lumanu_id.is_some())?;
        Ok(CreatePayable {
            workspace_id: self.workspace_id.0,
            payee_email: self.payee.email.map(|e| e.0),
            payee_lumanu_id: self.payee.lumanu_id.map(|i| i.0),
            amount: self.amount.get(),
            description: self.description.0,
            due_date: self.due_date.map(|t| t.0),
            custom_fields: None,
        })
    }
}

/// Output of `lumanu.create_payable`.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct PayableOutput {
    /// Lumanu payable id
    pub payable_id: String,
    /// amount in US cents
    pub amount: i64,
    /// USD
    pub currency: String,
    /// description (with the step's reference)
    pub description: Option<String>,
    /// payable status
    pub payable_status: Option<String>,
    /// found instead of created
    pub existing: bool,
}

fn payable_output(p: &Payable, existing: bool) -> PayableOutput {
    PayableOutput {
        payable_id: p.id.clone(),
        amount: p.amount,
        currency: "USD".to_owned(),
        description: p.description.clone(),
        payable_status: p.payable_status.as_ref().map(|s| s.to_string()),
        existing,
    }
}

#[async_trait]
impl Step for CreatePayableStep {
    type Params = PayableParams;
    type Output = PayableOutput;
    const NAME: &'static str = "lumanu.create_payable";
    const DESCRIPTION: &'static str =
        "Creates (or finds) a Lumanu payable to a payee (compensable: canceled).";

    /// A payee the input gives names exactly one of an email and a Lumanu id.
    fn validate(&self, params: &Value) -> Result<(), String> {
        match params.get("payee").filter(|p| p.is_object()) {
            Some(payee) => {
                let given = |name: &str| payee.get(name).is_some_and(|v| !v.is_null());
                payee_rule(given("email"), given("lumanu_id"))
            }
            None => Ok(()),
        }
    }

    async fn run(
        &self,
        ctx: &StepContext,
        params: PayableParams,
    ) -> Result<PayableOutput, StepOutcome> {
        let mut request = params
            .request()
            .map_err(|e| StepOutcome::fail(format!("invalid params: {e}")))?;
        request.description = tagged(&request.description, &reference(ctx));
        let find = || {
            self.0
                .find_payable_by_description(&request.workspace_id, &request.description)
        };
        let check = |p: Payable| {
            if p.amount != request.amount {
                Err(format!(
                    "payable {} carries this step's reference but is {} cents, not {}",
                    p.id, p.amount, request.amount
                ))
            } else {
                Ok(payable_output(&p, true))
            }
        };
        // Lumanu lists payables only by workspace: the look-up reads pages of every payable
        // of the workspace, so it runs only when an earlier attempt of this step may have
        // sent the create (a campaign's first attempts would otherwise cost n/100 pages each).
        let earlier = ctx.earlier_send_possible().await?;
        if earlier {
            // Found at once when the earlier attempt's create has landed (a takeover after a
            // crash): no wait for its effect window.
            match find().await {
                Ok(Some(existing)) => return check(existing).map_err(StepOutcome::fail),
                Ok(None) => {}
                Err(e) => return Err(outcome_for("look up payable by reference", &e)),
            }
        }
        // Lumanu cannot deduplicate the create: mark the attempt durably before sending, so
        // a worker that lost the saga while its request was out cannot leave a second payable.
        // The mark is granted only once every earlier attempt's window has closed (its
        // request, if sent, has landed or failed by then), so the look-up runs again after it:
        // the one above may have started inside that window, while a request was in flight.
        let permit = ctx.begin_effect().await?;
        if earlier {
            match find().await {
                Ok(Some(existing)) => return check(existing).map_err(StepOutcome::fail),
                Ok(None) => {}
                // The mark stays: the next attempt looks again (after this mark's window).
                Err(e) => return Err(outcome_for("look up payable by reference", &e)),
            }
        }
        match self
            .0
            .create_payable_before(&request, permit.send_by())
            .await
        {
            Ok(p) => Ok(payable_output(&p, false)),
            Err(e) if e.may_have_taken_effect() => match find().await {
                Ok(Some(existing)) => check(existing).map_err(StepOutcome::fail),
                _ => Err(retry_unknown_effect("create payable", &e)),
            },
            Err(e) => {
                // Refused before Lumanu acted (4xx, 429, no connection, not sent).
                ctx.effect_not_sent().await;
                Err(outcome_for("create payable", &e))
            }
        }
    }

    fn compensable(&self) -> bool {
        true
    }

    async fn compensate(&self, ctx: &StepContext, _params: PayableParams) -> StepOutcome {
        let Some(payable_id) = ctx
            .output
            .as_ref()
            .and_then(|o| o.get("payable_id"))
            .and_then(Value::as_str)
        else {
            return StepOutcome::fail(
                "cannot cancel the payable: the step's output has no payable_id",
            );
        };
        let payable = match self.0.get_payable(payable_id).await {
            Ok(p) => p,
            Err(e) => return outcome_for("get payable before cancelling", &e),
        };
        match payable.payable_status {
            Some(PayableStatus::Canceled) => {
                return StepOutcome::Done(json!({"payable_id": payable_id, "canceled": true}))
            }
            Some(PayableStatus::NotApproved) | Some(PayableStatus::Approved) | None => {}
            Some(other) => {
                return StepOutcome::fail(format!(
                    "cannot cancel payable {payable_id}: it is {other} (money may be on its way)"
                ))
            }
        }
        match self.0.cancel_payable(payable_id).await {
            Ok(p) => StepOutcome::Done(json!({
                "payable_id": payable_id,
                "canceled": p.payable_status == Some(PayableStatus::Canceled),
            })),
            Err(e) => outcome_for("cancel payable", &e),
        }
    }

    fn references(&self, output: &Value) -> Vec<(String, String)> {
        paysaga_core::output_references(output, &["payable_id"])
    }
}

// ---------------------------------------------------------------------------------------------

/// `lumanu.approve_payable`: approves the payable (a repeat is harmless: an approved payable
/// is not approved again). Params: `payable_id`. Output: `{payable_id, payable_status}`.
#[derive(Debug, Clone)]
pub struct ApprovePayable(pub LumanuClient);

/// Parameters of `lumanu.approve_payable` and `lumanu.await_payable_paid`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
pub struct PayableIdParams {
    /// Lumanu payable id
    pub payable_id: Id,
}

/// Output of `lumanu.approve_payable`.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct ApproveOutput {
    /// Lumanu payable id
    pub payable_id: String,
    /// payable status
    pub payable_status: String,
}

fn is_approved_or_later(p: &Payable) -> bool {
    matches!(
        p.payable_status,
        Some(
            PayableStatus::Approved
                | PayableStatus::Scheduled
                | PayableStatus::AwaitingPayment
                | PayableStatus::AwaitingPayee
                | PayableStatus::Paid
        )
    )
}

/// The payable is being paid or paid (a balance funding already covered it).
fn is_paying_or_paid(p: &Payable) -> bool {
    matches!(
        p.payable_status,
        Some(PayableStatus::Scheduled | PayableStatus::AwaitingPayment | PayableStatus::Paid)
    ) || matches!(
        p.status,
        Some(ApprovalStatus::WillPay | ApprovalStatus::Paid)
    )
}

fn status_of(p: &Payable) -> String {
    p.payable_status
        .as_ref()
        .map(|s| s.to_string())
        .unwrap_or_else(|| "unknown".to_owned())
}

#[async_trait]
impl Step for ApprovePayable {
    type Params = PayableIdParams;
    type Output = ApproveOutput;
    const NAME: &'static str = "lumanu.approve_payable";
    const DESCRIPTION: &'static str = "Approves a payable.";

    async fn run(
        &self,
        _ctx: &StepContext,
        params: PayableIdParams,
    ) -> Result<ApproveOutput, StepOutcome> {
        let payable_id = params.payable_id.0;
        let output = |p: &Payable| ApproveOutput {
            payable_id: payable_id.clone(),
            payable_status: status_of(p),
        };
        let payable = match self.0.get_payable(&payable_id).await {
            Ok(p) => p,
            Err(e) => return Err(outcome_for("get payable", &e)),
        };
        if is_approved_or_later(&payable) {
            return Ok(output(&payable));
        }
        if matches!(
            payable.payable_status,
            Some(PayableStatus::Canceled | PayableStatus::Reversed)
        ) {
            return Err(StepOutcome::fail(format!(
                "payable {payable_id} is {} and cannot be approved",
                status_of(&payable)
            )));
        }
        match self.0.approve_payable(&payable_id).await {
            Ok(p) => Ok(output(&p)),
            // Refused or unknown: another attempt of this step (a worker whose lease was taken
            // over while its call was in flight) may have approved it meanwhile. Look again.
            Err(e) => match self.0.get_payable(&payable_id).await {
                Ok(p) if is_approved_or_later(&p) => Ok(output(&p)),
                _ => Err(outcome_for("approve payable", &e)),
            },
        }
    }

    fn references(&self, output: &Value) -> Vec<(String, String)> {
        paysaga_core::output_references(output, &["payable_id"])
    }
}

// ---------------------------------------------------------------------------------------------

/// `lumanu.pay_from_balance`: pays the approved payable from the wallet balance. Irreversible.
///
/// Params: `workspace_id`, `payable_id`. Every run first reads the payable: one already being
/// paid or paid is not paid again (a crash after Lumanu's answer). After an error that may have
/// taken effect the payable is read again. Output: `{payable_id, funding_id, payable_status,
/// already_paid}`.
#[derive(Debug, Clone)]
pub struct PayFromBalance(pub LumanuClient);

/// Parameters of `lumanu.pay_from_balance`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
pub struct PayParams {
    /// Lumanu workspace id
    pub workspace_id: Id,
    /// Lumanu payable id
    pub payable_id: Id,
}

/// Output of `lumanu.pay_from_balance`.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct PayOutput {
    /// Lumanu payable id
    pub payable_id: String,
    /// funding id (none when it was paid already)
    pub funding_id: Option<String>,
    /// payable status
    pub payable_status: String,
    /// it was paid already
    pub already_paid: bool,
}

#[async_trait]
impl Step for PayFromBalance {
    type Params = PayParams;
    type Output = PayOutput;
    const NAME: &'static str = "lumanu.pay_from_balance";
    const DESCRIPTION: &'static str = "Pays a payable from the workspace balance (irreversible).";

    fn irreversible(&self) -> bool {
        true
    }

    async fn run(&self, _ctx: &StepContext, params: PayParams) -> Result<PayOutput, StepOutcome> {
        let (workspace_id, payable_id) = (params.workspace_id.0, params.payable_id.0);
        let already = |p: &Payable| PayOutput {
            payable_id: payable_id.clone(),
            funding_id: None,
            payable_status: status_of(p),
            already_paid: true,
        };
        let payable = match self.0.get_payable(&payable_id).await {
            Ok(p) => p,
            Err(e) => return Err(outcome_for("get payable before paying", &e)),
        };
        if is_paying_or_paid(&payable) {
            return Ok(already(&payable));
        }
        if payable.payable_status != Some(PayableStatus::Approved) {
            return Err(StepOutcome::fail(format!(
                "payable {payable_id} is {}, not approved: it cannot be paid",
                status_of(&payable)
            )));
        }
        match self
            .0
            .pay_from_balance(&workspace_id, std::slice::from_ref(&payable_id))
            .await
        {
            Ok(funding) => Ok(PayOutput {
                payable_id: payable_id.clone(),
                funding_id: Some(funding.id),
                payable_status: "awaiting_payment".to_owned(),
                already_paid: false,
            }),
            Err(e) if e.may_have_taken_effect() => match self.0.get_payable(&payable_id).await {
                Ok(p) if is_paying_or_paid(&p) => Ok(already(&p)),
                _ => Err(retry_unknown_effect("pay payable from balance", &e)),
            },
            // Refused (e.g. 422 "only approved payables can be paid"): another attempt of this
            // step (a worker whose lease was taken over while its call was in flight) may have
            // paid it meanwhile; that is this step done, not a failure to compensate. Found by
            // the long chaos run.
            Err(e) => match self.0.get_payable(&payable_id).await {
                Ok(p) if is_paying_or_paid(&p) => Ok(already(&p)),
                _ => Err(outcome_for("pay payable from balance", &e)),
            },
        }
    }

    fn references(&self, output: &Value) -> Vec<(String, String)> {
        paysaga_core::output_references(output, &["payable_id", "funding_id"])
    }
}

// ---------------------------------------------------------------------------------------------

/// `lumanu.await_payable_paid`: waits until the payable is `paid`.
///
/// Params: `payable_id`. Waits for `payable.paid` (and `payable.canceled`, which ends the wait
/// early) with key `payable:{payable_id}`, re-reading the payable on every run; `canceled` or
/// `reversed` fails. Output: `{payable_id, payable_status}`.
#[derive(Debug, Clone)]
pub struct AwaitPayablePaid(pub LumanuClient);

/// Output of `lumanu.await_payable_paid`.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct PaidOutput {
    /// Lumanu payable id
    pub payable_id: String,
    /// paid
    pub payable_status: String,
    /// amount in US cents
    pub amount: i64,
}

#[async_trait]
impl Step for AwaitPayablePaid {
    type Params = PayableIdParams;
    type Output = PaidOutput;
    const NAME: &'static str = "lumanu.await_payable_paid";
    const DESCRIPTION: &'static str = "Waits until the payable is paid.";

    async fn run(
        &self,
        _ctx: &StepContext,
        params: PayableIdParams,
    ) -> Result<PaidOutput, StepOutcome> {
        let payable_id = params.payable_id.0;
        let payable = match self.0.get_payable(&payable_id).await {
            Ok(p) => p,
            Err(e) => return Err(outcome_for("get payable", &e)),
        };
        match payable.payable_status {
            Some(PayableStatus::Paid) => Ok(PaidOutput {
                payable_status: "paid".to_owned(),
                amount: payable.amount,
                payable_id,
            }),
            Some(PayableStatus::Canceled | PayableStatus::Reversed) => {
                Err(StepOutcome::fail(format!(
                    "payable {payable_id} is {} instead of paid",
                    status_of(&payable)
                )))
            }
            _ => {
                let mut spec =
                    WaitSpec::new(PROVIDER, "payable.paid", format!("payable:{payable_id}"))
                        .provider_status(format!(
                            "payable {payable_id} is {}",
                            status_of(&payable)
                        ));
                spec.event_types.push("payable.canceled".to_owned());
                Err(StepOutcome::Wait(spec))
            }
        }
    }

    fn references(&self, output: &Value) -> Vec<(String, String)> {
        paysaga_core::output_references(output, &["payable_id"])
    }
}

// ---------------------------------------------------------------------------------------------
// The campaign flow (`workflows/lumanu_campaign.toml`): the payables the children of a fan-out
// created and approved are paid together from the balance, then awaited together.

/// How many payables one balance funding pays when the step does not say. Lumanu documents
/// `payable_ids` as an array without a maximum; 100 matches its documented list page limit and
/// keeps one request small.
pub const DEFAULT_PAYABLES_PER_FUNDING: usize = 100;

/// Most excluded creators listed in an output (the count is always complete).
const EXCLUDED_LISTED: usize = 100;

/// One creator of a campaign as the fan-out's `$.children.<step>` array shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct CampaignPayable {
    key: String,
    payable_id: String,
    amount: i64,
}

/// The creators of a campaign: those whose child completed (with the payable its
/// `payable_step` created) and the others (`{key, status}`), in item order.
#[derive(Debug)]
struct Campaign {
    payables: Vec<CampaignPayable>,
    excluded: Vec<Value>,
}

/// The fan-out's children as `$.children.<fan-out step>` gives them: a list (the array of
/// that path's matches, itself holding the children's array, is flattened).
#[derive(Debug, Clone, Default)]
pub struct Children(pub Vec<Value>);

impl<'de> Deserialize<'de> for Children {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match Value::deserialize(d)? {
            // A `$.children...` path resolves to the array of its matches: `$.children.<step>`
            // is one match, the children's array.
            Value::Array(items) => Ok(Children(
                items
                    .into_iter()
                    .flat_map(|item| match item {
                        Value::Array(inner) => inner,
                        other => vec![other],
                    })
                    .collect(),
            )),
            _ => Err(serde::de::Error::custom("must be a list")),
        }
    }
}

impl JsonSchema for Children {
    fn schema_name() -> Cow<'static, str> {
        Cow::Borrowed("Children")
    }
    fn inline_schema() -> bool {
        true
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({"type": "array"})
    }
}

/// How many payables one balance funding pays: a whole number from 1 to 10000.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PayablesPerFunding(pub usize);

impl<'de> Deserialize<'de> for PayablesPerFunding {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match Value::deserialize(d)?.as_u64() {
            Some(n @ 1..=10_000) => Ok(PayablesPerFunding(n as usize)),
            _ => Err(serde::de::Error::custom(
                "must be a whole number from 1 to 10000",
            )),
        }
    }
}

impl JsonSchema for PayablesPerFunding {
    fn schema_name() -> Cow<'static, str> {
        Cow::Borrowed("PayablesPerFunding")
    }
    fn inline_schema() -> bool {
        true
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({"type": "integer", "minimum": 1, "maximum": 10_000})
    }
}

/// Parameters of `lumanu.pay_campaign`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
pub struct PayCampaignParams {
    /// Lumanu workspace id
    pub workspace_id: Id,
    /// the fan-out's children ($.children.<fan-out step>)
    pub children: Children,
    /// the child step that created the payable (default create_payable)
    pub payable_step: Option<Text>,
    /// US cents the campaign was funded with
    pub funded: Amount,
    /// most payables per balance funding (default 100)
    pub payables_per_funding: Option<PayablesPerFunding>,
}

/// Parameters of `lumanu.await_campaign_paid`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
pub struct AwaitCampaignParams {
    /// Lumanu workspace id
    pub workspace_id: Id,
    /// the fan-out's children ($.children.<fan-out step>)
    pub children: Children,
    /// the child step that created the payable (default create_payable)
    pub payable_step: Option<Text>,
}

/// The child step that created the payable.
fn payable_step(given: Option<Text>) -> String {
    given.map_or_else(|| "create_payable".to_owned(), |t| t.0)
}

/// Output of `lumanu.pay_campaign`.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct PayCampaignOutput {
    /// payables being paid or paid
    pub paid_count: usize,
    /// their sum in US cents
    pub total: i64,
    /// US cents the campaign was funded with
    pub funded: i64,
    /// USD
    pub currency: String,
    /// the balance fundings this attempt made
    pub fundings: Vec<String>,
    /// payables found being paid or paid before this attempt sent any
    pub already_paid: usize,
    /// creators not paid
    pub excluded_count: usize,
    /// creators not paid, `{key, status, ...}` (at most 100)
    pub excluded: Vec<Value>,
}

/// Output of `lumanu.await_campaign_paid`.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct CampaignPaidOutput {
    /// payables paid
    pub paid_count: usize,
    /// their sum in US cents
    pub total: i64,
    /// USD
    pub currency: String,
}

fn campaign(children: &[Value], payable_step: &str) -> Result<Campaign, String> {
    let mut payables = Vec::new();
    let mut excluded = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for child in children {
        let key = match &child["key"] {
            Value::String(s) => s.clone(),
            Value::Null => String::new(),
            other => other.to_string(),
        };
        let status = child["status"].as_str().unwrap_or("unknown");
        if status != "completed" {
            excluded.push(json!({"key": key, "status": status, "saga_id": child["saga_id"]}));
            continue;
        }
        let out = &child["steps"][payable_step];
        let (Some(payable_id), Some(amount)) = (out["payable_id"].as_str(), out["amount"].as_i64())
        else {
            return Err(format!(
                "child {key:?} completed but its step {payable_step:?} has no payable_id and \
                 amount: is payable_step the child workflow's lumanu.create_payable step?"
            ));
        };
        if !seen.insert(payable_id.to_owned()) {
            return Err(format!(
                "payable {payable_id} belongs to two creators (child {key:?}): not paying"
            ));
        }
        payables.push(CampaignPayable {
            key,
            payable_id: payable_id.to_owned(),
            amount,
        });
    }
    Ok(Campaign { payables, excluded })
}

/// The current state of `ids`: one listing of the workspace (a few pages), then a `GET` for
/// any the listing did not show.
async fn payable_states(
    client: &LumanuClient,
    workspace_id: &str,
    ids: &[&str],
) -> crate::Result<std::collections::HashMap<String, Payable>> {
    let wanted: std::collections::HashSet<&str> = ids.iter().copied().collect();
    let mut states: std::collections::HashMap<String, Payable> = client
        .all_payables(workspace_id)
        .await?
        .into_iter()
        .filter(|p| wanted.contains(p.id.as_str()))
        .map(|p| (p.id.clone(), p))
        .collect();
    for id in ids {
        if !states.contains_key(*id) {
            let p = client.get_payable(id).await?;
            states.insert(p.id.clone(), p);
        }
    }
    Ok(states)
}

fn excluded_output(excluded: &[Value]) -> Vec<Value> {
    excluded.iter().take(EXCLUDED_LISTED).cloned().collect()
}

/// `lumanu.pay_campaign`: pays every approved payable of a campaign's completed children from
/// the balance, in as few balance fundings as possible. Irreversible.
///
/// Params: `workspace_id`, `children` (`$.children.<fan-out step>`), `payable_step` (the child
/// step whose output has `payable_id` and `amount`; default `create_payable`), `funded` (cents
/// the campaign was funded with), `payables_per_funding` (default
/// [`DEFAULT_PAYABLES_PER_FUNDING`]).
///
/// Before paying anything it checks that the campaign's payables add up to no more than
/// `funded` and that those still to pay fit in the available balance (else it fails, nothing
/// paid). Every run first reads the payables' state: one already being paid or paid is never
/// sent again, so a run again after a crash sends only what is left; Lumanu refuses a funding
/// naming a payable that is not `approved`, so two attempts racing cannot pay one twice.
/// Creators whose child did not complete, and payables no longer approved (cancelled by an
/// operator), are excluded and reported. Output: `{paid_count, total, funded, fundings,
/// already_paid, excluded_count, excluded: [{key, status, ...}] (at most 100), currency}`.
#[derive(Debug, Clone)]
pub struct PayCampaign(pub LumanuClient);

#[async_trait]
impl Step for PayCampaign {
    type Params = PayCampaignParams;
    type Output = PayCampaignOutput;
    const NAME: &'static str = "lumanu.pay_campaign";
    const DESCRIPTION: &'static str =
        "Pays a campaign's approved payables from the balance in batches (irreversible).";

    fn irreversible(&self) -> bool {
        true
    }

    async fn run(
        &self,
        _ctx: &StepContext,
        params: PayCampaignParams,
    ) -> Result<PayCampaignOutput, StepOutcome> {
        let workspace_id = params.workspace_id.0;
        let funded = params.funded.get();
        let batch_size = params
            .payables_per_funding
            .map_or(DEFAULT_PAYABLES_PER_FUNDING, |b| b.0);
        let Campaign {
            payables,
            mut excluded,
        } = match campaign(&params.children.0, &payable_step(params.payable_step)) {
            Ok(c) => c,
            Err(e) => return Err(StepOutcome::fail(e)),
        };
        let total: i64 = payables.iter().map(|c| c.amount).sum();
        if total > funded {
            return Err(StepOutcome::fail(format!(
                "the campaign's {} payables add up to {total} cents, more than the {funded} \
                 cents funded: nothing paid; an operator funds the difference or cancels \
                 payables, then retries this step",
                payables.len()
            )));
        }
        let ids: Vec<&str> = payables.iter().map(|c| c.payable_id.as_str()).collect();
        let states = match payable_states(&self.0, &workspace_id, &ids).await {
            Ok(s) => s,
            Err(e) => return Err(outcome_for("read the campaign's payables", &e)),
        };
        let mut to_pay: Vec<&CampaignPayable> = Vec::new();
        let mut paying = 0usize;
        let mut paying_total = 0i64;
        for c in &payables {
            let Some(state) = states.get(&c.payable_id) else {
                continue;
            };
            if is_paying_or_paid(state) {
                paying += 1;
                paying_total += c.amount;
            } else if state.payable_status == Some(PayableStatus::Approved) {
                to_pay.push(c);
            } else {
                excluded.push(json!({
                    "key": c.key,
                    "status": "completed",
                    "payable_id": c.payable_id,
                    "payable_status": status_of(state),
                }));
            }
        }
        let already_paid = paying;
        let mut fundings = Vec::new();
        if !to_pay.is_empty() {
            let needed: i64 = to_pay.iter().map(|c| c.amount).sum();
            let available = match self.0.get_wallet(&workspace_id).await {
                Ok(w) => w.available_balance.or(w.balance).unwrap_or(0),
                Err(e) => return Err(outcome_for("read the wallet balance", &e)),
            };
            if needed > available {
                return Err(StepOutcome::fail(format!(
                    "{} payables still to pay need {needed} cents, the workspace {} has \
                     {available} available: nothing more paid ({paying} already paid); an \
                     operator funds the balance, then retries this step",
                    to_pay.len(),
                    workspace_id
                )));
            }
            to_pay.sort_by(|a, b| a.payable_id.cmp(&b.payable_id));
            for batch in to_pay.chunks(batch_size) {
                let batch_ids: Vec<String> = batch.iter().map(|c| c.payable_id.clone()).collect();
                match self.0.pay_from_balance(&workspace_id, &batch_ids).await {
                    Ok(funding) => fundings.push(funding.id),
                    Err(e) => {
                        // Another attempt (a worker whose lease was taken over) may have paid
                        // this batch meanwhile: that is this batch done. Otherwise the next
                        // attempt reads the payables again and sends only what is left.
                        let ids: Vec<&str> = batch_ids.iter().map(String::as_str).collect();
                        match payable_states(&self.0, &workspace_id, &ids).await {
                            Ok(s) if s.values().all(is_paying_or_paid) && s.len() == ids.len() => {}
                            _ if e.may_have_taken_effect() => {
                                return Err(retry_unknown_effect(
                                    &format!(
                                        "pay {} campaign payables from balance",
                                        batch_ids.len()
                                    ),
                                    &e,
                                ))
                            }
                            _ => {
                                return Err(outcome_for(
                                    &format!(
                                        "pay {} campaign payables from balance ({} of {} \
                                         batches sent by this attempt)",
                                        batch_ids.len(),
                                        fundings.len(),
                                        to_pay.len().div_ceil(batch_size)
                                    ),
                                    &e,
                                ))
                            }
                        }
                    }
                }
                paying += batch.len();
                paying_total += batch.iter().map(|c| c.amount).sum::<i64>();
            }
        }
        Ok(PayCampaignOutput {
            paid_count: paying,
            total: paying_total,
            funded,
            currency: "USD".to_owned(),
            fundings,
            already_paid,
            excluded_count: excluded.len(),
            excluded: excluded_output(&excluded),
        })
    }
}

/// `lumanu.await_campaign_paid`: waits until every payable of a campaign's completed children
/// that is being paid is `paid`.
///
/// Params: `workspace_id`, `children`, `payable_step` (as `lumanu.pay_campaign`). Every run
/// (start, event, poll) reads the payables (one listing of the workspace); while some are not
/// paid it waits for `payable.paid` of the first of them (key `payable:{id}`), the poll
/// covering the rest. Payables that were never paid (cancelled: excluded by the pay step) are
/// not awaited; a reversed one fails the step for an operator. Output: `{paid_count, total,
/// currency}`.
#[derive(Debug, Clone)]
pub struct AwaitCampaignPaid(pub LumanuClient);

#[async_trait]
impl Step for AwaitCampaignPaid {
    type Params = AwaitCampaignParams;
    type Output = CampaignPaidOutput;
    const NAME: &'static str = "lumanu.await_campaign_paid";
    const DESCRIPTION: &'static str =
        "Waits until every payable of a campaign that is being paid is paid.";

    async fn run(
        &self,
        _ctx: &StepContext,
        params: AwaitCampaignParams,
    ) -> Result<CampaignPaidOutput, StepOutcome> {
        let workspace_id = params.workspace_id.0;
        let Campaign { payables, .. } =
            match campaign(&params.children.0, &payable_step(params.payable_step)) {
                Ok(c) => c,
                Err(e) => return Err(StepOutcome::fail(e)),
            };
        let ids: Vec<&str> = payables.iter().map(|c| c.payable_id.as_str()).collect();
        let states = match payable_states(&self.0, &workspace_id, &ids).await {
            Ok(s) => s,
            Err(e) => return Err(outcome_for("read the campaign's payables", &e)),
        };
        let mut paid = 0usize;
        let mut total = 0i64;
        let mut pending: Vec<(&str, String)> = Vec::new();
        for c in &payables {
            let Some(state) = states.get(&c.payable_id) else {
                continue;
            };
            match state.payable_status {
                Some(PayableStatus::Paid) => {
                    paid += 1;
                    total += state.amount;
                }
                Some(PayableStatus::Reversed) => {
                    return Err(StepOutcome::fail(format!(
                        "payable {} of creator {:?} was reversed after payment: an operator \
                         decides whether to pay the creator again",
                        c.payable_id, c.key
                    )))
                }
                _ if is_paying_or_paid(state) => {
                    pending.push((c.payable_id.as_str(), status_of(state)));
                }
                // Never sent for payment (cancelled, excluded by the pay step).
                _ => {}
            }
        }
        match pending.first() {
            None => Ok(CampaignPaidOutput {
                paid_count: paid,
                total,
                currency: "USD".to_owned(),
            }),
            Some((first, status)) => Err(StepOutcome::Wait(
                WaitSpec::new(PROVIDER, "payable.paid", format!("payable:{first}"))
                    .provider_status(format!(
                        "{paid} paid, {} not yet (payable {first} is {status})",
                        pending.len()
                    )),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reference_tags_are_read_from_descriptions() {
        assert_eq!(
            reference_tag(Some("Payout 7 [ps-0b1c] [ps-1234-ab]")),
            Some("[ps-1234-ab]")
        );
        assert_eq!(reference_tag(Some("no tag")), None);
        assert_eq!(reference_tag(Some("[ps-open")), None);
        assert_eq!(reference_tag(None), None);
    }

    fn child(key: &str, status: &str, payable: Option<(&str, i64)>) -> Value {
        let steps = match payable {
            Some((id, amount)) => {
                json!({"create_payable": {"payable_id": id, "amount": amount}, "approve_payable": {}})
            }
            None => json!({}),
        };
        json!({"key": key, "index": 0, "saga_id": null, "status": status, "steps": steps})
    }

    #[test]
    fn campaign_pays_completed_children_and_excludes_the_others() {
        let children = vec![
            child("a", "completed", Some(("p1", 100))),
            child("b", "compensated", None),
            child("c", "completed", Some(("p2", 250))),
        ];
        let c = campaign(&children, "create_payable").unwrap();
        assert_eq!(
            c.payables,
            vec![
                CampaignPayable {
                    key: "a".into(),
                    payable_id: "p1".into(),
                    amount: 100
                },
                CampaignPayable {
                    key: "c".into(),
                    payable_id: "p2".into(),
                    amount: 250
                },
            ]
        );
        assert_eq!(c.excluded.len(), 1);
        assert_eq!(c.excluded[0]["key"], "b");
        assert_eq!(c.excluded[0]["status"], "compensated");
    }

    #[test]
    fn campaign_refuses_a_payable_named_by_two_creators_or_a_missing_payable() {
        let twice = vec![
            child("a", "completed", Some(("p1", 100))),
            child("b", "completed", Some(("p1", 100))),
        ];
        assert!(campaign(&twice, "create_payable")
            .unwrap_err()
            .contains("two creators"));
        let missing = vec![child("a", "completed", None)];
        assert!(campaign(&missing, "create_payable")
            .unwrap_err()
            .contains("payable_step"));
    }

    #[test]
    fn campaign_children_given_as_the_array_of_matches_are_flattened() {
        let params = json!({
            "workspace_id": "ws",
            "children": [[child("a", "completed", Some(("p1", 100)))]],
            "funded": 100,
        });
        let p: PayCampaignParams = paysaga_core::from_params(params).unwrap();
        assert_eq!(p.children.0.len(), 1);
        assert_eq!(p.payables_per_funding, None);
        let bad = json!({"workspace_id": "ws", "children": [], "funded": 100,
                         "payables_per_funding": 0});
        let e = paysaga_core::from_params::<PayCampaignParams>(bad).unwrap_err();
        assert!(
            e.contains("payables_per_funding") && e.contains("from 1 to 10000"),
            "{e}"
        );
    }

    fn kind(name: &str) -> Arc<dyn StepKind> {
        super::super::validation_kinds()
            .into_iter()
            .find(|k| k.name() == name)
            .expect("registered")
    }

    #[test]
    fn lumanu_schemas_are_derived_with_nested_fields() {
        let schema = kind("lumanu.fund_invoice").schema().expect("typed");
        let field = |path: &str| {
            schema
                .params
                .iter()
                .find(|f| f.path == path)
                .unwrap_or_else(|| panic!("{path} in {:?}", schema.params))
        };
        assert!(field("invoice.recipient_email").required);
        assert!(!field("invoice.po_number").required);
        assert_eq!(field("amount").ty, paysaga_core::FieldType::Integer);
        assert_eq!(field("currency").ty, paysaga_core::FieldType::String);
        let payable = kind("lumanu.create_payable").schema().expect("typed");
        let paths: Vec<&str> = payable.params.iter().map(|f| f.path).collect();
        assert!(
            paths.contains(&"payee.email") && paths.contains(&"payee.lumanu_id"),
            "{paths:?}"
        );
        let campaign = kind("lumanu.pay_campaign").schema().expect("typed");
        let children = campaign
            .params
            .iter()
            .find(|f| f.path == "children")
            .expect("children");
        assert_eq!(children.ty, paysaga_core::FieldType::Array);
        assert!(campaign
            .params
            .iter()
            .any(|f| f.path == "funded" && f.required));
        // The deposit's alerts go where the engine reads them.
        assert_eq!(paysaga_core::ALERTS_FIELD, "alerts");
    }

    #[test]
    fn payee_and_currency_rules_are_checked_at_start() {
        let create = kind("lumanu.create_payable");
        let base = json!({"workspace_id": "w", "amount": 100, "currency": "usd",
                          "description": "d", "payee": {"lumanu_id": "lum_1"}});
        assert_eq!(create.validate(&base), Ok(()));
        let mut both = base.clone();
        both["payee"]["email"] = json!("a@b.co");
        let e = create.validate(&both).unwrap_err();
        assert!(e.contains("not both"), "{e}");
        let mut eur = base.clone();
        eur["currency"] = json!("EUR");
        let e = create.validate(&eur).unwrap_err();
        assert!(e.contains("currency") && e.contains("must be USD"), "{e}");
        let mut deferred = base;
        deferred["payee"] = json!(null); // decided by an earlier step
        deferred["currency"] = json!(null);
        assert_eq!(create.validate(&deferred), Ok(()));
    }

    #[test]
    fn invoice_tags_do_not_match_prefixes() {
        assert!(contains_tag("Invoice #123 paid", "#123"));
        assert!(contains_tag("Deposit for invoice #123", "#123"));
        assert!(!contains_tag("Invoice #1234 paid", "#123"));
        assert!(contains_tag("#12 and #123", "#123"));
    }
}
