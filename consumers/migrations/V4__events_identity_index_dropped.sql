-- `events_identity` duplicated the primary key: `event_id` is the UUIDv5 of
-- `identity` (namespace 6b2f1c2e-9a1d-4c55-8f1e-3b7d0c9a51e4), so a look-up
-- by identity is a primary-key look-up on
--   event_id = uuid_generate_v5('6b2f1c2e-9a1d-4c55-8f1e-3b7d0c9a51e4', <identity>)
-- (extension uuid-ossp; or computed by the client). Keeping it up to date
-- was ~10 % of the store's PostgreSQL time per row (BENCHMARKS.md).
DROP INDEX IF EXISTS events_identity;
