//! Provider call records ([`paysaga_providers::observe`]) into the worker's Prometheus metrics
//! (`paysaga_provider_call_duration_seconds`, `paysaga_provider_call_errors_total`). Here
//! because the runtime knows no provider code and the providers crate no metrics.

use std::sync::{Arc, OnceLock};

use paysaga_providers::observe::{CallObserver, CallRecord};
use paysaga_runtime::metrics::SharedMetrics;

/// Observer handed to the provider clients before the engine (and its metrics) exists;
/// [`ProviderMetrics::attach`] connects it once the engine is built. No call is made before
/// that: steps only run in the worker.
#[derive(Debug, Default)]
pub struct ProviderMetrics {
    metrics: OnceLock<SharedMetrics>,
}

impl ProviderMetrics {
    /// A detached observer.
    pub fn new() -> Arc<ProviderMetrics> {
        Arc::new(ProviderMetrics::default())
    }

    /// Records into `metrics` from now on (the first call wins).
    pub fn attach(&self, metrics: SharedMetrics) {
        let _ = self.metrics.set(metrics);
    }
}

impl CallObserver for ProviderMetrics {
    fn observe(&self, call: &CallRecord) {
        if let Some(metrics) = self.metrics.get() {
            // Both labels are static names from the providers crate: no URL, id or secret.
            metrics.provider_call(
                call.provider.as_str(),
                call.endpoint,
                call.outcome.as_str(),
                call.status,
                call.duration,
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use paysaga_providers::{CallOutcome, Provider};
    use paysaga_runtime::metrics::Metrics;

    use super::*;

    #[test]
    fn records_once_attached() {
        let observer = ProviderMetrics::new();
        let call = CallRecord {
            provider: Provider::Blaaiz,
            endpoint: "create_payout",
            status: Some(422),
            outcome: CallOutcome::Permanent,
            duration: Duration::from_millis(40),
        };
        observer.observe(&call);
        let metrics: SharedMetrics = Arc::new(Metrics::new());
        observer.attach(metrics.clone());
        observer.observe(&call);
        let text = metrics.render();
        assert!(
            text.contains(
                r#"paysaga_provider_call_errors_total{provider="blaaiz",endpoint="create_payout",class="permanent",status="422"} 1"#
            ),
            "{text}"
        );
        assert!(text.contains(
            r#"paysaga_provider_call_duration_seconds_count{provider="blaaiz",endpoint="create_payout",outcome="permanent"} 1"#
        ));
    }
}
