-- Generic listeners verify requests with a secret (HMAC key, Twilio auth token, Ed25519 public key,
-- GitLab's shared revocation secret). It is stored sealed (ChaCha20-Poly1305 under the sealing key,
-- kept outside the database), never in plaintext.
ALTER TABLE listeners ADD COLUMN secret_sealed TEXT;

-- A generic listener's output stream: each accepted request body with every token replaced by its
-- type and fingerprint.
CREATE TABLE listener_events (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    listener_id    TEXT NOT NULL REFERENCES listeners(id) ON DELETE CASCADE,
    received_at    INTEGER NOT NULL,
    body_sha256    TEXT NOT NULL,
    redacted_body  TEXT NOT NULL,
    tokens_found   INTEGER NOT NULL
);
CREATE INDEX listener_events_by_listener ON listener_events(listener_id, id);
