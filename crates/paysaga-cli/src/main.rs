//! `paysaga`: the binary that wires the engine together: migrations, workers, definitions,
//! starting and inspecting sagas.

mod bulk;
mod bulk_start;
mod children;
mod console;
#[cfg(feature = "dev")]
mod demo;
mod documents;
mod exit;
mod kinds;
mod listing;
mod operate;
mod operate_actions;
mod operate_visibility;
mod privacy;
mod provider_metrics;
mod rate_limits;
mod reconcile;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use paysaga_core::{Definition, StepKind};
use paysaga_runtime::{noop, Engine, Registry, StartRequest, WorkerConfig};
use serde_json::Value;
use uuid::Uuid;

#[derive(Debug, Parser)]
#[command(
    name = "paysaga",
    version,
    about = "Durable payout sagas on PostgreSQL",
    after_help = exit::HELP
)]
struct Cli {
    /// PostgreSQL URL (TLS: `?sslmode=verify-full&sslrootcert=CA.pem`), or sqlite://FILE.
    #[arg(long, env = "DATABASE_URL", global = true, hide_env_values = true)]
    database_url: Option<String>,
    /// PostgreSQL pool size (plus one connection for lease renewals); see the README for
    /// what a worker needs.
    #[arg(
        long,
        env = "PAYSAGA_MAX_CONNECTIONS",
        global = true,
        default_value_t = 16,
        value_parser = clap::value_parser!(u32).range(2..)
    )]
    max_connections: u32,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Apply database migrations.
    Migrate,
    /// Run a worker (and its HTTP server) until SIGTERM/SIGINT.
    Worker(WorkerArgs),
    /// Submit or list workflow definitions.
    #[command(subcommand)]
    Definitions(DefinitionsCommand),
    /// Start a saga; prints its id. With --input-file: one saga per line of a JSON Lines or
    /// CSV file, idempotently (running the file again starts nothing new).
    Start {
        /// Workflow name.
        workflow: String,
        /// Input as JSON, @FILE to read it from a file, or - to read it from stdin.
        #[arg(long, required_unless_present = "input_file")]
        input: Option<String>,
        /// Idempotency key: starting again with the same key returns the same saga.
        #[arg(long, conflicts_with = "input_file")]
        key: Option<String>,
        /// Definition version (default: latest).
        #[arg(long, conflicts_with = "input_file")]
        version: Option<u32>,
        /// Bulk start: one saga per line of FILE (JSON Lines, or CSV with a header line; CSV
        /// cells are strings unless the column says `name:integer`, `name:boolean` or
        /// `name:json`; `a.b` columns nest). Prints a summary: started, already existed,
        /// refused (line number and reason); exits 4 if a line was refused.
        #[arg(long, value_name = "FILE", conflicts_with = "input")]
        input_file: Option<PathBuf>,
        /// With --input-file: the field (JSON Lines) or column (CSV) holding each line's
        /// idempotency key.
        #[arg(long, default_value = "key", requires = "input_file")]
        key_column: String,
        /// With --input-file: the file's format (default: csv for a .csv file, else jsonl).
        #[arg(long, value_enum, requires = "input_file")]
        format: Option<bulk_start::Format>,
        /// With --input-file: the summary as JSON.
        #[arg(long, requires = "input_file")]
        json: bool,
    },
    /// List sagas (filters, sorting, pagination; `--stuck-for` finds stuck ones).
    List {
        #[command(flatten)]
        filter: operate::FilterArgs,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Show a saga: input (secrets redacted), current step and why it is there, outputs,
    /// and its history as a timeline.
    Show {
        /// Saga id.
        id: Uuid,
        /// JSON output.
        #[arg(long)]
        json: bool,
        /// Print account numbers, IBANs and other redacted fields as stored; recorded in the
        /// saga's history (`data_revealed`, with --reason).
        #[arg(long, requires = "reason")]
        reveal: bool,
        /// Why the data is revealed (required with --reveal).
        #[arg(long)]
        reason: Option<String>,
        /// Then stream the timeline live: new history rows as they are written, until no
        /// worker moves the saga any more (it ended or waits for an operator) or Ctrl-C.
        #[arg(long, conflicts_with = "json")]
        follow: bool,
    },
    /// Counts by workflow and status, sagas per step, oldest waiting, retries.
    Stats {
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Run the current step now, resetting its backoff (one saga, or a filter).
    Retry(operate::ActionArgs),
    /// Cancel: compensations of completed steps run (one saga, or a filter).
    Cancel(operate::ActionArgs),
    /// Resume a saga parked for an operator (one saga, or a filter).
    Resume(operate::ActionArgs),
    /// Assert a step's effect happened (e.g. checked on the provider's dashboard) and
    /// supply its output; the saga moves on.
    Skip {
        /// Saga id.
        id: Uuid,
        /// The current step's name.
        #[arg(long)]
        step: String,
        /// The step's output as JSON (what later steps read).
        #[arg(long)]
        output: String,
        /// Why (recorded in history).
        #[arg(long)]
        reason: String,
    },
    /// Deliver an event by hand to a waiting saga.
    Deliver {
        /// Saga id.
        id: Uuid,
        /// Event type (one the saga waits for).
        #[arg(long)]
        event: String,
        /// Event body as JSON.
        #[arg(long, default_value = "{}")]
        payload: String,
        /// Why (recorded in history).
        #[arg(long)]
        reason: String,
        /// How long to wait for a worker to handle the event before reporting what the step
        /// did with it (moved on, or waits again because the provider disagrees).
        #[arg(long, default_value = "15s")]
        wait: humantime::Duration,
    },
    /// The webhook inbox: list, show, replay.
    #[command(subcommand)]
    Events(operate::EventsCommand),
    /// Run sagas end to end in one process against the provider sandbox and print what
    /// happened (a SQLite file of its own when DATABASE_URL is not set). Development builds
    /// only (feature `dev`).
    #[cfg(feature = "dev")]
    Demo,
    /// Run the provider sandbox: the Lumanu, Blaaiz and Lean APIs with a money ledger,
    /// signed webhooks and fault injection. Development builds only (feature `dev`).
    #[cfg(feature = "dev")]
    Sandbox(paysaga_sandbox::cli::SandboxArgs),
    /// Documents (e.g. KYC scans) stored in the database for saga inputs: put, show, get.
    #[command(subcommand)]
    Documents(documents::DocumentsCommand),
    /// End a saga that is not over (parked, or moving while no worker holds it) with the
    /// outcome you checked at the provider: status `closed`; nothing is undone, unless
    /// `--compensate`: its completed steps are undone first, then it ends `closed`.
    Close(operate_actions::CloseArgs),
    /// Run a saga again from a step (the current one or earlier), optionally with its input
    /// patched (e.g. a corrected bank account); earlier outputs are kept.
    Reset(operate_actions::ResetArgs),
    /// Every operator action across sagas (refused ones included), newest last.
    Audit(operate_actions::AuditArgs),
    /// The step kinds this build knows: each one's parameters (type, required or not) and
    /// output, as `start` checks them. No database needed.
    Kinds {
        /// Only this kind.
        kind: Option<String>,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Retention: delete sagas that finished (completed, compensated, cancelled, closed) before a
    /// cut-off, with their history, waits, consumed events and documents, in batches (each
    /// its own short transaction). Sagas parked for an operator are never deleted.
    Prune {
        /// Cut-off age, e.g. `90d`: sagas that finished longer ago than this are deleted.
        #[arg(long)]
        finished_before: humantime::Duration,
        /// Sagas per batch (one transaction each).
        #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(i64).range(1..=100_000))]
        batch: i64,
        /// Only count the sagas that would be deleted.
        #[arg(long)]
        dry_run: bool,
    },
    /// The operator web console: overview, saga list and pages (live timeline), inbox, and the
    /// operator actions (reason, confirmation, "still where you saw it" check). Needs
    /// PAYSAGA_CONSOLE_TOKENS (or --tokens-file) or a trusted proxy's identity header.
    Console(console::ConsoleArgs),
    /// Compare the sagas with what the providers report: payouts the provider says paid,
    /// failed or reversed while the saga says otherwise, provider objects carrying our
    /// reference that no saga owns, money at the provider no saga accounts for. Stores the run
    /// (`--last` prints the last one); exit 7 when drift is found.
    Reconcile(reconcile::ReconcileArgs),
}

#[derive(Debug, Subcommand)]
enum DefinitionsCommand {
    /// Validate and store definition files (TOML).
    Submit {
        /// Files.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// List stored definitions.
    List {
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Args)]
struct WorkerArgs {
    /// Steps run at once (at least 1).
    #[arg(long, env = "PAYSAGA_CONCURRENCY", default_value_t = 16,
          value_parser = clap::value_parser!(u32).range(1..))]
    concurrency: u32,
    /// HTTP address for webhooks, probes and metrics.
    #[arg(long, env = "PAYSAGA_HTTP_ADDR", default_value = "127.0.0.1:8080")]
    http_addr: SocketAddr,
    /// A label for this worker (leases use an id unique per process start).
    #[arg(long, env = "PAYSAGA_WORKER_ID")]
    worker_id: Option<String>,
    /// Lease length.
    #[arg(long, env = "PAYSAGA_LEASE_TTL", default_value = "30s")]
    lease_ttl: humantime::Duration,
    /// Longest sleep without a notification.
    #[arg(long, env = "PAYSAGA_IDLE_POLL", default_value = "5s")]
    idle_poll: humantime::Duration,
    /// Time in-flight steps get after SIGTERM.
    #[arg(long, env = "PAYSAGA_SHUTDOWN_GRACE", default_value = "30s")]
    shutdown_grace: humantime::Duration,
    /// Do not apply migrations at start (run `paysaga migrate` as a separate job).
    #[arg(long, env = "PAYSAGA_NO_MIGRATE")]
    no_migrate: bool,
    /// How long documents keep their content after their saga reached a final status.
    #[arg(long, env = "PAYSAGA_DOCUMENT_RETENTION", default_value = "7d")]
    document_retention: humantime::Duration,
    /// How often the operator gauges of /metrics are computed (by one worker) and read.
    #[arg(long, env = "PAYSAGA_GAUGE_EVERY", default_value = "15s")]
    gauge_every: humantime::Duration,
    /// An open saga without progress for this long counts in `paysaga_sagas_stuck`.
    #[arg(long, env = "PAYSAGA_STUCK_AFTER", default_value = "1h")]
    stuck_after: humantime::Duration,
    /// Automatic retention (off unless given, e.g. `90d`): sagas that finished (completed,
    /// compensated, cancelled; never parked ones) longer ago are deleted with their history,
    /// waits, consumed events and documents, in small batches by one worker at a time (as
    /// `paysaga prune`).
    #[arg(long, env = "PAYSAGA_RETENTION")]
    retention: Option<humantime::Duration>,
    /// Lumanu requests allowed across every worker (per credential), e.g. `20/s` or
    /// `20/s,burst=40`; unlimited when unset.
    #[arg(long, env = "PAYSAGA_LUMANU_RATE_LIMIT")]
    lumanu_rate_limit: Option<rate_limits::RateLimit>,
    /// Blaaiz requests allowed across every worker (per credential), e.g. `2/s`.
    #[arg(long, env = "PAYSAGA_BLAAIZ_RATE_LIMIT")]
    blaaiz_rate_limit: Option<rate_limits::RateLimit>,
    /// Lean requests allowed across every worker (per credential), e.g. `10/s`.
    #[arg(long, env = "PAYSAGA_LEAN_RATE_LIMIT")]
    lean_rate_limit: Option<rate_limits::RateLimit>,
    /// Longest a request waits for a slot of its provider's rate limit before its step retries
    /// later ("waiting for provider capacity"); keep it below the steps' attempt timeout.
    #[arg(long, env = "PAYSAGA_RATE_LIMIT_MAX_WAIT", default_value = "10s")]
    rate_limit_max_wait: humantime::Duration,
    /// How often one worker (the holder of the reconciler lease) reconciles the sagas with the
    /// configured providers, as `paysaga reconcile`; `0s` turns it off. Every worker exports
    /// the last run's findings as `paysaga_drift{kind}`.
    #[arg(long, env = "PAYSAGA_RECONCILE_EVERY", default_value = "15m")]
    reconcile_every: humantime::Duration,
    /// The periodic reconciliation looks at sagas (and provider objects) created this long ago
    /// at most.
    #[arg(long, env = "PAYSAGA_RECONCILE_WINDOW", default_value = "7d")]
    reconcile_window: humantime::Duration,
    /// The periodic reconciliation's `--grace` (see `paysaga reconcile --help`).
    #[arg(long, env = "PAYSAGA_RECONCILE_GRACE", default_value = "30m")]
    reconcile_grace: humantime::Duration,
    /// Also serve the operator console (`paysaga console`) on the HTTP address, configured by
    /// the same `PAYSAGA_CONSOLE_*` variables (tokens or a trusted identity header are
    /// required). The address also receives the providers' webhooks: expose it only as the
    /// console's own deployment would be.
    #[arg(long, env = "PAYSAGA_WORKER_CONSOLE")]
    console: bool,
}

/// The built-in `noop.sleep` plus the given provider step kinds.
fn registry(kinds: Vec<Arc<dyn StepKind>>) -> Registry {
    let mut registry = Registry::new();
    registry.register(noop::Sleep);
    for kind in kinds {
        registry.register_arc(kind);
    }
    registry
}

/// `--database-url` / `DATABASE_URL`, else the file named by `DATABASE_URL_FILE`
/// (Kubernetes secrets, systemd credentials).
fn database_url(flag: Option<&str>) -> Result<Option<String>> {
    if let Some(url) = flag {
        return Ok(Some(url.to_string()));
    }
    match std::env::var_os("DATABASE_URL_FILE") {
        Some(path) => {
            let text = std::fs::read_to_string(&path).with_context(|| {
                format!(
                    "cannot read DATABASE_URL_FILE {}",
                    std::path::Path::new(&path).display()
                )
            })?;
            Ok(Some(text.trim_end_matches(['\n', '\r']).to_string()))
        }
        None => Ok(None),
    }
}

/// An engine for commands that validate and store but never run steps: every provider's
/// kinds are known (for validation) without any provider secret.
/// Refused when the database schema is older or newer than this build.
async fn engine(db: &Db<'_>) -> Result<Engine> {
    let engine = engine_with(db, paysaga_providers::steps::validation_kinds()).await?;
    check_schema(&engine).await?;
    Ok(engine)
}

/// The database schema must be the one this build knows (the worker and every command but
/// `migrate` check it).
async fn check_schema(engine: &Engine) -> Result<()> {
    let (applied, known) = engine
        .store()
        .schema_versions()
        .await
        .context("cannot read the schema version")?;
    match applied {
        Some(v) if v > known => Err(exit::SchemaMismatch(format!(
            "the database schema (migration {v}) is newer than this build knows ({known}); run a newer paysaga or roll the database back"
        ))
        .into()),
        Some(v) if v == known => Ok(()),
        other => Err(exit::SchemaMismatch(format!(
            "the database schema is at {}, this build needs {known}: run `paysaga migrate` first",
            other.map_or("no migration".to_string(), |v| format!("migration {v}"))
        ))
        .into()),
    }
}

/// Where the database is and how to connect to it.
#[derive(Debug, Clone, Copy)]
struct Db<'a> {
    url: Option<&'a str>,
    max_connections: u32,
}

