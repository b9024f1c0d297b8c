-- History records effect marks and their withdrawal, commits the fence refused and sagas a
-- worker gave back (with the reason: lease doubt, shutdown, a lost claim...). SQLite cannot
-- change a CHECK constraint: the table is rebuilt (nothing references it).
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
        'effect_marked', 'effect_mark_withdrawn', 'commit_refused', 'saga_released')),
    error   TEXT,
    detail  TEXT    CHECK (detail IS NULL OR json_valid(detail))
);
INSERT INTO paysaga_history_new (id, saga_id, at, worker, actor, step, attempt, kind, error, detail)
    SELECT id, saga_id, at, worker, actor, step, attempt, kind, error, detail FROM paysaga_history;
DROP TABLE paysaga_history;
ALTER TABLE paysaga_history_new RENAME TO paysaga_history;
CREATE INDEX paysaga_history_saga ON paysaga_history (saga_id, id);
