-- `close --compensate` (issue 13 item 1): the saga's completed steps are undone first and the
-- unwind ends `closed` with the outcome the operator declared.
--   * close_requested: the pending request ({"outcome", "actor", "reason", "requested_at"}),
--     kept only while the saga compensates or is parked for an operator; the unwind's final
--     commit writes its outcome into closed_outcome and clears it.
--   * history kind `close_requested`: the operator's request (the unwind ends with `saga_closed`).
ALTER TABLE paysaga_sagas ADD COLUMN close_requested jsonb;
ALTER TABLE paysaga_sagas ADD CONSTRAINT paysaga_sagas_close_requested_check CHECK (
    close_requested IS NULL
    OR status IN ('compensating', 'needs_operator')
       AND close_requested->>'outcome' IN ('paid', 'not_paid'));

ALTER TABLE paysaga_history DROP CONSTRAINT paysaga_history_kind_check;
ALTER TABLE paysaga_history ADD CONSTRAINT paysaga_history_kind_check CHECK (kind IN (
    'saga_started', 'step_completed', 'step_retrying', 'step_waiting', 'event_received',
    'step_failed', 'compensation_started', 'step_compensated', 'compensation_retrying',
    'compensation_failed', 'saga_completed', 'saga_compensated', 'saga_parked', 'saga_cancelled',
    'cancel_requested', 'lease_taken_over',
    'operator_retry', 'operator_resume', 'operator_skip', 'operator_event', 'event_replayed',
    'effect_marked', 'effect_mark_withdrawn', 'commit_refused', 'saga_released',
    'saga_alert', 'saga_closed', 'operator_reset', 'operator_refused', 'data_revealed',
    'step_skipped', 'close_requested'));
