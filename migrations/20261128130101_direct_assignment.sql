-- A start in a process without a free worker of its own inserts the new saga held by a live
-- worker of another process that has a free slot and every step kind of the saga, and wakes
-- that worker alone on its own channel (issue 14 item 1): no claim, whose durable commit and
-- second wake-up came before the first step.
-- `concurrency`: how many sagas the worker runs at once (a free slot is fewer sagas held than
-- this, counted by the index `paysaga_sagas_owner`); `wake_channel`: the channel it LISTENs on
-- for the sagas handed to it. NULL in both (every worker registered before this migration, and
-- one that takes no such sagas): never handed a saga this way.
-- Adding nullable columns rewrites nothing.
ALTER TABLE paysaga_workers
    ADD COLUMN concurrency integer CONSTRAINT paysaga_workers_concurrency_positive
        CHECK (concurrency > 0),
    ADD COLUMN wake_channel text CONSTRAINT paysaga_workers_wake_channel_name
        CHECK (wake_channel ~ '^paysaga_worker_[0-9a-f]{32}$'),
    ADD CONSTRAINT paysaga_workers_assignment_whole
        CHECK ((concurrency IS NULL) = (wake_channel IS NULL));
