//! Prometheus metrics of a worker process (`GET /metrics`, text format).

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// Labels `workflow`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WorkflowLabels {
    /// Workflow name.
    pub workflow: String,
}

/// Labels `workflow`, `status`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FinishLabels {
    /// Workflow name.
    pub workflow: String,
    /// Final status.
    pub status: String,
}

/// Labels of a step run.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StepLabels {
    /// Workflow name.
    pub workflow: String,
    /// Step kind.
    pub kind: String,
    /// done, wait, retry, fail.
    pub outcome: String,
}

/// Labels of inbox events.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct InboxLabels {
    /// Provider.
    pub provider: String,
    /// matched, stored (unmatched for now), duplicate, unparseable, rejected.
    pub result: String,
}

/// Every metric the engine and worker record.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Sagas started.
    pub sagas_started: Family<WorkflowLabels, Counter>,
    /// Sagas reaching a final status.
    pub sagas_finished: Family<FinishLabels, Counter>,
    /// Step run latency.
    pub step_seconds: Family<StepLabels, Histogram>,
    /// Transient failures scheduled for retry.
    pub retries: Family<WorkflowLabels, Counter>,
    /// Waits that reached their deadline.
    pub waits_past_deadline: Family<WorkflowLabels, Counter>,
    /// Sagas claimed per claim query.
    pub claim_batch: Histogram,
    /// Sagas released from workers whose lease expired.
    pub lease_takeovers: Counter,
    /// Commits refused because the lease was lost.
    pub lease_lost: Counter,
    /// Webhooks and manual events by result.
    pub inbox_events: Family<InboxLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers every metric.
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("paysaga");
        let sagas_started = Family::<WorkflowLabels, Counter>::default();
        let sagas_finished = Family::<FinishLabels, Counter>::default();
        let step_seconds = Family::<StepLabels, Histogram>::new_with_constructor(
            step_histogram as fn() -> Histogram,
        );
        let retries = Family::<WorkflowLabels, Counter>::default();
        let waits_past_deadline = Family::<WorkflowLabels, Counter>::default();
        let claim_batch = Histogram::new(exponential_buckets(1.0, 2.0, 10));
        let lease_takeovers = Counter::default();
        let lease_lost = Counter::default();
        let inbox_events = Family::<InboxLabels, Counter>::default();
        registry.register("sagas_started", "Sagas started", sagas_started.clone());
        registry.register(
            "sagas_finished",
            "Sagas that reached a final status",
            sagas_finished.clone(),
        );
        registry.register(
            "step_duration_seconds",
            "Duration of step runs",
            step_seconds.clone(),
        );
        registry.register(
            "step_retries",
            "Transient step failures scheduled for retry",
            retries.clone(),
        );
        registry.register(
            "waits_past_deadline",
            "Waits that reached their deadline",
            waits_past_deadline.clone(),
        );
        registry.register(
            "claim_batch_size",
            "Sagas claimed per claim query",
            claim_batch.clone(),
        );
        registry.register(
            "lease_takeovers",
            "Sagas released from workers whose lease expired",
            lease_takeovers.clone(),
        );
        registry.register(
            "lease_lost",
            "Step results discarded because the lease was lost",
            lease_lost.clone(),
        );
        registry.register(
            "inbox_events",
            "Webhooks and manual events by result",
            inbox_events.clone(),
        );
        Metrics {
            registry,
            sagas_started,
            sagas_finished,
            step_seconds,
            retries,
            waits_past_deadline,
            claim_batch,
            lease_takeovers,
            lease_lost,
            inbox_events,
        }
    }

    /// Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }

    /// Records a step run.
    pub fn step(&self, workflow: &str, kind: &str, outcome: &str, took: Duration) {
        self.step_seconds
            .get_or_create(&StepLabels {
                workflow: workflow.into(),
                kind: kind.into(),
                outcome: outcome.into(),
            })
            .observe(took.as_secs_f64());
    }

    /// Records an inbox result.
    pub fn inbox(&self, provider: &str, result: &str) {
        self.inbox_events
            .get_or_create(&InboxLabels {
                provider: provider.into(),
                result: result.into(),
            })
            .inc();
    }
}

fn step_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 18))
}

/// Shared handle.
pub type SharedMetrics = Arc<Metrics>;
