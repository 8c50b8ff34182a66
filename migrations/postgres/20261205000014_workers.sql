-- Workers that claim jobs through the API (and the server's own), and the
-- log lines a run's worker sends. A worker's leases carry its id before the
-- `#`, which is how its current jobs are found.
CREATE TABLE workers (
    id TEXT PRIMARY KEY,
    -- The team it serves; NULL for a site-wide worker.
    team_id TEXT REFERENCES teams (id) ON DELETE CASCADE,
    host TEXT NOT NULL,
    device TEXT NOT NULL,
    slots BIGINT NOT NULL,
    version TEXT NOT NULL,
    capabilities TEXT NOT NULL,
    -- 'remote', or 'in-process' for the server's own.
    kind TEXT NOT NULL,
    registered_at BIGINT NOT NULL,
    last_seen BIGINT NOT NULL,
    draining BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX workers_team ON workers (team_id, last_seen DESC);

CREATE TABLE run_logs (
    run_id TEXT NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    attempt BIGINT NOT NULL,
    seq BIGINT NOT NULL,
    at BIGINT NOT NULL,
    line TEXT NOT NULL,
    PRIMARY KEY (run_id, attempt, seq)
);