async fn engine_with(db: &Db<'_>, kinds: Vec<Arc<dyn StepKind>>) -> Result<Engine> {
    let url = db
        .url
        .context("no database: set DATABASE_URL (or DATABASE_URL_FILE) or pass --database-url")?;
    // postgres:// or postgresql:// for PostgreSQL, sqlite://FILE for the embedded store.
    let options = paysaga_store::ConnectOptions::default().max_connections(db.max_connections);
    let store = paysaga_store::connect_with(url, &options)
        .await
        .map_err(anyhow::Error::from)
        .map_err(explain_tls)
        .with_context(|| format!("cannot open the database at {}", redact_url(url)))
        .map_err(|e| {
            // A URL this build cannot use is not an unreachable database.
            match e.downcast_ref::<paysaga_store::Error>() {
                Some(paysaga_store::Error::Database(_)) => e.context(exit::Unreachable(
                    "cannot connect to the database (exit 5)".to_string(),
                )),
                _ => e,
            }
        })?;
    let engine = Engine::new(store, registry(kinds));
    Ok(engine.with_operator_detail(operate_actions::operator_detail()))
}

/// Says what to check when the connection failed in TLS (the cause, e.g. `invalid peer
/// certificate: UnknownIssuer`, follows in the chain).
fn explain_tls(err: anyhow::Error) -> anyhow::Error {
    let text = format!("{err:#}");
    if ["TLS", "SSL", "certificate", "sslrootcert"]
        .iter()
        .any(|w| text.contains(w))
    {
        err.context(
            "TLS to the database failed: check that sslrootcert names the CA (PEM) that signed \
             the server's certificate and that the URL's host is a name in that certificate",
        )
    } else {
        err
    }
}

