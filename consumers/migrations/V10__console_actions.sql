-- What was done in the ops console (callstream-console): who, when, to
-- which dead letter, and what came of it. Written before the action's
-- answer is shown, never updated or deleted by callstream.
CREATE TABLE console_actions (
    id          bigserial   PRIMARY KEY,
    at          timestamptz NOT NULL DEFAULT now(),
    -- The signed-in user (console.users.<name>).
    actor       text        NOT NULL,
    -- `dry-run` or `redeliver`.
    action      text        NOT NULL,
    -- The letter: `<topic>:<partition>:<offset>`.
    letter      text        NOT NULL,
    -- ok, failed, or what the run reported (unchanged, still failing, ...).
    outcome     text        NOT NULL,
    -- What was (or, for a dry run, would be) published or sent: event ids,
    -- target, the run's report.
    detail      jsonb       NOT NULL
);
CREATE INDEX console_actions_at ON console_actions (at DESC);
