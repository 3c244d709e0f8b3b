CREATE TABLE meetings (
    id              TEXT PRIMARY KEY,
    title           TEXT NOT NULL,
    created_by      TEXT NOT NULL,
    created_at      TEXT NOT NULL,
    current_item_id TEXT
);

CREATE TABLE agenda_items (
    id          TEXT    PRIMARY KEY,
    meeting_id  TEXT    NOT NULL REFERENCES meetings (id),
    position    INTEGER NOT NULL,
    title       TEXT    NOT NULL,
    kind        TEXT    NOT NULL CHECK (kind IN ('discussion', 'election')),
    status      TEXT    NOT NULL CHECK (status IN ('pending', 'open', 'voting', 'done')),
    election_id TEXT,
    result      TEXT
);
CREATE INDEX agenda_items_by_meeting ON agenda_items (meeting_id, position);
