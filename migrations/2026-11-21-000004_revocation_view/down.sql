DROP TRIGGER sessions_deleted ON sessions;
DROP TRIGGER sessions_revoked ON sessions;
DROP FUNCTION authd_session_deleted();
DROP FUNCTION authd_session_revoked();
DROP TABLE session_revocations;
