//! `paysaga console`: the operator web console. Server-rendered HTML (maud) of what the CLI
//! shows (the same listing queries, the same "why" line, the same redaction) and the same
//! Engine operator actions, each with a required reason, a confirmation that states its
//! consequence and the "still where you saw it" check. Read pages work without JavaScript; a
//! small script (served from `/assets/`, no build chain) refreshes a saga's page live.
//!
//! Never open by default: tokens (login form or `Authorization: Bearer`), or a trusted
//! proxy's identity header when configured (see [`auth`]).

mod actions;
mod auth;
mod pages;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use clap::Args;
use paysaga_runtime::Engine;
use secrecy::SecretString;

/// `paysaga console`.
#[derive(Debug, Args)]
pub struct ConsoleArgs {
    /// Address to listen on.
    #[arg(long, env = "PAYSAGA_CONSOLE_ADDR", default_value = "127.0.0.1:8090")]
    pub addr: SocketAddr,
    /// A file of token entries `NAME=ROLE:TOKEN` (ROLE: viewer or operator), one a line;
    /// `PAYSAGA_CONSOLE_TOKENS` holds the same entries separated by commas. Tokens are never
    /// given as flags (they would show in the process list).
    #[arg(long, env = "PAYSAGA_CONSOLE_TOKENS_FILE")]
    pub tokens_file: Option<PathBuf>,
    /// Trust this request header (e.g. X-Forwarded-User, set by oauth2-proxy) as the user's
    /// identity. Only behind a proxy that authenticates every request and sets it: anyone who
    /// reaches the console directly could send it.
    #[arg(long, env = "PAYSAGA_CONSOLE_TRUSTED_IDENTITY_HEADER")]
    pub trusted_identity_header: Option<String>,
    /// Identities of the trusted header given the operator role (comma-separated); the others
    /// are viewers.
    #[arg(
        long,
        env = "PAYSAGA_CONSOLE_TRUSTED_OPERATORS",
        value_delimiter = ',',
        requires = "trusted_identity_header"
    )]
    pub trusted_operators: Vec<String>,
    /// The console's public origin (e.g. https://paysaga.example.com) when behind a proxy:
    /// state-changing requests must come from it; https makes the session cookie Secure.
    #[arg(long, env = "PAYSAGA_CONSOLE_ORIGIN")]
    pub origin: Option<String>,
    /// Read-only console: no action forms, actions refused (run it with a read-only database
    /// role).
    #[arg(long, env = "PAYSAGA_CONSOLE_NO_ACTIONS")]
    pub no_actions: bool,
    /// An open saga without progress for this long shows as stuck on the overview.
    #[arg(long, env = "PAYSAGA_STUCK_AFTER", default_value = "1h")]
    pub stuck_after: humantime::Duration,
    /// Serve without any authentication, read-only, to anyone who reaches the address (a
    /// laptop demo). Never in production.
    #[arg(long)]
    pub insecure_no_auth: bool,
}

/// What every handler shares.
#[derive(Debug)]
pub(crate) struct Console {
    pub engine: Engine,
    pub auth: auth::Auth,
    pub actions: bool,
    pub stuck_after: Duration,
}

type Shared = Arc<Console>;

/// The authentication `args` configure (checked before the database is opened: a console
/// without authentication never starts).
pub fn auth(args: &ConsoleArgs) -> Result<auth::Auth> {
    let tokens = match (&args.tokens_file, std::env::var("PAYSAGA_CONSOLE_TOKENS")) {
        (Some(path), _) => Some(SecretString::from(
            std::fs::read_to_string(path)
                .with_context(|| format!("cannot read the tokens file {}", path.display()))?,
        )),
        (None, Ok(text)) if !text.trim().is_empty() => Some(SecretString::from(text)),
        _ => None,
    };
    let header = args
        .trusted_identity_header
        .as_deref()
        .map(|name| -> Result<auth::TrustedHeader> {
            Ok(auth::TrustedHeader {
                name: name.parse().with_context(|| {
                    format!("--trusted-identity-header {name:?} is not a header name")
                })?,
                operators: args
                    .trusted_operators
                    .iter()
                    .map(|o| o.trim().to_string())
                    .filter(|o| !o.is_empty())
                    .collect(),
            })
        })
        .transpose()?;
    auth::Auth::new(
        tokens.as_ref(),
        header,
        args.origin.clone(),
        args.insecure_no_auth,
    )
}

