-- Runs, their per-step metrics and their evaluation rows.
-- Times are milliseconds since the Unix epoch; booleans are 0/1.
CREATE TABLE runs (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('queued', 'running', 'succeeded', 'failed', 'cancelled')),
    method TEXT NOT NULL,
    backbone TEXT NOT NULL,
    spec TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    started_at INTEGER,
    finished_at INTEGER,
    error TEXT,
    step INTEGER NOT NULL DEFAULT 0,
    total_steps INTEGER NOT NULL,
    epoch INTEGER NOT NULL DEFAULT 0,
    last_loss REAL,
    knn_backbone REAL,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    worker TEXT,
    lease_expires_at INTEGER,
    attempts INTEGER NOT NULL DEFAULT 0,
    idempotency_key TEXT UNIQUE
);
CREATE INDEX runs_created ON runs (created_at DESC, id DESC);
CREATE INDEX runs_status ON runs (status, created_at);

CREATE TABLE metrics (
    run_id TEXT NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    step INTEGER NOT NULL,
    epoch INTEGER NOT NULL,
    loss REAL NOT NULL,
    lr REAL NOT NULL,
    images_per_sec REAL NOT NULL,
    PRIMARY KEY (run_id, step)
);

CREATE TABLE evaluations (
    run_id TEXT NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    layer TEXT NOT NULL,
    probe TEXT NOT NULL,
    metric TEXT NOT NULL,
    value REAL NOT NULL,
    settings TEXT NOT NULL,
    PRIMARY KEY (run_id, layer, probe, metric)
);
