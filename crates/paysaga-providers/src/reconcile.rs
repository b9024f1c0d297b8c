//! Reconciliation against the providers (issue 16 item 3): what the engine believes about each
//! payout against what the provider reports, and the provider objects no saga owns.
//!
//! [`compare`] is pure (saga facts + provider facts -> drift); the `observe_*` functions read
//! the providers through their documented GET/list endpoints only:
//! - Lumanu: `GET /payable/{id}` per saga's payable; `GET /workspace`, `GET /payable`
//!   (per workspace) and `GET /workspace/{id}/wallet/transaction?type=deposit` list what
//!   sagas may not own. Fundings cannot be listed (no documented list): a stray funding
//!   invoice is seen once it is paid, as its deposit.
//! - Blaaiz: `GET /api/external/transaction/{id}` per saga's payout; `POST
//!   /api/external/transaction` (type `payout`) lists payouts.
//! - Lean: `GET /payments/v1/intents/{id}` per saga's intent (its latest payment). Lean
//!   documents no list of intents or payments: no stray-object check for Lean.
//!
//! Money no saga accounts for is the deposits in a Lumanu wallet no saga references, per
//! currency: the only provider balance made of objects we can attribute (a Blaaiz wallet is
//! the business's own float and Lean pays from the customer's account).

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use chrono::{DateTime, Utc};
use paysaga_core::{ClosedOutcome, SagaStatus};
use serde::Serialize;
use uuid::Uuid;

use crate::blaaiz::{BlaaizClient, TransactionFilter};
use crate::lean::LeanClient;
use crate::lumanu::{LumanuClient, PayableStatus, WalletTransactionType};

/// The kinds of drift, as stored (`paysaga_drift.kind`) and exported (`paysaga_drift{kind}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DriftKind {
    /// The provider says paid, failed or reversed; the saga says otherwise (a lost or late
    /// webhook, or a reversal after the saga ended).
    StatusMismatch,
    /// A provider object carrying our reference (or money in our wallet) that no saga owns.
    UnownedObject,
    /// Money at the provider no saga accounts for, per currency.
    UnaccountedMoney,
}

impl DriftKind {
    /// Every kind, in order.
    pub const ALL: [DriftKind; 3] = [
        DriftKind::StatusMismatch,
        DriftKind::UnownedObject,
        DriftKind::UnaccountedMoney,
    ];

    /// The stored text.
    pub fn as_str(self) -> &'static str {
        match self {
            DriftKind::StatusMismatch => "status_mismatch",
            DriftKind::UnownedObject => "unowned_object",
            DriftKind::UnaccountedMoney => "unaccounted_money",
        }
    }
}

/// What a saga's status says about its payout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SagaBelief {
    /// Completed, or closed by an operator as paid.
    Paid,
    /// Compensated, cancelled, or closed as not paid.
    NotPaid,
    /// Still running (scheduled, retrying, waiting, compensating).
    InFlight,
    /// Parked for an operator: it claims nothing, the operator decides.
    WithOperator,
}

impl SagaBelief {
    /// The belief of a saga in `status` (with its closed outcome).
    pub fn of(status: SagaStatus, outcome: Option<ClosedOutcome>) -> Self {
        match status {
            SagaStatus::Completed => SagaBelief::Paid,
            SagaStatus::Compensated | SagaStatus::Cancelled => SagaBelief::NotPaid,
            SagaStatus::Closed => match outcome {
                Some(ClosedOutcome::Paid) => SagaBelief::Paid,
                Some(ClosedOutcome::NotPaid) | None => SagaBelief::NotPaid,
            },
            SagaStatus::Scheduled
            | SagaStatus::Retrying
            | SagaStatus::Waiting
            | SagaStatus::Compensating => SagaBelief::InFlight,
            SagaStatus::NeedsOperator => SagaBelief::WithOperator,
        }
    }

