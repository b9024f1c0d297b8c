use std::time::Duration;

use paysaga_providers::lean::{
    BeneficiaryStatus, CreateDestination, CreatePaymentIntent, EnsuredCustomer, LeanAuth,
    LeanClient, LeanConfig, PaymentStatus,
};
use secrecy::SecretString;
use serde_json::json;

use crate::support::{count, fast_http, Mock, Reply};

const APP_TOKEN: &str = "lean-app-token-XYZ";
const SECRET: &str = "lean-client-secret-XYZ";

fn app_token_client(mock: &Mock) -> LeanClient {
    LeanClient::new(
        LeanConfig::new(
            format!("{}/lean", mock.base),
            LeanAuth::AppToken(SecretString::from(APP_TOKEN)),
        )
        .with_http(fast_http()),
    )
}

fn lean_error(status: u16, code: &str, message: &str) -> Reply {
    Reply::json(
        status,
        json!({"status": code, "message": message, "timestamp": "2026-11-23T10:00:00Z"}),
    )
}

#[tokio::test]
async fn ensure_customer_turns_409_into_the_existing_customer() {
    let mock = Mock::start(|req, earlier| {
        if req.header("lean-app-token").as_deref() != Some(APP_TOKEN) {
            return lean_error(401, "UNAUTHORIZED", "bad token");
        }
        match (req.method.as_str(), req.path.as_str()) {
            ("POST", "/lean/payments/v1/customer") => {
                if count(earlier, "/lean/payments/v1/customer") == 0 {
                    Reply::json(
                        200,
                        json!({"customer_id": "cust-1", "app_user_id": "user/42"}),
                    )
                } else {
                    lean_error(
                        409,
                        "CUSTOMER_ALREADY_EXISTS",
                        "Customer with app_user_id user/42 already exists",
                    )
                }
            }
            ("GET", "/lean/customers/v1/app-user-id/user%2F42") => Reply::json(
                200,
                json!({"customer_id": "cust-1", "app_user_id": "user/42"}),
            ),
            _ => lean_error(404, "NOT_FOUND", "no route"),
        }
    })
    .await;
    let c = app_token_client(&mock);
    let first = c.ensure_customer("user/42").await.unwrap();
    assert!(matches!(&first, EnsuredCustomer::Created(cu) if cu.customer_id == "cust-1"));
    let second = c.ensure_customer("user/42").await.unwrap();
    assert!(matches!(&second, EnsuredCustomer::Existing(cu) if cu.customer_id == "cust-1"));
    assert_eq!(second.customer(), first.customer());

    // The raw create exposes the conflict.
    let err = c.create_customer("user/42").await.unwrap_err();
    assert!(err.is_conflict() && err.is_permanent());
    assert_eq!(err.code(), Some("CUSTOMER_ALREADY_EXISTS"));

    let creates = mock.to("/lean/payments/v1/customer");
    assert_eq!(creates[0].json(), json!({"app_user_id": "user/42"}));
    assert_eq!(creates[0].header("authorization"), None);
    assert_eq!(mock.to("/lean/customers/v1/app-user-id/user%2F42").len(), 1);
}

