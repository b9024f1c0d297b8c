//! The operator web console (issue 19): `paysaga console` as a real process on a real
//! PostgreSQL. In a real headless Chromium (Debian's, installed by the test support) an
//! operator finds a parked Lean payout from the overview, reads why on its page and closes it
//! with a reason; the history records their identity. Over plain HTTP: no access without
//! authentication, viewers cannot act, cross-site and token-less POSTs are refused, and an
//! action on a saga that moved since the operator saw it is refused as in the CLI.
//! A campaign's page shows its children by status and the child that needs an operator.
//! A worker started with `--console` serves the same pages behind the same authentication.
//! Screenshots of each page go to `target/paysaga-artifacts/console/`.
#![allow(clippy::unwrap_used)]

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{ClientBuilder, Locator};
use paysaga_runtime::Engine;
use reqwest::header::{HeaderMap, HeaderValue};
use reqwest::StatusCode;
use serde_json::json;
use support::processes::{free_port, log_dir, Sandbox, WorkerProcess};
use support::workflows::{control_engine, input};
use uuid::Uuid;

const BIN: &str = env!("CARGO_BIN_EXE_paysaga");
const ALICE: &str = "alice-operator-token-7f3a9c1e5b";
const VICTOR: &str = "victor-viewer-token-2d8e4b6a0c";

/// A running `paysaga console`.
struct ConsoleProcess {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl ConsoleProcess {
    fn start(db_url: &str, log: &Path) -> ConsoleProcess {
        Self::start_with(db_url, log, &[])
    }

