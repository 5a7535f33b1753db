-- Issue J: indexes so that ListUsers' `query` and the session prune do not scan.

-- ListUsers `query` is a case-insensitive substring of the e-mail (stored lowercased) or of the
-- username: trigram GIN indexes serve `ILIKE '%q%'` for queries of three characters or more.
-- pg_trgm is a trusted extension: the database owner may create it.
CREATE EXTENSION IF NOT EXISTS pg_trgm;
CREATE INDEX users_email_trgm_idx ON users USING gin (email gin_trgm_ops);
CREATE INDEX users_username_trgm_idx ON users USING gin (lower(username) gin_trgm_ops);

-- A session ends at the earliest of its absolute expiry, its idle expiry and its revocation
-- (LEAST ignores NULL). The prune asks for sessions that ended before a time: one index range.
CREATE INDEX sessions_end_time_idx ON sessions (LEAST(expire_time, idle_expire_time, revoke_time));
