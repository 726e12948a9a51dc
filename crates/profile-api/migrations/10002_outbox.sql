-- Transactional outbox: every profile change inserts its event here in the same transaction;
-- the relay publishes unpublished rows to Kafka in id order and stamps published_at.
CREATE TABLE outbox (
    id            bigserial   PRIMARY KEY,
    event_id      uuid        NOT NULL UNIQUE,
    user_id       text        NOT NULL,
    event_type    text        NOT NULL,
    payload       jsonb       NOT NULL,
    -- W3C trace context (traceparent/tracestate) of the request that caused the change.
    trace_context jsonb       NOT NULL DEFAULT '{}'::jsonb,
    created_at    timestamptz NOT NULL DEFAULT now(),
    published_at  timestamptz
);

CREATE INDEX outbox_unpublished ON outbox (id) WHERE published_at IS NULL;

-- Wake the relay at commit time (NOTIFY is delivered on commit, dropped on rollback).
CREATE FUNCTION outbox_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('outbox', '');
    RETURN NULL;
END;
$$;

CREATE TRIGGER outbox_notify AFTER INSERT ON outbox
    FOR EACH STATEMENT EXECUTE FUNCTION outbox_notify();
