//! Lumanu step kinds: the pre-funding flow (`workflows/lumanu_prefund.toml`).
//!
//! fund (invoice) -> wait for its deposit -> link the deposit -> create payable -> approve ->
//! pay from balance -> wait for `payable.paid`. Amounts are integer US cents; Lumanu pays in
//! USD only, so `currency` must be `USD`.

use std::sync::Arc;

use async_trait::async_trait;
use paysaga_core::{StepContext, StepKind, StepOutcome, WaitSpec, Wake};
use serde_json::{json, Value};

use super::common::{outcome_for, params, reference, retry_unknown_effect, tagged, Fields, Mode};
use crate::lumanu::{
    ApprovalStatus, CreatePayable, Funding, FundingStatus, InvoiceFunding, LumanuClient, Payable,
    PayableStatus, WalletTransaction, WalletTransactionStatus, WalletTransactionType,
};

const PROVIDER: &str = "lumanu";

/// The Lumanu step kinds, sharing `client`.
pub fn kinds(client: &LumanuClient) -> Vec<Arc<dyn StepKind>> {
    vec![
        Arc::new(FundInvoice(client.clone())),
        Arc::new(AwaitDeposit(client.clone())),
        Arc::new(LinkDeposit(client.clone())),
        Arc::new(CreatePayableStep(client.clone())),
        Arc::new(ApprovePayable(client.clone())),
        Arc::new(PayFromBalance(client.clone())),
        Arc::new(AwaitPayablePaid(client.clone())),
    ]
}

