-- What a job needs of the worker that claims it (`cuda`); empty: any worker.
ALTER TABLE runs ADD COLUMN requires TEXT NOT NULL DEFAULT '';
ALTER TABLE evaluation_jobs ADD COLUMN requires TEXT NOT NULL DEFAULT '';
ALTER TABLE audits ADD COLUMN requires TEXT NOT NULL DEFAULT '';
