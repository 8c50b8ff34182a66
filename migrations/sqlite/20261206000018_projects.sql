-- Projects group a team's runs, sweeps and audits. Every team has a
-- `default` project without a row here: whatever was made before projects,
-- or without naming one, belongs to it.
CREATE TABLE projects (
    team_id TEXT NOT NULL,
    name TEXT NOT NULL,
    description TEXT NOT NULL DEFAULT '',
    created_at BIGINT NOT NULL,
    created_by TEXT,
    PRIMARY KEY (team_id, name)
);
ALTER TABLE runs ADD COLUMN project TEXT NOT NULL DEFAULT 'default';
ALTER TABLE sweeps ADD COLUMN project TEXT NOT NULL DEFAULT 'default';
ALTER TABLE audits ADD COLUMN project TEXT NOT NULL DEFAULT 'default';
-- The lists filter on archived too: with it in the index a project's or a
-- sweep's newest runs are read in order instead of scanning the team's.
CREATE INDEX runs_team_project ON runs (team_id, project, archived, created_at DESC, id DESC);
DROP INDEX runs_team_sweep;
CREATE INDEX runs_team_sweep ON runs (team_id, sweep_id, archived, created_at DESC, id DESC);
