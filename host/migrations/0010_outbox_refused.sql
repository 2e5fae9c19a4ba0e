-- The relay's claim reads the keys held back (a row refused and waiting out its retry, or
-- parked) from this index of refused rows, normally empty, rather than checking each candidate
-- row against the whole backlog (see `db::outbox::claim`). Publishing a row clears its
-- `next_attempt_at`, which takes it out of the index. The predicate leaves out `published_at`
-- on purpose, so that no other index can serve the claim's read of refused rows.
CREATE INDEX outbox_refused ON outbox (key, id) WHERE parked_at IS NOT NULL OR next_attempt_at IS NOT NULL;
