//! Call records ([`paysaga_providers::observe`]): one per HTTP attempt, with the endpoint name,
//! the status and the outcome class, token fetches included, against an in-test HTTP server.

#![allow(clippy::unwrap_used)]

#[allow(dead_code)]
#[path = "clients/support.rs"]
mod support;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use paysaga_providers::lumanu::{LumanuClient, LumanuConfig};
use paysaga_providers::observe::{with_observer, CallObserver, CallOutcome, CallRecord};
use paysaga_providers::{Error, Provider, ProvidersConfig};
use secrecy::SecretString;
use serde_json::json;
use support::{count, fast_http, Mock, Reply};

const SECRET: &str = "lumanu-client-secret-observed";
const TOKEN_PATH: &str = "/lumanu/oauth/token";

#[derive(Default)]
struct Log(Mutex<Vec<CallRecord>>);

impl CallObserver for Log {
    fn observe(&self, call: &CallRecord) {
        self.0.lock().unwrap().push(call.clone());
    }
}

impl Log {
    /// (endpoint, status, outcome) of the records so far, which are cleared.
    fn take(&self) -> Vec<(&'static str, Option<u16>, CallOutcome)> {
        let records = std::mem::take(&mut *self.0.lock().unwrap());
        for r in &records {
            assert_eq!(r.provider, Provider::Lumanu);
            assert!(r.duration < Duration::from_secs(10), "{r:?}");
            assert!(!format!("{r:?}").contains(SECRET));
        }
        records
            .into_iter()
            .map(|r| (r.endpoint, r.status, r.outcome))
            .collect()
    }
}

fn payable(id: &str) -> serde_json::Value {
    json!({
        "id": id, "amount": 12345, "amount_denomination": "us_cents", "description": "d",
        "due_date": null, "invoice_number": 1, "vendor_status": "Awaiting signup",
        "vendor_email": "creator@example.com", "status": null, "payable_status": "not_approved",
        "workspace_id": "ws-1", "created_at": "2025-09-17T15:57:04Z", "custom_fields": []
    })
}

/// Token `tok-N` at the N-th fetch (after `token_delay`); `/badauth` refuses the credentials;
/// payable `ok` answers, `busy` is 503, `missing` 404, `garbled` is not JSON, `expired` refuses
/// the first token.
async fn mock(token_delay: Duration) -> Mock {
    Mock::start(move |req, earlier| {
        if req.path == "/badauth/oauth/token" {
            return Reply::json(
                401,
                json!({"error": "invalid_client", "error_description": "bad credentials"}),
            );
        }
        if req.path == TOKEN_PATH {
            let n = count(earlier, TOKEN_PATH) + 1;
            return Reply::json(
                200,
                json!({"access_token": format!("tok-{n}"), "expires_in": 3600}),
            )
            .after(token_delay);
        }
        let id = req.path.rsplit('/').next().unwrap_or_default();
        match id {
            "ok" => Reply::json(200, payable("ok")),
            "busy" => Reply::json(503, json!({"error": {"message": "try later"}})),
            "missing" => Reply::json(404, json!({"error": {"code": "not_found"}})),
            "garbled" => Reply::raw(200, "<html>not json</html>"),
            "expired" if req.header("authorization").as_deref() == Some("Bearer tok-1") => {
                Reply::json(401, json!({"error": {"code": "unauthorized"}}))
            }
            "expired" => Reply::json(200, payable("expired")),
            _ => Reply::json(404, json!({})),
        }
    })
    .await
}

fn config(base_url: String, auth_url: String) -> LumanuConfig {
    LumanuConfig::new(base_url, auth_url, "client-1", SecretString::from(SECRET))
        .with_http(fast_http())
}

fn closed_port_url() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    format!("http://127.0.0.1:{port}")
}

