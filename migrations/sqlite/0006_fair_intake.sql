-- An alert bigger than a slice (1,000 tokens) is written slice by slice, so it never holds the
-- single writer long; recorded_tokens says how far it got (a retry of the same alert carries on
-- from there). A candidate's position is its index in its alert.
ALTER TABLE alerts ADD COLUMN recorded_tokens INTEGER NOT NULL DEFAULT 0;
UPDATE alerts SET recorded_tokens = token_count;
ALTER TABLE candidates ADD COLUMN position INTEGER NOT NULL DEFAULT 0;
-- Intake queues an alert's candidates by alert and position (it scanned the whole table before).
CREATE INDEX candidates_by_alert ON candidates(alert_id, position);

-- Fair service: work and findings carry a priority, the part of their alert they came in
-- (position / 64). Claims take lower priorities first, so a token arriving behind a
-- 100,000-token alert is decided and acted on before the rest of that alert.
ALTER TABLE work_queue ADD COLUMN priority INTEGER NOT NULL DEFAULT 0;
CREATE INDEX work_queue_claim ON work_queue(kind, state, priority, id);
ALTER TABLE findings ADD COLUMN priority INTEGER NOT NULL DEFAULT 0;
CREATE INDEX findings_claim ON findings(installation_id, priority, next_run_at);
