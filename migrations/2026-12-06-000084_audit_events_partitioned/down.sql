-- Back to one plain table (copies the rows: for development only).
CREATE TABLE audit_events_plain (LIKE audit_events INCLUDING DEFAULTS);
INSERT INTO audit_events_plain SELECT * FROM audit_events;
DROP TABLE audit_events;
DROP FUNCTION authd_audit_partitions_drop(timestamptz);
DROP FUNCTION authd_audit_partitions_ensure(timestamptz, integer);
DROP FUNCTION authd_audit_partition_upper(oid);
ALTER TABLE audit_events_plain RENAME TO audit_events;
ALTER TABLE audit_events ADD PRIMARY KEY (id);
CREATE UNIQUE INDEX audit_events_time_id_key ON audit_events (create_time, id);
CREATE INDEX audit_events_time_idx ON audit_events (create_time DESC, id DESC);
CREATE INDEX audit_events_user_time_idx ON audit_events (user_id, create_time DESC, id DESC);
ALTER TABLE audit_events ADD CONSTRAINT audit_events_legacy_range CHECK (create_time < 'infinity') NOT VALID;
