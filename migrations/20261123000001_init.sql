-- paysaga schema v1: definitions, workers (leases), sagas, history, waits, event inbox.
-- Status columns are text with CHECK constraints; every hot-path query has an index below.

CREATE TABLE paysaga_definitions (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name         text        NOT NULL,
    version      integer     NOT NULL CHECK (version > 0),
    content_hash text        NOT NULL,
    body         jsonb       NOT NULL,
    step_kinds   text[]      NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    UNIQUE (name, version)
);

-- One row per worker process start (the id is never reused); the configured name is a label.
-- A saga's lease is its owner's lease: heartbeats cost one UPDATE per worker, not per saga.
CREATE TABLE paysaga_workers (
    id               uuid PRIMARY KEY,
    name             text        NOT NULL,
    hostname         text        NOT NULL,
    pid              integer     NOT NULL,
    step_kinds       text[]      NOT NULL,
    started_at       timestamptz NOT NULL DEFAULT now(),
    heartbeat_at     timestamptz NOT NULL DEFAULT now(),
    lease_expires_at timestamptz NOT NULL,
    stopped_at       timestamptz
);
CREATE INDEX paysaga_workers_live ON paysaga_workers (lease_expires_at) WHERE stopped_at IS NULL;

CREATE TABLE paysaga_sagas (
    id               uuid PRIMARY KEY,
    definition_id    bigint      NOT NULL REFERENCES paysaga_definitions (id),
    workflow         text        NOT NULL,
    version          integer     NOT NULL,
    idempotency_key  text,
    input            jsonb       NOT NULL,
    status           text        NOT NULL CHECK (status IN ('scheduled', 'running', 'waiting',
                         'compensating', 'completed', 'compensated', 'failed', 'cancelled')),
    step_index       integer     NOT NULL DEFAULT 0 CHECK (step_index >= 0),
    attempt          integer     NOT NULL DEFAULT 0 CHECK (attempt >= 0),
    step_started_at  timestamptz,
    run_at           timestamptz,
    owner            uuid,
    fence            bigint      NOT NULL DEFAULT 0,
    outputs          jsonb       NOT NULL DEFAULT '{}'::jsonb,
    wait             jsonb,
    wake_event       jsonb,
    last_error       text,
    cancel_requested boolean     NOT NULL DEFAULT false,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    finished_at      timestamptz,
    UNIQUE (workflow, idempotency_key),
    -- a final saga is never runnable nor owned
    CHECK (status NOT IN ('completed', 'compensated', 'failed', 'cancelled') OR (run_at IS NULL AND owner IS NULL))
);
-- The claim query: only unowned, unfinished sagas are in this index, so its size does not
-- grow with the number of finished sagas.
CREATE INDEX paysaga_sagas_runnable ON paysaga_sagas (run_at)
    WHERE owner IS NULL AND status IN ('scheduled', 'running', 'waiting', 'compensating');
-- Lease release of a dead worker.
CREATE INDEX paysaga_sagas_owner ON paysaga_sagas (owner) WHERE owner IS NOT NULL;
-- Operator listings.
CREATE INDEX paysaga_sagas_status_updated ON paysaga_sagas (status, updated_at);
CREATE INDEX paysaga_sagas_workflow_created ON paysaga_sagas (workflow, created_at);
CREATE INDEX paysaga_sagas_created ON paysaga_sagas (created_at);

CREATE TABLE paysaga_history (
    id      bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    saga_id uuid        NOT NULL REFERENCES paysaga_sagas (id),
    at      timestamptz NOT NULL DEFAULT clock_timestamp(),
    worker  uuid,
    actor   text,
    step    text,
    attempt integer,
    kind    text        NOT NULL CHECK (kind IN ('saga_started', 'step_completed', 'step_retrying',
                'step_waiting', 'event_received', 'step_failed', 'compensation_started',
                'step_compensated', 'compensation_retrying', 'compensation_failed', 'saga_completed',
                'saga_compensated', 'saga_failed', 'saga_cancelled', 'cancel_requested',
                'lease_taken_over')),
    error   text,
    detail  jsonb
);
CREATE INDEX paysaga_history_saga ON paysaga_history (saga_id, id);

-- Active waits, matched by incoming events.
CREATE TABLE paysaga_waits (
    saga_id         uuid PRIMARY KEY REFERENCES paysaga_sagas (id),
    provider        text        NOT NULL,
    event_types     text[]      NOT NULL,
    correlation_key text        NOT NULL,
    deadline        timestamptz NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX paysaga_waits_key ON paysaga_waits (provider, correlation_key);

-- The inbox: every verified webhook (and manual event), stored before it is acknowledged.
CREATE TABLE paysaga_events (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    provider        text        NOT NULL,
    event_id        text        NOT NULL,
    event_type      text,
    correlation_key text,
    payload         jsonb,
    raw_body        bytea,
    parse_error     text,
    received_at     timestamptz NOT NULL DEFAULT now(),
    consumed_by     uuid REFERENCES paysaga_sagas (id),
    consumed_at     timestamptz,
    UNIQUE (provider, event_id)
);
-- Events waiting for a wait that has not begun yet.
CREATE INDEX paysaga_events_pending ON paysaga_events (provider, correlation_key, id)
    WHERE consumed_by IS NULL AND parse_error IS NULL;
