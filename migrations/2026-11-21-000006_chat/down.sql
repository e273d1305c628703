DROP TABLE chat_rooms;
DROP TABLE chat_sync;
