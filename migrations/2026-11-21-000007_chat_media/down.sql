DROP TABLE chat_media;
