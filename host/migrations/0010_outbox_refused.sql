-- The relay's claim reads the keys held back (a row refused and waiting out its retry, or
-- parked) from this index of refused rows, normally empty, rather than checking each candidate
-- row against the whole backlog (see `db::outbox::claim`). A row refused once keeps its
-- `next_attempt_at` until it is published, so the predicate needs no clock.
CREATE INDEX outbox_refused ON outbox (key, id)
    WHERE published_at IS NULL AND (parked_at IS NOT NULL OR next_attempt_at IS NOT NULL);
