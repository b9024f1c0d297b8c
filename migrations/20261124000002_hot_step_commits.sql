-- Step commits of a saga its worker keeps (the hot path) become HOT updates: no indexed
-- column changes any more (run_at is left alone while the saga is owned, and updated_at is no
-- longer indexed), and pages keep room for the new row version. A HOT update adds no index
-- entry to any of the table's indexes and writes about half the WAL.
DROP INDEX paysaga_sagas_status_updated;
-- Operator listings and counts by status (status does not change while a worker keeps a saga).
CREATE INDEX paysaga_sagas_status_workflow ON paysaga_sagas (status, workflow);
ALTER TABLE paysaga_sagas SET (fillfactor = 85);
