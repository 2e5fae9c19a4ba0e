-- Cheaper rows per event (issue 14, after a profile of the batched drain in which Postgres was
-- the larger half of the CPU and its time was spread over the rows each event writes).
--
-- 1. Order status updates stay on their page. `status`, `updated_at` and `source_topic` are in
-- no index, so an update can be HOT (no new entry in any of the table's five indexes) when the
-- row's page has room for the new version. At the default fillfactor of 100 a page is full when
-- its orders are inserted, and a group commit changes many orders in one statement, so pruning
-- between statements cannot make room: 39 of 900 changes were HOT in batches of 100 orders, each
-- of the others writing five index entries. At 70, 636 of 900 were
-- (`api.rs::order_status_changes_are_hot_updates`); the table is about 40% larger. It applies
-- to pages written from now on.
ALTER TABLE orders SET (fillfactor = 70);

-- 2. Two outbox indexes no plan uses. The relay's claim walks `outbox_unpublished` in id order
-- (it must stop at its limit in id order, which `(slot, id)` with `slot = ANY(...)` cannot give),
-- and the admin list of parked rows now counts the rows each holds back in one hash join over
-- the backlog. Each cost an index entry per published record.
DROP INDEX outbox_unpublished_by_key;
DROP INDEX outbox_unpublished_by_slot;

-- 3. Status changes are announced once per statement, not once per history row. The payload is
-- the ids of the orders the statement changed, comma-separated, at most 200 to a notification
-- (a payload must stay under 8,000 bytes); listeners read the rows themselves when, and only
-- when, someone watches that order. A per-row trigger built a JSON object and queued one
-- notification per row: a tenth of a group commit's status writes in the profile, and a JSON
-- parse per row in every replica's listener whether or not anyone watched.
DROP TRIGGER order_status_notify ON order_status_history;
CREATE OR REPLACE FUNCTION order_status_notify() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    ids text;
BEGIN
    FOR ids IN
        SELECT string_agg(order_id::text, ',')
        FROM (SELECT order_id, (row_number() OVER () - 1) / 200 AS chunk
              FROM (SELECT DISTINCT order_id FROM changed) d) c
        GROUP BY chunk
    LOOP
        PERFORM pg_notify('order_status', ids);
    END LOOP;
    RETURN NULL;
END $$;
CREATE TRIGGER order_status_notify AFTER INSERT ON order_status_history
    REFERENCING NEW TABLE AS changed FOR EACH STATEMENT EXECUTE FUNCTION order_status_notify();
