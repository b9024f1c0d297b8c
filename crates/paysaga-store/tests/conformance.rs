//! One conformance suite for every [`Store`]: each test body below runs against PostgreSQL
//! (a fresh database per test, from `paysaga-testkit`) and against the embedded SQLite store
//! (a fresh temp file per test). The `conformance!` macro at the end generates
//! `postgres::NAME` and `sqlite::NAME` for every body; a test's name says the invariant it
//! protects.

#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use paysaga_core::{
    ActiveWait, Definition, DocumentId, HistoryEntry, HistoryKind, ObservedStatus, SagaStatus,
    StepDef, Transition,
};
use paysaga_store::{
    Commit, EffectMark, EffectMarkRequest, Error, EventFilter, NewDocument, NewEvent, NewSaga,
    OperatorAction, SagaFilter, SagaRecord, SagaReference, SlotRequest, Store, WorkerInfo,
};
use serde_json::{json, Value};
use uuid::Uuid;

// ---------------------------------------------------------------------------------------
// Harness

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Backend {
    Postgres,
    Sqlite,
}

/// A store under test and what keeps its database alive.
struct Env {
    store: Arc<dyn Store>,
    backend: Backend,
    url: String,
    _pg: Option<paysaga_testkit::TestDatabase>,
    _file: Option<TempDb>,
}

/// A SQLite file (and its WAL files) removed when the test ends.
struct TempDb(PathBuf);

impl Drop for TempDb {
    fn drop(&mut self) {
        for suffix in ["", "-wal", "-shm"] {
            let mut p = self.0.clone().into_os_string();
            p.push(suffix);
            let _ = std::fs::remove_file(p);
        }
    }
}

impl Env {
    async fn postgres() -> Env {
        let db = paysaga_testkit::database().await;
        let url = db.url().to_string();
        let store = paysaga_store::connect(&url).await.unwrap();
        store.migrate().await.unwrap();
        Env {
            store,
            backend: Backend::Postgres,
            url,
            _pg: Some(db),
            _file: None,
        }
    }

    async fn sqlite() -> Env {
        let path = std::env::temp_dir().join(format!("paysaga-conformance-{}.db", Uuid::new_v4()));
        let url = format!("sqlite://{}", path.display());
        let file = TempDb(path);
        let store = paysaga_store::connect(&url).await.unwrap();
        store.migrate().await.unwrap();
        Env {
            store,
            backend: Backend::Sqlite,
            url,
            _pg: None,
            _file: Some(file),
        }
    }

    fn s(&self) -> &dyn Store {
        self.store.as_ref()
    }
}

const STEP: &str = "test.step";
const LUMANU: &str = "lumanu.create_payable";
const LONG_TTL: Duration = Duration::from_secs(30);

fn definition(name: &str, version: u32, kinds: &[&str]) -> Definition {
    Definition {
        name: name.to_string(),
        version,
        description: None,
        steps: kinds
            .iter()
            .enumerate()
            .map(|(i, k)| StepDef::new(format!("s{}", i + 1), *k, json!({})))
            .collect(),
        concurrency: None,
    }
}

/// A new saga of workflow "flow" version 1 (definition `definition_id`) with idempotency
/// key `key`, nothing else set.
fn keyed_saga(definition_id: i64, key: &str) -> NewSaga {
    NewSaga {
        id: Uuid::new_v4(),
        definition_id,
        workflow: "flow".to_string(),
        version: 1,
        idempotency_key: Some(key.to_string()),
        input: json!({"amount": "10.00"}),
        actor: "test".to_string(),
        concurrency: None,
        trace_context: None,
        latest: false,
        awaited: false,
        documents: vec![],
    }
}

fn all_kinds() -> Vec<String> {
    vec![STEP.to_string(), LUMANU.to_string()]
}

async fn start(store: &dyn Store, workflow: &str, kinds: &[&str], key: Option<&str>) -> SagaRecord {
    let def = match store.find_definition(workflow, None).await.unwrap() {
        Some(d) => d,
        None => store
            .put_definition(&definition(workflow, 1, kinds))
            .await
            .unwrap(),
    };
    let (saga, created) = store
        .create_saga(NewSaga {
            id: Uuid::new_v4(),
            definition_id: def.id,
            workflow: workflow.to_string(),
            version: def.version,
            idempotency_key: key.map(str::to_string),
            input: json!({"amount": "10.00"}),
            actor: "test".to_string(),
            concurrency: None,
            trace_context: None,
            latest: false,
            awaited: false,
            documents: vec![],
        })
        .await
        .unwrap();
    assert!(created);
    // Distinct creation times for ordering checks.
    tokio::time::sleep(Duration::from_millis(3)).await;
    saga
}

async fn worker(store: &dyn Store, ttl: Duration) -> Uuid {
    let id = Uuid::new_v4();
    store
        .register_worker(
            &WorkerInfo {
                id,
                name: "conformance".to_string(),
                hostname: "localhost".to_string(),
                pid: std::process::id(),
                step_kinds: all_kinds(),
                assignments: None,
            },
            ttl,
        )
        .await
        .unwrap();
    id
}

/// Claims exactly the given saga (it must be the only runnable one).
async fn claim_one(store: &dyn Store, w: Uuid, saga: Uuid) -> SagaRecord {
    let claimed = store.claim(w, &all_kinds(), 16).await.unwrap();
    assert_eq!(claimed.len(), 1, "expected one claim: {claimed:?}");
    assert_eq!(claimed[0].saga.id, saga);
    claimed[0].saga.clone()
}

fn entry(kind: HistoryKind, step: Option<&str>, attempt: Option<u32>) -> HistoryEntry {
    HistoryEntry {
        kind,
        step: step.map(str::to_string),
        attempt,
        error: None,
        detail: Value::Null,
    }
}

fn transition(status: SagaStatus, step_index: usize) -> Transition {
    Transition {
        status,
        step_index,
        attempt: 0,
        step_started_at: None,
        run_at: if status.is_final() {
            None
        } else {
            Some(Utc::now())
        },
        wait: None,
        output: None,
        last_error: None,
        history: Vec::new(),
        continue_now: false,
        effect_possible: false,
    }
}

fn wait_transition(key: &str, until: DateTime<Utc>) -> Transition {
    let now = Utc::now();
    let mut t = transition(SagaStatus::Waiting, 0);
    t.attempt = 1;
    t.step_started_at = Some(now);
    t.run_at = Some(until);
    t.wait = Some(ActiveWait {
        provider: "lumanu".to_string(),
        event_types: vec!["payable.paid".to_string(), "payable.failed".to_string()],
        correlation_key: key.to_string(),
        deadline: until,
        poll_at: until,
        since: now,
        state: json!({"payable_id": key}),
    });
    t.history = vec![entry(HistoryKind::StepWaiting, Some("s1"), Some(1))];
    t
}

async fn commit(
    store: &dyn Store,
    saga: &SagaRecord,
    w: Uuid,
    t: &Transition,
    consumed_event: Option<i64>,
) -> Result<paysaga_store::Committed, Error> {
    commit_with_token(store, saga, w, t, consumed_event, Uuid::new_v4()).await
}

async fn commit_with_token(
    store: &dyn Store,
    saga: &SagaRecord,
    w: Uuid,
    t: &Transition,
    consumed_event: Option<i64>,
    token: Uuid,
) -> Result<paysaga_store::Committed, Error> {
    store
        .commit(Commit {
            saga: saga.id,
            worker: w,
            fence: saga.fence,
            prior_status: saga.status,
            consumed_event,
            transition: t,
            token,
            references: &[],
        })
        .await
}

fn event(event_id: &str, event_type: &str, key: &str) -> NewEvent {
    NewEvent {
        provider: "lumanu".to_string(),
        event_id: event_id.to_string(),
        event_type: Some(event_type.to_string()),
        correlation_key: Some(key.to_string()),
        payload: Some(json!({"id": key, "status": "paid"})),
        raw_body: None,
        parse_error: None,
    }
}

async fn saga(store: &dyn Store, id: Uuid) -> SagaRecord {
    store.saga(id).await.unwrap().unwrap()
}

async fn history_kinds(store: &dyn Store, id: Uuid) -> Vec<HistoryKind> {
    store
        .history(id)
        .await
        .unwrap()
        .into_iter()
        .map(|h| h.kind)
        .collect()
}

/// A mark of step `step` (named `s{step+1}`, attempt 1).
fn mark(
    saga: Uuid,
    worker: Uuid,
    fence: i64,
    step: i32,
    window: Duration,
) -> EffectMarkRequest<'static> {
    const NAMES: [&str; 2] = ["s1", "s2"];
    EffectMarkRequest {
        saga,
        worker,
        fence,
        step,
        step_name: NAMES[step as usize],
        attempt: 1,
        window,
    }
}

fn close(a: DateTime<Utc>, b: DateTime<Utc>) -> bool {
    (a - b).num_milliseconds().abs() <= 1
}

fn ids(sagas: &[SagaRecord]) -> Vec<Uuid> {
    sagas.iter().map(|s| s.id).collect()
}

// ---------------------------------------------------------------------------------------
// Test bodies

async fn definition_submit_is_idempotent_and_changed_content_is_refused(e: Env) {
    let s = e.s();
    let v1 = definition("flow", 1, &[STEP, STEP]);
    let first = s.put_definition(&v1).await.unwrap();
    let again = s.put_definition(&v1).await.unwrap();
    assert_eq!(first.id, again.id);
    assert_eq!(first.content_hash, v1.content_hash());
    assert_eq!(first.step_kinds, v1.step_kinds());
    assert_eq!(s.definition(first.id).await.unwrap().definition, v1);

    let changed = definition("flow", 1, &[STEP, STEP, STEP]);
    match s.put_definition(&changed).await {
        Err(Error::DefinitionConflict {
            name,
            version,
            existing,
        }) => {
            assert_eq!((name.as_str(), version), ("flow", 1));
            assert_eq!(existing, first.content_hash);
        }
        other => panic!("changed content under v1 must be refused, got {other:?}"),
    }
    assert_eq!(s.definition(first.id).await.unwrap().definition, v1);

    let v2 = s
        .put_definition(&definition("flow", 2, &[STEP, STEP, STEP]))
        .await
        .unwrap();
    assert_ne!(v2.id, first.id);
    assert_eq!(
        s.find_definition("flow", None).await.unwrap().unwrap().id,
        v2.id
    );
    assert_eq!(
        s.find_definition("flow", Some(1))
            .await
            .unwrap()
            .unwrap()
            .id,
        first.id
    );
    assert!(s.find_definition("flow", Some(3)).await.unwrap().is_none());
    assert!(matches!(s.definition(9999).await, Err(Error::NotFound(_))));
    let listed: Vec<(String, u32)> = s
        .list_definitions()
        .await
        .unwrap()
        .into_iter()
        .map(|d| (d.name, d.version))
        .collect();
    assert_eq!(listed, [("flow".to_string(), 2), ("flow".to_string(), 1)]);
}

async fn start_is_idempotent_per_key_and_a_reused_key_with_another_input_is_refused(e: Env) {
    let s = e.s();
    let first = start(s, "flow", &[STEP], Some("order-42")).await;
    assert_eq!(first.status, SagaStatus::Scheduled);
    assert!(first.run_at.is_some_and(|at| at <= Utc::now()));
    assert_eq!(first.fence, 0);
    assert!(first.owner.is_none());

    let mut same = NewSaga {
        id: Uuid::new_v4(),
        definition_id: first.definition_id,
        workflow: "flow".to_string(),
        version: 1,
        idempotency_key: Some("order-42".to_string()),
        input: first.input.clone(),
        actor: "test".to_string(),
        concurrency: None,
        trace_context: None,
        latest: false,
        awaited: false,
        documents: vec![],
    };
    let (existing, created) = s.create_saga(same.clone()).await.unwrap();
    assert!(!created);
    assert_eq!(existing.id, first.id);

    same.id = Uuid::new_v4();
    same.input = json!({"amount": "99.00"});
    match s.create_saga(same.clone()).await {
        Err(Error::KeyReused { saga, key, .. }) => {
            assert_eq!(saga, first.id);
            assert_eq!(key, "order-42");
        }
        other => panic!("a reused key with another input must be refused, got {other:?}"),
    }
    // Without a key, every start is a new saga.
    same.idempotency_key = None;
    let (a, created_a) = s.create_saga(same.clone()).await.unwrap();
    same.id = Uuid::new_v4();
    let (b, created_b) = s.create_saga(same).await.unwrap();
    assert!(created_a && created_b && a.id != b.id);

    let history = s.history(first.id).await.unwrap();
    assert_eq!(history.len(), 1);
    assert_eq!(history[0].kind, HistoryKind::SagaStarted);
    assert_eq!(history[0].actor.as_deref(), Some("test"));
}

/// A start that resolved the latest version (`NewSaga::latest`) is refused, writing
/// nothing, once a newer version is stored; with that version it starts, and a start that
/// pinned the old version on purpose still may. Both insert paths: with and without a
/// concurrency key, and (PostgreSQL) the one giving the saga to a worker.
async fn a_start_resolved_against_a_version_no_longer_the_latest_writes_nothing(e: Env) {
    let s = e.s();
    let v1 = s
        .put_definition(&definition("flow", 1, &[STEP]))
        .await
        .unwrap();
    let v2 = s
        .put_definition(&definition("flow", 2, &[STEP]))
        .await
        .unwrap();
    let w = worker(s, LONG_TTL).await;
    let new =
        |def: &paysaga_store::DefinitionRecord, key: &str, latest: bool, keyed: bool| NewSaga {
            id: Uuid::new_v4(),
            definition_id: def.id,
            workflow: "flow".to_string(),
            version: def.version,
            idempotency_key: Some(key.to_string()),
            input: json!({"amount": "10.00"}),
            actor: "test".to_string(),
            concurrency: keyed.then(|| paysaga_store::SagaConcurrency {
                key: "payee:p1".to_string(),
                limit: 1,
                holds_slot: false,
            }),
            trace_context: None,
            latest,
            awaited: false,
            documents: vec![],
        };
    for keyed in [false, true] {
        let key = format!("k-{keyed}");
        for given in [false, true] {
            let outdated = if given {
                s.create_saga_for(new(&v1, &key, true, keyed), w).await
            } else {
                s.create_saga(new(&v1, &key, true, keyed)).await
            };
            match outdated {
                Err(Error::DefinitionOutdated { workflow, version }) => {
                    assert_eq!((workflow.as_str(), version), ("flow", 1));
                }
                other => panic!(
                    "keyed {keyed}, given {given}: expected DefinitionOutdated, got {other:?}"
                ),
            }
        }
        let listed = s
            .list_sagas(&SagaFilter {
                workflow: Some("flow".to_string()),
                ..SagaFilter::default()
            })
            .await
            .unwrap();
        assert!(listed
            .iter()
            .all(|x| x.idempotency_key.as_deref() != Some(key.as_str())));
        let (latest, created) = s.create_saga(new(&v2, &key, true, keyed)).await.unwrap();
        assert!(created);
        assert_eq!(latest.version, 2);
        let (pinned, created) = s
            .create_saga(new(&v1, &format!("{key}-pinned"), false, keyed))
            .await
            .unwrap();
        assert!(created);
        assert_eq!(pinned.version, 1);
    }
}

