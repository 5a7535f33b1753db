-- Brute-force throttling state, shared by every replica.

-- Consecutive failures per (identifier key, client IP). A success deletes the row.
CREATE TABLE login_throttle (
    key                  text NOT NULL,
    ip                   text NOT NULL,
    consecutive_failures integer NOT NULL,
    last_failure_time    timestamptz NOT NULL,
    PRIMARY KEY (key, ip)
);
CREATE INDEX login_throttle_last_failure_idx ON login_throttle (last_failure_time);

-- One row per failed password verification, for the per-identifier hourly cap.
CREATE TABLE login_failures (
    key         text NOT NULL,
    create_time timestamptz NOT NULL
);
CREATE INDEX login_failures_key_time_idx ON login_failures (key, create_time);
CREATE INDEX login_failures_time_idx ON login_failures (create_time);

-- Encryption at rest (AUTHD_MASTER_KEY): whether the stored secret is an XChaCha20-Poly1305 box.
ALTER TABLE signing_keys ADD COLUMN encrypted boolean NOT NULL DEFAULT false;
ALTER TABLE server_secrets ADD COLUMN encrypted boolean NOT NULL DEFAULT false;
