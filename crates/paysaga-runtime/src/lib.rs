//! # paysaga-runtime
//!
//! The engine handle ([`Engine`]: submit definitions, start sagas idempotently, query them,
//! deliver events, cancel) and the [`Worker`] that runs sagas: it claims runnable sagas in
//! batches (`FOR UPDATE SKIP LOCKED`), holds them under a per-process fenced lease renewed by
//! one heartbeat per worker, wakes on LISTEN/NOTIFY with polling as a fallback, commits each
//! step result in one transaction that checks the fencing token, schedules durable retries,
//! polls waits that heard nothing, runs compensations in reverse, and drains on shutdown.
//!
//! ## Example
//! ```no_run
//! use std::sync::Arc;
//! use paysaga_runtime::{noop, Engine, Registry, WorkerConfig};
//! use paysaga_store::{PgStore, Store};
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let store = PgStore::connect("postgres://postgres@127.0.0.1/paysaga").await?;
//! store.migrate().await?;
//! let mut registry = Registry::new();
//! registry.register(noop::Sleep);
//! let engine = Engine::new(Arc::new(store), registry);
//! engine.submit_definition(&noop::noop_definition()).await?;
//! let started = engine.start("noop", serde_json::json!({"delay_ms": 0}), Some("order-42")).await?;
//! let worker = engine.worker(WorkerConfig::default());
//! tokio::spawn(worker.run(async { tokio::signal::ctrl_c().await.ok(); }));
//! println!("saga {}", started.saga_id);
//! # Ok(()) }
//! ```

#![warn(missing_docs)]

mod children;
mod documents;
mod effect;
mod engine;
mod error;
pub mod gauges;
pub mod http;
mod lease;
pub mod metrics;
pub mod noop;
mod registry;
mod starts;
mod trace_context;
mod worker;

pub use engine::Unrunnable;
pub use engine::{CloseSaga, Expected, ResetSaga};
pub use engine::{
    Engine, IncomingEvent, SagaView, StartRequest, Started, DEFAULT_MAX_DOCUMENT_SIZE,
    DEFAULT_WAIT_FALLBACK_POLL,
};
pub use error::Error;
pub use registry::Registry;
pub use starts::{BulkItem, BULK_START_CONCURRENCY};
pub use worker::{retention_pause, Worker, WorkerConfig, WorkerStats};
