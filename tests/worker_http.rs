//! The worker's HTTP surface, on a real `paysaga worker` process: webhook ingestion (inbox
//! first, signature schemes), `/metrics` counters (provider calls included), and `/readyz`
//! following the database.
#![allow(clippy::unwrap_used)]

mod support;

use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use paysaga_providers::webhook::sign;
use paysaga_providers::Provider;
use secrecy::SecretString;
use serde_json::json;
use support::harness;
use tokio::net::{TcpListener, TcpStream};

/// (event_id, correlation_key, parse_error, raw_body) of an inbox row.
type InboxRow = (String, Option<String>, Option<String>, Option<Vec<u8>>);

const BIN: &str = env!("CARGO_BIN_EXE_paysaga");
const LUMANU_SECRET: &str = "whsec-lumanu-test-3f9a";

/// A TCP proxy to PostgreSQL that the test can cut (database "down") and restore.
struct Proxy {
    port: u16,
    up: Arc<AtomicBool>,
}

async fn proxy_to(target: String) -> Proxy {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let up = Arc::new(AtomicBool::new(true));
    let flag = up.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut inbound, _)) = listener.accept().await else {
                continue;
            };
            if !flag.load(Ordering::SeqCst) {
                continue; // refused: dropped at once
            }
            let target = target.clone();
            let flag = flag.clone();
            tokio::spawn(async move {
                let Ok(mut outbound) = TcpStream::connect(&target).await else {
                    return;
                };
                tokio::select! {
                    _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                    _ = async { while flag.load(Ordering::SeqCst) { tokio::time::sleep(Duration::from_millis(20)).await } } => {}
                }
            });
        }
    });
    Proxy { port, up }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A worker with Lumanu configured at `lumanu` (base URL without a path).
fn spawn_worker(db_url: &str, http_port: u16, lumanu: &str) -> Child {
    Command::new(BIN)
        .args([
            "worker",
            "--http-addr",
            &format!("127.0.0.1:{http_port}"),
            "--lease-ttl",
            "2s",
            "--idle-poll",
            "300ms",
        ])
        .env("DATABASE_URL", db_url)
        .env("RUST_LOG", "info")
        .env(
            "PAYSAGA_LUMANU_BASE_URL",
            format!("{lumanu}/lumanu/api/rest"),
        )
        .env("PAYSAGA_LUMANU_AUTH_URL", format!("{lumanu}/lumanu"))
        .env("PAYSAGA_LUMANU_CLIENT_ID", "client")
        .env("PAYSAGA_LUMANU_CLIENT_SECRET", "client-secret-never-logged")
        .env("PAYSAGA_LUMANU_WEBHOOK_SECRET", LUMANU_SECRET)
        .stdout(Stdio::null())
        .stderr(
            std::fs::File::create(
                std::env::temp_dir().join(format!("paysaga-worker-http-{http_port}.log")),
            )
            .unwrap(),
        )
        .spawn()
        .unwrap()
}

async fn get(url: &str) -> (u16, String) {
    match reqwest::get(url).await {
        Ok(r) => (r.status().as_u16(), r.text().await.unwrap_or_default()),
        Err(_) => (0, String::new()),
    }
}

