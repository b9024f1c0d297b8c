-- Per-key concurrency (see the PostgreSQL migration of the same name): the saga's key
-- (`<group>:<value>`), its limit, and whether it holds one of the key's slots.
ALTER TABLE paysaga_sagas ADD COLUMN concurrency_key TEXT;
ALTER TABLE paysaga_sagas ADD COLUMN concurrency_limit INTEGER
    CHECK (concurrency_limit IS NULL OR (concurrency_limit > 0 AND concurrency_key IS NOT NULL));
ALTER TABLE paysaga_sagas ADD COLUMN concurrency_held INTEGER NOT NULL DEFAULT 0
    CHECK (concurrency_held IN (0, 1));
CREATE INDEX paysaga_sagas_concurrency
    ON paysaga_sagas (concurrency_key, concurrency_held, created_at)
    WHERE concurrency_key IS NOT NULL
      AND status IN ('scheduled', 'retrying', 'waiting', 'compensating', 'needs_operator');
