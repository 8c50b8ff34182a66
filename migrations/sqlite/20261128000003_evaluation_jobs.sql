-- Re-evaluations of finished runs, and which job each evaluation row came
-- from ('' = the evaluation at the end of training).
CREATE TABLE evaluation_jobs (
    id TEXT PRIMARY KEY,
    run_id TEXT NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    status TEXT NOT NULL CHECK (status IN ('queued', 'running', 'succeeded', 'failed', 'cancelled')),
    request TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    started_at INTEGER,
    finished_at INTEGER,
    error TEXT,
    worker TEXT,
    lease_expires_at INTEGER,
    attempts INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX evaluation_jobs_status ON evaluation_jobs (status, created_at);

CREATE TABLE evaluations_by_job (
    run_id TEXT NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    job_id TEXT NOT NULL DEFAULT '',
    layer TEXT NOT NULL,
    probe TEXT NOT NULL,
    metric TEXT NOT NULL,
    value REAL NOT NULL,
    settings TEXT NOT NULL,
    PRIMARY KEY (run_id, job_id, layer, probe, metric)
);
INSERT INTO evaluations_by_job (run_id, layer, probe, metric, value, settings)
    SELECT run_id, layer, probe, metric, value, settings FROM evaluations;
DROP TABLE evaluations;
ALTER TABLE evaluations_by_job RENAME TO evaluations;
