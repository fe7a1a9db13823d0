-- Spillway schema, PostgreSQL dialect. Raw tokens never appear here: a token is identified by
-- fingerprint = HMAC-SHA256(fingerprint key, token), the key kept outside the database.

CREATE TABLE listeners (
    id          TEXT PRIMARY KEY,
    kind        TEXT NOT NULL,
    name        TEXT NOT NULL,
    created_at  BIGINT NOT NULL
);

-- A listener's secret endpoint paths. Only a hash of the path's secret part is stored; exactly one
-- row per listener has expires_at NULL (the active endpoint).
CREATE TABLE listener_endpoints (
    id           TEXT PRIMARY KEY,
    listener_id  TEXT NOT NULL REFERENCES listeners(id) ON DELETE CASCADE,
    path_hash    TEXT NOT NULL UNIQUE,
    created_at   BIGINT NOT NULL,
    expires_at   BIGINT
);
CREATE UNIQUE INDEX listener_endpoints_one_active ON listener_endpoints(listener_id) WHERE expires_at IS NULL;

CREATE TABLE alerts (
    id           BIGSERIAL PRIMARY KEY,
    listener_id  TEXT NOT NULL,
    body_sha256  TEXT NOT NULL,
    received_at  BIGINT NOT NULL,
    key_id       TEXT,
    key_current  BIGINT,
    token_count  BIGINT NOT NULL,
    UNIQUE (listener_id, body_sha256)
);

CREATE TABLE candidates (
    id           BIGSERIAL PRIMARY KEY,
    alert_id     BIGINT NOT NULL REFERENCES alerts(id),
    fingerprint  TEXT NOT NULL,
    token_type   TEXT NOT NULL,
    url          TEXT,
    source       TEXT,
    label        TEXT
);
CREATE INDEX candidates_fingerprint ON candidates(fingerprint);

CREATE TABLE work_queue (
    id            BIGSERIAL PRIMARY KEY,
    kind          TEXT NOT NULL,
    candidate_id  BIGINT NOT NULL REFERENCES candidates(id),
    state         TEXT NOT NULL,
    attempts      BIGINT NOT NULL DEFAULT 0,
    run_at        BIGINT NOT NULL
);
CREATE INDEX work_queue_ready ON work_queue(state, run_at);

-- Append-only, hash-chained (RFC 9162 leaf and node hashing): leaf = SHA-256(0x00 || entry),
-- chain = SHA-256(0x01 || previous chain || leaf).
CREATE TABLE audit_log (
    seq         BIGINT PRIMARY KEY,
    at          BIGINT NOT NULL,
    actor       TEXT NOT NULL,
    action      TEXT NOT NULL,
    subject     TEXT NOT NULL,
    details     TEXT NOT NULL,
    leaf_hash   TEXT NOT NULL,
    chain_hash  TEXT NOT NULL
);

CREATE TABLE admin_keys (
    id          TEXT PRIMARY KEY,
    key_hash    TEXT NOT NULL UNIQUE,
    name        TEXT NOT NULL,
    scopes      TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    expires_at  BIGINT NOT NULL,
    created_by  TEXT NOT NULL
);
