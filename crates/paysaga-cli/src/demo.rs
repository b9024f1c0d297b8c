//! `paysaga demo`: one saga of each payout workflow (`lumanu_prefund`, `blaaiz_kyc_payout`,
//! `lean_payout`) and a Lumanu campaign (`lumanu_campaign`: 25 creators paid from one deposit,
//! each a child saga) run end to end in one process against the provider sandbox, with a line
//! of progress per change, then a summary of each saga's steps and the sandbox's money ledger.
//!
//! Everything runs in this process, wired as in production:
//! * the sandbox (fake Lumanu, Blaaiz and Lean with a money ledger) on `127.0.0.1:0`, with the
//!   well-known development credentials;
//! * the worker's HTTP app (`POST /webhooks/{provider}`, signature-checked) on `127.0.0.1:0`,
//!   which is the sandbox's webhook target: sandbox -> signed webhook -> inbox -> saga woken;
//! * one worker with the three providers' step kinds, configured for the sandbox.
//!
//! The workflow definitions, their example inputs and the example KYC documents are embedded
//! in the binary, so the demo works from any working directory. The documents are stored in
//! the database first (as `paysaga documents put` does) and the Blaaiz input names them by id.
//!
//! Database: see [`open_database`].

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use chrono::{DateTime, Utc};
use paysaga_core::{Definition, HistoryKind, ObservedStatus, SagaStatus};
use paysaga_providers::ProvidersConfig;
use paysaga_runtime::{Engine, SagaView, WorkerConfig};
use paysaga_store::{HistoryRecord, SagaFilter, Store};
use serde_json::Value;
use uuid::Uuid;

/// How long the three sagas get to complete (they take a few seconds).
const TIMEOUT: Duration = Duration::from_secs(60);

/// How often progress is read from the database.
const POLL: Duration = Duration::from_millis(100);

/// A workflow the demo runs: its definition file and example input, embedded.
struct Workflow {
    name: &'static str,
    definition: &'static str,
    input: &'static str,
}

const WORKFLOWS: [Workflow; 4] = [
    Workflow {
        name: "lumanu_prefund",
        definition: include_str!("../../../workflows/lumanu_prefund.toml"),
        input: include_str!("../../../workflows/examples/lumanu_prefund.json"),
    },
    Workflow {
        name: "blaaiz_kyc_payout",
        definition: include_str!("../../../workflows/blaaiz_kyc_payout.toml"),
        input: include_str!("../../../workflows/examples/blaaiz_kyc_payout.json"),
    },
    Workflow {
        name: "lean_payout",
        definition: include_str!("../../../workflows/lean_payout.toml"),
        input: include_str!("../../../workflows/examples/lean_payout.json"),
    },
    Workflow {
        name: "lumanu_campaign",
        definition: include_str!("../../../workflows/lumanu_campaign.toml"),
        input: include_str!("../../../workflows/examples/lumanu_campaign.json"),
    },
];

/// Workflows the demo's sagas start as children (submitted, never started directly).
const CHILD_WORKFLOWS: [(&str, &str); 1] = [(
    "lumanu_campaign_payee",
    include_str!("../../../workflows/lumanu_campaign_payee.toml"),
)];

/// Creators in the demo's Lumanu campaign.
const CAMPAIGN_CREATORS: usize = 25;

/// The campaign's input: the example's with [`CAMPAIGN_CREATORS`] creators (100.00 to 124.00
/// USD) and the invoice total their sum.
fn campaign_input(mut input: Value) -> Value {
    let creators: Vec<Value> = (0..CAMPAIGN_CREATORS)
        .map(|i| {
            serde_json::json!({
                "id": format!("creator-{:02}", i + 1),
                "amount": 10_000 + 100 * i as i64,
                "email": format!("creator-{:02}@creators.example", i + 1),
            })
        })
        .collect();
    let total: i64 = creators.iter().filter_map(|c| c["amount"].as_i64()).sum();
    input["creators"] = Value::Array(creators);
    input["total"] = Value::from(total);
    input
}

