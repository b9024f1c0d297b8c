-- Reconciliation against the providers (issue 16 item 3): see the PostgreSQL migration of the
-- same name.
CREATE TABLE paysaga_reconciliations (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    started_at      TEXT    NOT NULL,
    finished_at     TEXT    NOT NULL,
    providers       TEXT    NOT NULL CHECK (json_valid(providers)),
    since           TEXT,
    objects_checked INTEGER NOT NULL CHECK (objects_checked >= 0),
    actor           TEXT    NOT NULL
);

CREATE TABLE paysaga_drift (
    reconciliation_id INTEGER NOT NULL REFERENCES paysaga_reconciliations (id) ON DELETE CASCADE,
    seq               INTEGER NOT NULL,
    kind              TEXT    NOT NULL CHECK (kind IN ('status_mismatch', 'unowned_object',
                          'unaccounted_money')),
    provider          TEXT    NOT NULL,
    saga_id           TEXT,
    object_id         TEXT,
    currency          TEXT,
    amount            INTEGER,
    detail            TEXT    NOT NULL,
    action            TEXT    NOT NULL,
    PRIMARY KEY (reconciliation_id, seq)
);

CREATE TABLE paysaga_reconciler (
    id         INTEGER PRIMARY KEY CHECK (id = 1),
    holder     TEXT,
    held_until TEXT
);
INSERT INTO paysaga_reconciler (id) VALUES (1);
