CREATE TABLE elections (
    id             TEXT PRIMARY KEY,
    meeting_id     TEXT NOT NULL,
    agenda_item_id TEXT NOT NULL,
    title          TEXT NOT NULL,
    status         TEXT NOT NULL CHECK (status IN ('nominating', 'voting', 'finalized', 'cancelled')),
    result         TEXT,
    created_at     TEXT NOT NULL,
    updated_at     TEXT NOT NULL,
    UNIQUE (meeting_id, agenda_item_id)
);

CREATE TABLE nominations (
    election_id  TEXT    NOT NULL REFERENCES elections (id),
    candidate    TEXT    NOT NULL,
    nominated_by TEXT    NOT NULL,
    position     INTEGER NOT NULL,
    created_at   TEXT    NOT NULL,
    PRIMARY KEY (election_id, candidate)
);
