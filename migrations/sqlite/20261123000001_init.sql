-- paysaga schema for the embedded SQLite store (one node; see docs/EMBEDDED-STORE.md).
-- Same tables and meaning as the PostgreSQL schema in ../, with SQLite types:
--   * ids of sagas and workers are UUIDs as lowercase hyphenated TEXT;
--   * timestamps are UTC TEXT in one fixed format, `YYYY-MM-DDTHH:MM:SS.ffffffZ`, written by
--     the store (never by SQL defaults), so that text order is time order;
--   * JSON values (bodies, inputs, outputs, waits, string lists) are TEXT checked by json_valid;
--   * booleans are INTEGER 0/1.
-- Status and history kinds are text with CHECK constraints, as in PostgreSQL.

CREATE TABLE paysaga_definitions (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    name         TEXT    NOT NULL,
    version      INTEGER NOT NULL CHECK (version > 0),
    content_hash TEXT    NOT NULL,
    body         TEXT    NOT NULL CHECK (json_valid(body)),
    step_kinds   TEXT    NOT NULL CHECK (json_valid(step_kinds) AND json_type(step_kinds) = 'array'),
    created_at   TEXT    NOT NULL,
    UNIQUE (name, version)
);

-- One row per worker process start (the id is never reused); the configured name is a label.
-- The embedded store allows one live worker at a time (checked by the store at registration).
CREATE TABLE paysaga_workers (
    id               TEXT    PRIMARY KEY,
    name             TEXT    NOT NULL,
    hostname         TEXT    NOT NULL,
    pid              INTEGER NOT NULL,
    step_kinds       TEXT    NOT NULL CHECK (json_valid(step_kinds)),
    started_at       TEXT    NOT NULL,
    heartbeat_at     TEXT    NOT NULL,
    lease_expires_at TEXT    NOT NULL,
    stopped_at       TEXT
);
CREATE INDEX paysaga_workers_live ON paysaga_workers (lease_expires_at) WHERE stopped_at IS NULL;

CREATE TABLE paysaga_sagas (
    id               TEXT    PRIMARY KEY,
    definition_id    INTEGER NOT NULL REFERENCES paysaga_definitions (id),
    workflow         TEXT    NOT NULL,
    version          INTEGER NOT NULL,
    idempotency_key  TEXT,
    input            TEXT    NOT NULL CHECK (json_valid(input)),
    status           TEXT    NOT NULL CHECK (status IN ('scheduled', 'running', 'waiting',
                         'compensating', 'completed', 'compensated', 'failed', 'cancelled')),
    step_index       INTEGER NOT NULL DEFAULT 0 CHECK (step_index >= 0),
    attempt          INTEGER NOT NULL DEFAULT 0 CHECK (attempt >= 0),
    step_started_at  TEXT,
    run_at           TEXT,
    owner            TEXT,
    fence            INTEGER NOT NULL DEFAULT 0,
    outputs          TEXT    NOT NULL DEFAULT '{}' CHECK (json_valid(outputs)),
    wait             TEXT    CHECK (wait IS NULL OR json_valid(wait)),
    -- copies of wait.deadline and wait.since, for operator queries
    wait_deadline    TEXT,
    wait_since       TEXT,
    wake_event       TEXT    CHECK (wake_event IS NULL OR json_valid(wake_event)),
    last_error       TEXT,
    cancel_requested INTEGER NOT NULL DEFAULT 0 CHECK (cancel_requested IN (0, 1)),
    created_at       TEXT    NOT NULL,
    updated_at       TEXT    NOT NULL,
    finished_at      TEXT,
    UNIQUE (workflow, idempotency_key),
    -- a final saga is never runnable nor owned
    CHECK (status NOT IN ('completed', 'compensated', 'failed', 'cancelled') OR (run_at IS NULL AND owner IS NULL)),
    CHECK ((wait IS NULL) = (wait_deadline IS NULL))
);
-- The claim query: only unowned, unfinished sagas are in this index.
CREATE INDEX paysaga_sagas_runnable ON paysaga_sagas (run_at)
    WHERE owner IS NULL AND status IN ('scheduled', 'running', 'waiting', 'compensating');
CREATE INDEX paysaga_sagas_owner ON paysaga_sagas (owner) WHERE owner IS NOT NULL;
CREATE INDEX paysaga_sagas_status_updated ON paysaga_sagas (status, updated_at);
CREATE INDEX paysaga_sagas_workflow_created ON paysaga_sagas (workflow, created_at);
CREATE INDEX paysaga_sagas_created ON paysaga_sagas (created_at);
CREATE INDEX paysaga_sagas_idempotency_key ON paysaga_sagas (idempotency_key) WHERE idempotency_key IS NOT NULL;

CREATE TABLE paysaga_history (
    id      INTEGER PRIMARY KEY AUTOINCREMENT,
    saga_id TEXT    NOT NULL REFERENCES paysaga_sagas (id),
    at      TEXT    NOT NULL,
    worker  TEXT,
    actor   TEXT,
    step    TEXT,
    attempt INTEGER,
    kind    TEXT    NOT NULL CHECK (kind IN (
        'saga_started', 'step_completed', 'step_retrying', 'step_waiting', 'event_received',
        'step_failed', 'compensation_started', 'step_compensated', 'compensation_retrying',
        'compensation_failed', 'saga_completed', 'saga_compensated', 'saga_failed', 'saga_cancelled',
        'cancel_requested', 'lease_taken_over',
        'operator_retry', 'operator_resume', 'operator_skip', 'operator_event', 'event_replayed')),
    error   TEXT,
    detail  TEXT    CHECK (detail IS NULL OR json_valid(detail))
);
CREATE INDEX paysaga_history_saga ON paysaga_history (saga_id, id);

-- Active waits, matched by incoming events.
CREATE TABLE paysaga_waits (
    saga_id         TEXT PRIMARY KEY REFERENCES paysaga_sagas (id),
    provider        TEXT NOT NULL,
    event_types     TEXT NOT NULL CHECK (json_valid(event_types) AND json_type(event_types) = 'array'),
    correlation_key TEXT NOT NULL,
    deadline        TEXT NOT NULL,
    created_at      TEXT NOT NULL
);
CREATE INDEX paysaga_waits_key ON paysaga_waits (provider, correlation_key);

-- The inbox: every verified webhook (and manual event), stored before it is acknowledged.
CREATE TABLE paysaga_events (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    provider        TEXT NOT NULL,
    event_id        TEXT NOT NULL,
    event_type      TEXT,
    correlation_key TEXT,
    payload         TEXT CHECK (payload IS NULL OR json_valid(payload)),
    raw_body        BLOB,
    parse_error     TEXT,
    received_at     TEXT NOT NULL,
    consumed_by     TEXT REFERENCES paysaga_sagas (id),
    consumed_at     TEXT,
    UNIQUE (provider, event_id)
);
-- Events waiting for a wait that has not begun yet.
CREATE INDEX paysaga_events_pending ON paysaga_events (provider, correlation_key, id)
    WHERE consumed_by IS NULL AND parse_error IS NULL;
