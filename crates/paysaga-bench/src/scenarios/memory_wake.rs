//! Scenario 5 (worker memory with many sagas waiting on events) and scenario 3 (wake
//! latency), on one database: one worker process runs N sagas of `bench_wait` into their
//! wait (the real path: claim, run, commit the wait), its RSS is read, the idle cost is
//! measured, then events are delivered to a sample of the waiting sagas at a steady pace
//! and each one's time from "delivery acknowledged" to "woken step started" is measured.
//!
//! Events arrive as a provider sends them: a Lumanu `payable.paid` webhook, signed with
//! HMAC-SHA256 over the body, posted to `POST /webhooks/lumanu` of the worker process
//! itself (the runtime's real endpoint and Lumanu's real verification, see
//! [`crate::webhook`]). "Acknowledged" is the moment the HTTP 2xx reaches the benchmark:
//! the endpoint answers only after the inbox transaction (event stored, wait matched,
//! NOTIFY) committed. The worker child prints the wall-clock time each woken step starts;
//! both processes read the same clock.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::Serialize;
use uuid::Uuid;

use super::{stop_all, Setup};
use crate::child::Reports;
use crate::cluster::Server;
use crate::kinds::unix_nanos;
use crate::machine;
use crate::stats::Percentiles;

/// Posts signed webhooks to a worker's endpoint (one keep-alive connection).
#[derive(Debug)]
pub struct HttpSink {
    client: reqwest::Client,
    url: String,
    secret: String,
}

impl HttpSink {
    fn describe(&self) -> String {
        format!(
            "signed Lumanu webhooks (X-Signature HMAC-SHA256) POSTed to {} on the worker process",
            self.url
        )
    }

    /// Posts one `payable.paid` webhook for `payable_id`; returns the status and the moment
    /// (unix ns) the response head arrived.
    async fn post(&self, event_id: &str, payable_id: &str, tamper: bool) -> Result<(u16, u128)> {
        let (mut body, headers) = crate::webhook::signed_body(&self.secret, event_id, payable_id);
        if tamper {
            body.push(b' ');
        }
        let mut req = self.client.post(&self.url).body(body);
        for (k, v) in headers {
            req = req.header(k, v);
        }
        let resp = req.send().await.context("POST webhook")?;
        let at = unix_nanos();
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        if !tamper && !(200..300).contains(&status) {
            bail!("webhook answered {status}: {text}");
        }
        if !tamper && !text.contains("\"stored\"") {
            bail!("webhook was not stored as a new event: {text}");
        }
        Ok((status, at))
    }
}

/// Parameters.
#[derive(Debug, Clone)]
pub struct Config {
    /// Sagas brought into their wait.
    pub waiting: usize,
    /// Events delivered.
    pub events: usize,
    /// Events per second.
    pub rate: f64,
    /// Worker concurrency.
    pub concurrency: usize,
    /// Seconds of the idle measurement.
    pub idle_secs: u64,
    /// Sagas the worker brings into their wait itself; the rest are cloned in SQL.
    pub through_worker: usize,
}

/// Clones waiting sagas `$1..=$2` (keys `k$1..`) from one the worker left waiting: the saga
/// row (its wait with the new correlation key), its `paysaga_waits` row and its history.
const CLONE_WAITING_SQL: &str = "
WITH t AS (SELECT * FROM paysaga_sagas WHERE workflow = 'bench_wait' AND status = 'waiting'
           ORDER BY id LIMIT 1),
ins AS (
    INSERT INTO paysaga_sagas (id, definition_id, workflow, version, idempotency_key, input, status,
                               step_index, attempt, step_started_at, run_at, owner, fence, outputs,
                               wait, cancel_requested, created_at, updated_at)
    SELECT gen_random_uuid(), t.definition_id, t.workflow, t.version, 'wait-' || g,
           jsonb_build_object('key', 'k' || g), t.status, t.step_index, t.attempt,
           t.step_started_at, t.run_at, NULL, t.fence, t.outputs,
           jsonb_set(t.wait, '{correlation_key}', to_jsonb('payable:k' || g)), false,
           t.created_at, t.updated_at
    FROM t, generate_series($1::int, $2::int) g
    RETURNING id, input->>'key' AS key),
