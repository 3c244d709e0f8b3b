-- Shared by every role: events waiting to be published, and events already applied.

-- Events committed with the state change that caused them, until the broker confirms them.
CREATE TABLE outbox (
    seq             INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id        TEXT    NOT NULL UNIQUE,
    event_type      TEXT    NOT NULL,
    producer        TEXT    NOT NULL,
    correlation_id  TEXT,
    body            BLOB    NOT NULL,
    created_at_ms   INTEGER NOT NULL,
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_ms INTEGER NOT NULL DEFAULT 0,
    last_error      TEXT
);
CREATE INDEX outbox_due ON outbox (next_attempt_ms, seq);

-- The event_id of every event this role applied, written in the same transaction as its effect.
CREATE TABLE inbox (
    event_id      TEXT    PRIMARY KEY,
    event_type    TEXT    NOT NULL,
    applied_at_ms INTEGER NOT NULL
);
