//! One saga, one trace (feature `otel`, issue 17 item 5): `paysaga start` and a `paysaga
//! worker` process export their spans over OTLP/HTTP to a collector stub in this process, and
//! the spans of the saga's start and of every step it ran share one trace id. The test build
//! of `paysaga` has the `otel` code (see the dev-dependencies of paysaga-cli).
#![allow(clippy::unwrap_used)]

mod support;

use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::routing::post;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use prost::Message;
use support::harness;
use uuid::Uuid;

const BIN: &str = env!("CARGO_BIN_EXE_paysaga");

/// A span as the collector stub received it.
#[derive(Debug, Clone)]
struct Received {
    service: String,
    name: String,
    trace_id: String,
    span_id: String,
    parent_span_id: String,
    attributes: HashMap<String, String>,
}

type Spans = Arc<Mutex<Vec<Received>>>;

fn text(attributes: &[KeyValue]) -> HashMap<String, String> {
    attributes
        .iter()
        .map(|kv| {
            let value = match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                Some(AnyValue::StringValue(s)) => s.clone(),
                Some(AnyValue::IntValue(i)) => i.to_string(),
                Some(AnyValue::BoolValue(b)) => b.to_string(),
                other => format!("{other:?}"),
            };
            (kv.key.clone(), value)
        })
        .collect()
}

async fn export(State(spans): State<Spans>, body: Bytes) -> impl axum::response::IntoResponse {
    let request = ExportTraceServiceRequest::decode(body).unwrap();
    let mut got = spans.lock().unwrap();
    for resource in request.resource_spans {
        let service = resource
            .resource
            .map(|r| text(&r.attributes))
            .and_then(|a| a.get("service.name").cloned())
            .unwrap_or_default();
        for scope in resource.scope_spans {
            for span in scope.spans {
                got.push(Received {
                    service: service.clone(),
                    name: span.name,
                    trace_id: hex::encode(&span.trace_id),
                    span_id: hex::encode(&span.span_id),
                    parent_span_id: hex::encode(&span.parent_span_id),
                    attributes: text(&span.attributes),
                });
            }
        }
    }
    (
        [(CONTENT_TYPE, "application/x-protobuf")],
        ExportTraceServiceResponse::default().encode_to_vec(),
    )
}

/// An OTLP/HTTP (protobuf) trace collector on a free local port: its base URL and what it got.
async fn collector() -> (String, Spans) {
    let spans: Spans = Arc::default();
    let app = axum::Router::new()
        .route("/v1/traces", post(export))
        .with_state(spans.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}"), spans)
}

fn traced(command: &mut Command, endpoint: &str, service: &str) {
    command
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint)
        .env("OTEL_SERVICE_NAME", service)
        // Export every 100 ms (the worker runs until killed).
        .env("OTEL_BSP_SCHEDULE_DELAY", "100")
        .env_remove("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        .env_remove("OTEL_SDK_DISABLED")
        .env_remove("OTEL_TRACES_EXPORTER");
}

fn spawn_worker(db_url: &str, endpoint: &str, log: &std::path::Path) -> Child {
    let mut command = Command::new(BIN);
    command
        .args([
            "worker",
            "--http-addr",
            "127.0.0.1:0",
            "--idle-poll",
            "200ms",
        ])
        .args(["--worker-id", "traced", "--no-migrate"])
        .env("DATABASE_URL", db_url)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap());
    traced(&mut command, endpoint, "paysaga-worker");
    command.spawn().unwrap()
}