w AS (
    INSERT INTO paysaga_waits (saga_id, provider, event_types, correlation_key, deadline, created_at)
    SELECT ins.id, w.provider, w.event_types, 'payable:' || ins.key, w.deadline, w.created_at
    FROM ins, paysaga_waits w WHERE w.saga_id = (SELECT id FROM t))
INSERT INTO paysaga_history (saga_id, at, worker, actor, step, attempt, kind, error, detail)
SELECT ins.id, h.at, h.worker, h.actor, h.step, h.attempt, h.kind, h.error, h.detail
FROM ins, paysaga_history h WHERE h.saga_id = (SELECT id FROM t)";

/// Idle cost with every saga waiting.
#[derive(Debug, Clone, Serialize)]
pub struct Idle {
    /// Seconds measured.
    pub seconds: f64,
    /// Statements per second the idle worker sends (`pg_stat_statements`; 0 without it).
    pub statements_per_s: f64,
}

/// Scenario 3.
#[derive(Debug, Clone, Serialize)]
pub struct Wake {
    /// How events were delivered.
    pub delivery_path: String,
    /// A webhook with a broken signature was refused with this status (401 expected).
    pub bad_signature_status: u16,
    /// Events delivered.
    pub events: usize,
    /// Pace, events per second.
    pub rate_per_s: f64,
    /// Sagas whose woken step reported.
    pub resumed: usize,
    /// Woken steps that started before the HTTP 2xx reached the benchmark (counted as 0 ms).
    pub started_before_ack: usize,
    /// The HTTP request: sent -> 2xx received (verify, event stored, wait matched, NOTIFY,
    /// commit).
    pub delivery_call: Option<Percentiles>,
    /// HTTP 2xx -> the woken step (`bench.wait` re-run with the event) started.
    pub ack_to_resumed_step: Option<Percentiles>,
    /// HTTP 2xx -> the step after the wait (`bench.mark`) started (one commit later): the
    /// figure the target is checked on.
    pub ack_to_next_step: Option<Percentiles>,
}

/// Scenarios 5 and 3.
#[derive(Debug, Clone, Serialize)]
pub struct MemoryWake {
    /// Sagas waiting.
    pub waiting: usize,
    /// Of these, brought into their wait by the worker (the others cloned in SQL).
    pub through_worker: usize,
    /// Seconds the worker took for those.
    pub through_worker_seconds: f64,
    /// Seconds until all were waiting (cloning included).
    pub to_waiting_seconds: f64,
    /// Waits committed per second by the worker (claim, run, wait commit, release).
    pub waits_per_s: f64,
    /// Worker RSS right after start, MiB.
    pub rss_start_mib: f64,
    /// Worker RSS with every saga waiting, MiB.
    pub rss_waiting_mib: f64,
    /// Peak RSS while bringing them into their wait, MiB.
    pub rss_peak_mib: f64,
    /// Worker RSS after the wakes, MiB.
    pub rss_after_wakes_mib: f64,
    /// Idle cost.
    pub idle: Idle,
    /// Wake latency.
    pub wake: Wake,
}

/// Runs scenarios 5 and 3.
pub async fn run(server: &Server, cfg: &Config, log_dir: &std::path::Path) -> Result<MemoryWake> {
    let setup = Setup::new(server, "wait", log_dir).await?;
    let result = run_in(&setup, cfg).await;
    setup.finish(server).await?;
    result
}

fn rss(w: &crate::child::WorkerProc) -> f64 {
    w.rss_mib().map(|(rss, _)| rss).unwrap_or(0.0)
}

