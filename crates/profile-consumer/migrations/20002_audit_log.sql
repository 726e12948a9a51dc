-- Append-only audit trail, one row per applied event.
create table if not exists audit_log (
    id bigserial primary key,
    event_id uuid not null unique,
    event_type text not null,
    user_id text not null,
    version bigint not null,
    event_time timestamptz not null,
    recorded_at timestamptz not null default now(),
    trace_id text,
    snapshot jsonb not null
);

create index if not exists audit_log_user_id on audit_log (user_id, version);
