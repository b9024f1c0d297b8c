-- A step may raise alerts for an operator while its saga goes on (a duplicate Lumanu funding
-- invoice that was paid): one `saga_alert` history row each, found by `paysaga list --alerts`.
-- The list also holds the kinds of 20261126000202_history_kinds (same CHECK, whichever runs last).
ALTER TABLE paysaga_history DROP CONSTRAINT paysaga_history_kind_check;
ALTER TABLE paysaga_history ADD CONSTRAINT paysaga_history_kind_check CHECK (kind IN (
    'saga_started', 'step_completed', 'step_retrying', 'step_waiting', 'event_received',
    'step_failed', 'compensation_started', 'step_compensated', 'compensation_retrying',
    'compensation_failed', 'saga_completed', 'saga_compensated', 'saga_failed', 'saga_cancelled',
    'cancel_requested', 'lease_taken_over',
    'operator_retry', 'operator_resume', 'operator_skip', 'operator_event', 'event_replayed',
    'effect_marked', 'effect_mark_withdrawn', 'commit_refused', 'saga_released',
    'saga_alert'));

-- `list --alerts`: the sagas with an alert, from the few alert rows.
CREATE INDEX paysaga_history_alerts ON paysaga_history (saga_id) WHERE kind = 'saga_alert';