/// The example KYC documents, by the Blaaiz input's `file_category`: (content type, bytes).
const DOCUMENTS: [(&str, &str, &[u8]); 3] = [
    (
        "identity",
        "image/png",
        include_bytes!("../../../workflows/examples/documents/passport-front.png"),
    ),
    (
        "identity_back",
        "image/png",
        include_bytes!("../../../workflows/examples/documents/passport-back.png"),
    ),
    (
        "proof_of_address",
        "application/pdf",
        include_bytes!("../../../workflows/examples/documents/utility-bill.pdf"),
    ),
];

/// The demo's database and what to do with it afterwards.
struct DemoDatabase {
    store: Arc<dyn Store>,
    /// Where it is, for messages (password redacted).
    label: String,
    /// A SQLite file created for this run: removed after a successful run, kept (and named)
    /// after a failed one.
    created: Option<PathBuf>,
}

/// Chooses and opens the demo's database (the one place to change to use another store):
/// * `DATABASE_URL` (or `--database-url`) as given, PostgreSQL or SQLite; it must hold no
///   unfinished saga, since the demo's worker would run it against the sandbox;
/// * otherwise a fresh SQLite file for this run under the system temp dir (the embedded
///   store: nothing to install). A file per run keeps concurrent or interrupted demos from
///   running each other's sagas.
async fn open_database(url: Option<&str>, run_id: &str) -> Result<DemoDatabase> {
    let (url, created) = match url {
        Some(u) => (u.to_string(), None),
        None => {
            let path = std::env::temp_dir().join(format!("paysaga-demo-{run_id}.db"));
            (format!("sqlite://{}", path.display()), Some(path))
        }
    };
    let label = crate::redact_url(&url);
    let store = paysaga_store::connect(&url)
        .await
        .with_context(|| format!("cannot open the demo database {label}"))?;
    store.migrate().await.context("migrations failed")?;
    if created.is_none() {
        let unfinished = store
            .list_sagas(&SagaFilter {
                statuses: vec![
                    ObservedStatus::Scheduled,
                    ObservedStatus::Running,
                    ObservedStatus::Retrying,
                    ObservedStatus::Waiting,
                    ObservedStatus::Compensating,
                ],
                limit: Some(1),
                ..SagaFilter::default()
            })
            .await
            .context("cannot list unfinished sagas")?;
        if let Some(s) = unfinished.first() {
            bail!(
                "the database {label} holds unfinished sagas (e.g. {} {} {}): the demo's worker \
                 would run them against the sandbox's fake providers. Point DATABASE_URL at an \
                 empty database, or unset it to let the demo create its own",
                s.id,
                s.workflow,
                s.status
            );
        }
    }
    Ok(DemoDatabase {
        store,
        label,
        created,
    })
}

impl DemoDatabase {
    /// Removes a database file created for this run (after a success), or says where it was
    /// kept.
    async fn finish(self, succeeded: bool) {
        let Some(path) = self.created else {
            return;
        };
        drop(self.store);
        if !succeeded {
            println!(
                "kept the database for inspection: DATABASE_URL={} paysaga show ID",
                self.label
            );
            return;
        }
        for suffix in ["", "-wal", "-shm"] {
            let mut file = path.clone().into_os_string();
            file.push(suffix);
            let _ = std::fs::remove_file(file);
        }
    }
}

/// The `PAYSAGA_*` provider variables a worker needs to use the sandbox at `base`, with its
/// development credentials.
fn sandbox_provider_env(base: &str) -> HashMap<&'static str, String> {
    let mut env: HashMap<&'static str, String> =
        paysaga_providers::sandbox_env(base).into_iter().collect();
    env.insert("PAYSAGA_PROVIDER_REQUEST_TIMEOUT_SECS", "10".into());
    env
}

/// Stores the embedded documents in the engine and puts their ids in the input's
/// `documents[].document_id` (the example's ids are placeholders).
async fn put_documents(engine: &Engine, input: &mut Value) -> Result<()> {
    let Some(docs) = input.get_mut("documents").and_then(Value::as_array_mut) else {
        return Ok(());
    };
    for doc in docs {
        let category = doc
            .get("file_category")
            .and_then(Value::as_str)
            .context("a document in the example input has no file_category")?
            .to_owned();
        let (_, content_type, bytes) = DOCUMENTS
            .iter()
            .find(|(c, _, _)| *c == category)
            .with_context(|| format!("no {category} document is embedded in the binary"))?;
        let id = engine
            .put_document(bytes.to_vec(), content_type)
            .await
            .with_context(|| format!("cannot store the example {category} document"))?;
        doc["document_id"] = Value::String(id.to_string());
    }
    Ok(())
}

