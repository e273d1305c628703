DROP TABLE audioconf_rooms;
