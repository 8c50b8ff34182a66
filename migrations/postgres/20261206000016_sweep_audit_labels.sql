-- Tags, a note and the archived flag on sweeps and audits, as on runs. A
-- team has tens of these, not thousands: the tag filter reads the JSON list.
ALTER TABLE sweeps ADD COLUMN tags TEXT NOT NULL DEFAULT '[]';
ALTER TABLE sweeps ADD COLUMN note TEXT NOT NULL DEFAULT '';
ALTER TABLE sweeps ADD COLUMN archived BIGINT NOT NULL DEFAULT 0;
ALTER TABLE audits ADD COLUMN tags TEXT NOT NULL DEFAULT '[]';
ALTER TABLE audits ADD COLUMN note TEXT NOT NULL DEFAULT '';
ALTER TABLE audits ADD COLUMN archived BIGINT NOT NULL DEFAULT 0;
