-- Readings of the memorization monitor (eval.memorization), one per attacked epoch.
CREATE TABLE memorization (
    run_id TEXT NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    epoch INTEGER NOT NULL,
    step INTEGER NOT NULL,
    canary_top1 REAL NOT NULL,
    heldout_top1 REAL NOT NULL,
    dejavu_gap REAL NOT NULL,
    dejavu_gap_confident REAL NOT NULL,
    canaries INTEGER NOT NULL,
    heldout INTEGER NOT NULL,
    PRIMARY KEY (run_id, epoch)
);
