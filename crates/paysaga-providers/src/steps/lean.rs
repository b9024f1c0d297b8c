//! Lean step kinds: bank payouts (`workflows/lean_payout.toml`).
//!
//! find or create the payment destination -> ensure the customer -> wait until the customer's
//! beneficiary for the destination is `ACTIVE` -> create the payment intent
//! (`Idempotency-Key`) -> wait for the bank's answer; `PENDING_WITH_BANK` becomes a
//! reconciliation wait with its own deadline.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use paysaga_core::{Step, StepContext, StepKind, StepOutcome, Typed, WaitSpec};
use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{json, Value};

use super::common::outcome_for;
use super::parameters::{Amount, Currency, Id, ShortText, Text, TextDuration};
use crate::lean::{
    BeneficiaryStatus, CreateDestination, CreatePaymentIntent, Destination, LeanClient,
    PaymentStatus,
};

const PROVIDER: &str = "lean";

/// Longest `description` Lean accepts on an intent.
pub const MAX_DESCRIPTION: usize = 32;

/// Default reconciliation wait for a `PENDING_WITH_BANK` payment.
pub const DEFAULT_RECONCILE_FOR: Duration = Duration::from_secs(2 * 24 * 3600);

/// Default time a Financial Controller has to authorise a queued payment (manual mode).
pub const DEFAULT_AUTHORIZE_WITHIN: Duration = Duration::from_secs(5 * 24 * 3600);

/// Who authorises a queued payment in manual mode, unless the definition says otherwise.
pub const DEFAULT_MANUAL_AUTHORIZER: &str =
    "a Financial Controller in Lean's Application Dashboard";

/// How the deployment's Lean account authorises the payments Lean queues (Lean's
/// getting-started payouts guide: manual, automatic or on demand; set in Lean's dashboard).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Authorization {
    /// Lean authorises at once.
    Automatic,
    /// A person authorises each queued payment (Application Dashboard or bank portal).
    Manual,
}

impl<'de> Deserialize<'de> for Authorization {
    /// `"automatic"` or `"manual"`, in any case.
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = String::deserialize(d)?;
        match v.trim().to_ascii_lowercase().as_str() {
            "automatic" => Ok(Authorization::Automatic),
            "manual" => Ok(Authorization::Manual),
            _ => Err(serde::de::Error::custom(format!(
                "must be one of automatic, manual (got {v:?})"
            ))),
        }
    }
}

impl JsonSchema for Authorization {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Authorization".into()
    }
    fn inline_schema() -> bool {
        true
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({"type": "string", "enum": ["automatic", "manual"]})
    }
}

/// The Lean step kinds, sharing `client`.
pub fn kinds(client: &LeanClient) -> Vec<Arc<dyn StepKind>> {
    vec![
        Arc::new(Typed(CreateDestinationStep(client.clone()))),
        Arc::new(Typed(EnsureCustomer(client.clone()))),
        Arc::new(Typed(AwaitBeneficiary(client.clone()))),
        Arc::new(Typed(CreateIntent(client.clone()))),
        Arc::new(Typed(AwaitPayment(client.clone()))),
    ]
}

// ---------------------------------------------------------------------------------------------

/// `lean.create_destination`: the payment destination for this bank account, created if Lean
/// has none.
///
/// Params: `destination` `{display_name, name, bank_identifier, iban, account_number, address,
/// city, country, swift_code?}`. Every run first lists the destinations and reuses one with the
/// same IBAN or account number (spaces and case ignored) and the same holder name. Output:
/// `{destination_id, existing}`. Not compensable: a destination moves no money and may serve
/// later payouts.
#[derive(Debug, Clone)]
pub struct CreateDestinationStep(pub LeanClient);

/// Parameters of `lean.create_destination`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
pub struct DestinationParams {
    /// the bank account
    pub destination: BankAccount,
}

/// A bank account as `lean.create_destination` takes it.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
pub struct BankAccount {
    /// display name
    pub display_name: Text,
    /// account holder
    pub name: Text,
    /// bank identifier
    pub bank_identifier: Text,
    /// IBAN
    pub iban: Text,
    /// account number
    pub account_number: Text,
    /// holder address
    pub address: Text,
    /// city
    pub city: Text,
    /// country
    pub country: Text,
    /// SWIFT code
    pub swift_code: Option<Text>,
}

