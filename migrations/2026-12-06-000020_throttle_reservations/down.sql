DROP TABLE login_known_clients;
DROP TABLE login_guard;
ALTER TABLE login_failures DROP COLUMN id;
