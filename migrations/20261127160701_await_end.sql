-- Awaiting a saga's end (issue 17 item 3, `Engine::wait_for_end`).
-- A waiter LISTENs on `paysaga_saga_ended`, then sets `awaited` on its saga (and reads the
-- status in the same statement); from then on the transaction that gives the saga a final
-- status (completed, compensated, needs_operator, cancelled, closed), whatever path it takes
-- (a worker's commit, a cancel, an operator's action), notifies the saga id at its commit.
-- Sagas nobody awaits pay only the trigger's WHEN test on a status update: no NOTIFY, whose
-- commit-time queue lock would serialise every saga's last commit.
-- Adding a column with a constant default rewrites nothing (PostgreSQL 11+).
ALTER TABLE paysaga_sagas ADD COLUMN awaited boolean NOT NULL DEFAULT false;

CREATE FUNCTION paysaga_saga_ended() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('paysaga_saga_ended', NEW.id::text);
    RETURN NULL;
END
$$;
CREATE TRIGGER paysaga_saga_ended AFTER UPDATE OF status ON paysaga_sagas
    FOR EACH ROW
    WHEN (NEW.awaited
          AND NEW.status IN ('completed', 'compensated', 'needs_operator', 'cancelled', 'closed')
          AND OLD.status IS DISTINCT FROM NEW.status)
    EXECUTE FUNCTION paysaga_saga_ended();