impl BankAccount {
    fn request(self) -> CreateDestination {
        CreateDestination {
            display_name: self.display_name.0,
            name: self.name.0,
            bank_identifier: self.bank_identifier.0,
            iban: self.iban.0,
            account_number: self.account_number.0,
            address: self.address.0,
            city: self.city.0,
            country: self.country.0,
            swift_code: self.swift_code.map(|s| s.0),
        }
    }
}

/// Output of `lean.create_destination`.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct DestinationOutput {
    /// Lean destination id
    pub destination_id: String,
    /// found instead of created
    pub existing: bool,
}

fn normalized(s: &str) -> String {
    s.chars()
        .filter(|c| !c.is_whitespace())
        .collect::<String>()
        .to_ascii_uppercase()
}

fn same_name(a: &str, b: &str) -> bool {
    a.split_whitespace()
        .map(str::to_lowercase)
        .eq(b.split_whitespace().map(str::to_lowercase))
}

/// The destination is this bank account of this holder.
fn destination_matches(d: &Destination, want: &CreateDestination) -> bool {
    let same = |have: &Option<String>, want: &str| {
        have.as_deref()
            .is_some_and(|h| !h.is_empty() && normalized(h) == normalized(want))
    };
    let account = same(&d.iban, &want.iban) || same(&d.account_number, &want.account_number);
    let name = d.name.as_deref().is_some_and(|n| same_name(n, &want.name));
    account && name
}

#[async_trait]
impl Step for CreateDestinationStep {
    type Params = DestinationParams;
    type Output = DestinationOutput;
    const NAME: &'static str = "lean.create_destination";
    const DESCRIPTION: &'static str =
        "Creates (or finds) a Lean payment destination (a bank account).";

    async fn run(
        &self,
        _ctx: &StepContext,
        params: DestinationParams,
    ) -> Result<DestinationOutput, StepOutcome> {
        let request = params.destination.request();
        let find = || async {
            self.0
                .list_destinations()
                .await
                .map(|all| all.into_iter().find(|d| destination_matches(d, &request)))
        };
        let found = |d: Destination| DestinationOutput {
            destination_id: d.id,
            existing: true,
        };
        match find().await {
            Ok(Some(d)) => return Ok(found(d)),
            Ok(None) => {}
            Err(e) => return Err(outcome_for("list destinations", &e)),
        }
        match self.0.create_destination(&request).await {
            Ok(d) => Ok(DestinationOutput {
                destination_id: d.id,
                existing: false,
            }),
            Err(e) if e.may_have_taken_effect() => match find().await {
                Ok(Some(d)) => Ok(found(d)),
                _ => Err(super::common::retry_unknown_effect(
                    "create destination",
                    &e,
                )),
            },
            Err(e) => Err(outcome_for("create destination", &e)),
        }
    }

    fn references(&self, output: &Value) -> Vec<(String, String)> {
        paysaga_core::output_references(output, &["destination_id"])
    }
}

// ---------------------------------------------------------------------------------------------

/// `lean.ensure_customer`: the Lean customer for `app_user_id` (Lean's 409
/// `CUSTOMER_ALREADY_EXISTS` means it exists: it is fetched).
///
/// Params: `app_user_id`. Output: `{customer_id, app_user_id, existing}`.
#[derive(Debug, Clone)]
pub struct EnsureCustomer(pub LeanClient);

/// Parameters of `lean.ensure_customer`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
pub struct CustomerParams {
    /// your id of the user
    pub app_user_id: Id,
}

/// Output of `lean.ensure_customer`.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct CustomerOutput {
    /// Lean customer id
    pub customer_id: String,
    /// your id of the user
    pub app_user_id: String,
    /// found instead of created
    pub existing: bool,
}

#[async_trait]
impl Step for EnsureCustomer {
    type Params = CustomerParams;
    type Output = CustomerOutput;
    const NAME: &'static str = "lean.ensure_customer";
    const DESCRIPTION: &'static str = "Creates (or finds) the Lean customer of an app user.";

    async fn run(
        &self,
        _ctx: &StepContext,
        params: CustomerParams,
    ) -> Result<CustomerOutput, StepOutcome> {
        match self.0.ensure_customer(params.app_user_id.as_str()).await {
            Ok(ensured) => {
                let existing = matches!(ensured, crate::lean::EnsuredCustomer::Existing(_));
                let c = ensured.into_customer();
                Ok(CustomerOutput {
                    customer_id: c.customer_id,
                    app_user_id: c.app_user_id,
                    existing,
                })
            }
            Err(e) => Err(outcome_for("create customer", &e)),
        }
    }

