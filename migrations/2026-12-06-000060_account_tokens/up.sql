-- Issue I: e-mail verification, password reset and e-mail change.
--
-- users.email_verified / email_verify_time: whether (and when) the owner proved control of the
-- address. Accounts that exist before this migration stay unverified (nobody proved anything);
-- with AUTHD_REQUIRE_VERIFIED_EMAIL=false (the default) nothing changes for them.
ALTER TABLE users
    ADD COLUMN email_verified boolean NOT NULL DEFAULT false,
    ADD COLUMN email_verify_time timestamptz NULL;

-- Single-use tokens mailed to a user, one row per token. Only the SHA-256 of the token is stored.
--   purpose      'verify_email', 'reset_password' or 'change_email'
--   new_email    for 'change_email': the address the link confirms (NULL otherwise)
--   use_time     set once, by the one UPDATE that spends the token
--   void_time    set when the token is voided unused (a password change voids reset tokens)
-- At most 3 live tokens per user and purpose (enforced by src/db/account_tokens.rs under a lock on
-- the user's row): a new token never voids the others, so a stranger requesting one cannot kill
-- the owner's link.
CREATE TABLE account_tokens (
    id uuid PRIMARY KEY,
    user_id uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    purpose text NOT NULL CHECK (purpose IN ('verify_email', 'reset_password', 'change_email')),
    token_hash bytea NOT NULL UNIQUE,
    new_email text NULL,
    create_time timestamptz NOT NULL,
    expire_time timestamptz NOT NULL,
    use_time timestamptz NULL,
    void_time timestamptz NULL
);
-- The live tokens of a user and purpose (the cap and the voiding).
CREATE INDEX account_tokens_live_idx ON account_tokens (user_id, purpose)
    WHERE use_time IS NULL AND void_time IS NULL;
-- The prune of dead tokens.
CREATE INDEX account_tokens_expire_time_idx ON account_tokens (expire_time);
