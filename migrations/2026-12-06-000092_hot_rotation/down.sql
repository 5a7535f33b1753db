ALTER TABLE sessions RESET (fillfactor);
CREATE INDEX sessions_replay_until_idx ON sessions (replay_until) WHERE replay_until IS NOT NULL;
CREATE INDEX sessions_end_time_idx ON sessions (LEAST(expire_time, idle_expire_time, revoke_time));
DROP TRIGGER sessions_prune_time_update ON sessions;
DROP TRIGGER sessions_prune_time_insert ON sessions;
DROP FUNCTION authd_session_prune_time();
ALTER TABLE sessions DROP COLUMN replay_sweep_time;
ALTER TABLE sessions DROP COLUMN prune_time;
