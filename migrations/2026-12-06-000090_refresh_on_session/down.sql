ALTER TABLE sessions DROP COLUMN refresh_hash;
