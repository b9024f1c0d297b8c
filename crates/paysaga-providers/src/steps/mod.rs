//! The provider step kinds: the Rust code the definitions in `workflows/` name.
//!
//! | kind | effect | compensable | irreversible |
//! |---|---|---|---|
//! | `lumanu.fund_invoice` | creates a funding invoice (looks for an earlier one's deposit first, then a fenced effect mark) | no | no |
//! | `lumanu.await_deposit` | waits for the invoice's deposit (`transfer.created`); alerts on deposits of duplicate invoices | — | — |
//! | `lumanu.link_deposit` | links the deposit to the funding | no | no |
//! | `lumanu.create_payable` | creates a payable (look-before-create) | cancels it | no |
//! | `lumanu.approve_payable` | approves it | no | no |
//! | `lumanu.pay_from_balance` | pays it from the wallet balance | no | **yes** |
//! | `lumanu.await_payable_paid` | waits for `payable.paid` | — | — |
//! | `lumanu.pay_campaign` | pays a campaign's approved payables from the balance in batches (checks the sum against the funding first) | no | **yes** |
//! | `lumanu.await_campaign_paid` | waits until every payable of the campaign is paid | — | — |
//! | `blaaiz.create_customer` | finds (by email) or creates a customer | no | no |
//! | `blaaiz.upload_documents` | uploads KYC documents (pre-signed URLs) | no | no |
//! | `blaaiz.attach_files` | attaches them, which starts the review | no | no |
//! | `blaaiz.await_verification` | waits for `VERIFIED` (`REJECTED` fails) | — | — |
//! | `blaaiz.payout` | creates the payout (look-before-create, then a fenced effect mark: `StepContext::begin_effect`) | no | **yes** |
//! | `blaaiz.await_payout` | waits for `SUCCESSFUL` (`FAILED` fails) | — | — |
//! | `lean.create_destination` | finds or creates a payment destination | no | no |
//! | `lean.ensure_customer` | creates the customer (409 = existing) | no | no |
//! | `lean.await_beneficiary` | waits until the beneficiary for the destination is `ACTIVE` | — | — |
//! | `lean.create_intent` | creates the payment intent (`Idempotency-Key`) | no | **yes** |
//! | `lean.await_payment` | waits for `ACCEPTED_BY_BANK`; reconciliation wait on `PENDING_WITH_BANK` | — | — |
//!
//! Every create is safe to repeat after a crash (design invariant 2): Lean intents carry
//! `Idempotency-Key: ctx.idempotency_key()`; Lumanu payables and Blaaiz payouts carry a
//! reference derived from that key (in the payable's description, in the payout's `note`) and
//! the step looks for an object with that reference before creating one; Blaaiz customers are
//! looked up by email, Lean destinations by IBAN/account number + name, Lean customers are
//! unique per `app_user_id`; a Lumanu funding invoice is found by the deposit that paid it
//! (Lumanu cannot list fundings). Identifiers go into URLs as one path segment each; `.` and
//! `..` are refused at validation.
//!
//! Every waiting step asks the provider first (the object may already be final), and on an
//! event or a poll re-fetches the object from the API before deciding: a webhook body only
//! says *when* to look.
//!
//! Client errors become outcomes through [`common::outcome_for`]: transient errors
//! ([`crate::Error::is_transient`]) retry under the step's policy (no sooner than the
//! provider's `Retry-After`), all others fail the step. Error texts are the client's
//! `Display`, which never contains credentials.
//!
//! Parameters: every provider kind is a typed [`paysaga_core::Step`] (its parameter and output
//! structs, with the value types of [`parameters`], give the schema `paysaga kinds` prints and
//! `start` checks).
//!
//! Registration: [`step_kinds`] returns the kinds of the configured providers as
//! `Arc<dyn StepKind>`; the binary registers them with
//! `paysaga_runtime::Registry::register_arc`. (Returning the kinds instead of taking the
//! registry keeps this crate free of the runtime and its database dependencies.)

pub mod blaaiz;
pub mod common;
pub mod lean;
pub mod lumanu;
pub mod parameters;

use std::sync::Arc;

use paysaga_core::StepKind;

use crate::config::Clients;

/// The names of the Lumanu step kinds.
pub const LUMANU_KINDS: [&str; 9] = [
    "lumanu.fund_invoice",
    "lumanu.await_deposit",
    "lumanu.link_deposit",
    "lumanu.create_payable",
    "lumanu.approve_payable",
    "lumanu.pay_from_balance",
    "lumanu.await_payable_paid",
    "lumanu.pay_campaign",
    "lumanu.await_campaign_paid",
];

/// The names of the Blaaiz step kinds.
pub const BLAAIZ_KINDS: [&str; 6] = [
    "blaaiz.create_customer",
    "blaaiz.upload_documents",
    "blaaiz.attach_files",
    "blaaiz.await_verification",
    "blaaiz.payout",
    "blaaiz.await_payout",
];

/// The names of the Lean step kinds.
pub const LEAN_KINDS: [&str; 5] = [
    "lean.create_destination",
    "lean.ensure_customer",
    "lean.await_beneficiary",
    "lean.create_intent",
    "lean.await_payment",
];

/// The step kinds of every provider configured in `clients` (a provider without a client
/// contributes none: a worker without it leaves sagas needing its kinds to other workers).
///
/// Register them with `registry.register_arc(kind)` for each returned kind.
pub fn step_kinds(clients: &Clients) -> Vec<Arc<dyn StepKind>> {
    let mut kinds: Vec<Arc<dyn StepKind>> = Vec::new();
    if let Some(client) = &clients.lumanu {
        kinds.extend(lumanu::kinds(client));
    }
    if let Some(client) = &clients.blaaiz {
        kinds.extend(blaaiz::kinds(client));
    }
    if let Some(client) = &clients.lean {
        kinds.extend(lean::kinds(client));
    }
    kinds
}

/// Base URL of the clients behind [`validation_kinds`]: a reserved name that never resolves.
const UNCONFIGURED_BASE_URL: &str = "http://unconfigured.invalid";

/// Every provider's step kinds, bound to clients that reach nothing (`*.invalid` hosts, no
/// credentials): for processes that validate definitions and saga inputs but never run steps
/// (`paysaga definitions submit`, `paysaga start`, the operator commands), so that they need no
/// provider secrets. A worker registers [`step_kinds`] of its configured providers instead.
pub fn validation_kinds() -> Vec<Arc<dyn StepKind>> {
    use secrecy::SecretString;

    let http = crate::HttpOptions::default();
    let none = || SecretString::from(String::new());
    let clients = Clients {
        lumanu: Some(crate::lumanu::LumanuClient::new(
            crate::lumanu::LumanuConfig {
                base_url: UNCONFIGURED_BASE_URL.to_string(),
                auth_url: UNCONFIGURED_BASE_URL.to_string(),
                client_id: String::new(),
                client_secret: none(),
                audience: None,
                http: http.clone(),
            },
        )),
        blaaiz: Some(crate::blaaiz::BlaaizClient::new(
            crate::blaaiz::BlaaizConfig {
                base_url: UNCONFIGURED_BASE_URL.to_string(),
                auth: crate::blaaiz::BlaaizAuth::ApiKey(none()),
                http: http.clone(),
            },
        )),
        lean: Some(crate::lean::LeanClient::new(crate::lean::LeanConfig {
            base_url: UNCONFIGURED_BASE_URL.to_string(),
            auth: crate::lean::LeanAuth::AppToken(none()),
            http,
        })),
    };
    step_kinds(&clients)
}
