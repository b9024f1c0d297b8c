-- Scenario 2's pgbench script: a one-row INSERT per transaction (needs table bench_ceiling).
\set v random(1, 1000000)
INSERT INTO bench_ceiling (v) VALUES (:v);
