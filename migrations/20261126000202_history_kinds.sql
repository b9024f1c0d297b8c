-- History records effect marks and their withdrawal, commits the fence refused and sagas a
-- worker gave back (with the reason: lease doubt, shutdown, a lost claim...).
ALTER TABLE paysaga_history DROP CONSTRAINT paysaga_history_kind_check;
ALTER TABLE paysaga_history ADD CONSTRAINT paysaga_history_kind_check CHECK (kind IN (
    'saga_started', 'step_completed', 'step_retrying', 'step_waiting', 'event_received',
    'step_failed', 'compensation_started', 'step_compensated', 'compensation_retrying',
    'compensation_failed', 'saga_completed', 'saga_compensated', 'saga_failed', 'saga_cancelled',
    'cancel_requested', 'lease_taken_over',
    'operator_retry', 'operator_resume', 'operator_skip', 'operator_event', 'event_replayed',
    'effect_marked', 'effect_mark_withdrawn', 'commit_refused', 'saga_released'));
