-- Operator gauges (issue 13 item 8): one worker at a time (the holder of this row's lease)
-- counts the open sagas at an interval and stores the result here; every worker serves it on
-- /metrics. `started` counts sagas created before `started_until`, by workflow, kept up to date
-- incrementally (never a count over all finished sagas after the first).
CREATE TABLE paysaga_gauges (
    id            integer PRIMARY KEY CHECK (id = 1),
    holder        uuid,
    held_until    timestamptz,
    computed_at   timestamptz,
    snapshot      jsonb,
    started_until timestamptz,
    started       jsonb NOT NULL DEFAULT '{}'::jsonb
);
INSERT INTO paysaga_gauges (id) VALUES (1);