    fn references(&self, output: &Value) -> Vec<(String, String)> {
        paysaga_core::output_references(output, &["customer_id", "app_user_id"])
    }
}

// ---------------------------------------------------------------------------------------------

/// `lean.await_beneficiary`: waits until one of the customer's payment sources has an
/// `ACTIVE` beneficiary for the destination (the end user links a bank through Lean's LinkSDK;
/// the beneficiary then passes its cool-off).
///
/// Params: `customer_id`, `destination_id`. Waits for `payment_source.beneficiary.created` /
/// `.updated` with key `beneficiary:{customer_id}:{destination_id}`, re-reading the payment
/// sources on every run. Output: `{beneficiary_id, status}`.
#[derive(Debug, Clone)]
pub struct AwaitBeneficiary(pub LeanClient);

/// Parameters of `lean.await_beneficiary`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
pub struct BeneficiaryParams {
    /// Lean customer id
    pub customer_id: Id,
    /// Lean destination id
    pub destination_id: Id,
}

/// Output of `lean.await_beneficiary`.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct BeneficiaryOutput {
    /// beneficiary id
    pub beneficiary_id: String,
    /// payment source id
    pub payment_source_id: String,
    /// ACTIVE
    pub status: String,
}

#[async_trait]
impl Step for AwaitBeneficiary {
    type Params = BeneficiaryParams;
    type Output = BeneficiaryOutput;
    const NAME: &'static str = "lean.await_beneficiary";
    const DESCRIPTION: &'static str =
        "Waits until the destination is an active beneficiary of the customer.";

    async fn run(
        &self,
        _ctx: &StepContext,
        params: BeneficiaryParams,
    ) -> Result<BeneficiaryOutput, StepOutcome> {
        let (customer_id, destination_id) = (params.customer_id.0, params.destination_id.0);
        let sources = match self.0.list_payment_sources(&customer_id).await {
            Ok(s) => s,
            Err(e) => return Err(outcome_for("list payment sources", &e)),
        };
        let active = sources.iter().find_map(|s| {
            s.beneficiaries
                .iter()
                .find(|b| {
                    b.payment_destination_id.as_deref() == Some(destination_id.as_str())
                        && b.status == Some(BeneficiaryStatus::Active)
                })
                .map(|b| (s.id.clone(), b.id.clone()))
        });
        match active {
            Some((source_id, beneficiary_id)) => Ok(BeneficiaryOutput {
                beneficiary_id,
                payment_source_id: source_id,
                status: "ACTIVE".to_owned(),
            }),
            None => {
                let statuses: Vec<String> = sources
                    .iter()
                    .flat_map(|s| &s.beneficiaries)
                    .filter(|b| {
                        b.payment_destination_id.as_deref() == Some(destination_id.as_str())
                    })
                    .map(|b| {
                        b.status
                            .as_ref()
                            .map_or_else(|| "unknown".to_owned(), |s| s.to_string())
                    })
                    .collect();
                let said = if statuses.is_empty() {
                    format!(
                        "no beneficiary for destination {destination_id} yet ({} payment source(s) linked)",
                        sources.len()
                    )
                } else {
                    format!(
                        "beneficiary for destination {destination_id} is {}",
                        statuses.join(", ")
                    )
                };
                let mut spec = WaitSpec::new(
                    PROVIDER,
                    "payment_source.beneficiary.created",
                    format!("beneficiary:{customer_id}:{destination_id}"),
                )
                .provider_status(said);
                spec.event_types
                    .push("payment_source.beneficiary.updated".to_owned());
                Err(StepOutcome::Wait(spec))
            }
        }
    }

    fn references(&self, output: &Value) -> Vec<(String, String)> {
        paysaga_core::output_references(output, &["beneficiary_id", "payment_source_id"])
    }
}

// ---------------------------------------------------------------------------------------------

/// `lean.create_intent`: creates the payment intent with `Idempotency-Key` = the step's
/// idempotency key, so a repeat answers the same intent and never a second payment.
/// Irreversible.
///
/// Params: `customer_id`, `destination_id`, `amount` (minor units), `currency`, `description`
/// (at most 32 characters). Output: `{intent_id, amount, currency, customer_id,
/// destination_id}`.
#[derive(Debug, Clone)]
pub struct CreateIntent(pub LeanClient);

