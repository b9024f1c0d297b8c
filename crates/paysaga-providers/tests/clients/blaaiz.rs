use paysaga_providers::blaaiz::{
    AttachFiles, BlaaizAuth, BlaaizClient, BlaaizConfig, CreateCustomer, CreatePayout,
    CustomerType, FileCategory, PayoutAmount, PayoutMethod, PresignedUrlRequest, TransactionStatus,
    VerificationStatus, DEFAULT_SCOPE,
};
use secrecy::SecretString;
use serde_json::json;

use crate::support::{count, fast_http, Mock, Reply};

const SECRET: &str = "blaaiz-client-secret-XYZ";
const API_KEY: &str = "blaaiz-legacy-key-XYZ";
const TOKEN_PATH: &str = "/blaaiz/oauth/token";

fn oauth_client(mock: &Mock) -> BlaaizClient {
    BlaaizClient::new(
        BlaaizConfig::new(
            format!("{}/blaaiz", mock.base),
            BlaaizAuth::OAuth {
                client_id: "bl-client".into(),
                client_secret: SecretString::from(SECRET),
                scope: DEFAULT_SCOPE.into(),
            },
        )
        .with_http(fast_http()),
    )
}

fn customer_json(status: &str) -> serde_json::Value {
    json!({"id": "cus-1", "business_id": "biz-1", "first_name": "John", "last_name": "Doe", "business_name": null,
           "type": "individual", "email": "john.doe@company.com", "country": "NG", "id_type": "passport",
           "id_number": "6733823632872", "verification_status": status})
}

fn txn_json(id: &str, note: &str, status: &str) -> String {
    // Written by hand so that the amount's exact text reaches the client.
    format!(
        r#"{{"id":"{id}","business_id":"biz-1","business_customer_id":"cus-1","business_wallet_id":"w-1","status":"{status}","type":"payout","reference":"ref-{id}","currency":"NGN","amount":100.5,"amount_without_fee":100.5,"fee":0,"rate":1,"date":"2026-11-23T10:00:00Z","note":"{note}","source_information":{{"collection_email":null}},"recipient":null}}"#
    )
}

