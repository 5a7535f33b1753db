DROP TABLE mfa_challenges;
DROP TABLE recovery_codes;
DROP TABLE user_totp;
ALTER TABLE sessions DROP COLUMN amr;