/// The console's settings read from the environment alone (`PAYSAGA_CONSOLE_TOKENS`,
/// `PAYSAGA_CONSOLE_TOKENS_FILE`, `PAYSAGA_CONSOLE_TRUSTED_IDENTITY_HEADER`, ...), for a worker
/// that serves the console on its own HTTP address (`paysaga worker --console`). Without
/// authentication configured there this fails: `--insecure-no-auth` is never read from the
/// environment.
pub fn args_from_env() -> Result<ConsoleArgs> {
    #[derive(clap::Parser)]
    struct FromEnv {
        #[command(flatten)]
        args: ConsoleArgs,
    }
    use clap::Parser;
    FromEnv::try_parse_from(["paysaga-worker-console"])
        .map(|e| e.args)
        .context("the console settings in the environment (PAYSAGA_CONSOLE_*) are invalid")
}

/// The console's routes (`/`, `/sagas...`, `/inbox...`, `/login`, `/logout`, `/assets/...`),
/// each behind its authentication: what `paysaga console` serves, and what a worker started
/// with `--console` adds to its webhooks, probes and metrics (no path is shared).
pub fn routes(engine: Engine, args: &ConsoleArgs, auth: auth::Auth) -> Router {
    // Operator rows written through the console name the console (the actor names the user).
    let mut detail = serde_json::Map::new();
    detail.insert("via".into(), serde_json::json!("console"));
    let engine = engine.with_operator_detail(detail);
    router(Arc::new(Console {
        engine,
        auth,
        actions: !args.no_actions,
        stuck_after: args.stuck_after.into(),
    }))
}

/// Runs the console until SIGTERM/SIGINT.
pub async fn run(engine: Engine, args: ConsoleArgs, auth: auth::Auth) -> Result<()> {
    if args.insecure_no_auth {
        tracing::warn!(
            addr = %args.addr,
            "THE CONSOLE IS OPEN WITHOUT AUTHENTICATION (--insecure-no-auth): anyone who reaches it reads every saga"
        );
    }
    let listener = tokio::net::TcpListener::bind(args.addr)
        .await
        .with_context(|| format!("cannot listen on {}", args.addr))?;
    tracing::info!(addr = %listener.local_addr()?, actions = !args.no_actions, "console listening");
    let app = routes(engine, &args, auth);
    paysaga_runtime::http::serve(
        listener,
        app,
        paysaga_runtime::http::ServeConfig::default(),
        crate::wait_for_signal(),
    )
    .await
    .context("console server failed")
}

fn router(console: Shared) -> Router {
    Router::new()
        .route("/", get(pages::overview))
        .route("/sagas", get(pages::list))
        .route("/sagas/{id}", get(pages::saga))
        .route("/sagas/{id}/live", get(pages::saga_live))
        .route("/sagas/{id}/{action}", post(actions::act))
        .route("/inbox", get(pages::inbox))
        .route("/inbox/{id}", get(pages::event))
        .route("/login", get(pages::login_form).post(pages::login))
        .route("/logout", post(pages::logout))
        .route("/assets/console.css", get(css))
        .route("/assets/console.js", get(js))
        .layer(axum::middleware::from_fn_with_state(console.clone(), guard))
        .with_state(console)
}

/// Authentication, the cross-site check of state-changing requests, and the security headers
/// of every answer.
async fn guard(State(console): State<Shared>, mut request: Request, next: Next) -> Response {
    let path = request.uri().path().to_string();
    let public = path == "/login" || path.starts_with("/assets/");
    let mut response = if let Err(denied) = console
        .auth
        .same_origin(request.method(), request.headers())
    {
        pages::denied(&denied)
    } else if public {
        next.run(request).await
    } else {
        match console.auth.authenticate(request.headers()) {
            Ok(identity) => {
                request.extensions_mut().insert(identity);
                next.run(request).await
            }
            Err(denied) => {
                let next_url = request
                    .uri()
                    .path_and_query()
                    .map(|p| p.as_str().to_string())
                    .filter(|_| request.method() == axum::http::Method::GET);
                let mut r = pages::login_page(
                    &console,
                    next_url.as_deref(),
                    Some(match denied {
                        auth::Denied::Unauthenticated => "Sign in to use the console.",
                        auth::Denied::CrossSite(why) => why,
                    }),
                );
                *r.status_mut() = StatusCode::UNAUTHORIZED;
                r.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"paysaga console\""),
                );
                r
            }
        }
    };
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'self'; script-src 'self'; img-src 'self'; \
             connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    if !path.starts_with("/assets/") {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    response
}

async fn css() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
        include_str!("console.css"),
    )
}

async fn js() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        include_str!("console.js"),
    )
}
