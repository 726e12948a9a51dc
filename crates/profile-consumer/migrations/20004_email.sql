-- Last known address per user, so a deletion notice (whose event carries no address) can be sent.
create table if not exists email_recipient (
    user_id text primary key,
    email text not null,
    version bigint not null
);

-- One row per mail: reserved as 'sending' before the SMTP transaction, 'sent' after it.
-- A redelivered event whose row is still 'sending' is sent again (same Message-ID).
create table if not exists email_outbox (
    consumer_group text not null,
    event_id uuid not null,
    recipient text not null,
    message_id text not null,
    status text not null check (status in ('sending', 'sent')),
    created_at timestamptz not null default now(),
    sent_at timestamptz,
    primary key (consumer_group, event_id)
);
