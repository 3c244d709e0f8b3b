CREATE TABLE meetings (
    id         TEXT PRIMARY KEY,
    title      TEXT NOT NULL,
    created_by TEXT NOT NULL
);

CREATE TABLE permissions (
    meeting_id TEXT NOT NULL REFERENCES meetings (id),
    user_id    TEXT NOT NULL,
    role       TEXT NOT NULL,
    granted_by TEXT NOT NULL,
    granted_at TEXT NOT NULL,
    PRIMARY KEY (meeting_id, user_id, role)
);