async fn concurrent_starts_with_one_key_create_exactly_one_saga(e: Env) {
    let def = e
        .s()
        .put_definition(&definition("flow", 1, &[STEP]))
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let store = e.store.clone();
        let def_id = def.id;
        tasks.push(tokio::spawn(async move {
            store
                .create_saga(NewSaga {
                    id: Uuid::new_v4(),
                    definition_id: def_id,
                    workflow: "flow".to_string(),
                    version: 1,
                    idempotency_key: Some("same-key".to_string()),
                    input: json!({"n": 1}),
                    actor: "test".to_string(),
                    concurrency: None,
                    trace_context: None,
                    latest: false,
                    awaited: false,
                    documents: vec![],
                })
                .await
                .unwrap()
        }));
    }
    let mut results = Vec::new();
    for t in tasks {
        results.push(t.await.unwrap());
    }
    assert_eq!(results.iter().filter(|(_, created)| *created).count(), 1);
    let id = results[0].0.id;
    assert!(results.iter().all(|(s, _)| s.id == id));
    let listed = e
        .s()
        .list_sagas(&SagaFilter {
            key: Some("same-key".to_string()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(ids(&listed), [id]);
}

async fn claim_bumps_the_fence_and_a_stale_fence_cannot_commit(e: Env) {
    let s = e.s();
    let w = worker(s, LONG_TTL).await;
    let started = start(s, "flow", &[STEP, STEP], None).await;
    let first = claim_one(s, w, started.id).await;
    assert_eq!((first.owner, first.fence), (Some(w), 1));
    assert!(s.claim(w, &all_kinds(), 16).await.unwrap().is_empty());

    assert!(s.release(first.id, w, first.fence).await.unwrap());
    let second = claim_one(s, w, started.id).await;
    assert_eq!(second.fence, 2);

    let mut done = transition(SagaStatus::Scheduled, 1);
    done.output = Some(("s1".to_string(), json!({"stale": true})));
    done.history = vec![entry(HistoryKind::StepCompleted, Some("s1"), Some(1))];
    let err = commit(s, &first, w, &done, None).await.unwrap_err();
    assert!(matches!(err, Error::LeaseLost { saga } if saga == started.id));
    let unchanged = saga(s, started.id).await;
    assert_eq!(
        (unchanged.status, unchanged.step_index),
        (SagaStatus::Scheduled, 0)
    );
    assert_eq!(unchanged.outputs, json!({}));
    // The give-back and the refusal are in history; nothing of the refused transition is.
    assert_eq!(
        history_kinds(s, started.id).await,
        [
            HistoryKind::SagaStarted,
            HistoryKind::SagaReleased,
            HistoryKind::CommitRefused
        ]
    );
    let refused = s.history(started.id).await.unwrap().pop().unwrap();
    assert_eq!(refused.worker, Some(w));
    assert_eq!(
        (refused.step.as_deref(), refused.attempt),
        (Some("s1"), Some(1))
    );
    let detail = refused.detail.unwrap();
    assert_eq!(detail["fence"], json!(first.fence));
    assert_eq!(detail["refused_entries"], json!(["step_completed"]));

    done.output = Some(("s1".to_string(), json!({"fresh": true})));
    commit(s, &second, w, &done, None).await.unwrap();
    assert_eq!(
        saga(s, started.id).await.outputs,
        json!({"s1": {"fresh": true}})
    );
}

async fn worker_whose_lease_expired_cannot_commit_even_before_it_is_reaped(e: Env) {
    let s = e.s();
    let w = worker(s, Duration::from_millis(300)).await;
    let started = start(s, "flow", &[STEP], None).await;
    let claimed = claim_one(s, w, started.id).await;
    tokio::time::sleep(Duration::from_millis(450)).await;
    let done = transition(SagaStatus::Completed, 1);
    let err = commit(s, &claimed, w, &done, None).await.unwrap_err();
    assert!(matches!(err, Error::LeaseLost { .. }));
    assert!(!s.heartbeat(w, LONG_TTL).await.unwrap());
    assert_eq!(saga(s, started.id).await.status, SagaStatus::Scheduled);
}

/// Found by the chaos run: a worker frozen (SIGSTOP) past its lease was reaped, then thawed
/// and claimed sagas under its dead id before its heartbeat noticed; nothing ever released
/// them again. A worker that is not live claims nothing.
async fn a_worker_whose_lease_expired_or_was_reaped_claims_nothing(e: Env) {
    let s = e.s();
    let w = worker(s, Duration::from_millis(300)).await;
    let started = start(s, "flow", &[STEP], None).await;
    tokio::time::sleep(Duration::from_millis(450)).await;
    // Expired, not yet reaped.
    assert!(s.claim(w, &all_kinds(), 16).await.unwrap().is_empty());
    let alive = worker(s, LONG_TTL).await;
    assert_eq!(s.reap_expired_workers().await.unwrap(), 0);
    // Reaped.
    assert!(s.claim(w, &all_kinds(), 16).await.unwrap().is_empty());
    let unowned = saga(s, started.id).await;
    assert!(unowned.owner.is_none(), "the saga stays claimable");
    assert_eq!(claim_one(s, alive, started.id).await.owner, Some(alive));
}

/// A commit applied whose acknowledgement was lost (connection cut after the server
/// committed) is retried by the worker with the same token: nothing is written twice, and the
/// saga is given back to be claimed from what is stored.
async fn a_commit_retried_after_a_lost_acknowledgement_writes_nothing_twice(e: Env) {
    let s = e.s();
    let w = worker(s, LONG_TTL).await;
    let started = start(s, "flow", &[STEP, STEP], None).await;
    let claimed = claim_one(s, w, started.id).await;
    let mut done = transition(SagaStatus::Scheduled, 1);
    done.continue_now = true;
    done.run_at = Some(Utc::now());
    done.output = Some(("s1".to_string(), json!({"n": 1})));
    done.history = vec![entry(HistoryKind::StepCompleted, Some("s1"), Some(1))];
    let token = Uuid::new_v4();
    let first = commit_with_token(s, &claimed, w, &done, None, token)
        .await
        .unwrap();
    assert!(first.kept);
    let again = commit_with_token(s, &claimed, w, &done, None, token)
        .await
        .unwrap();
    assert!(!again.kept, "the retry gives the saga back");
    assert_eq!(
        history_kinds(s, started.id).await,
        [HistoryKind::SagaStarted, HistoryKind::StepCompleted]
    );
    let stored = saga(s, started.id).await;
    assert_eq!(
        (stored.status, stored.step_index),
        (SagaStatus::Scheduled, 1)
    );
    assert!(stored.owner.is_none());
    // Another transition of the same holder with a new token is still refused (lease given
    // back), and the saga is claimable again.
    assert!(matches!(
        commit(s, &claimed, w, &done, None).await.unwrap_err(),
        Error::LeaseLost { .. }
    ));
    assert_eq!(claim_one(s, w, started.id).await.fence, claimed.fence + 1);
}

/// Chaos found a Blaaiz payout sent twice: a worker whose lease lapsed while it was about
/// to create the payout (found none, then paused) and the worker that took the saga over
/// both sent it. A request is marked under the fence before it is sent; a mark on the same
/// step younger than the window holds every other attempt back, and a worker that lost
/// the saga cannot mark at all.
async fn a_marked_request_is_not_sent_again_within_its_window_nor_by_a_worker_that_lost_the_saga(
    e: Env,
) {
    let s = e.s();
    // Lease and window long enough that a loaded machine (CI, parallel tests) finishes the
    // first holder's marks well within them.
    let window = Duration::from_millis(4000);
    let a = worker(s, Duration::from_millis(1500)).await;
    let started = start(s, "flow", &[STEP, STEP], None).await;
    let held = claim_one(s, a, started.id).await;
    assert_eq!(
        s.mark_effect(mark(started.id, a, held.fence, 0, window))
            .await
            .unwrap(),
        EffectMark::Marked
    );
    // The same holder's next attempt of the same step waits (its request may still land).
    match s
        .mark_effect(mark(started.id, a, held.fence, 0, window))
        .await
        .unwrap()
    {
        EffectMark::Wait { remaining, .. } => {
            assert!(
                remaining > Duration::ZERO && remaining <= window,
                "{remaining:?}"
            )
        }
        other => panic!("expected Wait, got {other:?}"),
    }
    // Withdrawn (refused before it took effect): the next attempt may send at once.
    assert!(s
        .clear_effect_mark(mark(started.id, a, held.fence, 0, Duration::ZERO))
        .await
        .unwrap());
    assert_eq!(
        s.mark_effect(mark(started.id, a, held.fence, 0, window))
            .await
            .unwrap(),
        EffectMark::Marked
    );
    // Another step is another request.
    assert_eq!(
        s.mark_effect(mark(started.id, a, held.fence, 1, window))
            .await
            .unwrap(),
        EffectMark::Marked
    );
    // A's lease lapses (a pause); B takes the saga over.
    tokio::time::sleep(Duration::from_millis(1700)).await;
    let b = worker(s, LONG_TTL).await;
    s.reap_expired_workers().await.unwrap();
    let taken = claim_one(s, b, started.id).await;
    assert!(matches!(
        s.mark_effect(mark(started.id, a, held.fence, 1, window))
            .await
            .unwrap_err(),
        Error::LeaseLost { .. }
    ));
    // Nor can it withdraw its mark: B still waits for A's request.
    assert!(!s
        .clear_effect_mark(mark(started.id, a, held.fence, 1, Duration::ZERO))
        .await
        .unwrap());
    assert!(matches!(
        s.mark_effect(mark(started.id, b, taken.fence, 1, window))
            .await
            .unwrap(),
        EffectMark::Wait { .. }
    ));
    // Once the window has closed, B may send.
    tokio::time::sleep(window).await;
    assert_eq!(
        s.mark_effect(mark(started.id, b, taken.fence, 1, window))
            .await
            .unwrap(),
        EffectMark::Marked
    );
}

/// `n` two-step sagas claimed by `w`: the first `n - 1` as claimed, the last as it was
/// before it was given back and claimed again (its fence is stale), and as claimed again.
async fn held_with_one_stale(
    s: &dyn Store,
    w: Uuid,
    n: usize,
) -> (Vec<SagaRecord>, SagaRecord, SagaRecord) {
    let mut held = Vec::new();
    for _ in 0..n {
        let started = start(s, "flow", &[STEP, STEP], None).await;
        held.push(claim_one(s, w, started.id).await);
    }
    let stale = held.pop().unwrap();
    assert!(s.release(stale.id, w, stale.fence).await.unwrap());
    let fresh = claim_one(s, w, stale.id).await;
    (held, stale, fresh)
}

/// Step commits of many sagas at the same moment: each is applied exactly once, with its own
/// output and history; one whose fence is stale is refused without holding the others back;
/// the sagas whose transition does not continue give their lease back, the others keep it.
async fn concurrent_commits_of_many_sagas_each_apply_once_and_a_stale_one_is_refused(e: Env) {
    let s = e.s();
    let w = worker(s, LONG_TTL).await;
    let (held, stale, fresh) = held_with_one_stale(s, w, 40).await;
    let transitions: Vec<Transition> = (0..held.len() + 1)
        .map(|n| {
            let mut t = transition(SagaStatus::Scheduled, 1);
            t.continue_now = n % 2 == 0;
            t.run_at = Some(Utc::now());
            t.output = Some(("s1".to_string(), json!({ "n": n })));
            t.history = vec![entry(HistoryKind::StepCompleted, Some("s1"), Some(1))];
            t
        })
        .collect();
    let sagas: Vec<&SagaRecord> = held.iter().chain([&stale]).collect();
    let results = futures::future::join_all(
        sagas
            .iter()
            .zip(&transitions)
            .map(|(saga, t)| commit(s, saga, w, t, None)),
    )
    .await;
    let (last, applied) = results.split_last().unwrap();
    assert!(matches!(last, Err(Error::LeaseLost { .. })), "{last:?}");
    for (n, (result, saga_before)) in applied.iter().zip(&held).enumerate() {
        let committed = result.as_ref().unwrap();
        assert_eq!(committed.kept, n % 2 == 0);
        let stored = saga(s, saga_before.id).await;
        assert_eq!(stored.step_index, 1);
        assert_eq!(stored.outputs["s1"], json!({ "n": n }));
        assert_eq!(stored.owner.is_some(), n % 2 == 0, "saga #{n}");
        assert_eq!(
            history_kinds(s, saga_before.id).await,
            [HistoryKind::SagaStarted, HistoryKind::StepCompleted],
            "saga #{n}"
        );
    }
    let untouched = saga(s, stale.id).await;
    assert_eq!((untouched.step_index, untouched.fence), (0, fresh.fence));
    assert_eq!(
        history_kinds(s, stale.id).await,
        [
            HistoryKind::SagaStarted,
            HistoryKind::SagaReleased,
            HistoryKind::CommitRefused
        ]
    );
}

/// Many different step commits at the same moment (on PostgreSQL they group into shared
/// statements while the database is busy): each saga gets exactly its own status, output,
/// error, end, lease, history rows in order and references, whatever it shares a statement
/// with; a stale one in the crowd is refused and stores nothing.
async fn concurrent_commits_of_every_kind_keep_each_sagas_own_writes(e: Env) {
    let s = e.s();
    let w = worker(s, LONG_TTL).await;
    let (held, stale, _) = held_with_one_stale(s, w, 48).await;
    let later = Utc::now() + chrono::Duration::hours(1);
    let plan: Vec<(Transition, Vec<SagaReference>)> = (0..=held.len())
        .map(|n| {
            let done = |step| entry(HistoryKind::StepCompleted, Some(step), Some(1));
            match n % 4 {
                0 => {
                    let mut t = transition(SagaStatus::Scheduled, 1);
                    t.continue_now = true;
                    t.output = Some(("s1".to_string(), json!({ "n": n })));
                    t.history = vec![done("s1")];
                    let refs = vec![
                        reference("s1", "payable_id", &format!("pay_{n}")),
                        reference("s1", "funding_id", &format!("fund_{n}")),
                    ];
                    (t, refs)
                }
                1 => {
                    let mut t = transition(SagaStatus::Retrying, 0);
                    t.attempt = 2;
                    t.run_at = Some(later);
                    t.last_error = Some(format!("boom {n}"));
                    t.history = vec![HistoryEntry {
                        error: Some(format!("boom {n}")),
                        ..entry(HistoryKind::StepRetrying, Some("s1"), Some(1))
                    }];
                    (t, Vec::new())
                }
                2 => {
                    let mut t = transition(SagaStatus::Completed, 2);
                    t.output = Some(("s2".to_string(), json!({ "n": n })));
                    t.history = vec![done("s2"), entry(HistoryKind::SagaCompleted, None, None)];
                    (t, Vec::new())
                }
                _ => {
                    let mut t = transition(SagaStatus::Scheduled, 1);
                    t.output = Some(("s1".to_string(), json!({ "n": n })));
                    t.history = vec![done("s1")];
                    (
                        t,
                        vec![reference("s1", "intent_id", &format!("intent_{n}"))],
                    )
                }
            }
        })
        .collect();
    let sagas: Vec<&SagaRecord> = held.iter().chain([&stale]).collect();
    let results = futures::future::join_all(
        sagas
            .iter()
            .zip(&plan)
            .map(|(saga, (t, refs))| commit_with_references(s, saga, w, t, refs)),
    )
    .await;
    let (last, applied) = results.split_last().unwrap();
    assert!(matches!(last, Err(Error::LeaseLost { .. })), "{last:?}");
    assert!(s.saga_references(stale.id).await.unwrap().is_empty());
    for (n, (result, before)) in applied.iter().zip(&held).enumerate() {
        let committed = result.as_ref().unwrap();
        let (t, refs) = &plan[n];
        let stored = saga(s, before.id).await;
        assert_eq!(committed.kept, n % 4 == 0, "saga #{n}");
        assert_eq!(stored.status, t.status, "saga #{n}");
        assert_eq!(stored.step_index, t.step_index, "saga #{n}");
        assert_eq!(stored.attempt, t.attempt, "saga #{n}");
        assert_eq!(stored.last_error, t.last_error, "saga #{n}");
        assert_eq!(stored.owner.is_some(), n % 4 == 0, "saga #{n}");
        assert_eq!(stored.finished_at.is_some(), n % 4 == 2, "saga #{n}");
        match &t.output {
            Some((name, value)) => assert_eq!(&stored.outputs[name], value, "saga #{n}"),
            None => assert_eq!(stored.outputs, json!({}), "saga #{n}"),
        }
        if n % 4 == 1 {
            assert!(close(stored.run_at.unwrap(), later), "saga #{n}");
        }
        let mut expected = vec![HistoryKind::SagaStarted];
        expected.extend(t.history.iter().map(|h| h.kind));
        let history = s.history(before.id).await.unwrap();
        assert_eq!(
            history.iter().map(|h| h.kind).collect::<Vec<_>>(),
            expected,
            "saga #{n}"
        );
        assert_eq!(history.last().unwrap().error, t.last_error, "saga #{n}");
        let mut want = refs.clone();
        want.sort_by(|a, b| (&a.step, &a.name, &a.value).cmp(&(&b.step, &b.name, &b.value)));
        assert_eq!(
            s.saga_references(before.id).await.unwrap(),
            want,
            "saga #{n}"
        );
    }
    if e.backend == Backend::Postgres {
        // Rows written by one statement share its transaction id: fewer transactions than
        // commits means commits were grouped.
        let pool = sqlx::PgPool::connect(&e.url).await.unwrap();
        let transactions: i64 = sqlx::query_scalar(
            "SELECT count(DISTINCT xmin::text) FROM paysaga_history
             WHERE kind IN ('step_completed', 'step_retrying')",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        assert!(
            transactions < held.len() as i64,
            "{transactions} transactions for {} commits",
            held.len()
        );
    }
}

/// A commit that keeps the saga (the worker runs the next step at once) leaves `run_at` as it
/// was: nothing reads it while the saga is owned, and a release makes the saga due at once.
/// On PostgreSQL those commits are then HOT updates (no indexed column changes).
async fn commits_that_keep_the_saga_leave_run_at_and_are_hot_updates(e: Env) {
    let s = e.s();
    let w = worker(s, LONG_TTL).await;
    let started = start(s, "flow", &[STEP; 6], None).await;
    let claimed = claim_one(s, w, started.id).await;
    let claimed_run_at = saga(s, started.id).await.run_at;
    let mut held = claimed.clone();
    for step in 1..=5 {
        let mut t = transition(SagaStatus::Scheduled, step);
        t.continue_now = true;
        t.run_at = Some(Utc::now() + chrono::Duration::hours(1));
        t.output = Some((format!("s{step}"), json!({ "step": step })));
        t.history = vec![entry(HistoryKind::StepCompleted, Some("s1"), Some(1))];
        assert!(commit(s, &held, w, &t, None).await.unwrap().kept);
        held = saga(s, started.id).await;
        assert_eq!(held.run_at, claimed_run_at, "run_at untouched while kept");
        assert_eq!(held.step_index, step);
    }
    // Given back, the saga is due at once.
    assert!(s.release(started.id, w, held.fence).await.unwrap());
    assert!(saga(s, started.id).await.run_at.unwrap() <= Utc::now());
    if e.backend == Backend::Postgres {
        let pool = sqlx::PgPool::connect(&e.url).await.unwrap();
        // Backends report table statistics at most once a second, when idle.
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        let (updates, hot): (i64, i64) = loop {
            let counts: (i64, i64) = sqlx::query_as(
                "SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables
                 WHERE relname = 'paysaga_sagas'",
            )
            .fetch_one(&pool)
            .await
            .unwrap();
            let _ = s.saga(started.id).await;
            if counts.1 >= 4 || std::time::Instant::now() > deadline {
                break counts;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
            sqlx::query("SELECT pg_stat_clear_snapshot()")
                .execute(&pool)
                .await
                .unwrap();
        };
        // The claim, the first step (status scheduled -> running) and the release change
        // indexed columns; the four later step commits must not.
        assert!(hot >= 4, "{hot} HOT updates of {updates}");
    }
}

async fn heartbeat_extends_a_live_lease(e: Env) {
    let s = e.s();
    // Four beats 300 ms apart outlive the 1 s lease only because each extends it; each beat
    // has 700 ms of slack (a 400 ms lease beaten every 150 ms failed once on a loaded
    // machine, its SQLite beat late).
    let ttl = Duration::from_millis(1000);
    let w = worker(s, ttl).await;
    let started = start(s, "flow", &[STEP], None).await;
    let claimed = claim_one(s, w, started.id).await;
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(s.heartbeat(w, ttl).await.unwrap());
    }
    assert_eq!(s.reap_expired_workers().await.unwrap(), 0);
    commit(s, &claimed, w, &transition(SagaStatus::Completed, 1), None)
        .await
        .unwrap();
}

async fn reaper_releases_sagas_of_expired_workers_and_their_fence_is_stale(e: Env) {
    let s = e.s();
    let dead = worker(s, Duration::from_millis(300)).await;
    let started = start(s, "flow", &[STEP], None).await;
    let held = claim_one(s, dead, started.id).await;
    tokio::time::sleep(Duration::from_millis(450)).await;
    // A new worker may register once the old lease has expired (on every store).
    let alive = worker(s, LONG_TTL).await;
    assert_eq!(s.reap_expired_workers().await.unwrap(), 1);
    assert_eq!(s.reap_expired_workers().await.unwrap(), 0);
    let released = saga(s, started.id).await;
    assert!(released.owner.is_none());
    assert!(released.run_at.is_some_and(|at| at <= Utc::now()));
    let history = s.history(started.id).await.unwrap();
    let takeover = history.last().unwrap();
    assert_eq!(takeover.kind, HistoryKind::LeaseTakenOver);
    assert_eq!(
        takeover.detail.as_ref().unwrap()["expired_workers"],
        json!([dead])
    );

    let taken = claim_one(s, alive, started.id).await;
    assert_eq!(taken.fence, held.fence + 1);
    let err = commit(s, &held, dead, &transition(SagaStatus::Completed, 1), None)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::LeaseLost { .. }));
    commit(
        s,
        &taken,
        alive,
        &transition(SagaStatus::Completed, 1),
        None,
    )
    .await
    .unwrap();
    assert_eq!(saga(s, started.id).await.status, SagaStatus::Completed);
}

async fn stop_worker_releases_every_saga_it_holds(e: Env) {
    let s = e.s();
    let w = worker(s, LONG_TTL).await;
    let a = start(s, "flow", &[STEP], None).await;
    let b = start(s, "flow", &[STEP], None).await;
    let claimed = s.claim(w, &all_kinds(), 16).await.unwrap();
    assert_eq!(claimed.len(), 2);
    assert_eq!(s.stop_worker(w).await.unwrap(), 2);
    for id in [a.id, b.id] {
        assert!(saga(s, id).await.owner.is_none());
    }
    assert!(!s.heartbeat(w, LONG_TTL).await.unwrap());
    let err = commit(
        s,
        &claimed[0].saga,
        w,
        &transition(SagaStatus::Completed, 1),
        None,
    )
    .await
    .unwrap_err();
    assert!(matches!(err, Error::LeaseLost { .. }));
}

/// `create_saga_for`: on PostgreSQL the new saga is held by the live worker it names, in
/// the insert's own commit (fence 1, no wake-up sent, nobody else can claim it); a worker
/// that stopped is given nothing (the saga is unowned, workers are woken) and its stop
/// releases the sagas it was given. The SQLite store gives no saga (the default): every
/// start goes through the claim there.
async fn a_start_given_to_a_live_worker_is_held_by_it_alone_and_its_stop_releases_it(e: Env) {
    let s = e.s();
    let def = s
        .put_definition(&definition("flow", 1, &[STEP]))
        .await
        .unwrap();
    let new = |key: &str| keyed_saga(def.id, key);
    let mut wakeups = e.store.wakeups().await.unwrap();
    let w = worker(s, LONG_TTL).await;
    let (given, created) = s.create_saga_for(new("a"), w).await.unwrap();
    assert!(created);
    if e.backend == Backend::Sqlite {
        assert_eq!((given.owner, given.fence), (None, 0));
        claim_one(s, w, given.id).await;
        return;
    }
    assert_eq!((given.owner, given.fence), (Some(w), 1));
    assert!(
        tokio::time::timeout(Duration::from_millis(500), wakeups.recv())
            .await
            .is_err(),
        "a saga given to a worker wakes nobody"
    );
    let other = worker(s, LONG_TTL).await;
    assert!(s.claim(other, &all_kinds(), 16).await.unwrap().is_empty());
    assert_eq!(
        history_kinds(s, given.id).await,
        vec![HistoryKind::SagaStarted]
    );
    commit(s, &given, w, &transition(SagaStatus::Completed, 1), None)
        .await
        .unwrap();
    // The same key again: that saga, as it is.
    let (again, created) = s.create_saga_for(new("a"), other).await.unwrap();
    assert!(!created);
    assert_eq!((again.id, again.status), (given.id, SagaStatus::Completed));
    // Its stop releases what it was given; a stopped worker is given nothing.
    let held = worker(s, LONG_TTL).await;
    let (b, _) = s.create_saga_for(new("b"), held).await.unwrap();
    assert_eq!(b.owner, Some(held));
    assert_eq!(s.stop_worker(held).await.unwrap(), 1);
    assert_eq!(saga(s, b.id).await.owner, None);
    while tokio::time::timeout(Duration::from_millis(300), wakeups.recv())
        .await
        .is_ok()
    {}
    let (c, created) = s.create_saga_for(new("c"), held).await.unwrap();
    assert!(created);
    assert_eq!((c.owner, c.fence), (None, 0));
    tokio::time::timeout(Duration::from_secs(5), wakeups.recv())
        .await
        .expect("a saga given to nobody wakes the workers")
        .unwrap();
    let claimed: Vec<SagaRecord> = s
        .claim(other, &all_kinds(), 16)
        .await
        .unwrap()
        .into_iter()
        .map(|c| c.saga)
        .collect();
    let mut claimed = ids(&claimed);
    claimed.sort();
    let mut expected = vec![b.id, c.id];
    expected.sort();
    assert_eq!(claimed, expected);
}

async fn release_gives_the_saga_back_unchanged(e: Env) {
    let s = e.s();
    let w = worker(s, LONG_TTL).await;
    let started = start(s, "flow", &[STEP], None).await;
    let claimed = claim_one(s, w, started.id).await;
    assert!(!s.release(started.id, w, claimed.fence + 1).await.unwrap());
    assert!(!s
        .release(started.id, Uuid::new_v4(), claimed.fence)
        .await
        .unwrap());
    assert!(s.release(started.id, w, claimed.fence).await.unwrap());
    let released = saga(s, started.id).await;
    assert_eq!(released.owner, None);
    assert_eq!(
        (released.status, released.step_index, released.attempt),
        (started.status, started.step_index, started.attempt)
    );
    assert!(released.run_at.is_some_and(|at| at <= Utc::now()));
    assert_eq!(claim_one(s, w, started.id).await.fence, claimed.fence + 1);
}

