-- Issue J, partitioning audit_events (2/4): bound the existing rows by a time (the start of the
-- week after next, UTC, so no event written meanwhile crosses it), NOT VALID: no scan, a brief lock.
-- 000083 validates it without blocking writes; 000084 then attaches the table as the partition
-- (MINVALUE, bound) and PostgreSQL skips the attach's scan because this constraint implies it.
DO $$
DECLARE
    bound timestamptz := (date_trunc('week', now() AT TIME ZONE 'UTC') + interval '14 days') AT TIME ZONE 'UTC';
BEGIN
    EXECUTE format(
        'ALTER TABLE audit_events ADD CONSTRAINT audit_events_legacy_range CHECK (create_time < %L) NOT VALID',
        bound);
END
$$;
