//! End-to-end tests: the sandbox on port 0, driven with reqwest, webhooks received and
//! signature-checked by a small axum receiver.

#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;
use hmac::{Hmac, Mac};
use paysaga_sandbox::{Credentials, RunningSandbox, SandboxConfig};
use reqwest::Client;
use serde_json::{json, Value};
use sha2::{Sha256, Sha512};

const LUMANU_WS: &str = paysaga_sandbox::seeds::LUMANU_WORKSPACE_ID;
const BLAAIZ_NGN_WALLET: &str = paysaga_sandbox::seeds::BLAAIZ_WALLETS[0].0;

/// Webhooks received, each verified against its provider's signature scheme.
#[derive(Clone, Default)]
struct Received {
    events: Arc<Mutex<Vec<(String, Value)>>>,
    rejected: Arc<Mutex<u32>>,
}

fn hmac256(key: &str, data: &[u8]) -> String {
    let mut m = <Hmac<Sha256> as Mac>::new_from_slice(key.as_bytes()).unwrap();
    m.update(data);
    hex::encode(m.finalize().into_bytes())
}

fn hmac512(key: &str, data: &[u8]) -> String {
    let mut m = <Hmac<Sha512> as Mac>::new_from_slice(key.as_bytes()).unwrap();
    m.update(data);
    hex::encode(m.finalize().into_bytes())
}

fn verify(provider: &str, headers: &HeaderMap, body: &[u8]) -> bool {
    let h = |n: &str| {
        headers
            .get(n)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned()
    };
    match provider {
        "lumanu" => h("x-signature") == hmac256("sandbox-lumanu-webhook-secret", body),
        "blaaiz" => {
            let ts = h("x-blaaiz-timestamp");
            let age = chrono::Utc::now().timestamp() - ts.parse::<i64>().unwrap_or(0);
            let mut signed = format!("{ts}.").into_bytes();
            signed.extend_from_slice(body);
            age.abs() < 300
                && h("x-blaaiz-signature") == hmac256("sandbox-blaaiz-webhook-secret", &signed)
        }
        "lean" => {
            h("lean-signature")
                == format!("sha512={}", hmac512("sandbox-lean-webhook-secret", body))
        }
        _ => false,
    }
}

async fn receive(
    State(rx): State<Received>,
    Path(provider): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    if !verify(&provider, &headers, &body) {
        *rx.rejected.lock().unwrap() += 1;
        return StatusCode::UNAUTHORIZED;
    }
    let value: Value = serde_json::from_slice(&body).unwrap();
    rx.events.lock().unwrap().push((provider, value));
    StatusCode::OK
}

