-- An alert is deduplicated by a key: the SHA-256 of its body (partner alerts, the GitLab
-- revocation API), or the sender's delivery id where the protocol has one (Standard Webhooks'
-- webhook-id, Twilio's I-Twilio-Idempotency-Token, GitHub's X-GitHub-Delivery). So a retry is one
-- record with one answer, and a new message whose body happens to be identical is a new record.
ALTER TABLE alerts RENAME COLUMN body_sha256 TO dedupe_key;
ALTER TABLE alerts ADD COLUMN body_sha256 TEXT;
UPDATE alerts SET body_sha256 = dedupe_key;

-- A generic listener's event records how its body was encoded, and whether a redacted copy could
-- be kept: a body that does not decode as declared is kept as metadata only, never raw.
ALTER TABLE listener_events ADD COLUMN content_type TEXT;
ALTER TABLE listener_events ADD COLUMN content_encoding TEXT;
ALTER TABLE listener_events ADD COLUMN body_kept BIGINT NOT NULL DEFAULT 1;
ALTER TABLE listener_events ADD COLUMN note TEXT;
