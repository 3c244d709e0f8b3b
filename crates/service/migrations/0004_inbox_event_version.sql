-- The event_version each applied event arrived in, before it was upcast (docs/architecture.md §3).
ALTER TABLE inbox ADD COLUMN event_version BIGINT;
