//! Signals that let an operator be alerted before a customer calls (issue 13 item 8):
//!
//! - **operator gauges** on `/metrics`: open sagas by workflow and observed status,
//!   `needs_operator` sagas, the oldest wait's age, waits past their deadline, stuck sagas,
//!   and `paysaga_sagas_started_total` counted from the database (sagas start in other
//!   processes: `paysaga start`, an API). One worker at a time computes them, every
//!   [`GaugeConfig::every`], under a lease in the database ([`Store::refresh_gauges`]: a row
//!   lease, so it works alike on PostgreSQL and SQLite); it reads only open sagas and the sagas
//!   started since its last turn, so its cost does not grow with finished sagas. Every worker
//!   serves the stored result: any instance scraped tells the same, and the gauges outlive the
//!   worker that computed them by one lease (alert rules take `max` across instances, and
//!   `paysaga_gauges_computed_timestamp_seconds` says how fresh they are); among them
//!   `paysaga_unrunnable_sagas{workflow}`, the sagas no live worker can run, with a WARN line
//!   from the computing worker when a workflow's sagas become unrunnable;
//! - the **safety nets** of the hand-overs a crash can leave undone (free concurrency slots
//!   given to queued sagas, the cancel cascade to children), run at each turn by the worker
//!   that computes the gauges, so that idle workers do not each run them;
//! - a **WARN line** for each saga that parks for an operator, with `saga_id`, `workflow`,
//!   `step`, `attempt` and `error` as top-level fields of the JSON log line.
//!
//! [`Store::refresh_gauges`]: paysaga_store::Store::refresh_gauges

use std::collections::HashSet;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use paysaga_core::{SagaStatus, Transition};
use paysaga_store::{GaugeRequest, GaugeSnapshot, GaugeTurn};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tracing::{debug, warn};
use uuid::Uuid;

use crate::metrics::{FinishLabels, Metrics, WorkflowLabels};
use crate::Engine;

/// The open statuses exported (every one, 0 when none), as operators see them.
const OPEN_STATUSES: [&str; 6] = [
    "scheduled",
    "running",
    "retrying",
    "waiting",
    "compensating",
    "needs_operator",
];

/// Settings of the operator gauges.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct GaugeConfig {
    /// How often the gauges are computed (by one worker) and read (by every worker).
    pub every: Duration,
    /// An open saga without progress for this long counts as stuck.
    pub stuck_after: Duration,
    /// A saga at this many attempts counts as stuck.
    pub stuck_attempts: u32,
    /// Sagas show in `paysaga_sagas_started_total` this long after they were created, so a
    /// start whose transaction commits late is still counted once.
    pub started_lag: Duration,
}

impl Default for GaugeConfig {
    fn default() -> Self {
        GaugeConfig {
            every: Duration::from_secs(15),
            stuck_after: Duration::from_secs(3600),
            stuck_attempts: 5,
            started_lag: Duration::from_secs(10),
        }
    }
}

/// The gauge families (registered with the other metrics).
#[derive(Debug, Clone, Default)]
pub struct OperatorGauges {
    /// `paysaga_sagas{workflow,status}`: open sagas by observed status.
    pub sagas: Family<FinishLabels, Gauge>,
    /// `paysaga_sagas_needs_operator{workflow}`.
    pub needs_operator: Family<WorkflowLabels, Gauge>,
    /// `paysaga_oldest_wait_age_seconds{workflow}`.
    pub oldest_wait_age: Family<WorkflowLabels, Gauge<f64, AtomicU64>>,
    /// `paysaga_sagas_waiting_past_deadline{workflow}`.
    pub waiting_past_deadline: Family<WorkflowLabels, Gauge>,
    /// `paysaga_sagas_stuck{workflow}`.
    pub stuck: Family<WorkflowLabels, Gauge>,
    /// `paysaga_gauges_computed_timestamp_seconds`: when the gauges were computed.
    pub computed_at: Gauge<f64, AtomicU64>,
}

impl OperatorGauges {
    /// Registers these families (shared handles: the same values) in `registry` (the
    /// metrics' registry or the host's, prefix `paysaga_`).
    pub(crate) fn register_into(&self, registry: &mut Registry) {
        let g = self;
        registry.register(
            "sagas",
            "Open (not ended) sagas by workflow and observed status",
            g.sagas.clone(),
        );
        registry.register(
            "sagas_needs_operator",
            "Sagas parked for an operator",
            g.needs_operator.clone(),
        );
        registry.register(
            "oldest_wait_age_seconds",
            "Age of the oldest wait for a provider event (0 when none waits)",
            g.oldest_wait_age.clone(),
        );
        registry.register(
            "sagas_waiting_past_deadline",
            "Waiting sagas whose wait deadline has passed",
            g.waiting_past_deadline.clone(),
        );
        registry.register(
            "sagas_stuck",
            "Stuck sagas, as `paysaga list --stuck-for` finds them",
            g.stuck.clone(),
        );
        registry.register(
            "gauges_computed_timestamp_seconds",
            "When the operator gauges were last computed (Unix time)",
            g.computed_at.clone(),
        );
    }
}

