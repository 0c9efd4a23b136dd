-- callstream-store: one row per distinct event (`event_id`), holding its
-- newest revision. Typed columns for what people filter and sort on, plus
-- the whole normalized event as JSONB for everything else.
CREATE TABLE events (
    -- UUIDv5 of `identity`: the same for every resend and revision.
    event_id          uuid             PRIMARY KEY,
    identity          text             NOT NULL,
    -- The revision this row holds (1 = first content, 2, 3, ... = updates);
    -- a record replaces the row only when its revision is higher.
    revision          int              NOT NULL,
    fingerprint       text             NOT NULL,
    provider          text             NOT NULL,
    tenant            text             NOT NULL,
    kind              text             NOT NULL,
    direction         text             NOT NULL,
    status            text             NOT NULL,
    provider_status   text,
    started_at        timestamptz,
    answered_at       timestamptz,
    ended_at          timestamptz,
    -- As the provider reported them (never recomputed).
    duration_seconds  double precision,
    ring_seconds      double precision,
    talk_seconds      double precision,
    hold_seconds      double precision,
    -- The internal party: the user or agent on the call centre's side.
    user_id           text,
    user_name         text,
    user_email        text,
    user_number       text,
    -- The external party: the customer.
    external_number   text,
    external_name     text,
    external_company  text,
    -- The provider's call id (shared by the legs of one call).
    call_id           text,
    -- When the gateway received the delivery of this revision.
    received_at       timestamptz      NOT NULL,
    -- When this revision was written here.
    stored_at         timestamptz      NOT NULL DEFAULT now(),
    -- The whole event as published (schema: callstream.events.v1).
    event             jsonb            NOT NULL
);

-- Call lists and time-range reports per tenant.
CREATE INDEX events_tenant_started_at ON events (tenant, started_at DESC);
-- Look-ups by the dedup identity (what the topic is keyed by).
CREATE INDEX events_identity ON events (identity);
-- "Every call of this agent" and "every call with this customer".
CREATE INDEX events_tenant_user ON events (tenant, user_id, started_at DESC);
CREATE INDEX events_tenant_external_number ON events (tenant, external_number, started_at DESC);
-- The legs and triggers of one call.
CREATE INDEX events_call_id ON events (call_id) WHERE call_id IS NOT NULL;
