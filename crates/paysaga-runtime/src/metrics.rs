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

/// Every metric family paysaga records (step runs, saga ends, retries, waits, provider calls,
/// alerts, worker gauges); one per process, shared by the engine and its workers.
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
    /// Sagas a start in another process inserted held by this worker (run without a claim).
    pub sagas_assigned: Counter,
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
    /// definition), by workflow; from the operator gauges (one worker counts them, every
    /// worker serves the stored count, see [`crate::gauges`]).
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

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Every metric, in a registry of its own (prefix `paysaga_`) that [`Metrics::render`]
    /// encodes (a worker's `GET /metrics`). To expose them from the host application's own
    /// registry instead (or as well), see [`Metrics::register_into`].
    pub fn new() -> Metrics {
        let step_seconds = Family::<StepLabels, Histogram>::new_with_constructor(
            step_histogram as fn() -> Histogram,
        );
        let provider_call_seconds = Family::<ProviderCallLabels, Histogram>::new_with_constructor(
            provider_call_histogram as fn() -> Histogram,
        );
        let mut metrics = Metrics {
            registry: Registry::with_prefix("paysaga"),
            sagas_started: Family::default(),
            sagas_finished: Family::default(),
            step_seconds,
            retries: Family::default(),
            waits_past_deadline: Family::default(),
            claim_batch: Histogram::new(exponential_buckets(1.0, 2.0, 10)),
            sagas_assigned: Counter::default(),
            lease_takeovers: Counter::default(),
            lease_lost: Counter::default(),
            inbox_events: Family::default(),
            provider_call_seconds,
            provider_call_errors: Family::default(),
            saga_alerts: Family::default(),
            unrunnable_sagas: Family::default(),
            gauges: crate::gauges::OperatorGauges::default(),
            drift: Family::default(),
        };
        let mut registry = Registry::with_prefix("paysaga");
        metrics.register_all(&mut registry);
        metrics.registry = registry;
        metrics
    }

    /// Registers every paysaga metric family in the host application's `registry`, under
    /// the prefix `paysaga_` (a sub-registry), so that the host's own `/metrics` exposes them
    /// and no separate paysaga endpoint is needed. The families are shared, not copied: the
    /// host's exposition shows the values this engine and its workers record. Register them
    /// once per registry (a second time would list each family twice).
    ///
    /// ```
    /// use prometheus_client::registry::Registry;
    ///
    /// let metrics = paysaga_runtime::metrics::Metrics::new();
    /// let mut host = Registry::default();
    /// metrics.register_into(&mut host);
    /// metrics.inbox("lean", "matched");
    /// let mut text = String::new();
    /// prometheus_client::encoding::text::encode(&mut text, &host).unwrap();
    /// assert!(text.contains(r#"paysaga_inbox_events_total{provider="lean",result="matched"} 1"#));
    /// ```
    pub fn register_into(&self, registry: &mut Registry) {
        self.register_all(registry.sub_registry_with_prefix("paysaga"));
    }

    /// Registers (shared handles of) every family in `registry`.
    fn register_all(&self, registry: &mut Registry) {
        registry.register(
            "sagas_started",
            "Sagas started (counted from the database by the operator gauges)",
            self.sagas_started.clone(),
        );
        registry.register(
            "sagas_finished",
            "Sagas that reached a final status",
            self.sagas_finished.clone(),
        );
        registry.register(
            "step_duration_seconds",
            "Duration of step runs",
            self.step_seconds.clone(),
        );
        registry.register(
            "step_retries",
            "Transient step failures scheduled for retry",
            self.retries.clone(),
        );
        registry.register(
            "waits_past_deadline",
            "Waits that reached their deadline",
            self.waits_past_deadline.clone(),
        );
        registry.register(
            "claim_batch_size",
            "Sagas claimed per claim query",
            self.claim_batch.clone(),
        );
        registry.register(
            "sagas_assigned",
            "Sagas a start in another process inserted held by this worker and ran without a claim",
            self.sagas_assigned.clone(),
        );
        registry.register(
            "lease_takeovers",
            "Sagas released from workers whose lease expired",
            self.lease_takeovers.clone(),
        );
        registry.register(
            "lease_lost",
            "Step results discarded because the lease was lost",
            self.lease_lost.clone(),
        );
        registry.register(
            "inbox_events",
            "Webhooks and manual events by result",
            self.inbox_events.clone(),
        );
        registry.register(
            "provider_call_duration_seconds",
            "Duration of provider API calls (each HTTP attempt) by outcome",
            self.provider_call_seconds.clone(),
        );
        registry.register(
            "provider_call_errors",
            "Failed provider API calls by class and HTTP status",
            self.provider_call_errors.clone(),
        );
        registry.register(
            "saga_alerts",
            "Alerts raised by steps for an operator (e.g. a duplicate funding invoice paid)",
            self.saga_alerts.clone(),
        );
        registry.register(
            "unrunnable_sagas",
            "Unfinished sagas no live worker can run (their step kinds' provider is configured on no live worker)",
            self.unrunnable_sagas.clone(),
        );
        self.gauges.register_into(registry);
        registry.register(
            "drift",
            "Drift the last reconciliation against the providers found, by kind",
            self.drift.clone(),
        );
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