#[tokio::test]
async fn every_attempt_is_reported_with_endpoint_status_and_class() {
    let mock = mock(Duration::ZERO).await;
    let env: HashMap<&str, String> = [
        (
            "PAYSAGA_LUMANU_BASE_URL",
            format!("{}/lumanu/api/rest", mock.base),
        ),
        ("PAYSAGA_LUMANU_AUTH_URL", format!("{}/lumanu", mock.base)),
        ("PAYSAGA_LUMANU_CLIENT_ID", "client-1".into()),
        ("PAYSAGA_LUMANU_CLIENT_SECRET", SECRET.into()),
        ("PAYSAGA_LUMANU_WEBHOOK_SECRET", "wh".into()),
        ("PAYSAGA_PROVIDER_REQUEST_TIMEOUT_SECS", "5".into()),
    ]
    .into_iter()
    .collect();
    let log = Arc::new(Log::default());
    let clients = ProvidersConfig::from_lookup(|k| env.get(k).cloned())
        .unwrap()
        .clients_observed(log.clone());
    // Clones report too (step kinds hold clones).
    let c = clients.lumanu.clone().unwrap();

    c.get_payable("ok").await.unwrap();
    assert_eq!(
        log.take(),
        vec![
            ("token", None, CallOutcome::Ok),
            ("get_payable", Some(200), CallOutcome::Ok),
        ]
    );

    let err = c.get_payable("busy").await.unwrap_err();
    assert!(err.is_transient());
    assert_eq!(
        log.take(),
        vec![("get_payable", Some(503), CallOutcome::Transient)]
    );

    let err = c.get_payable("missing").await.unwrap_err();
    assert!(err.is_not_found());
    assert_eq!(
        log.take(),
        vec![("get_payable", Some(404), CallOutcome::Permanent)]
    );

    let err = c.get_payable("garbled").await.unwrap_err();
    assert!(matches!(err, Error::Decode { .. }), "{err:?}");
    assert_eq!(
        log.take(),
        vec![("get_payable", Some(200), CallOutcome::Permanent)]
    );

    // The 401 that makes the client refresh its token is an attempt of its own.
    c.get_payable("expired").await.unwrap();
    assert_eq!(
        log.take(),
        vec![
            ("get_payable", Some(401), CallOutcome::Permanent),
            ("token", None, CallOutcome::Ok),
            ("get_payable", Some(200), CallOutcome::Ok),
        ]
    );

    // No answer at all: transient, no status.
    let unreachable = with_observer(log.clone(), || {
        LumanuClient::new(config(closed_port_url(), format!("{}/lumanu", mock.base)))
    });
    let err = unreachable.get_payable("ok").await.unwrap_err();
    assert!(matches!(err, Error::Connect { .. }), "{err:?}");
    assert_eq!(
        log.take(),
        vec![
            ("token", None, CallOutcome::Ok),
            ("get_payable", None, CallOutcome::Transient),
        ]
    );

    // A refused token fetch is reported under `token`, with its status.
    let refused = with_observer(log.clone(), || {
        LumanuClient::new(config(
            format!("{}/lumanu/api/rest", mock.base),
            format!("{}/badauth", mock.base),
        ))
    });
    let err = refused.get_payable("ok").await.unwrap_err();
    assert!(err.is_unauthorized(), "{err:?}");
    assert_eq!(
        log.take(),
        vec![("token", Some(401), CallOutcome::Permanent)]
    );

    // A client built outside any observer scope reports to nobody.
    let silent = LumanuClient::new(config(
        format!("{}/lumanu/api/rest", mock.base),
        format!("{}/lumanu", mock.base),
    ));
    silent.get_payable("ok").await.unwrap();
    assert_eq!(log.take(), vec![]);
}

#[tokio::test]
async fn a_token_fetched_for_concurrent_calls_is_reported_once() {
    let mock = mock(Duration::from_millis(200)).await;
    let log = Arc::new(Log::default());
    let c = with_observer(log.clone(), || {
        LumanuClient::new(config(
            format!("{}/lumanu/api/rest", mock.base),
            format!("{}/lumanu", mock.base),
        ))
    });
    let calls: Vec<_> = (0..5)
        .map(|_| {
            let c = c.clone();
            tokio::spawn(async move { c.get_payable("ok").await.map(|_| ()) })
        })
        .collect();
    for call in calls {
        call.await.unwrap().unwrap();
    }
    assert_eq!(mock.to(TOKEN_PATH).len(), 1);
    let records = log.take();
    assert_eq!(
        records
            .iter()
            .filter(|r| **r == ("token", None, CallOutcome::Ok))
            .count(),
        1,
        "{records:?}"
    );
    assert_eq!(
        records
            .iter()
            .filter(|r| **r == ("get_payable", Some(200), CallOutcome::Ok))
            .count(),
        5,
        "{records:?}"
    );
}
