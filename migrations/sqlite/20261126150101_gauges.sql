-- Operator gauges (issue 13 item 8): see the PostgreSQL migration of the same name.
CREATE TABLE paysaga_gauges (
    id            INTEGER PRIMARY KEY CHECK (id = 1),
    holder        TEXT,
    held_until    TEXT,
    computed_at   TEXT,
    snapshot      TEXT CHECK (snapshot IS NULL OR json_valid(snapshot)),
    started_until TEXT,
    started       TEXT NOT NULL DEFAULT '{}' CHECK (json_valid(started))
);
INSERT INTO paysaga_gauges (id) VALUES (1);
