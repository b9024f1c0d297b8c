//! Hostile input on `POST /webhooks/{provider}`, against a real HTTP server: oversized bodies,
//! wrong content types, invalid UTF-8, deeply nested JSON, NUL characters, replayed or absurd
//! Blaaiz timestamps, missing signature headers, and slow-loris clients (request head or body a
//! byte at a time, or nothing at all).
//!
//! Every case gets a clear answer (or, for a head that never completes, a closed connection),
//! other clients are served meanwhile, nothing crashes, and afterwards the server still stores
//! a valid signed webhook of each provider. The inbox then holds exactly the authentic events:
//! nothing unsigned, and every signed-but-unusable body kept raw for operators.
//!
//! Two servers: `paysaga_runtime::http::serve` in process with short timeouts (fast), and a
//! real `paysaga worker` process with its default limits.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use paysaga_providers::endpoint::ProviderWebhook;
use paysaga_providers::webhook;
use paysaga_providers::Provider;
use paysaga_runtime::http::{ServeConfig, WebhookVerifier};
use secrecy::SecretString;
use serde_json::json;
use sqlx::PgPool;
use support::processes::{free_port, log_dir, WorkerProcess};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The webhook secrets of `support::processes::provider_env`.
fn secret(p: Provider) -> SecretString {
    SecretString::from(format!("sandbox-{p}-webhook-secret"))
}

/// The signature headers of `body` as `provider` would send them at `at`.
fn signed_at(p: Provider, body: &[u8], at: DateTime<Utc>) -> Vec<(String, String)> {
    webhook::sign(p, &secret(p), body, at)
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
}

fn signed(p: Provider, body: &[u8]) -> Vec<(String, String)> {
    signed_at(p, body, Utc::now())
}

/// A valid event body of `provider` with event id `id`.
fn valid_body(p: Provider, id: &str) -> Vec<u8> {
    let v = match p {
        Provider::Lumanu => {
            json!({"id": id, "event_type": "payable.paid", "data": {"id": format!("pay_{id}")}})
        }
        Provider::Blaaiz => {
            json!({"event_type": "customer.status_changed", "customer_id": format!("cus_{id}"),
            "new_status": "VERIFIED", "event_id": id, "type": "customer"})
        }
        Provider::Lean => json!({"type": "payment.updated", "event_id": id,
            "payload": {"id": "pm1", "intent_id": format!("in_{id}"), "status": "ACCEPTED_BY_BANK"}}),
    };
    serde_json::to_vec(&v).unwrap()
}

/// What the server did with one raw request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Answer {
    /// An HTTP status.
    Status(u16),
    /// The connection was closed (or reset) without an answer.
    Closed,
}

/// Reads the status line of the answer on `stream` (or notices it closing), within `within`.
async fn read_answer(stream: &mut (impl AsyncReadExt + Unpin), within: Duration) -> Answer {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let read = tokio::time::timeout(within, async {
        loop {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return None,
                Ok(n) => {
                    buf.extend_from_slice(&chunk[..n]);
                    if let Some(end) = buf.windows(2).position(|w| w == b"\r\n") {
                        return Some(String::from_utf8_lossy(&buf[..end]).to_string());
                    }
                }
            }
        }
    })
    .await
    .expect("the server neither answered nor closed the connection in time");
    match read {
        None => Answer::Closed,
        Some(line) => Answer::Status(
            line.split(' ')
                .nth(1)
                .and_then(|s| s.parse().ok())
                .unwrap_or_else(|| panic!("bad status line {line:?}")),
        ),
    }
}

/// Sends `head` (without the final blank line) plus `body` over a fresh connection.
async fn raw(addr: SocketAddr, head: &str, body: &[u8]) -> Answer {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let mut req = format!("{head}\r\nHost: test\r\nConnection: close\r\n\r\n").into_bytes();
    req.extend_from_slice(body);
    // The server may answer (413) and close before reading everything: ignore write errors.
    let _ = s.write_all(&req).await;
    read_answer(&mut s, Duration::from_secs(30)).await
}

