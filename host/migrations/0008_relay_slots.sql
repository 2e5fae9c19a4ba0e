-- Replicas (issue 15): the outbox is split into 16 relay slots by a hash of the key, so several
-- replicas publish at once while all rows of one key fall in one slot, which one relay at a time
-- owns (a session advisory lock), and so still leave in commit order. A row without a key has no
-- order to keep and is spread by its id. The slot count is fixed here: it bounds how many relays
-- can publish in parallel, and changing it means a migration.
ALTER TABLE outbox ADD COLUMN slot SMALLINT NOT NULL GENERATED ALWAYS AS (
    CASE WHEN key IS NULL THEN (id % 16)::smallint
         ELSE (get_byte(sha256(key), 0) % 16)::smallint END) STORED;
CREATE INDEX outbox_unpublished_by_slot ON outbox (slot, id) WHERE published_at IS NULL;
