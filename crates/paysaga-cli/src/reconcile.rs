//! `paysaga reconcile` and the worker's periodic reconciliation: reads the sagas' payout
//! references from the store, the providers' objects through `paysaga_providers::reconcile`,
//! compares them there (pure), stores the run and prints it. Wiring and printing only.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use anyhow::{Context, Result};
use chrono::{DateTime, Utc};
use clap::Args;
use paysaga_providers::reconcile::{self as rec, DriftKind, Observation, SagaBelief, SagaPayout};
use paysaga_providers::{Clients, Provider};
use paysaga_runtime::Engine;
use paysaga_store::{DriftRecord, NewReconciliation, Reconciliation, Store};
use uuid::Uuid;

use crate::exit;

/// `paysaga reconcile`.
#[derive(Debug, Args)]
pub struct ReconcileArgs {
    /// Only this provider (lumanu, blaaiz, lean); default: every configured one.
    #[arg(long)]
    provider: Option<Provider>,
    /// Only sagas and provider objects created since: an RFC 3339 time or an age (`7d`).
    #[arg(long)]
    since: Option<String>,
    /// An unfinished saga whose provider object is final counts as drift only after this long
    /// without progress (a webhook may be on its way), and a listed provider object only once
    /// this old (the step that created it may not have committed yet).
    #[arg(long, default_value = "30m")]
    grace: humantime::Duration,
    /// JSON output.
    #[arg(long)]
    json: bool,
    /// Print the last stored run (by anyone, e.g. the periodic one) instead of running one.
    #[arg(long, conflicts_with_all = ["provider", "since"])]
    last: bool,
}

/// The drift kinds, as `paysaga_drift{kind}` labels them.
pub fn kinds() -> Vec<&'static str> {
    DriftKind::ALL.iter().map(|k| k.as_str()).collect()
}

fn parse_since(text: &str) -> Result<DateTime<Utc>> {
    if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        return Ok(t.with_timezone(&Utc));
    }
    let age = humantime::parse_duration(text).with_context(|| {
        format!("--since {text:?} is neither an RFC 3339 time nor an age like 7d")
    })?;
    Ok(Utc::now() - chrono::Duration::from_std(age).context("--since is too far back")?)
}

/// `paysaga reconcile [--provider P] [--since T] [--grace D] [--json] [--last]`. Exit 7 when
/// the run (or the last one) found drift.
pub async fn command(engine: &Engine, clients: &Clients, args: &ReconcileArgs) -> Result<()> {
    let store = engine.store();
    let stored = if args.last {
        store
            .last_reconciliation()
            .await
            .context("cannot read the last reconciliation")?
            .ok_or_else(|| {
                exit::NotFound(
                    "no reconciliation stored yet: run `paysaga reconcile` (or let a worker do it)"
                        .to_owned(),
                )
            })?
    } else {
        let since = args.since.as_deref().map(parse_since).transpose()?;
        let id = run_once(
            store.as_ref(),
            clients,
            args.provider,
            since,
            args.grace.into(),
            &crate::operate::actor(),
        )
        .await?;
        // By its id: a worker's periodic run may have stored another one since.
        store
            .reconciliation(id)
            .await?
            .with_context(|| format!("reconciliation #{id} was stored but cannot be read back"))?
    };
    print(&stored, args.json)?;
    let found = stored.run.findings.len();
    if found > 0 {
        return Err(anyhow::Error::new(exit::DriftFound(format!(
            "{found} drift finding(s) in reconciliation #{} (exit {})",
            stored.id,
            exit::DRIFT
        ))));
    }
    Ok(())
}

