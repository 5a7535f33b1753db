-- Issue F, items 4 and 5: random refresh-token successors with a grace-replay box, and tombstones
-- that last as long as the access tokens of their session.

-- What a grace replay needs, for the grace window only (see src/domain/opaque.rs):
--   replay_box   the current refresh token (the successor of the one just spent), sealed with
--                ChaCha20-Poly1305 under a key derived (HKDF-SHA256) from the spent token: a 12-byte
--                nonce, then the ciphertext. Only a holder of the spent token can open it.
--   replay_until end of the window; past it the box is never opened and the sweep clears all three.
--   rotate_ip    the address of the client whose refresh spent the token (the replay binding).
-- All three are NULL outside a grace window.
ALTER TABLE sessions ADD COLUMN replay_box bytea NULL;
ALTER TABLE sessions ADD COLUMN replay_until timestamptz NULL;
ALTER TABLE sessions ADD COLUMN rotate_ip text NULL;
CREATE INDEX sessions_replay_until_idx ON sessions (replay_until) WHERE replay_until IS NOT NULL;

-- The latest `exp` of any access token issued for the session (login, refresh, grace replay). A
-- tombstone is kept until then. Access tokens never outlive the session's idle or absolute expiry,
-- so the tombstone takes the least of the three: sessions from before this migration, and sessions
-- written by a replica of the previous version during a rolling upgrade, keep the default
-- 'infinity' and so get the latest exp a token of theirs can carry. (A constant default adds the
-- column without rewriting the table.)
ALTER TABLE sessions ADD COLUMN access_expire_time timestamptz NOT NULL DEFAULT 'infinity';

-- Tombstones: kept (in the database and in every replica's view) until `keep_until`, the latest
-- exp of the session's access tokens, whatever the replicas' own token lifetimes. Existing ones
-- are kept for the day the database kept them at least before, or until their session's last token
-- can have expired if that is sooner.
ALTER TABLE session_revocations ADD COLUMN keep_until timestamptz NULL;
UPDATE session_revocations r SET keep_until = LEAST(
    r.revoke_time + interval '1 day',
    (SELECT LEAST(s.idle_expire_time, s.expire_time) FROM sessions s WHERE s.id = r.session_id));
ALTER TABLE session_revocations ALTER COLUMN keep_until SET NOT NULL;
CREATE INDEX session_revocations_keep_until ON session_revocations (keep_until);

CREATE OR REPLACE FUNCTION authd_session_revoked() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO session_revocations (session_id, revoke_time, keep_until)
        VALUES (NEW.id, NEW.revoke_time,
                LEAST(NEW.access_expire_time, NEW.idle_expire_time, NEW.expire_time));
    RETURN NULL;
END
$$;

CREATE OR REPLACE FUNCTION authd_session_deleted() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO session_revocations (session_id, revoke_time, keep_until)
        VALUES (OLD.id, now(), LEAST(OLD.access_expire_time, OLD.idle_expire_time, OLD.expire_time));
    RETURN NULL;
END
$$;