/// A POST of `body` with the given headers (Content-Length set from the body).
async fn post(addr: SocketAddr, path: &str, headers: &[(String, String)], body: &[u8]) -> Answer {
    let mut head = format!("POST {path} HTTP/1.1\r\nContent-Length: {}", body.len());
    for (k, v) in headers {
        head.push_str(&format!("\r\n{k}: {v}"));
    }
    raw(addr, &head, body).await
}

async fn post_json(
    addr: SocketAddr,
    p: Provider,
    headers: &[(String, String)],
    body: &[u8],
) -> Answer {
    let mut h = headers.to_vec();
    h.push(("Content-Type".into(), "application/json".into()));
    post(addr, &format!("/webhooks/{p}"), &h, body).await
}

/// A signed, valid webhook is stored: 200.
async fn assert_valid_webhooks_stored(addr: SocketAddr, suffix: &str) {
    for p in Provider::ALL {
        let body = valid_body(p, &format!("valid-{p}-{suffix}"));
        assert_eq!(
            post_json(addr, p, &signed(p, &body), &body).await,
            Answer::Status(200),
            "{p}: a valid signed webhook is accepted"
        );
    }
}

/// One inbox row: provider, event_id, parse_error, raw_body.
type Row = (String, String, Option<String>, Option<Vec<u8>>);

async fn inbox(pool: &PgPool) -> Vec<Row> {
    sqlx::query_as(
        "SELECT provider, event_id, parse_error, raw_body FROM paysaga_events ORDER BY id",
    )
    .fetch_all(pool)
    .await
    .unwrap()
}