/// One reconciliation: compares, stores, returns the run's id.
pub async fn run_once(
    store: &dyn Store,
    clients: &Clients,
    only: Option<Provider>,
    since: Option<DateTime<Utc>>,
    grace: Duration,
    actor: &str,
) -> Result<i64> {
    let started_at = Utc::now();
    let providers: Vec<Provider> = Provider::ALL
        .into_iter()
        .filter(|p| only.is_none_or(|o| o == *p))
        .filter(|p| match p {
            Provider::Lumanu => clients.lumanu.is_some(),
            Provider::Blaaiz => clients.blaaiz.is_some(),
            Provider::Lean => clients.lean.is_some(),
        })
        .collect();
    if providers.is_empty() {
        anyhow::bail!(
            "no provider to reconcile: {} is not configured (PAYSAGA_LUMANU_*, PAYSAGA_BLAAIZ_*, PAYSAGA_LEAN_*)",
            only.map_or("any provider", |p| p.as_str())
        );
    }
    let names: Vec<&str> = rec::PAYOUT_REFERENCES
        .iter()
        .filter(|(p, _)| providers.iter().any(|q| q.as_str() == *p))
        .map(|(_, name)| *name)
        .collect();
    let refs = store
        .reconciliation_references(&names, since)
        .await
        .context("cannot read the sagas' provider references")?;
    let mut by_provider: BTreeMap<&'static str, Vec<SagaPayout>> = BTreeMap::new();
    let mut seen = HashSet::new();
    for r in refs {
        let Some((provider, _)) = rec::PAYOUT_REFERENCES.iter().find(|(_, n)| *n == r.name) else {
            continue;
        };
        if !seen.insert((r.saga_id, r.value.clone())) {
            continue;
        }
        by_provider.entry(provider).or_default().push(SagaPayout {
            saga_id: r.saga_id,
            workflow: r.workflow,
            belief: SagaBelief::of(r.status, r.closed_outcome),
            idle_for: (Utc::now() - r.updated_at).to_std().unwrap_or_default(),
            provider,
            object_id: r.value,
        });
    }
    let window = rec::ListWindow {
        since,
        settled_before: started_at - chrono::Duration::from_std(grace).unwrap_or_default(),
    };
    let mut observation = Observation::default();
    for provider in &providers {
        let payouts = by_provider.remove(provider.as_str()).unwrap_or_default();
        let read = match provider {
            Provider::Lumanu => match &clients.lumanu {
                Some(c) => rec::observe_lumanu(c, payouts, window, &mut observation).await,
                None => Ok(()),
            },
            Provider::Blaaiz => match &clients.blaaiz {
                Some(c) => rec::observe_blaaiz(c, payouts, window, &mut observation).await,
                None => Ok(()),
            },
            Provider::Lean => match &clients.lean {
                Some(c) => rec::observe_lean(c, payouts, &mut observation).await,
                None => Ok(()),
            },
        };
        read.with_context(|| format!("cannot read {provider}'s objects; nothing was stored"))?;
    }
    let listed: Vec<String> = observation.listed.iter().map(|o| o.id.clone()).collect();
    let owned: HashSet<String> = store
        .reference_owners(&listed)
        .await
        .context("cannot look up which saga owns the listed provider objects")?
        .into_iter()
        .map(|(value, _)| value)
        .collect();
    let findings = rec::compare(&observation, &owned, grace)
        .into_iter()
        .map(|d| DriftRecord {
            kind: d.kind.as_str().to_owned(),
            provider: d.provider,
            saga_id: d.saga_id,
            object_id: d.object_id,
            currency: d.currency,
            amount: d.amount,
            detail: d.detail,
            action: d.action,
        })
        .collect();
    let run = NewReconciliation {
        started_at,
        providers: providers.iter().map(|p| p.as_str().to_owned()).collect(),
        since,
        objects_checked: observation.objects_read,
        actor: actor.to_owned(),
        findings,
    };
    store
        .store_reconciliation(&run)
        .await
        .context("cannot store the reconciliation")
}

fn print(r: &Reconciliation, json: bool) -> Result<()> {
    let run = &r.run;
    if json {
        let v = serde_json::json!({
            "id": r.id,
            "started_at": run.started_at,
            "finished_at": r.finished_at,
            "providers": run.providers,
            "since": run.since,
            "objects_checked": run.objects_checked,
            "actor": run.actor,
            "findings": run.findings,
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!(
        "reconciliation #{} at {} by {}: {} ({} provider objects read{}): {} finding(s)",
        r.id,
        r.finished_at.format("%Y-%m-%d %H:%M:%S UTC"),
        run.actor,
        run.providers.join(", "),
        run.objects_checked,
        run.since
            .map(|s| format!(", since {}", s.format("%Y-%m-%d %H:%M:%S UTC")))
            .unwrap_or_default(),
        run.findings.len()
    );
    for d in &run.findings {
        let money = match (&d.currency, d.amount) {
            (Some(c), Some(a)) => format!(" {a} {c} (minor units)"),
            _ => String::new(),
        };
        println!(
            "\n{} [{}] saga {} object {}{}",
            d.kind,
            d.provider,
            d.saga_id.map_or("-".to_owned(), |s| s.to_string()),
            d.object_id.as_deref().unwrap_or("-"),
            money
        );
        println!("  {}", d.detail);
        println!("  action: {}", d.action);
    }
    Ok(())
}

/// The worker's periodic reconciliation: every `every`, the process holding the reconciler
/// lease (three intervals long) runs one over the sagas created in the last `window`; every
/// worker then sets `paysaga_drift{kind}` from the last stored run.
pub fn spawn_periodic(
    engine: Engine,
    clients: Clients,
    every: Duration,
    window: Duration,
    grace: Duration,
    actor: String,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    let instance = Uuid::new_v4();
    tokio::spawn(async move {
        let store = engine.store().clone();
        let export = async |store: &std::sync::Arc<dyn Store>| {
            if let Ok(Some(last)) = store.last_reconciliation().await {
                let mut counts = BTreeMap::new();
                for d in &last.run.findings {
                    *counts.entry(d.kind.clone()).or_insert(0_i64) += 1;
                }
                engine.metrics().set_drift(&kinds(), &counts);
            }
        };
        // The last stored run's findings at once; the first run after one interval (a worker
        // start sends no provider request of its own).
        export(&store).await;
        loop {
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = stop.wait_for(|s| *s) => return,
            }
            match store.take_reconciler_lease(instance, every * 3).await {
                Ok(true) => {
                    let since = Utc::now() - chrono::Duration::from_std(window).unwrap_or_default();
                    match run_once(store.as_ref(), &clients, None, Some(since), grace, &actor).await
                    {
                        Ok(id) => tracing::info!(reconciliation = id, "reconciliation stored"),
                        Err(e) => tracing::warn!(
                            error = format!("{e:#}"),
                            "reconciliation failed; next try in one interval"
                        ),
                    }
                }
                Ok(false) => {}
                Err(e) => tracing::warn!(error = %e, "cannot take the reconciler lease"),
            }
            export(&store).await;
        }
    })
}
