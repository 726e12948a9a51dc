-- Exactly-once audit rows rest on the `processed_event` claim made in the same transaction, and
-- on nothing else: a unique `event_id` here used to swallow a second insert silently, so a
-- broken claim could never show as a duplicate row. A plain index keeps lookups by event fast.
alter table audit_log drop constraint if exists audit_log_event_id_key;
create index if not exists audit_log_event_id on audit_log (event_id);
