-- Sessions created before 000040 kept its column default, access_expire_time = 'infinity', which
-- no reader can represent (chrono has no infinite time): a Refresh of such a session failed with
-- INTERNAL. Give them the latest expiry one of their access tokens can have: the session's end.
UPDATE sessions
SET access_expire_time = LEAST(idle_expire_time, expire_time)
WHERE access_expire_time = 'infinity';
