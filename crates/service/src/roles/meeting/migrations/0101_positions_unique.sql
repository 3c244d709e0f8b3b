-- Two agenda items of a meeting never share a position, whichever replica adds them.
CREATE UNIQUE INDEX agenda_items_position ON agenda_items (meeting_id, position);
