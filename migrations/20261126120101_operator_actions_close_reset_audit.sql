-- Operator actions (issue 13 items 1, 2, 10).
--   * key_generations: steps an operator reset to run again, with how many times; their
--     idempotency keys and provider references are of that generation ({} for most sagas).
--   * paysaga_history_operator: `paysaga audit` lists operator rows across sagas (every row
--     with an actor, starts excepted) newest first; the index holds only those rows.
ALTER TABLE paysaga_sagas ADD COLUMN key_generations jsonb NOT NULL DEFAULT '{}';
CREATE INDEX paysaga_history_operator ON paysaga_history (at)
    WHERE actor IS NOT NULL AND kind <> 'saga_started';
