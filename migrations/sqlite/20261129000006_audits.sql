-- Déjà vu audits: jobs of the same queue as runs. The report (curves,
-- counts, per-class gaps, every attacked image) is stored whole as JSON
-- when the audit ends.
CREATE TABLE audits (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('queued', 'running', 'succeeded', 'failed', 'cancelled')),
    spec TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    started_at INTEGER,
    finished_at INTEGER,
    error TEXT,
    stage TEXT NOT NULL DEFAULT '',
    step INTEGER NOT NULL DEFAULT 0,
    total_steps INTEGER NOT NULL DEFAULT 0,
    report TEXT,
    worker TEXT,
    lease_expires_at INTEGER,
    attempts INTEGER NOT NULL DEFAULT 0,
    cancel_requested INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX audits_status ON audits (status, created_at);
CREATE INDEX audits_created ON audits (created_at DESC, id DESC);
