-- Operator actions are recorded in history with who and why.
ALTER TABLE paysaga_history DROP CONSTRAINT paysaga_history_kind_check;
ALTER TABLE paysaga_history ADD CONSTRAINT paysaga_history_kind_check CHECK (kind IN (
    'saga_started', 'step_completed', 'step_retrying', 'step_waiting', 'event_received',
    'step_failed', 'compensation_started', 'step_compensated', 'compensation_retrying',
    'compensation_failed', 'saga_completed', 'saga_compensated', 'saga_failed', 'saga_cancelled',
    'cancel_requested', 'lease_taken_over',
    'operator_retry', 'operator_resume', 'operator_skip', 'operator_event', 'event_replayed'));

-- Operator listings by business key.
CREATE INDEX paysaga_sagas_idempotency_key ON paysaga_sagas (idempotency_key) WHERE idempotency_key IS NOT NULL;