/// A step's alert is a `saga_alert` history row written with the step's result; `list` with
/// `alerts` finds the saga whatever its status (issue 11 item 9).
async fn sagas_with_an_alert_are_listed_by_the_alerts_filter(e: Env) {
    let s = e.s();
    let w = worker(s, LONG_TTL).await;
    let alerted = start(s, "flow", &[STEP, STEP], None).await;
    let claimed = claim_one(s, w, alerted.id).await;
    let mut done = transition(SagaStatus::Completed, 2);
    done.output = Some((
        "s1".to_string(),
        json!({"alerts": [{"kind": "duplicate_funding_deposit"}]}),
    ));
    done.history = vec![
        entry(HistoryKind::StepCompleted, Some("s1"), Some(1)),
        HistoryEntry {
            detail: json!({"alert": "duplicate_funding_deposit", "message": "funded twice"}),
            ..entry(HistoryKind::SagaAlert, Some("s1"), Some(1))
        },
        entry(HistoryKind::SagaCompleted, None, None),
    ];
    commit(s, &claimed, w, &done, None).await.unwrap();
    let quiet = start(s, "flow", &[STEP, STEP], None).await;
    let listed = s
        .list_sagas(&SagaFilter {
            alerts: true,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(ids(&listed), [alerted.id]);
    let all = s.list_sagas(&SagaFilter::default()).await.unwrap();
    assert_eq!(all.len(), 2, "{:?} and {}", ids(&all), quiet.id);
    let rows: Vec<_> = s
        .history(alerted.id)
        .await
        .unwrap()
        .into_iter()
        .filter(|h| h.kind == HistoryKind::SagaAlert)
        .collect();
    assert_eq!(rows.len(), 1);
    assert_eq!(
        rows[0].detail.as_ref().unwrap()["alert"],
        "duplicate_funding_deposit"
    );
}

async fn commit_stores_done_retry_and_fail_transitions_with_their_history(e: Env) {
    let s = e.s();
    let w = worker(s, LONG_TTL).await;
    let started = start(s, "flow", &[STEP, STEP], None).await;
    let claimed = claim_one(s, w, started.id).await;

    // Step done, continue at once: the worker keeps the lease (one commit per step).
    let mut done = transition(SagaStatus::Scheduled, 1);
    done.output = Some(("s1".to_string(), json!({"id": "pay_1"})));
    done.history = vec![entry(HistoryKind::StepCompleted, Some("s1"), Some(1))];
    done.continue_now = true;
    let c = commit(s, &claimed, w, &done, None).await.unwrap();
    assert!(c.kept && c.wake_event.is_none() && !c.cancel_requested);
    let kept = saga(s, started.id).await;
    assert_eq!((kept.owner, kept.fence), (Some(w), claimed.fence));
    assert_eq!((kept.status, kept.step_index), (SagaStatus::Scheduled, 1));

    // A transient failure: attempt, first attempt time and next run time are stored.
    let first_attempt = Utc::now();
    let retry_at = Utc::now() + chrono::Duration::milliseconds(300);
    let mut retry = transition(SagaStatus::Scheduled, 1);
    retry.attempt = 1;
    retry.step_started_at = Some(first_attempt);
    retry.run_at = Some(retry_at);
    retry.last_error = Some("provider timed out".to_string());
    retry.history = vec![HistoryEntry {
        error: Some("provider timed out".to_string()),
        detail: json!({"next_attempt_at": retry_at}),
        ..entry(HistoryKind::StepRetrying, Some("s2"), Some(1))
    }];
    let c = commit(s, &kept, w, &retry, None).await.unwrap();
    assert!(!c.kept);
    let backing_off = saga(s, started.id).await;
    assert_eq!(backing_off.owner, None);
    assert_eq!(backing_off.attempt, 1);
    assert!(close(backing_off.step_started_at.unwrap(), first_attempt));
    assert!(close(backing_off.run_at.unwrap(), retry_at));
    assert_eq!(
        backing_off.last_error.as_deref(),
        Some("provider timed out")
    );
    assert_eq!(backing_off.outputs, json!({"s1": {"id": "pay_1"}}));
    assert!(s.claim(w, &all_kinds(), 16).await.unwrap().is_empty());
    assert!(close(
        s.next_due(&all_kinds()).await.unwrap().unwrap(),
        retry_at
    ));

    tokio::time::sleep(Duration::from_millis(400)).await;
    let again = claim_one(s, w, started.id).await;
    assert_eq!(again.attempt, 1);

    // A permanent failure: final, not runnable, not owned.
    let mut fail = transition(SagaStatus::NeedsOperator, 1);
    fail.attempt = 2;
    fail.last_error = Some("account closed".to_string());
    fail.history = vec![
        HistoryEntry {
            error: Some("account closed".to_string()),
            ..entry(HistoryKind::StepFailed, Some("s2"), Some(2))
        },
        entry(HistoryKind::SagaParked, None, None),
    ];
    let c = commit(s, &again, w, &fail, None).await.unwrap();
    assert!(!c.kept);
    let failed = saga(s, started.id).await;
    assert_eq!(failed.status, SagaStatus::NeedsOperator);
    assert!(failed.run_at.is_none() && failed.owner.is_none() && failed.finished_at.is_some());
    assert!(s.next_due(&all_kinds()).await.unwrap().is_none());

    let history = s.history(started.id).await.unwrap();
    let kinds: Vec<HistoryKind> = history.iter().map(|h| h.kind).collect();
    assert_eq!(
        kinds,
        [
            HistoryKind::SagaStarted,
            HistoryKind::StepCompleted,
            HistoryKind::StepRetrying,
            HistoryKind::StepFailed,
            HistoryKind::SagaParked
        ]
    );
    assert!(history
        .windows(2)
        .all(|p| p[0].id < p[1].id && p[0].at <= p[1].at));
    assert!(history[1..].iter().all(|h| h.worker == Some(w)));
    assert_eq!(history[2].attempt, Some(1));
    assert_eq!(history[2].error.as_deref(), Some("provider timed out"));
    assert!(history[2].detail.as_ref().unwrap()["next_attempt_at"].is_string());
    assert_eq!(history[3].step.as_deref(), Some("s2"));
    assert_eq!(history[4].detail, None);
}

async fn commit_of_a_completed_saga_makes_it_final(e: Env) {
    let s = e.s();
    let w = worker(s, LONG_TTL).await;
    let started = start(s, "flow", &[STEP], None).await;
    let claimed = claim_one(s, w, started.id).await;
    let mut done = transition(SagaStatus::Completed, 1);
    done.output = Some(("s1".to_string(), json!(1)));
    done.continue_now = true; // ignored for a final status
    done.history = vec![
        entry(HistoryKind::StepCompleted, Some("s1"), Some(1)),
        entry(HistoryKind::SagaCompleted, None, None),
    ];
    let c = commit(s, &claimed, w, &done, None).await.unwrap();
    assert!(!c.kept);
    let finished = saga(s, started.id).await;
    assert_eq!(finished.status, SagaStatus::Completed);
    assert!(finished.owner.is_none() && finished.run_at.is_none());
    assert!(finished.finished_at.is_some());
    assert_eq!(finished.outputs, json!({"s1": 1}));
    assert!(s.claim(w, &all_kinds(), 16).await.unwrap().is_empty());
}

async fn event_delivered_before_the_wait_is_kept_and_consumed_when_the_wait_begins(e: Env) {
    let s = e.s();
    let early = s
        .deliver_event(event("evt-1", "payable.paid", "payable:1"))
        .await
        .unwrap();
    assert!(!early.duplicate && early.matched_saga.is_none());
    let unmatched = s
        .list_events(&EventFilter {
            unmatched: true,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(unmatched.len(), 1);

    let w = worker(s, LONG_TTL).await;
    let started = start(s, "flow", &[LUMANU, STEP], None).await;
    let claimed = claim_one(s, w, started.id).await;
    let wait = wait_transition("payable:1", Utc::now() + chrono::Duration::hours(1));
    let c = commit(s, &claimed, w, &wait, None).await.unwrap();
    assert!(c.kept, "the stored event ends the wait at once");
    let woke = c.wake_event.unwrap();
    assert_eq!(woke.inbox_id, early.inbox_id);
    assert_eq!(woke.event_type, "payable.paid");
    assert_eq!(woke.payload["status"], "paid");
    let waiting = saga(s, started.id).await;
    assert_eq!(waiting.owner, Some(w));
    assert_eq!(
        waiting.wake_event.as_ref().unwrap().inbox_id,
        early.inbox_id
    );
    let stored = s.event(early.inbox_id).await.unwrap().unwrap();
    assert_eq!(stored.consumed_by, Some(started.id));
    assert!(stored.consumed_at.is_some());

    let mut done = transition(SagaStatus::Scheduled, 1);
    done.history = vec![
        entry(HistoryKind::EventReceived, Some("s1"), Some(1)),
        entry(HistoryKind::StepCompleted, Some("s1"), Some(1)),
    ];
    commit(s, &waiting, w, &done, Some(early.inbox_id))
        .await
        .unwrap();
    let after = saga(s, started.id).await;
    assert!(after.wake_event.is_none() && after.wait.is_none());
    // The consumed event matches nothing else.
    let other = start(s, "flow", &[LUMANU, STEP], None).await;
    let held = s.claim(w, &all_kinds(), 16).await.unwrap();
    let other_claim = held.iter().find(|c| c.saga.id == other.id).unwrap();
    let c = commit(s, &other_claim.saga, w, &wait, None).await.unwrap();
    assert!(!c.kept && c.wake_event.is_none());
}

async fn event_delivered_after_the_wait_ends_it_and_makes_the_saga_due(e: Env) {
    let s = e.s();
    let w = worker(s, LONG_TTL).await;
    let started = start(s, "flow", &[LUMANU, STEP], None).await;
    let claimed = claim_one(s, w, started.id).await;
    let until = Utc::now() + chrono::Duration::hours(1);
    let c = commit(s, &claimed, w, &wait_transition("payable:7", until), None)
        .await
        .unwrap();
    assert!(!c.kept);
    let waiting = saga(s, started.id).await;
    assert_eq!(waiting.status, SagaStatus::Waiting);
    assert!(waiting.owner.is_none());
    assert_eq!(waiting.wait.as_ref().unwrap().correlation_key, "payable:7");
    assert!(close(
        s.next_due(&all_kinds()).await.unwrap().unwrap(),
        until
    ));

    for (id, ty, key) in [
        ("e-other-type", "payable.created", "payable:7"),
        ("e-other-key", "payable.paid", "payable:8"),
    ] {
        let d = s.deliver_event(event(id, ty, key)).await.unwrap();
        assert!(d.matched_saga.is_none(), "{id} must not match");
    }
    let mut other_provider = event("e-other-provider", "payable.paid", "payable:7");
    other_provider.provider = "blaaiz".to_string();
    assert!(s
        .deliver_event(other_provider)
        .await
        .unwrap()
        .matched_saga
        .is_none());

    let d = s
        .deliver_event(event("e-match", "payable.failed", "payable:7"))
        .await
        .unwrap();
    assert_eq!(d.matched_saga, Some(started.id));
    let woken = saga(s, started.id).await;
    assert!(woken.run_at.is_some_and(|at| at <= Utc::now()));
    assert_eq!(woken.wake_event.as_ref().unwrap().inbox_id, d.inbox_id);
    // A second matching event finds no wait: it stays in the inbox.
    let late = s
        .deliver_event(event("e-late", "payable.paid", "payable:7"))
        .await
        .unwrap();
    assert!(late.matched_saga.is_none());

    let reclaimed = claim_one(s, w, started.id).await;
    assert_eq!(reclaimed.wake_event.as_ref().unwrap().event_id, "e-match");
    let mut done = transition(SagaStatus::Completed, 2);
    done.history = vec![entry(HistoryKind::SagaCompleted, None, None)];
    commit(s, &reclaimed, w, &done, Some(d.inbox_id))
        .await
        .unwrap();
    assert_eq!(saga(s, started.id).await.status, SagaStatus::Completed);
    assert_eq!(
        s.event(d.inbox_id).await.unwrap().unwrap().consumed_by,
        Some(started.id)
    );
}

async fn duplicate_events_are_acknowledged_and_ignored(e: Env) {
    let s = e.s();
    let first = s
        .deliver_event(event("evt-9", "payable.paid", "payable:9"))
        .await
        .unwrap();
    let again = s
        .deliver_event(event("evt-9", "payable.paid", "payable:other"))
        .await
        .unwrap();
    assert!(again.duplicate);
    assert_eq!(again.inbox_id, first.inbox_id);
    assert!(again.matched_saga.is_none());
    // The stored event is the first one.
    let stored = s.event(first.inbox_id).await.unwrap().unwrap();
    assert_eq!(stored.correlation_key.as_deref(), Some("payable:9"));
    // The same event id from another provider is another event.
    let mut other = event("evt-9", "payable.paid", "payable:9");
    other.provider = "lean".to_string();
    assert!(!s.deliver_event(other).await.unwrap().duplicate);
    assert_eq!(
        s.list_events(&EventFilter::default()).await.unwrap().len(),
        2
    );
    assert_eq!(
        s.list_events(&EventFilter {
            provider: Some("lean".to_string()),
            ..Default::default()
        })
        .await
        .unwrap()
        .len(),
        1
    );
}

async fn unparseable_event_is_kept_with_its_raw_body_and_shown_to_operators(e: Env) {
    let s = e.s();
    let d = s
        .deliver_event(NewEvent {
            provider: "lumanu".to_string(),
            event_id: "raw-1".to_string(),
            event_type: None,
            correlation_key: None,
            payload: None,
            raw_body: Some(b"not json".to_vec()),
            parse_error: Some("expected value at line 1".to_string()),
        })
        .await
        .unwrap();
    let listed = s
        .list_events(&EventFilter {
            unparseable: true,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(listed.len(), 1);
    assert!(listed[0].raw_body.is_none(), "lists leave raw bodies out");
    let stored = s.event(d.inbox_id).await.unwrap().unwrap();
    assert_eq!(stored.raw_body.as_deref(), Some(&b"not json"[..]));
    assert_eq!(
        stored.parse_error.as_deref(),
        Some("expected value at line 1")
    );
    let refused = s.replay_event(d.inbox_id, None, "ops", "try").await;
    assert!(matches!(refused, Err(Error::Refused(m)) if m.contains("parse error")));
    s.deliver_event(event("parsed", "payable.paid", "k"))
        .await
        .unwrap();
    assert_eq!(
        s.list_events(&EventFilter {
            unparseable: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .len(),
        1
    );
}

async fn replay_matches_a_stored_event_to_a_wait_that_exists_now(e: Env) {
    let s = e.s();
    let stray = s
        .deliver_event(event("stray", "payable.paid", "wrong-key"))
        .await
        .unwrap();
    let refused = s.replay_event(stray.inbox_id, None, "ops", "try").await;
    assert!(
        matches!(&refused, Err(Error::Refused(m)) if m.contains("stays in the inbox")),
        "{refused:?}"
    );
    assert!(matches!(
        s.replay_event(424242, None, "ops", "x").await,
        Err(Error::NotFound(_))
    ));

    let w = worker(s, LONG_TTL).await;
    let started = start(s, "flow", &[LUMANU], None).await;
    let claimed = claim_one(s, w, started.id).await;
    commit(
        s,
        &claimed,
        w,
        &wait_transition("payable:r", Utc::now() + chrono::Duration::hours(1)),
        None,
    )
    .await
    .unwrap();
    let d = s
        .replay_event(
            stray.inbox_id,
            Some((
                "payable.paid".to_string(),
                "payable:r".to_string(),
                json!({"id": "payable:r"}),
            )),
            "cli:alice",
            "key fixed, ticket 7",
        )
        .await
        .unwrap();
    assert_eq!(d.matched_saga, Some(started.id));
    let woken = saga(s, started.id).await;
    let ev = woken.wake_event.unwrap();
    assert_eq!(
        (ev.inbox_id, ev.correlation_key.as_str()),
        (stray.inbox_id, "payable:r")
    );
    let stored = s.event(stray.inbox_id).await.unwrap().unwrap();
    assert_eq!(stored.consumed_by, Some(started.id));
    assert_eq!(stored.correlation_key.as_deref(), Some("payable:r"));
    let last = s.history(started.id).await.unwrap().pop().unwrap();
    assert_eq!(last.kind, HistoryKind::EventReplayed);
    assert_eq!(last.actor.as_deref(), Some("cli:alice"));
    assert_eq!(last.detail.unwrap()["reason"], "key fixed, ticket 7");
}

async fn wait_deadline_makes_the_saga_due_and_marks_it_stuck_once_passed(e: Env) {
    let s = e.s();
    let w = worker(s, LONG_TTL).await;
    let started = start(s, "flow", &[LUMANU], None).await;
    let claimed = claim_one(s, w, started.id).await;
    let deadline = Utc::now() + chrono::Duration::milliseconds(400);
    commit(
        s,
        &claimed,
        w,
        &wait_transition("payable:d", deadline),
        None,
    )
    .await
    .unwrap();
    let stuck = SagaFilter {
        stuck_since: Some(Utc::now() - chrono::Duration::hours(1)),
        ..Default::default()
    };
    assert!(s.claim(w, &all_kinds(), 16).await.unwrap().is_empty());
    assert!(close(
        s.next_due(&all_kinds()).await.unwrap().unwrap(),
        deadline
    ));
    assert!(s.list_sagas(&stuck).await.unwrap().is_empty());

    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(ids(&s.list_sagas(&stuck).await.unwrap()), [started.id]);
    let due = claim_one(s, w, started.id).await;
    assert_eq!(due.status, SagaStatus::Waiting);
    assert!(
        due.wake_event.is_none(),
        "woken by the deadline, not an event"
    );
    assert!(close(due.wait.unwrap().deadline, deadline));
}

async fn list_filters_select_by_status_workflow_step_provider_key_and_time(e: Env) {
    let s = e.s();
    let w = worker(s, LONG_TTL).await;
    let t0 = Utc::now();
    let a1 = start(s, "alpha", &[STEP, STEP], Some("k1")).await;
    let a2 = start(s, "alpha", &[STEP, STEP], None).await;
    let b1 = start(s, "beta", &[LUMANU], Some("k2")).await;
    let t1 = Utc::now();
    // a1 moves to its second step and backs off (last update); the others go back.
    let claimed = s.claim(w, &all_kinds(), 16).await.unwrap();
    for c in claimed.iter().filter(|c| c.saga.id != a1.id) {
        assert!(s.release(c.saga.id, w, c.saga.fence).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(3)).await;
    let held = claimed.iter().find(|c| c.saga.id == a1.id).unwrap();
    let mut t = transition(SagaStatus::Retrying, 1);
    t.attempt = 1;
    t.run_at = Some(Utc::now() + chrono::Duration::hours(1));
    commit(s, &held.saga, w, &t, None).await.unwrap();
    let list = |f: SagaFilter| async move { ids(&s.list_sagas(&f).await.unwrap()) };

    assert_eq!(list(SagaFilter::default()).await, [b1.id, a2.id, a1.id]);
    assert_eq!(
        list(SagaFilter {
            ascending: true,
            ..Default::default()
        })
        .await,
        [a1.id, a2.id, b1.id]
    );
    assert_eq!(
        list(SagaFilter {
            sort_by_updated: true,
            ..Default::default()
        })
        .await[0],
        a1.id
    );
    assert_eq!(
        list(SagaFilter {
            statuses: vec![ObservedStatus::Scheduled],
            ascending: true,
            ..Default::default()
        })
        .await,
        [a2.id, b1.id]
    );
    assert_eq!(
        list(SagaFilter {
            statuses: vec![ObservedStatus::Retrying, ObservedStatus::Completed],
            ..Default::default()
        })
        .await,
        [a1.id]
    );
    // A saga a worker holds is `running`, and no longer `scheduled`.
    let held = s.claim(w, &all_kinds(), 16).await.unwrap();
    assert_eq!(
        ids(&held.iter().map(|c| c.saga.clone()).collect::<Vec<_>>()).len(),
        2
    );
    let running = list(SagaFilter {
        statuses: vec![ObservedStatus::Running],
        ascending: true,
        ..Default::default()
    })
    .await;
    assert_eq!(running, [a2.id, b1.id]);
    assert!(list(SagaFilter {
        statuses: vec![ObservedStatus::Scheduled],
        ..Default::default()
    })
    .await
    .is_empty());
    for c in &held {
        assert!(s.release(c.saga.id, w, c.saga.fence).await.unwrap());
    }
    assert_eq!(
        list(SagaFilter {
            workflow: Some("beta".to_string()),
            ..Default::default()
        })
        .await,
        [b1.id]
    );
    assert_eq!(
        list(SagaFilter {
            step: Some("s2".to_string()),
            ..Default::default()
        })
        .await,
        [a1.id]
    );
    assert_eq!(
        list(SagaFilter {
            provider: Some("lumanu".to_string()),
            ..Default::default()
        })
        .await,
        [b1.id]
    );
    assert!(list(SagaFilter {
        provider: Some("lum".to_string()),
        ..Default::default()
    })
    .await
    .is_empty());
    assert_eq!(
        list(SagaFilter {
            key: Some("k1".to_string()),
            ..Default::default()
        })
        .await,
        [a1.id]
    );
    assert_eq!(
        list(SagaFilter {
            created_after: Some(t0),
            created_before: Some(t1),
            ascending: true,
            ..Default::default()
        })
        .await,
        [a1.id, a2.id, b1.id]
    );
    assert!(list(SagaFilter {
        created_after: Some(t1),
        ..Default::default()
    })
    .await
    .is_empty());
    assert_eq!(
        list(SagaFilter {
            updated_after: Some(t1),
            ..Default::default()
        })
        .await
        .len(),
        3,
        "claims and releases touch a2 and b1 too"
    );
    assert!(list(SagaFilter {
        updated_before: Some(t0),
        ..Default::default()
    })
    .await
    .is_empty());
    assert_eq!(
        list(SagaFilter {
            ascending: true,
            limit: Some(1),
            offset: Some(1),
            ..Default::default()
        })
        .await,
        [a2.id]
    );
    // Stuck: nothing yet; then a2 at 5 attempts.
    let stuck = || SagaFilter {
        stuck_since: Some(Utc::now() - chrono::Duration::hours(1)),
        ..Default::default()
    };
    assert!(list(stuck()).await.is_empty());
    let claimed = s.claim(w, &all_kinds(), 16).await.unwrap();
    let c = &claimed.iter().find(|c| c.saga.id == a2.id).unwrap().saga;
    let mut t = transition(SagaStatus::Scheduled, 0);
    t.attempt = 5;
    t.run_at = Some(Utc::now() + chrono::Duration::hours(1));
    commit(s, c, w, &t, None).await.unwrap();
    for other in claimed.iter().filter(|c| c.saga.id != a2.id) {
        assert!(s.release(other.saga.id, w, other.saga.fence).await.unwrap());
    }
    assert_eq!(list(stuck()).await, [a2.id]);
    assert!(list(SagaFilter {
        stuck_attempts: Some(6),
        ..stuck()
    })
    .await
    .is_empty());
    // ... and everything when "no progress since" is in the future.
    assert_eq!(
        list(SagaFilter {
            stuck_since: Some(Utc::now() + chrono::Duration::hours(1)),
            ..Default::default()
        })
        .await
        .len(),
        3
    );
}

async fn sagas_held_by_a_dead_worker_are_listed_as_stuck(e: Env) {
    let s = e.s();
    let w = worker(s, Duration::from_millis(300)).await;
    let started = start(s, "flow", &[STEP], None).await;
    claim_one(s, w, started.id).await;
    let stuck = SagaFilter {
        stuck_since: Some(Utc::now() - chrono::Duration::hours(1)),
        ..Default::default()
    };
    assert!(s.list_sagas(&stuck).await.unwrap().is_empty());
    tokio::time::sleep(Duration::from_millis(450)).await;
    assert_eq!(ids(&s.list_sagas(&stuck).await.unwrap()), [started.id]);
}

async fn gauges_count_open_sagas_by_status_once_per_lease_and_started_sagas_incrementally(e: Env) {
    use paysaga_store::{GaugeRequest, GaugeTurn};
    let s = e.s();
    let w = worker(s, LONG_TTL).await;
    let waiting = start(s, "alpha", &[STEP], None).await;
    let parked = start(s, "alpha", &[STEP], None).await;
    let scheduled = start(s, "beta", &[STEP], None).await;
    let done = start(s, "gamma", &[STEP], None).await;
    // A kind no live worker has: its saga is unrunnable.
    start(s, "delta", &["lean.nobody_runs_this"], None).await;
    for c in s.claim(w, &all_kinds(), 16).await.unwrap() {
        let t = if c.saga.id == waiting.id {
            wait_transition("payable:g", Utc::now() - chrono::Duration::seconds(1))
        } else if c.saga.id == parked.id {
            transition(SagaStatus::NeedsOperator, 0)
        } else if c.saga.id == done.id {
            transition(SagaStatus::Completed, 0)
        } else {
            assert_eq!(c.saga.id, scheduled.id);
            s.release(c.saga.id, w, c.saga.fence).await.unwrap();
            continue;
        };
        commit(s, &c.saga, w, &t, None).await.unwrap();
    }
    let request = |instance| GaugeRequest {
        instance,
        lease: Duration::from_secs(30),
        stuck_after: Duration::from_secs(3600),
        stuck_attempts: 5,
        started_lag: Duration::ZERO,
    };
    let (one, two) = (Uuid::new_v4(), Uuid::new_v4());
    assert_eq!(s.gauges().await.unwrap(), None, "nothing computed yet");
    let g = s
        .refresh_gauges(request(one))
        .await
        .unwrap()
        .expect("lease taken");
    assert_eq!(
        s.refresh_gauges(request(two)).await.unwrap(),
        None,
        "another process holds the lease: it computes nothing"
    );
    assert_eq!(
        s.gauges().await.unwrap().as_ref(),
        Some(&g),
        "stored for every worker"
    );
    // A worker's turn: the holder computes, another reads what the holder stored.
    assert_eq!(
        s.gauge_turn(request(two)).await.unwrap(),
        GaugeTurn::Stored(Some(g.clone())),
        "another process's turn reads the stored gauges"
    );
    let GaugeTurn::Computed(by_turn) = s.gauge_turn(request(one)).await.unwrap() else {
        panic!("the holder's turn computes");
    };
    let counts = |g: &paysaga_store::GaugeSnapshot| {
        g.workflows
            .iter()
            .map(|(w, x)| (w.clone(), x.by_status.clone(), x.stuck, x.unrunnable))
            .collect::<Vec<_>>()
    };
    assert_eq!(counts(&by_turn), counts(&g));
    let alpha = &g.workflows["alpha"];
    assert_eq!(alpha.by_status.get("waiting"), Some(&1));
    assert_eq!(alpha.by_status.get("needs_operator"), Some(&1));
    assert_eq!(alpha.by_status.len(), 2, "{alpha:?}");
    assert_eq!(alpha.waits_past_deadline, 1);
    assert_eq!(alpha.stuck, 2, "parked + past its deadline");
    assert_eq!(alpha.started, 2);
    let beta = &g.workflows["beta"];
    assert_eq!(beta.by_status.get("scheduled"), Some(&1));
    assert_eq!(
        (beta.stuck, beta.started, beta.waits_past_deadline),
        (0, 1, 0)
    );
    let gamma = &g.workflows["gamma"];
    assert!(
        gamma.by_status.is_empty(),
        "ended sagas are not counted: {gamma:?}"
    );
    assert_eq!(gamma.started, 1);
    // The sagas no live worker can run are counted with the gauges (by their one holder).
    let delta = &g.workflows["delta"];
    assert_eq!(delta.unrunnable, 1, "{delta:?}");
    assert_eq!(delta.missing_kinds, ["lean.nobody_runs_this"]);
    assert_eq!(
        (alpha.unrunnable, beta.unrunnable, gamma.unrunnable),
        (0, 0, 0)
    );
    // The next refresh adds only the sagas started since.
    start(s, "beta", &[STEP], None).await;
    let g = s
        .refresh_gauges(request(one))
        .await
        .unwrap()
        .expect("still held");
    assert_eq!(g.workflows["alpha"].started, 2);
    assert_eq!(g.workflows["beta"].started, 2);
    assert_eq!(g.workflows["beta"].by_status.get("scheduled"), Some(&2));
}

async fn stats_count_by_status_step_retries_waits_and_unmatched_events(e: Env) {
    let s = e.s();
    let w = worker(s, LONG_TTL).await;
    let a1 = start(s, "alpha", &[LUMANU, STEP], None).await;
    let a2 = start(s, "alpha", &[LUMANU, STEP], None).await;
    start(s, "beta", &[STEP], None).await;
    s.deliver_event(NewEvent {
        provider: "blaaiz".to_string(),
        ..event("b-1", "payout.done", "x")
    })
    .await
    .unwrap();
    let claimed = s.claim(w, &all_kinds(), 16).await.unwrap();
    for c in &claimed {
        if c.saga.id == a1.id {
            let mut t = transition(SagaStatus::Retrying, 0);
            t.attempt = 2;
            t.run_at = Some(Utc::now() + chrono::Duration::hours(1));
            commit(s, &c.saga, w, &t, None).await.unwrap();
        } else if c.saga.id == a2.id {
            let t = wait_transition("payable:s", Utc::now() + chrono::Duration::hours(1));
            commit(s, &c.saga, w, &t, None).await.unwrap();
        } else {
            s.release(c.saga.id, w, c.saga.fence).await.unwrap();
        }
    }
    let stats = s.stats().await.unwrap();
    let row = |wf: &str, st: &str, n: i64| (wf.to_string(), st.to_string(), n);
    assert_eq!(
        stats.by_status,
        [
            row("alpha", "retrying", 1),
            row("alpha", "waiting", 1),
            row("beta", "scheduled", 1)
        ]
    );
    let mut by_step = stats.by_step.clone();
    by_step.sort();
    assert_eq!(by_step, [row("alpha", "s1", 2), row("beta", "s1", 1)]);
    assert_eq!(stats.retries, [(2, 1)]);
    let (oldest, workflow, _since) = stats.oldest_waiting.unwrap();
    assert_eq!((oldest, workflow.as_str()), (a2.id, "alpha"));
    assert_eq!(stats.unmatched_events, [("blaaiz".to_string(), 1)]);
}

async fn operator_action_fences_out_the_worker_and_records_the_actor(e: Env) {
    let s = e.s();
    let w = worker(s, LONG_TTL).await;
    let started = start(s, "flow", &[STEP, STEP], None).await;
    let held = claim_one(s, w, started.id).await;

    // Refused when the saga moved since the operator looked.
    let mut skip = transition(SagaStatus::Scheduled, 1);
    skip.output = Some(("s1".to_string(), json!({"id": "by-hand"})));
    skip.history = vec![HistoryEntry {
        detail: json!({"reason": "created by hand"}),
        ..entry(HistoryKind::OperatorSkip, Some("s1"), None)
    }];
    let refused = s
        .operator_apply(OperatorAction {
            saga: started.id,
            expect_status: SagaStatus::Waiting,
            expect_step_index: 0,
            transition: &skip,
            actor: "cli:alice",
        })
        .await;
    assert!(matches!(refused, Err(Error::Refused(m)) if m.contains("changed")));
    assert_eq!(saga(s, started.id).await.fence, held.fence);
    assert!(matches!(
        s.operator_apply(OperatorAction {
            saga: Uuid::new_v4(),
            expect_status: SagaStatus::Scheduled,
            expect_step_index: 0,
            transition: &skip,
            actor: "cli:alice",
        })
        .await,
        Err(Error::NotFound(_))
    ));

    let applied = s
        .operator_apply(OperatorAction {
            saga: started.id,
            expect_status: SagaStatus::Scheduled,
            expect_step_index: 0,
            transition: &skip,
            actor: "cli:alice",
        })
        .await
        .unwrap();
    assert_eq!(applied.owner, None);
    assert_eq!(applied.fence, held.fence + 1);
    assert_eq!(
        (applied.status, applied.step_index),
        (SagaStatus::Scheduled, 1)
    );
    assert_eq!(applied.outputs, json!({"s1": {"id": "by-hand"}}));
    assert_eq!(saga(s, started.id).await.fence, applied.fence);

    // The worker that held it cannot commit over the operator.
    let err = commit(s, &held, w, &transition(SagaStatus::Completed, 2), None)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::LeaseLost { .. }));
    let mut history = s.history(started.id).await.unwrap();
    let refused = history.pop().unwrap();
    assert_eq!(
        (refused.kind, refused.worker),
        (HistoryKind::CommitRefused, Some(w))
    );
    let last = history.pop().unwrap();
    assert_eq!(last.kind, HistoryKind::OperatorSkip);
    assert_eq!(last.actor.as_deref(), Some("cli:alice"));
    assert_eq!(last.worker, None);

    // An operator ending a wait removes the wait row: a later event matches nothing.
    let waiting = claim_one(s, w, started.id).await;
    commit(
        s,
        &waiting,
        w,
        &wait_transition("payable:o", Utc::now() + chrono::Duration::hours(1)),
        None,
    )
    .await
    .unwrap();
    let mut resume = transition(SagaStatus::Scheduled, 1);
    resume.history = vec![entry(HistoryKind::OperatorRetry, Some("s2"), None)];
    s.operator_apply(OperatorAction {
        saga: started.id,
        expect_status: SagaStatus::Waiting,
        expect_step_index: 0,
        transition: &resume,
        actor: "cli:bob",
    })
    .await
    .unwrap();
    let d = s
        .deliver_event(event("after-op", "payable.paid", "payable:o"))
        .await
        .unwrap();
    assert!(d.matched_saga.is_none());
}

async fn cancel_makes_a_backing_off_saga_due_and_is_refused_when_final(e: Env) {
    let s = e.s();
    let w = worker(s, LONG_TTL).await;
    let started = start(s, "flow", &[STEP], None).await;
    let held = claim_one(s, w, started.id).await;
    let mut retry = transition(SagaStatus::Scheduled, 0);
    retry.attempt = 1;
    retry.run_at = Some(Utc::now() + chrono::Duration::hours(1));
    commit(s, &held, w, &retry, None).await.unwrap();

    let cancelled = s
        .request_cancel(started.id, "cli:alice", "payee withdrew")
        .await
        .unwrap();
    assert!(cancelled.cancel_requested);
    assert!(cancelled.run_at.is_some_and(|at| at <= Utc::now()));
    let last = s.history(started.id).await.unwrap().pop().unwrap();
    assert_eq!(last.kind, HistoryKind::CancelRequested);
    assert_eq!(last.actor.as_deref(), Some("cli:alice"));

    // The holder learns of a cancel requested while it runs the step.
    let again = claim_one(s, w, started.id).await;
    assert!(again.cancel_requested);
    s.request_cancel(started.id, "cli:alice", "really")
        .await
        .unwrap();
    let mut step = transition(SagaStatus::Scheduled, 0);
    step.continue_now = true;
    let c = commit(s, &again, w, &step, None).await.unwrap();
    assert!(c.cancel_requested);
    let mut done = transition(SagaStatus::Cancelled, 0);
    done.history = vec![entry(HistoryKind::SagaCancelled, None, None)];
    commit(s, &again, w, &done, None).await.unwrap();

    let refused = s.request_cancel(started.id, "cli:alice", "again").await;
    assert!(matches!(refused, Err(Error::Refused(m)) if m.contains("cancelled")));
    assert!(matches!(
        s.request_cancel(Uuid::new_v4(), "cli:alice", "x").await,
        Err(Error::NotFound(_))
    ));
}

async fn worker_without_a_step_kind_leaves_those_sagas_alone(e: Env) {
    let s = e.s();
    let w = worker(s, LONG_TTL).await;
    let started = start(s, "payout", &[LUMANU, STEP], None).await;
    let only_step = vec![STEP.to_string()];
    assert!(s.claim(w, &only_step, 16).await.unwrap().is_empty());
    assert!(s.next_due(&only_step).await.unwrap().is_none());
    let groups = s.sagas_needing_other_kinds(&only_step).await.unwrap();
    assert_eq!(groups.len(), 1);
    assert_eq!(
        (
            groups[0].workflow.as_str(),
            groups[0].version,
            groups[0].sagas
        ),
        ("payout", 1, 1)
    );
    assert_eq!(groups[0].missing_kinds, [LUMANU.to_string()]);
    assert!(s
        .sagas_needing_other_kinds(&all_kinds())
        .await
        .unwrap()
        .is_empty());
    claim_one(s, w, started.id).await;
}

async fn wakeups_are_heard_after_new_work_is_stored_here_or_by_another_process(e: Env) {
    let mut wakeups = e.store.wakeups().await.unwrap();
    start(e.s(), "flow", &[STEP], None).await;
    tokio::time::timeout(Duration::from_secs(5), wakeups.recv())
        .await
        .expect("a start in this process wakes listeners")
        .unwrap();
    // Drain what the first write may have queued.
    while tokio::time::timeout(Duration::from_millis(600), wakeups.recv())
        .await
        .is_ok()
    {}
    // Another connection pool, as another process would have.
    let other = paysaga_store::connect(&e.url).await.unwrap();
    start(other.as_ref(), "flow", &[STEP], None).await;
    tokio::time::timeout(Duration::from_secs(5), wakeups.recv())
        .await
        .expect("a start by another process wakes listeners")
        .unwrap();
}

async fn a_second_live_worker_is_refused_where_one_node_is_the_limit(e: Env) {
    let s = e.s();
    let first = worker(s, LONG_TTL).await;
    let second = WorkerInfo {
        id: Uuid::new_v4(),
        name: "second".to_string(),
        hostname: "localhost".to_string(),
        pid: 1,
        step_kinds: all_kinds(),
        assignments: None,
    };
    let result = s.register_worker(&second, LONG_TTL).await;
    match e.backend {
        Backend::Postgres => result.unwrap(),
        Backend::Sqlite => {
            let err = result.unwrap_err();
            assert!(
                matches!(&err, Error::WorkerAlreadyRunning { worker, .. } if *worker == first),
                "{err:?}"
            );
            let message = err.to_string();
            assert!(message.contains(&first.to_string()), "{message}");
            assert!(message.contains("PostgreSQL"), "{message}");
            // Once the first worker stopped, a new one may start.
            s.stop_worker(first).await.unwrap();
            s.register_worker(&second, LONG_TTL).await.unwrap();
        }
    }
}

async fn schema_is_current_after_migrate_and_migrate_is_idempotent(e: Env) {
    let s = e.s();
    s.migrate().await.unwrap();
    let (applied, known) = s.schema_versions().await.unwrap();
    assert_eq!(applied, Some(known));
}

async fn appended_history_entries_keep_their_actor_and_order(e: Env) {
    let s = e.s();
    let started = start(s, "flow", &[STEP], None).await;
    s.append_history(
        started.id,
        "api:key-1",
        &[
            HistoryEntry {
                detail: json!({"reason": "r1"}),
                ..entry(HistoryKind::OperatorEvent, Some("s1"), None)
            },
            HistoryEntry {
                error: Some("note".to_string()),
                ..entry(HistoryKind::OperatorRetry, None, Some(3))
            },
        ],
    )
    .await
    .unwrap();
    let history = s.history(started.id).await.unwrap();
    assert_eq!(history.len(), 3);
    assert_eq!(history[1].kind, HistoryKind::OperatorEvent);
    assert_eq!(history[1].actor.as_deref(), Some("api:key-1"));
    assert_eq!(history[1].detail.as_ref().unwrap()["reason"], "r1");
    assert_eq!(history[2].attempt, Some(3));
    assert_eq!(history[2].error.as_deref(), Some("note"));
}

/// Issue 11 item 6. Event delivery, a poll that ends the wait (commit) and an operator
/// action on the same waiting saga at the same moment: commits and operator actions locked
/// saga then wait, delivery locked wait then saga, and PostgreSQL broke the cycle with
/// "deadlock detected" (the webhook answered 503, the commit was retried). One lock order
/// everywhere: no database error at all, exactly one of the commit and the operator action
/// applied per saga, each event consumed at most once, no wait left behind.
async fn concurrent_delivery_poll_completion_and_operator_action_never_deadlock(e: Env) {
    const SAGAS: usize = 40;
    let s = e.s();
    let w = worker(s, LONG_TTL).await;
    let mut sagas = Vec::new();
    for _ in 0..SAGAS {
        sagas.push(start(s, "flow", &[LUMANU, STEP], None).await.id);
    }
    // Each saga waits for its own payable (due at once: the next claim is its poll).
    let mut held = Vec::new();
    while held.len() < SAGAS {
        held.extend(s.claim(w, &all_kinds(), 16).await.unwrap());
    }
    for c in &held {
        let key = format!("payable:{}", c.saga.id);
        commit(s, &c.saga, w, &wait_transition(&key, Utc::now()), None)
            .await
            .unwrap();
    }
    let mut polled = Vec::new();
    while polled.len() < SAGAS {
        polled.extend(s.claim(w, &all_kinds(), 16).await.unwrap());
    }
    assert!(polled.iter().all(|c| c.saga.status == SagaStatus::Waiting));

    let barrier = Arc::new(tokio::sync::Barrier::new(SAGAS * 3));
    let mut tasks = tokio::task::JoinSet::new();
    for c in polled {
        let held = c.saga;
        let key = format!("payable:{}", held.id);
        // The poll found the payable paid: the step is done, the wait ends.
        let (store, b) = (e.store.clone(), barrier.clone());
        let held2 = held.clone();
        tasks.spawn(async move {
            let mut done = transition(SagaStatus::Scheduled, 1);
            done.output = Some(("s1".to_string(), json!({"by": "poll"})));
            done.history = vec![entry(HistoryKind::StepCompleted, Some("s1"), Some(1))];
            b.wait().await;
            (
                "commit",
                commit(store.as_ref(), &held2, w, &done, None).await.err(),
            )
        });
        // The webhook for it.
        let (store, b, k) = (e.store.clone(), barrier.clone(), key.clone());
        tasks.spawn(async move {
            b.wait().await;
            let r = store
                .deliver_event(event(&format!("evt-{k}"), "payable.paid", &k))
                .await;
            ("deliver", r.err())
        });
        // An operator skipping the step by hand.
        let (store, b) = (e.store.clone(), barrier.clone());
        let id = held.id;
        tasks.spawn(async move {
            let mut skip = transition(SagaStatus::Scheduled, 1);
            skip.output = Some(("s1".to_string(), json!({"by": "operator"})));
            skip.history = vec![entry(HistoryKind::OperatorSkip, Some("s1"), None)];
            b.wait().await;
            let r = store
                .operator_apply(OperatorAction {
                    saga: id,
                    expect_status: SagaStatus::Waiting,
                    expect_step_index: 0,
                    transition: &skip,
                    actor: "cli:ops",
                })
                .await;
            ("operator", r.err())
        });
    }
    let (mut deadlocks, mut db_errors) = (0, Vec::new());
    while let Some(joined) = tasks.join_next().await {
        match joined.unwrap() {
            (_, None) => {}
            // Expected outcomes of the race: the operator saw the saga move, or the commit
            // found the operator had fenced it out.
            ("operator", Some(Error::Refused(_))) | ("commit", Some(Error::LeaseLost { .. })) => {}
            (what, Some(err)) => {
                if err.to_string().contains("deadlock") {
                    deadlocks += 1;
                }
                db_errors.push(format!("{what}: {err}"));
            }
        }
    }
    assert_eq!(deadlocks, 0, "deadlocks: {db_errors:#?}");
    assert!(db_errors.is_empty(), "{db_errors:#?}");

    let events = s
        .list_events(&EventFilter {
            limit: Some(1000),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(events.len(), SAGAS, "every webhook stored once");
    for id in &sagas {
        let row = saga(s, *id).await;
        assert_eq!((row.status, row.step_index), (SagaStatus::Scheduled, 1));
        assert!(row.wait.is_none() && row.wake_event.is_none(), "{row:?}");
        let applied = history_kinds(s, *id)
            .await
            .into_iter()
            .filter(|k| matches!(k, HistoryKind::StepCompleted | HistoryKind::OperatorSkip))
            .count();
        assert_eq!(
            applied, 1,
            "exactly one of the poll commit and the operator action"
        );
        let key = format!("payable:{id}");
        let mine: Vec<_> = events
            .iter()
            .filter(|ev| ev.correlation_key.as_deref() == Some(&key))
            .collect();
        assert_eq!(mine.len(), 1);
        assert!(mine[0].consumed_by.is_none() || mine[0].consumed_by == Some(*id));
        // No orphan wait: a second webhook for the key finds nothing waiting.
        let probe = s
            .deliver_event(event(&format!("probe-{key}"), "payable.paid", &key))
            .await
            .unwrap();
        assert_eq!(probe.matched_saga, None, "orphan wait left for {key}");
    }
}

/// Issue 11 item 11. The same input written differently (`1e2` for `100`, keys in another
/// order) is the same start, on both stores: PostgreSQL's jsonb stored `100` and the
/// comparison refused `100.0` as a reused key; another input is still refused.
async fn a_start_retried_with_the_same_input_written_differently_returns_the_saga(e: Env) {
    let s = e.s();
    let def = s
        .put_definition(&definition("flow", 1, &[STEP]))
        .await
        .unwrap();
    let new = |input: Value| NewSaga {
        id: Uuid::new_v4(),
        definition_id: def.id,
        workflow: "flow".to_string(),
        version: 1,
        idempotency_key: Some("payout-7".to_string()),
        input,
        actor: "test".to_string(),
        concurrency: None,
        trace_context: None,
        latest: false,
        awaited: false,
        documents: vec![],
    };
    let first: Value = serde_json::from_str(
        r#"{"amount_minor": 100, "currency": "NGN", "payee": {"id": "p1", "bank": "058"}}"#,
    )
    .unwrap();
    let (saga_row, created) = s.create_saga(new(first)).await.unwrap();
    assert!(created);
    for text in [
        r#"{"currency": "NGN", "payee": {"bank": "058", "id": "p1"}, "amount_minor": 1e2}"#,
        r#"{"amount_minor": 100.0, "payee": {"id": "p1", "bank": "058"}, "currency": "NGN"}"#,
        r#"{"payee": {"bank": "058", "id": "p1"}, "currency": "NGN", "amount_minor": 100}"#,
    ] {
        let again: Value = serde_json::from_str(text).unwrap();
        let (existing, created) = s.create_saga(new(again)).await.unwrap_or_else(|err| {
            panic!("{text}: the same input written differently was refused: {err}")
        });
        assert!(!created, "{text}");
        assert_eq!(existing.id, saga_row.id, "{text}");
    }
    for text in [
        r#"{"amount_minor": 101, "currency": "NGN", "payee": {"id": "p1", "bank": "058"}}"#,
        r#"{"amount_minor": 100.5, "currency": "NGN", "payee": {"id": "p1", "bank": "058"}}"#,
        r#"{"amount_minor": "100", "currency": "NGN", "payee": {"id": "p1", "bank": "058"}}"#,
        r#"{"amount_minor": 100, "currency": "NGN", "payee": {"id": "p1"}}"#,
    ] {
        let other: Value = serde_json::from_str(text).unwrap();
        assert!(
            matches!(s.create_saga(new(other)).await, Err(Error::KeyReused { saga, .. }) if saga == saga_row.id),
            "{text} is another input"
        );
    }
    let rows = s
        .list_sagas(&SagaFilter {
            key: Some("payout-7".to_string()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(ids(&rows), [saga_row.id], "one saga for the key");
    assert_eq!(
        history_kinds(s, saga_row.id).await,
        [HistoryKind::SagaStarted]
    );
}

/// Issue 11 item 8. The effect window is per-process configuration (lease length, provider
/// timeout). During a rolling change, worker A (long window) marks and sends; A is paused
/// past its lease; worker B, configured with a short window, took the saga over and used to
/// send again once *its own* window had passed since A's mark: the window A stored holds B
/// back until A's end.
async fn a_mark_made_with_a_long_window_holds_back_a_worker_whose_own_window_is_short(e: Env) {
    let s = e.s();
    let long = Duration::from_millis(1500);
    let short = Duration::from_millis(100);
    let a = worker(s, Duration::from_millis(300)).await;
    let started = start(s, "flow", &[STEP, STEP], None).await;
    let held = claim_one(s, a, started.id).await;
    assert_eq!(
        s.mark_effect(mark(started.id, a, held.fence, 0, long))
            .await
            .unwrap(),
        EffectMark::Marked
    );
    // A's lease lapses; B (short window) takes the saga over well after B's own window.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let b = worker(s, LONG_TTL).await;
    s.reap_expired_workers().await.unwrap();
    let taken = claim_one(s, b, started.id).await;
    match s
        .mark_effect(mark(started.id, b, taken.fence, 0, short))
        .await
        .unwrap()
    {
        EffectMark::Wait { remaining, .. } => assert!(
            remaining > Duration::from_millis(500) && remaining <= long,
            "held back until A's window ends: {remaining:?}"
        ),
        other => panic!("B's short window let it send again within A's window: {other:?}"),
    }
    // Only A's mark is recorded; B sent nothing.
    let marks: Vec<_> = s
        .history(started.id)
        .await
        .unwrap()
        .into_iter()
        .filter(|h| h.kind == HistoryKind::EffectMarked)
        .collect();
    assert_eq!(marks.len(), 1);
    assert_eq!(marks[0].worker, Some(a));
    assert_eq!(marks[0].detail.as_ref().unwrap()["window_ms"], json!(1500));
    // Once A's window has closed, B may send.
    tokio::time::sleep(long).await;
    assert_eq!(
        s.mark_effect(mark(started.id, b, taken.fence, 0, short))
            .await
            .unwrap(),
        EffectMark::Marked
    );
}

/// Issue 11 item 10. An investigation of a payout needs to know when a worker was about to
/// send it, which commits the fence refused, and when and why a worker gave a saga back
/// (lease doubt, shutdown with the attempt aborted). None of these left a history row; each
/// is now written in the transaction that does it.
async fn marks_give_backs_and_shutdown_releases_are_recorded_in_history(e: Env) {
    let s = e.s();
    let w = worker(s, LONG_TTL).await;
    let started = start(s, "flow", &[STEP, STEP], None).await;
    let held = claim_one(s, w, started.id).await;
    let window = Duration::from_secs(60);
    assert_eq!(
        s.mark_effect(mark(started.id, w, held.fence, 1, window))
            .await
            .unwrap(),
        EffectMark::Marked
    );
    // Held back: no second mark row.
    assert!(matches!(
        s.mark_effect(mark(started.id, w, held.fence, 1, window))
            .await
            .unwrap(),
        EffectMark::Wait { .. }
    ));
    assert!(s
        .clear_effect_mark(mark(started.id, w, held.fence, 1, window))
        .await
        .unwrap());
    assert!(s
        .give_back(started.id, w, held.fence, "lease doubt: not started")
        .await
        .unwrap());
    // Not held any more: refused, and no row.
    assert!(!s
        .give_back(started.id, w, held.fence, "twice")
        .await
        .unwrap());
    let again = claim_one(s, w, started.id).await;
    assert_eq!(
        s.stop_worker_because(w, "grace period over: attempt aborted")
            .await
            .unwrap(),
        1
    );
    let history = s.history(started.id).await.unwrap();
    let kinds: Vec<HistoryKind> = history.iter().map(|h| h.kind).collect();
    assert_eq!(
        kinds,
        [
            HistoryKind::SagaStarted,
            HistoryKind::EffectMarked,
            HistoryKind::EffectMarkWithdrawn,
            HistoryKind::SagaReleased,
            HistoryKind::SagaReleased,
        ]
    );
    let marked = &history[1];
    assert_eq!(
        (marked.worker, marked.step.as_deref(), marked.attempt),
        (Some(w), Some("s2"), Some(1))
    );
    let d = marked.detail.as_ref().unwrap();
    let at: DateTime<Utc> = serde_json::from_value(d["marked_at"].clone()).unwrap();
    let until: DateTime<Utc> = serde_json::from_value(d["until"].clone()).unwrap();
    assert!((until - at).num_milliseconds().abs_diff(60_000) <= 1, "{d}");
    assert_eq!(d["fence"], json!(held.fence));
    assert_eq!(history[2].worker, Some(w));
    let given = history[3].detail.as_ref().unwrap();
    assert_eq!(given["reason"], json!("lease doubt: not started"));
    assert_eq!(
        (given["fence"].clone(), history[3].worker),
        (json!(held.fence), Some(w))
    );
    let stopped = history[4].detail.as_ref().unwrap();
    assert_eq!(
        stopped["reason"],
        json!("grace period over: attempt aborted")
    );
    assert_eq!(stopped["fence"], json!(again.fence));
    assert!(saga(s, started.id).await.owner.is_none());
}

/// Issue 11 item 10. `deliver_manual` wrote the operator's entry in one transaction and
/// delivered in another (by key, so possibly to another saga): an entry without a delivery,
/// or a delivery without its entry. Now the event goes to that saga's wait only, with the
/// entry, in one transaction; a saga that no longer waits gets neither.
async fn a_manual_event_and_its_operator_entry_are_stored_together_for_that_saga_only(e: Env) {
    let s = e.s();
    let w = worker(s, LONG_TTL).await;
    let older = start(s, "flow", &[LUMANU, STEP], None).await;
    let target = start(s, "flow", &[LUMANU, STEP], None).await;
    let mut held = s.claim(w, &all_kinds(), 16).await.unwrap();
    assert_eq!(held.len(), 2);
    held.sort_by_key(|c| c.saga.created_at);
    // Both wait for the same payable; `older` waits first.
    for c in &held {
        commit(
            s,
            &c.saga,
            w,
            &wait_transition("payable:shared", Utc::now() + chrono::Duration::hours(1)),
            None,
        )
        .await
        .unwrap();
    }
    let manual = |id: &str| NewEvent {
        event_id: id.to_string(),
        ..event(id, "payable.paid", "payable:shared")
    };
    let op_entry = HistoryEntry {
        detail: json!({"reason": "paid per the provider's dashboard"}),
        ..entry(HistoryKind::OperatorEvent, Some("s1"), None)
    };
    let d = s
        .deliver_to_saga(target.id, manual("manual:1"), "cli:alice", op_entry.clone())
        .await
        .unwrap();
    assert_eq!(d.matched_saga, Some(target.id));
    let woken = saga(s, target.id).await;
    assert_eq!(
        woken.wake_event.as_ref().map(|e| e.inbox_id),
        Some(d.inbox_id)
    );
    assert!(
        saga(s, older.id).await.wake_event.is_none(),
        "not the older waiter"
    );
    let last = s.history(target.id).await.unwrap().pop().unwrap();
    assert_eq!(
        (last.kind, last.actor.as_deref()),
        (HistoryKind::OperatorEvent, Some("cli:alice"))
    );
    let stored = s.event(d.inbox_id).await.unwrap().unwrap();
    assert_eq!(stored.consumed_by, Some(target.id));

    // The target no longer waits: refused, no event, no entry.
    let before = s.history(target.id).await.unwrap().len();
    assert!(matches!(
        s.deliver_to_saga(target.id, manual("manual:2"), "cli:alice", op_entry)
            .await,
        Err(Error::Refused(_))
    ));
    assert_eq!(s.history(target.id).await.unwrap().len(), before);
    let events = s.list_events(&EventFilter::default()).await.unwrap();
    assert!(
        events.iter().all(|e| e.event_id != "manual:2"),
        "{events:?}"
    );
}

// ---------------------------------------------------------------------------------------
// Documents

fn new_document(content: &[u8], content_type: &str) -> NewDocument {
    NewDocument {
        id: DocumentId::new(),
        content_type: content_type.to_string(),
        sha256: paysaga_core::sha256_hex(content),
        content: content.to_vec(),
    }
}

async fn documents_keep_exact_bytes_and_a_claim_is_all_or_nothing(e: Env) {
    let s = e.s();
    // Every byte value, NULs included: the column is binary, not text.
    let bytes: Vec<u8> = (0..4096u32).map(|i| (i % 256) as u8).collect();
    let doc = new_document(&bytes, "image/png");
    let stored = s.put_document(&doc).await.unwrap();
    assert_eq!(stored.id, doc.id);
    assert_eq!(
        (
            stored.size,
            stored.sha256.as_str(),
            stored.content_type.as_str()
        ),
        (4096, doc.sha256.as_str(), "image/png")
    );
    assert!(stored.saga_id.is_none() && stored.content_deleted_at.is_none());
    assert!((Utc::now() - stored.created_at).num_seconds().abs() < 60);
    assert_eq!(s.document(doc.id).await.unwrap(), Some(stored.clone()));
    assert_eq!(s.document_content(doc.id).await.unwrap(), Some(bytes));
    let missing = DocumentId::new();
    assert_eq!(s.document(missing).await.unwrap(), None);
    assert_eq!(s.document_content(missing).await.unwrap(), None);
    assert!(
        s.put_document(&NewDocument {
            id: doc.id,
            ..new_document(b"x", "text/plain")
        })
        .await
        .is_err(),
        "an id is stored once"
    );

    // One missing document refuses the whole claim: the other is not taken.
    let saga_a = Uuid::new_v4();
    match s.claim_documents(saga_a, &[doc.id, missing]).await {
        Err(Error::NotFound(what)) => assert!(what.contains(&missing.to_string()), "{what}"),
        other => panic!("expected NotFound, got {other:?}"),
    }
    assert_eq!(s.document(doc.id).await.unwrap().unwrap().saga_id, None);

    s.claim_documents(saga_a, &[doc.id]).await.unwrap();
    assert_eq!(
        s.document(doc.id).await.unwrap().unwrap().saga_id,
        Some(saga_a)
    );
    s.claim_documents(saga_a, &[doc.id]).await.unwrap(); // the holder again: fine
    let saga_b = Uuid::new_v4();
    match s.claim_documents(saga_b, &[doc.id]).await {
        Err(Error::Refused(why)) => assert!(why.contains(&saga_a.to_string()), "{why}"),
        other => panic!("expected Refused, got {other:?}"),
    }
    assert_eq!(
        s.document(doc.id).await.unwrap().unwrap().saga_id,
        Some(saga_a)
    );
    assert_eq!(s.release_documents(saga_a).await.unwrap(), 1);
    assert_eq!(s.document(doc.id).await.unwrap().unwrap().saga_id, None);
}

/// A saga's documents are taken in its insert's own commit: a refused document stores no
/// saga and takes none of the others; an insert that writes nothing (the key names a saga,
/// another input under the key) takes nothing.
async fn a_saga_takes_its_documents_in_its_insert_commit_or_not_at_all(e: Env) {
    let s = e.s();
    let first = start(s, "flow", &[STEP], Some("k0")).await;
    let (d1, d2) = (
        new_document(b"one", "image/png"),
        new_document(b"two", "image/png"),
    );
    s.put_document(&d1).await.unwrap();
    s.put_document(&d2).await.unwrap();
    let holder = |id: DocumentId| async move { s.document(id).await.unwrap().unwrap().saga_id };
    let new = |key: &str, documents: Vec<DocumentId>| NewSaga {
        documents,
        ..keyed_saga(first.definition_id, key)
    };
    let sagas = || async { s.list_sagas(&SagaFilter::default()).await.unwrap().len() };

    // A missing document: no saga, the other document not taken.
    let missing = DocumentId::new();
    let refused = new("k1", vec![d1.id, missing]);
    match s.create_saga(refused.clone()).await {
        Err(Error::NotFound(what)) => assert!(what.contains(&missing.to_string()), "{what}"),
        other => panic!("expected NotFound, got {other:?}"),
    }
    assert!(s.saga(refused.id).await.unwrap().is_none());
    assert_eq!((holder(d1.id).await, sagas().await), (None, 1));

    // Taken with the insert.
    let taking = new("k1", vec![d1.id]);
    let (saga, created) = s.create_saga(taking.clone()).await.unwrap();
    assert!(created && saga.id == taking.id);
    assert_eq!(holder(d1.id).await, Some(saga.id));

    // The same start again: its saga, nothing written.
    let again = new("k1", vec![d1.id]);
    let (same, created) = s.create_saga(again).await.unwrap();
    assert_eq!((same.id, created), (saga.id, false));

    // Another input under the key: refused, its document not taken.
    let mut reused = new("k1", vec![d2.id]);
    reused.input = json!({"amount": "99.00"});
    assert!(matches!(
        s.create_saga(reused).await,
        Err(Error::KeyReused { .. })
    ));
    assert_eq!(holder(d2.id).await, None);

    // A document another saga holds: refused with that saga named, no saga stored.
    let other = new("k2", vec![d2.id, d1.id]);
    match s.create_saga(other.clone()).await {
        Err(Error::Refused(why)) => assert!(why.contains(&saga.id.to_string()), "{why}"),
        other => panic!("expected Refused, got {other:?}"),
    }
    assert!(s.saga(other.id).await.unwrap().is_none());
    assert_eq!((holder(d2.id).await, sagas().await), (None, 2));
}

async fn document_content_goes_once_its_saga_is_final_plus_retention_and_metadata_stays(e: Env) {
    let s = e.s();
    let hour = Duration::from_secs(3600);
    let w = worker(s, LONG_TTL).await;
    // d1: its saga completes; d2: its saga is still running; d3: never given to a saga;
    // d4: given to a saga whose start never inserted it (a crash in between).
    let d1 = new_document(b"passport front", "image/png");
    let d2 = new_document(b"passport back", "image/png");
    let d3 = new_document(b"utility bill", "application/pdf");
    let d4 = new_document(b"liveness", "image/jpeg");
    for d in [&d1, &d2, &d3, &d4] {
        s.put_document(d).await.unwrap();
    }
    let finished = start(s, "flow", &[STEP], Some("finished")).await;
    s.claim_documents(finished.id, &[d1.id]).await.unwrap();
    s.claim_documents(Uuid::new_v4(), &[d4.id]).await.unwrap();
    let claimed = claim_one(s, w, finished.id).await;
    let mut done = transition(SagaStatus::Completed, 1);
    done.output = Some(("s1".to_string(), json!(1)));
    done.history = vec![
        entry(HistoryKind::StepCompleted, Some("s1"), Some(1)),
        entry(HistoryKind::SagaCompleted, None, None),
    ];
    commit(s, &claimed, w, &done, None).await.unwrap();
    let running = start(s, "flow", &[STEP], Some("running")).await;
    s.claim_documents(running.id, &[d2.id]).await.unwrap();

    // Within the retention nothing goes.
    assert_eq!(
        s.delete_expired_documents(hour, hour, 100).await.unwrap(),
        0
    );
    assert_eq!(
        s.document_content(d1.id).await.unwrap().as_deref(),
        Some(&b"passport front"[..])
    );
    tokio::time::sleep(Duration::from_millis(20)).await;
    // Retention over for the finished saga: only its document's content goes.
    assert_eq!(
        s.delete_expired_documents(Duration::from_millis(1), hour, 100)
            .await
            .unwrap(),
        1
    );
    assert_eq!(s.document_content(d1.id).await.unwrap(), None);
    let gone = s.document(d1.id).await.unwrap().unwrap();
    assert!(gone.content_deleted_at.is_some());
    assert_eq!(
        (gone.size, gone.sha256.as_str(), gone.saga_id),
        (14, d1.sha256.as_str(), Some(finished.id)),
        "metadata and hash stay"
    );
    for d in [&d2, &d3, &d4] {
        assert!(s.document_content(d.id).await.unwrap().is_some());
    }
    // Documents no existing saga holds go after their own delay, in batches.
    assert_eq!(
        s.delete_expired_documents(Duration::from_millis(1), Duration::ZERO, 1)
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        s.delete_expired_documents(Duration::from_millis(1), Duration::ZERO, 100)
            .await
            .unwrap(),
        1
    );
    assert_eq!(s.document_content(d3.id).await.unwrap(), None);
    assert_eq!(s.document_content(d4.id).await.unwrap(), None);
    // The running saga's document stays whatever the retention.
    assert_eq!(
        s.document_content(d2.id).await.unwrap().as_deref(),
        Some(&b"passport back"[..])
    );
    assert_eq!(
        s.delete_expired_documents(Duration::ZERO, Duration::ZERO, 100)
            .await
            .unwrap(),
        0
    );
    // A document whose content went cannot be given to a new saga.
    match s.claim_documents(Uuid::new_v4(), &[d3.id]).await {
        Err(Error::Refused(why)) => assert!(why.contains("deleted by retention"), "{why}"),
        other => panic!("expected Refused, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------
// Every body against every store

async fn a_cancel_acted_on_is_reset_and_a_possible_effect_is_kept_until_the_step_moves_on(e: Env) {
    let s = e.s();
    let w = worker(s, LONG_TTL).await;
    let started = start(s, "flow", &[STEP, STEP], None).await;
    assert!(!started.effect_possible);
    let held = claim_one(s, w, started.id).await;
    // Attempt 1 ended without a definite answer: stored with the saga.
    let mut retry = transition(SagaStatus::Scheduled, 0);
    retry.attempt = 1;
    retry.effect_possible = true;
    commit(s, &held, w, &retry, None).await.unwrap();
    let stored = saga(s, started.id).await;
    assert!(stored.effect_possible && stored.state().effect_possible);
    s.request_cancel(started.id, "cli:alice", "payee withdrew")
        .await
        .unwrap();
    // The cancel is acted on (here: parked for an operator): the request is reset, the
    // possible effect stays with the step.
    let held = claim_one(s, w, started.id).await;
    assert!(held.cancel_requested && held.effect_possible);
    let mut parked = transition(SagaStatus::NeedsOperator, 0);
    parked.attempt = 1;
    parked.effect_possible = true;
    parked.last_error = Some("cancelled by operator; parked".into());
    parked.history = vec![entry(HistoryKind::SagaParked, Some("s1"), Some(1))];
    commit(s, &held, w, &parked, None).await.unwrap();
    let stored = saga(s, started.id).await;
    assert_eq!(stored.status, SagaStatus::NeedsOperator);
    assert!(
        !stored.cancel_requested,
        "a cancel acted on must not stay set"
    );
    assert!(stored.effect_possible);
    // An operator's skip moves the step on: the flag goes with it.
    let mut skip = transition(SagaStatus::Scheduled, 1);
    skip.history = vec![entry(HistoryKind::OperatorSkip, Some("s1"), None)];
    let after = s
        .operator_apply(OperatorAction {
            saga: started.id,
            expect_status: SagaStatus::NeedsOperator,
            expect_step_index: 0,
            transition: &skip,
            actor: "cli:alice",
        })
        .await
        .unwrap();
    assert!(!after.effect_possible && !after.cancel_requested);
}

async fn an_effect_mark_on_the_current_step_counts_as_a_possible_effect(e: Env) {
    let s = e.s();
    let w = worker(s, LONG_TTL).await;
    let started = start(s, "flow", &[STEP, STEP], None).await;
    let held = claim_one(s, w, started.id).await;
    assert_eq!(
        s.mark_effect(mark(started.id, w, held.fence, 0, Duration::from_secs(60)))
            .await
            .unwrap(),
        EffectMark::Marked
    );
    assert!(saga(s, started.id).await.state().effect_possible);
    // Once the step completed, the mark on it says nothing about the next step.
    let mut done = transition(SagaStatus::Scheduled, 1);
    done.history = vec![entry(HistoryKind::StepCompleted, Some("s1"), Some(1))];
    commit(s, &held, w, &done, None).await.unwrap();
    assert!(!saga(s, started.id).await.effect_possible);
}

async fn owned_sagas_lists_what_a_worker_holds_with_its_fence(e: Env) {
    let s = e.s();
    let w = worker(s, LONG_TTL).await;
    let other = Uuid::new_v4();
    let a = start(s, "flow", &[STEP], None).await;
    assert!(s.owned_sagas(w).await.unwrap().is_empty());
    let held = claim_one(s, w, a.id).await;
    assert_eq!(s.owned_sagas(w).await.unwrap(), vec![(a.id, held.fence)]);
    assert!(s.owned_sagas(other).await.unwrap().is_empty());
    assert!(s.release(a.id, w, held.fence).await.unwrap());
    assert!(s.owned_sagas(w).await.unwrap().is_empty());
    let db_now = s.db_now().await.unwrap();
    assert!((db_now - Utc::now()).num_seconds().abs() < 5);
}

/// What `close` and `reset` write besides the transition: the closed outcome (only with
/// status `closed`), a patched input, fresh key generations; refused while a worker holds the
/// saga when asked. Operator rows (refusals included) are listed across sagas by the audit,
/// newest first, starts excepted; a cancel keeps the detail it was given.
async fn operator_changes_store_outcome_input_and_key_generations_and_the_audit_lists_them(e: Env) {
    use paysaga_core::ClosedOutcome;
    use paysaga_store::{AuditFilter, OperatorChange};
    let s = e.s();
    let w = worker(s, LONG_TTL).await;
    let since = s.db_now().await.unwrap() - chrono::Duration::seconds(1);
    let a = start(s, "flow", &[STEP, STEP], None).await;
    assert!(a.key_generations.is_empty());

    // Held by a worker: refused when the action asks for it, nothing written.
    let held = claim_one(s, w, a.id).await;
    let b = start(s, "flow", &[STEP, STEP], None).await;
    let mut closed = transition(SagaStatus::Closed, 0);
    closed.history = vec![HistoryEntry {
        detail: json!({"reason": "bank rejected", "outcome": "not_paid"}),
        ..entry(HistoryKind::SagaClosed, Some("s1"), None)
    }];
    let action = |saga: &SagaRecord, t| OperatorAction {
        saga: saga.id,
        expect_status: saga.status,
        expect_step_index: saga.step_index,
        transition: t,
        actor: "ops:alice",
    };
    let refused = s
        .operator_apply_with(
            action(&held, &closed),
            OperatorChange {
                closed_outcome: Some(ClosedOutcome::NotPaid),
                require_unheld: true,
                ..Default::default()
            },
        )
        .await;
    assert!(
        matches!(&refused, Err(Error::Refused(m)) if m.contains("running")),
        "{refused:?}"
    );
    // A closed status without an outcome (or an outcome without it) is refused.
    s.release(a.id, w, held.fence).await.unwrap();
    let a = saga(s, a.id).await;
    assert!(matches!(
        s.operator_apply_with(action(&a, &closed), OperatorChange::default())
            .await,
        Err(Error::Refused(_))
    ));
    let scheduled = transition(SagaStatus::Scheduled, 0);
    assert!(matches!(
        s.operator_apply_with(
            action(&a, &scheduled),
            OperatorChange {
                closed_outcome: Some(ClosedOutcome::Paid),
                ..Default::default()
            }
        )
        .await,
        Err(Error::Refused(_))
    ));
    let done = s
        .operator_apply_with(
            action(&a, &closed),
            OperatorChange {
                closed_outcome: Some(ClosedOutcome::NotPaid),
                require_unheld: true,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(done.status, SagaStatus::Closed);
    assert_eq!(done.closed_outcome, Some(ClosedOutcome::NotPaid));
    assert!(done.finished_at.is_some() && done.run_at.is_none());
    assert_eq!(
        saga(s, a.id).await.closed_outcome,
        Some(ClosedOutcome::NotPaid)
    );

    // A reset: new input, key generations up by one per reset, other steps untouched.
    let mut reset = transition(SagaStatus::Scheduled, 0);
    reset.history = vec![HistoryEntry {
        detail: json!({"reason": "account corrected"}),
        ..entry(HistoryKind::OperatorReset, Some("s1"), None)
    }];
    let patched = json!({"payout": {"account_number": "1234567890"}});
    let steps = vec!["s1".to_string(), "s2".to_string()];
    let once = s
        .operator_apply_with(
            action(&b, &reset),
            OperatorChange {
                input: Some(&patched),
                new_key_generation: &steps,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(once.input, patched);
    assert_eq!(
        (once.key_generation("s1"), once.key_generation("s2")),
        (1, 1)
    );
    let twice = s
        .operator_apply_with(
            action(&once, &reset),
            OperatorChange {
                new_key_generation: &steps[1..],
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(twice.input, patched, "no input: the stored one stays");
    assert_eq!(
        (twice.key_generation("s1"), twice.key_generation("s2")),
        (1, 2)
    );
    assert_eq!(saga(s, b.id).await.key_generation("s2"), 2);
    // The claimed saga carries them (workers derive the steps' keys from them).
    let claimed = claim_one(s, w, b.id).await;
    assert_eq!(claimed.key_generation("s2"), 2);
    s.release(b.id, w, claimed.fence).await.unwrap();

    // A refusal recorded by the caller, and a cancel with its whole detail.
    s.append_history(
        b.id,
        "ops:bob",
        &[HistoryEntry {
            error: Some("refused".into()),
            detail: json!({"action": "close", "reason": "x", "os_user": "bob"}),
            ..entry(HistoryKind::OperatorRefused, None, None)
        }],
    )
    .await
    .unwrap();
    s.request_cancel_with(
        b.id,
        "ops:bob",
        json!({"reason": "payee gone", "os_user": "bob"}),
    )
    .await
    .unwrap();
    let history = s.history(b.id).await.unwrap();
    let cancel = history
        .iter()
        .find(|h| h.kind == HistoryKind::CancelRequested)
        .unwrap();
    assert_eq!(
        cancel.detail,
        Some(json!({"reason": "payee gone", "os_user": "bob"}))
    );

    let all = s
        .operator_history(&AuditFilter {
            since: Some(since),
            ..Default::default()
        })
        .await
        .unwrap();
    let kinds: Vec<(Uuid, HistoryKind)> = all.iter().map(|r| (r.saga_id, r.entry.kind)).collect();
    assert_eq!(
        kinds,
        vec![
            (b.id, HistoryKind::CancelRequested),
            (b.id, HistoryKind::OperatorRefused),
            (b.id, HistoryKind::OperatorReset),
            (b.id, HistoryKind::OperatorReset),
            (a.id, HistoryKind::SagaClosed),
        ],
        "newest first, starts excepted"
    );
    assert!(all.iter().all(|r| r.workflow == "flow"));
    let bob = s
        .operator_history(&AuditFilter {
            actor: Some("ops:bob".into()),
            limit: Some(1),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(bob.len(), 1);
    assert_eq!(bob[0].entry.kind, HistoryKind::CancelRequested);
    let later = s
        .operator_history(&AuditFilter {
            since: Some(Utc::now() + chrono::Duration::hours(1)),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(later.is_empty());
}

fn reference(step: &str, name: &str, value: &str) -> SagaReference {
    SagaReference {
        step: step.to_string(),
        name: name.to_string(),
        value: value.to_string(),
    }
}

async fn commit_with_references(
    store: &dyn Store,
    saga: &SagaRecord,
    w: Uuid,
    t: &Transition,
    references: &[SagaReference],
) -> Result<paysaga_store::Committed, Error> {
    store
        .commit(Commit {
            saga: saga.id,
            worker: w,
            fence: saga.fence,
            prior_status: saga.status,
            consumed_event: None,
            transition: t,
            token: Uuid::new_v4(),
            references,
        })
        .await
}

async fn references_a_step_returned_are_stored_with_its_commit_and_find_the_saga(e: Env) {
    let s = e.s();
    let w = worker(s, LONG_TTL).await;
    let a = start(s, "payout", &[STEP, STEP], None).await;
    // Another saga (of kinds no worker here runs): it has no references.
    let b = start(s, "elsewhere", &["other.kind"], None).await;
    // A step done (the one-statement commit) with two provider ids.
    let held = claim_one(s, w, a.id).await;
    let mut done = transition(SagaStatus::Scheduled, 1);
    done.output = Some((
        "s1".to_string(),
        json!({"payable_id": "pay_1", "funding_id": "fund_9"}),
    ));
    done.history = vec![entry(HistoryKind::StepCompleted, Some("s1"), Some(1))];
    let refs = [
        reference("s1", "payable_id", "pay_1"),
        reference("s1", "funding_id", "fund_9"),
    ];
    commit_with_references(s, &held, w, &done, &refs)
        .await
        .unwrap();
    // A commit the fence refuses stores none of its references.
    let stale = [reference("s1", "payable_id", "pay_stale")];
    let refused = commit_with_references(s, &held, w, &done, &stale).await;
    assert!(
        matches!(refused, Err(Error::LeaseLost { .. })),
        "{refused:?}"
    );
    // A wait (the other commit path) with one more, and one already stored: kept once.
    let held = claim_one(s, w, a.id).await;
    let wait = wait_transition("payable:pay_1", Utc::now() + chrono::Duration::hours(1));
    tokio::time::sleep(Duration::from_millis(5)).await;
    let more = [
        reference("s1", "payable_id", "pay_1"),
        reference("s2", "intent_id", "intent_2"),
    ];
    commit_with_references(s, &held, w, &wait, &more)
        .await
        .unwrap();
    assert_eq!(
        s.saga_references(a.id).await.unwrap(),
        [
            reference("s1", "funding_id", "fund_9"),
            reference("s1", "payable_id", "pay_1"),
            reference("s2", "intent_id", "intent_2"),
        ]
    );
    assert!(s.saga_references(b.id).await.unwrap().is_empty());
    let by_ref = |value: &str| SagaFilter {
        reference: Some(value.to_string()),
        ..Default::default()
    };
    for value in ["pay_1", "fund_9", "intent_2"] {
        let found = s.list_sagas(&by_ref(value)).await.unwrap();
        assert_eq!(ids(&found), [a.id], "list --ref {value}");
    }
    for value in ["pay_stale", "pay", "payable_id"] {
        let found = s.list_sagas(&by_ref(value)).await.unwrap();
        assert!(found.is_empty(), "list --ref {value}: {found:?}");
    }
}

async fn register_kinds(store: &dyn Store, kinds: &[&str]) -> Uuid {
    let id = Uuid::new_v4();
    store
        .register_worker(
            &WorkerInfo {
                id,
                name: "partial".to_string(),
                hostname: "localhost".to_string(),
                pid: std::process::id(),
                step_kinds: kinds.iter().map(|k| k.to_string()).collect(),
                assignments: None,
            },
            LONG_TTL,
        )
        .await
        .unwrap();
    id
}

async fn sagas_no_live_worker_can_run_are_counted_named_and_listed_as_stuck(e: Env) {
    let s = e.s();
    let started = start(s, "payout", &[LUMANU, STEP], None).await;
    let stuck = SagaFilter {
        stuck_since: Some(Utc::now() - chrono::Duration::hours(1)),
        ..Default::default()
    };
    // No live worker at all.
    assert!(s.live_worker_kinds().await.unwrap().is_empty());
    let groups = s.sagas_no_live_worker_can_run().await.unwrap();
    assert_eq!(groups.len(), 1, "{groups:?}");
    assert_eq!(
        (
            groups[0].workflow.as_str(),
            groups[0].version,
            groups[0].sagas
        ),
        ("payout", 1, 1)
    );
    assert_eq!(
        groups[0].missing_kinds,
        [LUMANU.to_string(), STEP.to_string()]
    );
    assert_eq!(ids(&s.list_sagas(&stuck).await.unwrap()), [started.id]);
    // A live worker without the Lumanu kinds: still no one can run it.
    let partial = register_kinds(s, &[STEP]).await;
    assert_eq!(
        s.live_worker_kinds().await.unwrap(),
        [vec![STEP.to_string()]]
    );
    let groups = s.sagas_no_live_worker_can_run().await.unwrap();
    assert_eq!(groups.len(), 1, "{groups:?}");
    assert_eq!(groups[0].missing_kinds, [LUMANU.to_string()]);
    assert_eq!(ids(&s.list_sagas(&stuck).await.unwrap()), [started.id]);
    // A worker that has every kind: runnable, not stuck (no other reason).
    s.stop_worker(partial).await.unwrap();
    let full = register_kinds(s, &[STEP, LUMANU]).await;
    assert!(s.sagas_no_live_worker_can_run().await.unwrap().is_empty());
    assert!(s.list_sagas(&stuck).await.unwrap().is_empty());
    // It stops: unrunnable again.
    s.stop_worker(full).await.unwrap();
    assert!(s.live_worker_kinds().await.unwrap().is_empty());
    assert_eq!(s.sagas_no_live_worker_can_run().await.unwrap()[0].sagas, 1);
}

async fn reap_expired_leases_releases_dead_workers_sagas_and_tells_the_next_expiry(e: Env) {
    let s = e.s();
    let dead = worker(s, Duration::from_millis(300)).await;
    let started = start(s, "flow", &[STEP], None).await;
    claim_one(s, dead, started.id).await;
    tokio::time::sleep(Duration::from_millis(450)).await;
    let alive = worker(s, LONG_TTL).await;
    let reaped = s.reap_expired_leases(alive).await.unwrap();
    assert_eq!(reaped.sagas, 1);
    assert_eq!(
        reaped.next_expiry, None,
        "the caller's own lease is left out"
    );
    assert!(saga(s, started.id).await.owner.is_none());
    // Another caller learns when the live lease expires.
    let other = s.reap_expired_leases(Uuid::new_v4()).await.unwrap();
    assert_eq!(other.sagas, 0);
    let next = other.next_expiry.unwrap();
    let now = s.db_now().await.unwrap();
    assert!(
        next > now + chrono::Duration::seconds(20) && next <= now + chrono::Duration::seconds(31),
        "next expiry {next}, now {now}"
    );
}

/// The rows a saga leaves: its id, the inbox event it consumed (if it got that far) and the
/// document it was given.
struct SagaRows {
    id: Uuid,
    event: Option<i64>,
    document: DocumentId,
}

/// A saga given a document that waits on `key`; with `end`, an event for `key` was stored
/// first (the wait consumes it at once) and the saga then reaches `end`; without, it stays
/// waiting (a wait row, no event).
async fn saga_with_rows(s: &dyn Store, w: Uuid, key: &str, end: Option<SagaStatus>) -> SagaRows {
    let doc = new_document(key.as_bytes(), "image/png");
    s.put_document(&doc).await.unwrap();
    let event = match end {
        Some(_) => Some(
            s.deliver_event(event(&format!("evt-{key}"), "payable.paid", key))
                .await
                .unwrap()
                .inbox_id,
        ),
        None => None,
    };
    let started = start(s, "flow", &[LUMANU, STEP], Some(key)).await;
    s.claim_documents(started.id, &[doc.id]).await.unwrap();
    let claimed = claim_one(s, w, started.id).await;
    let wait = wait_transition(key, Utc::now() + chrono::Duration::hours(1));
    let c = commit(s, &claimed, w, &wait, None).await.unwrap();
    assert_eq!(c.kept, end.is_some());
    if let Some(status) = end {
        let waiting = saga(s, started.id).await;
        let mut done = transition(status, 1);
        done.history = vec![
            entry(HistoryKind::EventReceived, Some("s1"), Some(1)),
            entry(HistoryKind::StepCompleted, Some("s1"), Some(1)),
        ];
        commit(s, &waiting, w, &done, event).await.unwrap();
        assert_eq!(saga(s, started.id).await.status, status);
    }
    SagaRows {
        id: started.id,
        event,
        document: doc.id,
    }
}

async fn prune_deletes_only_finished_sagas_older_than_the_cut_off_with_all_their_rows(e: Env) {
    let s = e.s();
    let w = worker(s, LONG_TTL).await;
    let mut old = Vec::new();
    for (key, status) in [
        ("old-completed", SagaStatus::Completed),
        ("old-compensated", SagaStatus::Compensated),
        ("old-cancelled", SagaStatus::Cancelled),
    ] {
        old.push(saga_with_rows(s, w, key, Some(status)).await);
    }
    // Parked for an operator: final for the workers, never pruned.
    let parked = saga_with_rows(s, w, "old-parked", Some(SagaStatus::NeedsOperator)).await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let newer = saga_with_rows(s, w, "new-completed", Some(SagaStatus::Completed)).await;
    let active = saga_with_rows(s, w, "active", None).await;
    let cut = Duration::from_millis(600);

    let mut old_history = 0;
    for r in &old {
        old_history += s.history(r.id).await.unwrap().len() as u64;
    }
    let kept = [&parked, &newer, &active];
    let mut kept_history = Vec::new();
    for r in kept {
        kept_history.push(s.history(r.id).await.unwrap().len());
    }
    assert_eq!(s.count_prunable(cut).await.unwrap(), 3);

    // In batches: two, then the last one, then nothing.
    let first = s.prune_finished(cut, 2).await.unwrap();
    assert!(!first.busy);
    assert_eq!(first.sagas, 2);
    let second = s.prune_finished(cut, 100).await.unwrap();
    assert_eq!(second.sagas, 1);
    assert_eq!(
        s.prune_finished(cut, 100).await.unwrap(),
        paysaga_store::Pruned::default()
    );
    let total = (
        first.sagas + second.sagas,
        first.history + second.history,
        first.waits + second.waits,
        first.events + second.events,
        first.documents + second.documents,
    );
    assert_eq!(total, (3, old_history, 0, 3, 3), "rows deleted per table");
    assert!(
        old_history >= 3 * 4,
        "started, waiting, event, completed each"
    );
    for r in &old {
        assert!(s.saga(r.id).await.unwrap().is_none());
        assert!(s.history(r.id).await.unwrap().is_empty());
        assert!(s.event(r.event.unwrap()).await.unwrap().is_none());
        assert!(s.document(r.document).await.unwrap().is_none());
    }
    for (r, history) in kept.iter().zip(kept_history) {
        assert!(s.saga(r.id).await.unwrap().is_some());
        assert_eq!(s.history(r.id).await.unwrap().len(), history);
        if let Some(ev) = r.event {
            assert_eq!(s.event(ev).await.unwrap().unwrap().consumed_by, Some(r.id));
        }
        assert!(s.document_content(r.document).await.unwrap().is_some());
    }
    assert_eq!(saga(s, parked.id).await.status, SagaStatus::NeedsOperator);
    assert!(
        saga(s, active.id).await.wait.is_some(),
        "the active wait stays"
    );
    assert_eq!(s.count_prunable(cut).await.unwrap(), 0);
    // Everything finished is older than a zero cut-off: the newer completed saga goes, the
    // parked and the active ones stay.
    assert_eq!(
        s.prune_finished(Duration::ZERO, 100).await.unwrap().sagas,
        1
    );
    assert!(s.saga(parked.id).await.unwrap().is_some());
    assert!(s.saga(active.id).await.unwrap().is_some());
}

/// A watch on a saga's end (`Store::watch_end`, what `Engine::wait_for_end` waits on) is
/// woken by the commit that ends or parks the saga and by an operator's end, not by another
/// saga's end, and sees at
/// once an end committed before it began; there is no watch of a saga that does not exist.
async fn a_watch_is_woken_by_whatever_ends_or_parks_its_saga_and_sees_an_earlier_end_at_once(
    e: Env,
) {
    let s = e.s();
    let w = worker(s, LONG_TTL).await;
    assert!(s.watch_end(Uuid::new_v4()).await.unwrap().is_none());
    // A saga no worker here runs (its kind is not claimed), awaited beside the others.
    let bystander = start(s, "other", &["other.kind"], None).await;
    let mut unrelated = s.watch_end(bystander.id).await.unwrap().unwrap();
    let mut ended = Vec::new();
    for end in [SagaStatus::Completed, SagaStatus::NeedsOperator] {
        let started = start(s, "flow", &[STEP], None).await;
        let claimed = claim_one(s, w, started.id).await;
        let mut watch = s.watch_end(started.id).await.unwrap().unwrap();
        assert_eq!(watch.saga.id, started.id);
        assert!(!watch.saga.status.is_final(), "{:?}", watch.saga.status);
        let store = e.store.clone();
        let ending = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            let mut t = transition(end, 0);
            if end == SagaStatus::NeedsOperator {
                t.last_error = Some("the provider answered 500 after the effect".to_string());
            }
            commit(store.as_ref(), &claimed, w, &t, None).await.unwrap();
        });
        tokio::time::timeout(Duration::from_secs(5), watch.changed())
            .await
            .unwrap_or_else(|_| panic!("the {end} commit did not wake its watch"));
        ending.await.unwrap();
        assert_eq!(saga(s, started.id).await.status, end);
        ended.push((started.id, end));
    }
    // An end by an operator (not a worker's commit) wakes the watch too.
    let unheld = start(s, "other", &["other.kind"], None).await;
    let mut watch = s.watch_end(unheld.id).await.unwrap().unwrap();
    let store = e.store.clone();
    let cancelling = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let mut t = transition(SagaStatus::Cancelled, 0);
        t.history = vec![entry(HistoryKind::SagaCancelled, None, None)];
        store
            .operator_apply(OperatorAction {
                saga: unheld.id,
                expect_status: SagaStatus::Scheduled,
                expect_step_index: 0,
                transition: &t,
                actor: "cli:alice",
            })
            .await
            .unwrap();
    });
    tokio::time::timeout(Duration::from_secs(5), watch.changed())
        .await
        .expect("an operator's cancel did not wake the watch");
    cancelling.await.unwrap();
    assert_eq!(saga(s, unheld.id).await.status, SagaStatus::Cancelled);
    ended.push((unheld.id, SagaStatus::Cancelled));
    assert!(
        tokio::time::timeout(Duration::from_millis(200), unrelated.changed())
            .await
            .is_err(),
        "another saga's end woke this watch"
    );
    // Already ended before the watch: its own read says so.
    for (id, end) in ended {
        let watch = s.watch_end(id).await.unwrap().unwrap();
        assert_eq!(watch.saga.status, end);
    }
}

macro_rules! conformance {
    ($($name:ident),* $(,)?) => {
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::Env::postgres().await).await;
                }
            )*
        }
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::Env::sqlite().await).await;
                }
            )*
        }
    };
}

conformance!(
    definition_submit_is_idempotent_and_changed_content_is_refused,
    a_saga_takes_its_documents_in_its_insert_commit_or_not_at_all,
    start_is_idempotent_per_key_and_a_reused_key_with_another_input_is_refused,
    concurrent_starts_with_one_key_create_exactly_one_saga,
    a_start_resolved_against_a_version_no_longer_the_latest_writes_nothing,
    claim_bumps_the_fence_and_a_stale_fence_cannot_commit,
    worker_whose_lease_expired_cannot_commit_even_before_it_is_reaped,
    heartbeat_extends_a_live_lease,
    a_worker_whose_lease_expired_or_was_reaped_claims_nothing,
    a_commit_retried_after_a_lost_acknowledgement_writes_nothing_twice,
    a_marked_request_is_not_sent_again_within_its_window_nor_by_a_worker_that_lost_the_saga,
    concurrent_commits_of_many_sagas_each_apply_once_and_a_stale_one_is_refused,
    concurrent_commits_of_every_kind_keep_each_sagas_own_writes,
    commits_that_keep_the_saga_leave_run_at_and_are_hot_updates,
    reaper_releases_sagas_of_expired_workers_and_their_fence_is_stale,
    stop_worker_releases_every_saga_it_holds,
    a_start_given_to_a_live_worker_is_held_by_it_alone_and_its_stop_releases_it,
    release_gives_the_saga_back_unchanged,
    commit_stores_done_retry_and_fail_transitions_with_their_history,
    commit_of_a_completed_saga_makes_it_final,
    event_delivered_before_the_wait_is_kept_and_consumed_when_the_wait_begins,
    event_delivered_after_the_wait_ends_it_and_makes_the_saga_due,
    duplicate_events_are_acknowledged_and_ignored,
    unparseable_event_is_kept_with_its_raw_body_and_shown_to_operators,
    replay_matches_a_stored_event_to_a_wait_that_exists_now,
    wait_deadline_makes_the_saga_due_and_marks_it_stuck_once_passed,
    list_filters_select_by_status_workflow_step_provider_key_and_time,
    sagas_held_by_a_dead_worker_are_listed_as_stuck,
    stats_count_by_status_step_retries_waits_and_unmatched_events,
    operator_action_fences_out_the_worker_and_records_the_actor,
    cancel_makes_a_backing_off_saga_due_and_is_refused_when_final,
    worker_without_a_step_kind_leaves_those_sagas_alone,
    wakeups_are_heard_after_new_work_is_stored_here_or_by_another_process,
    a_second_live_worker_is_refused_where_one_node_is_the_limit,
    schema_is_current_after_migrate_and_migrate_is_idempotent,
    appended_history_entries_keep_their_actor_and_order,
    a_cancel_acted_on_is_reset_and_a_possible_effect_is_kept_until_the_step_moves_on,
    an_effect_mark_on_the_current_step_counts_as_a_possible_effect,
    owned_sagas_lists_what_a_worker_holds_with_its_fence,
    concurrent_delivery_poll_completion_and_operator_action_never_deadlock,
    a_start_retried_with_the_same_input_written_differently_returns_the_saga,
    a_mark_made_with_a_long_window_holds_back_a_worker_whose_own_window_is_short,
    marks_give_backs_and_shutdown_releases_are_recorded_in_history,
    a_manual_event_and_its_operator_entry_are_stored_together_for_that_saga_only,
    sagas_with_an_alert_are_listed_by_the_alerts_filter,
    documents_keep_exact_bytes_and_a_claim_is_all_or_nothing,
    document_content_goes_once_its_saga_is_final_plus_retention_and_metadata_stays,
    operator_changes_store_outcome_input_and_key_generations_and_the_audit_lists_them,
    references_a_step_returned_are_stored_with_its_commit_and_find_the_saga,
    sagas_no_live_worker_can_run_are_counted_named_and_listed_as_stuck,
    gauges_count_open_sagas_by_status_once_per_lease_and_started_sagas_incrementally,
    prune_deletes_only_finished_sagas_older_than_the_cut_off_with_all_their_rows,
    reap_expired_leases_releases_dead_workers_sagas_and_tells_the_next_expiry,
    a_request_budget_lets_a_burst_go_then_hands_out_each_slot_once_one_interval_apart,
    a_request_slot_further_away_than_the_caller_waits_is_not_taken,
    a_throttled_request_budget_gives_no_slot_before_the_pause_and_runs_at_half_rate,
    two_claimers_never_both_hold_a_concurrency_key_whose_limit_is_one,
    a_concurrency_slot_is_kept_while_reaped_or_parked_and_handed_on_when_the_saga_ends,
    conditional_steps_whose_condition_fails_are_skipped_with_a_history_row_and_no_output,
    reconciliation_reads_references_with_saga_status_and_stores_runs_with_their_findings,
    a_watch_is_woken_by_whatever_ends_or_parks_its_saga_and_sees_an_earlier_end_at_once,
);

fn slot_request(credential: &str, burst: u32, max_wait: Duration) -> SlotRequest<'_> {
    SlotRequest {
        provider: "lumanu",
        credential,
        interval: Duration::from_millis(100),
        burst,
        max_wait,
    }
}

async fn a_request_budget_lets_a_burst_go_then_hands_out_each_slot_once_one_interval_apart(e: Env) {
    // 30 workers' requests at once against 10/s with a burst of 3.
    let tasks: Vec<_> = (0..30)
        .map(|_| {
            let store = e.store.clone();
            tokio::spawn(async move {
                store
                    .reserve_request_slot(&slot_request("client-a", 3, Duration::from_secs(60)))
                    .await
                    .unwrap()
            })
        })
        .collect();
    let mut slots = Vec::new();
    for t in tasks {
        slots.push(t.await.unwrap());
    }
    assert!(slots.iter().all(|s| s.granted && !s.slowed), "{slots:?}");
    let start = slots.iter().map(|s| s.now).min().unwrap();
    let mut times: Vec<DateTime<Utc>> = slots.iter().map(|s| s.at).collect();
    times.sort();
    let due_at_once = times.iter().filter(|t| **t <= start).count();
    assert!(
        due_at_once <= 3,
        "at most the burst goes at once: {times:?}"
    );
    for pair in times.windows(2) {
        assert!(
            pair[1] - pair[0] >= chrono::Duration::milliseconds(100),
            "each slot is handed out once, one interval after the previous: {times:?}"
        );
    }
    // 30 requests at 10/s with a burst of 3: the last goes about 2.7 s after the first.
    let span = times[29] - times[0];
    assert!(
        span >= chrono::Duration::milliseconds(2700) && span < chrono::Duration::milliseconds(3500),
        "{span:?}"
    );
    // Another credential has its own budget.
    let other = e
        .s()
        .reserve_request_slot(&slot_request("client-b", 3, Duration::ZERO))
        .await
        .unwrap();
    assert!(other.granted && other.at <= other.now, "{other:?}");
}

async fn a_request_slot_further_away_than_the_caller_waits_is_not_taken(e: Env) {
    let s = e.s();
    for _ in 0..2 {
        let slot = s
            .reserve_request_slot(&slot_request("client-a", 2, Duration::ZERO))
            .await
            .unwrap();
        assert!(slot.granted, "the burst goes at once: {slot:?}");
    }
    let refused = s
        .reserve_request_slot(&slot_request("client-a", 2, Duration::ZERO))
        .await
        .unwrap();
    assert!(!refused.granted, "{refused:?}");
    assert!(refused.at > refused.now, "{refused:?}");
    // Nothing was reserved: the one who waits long enough gets that very slot.
    let taken = s
        .reserve_request_slot(&slot_request("client-a", 2, Duration::from_secs(5)))
        .await
        .unwrap();
    assert!(taken.granted, "{taken:?}");
    assert_eq!(taken.at, refused.at);
}

async fn a_throttled_request_budget_gives_no_slot_before_the_pause_and_runs_at_half_rate(e: Env) {
    let s = e.s();
    let first = s
        .reserve_request_slot(&slot_request("client-a", 1, Duration::ZERO))
        .await
        .unwrap();
    assert!(first.granted);
    s.throttle_requests(
        "lumanu",
        "client-a",
        Duration::from_secs(2),
        Duration::from_secs(60),
    )
    .await
    .unwrap();
    // A shorter pause another worker reports later does not loosen it.
    s.throttle_requests("lumanu", "client-a", Duration::ZERO, Duration::ZERO)
        .await
        .unwrap();
    let held = s
        .reserve_request_slot(&slot_request("client-a", 1, Duration::from_secs(1)))
        .await
        .unwrap();
    assert!(!held.granted && held.slowed, "{held:?}");
    assert!(
        held.at - held.now > chrono::Duration::milliseconds(1500),
        "{held:?}"
    );
    let a = s
        .reserve_request_slot(&slot_request("client-a", 1, Duration::from_secs(10)))
        .await
        .unwrap();
    let b = s
        .reserve_request_slot(&slot_request("client-a", 1, Duration::from_secs(10)))
        .await
        .unwrap();
    assert!(a.granted && b.granted && a.slowed);
    assert_eq!(a.at, held.at);
    assert_eq!(
        b.at - a.at,
        chrono::Duration::milliseconds(200),
        "half the rate"
    );
    // Throttling a budget nobody used yet creates it.
    s.throttle_requests(
        "blaaiz",
        "key-1",
        Duration::from_secs(3),
        Duration::from_secs(60),
    )
    .await
    .unwrap();
    let fresh = s
        .reserve_request_slot(&SlotRequest {
            provider: "blaaiz",
            credential: "key-1",
            ..slot_request("key-1", 1, Duration::ZERO)
        })
        .await
        .unwrap();
    assert!(!fresh.granted && fresh.slowed, "{fresh:?}");
    // It loosens again: once `slow_for` is over, the full rate is back.
    s.throttle_requests("lean", "app-1", Duration::ZERO, Duration::from_millis(300))
        .await
        .unwrap();
    let lean = |max_wait| SlotRequest {
        provider: "lean",
        credential: "app-1",
        ..slot_request("app-1", 1, max_wait)
    };
    assert!(
        s.reserve_request_slot(&lean(Duration::ZERO))
            .await
            .unwrap()
            .slowed
    );
    tokio::time::sleep(Duration::from_millis(700)).await;
    let a = s
        .reserve_request_slot(&lean(Duration::from_secs(5)))
        .await
        .unwrap();
    let b = s
        .reserve_request_slot(&lean(Duration::from_secs(5)))
        .await
        .unwrap();
    assert!(!a.slowed && !b.slowed, "{a:?} {b:?}");
    assert_eq!(
        b.at - a.at,
        chrono::Duration::milliseconds(100),
        "the full rate again"
    );
}

async fn reconciliation_reads_references_with_saga_status_and_stores_runs_with_their_findings(
    e: Env,
) {
    let s = e.s();
    let w = worker(s, LONG_TTL).await;
    let a = start(s, "payout", &[STEP, STEP], None).await;
    let held = claim_one(s, w, a.id).await;
    let mut done = transition(SagaStatus::Scheduled, 1);
    done.output = Some(("s1".to_string(), json!({"payable_id": "pay_r1"})));
    done.history = vec![entry(HistoryKind::StepCompleted, Some("s1"), Some(1))];
    let refs = [
        reference("s1", "payable_id", "pay_r1"),
        reference("s1", "funding_id", "fund_r1"),
    ];
    commit_with_references(s, &held, w, &done, &refs)
        .await
        .unwrap();
    // Only the names asked for, with the saga's status.
    let found = s
        .reconciliation_references(&["payable_id", "transaction_id"], None)
        .await
        .unwrap();
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(
        (found[0].saga_id, found[0].status, found[0].value.as_str()),
        (a.id, SagaStatus::Scheduled, "pay_r1")
    );
    assert_eq!(found[0].workflow, "payout");
    // `since` after the saga's creation leaves it out.
    let later = Utc::now() + chrono::Duration::seconds(60);
    assert!(s
        .reconciliation_references(&["payable_id"], Some(later))
        .await
        .unwrap()
        .is_empty());
    // Owners by value: only stored values.
    let owners = s
        .reference_owners(&["fund_r1".to_string(), "stray".to_string()])
        .await
        .unwrap();
    assert_eq!(owners, [("fund_r1".to_string(), a.id)]);

    // One reconciler at a time: the lease is the first taker's until it expires.
    let (p1, p2) = (Uuid::new_v4(), Uuid::new_v4());
    assert!(s
        .take_reconciler_lease(p1, Duration::from_millis(300))
        .await
        .unwrap());
    assert!(!s
        .take_reconciler_lease(p2, Duration::from_secs(60))
        .await
        .unwrap());
    assert!(s
        .take_reconciler_lease(p1, Duration::from_millis(300))
        .await
        .unwrap());
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(s
        .take_reconciler_lease(p2, Duration::from_secs(60))
        .await
        .unwrap());
    assert!(!s
        .take_reconciler_lease(p1, Duration::from_secs(60))
        .await
        .unwrap());

    // Runs are stored with their findings in order; the last one is read back.
    assert!(s.last_reconciliation().await.unwrap().is_none());
    let finding =
        |kind: &str, saga: Option<Uuid>, amount: Option<i64>| paysaga_store::DriftRecord {
            kind: kind.to_string(),
            provider: "lumanu".to_string(),
            saga_id: saga,
            object_id: Some("obj".to_string()),
            currency: amount.map(|_| "USD".to_string()),
            amount,
            detail: format!("{kind} detail"),
            action: "look".to_string(),
        };
    let run = |findings: Vec<paysaga_store::DriftRecord>| paysaga_store::NewReconciliation {
        started_at: Utc::now(),
        providers: vec!["lumanu".to_string(), "blaaiz".to_string()],
        since: Some(Utc::now() - chrono::Duration::days(1)),
        objects_checked: 7,
        actor: "test".to_string(),
        findings,
    };
    let first = s
        .store_reconciliation(&run(vec![finding("status_mismatch", Some(a.id), None)]))
        .await
        .unwrap();
    let second_run = run(vec![
        finding("unowned_object", None, None),
        finding("unaccounted_money", None, Some(1234)),
    ]);
    let second = s.store_reconciliation(&second_run).await.unwrap();
    assert!(second > first);
    let last = s.last_reconciliation().await.unwrap().unwrap();
    assert_eq!(last.id, second);
    assert_eq!(last.run.findings, second_run.findings);
    assert_eq!(last.run.providers, second_run.providers);
    assert_eq!(last.run.objects_checked, 7);
    assert_eq!(
        last.run.since.map(|t| t.timestamp_micros()),
        second_run.since.map(|t| t.timestamp_micros())
    );
    // An earlier run is read by its id (a CLI run while a worker stores its own after it).
    let by_id = s.reconciliation(first).await.unwrap().unwrap();
    assert_eq!(by_id.id, first);
    assert_eq!(by_id.run.findings.len(), 1);
    assert_eq!(by_id.run.findings[0].kind, "status_mismatch");
    assert!(s.reconciliation(second + 1000).await.unwrap().is_none());
    // A kind outside the vocabulary is refused by the table's CHECK.
    assert!(s
        .store_reconciliation(&run(vec![finding("made_up", None, None)]))
        .await
        .is_err());
    assert_eq!(s.last_reconciliation().await.unwrap().unwrap().id, second);
}

/// `connect` picks the store by the URL's scheme and never echoes the rest of the URL.
#[tokio::test]
async fn connect_picks_the_store_by_url_scheme() {
    let path = std::env::temp_dir().join(format!("paysaga-connect-{}.db", Uuid::new_v4()));
    let _cleanup = TempDb(path.clone());
    assert!(!path.exists());
    let store = paysaga_store::connect(&format!("sqlite://{}", path.display()))
        .await
        .unwrap();
    assert!(path.exists(), "the SQLite file is created if missing");
    assert!(format!("{store:?}").contains("SqliteStore"));
    store.migrate().await.unwrap();

    let db = paysaga_testkit::database().await;
    let pg = paysaga_store::connect(db.url()).await.unwrap();
    assert!(format!("{pg:?}").contains("PgStore"));
    let alt = db.url().replacen("postgres://", "postgresql://", 1);
    assert!(paysaga_store::connect(&alt).await.is_ok());

    match paysaga_store::connect("mysql://root:secret@localhost/db").await {
        Err(e @ Error::UnsupportedUrl { .. }) => {
            let m = e.to_string();
            assert!(m.contains("\"mysql\"") && !m.contains("secret"), "{m}");
        }
        other => panic!("expected UnsupportedUrl, got {other:?}"),
    }
}

/// `close --compensate` (issue 13 item 1): the request is stored with the unwind, survives its
/// retries and a park, is cleared by an action that moves the saga forward, refuses a cancel,
/// and the unwind's final commit (decided by the state machine from the stored request) ends
/// the saga `closed` with the declared outcome.
async fn a_close_request_is_stored_with_the_unwind_and_its_final_commit_ends_closed_with_the_outcome(
    e: Env,
) {
    use paysaga_core::{CloseRequest, ClosedOutcome, StepOutcome, StepTraits};
    use paysaga_store::OperatorChange;
    let s = e.s();
    let w = worker(s, LONG_TTL).await;
    let req = CloseRequest {
        outcome: ClosedOutcome::NotPaid,
        actor: "ops:alice".to_string(),
        reason: "payee withdrew".to_string(),
        requested_at: Utc::now(),
    };
    let close_requested = |step: usize| {
        let mut t = transition(SagaStatus::Compensating, step);
        t.history = vec![HistoryEntry {
            detail: json!({"reason": "payee withdrew", "outcome": "not_paid", "compensate": true}),
            ..entry(HistoryKind::CloseRequested, Some("s2"), None)
        }];
        t
    };
    let action = |saga: &SagaRecord, t| OperatorAction {
        saga: saga.id,
        expect_status: saga.status,
        expect_step_index: saga.step_index,
        transition: t,
        actor: "ops:alice",
    };
    let with_request = || OperatorChange {
        close_request: Some(&req),
        require_unheld: true,
        ..Default::default()
    };
    let a = start(s, "flow", &[STEP, STEP], None).await;
    // Only an unwind carries a request.
    let scheduled = transition(SagaStatus::Scheduled, 0);
    let refused = s
        .operator_apply_with(action(&a, &scheduled), with_request())
        .await;
    assert!(matches!(&refused, Err(Error::Refused(_))), "{refused:?}");
    assert_eq!(saga(s, a.id).await.close_requested, None);

    let t = close_requested(0);
    let stored = s
        .operator_apply_with(action(&a, &t), with_request())
        .await
        .unwrap();
    assert_eq!(stored.status, SagaStatus::Compensating);
    assert_eq!(stored.close_requested.as_ref(), Some(&req));
    let h = s.history(a.id).await.unwrap();
    let last = h.last().unwrap();
    assert_eq!(
        (last.kind, last.actor.as_deref()),
        (HistoryKind::CloseRequested, Some("ops:alice"))
    );
    // A cancel of a saga unwinding for a close is refused: it already ends closed.
    let cancel = s.request_cancel(a.id, "ops:bob", "stop it").await;
    assert!(
        matches!(&cancel, Err(Error::Refused(m)) if m.contains("nothing to cancel") && m.contains("ops:alice")),
        "{cancel:?}"
    );

    // A worker retries the compensation: the request stays.
    let claimed = claim_one(s, w, a.id).await;
    assert_eq!(claimed.state().close_requested.as_ref(), Some(&req));
    let mut retry = transition(SagaStatus::Compensating, 0);
    retry.attempt = 1;
    retry.history = vec![entry(
        HistoryKind::CompensationRetrying,
        Some("s1"),
        Some(1),
    )];
    commit(s, &claimed, w, &retry, None).await.unwrap();
    assert_eq!(saga(s, a.id).await.close_requested.as_ref(), Some(&req));

    // The last compensation: the state machine ends the unwind closed, the store writes the
    // outcome from the stored request and clears it.
    let claimed = claim_one(s, w, a.id).await;
    let def = definition("flow", 1, &[STEP, STEP])
        .compile(
            &|_| {
                Some(StepTraits {
                    compensable: true,
                    irreversible: false,
                })
            },
            &[],
        )
        .unwrap();
    let end = paysaga_core::after_compensation(
        &claimed.state(),
        &def,
        0,
        2,
        StepOutcome::Done(json!({})),
        Utc::now(),
    );
    assert_eq!(end.status, SagaStatus::Closed);
    commit(s, &claimed, w, &end, None).await.unwrap();
    let closed = saga(s, a.id).await;
    assert_eq!(closed.status, SagaStatus::Closed);
    assert_eq!(closed.closed_outcome, Some(ClosedOutcome::NotPaid));
    assert_eq!(closed.close_requested, None);
    assert!(closed.finished_at.is_some() && closed.run_at.is_none() && closed.owner.is_none());
    let h = s.history(a.id).await.unwrap();
    let last = h.last().unwrap();
    assert_eq!(last.kind, HistoryKind::SagaClosed);
    assert_eq!(last.worker, Some(w));
    let detail = last.detail.clone().unwrap();
    assert_eq!(
        (
            &detail["outcome"],
            &detail["compensate"],
            &detail["requested_by"]
        ),
        (&json!("not_paid"), &json!(true), &json!("ops:alice"))
    );

    // A compensation that fails for good parks the saga with the request kept; an operator
    // action that moves it forward (a reset) drops it.
    let b = start(s, "flow", &[STEP, STEP], None).await;
    let t = close_requested(0);
    let b = s
        .operator_apply_with(action(&b, &t), with_request())
        .await
        .unwrap();
    let claimed = claim_one(s, w, b.id).await;
    let mut parked = transition(SagaStatus::NeedsOperator, 0);
    parked.history = vec![entry(HistoryKind::CompensationFailed, Some("s1"), Some(1))];
    commit(s, &claimed, w, &parked, None).await.unwrap();
    let b = saga(s, b.id).await;
    assert_eq!(b.status, SagaStatus::NeedsOperator);
    assert_eq!(b.close_requested.as_ref(), Some(&req));
    let reset = s
        .operator_apply_with(action(&b, &scheduled), OperatorChange::default())
        .await
        .unwrap();
    assert_eq!(
        (reset.status, reset.close_requested),
        (SagaStatus::Scheduled, None)
    );
}

mod close_compensate {
    use super::*;
    conformance!(
        a_close_request_is_stored_with_the_unwind_and_its_final_commit_ends_closed_with_the_outcome
    );
}

// ---------------------------------------------------------------------------------------
// Per-key concurrency (issue 16 item 2)

/// Starts a saga of `workflow` with concurrency key `key` and `limit`.
async fn start_keyed(store: &dyn Store, workflow: &str, key: &str, limit: u32) -> SagaRecord {
    let def = match store.find_definition(workflow, None).await.unwrap() {
        Some(d) => d,
        None => store
            .put_definition(&definition(workflow, 1, &[STEP]))
            .await
            .unwrap(),
    };
    let (saga, created) = store
        .create_saga(NewSaga {
            id: Uuid::new_v4(),
            definition_id: def.id,
            workflow: workflow.to_string(),
            version: def.version,
            idempotency_key: None,
            input: json!({"customer": key}),
            actor: "test".to_string(),
            concurrency: Some(paysaga_store::SagaConcurrency {
                key: format!("{workflow}:{key}"),
                limit,
                holds_slot: false,
            }),
            trace_context: None,
            latest: false,
            awaited: false,
            documents: vec![],
        })
        .await
        .unwrap();
    assert!(created);
    tokio::time::sleep(Duration::from_millis(3)).await;
    saga
}

/// Whether the saga holds a slot of its key.
fn holds(saga: &SagaRecord) -> bool {
    saga.concurrency.as_ref().unwrap().holds_slot
}

/// Two workers claiming at the same moment never both get a saga of a key whose limit is
/// one: the holder runs, the others are queued (not due, so no claim nor `next_due` meets
/// them) and get the slot one at a time, in start order, as each holder ends. Concurrent
/// starts of one key give the slot to exactly one of them. Sagas without a key, and sagas of
/// another key, are not held back.
async fn two_claimers_never_both_hold_a_concurrency_key_whose_limit_is_one(e: Env) {
    let s = e.s();
    // The embedded store runs one worker: its two claimers share the worker id.
    let w1 = worker(s, LONG_TTL).await;
    let w2 = match e.backend {
        Backend::Postgres => worker(s, LONG_TTL).await,
        Backend::Sqlite => w1,
    };
    let mut started = Vec::new();
    for _ in 0..6 {
        started.push(start_keyed(s, "payout", "cust_1", 1).await);
    }
    let other = start_keyed(s, "payout", "cust_2", 1).await;
    let free = start(s, "plain", &[STEP], None).await;
    assert!(holds(&started[0]) && started[0].run_at.is_some());
    for queued in &started[1..] {
        assert!(!holds(queued) && queued.run_at.is_none() && queued.is_queued());
    }
    assert_eq!(
        s.concurrency_holders("payout:cust_1").await.unwrap(),
        vec![started[0].id]
    );
    // The first round also takes the saga of the other key and the one without a key.
    let mut expect_extra = vec![other.id, free.id];
    for (i, holder) in started.iter().enumerate() {
        let kinds = all_kinds();
        let (a, b) = tokio::join!(s.claim(w1, &kinds, 16), s.claim(w2, &kinds, 16));
        let mut claimed: Vec<SagaRecord> = a
            .unwrap()
            .into_iter()
            .chain(b.unwrap())
            .map(|c| c.saga)
            .collect();
        claimed.retain(|c| !expect_extra.contains(&c.id));
        assert_eq!(
            ids(&claimed),
            vec![holder.id],
            "round {i}: only the holder of cust_1's slot is claimed"
        );
        expect_extra.clear();
        assert!(
            s.next_due(&all_kinds()).await.unwrap().is_none(),
            "round {i}: a queued saga is never due"
        );
        let held = &claimed[0];
        let w = held.owner.unwrap();
        commit(s, held, w, &transition(SagaStatus::Completed, 1), None)
            .await
            .unwrap();
        if let Some(next) = started.get(i + 1) {
            let next = saga(s, next.id).await;
            assert!(
                holds(&next) && next.run_at.is_some(),
                "round {i}: handed on"
            );
            assert_eq!(
                s.concurrency_holders("payout:cust_1").await.unwrap(),
                vec![next.id]
            );
        }
    }
    assert!(s
        .concurrency_holders("payout:cust_1")
        .await
        .unwrap()
        .is_empty());

    // Concurrent starts of one key: exactly one gets the slot.
    let racing =
        futures::future::join_all((0..8).map(|_| start_keyed(s, "payout", "cust_3", 1))).await;
    let holding: Vec<&SagaRecord> = racing.iter().filter(|r| holds(r)).collect();
    assert_eq!(holding.len(), 1, "{racing:?}");
    assert_eq!(
        s.concurrency_holders("payout:cust_3").await.unwrap(),
        vec![holding[0].id]
    );
    // A limit of two: two at once, the third queued.
    let two: Vec<SagaRecord> = {
        let mut v = Vec::new();
        for _ in 0..3 {
            v.push(start_keyed(s, "funding", "ws_1", 2).await);
        }
        v
    };
    assert_eq!(
        two.iter().map(holds).collect::<Vec<_>>(),
        vec![true, true, false]
    );
}

/// The slot is the saga's, not its worker's: a saga whose worker died keeps it (the next
/// worker continues it), a parked saga keeps it (money may have moved), and it is handed on
/// to the oldest queued saga when the holder ends, whether by its worker's commit or an
/// operator's close. A queued saga with a cancel asked is claimed to apply the cancel
/// without a slot. The sweep has nothing to give while every slot is held.
async fn a_concurrency_slot_is_kept_while_reaped_or_parked_and_handed_on_when_the_saga_ends(
    e: Env,
) {
    use paysaga_core::ClosedOutcome;
    use paysaga_store::OperatorChange;
    let s = e.s();
    let a = start_keyed(s, "payout", "cust_1", 1).await;
    let b = start_keyed(s, "payout", "cust_1", 1).await;
    let c = start_keyed(s, "payout", "cust_1", 1).await;

    // A's worker dies: the reaper releases A, which keeps its slot.
    let dying = worker(s, Duration::from_millis(300)).await;
    let held = claim_one(s, dying, a.id).await;
    assert!(holds(&held));
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(s.reap_expired_workers().await.unwrap(), 1);
    assert!(holds(&saga(s, a.id).await));
    assert!(!holds(&saga(s, b.id).await));
    assert_eq!(s.admit_queued().await.unwrap(), 0, "no slot is free");
    let w = worker(s, LONG_TTL).await;
    let held = claim_one(s, w, a.id).await;

    // A parks: it keeps the slot; B stays queued.
    let mut parked = transition(SagaStatus::NeedsOperator, 0);
    parked.last_error = Some("ambiguous payout".to_string());
    commit(s, &held, w, &parked, None).await.unwrap();
    assert!(holds(&saga(s, a.id).await));
    assert!(s.claim(w, &all_kinds(), 16).await.unwrap().is_empty());
    assert_eq!(s.admit_queued().await.unwrap(), 0);
    assert_eq!(
        s.concurrency_holders("payout:cust_1").await.unwrap(),
        vec![a.id]
    );

    // A cancel asked of queued C is applied without a slot: C is claimed for it alone.
    s.request_cancel(c.id, "ops:bob", "duplicate")
        .await
        .unwrap();
    let cancelling = claim_one(s, w, c.id).await;
    assert!(!holds(&cancelling) && cancelling.cancel_requested);
    commit(
        s,
        &cancelling,
        w,
        &transition(SagaStatus::Cancelled, 0),
        None,
    )
    .await
    .unwrap();
    assert!(
        !holds(&saga(s, b.id).await),
        "C's end frees no slot: it had none"
    );

    // An operator closes A: B gets the slot and runs.
    let a_now = saga(s, a.id).await;
    let mut closed = transition(SagaStatus::Closed, 0);
    closed.history = vec![entry(HistoryKind::SagaClosed, Some("s1"), None)];
    s.operator_apply_with(
        OperatorAction {
            saga: a.id,
            expect_status: a_now.status,
            expect_step_index: a_now.step_index,
            transition: &closed,
            actor: "ops:alice",
        },
        OperatorChange {
            closed_outcome: Some(ClosedOutcome::NotPaid),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let b_now = saga(s, b.id).await;
    assert!(holds(&b_now) && b_now.run_at.is_some());
    let held = claim_one(s, w, b.id).await;
    commit(s, &held, w, &transition(SagaStatus::Completed, 1), None)
        .await
        .unwrap();
    assert!(s
        .concurrency_holders("payout:cust_1")
        .await
        .unwrap()
        .is_empty());
}

/// Issue 15 item 2: a step whose `when` does not hold is skipped through the normal commit
/// (a kept, continuing transition): `step_skipped` rows with the condition and the value seen,
/// no output under its name, and an unwind later knows it did nothing.
async fn conditional_steps_whose_condition_fails_are_skipped_with_a_history_row_and_no_output(
    e: Env,
) {
    use paysaga_core::{after_step, next_run, Condition, NextRun, StepOutcome, StepTraits, Wake};
    let s = e.s();
    let unverified = Condition::not_equals("$.steps.customer.status", json!("VERIFIED"));
    let def = Definition::builder("conditional", 1)
        .step(StepDef::new("customer", STEP, json!({})))
        .step(StepDef::new("upload", STEP, json!({})).with_when(unverified.clone()))
        .step(
            StepDef::new("attach", STEP, json!({"files": "$.steps.upload.files"}))
                .with_when(unverified.clone()),
        )
        .step(StepDef::new("payout", STEP, json!({})))
        .build();
    let compiled = def
        .compile(&|_| Some(StepTraits::default()), &all_kinds())
        .expect("valid");
    let stored = s.put_definition(&def).await.unwrap();
    let (created, _) = s
        .create_saga(NewSaga {
            id: Uuid::new_v4(),
            definition_id: stored.id,
            workflow: "conditional".to_string(),
            version: 1,
            idempotency_key: None,
            input: json!({"amount": 5}),
            actor: "test".to_string(),
            concurrency: None,
            trace_context: None,
            latest: false,
            awaited: false,
            documents: vec![],
        })
        .await
        .unwrap();
    let w = worker(s, Duration::from_secs(30)).await;
    let mut record = claim_one(s, w, created.id).await;
    let scope =
        |r: &SagaRecord| json!({"input": r.input, "steps": r.outputs, "saga": {"id": r.id}});
    // The customer step completes: Blaaiz already verified it.
    let t = after_step(
        &record.state(),
        &compiled,
        0,
        1,
        &Wake::Start,
        StepOutcome::Done(json!({"customer_id": "c1", "status": "VERIFIED"})),
        Utc::now(),
    );
    assert!(commit(s, &record, w, &t, None).await.unwrap().kept);
    record = saga(s, created.id).await;
    assert_eq!(record.step_index, 1);
    // Both KYC steps are skipped in one kept commit; the payout is next.
    let NextRun::Apply(t) = next_run(
        &record.state(),
        &compiled,
        None,
        &scope(&record),
        Utc::now(),
    ) else {
        panic!("the skip is a transition to apply")
    };
    assert!(commit(s, &record, w, &t, None).await.unwrap().kept);
    record = saga(s, created.id).await;
    assert_eq!(
        (
            record.status,
            record.step_index,
            record.attempt,
            record.owner
        ),
        (SagaStatus::Scheduled, 3, 0, Some(w))
    );
    assert_eq!(
        record.outputs,
        json!({"customer": {"customer_id": "c1", "status": "VERIFIED"}}),
        "skipped steps store no output"
    );
    assert!(record.state().was_skipped(&compiled, 1) && record.state().was_skipped(&compiled, 2));
    assert!(!record.state().was_skipped(&compiled, 0));
    let history = s.history(created.id).await.unwrap();
    let skipped: Vec<_> = history
        .iter()
        .filter(|h| h.kind == HistoryKind::StepSkipped)
        .collect();
    assert_eq!(skipped.len(), 2, "{history:?}");
    assert_eq!(skipped[0].step.as_deref(), Some("upload"));
    assert_eq!(skipped[1].step.as_deref(), Some("attach"));
    assert_eq!(
        skipped[0].detail,
        Some(json!({"when": unverified, "value": "VERIFIED", "found": true}))
    );
    // The payout runs next (no skip: it has no condition) and completes the saga.
    assert!(matches!(
        next_run(
            &record.state(),
            &compiled,
            None,
            &scope(&record),
            Utc::now()
        ),
        NextRun::Step { index: 3, .. }
    ));
    let t = after_step(
        &record.state(),
        &compiled,
        3,
        1,
        &Wake::Start,
        StepOutcome::Done(json!({"paid": true})),
        Utc::now(),
    );
    commit(s, &record, w, &t, None).await.unwrap();
    let done = saga(s, created.id).await;
    assert_eq!(done.status, SagaStatus::Completed);
    assert_eq!(
        history_kinds(s, created.id).await,
        vec![
            HistoryKind::SagaStarted,
            HistoryKind::StepCompleted,
            HistoryKind::StepSkipped,
            HistoryKind::StepSkipped,
            HistoryKind::StepCompleted,
            HistoryKind::SagaCompleted,
        ]
    );
}

// ---------------------------------------------------------------------------------------
// Child sagas (fan-out / fan-in, issue 15 item 1)

fn children(parent: Uuid, from: u64, keys: &[&str]) -> Vec<paysaga_store::NewChild> {
    keys.iter()
        .enumerate()
        .map(|(i, k)| paysaga_store::NewChild {
            id: Uuid::new_v4(),
            index: from + i as u64,
            key: k.to_string(),
            idempotency_key: paysaga_core::child_idempotency_key(parent, "fan", k),
            input: json!({"creator": k}),
            concurrency: None,
        })
        .collect()
}

async fn start_children(
    s: &dyn Store,
    parent: &SagaRecord,
    w: Uuid,
    fence: i64,
    batch: &[paysaga_store::NewChild],
) -> Result<u64, Error> {
    let def = match s.find_definition("child", None).await.unwrap() {
        Some(d) => d,
        None => s
            .put_definition(&definition("child", 1, &[STEP]))
            .await
            .unwrap(),
    };
    s.start_children(paysaga_store::StartChildren {
        parent: parent.id,
        worker: w,
        fence,
        step: "fan",
        total: 5,
        definition_id: def.id,
        workflow: "child",
        version: 1,
        children: batch,
    })
    .await
}

/// The parent's fan-out step waits (status `waiting`, no wait row, a fallback poll an hour
/// away) and is released.
async fn park_parent_in_fan_in(s: &dyn Store, parent: &SagaRecord, w: Uuid) {
    let mut t = transition(SagaStatus::Waiting, 0);
    t.attempt = 1;
    t.step_started_at = Some(Utc::now());
    t.run_at = Some(Utc::now() + chrono::Duration::hours(1));
    commit(s, parent, w, &t, None).await.unwrap();
}

async fn fan_out_children_are_started_once_per_key_under_the_parents_fence(env: Env) {
    let s = env.s();
    let parent = start(s, "parent", &[STEP], None).await;
    let w = worker(s, LONG_TTL).await;
    let held = claim_one(s, w, parent.id).await;
    assert_eq!(s.fan_out_progress(parent.id, "fan").await.unwrap(), None);
    let first = children(parent.id, 0, &["a", "b", "c"]);
    assert_eq!(
        start_children(s, &held, w, held.fence, &first)
            .await
            .unwrap(),
        3
    );
    // The same batch again (a fan-out run again after a crash, with fresh ids): nothing new.
    let again = children(parent.id, 0, &["a", "b", "c"]);
    assert_eq!(
        start_children(s, &held, w, held.fence, &again)
            .await
            .unwrap(),
        0
    );
    // A stale fence starts nothing, not even new keys.
    let stale = children(parent.id, 3, &["d"]);
    assert!(matches!(
        start_children(s, &held, w, held.fence - 1, &stale).await,
        Err(Error::LeaseLost { .. })
    ));
    let p = s.fan_out_progress(parent.id, "fan").await.unwrap().unwrap();
    assert_eq!((p.total, p.started, p.ended), (5, 3, 0));
    let listed = s.child_sagas(parent.id, "fan", true).await.unwrap();
    let keys: Vec<&str> = listed.iter().map(|c| c.key.as_str()).collect();
    assert_eq!(keys, ["a", "b", "c"]);
    assert_eq!(listed[1].index, 1);
    assert_eq!(listed[0].id, first[0].id, "the first start's ids stay");
    assert!(listed.iter().all(|c| c.status == SagaStatus::Scheduled));
    let child = saga(s, listed[2].id).await;
    assert_eq!(child.input, json!({"creator": "c"}));
    assert_eq!(
        child.idempotency_key.as_deref(),
        Some(paysaga_core::child_idempotency_key(parent.id, "fan", "c").as_str())
    );
    let link = s.parent_of(child.id).await.unwrap().unwrap();
    assert_eq!(
        (
            link.parent,
            link.step.as_str(),
            link.index,
            link.key.as_str()
        ),
        (parent.id, "fan", 2, "c")
    );
    assert_eq!(s.parent_of(parent.id).await.unwrap(), None);
    let started: Vec<_> = s
        .history(child.id)
        .await
        .unwrap()
        .into_iter()
        .filter(|h| h.kind == HistoryKind::SagaStarted)
        .collect();
    assert_eq!(started.len(), 1, "one start per child");
    // Children are ordinary runnable sagas.
    let claimed = s.claim(w, &all_kinds(), 16).await.unwrap();
    assert_eq!(claimed.len(), 3);
}

async fn a_child_that_ends_for_good_counts_itself_and_wakes_its_waiting_parent(env: Env) {
    let s = env.s();
    let parent = start(s, "parent", &[STEP], None).await;
    let w = worker(s, LONG_TTL).await;
    let held = claim_one(s, w, parent.id).await;
    let batch = children(parent.id, 0, &["a", "b", "c"]);
    start_children(s, &held, w, held.fence, &batch)
        .await
        .unwrap();
    park_parent_in_fan_in(s, &held, w).await;
    let later = saga(s, parent.id).await;
    assert_eq!(later.status, SagaStatus::Waiting);
    assert!(later.run_at.unwrap() > Utc::now() + chrono::Duration::minutes(30));
    let claimed = s.claim(w, &all_kinds(), 16).await.unwrap();
    assert_eq!(claimed.len(), 3, "the children, not the parent");
    let by_id = |id: Uuid| {
        claimed
            .iter()
            .find(|c| c.saga.id == id)
            .unwrap()
            .saga
            .clone()
    };
    // A parked child is not ended: it holds its place, nothing is counted or woken.
    commit(
        s,
        &by_id(batch[1].id),
        w,
        &transition(SagaStatus::NeedsOperator, 0),
        None,
    )
    .await
    .unwrap();
    let p = s.fan_out_progress(parent.id, "fan").await.unwrap().unwrap();
    assert_eq!(p.ended, 0);
    assert!(saga(s, parent.id).await.run_at.unwrap() > Utc::now() + chrono::Duration::minutes(30));
    // A completed child counts and wakes the parent in the same commit.
    commit(
        s,
        &by_id(batch[0].id),
        w,
        &transition(SagaStatus::Completed, 1),
        None,
    )
    .await
    .unwrap();
    let p = s.fan_out_progress(parent.id, "fan").await.unwrap().unwrap();
    assert_eq!(p.ended, 1);
    assert!(
        saga(s, parent.id).await.run_at.unwrap() <= Utc::now() + chrono::Duration::seconds(1),
        "the parent is due now"
    );
    commit(
        s,
        &by_id(batch[2].id),
        w,
        &transition(SagaStatus::Compensated, 0),
        None,
    )
    .await
    .unwrap();
    assert_eq!(
        s.fan_out_progress(parent.id, "fan")
            .await
            .unwrap()
            .unwrap()
            .ended,
        2
    );
    let mut counts: Vec<(String, ObservedStatus, u64)> = s
        .child_counts(parent.id)
        .await
        .unwrap()
        .into_iter()
        .map(|c| (c.step, c.status, c.count))
        .collect();
    counts.sort_by_key(|c| c.1.as_str());
    assert_eq!(
        counts,
        vec![
            ("fan".to_string(), ObservedStatus::Compensated, 1),
            ("fan".to_string(), ObservedStatus::Completed, 1),
            ("fan".to_string(), ObservedStatus::NeedsOperator, 1),
        ]
    );
    let parked = s
        .list_children(parent.id, &[ObservedStatus::NeedsOperator], 10, 0)
        .await
        .unwrap();
    assert_eq!(parked.len(), 1);
    assert_eq!(parked[0].id, batch[1].id);
    assert_eq!(
        s.list_children(parent.id, &[], 10, 0).await.unwrap().len(),
        3
    );
}

async fn cancel_children_asks_every_unfinished_child_to_cancel_and_no_other(env: Env) {
    let s = env.s();
    let parent = start(s, "parent", &[STEP], None).await;
    let other = start(s, "parent", &[STEP], None).await;
    let w = worker(s, LONG_TTL).await;
    let claimed = s.claim(w, &all_kinds(), 16).await.unwrap();
    let held = claimed
        .iter()
        .find(|c| c.saga.id == parent.id)
        .unwrap()
        .saga
        .clone();
    let batch = children(parent.id, 0, &["a", "b", "c"]);
    start_children(s, &held, w, held.fence, &batch)
        .await
        .unwrap();
    park_parent_in_fan_in(s, &held, w).await;
    // Child a completes first; b and c are unfinished.
    let got = s.claim(w, &all_kinds(), 1).await.unwrap();
    let first = got[0].saga.clone();
    commit(s, &first, w, &transition(SagaStatus::Completed, 1), None)
        .await
        .unwrap();
    let n = s
        .cancel_children(parent.id, "parent", json!({"reason": "parent cancelled"}))
        .await
        .unwrap();
    assert_eq!(n, 2);
    for c in &batch {
        let child = saga(s, c.id).await;
        if child.id == first.id {
            assert!(!child.cancel_requested && child.status == SagaStatus::Completed);
        } else {
            assert!(child.cancel_requested, "{child:?}");
            let rows = s.history(child.id).await.unwrap();
            assert!(rows.iter().any(|h| h.kind == HistoryKind::CancelRequested));
        }
    }
    assert!(!saga(s, other.id).await.cancel_requested);
    assert_eq!(
        s.cancel_children(parent.id, "parent", json!({}))
            .await
            .unwrap(),
        0,
        "asked once"
    );
}

async fn wake_fan_in_makes_only_an_unheld_waiting_parent_due(env: Env) {
    let s = env.s();
    let parent = start(s, "parent", &[STEP], None).await;
    let w = worker(s, LONG_TTL).await;
    let held = claim_one(s, w, parent.id).await;
    assert!(!s.wake_fan_in(parent.id).await.unwrap(), "held: not woken");
    park_parent_in_fan_in(s, &held, w).await;
    assert!(s.wake_fan_in(parent.id).await.unwrap());
    assert!(saga(s, parent.id).await.run_at.unwrap() <= Utc::now() + chrono::Duration::seconds(1));
    assert!(!s.wake_fan_in(parent.id).await.unwrap(), "already due");
}

/// The children of `parent` that were asked to cancel by it (`cancel_requested`, a
/// `cancel_requested` history row with actor `parent <id>`), by key.
async fn asked_by_parent(s: &dyn Store, parent: Uuid) -> Vec<String> {
    let mut keys = Vec::new();
    for c in s.child_sagas(parent, "fan", false).await.unwrap() {
        let child = saga(s, c.id).await;
        let rows = s.history(c.id).await.unwrap();
        let asked = rows
            .iter()
            .filter(|h| {
                h.kind == HistoryKind::CancelRequested
                    && h.actor.as_deref() == Some(format!("parent {parent}").as_str())
            })
            .count();
        assert_eq!(asked > 0, child.cancel_requested, "{child:?} {rows:?}");
        assert!(asked <= 1, "asked once: {rows:?}");
        if asked == 1 {
            keys.push(c.key);
        }
    }
    keys
}

/// Claims `id` and gives back every other saga the claim took.
async fn claim_only(s: &dyn Store, w: Uuid, id: Uuid) -> SagaRecord {
    let mut held = None;
    for c in s.claim(w, &all_kinds(), 100).await.unwrap() {
        if c.saga.id == id {
            held = Some(c.saga);
        } else {
            s.release(c.saga.id, w, c.saga.fence).await.unwrap();
        }
    }
    held.expect("the saga was claimed")
}

async fn a_cancel_or_close_of_a_parent_asks_its_unfinished_children_to_cancel_with_no_worker_run(
    env: Env,
) {
    use paysaga_core::{CloseRequest, ClosedOutcome};
    use paysaga_store::OperatorChange;
    let s = env.s();
    let w = worker(s, LONG_TTL).await;
    // A parent waiting in its fan-in, children a (completed), b (parked), c (scheduled):
    // the cancel request alone (no worker runs the parent afterwards) reaches c only.
    let fan_in = |key: &'static str| async move {
        let parent = start(s, "parent", &[STEP], Some(key)).await;
        let held = claim_only(s, w, parent.id).await;
        let batch = children(parent.id, 0, &["a", "b", "c"]);
        start_children(s, &held, w, held.fence, &batch)
            .await
            .unwrap();
        park_parent_in_fan_in(s, &held, w).await;
        for c in s.claim(w, &all_kinds(), 100).await.unwrap() {
            let c = c.saga;
            if c.id == batch[0].id {
                commit(s, &c, w, &transition(SagaStatus::Completed, 1), None)
                    .await
                    .unwrap();
            } else if c.id == batch[1].id {
                commit(s, &c, w, &transition(SagaStatus::NeedsOperator, 0), None)
                    .await
                    .unwrap();
            } else {
                s.release(c.id, w, c.fence).await.unwrap();
            }
        }
        (saga(s, parent.id).await, batch)
    };
    let (cancelled, batch) = fan_in("p-cancel").await;
    s.request_cancel(cancelled.id, "ops:alice", "campaign withdrawn")
        .await
        .unwrap();
    assert_eq!(asked_by_parent(s, cancelled.id).await, ["c"]);
    assert!(
        saga(s, batch[2].id).await.run_at.unwrap() <= Utc::now() + chrono::Duration::seconds(1)
    );
    assert_eq!(
        saga(s, batch[1].id).await.status,
        SagaStatus::NeedsOperator,
        "a parked child stays for its operator"
    );

    // A parent parked by an operator, then closed (plain) or closed with compensation.
    let action = |saga: &SagaRecord, t| OperatorAction {
        saga: saga.id,
        expect_status: saga.status,
        expect_step_index: saga.step_index,
        transition: t,
        actor: "ops:alice",
    };
    let park = |parent: SagaRecord| async move {
        let held = claim_only(s, w, parent.id).await;
        commit(s, &held, w, &transition(SagaStatus::NeedsOperator, 0), None)
            .await
            .unwrap();
        saga(s, parent.id).await
    };
    let (plain, _) = fan_in("p-close").await;
    s.wake_fan_in(plain.id).await.unwrap();
    let plain = park(plain).await;
    let mut closed = transition(SagaStatus::Closed, 0);
    closed.history = vec![entry(HistoryKind::SagaClosed, Some("s1"), None)];
    s.operator_apply_with(
        action(&plain, &closed),
        OperatorChange {
            closed_outcome: Some(ClosedOutcome::NotPaid),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(asked_by_parent(s, plain.id).await, ["c"]);

    let (compensating, _) = fan_in("p-close-compensate").await;
    s.wake_fan_in(compensating.id).await.unwrap();
    let compensating = park(compensating).await;
    let req = CloseRequest {
        outcome: ClosedOutcome::NotPaid,
        actor: "ops:alice".to_string(),
        reason: "campaign withdrawn".to_string(),
        requested_at: Utc::now(),
    };
    let mut unwind = transition(SagaStatus::Compensating, 0);
    unwind.history = vec![entry(HistoryKind::CloseRequested, Some("s1"), None)];
    s.operator_apply_with(
        action(&compensating, &unwind),
        OperatorChange {
            close_request: Some(&req),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(asked_by_parent(s, compensating.id).await, ["c"]);

    // Children started after the cancel request (by the run that held the parent then): the
    // reapers' safety net asks them, once.
    let late = start(s, "parent", &[STEP], Some("p-late")).await;
    let held = claim_only(s, w, late.id).await;
    s.request_cancel(late.id, "ops:alice", "stop")
        .await
        .unwrap();
    let batch = children(late.id, 0, &["a", "b"]);
    start_children(s, &held, w, held.fence, &batch)
        .await
        .unwrap();
    assert!(asked_by_parent(s, late.id).await.is_empty());
    assert_eq!(s.cascade_cancels().await.unwrap(), 2);
    assert_eq!(asked_by_parent(s, late.id).await, ["a", "b"]);
    assert_eq!(s.cascade_cancels().await.unwrap(), 0, "asked once");
    // A parent moving on normally leaves its children alone.
    let (running, _) = fan_in("p-running").await;
    assert_eq!(s.cascade_cancels().await.unwrap(), 0);
    assert!(asked_by_parent(s, running.id).await.is_empty());
}

/// A campaign: a parent whose fan-out started children `ends.len()` children, child `i`
/// ending with `ends[i]` (or left scheduled), then the parent ending with `parent_end` (or
/// left waiting in its fan-in). Returns the parent and the children's ids.
async fn campaign_with(
    s: &dyn Store,
    w: Uuid,
    key: &str,
    ends: &[Option<SagaStatus>],
    parent_end: Option<SagaStatus>,
) -> (Uuid, Vec<Uuid>) {
    let parent = start(s, "parent", &[STEP], Some(key)).await;
    let held = claim_only(s, w, parent.id).await;
    let keys: Vec<String> = (0..ends.len()).map(|i| format!("{key}-{i}")).collect();
    let keys: Vec<&str> = keys.iter().map(|k| k.as_str()).collect();
    let batch = children(parent.id, 0, &keys);
    start_children(s, &held, w, held.fence, &batch)
        .await
        .unwrap();
    park_parent_in_fan_in(s, &held, w).await;
    for (c, end) in batch.iter().zip(ends) {
        if let Some(status) = end {
            let child = claim_only(s, w, c.id).await;
            commit(s, &child, w, &transition(*status, 1), None)
                .await
                .unwrap();
        }
    }
    if let Some(status) = parent_end {
        let p = claim_only(s, w, parent.id).await;
        commit(s, &p, w, &transition(status, 1), None)
            .await
            .unwrap();
    }
    (parent.id, batch.iter().map(|c| c.id).collect())
}

async fn prune_deletes_a_finished_campaign_as_a_unit_and_never_leaves_a_child_or_fan_out_row_behind(
    env: Env,
) {
    let s = env.s();
    let w = worker(s, LONG_TTL).await;
    let done = Some(SagaStatus::Completed);
    // Finished, every child finished: pruned with its children and fan-out row.
    let (finished, finished_children) = campaign_with(
        s,
        w,
        "finished",
        &[done, Some(SagaStatus::Cancelled), done],
        done,
    )
    .await;
    // Ended (cancelled), one child still unwinding: nothing of it goes.
    let (unwinding, unwinding_children) = campaign_with(
        s,
        w,
        "unwinding",
        &[done, None],
        Some(SagaStatus::Cancelled),
    )
    .await;
    // Still waiting for its children, two of them finished: they stay with their parent.
    let (open, open_children) = campaign_with(s, w, "open", &[done, done, None], None).await;
    // A parked child keeps its finished parent.
    let (parked, parked_children) = campaign_with(
        s,
        w,
        "parked",
        &[done, Some(SagaStatus::NeedsOperator)],
        Some(SagaStatus::Compensated),
    )
    .await;
    let single = start(s, "flow", &[STEP], Some("single")).await;
    let held = claim_only(s, w, single.id).await;
    commit(s, &held, w, &transition(SagaStatus::Completed, 1), None)
        .await
        .unwrap();

    assert_eq!(
        s.count_prunable(Duration::ZERO).await.unwrap(),
        1 + 3 + 1,
        "the finished campaign and the single saga"
    );
    // A batch of one root takes the whole campaign (or the single saga first).
    let mut pruned = 0;
    for _ in 0..5 {
        let p = s.prune_finished(Duration::ZERO, 1).await.unwrap();
        if p.sagas == 0 {
            break;
        }
        assert!(p.sagas == 1 || p.sagas == 4, "{p:?}");
        pruned += p.sagas;
    }
    assert_eq!(pruned, 5);
    assert!(s.saga(finished).await.unwrap().is_none());
    for c in &finished_children {
        assert!(
            s.saga(*c).await.unwrap().is_none(),
            "child pruned with its parent"
        );
        assert!(s.history(*c).await.unwrap().is_empty());
    }
    assert_eq!(s.fan_out_progress(finished, "fan").await.unwrap(), None);
    assert!(s.saga(single.id).await.unwrap().is_none());
    for (parent, kids) in [
        (unwinding, &unwinding_children),
        (open, &open_children),
        (parked, &parked_children),
    ] {
        assert!(s.saga(parent).await.unwrap().is_some());
        assert!(s.fan_out_progress(parent, "fan").await.unwrap().is_some());
        for c in kids.iter() {
            let child = s
                .saga(*c)
                .await
                .unwrap()
                .expect("a child stays with its parent");
            assert_eq!(s.parent_of(child.id).await.unwrap().unwrap().parent, parent);
        }
    }
    assert_eq!(s.count_prunable(Duration::ZERO).await.unwrap(), 0);
}

async fn children_of_a_keyed_workflow_take_a_concurrency_slot_like_any_started_saga(env: Env) {
    let s = env.s();
    let w = worker(s, LONG_TTL).await;
    // Another saga of the key holds its only slot.
    let holder = start_keyed(s, "child", "acme", 1).await;
    assert!(holds(&saga(s, holder.id).await));
    let parent = start(s, "parent", &[STEP], None).await;
    let held = claim_only(s, w, parent.id).await;
    let mut batch = children(parent.id, 0, &["a", "b", "c"]);
    for c in &mut batch {
        c.concurrency = Some(paysaga_store::SagaConcurrency {
            key: "child:acme".to_string(),
            limit: 1,
            holds_slot: false,
        });
    }
    // Child c has a key of its own with a free slot.
    batch[2].concurrency.as_mut().unwrap().key = "child:other".to_string();
    start_children(s, &held, w, held.fence, &batch)
        .await
        .unwrap();
    let a = saga(s, batch[0].id).await;
    let c = saga(s, batch[2].id).await;
    assert!(a.is_queued() && a.run_at.is_none(), "{a:?}");
    assert!(saga(s, batch[1].id).await.is_queued());
    assert!(holds(&c) && c.run_at.is_some(), "{c:?}");
    // The claim skips the queued children.
    let claimed: Vec<Uuid> = s
        .claim(w, &all_kinds(), 100)
        .await
        .unwrap()
        .into_iter()
        .map(|x| x.saga.id)
        .collect();
    assert!(
        claimed.contains(&c.id) && claimed.contains(&holder.id),
        "{claimed:?}"
    );
    assert!(!claimed.contains(&a.id) && !claimed.contains(&batch[1].id));
    // The holder ends: one queued child (started together: either) gets the slot, the
    // other stays queued.
    let h = saga(s, holder.id).await;
    commit(s, &h, w, &transition(SagaStatus::Completed, 1), None)
        .await
        .unwrap();
    s.admit_queued().await.unwrap();
    let (a, b) = (saga(s, a.id).await, saga(s, batch[1].id).await);
    assert!(holds(&a) != holds(&b), "exactly one: {a:?} {b:?}");
}

mod child_sagas {
    use super::*;
    conformance!(
        children_of_a_keyed_workflow_take_a_concurrency_slot_like_any_started_saga,
        prune_deletes_a_finished_campaign_as_a_unit_and_never_leaves_a_child_or_fan_out_row_behind,
        a_cancel_or_close_of_a_parent_asks_its_unfinished_children_to_cancel_with_no_worker_run,
        fan_out_children_are_started_once_per_key_under_the_parents_fence,
        a_child_that_ends_for_good_counts_itself_and_wakes_its_waiting_parent,
        cancel_children_asks_every_unfinished_child_to_cancel_and_no_other,
        wake_fan_in_makes_only_an_unheld_waiting_parent_due,
    );
}

// ---------------------------------------------------------------------------------------
// Tracing across processes (issue 17 item 5)

async fn a_saga_keeps_the_trace_context_of_its_start_and_its_children_inherit_it(env: Env) {
    let s = env.s();
    let def = s
        .put_definition(&definition("traced", 1, &[STEP]))
        .await
        .unwrap();
    let context = r#"{"traceparent":"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}"#;
    let (parent, created) = s
        .create_saga(NewSaga {
            id: Uuid::new_v4(),
            definition_id: def.id,
            workflow: "traced".to_string(),
            version: def.version,
            idempotency_key: None,
            input: json!({}),
            actor: "test".to_string(),
            concurrency: None,
            trace_context: Some(context.to_string()),
            latest: false,
            awaited: false,
            documents: vec![],
        })
        .await
        .unwrap();
    assert!(created);
    assert_eq!(parent.trace_context.as_deref(), Some(context));
    let w = worker(s, LONG_TTL).await;
    // The worker reads it from the claimed row.
    let held = claim_one(s, w, parent.id).await;
    assert_eq!(held.trace_context.as_deref(), Some(context));
    let batch = children(parent.id, 0, &["a", "b"]);
    assert_eq!(
        start_children(s, &held, w, held.fence, &batch)
            .await
            .unwrap(),
        2
    );
    for c in &batch {
        assert_eq!(saga(s, c.id).await.trace_context.as_deref(), Some(context));
    }
    // A saga started without one has none.
    let plain = start(s, "untraced", &[STEP], None).await;
    assert_eq!(saga(s, plain.id).await.trace_context, None);
}

mod trace_context {
    use super::*;
    conformance!(a_saga_keeps_the_trace_context_of_its_start_and_its_children_inherit_it,);
}
