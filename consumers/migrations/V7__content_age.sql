-- Which content of an event is newest: the one received last, then the
-- highest revision. Revisions restart at 1 when dedup's window has
-- forgotten an identity, so a real update arriving after the window came
-- out as revision 1 and lost to the revision already stored; ordering by
-- (received_at, revision) keeps it. Replays carry the original
-- received_at, so they still order as first received.
--
-- kpi_events now keeps the received_at and fingerprint of the content it
-- counted: a later delivery of the same content (an exact resend after the
-- window) changes nothing, a later different one replaces the count.
-- Rows counted before this migration have neither; any later content
-- then counts as newer only through its revision, as before.
ALTER TABLE kpi_events ADD COLUMN received_at timestamptz;
ALTER TABLE kpi_events ADD COLUMN fingerprint text;
