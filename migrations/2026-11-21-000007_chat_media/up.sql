-- The media a session was shown in a room's history (or uploaded there): the media proxy serves
-- only these, and only while the session is still a member of that room. Matrix media are not
-- access-controlled by room on the homeserver; the portal is.
CREATE TABLE chat_media (
    session_id BIGINT NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    mxc TEXT NOT NULL,
    room_id TEXT NOT NULL,
    seen_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (session_id, mxc)
);
