//! # paysaga-log
//!
//! The logging setup every paysaga binary uses (`paysaga`, `paysaga-sandbox`,
//! `paysaga-bench`), so they all log alike: to **stderr** (stdout is left to a command's
//! output), filtered by `RUST_LOG` (else the binary's default filter), as JSON lines (one
//! object per event, with the current span's fields) when stderr is not a terminal, as text
//! when it is.
//!
//! ```no_run
//! paysaga_log::init("info,sqlx=warn");
//! ```
//!
//! **Traces** (feature `otel`): [`init_with_traces`] also exports spans over OTLP/HTTP
//! (protobuf) when an endpoint is configured by the standard variables
//! (`OTEL_EXPORTER_OTLP_ENDPOINT` or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`, plus
//! `OTEL_EXPORTER_OTLP_HEADERS`, `OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`,
//! `OTEL_TRACES_SAMPLER`, `OTEL_BSP_*`; `OTEL_SDK_DISABLED=true` or `OTEL_TRACES_EXPORTER=none`
//! turn it off). The exported spans are those at `default_filter`, whatever `RUST_LOG` says of
//! the log lines. The returned [`Traces`] flushes and shuts the exporter down when dropped:
//! keep it until the program ends.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// Installs the global subscriber; `default_filter` applies when `RUST_LOG` is not set (or
/// does not parse). Does nothing if a subscriber is already installed.
pub fn init(default_filter: &str) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // `try_init`: a second call (a test, an embedding program) keeps the first subscriber.
    let _ = if std::io::stderr().is_terminal() {
        builder.try_init()
    } else {
        builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .try_init()
    };
}

/// The span exporter of [`init_with_traces`]: dropping it exports the spans still queued and
/// shuts the exporter down (so keep it alive until the program ends).
#[must_use = "dropping it shuts the span exporter down"]
#[derive(Debug, Default)]
pub struct Traces {
    #[cfg(feature = "otel")]
    provider: Option<opentelemetry_sdk::trace::SdkTracerProvider>,
}

/// [`init`], plus (feature `otel`, an OTLP endpoint configured) an OpenTelemetry layer that
/// exports the spans of `service` (the `service.name` unless `OTEL_SERVICE_NAME` says one).
/// Without the feature, or without an endpoint, exactly [`init`].
pub fn init_with_traces(default_filter: &str, service: &str) -> Traces {
    #[cfg(feature = "otel")]
    if let Some(provider) = otel::provider(service) {
        otel::install(default_filter, &provider);
        return Traces {
            provider: Some(provider),
        };
    }
    let _ = service;
    init(default_filter);
    Traces::default()
}

#[cfg(feature = "otel")]
impl Drop for Traces {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take() {
            // Exports what is queued; an unreachable collector loses those spans, nothing else.
            if let Err(e) = provider.shutdown() {
                eprintln!("paysaga: exporting the last spans failed: {e}");
            }
        }
    }
}

#[cfg(feature = "otel")]
mod otel {
    use std::io::IsTerminal;

    use opentelemetry::trace::TracerProvider as _;
    use opentelemetry_sdk::trace::SdkTracerProvider;
    use opentelemetry_sdk::Resource;
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    use tracing_subscriber::{EnvFilter, Layer as _};

    fn set(name: &str) -> Option<String> {
        std::env::var(name).ok().filter(|v| !v.trim().is_empty())
    }

    /// The tracer provider the `OTEL_*` variables ask for, if they name an endpoint.
    pub(super) fn provider(service: &str) -> Option<SdkTracerProvider> {
        let endpoint = set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
            .or_else(|| set("OTEL_EXPORTER_OTLP_ENDPOINT"));
        let disabled = set("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true"))
            || set("OTEL_TRACES_EXPORTER").is_some_and(|v| v.eq_ignore_ascii_case("none"));
        if endpoint.is_none() || disabled {
            return None;
        }
        use opentelemetry_otlp::WithExportConfig as _;
        let exporter = match opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
            .build()
        {
            Ok(exporter) => exporter,
            Err(e) => {
                eprintln!("paysaga: no span export (check OTEL_EXPORTER_OTLP_*): {e}");
                return None;
            }
        };
        let mut resource = Resource::builder();
        if set("OTEL_SERVICE_NAME").is_none() {
            resource = resource.with_service_name(service.to_string());
        }
        Some(
            SdkTracerProvider::builder()
                .with_resource(resource.build())
                .with_batch_exporter(exporter)
                .build(),
        )
    }

    /// The subscriber of `init` (its filter applying to the log lines only) plus the
    /// OpenTelemetry layer (spans at `default_filter`).
    pub(super) fn install(default_filter: &str, provider: &SdkTracerProvider) {
        let filter =
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
        let lines = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
        let lines = if std::io::stderr().is_terminal() {
            lines.with_filter(filter).boxed()
        } else {
            lines
                .json()
                .flatten_event(true)
                .with_current_span(true)
                .with_filter(filter)
                .boxed()
        };
        let spans = tracing_opentelemetry::layer()
            .with_tracer(provider.tracer("paysaga"))
            .with_filter(EnvFilter::new(default_filter));
        let _ = tracing_subscriber::registry()
            .with(lines)
            .with(spans)
            .try_init();
    }
}
