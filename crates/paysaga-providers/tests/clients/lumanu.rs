use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use paysaga_providers::lumanu::{
    CreatePayable, InvoiceFunding, LumanuClient, LumanuConfig, PayableStatus,
    WalletTransactionQuery, WalletTransactionType,
};
use paysaga_providers::{Error, HttpOptions, Provider};
use secrecy::SecretString;
use serde_json::json;

use crate::support::{count, fast_http, Mock, Recorded, Reply};

const SECRET: &str = "lumanu-client-secret-XYZ";
const TOKEN_PATH: &str = "/lumanu/oauth/token";

fn client(mock: &Mock, http: HttpOptions) -> LumanuClient {
    LumanuClient::new(
        LumanuConfig::new(
            format!("{}/lumanu/api/rest/", mock.base),
            format!("{}/lumanu", mock.base),
            "client-1",
            SecretString::from(SECRET),
        )
        .with_audience("https://lumanu-demo.hasura.app/v1/graphql")
        .with_http(http),
    )
}

fn payable(id: &str, description: &str) -> serde_json::Value {
    json!({
        "id": id, "amount": 12345, "amount_denomination": "us_cents", "description": description,
        "due_date": null, "invoice_number": 206466, "vendor_status": "Awaiting signup",
        "vendor_email": "creator@example.com", "status": null, "payable_status": "not_approved",
        "workspace_id": "ws-1", "created_at": "2025-09-17T15:57:04Z", "custom_fields": []
    })
}

/// Token endpoint issuing `tok-N` (N = 1, 2, ...) valid `expires_in` seconds; API calls need the
/// newest token.
fn token_reply(earlier: &[Recorded], expires_in: u64) -> Reply {
    let n = count(earlier, TOKEN_PATH) + 1;
    Reply::json(
        200,
        json!({"access_token": format!("tok-{n}"), "token_type": "Bearer", "expires_in": expires_in}),
    )
}

fn current_token(earlier: &[Recorded]) -> String {
    format!("Bearer tok-{}", count(earlier, TOKEN_PATH))
}

#[tokio::test]
async fn create_payable_sends_lumanu_fields_and_caches_the_token() {
    let mock = Mock::start(|req, earlier| {
        if req.path == TOKEN_PATH {
            return token_reply(earlier, 3600);
        }
        if req.header("authorization") != Some(current_token(earlier)) {
            return Reply::json(
                401,
                json!({"error": {"code": "unauthorized", "message": "bad token"}}),
            );
        }
        match (req.method.as_str(), req.path.as_str()) {
            ("POST", "/lumanu/api/rest/payable") => {
                Reply::json(200, payable("pay-1", "Campaign [ps:abc]"))
            }
            ("POST", "/lumanu/api/rest/payable/pay-1/approve") => {
                let mut p = payable("pay-1", "Campaign [ps:abc]");
                p["status"] = json!("approved");
                p["payable_status"] = json!("approved");
                Reply::json(200, p)
            }
            _ => Reply::json(
                404,
                json!({"error": {"code": "not_found", "message": "no route"}}),
            ),
        }
    })
    .await;
    let c = client(&mock, fast_http());
    let created = c
        .create_payable(&CreatePayable {
            workspace_id: "ws-1".into(),
            payee_email: Some("creator@example.com".into()),
            amount: 12345,
            description: "Campaign [ps:abc]".into(),
            ..CreatePayable::default()
        })
        .await
        .unwrap();
    assert_eq!(created.id, "pay-1");
    assert_eq!(created.amount, 12345);
    assert_eq!(created.payable_status, Some(PayableStatus::NotApproved));
    assert_eq!(created.status, None);
    let approved = c.approve_payable("pay-1").await.unwrap();
    assert_eq!(approved.payable_status, Some(PayableStatus::Approved));

    let token_calls = mock.to(TOKEN_PATH);
    assert_eq!(token_calls.len(), 1, "token cached across calls");
    let t = &token_calls[0];
    assert_eq!(t.method, "POST");
    assert!(t
        .header("content-type")
        .unwrap_or_default()
        .starts_with("application/json"));
    assert_eq!(
        t.json(),
        json!({"client_id": "client-1", "client_secret": SECRET, "audience": "https://lumanu-demo.hasura.app/v1/graphql", "grant_type": "client_credentials"})
    );
    let create = &mock.to("/lumanu/api/rest/payable")[0];
    assert_eq!(
        create.header("authorization").as_deref(),
        Some("Bearer tok-1")
    );
    assert_eq!(
        create.json(),
        json!({"workspace_id": "ws-1", "payee_email": "creator@example.com", "amount": 12345, "description": "Campaign [ps:abc]"})
    );
    assert_eq!(
        mock.to("/lumanu/api/rest/payable/pay-1/approve")[0].method,
        "POST"
    );
}

