-- Passes whose cost must follow the rows they touch, not the table (issue 14's reliability
-- review, after the relay claim's whole-backlog plan; see migration 0010):
--
-- The retention pass deletes published outbox rows oldest publication first. Without an index
-- on `published_at` its last chunk of each pass walked every row of the retention window.
CREATE INDEX outbox_published ON outbox (published_at) WHERE published_at IS NOT NULL;
--
-- Timers are claimed in `(due_at, id)` order; an index on `due_at` alone gives that order only
-- after a sort of every due timer.
DROP INDEX timers_due;
CREATE INDEX timers_due ON timers (due_at, id) WHERE parked_at IS NULL;
