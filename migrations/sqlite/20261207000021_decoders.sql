-- Decoder jobs: a conditional generator (RCDM or infusion) trained on a
-- finished run's representation by a worker of the one queue. The report
-- (loss, conditioning accuracy, diversity) is stored whole as JSON; the
-- sample grids are artifacts.
CREATE TABLE decoders (
    id TEXT PRIMARY KEY,
    run_id TEXT NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    spec TEXT NOT NULL,
    report TEXT,
    status TEXT NOT NULL CHECK (status IN ('queued', 'running', 'succeeded', 'failed', 'cancelled')),
    step INTEGER NOT NULL DEFAULT 0,
    total_steps INTEGER NOT NULL DEFAULT 0,
    last_loss REAL,
    created_at INTEGER NOT NULL,
    started_at INTEGER,
    finished_at INTEGER,
    error TEXT,
    worker TEXT,
    lease_expires_at INTEGER,
    attempts INTEGER NOT NULL DEFAULT 0,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    requires TEXT NOT NULL DEFAULT '',
    team_id TEXT NOT NULL REFERENCES teams (id),
    created_by TEXT
);
CREATE INDEX decoders_status ON decoders (status, created_at);
CREATE INDEX decoders_run ON decoders (run_id);
