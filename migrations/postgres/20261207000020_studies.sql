-- Studies: a paper's claim, the sweeps, audits and CKA comparisons that
-- test it, and findings computed from their stored results on reading.
CREATE TABLE studies (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    spec TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    team_id TEXT NOT NULL REFERENCES teams (id),
    created_by TEXT,
    project TEXT NOT NULL DEFAULT 'default',
    idempotency_key TEXT UNIQUE,
    -- 1 while CKA comparisons wait for their runs to finish.
    pending BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX studies_team ON studies (team_id, created_at DESC, id DESC);
CREATE INDEX studies_pending ON studies (pending);

-- What a study holds: its sweeps, audits and CKA jobs, by the key its spec
-- gives them (`sweeps.KEY`, …) and, for audits and comparisons, the seed
-- and axis values.
CREATE TABLE study_parts (
    study_id TEXT NOT NULL REFERENCES studies (id) ON DELETE CASCADE,
    kind TEXT NOT NULL CHECK (kind IN ('sweep', 'audit', 'cka')),
    part TEXT NOT NULL,
    seed BIGINT NOT NULL DEFAULT 0,
    point TEXT NOT NULL DEFAULT '{}',
    target_id TEXT NOT NULL,
    PRIMARY KEY (study_id, part, target_id)
);
-- One comparison per pair of runs: two servers advancing a study at once
-- cannot queue it twice.
CREATE UNIQUE INDEX study_parts_cka ON study_parts (study_id, part, seed) WHERE kind = 'cka';
