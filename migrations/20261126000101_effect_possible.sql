-- An attempt of the saga's current (irreversible) step may have reached the provider (a
-- timeout, 5xx or lost connection after sending): an unwind parks for an operator instead of
-- ending "nothing happened" (issue 11 item 1).
ALTER TABLE paysaga_sagas ADD COLUMN effect_possible boolean NOT NULL DEFAULT false;
