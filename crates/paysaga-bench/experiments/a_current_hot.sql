-- As a_current.sql, on the HOT-friendly schema (exp_c) and without rewriting run_at.
BEGIN;
SELECT wake_event, cancel_requested FROM paysaga_sagas WHERE id = ('00000000-0000-0000-0000-' || lpad(:client_id::text, 12, '0'))::uuid AND owner = '00000000-0000-0000-0000-00000000ffff' AND fence = 1 AND EXISTS (SELECT 1 FROM paysaga_workers w WHERE w.id = '00000000-0000-0000-0000-00000000ffff' AND w.stopped_at IS NULL AND w.lease_expires_at > now()) FOR UPDATE;
UPDATE paysaga_sagas SET status = 'running', step_index = 2, attempt = 0, step_started_at = now(), wait = NULL, wake_event = NULL, outputs = outputs || jsonb_build_object('sleep2'::text, '{"slept_ms": 0}'::jsonb), last_error = NULL, owner = owner, updated_at = now(), finished_at = NULL WHERE id = ('00000000-0000-0000-0000-' || lpad(:client_id::text, 12, '0'))::uuid;
INSERT INTO paysaga_history (saga_id, worker, actor, step, attempt, kind, error, detail) VALUES (('00000000-0000-0000-0000-' || lpad(:client_id::text, 12, '0'))::uuid, '00000000-0000-0000-0000-00000000ffff', NULL, 'sleep2', 1, 'step_completed', NULL, NULL);
COMMIT;
