-- Two checks closed where a NULL let a row through (see the PostgreSQL migration
-- 20261128040101_checks_as_array_constants): a `closed` saga without `closed_outcome`
-- passed the closed-outcome check (`NULL IN ('paid', 'not_paid')` is NULL, not false), and
-- a pending `close --compensate` whose JSON has no `outcome` passed the close-request check
-- likewise. SQLite cannot change a CHECK without rebuilding the sagas table, so the two
-- missing refusals are triggers; RAISE(ABORT) is a constraint error (SQLITE_CONSTRAINT), as
-- a CHECK's is, so the engine treats it the same way (the result cannot be stored).

-- Rows stored before: the engine never wrote either shape. If one is there, the migration
-- stops here (a CHECK of this scratch table fails) and names the condition; an operator
-- gives the saga its outcome (`paysaga close`) or clears the request, then upgrades again.
CREATE TEMP TABLE paysaga_upgrade_closed_outcome_check (
    sagas_closed_without_outcome_or_with_an_outcome_less_close_request INTEGER
        CHECK (sagas_closed_without_outcome_or_with_an_outcome_less_close_request = 0)
);
INSERT INTO paysaga_upgrade_closed_outcome_check
    SELECT count(*) FROM paysaga_sagas
     WHERE status = 'closed' AND closed_outcome IS NULL
        OR close_requested IS NOT NULL
           AND json_extract(close_requested, '$.outcome') IS NULL;
DROP TABLE paysaga_upgrade_closed_outcome_check;

CREATE TRIGGER paysaga_sagas_outcome_on_insert BEFORE INSERT ON paysaga_sagas
    WHEN NEW.status = 'closed' AND NEW.closed_outcome IS NULL
      OR NEW.close_requested IS NOT NULL
         AND json_extract(NEW.close_requested, '$.outcome') IS NULL
BEGIN
    SELECT RAISE(ABORT, 'CHECK constraint failed: a closed saga carries its outcome and a close request names one');
END;

CREATE TRIGGER paysaga_sagas_outcome_on_update
    BEFORE UPDATE OF status, closed_outcome, close_requested ON paysaga_sagas
    WHEN NEW.status = 'closed' AND NEW.closed_outcome IS NULL
      OR NEW.close_requested IS NOT NULL
         AND json_extract(NEW.close_requested, '$.outcome') IS NULL
BEGIN
    SELECT RAISE(ABORT, 'CHECK constraint failed: a closed saga carries its outcome and a close request names one');
END;