#[tokio::test]
async fn token_is_refreshed_after_expiry() {
    let mock = Mock::start(|req, earlier| {
        if req.path == TOKEN_PATH {
            return token_reply(earlier, 2);
        }
        Reply::json(200, payable("pay-1", "d"))
    })
    .await;
    let c = client(&mock, fast_http());
    c.get_payable("pay-1").await.unwrap();
    c.get_payable("pay-1").await.unwrap();
    assert_eq!(mock.to(TOKEN_PATH).len(), 1);
    // A 2 s token is refreshed after 1.6 s.
    tokio::time::sleep(Duration::from_millis(1700)).await;
    c.get_payable("pay-1").await.unwrap();
    assert_eq!(mock.to(TOKEN_PATH).len(), 2);
    let gets = mock.to("/lumanu/api/rest/payable/pay-1");
    assert_eq!(
        gets[2].header("authorization").as_deref(),
        Some("Bearer tok-2")
    );
    assert_eq!(c.token_cache().fetch_count(), 2);
}

#[tokio::test]
async fn concurrent_callers_share_one_token_fetch() {
    let mock = Mock::start(|req, earlier| {
        if req.path == TOKEN_PATH {
            return token_reply(earlier, 3600).after(Duration::from_millis(200));
        }
        Reply::json(200, payable("pay-1", "d"))
    })
    .await;
    let c = client(&mock, fast_http());
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let c = c.clone();
        tasks.push(tokio::spawn(async move {
            c.get_payable("pay-1").await.map(|p| p.id)
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap().unwrap(), "pay-1");
    }
    assert_eq!(mock.to(TOKEN_PATH).len(), 1);
    assert_eq!(mock.to("/lumanu/api/rest/payable/pay-1").len(), 8);
}

#[tokio::test]
async fn unauthorized_refreshes_once_and_retries() {
    // The server revokes tok-1 after issuing it: the first call gets 401, the retry with tok-2 works.
    let mock = Mock::start(|req, earlier| {
        if req.path == TOKEN_PATH {
            return token_reply(earlier, 3600);
        }
        if req.header("authorization").as_deref() == Some("Bearer tok-1") {
            return Reply::json(
                401,
                json!({"error": {"code": "invalid_token", "message": "token revoked"}}),
            );
        }
        Reply::json(200, payable("pay-1", "d"))
    })
    .await;
    let c = client(&mock, fast_http());
    let p = c.get_payable("pay-1").await.unwrap();
    assert_eq!(p.id, "pay-1");
    assert_eq!(mock.to(TOKEN_PATH).len(), 2);
    let gets = mock.to("/lumanu/api/rest/payable/pay-1");
    assert_eq!(gets.len(), 2);
    assert_eq!(
        gets[1].header("authorization").as_deref(),
        Some("Bearer tok-2")
    );
}

#[tokio::test]
async fn persistent_unauthorized_is_permanent_after_one_retry() {
    let mock = Mock::start(|req, earlier| {
        if req.path == TOKEN_PATH {
            return token_reply(earlier, 3600);
        }
        Reply::json(401, json!({"error": {"code": "invalid_token", "message": "audience mismatch", "request_id": "r-9"}}))
    })
    .await;
    let c = client(&mock, fast_http());
    let err = c.get_funding("f-1").await.unwrap_err();
    assert!(err.is_unauthorized());
    assert!(err.is_permanent());
    assert_eq!(err.code(), Some("invalid_token"));
    assert_eq!(
        mock.to("/lumanu/api/rest/funding/f-1").len(),
        2,
        "exactly one retry"
    );
    assert_eq!(mock.to(TOKEN_PATH).len(), 2);
}

#[tokio::test]
async fn token_endpoint_failure_is_classified() {
    let mock = Mock::start(|req, _| {
        if req.path == TOKEN_PATH {
            return Reply::json(
                401,
                json!({"error": "access_denied", "error_description": "Unauthorized"}),
            );
        }
        Reply::json(200, payable("pay-1", "d"))
    })
    .await;
    let c = client(&mock, fast_http());
    let err = c.get_payable("pay-1").await.unwrap_err();
    assert!(err.is_permanent());
    assert_eq!(err.status(), Some(401));
    assert_eq!(
        (err.code(), err.provider_message()),
        (Some("access_denied"), Some("Unauthorized"))
    );
    assert!(mock.to("/lumanu/api/rest/payable/pay-1").is_empty());
    assert!(!format!("{err} {err:?}").contains(SECRET));
}

#[tokio::test]
async fn provider_errors_are_classified() {
    let calls = Arc::new(AtomicUsize::new(0));
    let seen = calls.clone();
    let mock = Mock::start(move |req, earlier| {
        if req.path == TOKEN_PATH {
            return token_reply(earlier, 3600);
        }
        seen.fetch_add(1, Ordering::SeqCst);
        match req.path.as_str() {
            "/lumanu/api/rest/payable/bad" => Reply::json(
                400,
                json!({"error": {"code": "invalid_request", "message": "payee_email is invalid", "request_id": "req-42"}}),
            ),
            "/lumanu/api/rest/payable/down" => Reply::raw(503, "<html>upstream unavailable</html>"),
            "/lumanu/api/rest/payable/busy" => {
                Reply::json(429, json!({"error": {"code": "rate_limited", "message": "slow down"}})).with_header("Retry-After", "7")
            }
            "/lumanu/api/rest/payable/busy-date" => Reply::json(429, json!({}))
                .with_header("Retry-After", &(chrono::Utc::now() + chrono::Duration::seconds(120)).to_rfc2822()),
            "/lumanu/api/rest/payable/shape" => Reply::json(200, json!({"unexpected": true})),
            _ => Reply::json(404, json!({"error": {"code": "not_found", "message": "Payable not found"}})),
        }
    })
    .await;
    let c = client(&mock, fast_http());

    let bad = c.get_payable("bad").await.unwrap_err();
    assert!(!bad.is_transient());
    assert_eq!(bad.status(), Some(400));
    assert_eq!(bad.code(), Some("invalid_request"));
    assert_eq!(bad.provider_message(), Some("payee_email is invalid"));
    assert!(
        matches!(&bad, Error::Api { request_id: Some(r), provider: Provider::Lumanu, endpoint: "get_payable", .. } if r == "req-42")
    );
    assert!(bad.to_string().contains("payee_email is invalid"));

    let down = c.get_payable("down").await.unwrap_err();
    assert!(down.is_transient());
    assert!(down.may_have_taken_effect());
    assert_eq!(down.status(), Some(503));
    assert_eq!(down.retry_after(), None);

    let busy = c.get_payable("busy").await.unwrap_err();
    assert!(busy.is_transient());
    assert!(!busy.may_have_taken_effect());
    assert_eq!(busy.retry_after(), Some(Duration::from_secs(7)));

    let busy = c.get_payable("busy-date").await.unwrap_err();
    assert!(busy.is_transient());
    let wait = busy.retry_after().unwrap();
    assert!(
        wait > Duration::from_secs(100) && wait <= Duration::from_secs(120),
        "{wait:?}"
    );

    let missing = c.get_payable("nope").await.unwrap_err();
    assert!(missing.is_not_found() && missing.is_permanent());

    let shape = c.get_payable("shape").await.unwrap_err();
    assert!(matches!(shape, Error::Decode { status: 200, .. }));
    assert!(shape.is_permanent() && shape.may_have_taken_effect());
    // No automatic retries for any of these.
    assert_eq!(calls.load(Ordering::SeqCst), 6);
}

#[tokio::test]
async fn timeouts_and_refused_connections_are_transient() {
    let mock = Mock::start(|req, earlier| {
        if req.path == TOKEN_PATH {
            return token_reply(earlier, 3600);
        }
        Reply::json(200, payable("pay-1", "d")).after(Duration::from_secs(3))
    })
    .await;
    let mut http = HttpOptions::default();
    http.connect_timeout = Duration::from_secs(1);
    http.request_timeout = Duration::from_millis(300);
    let c = client(&mock, http);
    let err = c.get_payable("pay-1").await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::Timeout {
                provider: Provider::Lumanu,
                endpoint: "get_payable"
            }
        ),
        "{err:?}"
    );
    assert!(err.is_transient() && err.may_have_taken_effect());

    // A port nobody listens on.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let closed = LumanuClient::new(
        LumanuConfig::new(
            format!("http://{addr}/api/rest"),
            format!("http://{addr}"),
            "c",
            SecretString::from(SECRET),
        )
        .with_http(fast_http()),
    );
    let err = closed.get_payable("p").await.unwrap_err();
    assert!(matches!(err, Error::Connect { .. }), "{err:?}");
    assert!(err.is_transient() && !err.may_have_taken_effect());
}

