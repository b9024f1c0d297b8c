//! Starting sagas from Rust values ([`Engine::start_typed`]) and many at once
//! ([`Engine::start_many`], [`Engine::start_each`]: bulk starts, e.g. `paysaga start
//! WORKFLOW --input-file FILE`).

use futures::stream::{self, Stream, StreamExt};
use serde::Serialize;
use serde_json::Value;

use crate::engine::{Engine, StartRequest, Started};
use crate::error::Error;

/// Starts run at once by [`Engine::start_each`]: a few, so a file of thousands of lines
/// keeps a few database connections busy, not the whole pool.
pub const BULK_START_CONCURRENCY: usize = 8;

/// One saga of a bulk start: its idempotency key and its input.
#[derive(Debug, Clone, PartialEq)]
pub struct BulkItem {
    /// Idempotency key: starting the same item again returns its saga (`created: false`).
    pub key: String,
    /// The saga's input.
    pub input: Value,
}

impl<K: Into<String>> From<(K, Value)> for BulkItem {
    fn from((key, input): (K, Value)) -> Self {
        BulkItem {
            key: key.into(),
            input,
        }
    }
}

impl Engine {
    /// Starts the latest version of `workflow` with an input serialized from a Rust value (a
    /// struct of the application's), as [`Engine::start`]: checked against every step's
    /// parameters, idempotent on `idempotency_key`. [`Error::InputNotSerializable`] if the
    /// value has no JSON form (nothing is stored).
    ///
    /// ```no_run
    /// # async fn demo(engine: paysaga_runtime::Engine) -> Result<(), paysaga_runtime::Error> {
    /// #[derive(serde::Serialize)]
    /// struct NoopInput {
    ///     delay_ms: u64,
    /// }
    /// let started = engine
    ///     .start_typed("noop", &NoopInput { delay_ms: 5 }, Some("order-42"))
    ///     .await?;
    /// println!("saga {} (new: {})", started.saga_id, started.created);
    /// # Ok(()) }
    /// ```
    pub async fn start_typed<I: Serialize + ?Sized>(
        &self,
        workflow: &str,
        input: &I,
        idempotency_key: Option<&str>,
    ) -> Result<Started, Error> {
        let input = serde_json::to_value(input).map_err(|e| Error::InputNotSerializable {
            workflow: workflow.to_string(),
            reason: e.to_string(),
        })?;
        self.start(workflow, input, idempotency_key).await
    }

    /// Starts one saga of the latest version of `workflow` per item, each idempotent on its
    /// key (an item started before answers its saga with `created: false`, so running the
    /// same list again starts nothing new), and returns one result per item, in order. A
    /// refused item (bad input, a key reused with another input) does not stop the others.
    /// `actor` is written in each saga's history. See [`Engine::start_each`] to follow
    /// progress.
    ///
    /// ```no_run
    /// # async fn demo(engine: paysaga_runtime::Engine) -> Result<(), paysaga_runtime::Error> {
    /// use serde_json::json;
    /// let results = engine
    ///     .start_many(
    ///         "noop",
    ///         "payouts-batch",
    ///         [("po-1", json!({"delay_ms": 0})), ("po-2", json!({"delay_ms": "soon"}))],
    ///     )
    ///     .await;
    /// assert!(results[0].is_ok());
    /// assert!(results[1].is_err()); // refused: delay_ms is not a number
    /// # Ok(()) }
    /// ```
    pub async fn start_many<I, T>(
        &self,
        workflow: &str,
        actor: &str,
        items: I,
    ) -> Vec<Result<Started, Error>>
    where
        I: IntoIterator<Item = T>,
        T: Into<BulkItem>,
    {
        self.start_each(workflow, actor, items).collect().await
    }

    /// [`Engine::start_many`] as a stream: one result per item, in the items' order, as
    /// they are started ([`BULK_START_CONCURRENCY`] at a time), so a caller can report
    /// progress. The items are read lazily: a long file need not be held in memory.
    ///
    /// ```no_run
    /// # async fn demo(engine: paysaga_runtime::Engine) {
    /// use futures::StreamExt;
    /// let items = (1..=1000).map(|i| (format!("po-{i}"), serde_json::json!({"delay_ms": 0})));
    /// let mut results = std::pin::pin!(engine.start_each("noop", "payouts-batch", items));
    /// let mut done = 0;
    /// while let Some(result) = results.next().await {
    ///     done += 1;
    ///     if let Err(e) = result {
    ///         eprintln!("item {done}: {e}");
    ///     }
    /// }
    /// # }
    /// ```
    pub fn start_each<'a, I, T>(
        &'a self,
        workflow: &'a str,
        actor: &'a str,
        items: I,
    ) -> impl Stream<Item = Result<Started, Error>> + 'a
    where
        I: IntoIterator<Item = T>,
        I::IntoIter: 'a,
        T: Into<BulkItem>,
    {
        stream::iter(items)
            .map(move |item| {
                let item: BulkItem = item.into();
                self.start_with(StartRequest {
                    workflow: workflow.to_string(),
                    version: None,
                    input: item.input,
                    idempotency_key: Some(item.key),
                    actor: actor.to_string(),
                })
            })
            .buffered(BULK_START_CONCURRENCY)
    }
}
