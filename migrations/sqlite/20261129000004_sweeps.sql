-- Sweeps: a SweepSpec expanded into runs that share its id. `sweep_point`
-- holds the run's axis values as a JSON object.
CREATE TABLE sweeps (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    spec TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    run_count INTEGER NOT NULL,
    idempotency_key TEXT UNIQUE
);
CREATE INDEX sweeps_created ON sweeps (created_at DESC, id DESC);

ALTER TABLE runs ADD COLUMN sweep_id TEXT REFERENCES sweeps (id) ON DELETE CASCADE;
ALTER TABLE runs ADD COLUMN sweep_point TEXT;
CREATE INDEX runs_sweep ON runs (sweep_id, created_at);
CREATE INDEX runs_method ON runs (method, created_at);