/// Hides a password in a URL for messages.
fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            match creds.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..s + 3], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

/// Built-in definitions are available without a submission.
async fn ensure_builtins(engine: &Engine) -> Result<()> {
    engine
        .submit_definition(&noop::noop_definition())
        .await
        .context("cannot store the built-in noop definition")?;
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    exit::quiet_on_broken_pipe();
    match run().await {
        Ok(()) => ExitCode::from(exit::OK),
        Err(err) => {
            eprintln!("Error: {err:?}");
            ExitCode::from(exit::code(&err))
        }
    }
}

async fn run() -> Result<()> {
    let cli = Cli::parse();
    // The demo prints its own progress on stdout: only warnings and errors go to stderr.
    // With the `otel` feature and an OTLP endpoint, spans are exported too; `_traces` flushes
    // them when this function returns.
    let _traces = paysaga_log::init_with_traces(
        match cli.command {
            #[cfg(feature = "dev")]
            Command::Demo => "warn",
            _ => "info,sqlx=warn",
        },
        "paysaga",
    );
    let url = database_url(cli.database_url.as_deref())?;
    let db = Db {
        url: url.as_deref(),
        max_connections: cli.max_connections,
    };
    let db = &db;
    match cli.command {
        Command::Migrate => {
            let engine = engine_with(db, paysaga_providers::steps::validation_kinds()).await?;
            engine.store().migrate().await.context("migration failed")?;
            ensure_builtins(&engine).await?;
            println!("migrations applied");
        }
        Command::Worker(args) => run_worker(db, args).await?,
        Command::Definitions(DefinitionsCommand::Submit { files }) => {
            let engine = engine(db).await?;
            for file in files {
                let text = std::fs::read_to_string(&file)
                    .with_context(|| format!("cannot read {}", file.display()))?;
                let def =
                    Definition::from_toml(&text).with_context(|| format!("{}", file.display()))?;
                let rec = engine
                    .submit_definition(&def)
                    .await
                    .with_context(|| format!("{} refused", file.display()))?;
                println!(
                    "{} v{} {} ({})",
                    rec.name,
                    rec.version,
                    &rec.content_hash[..12],
                    file.display()
                );
            }
        }
        Command::Definitions(DefinitionsCommand::List { json }) => {
            let engine = engine(db).await?;
            let defs = engine.store().list_definitions().await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&defs)?);
            } else {
                println!("{:<24} {:>7}  {:<12}  STEPS", "NAME", "VERSION", "HASH");
                for d in defs {
                    let steps: Vec<&str> =
                        d.definition.steps.iter().map(|s| s.name.as_str()).collect();
                    println!(
                        "{:<24} {:>7}  {:<12}  {}",
                        d.name,
                        d.version,
                        &d.content_hash[..12],
                        steps.join(" > ")
                    );
                }
            }
        }
        Command::Start {
            workflow,
            input_file: Some(file),
            key_column,
            format,
            json,
            ..
        } => {
            let engine = engine(db).await?;
            ensure_builtins(&engine).await?;
            bulk_start::run(
                &engine,
                &workflow,
                &file,
                format,
                &key_column,
                &operate::actor(),
                json,
            )
            .await?
        }
        Command::Start {
            workflow,
            input,
            key,
            version,
            ..
        } => {
            let engine = engine(db).await?;
            ensure_builtins(&engine).await?;
            let input = read_input(input.as_deref().unwrap_or("-"))?;
            let started = engine
                .start_with(StartRequest {
                    workflow: workflow.clone(),
                    version,
                    input,
                    idempotency_key: key,
                    actor: operate::actor(),
                })
                .await
                .with_context(|| format!("cannot start workflow {workflow}"))?;
            println!("{}", started.saga_id);
        }
        Command::List { filter, json } => listing::list(&engine(db).await?, &filter, json).await?,
        Command::Show {
            id, follow: true, ..
        } => operate_visibility::follow(&engine(db).await?, id).await?,
        Command::Show {
            id,
            json,
            reveal,
            reason,
            ..
        } => {
            let reveal = privacy::Reveal::from_flags(reveal, reason.as_deref())?;
            operate::show(&engine(db).await?, id, json, reveal.as_ref()).await?
        }
        Command::Stats { json } => listing::stats(&engine(db).await?, json).await?,
        Command::Retry(args) => {
            bulk::act(&engine(db).await?, operate::Action::Retry, &args).await?
        }
        Command::Cancel(args) => {
            bulk::act(&engine(db).await?, operate::Action::Cancel, &args).await?
        }
        Command::Resume(args) => {
            bulk::act(&engine(db).await?, operate::Action::Resume, &args).await?
        }
        Command::Skip {
            id,
            step,
            output,
            reason,
        } => {
            let output: Value =
                serde_json::from_str(&output).context("--output is not valid JSON")?;
            let saga = engine(db)
                .await?
                .skip(id, &step, output, &operate::actor(), &reason)
                .await
                .with_context(|| format!("cannot skip step {step} of saga {id}"))?;
            println!(
                "skipped step {step}: saga {} is now {} at step #{}",
                saga.id,
                saga.status,
                saga.step_index + 1
            );
        }
        Command::Deliver {
            id,
            event,
            payload,
            reason,
            wait,
        } => {
            let payload: Value =
                serde_json::from_str(&payload).context("--payload is not valid JSON")?;
            let engine = engine(db).await?;
            let before = operate_visibility::last_history_id(&engine, id).await?;
            let d = engine
                .deliver_manual(id, &event, payload, &operate::actor(), &reason)
                .await
                .with_context(|| format!("cannot deliver {event} to saga {id}"))?;
            println!(
                "event stored as inbox {} and delivered to saga {}",
                d.inbox_id,
                d.matched_saga
                    .map(|s| s.to_string())
                    .unwrap_or_else(|| "(none)".into())
            );
            operate_visibility::report_delivery(&engine, id, before, wait.into()).await?;
        }
        Command::Events(cmd) => operate::events(&engine(db).await?, cmd).await?,
        #[cfg(feature = "dev")]
        Command::Demo => demo::run(db.url).await?,
        #[cfg(feature = "dev")]
        Command::Sandbox(args) => {
            let config = args
                .config()
                .map_err(anyhow::Error::msg)
                .context("sandbox configuration")?;
            paysaga_sandbox::serve(config)
                .await
                .context("sandbox failed")?;
        }
        Command::Documents(cmd) => documents::run(engine(db).await?, cmd).await?,
        Command::Close(args) => operate_actions::close(&engine(db).await?, &args).await?,
        Command::Reset(args) => operate_actions::reset(&engine(db).await?, &args).await?,
        Command::Audit(args) => operate_actions::audit(&engine(db).await?, &args).await?,
        Command::Kinds { kind, json } => kinds::run(
            &registry(paysaga_providers::steps::validation_kinds()),
            kind.as_deref(),
            json,
        )?,
        Command::Prune {
            finished_before,
            batch,
            dry_run,
        } => prune(&engine(db).await?, finished_before.into(), batch, dry_run).await?,
        Command::Console(args) => {
            let auth = console::auth(&args)?;
            console::run(engine(db).await?, args, auth).await?
        }
        Command::Reconcile(args) => {
            let providers = paysaga_providers::ProvidersConfig::from_env().context(
                "provider configuration (PAYSAGA_LUMANU_*, PAYSAGA_BLAAIZ_*, PAYSAGA_LEAN_*) is incomplete",
            )?;
            reconcile::command(&engine(db).await?, &providers.clients(), &args).await?
        }
    }
    Ok(())
}

