-- Reliability: byte-exact outbox records, relay attempts and parking, timer failures.

-- A dead letter carries the consumed record exactly: key and header values are bytes (a key framed
-- by a schema registry starts with 0x00, which TEXT and JSONB cannot hold), and a record without a
-- key or a value keeps that absence. Header names are text (Kafka header keys are strings).
ALTER TABLE outbox ALTER COLUMN key DROP NOT NULL;
ALTER TABLE outbox ALTER COLUMN key TYPE BYTEA USING convert_to(key, 'UTF8');
ALTER TABLE outbox ALTER COLUMN payload DROP NOT NULL;
ALTER TABLE outbox ADD COLUMN header_names TEXT[] NOT NULL DEFAULT '{}';
ALTER TABLE outbox ADD COLUMN header_values BYTEA[] NOT NULL DEFAULT '{}';
UPDATE outbox SET
    header_names = ARRAY(SELECT h->>0 FROM jsonb_array_elements(headers) WITH ORDINALITY AS e(h, i) ORDER BY i),
    header_values = ARRAY(SELECT convert_to(h->>1, 'UTF8') FROM jsonb_array_elements(headers) WITH ORDINALITY AS e(h, i) ORDER BY i);
ALTER TABLE outbox DROP COLUMN headers;

-- The relay's bookkeeping of rows it could not deliver: attempts so far, the last error, when the
-- next attempt may run, and `parked_at` once a row has failed permanently too often. A parked row
-- and every later row of its key wait for an operator; other keys flow on.
ALTER TABLE outbox ADD COLUMN attempts INTEGER NOT NULL DEFAULT 0;
ALTER TABLE outbox ADD COLUMN last_error TEXT;
ALTER TABLE outbox ADD COLUMN next_attempt_at TIMESTAMPTZ;
ALTER TABLE outbox ADD COLUMN parked_at TIMESTAMPTZ;
-- Per-key order: the claim looks for an earlier unpublished row of the same key.
CREATE INDEX outbox_unpublished_by_key ON outbox (key, id) WHERE published_at IS NULL;

-- A timer whose change failed for a reason other than the state machine is retried on its own,
-- later, and after a few attempts parked, never holding up the timers behind it.
ALTER TABLE timers ADD COLUMN attempts INTEGER NOT NULL DEFAULT 0;
ALTER TABLE timers ADD COLUMN last_error TEXT;
ALTER TABLE timers ADD COLUMN parked_at TIMESTAMPTZ;
DROP INDEX timers_due;
CREATE INDEX timers_due ON timers (due_at) WHERE parked_at IS NULL;
