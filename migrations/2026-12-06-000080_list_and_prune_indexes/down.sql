DROP INDEX sessions_end_time_idx;
DROP INDEX users_username_trgm_idx;
DROP INDEX users_email_trgm_idx;