/// One saga the demo started, and how much of its history is printed.
struct Tracked {
    workflow: &'static str,
    id: Uuid,
    printed: i64,
    view: Option<SagaView>,
}

/// Runs the demo.
pub async fn run(url: Option<&str>) -> Result<()> {
    let run_id = Uuid::new_v4().simple().to_string();
    let db = open_database(url, &run_id).await?;
    println!("database  {}", db.label);
    let outcome = run_in(&db, &run_id).await;
    db.finish(matches!(outcome, Ok(true))).await;
    outcome.map(|_| ())
}

/// Everything between opening and closing the database. `Ok(true)`: every saga completed.
/// A saga that did not complete is reported as an error after the summary was printed.
async fn run_in(db: &DemoDatabase, run_id: &str) -> Result<bool> {
    // The worker's HTTP app is bound first: its address is the sandbox's webhook target.
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
        .await
        .context("cannot listen for webhooks on 127.0.0.1")?;
    let webhook_addr = listener.local_addr()?;
    let mut sandbox_config = paysaga_sandbox::SandboxConfig::new(
        ([127, 0, 0, 1], 0).into(),
        paysaga_sandbox::Credentials::dev(),
    );
    sandbox_config.webhook_base = Some(format!("http://{webhook_addr}"));
    let sandbox = paysaga_sandbox::spawn(sandbox_config)
        .await
        .context("cannot start the provider sandbox")?;
    let sandbox_url = sandbox.base_url().to_string();
    println!("sandbox   {sandbox_url} (Lumanu, Blaaiz, Lean; development credentials)");
    println!("webhooks  http://{webhook_addr}/webhooks/{{lumanu,blaaiz,lean}}");

    let env = sandbox_provider_env(&sandbox_url);
    let providers = ProvidersConfig::from_lookup(|name| env.get(name).cloned())
        .context("provider configuration for the sandbox")?;
    let kinds = paysaga_providers::steps::step_kinds(&providers.clients());
    let engine = Engine::new(db.store.clone(), crate::registry(kinds));
    crate::ensure_builtins(&engine).await?;
    for (name, definition) in CHILD_WORKFLOWS {
        let def = Definition::from_toml(definition)
            .with_context(|| format!("embedded definition {name}"))?;
        engine
            .submit_definition(&def)
            .await
            .with_context(|| format!("definition {name} refused"))?;
    }
    for wf in &WORKFLOWS {
        let def = Definition::from_toml(wf.definition)
            .with_context(|| format!("embedded definition {}", wf.name))?;
        engine
            .submit_definition(&def)
            .await
            .with_context(|| format!("definition {} refused", wf.name))?;
    }

    let app = paysaga_runtime::http::router(
        engine.clone(),
        paysaga_providers::endpoint::verifiers(&providers),
        paysaga_runtime::http::DEFAULT_BODY_LIMIT,
    );
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let http = tokio::spawn({
        let mut rx = stop_rx.clone();
        async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = rx.wait_for(|s| *s).await;
                })
                .await
        }
    });
    let mut config = WorkerConfig::default();
    config.name = "demo".into();
    config.concurrency = 8;
    config.idle_poll = Duration::from_millis(500);
    config.shutdown_grace = Duration::from_secs(5);
    let worker = engine.worker(config);
    let worker = tokio::spawn({
        let mut rx = stop_rx.clone();
        worker.run(async move {
            let _ = rx.wait_for(|s| *s).await;
        })
    });

    let result = drive(&engine, run_id).await;

    let _ = stop_tx.send(true);
    match worker.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => eprintln!("warning: the demo worker stopped with an error: {e:#}"),
        Err(e) => eprintln!("warning: the demo worker task failed: {e}"),
    }
    let _ = http.await;
    let ledger = fetch_ledger(&sandbox_url).await;
    if let Err(e) = sandbox.shutdown().await {
        eprintln!("warning: the sandbox did not stop cleanly: {e}");
    }

    let mut sagas = result?;
    println!();
    for s in &mut sagas {
        // The last read may be up to one poll old.
        if let Ok(view) = engine.get(s.id).await {
            s.view = Some(view);
        }
        if let Some(view) = &s.view {
            print_summary(s.workflow, view);
        }
    }
    match ledger {
        Ok(entries) => {
            print_ledger(&entries);
            print_campaign(&entries);
        }
        Err(e) => println!("sandbox ledger unavailable: {e:#}"),
    }
    println!();

    let problems: Vec<String> = sagas
        .iter()
        .filter_map(|s| {
            let view = s.view.as_ref()?;
            (view.saga.status != SagaStatus::Completed).then(|| problem(s.workflow, view))
        })
        .collect();
    if problems.is_empty() {
        println!(
            "all {} sagas completed: {}",
            sagas.len(),
            sagas
                .iter()
                .map(|s| s.workflow)
                .collect::<Vec<_>>()
                .join(", ")
        );
        Ok(true)
    } else {
        bail!(
            "{} of {} demo sagas did not complete (timeout {}):\n  {}",
            problems.len(),
            sagas.len(),
            humantime::format_duration(TIMEOUT),
            problems.join("\n  ")
        )
    }
}

