-- Core schema: accounts, sessions with their refresh-token family, signing keys, server secrets, service keys.

CREATE TABLE users (
    id              uuid PRIMARY KEY,
    -- Stored trimmed and lowercased; the unique index makes case-variant sign-ups collide.
    email           text NOT NULL,
    -- Case preserved for display; uniqueness ignores case.
    username        text NULL,
    first_name      text NOT NULL DEFAULT '',
    last_name       text NOT NULL DEFAULT '',
    password_hash   text NOT NULL,
    role            text NOT NULL DEFAULT 'user' CHECK (role IN ('user', 'moderator', 'admin')),
    active          boolean NOT NULL DEFAULT true,
    create_time     timestamptz NOT NULL,
    update_time     timestamptz NOT NULL,
    last_login_time timestamptz NULL,
    CONSTRAINT users_email_lowercase CHECK (email = lower(email))
);
CREATE UNIQUE INDEX users_email_key ON users (email);
CREATE UNIQUE INDEX users_username_key ON users (lower(username));
CREATE INDEX users_create_time_id_idx ON users (create_time, id);

-- One row per login. A session is live while revoke_time IS NULL, now < idle_expire_time and
-- now < expire_time (the absolute limit).
CREATE TABLE sessions (
    id               uuid PRIMARY KEY,
    user_id          uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    -- Generation of the current (unspent) refresh token; starts at 0 and grows on each rotation.
    generation       integer NOT NULL DEFAULT 0,
    create_time      timestamptz NOT NULL,
    last_use_time    timestamptz NOT NULL,
    idle_expire_time timestamptz NOT NULL,
    expire_time      timestamptz NOT NULL,
    revoke_time      timestamptz NULL,
    revoke_reason    text NULL,
    user_agent       text NOT NULL DEFAULT '',
    ip_address       text NOT NULL DEFAULT ''
);
CREATE INDEX sessions_user_id_idx ON sessions (user_id);

-- Every refresh token ever issued, by SHA-256 only, so a spent one can be recognised (reuse detection).
CREATE TABLE refresh_tokens (
    token_hash  bytea PRIMARY KEY,
    session_id  uuid NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    generation  integer NOT NULL,
    create_time timestamptz NOT NULL,
    spend_time  timestamptz NULL,
    UNIQUE (session_id, generation)
);

-- Ed25519 keys that sign access tokens; shared by every replica.
CREATE TABLE signing_keys (
    kid           text PRIMARY KEY,
    algorithm     text NOT NULL DEFAULT 'EdDSA',
    -- PKCS#8 DER of the private key.
    private_key   bytea NOT NULL,
    -- The raw 32-byte public key.
    public_key    bytea NOT NULL,
    create_time   timestamptz NOT NULL,
    -- When the key may start signing (published in JWKS before that).
    activate_time timestamptz NOT NULL,
    -- When the key stops verifying and leaves JWKS; NULL while in use.
    retire_time   timestamptz NULL
);

-- Named random secrets shared by every replica (e.g. the refresh-token successor HMAC key).
CREATE TABLE server_secrets (
    name        text PRIMARY KEY,
    value       bytea NOT NULL,
    create_time timestamptz NOT NULL
);

-- Keys that other services present to ValidateToken. Only the SHA-256 of the key is stored.
CREATE TABLE service_keys (
    id            uuid PRIMARY KEY,
    name          text NOT NULL,
    key_hash      bytea NOT NULL UNIQUE,
    -- The admin who created it; NULL when created by the CLI or when that admin was deleted.
    creator_id    uuid NULL REFERENCES users (id) ON DELETE SET NULL,
    create_time   timestamptz NOT NULL,
    last_use_time timestamptz NULL,
    revoke_time   timestamptz NULL
);
