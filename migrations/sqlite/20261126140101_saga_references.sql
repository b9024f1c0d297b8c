-- References of a saga (issue 13 item 6): the provider object ids its steps returned, as each
-- step kind declares them (`StepKind::references`), written in the commit of the step's
-- result. `paysaga list --ref VALUE` finds the saga (index on value); `show` lists them.
CREATE TABLE paysaga_saga_refs (
    saga_id    TEXT NOT NULL REFERENCES paysaga_sagas (id),
    step       TEXT NOT NULL,
    name       TEXT NOT NULL,
    value      TEXT NOT NULL,
    created_at TEXT NOT NULL,
    PRIMARY KEY (saga_id, step, name, value)
);
CREATE INDEX paysaga_saga_refs_value ON paysaga_saga_refs (value);