async fn wait_for(url: &str, status: u16, within: Duration) -> String {
    let deadline = Instant::now() + within;
    loop {
        let (s, body) = get(url).await;
        if s == status {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "{url} answered {s} {body:?}, expected {status}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn metric(text: &str, line_prefix: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(line_prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

// Multi-threaded: the in-test proxy must keep forwarding while the test awaits the worker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_metrics_and_readiness_on_a_running_worker() {
    let h = harness().await;
    let pg_port =
        h.db.url()
            .split(':')
            .nth(2)
            .and_then(|r| r.split('/').next())
            .unwrap()
            .to_string();
    let proxy = proxy_to(format!("127.0.0.1:{pg_port}")).await;
    let db_name = h.db.name().to_string();
    let via_proxy = format!("postgres://postgres@127.0.0.1:{}/{db_name}", proxy.port);
    let port = free_port();
    let mut worker = spawn_worker(&via_proxy, port, "http://127.0.0.1:9");
    let base = format!("http://127.0.0.1:{port}");
    wait_for(&format!("{base}/readyz"), 200, Duration::from_secs(20)).await;
    assert_eq!(get(&format!("{base}/healthz")).await.0, 200);

    let client = reqwest::Client::new();
    let secret = SecretString::from(LUMANU_SECRET.to_string());
    let post = |body: Vec<u8>, headers: Vec<(String, String)>, provider: &'static str| {
        let client = client.clone();
        let url = format!("{base}/webhooks/{provider}");
        async move {
            let mut req = client.post(url).body(body);
            for (k, v) in headers {
                req = req.header(k, v);
            }
            req.send().await.unwrap().status().as_u16()
        }
    };
    let signed = |body: &[u8], secret: &SecretString| -> Vec<(String, String)> {
        sign(Provider::Lumanu, secret, body, chrono::Utc::now())
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect()
    };
    let body = serde_json::to_vec(
        &json!({"id": "evt_1", "event_type": "payable.paid", "data": {"id": "pay_42"}}),
    )
    .unwrap();

    assert_eq!(
        post(body.clone(), signed(&body, &secret), "lumanu").await,
        200,
        "valid"
    );
    assert_eq!(
        post(body.clone(), signed(&body, &secret), "lumanu").await,
        200,
        "duplicate"
    );
    let mut tampered = body.clone();
    tampered[10] ^= 1;
    assert_eq!(
        post(tampered, signed(&body, &secret), "lumanu").await,
        401,
        "tampered body"
    );
    let wrong = SecretString::from("not-the-secret".to_string());
    assert_eq!(
        post(body.clone(), signed(&body, &wrong), "lumanu").await,
        401,
        "wrong secret"
    );
    assert_eq!(
        post(body.clone(), vec![], "lumanu").await,
        401,
        "missing header"
    );
    let garbage = b"this is not json".to_vec();
    assert_eq!(
        post(garbage.clone(), signed(&garbage, &secret), "lumanu").await,
        400,
        "signed but unparseable"
    );
    assert_eq!(
        post(body.clone(), vec![], "acme").await,
        404,
        "unknown provider"
    );
    let huge = vec![b'x'; 300 * 1024];
    assert_eq!(
        post(huge.clone(), signed(&huge, &secret), "lumanu").await,
        413,
        "oversized"
    );

    // The inbox holds exactly the verified events: one parsed, one unparseable (raw body kept).
    let rows: Vec<InboxRow> = sqlx::query_as(
        "SELECT event_id, correlation_key, parse_error, raw_body FROM paysaga_events ORDER BY id",
    )
    .fetch_all(&h.pool)
    .await
    .unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(
        (rows[0].0.as_str(), rows[0].1.as_deref()),
        ("evt_1", Some("payable:pay_42"))
    );
    assert!(rows[1].2.is_some());
    assert_eq!(rows[1].3.as_deref(), Some(garbage.as_slice()));

    // Counters move.
    for _ in 0..3 {
        h.engine
            .start("noop", json!({"delay_ms": 0}), None)
            .await
            .unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    let text = loop {
        let (_, text) = get(&format!("{base}/metrics")).await;
        if metric(
            &text,
            r#"paysaga_sagas_finished_total{workflow="noop",status="completed"}"#,
        ) >= 3.0
        {
            break text;
        }
        assert!(Instant::now() < deadline, "sagas not counted:\n{text}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(
        metric(
            &text,
            r#"paysaga_inbox_events_total{provider="lumanu",result="stored"}"#
        ),
        1.0
    );
    assert_eq!(
        metric(
            &text,
            r#"paysaga_inbox_events_total{provider="lumanu",result="duplicate"}"#
        ),
        1.0
    );
    assert_eq!(
        metric(
            &text,
            r#"paysaga_inbox_events_total{provider="lumanu",result="rejected"}"#
        ),
        3.0
    );
    assert_eq!(
        metric(
            &text,
            r#"paysaga_inbox_events_total{provider="lumanu",result="unparseable"}"#
        ),
        1.0
    );
    assert!(
        metric(
            &text,
            r#"paysaga_step_duration_seconds_count{workflow="noop",kind="noop.sleep",outcome="done"}"#
        ) >= 15.0
    );
    // Its sagas came by a claim or, started while it had a free slot, held by it at their
    // insert (no claim).
    assert!(
        metric(&text, "paysaga_claim_batch_size_count")
            + metric(&text, "paysaga_sagas_assigned_total")
            >= 1.0
    );
    assert!(!text.contains("client-secret-never-logged") && !text.contains(LUMANU_SECRET));

    // Database down: not ready, webhooks get 503 (not stored, so the provider retries).
    proxy.up.store(false, Ordering::SeqCst);
    wait_for(&format!("{base}/readyz"), 503, Duration::from_secs(30)).await;
    // /readyz failing on one connection does not mean the proxy closed every other one yet
    // (each notices the flag within 20 ms): a webhook stored through one still open is
    // rightly answered 200. Let them all close first.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let body2 = serde_json::to_vec(
        &json!({"id": "evt_2", "event_type": "payable.paid", "data": {"id": "pay_43"}}),
    )
    .unwrap();
    assert_eq!(
        post(body2.clone(), signed(&body2, &secret), "lumanu").await,
        503
    );
    assert!(
        worker.try_wait().unwrap().is_none(),
        "the worker does not crash while the database is away"
    );
    // Back: ready again, and work resumes.
    proxy.up.store(true, Ordering::SeqCst);
    wait_for(&format!("{base}/readyz"), 200, Duration::from_secs(30)).await;
    assert_eq!(
        post(body2.clone(), signed(&body2, &secret), "lumanu").await,
        200
    );
    let saga = h
        .engine
        .start("noop", json!({"delay_ms": 0}), None)
        .await
        .unwrap()
        .saga_id;
    h.wait_status(saga, "completed", Duration::from_secs(30))
        .await;

    Command::new("kill")
        .args(["-TERM", &worker.id().to_string()])
        .status()
        .unwrap();
    let status = tokio::task::spawn_blocking(move || worker.wait())
        .await
        .unwrap()
        .unwrap();
    let log = std::env::temp_dir().join(format!("paysaga-worker-http-{port}.log"));
    assert!(
        status.success(),
        "worker exited with {status}; log:\n{}",
        std::fs::read_to_string(log).unwrap_or_default()
    );
}

/// A Lumanu that hands out tokens and answers every API call with 503.
async fn busy_lumanu() -> String {
    use axum::http::{StatusCode, Uri};
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let app = axum::Router::new().fallback(|uri: Uri| async move {
        if uri.path() == "/lumanu/oauth/token" {
            (
                StatusCode::OK,
                axum::Json(json!({"access_token": "tok-secret-never-exposed", "expires_in": 3600})),
            )
        } else {
            (
                StatusCode::SERVICE_UNAVAILABLE,
                axum::Json(json!({"error": {"message": "maintenance"}})),
            )
        }
    });
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    base
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provider_call_latency_and_errors_on_a_running_worker() {
    let h = harness().await;
    let lumanu = busy_lumanu().await;
    // An engine that knows the provider kinds (for validation) to submit and start.
    let mut registry = paysaga_runtime::Registry::new();
    for kind in paysaga_providers::steps::validation_kinds() {
        registry.register_arc(kind);
    }
    let store = paysaga_store::PgStore::connect(h.db.url()).await.unwrap();
    let engine = paysaga_runtime::Engine::new(Arc::new(store), registry);
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");
    let toml = std::fs::read_to_string(format!("{root}/workflows/lumanu_prefund.toml")).unwrap();
    engine
        .submit_definition(&paysaga_core::Definition::from_toml(&toml).unwrap())
        .await
        .unwrap();
    let input =
        std::fs::read_to_string(format!("{root}/workflows/examples/lumanu_prefund.json")).unwrap();
    engine
        .start(
            "lumanu_prefund",
            serde_json::from_str(&input).unwrap(),
            Some("metrics-1"),
        )
        .await
        .unwrap();

    let port = free_port();
    let mut worker = spawn_worker(h.db.url(), port, &lumanu);
    let base = format!("http://127.0.0.1:{port}");
    wait_for(&format!("{base}/readyz"), 200, Duration::from_secs(20)).await;
    // fund_invoice: a token, then the look-up for an earlier attempt's invoice (`GET` of the
    // wallet's transactions) answered 503 (retried later by the saga).
    let errors = r#"paysaga_provider_call_errors_total{provider="lumanu",endpoint="list_wallet_transactions",class="transient",status="503"}"#;
    let deadline = Instant::now() + Duration::from_secs(20);
    let text = loop {
        let (_, text) = get(&format!("{base}/metrics")).await;
        if metric(&text, errors) >= 1.0 {
            break text;
        }
        assert!(
            Instant::now() < deadline,
            "provider call not counted:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(text.contains("# TYPE paysaga_provider_call_duration_seconds histogram"));
    // prometheus-client writes `le` first.
    assert_eq!(
        metric(
            &text,
            r#"paysaga_provider_call_duration_seconds_bucket{le="+Inf",provider="lumanu",endpoint="token",outcome="ok"}"#
        ),
        1.0,
        "{text}"
    );
    assert!(
        metric(
            &text,
            r#"paysaga_provider_call_duration_seconds_bucket{le="+Inf",provider="lumanu",endpoint="list_wallet_transactions",outcome="transient"}"#
        ) >= 1.0,
        "{text}"
    );
    assert!(
        metric(
            &text,
            r#"paysaga_provider_call_duration_seconds_count{provider="lumanu",endpoint="list_wallet_transactions",outcome="transient"}"#
        ) >= 1.0
    );
    assert!(!text.contains(r#"endpoint="token",class"#), "{text}");
    for secret in [
        "tok-secret-never-exposed",
        "client-secret-never-logged",
        LUMANU_SECRET,
        "127.0.0.1",
    ] {
        assert!(!text.contains(secret), "{secret} in /metrics");
    }

    Command::new("kill")
        .args(["-TERM", &worker.id().to_string()])
        .status()
        .unwrap();
    let status = tokio::task::spawn_blocking(move || worker.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "worker exited with {status}");
}
