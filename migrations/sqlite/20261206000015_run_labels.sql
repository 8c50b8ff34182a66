-- A run's tags, note and archived flag. The tags are stored on the run as a
-- JSON list for reads and, one row each, in run_tags for the tag filter.
ALTER TABLE runs ADD COLUMN tags TEXT NOT NULL DEFAULT '[]';
ALTER TABLE runs ADD COLUMN note TEXT NOT NULL DEFAULT '';
ALTER TABLE runs ADD COLUMN archived INTEGER NOT NULL DEFAULT 0;
CREATE TABLE run_tags (
    run_id TEXT NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    tag TEXT NOT NULL,
    PRIMARY KEY (run_id, tag)
);
CREATE INDEX run_tags_tag ON run_tags (tag, run_id);
CREATE INDEX runs_team_archived ON runs (team_id, archived, created_at DESC, id DESC);
