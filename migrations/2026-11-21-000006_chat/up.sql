-- Tchap Web léger: what the pages need from the homeserver, per portal session, kept up to date by
-- incremental syncs (a page pays only for what changed since the last one).
CREATE TABLE chat_sync (
    session_id  BIGINT      PRIMARY KEY REFERENCES sessions (id) ON DELETE CASCADE,
    next_batch  TEXT        NOT NULL,
    synced_at   TIMESTAMPTZ NOT NULL
);

CREATE TABLE chat_rooms (
    session_id    BIGINT      NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    room_id       TEXT        NOT NULL,
    membership    TEXT        NOT NULL CHECK (membership IN ('join', 'invite')),
    -- The room's name, else its canonical alias.
    name          TEXT,
    -- Tchap's room types: forum (public), private, external (open to external accounts), direct.
    kind          TEXT        NOT NULL DEFAULT 'private',
    join_rule     TEXT,
    access_rule   TEXT,
    is_direct     BOOLEAN     NOT NULL DEFAULT FALSE,
    encrypted     BOOLEAN     NOT NULL DEFAULT FALSE,
    inviter       TEXT,
    heroes        TEXT[]      NOT NULL DEFAULT '{}',
    last_ts       TIMESTAMPTZ,
    last_sender   TEXT,
    last_preview  TEXT,
    unread        INTEGER     NOT NULL DEFAULT 0,
    highlight     INTEGER     NOT NULL DEFAULT 0,
    PRIMARY KEY (session_id, room_id)
);

-- The room list, by last activity (invitations are few and listed first).
CREATE INDEX chat_rooms_list ON chat_rooms (session_id, last_ts DESC NULLS LAST);
