-- Issue J, partitioning audit_events (3/4): one read of the old rows under SHARE UPDATE EXCLUSIVE,
-- which lets inserts and reads go on.
ALTER TABLE audit_events VALIDATE CONSTRAINT audit_events_legacy_range;