/// Starts the three sagas and prints their progress until all are final, the timeout passes
/// or the user interrupts.
async fn drive(engine: &Engine, run_id: &str) -> Result<Vec<Tracked>> {
    let mut sagas = Vec::new();
    for wf in &WORKFLOWS {
        let mut input: Value = serde_json::from_str(wf.input)
            .with_context(|| format!("embedded example input of {}", wf.name))?;
        if wf.name == "lumanu_campaign" {
            input = campaign_input(input);
        }
        put_documents(engine, &mut input).await?;
        let key = format!("demo-{run_id}-{}", wf.name);
        let started = engine
            .start(wf.name, input, Some(&key))
            .await
            .with_context(|| format!("cannot start {}", wf.name))?;
        sagas.push(Tracked {
            workflow: wf.name,
            id: started.saga_id,
            printed: 0,
            view: None,
        });
    }
    println!("\nprogress (time since the first saga started)");
    let begun = Instant::now();
    let mut t0: Option<DateTime<Utc>> = None;
    let interrupt = tokio::signal::ctrl_c();
    tokio::pin!(interrupt);
    loop {
        let mut lines: Vec<(DateTime<Utc>, i64, String)> = Vec::new();
        let mut all_final = true;
        for s in &mut sagas {
            let view = engine.get(s.id).await?;
            let t0 = *t0.get_or_insert(view.saga.created_at);
            let printed = s.printed;
            for h in view.history.iter().filter(|h| h.id > printed) {
                lines.push((h.at, h.id, progress_line(s.workflow, &view, h, t0)));
                s.printed = h.id;
            }
            all_final &= view.saga.status.is_final();
            s.view = Some(view);
        }
        lines.sort_by_key(|(at, id, _)| (*at, *id));
        for (_, _, line) in lines {
            println!("{line}");
        }
        if all_final || begun.elapsed() >= TIMEOUT {
            break;
        }
        tokio::select! {
            () = tokio::time::sleep(POLL) => {}
            _ = &mut interrupt => bail!("interrupted"),
        }
    }
    Ok(sagas)
}