#[tokio::test]
async fn kyc_flow_requests_match_the_openapi() {
    let mock = Mock::start(|req, earlier| {
        if req.path == TOKEN_PATH {
            let n = count(earlier, TOKEN_PATH) + 1;
            return Reply::json(200, json!({"token_type": "Bearer", "expires_in": 900, "access_token": format!("bl-{n}")}));
        }
        if req.path.starts_with("/s3/") {
            return Reply::raw(200, "");
        }
        if req.header("authorization").as_deref() != Some("Bearer bl-1") {
            return Reply::json(401, json!({"status": false, "message": "Invalid or missing API key"}));
        }
        match (req.method.as_str(), req.path.as_str()) {
            ("POST", "/blaaiz/api/external/customer") => {
                Reply::json(201, json!({"message": "Customer created successfully.", "data": customer_json("PENDING")}))
            }
            ("GET", "/blaaiz/api/external/customer") => {
                let email = req.query_param("email").unwrap_or_default();
                let data = if email.eq_ignore_ascii_case("john.doe@company.com") { vec![customer_json("PROCESSING")] } else { vec![] };
                Reply::json(200, json!({"status": true, "message": "ok", "data": data}))
            }
            ("GET", "/blaaiz/api/external/customer/cus-1") => {
                let mut c = customer_json("VERIFIED");
                c.as_object_mut().unwrap().remove("verification_status");
                c["status"] = json!("verified");
                Reply::json(200, json!({"status": true, "message": "Customer retrieved successfully", "data": c}))
            }
            ("POST", "/blaaiz/api/external/file/get-presigned-url") => Reply::json(
                200,
                json!({"message": "Upload URL generated successfully", "data": {
                    "file_id": "file-1",
                    "upload_url": format!("http://{}/s3/bucket/file-1?X-Amz-Signature=sig123", req.header("host").unwrap_or_default()),
                    "headers": {"Content-Type": "image/jpeg", "x-amz-meta-token": "upl-tok"},
                    "expires_at": "2026-11-23T11:30:00Z"}}),
            ),
            ("POST", "/blaaiz/api/external/customer/cus-1/files") => {
                Reply::json(200, json!({"message": "Customer files uploaded successfully"}))
            }
            _ => Reply::json(404, json!({"message": "Not found"})),
        }
    })
    .await;
    let c = oauth_client(&mock);

    let created = c
        .create_customer(&CreateCustomer {
            customer_type: CustomerType::Individual,
            email: "john.doe@company.com".into(),
            country: "NG".into(),
            id_type: "passport".into(),
            id_number: "6733823632872".into(),
            first_name: Some("John".into()),
            last_name: Some("Doe".into()),
            business_name: None,
            phone: None,
            tin: None,
            dob: Some("1990-01-15".into()),
            street: None,
            city: None,
            state: None,
            zip_code: None,
            id_expiry_date: None,
            id_issue_date: None,
        })
        .await
        .unwrap();
    assert_eq!(created.id, "cus-1");
    assert_eq!(created.verification(), VerificationStatus::Pending);

    let found = c
        .find_customer_by_email("JOHN.DOE@company.com")
        .await
        .unwrap();
    assert_eq!(
        found.map(|c| c.verification()),
        Some(VerificationStatus::Processing)
    );
    assert!(c
        .find_customer_by_email("nobody@example.com")
        .await
        .unwrap()
        .is_none());

    let got = c.get_customer("cus-1").await.unwrap();
    assert_eq!(got.verification(), VerificationStatus::Verified);

    let upload = c
        .get_presigned_url(&PresignedUrlRequest {
            customer_id: "cus-1".into(),
            file_category: FileCategory::Identity,
            file_name: "passport.jpg".into(),
            file_type: "image/jpeg".into(),
        })
        .await
        .unwrap();
    assert_eq!(upload.file_id, "file-1");
    c.upload_file(&upload, b"\xff\xd8\xff jpeg bytes".to_vec())
        .await
        .unwrap();
    let attached = c
        .attach_files(
            "cus-1",
            &AttachFiles {
                id_file: Some("file-1".into()),
                ..AttachFiles::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(
        attached.message.as_deref(),
        Some("Customer files uploaded successfully")
    );

    // The token: form-encoded, with scopes, fetched once.
    let tokens = mock.to(TOKEN_PATH);
    assert_eq!(tokens.len(), 1);
    assert_eq!(
        tokens[0].header("content-type").as_deref(),
        Some("application/x-www-form-urlencoded")
    );
    assert_eq!(
        tokens[0].form_field("grant_type").as_deref(),
        Some("client_credentials")
    );
    assert_eq!(
        tokens[0].form_field("client_id").as_deref(),
        Some("bl-client")
    );
    assert_eq!(
        tokens[0].form_field("client_secret").as_deref(),
        Some(SECRET)
    );
    assert_eq!(
        tokens[0].form_field("scope").as_deref(),
        Some(DEFAULT_SCOPE)
    );

    let create = &mock.to("/blaaiz/api/external/customer")[0];
    assert_eq!(
        create.json(),
        json!({"type": "individual", "email": "john.doe@company.com", "country": "NG", "id_type": "passport",
               "id_number": "6733823632872", "first_name": "John", "last_name": "Doe", "dob": "1990-01-15"})
    );
    let find = &mock.to("/blaaiz/api/external/customer")[1];
    assert_eq!(
        (find.method.as_str(), find.query_param("email").as_deref()),
        ("GET", Some("JOHN.DOE@company.com"))
    );
    assert_eq!(
        mock.to("/blaaiz/api/external/file/get-presigned-url")[0].json(),
        json!({"customer_id": "cus-1", "file_category": "identity", "file_name": "passport.jpg", "file_type": "image/jpeg"})
    );
    // The PUT: exact bytes, the returned headers, the signed query, and no credentials.
    let put = &mock.to("/s3/bucket/file-1")[0];
    assert_eq!(put.method, "PUT");
    assert_eq!(put.body, b"\xff\xd8\xff jpeg bytes".to_vec());
    assert_eq!(put.query, "X-Amz-Signature=sig123");
    assert_eq!(put.header("content-type").as_deref(), Some("image/jpeg"));
    assert_eq!(put.header("x-amz-meta-token").as_deref(), Some("upl-tok"));
    assert_eq!(put.header("authorization"), None);
    assert_eq!(put.header("x-blaaiz-api-key"), None);
    assert_eq!(
        mock.to("/blaaiz/api/external/customer/cus-1/files")[0].json(),
        json!({"id_file": "file-1"})
    );
}

#[tokio::test]
async fn payout_create_get_and_look_up_by_reference() {
    let mock = Mock::start(|req, _| {
        if req.path == TOKEN_PATH {
            return Reply::json(200, json!({"token_type": "Bearer", "expires_in": 900, "access_token": "bl-1"}));
        }
        match (req.method.as_str(), req.path.as_str()) {
            ("POST", "/blaaiz/api/external/payout") => {
                if req.json()["from_amount"] == json!(100.5) && req.text().contains(r#""from_amount":100.5"#) {
                    Reply::raw(200, &format!(r#"{{"message":"Payout Initiated Successfully.","transaction":{}}}"#, txn_json("tx-1", "ps-ref-1", "PENDING")))
                } else {
                    Reply::json(400, json!({"message": "Insufficient funds."}))
                }
            }
            ("GET", "/blaaiz/api/external/transaction/tx-1") => Reply::raw(
                200,
                &format!(r#"{{"message":"Transaction retrieved successfully","data":{}}}"#, txn_json("tx-1", "ps-ref-1", "SUCCESSFUL")),
            ),
            ("POST", "/blaaiz/api/external/transaction") => {
                let page: u64 = req.query_param("page").and_then(|p| p.parse().ok()).unwrap_or(1);
                let items = if page == 1 {
                    format!("{},{}", txn_json("tx-a", "other-1", "SUCCESSFUL"), txn_json("tx-b", "other-2", "FAILED"))
                } else {
                    txn_json("tx-1", "ps-ref-1", "SUCCESSFUL")
                };
                Reply::raw(
                    200,
                    &format!(r#"{{"message":"ok","data":[{items}],"links":{{}},"meta":{{"current_page":{page},"last_page":2,"per_page":2,"total":3}}}}"#),
                )
            }
            _ => Reply::json(404, json!({"message": "Not found"})),
        }
    })
    .await;
    let c = oauth_client(&mock);
    let mut request = CreatePayout::new(
        "w-1",
        "cus-1",
        PayoutMethod::BankTransfer,
        PayoutAmount::From(10_050),
        "NGN",
        "NGN",
        "ps-ref-1",
    )
    .unwrap();
    request.bank_id = Some("1".into());
    request.account_number = Some("1234567890".into());
    let created = c.create_payout(&request, soon()).await.unwrap();
    assert_eq!(created.transaction.id, "tx-1");
    assert_eq!(created.transaction.amount_minor().unwrap(), 10_050);
    assert_eq!(created.transaction.status, TransactionStatus::Pending);
    let body = mock.to("/blaaiz/api/external/payout")[0].json();
    assert_eq!(
        body,
        json!({"wallet_id": "w-1", "customer_id": "cus-1", "method": "bank_transfer", "from_amount": 100.5,
               "from_currency_id": "NGN", "to_currency_id": "NGN", "note": "ps-ref-1", "bank_id": "1",
               "account_number": "1234567890"})
    );

    let t = c.get_transaction("tx-1").await.unwrap();
    assert!(t.status.is_success());

    let found = c
        .find_payout_by_reference("cus-1", "ps-ref-1")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(found.id, "tx-1");
    let lists = mock.to("/blaaiz/api/external/transaction");
    assert_eq!(lists.len(), 2);
    assert_eq!(lists[0].query_param("page").as_deref(), Some("1"));
    assert_eq!(lists[1].query_param("page").as_deref(), Some("2"));
    assert_eq!(
        lists[0].json(),
        json!({"type": "payout", "customer_id": "cus-1"})
    );
    assert!(c
        .find_payout_by_reference("cus-1", "never-sent")
        .await
        .unwrap()
        .is_none());

    // A refusal is permanent and carries Blaaiz's message.
    let mut broke = request.clone();
    broke.from_amount = Some("999".parse().unwrap());
    let err = c.create_payout(&broke, soon()).await.unwrap_err();
    assert!(err.is_permanent());
    assert_eq!(err.status(), Some(400));
    assert_eq!(err.provider_message(), Some("Insufficient funds."));

    // Past its send-by instant the payout is not sent at all (another worker may be about
    // to send it): a transient error that says nothing can have happened.
    let payouts_before = mock.to("/blaaiz/api/external/payout").len();
    let late = std::time::Instant::now() - std::time::Duration::from_millis(1);
    let err = c.create_payout(&request, late).await.unwrap_err();
    assert!(
        matches!(err, paysaga_providers::Error::NotSent { .. }),
        "{err:?}"
    );
    assert!(err.is_transient() && !err.may_have_taken_effect());
    assert_eq!(mock.to("/blaaiz/api/external/payout").len(), payouts_before);
}

#[tokio::test]
async fn legacy_api_key_mode() {
    let mock = Mock::start(|req, earlier| {
        if req.path == "/blaaiz/api/external/customer/cus-2" {
            return Reply::json(429, json!({"message": "Too Many Attempts."}))
                .with_header("X-RateLimit-Reset", "30");
        }
        // The key works once, then is "revoked".
        if req.header("x-blaaiz-api-key").as_deref() != Some(API_KEY)
            || count(earlier, "/blaaiz/api/external/customer/cus-1") > 0
        {
            return Reply::json(
                401,
                json!({"status": false, "message": "Invalid or missing API key"}),
            );
        }
        Reply::json(
            200,
            json!({"status": true, "message": "ok", "data": customer_json("PENDING")}),
        )
    })
    .await;
    let c = BlaaizClient::new(
        BlaaizConfig::new(
            format!("{}/blaaiz", mock.base),
            BlaaizAuth::ApiKey(SecretString::from(API_KEY)),
        )
        .with_http(fast_http()),
    );
    assert!(c.token_cache().is_none());
    c.get_customer("cus-1").await.unwrap();
    let first = &mock.requests()[0];
    assert_eq!(first.header("authorization"), None);
    // A 401 with a static key is not retried.
    let err = c.get_customer("cus-1").await.unwrap_err();
    assert!(err.is_unauthorized() && err.is_permanent());
    assert_eq!(err.provider_message(), Some("Invalid or missing API key"));
    assert_eq!(mock.to("/blaaiz/api/external/customer/cus-1").len(), 2);
    let limited = c.get_customer("cus-2").await.unwrap_err();
    assert!(limited.is_transient());
    assert_eq!(
        limited.retry_after(),
        Some(std::time::Duration::from_secs(30))
    );
    assert!(!format!("{c:?} {err:?} {err} {limited:?}").contains(API_KEY));
}

#[tokio::test]
async fn validation_errors_are_reported() {
    let mock = Mock::start(|req, _| {
        if req.path == TOKEN_PATH {
            return Reply::json(200, json!({"token_type": "Bearer", "expires_in": 900, "access_token": "bl-1"}));
        }
        Reply::json(422, json!({"message": "The given data was invalid.", "errors": {"id_number": ["The id number field is required."]}}))
    })
    .await;
    let c = oauth_client(&mock);
    let err = c.get_customer("cus-1").await.unwrap_err();
    assert!(err.is_permanent());
    assert_eq!(err.status(), Some(422));
    assert_eq!(
        err.provider_message(),
        Some("The given data was invalid. (id_number: The id number field is required.)")
    );
    assert!(!format!("{c:?} {err:?}").contains(SECRET));
}

/// A send-by instant that does not get in the way.
fn soon() -> std::time::Instant {
    std::time::Instant::now() + std::time::Duration::from_secs(60)
}
