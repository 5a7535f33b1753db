DROP TABLE account_tokens;
ALTER TABLE users DROP COLUMN email_verify_time, DROP COLUMN email_verified;