#[tokio::test]
async fn destinations_sources_and_intents() {
    let mock = Mock::start(|req, earlier| {
        match (req.method.as_str(), req.path.as_str()) {
            ("POST", "/lean/payments/v1/destinations") => Reply::json(
                200,
                json!({"id": "dest-1", "display_name": "Acme AED", "name": "Acme Inc.", "bank_identifier": "ENBD_UAE",
                       "address": "", "city": "", "country": "", "account_number": "", "iban": "AE07"}),
            ),
            ("GET", "/lean/payments/v1/destinations") => Reply::json(200, json!([{"id": "dest-1", "display_name": "Acme AED"}])),
            ("GET", "/lean/customers/v1/cust-1/payment_sources") => Reply::raw(
                200,
                r#"[{"id":"ps-1","customer_id":"cust-1","app_id":"app","bank_identifier":"ENBD_UAE",
                    "beneficiaries":[{"id":"ben-1","payment_destination_id":"dest-1","status":"ACTIVE","beneficiary_cool_off_expiry":"2021-02-13T13:20:57Z"}],
                    "accounts":[{"id":"a1","account_id":"acc","account_name":"CURRENT ACCOUNT","iban":"AE34","balance":35681.15,"currency":"AED"}]}]"#,
            ),
            ("GET", "/lean/customers/v1/cust-1/payment_sources/ps-1") => Reply::raw(
                200,
                r#"{"id":"ps-1","customer_id":"cust-1","beneficiaries":[{"id":"ben-1","payment_destination_id":"dest-1","status":"AWAITING_BENEFICIARY_COOL_OFF"}]}"#,
            ),
            ("POST", "/lean/payments/v1/intents") => {
                // The same Idempotency-Key answers the same intent.
                let key = req.header("idempotency-key").unwrap_or_default();
                let first_with_key = earlier.iter().position(|r| r.header("idempotency-key").as_deref() == Some(key.as_str()));
                let id = format!("intent-{}", first_with_key.unwrap_or(earlier.len()));
                Reply::raw(
                    200,
                    &format!(r#"{{"payment_intent_id":"{id}","customer_id":"cust-1","amount":1000.50,"currency":"AED","payments":[],"payment_destination":{{"id":"dest-1","default":false}}}}"#),
                )
            }
            ("GET", "/lean/payments/v1/intents/intent-9") => Reply::raw(
                200,
                r#"{"payment_intent_id":"intent-9","customer_id":"cust-1","amount":10.12,"currency":"AED","payments":[{"id":"pay-1","payment_intent_id":"intent-9","amount":10.12,"currency":"AED","status":"PENDING_WITH_BANK","description":"ps1"}]}"#,
            ),
            ("GET", "/lean/payments/v1/pay-1") => Reply::raw(
                200,
                r#"{"id":"pay-1","payment_intent_id":"intent-9","amount":10.12,"currency":"AED","status":"REJECTED_BY_BANK"}"#,
            ),
            _ => lean_error(404, "NOT_FOUND", "no route"),
        }
    })
    .await;
    let c = app_token_client(&mock);

    let dest = c
        .create_destination(&CreateDestination {
            display_name: "Acme AED".into(),
            name: "Acme Inc.".into(),
            bank_identifier: "ENBD_UAE".into(),
            iban: "AE07".into(),
            ..CreateDestination::default()
        })
        .await
        .unwrap();
    assert_eq!(dest.id, "dest-1");
    assert_eq!(
        mock.to("/lean/payments/v1/destinations")[0].json(),
        json!({"display_name": "Acme AED", "name": "Acme Inc.", "bank_identifier": "ENBD_UAE", "iban": "AE07",
               "account_number": "", "address": "", "city": "", "country": ""})
    );
    assert_eq!(c.list_destinations().await.unwrap().len(), 1);

    let sources = c.list_payment_sources("cust-1").await.unwrap();
    assert_eq!(
        sources[0]
            .beneficiary_for("dest-1")
            .and_then(|b| b.status.clone()),
        Some(BeneficiaryStatus::Active)
    );
    let ben = c
        .find_beneficiary("cust-1", "dest-1")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(ben.id, "ben-1");
    assert!(c
        .find_beneficiary("cust-1", "dest-other")
        .await
        .unwrap()
        .is_none());
    let source = c.get_payment_source("cust-1", "ps-1").await.unwrap();
    assert_eq!(
        source.beneficiaries[0].status,
        Some(BeneficiaryStatus::AwaitingBeneficiaryCoolOff)
    );

    let request =
        CreatePaymentIntent::new(100_050, "AED", "dest-1", "cust-1", Some("ps1")).unwrap();
    let intent = c
        .create_payment_intent(&request, "saga-1:pay")
        .await
        .unwrap();
    let again = c
        .create_payment_intent(&request, "saga-1:pay")
        .await
        .unwrap();
    assert_eq!(intent.payment_intent_id, again.payment_intent_id);
    assert_eq!(intent.amount_minor().unwrap(), 100_050);
    let posts = mock.to("/lean/payments/v1/intents");
    assert_eq!(posts.len(), 2);
    for p in &posts {
        assert_eq!(p.header("idempotency-key").as_deref(), Some("saga-1:pay"));
        assert_eq!(p.header("lean-app-token").as_deref(), Some(APP_TOKEN));
        assert_eq!(
            p.text(),
            r#"{"amount":1000.5,"currency":"AED","payment_destination_id":"dest-1","customer_id":"cust-1","description":"ps1"}"#
        );
    }
    assert!(c
        .create_payment_intent(&request, "")
        .await
        .unwrap_err()
        .is_permanent());

    let polled = c.get_payment_intent("intent-9").await.unwrap();
    let payment = polled.latest_payment().unwrap();
    assert_eq!(payment.status, PaymentStatus::PendingWithBank);
    assert_eq!(payment.amount_minor().unwrap(), 1012);
    let single = c.get_payment("pay-1").await.unwrap();
    assert!(single.status.is_failure());
}

