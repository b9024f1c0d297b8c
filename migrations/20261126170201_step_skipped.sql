-- Conditional steps (issue 15 item 2): a step whose `when` condition does not hold is passed
-- over with a `step_skipped` history row (the condition and the value seen).
-- The full list: the kinds of 20261126090101_status_vocabulary.sql plus `step_skipped`.
ALTER TABLE paysaga_history DROP CONSTRAINT paysaga_history_kind_check;
ALTER TABLE paysaga_history ADD CONSTRAINT paysaga_history_kind_check CHECK (kind IN (
    'saga_started', 'step_completed', 'step_retrying', 'step_waiting', 'event_received',
    'step_failed', 'compensation_started', 'step_compensated', 'compensation_retrying',
    'compensation_failed', 'saga_completed', 'saga_compensated', 'saga_parked', 'saga_cancelled',
    'cancel_requested', 'lease_taken_over',
    'operator_retry', 'operator_resume', 'operator_skip', 'operator_event', 'event_replayed',
    'effect_marked', 'effect_mark_withdrawn', 'commit_refused', 'saga_released',
    'saga_alert', 'saga_closed', 'operator_reset', 'operator_refused', 'data_revealed',
    'step_skipped'));