/// Parameters of `lean.create_intent`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
pub struct IntentParams {
    /// Lean customer id
    pub customer_id: Id,
    /// Lean destination id
    pub destination_id: Id,
    /// amount in minor units
    pub amount: Amount,
    /// ISO 4217 code
    pub currency: Currency,
    /// payment description
    pub description: ShortText<MAX_DESCRIPTION>,
}

/// Output of `lean.create_intent`.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct IntentOutput {
    /// payment intent id
    pub intent_id: String,
    /// amount in minor units
    pub amount: i64,
    /// currency
    pub currency: String,
    /// Lean customer id
    pub customer_id: String,
    /// Lean destination id
    pub destination_id: String,
}

#[async_trait]
impl Step for CreateIntent {
    type Params = IntentParams;
    type Output = IntentOutput;
    const NAME: &'static str = "lean.create_intent";
    const DESCRIPTION: &'static str = "Creates a Lean payment intent (irreversible).";

    fn irreversible(&self) -> bool {
        true
    }

    async fn run(&self, ctx: &StepContext, p: IntentParams) -> Result<IntentOutput, StepOutcome> {
        let request = CreatePaymentIntent::new(
            p.amount.get(),
            p.currency.as_str(),
            p.destination_id.as_str(),
            p.customer_id.as_str(),
            Some(p.description.as_str()),
        )
        .map_err(|e| StepOutcome::fail(format!("invalid params: amount/currency: {e}")))?;
        match self
            .0
            .create_payment_intent(&request, &ctx.idempotency_key())
            .await
        {
            Ok(intent) => Ok(IntentOutput {
                intent_id: intent.payment_intent_id.clone(),
                amount: intent.amount_minor().unwrap_or(p.amount.get()),
                currency: p.currency.as_str().to_owned(),
                customer_id: request.customer_id,
                destination_id: request.payment_destination_id,
            }),
            Err(e) => Err(outcome_for("create payment intent", &e)),
        }
    }

    fn references(&self, output: &Value) -> Vec<(String, String)> {
        paysaga_core::output_references(output, &["intent_id"])
    }
}

// ---------------------------------------------------------------------------------------------

/// `lean.await_payment`: waits for the bank's answer on the intent's payment.
///
/// Params: `intent_id`, `reconcile_for` (optional duration, default `"2d"`), `authorization`
/// (optional, `"automatic"` (default) or `"manual"`: how the deployment's Lean account
/// authorises queued payments), `authorize_within` (optional duration, default `"5d"`, manual
/// mode) and `authorized_by` (optional text naming who authorises, default "a Financial
/// Controller in Lean's Application Dashboard").
///
/// Re-reads the intent on every run; its latest payment decides: `ACCEPTED_BY_BANK` -> done;
/// `REJECTED_BY_BANK` / `FAILED` -> fails; `PENDING_WITH_BANK` (the bank gave no reference: it
/// may still settle) -> a reconciliation wait whose deadline is `reconcile_for` from the first
/// time it is seen (set once: the wait's state says `reconciling`); `CREATED` (queued at Lean,
/// not authorised) in manual mode -> an authorisation wait whose deadline is `authorize_within`
/// from the first time it is seen (set once: `awaiting_authorization`), after which the step
/// fails saying the payment may still be authorised at Lean (the saga parks: `create_intent` is
/// irreversible); `CREATED` in automatic mode -> waits under the step's deadline, its state
/// saying the payment is queued; no payment yet -> waits. The wait's state carries a `description` for
/// operators (`paysaga show`). Waits are for `payment.created` / `payment.updated` with key
/// `intent:{intent_id}`. Output: `{intent_id, payment_id, status, bank_transaction_reference,
/// amount, currency}`.
#[derive(Debug, Clone)]
pub struct AwaitPayment(pub LeanClient);

/// Parameters of `lean.await_payment`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
pub struct PaymentParams {
    /// payment intent id
    pub intent_id: Id,
    /// how long to reconcile a pending payment (default 2d)
    pub reconcile_for: Option<TextDuration>,
    /// how the Lean account authorises queued payments: automatic (default) or manual
    pub authorization: Option<Authorization>,
    /// how long a queued payment may wait for authorisation in manual mode (default 5d)
    pub authorize_within: Option<TextDuration>,
    /// who authorises queued payments (shown to operators)
    pub authorized_by: Option<Text>,
}

