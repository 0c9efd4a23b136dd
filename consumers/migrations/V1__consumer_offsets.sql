-- Kafka positions of the consumers that write to PostgreSQL, stored in the
-- same transaction as their rows: this table, not Kafka's committed
-- offsets, decides where a consumer resumes.
CREATE TABLE consumer_offsets (
    consumer_group text   NOT NULL,
    topic          text   NOT NULL,
    partition      int    NOT NULL,
    -- The next offset to process.
    next_offset    bigint NOT NULL,
    updated_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer_group, topic, partition)
);