/// Every hostile request that completes quickly; returns the signed-but-unusable bodies the
/// inbox must now hold (provider, raw body).
async fn hostile_requests(addr: SocketAddr) -> Vec<(Provider, Vec<u8>)> {
    let lumanu = Provider::Lumanu;
    let body = valid_body(lumanu, "evt-abuse");
    let mut kept = Vec::new();

    // Oversized, announced by Content-Length, and chunked without a length: 413.
    let mut huge = b"{\"id\":\"big\",\"event_type\":\"payable.paid\",\"pad\":\"".to_vec();
    huge.extend(std::iter::repeat_n(b'x', 300 * 1024));
    huge.extend_from_slice(b"\"}");
    assert_eq!(
        post_json(addr, lumanu, &signed(lumanu, &huge), &huge).await,
        Answer::Status(413),
        "oversized body with Content-Length"
    );
    let mut chunked = Vec::new();
    for piece in huge.chunks(16 * 1024) {
        chunked.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
        chunked.extend_from_slice(piece);
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    let mut head =
        "POST /webhooks/lumanu HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Type: application/json"
            .to_string();
    for (k, v) in signed(lumanu, &huge) {
        head.push_str(&format!("\r\n{k}: {v}"));
    }
    assert_eq!(
        raw(addr, &head, &chunked).await,
        Answer::Status(413),
        "oversized chunked body"
    );
    // A Content-Length far beyond the limit is refused without waiting for the body.
    let started = Instant::now();
    assert_eq!(
        raw(
            addr,
            "POST /webhooks/lumanu HTTP/1.1\r\nContent-Length: 10000000000",
            b"{}"
        )
        .await,
        Answer::Status(413),
        "absurd Content-Length"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "413 comes at once"
    );
    // Headers beyond hyper's limit: 431 (or the connection is closed).
    let big_header = format!(
        "POST /webhooks/lumanu HTTP/1.1\r\nContent-Length: 2\r\nX-Pad: {}",
        "a".repeat(512 * 1024)
    );
    let a = raw(addr, &big_header, b"{}").await;
    assert!(
        matches!(a, Answer::Status(431) | Answer::Closed),
        "oversized request head: {a:?}"
    );

    // Missing signature headers, for every provider: 401, nothing stored.
    for p in Provider::ALL {
        let b = valid_body(p, "unsigned");
        assert_eq!(
            post_json(addr, p, &[], &b).await,
            Answer::Status(401),
            "{p}: no signature"
        );
        let empty: Vec<(String, String)> = signed(p, &b)
            .into_iter()
            .map(|(k, _)| (k, String::new()))
            .collect();
        assert_eq!(
            post_json(addr, p, &empty, &b).await,
            Answer::Status(401),
            "{p}: empty signature"
        );
    }
    let b = valid_body(Provider::Blaaiz, "no-timestamp");
    let only_sig: Vec<_> = signed(Provider::Blaaiz, &b)
        .into_iter()
        .filter(|(k, _)| k != "x-blaaiz-timestamp")
        .collect();
    assert_eq!(
        post_json(addr, Provider::Blaaiz, &only_sig, &b).await,
        Answer::Status(401),
        "blaaiz: signature without its timestamp"
    );
    // A signature header that is not even text.
    let a = post(
        addr,
        "/webhooks/lumanu",
        &[("X-Signature".into(), "\u{00ff}\u{00fe}".into())],
        &body,
    )
    .await;
    assert_eq!(a, Answer::Status(401), "non-ASCII signature header");

    // Blaaiz replays: correctly signed, timestamp outside the 5-minute window either way, or
    // absurd (i64 extremes, not a number): 401, nothing stored.
    let blaaiz = Provider::Blaaiz;
    let replayed = valid_body(blaaiz, "evt-replayed");
    for at in [
        Utc::now() - chrono::Duration::seconds(301),
        Utc::now() + chrono::Duration::seconds(400),
    ] {
        assert_eq!(
            post_json(addr, blaaiz, &signed_at(blaaiz, &replayed, at), &replayed).await,
            Answer::Status(401),
            "blaaiz timestamp {at}"
        );
    }
    for ts in [
        i64::MIN.to_string(),
        i64::MAX.to_string(),
        "-1".into(),
        "99999999999999999999999".into(),
        "1e9".into(),
    ] {
        // Signed over the absurd timestamp with the real secret: only the window refuses it.
        let mut msg = format!("{ts}.").into_bytes();
        msg.extend_from_slice(&replayed);
        use hmac::Mac;
        let mut mac =
            hmac::Hmac::<sha2::Sha256>::new_from_slice(b"sandbox-blaaiz-webhook-secret").unwrap();
        mac.update(&msg);
        let sig = hex::encode(mac.finalize().into_bytes());
        let headers = vec![
            ("x-blaaiz-timestamp".to_string(), ts.clone()),
            ("x-blaaiz-signature".to_string(), sig),
        ];
        assert_eq!(
            post_json(addr, blaaiz, &headers, &replayed).await,
            Answer::Status(401),
            "blaaiz timestamp {ts}"
        );
    }

    // Wrong content types. The signature covers the bytes, not the Content-Type header, so
    // the header neither authenticates nor disqualifies a request: unsigned is 401 whatever
    // it claims; a signed body is judged on its bytes (a provider changing its header must
    // not lose payouts).
    for ct in [
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
        "application/json; charset=latin1",
        "\u{1}",
    ] {
        let h = vec![("Content-Type".to_string(), ct.to_string())];
        let a = post(addr, "/webhooks/lumanu", &h, &body).await;
        assert!(
            matches!(a, Answer::Status(401) | Answer::Status(400)),
            "unsigned with content type {ct:?}: {a:?}"
        );
    }
    let form = b"id=evt_form&event_type=payable.paid".to_vec();
    let mut h = signed(lumanu, &form);
    h.push((
        "Content-Type".into(),
        "application/x-www-form-urlencoded".into(),
    ));
    assert_eq!(
        post(addr, "/webhooks/lumanu", &h, &form).await,
        Answer::Status(400),
        "signed form body"
    );
    kept.push((lumanu, form));
    let text_ct = valid_body(lumanu, "evt-text-plain");
    let mut h = signed(lumanu, &text_ct);
    h.push(("Content-Type".into(), "text/plain".into()));
    assert_eq!(
        post(addr, "/webhooks/lumanu", &h, &text_ct).await,
        Answer::Status(200),
        "signed JSON under another content type is judged on its bytes"
    );

    // Invalid UTF-8: unsigned 401; signed 400 with the raw bytes kept.
    let mut bad_utf8 = br#"{"id":"evt_utf8","event_type":"payable.paid","data":{"id":""#.to_vec();
    bad_utf8.extend_from_slice(&[0xff, 0xfe, 0xc3, 0x28, 0xed, 0xa0, 0x80]);
    bad_utf8.extend_from_slice(br#""}}"#);
    assert_eq!(
        post_json(addr, lumanu, &[], &bad_utf8).await,
        Answer::Status(401)
    );
    assert_eq!(
        post_json(addr, lumanu, &signed(lumanu, &bad_utf8), &bad_utf8).await,
        Answer::Status(400),
        "signed invalid UTF-8"
    );
    kept.push((lumanu, bad_utf8));

    // Deeply nested JSON (100k levels): unsigned 401 before any parsing; signed 400 (parser
    // depth limit, no stack overflow), kept raw. For every provider.
    for p in Provider::ALL {
        let deep = [b"[".repeat(100_000), b"]".repeat(100_000)].concat();
        assert_eq!(post_json(addr, p, &[], &deep).await, Answer::Status(401));
        assert_eq!(
            post_json(addr, p, &signed(p, &deep), &deep).await,
            Answer::Status(400),
            "{p}: deep array"
        );
        kept.push((p, deep));
        let mut deep_inside = br#"{"id":"evt_deep","event_id":"evt_deep","event_type":"payable.paid","type":"payment.updated","data":"#.to_vec();
        deep_inside.extend(b"{\"a\":".repeat(40_000));
        deep_inside.extend(b"}".repeat(40_001));
        assert_eq!(
            post_json(addr, p, &signed(p, &deep_inside), &deep_inside).await,
            Answer::Status(400),
            "{p}: deep object inside an event"
        );
        kept.push((p, deep_inside));
    }

    // U+0000 (valid JSON, which PostgreSQL cannot store in jsonb or text): signed, it is kept
    // raw as unparseable (400), not refused with 503 forever.
    for nul in [
        br#"{"id":"evt_nul","event_type":"payable.paid","data":{"id":"pay\u0000"}}"#.to_vec(),
        br#"{"id":"evt\u0000nul","event_type":"payable.paid","data":{"id":"p"}}"#.to_vec(),
        br#"{"id":"evt_nul_key","event_type":"payable.paid","data":{"x\u0000":1}}"#.to_vec(),
    ] {
        assert_eq!(
            post_json(addr, lumanu, &signed(lumanu, &nul), &nul).await,
            Answer::Status(400),
            "signed body with U+0000: {}",
            String::from_utf8_lossy(&nul)
        );
        kept.push((lumanu, nul));
    }

    // Not JSON, empty, wrong method, unknown provider, odd paths.
    assert_eq!(
        post_json(addr, lumanu, &signed(lumanu, b""), b"").await,
        Answer::Status(400),
        "signed empty body"
    );
    kept.push((lumanu, Vec::new()));
    assert_eq!(
        raw(addr, "GET /webhooks/lumanu HTTP/1.1", b"").await,
        Answer::Status(405)
    );
    assert_eq!(
        post_json(addr, lumanu, &[], &body).await,
        Answer::Status(401)
    );
    assert_eq!(
        post(addr, "/webhooks/acme", &[], &body).await,
        Answer::Status(404)
    );
    assert_eq!(
        post(addr, "/webhooks/..%2flumanu", &[], &body).await,
        Answer::Status(404)
    );
    assert_eq!(
        post(addr, "/webhooks/lumanu/extra", &[], &body).await,
        Answer::Status(404)
    );
    let a = raw(
        addr,
        "POST /webhooks/lumanu HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 7",
        b"{}",
    )
    .await;
    assert!(
        matches!(a, Answer::Status(400) | Answer::Closed),
        "conflicting Content-Length: {a:?}"
    );
    let a = raw(addr, "BLAH\u{1} / HTTP/1.1", b"").await;
    assert!(
        matches!(a, Answer::Status(400) | Answer::Closed),
        "garbage request line: {a:?}"
    );

    // A replay of a stored event inside the window is acknowledged as a duplicate.
    let dup = valid_body(blaaiz, "evt-dup");
    let h = signed(blaaiz, &dup);
    assert_eq!(post_json(addr, blaaiz, &h, &dup).await, Answer::Status(200));
    assert_eq!(post_json(addr, blaaiz, &h, &dup).await, Answer::Status(200));
    kept
}

/// Slow clients, all at once, while normal clients are served: a request head sent a byte at
/// a time and a connection that sends nothing are closed after the header timeout; a body
/// sent a byte at a time gets 408 after the request timeout.
async fn slow_loris(addr: SocketAddr, limits: &ServeConfig) {
    let margin = Duration::from_secs(5);
    let drip = |prefix: Vec<u8>, rest: Vec<u8>| async move {
        let started = Instant::now();
        let s = TcpStream::connect(addr).await.unwrap();
        let (mut rd, mut wr) = s.into_split();
        let writer = tokio::spawn(async move {
            if wr.write_all(&prefix).await.is_err() {
                return;
            }
            for b in rest.iter().cycle() {
                if wr.write_all(&[*b]).await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        let answer = read_answer(&mut rd, Duration::from_secs(120)).await;
        writer.abort();
        (answer, started.elapsed())
    };
    // Headers a byte at a time (never finishing: the header line repeats).
    let heads: Vec<_> = (0..20)
        .map(|_| {
            tokio::spawn(drip(
                b"POST /webhooks/lumanu HTTP/1.1\r\nHost: x\r\nX-Slow: ".to_vec(),
                b"aaaaaaaa".to_vec(),
            ))
        })
        .collect();
    // A connection that sends nothing.
    let idle = tokio::spawn(drip(Vec::new(), Vec::new()));
    // A complete head, then a body a byte at a time.
    let body = tokio::spawn(drip(
        b"POST /webhooks/lumanu HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nX-Signature: 00\r\nContent-Length: 100000\r\n\r\n{\"pad\":\"".to_vec(),
        b"x".to_vec(),
    ));
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Meanwhile, others are served promptly.
    for i in 0..5 {
        let started = Instant::now();
        assert_valid_webhooks_stored(addr, &format!("during-slow-loris-{i}")).await;
        assert_eq!(
            raw(addr, "GET /healthz HTTP/1.1", b"").await,
            Answer::Status(200)
        );
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "a normal client waited {:?}",
            started.elapsed()
        );
    }
    assert!(
        !body.is_finished() && heads.iter().all(|h| !h.is_finished()),
        "normal clients were served while the slow clients were still connected"
    );

    for h in heads {
        let (answer, took) = h.await.unwrap();
        assert_eq!(answer, Answer::Closed, "a slow request head is cut off");
        assert!(
            took >= limits.header_read_timeout - Duration::from_millis(200)
                && took < limits.header_read_timeout + margin,
            "slow head cut off after {took:?}, header timeout {:?}",
            limits.header_read_timeout
        );
    }
    let (answer, took) = idle.await.unwrap();
    assert_eq!(answer, Answer::Closed, "a silent connection is closed");
    assert!(
        took < limits.header_read_timeout + margin,
        "silent connection closed after {took:?}"
    );
    let (answer, took) = body.await.unwrap();
    assert_eq!(
        answer,
        Answer::Status(408),
        "a slow body gets 408 Request Timeout"
    );
    assert!(
        took >= limits.request_timeout - Duration::from_millis(200)
            && took < limits.request_timeout + margin,
        "slow body answered after {took:?}, request timeout {:?}",
        limits.request_timeout
    );
}

/// The inbox holds the valid events of `suffixes`, the signed-but-unusable bodies of `kept`
/// (raw), the duplicate once, the signed text/plain event, and nothing else.
async fn assert_inbox(pool: &PgPool, kept: &[(Provider, Vec<u8>)], suffixes: &[String]) {
    let rows = inbox(pool).await;
    let mut expected_parsed: Vec<(String, String)> = vec![
        ("lumanu".into(), "evt-text-plain".into()),
        ("blaaiz".into(), "evt-dup".into()),
    ];
    for s in suffixes {
        for p in Provider::ALL {
            expected_parsed.push((p.to_string(), format!("valid-{p}-{s}")));
        }
    }
    let mut parsed: Vec<(String, String)> = rows
        .iter()
        .filter(|r| r.2.is_none())
        .map(|r| (r.0.clone(), r.1.clone()))
        .collect();
    parsed.sort();
    expected_parsed.sort();
    assert_eq!(parsed, expected_parsed, "parsed events in the inbox");
    let mut unparseable: Vec<(String, String, Vec<u8>)> = rows
        .iter()
        .filter(|r| r.2.is_some())
        .map(|r| (r.0.clone(), r.1.clone(), r.3.clone().unwrap_or_default()))
        .collect();
    let mut expected_unparseable: Vec<(String, String, Vec<u8>)> = kept
        .iter()
        .map(|(p, b)| (p.to_string(), webhook::fallback_event_id(b), b.clone()))
        .collect();
    unparseable.sort();
    expected_unparseable.sort();
    expected_unparseable.dedup();
    assert_eq!(
        unparseable.len(),
        expected_unparseable.len(),
        "unparseable rows: {:?}",
        rows.iter()
            .filter(|r| r.2.is_some())
            .map(|r| (&r.0, &r.2))
            .collect::<Vec<_>>()
    );
    assert!(
        unparseable == expected_unparseable,
        "unparseable bodies are kept raw under their hash"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_webhook_requests_get_clear_answers_and_only_authentic_events_are_stored() {
    let h = support::harness().await;
    let verifiers: Vec<Arc<dyn WebhookVerifier>> = Provider::ALL
        .into_iter()
        .map(|p| Arc::new(ProviderWebhook::new(p, secret(p))) as Arc<dyn WebhookVerifier>)
        .collect();
    let app = paysaga_runtime::http::router(
        h.engine.clone(),
        verifiers,
        paysaga_runtime::http::DEFAULT_BODY_LIMIT,
    );
    let mut limits = ServeConfig::default();
    limits.header_read_timeout = Duration::from_secs(2);
    limits.request_timeout = Duration::from_secs(3);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(paysaga_runtime::http::serve(
        listener,
        app,
        limits.clone(),
        async {
            let _ = stopped.await;
        },
    ));

    let kept = hostile_requests(addr).await;
    slow_loris(addr, &limits).await;
    assert!(!server.is_finished(), "the server is still running");
    assert_valid_webhooks_stored(addr, "after").await;

    let mut suffixes: Vec<String> = (0..5).map(|i| format!("during-slow-loris-{i}")).collect();
    suffixes.push("after".into());
    assert_inbox(&h.pool, &kept, &suffixes).await;

    // Shutdown ends the server even with a slow client connected.
    let mut lingering = TcpStream::connect(addr).await.unwrap();
    lingering
        .write_all(b"POST /webhooks/lumanu HTTP/1.1\r\n")
        .await
        .unwrap();
    let _ = stop.send(());
    tokio::time::timeout(limits.shutdown_grace + Duration::from_secs(5), server)
        .await
        .expect("serve returns after shutdown")
        .unwrap()
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_process_survives_hostile_webhooks_and_cuts_off_slow_clients() {
    let h = support::harness().await;
    let logs = log_dir("webhook-abuse");
    let port = free_port();
    // Provider APIs point at a closed port: no saga runs here, only webhooks.
    let worker = WorkerProcess::start(h.db.url(), port, 9, "abuse", &logs.join("worker.log"));
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();

    let kept = hostile_requests(addr).await;
    slow_loris(addr, &ServeConfig::default()).await;
    assert_valid_webhooks_stored(addr, "after").await;

    let mut suffixes: Vec<String> = (0..5).map(|i| format!("during-slow-loris-{i}")).collect();
    suffixes.push("after".into());
    assert_inbox(&h.pool, &kept, &suffixes).await;

    let log = std::fs::read_to_string(logs.join("worker.log")).unwrap_or_default();
    assert!(!log.contains("panicked"), "the worker panicked:\n{log}");
    assert!(
        worker.terminate(),
        "the worker exits cleanly after the abuse; log:\n{log}"
    );
}
