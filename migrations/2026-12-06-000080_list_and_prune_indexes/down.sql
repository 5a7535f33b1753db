DROP INDEX sessions_end_time_idx;
DROP INDEX users_email_domain_prefix_idx;
DROP INDEX users_username_prefix_idx;
DROP INDEX users_email_prefix_idx;