/// [`PaymentParams`] with their defaults.
struct PaymentSettings {
    intent_id: String,
    reconcile_for: Duration,
    authorization: Authorization,
    authorize_within: Duration,
    authorized_by: String,
}

impl PaymentParams {
    fn settings(self) -> PaymentSettings {
        let authorization = self.authorization.unwrap_or(Authorization::Automatic);
        let authorized_by =
            self.authorized_by
                .map(|t| t.0)
                .unwrap_or_else(|| match authorization {
                    Authorization::Manual => DEFAULT_MANUAL_AUTHORIZER.to_owned(),
                    Authorization::Automatic => "Lean (automatic authorisation)".to_owned(),
                });
        PaymentSettings {
            intent_id: self.intent_id.0,
            reconcile_for: self.reconcile_for.map_or(DEFAULT_RECONCILE_FOR, |d| d.0),
            authorization,
            authorize_within: self
                .authorize_within
                .map_or(DEFAULT_AUTHORIZE_WITHIN, |d| d.0),
            authorized_by,
        }
    }
}

/// Output of `lean.await_payment`.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct PaymentOutput {
    /// payment intent id
    pub intent_id: String,
    /// payment id
    pub payment_id: String,
    /// payment status
    pub status: String,
    /// bank reference
    pub bank_transaction_reference: Option<String>,
    /// amount in minor units
    pub amount: Option<i64>,
    /// currency
    pub currency: String,
}

fn state_flag(ctx: &StepContext, flag: &str) -> bool {
    ctx.wait_state
        .as_ref()
        .and_then(|s| s.get(flag))
        .and_then(Value::as_bool)
        .unwrap_or(false)
}

fn money(payment: &crate::lean::Payment) -> String {
    format!("{} {}", payment.amount, payment.currency)
}

#[async_trait]
impl Step for AwaitPayment {
    type Params = PaymentParams;
    type Output = PaymentOutput;
    const NAME: &'static str = "lean.await_payment";
    const DESCRIPTION: &'static str =
        "Waits until the intent's payment is accepted by the bank (or rejected).";

