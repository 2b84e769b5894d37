-- Notifications. The audit chains are the outbox: each notify block keeps, per chain, the
-- position up to which its events were delivered or given up, and each attempt to deliver one
-- is recorded (bounded: the server prunes the oldest rows).
CREATE TABLE notify_cursors (
    notify     TEXT   NOT NULL,
    chain      TEXT   NOT NULL,
    seq        BIGINT NOT NULL,
    updated_at TEXT   NOT NULL,
    PRIMARY KEY (notify, chain)
);
CREATE TABLE notify_deliveries (
    notify  TEXT   NOT NULL,
    event   TEXT   NOT NULL,
    attempt BIGINT NOT NULL,
    at      TEXT   NOT NULL,
    -- The HTTP status the receiver answered, or the error that kept it from answering.
    status  BIGINT,
    error   TEXT,
    -- delivered, failed (tried again later) or given-up.
    outcome TEXT   NOT NULL,
    PRIMARY KEY (notify, event, attempt)
);
CREATE INDEX notify_deliveries_at ON notify_deliveries (at);
