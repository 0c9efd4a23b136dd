-- Calls, not only events (callstream_schemas::call): several events
-- describe one call (Xarios' triggers, Onoff's CDR and its voicemail
-- update, TeleCMI's legs and live steps). Each event now names its call,
-- and two tables hold each call once: `calls` (callstream-store: the
-- merged call, also published to callstream.calls.v1) and `kpi_calls`
-- (callstream-analytics: what each call counts for).

-- `provider:tenant:<id>` (callstream_schemas::call::call_key); NULL for
-- SMS and events that name no call. Filled by callstream-store from now on;
-- rows stored before are filled here with the same rule.
ALTER TABLE events ADD COLUMN call_key text COLLATE "C";
UPDATE events SET call_key = provider || ':' || tenant || ':' || id
FROM (
    SELECT event_id AS eid, COALESCE(
        NULLIF(btrim(event->'correlation'->>'conversation_id'), ''),
        NULLIF(btrim(event->'correlation'->>'call_id'), ''),
        NULLIF(btrim(event->'correlation'->>'leg_id'), '')) AS id
    FROM events WHERE kind <> 'sms'
) AS keyed
WHERE events.event_id = keyed.eid AND keyed.id IS NOT NULL;
-- The events of one call.
CREATE INDEX events_call_key ON events (call_key) WHERE call_key IS NOT NULL;

-- One row per call: its merged state (`call`, schema
-- schemas/call.schema.json), with the fields people filter on as columns.
CREATE TABLE calls (
    call_key           text COLLATE "C" PRIMARY KEY,
    -- 1 for the first state, +1 each time the merged state changes; the
    -- `cs_revision` header of its record in callstream.calls.v1.
    revision           bigint           NOT NULL,
    provider           text             NOT NULL,
    tenant             text             NOT NULL,
    -- Whether a final event (not only live steps) has arrived.
    final              boolean          NOT NULL,
    status             text             NOT NULL,
    direction          text             NOT NULL,
    started_at         timestamptz,
    answered_at        timestamptz,
    ended_at           timestamptz,
    duration_seconds   double precision,
    talk_seconds       double precision,
    user_id            text,
    user_name          text,
    user_email         text,
    user_number        text,
    external_number    text,
    external_name      text,
    notes              text,
    -- Its events (identity, kind, status, received_at), oldest first.
    events             jsonb            NOT NULL,
    recordings         jsonb            NOT NULL,
    voicemail          jsonb,
    legs               jsonb            NOT NULL,
    -- The whole merged call as published.
    call               jsonb            NOT NULL,
    updated_at         timestamptz      NOT NULL DEFAULT now()
);
CREATE INDEX calls_tenant_started_at ON calls (tenant, started_at DESC);
CREATE INDEX calls_tenant_user ON calls (tenant, user_id, started_at DESC);
CREATE INDEX calls_tenant_external_number ON calls (tenant, external_number, started_at DESC);

-- Calls to merge again: their events changed. The store queues a key in
-- the transaction that writes its events; its calls task merges the call
-- and takes the key out, unless `version` moved on meanwhile (an event
-- committed during the merge), so no change is left unmerged.
CREATE TABLE calls_dirty (
    call_key           text COLLATE "C" PRIMARY KEY,
    version            bigint           NOT NULL
);

-- The calls of the events stored before this migration: the store's calls
-- task merges (and publishes) them after the upgrade.
INSERT INTO calls_dirty (call_key, version)
SELECT DISTINCT call_key, 1 FROM events WHERE call_key IS NOT NULL;

-- The outbox: calls whose state `revision` (or a newer one) is not
-- published to callstream.calls.v1 yet. Written with `calls`, emptied by
-- the store's outbox task once Kafka acknowledged; small, so `calls`
-- itself is never updated for publishing.
CREATE TABLE calls_outbox (
    call_key           text COLLATE "C" PRIMARY KEY,
    revision           bigint           NOT NULL
);

-- What each call counts for in kpi_rollups (as kpi_events does for SMS),
-- and the newest content of each of its events, from which analytics
-- merges the call again when one changes.
CREATE TABLE kpi_calls (
    call_key          text COLLATE "C" PRIMARY KEY,
    -- [{"revision": n, "event": {...}}], one per event of the call.
    members           jsonb            NOT NULL,
    tenant            text             NOT NULL,
    provider          text             NOT NULL,
    kind              text             NOT NULL,
    direction         text             NOT NULL,
    status            text             NOT NULL,
    event_at          timestamptz      NOT NULL,
    agent             text,
    number            text,
    calls_offered     bigint           NOT NULL,
    calls_answered    bigint           NOT NULL,
    calls_missed      bigint           NOT NULL,
    calls_voicemail   bigint           NOT NULL,
    talk_seconds_sum  double precision NOT NULL,
    talk_count        bigint           NOT NULL,
    ring_seconds_sum  double precision NOT NULL,
    ring_count        bigint           NOT NULL,
    sms_sent          bigint           NOT NULL,
    sms_received      bigint           NOT NULL,
    counted_at        timestamptz      NOT NULL DEFAULT now()
);
