//! Lean step kinds: bank payouts (`workflows/lean_payout.toml`).
//!
//! find or create the payment destination -> ensure the customer -> wait until the customer's
//! beneficiary for the destination is `ACTIVE` -> create the payment intent
//! (`Idempotency-Key`) -> wait for the bank's answer; `PENDING_WITH_BANK` becomes a
//! reconciliation wait with its own deadline.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use paysaga_core::{StepContext, StepKind, StepOutcome, WaitSpec};
use serde_json::{json, Value};

use super::common::{outcome_for, params, Fields, Mode};
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

/// The Lean step kinds, sharing `client`.
pub fn kinds(client: &LeanClient) -> Vec<Arc<dyn StepKind>> {
    vec![
        Arc::new(CreateDestinationStep(client.clone())),
        Arc::new(EnsureCustomer(client.clone())),
        Arc::new(AwaitBeneficiary(client.clone())),
        Arc::new(CreateIntent(client.clone())),
        Arc::new(AwaitPayment(client.clone())),
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

fn destination_params(f: &Fields<'_>) -> Result<CreateDestination, String> {
    let d = f.object("destination")?;
    Ok(CreateDestination {
        display_name: d.string("display_name")?,
        name: d.string("name")?,
        bank_identifier: d.string("bank_identifier")?,
        iban: d.string("iban")?,
        account_number: d.string("account_number")?,
        address: d.string("address")?,
        city: d.string("city")?,
        country: d.string("country")?,
        swift_code: d.opt_string("swift_code")?,
    })
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
impl StepKind for CreateDestinationStep {
    fn name(&self) -> &'static str {
        "lean.create_destination"
    }

    fn schema(&self) -> Option<paysaga_core::KindSchema> {
        Some(paysaga_core::KindSchema {
            description: "Creates (or finds) a Lean payment destination (a bank account).",
            params: vec![
                paysaga_core::FieldSpec::required(
                    "destination",
                    paysaga_core::FieldType::Object,
                    "the bank account",
                ),
                paysaga_core::FieldSpec::required(
                    "destination.display_name",
                    paysaga_core::FieldType::String,
                    "display name",
                ),
                paysaga_core::FieldSpec::required(
                    "destination.name",
                    paysaga_core::FieldType::String,
                    "account holder",
                ),
                paysaga_core::FieldSpec::required(
                    "destination.bank_identifier",
                    paysaga_core::FieldType::String,
                    "bank identifier",
                ),
                paysaga_core::FieldSpec::required(
                    "destination.iban",
                    paysaga_core::FieldType::String,
                    "IBAN",
                ),
                paysaga_core::FieldSpec::required(
                    "destination.account_number",
                    paysaga_core::FieldType::String,
                    "account number",
                ),
                paysaga_core::FieldSpec::required(
                    "destination.address",
                    paysaga_core::FieldType::String,
                    "holder address",
                ),
                paysaga_core::FieldSpec::required(
                    "destination.city",
                    paysaga_core::FieldType::String,
                    "city",
                ),
                paysaga_core::FieldSpec::required(
                    "destination.country",
                    paysaga_core::FieldType::String,
                    "country",
                ),
                paysaga_core::FieldSpec::optional(
                    "destination.swift_code",
                    paysaga_core::FieldType::String,
                    "SWIFT code",
                ),
            ],
            outputs: vec![
                paysaga_core::FieldSpec::required(
                    "destination_id",
                    paysaga_core::FieldType::String,
                    "Lean destination id",
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
        Fields::new(params, Mode::Validate).and_then(|f| destination_params(&f).map(|_| ()))
    }

    async fn run(&self, _ctx: &StepContext, params: Value) -> StepOutcome {
        let request = params!(&params, Mode::Run, destination_params);
        let find = || async {
            self.0
                .list_destinations()
                .await
                .map(|all| all.into_iter().find(|d| destination_matches(d, &request)))
        };
        match find().await {
            Ok(Some(d)) => {
                return StepOutcome::Done(json!({"destination_id": d.id, "existing": true}))
            }
            Ok(None) => {}
            Err(e) => return outcome_for("list destinations", &e),
        }
        match self.0.create_destination(&request).await {
            Ok(d) => StepOutcome::Done(json!({"destination_id": d.id, "existing": false})),
            Err(e) if e.may_have_taken_effect() => match find().await {
                Ok(Some(d)) => StepOutcome::Done(json!({"destination_id": d.id, "existing": true})),
                _ => super::common::retry_unknown_effect("create destination", &e),
            },
            Err(e) => outcome_for("create destination", &e),
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

fn app_user_param(f: &Fields<'_>) -> Result<String, String> {
    f.id("app_user_id")
}

#[async_trait]
impl StepKind for EnsureCustomer {
    fn name(&self) -> &'static str {
        "lean.ensure_customer"
    }

    fn schema(&self) -> Option<paysaga_core::KindSchema> {
        Some(paysaga_core::KindSchema {
            description: "Creates (or finds) the Lean customer of an app user.",
            params: vec![paysaga_core::FieldSpec::required(
                "app_user_id",
                paysaga_core::FieldType::String,
                "your id of the user",
            )],
            outputs: vec![
                paysaga_core::FieldSpec::required(
                    "customer_id",
                    paysaga_core::FieldType::String,
                    "Lean customer id",
                ),
                paysaga_core::FieldSpec::required(
                    "app_user_id",
                    paysaga_core::FieldType::String,
                    "your id of the user",
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
        Fields::new(params, Mode::Validate).and_then(|f| app_user_param(&f).map(|_| ()))
    }

    async fn run(&self, _ctx: &StepContext, params: Value) -> StepOutcome {
        let app_user_id = params!(&params, Mode::Run, app_user_param);
        match self.0.ensure_customer(&app_user_id).await {
            Ok(ensured) => {
                let existing = matches!(ensured, crate::lean::EnsuredCustomer::Existing(_));
                let c = ensured.into_customer();
                StepOutcome::Done(json!({
                    "customer_id": c.customer_id,
                    "app_user_id": c.app_user_id,
                    "existing": existing,
                }))
            }
            Err(e) => outcome_for("create customer", &e),
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

fn beneficiary_params(f: &Fields<'_>) -> Result<(String, String), String> {
    Ok((f.id("customer_id")?, f.id("destination_id")?))
}

#[async_trait]
impl StepKind for AwaitBeneficiary {
    fn name(&self) -> &'static str {
        "lean.await_beneficiary"
    }

    fn schema(&self) -> Option<paysaga_core::KindSchema> {
        Some(paysaga_core::KindSchema {
            description: "Waits until the destination is an active beneficiary of the customer.",
            params: vec![
                paysaga_core::FieldSpec::required(
                    "customer_id",
                    paysaga_core::FieldType::String,
                    "Lean customer id",
                ),
                paysaga_core::FieldSpec::required(
                    "destination_id",
                    paysaga_core::FieldType::String,
                    "Lean destination id",
                ),
            ],
            outputs: vec![
                paysaga_core::FieldSpec::required(
                    "beneficiary_id",
                    paysaga_core::FieldType::String,
                    "beneficiary id",
                ),
                paysaga_core::FieldSpec::required(
                    "payment_source_id",
                    paysaga_core::FieldType::String,
                    "payment source id",
                ),
                paysaga_core::FieldSpec::required(
                    "status",
                    paysaga_core::FieldType::String,
                    "ACTIVE",
                ),
            ],
        })
    }

    fn validate(&self, params: &Value) -> Result<(), String> {
        Fields::new(params, Mode::Validate).and_then(|f| beneficiary_params(&f).map(|_| ()))
    }

    async fn run(&self, _ctx: &StepContext, params: Value) -> StepOutcome {
        let (customer_id, destination_id) = params!(&params, Mode::Run, beneficiary_params);
        let sources = match self.0.list_payment_sources(&customer_id).await {
            Ok(s) => s,
            Err(e) => return outcome_for("list payment sources", &e),
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
            Some((source_id, beneficiary_id)) => StepOutcome::Done(json!({
                "beneficiary_id": beneficiary_id,
                "payment_source_id": source_id,
                "status": "ACTIVE",
            })),
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
                StepOutcome::Wait(spec)
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

struct IntentParams {
    amount: i64,
    currency: String,
    request: Option<CreatePaymentIntent>,
}

fn intent_params(f: &Fields<'_>) -> Result<IntentParams, String> {
    let customer_id = f.id("customer_id")?;
    let destination_id = f.id("destination_id")?;
    let amount = f.amount("amount")?;
    let currency = f.currency("currency")?;
    let description = f.string("description")?;
    if description.chars().count() > MAX_DESCRIPTION {
        return Err(format!(
            "{} must be at most {MAX_DESCRIPTION} characters (Lean's limit; got {})",
            f.path("description"),
            description.chars().count()
        ));
    }
    let request = match f.mode() {
        Mode::Validate => None,
        Mode::Run => Some(
            CreatePaymentIntent::new(
                amount,
                &currency,
                &destination_id,
                &customer_id,
                Some(&description),
            )
            .map_err(|e| format!("amount/currency: {e}"))?,
        ),
    };
    Ok(IntentParams {
        amount,
        currency,
        request,
    })
}

#[async_trait]
impl StepKind for CreateIntent {
    fn name(&self) -> &'static str {
        "lean.create_intent"
    }

    fn schema(&self) -> Option<paysaga_core::KindSchema> {
        Some(paysaga_core::KindSchema {
            description: "Creates a Lean payment intent (irreversible).",
            params: vec![
                paysaga_core::FieldSpec::required(
                    "customer_id",
                    paysaga_core::FieldType::String,
                    "Lean customer id",
                ),
                paysaga_core::FieldSpec::required(
                    "destination_id",
                    paysaga_core::FieldType::String,
                    "Lean destination id",
                ),
                paysaga_core::FieldSpec::required(
                    "amount",
                    paysaga_core::FieldType::Integer,
                    "amount in minor units",
                ),
                paysaga_core::FieldSpec::required(
                    "currency",
                    paysaga_core::FieldType::String,
                    "ISO 4217 code",
                ),
                paysaga_core::FieldSpec::required(
                    "description",
                    paysaga_core::FieldType::String,
                    "payment description",
                ),
            ],
            outputs: vec![
                paysaga_core::FieldSpec::required(
                    "intent_id",
                    paysaga_core::FieldType::String,
                    "payment intent id",
                ),
                paysaga_core::FieldSpec::required(
                    "amount",
                    paysaga_core::FieldType::Integer,
                    "amount in minor units",
                ),
                paysaga_core::FieldSpec::required(
                    "currency",
                    paysaga_core::FieldType::String,
                    "currency",
                ),
                paysaga_core::FieldSpec::required(
                    "customer_id",
                    paysaga_core::FieldType::String,
                    "Lean customer id",
                ),
                paysaga_core::FieldSpec::required(
                    "destination_id",
                    paysaga_core::FieldType::String,
                    "Lean destination id",
                ),
            ],
        })
    }

    fn validate(&self, params: &Value) -> Result<(), String> {
        Fields::new(params, Mode::Validate).and_then(|f| intent_params(&f).map(|_| ()))
    }

    fn irreversible(&self) -> bool {
        true
    }

    async fn run(&self, ctx: &StepContext, params: Value) -> StepOutcome {
        let p = params!(&params, Mode::Run, intent_params);
        let Some(request) = p.request else {
            return StepOutcome::fail("invalid params: no intent to create");
        };
        match self
            .0
            .create_payment_intent(&request, &ctx.idempotency_key())
            .await
        {
            Ok(intent) => StepOutcome::Done(json!({
                "intent_id": intent.payment_intent_id,
                "amount": intent.amount_minor().unwrap_or(p.amount),
                "currency": p.currency,
                "customer_id": request.customer_id,
                "destination_id": request.payment_destination_id,
            })),
            Err(e) => outcome_for("create payment intent", &e),
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

struct PaymentParams {
    intent_id: String,
    reconcile_for: Duration,
    authorization: Authorization,
    authorize_within: Duration,
    authorized_by: String,
}

fn payment_params(f: &Fields<'_>) -> Result<PaymentParams, String> {
    let authorization = match f.raw("authorization") {
        None => Authorization::Automatic,
        Some(_) => match f.one_of("authorization", &["automatic", "manual"])? {
            "manual" => Authorization::Manual,
            _ => Authorization::Automatic,
        },
    };
    let authorized_by = f
        .opt_string("authorized_by")?
        .unwrap_or_else(|| match authorization {
            Authorization::Manual => DEFAULT_MANUAL_AUTHORIZER.to_owned(),
            Authorization::Automatic => "Lean (automatic authorisation)".to_owned(),
        });
    Ok(PaymentParams {
        intent_id: f.id("intent_id")?,
        reconcile_for: f.duration("reconcile_for", DEFAULT_RECONCILE_FOR)?,
        authorization,
        authorize_within: f.duration("authorize_within", DEFAULT_AUTHORIZE_WITHIN)?,
        authorized_by,
    })
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
impl StepKind for AwaitPayment {
    fn name(&self) -> &'static str {
        "lean.await_payment"
    }

    fn schema(&self) -> Option<paysaga_core::KindSchema> {
        Some(paysaga_core::KindSchema {
            description: "Waits until the intent's payment is accepted by the bank (or rejected).",
            params: vec![
                paysaga_core::FieldSpec::required(
                    "intent_id",
                    paysaga_core::FieldType::String,
                    "payment intent id",
                ),
                paysaga_core::FieldSpec::optional(
                    "reconcile_for",
                    paysaga_core::FieldType::Duration,
                    "how long to reconcile a pending payment (default 2d)",
                ),
            ],
            outputs: vec![
                paysaga_core::FieldSpec::required(
                    "intent_id",
                    paysaga_core::FieldType::String,
                    "payment intent id",
                ),
                paysaga_core::FieldSpec::required(
                    "payment_id",
                    paysaga_core::FieldType::String,
                    "payment id",
                ),
                paysaga_core::FieldSpec::required(
                    "status",
                    paysaga_core::FieldType::String,
                    "payment status",
                ),
                paysaga_core::FieldSpec::optional(
                    "bank_transaction_reference",
                    paysaga_core::FieldType::String,
                    "bank reference",
                ),
                paysaga_core::FieldSpec::optional(
                    "amount",
                    paysaga_core::FieldType::Integer,
                    "amount in minor units",
                ),
            ],
        })
    }

    fn validate(&self, params: &Value) -> Result<(), String> {
        Fields::new(params, Mode::Validate).and_then(|f| payment_params(&f).map(|_| ()))
    }

    async fn run(&self, ctx: &StepContext, params: Value) -> StepOutcome {
        let p = params!(&params, Mode::Run, payment_params);
        let intent_id = p.intent_id.clone();
        let intent = match self.0.get_payment_intent(&intent_id).await {
            Ok(i) => i,
            Err(e) => return outcome_for("get payment intent", &e),
        };
        let mut spec = WaitSpec::new(PROVIDER, "payment.created", format!("intent:{intent_id}"));
        spec.event_types.push("payment.updated".to_owned());
        // Keep the reconciliation / authorisation marker across waits.
        spec.state = ctx.wait_state.clone().unwrap_or(Value::Null);
        let Some(payment) = intent.latest_payment() else {
            spec.provider_status = Some(format!("intent {intent_id} has no payment yet"));
            return StepOutcome::Wait(spec);
        };
        spec.provider_status = Some(format!("payment {} is {}", payment.id, payment.status));
        match &payment.status {
            PaymentStatus::AcceptedByBank => StepOutcome::Done(json!({
                "intent_id": intent_id,
                "payment_id": payment.id,
                "status": payment.status.to_string(),
                "bank_transaction_reference": payment.bank_transaction_reference,
                "amount": payment.amount_minor().ok(),
                "currency": payment.currency,
            })),
            PaymentStatus::RejectedByBank | PaymentStatus::Failed => StepOutcome::fail(format!(
                "Lean payment {} of intent {intent_id} is {}: no money was paid",
                payment.id, payment.status
            )),
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
                StepOutcome::Wait(spec)
            }
            PaymentStatus::Created if p.authorization == Authorization::Manual => {
                let deadline_passed = matches!(
                    ctx.wake,
                    paysaga_core::Wake::Poll {
                        deadline_passed: true
                    }
                );
                if deadline_passed && state_flag(ctx, "awaiting_authorization") {
                    return StepOutcome::fail(format!(
                        "Lean payment {} ({}) of intent {intent_id} was not authorised within \
                         {} by {}: it is still queued at Lean and may yet be authorised there. \
                         Reject it in Lean's Application Dashboard (or get it authorised), \
                         then resume this saga (the step reads the final status again) or cancel it",
                        payment.id,
                        money(payment),
                        humantime::format_duration(p.authorize_within),
                        p.authorized_by,
                    ));
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
                StepOutcome::Wait(spec)
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
                StepOutcome::Wait(spec)
            }
            _ => StepOutcome::Wait(spec),
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