#[tokio::test]
async fn find_payable_by_description_pages_through_the_list() {
    let mock = Mock::start(|req, earlier| {
        if req.path == TOKEN_PATH {
            return token_reply(earlier, 3600);
        }
        let offset: usize = req
            .query_param("offset")
            .and_then(|o| o.parse().ok())
            .unwrap_or(0);
        let limit: usize = req
            .query_param("limit")
            .and_then(|o| o.parse().ok())
            .unwrap_or(25);
        let total = 150;
        let data: Vec<_> = (offset..(offset + limit).min(total))
            .map(|i| payable(&format!("pay-{i}"), &format!("Campaign [ps:{i}]")))
            .collect();
        Reply::json(
            200,
            json!({"data": data, "total": total, "limit": limit, "offset": offset}),
        )
    })
    .await;
    let c = client(&mock, fast_http());
    let found = c
        .find_payable_by_description("ws-1", "Campaign [ps:120]")
        .await
        .unwrap();
    assert_eq!(found.map(|p| p.id).as_deref(), Some("pay-120"));
    let lists = mock.to("/lumanu/api/rest/payable");
    assert_eq!(lists.len(), 2);
    assert_eq!(
        lists[1].query_param("workspace_id").as_deref(),
        Some("ws-1")
    );
    assert_eq!(lists[1].query_param("limit").as_deref(), Some("100"));
    assert_eq!(lists[1].query_param("offset").as_deref(), Some("100"));
    assert_eq!(
        lists[1].query_param("order_by").as_deref(),
        Some("created_at")
    );
    assert_eq!(
        lists[1].query_param("order_by_direction").as_deref(),
        Some("desc")
    );

    let none = c
        .find_payable_by_description("ws-1", "Campaign [ps:999]")
        .await
        .unwrap();
    assert!(none.is_none());
    assert_eq!(
        mock.to("/lumanu/api/rest/payable").len(),
        4,
        "stops after the last page"
    );
}

