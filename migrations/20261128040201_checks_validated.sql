-- Validates the checks the previous migration added NOT VALID: a scan of each table that
-- takes SHARE UPDATE EXCLUSIVE, so steps keep committing while it runs (its own transaction,
-- after the previous migration's lock was released).
ALTER TABLE paysaga_history VALIDATE CONSTRAINT paysaga_history_kind_check;
ALTER TABLE paysaga_sagas VALIDATE CONSTRAINT paysaga_sagas_status_check;
ALTER TABLE paysaga_sagas VALIDATE CONSTRAINT paysaga_sagas_final_check;
ALTER TABLE paysaga_sagas VALIDATE CONSTRAINT paysaga_sagas_closed_outcome_check;
ALTER TABLE paysaga_sagas VALIDATE CONSTRAINT paysaga_sagas_close_requested_check;
