-- callstream-analytics: call-centre KPIs rolled up per tenant, interval
-- (1 and 15 minutes, by the event's own time), provider, direction and
-- dimension. The tables hold additive counters only; rates and averages
-- are the views below.
--
-- kpi_events records what each event contributed, so an update (a higher
-- revision) can take its old contribution back before adding the new one,
-- and a resend or a replay never counts twice. The rollups always equal
-- the sums of kpi_events grouped by their keys (and can be rebuilt so).

CREATE TABLE kpi_events (
    event_id          uuid             PRIMARY KEY,
    -- The revision counted; only a higher one replaces it.
    revision          int              NOT NULL,
    tenant            text             NOT NULL,
    provider          text             NOT NULL,
    kind              text             NOT NULL,
    direction         text             NOT NULL,
    status            text             NOT NULL,
    -- The time the event is bucketed by: started_at, else received_at.
    event_at          timestamptz      NOT NULL,
    -- The agent (internal party: id, else email, else number, else name).
    agent             text,
    -- The external-facing number (the internal party's number).
    number            text,
    -- This event's contribution: 0/1 counts and seconds.
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

-- The rollups: one row per tenant × interval × bucket × provider × direction
-- and dimension: `all` (the whole call centre), `agent` or `number`.
CREATE TABLE kpi_rollups (
    tenant            text             NOT NULL,
    -- 1 or 15.
    interval_minutes  int              NOT NULL,
    -- Start of the interval (UTC, aligned to the hour).
    bucket_start      timestamptz      NOT NULL,
    provider          text             NOT NULL,
    direction         text             NOT NULL,
    dimension         text             NOT NULL CHECK (dimension IN ('all', 'agent', 'number')),
    -- The agent or the number; '' for `all`.
    dimension_value   text             NOT NULL,
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
    PRIMARY KEY (tenant, dimension, interval_minutes, bucket_start, provider, direction, dimension_value)
);
-- One agent or one number over time.
CREATE INDEX kpi_rollups_value ON kpi_rollups (tenant, dimension, dimension_value, interval_minutes, bucket_start);

-- Every rollup with its rates and averages (NULL where the denominator is 0).
CREATE VIEW kpi_report AS
SELECT *,
       calls_answered::double precision / NULLIF(calls_offered, 0) AS answer_rate,
       talk_seconds_sum / NULLIF(talk_count, 0) AS avg_talk_seconds,
       ring_seconds_sum / NULLIF(ring_count, 0) AS avg_ring_seconds
FROM kpi_rollups;

-- The three reports people ask for.
CREATE VIEW kpi_by_interval AS SELECT * FROM kpi_report WHERE dimension = 'all';
CREATE VIEW kpi_by_agent AS
SELECT *, dimension_value AS agent FROM kpi_report WHERE dimension = 'agent';
CREATE VIEW kpi_by_number AS
SELECT *, dimension_value AS number FROM kpi_report WHERE dimension = 'number';
