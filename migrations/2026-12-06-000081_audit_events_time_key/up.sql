-- Issue J, partitioning audit_events (1/4): the key the partitioned table will have,
-- (create_time, id), built without blocking writes. It becomes the old table's primary key in
-- 000084, so that attaching the old table as a partition builds no index.
CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS audit_events_time_id_key ON audit_events (create_time, id)
