-- Issue I: password reset requests.
--
-- RequestPasswordReset does the same work for a known and an unknown address: it inserts one row
-- here and nothing else, so its reply (and its time) says nothing about accounts. A background job
-- on any replica claims unprocessed rows (FOR UPDATE SKIP LOCKED); for an active account it creates
-- a reset token (account_tokens) and queues the mail in the same transaction; every row is then
-- marked processed.
--   email           normalised like Login does (trimmed, lowercased)
--   client_address  the client's rate-limit key: an IPv4 address or an IPv6 /64 ('' when unknown)
-- The rows also count the per-address and per-client rate limits (the last hour); processed rows
-- are pruned once they are out of that window.
CREATE TABLE password_reset_requests (
    id uuid PRIMARY KEY,
    email text NOT NULL,
    client_address text NOT NULL DEFAULT '',
    create_time timestamptz NOT NULL,
    processed_time timestamptz NULL
);
-- The job's queue.
CREATE INDEX password_reset_requests_unprocessed_idx ON password_reset_requests (create_time)
    WHERE processed_time IS NULL;
-- The rate limits.
CREATE INDEX password_reset_requests_email_idx ON password_reset_requests (email, create_time);
CREATE INDEX password_reset_requests_client_idx
    ON password_reset_requests (client_address, create_time);