    async fn run(
        &self,
        ctx: &StepContext,
        params: PaymentParams,
    ) -> Result<PaymentOutput, StepOutcome> {
        let p = params.settings();
        let intent_id = p.intent_id.clone();
        let intent = match self.0.get_payment_intent(&intent_id).await {
            Ok(i) => i,
            Err(e) => return Err(outcome_for("get payment intent", &e)),
        };
        let mut spec = WaitSpec::new(PROVIDER, "payment.created", format!("intent:{intent_id}"));
        spec.event_types.push("payment.updated".to_owned());
        // Keep the reconciliation / authorisation marker across waits.
        spec.state = ctx.wait_state.clone().unwrap_or(Value::Null);
        let Some(payment) = intent.latest_payment() else {
            spec.provider_status = Some(format!("intent {intent_id} has no payment yet"));
            return Err(StepOutcome::Wait(spec));
        };
        spec.provider_status = Some(format!("payment {} is {}", payment.id, payment.status));
        match &payment.status {
            PaymentStatus::AcceptedByBank => Ok(PaymentOutput {
                intent_id,
                payment_id: payment.id.clone(),
                status: payment.status.to_string(),
                bank_transaction_reference: payment.bank_transaction_reference.clone(),
                amount: payment.amount_minor().ok(),
                currency: payment.currency.clone(),
            }),
            PaymentStatus::RejectedByBank | PaymentStatus::Failed => {
                Err(StepOutcome::fail(format!(
                    "Lean payment {} of intent {intent_id} is {}: no money was paid",
                    payment.id, payment.status
                )))
            }
            PaymentStatus::PendingWithBank => {
                if !state_flag(ctx, "reconciling") {
                    spec.new_deadline = Some(p.reconcile_for);
                    let reconcile_for = humantime::format_duration(p.reconcile_for).to_string();
                    spec.state = json!({
                        "reconciling": true,
                        "payment_id": payment.id,
                        "since": ctx.now,
                        "reconcile_for": reconcile_for,
                        "description": format!(
                            "reconciling Lean payment {} ({}) of intent {intent_id}: \
                             PENDING_WITH_BANK (the bank gave no reference; it may settle \
                             later) since {}, for up to {reconcile_for}",
                            payment.id,
                            money(payment),
                            ctx.now.format("%Y-%m-%d %H:%M:%S UTC"),
                        ),
                    });
                }
                Err(StepOutcome::Wait(spec))
            }
            PaymentStatus::Created if p.authorization == Authorization::Manual => {
                let deadline_passed = matches!(
                    ctx.wake,
                    paysaga_core::Wake::Poll {
                        deadline_passed: true
                    }
                );
                if deadline_passed && state_flag(ctx, "awaiting_authorization") {
                    return Err(StepOutcome::fail(format!(
                        "Lean payment {} ({}) of intent {intent_id} was not authorised within \
                         {} by {}: it is still queued at Lean and may yet be authorised there. \
                         Reject it in Lean's Application Dashboard (or get it authorised), \
                         then resume this saga (the step reads the final status again) or cancel it",
                        payment.id,
                        money(payment),
                        humantime::format_duration(p.authorize_within),
                        p.authorized_by,
                    )));
                }
                if !state_flag(ctx, "awaiting_authorization") {
                    spec.new_deadline = Some(p.authorize_within);
                    let until = chrono::Duration::from_std(p.authorize_within)
                        .ok()
                        .and_then(|d| ctx.now.checked_add_signed(d));
                    spec.state = json!({
                        "awaiting_authorization": true,
                        "payment_id": payment.id,
                        "since": ctx.now,
                        "authorized_by": p.authorized_by,
                        "authorize_within": humantime::format_duration(p.authorize_within).to_string(),
                        "description": format!(
                            "awaiting authorisation at Lean by {}: payment {} ({}) of intent \
                             {intent_id} queued (status CREATED) since {}; deadline {}",
                            p.authorized_by,
                            payment.id,
                            money(payment),
                            ctx.now.format("%Y-%m-%d %H:%M:%S UTC"),
                            until.map_or_else(
                                || "none".to_owned(),
                                |u| u.format("%Y-%m-%d %H:%M:%S UTC").to_string()
                            ),
                        ),
                    });
                }
                Err(StepOutcome::Wait(spec))
            }
            PaymentStatus::Created => {
                // Automatic mode: Lean should authorise at once. Say so, in case the Lean
                // account is in fact set to manual authorisation (then lean_payout_manual fits).
                if spec.state.get("description").is_none() {
                    spec.state = json!({
                        "payment_id": payment.id,
                        "since": ctx.now,
                        "description": format!(
                            "Lean payment {} ({}) of intent {intent_id} is queued at Lean \
                             (status CREATED) since {}, expected to be authorised by {}; if \
                             this Lean account authorises payouts manually, a Financial \
                             Controller must approve it in Lean's Application Dashboard",
                            payment.id,
                            money(payment),
                            ctx.now.format("%Y-%m-%d %H:%M:%S UTC"),
                            p.authorized_by,
                        ),
                    });
                }
                Err(StepOutcome::Wait(spec))
            }
            _ => Err(StepOutcome::Wait(spec)),
        }
    }

    fn references(&self, output: &Value) -> Vec<(String, String)> {
        paysaga_core::output_references(
            output,
            &["intent_id", "payment_id", "bank_transaction_reference"],
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn destinations_match_on_account_and_holder() {
        let want = CreateDestination {
            name: "Acme  Trading LLC".into(),
            iban: "AE07 0331 2345 6789 0123 456".into(),
            account_number: "1234567890123456".into(),
            ..CreateDestination::default()
        };
        let have = |iban: &str, acct: &str, name: &str| Destination {
            id: "d".into(),
            display_name: None,
            name: Some(name.into()),
            bank_identifier: None,
            iban: Some(iban.into()),
            account_number: Some(acct.into()),
            country: None,
            status: None,
            default: None,
        };
        assert!(destination_matches(
            &have("AE070331234567890123456", "", "acme trading llc"),
            &want
        ));
        assert!(destination_matches(
            &have("", "1234567890123456", "Acme Trading LLC"),
            &want
        ));
        assert!(!destination_matches(
            &have("AE070331234567890123456", "", "Other Co"),
            &want
        ));
        assert!(!destination_matches(
            &have("AE99", "999", "Acme Trading LLC"),
            &want
        ));
    }
}
