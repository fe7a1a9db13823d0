-- The public-events poller's durable state: per feed, the newest event seen and the ETag of its
-- first page; every listed push until it is scanned (the poller's own queue); commits already
-- scanned, so a push re-listed by another feed is not scanned twice.
CREATE TABLE poller_feeds (
    feed           TEXT PRIMARY KEY,
    etag           TEXT,
    last_event_id  BIGINT NOT NULL DEFAULT 0,
    polled_at      BIGINT NOT NULL DEFAULT 0
);

CREATE TABLE poller_pushes (
    event_id     BIGINT PRIMARY KEY,
    repo         TEXT NOT NULL,
    before_sha   TEXT NOT NULL,
    head_sha     TEXT NOT NULL,
    git_ref      TEXT,
    pushed_at    BIGINT NOT NULL,
    listed_at    BIGINT NOT NULL,
    state        TEXT NOT NULL,
    outcome      TEXT,
    attempts     BIGINT NOT NULL DEFAULT 0,
    next_run_at  BIGINT NOT NULL,
    last_error   TEXT
);
CREATE INDEX poller_pushes_due ON poller_pushes(state, next_run_at);

CREATE TABLE poller_commits (
    repo     TEXT NOT NULL,
    sha      TEXT NOT NULL,
    seen_at  BIGINT NOT NULL,
    PRIMARY KEY (repo, sha)
);
