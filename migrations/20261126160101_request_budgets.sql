-- Provider request budgets shared by every worker (issue 16 item 1): one row per provider and
-- credential id (the client id, or a hash of an API key: never the secret). A request takes the
-- next free slot: `next_free_at` moves on by one interval per granted request (two while
-- `slow_until` is ahead: the rate is halved after a 429), and is pushed to the end of a
-- provider's `Retry-After`. Rate and burst are the workers' configuration, not stored.
CREATE TABLE paysaga_request_budgets (
    provider     text        NOT NULL CHECK (provider <> ''),
    credential   text        NOT NULL CHECK (credential <> ''),
    next_free_at timestamptz NOT NULL,
    slow_until   timestamptz NOT NULL,
    PRIMARY KEY (provider, credential)
);
