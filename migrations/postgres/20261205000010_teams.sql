-- Teams, users, their roles, tokens and dashboard sessions; every job and
-- data set belongs to a team. Rows written before teams existed belong to
-- the default team.
CREATE TABLE teams (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    created_at BIGINT NOT NULL
);
INSERT INTO teams (id, name, created_at) VALUES ('default', 'default', 0);

CREATE TABLE users (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    password_hash TEXT,
    site_admin INTEGER NOT NULL DEFAULT 0,
    created_at BIGINT NOT NULL
);

CREATE TABLE memberships (
    team_id TEXT NOT NULL REFERENCES teams (id) ON DELETE CASCADE,
    user_id TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    role TEXT NOT NULL CHECK (role IN ('viewer', 'member', 'admin')),
    PRIMARY KEY (team_id, user_id)
);

-- Secrets are stored as SHA-256 hashes; `kind` is personal, service or
-- signin (a one-time sign-in link).
CREATE TABLE tokens (
    id TEXT PRIMARY KEY,
    hash TEXT NOT NULL UNIQUE,
    name TEXT NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('personal', 'service', 'signin')),
    scope TEXT NOT NULL CHECK (scope IN ('read', 'write', 'worker', 'metrics')),
    user_id TEXT REFERENCES users (id) ON DELETE CASCADE,
    team_id TEXT REFERENCES teams (id) ON DELETE CASCADE,
    created_at BIGINT NOT NULL,
    expires_at BIGINT,
    revoked_at BIGINT,
    last_used_at BIGINT
);
CREATE INDEX tokens_team ON tokens (team_id, created_at);

CREATE TABLE sessions (
    hash TEXT PRIMARY KEY,
    user_id TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    team_id TEXT NOT NULL REFERENCES teams (id) ON DELETE CASCADE,
    csrf TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL
);

ALTER TABLE runs ADD COLUMN team_id TEXT NOT NULL DEFAULT 'default' REFERENCES teams (id);
ALTER TABLE runs ADD COLUMN created_by TEXT;
CREATE INDEX runs_team ON runs (team_id, created_at DESC, id DESC);
-- A sweep's runs, newest first, within the team.
CREATE INDEX runs_team_sweep ON runs (team_id, sweep_id, created_at DESC, id DESC);
ALTER TABLE sweeps ADD COLUMN team_id TEXT NOT NULL DEFAULT 'default' REFERENCES teams (id);
ALTER TABLE sweeps ADD COLUMN created_by TEXT;
ALTER TABLE audits ADD COLUMN team_id TEXT NOT NULL DEFAULT 'default' REFERENCES teams (id);
ALTER TABLE audits ADD COLUMN created_by TEXT;
ALTER TABLE evaluation_jobs ADD COLUMN created_by TEXT;

-- Data set names are unique within a team, not across the server.
ALTER TABLE datasets DROP CONSTRAINT datasets_name_key;
ALTER TABLE datasets ADD COLUMN team_id TEXT NOT NULL DEFAULT 'default' REFERENCES teams (id);
ALTER TABLE datasets ADD COLUMN created_by TEXT;
ALTER TABLE datasets ADD CONSTRAINT datasets_team_name UNIQUE (team_id, name);
DROP INDEX datasets_created;
CREATE INDEX datasets_created ON datasets (team_id, created_at DESC, id DESC);