impl Received {
    async fn start() -> (Self, SocketAddr) {
        let rx = Received::default();
        let app = Router::new()
            .route("/webhooks/{provider}", post(receive))
            .with_state(rx.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (rx, addr)
    }

    fn all(&self) -> Vec<(String, Value)> {
        self.events.lock().unwrap().clone()
    }

    /// Waits (up to 5 s) for a webhook matching `pred`.
    async fn wait_for(&self, what: &str, pred: impl Fn(&str, &Value) -> bool) -> Value {
        for _ in 0..250 {
            if let Some((_, v)) = self.all().into_iter().find(|(p, v)| pred(p, v)) {
                return v;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("no webhook {what}; got {:#?}", self.all());
    }
}

struct Harness {
    sandbox: RunningSandbox,
    hooks: Received,
    http: Client,
}

impl Harness {
    async fn start(faults: &str) -> Self {
        let (hooks, hook_addr) = Received::start().await;
        let mut config = SandboxConfig::new("127.0.0.1:0".parse().unwrap(), Credentials::dev());
        config.webhook_base = Some(format!("http://{hook_addr}"));
        config.faults = faults.parse().unwrap();
        let sandbox = paysaga_sandbox::spawn(config).await.unwrap();
        Self {
            sandbox,
            hooks,
            http: Client::builder()
                .timeout(Duration::from_secs(5))
                .build()
                .unwrap(),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.sandbox.base_url())
    }

    async fn lumanu_token(&self) -> String {
        let r: Value = self
            .http
            .post(self.url("/lumanu/oauth/token"))
            .json(&json!({
                "client_id": "sandbox-lumanu-client",
                "client_secret": "sandbox-lumanu-secret",
                "audience": "https://lumanu-demo.hasura.app/v1/graphql",
                "grant_type": "client_credentials",
            }))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(r["token_type"], "Bearer");
        assert!(r["expires_in"].as_u64().unwrap() > 0);
        r["access_token"].as_str().unwrap().to_owned()
    }

    async fn form_token(&self, path: &str, provider: &str, scope: &str) -> String {
        let r = self
            .http
            .post(self.url(path))
            .form(&[
                ("grant_type", "client_credentials"),
                ("client_id", &format!("sandbox-{provider}-client")),
                ("client_secret", &format!("sandbox-{provider}-secret")),
                ("scope", scope),
            ])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["token_type"], "Bearer");
        v["access_token"].as_str().unwrap().to_owned()
    }

    /// Sends a request; returns (status, JSON body or Null).
    async fn call(
        &self,
        method: &str,
        path: &str,
        token: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        self.call_with(method, path, token, body, &[]).await
    }

    async fn call_with(
        &self,
        method: &str,
        path: &str,
        token: &str,
        body: Option<Value>,
        headers: &[(&str, &str)],
    ) -> (u16, Value) {
        let mut req = self
            .http
            .request(method.parse().unwrap(), self.url(path))
            .bearer_auth(token);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let bytes = resp.bytes().await.unwrap();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    async fn get(&self, path: &str) -> Value {
        self.http
            .get(self.url(path))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    async fn ledger(&self) -> Vec<Value> {
        self.get("/_sandbox/ledger")
            .await
            .as_array()
            .unwrap()
            .clone()
    }

    /// Every balance equals the sum of its ledger entries.
    async fn assert_balances_match_ledger(&self) {
        let ledger = self.ledger().await;
        let balances = self.get("/_sandbox/balances").await;
        let accounts = balances["accounts"].as_array().unwrap();
        for account in accounts {
            let sum: i64 = ledger
                .iter()
                .filter(|e| {
                    e["provider"] == account["provider"]
                        && e["account"] == account["account"]
                        && e["currency"] == account["currency"]
                })
                .map(|e| {
                    let a = e["amount"].as_i64().unwrap();
                    if e["direction"] == "credit" {
                        a
                    } else {
                        -a
                    }
                })
                .sum();
            assert_eq!(account["balance"].as_i64().unwrap(), sum, "{account}");
        }
        for entry in &ledger {
            assert!(
                accounts.iter().any(|a| a["account"] == entry["account"]),
                "ledger account {} missing from balances",
                entry["account"]
            );
        }
    }
}

async fn poll_until(h: &Harness, path: &str, token: &str, pred: impl Fn(&Value) -> bool) -> Value {
    for _ in 0..100 {
        let (status, v) = h.call("GET", path, token, None).await;
        assert_eq!(status, 200, "{path}: {v}");
        if pred(&v) {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{path} never reached the expected state");
}

#[tokio::test]
async fn every_api_requires_valid_credentials() {
    let h = Harness::start("none").await;
    // Lumanu: no token, bad token, bad client secret.
    let (status, body) = h.call("GET", "/lumanu/api/rest/payable", "", None).await;
    assert_eq!(status, 401);
    assert!(
        body["error"]["code"].is_string() && body["error"]["request_id"].is_string(),
        "{body}"
    );
    let (status, _) = h
        .call("GET", "/lumanu/api/rest/payable", "forged", None)
        .await;
    assert_eq!(status, 401);
    let r = h
        .http
        .post(h.url("/lumanu/oauth/token"))
        .json(&json!({"client_id": "sandbox-lumanu-client", "client_secret": "wrong", "grant_type": "client_credentials"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let token = h.lumanu_token().await;
    let (status, _) = h
        .call("GET", "/lumanu/api/rest/payable", &token, None)
        .await;
    assert_eq!(status, 200);
    // A Lumanu token is not a Lean or Blaaiz token.
    let (status, body) = h
        .call("GET", "/lean/payments/v1/destinations", &token, None)
        .await;
    assert_eq!(
        (status, body["status"].as_str()),
        (401, Some("UNAUTHORIZED"))
    );
    let (status, body) = h
        .call("GET", "/blaaiz/api/external/customer/x", &token, None)
        .await;
    assert_eq!((status, body["status"].as_bool()), (401, Some(false)));
    // Legacy credentials.
    let r = h
        .http
        .get(h.url("/blaaiz/api/external/transaction/nope"))
        .header("x-blaaiz-api-key", "sandbox-blaaiz-api-key")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let r = h
        .http
        .get(h.url("/lean/payments/v1/destinations"))
        .header("lean-app-token", "sandbox-lean-app-token")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = h
        .http
        .get(h.url("/lean/payments/v1/destinations"))
        .header("lean-app-token", "wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    // OAuth tokens for Blaaiz and Lean.
    let bt = h
        .form_token(
            "/blaaiz/oauth/token",
            "blaaiz",
            "customer:read customer:write payout:create",
        )
        .await;
    let (status, _) = h
        .call(
            "GET",
            "/blaaiz/api/external/customer?email=a@b.c",
            &bt,
            None,
        )
        .await;
    assert_eq!(status, 200);
    let lt = h.form_token("/lean/oauth2/token", "lean", "api").await;
    let (status, _) = h
        .call("GET", "/lean/payments/v1/destinations", &lt, None)
        .await;
    assert_eq!(status, 200);
    h.sandbox.shutdown().await.unwrap();
}

#[tokio::test]
async fn lumanu_prefunding_flow_pays_exactly_once() {
    let h = Harness::start("none").await;
    let t = h.lumanu_token().await;
    // 1. Funding invoice.
    let (status, funding) = h
        .call(
            "POST",
            "/lumanu/api/rest/funding",
            &t,
            Some(json!({
                "workspace_id": LUMANU_WS, "method": "invoice", "amount": 50_000,
                "description": "saga-1 funding", "recipient_email": "ap@brand.co",
                "bill_to": "AP", "company_name": "Brand", "company_address_one": "1 Main St",
            })),
        )
        .await;
    assert_eq!(status, 200, "{funding}");
    assert_eq!(funding["status"], "pending");
    assert_eq!(funding["amount_denomination"], "us_cents");
    assert!(funding["invoice_number"].as_i64().unwrap() > 0);
    let funding_id = funding["id"].as_str().unwrap().to_owned();

    // 2. The deposit arrives: signed transfer.created naming the funding.
    let hook = h
        .hooks
        .wait_for("transfer.created", |p, v| {
            p == "lumanu"
                && v["event_type"] == "transfer.created"
                && v["data"]["funding_id"] == funding_id.as_str()
        })
        .await;
    let transfer_id = hook["data"]["id"].as_str().unwrap().to_owned();
    let (_, wallet) = h
        .call(
            "GET",
            &format!("/lumanu/api/rest/workspace/{LUMANU_WS}/wallet"),
            &t,
            None,
        )
        .await;
    assert_eq!(wallet["balance"]["balance"], 50_000);
    assert_eq!(wallet["balance"]["available_balance"], 0);
    let (_, txns) = h
        .call("GET", &format!("/lumanu/api/rest/workspace/{LUMANU_WS}/wallet/transaction?limit=10&offset=0&order_by=created_at&order_by_direction=desc"), &t, None)
        .await;
    assert_eq!(txns["total"], 1);
    assert_eq!(txns["data"][0]["id"], transfer_id.as_str());
    assert_eq!(txns["data"][0]["type"], "deposit");
    let invoice = funding["invoice_number"].to_string();
    assert!(txns["data"][0]["description"]
        .as_str()
        .unwrap()
        .contains(&invoice));

    // 3. Link the deposit; linking again is an error.
    let link = format!("/lumanu/api/rest/funding/{funding_id}/link-deposit");
    let (status, linked) = h
        .call("POST", &link, &t, Some(json!({"transfer_id": transfer_id})))
        .await;
    assert_eq!(
        (status, linked["status"].as_str()),
        (200, Some("completed"))
    );
    let (status, err) = h
        .call("POST", &link, &t, Some(json!({"transfer_id": transfer_id})))
        .await;
    assert_eq!(status, 409, "{err}");
    let (_, wallet) = h
        .call(
            "GET",
            &format!("/lumanu/api/rest/workspace/{LUMANU_WS}/wallet"),
            &t,
            None,
        )
        .await;
    assert_eq!(wallet["balance"]["available_balance"], 50_000);

    // 4. Payable (a repeat creates a second one: no idempotency) -> approve.
    let payable_body = json!({"workspace_id": LUMANU_WS, "payee_email": "creator@example.com", "amount": 12_345, "description": "saga-1 payout"});
    let (status, payable) = h
        .call(
            "POST",
            "/lumanu/api/rest/payable",
            &t,
            Some(payable_body.clone()),
        )
        .await;
    assert_eq!(status, 200, "{payable}");
    assert_eq!(payable["payable_status"], "not_approved");
    assert!(payable["status"].is_null());
    let payable_id = payable["id"].as_str().unwrap().to_owned();
    let (_, dup) = h
        .call("POST", "/lumanu/api/rest/payable", &t, Some(payable_body))
        .await;
    assert_ne!(dup["id"], payable["id"]);
    let (_, found) = h
        .call(
            "GET",
            "/lumanu/api/rest/payable?description=saga-1%20payout&limit=10",
            &t,
            None,
        )
        .await;
    assert_eq!(found["total"], 2);
    // Cancel the duplicate (compensation path).
    let (status, cancelled) = h
        .call(
            "POST",
            &format!(
                "/lumanu/api/rest/payable/{}/cancel",
                dup["id"].as_str().unwrap()
            ),
            &t,
            None,
        )
        .await;
    assert_eq!(
        (status, cancelled["payable_status"].as_str()),
        (200, Some("canceled"))
    );
    let (status, approved) = h
        .call(
            "POST",
            &format!("/lumanu/api/rest/payable/{payable_id}/approve"),
            &t,
            None,
        )
        .await;
    assert_eq!(
        (status, approved["payable_status"].as_str()),
        (200, Some("approved"))
    );

    // 5. Pay from balance; paying again or paying the cancelled one is refused.
    let pay = json!({"workspace_id": LUMANU_WS, "method": "balance", "payable_ids": [payable_id]});
    let (status, paid) = h
        .call("POST", "/lumanu/api/rest/funding", &t, Some(pay.clone()))
        .await;
    assert_eq!(status, 200, "{paid}");
    assert_eq!(paid["method"], "balance");
    let (status, _) = h
        .call("POST", "/lumanu/api/rest/funding", &t, Some(pay))
        .await;
    assert_eq!(status, 422);
    let (status, _) = h
        .call(
            "POST",
            "/lumanu/api/rest/funding",
            &t,
            Some(
                json!({"workspace_id": LUMANU_WS, "method": "balance", "payable_ids": [dup["id"]]}),
            ),
        )
        .await;
    assert_eq!(status, 422);
    h.hooks
        .wait_for("payable.paid", |p, v| {
            p == "lumanu"
                && v["event_type"] == "payable.paid"
                && v["data"]["id"] == payable_id.as_str()
        })
        .await;
    let (_, p) = h
        .call(
            "GET",
            &format!("/lumanu/api/rest/payable/{payable_id}"),
            &t,
            None,
        )
        .await;
    assert_eq!(p["payable_status"], "paid");
    for ev in ["payable.created", "payable.approved", "payable.canceled"] {
        assert!(
            h.hooks.all().iter().any(|(_, v)| v["event_type"] == ev),
            "missing {ev}"
        );
    }

    // 6. Insufficient balance for a payable larger than what is left.
    let (_, big) = h
        .call("POST", "/lumanu/api/rest/payable", &t, Some(json!({"workspace_id": LUMANU_WS, "payee_email": "x@example.com", "amount": 40_000, "description": "too big"})))
        .await;
    h.call(
        "POST",
        &format!(
            "/lumanu/api/rest/payable/{}/approve",
            big["id"].as_str().unwrap()
        ),
        &t,
        None,
    )
    .await;
    let (status, err) = h
        .call(
            "POST",
            "/lumanu/api/rest/funding",
            &t,
            Some(
                json!({"workspace_id": LUMANU_WS, "method": "balance", "payable_ids": [big["id"]]}),
            ),
        )
        .await;
    assert_eq!(
        (status, err["error"]["code"].as_str()),
        (422, Some("insufficient_balance"))
    );

    // The ledger: one deposit, exactly one payment of the right amount.
    let ledger = h.ledger().await;
    let lumanu: Vec<&Value> = ledger
        .iter()
        .filter(|e| e["provider"] == "lumanu")
        .collect();
    let payments: Vec<&&Value> = lumanu.iter().filter(|e| e["kind"] == "payment").collect();
    assert_eq!(payments.len(), 1, "{ledger:#?}");
    assert_eq!(payments[0]["amount"], 12_345);
    assert_eq!(payments[0]["reference"], payable_id.as_str());
    assert_eq!(payments[0]["direction"], "debit");
    assert_eq!(lumanu.iter().filter(|e| e["kind"] == "deposit").count(), 1);
    let (_, wallet) = h
        .call(
            "GET",
            &format!("/lumanu/api/rest/workspace/{LUMANU_WS}/wallet"),
            &t,
            None,
        )
        .await;
    assert_eq!(wallet["balance"]["balance"], 50_000 - 12_345);
    h.assert_balances_match_ledger().await;
    assert_eq!(*h.hooks.rejected.lock().unwrap(), 0);
    h.sandbox.shutdown().await.unwrap();
}

async fn blaaiz_customer(h: &Harness, t: &str, last_name: &str) -> String {
    let (status, created) = h
        .call(
            "POST",
            "/blaaiz/api/external/customer",
            t,
            Some(json!({
                "type": "individual", "first_name": "Ada", "last_name": last_name,
                "email": format!("ada.{last_name}@example.com"), "country": "NG",
                "id_type": "passport", "id_number": "A123",
            })),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["data"]["verification_status"], "PENDING");
    created["data"]["id"].as_str().unwrap().to_owned()
}

/// Gets an upload URL, PUTs `bytes` with the returned headers; returns the file id.
async fn blaaiz_upload(h: &Harness, t: &str, customer: &str, category: &str) -> String {
    let (status, up) = h
        .call(
            "POST",
            "/blaaiz/api/external/file/get-presigned-url",
            t,
            Some(json!({
                "customer_id": customer, "file_category": category,
                "file_name": "passport.jpg", "file_type": "image/jpeg",
            })),
        )
        .await;
    assert_eq!(status, 200, "{up}");
    assert_eq!(up["file_id"], up["data"]["file_id"]);
    let url = up["url"].as_str().unwrap();
    let headers = up["headers"].as_object().unwrap();
    let mut req = h.http.put(url).body(b"\xff\xd8fake-jpeg".to_vec());
    for (k, v) in headers {
        req = req.header(k, v.as_str().unwrap());
    }
    assert_eq!(req.send().await.unwrap().status(), 200);
    up["file_id"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn blaaiz_kyc_then_payout() {
    let h = Harness::start("none").await;
    let t = h
        .form_token(
            "/blaaiz/oauth/token",
            "blaaiz",
            "customer:read customer:write file:upload payout:create transaction:read",
        )
        .await;
    let customer = blaaiz_customer(&h, &t, "Okafor").await;
    let (_, found) = h
        .call(
            "GET",
            "/blaaiz/api/external/customer?email=ada.okafor@example.com",
            &t,
            None,
        )
        .await;
    assert_eq!(found["data"][0]["id"], customer.as_str());

    // Upload with a wrong header is refused.
    let (_, up) = h
        .call("POST", "/blaaiz/api/external/file/get-presigned-url", &t, Some(json!({
            "customer_id": customer, "file_category": "identity", "file_name": "id.jpg", "file_type": "image/jpeg",
        })))
        .await;
    let url = up["url"].as_str().unwrap();
    let wrong = h
        .http
        .put(url)
        .header("content-type", "image/png")
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 403);
    let tampered = h
        .http
        .put(url.replace("X-Amz-Signature=", "X-Amz-Signature=00"))
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(tampered.status(), 403);
    // Attaching a file that was never uploaded is refused.
    let (status, err) = h
        .call(
            "POST",
            &format!("/blaaiz/api/external/customer/{customer}/files"),
            &t,
            Some(json!({"id_file": up["file_id"]})),
        )
        .await;
    assert_eq!(status, 400, "{err}");

    // Payout before verification is refused.
    let payout = json!({
        "wallet_id": BLAAIZ_NGN_WALLET, "customer_id": customer, "method": "bank_transfer",
        "from_amount": 1500.25, "from_currency_id": "NGN", "to_currency_id": "NGN",
        "account_number": "0123456789", "bank_id": "1", "account_name": "Ada Okafor", "note": "saga-7",
    });
    let (status, _) = h
        .call(
            "POST",
            "/blaaiz/api/external/payout",
            &t,
            Some(payout.clone()),
        )
        .await;
    assert_eq!(status, 400);

    let id_file = blaaiz_upload(&h, &t, &customer, "identity").await;
    let poa = blaaiz_upload(&h, &t, &customer, "proof_of_address").await;
    let (status, ok) = h
        .call(
            "POST",
            &format!("/blaaiz/api/external/customer/{customer}/files"),
            &t,
            Some(json!({"id_file": id_file, "proof_of_address_file": poa})),
        )
        .await;
    assert_eq!(status, 200, "{ok}");
    let verified = h
        .hooks
        .wait_for("VERIFIED", |p, v| {
            p == "blaaiz" && v["customer_id"] == customer.as_str() && v["new_status"] == "VERIFIED"
        })
        .await;
    assert_eq!(verified["event_type"], "customer.status_changed");
    assert_eq!(verified["old_status"], "PROCESSING");
    let (_, c) = h
        .call(
            "GET",
            &format!("/blaaiz/api/external/customer/{customer}"),
            &t,
            None,
        )
        .await;
    assert_eq!(c["data"]["verification_status"], "VERIFIED");
    assert_eq!(c["data"]["files"].as_array().unwrap().len(), 2);

    // Payout: PENDING now, SUCCESSFUL by webhook and by GET.
    let (status, created) = h
        .call("POST", "/blaaiz/api/external/payout", &t, Some(payout))
        .await;
    assert_eq!(status, 200, "{created}");
    assert_eq!(created["transaction"]["status"], "PENDING");
    assert_eq!(created["transaction"]["amount"].to_string(), "1500.25");
    let txn = created["transaction"]["id"].as_str().unwrap().to_owned();
    let hook = h
        .hooks
        .wait_for("payout SUCCESSFUL", |p, v| {
            p == "blaaiz" && v["type"] == "payout" && v["transaction_id"] == txn.as_str()
        })
        .await;
    assert_eq!(hook["transaction_status"], "SUCCESSFUL");
    assert_eq!(hook["merchant_reference"], "saga-7");
    assert_eq!(hook["transaction_amount"].to_string(), "1500.25");
    let (_, got) = h
        .call(
            "GET",
            &format!("/blaaiz/api/external/transaction/{txn}"),
            &t,
            None,
        )
        .await;
    assert_eq!(got["data"]["status"], "SUCCESSFUL");
    let (_, list) = h
        .call(
            "POST",
            "/blaaiz/api/external/transaction",
            &t,
            Some(json!({"customer_id": customer, "status": "completed"})),
        )
        .await;
    assert_eq!(list["meta"]["total"], 1);

    // Insufficient funds.
    let (status, err) = h
        .call(
            "POST",
            "/blaaiz/api/external/payout",
            &t,
            Some(json!({
                "wallet_id": BLAAIZ_NGN_WALLET, "customer_id": customer, "method": "bank_transfer",
                "from_amount": 999_999_999.99, "from_currency_id": "NGN", "to_currency_id": "NGN",
                "account_number": "0123456789", "bank_id": "1",
            })),
        )
        .await;
    assert_eq!(
        (status, err["message"].as_str()),
        (400, Some("Insufficient funds."))
    );

    let ledger = h.ledger().await;
    let payouts: Vec<&Value> = ledger.iter().filter(|e| e["kind"] == "payout").collect();
    assert_eq!(payouts.len(), 1);
    assert_eq!(payouts[0]["amount"], 150_025);
    assert_eq!(payouts[0]["account"], BLAAIZ_NGN_WALLET);
    let balances = h.get("/_sandbox/balances").await;
    let ngn = balances["accounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["account"] == BLAAIZ_NGN_WALLET)
        .unwrap()
        .clone();
    assert_eq!(ngn["balance"], 10_000_000_000i64 - 150_025);
    h.assert_balances_match_ledger().await;
    h.sandbox.shutdown().await.unwrap();
}

#[tokio::test]
async fn blaaiz_rejects_the_trigger_customer() {
    let h = Harness::start("none").await;
    let t = h
        .form_token(
            "/blaaiz/oauth/token",
            "blaaiz",
            "customer:write file:upload",
        )
        .await;
    let customer = blaaiz_customer(&h, &t, "Reject").await;
    let id_file = blaaiz_upload(&h, &t, &customer, "identity").await;
    let (status, _) = h
        .call(
            "POST",
            &format!("/blaaiz/api/external/customer/{customer}/files"),
            &t,
            Some(json!({"id_file": id_file})),
        )
        .await;
    assert_eq!(status, 200);
    let hook = h
        .hooks
        .wait_for("REJECTED", |_, v| {
            v["customer_id"] == customer.as_str() && v["new_status"] == "REJECTED"
        })
        .await;
    assert!(hook["comment"].as_str().unwrap().contains("Reject"));
    h.sandbox.shutdown().await.unwrap();
}

#[tokio::test]
async fn lean_customer_conflict_and_idempotent_intents() {
    let h = Harness::start("none").await;
    let t = h.form_token("/lean/oauth2/token", "lean", "api").await;
    let (status, dest) = h
        .call("POST", "/lean/payments/v1/destinations", &t, Some(json!({
            "display_name": "Payee AED", "name": "Payee LLC", "bank_identifier": "ENBD_UAE",
            "address": "", "city": "Dubai", "country": "ARE", "account_number": "1234", "iban": "AE070331234567890123456",
        })))
        .await;
    assert_eq!(status, 200, "{dest}");
    let dest_id = dest["id"].as_str().unwrap().to_owned();
    let (_, dests) = h
        .call("GET", "/lean/payments/v1/destinations", &t, None)
        .await;
    assert_eq!(dests.as_array().unwrap().len(), 2);

    let (status, customer) = h
        .call(
            "POST",
            "/lean/payments/v1/customer",
            &t,
            Some(json!({"app_user_id": "user-42"})),
        )
        .await;
    assert_eq!(status, 200, "{customer}");
    let customer_id = customer["customer_id"].as_str().unwrap().to_owned();
    let (status, conflict) = h
        .call(
            "POST",
            "/lean/payments/v1/customer",
            &t,
            Some(json!({"app_user_id": "user-42"})),
        )
        .await;
    assert_eq!(status, 409);
    assert_eq!(conflict["status"], "CUSTOMER_ALREADY_EXISTS");
    assert!(conflict["message"].is_string() && conflict["timestamp"].is_string());
    let (_, looked_up) = h
        .call("GET", "/lean/customers/v1/app-user-id/user-42", &t, None)
        .await;
    assert_eq!(looked_up["customer_id"], customer_id.as_str());

    // The simulated LinkSDK: beneficiary created (cool-off), then ACTIVE.
    let created = h
        .hooks
        .wait_for("beneficiary.created", |p, v| {
            p == "lean"
                && v["type"] == "payment_source.beneficiary.created"
                && v["payload"]["payment_destination_id"] == dest_id.as_str()
        })
        .await;
    assert_eq!(
        created["payload"]["status"],
        "AWAITING_BENEFICIARY_COOL_OFF"
    );
    assert_eq!(created["payload"]["customer_id"], customer_id.as_str());
    assert!(created["event_id"].is_string());
    h.hooks
        .wait_for("beneficiary ACTIVE", |_, v| {
            v["type"] == "payment_source.beneficiary.updated"
                && v["payload"]["payment_destination_id"] == dest_id.as_str()
                && v["payload"]["status"] == "ACTIVE"
        })
        .await;
    let source_id = created["payload"]["payment_source_id"].as_str().unwrap();
    let (_, source) = h
        .call(
            "GET",
            &format!("/lean/customers/v1/{customer_id}/payment_sources/{source_id}"),
            &t,
            None,
        )
        .await;
    let beneficiary = source["beneficiaries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["payment_destination_id"] == dest_id.as_str())
        .unwrap()
        .clone();
    assert_eq!(beneficiary["status"], "ACTIVE");

    // Intents: the same Idempotency-Key twice -> one intent, one payment.
    let intent = json!({"amount": 10.12, "currency": "AED", "payment_destination_id": dest_id, "customer_id": customer_id, "description": "saga-9"});
    let key = [("Idempotency-Key", "saga-9:create-intent")];
    let (s1, i1) = h
        .call_with(
            "POST",
            "/lean/payments/v1/intents",
            &t,
            Some(intent.clone()),
            &key,
        )
        .await;
    let (s2, i2) = h
        .call_with(
            "POST",
            "/lean/payments/v1/intents",
            &t,
            Some(intent.clone()),
            &key,
        )
        .await;
    assert_eq!((s1, s2), (200, 200), "{i1} {i2}");
    assert_eq!(i1["payment_intent_id"], i2["payment_intent_id"]);
    assert_eq!(i1["amount"].to_string(), "10.12");
    let intent_id = i1["payment_intent_id"].as_str().unwrap().to_owned();
    // Same key, different body.
    let mut other = intent.clone();
    other["amount"] = json!(11);
    let (status, _) = h
        .call_with("POST", "/lean/payments/v1/intents", &t, Some(other), &key)
        .await;
    assert_eq!(status, 409);

    let created = h
        .hooks
        .wait_for("payment.created", |_, v| {
            v["type"] == "payment.created" && v["payload"]["intent_id"] == intent_id.as_str()
        })
        .await;
    assert_eq!(created["payload"]["status"], "PENDING_WITH_BANK");
    let updated = h
        .hooks
        .wait_for("payment.updated", |_, v| {
            v["type"] == "payment.updated" && v["payload"]["intent_id"] == intent_id.as_str()
        })
        .await;
    assert_eq!(updated["payload"]["status"], "ACCEPTED_BY_BANK");
    assert_eq!(updated["payload"]["amount"].to_string(), "10.12");
    let got = poll_until(
        &h,
        &format!("/lean/payments/v1/intents/{intent_id}"),
        &t,
        |v| v["payments"][0]["status"] == "ACCEPTED_BY_BANK",
    )
    .await;
    assert_eq!(got["payments"].as_array().unwrap().len(), 1);
    assert_eq!(got["payment_destination"]["id"], dest_id.as_str());
    let payment_id = got["payments"][0]["id"].as_str().unwrap();
    let (status, payment) = h
        .call("GET", &format!("/lean/payments/v1/{payment_id}"), &t, None)
        .await;
    assert_eq!(
        (status, payment["status"].as_str()),
        (200, Some("ACCEPTED_BY_BANK"))
    );
    assert_eq!(payment["intent_id"], intent_id.as_str());

    // Concurrent retries with one key still make one intent.
    let key2 = [("Idempotency-Key", "saga-10:create-intent")];
    let body2 = json!({"amount": 5, "currency": "AED", "payment_destination_id": dest_id, "customer_id": customer_id, "description": "saga-10"});
    let calls = (0..8).map(|_| {
        h.call_with(
            "POST",
            "/lean/payments/v1/intents",
            &t,
            Some(body2.clone()),
            &key2,
        )
    });
    let results = futures::future::join_all(calls).await;
    let ids: std::collections::HashSet<String> = results
        .iter()
        .map(|(s, v)| {
            assert_eq!(*s, 200, "{v}");
            v["payment_intent_id"].as_str().unwrap().to_owned()
        })
        .collect();
    assert_eq!(ids.len(), 1);
    let intent10 = ids.into_iter().next().unwrap();
    poll_until(
        &h,
        &format!("/lean/payments/v1/intents/{intent10}"),
        &t,
        |v| v["payments"][0]["status"] == "ACCEPTED_BY_BANK",
    )
    .await;

    let ledger = h.ledger().await;
    let payments: Vec<&Value> = ledger
        .iter()
        .filter(|e| e["provider"] == "lean" && e["kind"] == "payment")
        .collect();
    assert_eq!(payments.len(), 2, "{ledger:#?}");
    assert_eq!(payments[0]["amount"], 1012);
    assert_eq!(payments[0]["currency"], "AED");
    assert_eq!(payments[1]["amount"], 500);
    assert_eq!(
        h.hooks
            .all()
            .iter()
            .filter(|(_, v)| v["type"] == "payment.created")
            .count(),
        2
    );
    h.assert_balances_match_ledger().await;
    h.sandbox.shutdown().await.unwrap();
}

#[tokio::test]
async fn error_rate_one_answers_5xx_or_429_but_spares_tokens_and_control() {
    let h = Harness::start("error_rate=1,rate_limit_share=0.5,retry_after_s=3,seed=11").await;
    let t = h.lumanu_token().await; // token endpoint exempt
    let mut seen_429 = false;
    let mut seen_5xx = false;
    for _ in 0..20 {
        let resp = h
            .http
            .get(h.url("/lumanu/api/rest/payable"))
            .bearer_auth(&t)
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        if status == 429 {
            assert_eq!(resp.headers()["retry-after"], "3");
            seen_429 = true;
        } else {
            assert!((500..600).contains(&status), "status {status}");
            seen_5xx = true;
        }
        let body: Value = resp.json().await.unwrap();
        assert!(body["error"]["code"].is_string(), "{body}");
    }
    assert!(seen_429 && seen_5xx);
    let (status, body) = h
        .call(
            "POST",
            "/lean/payments/v1/customer",
            "x",
            Some(json!({"app_user_id": "u"})),
        )
        .await;
    assert!(status == 429 || status >= 500);
    assert!(body["status"].is_string(), "{body}");
    // Control endpoints are never faulted; the spec can be read and replaced at run time.
    let spec = h.get("/_sandbox/faults").await;
    assert!(spec["spec"].as_str().unwrap().contains("error_rate=1"));
    let r = h
        .http
        .put(h.url("/_sandbox/faults"))
        .body("error_rate=0,seed=3")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let (status, _) = h.call("GET", "/lumanu/api/rest/payable", &t, None).await;
    assert_eq!(status, 200);
    let r = h
        .http
        .put(h.url("/_sandbox/faults"))
        .body("error_rate=7")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    h.sandbox.shutdown().await.unwrap();
}

#[tokio::test]
async fn timeout_after_effect_applies_the_effect_then_hangs() {
    let h =
        Harness::start("timeout_after_effect@POST:/lumanu/api/rest/payable=1,hang_ms=2000").await;
    let t = h.lumanu_token().await;
    let short = Client::builder()
        .timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let err = short
        .post(h.url("/lumanu/api/rest/payable"))
        .bearer_auth(&t)
        .json(&json!({"workspace_id": LUMANU_WS, "payee_email": "c@example.com", "amount": 100, "description": "lost-response"}))
        .send()
        .await
        .unwrap_err();
    assert!(err.is_timeout(), "{err}");
    // The payable exists and its webhook was sent although the client saw a timeout.
    let (_, list) = h
        .call(
            "GET",
            "/lumanu/api/rest/payable?description=lost-response",
            &t,
            None,
        )
        .await;
    assert_eq!(list["total"], 1);
    h.hooks
        .wait_for("payable.created", |_, v| {
            v["event_type"] == "payable.created" && v["data"]["id"] == list["data"][0]["id"]
        })
        .await;
    h.sandbox.shutdown().await.unwrap();
}

#[tokio::test]
async fn early_and_duplicated_webhooks() {
    let h = Harness::start("webhook_early=1,webhook_duplicate=1,seed=5").await;
    let t = h.lumanu_token().await;
    let (status, p) = h
        .call("POST", "/lumanu/api/rest/payable", &t, Some(json!({"workspace_id": LUMANU_WS, "payee_email": "c@example.com", "amount": 100, "description": "early"})))
        .await;
    assert_eq!(status, 200);
    // Early: already delivered when the response arrived.
    let copies = |h: &Harness| {
        h.hooks
            .all()
            .iter()
            .filter(|(_, v)| v["data"]["id"] == p["id"])
            .count()
    };
    assert!(copies(&h) >= 1, "webhook was not early");
    h.hooks.wait_for("duplicate", |_, _| copies(&h) == 2).await;
    let events: Vec<Value> = h
        .hooks
        .all()
        .into_iter()
        .map(|(_, v)| v)
        .filter(|v| v["data"]["id"] == p["id"])
        .collect();
    assert_eq!(
        events[0]["id"], events[1]["id"],
        "a duplicate carries the same event id"
    );
    let log = h.get("/_sandbox/webhooks").await;
    assert!(log.as_array().unwrap().iter().any(|d| d["early"] == true));
    h.sandbox.shutdown().await.unwrap();
}

#[tokio::test]
async fn dropped_webhooks_are_never_sent_and_retries_recover_failures() {
    let h = Harness::start("webhook_drop=1").await;
    let t = h.lumanu_token().await;
    h.call("POST", "/lumanu/api/rest/payable", &t, Some(json!({"workspace_id": LUMANU_WS, "payee_email": "c@example.com", "amount": 100, "description": "dropped"})))
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(h.hooks.all().is_empty());
    let log = h.get("/_sandbox/webhooks").await;
    assert_eq!(log[0]["dropped"], true);
    h.sandbox.shutdown().await.unwrap();

    // A receiver that is down at first: the sandbox retries until it is up.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let mut config = SandboxConfig::new("127.0.0.1:0".parse().unwrap(), Credentials::dev());
    config.webhook_base = Some(format!("http://{addr}"));
    let sandbox = paysaga_sandbox::spawn(config).await.unwrap();
    let http = Client::new();
    let token: Value = http
        .post(format!("{}/lumanu/oauth/token", sandbox.base_url()))
        .json(&json!({"client_id": "sandbox-lumanu-client", "client_secret": "sandbox-lumanu-secret", "grant_type": "client_credentials"}))
        .send().await.unwrap().json().await.unwrap();
    http.post(format!("{}/lumanu/api/rest/payable", sandbox.base_url()))
        .bearer_auth(token["access_token"].as_str().unwrap())
        .json(&json!({"workspace_id": LUMANU_WS, "payee_email": "c@example.com", "amount": 100, "description": "retried"}))
        .send().await.unwrap();
    tokio::time::sleep(Duration::from_millis(150)).await;
    let rx = Received::default();
    let app = Router::new()
        .route("/webhooks/{provider}", post(receive))
        .with_state(rx.clone());
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    rx.wait_for("retried payable.created", |_, v| {
        v["event_type"] == "payable.created"
    })
    .await;
    let log: Value = http
        .get(format!("{}/_sandbox/webhooks", sandbox.base_url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(log[0]["attempts"].as_u64().unwrap() >= 2, "{log}");
    assert_eq!(log[0]["delivered"], true);
    sandbox.shutdown().await.unwrap();
}

#[tokio::test]
async fn expired_tokens_are_refused() {
    let mut config = SandboxConfig::new("127.0.0.1:0".parse().unwrap(), Credentials::dev());
    config.timing.lumanu_token_ttl = Duration::from_millis(200);
    let sandbox = paysaga_sandbox::spawn(config).await.unwrap();
    let http = Client::new();
    let token: Value = http
        .post(format!("{}/lumanu/oauth/token", sandbox.base_url()))
        .json(&json!({"client_id": "sandbox-lumanu-client", "client_secret": "sandbox-lumanu-secret", "grant_type": "client_credentials"}))
        .send().await.unwrap().json().await.unwrap();
    assert_eq!(token["expires_in"], 0);
    let token = token["access_token"].as_str().unwrap().to_owned();
    let url = format!(
        "{}/lumanu/api/rest/workspace/{LUMANU_WS}/wallet",
        sandbox.base_url()
    );
    assert_eq!(
        http.get(&url)
            .bearer_auth(&token)
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    tokio::time::sleep(Duration::from_millis(250)).await;
    let resp = http.get(&url).bearer_auth(&token).send().await.unwrap();
    assert_eq!(resp.status(), 401);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "invalid_token");
    sandbox.shutdown().await.unwrap();
}

#[tokio::test]
async fn request_webhooks_follow_the_response_without_changing_its_framing() {
    let h = Harness::start("none").await;
    let t = h.lumanu_token().await;
    let resp = h
        .http
        .post(h.url("/lumanu/api/rest/payable"))
        .bearer_auth(&t)
        .json(&json!({"workspace_id": LUMANU_WS, "payee_email": "c@example.com", "amount": 100, "description": "framing"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let len = resp.content_length().expect("explicit Content-Length");
    let bytes = resp.bytes().await.unwrap();
    assert_eq!(len, bytes.len() as u64);
    let payable: Value = serde_json::from_slice(&bytes).unwrap();
    h.hooks
        .wait_for("payable.created", |_, v| {
            v["event_type"] == "payable.created" && v["data"]["id"] == payable["id"]
        })
        .await;
    h.sandbox.shutdown().await.unwrap();
}

/// Sends `method path` with the legacy Blaaiz API key (every scope).
async fn blaaiz_key_call(
    h: &Harness,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    h.call_with(
        method,
        path,
        "",
        body,
        &[("x-blaaiz-api-key", "sandbox-blaaiz-api-key")],
    )
    .await
}

async fn blaaiz_token_response(h: &Harness, scope: &str) -> (u16, Value) {
    let r = h
        .http
        .post(h.url("/blaaiz/oauth/token"))
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", "sandbox-blaaiz-client"),
            ("client_secret", "sandbox-blaaiz-secret"),
            ("scope", scope),
        ])
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

#[tokio::test]
async fn blaaiz_token_for_a_scope_blaaiz_does_not_define_is_refused() {
    let h = Harness::start("none").await;
    let (status, body) = blaaiz_token_response(&h, "customer:read file:write").await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"], "invalid_scope");
    assert!(body["error_description"]
        .as_str()
        .unwrap()
        .contains("file:write"));
    // The client's default scopes are all Blaaiz scopes.
    let (status, body) = blaaiz_token_response(&h, paysaga_providers_default_scope()).await;
    assert_eq!(status, 200, "{body}");
    h.sandbox.shutdown().await.unwrap();
}

/// The scopes paysaga's Blaaiz client requests by default (kept in step with
/// `paysaga_providers::blaaiz::DEFAULT_SCOPE`, which this crate does not depend on).
fn paysaga_providers_default_scope() -> &'static str {
    "customer:read customer:write file:upload payout:create transaction:read"
}

#[tokio::test]
async fn blaaiz_endpoints_refuse_a_token_without_their_scope() {
    let h = Harness::start("none").await;
    let read_only = h
        .form_token("/blaaiz/oauth/token", "blaaiz", "customer:read")
        .await;
    let new_customer = json!({
        "type": "individual", "first_name": "Ada", "last_name": "Scope",
        "email": "ada.scope@example.com", "country": "NG",
        "id_type": "passport", "id_number": "A123",
    });
    let (status, body) = h
        .call(
            "POST",
            "/blaaiz/api/external/customer",
            &read_only,
            Some(new_customer.clone()),
        )
        .await;
    assert_eq!(
        (status, body),
        (403, json!({"message": "Invalid scope(s) provided."}))
    );
    let (status, _) = h
        .call(
            "GET",
            "/blaaiz/api/external/customer?email=a@b.c",
            &read_only,
            None,
        )
        .await;
    assert_eq!(status, 200);
    let writer = h
        .form_token("/blaaiz/oauth/token", "blaaiz", "customer:write")
        .await;
    let (status, created) = h
        .call(
            "POST",
            "/blaaiz/api/external/customer",
            &writer,
            Some(new_customer),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    let id = created["data"]["id"].as_str().unwrap();
    for (method, path, body) in [
        ("GET", format!("/blaaiz/api/external/customer/{id}"), None),
        (
            "POST",
            "/blaaiz/api/external/file/get-presigned-url".to_owned(),
            Some(json!({"customer_id": id, "file_category": "identity"})),
        ),
        (
            "POST",
            "/blaaiz/api/external/transaction".to_owned(),
            Some(json!({})),
        ),
        ("GET", "/blaaiz/api/external/wallet".to_owned(), None),
        ("GET", "/blaaiz/api/external/webhook".to_owned(), None),
    ] {
        let (status, body) = h.call(method, &path, &writer, body).await;
        assert_eq!(status, 403, "{method} {path}: {body}");
    }
    // The legacy API key holds every scope.
    let (status, _) = blaaiz_key_call(
        &h,
        "GET",
        &format!("/blaaiz/api/external/customer/{id}"),
        None,
    )
    .await;
    assert_eq!(status, 200);
    let (status, _) = blaaiz_key_call(&h, "GET", "/blaaiz/api/external/wallet", None).await;
    assert_eq!(status, 200);
    h.sandbox.shutdown().await.unwrap();
}

#[tokio::test]
async fn blaaiz_upload_url_requested_as_the_sdk_does_takes_a_put_with_content_type_only() {
    let h = Harness::start("none").await;
    let t = h
        .form_token(
            "/blaaiz/oauth/token",
            "blaaiz",
            "customer:write file:upload",
        )
        .await;
    let customer = blaaiz_customer(&h, &t, "Sdk").await;
    // The SDK's request: no file_name, no file_type.
    let (status, up) = h
        .call(
            "POST",
            "/blaaiz/api/external/file/get-presigned-url",
            &t,
            Some(json!({"customer_id": customer, "file_category": "identity"})),
        )
        .await;
    assert_eq!(status, 200, "{up}");
    assert_eq!(up["headers"], json!({}));
    assert_eq!(up["data"]["upload_url"], up["url"]);
    let url = up["url"].as_str().unwrap();
    // The SDK's upload: Content-Type (its own choice) and nothing else.
    let put = h
        .http
        .put(url)
        .header("content-type", "application/pdf")
        .body("%PDF-1.4 fake")
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), 200);
    assert!(put.headers().get("etag").is_some());
    let (status, body) = h
        .call(
            "POST",
            &format!("/blaaiz/api/external/customer/{customer}/files"),
            &t,
            Some(json!({"id_file": up["file_id"]})),
        )
        .await;
    assert_eq!(
        (status, body),
        (
            200,
            json!({"message": "Customer files uploaded successfully"})
        )
    );

    // The spec's request names file_type: it is signed, the PUT must carry it.
    let (_, up) = h
        .call(
            "POST",
            "/blaaiz/api/external/file/get-presigned-url",
            &t,
            Some(json!({
                "customer_id": customer, "file_category": "proof_of_address",
                "file_name": "bill.jpg", "file_type": "image/jpeg",
            })),
        )
        .await;
    assert_eq!(up["headers"], json!({"Content-Type": "image/jpeg"}));
    let url = up["url"].as_str().unwrap();
    let without_type = h.http.put(url).body("x").send().await.unwrap();
    assert_eq!(without_type.status(), 403);
    assert!(without_type
        .text()
        .await
        .unwrap()
        .contains("<Code>SignatureDoesNotMatch</Code>"));
    // Dropping the signed header from the URL does not unsign it.
    let unsigned = url.replace(
        "X-Amz-SignedHeaders=content-type%3Bhost",
        "X-Amz-SignedHeaders=host",
    );
    assert_ne!(unsigned, url);
    let put = h
        .http
        .put(&unsigned)
        .header("content-type", "image/png")
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), 403);
    let put = h
        .http
        .put(url)
        .header("content-type", "image/jpeg")
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), 200);
    h.sandbox.shutdown().await.unwrap();
}

#[tokio::test]
async fn blaaiz_unknown_routes_answer_404_with_a_message() {
    let h = Harness::start("none").await;
    let (status, body) = blaaiz_key_call(&h, "GET", "/blaaiz/api/external/nowhere", None).await;
    assert_eq!(
        (status, body),
        (
            404,
            json!({"message": "The route api/external/nowhere could not be found."})
        )
    );
    let (status, body) = blaaiz_key_call(&h, "DELETE", "/blaaiz/api/external/payout", None).await;
    assert_eq!(status, 405);
    assert_eq!(
        body["message"],
        "The DELETE method is not supported for route api/external/payout."
    );
    h.sandbox.shutdown().await.unwrap();
}

#[tokio::test]
async fn blaaiz_reference_endpoints_list_wallets_currencies_banks_and_fees() {
    let h = Harness::start("none").await;
    let (status, wallets) = blaaiz_key_call(&h, "GET", "/blaaiz/api/external/wallet", None).await;
    assert_eq!(status, 200);
    let data = wallets["data"].as_array().unwrap();
    assert_eq!(data.len(), paysaga_sandbox::seeds::BLAAIZ_WALLETS.len());
    assert_eq!(data[0]["id"], BLAAIZ_NGN_WALLET);
    assert_eq!(data[0]["currency"], "NGN");
    assert_eq!(data[0]["balance"].to_string(), "100000000");
    let (status, one) = blaaiz_key_call(
        &h,
        "GET",
        &format!("/blaaiz/api/external/wallet/{BLAAIZ_NGN_WALLET}"),
        None,
    )
    .await;
    assert_eq!((status, &one["data"]), (200, &data[0]));
    let (status, _) = blaaiz_key_call(&h, "GET", "/blaaiz/api/external/wallet/nope", None).await;
    assert_eq!(status, 404);
    let (status, currencies) =
        blaaiz_key_call(&h, "GET", "/blaaiz/api/external/currency", None).await;
    assert_eq!(status, 200);
    assert!(currencies["data"]
        .as_array()
        .unwrap()
        .iter()
        .any(|c| c["id"] == "NGN" && c["code"] == "NGN"));
    let (status, banks) =
        blaaiz_key_call(&h, "GET", "/blaaiz/api/external/bank?currency=NGN", None).await;
    assert_eq!(status, 200);
    assert_eq!(
        banks["data"][0],
        json!({"id": "1", "name": "Access Bank", "code": "1", "currency": "NGN", "country": "NG"})
    );
    let (status, none) =
        blaaiz_key_call(&h, "GET", "/blaaiz/api/external/bank?currency=EUR", None).await;
    assert_eq!((status, none["data"].as_array().unwrap().len()), (200, 0));
    let (status, fees) = blaaiz_key_call(
        &h,
        "POST",
        "/blaaiz/api/external/fees/breakdown",
        Some(json!({"from_currency_id": "NGN", "to_currency_id": "NGN", "from_amount": 1500.25})),
    )
    .await;
    assert_eq!(status, 200, "{fees}");
    assert_eq!(fees["data"]["you_send"].to_string(), "1500.25");
    assert_eq!(fees["data"]["total_fees"], 0);
    h.sandbox.shutdown().await.unwrap();
}

#[tokio::test]
async fn blaaiz_registered_webhook_urls_receive_events_and_replay_resends_the_payout_event() {
    let h = Harness::start("none").await;
    let (mine, mine_addr) = Received::start().await;
    let (status, body) = blaaiz_key_call(&h, "GET", "/blaaiz/api/external/webhook", None).await;
    assert_eq!(status, 404, "{body}");
    let (status, body) = blaaiz_key_call(
        &h,
        "POST",
        "/blaaiz/api/external/webhook",
        Some(
            json!({"payout_url": "ftp://example.com/x", "collection_url": "https://example.com/c"}),
        ),
    )
    .await;
    assert_eq!(
        (status, &body["status"], &body["message"]),
        (400, &json!(false), &json!("Invalid webhook URL format"))
    );
    let hook_url = format!("http://{mine_addr}/webhooks/blaaiz");
    let (status, body) = blaaiz_key_call(
        &h,
        "POST",
        "/blaaiz/api/external/webhook",
        Some(json!({"payout_url": hook_url, "collection_url": hook_url})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], true);
    assert_eq!(body["data"]["payout_url"], hook_url.as_str());
    assert!(body["data"]["updated_at"].is_string());
    let (status, got) = blaaiz_key_call(&h, "GET", "/blaaiz/api/external/webhook", None).await;
    assert_eq!((status, &got["data"]), (200, &body["data"]));

    let t = h
        .form_token(
            "/blaaiz/oauth/token",
            "blaaiz",
            "customer:write file:upload payout:create webhook:replay",
        )
        .await;
    let customer = blaaiz_customer(&h, &t, "Hooked").await;
    let id_file = blaaiz_upload(&h, &t, &customer, "identity").await;
    let (status, _) = h
        .call(
            "POST",
            &format!("/blaaiz/api/external/customer/{customer}/files"),
            &t,
            Some(json!({"id_file": id_file})),
        )
        .await;
    assert_eq!(status, 200);
    // Customer events go to the collection URL when no customer_url is registered.
    mine.wait_for("VERIFIED", |_, v| {
        v["customer_id"] == customer.as_str() && v["new_status"] == "VERIFIED"
    })
    .await;
    let (status, created) = h
        .call(
            "POST",
            "/blaaiz/api/external/payout",
            &t,
            Some(json!({
                "wallet_id": BLAAIZ_NGN_WALLET, "customer_id": customer, "method": "bank_transfer",
                "from_amount": 10, "from_currency_id": "NGN", "to_currency_id": "NGN",
                "account_number": "0123456789", "bank_id": "1",
            })),
        )
        .await;
    assert_eq!(status, 200, "{created}");
    // No nulls where the schema says string: a field not given is left out, the bank named.
    let recipient = &created["transaction"]["recipient"];
    assert_eq!(recipient["bank_name"], "Access Bank");
    assert!(recipient.get("account_name").is_none(), "{recipient}");
    let txn = created["transaction"]["id"].as_str().unwrap().to_owned();
    let first = mine
        .wait_for("payout", |_, v| v["transaction_id"] == txn.as_str())
        .await;
    assert_eq!(first["transaction_status"], "SUCCESSFUL");
    let (status, body) = h
        .call(
            "POST",
            "/blaaiz/api/external/webhook-replay",
            &t,
            Some(json!({"transaction_id": txn})),
        )
        .await;
    assert_eq!(
        (status, body),
        (200, json!({"message": "Webhook replayed successfully"}))
    );
    for _ in 0..250 {
        if mine
            .all()
            .iter()
            .filter(|(_, v)| v["transaction_id"] == txn.as_str())
            .count()
            == 2
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let copies: Vec<Value> = mine
        .all()
        .into_iter()
        .filter(|(_, v)| v["transaction_id"] == txn.as_str())
        .map(|(_, v)| v)
        .collect();
    assert_eq!(copies.len(), 2, "{copies:#?}");
    assert_eq!(copies[0], copies[1], "a replay resends the same event");
    // Nothing went to the default target once URLs were registered.
    assert!(h.hooks.all().is_empty(), "{:#?}", h.hooks.all());
    assert_eq!(*mine.rejected.lock().unwrap(), 0);
    let (status, body) = h
        .call(
            "POST",
            "/blaaiz/api/external/webhook-replay",
            &t,
            Some(json!({"transaction_id": "nope"})),
        )
        .await;
    assert_eq!(
        (status, body),
        (404, json!({"message": "Transaction not found"}))
    );
    h.sandbox.shutdown().await.unwrap();
}

#[tokio::test]
async fn lumanu_quickstart_requests_are_accepted_verbatim() {
    let h = Harness::start("none").await;
    let t = h.lumanu_token().await;
    // The quickstart's request, path and body as written (plural `payables`).
    let (status, payable) = h
        .call(
            "POST",
            "/lumanu/api/rest/payables",
            &t,
            Some(json!({
                "workspace_id": LUMANU_WS,
                "payee_email": "creator@example.com",
                "amount": 100,
                "description": "My first payout via the API",
            })),
        )
        .await;
    assert_eq!(status, 200, "{payable}");
    assert_eq!(payable["amount"], 100);
    assert_eq!(payable["amount_denomination"], "us_cents");
    assert!(payable["status"].is_null());
    // The quickstart's response has no project_id; a payable without a project omits it.
    assert!(payable.get("project_id").is_none(), "{payable}");
    let (_, with_project) = h
        .call(
            "POST",
            "/lumanu/api/rest/payable",
            &t,
            Some(json!({
                "workspace_id": LUMANU_WS, "payee_email": "creator@example.com", "amount": 200,
                "description": "with project", "project_id": "d4e5f6a7-b8c9-0123-def4-567890abcdef",
            })),
        )
        .await;
    assert_eq!(
        with_project["project_id"],
        "d4e5f6a7-b8c9-0123-def4-567890abcdef"
    );
    // "Query a Payout: GET /api/rest/payouts".
    let (status, payouts) = h
        .call(
            "GET",
            &format!("/lumanu/api/rest/payouts?workspace_id={LUMANU_WS}&order_by_direction=asc"),
            &t,
            None,
        )
        .await;
    assert_eq!(status, 200, "{payouts}");
    assert_eq!(payouts["total"], 2);
    assert_eq!(payouts["data"][0]["id"], payable["id"]);

    let (status, ws) = h
        .call(
            "GET",
            &format!("/lumanu/api/rest/workspace/{LUMANU_WS}"),
            &t,
            None,
        )
        .await;
    assert_eq!(status, 200);
    assert!(ws["updated_at"].is_string(), "{ws}");

    let (status, projects) = h
        .call(
            "GET",
            &format!("/lumanu/api/rest/workspace/{LUMANU_WS}/project"),
            &t,
            None,
        )
        .await;
    assert_eq!(status, 200, "{projects}");
    assert_eq!(projects["total"], 2);
    let ids: Vec<&str> = projects["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["id"].as_str().unwrap())
        .collect();
    assert!(
        ids.contains(&"d4e5f6a7-b8c9-0123-def4-567890abcdef"),
        "{projects}"
    );
    let (status, project) = h
        .call(
            "GET",
            &format!("/lumanu/api/rest/workspace/{LUMANU_WS}/project/d4e5f6a7-b8c9-0123-def4-567890abcdef"),
            &t,
            None,
        )
        .await;
    assert_eq!(status, 200);
    assert!(project["balance"].is_null());
    assert_eq!(project["archived"], false);

    let (status, partners) = h
        .call(
            "GET",
            &format!("/lumanu/api/rest/workspace/{LUMANU_WS}/partner?search=creator"),
            &t,
            None,
        )
        .await;
    assert_eq!(status, 200, "{partners}");
    assert_eq!(partners["total"], 1);
    assert_eq!(partners["data"][0]["email"], "creator@example.com");
    let partner_id = partners["data"][0]["id"].as_str().unwrap();
    let (status, partner) = h
        .call(
            "GET",
            &format!("/lumanu/api/rest/workspace/{LUMANU_WS}/partner/{partner_id}"),
            &t,
            None,
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(partner["payables_count"], 2);
    assert_eq!(partner["emails"], json!(["creator@example.com"]));
    let (status, missing) = h
        .call(
            "GET",
            &format!("/lumanu/api/rest/workspace/{LUMANU_WS}/partner/00000000-0000-0000-0000-000000000000"),
            &t,
            None,
        )
        .await;
    assert_eq!(status, 404);
    assert_eq!(missing["error"]["code"], "not_found");
    h.sandbox.shutdown().await.unwrap();
}

#[tokio::test]
async fn lean_payment_source_created_webhook_names_the_end_user() {
    let h = Harness::start("none").await;
    let t = h.form_token("/lean/oauth2/token", "lean", "api").await;
    let (status, customer) = h
        .call(
            "POST",
            "/lean/payments/v1/customer",
            &t,
            Some(json!({"app_user_id": "user-eu"})),
        )
        .await;
    assert_eq!(status, 200, "{customer}");
    let customer_id = customer["customer_id"].as_str().unwrap().to_owned();
    let created = h
        .hooks
        .wait_for("payment_source.created", |p, v| {
            p == "lean" && v["type"] == "payment_source.created"
        })
        .await;
    assert_eq!(created["payload"]["customer_id"], customer_id.as_str());
    let end_user = created["payload"]["end_user_id"].as_str().unwrap();
    assert!(uuid_like(end_user), "{created}");
    h.sandbox.shutdown().await.unwrap();
}

fn uuid_like(s: &str) -> bool {
    s.len() == 36 && s.chars().filter(|c| *c == '-').count() == 4
}

/// Sends `body` exactly as written (bytes and headers as given; no bearer token).
async fn raw_call(
    h: &Harness,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> (u16, Value) {
    let mut req = h.http.request(method.parse().unwrap(), h.url(path));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    if let Some(b) = body {
        req = req.body(b.to_owned());
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let bytes = resp.bytes().await.unwrap();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

/// Issue 18 item 3: unknown routes answer 404 (and known routes another method 405) in each
/// provider's documented error shape, never with an empty body. Lumanu documents 404s without
/// a body and Lean documents no 404: the sandbox keeps their documented error shapes.
#[tokio::test]
async fn lumanu_and_lean_unknown_routes_answer_in_the_providers_error_shapes() {
    let h = Harness::start("none").await;
    let t = h.lumanu_token().await;
    for path in ["/lumanu/api/rest/nowhere", "/lumanu/nowhere"] {
        let (status, body) = h.call("GET", path, &t, None).await;
        assert_eq!(status, 404, "{path}");
        assert_eq!(body["error"]["code"], "not_found", "{path}: {body}");
        assert!(body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("/nowhere"));
        assert!(body["error"]["request_id"].is_string());
    }
    let (status, body) = h.call("DELETE", "/lumanu/api/rest/payable", &t, None).await;
    assert_eq!(status, 405);
    assert_eq!(body["error"]["code"], "method_not_allowed", "{body}");

    let lean = [("lean-app-token", "sandbox-lean-app-token")];
    for path in ["/lean/payments/v1/nowhere/at/all", "/lean/nowhere"] {
        let (status, body) = raw_call(&h, "GET", path, &lean, None).await;
        assert_eq!(status, 404, "{path}");
        assert_eq!(body["status"], "RESOURCE_NOT_FOUND", "{path}: {body}");
        assert!(body["message"].as_str().unwrap().contains("/nowhere"));
        assert!(body["timestamp"].is_string());
    }
    let (status, body) = raw_call(&h, "DELETE", "/lean/payments/v1/intents", &lean, None).await;
    assert_eq!(status, 405);
    assert_eq!(body["status"], "METHOD_NOT_ALLOWED", "{body}");
    h.sandbox.shutdown().await.unwrap();
}

/// Issue 18 item 8, the sandbox's side: in manual mode a payment waits in `CREATED` (no money
/// moves) until `POST /_sandbox/lean/payments/{id}/authorize`; then `payment.updated`
/// PENDING_WITH_BANK and ACCEPTED_BY_BANK follow as in automatic mode. An intent's
/// `authorize_payment` (Lean's Payouts API field) overrides the mode; a scripted delay
/// authorises on its own.
#[tokio::test]
async fn lean_manual_mode_queues_payments_until_authorised_and_authorize_payment_overrides_it() {
    let (hooks, hook_addr) = Received::start().await;
    let mut config = SandboxConfig::new("127.0.0.1:0".parse().unwrap(), Credentials::dev());
    config.webhook_base = Some(format!("http://{hook_addr}"));
    config.lean_authorization = paysaga_sandbox::LeanAuthorizationSetting {
        mode: paysaga_sandbox::LeanAuthorization::Manual,
        authorize_after: None,
    };
    let h = Harness {
        sandbox: paysaga_sandbox::spawn(config).await.unwrap(),
        hooks,
        http: Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .unwrap(),
    };
    assert_eq!(
        h.get("/_sandbox/lean/authorization").await,
        json!({"mode": "manual", "authorize_after_ms": null})
    );
    let t = h.form_token("/lean/oauth2/token", "lean", "api").await;
    let dest = paysaga_sandbox::seeds::LEAN_DEFAULT_DESTINATION_ID;
    let (_, customer) = h
        .call(
            "POST",
            "/lean/payments/v1/customer",
            &t,
            Some(json!({"app_user_id": "manual-1"})),
        )
        .await;
    let customer_id = customer["customer_id"].as_str().unwrap().to_owned();
    h.hooks
        .wait_for("beneficiary ACTIVE", |_, v| {
            v["type"] == "payment_source.beneficiary.updated" && v["payload"]["status"] == "ACTIVE"
        })
        .await;
    let intent = |description: &str, authorize: Option<bool>| {
        let mut body = json!({"amount": 10.12, "currency": "AED", "payment_destination_id": dest,
                              "customer_id": customer_id, "description": description});
        if let Some(a) = authorize {
            body["authorize_payment"] = json!(a);
        }
        body
    };
    let (status, manual) = h
        .call(
            "POST",
            "/lean/payments/v1/intents",
            &t,
            Some(intent("manual", None)),
        )
        .await;
    assert_eq!(status, 200, "{manual}");
    let manual_id = manual["payment_intent_id"].as_str().unwrap().to_owned();
    let created = h
        .hooks
        .wait_for("payment.created", |_, v| {
            v["type"] == "payment.created" && v["payload"]["intent_id"] == manual_id.as_str()
        })
        .await;
    assert_eq!(created["payload"]["status"], "CREATED");
    // authorize_payment: true is automatic even though the account is manual.
    let (_, auto) = h
        .call(
            "POST",
            "/lean/payments/v1/intents",
            &t,
            Some(intent("auto", Some(true))),
        )
        .await;
    let auto_id = auto["payment_intent_id"].as_str().unwrap().to_owned();
    poll_until(
        &h,
        &format!("/lean/payments/v1/intents/{auto_id}"),
        &t,
        |v| v["payments"][0]["status"] == "ACCEPTED_BY_BANK",
    )
    .await;
    // The manual one is still queued, and nothing of it is in the ledger.
    let queued = h
        .get(&format!("/_sandbox/lean/payments?intent_id={manual_id}"))
        .await;
    assert_eq!(queued.as_array().unwrap().len(), 1);
    assert_eq!(queued[0]["status"], "CREATED");
    assert_eq!(queued[0]["awaiting_authorization"], true);
    let payment_id = queued[0]["id"].as_str().unwrap().to_owned();
    let debited = |ledger: &[Value], id: &str| {
        ledger
            .iter()
            .filter(|e| e["kind"] == "payment" && e["reference"] == id)
            .count()
    };
    assert_eq!(debited(&h.ledger().await, &payment_id), 0);

    let authorize = |id: String| {
        h.http
            .post(h.url(&format!("/_sandbox/lean/payments/{id}/authorize")))
            .json(&json!({"authorized_by": "fc@example.com"}))
            .send()
    };
    assert_eq!(
        authorize("no-such-payment".into()).await.unwrap().status(),
        404
    );
    let r = authorize(payment_id.clone()).await.unwrap();
    assert_eq!(r.status(), 200);
    let authorised: Value = r.json().await.unwrap();
    assert_eq!(authorised["status"], "PENDING_WITH_BANK");
    assert_eq!(authorised["authorized_by"], "fc@example.com");
    assert_eq!(authorize(payment_id.clone()).await.unwrap().status(), 409);
    let updated = h
        .hooks
        .wait_for("payment.updated ACCEPTED_BY_BANK", |_, v| {
            v["type"] == "payment.updated"
                && v["payload"]["id"] == payment_id.as_str()
                && v["payload"]["status"] == "ACCEPTED_BY_BANK"
        })
        .await;
    assert_eq!(updated["payload"]["amount"].to_string(), "10.12");
    assert_eq!(debited(&h.ledger().await, &payment_id), 1);

    // A scripted Financial Controller: authorised after the delay, without the control call.
    let put = h
        .http
        .put(h.url("/_sandbox/lean/authorization"))
        .json(&json!({"mode": "manual", "authorize_after_ms": 100}))
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), 200);
    let (_, scripted) = h
        .call(
            "POST",
            "/lean/payments/v1/intents",
            &t,
            Some(intent("scripted", None)),
        )
        .await;
    let scripted_id = scripted["payment_intent_id"].as_str().unwrap().to_owned();
    poll_until(
        &h,
        &format!("/lean/payments/v1/intents/{scripted_id}"),
        &t,
        |v| v["payments"][0]["status"] == "ACCEPTED_BY_BANK",
    )
    .await;
    let p = h
        .get(&format!("/_sandbox/lean/payments?intent_id={scripted_id}"))
        .await;
    assert_eq!(
        p[0]["authorized_by"],
        "sandbox scripted Financial Controller"
    );
    let bad = h
        .http
        .put(h.url("/_sandbox/lean/authorization"))
        .body("on_demand")
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    h.assert_balances_match_ledger().await;
    h.sandbox.shutdown().await.unwrap();
}

/// Issue 18 acceptance: the seeds' example requests are accepted verbatim. Lean: the
/// multi-destination seed's curl bodies and headers as printed (its placeholders `YOUR_APP_TOKEN`,
/// `USD_DESTINATION_ID`, `CUSTOMER_ID`, `<customer_id>`, `<payment_source_id>` replaced by real
/// values; `IDENTIFIER_FOR_CUSTOMER` kept). Blaaiz: its seed names endpoints only, so the request
/// examples of Blaaiz's own OpenAPI files are sent as published (example ids replaced by the
/// objects created before). Lumanu: the quickstart's requests are sent by
/// `lumanu_quickstart_requests_are_accepted_verbatim` (and its token request by every Lumanu test).
#[tokio::test]
async fn seed_and_published_example_requests_are_accepted_verbatim() {
    let h = Harness::start("none").await;

    // --- Lean (lean-multi-destination-payments.txt) ---
    let headers = [
        ("Content-Type", "application/json"),
        ("lean-app-token", "sandbox-lean-app-token"),
    ];
    let (status, dest) = raw_call(
        &h,
        "POST",
        "/lean/payments/v1/destinations",
        &headers,
        Some(r#"{"display_name": "Acme USD Account","name": "Acme Inc.","bank_identifier": "ENBD_UAE","address": "","city": "","country": "","account_number": "","iban": ""}"#),
    )
    .await;
    assert_eq!(status, 200, "{dest}");
    let usd_destination = dest["id"].as_str().unwrap().to_owned();
    let (status, all) = raw_call(&h, "GET", "/lean/payments/v1/destinations", &headers, None).await;
    assert_eq!(status, 200);
    assert!(all
        .as_array()
        .unwrap()
        .iter()
        .any(|d| d["id"] == usd_destination.as_str()));
    let (status, customer) = raw_call(
        &h,
        "POST",
        "/lean/payments/v1/customer",
        &headers,
        Some(r#"{"app_user_id": "IDENTIFIER_FOR_CUSTOMER"}"#),
    )
    .await;
    assert_eq!(status, 200, "{customer}");
    let customer_id = customer["customer_id"].as_str().unwrap().to_owned();
    let active = h
        .hooks
        .wait_for("beneficiary ACTIVE for the USD destination", |_, v| {
            v["type"] == "payment_source.beneficiary.updated"
                && v["payload"]["payment_destination_id"] == usd_destination.as_str()
                && v["payload"]["status"] == "ACTIVE"
        })
        .await;
    let source_id = active["payload"]["payment_source_id"].as_str().unwrap();
    let (status, source) = raw_call(
        &h,
        "GET",
        &format!("/lean/customers/v1/{customer_id}/payment_sources/{source_id}"),
        &headers,
        None,
    )
    .await;
    assert_eq!(status, 200, "{source}");
    let intent_body = r#"{"amount": 1000,"currency": "USD","payment_destination_id": "USD_DESTINATION_ID","customer_id": "CUSTOMER_ID"}"#
        .replace("USD_DESTINATION_ID", &usd_destination)
        .replace("CUSTOMER_ID", &customer_id);
    let (status, intent) = raw_call(
        &h,
        "POST",
        "/lean/payments/v1/intents",
        &headers,
        Some(&intent_body),
    )
    .await;
    assert_eq!(status, 200, "{intent}");
    let intent_id = intent["payment_intent_id"].as_str().unwrap().to_owned();
    let paid = h
        .hooks
        .wait_for("payment.updated of the seed's intent", |_, v| {
            v["type"] == "payment.updated" && v["payload"]["intent_id"] == intent_id.as_str()
        })
        .await;
    assert_eq!(paid["payload"]["status"], "ACCEPTED_BY_BANK");
    assert_eq!(paid["payload"]["amount"].as_f64(), Some(1000.0));

    // --- Blaaiz (the request examples of its OpenAPI files) ---
    let example = |file: &str, path: &str| -> Value {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../paysaga-providers/tests/openapi/blaaiz");
        let doc: Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join(file)).unwrap()).unwrap();
        doc["paths"][path]["post"]["requestBody"]["content"]["application/json"].clone()
    };
    let customer_examples = example("customer-create.json", "/api/external/customer");
    let mut customers = Vec::new();
    for name in ["individual", "business"] {
        let body = customer_examples["examples"][name]["value"].clone();
        let (status, created) =
            blaaiz_key_call(&h, "POST", "/blaaiz/api/external/customer", Some(body)).await;
        assert_eq!(status, 201, "{name}: {created}");
        customers.push(created["data"]["id"].as_str().unwrap().to_owned());
    }
    let customer = customers[0].clone();
    let file_example =
        example("file-create.json", "/api/external/file/get-presigned-url")["example"].clone();
    let mut files = std::collections::HashMap::new();
    for category in ["identity", "proof_of_address", "liveness_check"] {
        let mut body = file_example.clone();
        body["customer_id"] = json!(customer);
        body["file_category"] = json!(category); // the published example is "identity"
        let (status, up) = blaaiz_key_call(
            &h,
            "POST",
            "/blaaiz/api/external/file/get-presigned-url",
            Some(body),
        )
        .await;
        assert_eq!(status, 200, "{up}");
        let mut req = h
            .http
            .put(up["url"].as_str().unwrap())
            .body(b"\xff\xd8fake-jpeg".to_vec());
        for (k, v) in up["headers"].as_object().unwrap() {
            req = req.header(k, v.as_str().unwrap());
        }
        assert_eq!(req.send().await.unwrap().status(), 200);
        files.insert(category, up["file_id"].as_str().unwrap().to_owned());
    }
    let mut attach = example(
        "customer-upload-files.json",
        "/api/external/customer/{id}/files",
    )["example"]
        .clone();
    attach["id_file"] = json!(files["identity"]);
    attach["proof_of_address_file"] = json!(files["proof_of_address"]);
    attach["liveness_check_file"] = json!(files["liveness_check"]);
    let (status, attached) = blaaiz_key_call(
        &h,
        "POST",
        &format!("/blaaiz/api/external/customer/{customer}/files"),
        Some(attach),
    )
    .await;
    assert_eq!(status, 200, "{attached}");
    let mut verified = false;
    for _ in 0..100 {
        let (_, c) = blaaiz_key_call(
            &h,
            "GET",
            &format!("/blaaiz/api/external/customer/{customer}"),
            None,
        )
        .await;
        if c["data"]["verification_status"] == "VERIFIED" {
            verified = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(verified, "the example customer is verified after its files");
    let mut payout = example("payout-create.json", "/api/external/payout")["example"].clone();
    assert_eq!(
        payout["wallet_id"], BLAAIZ_NGN_WALLET,
        "the published wallet id is seeded"
    );
    payout["customer_id"] = json!(customer);
    let (status, paid) =
        blaaiz_key_call(&h, "POST", "/blaaiz/api/external/payout", Some(payout)).await;
    assert!((200..300).contains(&status), "{status} {paid}");
    let transaction = paid["transaction"]["id"].as_str().unwrap().to_owned();
    let list = example("transaction-list.json", "/api/external/transaction")["example"].clone();
    let (status, listed) =
        blaaiz_key_call(&h, "POST", "/blaaiz/api/external/transaction", Some(list)).await;
    assert_eq!(status, 200, "{listed}");
    let mut settled = false;
    for _ in 0..100 {
        let (_, t) = blaaiz_key_call(
            &h,
            "GET",
            &format!("/blaaiz/api/external/transaction/{transaction}"),
            None,
        )
        .await;
        if t["data"]["status"] == "SUCCESSFUL" || t["transaction"]["status"] == "SUCCESSFUL" {
            settled = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(settled, "the example payout settles");
    let mut replay =
        example("webhook-replay.json", "/api/external/webhook-replay")["example"].clone();
    let (status, unknown) = blaaiz_key_call(
        &h,
        "POST",
        "/blaaiz/api/external/webhook-replay",
        Some(replay.clone()),
    )
    .await;
    assert_eq!(
        status, 404,
        "the published example's transaction does not exist here: {unknown}"
    );
    replay["transaction_id"] = json!(transaction);
    let (status, replayed) = blaaiz_key_call(
        &h,
        "POST",
        "/blaaiz/api/external/webhook-replay",
        Some(replay),
    )
    .await;
    assert_eq!(status, 200, "{replayed}");
    // Last: registering the published (https://yourapp.com) URLs would send later events there.
    let register = example("webhook-register.json", "/api/external/webhook")["example"].clone();
    let (status, registered) =
        blaaiz_key_call(&h, "POST", "/blaaiz/api/external/webhook", Some(register)).await;
    assert!((200..300).contains(&status), "{status} {registered}");
    h.sandbox.shutdown().await.unwrap();
}
