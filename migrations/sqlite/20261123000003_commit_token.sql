-- The token of the last transition committed to each saga: a commit retried after its
-- acknowledgement was lost finds its own token and is not applied twice.
ALTER TABLE paysaga_sagas ADD COLUMN last_commit TEXT;
