-- Analytics aggregates, kept correct under duplicates (processed_event) and reordering (version
-- compare on analytics_profile_state). One analytics consumer group per database.
create table if not exists analytics_profile_state (
    user_id text primary key,
    country text,
    version bigint not null,
    deleted boolean not null default false
);

-- Live (not deleted) profiles per country.
create table if not exists analytics_country (
    country text primary key,
    profiles bigint not null default 0
);

-- Distinct profile changes per UTC day of the event time, stale events included.
create table if not exists analytics_daily_changes (
    day date primary key,
    changes bigint not null default 0
);
