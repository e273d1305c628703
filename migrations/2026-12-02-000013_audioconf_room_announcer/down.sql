ALTER TABLE audioconf_rooms DROP COLUMN announcing_until;