/// One line of progress for a history entry.
fn progress_line(workflow: &str, view: &SagaView, h: &HistoryRecord, t0: DateTime<Utc>) -> String {
    let step = h.step.as_deref().unwrap_or("-");
    let attempt = h.attempt.unwrap_or(0);
    let detail = h.detail.as_ref().unwrap_or(&Value::Null);
    let text = |key: &str| detail.get(key).and_then(Value::as_str).unwrap_or("?");
    let error = h.error.as_deref().unwrap_or("");
    let what = match h.kind {
        HistoryKind::SagaStarted => format!("started, saga {}", view.saga.id),
        HistoryKind::StepCompleted => {
            let next = view
                .steps
                .iter()
                .position(|s| s == step)
                .and_then(|i| view.steps.get(i + 1));
            match next {
                Some(next) => format!("{step} done (attempt {attempt}) -> moved to {next}"),
                None => format!("{step} done (attempt {attempt})"),
            }
        }
        HistoryKind::StepWaiting if h.error.is_some() => {
            format!("{step} still waiting; a poll failed: {error}")
        }
        HistoryKind::StepWaiting => {
            let events = detail
                .get("event_types")
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(Value::as_str)
                        .collect::<Vec<_>>()
                        .join("/")
                })
                .unwrap_or_default();
            format!(
                "{step} waiting for {} event {events} ({})",
                text("provider"),
                text("correlation_key")
            )
        }
        HistoryKind::EventReceived => format!(
            "{step} woken by {} event {} (webhook {})",
            text("provider"),
            text("event_type"),
            text("event_id")
        ),
        HistoryKind::StepRetrying => {
            format!("{step} attempt {attempt} failed, will retry: {error}")
        }
        HistoryKind::StepFailed => format!("{step} FAILED: {error}"),
        HistoryKind::SagaCompleted => {
            let total = view
                .saga
                .finished_at
                .map(|f| fmt_ms((f - view.saga.created_at).num_milliseconds()))
                .unwrap_or_default();
            format!("COMPLETED in {total}")
        }
        HistoryKind::SagaParked => format!("NEEDS OPERATOR (parked): {error}"),
        HistoryKind::SagaCompensated => "COMPENSATED (rolled back)".to_string(),
        other => format!("{} {step} {error}", other.as_str()),
    };
    format!(
        "{:>9}  {workflow:<18} {what}",
        format!("+{}", fmt_ms((h.at - t0).num_milliseconds().max(0)))
    )
}

/// Milliseconds as seconds with three decimals (integer arithmetic).
fn fmt_ms(ms: i64) -> String {
    format!("{}.{:03}s", ms / 1000, ms % 1000)
}

/// One row of a saga's summary.
struct StepRow {
    status: String,
    attempts: u32,
    events: usize,
    duration_ms: Option<i64>,
}

/// Per step: last status, attempts, events received and time from the previous step's end
/// (or the saga's start) to its own.
fn step_rows(view: &SagaView) -> Vec<StepRow> {
    let started = view
        .history
        .first()
        .map(|h| h.at)
        .unwrap_or(view.saga.created_at);
    let mut prev_end = Some(started);
    let mut rows = Vec::new();
    for (i, name) in view.steps.iter().enumerate() {
        let entries: Vec<&HistoryRecord> = view
            .history
            .iter()
            .filter(|h| h.step.as_deref() == Some(name.as_str()))
            .collect();
        let attempts = entries.iter().filter_map(|h| h.attempt).max().unwrap_or(0);
        let events = entries
            .iter()
            .filter(|h| h.kind == HistoryKind::EventReceived)
            .count();
        let completed = entries
            .iter()
            .rev()
            .find(|h| {
                matches!(
                    h.kind,
                    HistoryKind::StepCompleted | HistoryKind::OperatorSkip
                )
            })
            .map(|h| h.at);
        let status = match entries.last().map(|h| h.kind) {
            Some(HistoryKind::StepCompleted) => "completed".to_string(),
            Some(HistoryKind::OperatorSkip) => "skipped".to_string(),
            Some(HistoryKind::StepWaiting) => "waiting".to_string(),
            Some(HistoryKind::StepRetrying) => "retrying".to_string(),
            Some(HistoryKind::StepFailed) => "failed".to_string(),
            Some(HistoryKind::StepCompensated) => "compensated".to_string(),
            Some(other) => other.as_str().to_string(),
            None if i == view.saga.step_index && !view.saga.status.is_final() => {
                "running".to_string()
            }
            None => "-".to_string(),
        };
        let end = completed
            .or_else(|| (i == view.saga.step_index && !view.saga.status.is_final()).then(Utc::now));
        let duration_ms = match (prev_end, end) {
            (Some(a), Some(b)) => Some((b - a).num_milliseconds().max(0)),
            _ => None,
        };
        prev_end = completed;
        rows.push(StepRow {
            status,
            attempts,
            events,
            duration_ms,
        });
    }
    rows
}

