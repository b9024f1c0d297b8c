-- Child sagas (fan-out / fan-in, issue 15 item 1); see the PostgreSQL migration.
ALTER TABLE paysaga_sagas ADD COLUMN parent_id TEXT;
ALTER TABLE paysaga_sagas ADD COLUMN parent_step TEXT;
ALTER TABLE paysaga_sagas ADD COLUMN child_index INTEGER;
ALTER TABLE paysaga_sagas ADD COLUMN child_key TEXT;
CREATE INDEX paysaga_sagas_children ON paysaga_sagas (parent_id, parent_step, child_index)
    WHERE parent_id IS NOT NULL;

CREATE TABLE paysaga_fan_outs (
    parent_id  TEXT    NOT NULL,
    step       TEXT    NOT NULL,
    total      INTEGER NOT NULL DEFAULT 0 CHECK (total >= 0),
    started    INTEGER NOT NULL DEFAULT 0 CHECK (started >= 0),
    ended      INTEGER NOT NULL DEFAULT 0 CHECK (ended >= 0),
    created_at TEXT    NOT NULL,
    PRIMARY KEY (parent_id, step)
);

-- A child that ends for good counts itself and wakes its waiting parent, in the transaction
-- that ends it (the child's `updated_at` is that transaction's time).
CREATE TRIGGER paysaga_child_ended AFTER UPDATE OF status ON paysaga_sagas
    FOR EACH ROW
    WHEN NEW.parent_id IS NOT NULL
         AND NEW.status IN ('completed', 'compensated', 'cancelled', 'closed')
         AND OLD.status NOT IN ('completed', 'compensated', 'cancelled', 'closed')
BEGIN
    UPDATE paysaga_sagas SET run_at = NEW.updated_at
     WHERE id = NEW.parent_id AND status = 'waiting' AND owner IS NULL
       AND run_at > NEW.updated_at;
    UPDATE paysaga_fan_outs SET ended = ended + 1
     WHERE parent_id = NEW.parent_id AND step = NEW.parent_step;
END;
