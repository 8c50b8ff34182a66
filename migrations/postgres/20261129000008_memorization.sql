-- Readings of the memorization monitor (eval.memorization), one per attacked epoch.
CREATE TABLE memorization (
    run_id TEXT NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    epoch BIGINT NOT NULL,
    step BIGINT NOT NULL,
    canary_top1 DOUBLE PRECISION NOT NULL,
    heldout_top1 DOUBLE PRECISION NOT NULL,
    dejavu_gap DOUBLE PRECISION NOT NULL,
    dejavu_gap_confident DOUBLE PRECISION NOT NULL,
    canaries BIGINT NOT NULL,
    heldout BIGINT NOT NULL,
    PRIMARY KEY (run_id, epoch)
);