    fn says(self) -> &'static str {
        match self {
            SagaBelief::Paid => "paid",
            SagaBelief::NotPaid => "not paid",
            SagaBelief::InFlight => "in flight",
            SagaBelief::WithOperator => "waiting for an operator",
        }
    }
}

/// A provider object's state, as far as money goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ObjectState {
    /// The money reached the payee.
    Paid,
    /// It will not be paid (failed, rejected, cancelled).
    Failed,
    /// Paid, then reversed.
    Reversed,
    /// Not final yet (or not a payout: a deposit, an unpaid payable).
    Pending,
}

impl ObjectState {
    fn says(self) -> &'static str {
        match self {
            ObjectState::Paid => "paid",
            ObjectState::Failed => "failed",
            ObjectState::Reversed => "reversed",
            ObjectState::Pending => "pending",
        }
    }
}

/// A provider object as read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObservedObject {
    /// `lumanu`, `blaaiz`, `lean`.
    pub provider: &'static str,
    /// `payable`, `payout`, `payment_intent`, `deposit`.
    pub object_type: &'static str,
    /// The provider's id.
    pub id: String,
    /// Its state.
    pub state: ObjectState,
    /// The provider's own status text, for the report.
    pub status_text: String,
    /// It carries a paysaga reference (`[ps-...]` / `ps-...`): one of our steps created it.
    pub ours: bool,
    /// Money it holds at the provider (a deposit in our wallet): currency, minor units.
    pub holds: Option<(String, i64)>,
}

/// One payout a saga knows by reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SagaPayout {
    /// The saga.
    pub saga_id: Uuid,
    /// Its workflow.
    pub workflow: String,
    /// What its status says.
    pub belief: SagaBelief,
    /// Since its last change.
    pub idle_for: Duration,
    /// The provider.
    pub provider: &'static str,
    /// The provider's id of the payout object.
    pub object_id: String,
}

/// A drift found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Drift {
    /// Its kind.
    pub kind: DriftKind,
    /// The provider.
    pub provider: String,
    /// The saga concerned, if one is.
    pub saga_id: Option<Uuid>,
    /// The provider object, if one is.
    pub object_id: Option<String>,
    /// Currency of `amount`.
    pub currency: Option<String>,
    /// Minor units.
    pub amount: Option<i64>,
    /// What differs.
    pub detail: String,
    /// What an operator should do.
    pub action: String,
}

/// What the providers said, for [`compare`].
#[derive(Debug, Clone, Default)]
pub struct Observation {
    /// Each saga payout with the provider's object read by its id.
    pub checked: Vec<(SagaPayout, ObservedObject)>,
    /// Objects listed at the providers (owned or not).
    pub listed: Vec<ObservedObject>,
    /// Provider objects read (checked + listed).
    pub objects_read: i64,
}

/// The drift between what sagas believe and what providers report.
///
/// - A checked payout: the provider's final state (paid, failed, reversed) against the saga's
///   belief; an in-flight saga only once it has been idle for `grace` (a webhook may be on its
///   way); a saga parked for an operator is left to the operator.
/// - A listed object carrying our reference whose id is not in `owned`: unowned.
/// - Money listed objects hold and no saga owns: one finding per provider and currency.
pub fn compare(observation: &Observation, owned: &HashSet<String>, grace: Duration) -> Vec<Drift> {
    let mut out = Vec::new();
    for (saga, object) in &observation.checked {
        if let Some(drift) = status_drift(saga, object, grace) {
            out.push(drift);
        }
    }
    let mut money: BTreeMap<(&str, &str), (i64, usize)> = BTreeMap::new();
    for object in &observation.listed {
        if owned.contains(&object.id) {
            continue;
        }
        if object.ours {
            out.push(Drift {
                kind: DriftKind::UnownedObject,
                provider: object.provider.to_owned(),
                saga_id: None,
                object_id: Some(object.id.clone()),
                currency: object.holds.as_ref().map(|(c, _)| c.clone()),
                amount: object.holds.as_ref().map(|(_, a)| *a),
                detail: format!(
                    "{} {} ({}) carries a paysaga reference but no saga owns it",
                    object.provider, object.object_type, object.status_text
                ),
                action: unowned_action(object),
            });
        }
        if let Some((currency, amount)) = &object.holds {
            let entry = money.entry((object.provider, currency)).or_default();
            entry.0 += amount;
            entry.1 += 1;
        }
    }
    for ((provider, currency), (amount, count)) in money {
        out.push(Drift {
            kind: DriftKind::UnaccountedMoney,
            provider: provider.to_owned(),
            saga_id: None,
            object_id: None,
            currency: Some(currency.to_owned()),
            amount: Some(amount),
            detail: format!(
                "{amount} minor units of {currency} at {provider} in {count} object(s) no saga accounts for"
            ),
            action: format!(
                "find who sent it (the unowned objects listed with it); link it to its funding, \
                 refund it, or book it by hand at {provider}"
            ),
        });
    }
    out
}