fn print_summary(workflow: &str, view: &SagaView) {
    let s = &view.saga;
    let total = s
        .finished_at
        .map(|f| format!(" in {}", fmt_ms((f - s.created_at).num_milliseconds())))
        .unwrap_or_default();
    println!(
        "{workflow} v{} saga {}: {}{total}",
        s.version, s.id, s.status
    );
    println!(
        "  {:<22} {:<12} {:>8} {:>7} {:>10}",
        "STEP", "STATUS", "ATTEMPTS", "EVENTS", "DURATION"
    );
    for (name, row) in view.steps.iter().zip(step_rows(view)) {
        println!(
            "  {name:<22} {:<12} {:>8} {:>7} {:>10}",
            row.status,
            row.attempts,
            row.events,
            row.duration_ms.map(fmt_ms).unwrap_or_else(|| "-".into())
        );
    }
    if let Some(last) = view.steps.last().and_then(|n| s.outputs.get(n)) {
        println!("  result: {}", crate::operate::redact(last));
    }
    if let Some(e) = &s.last_error {
        if s.status != SagaStatus::Completed {
            println!("  last error: {e}");
        }
    }
    println!();
}

/// Why a saga is not completed: its status, step and what it is doing.
fn problem(workflow: &str, view: &SagaView) -> String {
    let s = &view.saga;
    let step = view
        .current_step
        .clone()
        .or_else(|| view.steps.get(s.step_index).cloned())
        .unwrap_or_else(|| "-".into());
    let mut text = format!(
        "saga {} ({workflow}) is {} at step {step} (attempt {})",
        s.id, s.status, s.attempt
    );
    if let (SagaStatus::Waiting, Some(w)) = (s.status, &s.wait) {
        text.push_str(&format!(
            ", waiting for {} event {} ({})",
            w.provider,
            w.event_types.join("/"),
            w.correlation_key
        ));
    }
    if let Some(e) = &s.last_error {
        text.push_str(&format!("; last error: {e}"));
    }
    text
}

/// `GET {sandbox}/_sandbox/ledger`: every money movement the sandbox made.
async fn fetch_ledger(sandbox_url: &str) -> Result<Vec<Value>> {
    let url = format!("{sandbox_url}/_sandbox/ledger");
    let body: Value = reqwest::get(&url)
        .await
        .and_then(reqwest::Response::error_for_status)
        .with_context(|| format!("GET {url}"))?
        .json()
        .await
        .with_context(|| format!("GET {url}: not JSON"))?;
    match body {
        Value::Array(items) => Ok(items),
        other => bail!("GET {url}: expected a JSON array, got {other}"),
    }
}

fn print_ledger(entries: &[Value]) {
    let text = |e: &Value, key: &str| e.get(key).and_then(Value::as_str).unwrap_or("").to_string();
    let (seeds, moves): (Vec<&Value>, Vec<&Value>) =
        entries.iter().partition(|e| text(e, "kind") == "seed");
    println!(
        "sandbox ledger: {} money movement(s) (amounts in minor units; {} opening balance(s) not shown)",
        moves.len(),
        seeds.len()
    );
    println!(
        "  {:<8} {:<8} {:<7} {:>12} {:<4}  {:<22} {:<38} COUNTERPARTY",
        "PROVIDER", "KIND", "SIDE", "AMOUNT", "CUR", "ACCOUNT", "REFERENCE"
    );
    for e in moves {
        let amount = e
            .get("amount")
            .and_then(Value::as_i64)
            .map(|a| a.to_string())
            .unwrap_or_else(|| e.get("amount").map(Value::to_string).unwrap_or_default());
        println!(
            "  {:<8} {:<8} {:<7} {:>12} {:<4}  {:<22} {:<38} {}",
            text(e, "provider"),
            text(e, "kind"),
            text(e, "direction"),
            amount,
            text(e, "currency"),
            shorten(&text(e, "account"), 22),
            text(e, "reference"),
            mask_account(&text(e, "counterparty"))
        );
    }
}