    fn start_with(db_url: &str, log: &Path, args: &[&str]) -> ConsoleProcess {
        let port = free_port();
        let child = Command::new(BIN)
            .args(["console", "--addr", &format!("127.0.0.1:{port}")])
            .args(args)
            .env("DATABASE_URL", db_url)
            .env(
                "PAYSAGA_CONSOLE_TOKENS",
                format!("alice=operator:{ALICE},victor=viewer:{VICTOR}"),
            )
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log).unwrap())
            .spawn()
            .unwrap();
        let mut console = ConsoleProcess {
            child,
            port,
            log: log.to_path_buf(),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(status)) = console.child.try_wait() {
                panic!(
                    "console exited at start ({status}): {}",
                    std::fs::read_to_string(log).unwrap_or_default()
                );
            }
            assert!(
                Instant::now() < deadline,
                "console did not start; log {}",
                log.display()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        console
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn origin(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for ConsoleProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A running chromedriver (killed on drop).
struct Driver(Child);

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Where the screenshots go (kept as test artifacts).
fn artifacts() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/paysaga-artifacts/console");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

async fn screenshot(client: &fantoccini::Client, name: &str) {
    let png = client.screenshot().await.unwrap();
    assert!(png.starts_with(b"\x89PNG"), "{name}: not a PNG");
    std::fs::write(artifacts().join(format!("{name}.png")), png).unwrap();
}

/// Headless Chromium through chromedriver.
async fn browser(logs: &Path) -> (Driver, fantoccini::Client) {
    let (chromium, chromedriver) =
        paysaga_testkit::tools::chromium().unwrap_or_else(|e| panic!("{e}"));
    let port = free_port();
    let driver = Driver(
        Command::new(chromedriver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(logs.join("chromedriver.log")).unwrap())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "chromedriver did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    let profile = logs.join("chromium-profile");
    let mut args: Vec<String> = paysaga_testkit::tools::CHROMIUM_ARGS
        .iter()
        .map(|a| a.to_string())
        .collect();
    args.push(format!("--user-data-dir={}", profile.display()));
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        json!({"binary": chromium, "args": args}),
    );
    let client = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(&format!("http://127.0.0.1:{port}"))
        .await
        .unwrap_or_else(|e| panic!("cannot start a Chromium session through chromedriver: {e}"));
    (driver, client)
}

/// The page's visible text. The saga page replaces its content every 2 s (live updates) and a
/// click may still be loading the next page: an element found just before a refresh goes
/// stale, and a page being loaded has no body yet, so read it again (for up to 5 s).
async fn page_text(client: &fantoccini::Client) -> String {
    let mut tries = 0;
    loop {
        let read = match client.find(Locator::Css("body")).await {
            Ok(body) => body.text().await,
            Err(e) => Err(e),
        };
        match read {
            Ok(text) => return text,
            Err(_) if tries < 50 => {
                tries += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("cannot read the page's text: {e}"),
        }
    }
}

/// Signs in with `token` on the login form the browser shows.
async fn sign_in(client: &fantoccini::Client, token: &str) {
    client
        .find(Locator::Css("input[name=token]"))
        .await
        .unwrap()
        .send_keys(token)
        .await
        .unwrap();
    client
        .find(Locator::Css("form.login button"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
}

/// The page's text once it contains `needle` (after a click that loads another page: the
/// old page may still be shown for a moment). Fails after 15 s with the text seen.
async fn text_containing(client: &fantoccini::Client, needle: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let text = page_text(client).await;
        if text.contains(needle) {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "the page did not show {needle:?} within 15 s: {text}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn wait_status(engine: &Engine, id: Uuid, status: &str, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let s = engine.store().saga(id).await.unwrap().unwrap();
        if s.status.as_str() == status {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "saga {id} is {} (error {:?}), not {status}, after {within:?}",
            s.status,
            s.last_error
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_finds_a_parked_lean_payout_reads_why_and_closes_it_in_a_browser_with_their_identity_recorded(
) {
    let db = paysaga_testkit::database().await;
    let engine = control_engine(db.url()).await;
    let logs = log_dir("console-browser");
    let port = free_port();
    let sandbox = Sandbox::start(port, "none", &logs.join("sandbox.log"));
    let worker = WorkerProcess::start(db.url(), port, sandbox.port, "w1", &logs.join("w1.log"));
    let run = Uuid::new_v4().simple().to_string()[..8].to_string();
    let mut v = input(&engine, "lean_payout", &run, 0).await;
    // The sandbox's bank rejects it: the saga parks for an operator at await_payment.
    v["description"] = json!(format!("REJECTED_BY_BANK {run}"));
    let lean = engine
        .start("lean_payout", v, Some(&format!("lean-{run}")))
        .await
        .unwrap()
        .saga_id;
    wait_status(&engine, lean, "needs_operator", Duration::from_secs(90)).await;
    drop(worker);
    let console = ConsoleProcess::start(db.url(), &logs.join("console.log"));
    let (_driver, client) = browser(&logs).await;

    // Not signed in: the login form.
    client.goto(&console.url("/")).await.unwrap();
    assert!(page_text(&client).await.contains("Sign in"));
    screenshot(&client, "login").await;
    sign_in(&client, ALICE).await;

    // The overview lists it under "Need an operator".
    let text = text_containing(&client, "Need an operator").await;
    assert!(text.contains("Need an operator"), "{text}");
    assert!(text.contains("alice (operator)"), "{text}");
    screenshot(&client, "overview").await;
    client
        .find(Locator::Css(&format!("a[href='/sagas/{lean}']")))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();

    // Its page says why (the line `paysaga show` prints) and what the provider last said.
    text_containing(&client, "Timeline").await;
    assert_eq!(
        client.current_url().await.unwrap().path(),
        format!("/sagas/{lean}")
    );
    let why = client
        .find(Locator::Css("dd.why"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(
        why,
        "parked for an operator (see error): close, reset, resume or skip"
    );
    let text = page_text(&client).await;
    assert!(text.contains("await_payment"), "{text}");
    assert!(
        text.contains("The provider's last answer per step"),
        "{text}"
    );
    screenshot(&client, "saga").await;

    // The page updates live: a colleague's refused `paysaga cancel` shows up without a reload.
    let err = engine
        .cancel(lean, "cli:bob", "payee gone")
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("`close`"), "{err}");
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let rows = client
            .find_all(Locator::Css("tr.k-operator_refused"))
            .await
            .unwrap();
        if let Some(row) = rows.first() {
            let text = row.text().await.unwrap();
            assert!(text.contains("cli:bob"), "{text}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the saga page did not show the new history row within 15 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Close it as not paid, with a reason; the confirmation states the consequence.
    client
        .find(Locator::Css("#action-close summary"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    client
        .find(Locator::Css("#action-close input[value=not_paid]"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let reason = "REJECTED_BY_BANK confirmed with Lean, ticket 19";
    client
        .find(Locator::Css("#action-close textarea[name=reason]"))
        .await
        .unwrap()
        .send_keys(reason)
        .await
        .unwrap();
    client
        .find(Locator::Css("#action-close button[type=submit]"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let text = text_containing(&client, "Confirm: close").await;
    assert!(
        text.contains("this payout may already have been sent")
            || text.contains("This payout may already have been sent"),
        "{text}"
    );
    assert!(text.contains("Recorded as console:alice"), "{text}");
    screenshot(&client, "confirm-close").await;
    assert_eq!(
        engine
            .store()
            .saga(lean)
            .await
            .unwrap()
            .unwrap()
            .status
            .as_str(),
        "needs_operator",
        "nothing happens before the confirmation"
    );
    client
        .find(Locator::Css("button.danger"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();

    // Back on the saga's page: closed, and the history entry names alice.
    text_containing(&client, "Done: close").await;
    let row = client
        .find(Locator::Css("tr.k-saga_closed"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        row.contains("console:alice") && row.contains(reason),
        "{row}"
    );
    screenshot(&client, "saga-closed").await;
    let saga = engine.store().saga(lean).await.unwrap().unwrap();
    assert_eq!(saga.status.as_str(), "closed");
    assert_eq!(saga.closed_outcome.map(|o| o.as_str()), Some("not_paid"));
    let closed: Vec<_> = engine
        .store()
        .history(lean)
        .await
        .unwrap()
        .into_iter()
        .filter(|h| h.kind.as_str() == "saga_closed")
        .collect();
    assert_eq!(closed.len(), 1);
    assert_eq!(closed[0].actor.as_deref(), Some("console:alice"));
    assert_eq!(closed[0].detail.as_ref().unwrap()["reason"], json!(reason));

    // The other pages render for the artifacts: the list with a filter, and the inbox.
    client
        .goto(&console.url("/sagas?status=closed&workflow=lean_payout"))
        .await
        .unwrap();
    let text = page_text(&client).await;
    assert!(text.contains(&lean.to_string()), "{text}");
    assert!(
        text.contains("paysaga list --status closed --workflow lean_payout"),
        "{text}"
    );
    screenshot(&client, "list").await;
    client.goto(&console.url("/inbox")).await.unwrap();
    assert!(page_text(&client).await.contains("Inbox"));
    screenshot(&client, "inbox").await;
    // The sandbox's webhooks of this payout are in the inbox; one of them on its own page.
    client
        .find(Locator::Css("a[href^='/inbox/']"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let text = text_containing(&client, "Inbox event").await;
    assert!(
        text.contains("Inbox event") && text.contains("lean"),
        "{text}"
    );
    screenshot(&client, "event").await;
    client.close().await.unwrap();
    let log = std::fs::read_to_string(&console.log).unwrap();
    assert!(!log.contains(ALICE), "the token was logged: {log}");
}

/// A plain HTTP client that does not follow redirects.
fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

fn bearer(token: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(
        "authorization",
        HeaderValue::from_str(&format!("Bearer {token}")).unwrap(),
    );
    h
}

/// The value of a hidden field of a page's forms (the CSRF token, where the page saw the saga).
fn hidden(page: &str, name: &str) -> String {
    let marker = format!("name=\"{name}\" value=\"");
    let at = page
        .find(&marker)
        .unwrap_or_else(|| panic!("no {name} field in {page}"));
    let rest = &page[at + marker.len()..];
    rest[..rest.find('"').unwrap()].to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_refuses_anonymous_viewer_cross_site_and_stale_actions_and_records_the_operator(
) {
    let db = paysaga_testkit::database().await;
    let engine = control_engine(db.url()).await;
    engine
        .submit_definition(&paysaga_runtime::noop::noop_definition())
        .await
        .unwrap();
    // No worker runs: the saga stays scheduled.
    let id = engine
        .start("noop", json!({"delay_ms": 10}), Some("console-http"))
        .await
        .unwrap()
        .saga_id;
    let logs = log_dir("console-http");
    let console = ConsoleProcess::start(db.url(), &logs.join("console.log"));
    let c = http();
    let saga_page = console.url(&format!("/sagas/{id}"));
    let cancel = console.url(&format!("/sagas/{id}/cancel"));
    let history = |kind: &'static str| {
        let engine = engine.clone();
        async move {
            engine
                .store()
                .history(id)
                .await
                .unwrap()
                .into_iter()
                .filter(|h| h.kind.as_str() == kind)
                .collect::<Vec<_>>()
        }
    };

    // Without authentication: 401 everywhere (the login form as body), wrong tokens too.
    for path in ["/", "/sagas", &format!("/sagas/{id}"), "/inbox", "/inbox/1"] {
        let r = c.get(console.url(path)).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{path}");
        assert!(r.text().await.unwrap().contains("Sign in"));
    }
    let r = c
        .get(&saga_page)
        .headers(bearer("not-a-token-at-all-0000"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let r = c
        .post(&cancel)
        .form(&[("reason", "x"), ("confirm", "yes")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);

    // A viewer reads, and may not act.
    let r = c
        .get(&saga_page)
        .headers(bearer(VICTOR))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let page = r.text().await.unwrap();
    assert!(page.contains(&id.to_string()) && page.contains("actions need the operator role"));
    let r = c
        .post(&cancel)
        .headers(bearer(VICTOR))
        .form(&[("reason", "viewer tries"), ("confirm", "yes")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);

    // Cross-site POSTs are refused before anything else, whatever the credentials.
    for (name, value) in [
        ("origin", "http://evil.example"),
        ("sec-fetch-site", "cross-site"),
    ] {
        let r = c
            .post(&cancel)
            .headers(bearer(ALICE))
            .header(name, value)
            .form(&[("reason", "forged"), ("confirm", "yes")])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::FORBIDDEN, "{name}: {value}");
    }

    // A browser session: the login sets an HttpOnly, SameSite=Strict cookie.
    let r = c
        .post(console.url("/login"))
        .header("origin", console.origin())
        .form(&[("token", ALICE), ("next", &format!("/sagas/{id}"))])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert_eq!(r.headers()["location"], format!("/sagas/{id}"));
    let set_cookie = r.headers()["set-cookie"].to_str().unwrap().to_string();
    assert!(
        set_cookie.contains("HttpOnly") && set_cookie.contains("SameSite=Strict"),
        "{set_cookie}"
    );
    let cookie = set_cookie.split(';').next().unwrap().to_string();
    let page = c
        .get(&saga_page)
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let token = hidden(&page, "csrf");
    // Where the page saw it.
    assert_eq!(hidden(&page, "expect_status"), "scheduled");
    let step = hidden(&page, "expect_step");
    let post = |url: &str, form: &[(&str, &str)]| {
        c.post(url)
            .header("cookie", &cookie)
            .header("origin", console.origin())
            .header("sec-fetch-site", "same-origin")
            .form(form)
    };
    // The session's cookie without the form's CSRF token (a forged form) is refused.
    let r = post(&cancel, &[("reason", "forged"), ("confirm", "yes")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let r = post(
        &cancel,
        &[("reason", "forged"), ("confirm", "yes"), ("csrf", "0123")],
    )
    .send()
    .await
    .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    // A reason is required.
    let r = post(
        &cancel,
        &[("csrf", &token), ("reason", " "), ("confirm", "yes")],
    )
    .send()
    .await
    .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert!(history("cancel_requested").await.is_empty());
    assert!(
        !engine
            .store()
            .saga(id)
            .await
            .unwrap()
            .unwrap()
            .cancel_requested
    );

    // Still where you saw it: the page showed it scheduled at step sleep; a form saying
    // otherwise is refused, for close (the engine's check, recorded) and for cancel.
    let r = post(
        &console.url(&format!("/sagas/{id}/close")),
        &[
            ("csrf", &token),
            ("reason", "bank rejected"),
            ("outcome", "not_paid"),
            ("expect_status", "waiting"),
            ("confirm", "yes"),
        ],
    )
    .send()
    .await
    .unwrap();
    assert_eq!(r.status(), StatusCode::CONFLICT);
    assert!(r
        .text()
        .await
        .unwrap()
        .contains("no longer where you saw it"));
    let refused = history("operator_refused").await;
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert_eq!(refused[0].actor.as_deref(), Some("console:alice"));
    let r = post(
        &cancel,
        &[
            ("csrf", &token),
            ("reason", "customer withdrew"),
            ("expect_status", "scheduled"),
            ("expect_step", "another_step"),
            ("confirm", "yes"),
        ],
    )
    .send()
    .await
    .unwrap();
    assert_eq!(r.status(), StatusCode::CONFLICT);
    assert!(r
        .text()
        .await
        .unwrap()
        .contains("no longer where you saw it"));
    let saga = engine.store().saga(id).await.unwrap().unwrap();
    assert_eq!(saga.status.as_str(), "scheduled");
    assert!(!saga.cancel_requested);

    // The first POST asks to confirm and states the consequence; the confirmed one acts,
    // recorded with the signed-in identity.
    let form = [
        ("csrf", token.as_str()),
        ("reason", "customer withdrew"),
        ("expect_status", "scheduled"),
        ("expect_step", step.as_str()),
    ];
    let r = post(&cancel, &form).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let page = r.text().await.unwrap();
    assert!(
        page.contains("Confirm: cancel") && page.contains("compensations"),
        "{page}"
    );
    assert!(
        !engine
            .store()
            .saga(id)
            .await
            .unwrap()
            .unwrap()
            .cancel_requested
    );
    let mut confirmed = form.to_vec();
    confirmed.push(("confirm", "yes"));
    let r = post(&cancel, &confirmed).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert_eq!(r.headers()["location"], format!("/sagas/{id}?done=cancel"));
    let saga = engine.store().saga(id).await.unwrap().unwrap();
    assert!(
        saga.cancel_requested || saga.status.as_str() == "cancelled",
        "{saga:?}"
    );
    let cancels = history("cancel_requested").await;
    assert_eq!(
        cancels.len(),
        1,
        "{:?}",
        engine.store().history(id).await.unwrap()
    );
    assert_eq!(cancels[0].actor.as_deref(), Some("console:alice"));
    assert_eq!(
        cancels[0].detail.as_ref().unwrap()["reason"],
        json!("customer withdrew")
    );

    // A read-only console (`--no-actions`, for a read-only database role) shows no action
    // forms and refuses actions, even an operator's.
    let read_only =
        ConsoleProcess::start_with(db.url(), &logs.join("console-ro.log"), &["--no-actions"]);
    let r = c
        .get(read_only.url(&format!("/sagas/{id}")))
        .headers(bearer(ALICE))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let page = r.text().await.unwrap();
    assert!(!page.contains("name=\"reason\""), "{page}");
    let r = c
        .post(read_only.url(&format!("/sagas/{id}/retry")))
        .headers(bearer(ALICE))
        .form(&[("reason", "read-only"), ("confirm", "yes")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    drop(read_only);

    // After logout the cookie no longer works.
    let r = post(&console.url("/logout"), &[("csrf", &token)])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    let r = c
        .get(&saga_page)
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let log = std::fs::read_to_string(&console.log).unwrap();
    assert!(
        !log.contains(ALICE) && !log.contains(VICTOR),
        "a token was logged: {log}"
    );
}

#[test]
fn the_console_refuses_to_start_without_authentication() {
    let out = Command::new(BIN)
        .args(["console", "--addr", "127.0.0.1:0"])
        .env("DATABASE_URL", "postgres://postgres@127.0.0.1:1/none")
        .env_remove("PAYSAGA_CONSOLE_TOKENS")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("without authentication"), "{err}");
}

/// A creator's payout in a campaign: money goes out, then a confirmation that the test makes
/// fail for the creators whose input says so (the child then parks: money may have moved).
const CREATOR_PAYOUT: &str = r#"
name = "console_creator_payout"
version = 1
[[steps]]
name = "send"
kind = "test.irreversible"
[[steps]]
name = "confirm"
kind = "test.fail"
when = { path = "$.input.fail", equals = true }
"#;

const CAMPAIGN: &str = r#"
name = "console_campaign"
version = 1
[[steps]]
name = "payees"
poll_every = "1s"
fan_out = { workflow = "console_creator_payout", items = "$.input.creators", key = "$.id", input = { fail = "$.item.fail" }, max_in_flight = 10 }
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_campaigns_page_shows_its_children_by_status_and_the_child_that_needs_an_operator() {
    let h = support::harness().await;
    h.submit(CREATOR_PAYOUT).await;
    h.submit(CAMPAIGN).await;
    let creators = json!([
        {"id": "ana", "fail": false},
        {"id": "bo", "fail": true},
        {"id": "cy", "fail": false},
    ]);
    let parent = h
        .engine
        .start(
            "console_campaign",
            json!({ "creators": creators }),
            Some("console-campaign"),
        )
        .await
        .unwrap()
        .saga_id;
    let worker = support::spawn_worker(&h.engine, support::fast_worker("console-campaign"));
    // Two children complete, `bo`'s parks; the parent's fan-in waits for it.
    let deadline = Instant::now() + Duration::from_secs(90);
    let children: Vec<(Uuid, String, String)> = loop {
        let rows: Vec<(Uuid, String, String)> = sqlx::query_as(
            "SELECT id, child_key, status FROM paysaga_sagas WHERE parent_id = $1 ORDER BY child_index",
        )
        .bind(parent)
        .fetch_all(&h.pool)
        .await
        .unwrap();
        let statuses: Vec<&str> = rows.iter().map(|r| r.2.as_str()).collect();
        if statuses == ["completed", "needs_operator", "completed"] {
            break rows;
        }
        assert!(Instant::now() < deadline, "children: {rows:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    worker.shutdown().await;
    let parked = children[1].0;

    let logs = log_dir("console-campaign");
    let console = ConsoleProcess::start(h.db.url(), &logs.join("console.log"));
    let c = http();
    let get = |path: String| {
        let c = c.clone();
        let url = console.url(&path);
        async move {
            let r = c.get(url).headers(bearer(VICTOR)).send().await.unwrap();
            assert_eq!(r.status(), StatusCode::OK, "{path}");
            r.text().await.unwrap()
        }
    };

    // The parent's page: the fan-out step with its children by status, each count a link to
    // the filtered list, and the child that needs an operator with its error.
    let page = get(format!("/sagas/{parent}")).await;
    assert!(page.contains("Campaign tree"), "{page}");
    assert!(page.contains("<td>payees</td>"), "{page}");
    assert!(
        page.contains(&format!("/sagas?parent={parent}&amp;status=completed")),
        "{page}"
    );
    assert!(
        page.contains(&format!("/sagas?parent={parent}&amp;status=needs_operator")),
        "{page}"
    );
    assert!(page.contains("Children that need an operator"), "{page}");
    assert!(
        page.contains(&format!("href=\"/sagas/{parked}\"")),
        "{page}"
    );
    assert!(
        page.contains("provider refused: 400 invalid account"),
        "{page}"
    );

    // `?parent=` lists the three children, and with a status only those.
    let list = get(format!("/sagas?parent={parent}")).await;
    for (id, _, _) in &children {
        assert!(
            list.contains(&format!("/sagas/{id}")),
            "{id} missing: {list}"
        );
    }
    let only_parked = get(format!("/sagas?parent={parent}&status=needs_operator")).await;
    assert!(
        only_parked.contains(&format!("/sagas/{parked}")),
        "{only_parked}"
    );
    assert!(
        !only_parked.contains(&format!("/sagas/{}", children[0].0)),
        "{only_parked}"
    );

    // A child's page links back to its parent.
    let child_page = get(format!("/sagas/{parked}")).await;
    assert!(child_page.contains("Child of"), "{child_page}");
    assert!(
        child_page.contains(&format!("href=\"/sagas/{parent}\"")),
        "{child_page}"
    );

    // And the campaign page as an operator sees it in a browser.
    let (_driver, client) = browser(&logs).await;
    client.goto(&console.url("/")).await.unwrap();
    sign_in(&client, VICTOR).await;
    text_containing(&client, "Overview").await;
    client
        .goto(&console.url(&format!("/sagas/{parent}")))
        .await
        .unwrap();
    let text = text_containing(&client, "Campaign tree").await;
    assert!(text.contains("Children that need an operator"), "{text}");
    screenshot(&client, "campaign").await;
    client.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_started_with_console_serves_it_behind_the_same_authentication_next_to_its_probes()
{
    let db = paysaga_testkit::database().await;
    let logs = log_dir("console-worker");
    let port = free_port();
    // No sandbox: the worker runs nothing here; only its HTTP surface is looked at.
    let no_sandbox = free_port();
    let tokens = format!("alice=operator:{ALICE},victor=viewer:{VICTOR}");
    let worker = WorkerProcess::start_with_env(
        db.url(),
        port,
        no_sandbox,
        "w-console",
        &logs.join("worker.log"),
        &[
            ("PAYSAGA_WORKER_CONSOLE", "true"),
            ("PAYSAGA_CONSOLE_TOKENS", &tokens),
        ],
    );
    let c = http();
    let url = |path: &str| format!("http://127.0.0.1:{}{path}", worker.port);
    // The worker's own routes are unchanged.
    let r = c.get(url("/healthz")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let r = c.get(url("/metrics")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    // The console's are behind its authentication.
    for path in ["/", "/sagas", "/inbox"] {
        let r = c.get(url(path)).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{path}");
    }
    let r = c
        .get(url("/"))
        .headers(bearer(VICTOR))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert!(r.text().await.unwrap().contains("Overview"));
    // A cross-site POST is refused as on `paysaga console`.
    let id = Uuid::new_v4();
    let r = c
        .post(url(&format!("/sagas/{id}/cancel")))
        .headers(bearer(ALICE))
        .header("origin", "https://evil.example")
        .form(&[("reason", "x"), ("confirm", "yes")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    drop(worker);

    // Without the console's authentication the worker does not start.
    let out = Command::new(BIN)
        .args(["worker", "--console", "--http-addr"])
        .arg(format!("127.0.0.1:{}", free_port()))
        .env("DATABASE_URL", db.url())
        .env_remove("PAYSAGA_CONSOLE_TOKENS")
        .env_remove("PAYSAGA_CONSOLE_TOKENS_FILE")
        .env_remove("PAYSAGA_CONSOLE_TRUSTED_IDENTITY_HEADER")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("PAYSAGA_CONSOLE"), "{err}");
}
