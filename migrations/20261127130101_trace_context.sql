-- Tracing across processes (issue 17 item 5): with the `otel` feature, the W3C trace context
-- (`traceparent`, `tracestate`, as a JSON object) of the span that started the saga; the
-- worker's spans for the saga continue that trace. NULL without the feature. No secrets in it.
ALTER TABLE paysaga_sagas ADD COLUMN trace_context text;
