-- Issue J: indexes so that ListUsers' `query` and the session prune do not scan.

-- ListUsers `query` is a case-insensitive prefix of the e-mail (stored lowercased), of the
-- e-mail's domain, or of the username: `LIKE 'q%'` ranges on these btree indexes, whatever the
-- database's collation (text_pattern_ops compares bytes, as LIKE does).
CREATE INDEX users_email_prefix_idx ON users (email text_pattern_ops);
CREATE INDEX users_username_prefix_idx ON users (lower(username) text_pattern_ops);
CREATE INDEX users_email_domain_prefix_idx ON users (split_part(email, '@', 2) text_pattern_ops);

-- A session ends at the earliest of its absolute expiry, its idle expiry and its revocation
-- (LEAST ignores NULL). The prune asks for sessions that ended before a time: one index range.
CREATE INDEX sessions_end_time_idx ON sessions (LEAST(expire_time, idle_expire_time, revoke_time));
