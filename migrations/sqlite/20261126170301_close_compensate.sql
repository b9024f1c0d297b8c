-- `close --compensate` (issue 13 item 1): see the PostgreSQL migration of the same name.
-- SQLite cannot change a CHECK constraint: the history table is rebuilt for the new kind.
ALTER TABLE paysaga_sagas ADD COLUMN close_requested TEXT
    CHECK (close_requested IS NULL
           OR json_valid(close_requested)
              AND status IN ('compensating', 'needs_operator')
              AND json_extract(close_requested, '$.outcome') IN ('paid', 'not_paid'));

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
        'saga_alert', 'saga_closed', 'operator_reset', 'operator_refused', 'data_revealed',
        'step_skipped', 'close_requested')),
    error   TEXT,
    detail  TEXT    CHECK (detail IS NULL OR json_valid(detail))
);
INSERT INTO paysaga_history_new (id, saga_id, at, worker, actor, step, attempt, kind, error, detail)
    SELECT id, saga_id, at, worker, actor, step, attempt, kind, error, detail FROM paysaga_history;
DROP TABLE paysaga_history;
ALTER TABLE paysaga_history_new RENAME TO paysaga_history;
CREATE INDEX paysaga_history_saga ON paysaga_history (saga_id, id);
CREATE INDEX paysaga_history_alerts ON paysaga_history (saga_id) WHERE kind = 'saga_alert';
CREATE INDEX paysaga_history_operator ON paysaga_history (at)
    WHERE actor IS NOT NULL AND kind <> 'saga_started';
