-- Issue I, "TOTP second factor (RFC 6238) with recovery codes" (src/domain/mfa).
--
-- sessions.amr: the authentication methods (RFC 8176) of the login that opened the session:
-- {pwd}, or {pwd,otp} after a second factor. Access tokens carry it; Refresh keeps it.
ALTER TABLE sessions ADD COLUMN amr text[] NOT NULL DEFAULT '{pwd}';

-- One row per account that has TOTP on or an enrolment pending.
--   seed / seed_sealed        the active 20-byte seed; sealed under AUTHD_MASTER_KEY
--                             (XChaCha20-Poly1305, bound to "totp_seed:<user id>") when
--                             `seed_sealed`. NULL while only an enrolment is pending.
--   pending_seed / pending_sealed  the seed of an enrolment awaiting ConfirmTotp.
--   last_step                 the newest accepted time step (unix time / 30): a code is accepted
--                             only for a later step, checked and set in one UPDATE (no replay).
--   failures                  consecutive wrong codes across logins (a right code resets it).
--   lock_level / locked_until the escalating lock after too many failures.
CREATE TABLE user_totp (
    user_id uuid PRIMARY KEY REFERENCES users (id) ON DELETE CASCADE,
    seed bytea NULL,
    seed_sealed boolean NOT NULL DEFAULT false,
    pending_seed bytea NULL,
    pending_sealed boolean NOT NULL DEFAULT false,
    enable_time timestamptz NULL,
    last_step bigint NOT NULL DEFAULT -1,
    failures integer NOT NULL DEFAULT 0,
    lock_level integer NOT NULL DEFAULT 0,
    locked_until timestamptz NULL,
    update_time timestamptz NOT NULL
);

-- Single-use recovery codes, stored as HMAC-SHA256 (server secret `recovery_code_hmac`) of the
-- user id and the normalized code.
CREATE TABLE recovery_codes (
    code_hash bytea PRIMARY KEY,
    user_id uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    create_time timestamptz NOT NULL,
    use_time timestamptz NULL
);
CREATE INDEX recovery_codes_user_idx ON recovery_codes (user_id);

-- The second step of a login with TOTP on: the SHA-256 of an `mfa_` token, single use, bound to
-- the user and to the login's client (its session gets that address and user agent).
CREATE TABLE mfa_challenges (
    token_hash bytea PRIMARY KEY,
    user_id uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    create_time timestamptz NOT NULL,
    expire_time timestamptz NOT NULL,
    use_time timestamptz NULL,
    failures integer NOT NULL DEFAULT 0,
    ip_address text NOT NULL,
    user_agent text NOT NULL
);
CREATE INDEX mfa_challenges_user_idx ON mfa_challenges (user_id);
CREATE INDEX mfa_challenges_expire_idx ON mfa_challenges (expire_time);
