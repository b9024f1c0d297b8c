-- Provider request budgets (see the PostgreSQL migration of the same name): one row per
-- provider and credential id; times in the store's fixed-width text format.
CREATE TABLE paysaga_request_budgets (
    provider     TEXT NOT NULL CHECK (provider <> ''),
    credential   TEXT NOT NULL CHECK (credential <> ''),
    next_free_at TEXT NOT NULL,
    slow_until   TEXT NOT NULL,
    PRIMARY KEY (provider, credential)
);
