-- Re-evaluation jobs belong to their run's team and need what their run
-- needs, so that remote workers may claim them.
ALTER TABLE evaluation_jobs ADD COLUMN team_id TEXT NOT NULL DEFAULT 'default';
UPDATE evaluation_jobs SET
    team_id = COALESCE((SELECT r.team_id FROM runs r WHERE r.id = evaluation_jobs.run_id), 'default'),
    requires = COALESCE((SELECT r.requires FROM runs r WHERE r.id = evaluation_jobs.run_id), '');
