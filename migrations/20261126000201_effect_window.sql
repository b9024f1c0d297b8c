-- The end of the effect window of the worker that made the effect mark (its lease and request
-- timeout decide it): a worker configured with a shorter window (a rolling change) still
-- waits until then before sending the same request again.
ALTER TABLE paysaga_sagas ADD COLUMN effect_until timestamptz;
