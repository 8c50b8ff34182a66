-- Evaluation jobs can be cancelled like runs and audits: the queue treats
-- every kind of job alike.
ALTER TABLE evaluation_jobs ADD COLUMN cancel_requested INTEGER NOT NULL DEFAULT 0;