#[tokio::test]
async fn oauth_mode_and_error_classification() {
    let mock = Mock::start(|req, earlier| {
        if req.path == "/lean/oauth2/token" {
            let n = count(earlier, "/lean/oauth2/token") + 1;
            return Reply::json(200, json!({"access_token": format!("ln-{n}"), "token_type": "Bearer", "expires_in": 3600}));
        }
        if req.header("authorization").as_deref() != Some("Bearer ln-1") || req.header("lean-app-token").is_some() {
            return lean_error(401, "UNAUTHORIZED", "bad token");
        }
        match req.path.as_str() {
            "/lean/payments/v1/intents/busy" => {
                lean_error(429, "RATE_LIMIT_EXCEEDED", "Too many requests").with_header("Retry-After", "3")
            }
            "/lean/payments/v1/intents/broken" => lean_error(500, "INTERNAL_SERVER_ERROR", "oops"),
            "/lean/payments/v1/intents/bad" => lean_error(400, "INVALID_PARAMETERS", "amount must be positive"),
            _ => lean_error(404, "NOT_FOUND", "no route"),
        }
    })
    .await;
    let c = LeanClient::new(
        LeanConfig::new(
            format!("{}/lean", mock.base),
            LeanAuth::OAuth {
                client_id: "lean-client".into(),
                client_secret: SecretString::from(SECRET),
                token_url: format!("{}/lean/oauth2/token", mock.base),
            },
        )
        .with_http(fast_http()),
    );
    let busy = c.get_payment_intent("busy").await.unwrap_err();
    assert!(busy.is_transient());
    assert_eq!(busy.code(), Some("RATE_LIMIT_EXCEEDED"));
    assert_eq!(busy.retry_after(), Some(Duration::from_secs(3)));
    let broken = c.get_payment_intent("broken").await.unwrap_err();
    assert!(broken.is_transient());
    assert_eq!(broken.code(), Some("INTERNAL_SERVER_ERROR"));
    let bad = c.get_payment_intent("bad").await.unwrap_err();
    assert!(bad.is_permanent());
    assert_eq!(
        (bad.code(), bad.provider_message()),
        (Some("INVALID_PARAMETERS"), Some("amount must be positive"))
    );

    let tokens = mock.to("/lean/oauth2/token");
    assert_eq!(tokens.len(), 1);
    assert_eq!(tokens[0].form_field("scope").as_deref(), Some("api"));
    assert_eq!(
        tokens[0].form_field("grant_type").as_deref(),
        Some("client_credentials")
    );
    assert_eq!(
        tokens[0].form_field("client_secret").as_deref(),
        Some(SECRET)
    );
    assert!(!format!("{c:?} {busy:?} {bad}").contains(SECRET));
    assert!(!format!("{c:?}").contains("ln-1"));
}
