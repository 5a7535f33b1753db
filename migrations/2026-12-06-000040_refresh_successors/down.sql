CREATE OR REPLACE FUNCTION authd_session_revoked() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO session_revocations (session_id, revoke_time) VALUES (NEW.id, NEW.revoke_time);
    RETURN NULL;
END
$$;

CREATE OR REPLACE FUNCTION authd_session_deleted() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO session_revocations (session_id, revoke_time) VALUES (OLD.id, now());
    RETURN NULL;
END
$$;

DROP INDEX session_revocations_keep_until;
ALTER TABLE session_revocations DROP COLUMN keep_until;
ALTER TABLE sessions DROP COLUMN access_expire_time;
DROP INDEX sessions_replay_until_idx;
ALTER TABLE sessions DROP COLUMN rotate_ip;
ALTER TABLE sessions DROP COLUMN replay_until;
ALTER TABLE sessions DROP COLUMN replay_box;