/// Sets the gauges (and `paysaga_sagas_started_total`) from a snapshot.
pub(crate) fn publish(metrics: &Metrics, snapshot: &GaugeSnapshot) {
    let g = &metrics.gauges;
    for (workflow, w) in &snapshot.workflows {
        let wf = WorkflowLabels {
            workflow: workflow.clone(),
        };
        for status in OPEN_STATUSES {
            g.sagas
                .get_or_create(&FinishLabels {
                    workflow: workflow.clone(),
                    status: status.to_string(),
                })
                .set(w.by_status.get(status).copied().unwrap_or(0));
        }
        g.needs_operator
            .get_or_create(&wf)
            .set(w.by_status.get("needs_operator").copied().unwrap_or(0));
        g.oldest_wait_age
            .get_or_create(&wf)
            .set(w.oldest_wait_seconds);
        g.waiting_past_deadline
            .get_or_create(&wf)
            .set(w.waits_past_deadline);
        g.stuck.get_or_create(&wf).set(w.stuck);
        metrics
            .unrunnable_sagas
            .get_or_create(&wf)
            .set(w.unrunnable);
        // A counter: it only moves up, by what the database counted since.
        let started = metrics.sagas_started.get_or_create(&wf);
        let total = u64::try_from(w.started).unwrap_or(0);
        let seen = started.get();
        if total > seen {
            started.inc_by(total - seen);
        }
    }
    g.computed_at
        .set(snapshot.computed_at.timestamp_millis() as f64 / 1000.0);
}

/// Computes (when this process holds the lease) or reads the gauges every `config.every`,
/// until the task is aborted.
pub(crate) fn spawn(engine: Engine, config: GaugeConfig) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let instance = Uuid::new_v4();
        let every = config.every.max(Duration::from_millis(100));
        // Workflows this process last computed as having sagas no live worker can run.
        let mut unrunnable: HashSet<String> = HashSet::new();
        loop {
            let request = GaugeRequest {
                instance,
                lease: every * 3,
                stuck_after: config.stuck_after,
                stuck_attempts: config.stuck_attempts,
                started_lag: config.started_lag,
            };
            let snapshot = match engine.store.gauge_turn(request).await {
                Ok(GaugeTurn::Computed(computed)) => {
                    debug!("operator gauges computed");
                    log_unrunnable(&computed, &mut unrunnable);
                    crate::worker::run_safety_nets(&engine).await;
                    Ok(Some(computed))
                }
                Ok(GaugeTurn::Stored(stored)) => Ok(stored),
                Err(e) => Err(e),
            };
            match snapshot {
                Ok(Some(s)) => publish(&engine.metrics, &s),
                Ok(None) => {}
                Err(e) => {
                    warn!(error = %e, "cannot compute or read the operator gauges; /metrics keeps the last values")
                }
            }
            tokio::time::sleep(every).await;
        }
    })
}

/// The WARN line an operator acts on when a workflow's sagas become unrunnable (logged by the
/// process that computed the gauges, once per workflow until it is runnable again).
fn log_unrunnable(snapshot: &GaugeSnapshot, logged: &mut HashSet<String>) {
    for (workflow, w) in &snapshot.workflows {
        if w.unrunnable == 0 {
            logged.remove(workflow);
        } else if logged.insert(workflow.clone()) {
            warn!(workflow = %workflow, sagas = w.unrunnable, missing = ?w.missing_kinds,
                  "sagas no live worker can run: start a worker with their providers configured");
        }
    }
}

/// The WARN line of a saga that parked for an operator (`status` `needs_operator`) after
/// `attempt` of `step`: its fields are top-level in the JSON log.
pub(crate) fn log_parked(
    saga_id: Uuid,
    workflow: &str,
    step: Option<&str>,
    attempt: u32,
    transition: &Transition,
) {
    if transition.status != SagaStatus::NeedsOperator {
        return;
    }
    warn!(
        saga_id = %saga_id,
        workflow = %workflow,
        step = step.unwrap_or("-"),
        attempt,
        error = transition.last_error.as_deref().unwrap_or(""),
        "saga parked: it needs an operator (paysaga show {saga_id})"
    );
}
