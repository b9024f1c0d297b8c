-- paysaga:foreign-keys-off (the runner turns foreign keys off around this migration and runs
-- `PRAGMA foreign_key_check` before committing: the sagas table is rebuilt under its children)
-- Statuses that say what they are (issue 13 item 3), as in ../20261126090101_status_vocabulary.sql:
-- `running` becomes `scheduled` (attempt = 0) or `retrying` (attempt > 0) and is no longer
-- stored (derived from the owner when read); `failed` becomes `needs_operator` (history
-- `saga_failed` becomes `saga_parked`); `closed` with `closed_outcome` is new.
-- SQLite cannot change a CHECK constraint: both tables are rebuilt.
CREATE TABLE paysaga_sagas_new (
    id               TEXT    PRIMARY KEY,
    definition_id    INTEGER NOT NULL REFERENCES paysaga_definitions (id),
    workflow         TEXT    NOT NULL,
    version          INTEGER NOT NULL,
    idempotency_key  TEXT,
    input            TEXT    NOT NULL CHECK (json_valid(input)),
    status           TEXT    NOT NULL CHECK (status IN ('scheduled', 'retrying', 'waiting',
                         'compensating', 'completed', 'compensated', 'needs_operator',
                         'cancelled', 'closed')),
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
    last_commit      TEXT,
    effect_step      INTEGER,
    effect_marked_at TEXT,
    effect_possible  INTEGER NOT NULL DEFAULT 0,
    effect_until     TEXT,
    closed_outcome   TEXT,
    UNIQUE (workflow, idempotency_key),
    -- a final saga is never runnable nor owned
    CHECK (status NOT IN ('completed', 'compensated', 'needs_operator', 'cancelled', 'closed')
           OR (run_at IS NULL AND owner IS NULL)),
    CHECK ((wait IS NULL) = (wait_deadline IS NULL)),
    -- a closed saga carries the operator's declared outcome, and only a closed one
    CHECK (closed_outcome IN ('paid', 'not_paid') AND status = 'closed'
           OR closed_outcome IS NULL AND status <> 'closed')
);
INSERT INTO paysaga_sagas_new (id, definition_id, workflow, version, idempotency_key, input,
        status, step_index, attempt, step_started_at, run_at, owner, fence, outputs, wait,
        wait_deadline, wait_since, wake_event, last_error, cancel_requested, created_at,
        updated_at, finished_at, last_commit, effect_step, effect_marked_at, effect_possible,
        effect_until)
    SELECT id, definition_id, workflow, version, idempotency_key, input,
        CASE status WHEN 'running' THEN (CASE WHEN attempt > 0 THEN 'retrying' ELSE 'scheduled' END)
                    WHEN 'failed' THEN 'needs_operator'
                    ELSE status END,
        step_index, attempt, step_started_at, run_at, owner, fence, outputs, wait,
        wait_deadline, wait_since, wake_event, last_error, cancel_requested, created_at,
        updated_at, finished_at, last_commit, effect_step, effect_marked_at, effect_possible,
        effect_until
    FROM paysaga_sagas;
DROP TABLE paysaga_sagas;
ALTER TABLE paysaga_sagas_new RENAME TO paysaga_sagas;
CREATE INDEX paysaga_sagas_runnable ON paysaga_sagas (run_at)
    WHERE owner IS NULL AND status IN ('scheduled', 'retrying', 'waiting', 'compensating');
CREATE INDEX paysaga_sagas_owner ON paysaga_sagas (owner) WHERE owner IS NOT NULL;
CREATE INDEX paysaga_sagas_status_updated ON paysaga_sagas (status, updated_at);
CREATE INDEX paysaga_sagas_workflow_created ON paysaga_sagas (workflow, created_at);
CREATE INDEX paysaga_sagas_created ON paysaga_sagas (created_at);
CREATE INDEX paysaga_sagas_idempotency_key ON paysaga_sagas (idempotency_key) WHERE idempotency_key IS NOT NULL;

CREATE TABLE paysaga_history_new (
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
        'compensation_failed', 'saga_completed', 'saga_compensated', 'saga_parked', 'saga_cancelled',
        'cancel_requested', 'lease_taken_over',
        'operator_retry', 'operator_resume', 'operator_skip', 'operator_event', 'event_replayed',
        'effect_marked', 'effect_mark_withdrawn', 'commit_refused', 'saga_released',
        'saga_alert', 'saga_closed', 'operator_reset', 'operator_refused', 'data_revealed')),
    error   TEXT,
    detail  TEXT    CHECK (detail IS NULL OR json_valid(detail))
);
INSERT INTO paysaga_history_new (id, saga_id, at, worker, actor, step, attempt, kind, error, detail)
    SELECT id, saga_id, at, worker, actor, step, attempt,
           CASE kind WHEN 'saga_failed' THEN 'saga_parked' ELSE kind END, error, detail
    FROM paysaga_history;
DROP TABLE paysaga_history;
ALTER TABLE paysaga_history_new RENAME TO paysaga_history;
CREATE INDEX paysaga_history_saga ON paysaga_history (saga_id, id);
CREATE INDEX paysaga_history_alerts ON paysaga_history (saga_id) WHERE kind = 'saga_alert';
