-- Issue J, P4: a rotation (db::sessions::rotate) is a HOT update: no index of `sessions` covers a
-- column it changes, so it writes no index entry and its dead versions are pruned on the page.
--
-- Before this, every rotation changed `idle_expire_time` (in the expression of
-- `sessions_end_time_idx`) and `replay_until` (`sessions_replay_until_idx`), so PostgreSQL
-- inserted into all four indexes of the table on every refresh. Both indexes give way to columns a
-- rotation leaves alone in the steady state:
--
--   prune_time         a lower bound of the session's end, LEAST(expire_time, idle_expire_time,
--                      revoke_time): set when the row is inserted and when it is revoked (the
--                      triggers below), never by a rotation, which only moves idle_expire_time
--                      later; NULL (rows from before this migration) means not known yet. The prune (db::sessions::prune) reads the sessions whose prune_time
--                      passed: it deletes those that ended and moves the others' prune_time up
--                      to their end, so each live session is visited at most once per idle period.
--   replay_sweep_time  when the replay sweep (db::sessions::clear_replays) must next look at the
--                      row. A rotation sets it only when it is NULL (to the window's end), so
--                      rotations inside a pending window do not change it; the sweep clears the
--                      boxes whose window ended and moves the others' sweep time to their window's
--                      end.
--
-- Existing rows are not rewritten (an installation with a million sessions would wait for that under
-- this migration's lock): their prune_time stays NULL, which the prune reads as "due" (an index
-- probe for NULL) and fills in. Only the few rows inside a grace window get a sweep time.
ALTER TABLE sessions ADD COLUMN prune_time timestamptz NULL;
ALTER TABLE sessions ADD COLUMN replay_sweep_time timestamptz NULL;
UPDATE sessions SET replay_sweep_time = replay_until WHERE replay_until IS NOT NULL;

CREATE FUNCTION authd_session_prune_time() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        NEW.prune_time := LEAST(NEW.expire_time, NEW.idle_expire_time, NEW.revoke_time);
    ELSE
        NEW.prune_time := LEAST(NEW.prune_time, NEW.expire_time, NEW.idle_expire_time, NEW.revoke_time);
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER sessions_prune_time_insert
    BEFORE INSERT ON sessions
    FOR EACH ROW
    EXECUTE FUNCTION authd_session_prune_time();

-- Only statements that name these columns (a revocation, an expiry cut short): never a rotation.
CREATE TRIGGER sessions_prune_time_update
    BEFORE UPDATE OF revoke_time, expire_time ON sessions
    FOR EACH ROW
    EXECUTE FUNCTION authd_session_prune_time();

CREATE INDEX sessions_prune_time_idx ON sessions (prune_time);
CREATE INDEX sessions_replay_sweep_time_idx ON sessions (replay_sweep_time)
    WHERE replay_sweep_time IS NOT NULL;
DROP INDEX sessions_end_time_idx;
DROP INDEX sessions_replay_until_idx;

-- Room on each page for the new version of a rotated row (HOT needs it on the same page).
ALTER TABLE sessions SET (fillfactor = 80);
