-- Retention (issue 14): idempotency rows are pruned by age. A BRIN index fits a column that
-- grows with insertion order: a few pages, and next to nothing added to each insert.
CREATE INDEX processed_events_by_time ON processed_events USING brin (processed_at);