/// `paysaga prune`: batches until one deletes less than a full batch; waits while a
/// worker's automatic retention holds the retention lock.
async fn prune(engine: &Engine, older_than: Duration, batch: i64, dry_run: bool) -> Result<()> {
    let store = engine.store();
    let age = match older_than.as_secs() {
        s if s > 0 && s.is_multiple_of(86_400) && older_than.subsec_nanos() == 0 => {
            format!("{} days", s / 86_400)
        }
        _ => humantime::format_duration(older_than).to_string(),
    };
    if dry_run {
        let n = store
            .count_prunable(older_than)
            .await
            .context("cannot count the finished sagas to prune")?;
        println!("dry run: {n} finished sagas finished more than {age} ago would be deleted");
        return Ok(());
    }
    let mut total = paysaga_store::Pruned::default();
    let mut batches = 0_u64;
    loop {
        let p = store.prune_finished(older_than, batch).await.with_context(|| {
            format!(
                "cannot delete finished sagas (after {} deleted in {batches} batches); run the command again to go on",
                total.sagas
            )
        })?;
        if p.busy {
            eprintln!("another pruner (a worker's --retention) holds the retention lock; waiting");
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        }
        batches += 1;
        total.sagas += p.sagas;
        total.history += p.history;
        total.waits += p.waits;
        total.events += p.events;
        total.documents += p.documents;
        if p.sagas < batch as u64 {
            break;
        }
    }
    println!(
        "deleted {} sagas finished more than {age} ago ({batches} batches), with {} history rows, {} waits, {} events and {} documents",
        total.sagas, total.history, total.waits, total.events, total.documents
    );
    Ok(())
}

