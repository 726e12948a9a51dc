-- pgbench: the Profile API's read query on a random seeded profile (scenario 2 baseline).
\set n random(0, :profiles - 1)
SELECT id, name, email, country, version, updated_at, deleted_at FROM profile WHERE id = 'bench-' || :n;
