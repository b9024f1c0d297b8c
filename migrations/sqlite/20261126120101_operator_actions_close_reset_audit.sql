-- Operator actions (issue 13 items 1, 2, 10): see the PostgreSQL migration of the same name.
ALTER TABLE paysaga_sagas ADD COLUMN key_generations TEXT NOT NULL DEFAULT '{}';
CREATE INDEX paysaga_history_operator ON paysaga_history (at)
    WHERE actor IS NOT NULL AND kind <> 'saga_started';
