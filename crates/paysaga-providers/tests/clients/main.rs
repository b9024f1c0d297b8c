//! Client tests against an in-test HTTP server that checks what the clients send.

#![allow(clippy::unwrap_used)]

mod blaaiz;
mod lean;
mod lumanu;
mod support;

/// Step kinds run on a multi-threaded runtime and box errors: the clients, their futures and
/// the error must be `Send + Sync + 'static` as appropriate.
#[allow(dead_code)]
fn clients_and_futures_are_send() {
    fn send<T: Send>(_: &T) {}
    fn shareable<T: Send + Sync + 'static>() {}
    shareable::<paysaga_providers::lumanu::LumanuClient>();
    shareable::<paysaga_providers::blaaiz::BlaaizClient>();
    shareable::<paysaga_providers::lean::LeanClient>();
    shareable::<paysaga_providers::Error>();
    shareable::<paysaga_providers::webhook::WebhookError>();
    let cfg = paysaga_providers::ProvidersConfig::default();
    let clients = cfg.clients();
    if let Some(c) = clients.lumanu.as_ref() {
        let req = paysaga_providers::lumanu::CreatePayable::default();
        send(&c.create_payable(&req));
        send(&c.find_payable_by_description("w", "d"));
    }
    if let Some(c) = clients.blaaiz.as_ref() {
        send(&c.find_payout_by_reference("c", "r"));
    }
    if let Some(c) = clients.lean.as_ref() {
        send(&c.ensure_customer("u"));
    }
}

#[test]
fn send_check_compiles() {
    let _ = clients_and_futures_are_send;
}
