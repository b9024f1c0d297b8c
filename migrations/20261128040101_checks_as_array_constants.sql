-- The value lists of the CHECKs that every step commit evaluates, written as one array
-- constant each (issue 14 items 1 and 3; measured in docs/PERFORMANCE.md). PostgreSQL keeps a
-- CHECK as an expression tree in text form and reads it back at every INSERT and UPDATE of
-- its table: `kind IN ('a', 'b', ...)` is one node per element (6.8 KB of text for the
-- history kinds), `kind = ANY ('{a,b,...}'::text[])` one constant. The sets of values are the
-- same as before. A later migration that changes one of these lists keeps this form. Two
-- checks are also closed where a NULL let a row through (below).
--
-- Added NOT VALID: the table is locked only for the catalogue change, not for a scan (new and
-- updated rows are checked from now on); the next migration validates the existing rows with
-- a scan that does not block writes.
ALTER TABLE paysaga_history
    DROP CONSTRAINT paysaga_history_kind_check,
    ADD CONSTRAINT paysaga_history_kind_check CHECK (kind = ANY ('{
        saga_started, step_completed, step_retrying, step_waiting, event_received,
        step_failed, compensation_started, step_compensated, compensation_retrying,
        compensation_failed, saga_completed, saga_compensated, saga_parked, saga_cancelled,
        cancel_requested, lease_taken_over,
        operator_retry, operator_resume, operator_skip, operator_event, event_replayed,
        effect_marked, effect_mark_withdrawn, commit_refused, saga_released,
        saga_alert, saga_closed, operator_reset, operator_refused, data_revealed,
        step_skipped, close_requested}'::text[])) NOT VALID;

ALTER TABLE paysaga_sagas
    DROP CONSTRAINT paysaga_sagas_status_check,
    ADD CONSTRAINT paysaga_sagas_status_check CHECK (status = ANY ('{
        scheduled, retrying, waiting, compensating,
        completed, compensated, needs_operator, cancelled, closed}'::text[])) NOT VALID,
    -- a final saga is never runnable nor owned
    DROP CONSTRAINT paysaga_sagas_final_check,
    ADD CONSTRAINT paysaga_sagas_final_check CHECK (
        status <> ALL ('{completed, compensated, needs_operator, cancelled, closed}'::text[])
        OR (run_at IS NULL AND owner IS NULL)) NOT VALID,
    -- a closed saga carries the operator's declared outcome, and only a closed one (the
    -- earlier form let a closed saga without an outcome through: its test was NULL, not false)
    DROP CONSTRAINT paysaga_sagas_closed_outcome_check,
    ADD CONSTRAINT paysaga_sagas_closed_outcome_check CHECK (
        (status = 'closed') = (closed_outcome IS NOT NULL)
        AND (closed_outcome IS NULL OR closed_outcome = ANY ('{paid, not_paid}'::text[])))
        NOT VALID,
    -- a pending `close --compensate` names its outcome (likewise: a request without one
    -- passed before)
    DROP CONSTRAINT paysaga_sagas_close_requested_check,
    ADD CONSTRAINT paysaga_sagas_close_requested_check CHECK (
        close_requested IS NULL
        OR status = ANY ('{compensating, needs_operator}'::text[])
           AND coalesce(close_requested->>'outcome' = ANY ('{paid, not_paid}'::text[]), false))
        NOT VALID;

-- The WHEN clauses of the two end triggers, likewise (read back at each update of a saga's
-- status). Same conditions as in 20261126170101_child_sagas and 20261127160701_await_end.
DROP TRIGGER paysaga_child_ended ON paysaga_sagas;
CREATE TRIGGER paysaga_child_ended AFTER UPDATE OF status ON paysaga_sagas
    FOR EACH ROW
    WHEN (NEW.parent_id IS NOT NULL
          AND NEW.status = ANY ('{completed, compensated, cancelled, closed}'::text[])
          AND OLD.status <> ALL ('{completed, compensated, cancelled, closed}'::text[]))
    EXECUTE FUNCTION paysaga_child_ended();
DROP TRIGGER paysaga_saga_ended ON paysaga_sagas;
CREATE TRIGGER paysaga_saga_ended AFTER UPDATE OF status ON paysaga_sagas
    FOR EACH ROW
    WHEN (NEW.awaited
          AND NEW.status = ANY ('{completed, compensated, needs_operator, cancelled, closed}'::text[])
          AND OLD.status IS DISTINCT FROM NEW.status)
    EXECUTE FUNCTION paysaga_saga_ended();
