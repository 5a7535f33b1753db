-- Proxy service keys (issue F, section 3): a key marked trusted_proxy may name the end user's address
-- in x-forwarded-for. allowed_cidrs are the networks the key may be used from (empty = anywhere);
-- authd validates and normalizes them before storing (e.g. 10.0.0.0/8, 2001:db8::/32).
ALTER TABLE service_keys
    ADD COLUMN trusted_proxy boolean NOT NULL DEFAULT false,
    ADD COLUMN allowed_cidrs text[] NOT NULL DEFAULT '{}';
