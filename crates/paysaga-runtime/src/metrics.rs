//! Prometheus metrics of a worker process (`GET /metrics`, OpenMetrics text format).

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
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
    /// matched, stored (unmatched for now), duplicate, unparseable, rejected; answered 5xx:
    /// busy (no turn to store it), not_stored (the database failed).
    pub result: String,
}

/// Labels of a provider API call (one HTTP attempt).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProviderCallLabels {
    /// Provider (`lumanu`, `blaaiz`, `lean`).
    pub provider: String,
    /// Static operation name (`get_payable`, `token`): never a URL or an id.
    pub endpoint: String,
    /// ok, transient, permanent.
    pub outcome: String,
}

/// Labels of a failed provider API call.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProviderErrorLabels {
    /// Provider.
    pub provider: String,
    /// Static operation name.
    pub endpoint: String,
    /// transient or permanent.
    pub class: String,
    /// HTTP status, or `none` when no answer arrived (timeout, connection error).
    pub status: String,
}

/// Every metric the engine and worker record.
/// Labels of `saga_alerts`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AlertLabels {
    /// Workflow name.
    pub workflow: String,
    /// The alert's kind (a static name chosen by the step kind).
    pub kind: String,
}

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
    /// Provider API call latency (every HTTP attempt).
    pub provider_call_seconds: Family<ProviderCallLabels, Histogram>,
    /// Failed provider API calls.
    pub provider_call_errors: Family<ProviderErrorLabels, Counter>,
    /// Alerts steps raised (`saga_alert` history rows), by workflow and kind.
    pub saga_alerts: Family<AlertLabels, Counter>,
    /// Unfinished sagas no live worker can run (no live worker has every step kind of their
    /// definition), by workflow; set by each worker every [`UNRUNNABLE_EVERY`].
    pub unrunnable_sagas: Family<WorkflowLabels, Gauge>,
    /// The operator gauges, from the database (see [`crate::gauges`]).
    pub gauges: crate::gauges::OperatorGauges,
    /// Drift the last stored reconciliation found, by kind (`paysaga reconcile`; set from the
    /// database by every worker, see [`Metrics::set_drift`]).
    pub drift: Family<DriftLabels, Gauge>,
}

/// Labels `kind` of a reconciliation finding.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DriftLabels {
    /// `status_mismatch`, `unowned_object`, `unaccounted_money`.
    pub kind: String,
}

