-- Child sagas (fan-out / fan-in, issue 15 item 1).
-- A child names its parent, the parent's fan-out step, its element's position and key.
ALTER TABLE paysaga_sagas
    ADD COLUMN parent_id UUID,
    ADD COLUMN parent_step TEXT,
    ADD COLUMN child_index BIGINT,
    ADD COLUMN child_key TEXT;
ALTER TABLE paysaga_sagas ADD CONSTRAINT paysaga_sagas_parent_link CHECK (
    (parent_id IS NULL) = (parent_step IS NULL)
    AND (parent_id IS NULL) = (child_index IS NULL)
    AND (parent_id IS NULL) = (child_key IS NULL));
-- `list --parent`, the children of a step in item order, counts by status: only children.
CREATE INDEX paysaga_sagas_children ON paysaga_sagas (parent_id, parent_step, child_index)
    WHERE parent_id IS NOT NULL;

-- One row per fan-out step of a parent (never one per child): the parent's row does not
-- grow with its children.
CREATE TABLE paysaga_fan_outs (
    parent_id  UUID        NOT NULL,
    step       TEXT        NOT NULL,
    total      BIGINT      NOT NULL DEFAULT 0 CHECK (total >= 0),
    started    BIGINT      NOT NULL DEFAULT 0 CHECK (started >= 0),
    ended      BIGINT      NOT NULL DEFAULT 0 CHECK (ended >= 0),
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (parent_id, step)
);

-- A child that ends for good (completed, compensated, cancelled, closed: nothing moves it
-- again) counts itself on its parent's fan-out row and wakes the parent if it waits, in the
-- transaction that ends it, whatever path ended it (a worker's commit, an operator's close,
-- a cancel). Lock order: child row, parent row, fan-out row (as the fan-out itself: parent
-- row, then fan-out row).
CREATE FUNCTION paysaga_child_ended() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE paysaga_sagas SET run_at = now()
     WHERE id = NEW.parent_id AND status = 'waiting' AND owner IS NULL AND run_at > now();
    UPDATE paysaga_fan_outs SET ended = ended + 1
     WHERE parent_id = NEW.parent_id AND step = NEW.parent_step;
    PERFORM pg_notify('paysaga_wakeup', '');
    RETURN NULL;
END
$$;
CREATE TRIGGER paysaga_child_ended AFTER UPDATE OF status ON paysaga_sagas
    FOR EACH ROW
    WHEN (NEW.parent_id IS NOT NULL
          AND NEW.status IN ('completed', 'compensated', 'cancelled', 'closed')
          AND OLD.status NOT IN ('completed', 'compensated', 'cancelled', 'closed'))
    EXECUTE FUNCTION paysaga_child_ended();
