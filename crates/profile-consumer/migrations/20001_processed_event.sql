-- Exactly-once effects: one row per (consumer group, event id) the group has applied. Written in
-- the same transaction as a PostgreSQL effect, so a redelivered event finds its row and is skipped.
create table if not exists processed_event (
    consumer_group text not null,
    event_id uuid not null,
    processed_at timestamptz not null default now(),
    primary key (consumer_group, event_id)
);

-- Order: the highest profile version a group has applied per user. An event at or below it is
-- stale and skipped.
create table if not exists applied_version (
    consumer_group text not null,
    user_id text not null,
    version bigint not null,
    updated_at timestamptz not null default now(),
    primary key (consumer_group, user_id)
);
