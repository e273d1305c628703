-- Who announces a room's line: the member whose press claimed it, until this time (a lease, so a
-- member whose announcement never finished does not keep the room from ever being told). Two
-- members pressing at once: one claim, one message in the room.
ALTER TABLE audioconf_rooms ADD COLUMN announcing_until TIMESTAMPTZ;
