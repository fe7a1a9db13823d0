-- Console sign-ins: an admin key presented once at the sign-in form becomes a session cookie. Only
-- the cookie's SHA-256 is stored; the session ends at its expiry, at sign-out, or with its key.
CREATE TABLE console_sessions (
    id_hash     TEXT PRIMARY KEY,
    key_id      TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    expires_at  BIGINT NOT NULL,
    revoked_at  BIGINT
);
CREATE INDEX console_sessions_by_expiry ON console_sessions(expires_at);
-- A finding's timeline in the console reads the entries about it.
CREATE INDEX audit_log_by_subject ON audit_log(subject, seq);
