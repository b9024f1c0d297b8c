//! Request budgets ([`paysaga_providers::budget`]): every request asks the budget first (under
//! the credential's id, never its secret), a request refused a slot is not sent and is no
//! attempt, and a `429` is reported to the budget with its `Retry-After`.

#![allow(clippy::unwrap_used)]

#[allow(dead_code)]
#[path = "clients/support.rs"]
mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use paysaga_providers::budget::with_budget;
use paysaga_providers::lumanu::{LumanuClient, LumanuConfig};
use paysaga_providers::observe::{with_observer, CallObserver, CallRecord};
use paysaga_providers::{Admission, Error, Provider, RequestBudget};
use secrecy::SecretString;
use serde_json::json;
use support::{fast_http, Mock, Reply};

const SECRET: &str = "lumanu-client-secret-budgeted";

#[derive(Default)]
struct Budget {
    full: AtomicBool,
    asked: Mutex<Vec<(Provider, String)>>,
    throttled: Mutex<Vec<(Provider, String, Option<Duration>)>>,
}

#[async_trait]
impl RequestBudget for Budget {
    async fn acquire(&self, provider: Provider, credential: &str) -> Admission {
        self.asked
            .lock()
            .unwrap()
            .push((provider, credential.to_owned()));
        if self.full.load(Ordering::SeqCst) {
            Admission::Later(Duration::from_secs(2))
        } else {
            Admission::Go
        }
    }

    async fn throttled(&self, provider: Provider, credential: &str, retry_after: Option<Duration>) {
        self.throttled
            .lock()
            .unwrap()
            .push((provider, credential.to_owned(), retry_after));
    }
}

#[derive(Default)]
struct Log(Mutex<Vec<CallRecord>>);

impl CallObserver for Log {
    fn observe(&self, call: &CallRecord) {
        self.0.lock().unwrap().push(call.clone());
    }
}

#[tokio::test]
async fn requests_ask_the_budget_first_a_refused_slot_sends_nothing_and_a_429_is_reported() {
    let mock = Mock::start(|req, _| {
        if req.path.ends_with("/oauth/token") {
            return Reply::json(200, json!({"access_token": "tok", "expires_in": 3600}));
        }
        if req.path.ends_with("/limited") {
            return Reply::json(429, json!({"error": {"code": "rate_limited"}}))
                .with_header("retry-after", "7");
        }
        Reply::json(404, json!({"error": {"code": "not_found"}}))
    })
    .await;
    let budget = Arc::new(Budget::default());
    let log = Arc::new(Log::default());
    let client = with_budget(budget.clone(), || {
        with_observer(log.clone(), || {
            LumanuClient::new(
                LumanuConfig::new(
                    format!("{}/lumanu/api/rest", mock.base),
                    format!("{}/lumanu", mock.base),
                    "client-1",
                    SecretString::from(SECRET),
                )
                .with_http(fast_http()),
            )
        })
    });

    let err = client.get_payable("limited").await.unwrap_err();
    assert_eq!(err.status(), Some(429));
    assert_eq!(
        *budget.asked.lock().unwrap(),
        vec![(Provider::Lumanu, "client-1".to_string())],
        "one slot per request, the token fetch aside; the credential by its id"
    );
    assert_eq!(
        *budget.throttled.lock().unwrap(),
        vec![(
            Provider::Lumanu,
            "client-1".to_string(),
            Some(Duration::from_secs(7))
        )]
    );

    budget.full.store(true, Ordering::SeqCst);
    let sent_before = mock.requests().len();
    let records_before = log.0.lock().unwrap().len();
    let err = client.get_payable("other").await.unwrap_err();
    assert!(
        matches!(err, Error::NoCapacity { retry_after, .. } if retry_after == Duration::from_secs(2)),
        "{err:?}"
    );
    assert!(err.is_transient() && !err.may_have_taken_effect());
    assert!(
        err.to_string().contains("waiting for provider capacity"),
        "{err}"
    );
    assert_eq!(mock.requests().len(), sent_before, "nothing was sent");
    assert_eq!(
        log.0.lock().unwrap().len(),
        records_before,
        "no attempt reported"
    );
    assert!(!format!("{:?}", budget.asked.lock().unwrap()).contains(SECRET));
}
