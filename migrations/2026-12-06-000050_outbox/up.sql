-- Issue I, "Mail that is never lost": the outbox. A producer inserts its message in the same
-- transaction as the change that causes it; a background sender on any replica delivers it
-- (src/domain/mail). Rows:
--   body          the rendered plain-text and HTML bodies as JSON, sealed under AUTHD_MASTER_KEY
--                 (XChaCha20-Poly1305, bound to the row id) when `body_sealed`; blanked (empty)
--                 once sent when `live_link` (the body holds a single-use link).
--   message_id    the stable Message-ID header, the same on every attempt.
--   attempts      delivery attempts so far (counted when a sender claims the row).
--   next_attempt_time  when the row is due: a claim moves it one lease ahead, a failed attempt
--                 by the backoff.
--   last_error    the last delivery error (the server's reply or the connection error; no secrets).
--   sent_time / failed_time  the end of the row's life; both NULL while it waits.
CREATE TABLE outbox (
    id uuid PRIMARY KEY,
    create_time timestamptz NOT NULL,
    recipient text NOT NULL,
    subject text NOT NULL,
    kind text NOT NULL,
    body bytea NOT NULL,
    body_sealed boolean NOT NULL,
    live_link boolean NOT NULL,
    message_id text NOT NULL,
    attempts integer NOT NULL DEFAULT 0,
    next_attempt_time timestamptz NOT NULL,
    last_error text NULL,
    sent_time timestamptz NULL,
    failed_time timestamptz NULL
);
-- The claim and the depth query read only the waiting rows, oldest due first.
CREATE INDEX outbox_due_idx ON outbox (next_attempt_time)
    WHERE sent_time IS NULL AND failed_time IS NULL;
-- The retention prune.
CREATE INDEX outbox_sent_time_idx ON outbox (sent_time) WHERE sent_time IS NOT NULL;
