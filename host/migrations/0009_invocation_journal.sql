-- The invocation journal: what a handler was given and what it answered, for the invocations
-- `JOURNAL_MODE` selects. Diagnostics, written after the fact and outside the effects'
-- transaction: losing an entry never loses an effect. Pruned after `JOURNAL_RETENTION_SECS`.
CREATE TABLE invocations (
    id          bigserial PRIMARY KEY,
    at          timestamptz NOT NULL DEFAULT now(),
    handler     text        NOT NULL,
    version     text        NOT NULL,
    event_id    text        NOT NULL,
    order_id    uuid        NOT NULL,
    attempt     integer     NOT NULL,
    -- The WIT event exactly as handed to the guest, order snapshot included.
    input       jsonb       NOT NULL,
    -- `actions`, `handler-error`, `trap` or `host`.
    outcome     text        NOT NULL,
    -- The returned actions (a JSON array) or the error (a JSON string).
    output      jsonb       NOT NULL,
    duration_us bigint      NOT NULL
);

CREATE INDEX invocations_by_order ON invocations (order_id, id);
CREATE INDEX invocations_by_handler ON invocations (handler, at);
CREATE INDEX invocations_by_time ON invocations (at);