#[tokio::test]
async fn funding_wallet_and_deposit_linking() {
    let mock = Mock::start(|req, earlier| {
        if req.path == TOKEN_PATH {
            return token_reply(earlier, 3600);
        }
        let funding = |status: &str| {
            json!({"id": "f-1", "workspace_id": "ws-1", "method": "invoice", "amount": 1000000,
                   "amount_denomination": "us_cents", "status": status, "invoice_number": 1001,
                   "fee_percent": 2.5})
        };
        match (req.method.as_str(), req.path.as_str()) {
            ("POST", "/lumanu/api/rest/funding") => Reply::json(200, funding("pending")),
            ("POST", "/lumanu/api/rest/funding/f-1/link-deposit") => Reply::json(200, funding("completed")),
            ("GET", "/lumanu/api/rest/workspace/ws-1/wallet") => Reply::json(
                200,
                json!({"balance": {"available_balance": 100000, "balance": 100431}, "display_name": "Org", "denomination": "us_cents"}),
            ),
            ("GET", "/lumanu/api/rest/workspace/ws-1/wallet/transaction") => Reply::json(
                200,
                json!({"data": [{"id": "tr-9", "description": "Deposit", "created_at": "2025-05-04T23:05:56Z", "amount": 1000000,
                       "amount_denomination": "us_cents", "balance_change": 1000000, "ending_balance": 1100431,
                       "status": "processed", "type": "deposit"}], "total": 1, "limit": 25, "offset": 0}),
            ),
            _ => Reply::json(404, json!({"error": {"code": "not_found", "message": "no"}})),
        }
    })
    .await;
    let c = client(&mock, fast_http());
    let f = c
        .create_invoice_funding(InvoiceFunding {
            workspace_id: "ws-1".into(),
            amount: 1_000_000,
            description: "Prefund [ps:1]".into(),
            recipient_email: "ap@example.com".into(),
            bill_to: "AP".into(),
            company_name: "Acme".into(),
            company_address_one: "1 Main St".into(),
            ..InvoiceFunding::default()
        })
        .await
        .unwrap();
    assert_eq!((f.id.as_str(), f.amount), ("f-1", Some(1_000_000)));
    let body = mock.to("/lumanu/api/rest/funding")[0].json();
    assert_eq!(body["method"], "invoice");
    assert_eq!(body["amount"], 1_000_000);
    assert_eq!(body["recipient_email"], "ap@example.com");
    assert!(body.get("due_date").is_none());

    let wallet = c.get_wallet("ws-1").await.unwrap();
    assert_eq!(
        (wallet.available_balance, wallet.balance),
        (Some(100_000), Some(100_431))
    );

    let deposit = c
        .find_wallet_transaction("ws-1", Some(WalletTransactionType::Deposit), |t| {
            t.amount == 1_000_000
        })
        .await
        .unwrap()
        .unwrap();
    assert_eq!(deposit.id, "tr-9");
    let list = &mock.to("/lumanu/api/rest/workspace/ws-1/wallet/transaction")[0];
    assert_eq!(list.query_param("type").as_deref(), Some("deposit"));

    let page = c
        .list_wallet_transactions("ws-1", &WalletTransactionQuery::default())
        .await
        .unwrap();
    assert_eq!(page.total, Some(1));
    assert_eq!(
        mock.to("/lumanu/api/rest/workspace/ws-1/wallet/transaction")[1].query,
        ""
    );

    let linked = c.link_deposit("f-1", "tr-9").await.unwrap();
    assert_eq!(
        linked.status.map(|s| s.to_string()).as_deref(),
        Some("completed")
    );
    assert_eq!(
        mock.to("/lumanu/api/rest/funding/f-1/link-deposit")[0].json(),
        json!({"transfer_id": "tr-9"})
    );

    let pay = c
        .pay_from_balance("ws-1", &["pay-1".to_owned()])
        .await
        .unwrap();
    assert_eq!(pay.id, "f-1");
    assert_eq!(
        mock.to("/lumanu/api/rest/funding")[1].json(),
        json!({"method": "balance", "workspace_id": "ws-1", "payable_ids": ["pay-1"]})
    );
}

