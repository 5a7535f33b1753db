-- Seeds :n users, each with one live session and a refresh token, by SQL (no bcrypt), for the P4
-- refresh benchmark (scripts/benchmarks.sh). Prints the refresh tokens, one per line.
--
--   psql -v n=1024 -At -f scripts/seed-refresh-sessions.sql authd > tokens
--
-- The tokens have the previous format (`rt_` and random characters, a `refresh_tokens` row each),
-- since minting the current format needs the server secret's MAC: the first refresh of each
-- rotates it into the current format (src/domain/opaque.rs), so authd-bench's warm-up (at least
-- one pass over every token) leaves only current-format single-UPDATE refreshes in the measurement.
-- The users have no usable password (a hash that no bcrypt verify accepts).
\set ON_ERROR_STOP 1
BEGIN;
CREATE TEMP TABLE bench_seed ON COMMIT DROP AS
SELECT gen_random_uuid() AS user_id, gen_random_uuid() AS session_id,
       'rt_' || md5(random()::text) || md5(random()::text) AS token,
       i
FROM generate_series(1, :n) AS i;
INSERT INTO users (id, email, first_name, last_name, password_hash, role, active, create_time, update_time)
SELECT user_id, 'seed-' || session_id || '@bench.invalid', 'Seed', 'User', '!seeded-no-password', 'user', true,
       now(), now()
FROM bench_seed;
INSERT INTO sessions (id, user_id, generation, create_time, last_use_time, idle_expire_time, expire_time,
                      user_agent, ip_address, access_expire_time)
SELECT session_id, user_id, 0, now(), now(), now() + interval '7 days', now() + interval '30 days',
       'seed-refresh-sessions.sql', '127.0.0.1', now() + interval '15 minutes'
FROM bench_seed;
INSERT INTO refresh_tokens (token_hash, session_id, generation, create_time)
SELECT sha256(convert_to(token, 'UTF8')), session_id, 0, now() FROM bench_seed;
SELECT token FROM bench_seed ORDER BY i;
COMMIT;
