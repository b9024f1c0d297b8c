-- Tracing across processes (see the PostgreSQL migration of the same name): the W3C trace
-- context of the saga's start as a JSON object, NULL without the `otel` feature.
ALTER TABLE paysaga_sagas ADD COLUMN trace_context TEXT;