/// The campaign's money in the ledger: its workspace's deposit, the payments, what is left.
fn print_campaign(entries: &[Value]) {
    let input: Value = WORKFLOWS
        .iter()
        .find(|w| w.name == "lumanu_campaign")
        .and_then(|w| serde_json::from_str(w.input).ok())
        .unwrap_or_default();
    let Some(workspace) = input["workspace_id"].as_str() else {
        return;
    };
    let of = |kind: &str| -> Vec<i64> {
        entries
            .iter()
            .filter(|e| e["account"] == workspace && e["kind"] == kind)
            .filter_map(|e| e["amount"].as_i64())
            .collect()
    };
    let (deposits, payments) = (of("deposit"), of("payment"));
    let (funded, paid) = (deposits.iter().sum::<i64>(), payments.iter().sum::<i64>());
    println!(
        "campaign: {} creator(s) paid {paid} USD cents from {} deposit(s) of {funded} in \
         workspace {workspace}; {} left in the balance",
        payments.len(),
        deposits.len(),
        funded - paid
    );
}

/// `abcdefgh...` cut to `width` characters with an ellipsis.
fn shorten(s: &str, width: usize) -> String {
    if s.chars().count() <= width {
        s.to_string()
    } else {
        let head: String = s.chars().take(width.saturating_sub(3)).collect();
        format!("{head}...")
    }
}

/// Bank account numbers and IBANs keep their last four characters only.
fn mask_account(s: &str) -> String {
    let digits = s.chars().filter(char::is_ascii_digit).count();
    let account_like = s.len() >= 8
        && digits >= 6
        && s.chars().all(|c| c.is_ascii_alphanumeric())
        && Uuid::parse_str(s).is_err();
    if account_like {
        let tail: String = s[s.len() - 4..].to_string();
        format!("***{tail}")
    } else {
        s.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_workflows_parse_and_name_themselves() {
        for wf in &WORKFLOWS {
            let def = Definition::from_toml(wf.definition).expect("definition parses");
            assert_eq!(def.name, wf.name);
            let _: Value = serde_json::from_str(wf.input).expect("input parses");
        }
    }

    #[tokio::test]
    async fn documents_are_stored_and_the_input_names_them_by_id() {
        let store = paysaga_store::connect("sqlite::memory:")
            .await
            .expect("store");
        store.migrate().await.expect("migrate");
        let engine = Engine::new(store, paysaga_runtime::Registry::new());
        let mut input: Value = serde_json::from_str(WORKFLOWS[1].input).expect("input");
        put_documents(&engine, &mut input)
            .await
            .expect("documents stored");
        let docs = input["documents"].as_array().expect("documents");
        assert_eq!(docs.len(), 3);
        for doc in docs {
            let id: paysaga_core::DocumentId = doc["document_id"]
                .as_str()
                .expect("document_id")
                .parse()
                .expect("an id");
            let (_, content_type, bytes) = DOCUMENTS
                .iter()
                .find(|(c, _, _)| Some(*c) == doc["file_category"].as_str())
                .expect("embedded");
            let stored = engine.document(id).await.expect("read").expect("stored");
            assert_eq!(stored.content_type, *content_type);
            assert_eq!(
                engine.document_content(id).await.expect("read").as_deref(),
                Some(*bytes)
            );
        }
    }

    #[test]
    fn account_numbers_are_masked_but_ids_and_emails_are_not() {
        assert_eq!(mask_account("0123456789"), "***6789");
        assert_eq!(mask_account("AE070331234567890123456"), "***3456");
        assert_eq!(mask_account("creator@example.com"), "creator@example.com");
        let id = "266733cc-6f46-4e87-af7e-9bb46b99601d";
        assert_eq!(mask_account(id), id);
    }

    #[test]
    fn milliseconds_print_as_seconds() {
        assert_eq!(fmt_ms(0), "0.000s");
        assert_eq!(fmt_ms(1234), "1.234s");
        assert_eq!(fmt_ms(60_005), "60.005s");
    }
}