fn usd(f: &Fields<'_>, name: &str) -> Result<String, String> {
    let code = f.currency(name)?;
    if f.mode() == Mode::Validate && code == "XXX" {
        return Ok(code);
    }
    if code == "USD" {
        Ok(code)
    } else {
        Err(format!(
            "{} must be USD: Lumanu pays in US cents (got {code})",
            f.path(name)
        ))
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

struct FundParams {
    workspace_id: String,
    amount: i64,
    description: String,
    invoice: InvoiceFunding,
}

fn fund_params(f: &Fields<'_>) -> Result<FundParams, String> {
    let workspace_id = f.id("workspace_id")?;
    let amount = f.amount("amount")?;
    usd(f, "currency")?;
    let description = f.string("description")?;
    let inv = f.object("invoice")?;
    let invoice = InvoiceFunding {
        workspace_id: workspace_id.clone(),
        amount,
        amount_denomination: Some("us_cents".to_owned()),
        description: String::new(),
        recipient_email: inv.email("recipient_email")?,
        bill_to: inv.string("bill_to")?,
        company_name: inv.string("company_name")?,
        company_address_one: inv.string("company_address_one")?,
        due_date: inv.opt_string("due_date")?,
        po_number: inv.opt_string("po_number")?,
        additional_notes: None,
    };
    Ok(FundParams {
        workspace_id,
        amount,
        description,
        invoice,
    })
}

#[async_trait]
impl StepKind for FundInvoice {
    fn name(&self) -> &'static str {
        "lumanu.fund_invoice"
    }

    fn schema(&self) -> Option<paysaga_core::KindSchema> {
        Some(paysaga_core::KindSchema {
            description: "Creates (or finds) a Lumanu funding invoice for the workspace balance.",
            params: vec![
                paysaga_core::FieldSpec::required(
                    "workspace_id",
                    paysaga_core::FieldType::String,
                    "Lumanu workspace id",
                ),
                paysaga_core::FieldSpec::required(
                    "amount",
                    paysaga_core::FieldType::Integer,
                    "amount in US cents",
                ),
                paysaga_core::FieldSpec::required(
                    "currency",
                    paysaga_core::FieldType::String,
                    "USD",
                ),
                paysaga_core::FieldSpec::required(
                    "description",
                    paysaga_core::FieldType::String,
                    "invoice description",
                ),
                paysaga_core::FieldSpec::required(
                    "invoice",
                    paysaga_core::FieldType::Object,
                    "who the invoice is for",
                ),
                paysaga_core::FieldSpec::required(
                    "invoice.recipient_email",
                    paysaga_core::FieldType::String,
                    "email address",
                ),
                paysaga_core::FieldSpec::required(
                    "invoice.bill_to",
                    paysaga_core::FieldType::String,
                    "bill to",
                ),
                paysaga_core::FieldSpec::required(
                    "invoice.company_name",
                    paysaga_core::FieldType::String,
                    "company name",
                ),
                paysaga_core::FieldSpec::required(
                    "invoice.company_address_one",
                    paysaga_core::FieldType::String,
                    "company address",
                ),
                paysaga_core::FieldSpec::optional(
                    "invoice.due_date",
                    paysaga_core::FieldType::String,
                    "due date",
                ),
                paysaga_core::FieldSpec::optional(
                    "invoice.po_number",
                    paysaga_core::FieldType::String,
                    "purchase order number",
                ),
            ],
            outputs: vec![
                paysaga_core::FieldSpec::required(
                    "funding_id",
                    paysaga_core::FieldType::String,
                    "Lumanu funding id",
                ),
                paysaga_core::FieldSpec::optional(
                    "invoice_number",
                    paysaga_core::FieldType::String,
                    "invoice number",
                ),
                paysaga_core::FieldSpec::required(
                    "amount",
                    paysaga_core::FieldType::Integer,
                    "amount in US cents",
                ),
                paysaga_core::FieldSpec::required(
                    "currency",
                    paysaga_core::FieldType::String,
                    "USD",
                ),
                paysaga_core::FieldSpec::optional(
                    "status",
                    paysaga_core::FieldType::String,
                    "funding status",
                ),
            ],
        })
    }

    fn validate(&self, params: &Value) -> Result<(), String> {
        Fields::new(params, Mode::Validate).and_then(|f| fund_params(&f).map(|_| ()))
    }

    async fn run(&self, ctx: &StepContext, params: Value) -> StepOutcome {
        let p = params!(&params, Mode::Run, fund_params);
        let reference = reference(ctx);
        let description = tagged(&p.description, &reference);
        let output = |funding: &Funding, existing: bool| {
            json!({
                "funding_id": funding.id,
                "invoice_number": funding.invoice_number,
                "amount": funding.amount.unwrap_or(p.amount),
                "currency": "USD",
                "status": funding.status.as_ref().map(|s| s.to_string()),
                "workspace_id": p.workspace_id,
                "description": description,
                "existing": existing,
            })
        };
        // Look first: an earlier attempt's invoice, once paid, shows as a deposit carrying the
        // reference.
        let tag = format!("[{reference}]");
        let earlier = self
            .0
            .find_wallet_transaction(&p.workspace_id, Some(WalletTransactionType::Deposit), |t| {
                t.description.as_deref().is_some_and(|d| d.contains(&tag))
            })
            .await;
        match earlier {
            Ok(Some(deposit)) => {
                let Some(funding_id) = deposit.funding_id.clone() else {
                    return StepOutcome::fail(format!(
                        "an earlier attempt's funding invoice {description:?} was paid (deposit \
                         {}, {} cents) but Lumanu does not say which funding it paid: not \
                         invoicing again; an operator links the deposit by hand and skips this \
                         step with its funding_id",
                        deposit.id, deposit.amount
                    ));
                };
                let funding = match self.0.get_funding(&funding_id).await {
                    Ok(f) => f,
                    Err(e) => return outcome_for("get the earlier attempt's funding", &e),
                };
                if funding.amount.is_some_and(|a| a != p.amount) {
                    return StepOutcome::fail(format!(
                        "funding {funding_id} carries this step's reference but is {} cents, not \
                         {}",
                        funding.amount.unwrap_or_default(),
                        p.amount
                    ));
                }
                return StepOutcome::Done(output(&funding, true));
            }
            Ok(None) => {}
            Err(e) => return outcome_for("look for an earlier invoice's deposit", &e),
        }
        let invoice = InvoiceFunding {
            description: description.clone(),
            ..p.invoice
        };
        // Lumanu cannot deduplicate the create: mark the attempt durably before sending.
        let permit = match ctx.begin_effect().await {
            Ok(permit) => permit,
            Err(outcome) => return outcome,
        };
        match self
            .0
            .create_invoice_funding_before(invoice, permit.send_by())
            .await
        {
            Ok(funding) => StepOutcome::Done(output(&funding, false)),
            Err(e) if e.may_have_taken_effect() => retry_unknown_effect(
                &format!(
                    "create funding invoice (an invoice described {description:?} may exist; \
                     a second one is surfaced as an alert if it is paid)"
                ),
                &e,
            ),
            Err(e) => {
                // Refused before Lumanu acted (4xx, 429, no connection, not sent).
                ctx.effect_not_sent().await;
                outcome_for("create funding invoice", &e)
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

fn deposit_params(f: &Fields<'_>) -> Result<(String, String), String> {
    Ok((f.id("workspace_id")?, f.id("funding_id")?))
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
impl StepKind for AwaitDeposit {
    fn name(&self) -> &'static str {
        "lumanu.await_deposit"
    }

    fn schema(&self) -> Option<paysaga_core::KindSchema> {
        Some(paysaga_core::KindSchema {
            description: "Waits for the deposit that pays the funding invoice.",
            params: vec![
                paysaga_core::FieldSpec::required(
                    "workspace_id",
                    paysaga_core::FieldType::String,
                    "Lumanu workspace id",
                ),
                paysaga_core::FieldSpec::required(
                    "funding_id",
                    paysaga_core::FieldType::String,
                    "Lumanu funding id",
                ),
            ],
            outputs: vec![
                paysaga_core::FieldSpec::required(
                    "transfer_id",
                    paysaga_core::FieldType::String,
                    "deposit transfer id",
                ),
                paysaga_core::FieldSpec::required(
                    "amount",
                    paysaga_core::FieldType::Integer,
                    "amount in US cents",
                ),
                paysaga_core::FieldSpec::required(
                    "funding_id",
                    paysaga_core::FieldType::String,
                    "Lumanu funding id",
                ),
                paysaga_core::FieldSpec::required(
                    "already_linked",
                    paysaga_core::FieldType::Boolean,
                    "the funding was already completed",
                ),
            ],
        })
    }

    fn validate(&self, params: &Value) -> Result<(), String> {
        Fields::new(params, Mode::Validate).and_then(|f| deposit_params(&f).map(|_| ()))
    }

    async fn run(&self, ctx: &StepContext, params: Value) -> StepOutcome {
        let (workspace_id, funding_id) = params!(&params, Mode::Run, deposit_params);
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
            Err(e) => return outcome_for("get funding", &e),
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
            return wait(format!(
                "funding {funding_id} is {funding_status}, without an invoice number yet"
            ));
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
                return wait(format!(
                    "funding {funding_id} is {funding_status}; no deposit for invoice {} yet",
                    tag.as_deref().unwrap_or("(no number)")
                ))
            }
            Err(e) => return outcome_for("list wallet deposits", &e),
        };
        if deposit.status != Some(WalletTransactionStatus::Processed) {
            return wait(format!(
                "deposit {} is {}, not processed yet",
                deposit.id,
                deposit
                    .status
                    .as_ref()
                    .map_or_else(|| "unknown".to_owned(), |s| s.to_string())
            ));
        }
        if let Some(expected) = funding.amount {
            if deposit.amount != expected {
                return StepOutcome::fail(format!(
                    "deposit {} for funding {funding_id} is {} cents, the invoice is {expected} \
                     cents: an operator must decide how to proceed",
                    deposit.id, deposit.amount
                ));
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
                    Err(e) => return outcome_for("look for deposits of duplicate invoices", &e),
                }
            }
            None => Vec::new(),
        };
        let mut output = json!({
            "transfer_id": deposit.id,
            "amount": deposit.amount,
            "funding_id": funding_id,
            "already_linked": funding.status == Some(FundingStatus::Completed),
        });
        if !alerts.is_empty() {
            output[paysaga_core::ALERTS_FIELD] = Value::Array(alerts);
        }
        StepOutcome::Done(output)
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

fn link_params(f: &Fields<'_>) -> Result<(String, String), String> {
    Ok((f.id("funding_id")?, f.id("transfer_id")?))
}

#[async_trait]
impl StepKind for LinkDeposit {
    fn name(&self) -> &'static str {
        "lumanu.link_deposit"
    }

    fn schema(&self) -> Option<paysaga_core::KindSchema> {
        Some(paysaga_core::KindSchema {
            description: "Links the deposit to the funding invoice.",
            params: vec![
                paysaga_core::FieldSpec::required(
                    "funding_id",
                    paysaga_core::FieldType::String,
                    "Lumanu funding id",
                ),
                paysaga_core::FieldSpec::required(
                    "transfer_id",
                    paysaga_core::FieldType::String,
                    "deposit transfer id",
                ),
            ],
            outputs: vec![
                paysaga_core::FieldSpec::required(
                    "funding_id",
                    paysaga_core::FieldType::String,
                    "Lumanu funding id",
                ),
                paysaga_core::FieldSpec::required(
                    "transfer_id",
                    paysaga_core::FieldType::String,
                    "deposit transfer id",
                ),
                paysaga_core::FieldSpec::optional(
                    "status",
                    paysaga_core::FieldType::String,
                    "funding status",
                ),
            ],
        })
    }

    fn validate(&self, params: &Value) -> Result<(), String> {
        Fields::new(params, Mode::Validate).and_then(|f| link_params(&f).map(|_| ()))
    }

    async fn run(&self, _ctx: &StepContext, params: Value) -> StepOutcome {
        let (funding_id, transfer_id) = params!(&params, Mode::Run, link_params);
        match self
            .0
            .ensure_deposit_linked(&funding_id, &transfer_id)
            .await
        {
            Ok(funding) => StepOutcome::Done(json!({
                "funding_id": funding_id,
                "transfer_id": transfer_id,
                "status": funding.status.map(|s| s.to_string()),
            })),
            Err(e) => outcome_for("link deposit", &e),
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
/// `"{description} [ps-{idempotency key}]"`; every run first looks for a payable of the
/// workspace with exactly that description. Output: `{payable_id, amount, currency,
/// description, payable_status, existing}`.
///
/// Compensation cancels the payable (allowed while it is not approved or approved; a payable
/// already being paid cannot be cancelled and the compensation fails for an operator).
#[derive(Debug, Clone)]
pub struct CreatePayableStep(pub LumanuClient);

fn payable_params(f: &Fields<'_>) -> Result<CreatePayable, String> {
    let workspace_id = f.id("workspace_id")?;
    let amount = f.amount("amount")?;
    usd(f, "currency")?;
    let description = f.string("description")?;
    let payee = f.object("payee")?;
    let payee_email = match payee.raw("email") {
        Some(_) => Some(payee.email("email")?),
        None => None,
    };
    let payee_lumanu_id = payee.opt_id("lumanu_id")?;
    if f.mode() == Mode::Run || f.raw("payee").is_some() {
        match (&payee_email, &payee_lumanu_id) {
            (None, None) => {
                return Err(format!("{} needs an email or a lumanu_id", f.path("payee")))
            }
            (Some(_), Some(_)) => {
                return Err(format!(
                    "{} must have an email or a lumanu_id, not both",
                    f.path("payee")
                ))
            }
            _ => {}
        }
    }
    Ok(CreatePayable {
        workspace_id,
        payee_email,
        payee_lumanu_id,
        amount,
        description,
        due_date: f.opt_string("due_date")?,
        custom_fields: None,
    })
}

fn payable_output(p: &Payable, existing: bool) -> Value {
    json!({
        "payable_id": p.id,
        "amount": p.amount,
        "currency": "USD",
        "description": p.description,
        "payable_status": p.payable_status.as_ref().map(|s| s.to_string()),
        "existing": existing,
    })
}

#[async_trait]
impl StepKind for CreatePayableStep {
    fn name(&self) -> &'static str {
        "lumanu.create_payable"
    }

    fn schema(&self) -> Option<paysaga_core::KindSchema> {
        Some(paysaga_core::KindSchema {
            description: "Creates (or finds) a Lumanu payable to a payee (compensable: canceled).",
            params: vec![
                paysaga_core::FieldSpec::required(
                    "workspace_id",
                    paysaga_core::FieldType::String,
                    "Lumanu workspace id",
                ),
                paysaga_core::FieldSpec::required(
                    "amount",
                    paysaga_core::FieldType::Integer,
                    "amount in US cents",
                ),
                paysaga_core::FieldSpec::required(
                    "currency",
                    paysaga_core::FieldType::String,
                    "USD",
                ),
                paysaga_core::FieldSpec::required(
                    "description",
                    paysaga_core::FieldType::String,
                    "payable description",
                ),
                paysaga_core::FieldSpec::required(
                    "payee",
                    paysaga_core::FieldType::Object,
                    "the payee: an email or a lumanu_id",
                ),
                paysaga_core::FieldSpec::optional(
                    "payee.email",
                    paysaga_core::FieldType::String,
                    "payee email",
                ),
                paysaga_core::FieldSpec::optional(
                    "payee.lumanu_id",
                    paysaga_core::FieldType::String,
                    "payee Lumanu id",
                ),
                paysaga_core::FieldSpec::optional(
                    "due_date",
                    paysaga_core::FieldType::String,
                    "due date",
                ),
            ],
            outputs: vec![
                paysaga_core::FieldSpec::required(
                    "payable_id",
                    paysaga_core::FieldType::String,
                    "Lumanu payable id",
                ),
                paysaga_core::FieldSpec::required(
                    "amount",
                    paysaga_core::FieldType::Integer,
                    "amount in US cents",
                ),
                paysaga_core::FieldSpec::required(
                    "currency",
                    paysaga_core::FieldType::String,
                    "USD",
                ),
                paysaga_core::FieldSpec::required(
                    "description",
                    paysaga_core::FieldType::String,
                    "description",
                ),
                paysaga_core::FieldSpec::optional(
                    "payable_status",
                    paysaga_core::FieldType::String,
                    "payable status",
                ),
                paysaga_core::FieldSpec::required(
                    "existing",
                    paysaga_core::FieldType::Boolean,
                    "found instead of created",
                ),
            ],
        })
    }

    fn validate(&self, params: &Value) -> Result<(), String> {
        Fields::new(params, Mode::Validate).and_then(|f| payable_params(&f).map(|_| ()))
    }

    async fn run(&self, ctx: &StepContext, params: Value) -> StepOutcome {
        let mut request = params!(&params, Mode::Run, payable_params);
        request.description = tagged(&request.description, &reference(ctx));
        let find = || {
            self.0
                .find_payable_by_description(&request.workspace_id, &request.description)
        };
        let check = |p: Payable| {
            if p.amount != request.amount {
                StepOutcome::fail(format!(
                    "payable {} carries this step's reference but is {} cents, not {}",
                    p.id, p.amount, request.amount
                ))
            } else {
                StepOutcome::Done(payable_output(&p, true))
            }
        };
        match find().await {
            Ok(Some(existing)) => return check(existing),
            Ok(None) => {}
            Err(e) => return outcome_for("look up payable by reference", &e),
        }
        // Lumanu cannot deduplicate the create: mark the attempt durably before sending, so
        // a worker that lost the saga while its request was out cannot leave a second payable.
        let permit = match ctx.begin_effect().await {
            Ok(permit) => permit,
            Err(outcome) => return outcome,
        };
        match self
            .0
            .create_payable_before(&request, permit.send_by())
            .await
        {
            Ok(p) => StepOutcome::Done(payable_output(&p, false)),
            Err(e) if e.may_have_taken_effect() => match find().await {
                Ok(Some(existing)) => check(existing),
                _ => retry_unknown_effect("create payable", &e),
            },
            Err(e) => {
                // Refused before Lumanu acted (4xx, 429, no connection, not sent).
                ctx.effect_not_sent().await;
                outcome_for("create payable", &e)
            }
        }
    }

    fn compensable(&self) -> bool {
        true
    }

    async fn compensate(&self, ctx: &StepContext, _params: Value) -> StepOutcome {
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

fn id_param(name: &'static str) -> impl Fn(&Fields<'_>) -> Result<String, String> {
    move |f| f.id(name)
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
impl StepKind for ApprovePayable {
    fn name(&self) -> &'static str {
        "lumanu.approve_payable"
    }

    fn schema(&self) -> Option<paysaga_core::KindSchema> {
        Some(paysaga_core::KindSchema {
            description: "Approves a payable.",
            params: vec![paysaga_core::FieldSpec::required(
                "payable_id",
                paysaga_core::FieldType::String,
                "Lumanu payable id",
            )],
            outputs: vec![
                paysaga_core::FieldSpec::required(
                    "payable_id",
                    paysaga_core::FieldType::String,
                    "Lumanu payable id",
                ),
                paysaga_core::FieldSpec::required(
                    "payable_status",
                    paysaga_core::FieldType::String,
                    "payable status",
                ),
            ],
        })
    }

    fn validate(&self, params: &Value) -> Result<(), String> {
        Fields::new(params, Mode::Validate).and_then(|f| id_param("payable_id")(&f).map(|_| ()))
    }

    async fn run(&self, _ctx: &StepContext, params: Value) -> StepOutcome {
        let payable_id = params!(&params, Mode::Run, id_param("payable_id"));
        let payable = match self.0.get_payable(&payable_id).await {
            Ok(p) => p,
            Err(e) => return outcome_for("get payable", &e),
        };
        if is_approved_or_later(&payable) {
            return StepOutcome::Done(
                json!({"payable_id": payable_id, "payable_status": status_of(&payable)}),
            );
        }
        if matches!(
            payable.payable_status,
            Some(PayableStatus::Canceled | PayableStatus::Reversed)
        ) {
            return StepOutcome::fail(format!(
                "payable {payable_id} is {} and cannot be approved",
                status_of(&payable)
            ));
        }
        match self.0.approve_payable(&payable_id).await {
            Ok(p) => StepOutcome::Done(
                json!({"payable_id": payable_id, "payable_status": status_of(&p)}),
            ),
            // Refused or unknown: another attempt of this step (a worker whose lease was taken
            // over while its call was in flight) may have approved it meanwhile. Look again.
            Err(e) => match self.0.get_payable(&payable_id).await {
                Ok(p) if is_approved_or_later(&p) => StepOutcome::Done(
                    json!({"payable_id": payable_id, "payable_status": status_of(&p)}),
                ),
                _ => outcome_for("approve payable", &e),
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

fn pay_params(f: &Fields<'_>) -> Result<(String, String), String> {
    Ok((f.id("workspace_id")?, f.id("payable_id")?))
}

#[async_trait]
impl StepKind for PayFromBalance {
    fn name(&self) -> &'static str {
        "lumanu.pay_from_balance"
    }

    fn schema(&self) -> Option<paysaga_core::KindSchema> {
        Some(paysaga_core::KindSchema {
            description: "Pays a payable from the workspace balance (irreversible).",
            params: vec![
                paysaga_core::FieldSpec::required(
                    "workspace_id",
                    paysaga_core::FieldType::String,
                    "Lumanu workspace id",
                ),
                paysaga_core::FieldSpec::required(
                    "payable_id",
                    paysaga_core::FieldType::String,
                    "Lumanu payable id",
                ),
            ],
            outputs: vec![
                paysaga_core::FieldSpec::required(
                    "payable_id",
                    paysaga_core::FieldType::String,
                    "Lumanu payable id",
                ),
                paysaga_core::FieldSpec::optional(
                    "funding_id",
                    paysaga_core::FieldType::String,
                    "funding id",
                ),
                paysaga_core::FieldSpec::required(
                    "payable_status",
                    paysaga_core::FieldType::String,
                    "payable status",
                ),
                paysaga_core::FieldSpec::required(
                    "already_paid",
                    paysaga_core::FieldType::Boolean,
                    "it was paid already",
                ),
            ],
        })
    }

    fn validate(&self, params: &Value) -> Result<(), String> {
        Fields::new(params, Mode::Validate).and_then(|f| pay_params(&f).map(|_| ()))
    }

    fn irreversible(&self) -> bool {
        true
    }

    async fn run(&self, _ctx: &StepContext, params: Value) -> StepOutcome {
        let (workspace_id, payable_id) = params!(&params, Mode::Run, pay_params);
        let already = |p: &Payable| {
            StepOutcome::Done(json!({
                "payable_id": payable_id,
                "funding_id": Value::Null,
                "payable_status": status_of(p),
                "already_paid": true,
            }))
        };
        let payable = match self.0.get_payable(&payable_id).await {
            Ok(p) => p,
            Err(e) => return outcome_for("get payable before paying", &e),
        };
        if is_paying_or_paid(&payable) {
            return already(&payable);
        }
        if payable.payable_status != Some(PayableStatus::Approved) {
            return StepOutcome::fail(format!(
                "payable {payable_id} is {}, not approved: it cannot be paid",
                status_of(&payable)
            ));
        }
        match self
            .0
            .pay_from_balance(&workspace_id, std::slice::from_ref(&payable_id))
            .await
        {
            Ok(funding) => StepOutcome::Done(json!({
                "payable_id": payable_id,
                "funding_id": funding.id,
                "payable_status": "awaiting_payment",
                "already_paid": false,
            })),
            Err(e) if e.may_have_taken_effect() => match self.0.get_payable(&payable_id).await {
                Ok(p) if is_paying_or_paid(&p) => already(&p),
                _ => retry_unknown_effect("pay payable from balance", &e),
            },
            // Refused (e.g. 422 "only approved payables can be paid"): another attempt of this
            // step (a worker whose lease was taken over while its call was in flight) may have
            // paid it meanwhile; that is this step done, not a failure to compensate. Found by
            // the long chaos run.
            Err(e) => match self.0.get_payable(&payable_id).await {
                Ok(p) if is_paying_or_paid(&p) => already(&p),
                _ => outcome_for("pay payable from balance", &e),
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

#[async_trait]
impl StepKind for AwaitPayablePaid {
    fn name(&self) -> &'static str {
        "lumanu.await_payable_paid"
    }

    fn schema(&self) -> Option<paysaga_core::KindSchema> {
        Some(paysaga_core::KindSchema {
            description: "Waits until the payable is paid.",
            params: vec![paysaga_core::FieldSpec::required(
                "payable_id",
                paysaga_core::FieldType::String,
                "Lumanu payable id",
            )],
            outputs: vec![
                paysaga_core::FieldSpec::required(
                    "payable_id",
                    paysaga_core::FieldType::String,
                    "Lumanu payable id",
                ),
                paysaga_core::FieldSpec::required(
                    "payable_status",
                    paysaga_core::FieldType::String,
                    "paid",
                ),
                paysaga_core::FieldSpec::required(
                    "amount",
                    paysaga_core::FieldType::Integer,
                    "amount in US cents",
                ),
            ],
        })
    }

    fn validate(&self, params: &Value) -> Result<(), String> {
        Fields::new(params, Mode::Validate).and_then(|f| id_param("payable_id")(&f).map(|_| ()))
    }

    async fn run(&self, _ctx: &StepContext, params: Value) -> StepOutcome {
        let payable_id = params!(&params, Mode::Run, id_param("payable_id"));
        let payable = match self.0.get_payable(&payable_id).await {
            Ok(p) => p,
            Err(e) => return outcome_for("get payable", &e),
        };
        match payable.payable_status {
            Some(PayableStatus::Paid) => StepOutcome::Done(json!({
                "payable_id": payable_id,
                "payable_status": "paid",
                "amount": payable.amount,
            })),
            Some(PayableStatus::Canceled | PayableStatus::Reversed) => StepOutcome::fail(format!(
                "payable {payable_id} is {} instead of paid",
                status_of(&payable)
            )),
            _ => {
                let mut spec =
                    WaitSpec::new(PROVIDER, "payable.paid", format!("payable:{payable_id}"))
                        .provider_status(format!(
                            "payable {payable_id} is {}",
                            status_of(&payable)
                        ));
                spec.event_types.push("payable.canceled".to_owned());
                StepOutcome::Wait(spec)
            }
        }
    }

    fn references(&self, output: &Value) -> Vec<(String, String)> {
        paysaga_core::output_references(output, &["payable_id"])
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

    #[test]
    fn invoice_tags_do_not_match_prefixes() {
        assert!(contains_tag("Invoice #123 paid", "#123"));
        assert!(contains_tag("Deposit for invoice #123", "#123"));
        assert!(!contains_tag("Invoice #1234 paid", "#123"));
        assert!(contains_tag("#12 and #123", "#123"));
    }
}
