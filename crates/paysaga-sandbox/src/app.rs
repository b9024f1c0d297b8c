//! Shared state, router assembly, scheduling of scripted progress, and the server loop.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::Router;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::auth::Tokens;
use crate::config::{Credentials, Timing};
use crate::faults::{Faults, SharedFaults};
use crate::ledger::Ledger;
use crate::webhooks::{Event, Webhooks};
use crate::{blaaiz, control, faults, lean, lumanu, Error, SandboxConfig};

/// Everything the simulated providers know. One lock, never held across an `.await`, so
/// every operation (check balance, debit, change status) is atomic.
#[derive(Debug)]
pub(crate) struct World {
    pub ledger: Ledger,
    pub lumanu: lumanu::Objects,
    pub blaaiz: blaaiz::Objects,
    pub lean: lean::Objects,
}

impl World {
    /// A fresh world with the opening balances recorded in the ledger.
    pub(crate) fn seeded() -> Self {
        let mut ledger = Ledger::default();
        let lumanu = lumanu::Objects::new();
        let blaaiz = blaaiz::Objects::new(&mut ledger);
        let lean = lean::Objects::new();
        Self {
            ledger,
            lumanu,
            blaaiz,
            lean,
        }
    }
}

/// State shared by all handlers.
#[derive(Debug)]
pub(crate) struct AppState {
    world: Mutex<World>,
    pub tokens: Tokens,
    pub webhooks: Arc<Webhooks>,
    pub faults: SharedFaults,
    pub credentials: Credentials,
    pub timing: Timing,
    pub public_url: String,
    /// Key of the signatures in pre-signed upload URLs.
    pub upload_key: secrecy::SecretString,
    pub shutdown: watch::Receiver<bool>,
    /// The request log of `/_sandbox/requests` (off unless switched on).
    pub recorder: crate::record::Recorder,
    /// Lean's payout authorisation mode (`--lean-authorization`, `PUT /_sandbox/lean/authorization`).
    lean_authorization: Mutex<lean::AuthorizationSetting>,
    /// The per-provider request limits and their counts (`/_sandbox/stats`).
    pub rate_limiter: crate::rate_limit::Limiter,
}

/// Handle passed to handlers.
pub(crate) type App = Arc<AppState>;

impl AppState {
    /// Runs `f` with the world locked.
    pub(crate) fn with<T>(&self, f: impl FnOnce(&mut World) -> T) -> T {
        let mut world = self.world.lock().unwrap_or_else(PoisonError::into_inner);
        f(&mut world)
    }

    /// Replaces the world with a freshly seeded one.
    pub(crate) fn reset(&self) {
        self.with(|w| *w = World::seeded());
    }

    /// The current Lean authorisation setting.
    pub(crate) fn lean_authorization(&self) -> lean::AuthorizationSetting {
        *self
            .lean_authorization
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Replaces the Lean authorisation setting (payments already queued stay queued).
    pub(crate) fn set_lean_authorization(&self, setting: lean::AuthorizationSetting) {
        *self
            .lean_authorization
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = setting;
    }

    /// Raises webhooks (see [`Webhooks::emit`]).
    pub(crate) fn emit(&self, events: impl IntoIterator<Item = Event>) {
        for event in events {
            self.webhooks.emit(event);
        }
    }
}

/// Completes when the shutdown signal is raised (or its sender is gone).
pub(crate) async fn until_shutdown(mut shutdown: watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}

/// Runs `f` after `delay` unless the sandbox shuts down first.
pub(crate) fn after(app: &App, delay: Duration, f: impl FnOnce(&App) + Send + 'static) {
    let app = Arc::clone(app);
    let shutdown = app.shutdown.clone();
    tokio::spawn(async move {
        tokio::select! {
            () = tokio::time::sleep(delay) => f(&app),
            () = until_shutdown(shutdown) => {}
        }
    });
}

/// A bound, not yet serving sandbox.
pub(crate) struct Bound {
    listener: TcpListener,
    router: Router,
    pub local_addr: SocketAddr,
    pub public_url: String,
    shutdown: watch::Receiver<bool>,
}

/// Binds the socket and builds the state and router.
pub(crate) async fn bind(
    config: SandboxConfig,
    shutdown: watch::Receiver<bool>,
) -> Result<Bound, Error> {
    let listener = TcpListener::bind(config.addr)
        .await
        .map_err(|source| Error::Bind {
            addr: config.addr,
            source,
        })?;
    let local_addr = listener.local_addr().map_err(|source| Error::Bind {
        addr: config.addr,
        source,
    })?;
    let public_url = match config.public_url {
        Some(url) => url.trim_end_matches('/').to_owned(),
        None if local_addr.ip().is_unspecified() => {
            format!("http://127.0.0.1:{}", local_addr.port())
        }
        None => format!("http://{local_addr}"),
    };
    let faults: SharedFaults = Arc::new(Faults::new(config.faults));
    let webhooks = Webhooks::new(
        config.webhook_base,
        config.credentials.clone(),
        config.timing.clone(),
        Arc::clone(&faults),
        shutdown.clone(),
    )
    .map_err(Error::HttpClient)?;
    let state: App = Arc::new(AppState {
        world: Mutex::new(World::seeded()),
        tokens: Tokens::default(),
        webhooks: Arc::new(webhooks),
        faults,
        credentials: config.credentials,
        timing: config.timing,
        public_url: public_url.clone(),
        upload_key: secrecy::SecretString::from(hex::encode(rand::random::<[u8; 32]>())),
        shutdown: shutdown.clone(),
        recorder: crate::record::Recorder::default(),
        lean_authorization: Mutex::new(config.lean_authorization),
        rate_limiter: crate::rate_limit::Limiter::new(&config.rate_limits),
    });
    Ok(Bound {
        listener,
        router: router(state),
        local_addr,
        public_url,
        shutdown,
    })
}

/// The whole sandbox router.
pub(crate) fn router(state: App) -> Router {
    Router::new()
        .nest("/lumanu", lumanu::router(&state))
        .nest("/blaaiz", blaaiz::router(&state))
        .nest("/lean", lean::router(&state))
        .nest("/_sandbox", control::router())
        .layer(axum::middleware::from_fn_with_state(
            Arc::clone(&state),
            faults::middleware,
        ))
        .layer(axum::middleware::from_fn_with_state(
            Arc::clone(&state),
            crate::rate_limit::middleware,
        ))
        .layer(axum::middleware::from_fn_with_state(
            Arc::clone(&state),
            crate::record::middleware,
        ))
        .with_state(state)
}

impl Bound {
    /// Serves until the shutdown signal.
    pub(crate) async fn run(self) -> Result<(), Error> {
        axum::serve(self.listener, self.router)
            .with_graceful_shutdown(until_shutdown(self.shutdown))
            .await
            .map_err(Error::Serve)
    }
}
