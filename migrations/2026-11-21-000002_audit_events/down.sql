DROP INDEX users_role_active_idx;
DROP TABLE audit_events;
