ALTER TABLE service_keys
    DROP COLUMN allowed_cidrs,
    DROP COLUMN trusted_proxy;
