-- What the dispatcher needs: exact record values in the outbox (a dead-lettered value may not be
-- JSON), idempotency records, durable timers and customer notifications.

ALTER TABLE outbox ALTER COLUMN payload TYPE BYTEA USING convert_to(payload::text, 'UTF8');

-- One row per (handler, event) whose effects are committed, written in the same transaction as
-- those effects: a redelivered event finds its row and changes nothing.
CREATE TABLE processed_events (
    handler         TEXT NOT NULL,
    event_id        TEXT NOT NULL,
    handler_version TEXT NOT NULL,
    -- `applied` or `dead-lettered`.
    outcome         TEXT NOT NULL,
    attempts        INTEGER NOT NULL,
    topic           TEXT NOT NULL,
    kafka_partition INTEGER NOT NULL,
    kafka_offset    BIGINT NOT NULL,
    processed_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (handler, event_id)
);

-- A status change a handler asked for after a delay. Fired by whichever replica claims it first.
CREATE TABLE timers (
    id              BIGSERIAL PRIMARY KEY,
    order_id        UUID NOT NULL REFERENCES orders (id) ON DELETE CASCADE,
    to_status       TEXT NOT NULL,
    due_at          TIMESTAMPTZ NOT NULL,
    cause           TEXT NOT NULL,
    event_id        TEXT NOT NULL,
    handler_version TEXT NOT NULL,
    consumed_topic  TEXT NOT NULL,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX timers_due ON timers (due_at);

-- One wake-up trigger function for every table a background task waits on; the channel is the
-- trigger's argument. Replaces 0001's outbox-only function.
CREATE FUNCTION notify_channel() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify(TG_ARGV[0], '');
    RETURN NULL;
END $$;
DROP TRIGGER outbox_notify ON outbox;
DROP FUNCTION outbox_notify();
CREATE TRIGGER outbox_notify AFTER INSERT ON outbox FOR EACH STATEMENT EXECUTE FUNCTION notify_channel('outbox');

-- Wake the scheduler when a timer is created, so it can sleep until the earliest one.
CREATE TRIGGER timers_notify AFTER INSERT ON timers FOR EACH STATEMENT EXECUTE FUNCTION notify_channel('timers');

CREATE TABLE notifications (
    id         BIGSERIAL PRIMARY KEY,
    order_id   UUID NOT NULL REFERENCES orders (id) ON DELETE CASCADE,
    channel    TEXT NOT NULL CHECK (channel IN ('email', 'sms', 'push')),
    recipient  TEXT NOT NULL,
    subject    TEXT NOT NULL,
    body       TEXT NOT NULL,
    -- `handler:<name>@<version>`.
    cause      TEXT NOT NULL,
    event_id   TEXT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX notifications_by_order ON notifications (order_id, id);
