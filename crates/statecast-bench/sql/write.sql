-- pgbench: the Profile API's write transaction on a random seeded profile (scenario 3 baseline):
-- placeholder insert, row lock, update, outbox insert. The outbox row is born published so the
-- running relay leaves it alone.
\set n random(0, :profiles - 1)
BEGIN;
INSERT INTO profile (id, version, deleted_at) VALUES ('bench-' || :n, 0, now()) ON CONFLICT (id) DO NOTHING;
SELECT id, name, email, country, version, updated_at, deleted_at FROM profile WHERE id = 'bench-' || :n FOR UPDATE;
UPDATE profile SET name = 'Bench User ' || :n, email = 'bench-' || :n || '@bench.example.com', country = 'PT', version = version + 1, updated_at = now(), deleted_at = NULL WHERE id = 'bench-' || :n;
INSERT INTO outbox (event_id, user_id, event_type, payload, published_at) VALUES (gen_random_uuid(), 'bench-' || :n, 'UserUpdated', '{}'::jsonb, now());
COMMIT;