#[tokio::test]
async fn secrets_never_appear_in_debug_or_errors() {
    let mock = Mock::start(|req, earlier| {
        if req.path == TOKEN_PATH {
            return Reply::json(200, json!({"access_token": "ACCESS-TOKEN-SHOULD-NOT-LEAK", "expires_in": 3600 + count(earlier, TOKEN_PATH)}));
        }
        Reply::json(400, json!({"error": {"code": "invalid_request", "message": "nope"}}))
    })
    .await;
    let c = client(&mock, fast_http());
    let err = c.get_payable("x").await.unwrap_err();
    let text = format!("{c:?} {err:?} {err} {:?}", c.token_cache());
    assert!(!text.contains(SECRET), "{text}");
    assert!(!text.contains("ACCESS-TOKEN-SHOULD-NOT-LEAK"), "{text}");
    let config = LumanuConfig::new(
        mock.base.clone(),
        mock.base.clone(),
        "c",
        SecretString::from(SECRET),
    )
    .with_http(fast_http());
    assert!(!format!("{config:?}").contains(SECRET));
}

#[tokio::test]
async fn repeated_deposit_link_is_success_once_the_funding_is_completed() {
    let mock = Mock::start(|req, earlier| {
        if req.path == TOKEN_PATH {
            return token_reply(earlier, 3600);
        }
        match (req.method.as_str(), req.path.as_str()) {
            ("POST", "/lumanu/api/rest/funding/f-1/link-deposit") => Reply::json(
                409,
                json!({"error": {"code": "funding_already_linked", "message": "already linked"}}),
            ),
            ("GET", "/lumanu/api/rest/funding/f-1") => {
                Reply::json(200, json!({"id": "f-1", "status": "completed", "amount": 500}))
            }
            ("POST", "/lumanu/api/rest/funding/f-2/link-deposit") => Reply::json(
                409,
                json!({"error": {"code": "transfer_already_linked", "message": "linked elsewhere"}}),
            ),
            ("GET", "/lumanu/api/rest/funding/f-2") => {
                Reply::json(200, json!({"id": "f-2", "status": "pending", "amount": 500}))
            }
            _ => Reply::json(404, json!({"error": {"code": "not_found", "message": "no"}})),
        }
    })
    .await;
    let c = client(&mock, fast_http());
    let done = c.ensure_deposit_linked("f-1", "tr-1").await.unwrap();
    assert_eq!(done.id, "f-1");
    let err = c.ensure_deposit_linked("f-2", "tr-1").await.unwrap_err();
    assert!(err.is_conflict() && err.is_permanent());
    assert_eq!(err.code(), Some("transfer_already_linked"));
}
