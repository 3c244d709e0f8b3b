-- Two nominations of an election never share a position, whichever replica adds them.
CREATE UNIQUE INDEX nominations_position ON nominations (election_id, position);
