//! One saga, one trace (feature `otel`): a saga stores the W3C trace context (`traceparent`,
//! `tracestate`) of the span that started it ([`current`], taken by `Engine::start*`), and the
//! worker's span for the saga continues it ([`continue_in`]), so its steps, run by other
//! processes and hours later, join the trace of the request that started it. The context is
//! a JSON object of the W3C headers (no secret: ids and the caller's `tracestate` only).
//!
//! Without the feature, nothing is stored and spans stay as they are. With it but without an
//! OpenTelemetry layer in the process's subscriber (no OTLP endpoint configured, see
//! `paysaga_log::init_with_traces`), there is no context to store either.

#[cfg(feature = "otel")]
mod w3c {
    use std::collections::HashMap;

    use opentelemetry::propagation::TextMapPropagator;
    use opentelemetry::trace::TraceContextExt;
    use opentelemetry_sdk::propagation::TraceContextPropagator;
    use tracing_opentelemetry::OpenTelemetrySpanExt;

    pub(crate) fn current() -> Option<String> {
        let cx = tracing::Span::current().context();
        if !cx.span().span_context().is_valid() {
            return None;
        }
        let mut headers = HashMap::<String, String>::new();
        TraceContextPropagator::new().inject_context(&cx, &mut headers);
        serde_json::to_string(&headers).ok()
    }

    pub(crate) fn continue_in(span: &tracing::Span, stored: Option<&str>) {
        let Some(headers) =
            stored.and_then(|text| serde_json::from_str::<HashMap<String, String>>(text).ok())
        else {
            return;
        };
        let cx = TraceContextPropagator::new().extract(&headers);
        if cx.span().span_context().is_valid() {
            // Refused only without an OpenTelemetry layer or for a disabled span: then there
            // is no trace to continue.
            let _ = span.set_parent(cx);
        }
    }
}

/// The W3C trace context of the current span, to store with a saga it starts; `None` when
/// there is no OpenTelemetry trace (or without the `otel` feature).
pub(crate) fn current() -> Option<String> {
    #[cfg(feature = "otel")]
    {
        w3c::current()
    }
    #[cfg(not(feature = "otel"))]
    {
        None
    }
}

/// Makes `span` (not yet entered) a child of the `stored` trace context of its saga; nothing
/// without one (or without the `otel` feature).
pub(crate) fn continue_in(span: &tracing::Span, stored: Option<&str>) {
    #[cfg(feature = "otel")]
    w3c::continue_in(span, stored);
    #[cfg(not(feature = "otel"))]
    let _ = (span, stored);
}
