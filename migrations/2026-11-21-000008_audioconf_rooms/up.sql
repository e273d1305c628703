-- A room's conference line for a day, started from the room page (or `/audioconf` in it): pressing
-- again shows this line instead of booking another. The primary key makes "one per room and day"
-- hold even when two members press at once.
CREATE TABLE audioconf_rooms (
    room_id        TEXT        NOT NULL,
    day            DATE        NOT NULL,
    conference_id  BIGINT      NOT NULL REFERENCES audioconf_conferences (id) ON DELETE CASCADE,
    -- The agent who started it (only they may close it), and the message that announced it.
    booked_by      TEXT        NOT NULL,
    event_id       TEXT,
    created_at     TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (room_id, day)
);
CREATE INDEX audioconf_rooms_conference ON audioconf_rooms (conference_id);
