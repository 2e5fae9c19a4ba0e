-- Dead letters an operator can act on. Every dead-lettered (event, handler) is also a row here,
-- written in the same transaction as its idempotency record and its outbox record, with the
-- consumed record byte for byte, so a redrive hands the fixed handler exactly what the failed one
-- saw. One row per (handler, event_id), as the idempotency record.
CREATE TABLE dead_letters (
    id              BIGSERIAL PRIMARY KEY,
    handler         TEXT NOT NULL,
    handler_version TEXT NOT NULL,
    event_id        TEXT NOT NULL,
    -- Present when the record decodes.
    order_id        UUID,
    class           TEXT NOT NULL,
    reason          TEXT NOT NULL,
    attempts        INTEGER NOT NULL,
    topic           TEXT NOT NULL,
    kafka_partition INTEGER NOT NULL,
    kafka_offset    BIGINT NOT NULL,
    key             BYTEA,
    payload         BYTEA,
    header_names    TEXT[] NOT NULL,
    header_values   BYTEA[] NOT NULL,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    state           TEXT NOT NULL DEFAULT 'open' CHECK (state IN ('open', 'redriven', 'discarded')),
    -- Failed redrives, oldest first: {"at", "handler_version", "class", "reason"}.
    failures        JSONB NOT NULL DEFAULT '[]',
    resolved_at     TIMESTAMPTZ,
    -- The version that applied it (redriven), or the operator's reason (discarded).
    resolution      TEXT,
    UNIQUE (handler, event_id)
);
CREATE INDEX dead_letters_open ON dead_letters (handler, class) WHERE state = 'open';
CREATE INDEX dead_letters_by_order ON dead_letters (order_id, id);
