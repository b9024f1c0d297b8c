-- Statuses that say what they are (issue 13 item 3):
--   * `running` was stored for "between steps or backing off": it becomes `scheduled` (the next
--     step is due; attempt = 0) or `retrying` (the current step failed transiently and backs
--     off; attempt > 0). `running` is no longer stored: operators see it for a saga a worker
--     holds (owner IS NOT NULL), derived when read.
--   * `failed` meant "parked, money may have moved": it becomes `needs_operator`, and its
--     history kind `saga_failed` becomes `saga_parked`.
--   * `closed`: ended by an operator with a declared outcome (`closed_outcome`: paid or not_paid).
-- History also gains the kinds of the operator actions that come with them.
ALTER TABLE paysaga_sagas DROP CONSTRAINT paysaga_sagas_status_check;
ALTER TABLE paysaga_sagas DROP CONSTRAINT paysaga_sagas_check;
ALTER TABLE paysaga_sagas ADD COLUMN closed_outcome text;
UPDATE paysaga_sagas SET status = CASE WHEN attempt > 0 THEN 'retrying' ELSE 'scheduled' END
    WHERE status = 'running';
UPDATE paysaga_sagas SET status = 'needs_operator' WHERE status = 'failed';
ALTER TABLE paysaga_sagas ADD CONSTRAINT paysaga_sagas_status_check CHECK (status IN (
    'scheduled', 'retrying', 'waiting', 'compensating',
    'completed', 'compensated', 'needs_operator', 'cancelled', 'closed'));
-- a final saga is never runnable nor owned
ALTER TABLE paysaga_sagas ADD CONSTRAINT paysaga_sagas_final_check CHECK (
    status NOT IN ('completed', 'compensated', 'needs_operator', 'cancelled', 'closed')
    OR (run_at IS NULL AND owner IS NULL));
-- a closed saga carries the operator's declared outcome, and only a closed one
ALTER TABLE paysaga_sagas ADD CONSTRAINT paysaga_sagas_closed_outcome_check CHECK (
    closed_outcome IN ('paid', 'not_paid') AND status = 'closed'
    OR closed_outcome IS NULL AND status <> 'closed');

-- The claim query's index, over the new active statuses.
DROP INDEX paysaga_sagas_runnable;
CREATE INDEX paysaga_sagas_runnable ON paysaga_sagas (run_at)
    WHERE owner IS NULL AND status IN ('scheduled', 'retrying', 'waiting', 'compensating');

ALTER TABLE paysaga_history DROP CONSTRAINT paysaga_history_kind_check;
UPDATE paysaga_history SET kind = 'saga_parked' WHERE kind = 'saga_failed';
ALTER TABLE paysaga_history ADD CONSTRAINT paysaga_history_kind_check CHECK (kind IN (
    'saga_started', 'step_completed', 'step_retrying', 'step_waiting', 'event_received',
    'step_failed', 'compensation_started', 'step_compensated', 'compensation_retrying',
    'compensation_failed', 'saga_completed', 'saga_compensated', 'saga_parked', 'saga_cancelled',
    'cancel_requested', 'lease_taken_over',
    'operator_retry', 'operator_resume', 'operator_skip', 'operator_event', 'event_replayed',
    'effect_marked', 'effect_mark_withdrawn', 'commit_refused', 'saga_released',
    'saga_alert', 'saga_closed', 'operator_reset', 'operator_refused', 'data_revealed'));