/// `paysaga start noop`, its saga id.
fn start(db_url: &str, endpoint: Option<&str>) -> Uuid {
    let mut command = Command::new(BIN);
    command
        .args(["start", "noop", "--input", r#"{"delay_ms": 5}"#])
        .env("DATABASE_URL", db_url)
        // Log lines: warnings only; the exported spans do not depend on RUST_LOG.
        .env("RUST_LOG", "warn");
    match endpoint {
        Some(endpoint) => traced(&mut command, endpoint, "paysaga-start"),
        None => {
            command
                .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
                .env_remove("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT");
        }
    }
    let out = command.output().unwrap();
    assert!(
        out.status.success(),
        "paysaga start failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_start_and_every_step_of_a_saga_share_one_trace_across_processes() {
    let h = harness().await;
    let url = h.db.url().to_string();
    let (endpoint, spans) = collector().await;
    let log = std::env::temp_dir().join(format!("paysaga-otel-{}.log", Uuid::new_v4().simple()));
    let mut worker = spawn_worker(&url, &endpoint, &log);
    // Live and taking sagas handed by starts: the start inserts the saga held by it and the
    // worker reads it on its notification (the claim's path is the other test's).
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let live: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM paysaga_workers
             WHERE stopped_at IS NULL AND lease_expires_at > now() AND wake_channel IS NOT NULL",
        )
        .fetch_one(&h.pool)
        .await
        .unwrap();
        if live > 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the worker never became live; log in {}",
            log.display()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let id = start(&url, Some(&endpoint));
    // The trace context is stored with the saga.
    let stored: Option<String> =
        sqlx::query_scalar("SELECT trace_context FROM paysaga_sagas WHERE id = $1")
            .bind(id)
            .fetch_one(&h.pool)
            .await
            .unwrap();
    let stored = stored.expect("a saga started with tracing on stores its trace context");
    h.wait_status(id, "completed", Duration::from_secs(120))
        .await;

    // The `start` process exported its span when it exited; the worker exports every 100 ms.
    let deadline = Instant::now() + Duration::from_secs(60);
    let (start_span, steps, saga_spans) = loop {
        let got = spans.lock().unwrap().clone();
        let start_span = got
            .iter()
            .find(|s| s.service == "paysaga-start" && s.name == "start_with")
            .cloned();
        let steps: Vec<Received> = got
            .iter()
            .filter(|s| s.service == "paysaga-worker" && s.name == "step")
            .cloned()
            .collect();
        let saga_spans: Vec<Received> = got
            .iter()
            .filter(|s| s.service == "paysaga-worker" && s.name == "saga")
            .cloned()
            .collect();
        if let Some(start_span) = start_span {
            if steps.len() >= 5 && !saga_spans.is_empty() {
                break (start_span, steps, saga_spans);
            }
        }
        assert!(
            Instant::now() < deadline,
            "the collector did not get the start span and 5 step spans in time; got {got:#?}; worker log in {}",
            log.display()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    worker.kill().unwrap();
    worker.wait().unwrap();

    let trace = &start_span.trace_id;
    assert_ne!(trace, &"0".repeat(32));
    assert!(
        stored.contains(&format!("00-{trace}-{}-", start_span.span_id)),
        "stored {stored} is the traceparent of the start span {start_span:?}"
    );
    for saga in &saga_spans {
        assert_eq!(saga.attributes.get("saga_id"), Some(&id.to_string()));
        assert_eq!(&saga.trace_id, trace, "saga span {saga:?}");
        assert_eq!(
            saga.parent_span_id, start_span.span_id,
            "the worker's saga span continues the start span"
        );
    }
    let mut names: Vec<&str> = steps
        .iter()
        .map(|s| s.attributes.get("step").map(String::as_str).unwrap_or(""))
        .collect();
    names.sort();
    names.dedup(); // a step run again (a retry) is another span of the same trace
    assert_eq!(names, ["sleep1", "sleep2", "sleep3", "sleep4", "sleep5"]);
    for step in &steps {
        assert_eq!(&step.trace_id, trace, "step span {step:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saga_started_without_an_otlp_endpoint_stores_no_trace_context() {
    let h = harness().await;
    let id = start(h.db.url(), None);
    let stored: Option<String> =
        sqlx::query_scalar("SELECT trace_context FROM paysaga_sagas WHERE id = $1")
            .bind(id)
            .fetch_one(&h.pool)
            .await
            .unwrap();
    assert_eq!(stored, None);
}
