DROP TABLE audioconf_conferences;
DROP TABLE audioconf_requests;
DROP TABLE audioconf_domains;
