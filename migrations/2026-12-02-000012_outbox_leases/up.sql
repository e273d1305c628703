-- A mail is claimed by one worker at a time for a while (its lease): the worker sends it and marks
-- it sent in its own commit; if the worker dies, the lease runs out and another takes the mail over.
ALTER TABLE outbox ADD COLUMN lease_owner text, ADD COLUMN lease_until timestamptz;
