-- Published demo bundles; the files live under artifacts/demos/SLUG/.
-- A demo's page and files are public; listing and unpublishing are the team's.
CREATE TABLE demos (
    slug TEXT PRIMARY KEY,
    team_id TEXT NOT NULL REFERENCES teams (id),
    body TEXT NOT NULL,
    created_by TEXT,
    created_at INTEGER NOT NULL
);
CREATE INDEX demos_team ON demos (team_id, created_at DESC, slug);
