DROP FUNCTION authd_rotate_sessions(uuid[], integer[], bytea[], bytea[], timestamptz[], timestamptz[],
                                    timestamptz[], bytea[], timestamptz[], text[]);