async fn run_in(setup: &Setup, cfg: &Config) -> Result<MemoryWake> {
    let url = setup.db.url.clone();
    let reports = Arc::new(Reports::default());
    let secret = format!("whsec-bench-{}", Uuid::new_v4().simple());
    let mut workers = vec![setup.spawn_http_worker(cfg.concurrency, "wait", &secret, &reports)?];
    let Some(worker) = workers.first() else {
        bail!("no worker")
    };
    let addr = reports.wait_http(Duration::from_secs(30)).await?;
    let sink = HttpSink {
        client: reqwest::Client::builder()
            .pool_max_idle_per_host(1)
            .build()?,
        url: format!("http://{addr}/webhooks/lumanu"),
        secret,
    };
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let rss_start_mib = rss(worker);

    // `through_worker` sagas, inserted in bulk as a start would (status scheduled, due now);
    // the worker claims each, runs its first step (which waits), commits the wait and
    // releases it. The rest are cloned in SQL from one of them, exactly as the engine left
    // it (saga row, wait row, history), because bringing 100k through one worker takes
    // minutes on a small machine and the worker holds nothing per waiting saga.
    let real = cfg
        .through_worker
        .clamp(1, cfg.waiting.max(1))
        .min(cfg.waiting);
    eprintln!("  loading {real} bench_wait sagas; the worker brings each into its wait...");
    let def = setup.definition_id("bench_wait").await?;
    let t = Instant::now();
    sqlx::query(
        "INSERT INTO paysaga_sagas (id, definition_id, workflow, version, idempotency_key, input, status, run_at)
         SELECT gen_random_uuid(), $1, 'bench_wait', 1, 'wait-' || g, jsonb_build_object('key', 'k' || g),
                'scheduled', now()
         FROM generate_series(1, $2::int) g",
    )
    .bind(def)
    .bind(real as i32)
    .execute(&setup.pool)
    .await?;
    let mut peak = 0.0_f64;
    setup
        .wait_count(
            "SELECT count(*) FROM paysaga_sagas WHERE status = 'waiting'",
            real as i64,
            Duration::from_millis(500),
            Duration::from_secs(900),
            || {
                if let Some((_, hwm)) = worker.rss_mib() {
                    peak = peak.max(hwm);
                }
            },
        )
        .await?;
    let through_worker_seconds = t.elapsed().as_secs_f64();
    if cfg.waiting > real {
        eprintln!(
            "  cloning {} more waiting sagas in SQL from one the worker left waiting...",
            cfg.waiting - real
        );
        sqlx::query(CLONE_WAITING_SQL)
            .bind(real as i32 + 1)
            .bind(cfg.waiting as i32)
            .execute(&setup.pool)
            .await
            .context("clone waiting sagas")?;
        sqlx::raw_sql("ANALYZE paysaga_sagas; ANALYZE paysaga_waits; ANALYZE paysaga_history")
            .execute(&setup.pool)
            .await?;
    }
    let waiting_now: i64 = sqlx::query_scalar("SELECT count(*) FROM paysaga_waits")
        .fetch_one(&setup.pool)
        .await?;
    if waiting_now != cfg.waiting as i64 {
        bail!("{waiting_now} sagas wait, expected {}", cfg.waiting);
    }
    let to_waiting_seconds = t.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // Give the worker a few idle polls over the full table before reading its memory.
    let rss_waiting_mib = rss(worker);

    // Idle: nothing runnable, every saga waiting.
    let before = machine::counters(&url).await?;
    let t = Instant::now();
    tokio::time::sleep(Duration::from_secs(cfg.idle_secs)).await;
    let after = machine::counters(&url).await?;
    let secs = t.elapsed().as_secs_f64();
    let d = after.since(&before);
    let idle = Idle {
        seconds: secs,
        // The two counter readings themselves are 3 statements each; subtract the first.
        statements_per_s: ((d.statements - 3).max(0)) as f64 / secs,
    };

    // Wake.
    let wake = wake(setup, &sink, &reports, cfg).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_after_wakes_mib = workers.first().map(rss).unwrap_or(0.0);
    stop_all(std::mem::take(&mut workers)).await?;
    Ok(MemoryWake {
        waiting: cfg.waiting,
        through_worker: real,
        through_worker_seconds,
        to_waiting_seconds,
        waits_per_s: real as f64 / through_worker_seconds,
        rss_start_mib,
        rss_waiting_mib,
        rss_peak_mib: peak,
        rss_after_wakes_mib,
        idle,
        wake,
    })
}