fn status_drift(saga: &SagaPayout, object: &ObservedObject, grace: Duration) -> Option<Drift> {
    use ObjectState as O;
    use SagaBelief as B;
    let idle = saga.idle_for >= grace;
    let action = match (saga.belief, object.state) {
        (B::WithOperator, _) | (_, O::Pending) => return None,
        (B::Paid, O::Paid) | (B::NotPaid, O::Failed) => return None,
        (B::InFlight, _) if !idle => return None,
        (B::InFlight, O::Paid | O::Failed | O::Reversed) => format!(
            "a webhook was lost or is late: `paysaga retry {}` makes the step read the provider now",
            saga.saga_id
        ),
        (B::NotPaid, O::Paid) => format!(
            "money left although saga {} says not paid: confirm with {} and recover it from the payee, \
             or `paysaga close {} --outcome paid`",
            saga.saga_id, saga.provider, saga.saga_id
        ),
        (B::Paid, O::Reversed) => format!(
            "the payout was reversed after saga {} completed: tell the payee and pay again with a new saga",
            saga.saga_id
        ),
        (B::Paid, O::Failed) => format!(
            "saga {} completed but {} says the payout failed: confirm and pay again with a new saga",
            saga.saga_id, saga.provider
        ),
        (B::NotPaid, O::Reversed) => return None,
    };
    Some(Drift {
        kind: DriftKind::StatusMismatch,
        provider: saga.provider.to_owned(),
        saga_id: Some(saga.saga_id),
        object_id: Some(object.id.clone()),
        currency: None,
        amount: None,
        detail: format!(
            "{} {} is {} ({}); {} saga {} says {}",
            object.provider,
            object.object_type,
            object.state.says(),
            object.status_text,
            saga.workflow,
            saga.saga_id,
            saga.belief.says()
        ),
        action,
    })
}

fn unowned_action(object: &ObservedObject) -> String {
    match (object.provider, object.object_type) {
        ("lumanu", "payable") if object.state == ObjectState::Pending => format!(
            "a second payable from a retried create: cancel it at Lumanu (POST /payable/{}/cancel) \
             unless it was meant to be paid",
            object.id
        ),
        ("lumanu", "deposit") => format!(
            "a deposit no saga linked (a second funding invoice paid, or money sent without one): \
             link it to its funding or refund the payer (wallet transaction {})",
            object.id
        ),
        (provider, _) => format!(
            "a {} {} no saga owns: check whether the payee was paid twice and recover the second payment",
            provider, object.object_type
        ),
    }
}

/// Reference names of the payout objects, by provider: what [`SagaPayout::object_id`] is.
pub const PAYOUT_REFERENCES: [(&str, &str); 3] = [
    ("lumanu", "payable_id"),
    ("blaaiz", "transaction_id"),
    ("lean", "intent_id"),
];

/// Which listed objects a run looks at: created at or after `since` (all when `None`) and
/// before `settled_before` (an object younger than that may belong to a step whose commit is
/// still on its way, so it is not called unowned yet).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListWindow {
    /// `--since`.
    pub since: Option<DateTime<Utc>>,
    /// Now minus the grace.
    pub settled_before: DateTime<Utc>,
}

