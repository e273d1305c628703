-- The daily limit per address counts the address's Tchap bookings of the last 24 hours: without
-- this index that count read every conference of the day.
CREATE INDEX audioconf_conferences_email ON audioconf_conferences (email_hmac, created_at);
