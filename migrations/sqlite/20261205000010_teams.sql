-- Teams, users, their roles, tokens and dashboard sessions; every job and
-- data set belongs to a team. Rows written before teams existed belong to
-- the default team.
CREATE TABLE teams (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    created_at INTEGER NOT NULL
);
INSERT INTO teams (id, name, created_at) VALUES ('default', 'default', 0);

CREATE TABLE users (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    password_hash TEXT,
    site_admin INTEGER NOT NULL DEFAULT 0,
    created_at INTEGER NOT NULL
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
    created_at INTEGER NOT NULL,
    expires_at INTEGER,
    revoked_at INTEGER,
    last_used_at INTEGER
);
CREATE INDEX tokens_team ON tokens (team_id, created_at);

CREATE TABLE sessions (
    hash TEXT PRIMARY KEY,
    user_id TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    team_id TEXT NOT NULL REFERENCES teams (id) ON DELETE CASCADE,
    csrf TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL
);

ALTER TABLE runs ADD COLUMN team_id TEXT NOT NULL DEFAULT 'default';
ALTER TABLE runs ADD COLUMN created_by TEXT;
CREATE INDEX runs_team ON runs (team_id, created_at DESC, id DESC);
-- A sweep's runs, newest first, within the team.
CREATE INDEX runs_team_sweep ON runs (team_id, sweep_id, created_at DESC, id DESC);
ALTER TABLE sweeps ADD COLUMN team_id TEXT NOT NULL DEFAULT 'default';
ALTER TABLE sweeps ADD COLUMN created_by TEXT;
ALTER TABLE audits ADD COLUMN team_id TEXT NOT NULL DEFAULT 'default';
ALTER TABLE audits ADD COLUMN created_by TEXT;
ALTER TABLE evaluation_jobs ADD COLUMN created_by TEXT;

-- Data set names are unique within a team, not across the server.
CREATE TABLE datasets_by_team (
    id TEXT PRIMARY KEY,
    team_id TEXT NOT NULL DEFAULT 'default',
    name TEXT NOT NULL,
    format TEXT NOT NULL,
    hash TEXT NOT NULL,
    body TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    created_by TEXT,
    UNIQUE (team_id, name)
);
INSERT INTO datasets_by_team (id, name, format, hash, body, created_at)
    SELECT id, name, format, hash, body, created_at FROM datasets;
DROP TABLE datasets;
ALTER TABLE datasets_by_team RENAME TO datasets;
CREATE INDEX datasets_created ON datasets (team_id, created_at DESC, id DESC);
