-- Reconciliation against the providers (issue 16 item 3): each run of `paysaga reconcile`
-- (by hand, or by the one worker holding the reconciler lease) stores what it checked and the
-- drift it found; `paysaga reconcile --last` and the `paysaga_drift{kind}` gauge read the
-- latest run. Runs older than the last 100 are deleted by the run that stores a new one.
CREATE TABLE paysaga_reconciliations (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    started_at      timestamptz NOT NULL,
    finished_at     timestamptz NOT NULL DEFAULT now(),
    providers       text[]      NOT NULL,
    since           timestamptz,
    objects_checked bigint      NOT NULL CHECK (objects_checked >= 0),
    actor           text        NOT NULL
);

CREATE TABLE paysaga_drift (
    reconciliation_id bigint NOT NULL REFERENCES paysaga_reconciliations (id) ON DELETE CASCADE,
    seq               integer NOT NULL,
    kind              text    NOT NULL CHECK (kind IN ('status_mismatch', 'unowned_object',
                          'unaccounted_money')),
    provider          text    NOT NULL,
    saga_id           uuid,
    object_id         text,
    currency          text,
    amount            bigint,
    detail            text    NOT NULL,
    action            text    NOT NULL,
    PRIMARY KEY (reconciliation_id, seq)
);

-- One periodic reconciler at a time: the holder of this row's lease (as `paysaga_gauges`).
CREATE TABLE paysaga_reconciler (
    id         integer PRIMARY KEY CHECK (id = 1),
    holder     uuid,
    held_until timestamptz
);
INSERT INTO paysaga_reconciler (id) VALUES (1);