impl ListWindow {
    fn contains(&self, created_at: Option<&str>) -> bool {
        let Some(at) = created_at.and_then(|a| DateTime::parse_from_rfc3339(a).ok()) else {
            return true;
        };
        let at = at.with_timezone(&Utc);
        self.since.is_none_or(|s| at >= s) && at <= self.settled_before
    }
}

/// Lumanu: each payable by id, then every workspace's payables and deposits created within
/// `window`.
pub async fn observe_lumanu(
    client: &LumanuClient,
    payouts: Vec<SagaPayout>,
    window: ListWindow,
    into: &mut Observation,
) -> crate::Result<()> {
    for saga in payouts {
        let p = client.get_payable(&saga.object_id).await?;
        into.objects_read += 1;
        let object = lumanu_payable(p);
        into.checked.push((saga, object));
    }
    for ws in client.all_workspaces().await? {
        for p in client.all_payables(&ws.id).await? {
            into.objects_read += 1;
            if window.contains(p.created_at.as_deref()) {
                into.listed.push(lumanu_payable(p));
            }
        }
        let deposits = client
            .wallet_transactions_matching(&ws.id, Some(WalletTransactionType::Deposit), |_| true)
            .await?;
        for t in deposits {
            into.objects_read += 1;
            if !window.contains(t.created_at.as_deref()) {
                continue;
            }
            into.listed.push(ObservedObject {
                provider: "lumanu",
                object_type: "deposit",
                ours: t.description.as_deref().is_some_and(|d| d.contains("[ps-")),
                state: ObjectState::Pending,
                status_text: t
                    .status
                    .as_ref()
                    .map_or("deposit".to_owned(), |s| s.to_string()),
                holds: Some(("USD".to_owned(), t.amount)),
                id: t.id,
            });
        }
    }
    Ok(())
}

fn lumanu_payable(p: crate::lumanu::Payable) -> ObservedObject {
    let state = match &p.payable_status {
        Some(PayableStatus::Paid) => ObjectState::Paid,
        Some(PayableStatus::Canceled) => ObjectState::Failed,
        Some(PayableStatus::Reversed) => ObjectState::Reversed,
        _ => ObjectState::Pending,
    };
    ObservedObject {
        provider: "lumanu",
        object_type: "payable",
        ours: p.description.as_deref().is_some_and(|d| d.contains("[ps-")),
        state,
        status_text: p
            .payable_status
            .as_ref()
            .map_or("no status".to_owned(), |s| s.to_string()),
        holds: None,
        id: p.id,
    }
}

/// Blaaiz: each payout by id, then every payout created within `window`.
pub async fn observe_blaaiz(
    client: &BlaaizClient,
    payouts: Vec<SagaPayout>,
    window: ListWindow,
    into: &mut Observation,
) -> crate::Result<()> {
    for saga in payouts {
        let t = client.get_transaction(&saga.object_id).await?;
        into.objects_read += 1;
        into.checked.push((saga, blaaiz_payout(t)));
    }
    let filter = TransactionFilter {
        transaction_type: Some("payout".to_owned()),
        start_date: window.since.map(|s| s.format("%Y-%m-%d").to_string()),
        ..TransactionFilter::default()
    };
    for page in 1..=crate::blaaiz::SCAN_MAX_PAGES {
        let result = client.list_transactions(&filter, page).await?;
        let empty = result.data.is_empty();
        let last = result
            .meta
            .as_ref()
            .and_then(|m| m.last_page)
            .unwrap_or(page);
        for t in result.data {
            into.objects_read += 1;
            if window.contains(t.date.as_deref()) {
                into.listed.push(blaaiz_payout(t));
            }
        }
        if empty || page >= last {
            break;
        }
    }
    Ok(())
}

