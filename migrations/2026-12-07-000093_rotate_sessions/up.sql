-- Issue J, P4: the rotation of many sessions' refresh tokens in one statement
-- (db::rotations::rotate_many). Concurrent refreshes are written by one UPDATE (group commit,
-- domain::sessions::rotations), one row of `unnest` per rotation, each with the guards and writes
-- of a single rotation (db::rotations::rotate, which a batch of one still sends: keep the two in
-- step): the session, its generation and the presented token's hash (NULL for a token of the
-- previous format, whose session row has no hash yet), and a live session. It returns, for each
-- rotation that matched, its position in the arrays (from 1) and what a token needs of the session
-- and its user.
--
-- It is a function for its settings, first `plan_cache_mode = force_generic_plan`. As a prepared
-- statement sent by authd, PostgreSQL would plan it again on every execution: with the arrays'
-- sizes known, a custom plan looks cheaper than the generic one (which guesses 10 rows per array),
-- so the plan cache keeps choosing custom plans, and planning the three-way join cost more CPU than
-- the rotations themselves (over half of PostgreSQL's CPU in `perf`). PL/pgSQL keeps the
-- statement's plan for the connection, and the setting makes it the generic plan, planned once.
--
-- The plan must read `sessions` through its primary key (`s.id = ANY(...)`) whatever the table's
-- size and statistics when a connection first plans it: a generic plan made while the table was
-- small or not yet analyzed would otherwise read it whole, on every call of that connection, for
-- as long as the plan lives. `enable_seqscan = off` rules that out; the statement only ever touches
-- the sessions it names and their users.
CREATE FUNCTION authd_rotate_sessions(
    p_session_id uuid[], p_generation integer[], p_presented_hash bytea[], p_successor_hash bytea[],
    p_now timestamptz[], p_idle_expire_time timestamptz[], p_access_expire_time timestamptz[],
    p_replay_box bytea[], p_replay_until timestamptz[], p_rotate_ip text[])
RETURNS TABLE (ord bigint, id uuid, user_id uuid, idle_expire_time timestamptz,
               expire_time timestamptz, amr text[], user_email text, user_username text,
               user_role text, user_active boolean)
LANGUAGE plpgsql
SET plan_cache_mode = force_generic_plan
SET enable_seqscan = off
AS $$
#variable_conflict use_column
BEGIN
    RETURN QUERY
    UPDATE sessions s SET generation = s.generation + 1, refresh_hash = v.successor_hash,
        last_use_time = v.now, idle_expire_time = LEAST(v.idle_expire_time, s.expire_time),
        access_expire_time = GREATEST(s.access_expire_time,
            LEAST(v.access_expire_time, v.idle_expire_time, s.expire_time)),
        replay_box = v.replay_box, replay_until = v.replay_until,
        -- As in db::rotations::rotate: set only when no sweep is pending (HOT, migration 000092).
        replay_sweep_time = COALESCE(s.replay_sweep_time, v.replay_until),
        rotate_ip = v.rotate_ip
    FROM unnest(p_session_id, p_generation, p_presented_hash, p_successor_hash, p_now,
                p_idle_expire_time, p_access_expire_time, p_replay_box, p_replay_until,
                p_rotate_ip)
         WITH ORDINALITY AS v(session_id, generation, presented_hash, successor_hash, now,
                              idle_expire_time, access_expire_time, replay_box, replay_until,
                              rotate_ip, ord),
         users u
    WHERE s.id = ANY(p_session_id) AND s.id = v.session_id AND s.generation = v.generation
      AND s.refresh_hash IS NOT DISTINCT FROM v.presented_hash AND s.revoke_time IS NULL
      AND s.expire_time > v.now AND s.idle_expire_time > v.now AND u.id = s.user_id
    RETURNING v.ord, s.id, s.user_id, s.idle_expire_time, s.expire_time, s.amr,
              u.email, u.username, u.role, u.active;
END
$$;
