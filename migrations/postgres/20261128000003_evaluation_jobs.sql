-- Re-evaluations of finished runs, and which job each evaluation row came
-- from ('' = the evaluation at the end of training).
CREATE TABLE evaluation_jobs (
    id TEXT PRIMARY KEY,
    run_id TEXT NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    status TEXT NOT NULL CHECK (status IN ('queued', 'running', 'succeeded', 'failed', 'cancelled')),
    request TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    started_at BIGINT,
    finished_at BIGINT,
    error TEXT,
    worker TEXT,
    lease_expires_at BIGINT,
    attempts BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX evaluation_jobs_status ON evaluation_jobs (status, created_at);

ALTER TABLE evaluations ADD COLUMN job_id TEXT NOT NULL DEFAULT '';
ALTER TABLE evaluations DROP CONSTRAINT evaluations_pkey;
ALTER TABLE evaluations ADD PRIMARY KEY (run_id, job_id, layer, probe, metric);
