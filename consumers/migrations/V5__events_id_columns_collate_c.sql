-- Identifier columns compare byte by byte ("C" collation), not by the
-- database's linguistic collation: tenant ids, agent ids, phone numbers and
-- call ids have no alphabetical order worth a strcoll() per comparison, and
-- every row inserted compares them in each index that leads with them
-- (BENCHMARKS.md). Equality is unchanged; ORDER BY on them is bytewise.
-- On an existing table this rebuilds the indexes on these columns.
ALTER TABLE events
    ALTER COLUMN tenant TYPE text COLLATE "C",
    ALTER COLUMN user_id TYPE text COLLATE "C",
    ALTER COLUMN external_number TYPE text COLLATE "C",
    ALTER COLUMN call_id TYPE text COLLATE "C";