fn read_input(arg: &str) -> Result<Value> {
    let text = match arg.strip_prefix('@') {
        Some(path) => std::fs::read_to_string(path)
            .with_context(|| format!("cannot read input file {path}"))?,
        None if arg == "-" => {
            std::io::read_to_string(std::io::stdin()).context("cannot read the input from stdin")?
        }
        None => arg.to_string(),
    };
    serde_json::from_str(&text).context("--input is not valid JSON")
}

async fn run_worker(db: &Db<'_>, args: WorkerArgs) -> Result<()> {
    // `--console`: its authentication is checked before anything else is touched.
    let console_setup = if args.console {
        let console_args = console::args_from_env()?;
        let auth = console::auth(&console_args)
            .context("--console: the console needs its authentication (PAYSAGA_CONSOLE_*)")?;
        Some((console_args, auth))
    } else {
        None
    };
    let providers = paysaga_providers::ProvidersConfig::from_env().context(
        "provider configuration (PAYSAGA_LUMANU_*, PAYSAGA_BLAAIZ_*, PAYSAGA_LEAN_*) is incomplete",
    )?;
    // A production build (without the `dev` feature) never runs on the sandbox's public
    // development credentials: they would mean a fake provider, or a real one anyone can call.
    #[cfg(not(feature = "dev"))]
    {
        let dev = paysaga_providers::development_credentials(|name| std::env::var(name).ok());
        if !dev.is_empty() {
            bail!(
                "refusing to start: {} hold the sandbox's well-known development credentials, \
                 which a production build does not accept; set the provider's real credentials \
                 (docs/PROVIDER-CONTRACTS.md), or use a development build (feature `dev`) \
                 against `paysaga sandbox`",
                dev.join(", ")
            );
        }
    }
    let call_metrics = provider_metrics::ProviderMetrics::new();
    let limits = [
        (paysaga_providers::Provider::Lumanu, args.lumanu_rate_limit),
        (paysaga_providers::Provider::Blaaiz, args.blaaiz_rate_limit),
        (paysaga_providers::Provider::Lean, args.lean_rate_limit),
    ]
    .into_iter()
    .filter_map(|(p, limit)| limit.map(|l| (p, l)))
    .collect::<std::collections::HashMap<_, _>>();
    for (provider, limit) in &limits {
        tracing::info!(%provider, %limit, "provider rate limit shared by every worker");
    }
    let budget = rate_limits::StoreBudget::new(limits, args.rate_limit_max_wait.into());
    let kinds = paysaga_providers::steps::step_kinds(
        &providers.clients_budgeted(call_metrics.clone(), budget.clone()),
    );
    tracing::info!(
        providers = ?providers.configured().iter().map(|p| p.as_str()).collect::<Vec<_>>(),
        step_kinds = kinds.len(),
        "providers configured"
    );
    let engine = engine_with(db, kinds).await?;
    call_metrics.attach(engine.metrics().clone());
    budget.attach(engine.store().clone());
    if !args.no_migrate {
        engine
            .store()
            .migrate()
            .await
            .context("migration failed (use --no-migrate if migrations run as a separate job)")?;
    }
    check_schema(&engine).await?;
    ensure_builtins(&engine).await?;
    let mut config = WorkerConfig::default();
    config.name = args.worker_id.unwrap_or_else(|| "worker".to_string());
    config.concurrency = args.concurrency as usize;
    config.lease_ttl = args.lease_ttl.into();
    config.idle_poll = args.idle_poll.into();
    config.shutdown_grace = args.shutdown_grace.into();
    // A marked request may be in flight for half the lease (its send-by) plus the provider's
    // request timeout; 5 s more for clocks and network.
    config.effect_window = Duration::from(args.lease_ttl) / 2
        + providers.longest_request_timeout()
        + Duration::from_secs(5);
    config.document_retention = args.document_retention.into();
    config.gauges.every = args.gauge_every.into();
    config.gauges.stuck_after = args.stuck_after.into();
    config.retention = args.retention.map(Into::into);
    if config.lease_ttl < Duration::from_millis(300) {
        bail!("--lease-ttl must be at least 300ms");
    }
    let listener = tokio::net::TcpListener::bind(args.http_addr)
        .await
        .with_context(|| format!("cannot listen on {}", args.http_addr))?;
    tracing::info!(addr = %listener.local_addr()?, "HTTP server listening");
    let verifiers = paysaga_providers::endpoint::verifiers(&providers);
    tracing::info!(providers = ?verifiers.iter().map(|v| v.provider().to_string()).collect::<Vec<_>>(), "webhook endpoints");
    let mut app = paysaga_runtime::http::router(
        engine.clone(),
        verifiers,
        paysaga_runtime::http::DEFAULT_BODY_LIMIT,
    );
    if let Some((console_args, auth)) = console_setup {
        tracing::info!(
            actions = !console_args.no_actions,
            "operator console served on the HTTP address"
        );
        app = app.merge(console::routes(engine.clone(), &console_args, auth));
    }
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let http = tokio::spawn({
        let mut rx = stop_rx.clone();
        async move {
            // Header-read and request timeouts, a connection cap (axum::serve has none).
            let limits = paysaga_runtime::http::ServeConfig::default();
            paysaga_runtime::http::serve(listener, app, limits, async move {
                let _ = rx.wait_for(|s| *s).await;
            })
            .await
        }
    });
    let reconciler = (!Duration::from(args.reconcile_every).is_zero()
        && !providers.configured().is_empty())
    .then(|| {
        reconcile::spawn_periodic(
            engine.clone(),
            providers.clients_budgeted(call_metrics.clone(), budget.clone()),
            args.reconcile_every.into(),
            args.reconcile_window.into(),
            args.reconcile_grace.into(),
            format!("worker:{}", config.name),
            stop_rx.clone(),
        )
    });
    let worker = engine.worker(config);
    let shutdown = {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutdown signal received; draining (a second signal exits at once)");
        let _ = stop_tx.send(true);
        wait_for_signal().await;
        tracing::warn!("second signal: exiting now");
        std::process::exit(130);
    });
    worker.run(shutdown).await.context("worker failed")?;
    let _ = http.await;
    if let Some(reconciler) = reconciler {
        reconciler.abort();
    }
    Ok(())
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        let _ = tokio::signal::ctrl_c().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_redacted_from_urls() {
        assert_eq!(
            redact_url("postgres://u:secret@h/db"),
            "postgres://u:***@h/db"
        );
        assert_eq!(redact_url("postgres://u@h/db"), "postgres://u@h/db");
    }
}
