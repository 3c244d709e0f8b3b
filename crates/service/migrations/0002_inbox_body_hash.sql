-- A digest of each applied event's envelope: the same event_id arriving with another body is
-- a conflict to park, not a duplicate to acknowledge.
ALTER TABLE inbox ADD COLUMN body_hash TEXT;
