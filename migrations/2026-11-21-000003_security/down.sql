ALTER TABLE server_secrets DROP COLUMN encrypted;
ALTER TABLE signing_keys DROP COLUMN encrypted;
DROP TABLE login_failures;
DROP TABLE login_throttle;
