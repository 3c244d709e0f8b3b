CREATE TABLE ballots (
    id             TEXT PRIMARY KEY,
    election_id    TEXT NOT NULL UNIQUE,
    meeting_id     TEXT NOT NULL,
    agenda_item_id TEXT NOT NULL,
    options        TEXT NOT NULL, -- JSON array of candidate names
    status         TEXT NOT NULL CHECK (status IN ('open', 'closed')),
    tally          TEXT,          -- JSON object, set when closed
    created_at     TEXT NOT NULL,
    closed_at      TEXT
);

CREATE TABLE votes (
    ballot_id TEXT NOT NULL REFERENCES ballots (id),
    user_id   TEXT NOT NULL,
    choice    TEXT NOT NULL,
    cast_at   TEXT NOT NULL,
    PRIMARY KEY (ballot_id, user_id)
);
