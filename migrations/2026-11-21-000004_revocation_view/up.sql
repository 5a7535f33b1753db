-- Tombstones of ended sessions, for the in-memory revocation view that every replica keeps so that
-- ValidateToken and bearer-token checks need no database round trip (see src/domain/revocation.rs).
--
-- A row is written by trigger whenever a live session is revoked, or deleted (an account deletion
-- cascades to its sessions), so no code path can end a session without one. Replicas poll for rows
-- newer than their watermark; `xid` (the writing transaction) lets a poll know which rows can no
-- longer appear behind it: every transaction older than the snapshot's xmin has finished.
CREATE TABLE session_revocations (
    session_id  uuid        NOT NULL,
    revoke_time timestamptz NOT NULL,
    xid         xid8        NOT NULL DEFAULT pg_current_xact_id()
);
CREATE INDEX session_revocations_xid ON session_revocations (xid);
CREATE INDEX session_revocations_revoke_time ON session_revocations (revoke_time);

CREATE FUNCTION authd_session_revoked() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO session_revocations (session_id, revoke_time) VALUES (NEW.id, NEW.revoke_time);
    RETURN NULL;
END
$$;

CREATE FUNCTION authd_session_deleted() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO session_revocations (session_id, revoke_time) VALUES (OLD.id, now());
    RETURN NULL;
END
$$;

CREATE TRIGGER sessions_revoked
    AFTER UPDATE OF revoke_time ON sessions
    FOR EACH ROW
    WHEN (OLD.revoke_time IS NULL AND NEW.revoke_time IS NOT NULL)
    EXECUTE FUNCTION authd_session_revoked();

-- Only live sessions need a tombstone: a revoked one has one already, and an expired one has no
-- unexpired access tokens (access tokens never outlive their session's idle or absolute expiry).
CREATE TRIGGER sessions_deleted
    AFTER DELETE ON sessions
    FOR EACH ROW
    WHEN (OLD.revoke_time IS NULL AND OLD.expire_time > now() AND OLD.idle_expire_time > now())
    EXECUTE FUNCTION authd_session_deleted();
