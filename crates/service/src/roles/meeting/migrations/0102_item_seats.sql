-- How many an election item's election fills; one for every item before seats existed.
ALTER TABLE agenda_items ADD COLUMN seats BIGINT NOT NULL DEFAULT 1;
