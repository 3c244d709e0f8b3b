-- The local copy of permission.granted / permission.revoked kept by roles that enforce them.
CREATE TABLE grants (
    meeting_id TEXT NOT NULL,
    user_id    TEXT NOT NULL,
    role       TEXT NOT NULL,
    PRIMARY KEY (meeting_id, user_id, role)
);
