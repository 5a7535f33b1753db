-- Atomic throttling (issue F, sections 2 and 3).
--
-- A password check is reserved before bcrypt runs: the reservation counts as a failure at once (a row in
-- login_failures, +1 in login_throttle), and a success takes it back. `login_throttle.ip` now holds the client
-- key (an IPv4 address, or an IPv6 /64 such as `2001:db8:1:2::/64`), not the full address.

-- A success deletes exactly its own reservation, so each failure row gets an id.
ALTER TABLE login_failures ADD COLUMN id bigint GENERATED ALWAYS AS IDENTITY;
ALTER TABLE login_failures ADD PRIMARY KEY (id);

-- One row per identifier key. Every reservation for the key locks it first, so the per-client count, the hourly
-- count and the identifier-wide slot are decided one reservation at a time, whatever the concurrency.
CREATE TABLE login_guard (
    key               text PRIMARY KEY,
    -- Past the hourly cap: no check (from a client that is not exempt) before this time. NULL: the slot is free.
    next_check_time   timestamptz,
    -- D: the gap the next slot check imposes; 1 s, doubling with each slot check, at most 15 min.
    slot_delay_secs   integer NOT NULL DEFAULT 1,
    last_attempt_time timestamptz NOT NULL
);
CREATE INDEX login_guard_last_attempt_idx ON login_guard (last_attempt_time);

-- Clients (client keys) with a successful check for a key: exempt from the identifier-wide slot for 30 days.
CREATE TABLE login_known_clients (
    key               text NOT NULL,
    client            text NOT NULL,
    last_success_time timestamptz NOT NULL,
    PRIMARY KEY (key, client)
);
CREATE INDEX login_known_clients_time_idx ON login_known_clients (last_success_time);
