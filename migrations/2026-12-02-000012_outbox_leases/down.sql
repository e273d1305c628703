ALTER TABLE outbox DROP COLUMN lease_owner, DROP COLUMN lease_until;
