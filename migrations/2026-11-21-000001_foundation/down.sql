DROP TABLE sessions;
DROP TABLE outbox;
