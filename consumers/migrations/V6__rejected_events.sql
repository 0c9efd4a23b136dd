-- Records a PostgreSQL consumer could not write because PostgreSQL refused
-- their content (SQLSTATE classes 22 data exception, 23 integrity
-- constraint, 54 program limit: a NUL character in a text value, an
-- identifier longer than an index entry may be). Each is set aside here, in
-- the same transaction that moves the partition's position past it, so one
-- such record no longer stops its consumer. The record is kept as received
-- (bytea: it may hold what text cannot); `event_id` and `revision` find
-- the event, and replaying the offset from Kafka gives it again.
CREATE TABLE rejected_events (
    consumer_group text        NOT NULL,
    topic          text        NOT NULL,
    partition      int         NOT NULL,
    record_offset  bigint      NOT NULL,
    event_id       uuid        NOT NULL,
    revision       int         NOT NULL,
    sqlstate       text        NOT NULL,
    error          text        NOT NULL,
    record         bytea       NOT NULL,
    rejected_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer_group, topic, partition, record_offset)
);
