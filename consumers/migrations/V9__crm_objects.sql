-- CRM delivery at the call level (callstream-crm, HubSpot targets): what
-- each target holds for each call, so a revision becomes an update of the
-- same object and a replay creates nothing.

-- One row per (target, key): `key` is a call key, or an event identity
-- for an event that names no call (an SMS). `object_id` is NULL while a
-- create is in flight, or its answer was lost: the next attempt looks the
-- object up by its `callstream_call_key` property before creating again.
CREATE TABLE crm_objects (
    target      text COLLATE "C" NOT NULL,
    key         text COLLATE "C" NOT NULL,
    object_type text             NOT NULL,
    object_id   text,
    -- The revision the object holds (0 before the first success).
    revision    bigint           NOT NULL DEFAULT 0,
    -- The contact it is associated with, if any.
    contact_id  text,
    -- The event identities it records (a call's events), to find the
    -- object of an archived recording.
    identities  text[] COLLATE "C" NOT NULL DEFAULT '{}',
    updated_at  timestamptz      NOT NULL DEFAULT now(),
    PRIMARY KEY (target, key)
);
CREATE INDEX crm_objects_identities ON crm_objects USING gin (identities);

-- Contacts found or created per external number (E.164 when it could be
-- normalized, else as the provider wrote it): HubSpot's search lags its
-- writes, so two calls from a new number a second apart must not create
-- two contacts.
CREATE TABLE crm_contacts (
    target      text COLLATE "C" NOT NULL,
    number      text COLLATE "C" NOT NULL,
    contact_id  text             NOT NULL,
    company_id  text,
    PRIMARY KEY (target, number)
);

-- Archived copies of recordings (callstream.recordings.v1), by the event
-- identity they came from: a call's engagement points at the archive, not
-- at the provider's expiring link.
CREATE TABLE crm_recordings (
    identity    text COLLATE "C" NOT NULL,
    media       text             NOT NULL,
    position    integer          NOT NULL,
    location    text             NOT NULL,
    PRIMARY KEY (identity, media, position)
);
