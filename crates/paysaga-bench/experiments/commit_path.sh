#!/usr/bin/env bash
# Replays the store's step-commit statements with pgbench, as they are and as proposed in
# docs/PERFORMANCE.md, to measure what each proposal buys before the engine is changed.
#
# Usage: commit_path.sh URL
#   URL: a migrated paysaga database on a server you may create databases on, e.g. the one
#   `paysaga-bench --only single --keep` leaves behind (it prints the URL).
# Makes two copies of it (exp_a: schema as is; exp_c: HOT-friendly variant: no updated_at in
# an index, fillfactor 85), adds 512 sagas owned by one live worker, runs each script for
# 8 s, prints tps, latency and WAL bytes per transaction. Drops the copies at the end.
# a_current.sql is the step commit before the one-statement change (BEGIN; SELECT .. FOR
# UPDATE; UPDATE; INSERT history; COMMIT), e_commit_simple.sql the store's COMMIT_SIMPLE_SQL
# as it is now; b/c/d are proposals (see docs/PERFORMANCE.md).
set -euo pipefail
url=${1:?usage: commit_path.sh URL-of-a-migrated-paysaga-database}
here=$(cd "$(dirname "$0")" && pwd)
base=${url%/*}
src=${url##*/}
pgbench=$(ls /usr/lib/postgresql/*/bin/pgbench 2>/dev/null | sort | tail -1 || command -v pgbench)
for d in exp_a exp_c; do
    psql -q "$base/postgres" -c "DROP DATABASE IF EXISTS $d" -c "CREATE DATABASE $d TEMPLATE $src"
    psql -q "$base/$d" -f "$here/setup.sql"
done
psql -q "$base/exp_c" -c "DROP INDEX paysaga_sagas_status_updated" \
    -c "ALTER TABLE paysaga_sagas SET (fillfactor = 85)" -c "VACUUM FULL paysaga_sagas"
psql -q "$base/exp_a" -c "CREATE TABLE IF NOT EXISTS bench_ceiling (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, v integer NOT NULL)"
for d in exp_a exp_c; do psql -q "$base/$d" -c "VACUUM ANALYZE"; done
lsn() { psql -At "$base/$1" -c "SELECT pg_wal_lsn_diff(pg_current_wal_insert_lsn(), '0/0')::bigint"; }
run() {
    local db=$1 script=$2 clients=$3 secs=$4 b0 b1 out n
    b0=$(lsn "$db")
    out=$("$pgbench" -n -M prepared -c "$clients" -j $((clients < 2 ? clients : 2)) -T "$secs" -f "$here/$script" "$base/$db" 2>&1)
    b1=$(lsn "$db")
    n=$(echo "$out" | awk -F': ' '/actually processed/ {print $2}' | cut -d/ -f1)
    printf '%-26s %-6s c=%-3s tps=%-10s latency_ms=%-7s WAL_B/tx=%s\n' "$script" "$db" "$clients" \
        "$(echo "$out" | awk '/^tps/ {print $3}')" "$(echo "$out" | awk '/latency average/ {print $4}')" \
        "$(( (b1 - b0) / (n > 0 ? n : 1) ))"
}
run exp_a ceiling.sql 32 8
for c in 32 1; do
    run exp_a a_current.sql "$c" 8
    run exp_a b_one_statement.sql "$c" 8
    run exp_a e_commit_simple.sql "$c" 8
    run exp_c a_current_hot.sql "$c" 8
    run exp_c c_one_statement_hot.sql "$c" 8
done
run exp_a d_batch8.sql 4 8
run exp_c d_batch8_hot.sql 4 8
for d in exp_a exp_c; do psql -q "$base/postgres" -c "DROP DATABASE $d"; done
