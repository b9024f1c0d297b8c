//! A definition built in Rust is the same data as its TOML file: the shipped workflows,
//! written with `Definition::builder`, have the content hashes of `workflows/*.toml`.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use paysaga_core::{Condition, Definition, RetryPolicy, StepDef};
use serde_json::json;

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}
fn mins(n: u64) -> Duration {
    secs(60 * n)
}
fn hours(n: u64) -> Duration {
    mins(60 * n)
}
fn days(n: u64) -> Duration {
    hours(24 * n)
}

/// The retry policy the shipped workflows write out in full.
fn retry(initial: Duration, max_delay: Duration, attempts: u32, total: Duration) -> RetryPolicy {
    RetryPolicy::default()
        .with_initial_delay(initial)
        .with_multiplier(2.0)
        .with_max_delay(max_delay)
        .with_max_attempts(attempts)
        .with_max_total(total)
        .with_jitter(0.2)
}

fn shipped(file: &str) -> Definition {
    let path = format!("{}/../../workflows/{file}", env!("CARGO_MANIFEST_DIR"));
    Definition::from_toml(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn assert_same(built: Definition, file: &str) {
    let parsed = shipped(file);
    assert_eq!(built, parsed, "{file}");
    assert_eq!(built.content_hash(), parsed.content_hash(), "{file}");
}

#[test]
fn the_lumanu_workflow_built_in_rust_has_the_toml_files_content_hash() {
    let def = Definition::builder("lumanu_prefund", 1)
        .description("Lumanu: fund by invoice, wait for the deposit, link it, create + approve + pay a payable, wait until paid")
        .step(
            StepDef::new("fund_invoice", "lumanu.fund_invoice", json!({
                "workspace_id": "$.input.workspace_id", "amount": "$.input.amount",
                "currency": "$.input.currency", "description": "$.input.description",
                "invoice": "$.input.invoice"}))
            .with_retry(retry(secs(2), mins(5), 8, hours(2)))
            .with_timeout(secs(60)),
        )
        .step(
            StepDef::new("await_deposit", "lumanu.await_deposit", json!({
                "workspace_id": "$.input.workspace_id",
                "funding_id": "$.steps.fund_invoice.funding_id"}))
            .with_retry(retry(secs(5), mins(10), 20, days(8)))
            .with_timeout(mins(2))
            .with_deadline(days(7))
            .with_poll_every(mins(10)),
        )
        .step(
            StepDef::new("link_deposit", "lumanu.link_deposit", json!({
                "funding_id": "$.steps.fund_invoice.funding_id",
                "transfer_id": "$.steps.await_deposit.transfer_id"}))
            .with_retry(retry(secs(2), mins(5), 10, hours(6))),
        )
        .step(
            StepDef::new("create_payable", "lumanu.create_payable", json!({
                "workspace_id": "$.input.workspace_id", "amount": "$.input.amount",
                "currency": "$.input.currency", "description": "$.input.description",
                "payee": "$.input.payee"}))
            .with_retry(retry(secs(2), mins(5), 10, hours(6)))
            .with_timeout(mins(2)),
        )
        .step(
            StepDef::new("approve_payable", "lumanu.approve_payable", json!({
                "payable_id": "$.steps.create_payable.payable_id"}))
            .with_retry(retry(secs(2), mins(5), 10, hours(6))),
        )
        .step(
            StepDef::new("pay_from_balance", "lumanu.pay_from_balance", json!({
                "workspace_id": "$.input.workspace_id",
                "payable_id": "$.steps.create_payable.payable_id"}))
            .with_retry(retry(secs(5), mins(10), 12, hours(12))),
        )
        .step(
            StepDef::new("await_payable_paid", "lumanu.await_payable_paid", json!({
                "payable_id": "$.steps.create_payable.payable_id"}))
            .with_retry(retry(secs(5), mins(10), 20, days(6)))
            .with_deadline(days(5))
            .with_poll_every(mins(15)),
        )
        .build();
    assert_same(def, "lumanu_prefund.toml");
}

#[test]
fn the_blaaiz_workflow_built_in_rust_has_the_toml_files_content_hash() {
    let customer = "$.steps.create_customer.customer_id";
    let status = "$.steps.create_customer.verification_status";
    let not_verified_nor_in_review =
        Condition::not_in(status, vec![json!("VERIFIED"), json!("PROCESSING")]);
    let def = Definition::builder("blaaiz_kyc_payout", 2)
        .description("Blaaiz: customer, KYC documents, verification, payout, payout result")
        .step(
            StepDef::new(
                "create_customer",
                "blaaiz.create_customer",
                json!({"customer": "$.input.customer"}),
            )
            .with_retry(retry(secs(2), mins(5), 10, hours(6))),
        )
        .step(
            StepDef::new(
                "upload_documents",
                "blaaiz.upload_documents",
                json!({
                "customer_id": customer, "documents": "$.input.documents"}),
            )
            .with_retry(retry(secs(2), mins(5), 8, hours(2)))
            .with_timeout(mins(5))
            .with_when(not_verified_nor_in_review.clone()),
        )
        .step(
            StepDef::new(
                "attach_files",
                "blaaiz.attach_files",
                json!({
                "customer_id": customer, "files": "$.steps.upload_documents.files"}),
            )
            .with_retry(retry(secs(2), mins(5), 10, hours(6)))
            .with_when(not_verified_nor_in_review),
        )
        .step(
            StepDef::new(
                "await_verification",
                "blaaiz.await_verification",
                json!({"customer_id": customer}),
            )
            .with_retry(retry(secs(5), mins(10), 20, days(3)))
            .with_deadline(days(2))
            .with_poll_every(mins(10))
            .with_when(Condition::not_equals(status, json!("VERIFIED"))),
        )
        .step(
            StepDef::new(
                "payout",
                "blaaiz.payout",
                json!({
                "customer_id": customer, "payout": "$.input.payout"}),
            )
            .with_retry(retry(secs(5), mins(10), 12, hours(12)))
            .with_timeout(mins(2)),
        )
        .step(
            StepDef::new(
                "await_payout",
                "blaaiz.await_payout",
                json!({
                "transaction_id": "$.steps.payout.transaction_id"}),
            )
            .with_retry(retry(secs(5), mins(10), 20, days(4)))
            .with_deadline(days(3))
            .with_poll_every(mins(10)),
        )
        .build();
    assert_same(def, "blaaiz_kyc_payout.toml");
}

#[test]
fn the_lean_workflow_built_in_rust_has_the_toml_files_content_hash() {
    let customer = "$.steps.ensure_customer.customer_id";
    let destination = "$.steps.create_destination.destination_id";
    let def = Definition::builder("lean_payout", 1)
        .description("Lean: destination, customer, active beneficiary, payment intent, bank result")
        .step(
            StepDef::new(
                "create_destination",
                "lean.create_destination",
                json!({"destination": "$.input.destination"}),
            )
            .with_retry(retry(secs(2), mins(5), 10, hours(6))),
        )
        .step(
            StepDef::new(
                "ensure_customer",
                "lean.ensure_customer",
                json!({"app_user_id": "$.input.app_user_id"}),
            )
            .with_retry(retry(secs(2), mins(5), 10, hours(6))),
        )
        .step(
            StepDef::new(
                "await_beneficiary",
                "lean.await_beneficiary",
                json!({
                "customer_id": customer, "destination_id": destination}),
            )
            .with_retry(retry(secs(5), mins(10), 20, days(4)))
            .with_deadline(days(3))
            .with_poll_every(mins(15)),
        )
        .step(
            StepDef::new(
                "create_intent",
                "lean.create_intent",
                json!({
                "customer_id": customer, "destination_id": destination,
                "amount": "$.input.amount", "currency": "$.input.currency",
                "description": "$.input.description"}),
            )
            .with_retry(retry(secs(5), mins(10), 12, hours(12))),
        )
        .step(
            StepDef::new(
                "await_payment",
                "lean.await_payment",
                json!({
                "intent_id": "$.steps.create_intent.intent_id", "reconcile_for": "2d"}),
            )
            .with_retry(retry(secs(5), mins(10), 20, days(4)))
            .with_deadline(days(1))
            .with_poll_every(mins(5)),
        )
        .build();
    assert_same(def, "lean_payout.toml");
}

#[test]
fn a_different_step_policy_changes_the_content_hash() {
    let base = || Definition::builder("x", 1).step(StepDef::new("a", "noop.sleep", json!({})));
    let plain = base().build();
    let longer = Definition::builder("x", 1)
        .step(StepDef::new("a", "noop.sleep", json!({})).with_timeout(mins(2)))
        .build();
    assert_eq!(plain.content_hash(), base().build().content_hash());
    assert_ne!(plain.content_hash(), longer.content_hash());
}