async fn wake(setup: &Setup, sink: &HttpSink, reports: &Reports, cfg: &Config) -> Result<Wake> {
    let events = cfg.events.min(cfg.waiting);
    eprintln!(
        "  delivering {events} events at {}/s through {}...",
        cfg.rate,
        sink.describe()
    );
    // Evenly spread over the waiting sagas.
    let stride = (cfg.waiting / events.max(1)).max(1);
    let keys: Vec<String> = (0..events)
        .map(|i| format!("k{}", 1 + i * stride))
        .collect();
    let ids: Vec<(String, Uuid)> = sqlx::query_as(
        "SELECT input->>'key', id FROM paysaga_sagas
         WHERE workflow = 'bench_wait' AND idempotency_key = ANY($1)",
    )
    .bind(
        keys.iter()
            .map(|k| format!("wait-{}", &k[1..]))
            .collect::<Vec<_>>(),
    )
    .fetch_all(&setup.pool)
    .await?;
    let by_key: HashMap<String, Uuid> = ids.into_iter().collect();
    // The signature is really checked: a tampered body is refused and wakes nothing.
    let (bad_signature_status, _) = sink.post("evt-tampered", "k1", true).await?;
    if bad_signature_status != 401 {
        bail!("a webhook with a bad signature was answered {bad_signature_status}, not 401");
    }
    // Warm the keep-alive connection (an event that matches no wait).
    sink.post("evt-warmup", "no-such-payable", false).await?;
    let mut acked: HashMap<Uuid, u128> = HashMap::new();
    let mut call = Vec::with_capacity(events);
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / cfg.rate));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    for (i, key) in keys.iter().enumerate() {
        tick.tick().await;
        let Some(saga) = by_key.get(key) else {
            bail!("no saga waits on key {key}")
        };
        let t = Instant::now();
        let (_, at) = sink.post(&format!("evt-{i}"), key, false).await?;
        acked.insert(*saga, at);
        call.push(t.elapsed().as_micros() as u64);
    }
    // Wait for the woken steps (and the step after them) to report.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let next = reports.next.lock().map(|m| m.len()).unwrap_or(0);
        if (reports.resumed_count() >= events && next >= events) || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut before_ack = 0;
    let mut diff = |m: &std::sync::Mutex<HashMap<Uuid, u128>>, count_early: bool| -> Vec<u64> {
        let m = match m.lock() {
            Ok(m) => m.clone(),
            Err(_) => return Vec::new(),
        };
        acked
            .iter()
            .filter_map(|(saga, ack)| {
                let at = m.get(saga)?;
                if at < ack {
                    if count_early {
                        before_ack += 1;
                    }
                    Some(0)
                } else {
                    Some(((at - ack) / 1000) as u64)
                }
            })
            .collect()
    };
    let resumed = diff(&reports.resumed, true);
    let next = diff(&reports.next, false);
    Ok(Wake {
        delivery_path: sink.describe(),
        bad_signature_status,
        events,
        rate_per_s: cfg.rate,
        resumed: resumed.len(),
        started_before_ack: before_ack,
        delivery_call: Percentiles::from_micros(call),
        ack_to_resumed_step: Percentiles::from_micros(resumed),
        ack_to_next_step: Percentiles::from_micros(next),
    })
}
