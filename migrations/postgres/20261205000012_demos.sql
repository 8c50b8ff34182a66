-- Published demo bundles; the files live under artifacts/demos/SLUG/.
-- A demo's page and files are public; listing and unpublishing are the team's.
CREATE TABLE demos (
    slug TEXT PRIMARY KEY,
    team_id TEXT NOT NULL REFERENCES teams (id),
    body TEXT NOT NULL,
    created_by TEXT,
    created_at BIGINT NOT NULL
);
CREATE INDEX demos_team ON demos (team_id, created_at DESC, slug);

-- Export jobs: a finished run or audit written as a demo bundle under
-- artifacts/exports/ID/, by a worker of the one queue.
CREATE TABLE exports (
    id TEXT PRIMARY KEY,
    source_kind TEXT NOT NULL CHECK (source_kind IN ('run', 'audit')),
    source_id TEXT NOT NULL,
    options TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('queued', 'running', 'succeeded', 'failed', 'cancelled')),
    created_at BIGINT NOT NULL,
    started_at BIGINT,
    finished_at BIGINT,
    error TEXT,
    bytes BIGINT NOT NULL DEFAULT 0,
    worker TEXT,
    lease_expires_at BIGINT,
    attempts BIGINT NOT NULL DEFAULT 0,
    cancel_requested BIGINT NOT NULL DEFAULT 0,
    requires TEXT NOT NULL DEFAULT '',
    team_id TEXT NOT NULL REFERENCES teams (id),
    created_by TEXT
);
CREATE INDEX exports_status ON exports (status, created_at);
