-- References of a saga (issue 13 item 6): the provider object ids its steps returned
-- (transaction, payable, funding, intent, customer ids...), as each step kind declares them
-- (`StepKind::references`), written in the commit of the step's result. `paysaga list --ref
-- VALUE` finds the saga from an id quoted in a support ticket (index on value); `show` lists
-- them (primary key, saga first).
CREATE TABLE paysaga_saga_refs (
    saga_id    uuid        NOT NULL REFERENCES paysaga_sagas (id),
    step       text        NOT NULL,
    name       text        NOT NULL,
    value      text        NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (saga_id, step, name, value)
);
CREATE INDEX paysaga_saga_refs_value ON paysaga_saga_refs (value);
