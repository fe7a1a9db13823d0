-- Installations: who issues tokens, how Spillway checks and revokes them. Shared secrets (for
-- signing Spillway's calls) are sealed under the sealing key; two may be live during a rotation.
CREATE TABLE installations (
    id            TEXT PRIMARY KEY,
    name          TEXT NOT NULL UNIQUE,
    hostnames     TEXT NOT NULL,
    token_types   TEXT NOT NULL,
    jwks_url      TEXT,
    inline_jwks   TEXT,
    verify_url    TEXT,
    revoke_url    TEXT,
    notify_url    TEXT,
    pull_mode     INTEGER NOT NULL,
    rate_per_sec  REAL NOT NULL,
    burst         INTEGER NOT NULL,
    concurrency   INTEGER NOT NULL,
    delivery      TEXT NOT NULL,
    created_at    INTEGER NOT NULL,
    updated_at    INTEGER NOT NULL
);

CREATE TABLE installation_secrets (
    id               TEXT PRIMARY KEY,
    installation_id  TEXT NOT NULL REFERENCES installations(id) ON DELETE CASCADE,
    sealed           TEXT NOT NULL,
    created_at       INTEGER NOT NULL
);
CREATE INDEX installation_secrets_by_installation ON installation_secrets(installation_id);

-- Until a candidate is decided its token is kept sealed (the decision may need it: JWT signature,
-- online verification); the sealed copy is deleted once decided. context_hosts: hostnames seen next
-- to the token (JSON array), for attribution.
ALTER TABLE candidates ADD COLUMN sealed_token TEXT;
ALTER TABLE candidates ADD COLUMN context_hosts TEXT;

-- Work leases: a claimed row is invisible to other workers until lease_until; a crashed worker's
-- lease lapses and another resumes the row.
ALTER TABLE work_queue ADD COLUMN lease_until INTEGER;
ALTER TABLE work_queue ADD COLUMN lease_owner TEXT;

-- One row per installation and token: the state machine from decision to outcome, and itself the
-- queue for verify / revoke / notify calls. installation_id NULL: unattributed (kept, never dropped).
-- sealed_token is deleted when the finding reaches a terminal state.
CREATE TABLE findings (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    candidate_id     INTEGER NOT NULL REFERENCES candidates(id),
    installation_id  TEXT,
    fingerprint      TEXT NOT NULL,
    token_type       TEXT NOT NULL,
    attribution      TEXT NOT NULL,
    state            TEXT NOT NULL,
    outcome          TEXT,
    label            TEXT,
    sealed_token     TEXT,
    found_at         TEXT,
    source           TEXT NOT NULL,
    received_at      INTEGER NOT NULL,
    created_at       INTEGER NOT NULL,
    updated_at       INTEGER NOT NULL,
    attempts         INTEGER NOT NULL DEFAULT 0,
    next_run_at      INTEGER NOT NULL,
    lease_until      INTEGER,
    lease_owner      TEXT,
    last_error       TEXT,
    decided_at       INTEGER
);
CREATE UNIQUE INDEX findings_one_per_installation ON findings(installation_id, fingerprint)
    WHERE installation_id IS NOT NULL;
CREATE INDEX findings_ready ON findings(state, next_run_at);
CREATE INDEX findings_by_installation ON findings(installation_id, id);
