-- CKA jobs: two finished runs compared layer by layer, by a worker of the
-- one queue; the result (matrix and settings) is stored whole as JSON.
CREATE TABLE cka_jobs (
    id TEXT PRIMARY KEY,
    request TEXT NOT NULL,
    result TEXT,
    status TEXT NOT NULL CHECK (status IN ('queued', 'running', 'succeeded', 'failed', 'cancelled')),
    created_at BIGINT NOT NULL,
    started_at BIGINT,
    finished_at BIGINT,
    error TEXT,
    worker TEXT,
    lease_expires_at BIGINT,
    attempts BIGINT NOT NULL DEFAULT 0,
    cancel_requested BIGINT NOT NULL DEFAULT 0,
    requires TEXT NOT NULL DEFAULT '',
    team_id TEXT NOT NULL REFERENCES teams (id),
    created_by TEXT
);
CREATE INDEX cka_jobs_status ON cka_jobs (status, created_at);
