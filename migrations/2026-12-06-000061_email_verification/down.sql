DROP TABLE verification_requests;
ALTER TABLE account_tokens DROP COLUMN session_id;
