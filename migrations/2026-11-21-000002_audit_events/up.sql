-- Security audit log. Rows outlive the accounts they mention, so there are no foreign keys.
CREATE TABLE audit_events (
    id          uuid PRIMARY KEY,
    -- The account the event is about (the target); NULL when there is none.
    user_id     uuid NULL,
    -- Who acted; NULL for anonymous callers and the CLI.
    actor_id    uuid NULL,
    kind        text NOT NULL,
    ip_address  text NOT NULL DEFAULT '',
    user_agent  text NOT NULL DEFAULT '',
    detail      text NOT NULL DEFAULT '',
    create_time timestamptz NOT NULL
);
CREATE INDEX audit_events_time_idx ON audit_events (create_time DESC, id DESC);
CREATE INDEX audit_events_user_time_idx ON audit_events (user_id, create_time DESC, id DESC);

-- Admin listings filter by role/active and page by (create_time, id).
CREATE INDEX users_role_active_idx ON users (role, active);
