-- Catalogue, orders, status history and the transactional outbox.
-- Money is integer cents throughout; the API renders it as a decimal number.

CREATE TABLE products (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    description TEXT NOT NULL,
    price_cents BIGINT NOT NULL CHECK (price_cents >= 0),
    image_url   TEXT NOT NULL,
    category    TEXT NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX products_category ON products (category);

-- `reserved` units are held by checkouts that have not shipped yet; available = stock - reserved.
CREATE TABLE inventory (
    product_id TEXT PRIMARY KEY REFERENCES products (id),
    stock      INTEGER NOT NULL CHECK (stock >= 0),
    reserved   INTEGER NOT NULL DEFAULT 0 CHECK (reserved >= 0 AND reserved <= stock),
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE SEQUENCE order_number_seq START 10001;

CREATE TABLE orders (
    id               UUID PRIMARY KEY,
    order_number     TEXT NOT NULL UNIQUE DEFAULT 'MM-' || nextval('order_number_seq'),
    tracking_token   TEXT NOT NULL UNIQUE,
    customer_name    TEXT NOT NULL,
    customer_email   TEXT NOT NULL,
    ship_street      TEXT NOT NULL DEFAULT '',
    ship_city        TEXT NOT NULL DEFAULT '',
    ship_state       TEXT NOT NULL DEFAULT '',
    ship_zip_code    TEXT NOT NULL DEFAULT '',
    ship_country     TEXT NOT NULL DEFAULT '',
    total_cents      BIGINT NOT NULL CHECK (total_cents >= 0),
    status           TEXT NOT NULL CHECK (status IN
                         ('pending', 'processing', 'confirmed', 'shipped', 'delivered', 'cancelled')),
    -- Whether the order holds inventory reservations (made through /api/checkout).
    holds_stock      BOOLEAN NOT NULL DEFAULT false,
    -- The topic of the last consumed event that changed this order (a `mirrord-tmp-…` topic
    -- means a developer's mirrord session processed it).
    source_topic     TEXT,
    created_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at       TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX orders_by_email ON orders (lower(customer_email), created_at DESC);
CREATE INDEX orders_by_created ON orders (created_at DESC);

CREATE TABLE order_items (
    id           BIGSERIAL PRIMARY KEY,
    order_id     UUID NOT NULL REFERENCES orders (id) ON DELETE CASCADE,
    product_id   TEXT NOT NULL REFERENCES products (id),
    product_name TEXT NOT NULL,
    quantity     INTEGER NOT NULL CHECK (quantity BETWEEN 1 AND 100),
    price_cents  BIGINT NOT NULL CHECK (price_cents >= 0),
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX order_items_by_order ON order_items (order_id);

-- One row per status change, including creation (from_status NULL). `cause` is `api` or
-- `handler:<name>@<version>`.
CREATE TABLE order_status_history (
    id              BIGSERIAL PRIMARY KEY,
    order_id        UUID NOT NULL REFERENCES orders (id) ON DELETE CASCADE,
    from_status     TEXT,
    to_status       TEXT NOT NULL,
    cause           TEXT NOT NULL,
    event_id        TEXT,
    handler_version TEXT,
    consumed_topic  TEXT,
    at              TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX order_status_history_by_order ON order_status_history (order_id, id);

-- Records to publish, written in the same transaction as the change they announce.
CREATE TABLE outbox (
    id           BIGSERIAL PRIMARY KEY,
    topic        TEXT NOT NULL,
    key          TEXT NOT NULL,
    -- [[name, value], ...] in publishing order; values are UTF-8.
    headers      JSONB NOT NULL,
    payload      JSONB NOT NULL,
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    published_at TIMESTAMPTZ
);
CREATE INDEX outbox_unpublished ON outbox (id) WHERE published_at IS NULL;

-- Wake the relay as soon as a transaction that wrote outbox rows commits (NOTIFY is delivered on
-- commit and collapsed per transaction).
CREATE FUNCTION outbox_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('outbox', '');
    RETURN NULL;
END $$;
CREATE TRIGGER outbox_notify AFTER INSERT ON outbox FOR EACH STATEMENT EXECUTE FUNCTION outbox_notify();

-- Every committed status change is announced, whoever wrote it (API, dispatcher, another replica);
-- the live order streams listen to this channel.
CREATE FUNCTION order_status_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('order_status', json_build_object(
        'id', NEW.id,
        'order_id', NEW.order_id,
        'from_status', NEW.from_status,
        'to_status', NEW.to_status,
        'cause', NEW.cause,
        'at', NEW.at
    )::text);
    RETURN NULL;
END $$;
CREATE TRIGGER order_status_notify AFTER INSERT ON order_status_history
    FOR EACH ROW EXECUTE FUNCTION order_status_notify();

INSERT INTO products (id, name, description, price_cents, image_url, category) VALUES
    ('1', 'MetalBear Classic T-Shirt',
     'Black organic-cotton tee with the MetalBear logo, soft enough for a whole on-call week.',
     2999, '/images/tshirt-classic.svg', 't-shirts'),
    ('2', 'MetalBear Logo Hoodie',
     'Heavyweight pullover hoodie, logo on the front and "Debug Locally, Ship Globally" on the back.',
     5999, '/images/hoodie-logo.svg', 'hoodies'),
    ('3', 'MetalBear Dev T-Shirt - Works on My Machine',
     'The oldest excuse in software, printed on a tee for stand-ups and code reviews.',
     2999, '/images/tshirt-works.svg', 't-shirts'),
    ('4', 'MetalBear Cap',
     'Adjustable snapback with an embroidered bear; keeps the monitor glare out of your eyes.',
     2499, '/images/cap.svg', 'accessories'),
    ('5', 'MetalBear Mug - Debug with Coffee',
     'A 15 oz ceramic mug for morning coffee and late-night incident fuel. Dishwasher safe.',
     1499, '/images/mug.svg', 'accessories'),
    ('6', 'MetalBear Sticker Pack',
     'Ten vinyl stickers with bears and developer jokes for laptops, bottles and keyboards.',
     999, '/images/stickers.svg', 'accessories'),
    ('7', 'MetalBear Polo Shirt',
     'A polo with quiet MetalBear branding, for the meetings where a hoodie will not do.',
     4499, '/images/polo.svg', 't-shirts'),
    ('8', 'MetalBear Zip Hoodie',
     'Charcoal zip-up hoodie with deep pockets for a phone and snacks.',
     6999, '/images/hoodie-zip.svg', 'hoodies'),
    ('9', 'MetalBear Socks - 3 Pack',
     'Crew socks in three bear patterns. Your feet deserve swag too.',
     1999, '/images/socks.svg', 'accessories'),
    ('10', 'MetalBear Beanie',
     'Warm knit beanie with an embroidered bear, for cold server rooms.',
     2299, '/images/beanie.svg', 'accessories');

INSERT INTO inventory (product_id, stock) SELECT id, 100 FROM products;
