-- Registered data sets. `body` holds the whole record as the API shows it
-- (spec, splits, classes, skipped files); the columns are what is looked up.
CREATE TABLE datasets (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    format TEXT NOT NULL,
    hash TEXT NOT NULL,
    body TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE INDEX datasets_created ON datasets (created_at DESC, id DESC);
