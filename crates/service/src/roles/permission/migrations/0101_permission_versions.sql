-- The version of the last change to each user's role on each meeting, granted or revoked:
-- carried by permission.granted / permission.revoked so consumers apply them in order.
CREATE TABLE permission_versions (
    meeting_id TEXT   NOT NULL,
    user_id    TEXT   NOT NULL,
    role       TEXT   NOT NULL,
    version    BIGINT NOT NULL,
    PRIMARY KEY (meeting_id, user_id, role)
);