/// How often a worker counts the sagas no live worker can run (`unrunnable_sagas`).
pub const UNRUNNABLE_EVERY: Duration = Duration::from_secs(5);

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
        let provider_call_seconds = Family::<ProviderCallLabels, Histogram>::new_with_constructor(
            provider_call_histogram as fn() -> Histogram,
        );
        let provider_call_errors = Family::<ProviderErrorLabels, Counter>::default();
        let saga_alerts = Family::<AlertLabels, Counter>::default();
        registry.register(
            "sagas_started",
            "Sagas started (counted from the database by the operator gauges)",
            sagas_started.clone(),
        );
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
        registry.register(
            "provider_call_duration_seconds",
            "Duration of provider API calls (each HTTP attempt) by outcome",
            provider_call_seconds.clone(),
        );
        registry.register(
            "provider_call_errors",
            "Failed provider API calls by class and HTTP status",
            provider_call_errors.clone(),
        );
        registry.register(
            "saga_alerts",
            "Alerts raised by steps for an operator (e.g. a duplicate funding invoice paid)",
            saga_alerts.clone(),
        );
        let unrunnable_sagas = Family::<WorkflowLabels, Gauge>::default();
        registry.register(
            "unrunnable_sagas",
            "Unfinished sagas no live worker can run (their step kinds' provider is configured on no live worker)",
            unrunnable_sagas.clone(),
        );
        let gauges = crate::gauges::OperatorGauges::register(&mut registry);
        let drift = Family::<DriftLabels, Gauge>::default();
        registry.register(
            "drift",
            "Drift the last reconciliation against the providers found, by kind",
            drift.clone(),
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
            provider_call_seconds,
            provider_call_errors,
            saga_alerts,
            unrunnable_sagas,
            gauges,
            drift,
        }
    }

    /// Sets `paysaga_drift{kind}` to the last reconciliation's counts: every kind in `kinds`
    /// (0 when absent from `counts`).
    pub fn set_drift(&self, kinds: &[&str], counts: &std::collections::BTreeMap<String, i64>) {
        for kind in kinds {
            self.drift
                .get_or_create(&DriftLabels {
                    kind: (*kind).to_owned(),
                })
                .set(counts.get(*kind).copied().unwrap_or(0));
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

impl Metrics {
    /// Records one provider API call (HTTP attempt): its duration under `outcome` (`ok`,
    /// `transient`, `permanent`) and, unless `ok`, an error of that class with `status`
    /// (`None`: no answer). `provider` and `endpoint` must be static names (an endpoint is an
    /// operation such as `get_payable`, never a URL, an id or anything secret): each distinct
    /// value is a time series.
    pub fn provider_call(
        &self,
        provider: &str,
        endpoint: &str,
        outcome: &str,
        status: Option<u16>,
        took: Duration,
    ) {
        self.provider_call_seconds
            .get_or_create(&ProviderCallLabels {
                provider: provider.into(),
                endpoint: endpoint.into(),
                outcome: outcome.into(),
            })
            .observe(took.as_secs_f64());
        if outcome != "ok" {
            self.provider_call_errors
                .get_or_create(&ProviderErrorLabels {
                    provider: provider.into(),
                    endpoint: endpoint.into(),
                    class: outcome.into(),
                    status: status.map_or_else(|| "none".to_owned(), |s| s.to_string()),
                })
                .inc();
        }
    }
}

/// 5 ms to 41 s: provider requests time out after 30 s by default.
fn provider_call_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.005, 2.0, 14))
}

fn step_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 18))
}

/// Shared handle.
pub type SharedMetrics = Arc<Metrics>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn provider_calls_are_exposed_by_provider_endpoint_and_outcome() {
        let m = Metrics::new();
        m.provider_call(
            "lumanu",
            "get_payable",
            "ok",
            Some(200),
            Duration::from_millis(12),
        );
        m.provider_call(
            "lumanu",
            "get_payable",
            "transient",
            Some(503),
            Duration::from_millis(30),
        );
        m.provider_call("lumanu", "token", "transient", None, Duration::from_secs(5));
        m.provider_call(
            "lean",
            "get_payment",
            "permanent",
            Some(404),
            Duration::ZERO,
        );
        let text = m.render();
        // prometheus-client writes `le` first.
        assert!(
            text.contains(
                r#"paysaga_provider_call_duration_seconds_bucket{le="0.02",provider="lumanu",endpoint="get_payable",outcome="ok"} 1"#
            ),
            "{text}"
        );
        assert!(text.contains(
            r#"paysaga_provider_call_duration_seconds_bucket{le="0.01",provider="lumanu",endpoint="get_payable",outcome="ok"} 0"#
        ));
        assert!(text.contains(
            r#"paysaga_provider_call_duration_seconds_count{provider="lumanu",endpoint="get_payable",outcome="transient"} 1"#
        ));
        assert!(text.contains(
            r#"paysaga_provider_call_errors_total{provider="lumanu",endpoint="get_payable",class="transient",status="503"} 1"#
        ));
        assert!(text.contains(
            r#"paysaga_provider_call_errors_total{provider="lumanu",endpoint="token",class="transient",status="none"} 1"#
        ));
        assert!(text.contains(
            r#"paysaga_provider_call_errors_total{provider="lean",endpoint="get_payment",class="permanent",status="404"} 1"#
        ));
        assert!(!text.contains(r#"outcome="ok",status"#));
        assert!(
            !text.contains(r#"class="ok""#),
            "a successful call is not an error"
        );
        assert!(text.contains("# TYPE paysaga_provider_call_duration_seconds histogram"));
        assert!(text.contains("# TYPE paysaga_provider_call_errors counter"));
    }
}
