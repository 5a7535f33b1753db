-- Issue J, partitioning audit_events (4/4): audit_events becomes a table partitioned by week on
-- create_time (UTC weeks starting on Monday, partitions named audit_events_pYYYYMMDD), so that
-- retention drops whole partitions instead of deleting millions of rows.
--
-- Existing rows are not copied: the old table becomes the partition audit_events_legacy covering
-- (MINVALUE, bound), bound being the CHECK constraint validated by 000083, which spares the attach
-- its scan. Its primary key becomes (create_time, id), the index built concurrently by 000081, so
-- no index is built here either. An empty old table (a new installation) is dropped instead.
-- A default partition takes any event outside the partitions created ahead, so an insert never
-- fails. The housekeeping job keeps creating partitions four weeks ahead and drops those past
-- the retention (functions below).

ALTER TABLE audit_events DROP CONSTRAINT audit_events_pkey;
ALTER TABLE audit_events ADD CONSTRAINT audit_events_legacy_pkey PRIMARY KEY USING INDEX audit_events_time_id_key;
-- (create_time, id) read backwards serves the newest-first listing.
DROP INDEX audit_events_time_idx;
ALTER TABLE audit_events RENAME TO audit_events_legacy;
ALTER INDEX audit_events_user_time_idx RENAME TO audit_events_legacy_user_time_idx;

-- LIKE: whatever columns the old table has (other migrations may have added some).
CREATE TABLE audit_events (LIKE audit_events_legacy INCLUDING DEFAULTS) PARTITION BY RANGE (create_time);
ALTER TABLE audit_events ADD CONSTRAINT audit_events_pkey PRIMARY KEY (create_time, id);
CREATE INDEX audit_events_user_time_idx ON audit_events (user_id, create_time DESC, id DESC);

-- The upper bound of a partition of audit_events (NULL for the default partition).
CREATE FUNCTION authd_audit_partition_upper(part oid) RETURNS timestamptz
LANGUAGE sql STABLE AS $$
    SELECT (regexp_match(pg_get_expr(c.relpartbound, c.oid), 'TO \(''([^'']+)''\)'))[1]::timestamptz
    FROM pg_class c WHERE c.oid = part
$$;

-- Creates the weekly partitions from the week of `at` to `weeks_ahead` weeks later that do not
-- exist yet (weeks the legacy partition covers are skipped). A week whose events already went to
-- the default partition cannot be created; it is skipped with a warning and its events stay in
-- the default partition (pruned row by row). Returns how many were created.
CREATE FUNCTION authd_audit_partitions_ensure(at timestamptz, weeks_ahead integer) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    w timestamptz := date_trunc('week', at AT TIME ZONE 'UTC') AT TIME ZONE 'UTC';
    last timestamptz := w + make_interval(days => 7 * weeks_ahead);
    legacy_upper timestamptz;
    part text;
    created integer := 0;
BEGIN
    IF to_regclass('audit_events_legacy') IS NOT NULL THEN
        legacy_upper := authd_audit_partition_upper('audit_events_legacy'::regclass);
    END IF;
    WHILE w <= last LOOP
        part := 'audit_events_p' || to_char(w AT TIME ZONE 'UTC', 'YYYYMMDD');
        IF (legacy_upper IS NULL OR w >= legacy_upper) AND to_regclass(part) IS NULL THEN
            BEGIN
                EXECUTE format('CREATE TABLE %I PARTITION OF audit_events FOR VALUES FROM (%L) TO (%L)',
                               part, w, w + interval '7 days');
                created := created + 1;
            EXCEPTION WHEN invalid_object_definition OR check_violation THEN
                RAISE WARNING 'audit_events partition % not created: %', part, SQLERRM;
            END;
        END IF;
        w := w + interval '7 days';
    END LOOP;
    RETURN created;
END
$$;

-- Drops the partitions (the legacy one included) whose every event is older than `before`.
-- Returns how many events went: counted for a partition under 100,000 rows (or never analyzed),
-- the planner's estimate (pg_class.reltuples) above that.
CREATE FUNCTION authd_audit_partitions_drop(before timestamptz) RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    r record;
    n bigint;
    total bigint := 0;
BEGIN
    FOR r IN
        SELECT c.oid::regclass AS part, c.reltuples, authd_audit_partition_upper(c.oid) AS upper
        FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
        WHERE i.inhparent = 'audit_events'::regclass
        ORDER BY 3
    LOOP
        CONTINUE WHEN r.upper IS NULL OR r.upper > before;
        IF r.reltuples < 100000 THEN
            EXECUTE format('SELECT count(*) FROM %s', r.part) INTO n;
        ELSE
            n := r.reltuples::bigint;
        END IF;
        EXECUTE format('DROP TABLE %s', r.part);
        total := total + n;
    END LOOP;
    RETURN total;
END
$$;

DO $$
DECLARE
    bound timestamptz;
BEGIN
    SELECT (regexp_match(pg_get_constraintdef(oid), '''([^'']+)'''))[1]::timestamptz INTO bound
    FROM pg_constraint
    WHERE conname = 'audit_events_legacy_range' AND conrelid = 'audit_events_legacy'::regclass;
    IF EXISTS (SELECT 1 FROM audit_events_legacy) THEN
        EXECUTE format('ALTER TABLE audit_events ATTACH PARTITION audit_events_legacy FOR VALUES FROM (MINVALUE) TO (%L)', bound);
    ELSE
        DROP TABLE audit_events_legacy;
    END IF;
END
$$;
CREATE TABLE audit_events_default PARTITION OF audit_events DEFAULT;
SELECT authd_audit_partitions_ensure(now(), 4);
