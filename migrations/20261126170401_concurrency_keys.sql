-- Per-key concurrency (issue 16 item 2): a saga of a definition with a `[concurrency]` table
-- stores its key (`<group>:<value>`) and limit; it runs its steps only while it holds one of
-- the key's slots (`concurrency_held`), which it takes at start or when a holder ends and
-- keeps until it ends itself (parked sagas keep theirs). The claim skips a keyed saga that
-- holds none (it is queued: run_at NULL, so it is never due).
ALTER TABLE paysaga_sagas
    ADD COLUMN concurrency_key   text,
    ADD COLUMN concurrency_limit integer CHECK (concurrency_limit > 0),
    ADD COLUMN concurrency_held  boolean NOT NULL DEFAULT false,
    ADD CONSTRAINT paysaga_sagas_concurrency_check
        CHECK ((concurrency_key IS NULL) = (concurrency_limit IS NULL));
-- Holders of a key (count, `show`), its queue in start order (hand-over), the keys with a
-- queue (the safety-net sweep): only open keyed sagas are in it, so it does not grow with
-- finished sagas nor with sagas without a key.
CREATE INDEX paysaga_sagas_concurrency
    ON paysaga_sagas (concurrency_key, concurrency_held, created_at)
    WHERE concurrency_key IS NOT NULL
      AND status IN ('scheduled', 'retrying', 'waiting', 'compensating', 'needs_operator');
