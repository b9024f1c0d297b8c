-- A step may raise alerts for an operator while its saga goes on (a duplicate Lumanu funding
-- invoice that was paid): one `saga_alert` history row each, found by `paysaga list --alerts`.
-- SQLite cannot change a CHECK constraint: the table is rebuilt (nothing references it). The
-- list also holds the kinds of 20261126000202_history_kinds (same CHECK, whichever runs last).
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
        'compensation_failed', 'saga_completed', 'saga_compensated', 'saga_failed', 'saga_cancelled',
        'cancel_requested', 'lease_taken_over',
        'operator_retry', 'operator_resume', 'operator_skip', 'operator_event', 'event_replayed',
        'effect_marked', 'effect_mark_withdrawn', 'commit_refused', 'saga_released',
        'saga_alert')),
    error   TEXT,
    detail  TEXT    CHECK (detail IS NULL OR json_valid(detail))
);
INSERT INTO paysaga_history_new (id, saga_id, at, worker, actor, step, attempt, kind, error, detail)
    SELECT id, saga_id, at, worker, actor, step, attempt, kind, error, detail FROM paysaga_history;
DROP TABLE paysaga_history;
ALTER TABLE paysaga_history_new RENAME TO paysaga_history;
CREATE INDEX paysaga_history_saga ON paysaga_history (saga_id, id);
CREATE INDEX paysaga_history_alerts ON paysaga_history (saga_id) WHERE kind = 'saga_alert';
