-- The relay's claim reads the keys held back (a row refused and waiting out its retry, or
-- parked) from this index of rows ever refused, normally nearly empty, rather than checking
-- each candidate row against the whole backlog (see `db::outbox::claim`). A refused row keeps
-- its `next_attempt_at`, so a published one stays here until retention deletes it; the
-- predicate leaves out `published_at` on purpose, so that no other index can serve the claim's
-- read of refused rows.
CREATE INDEX outbox_refused ON outbox (key, id) WHERE parked_at IS NOT NULL OR next_attempt_at IS NOT NULL;
