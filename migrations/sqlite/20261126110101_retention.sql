-- Retention (`paysaga prune`, the worker's `--retention`): finished sagas by the time they
-- finished, oldest first (the parked ones are in it too and skipped by the status filter).
CREATE INDEX paysaga_sagas_finished ON paysaga_sagas (finished_at) WHERE finished_at IS NOT NULL;
-- Pruning deletes the events a saga consumed and its documents with it; the first also
-- serves the foreign-key check on every deleted saga row.
CREATE INDEX paysaga_events_consumed_by ON paysaga_events (consumed_by) WHERE consumed_by IS NOT NULL;
CREATE INDEX paysaga_documents_saga ON paysaga_documents (saga_id) WHERE saga_id IS NOT NULL;