fn blaaiz_payout(t: crate::blaaiz::Transaction) -> ObservedObject {
    use crate::blaaiz::TransactionStatus as S;
    let state = match t.status {
        S::Reversed => ObjectState::Reversed,
        ref s if s.is_success() => ObjectState::Paid,
        ref s if s.is_failure() => ObjectState::Failed,
        _ => ObjectState::Pending,
    };
    let ours = [t.merchant_reference.as_deref(), t.note.as_deref()]
        .into_iter()
        .flatten()
        .any(|r| r.starts_with("ps-"));
    ObservedObject {
        provider: "blaaiz",
        object_type: "payout",
        ours,
        state,
        status_text: t.status.to_string(),
        holds: None,
        id: t.id,
    }
}

/// Lean: each intent by id (its latest payment's status). Lean documents no list.
pub async fn observe_lean(
    client: &LeanClient,
    payouts: Vec<SagaPayout>,
    into: &mut Observation,
) -> crate::Result<()> {
    use crate::lean::PaymentStatus as S;
    for saga in payouts {
        let intent = client.get_payment_intent(&saga.object_id).await?;
        into.objects_read += 1;
        let (state, text) = match intent.latest_payment() {
            None => (ObjectState::Pending, "no payment".to_owned()),
            Some(p) => (
                match p.status {
                    S::AcceptedByBank => ObjectState::Paid,
                    ref s if s.is_failure() => ObjectState::Failed,
                    _ => ObjectState::Pending,
                },
                p.status.to_string(),
            ),
        };
        into.checked.push((
            saga,
            ObservedObject {
                provider: "lean",
                object_type: "payment_intent",
                id: intent.payment_intent_id,
                state,
                status_text: text,
                ours: true,
                holds: None,
            },
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn saga(belief: SagaBelief, idle_s: u64, id: &str) -> SagaPayout {
        SagaPayout {
            saga_id: Uuid::from_u128(id.len() as u128),
            workflow: "lumanu_prefund".into(),
            belief,
            idle_for: Duration::from_secs(idle_s),
            provider: "lumanu",
            object_id: id.into(),
        }
    }

    fn object(id: &str, state: ObjectState, ours: bool, holds: Option<i64>) -> ObservedObject {
        ObservedObject {
            provider: "lumanu",
            object_type: if holds.is_some() {
                "deposit"
            } else {
                "payable"
            },
            id: id.into(),
            state,
            status_text: "x".into(),
            ours,
            holds: holds.map(|a| ("USD".to_owned(), a)),
        }
    }

    fn kinds(drift: &[Drift]) -> Vec<(DriftKind, Option<String>)> {
        drift
            .iter()
            .map(|d| (d.kind, d.object_id.clone()))
            .collect()
    }

    const GRACE: Duration = Duration::from_secs(300);

    #[test]
    fn agreeing_sagas_and_owned_objects_are_no_drift() {
        use ObjectState as O;
        use SagaBelief as B;
        let checked = vec![
            (saga(B::Paid, 0, "p1"), object("p1", O::Paid, true, None)),
            (
                saga(B::NotPaid, 0, "p2"),
                object("p2", O::Failed, true, None),
            ),
            (
                saga(B::NotPaid, 0, "p3"),
                object("p3", O::Pending, true, None),
            ),
            (
                saga(B::InFlight, 9999, "p4"),
                object("p4", O::Pending, true, None),
            ),
            (
                saga(B::WithOperator, 9999, "p5"),
                object("p5", O::Paid, true, None),
            ),
        ];
        let listed = vec![
            object("p1", O::Paid, true, None),
            object("d1", O::Pending, true, Some(500)),
        ];
        let owned: HashSet<String> = ["p1", "d1"].map(String::from).into();
        let observation = Observation {
            checked,
            listed,
            objects_read: 7,
        };
        assert_eq!(compare(&observation, &owned, GRACE), []);
    }

    #[test]
    fn a_final_provider_state_the_saga_contradicts_is_a_status_mismatch() {
        use ObjectState as O;
        use SagaBelief as B;
        let checked = vec![
            (
                saga(B::Paid, 0, "rev"),
                object("rev", O::Reversed, true, None),
            ),
            (
                saga(B::Paid, 0, "fail"),
                object("fail", O::Failed, true, None),
            ),
            (
                saga(B::NotPaid, 0, "paid"),
                object("paid", O::Paid, true, None),
            ),
            (
                saga(B::InFlight, 600, "lost"),
                object("lost", O::Paid, true, None),
            ),
            // Within the grace: the webhook may still come.
            (
                saga(B::InFlight, 10, "young"),
                object("young", O::Paid, true, None),
            ),
        ];
        let observation = Observation {
            checked,
            ..Observation::default()
        };
        let drift = compare(&observation, &HashSet::new(), GRACE);
        let expect: Vec<_> = ["rev", "fail", "paid", "lost"]
            .map(|id| (DriftKind::StatusMismatch, Some(id.to_owned())))
            .into();
        assert_eq!(kinds(&drift), expect);
        assert!(drift[0].detail.contains("reversed"), "{}", drift[0].detail);
        assert!(
            drift[3].action.contains("paysaga retry"),
            "{}",
            drift[3].action
        );
    }

    #[test]
    fn unowned_objects_with_our_reference_and_money_no_saga_owns_are_reported_per_currency() {
        use ObjectState as O;
        let listed = vec![
            object("stray-payable", O::Pending, true, None),
            object("foreign-payable", O::Pending, false, None),
            object("stray-deposit", O::Pending, true, Some(700)),
            object("untagged-deposit", O::Pending, false, Some(300)),
            object("owned-deposit", O::Pending, true, Some(1000)),
        ];
        let owned: HashSet<String> = ["owned-deposit".to_owned()].into();
        let observation = Observation {
            listed,
            ..Observation::default()
        };
        let drift = compare(&observation, &owned, GRACE);
        assert_eq!(
            kinds(&drift),
            [
                (DriftKind::UnownedObject, Some("stray-payable".to_owned())),
                (DriftKind::UnownedObject, Some("stray-deposit".to_owned())),
                (DriftKind::UnaccountedMoney, None),
            ]
        );
        assert_eq!(drift[2].amount, Some(1000));
        assert_eq!(drift[2].currency.as_deref(), Some("USD"));
        assert!(drift[0].action.contains("cancel"), "{}", drift[0].action);
    }

    #[test]
    fn listed_objects_younger_than_the_grace_or_older_than_since_are_left_out() {
        let now = Utc::now();
        let window = ListWindow {
            since: Some(now - chrono::Duration::hours(2)),
            settled_before: now - chrono::Duration::minutes(30),
        };
        let at = |minutes: i64| (now - chrono::Duration::minutes(minutes)).to_rfc3339();
        assert!(window.contains(Some(&at(60))));
        assert!(
            !window.contains(Some(&at(5))),
            "a create whose commit may be on its way"
        );
        assert!(!window.contains(Some(&at(180))), "before --since");
        assert!(window.contains(None), "no time: looked at");
    }

    #[test]
    fn beliefs_follow_the_saga_status_and_closed_outcome() {
        assert_eq!(
            SagaBelief::of(SagaStatus::Completed, None),
            SagaBelief::Paid
        );
        assert_eq!(
            SagaBelief::of(SagaStatus::Closed, Some(ClosedOutcome::Paid)),
            SagaBelief::Paid
        );
        assert_eq!(
            SagaBelief::of(SagaStatus::Closed, Some(ClosedOutcome::NotPaid)),
            SagaBelief::NotPaid
        );
        assert_eq!(
            SagaBelief::of(SagaStatus::Waiting, None),
            SagaBelief::InFlight
        );
        assert_eq!(
            SagaBelief::of(SagaStatus::NeedsOperator, None),
            SagaBelief::WithOperator
        );
        assert_eq!(
            DriftKind::ALL.map(DriftKind::as_str),
            ["status_mismatch", "unowned_object", "unaccounted_money"]
        );
    }
}
