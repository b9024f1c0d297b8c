-- One live worker (lease 1 day) and 512 running sagas it owns, ids 00000000-0000-0000-0000-000000000NNN.
INSERT INTO paysaga_workers (id, name, hostname, pid, step_kinds, lease_expires_at) VALUES ('00000000-0000-0000-0000-00000000ffff','exp','exp',1,'{noop.sleep}', now() + interval '1 day');
INSERT INTO paysaga_sagas (id, definition_id, workflow, version, idempotency_key, input, status, run_at, owner, fence, step_index, outputs)
SELECT ('00000000-0000-0000-0000-' || lpad(g::text, 12, '0'))::uuid, (SELECT id FROM paysaga_definitions WHERE name='noop'), 'noop', 1, 'exp-' || g, '{"delay_ms":0}', 'running', now(), '00000000-0000-0000-0000-00000000ffff', 1, 1, '{"sleep1": {"slept_ms": 0}}' FROM generate_series(0, 511) g;
