-- How many an election fills (agenda.election.create version 2); version 1 meant one.
ALTER TABLE elections ADD COLUMN seats BIGINT NOT NULL DEFAULT 1;
