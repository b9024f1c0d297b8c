-- The last mark of a request whose effect the provider cannot deduplicate (Blaaiz payout):
-- which step, and when (database clock). A worker that takes the saga over does not send the
-- request again until the mark is older than its effect window.
ALTER TABLE paysaga_sagas ADD COLUMN effect_step integer, ADD COLUMN effect_marked_at timestamptz;
