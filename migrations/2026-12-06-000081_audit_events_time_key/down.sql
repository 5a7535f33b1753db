DROP INDEX IF EXISTS audit_events_time_id_key;
