//! The worker's [`EffectGuard`]: a fenced, durable mark before each request whose effect the
//! provider cannot deduplicate.
//!
//! The race it closes: worker A looks for the payout its earlier attempt may have created,
//! finds none, and is about to create it; A pauses (GC, SIGSTOP, a slow database blocking its
//! heartbeats) and its lease lapses; worker B takes the saga over, looks, finds none, creates
//! the payout; A wakes and creates a second one. The provider has no idempotency key to stop
//! it. With the guard:
//! - A sends only after committing a mark under its lease (the fence refuses it once B holds
//!   the saga), and only before `send_by` = the time it checked its lease + half the lease
//!   length (the transport refuses later sends, its 401 retry included);
//! - B, finding a mark on the same step younger than the effect window (at least half the
//!   lease + the provider request timeout + a margin), does not send: the step retries once
//!   the window has closed, looking again first, and then finds A's payout if A sent it.
//!
//! The window is this process's configuration (lease length, provider timeout), so the mark
//! stores its end: a worker configured with a shorter window during a rolling change still
//! waits for the end the sender stored. Each mark (and each withdrawal) is a history row
//! written with it: which worker was about to send which step's request, and when.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use paysaga_core::{EffectGuard, EffectPermit, StepContext, StepOutcome};
use paysaga_store::{EffectMark, EffectMarkRequest, Error as StoreError, Store};
use tracing::{info, warn};
use uuid::Uuid;

use crate::lease::LeaseClock;

/// Marks requests of one step run of one saga.
#[derive(Debug)]
pub(crate) struct StoreEffectGuard {
    pub(crate) store: Arc<dyn Store>,
    pub(crate) lease: Arc<LeaseClock>,
    pub(crate) worker: Uuid,
    pub(crate) saga: Uuid,
    pub(crate) fence: i64,
    pub(crate) step: i32,
    pub(crate) window: Duration,
}

impl StoreEffectGuard {
    fn request<'a>(&self, ctx: &'a StepContext) -> EffectMarkRequest<'a> {
        EffectMarkRequest {
            saga: self.saga,
            worker: self.worker,
            fence: self.fence,
            step: self.step,
            step_name: &ctx.step,
            attempt: ctx.attempt,
            window: self.window,
        }
    }
}

#[async_trait]
impl EffectGuard for StoreEffectGuard {
    async fn begin(&self, ctx: &StepContext) -> Result<EffectPermit, StepOutcome> {
        let checked = Instant::now();
        if !self.lease.fresh() {
            warn!(saga_id = %self.saga, step = %ctx.step,
                  "the lease may lapse before the request would be out (a pause or a slow database): not sending");
            return Err(StepOutcome::retry(
                "not sent: this worker's lease may lapse before the request would be out; the step runs again",
            ));
        }
        match self.store.mark_effect(self.request(ctx)).await {
            Ok(EffectMark::Marked) => {
                info!(saga_id = %self.saga, step = %ctx.step, "request marked; sending");
                Ok(EffectPermit::until(checked + self.lease.ttl() / 2))
            }
            Ok(EffectMark::Wait {
                marked_at,
                remaining,
            }) => {
                warn!(saga_id = %self.saga, step = %ctx.step, %marked_at, wait_ms = remaining.as_millis() as u64,
                      "an earlier attempt may have sent this request; looking again once its window has closed");
                Err(StepOutcome::Retry {
                    error: format!(
                        "an earlier attempt of step {} may have sent its request at {marked_at} and \
                         the provider cannot deduplicate it: not sending before that request has \
                         surely landed or failed; the step looks again in {}s",
                        ctx.step,
                        remaining.as_secs() + 1
                    ),
                    after: Some(remaining + Duration::from_millis(100)),
                })
            }
            Err(StoreError::LeaseLost { .. }) => Err(StepOutcome::retry(
                "not sent: this worker no longer holds the saga",
            )),
            Err(e) => Err(StepOutcome::retry(format!(
                "not sent: the request could not be marked in the database first: {e}"
            ))),
        }
    }

    async fn not_sent(&self, ctx: &StepContext) {
        match self.store.clear_effect_mark(self.request(ctx)).await {
            Ok(_) => {
                info!(saga_id = %self.saga, step = %ctx.step, "request refused before it took effect; mark withdrawn")
            }
            Err(e) => warn!(saga_id = %self.saga, step = %ctx.step, error = %e,
                            "could not withdraw the mark; the next attempt waits for the effect window"),
        }
    }

    async fn earlier_send_possible(&self, ctx: &StepContext) -> Result<bool, StepOutcome> {
        // Read under this worker's claim: marks are fenced, so no attempt of another worker
        // can mark this step after the claim, and this worker's own marks are in the row.
        match self.store.saga(self.saga).await {
            Ok(Some(saga)) if saga.owner == Some(self.worker) && saga.fence == self.fence => {
                Ok(saga.effect_possible)
            }
            Ok(_) => Err(StepOutcome::retry(
                "not sent: this worker no longer holds the saga",
            )),
            Err(e) => {
                warn!(saga_id = %self.saga, step = %ctx.step, error = %e,
                      "cannot read whether an earlier attempt marked a request; retrying");
                Err(StepOutcome::retry(format!(
                    "not sent: whether an earlier attempt may have sent the request could not be read: {e}"
                )))
            }
        }
    }
}
