-- Issue I: e-mail verification and e-mail change.
--
-- account_tokens.session_id: for 'change_email', the session that asked for the change. Confirming
-- the change revokes the user's other sessions, as a password change does; this one stays.
ALTER TABLE account_tokens ADD COLUMN session_id uuid NULL;

-- ResendVerification requests. The reply path does the same work for every address (one lookup of
-- the address, the rate-limit counts, one insert here) and a background job turns the requests of
-- active, unverified accounts into verification messages: the reply reveals nothing, not even in
-- its timing.
--   email_hash    SHA-256 of the normalized address asked for (the per-address limit; the job
--                 checks that it is still the account's address). No address is stored.
--   user_id       the account that had that address at request time, NULL for none (no foreign
--                 key, so that known and unknown addresses cost the same insert)
--   client        the client key (IPv4 address or IPv6 /64) for the per-IP limit; '' if unknown
--   process_time  set by the job once handled; rows are pruned a day later
CREATE TABLE verification_requests (
    id uuid PRIMARY KEY,
    email_hash bytea NOT NULL,
    user_id uuid NULL,
    client text NOT NULL,
    create_time timestamptz NOT NULL,
    process_time timestamptz NULL
);
CREATE INDEX verification_requests_email_idx ON verification_requests (email_hash, create_time);
CREATE INDEX verification_requests_client_idx ON verification_requests (client, create_time);
CREATE INDEX verification_requests_pending_idx ON verification_requests (create_time)
    WHERE process_time IS NULL;
